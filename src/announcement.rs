//! Announcements: an instruction from HQ to all staff ("第一配備に移行。各自持ち場へ"),
//! sent through the chat provider as a roll call of a generated scenario — the text, one
//! 確認 button, a long deadline — so it reuses dispatch, receipts and the call list unchanged.
//!
//! Invariant: an announcement passes the same checks as a scenario file (length, no
//! business-mail greetings, drill marking), because it is built by [`Scenario::parse`].

use std::time::Duration;

use crate::scenario::{Scenario, ScenarioError};

/// The scenario name every announcement's roll call carries; the e-mail worker skips these.
pub const SCENARIO_NAME: &str = "announcement";

/// The English line used when HQ writes the instruction in Japanese only.
const DEFAULT_EN: &str = "Instruction from disaster HQ: see the Japanese text above.";

/// Builds the scenario for an announcement of `ja` (and `en`, if given) to everyone.
pub fn scenario(
    ja: &str,
    en: Option<&str>,
    drill: bool,
    deadline: Duration,
) -> Result<Scenario, ScenarioError> {
    let en = en
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_EN);
    let mut message = toml::Table::new();
    message.insert("ja".into(), toml::Value::String(ja.to_string()));
    message.insert("en".into(), toml::Value::String(en.to_string()));
    let mut button = toml::Table::new();
    button.insert("label".into(), "確認 / OK".into());
    button.insert("value".into(), "ack".into());
    button.insert("level".into(), "ok".into());
    let mut escalation = toml::Table::new();
    // An announcement is not a safety check: HQ is not mailed a call list for it.
    escalation.insert("email_hq".into(), false.into());
    let mut t = toml::Table::new();
    t.insert("name".into(), SCENARIO_NAME.into());
    t.insert("title".into(), "本部からの指示 / HQ instruction".into());
    t.insert("drill".into(), drill.into());
    t.insert("deadline".into(), format!("{}s", deadline.as_secs()).into());
    t.insert("message".into(), message.into());
    // Shelter phones acknowledge an instruction the same way as staff.
    t.insert(
        "shelter_buttons".into(),
        toml::Value::Array(vec![toml::Value::Table(button.clone())]),
    );
    t.insert(
        "buttons".into(),
        toml::Value::Array(vec![toml::Value::Table(button)]),
    );
    t.insert("escalation".into(), escalation.into());
    let text = toml::to_string(&t).map_err(|e| ScenarioError::Syntax {
        origin: "announcement".into(),
        message: e.to_string(),
    })?;
    Scenario::parse(&text, "announcement")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_has_one_ack_button_and_the_long_deadline() {
        let s = scenario(
            "第一配備に移行します。各自持ち場へ。",
            None,
            false,
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(s.name, SCENARIO_NAME);
        assert_eq!(s.buttons.len(), 1);
        assert_eq!(s.buttons[0].value, "ack");
        assert_eq!(s.deadline, Duration::from_secs(3600));
        assert!(!s.escalation.email_hq);
        assert!(s.message_text(false).starts_with("第一配備"));
    }

    #[test]
    fn greetings_and_empty_text_are_refused_like_in_a_scenario_file() {
        let d = Duration::from_secs(3600);
        let err = scenario("お疲れ様です。集合してください。", None, false, d)
            .unwrap_err()
            .to_string();
        assert!(err.contains("greeting"), "{err}");
        assert!(scenario("  ", None, false, d).is_err());
        // TOML-looking text is just text.
        let s = scenario("\"]\n[x]\ny = 1", Some("quote test"), true, d).unwrap();
        assert!(s.message_ja.contains("[x]"));
    }
}
