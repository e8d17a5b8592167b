//! Scenarios: the roll-call templates in `scenarios/*.toml` that HQ picks from when a disaster
//! strikes (what the message says, which answer buttons it carries, who receives it, how long
//! before the unread are called, what happens after).
//!
//! What the message asks people to do (tap a button, reply, reading is enough) is not part of
//! the scenario's message: it depends on the route the message travels by, so [`Asks`] holds
//! one sentence per route capability (with defaults, overridable in `[message.ask]`) and
//! [`Asks::compose`] is the one rule, shared by every provider, that turns the message into the
//! text sent on a route ([`RouteTraits`]).
//!
//! Invariant: a [`Scenario`] value has passed every check below, so whatever starts a roll call
//! from one never has to re-check it; a message never says reading is enough on a route where
//! anpi cannot see reads. A file that breaks a rule is refused whole, with an error
//! naming the file and the key, because the moment a bad template is discovered must be a
//! quiet afternoon, not the night of an earthquake.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::IntoDeserializer;
use serde::{Deserialize, Serialize};

use crate::answers::{AnswerLevel, Choice};
use crate::contacts::{Contact, ContactKind};
use crate::providers::{AnswerButton, Capabilities};
use crate::simulator::PopulationSpec;

/// Sanjo's rule: whoever has not read the talk within 5 minutes gets a phone call.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5 * 60);
/// Shorter than this and people still looking for their phone land on the call list.
pub const MIN_DEADLINE: Duration = Duration::from_secs(30);
/// Longer than this and the check no longer tells HQ who is safe now.
pub const MAX_DEADLINE: Duration = Duration::from_secs(24 * 60 * 60);
/// One phone screen; a long message gets skimmed, and reading is what counts.
pub const MAX_MESSAGE_JA_CHARS: usize = 500;
/// The English text may run longer than the Japanese; together with the Japanese and the
/// drill prefixes it stays well under LINE WORKS' 2,000-character text limit.
pub const MAX_MESSAGE_EN_CHARS: usize = 1000;
/// LINE WORKS quick replies carry at most 13 items.
pub const MAX_BUTTONS: usize = 13;
/// LINE WORKS cuts quick-reply labels at 20 characters.
pub const MAX_LABEL_CHARS: usize = 20;
/// Values travel in callbacks and are stored per delivery: short, plain ASCII.
pub const MAX_VALUE_CHARS: usize = 32;
/// The title is shown in HQ lists next to the progress bar.
pub const MAX_TITLE_CHARS: usize = 40;
/// Put before the Japanese text of a drill, so no one mistakes a drill for a disaster.
pub const DRILL_PREFIX_JA: &str = "【訓練】";
/// Put before the English text of a drill.
pub const DRILL_PREFIX_EN: &str = "[DRILL]";

/// An instruction sentence is one short line.
pub const MAX_ASK_CHARS: usize = 120;
/// Phrases that tell people reading is enough or what to tap. They belong in `[message.ask]`,
/// which anpi words per route: on a route where reads are invisible, "reading is enough" would
/// put people who only read on the call list.
pub const ROUTE_PROMISES: &[&str] = &[
    "既読",
    "読むだけ",
    "reading this is enough",
    "reading is enough",
    "read receipt",
];

/// Business-mail boilerplate the city's chat guideline forbids: it pushes the one thing that
/// matters below the fold and teaches readers to skim.
pub const FORBIDDEN_GREETINGS: &[&str] = &[
    "お疲れ様です",
    "お疲れさまです",
    "おつかれさまです",
    "お世話になっております",
    "お世話になります",
    "各位",
    "拝啓",
    "よろしくお願いいたします",
    "よろしくお願い致します",
    "よろしくお願いします",
];

/// Why a scenario was refused or could not be found. Every variant names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    /// The file or directory could not be read.
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    /// TOML syntax, an unknown key or a wrong type; `message` is toml's own, which keeps the
    /// line, the column and the key.
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    /// The file parsed but a value breaks a rule.
    #[error("{origin}: {key}: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
    /// `find` had nothing by that name; lists what there is so the operator can retype.
    #[error("scenario {wanted:?} not found in {dir} (available: {})", list_or_none(.available))]
    NotFound {
        wanted: String,
        dir: String,
        available: Vec<String>,
    },
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// One file of a scenarios folder: its file name, and the scenario or what is wrong with it.
pub type ScenarioFile = (String, Result<Scenario, ScenarioError>);

/// A checked roll-call template.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// What HQ types to start it (`anpi rollcall start earthquake`): the `name` key, or the
    /// file stem.
    pub name: String,
    /// Short, for HQ lists: "地震 安否確認".
    pub title: String,
    pub message_ja: String,
    pub message_en: String,
    /// What the message asks people to do, per route capability (`[message.ask]`).
    pub asks: Asks,
    /// Japanese first in each label, e.g. "無事 / Safe"; values are unique; each has the
    /// level that tells HQ whether the answer needs action.
    pub buttons: Vec<Choice>,
    /// What shelter phones get instead of `buttons` (開設済・異常なし / 未開設 / 支援が必要):
    /// a shelter reports on the shelter, not on one person.
    pub shelter_buttons: Vec<Choice>,
    pub audience: Audience,
    /// From each recipient's own send time to the moment they go on the call list.
    pub deadline: Duration,
    /// The scenario is a drill whatever the trigger says; a real scenario may still be run as
    /// a drill (see [`Scenario::message_text`]).
    pub drill: bool,
    pub escalation: Escalation,
    /// Only for the demo and benchmarks: the simulated population.
    pub simulation: Option<PopulationSpec>,
}

/// One instruction, Japanese and English.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sentence {
    pub ja: String,
    pub en: String,
}

impl Sentence {
    fn new(ja: &str, en: &str) -> Self {
        Self {
            ja: ja.into(),
            en: en.into(),
        }
    }
}

/// What a message asks people to do: one sentence per thing a route can or cannot do. The
/// scenario's `[message.ask]` overrides any of them; the defaults are below. Stored with each
/// roll call, so the text sent stays what was decided at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Asks {
    /// The answer buttons are shown with the message.
    pub tap: Sentence,
    /// The message has no buttons; they reach the person in another message (a must-read
    /// board post, with the buttons following in talk).
    pub tap_elsewhere: Sentence,
    /// No buttons at all (Matrix): the numbered options are the instruction.
    pub number: Sentence,
    /// anpi sees who has read the message: reading alone confirms.
    pub read_enough: Sentence,
    /// anpi cannot see reads (LINE WORKS talk and rooms): a reply is needed.
    pub reply: Sentence,
}

impl Default for Asks {
    fn default() -> Self {
        Self {
            tap: Sentence::new("下のボタンを1つ押してください。", "Tap one button below."),
            tap_elsewhere: Sentence::new(
                "回答は、続けて届くメッセージのボタンで送ってください。",
                "Answer with the buttons in the message that follows.",
            ),
            number: Sentence::new("番号で返信してください。", "Reply with a number."),
            read_enough: Sentence::new(
                "できない場合は、読むだけで構いません。",
                "If you cannot, reading this is enough.",
            ),
            reply: Sentence::new(
                "できない場合は、何か一言返信してください。",
                "If you cannot, send any reply.",
            ),
        }
    }
}

/// Where a route shows the answer buttons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ButtonsShown {
    /// With the message (quick replies).
    WithMessage,
    /// In another message that follows (a board post's buttons come by talk or rooms).
    Elsewhere,
    /// Nowhere: people answer by replying with a number.
    Nowhere,
}

/// What the route a message travels by lets anpi see and the person do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTraits {
    /// anpi learns who has read it (a board post's readers, Matrix read receipts).
    pub reads_visible: bool,
    pub buttons: ButtonsShown,
}

impl RouteTraits {
    /// A 1:1 message on a provider with these capabilities.
    pub fn direct(caps: &Capabilities) -> Self {
        Self {
            reads_visible: caps.read_receipts,
            buttons: if caps.buttons {
                ButtonsShown::WithMessage
            } else {
                ButtonsShown::Nowhere
            },
        }
    }
}

impl Asks {
    /// The text sent on a route: the scenario's message, a blank line, then what to do, in
    /// Japanese and then English. Where no buttons are shown the numbered options come first
    /// (`1 無事 / 2 負傷`); where reads are invisible the fallback asks for a reply, never for
    /// reading alone.
    pub fn compose(&self, message: &str, route: RouteTraits, buttons: &[AnswerButton]) -> String {
        let primary = match route.buttons {
            ButtonsShown::WithMessage if !buttons.is_empty() => Some(&self.tap),
            ButtonsShown::Elsewhere if !buttons.is_empty() => Some(&self.tap_elsewhere),
            ButtonsShown::Nowhere if !buttons.is_empty() => Some(&self.number),
            _ => None,
        };
        let fallback = if route.reads_visible {
            &self.read_enough
        } else {
            &self.reply
        };
        let (options_ja, options_en) = if route.buttons == ButtonsShown::Nowhere {
            numbered_options(buttons)
        } else {
            (String::new(), String::new())
        };
        let line = |options: &str, first: Option<&str>, then: &str, sep: &str| {
            let mut out = String::new();
            if !options.is_empty() {
                out.push_str(options);
                out.push('\n');
            }
            if let Some(f) = first {
                out.push_str(f);
                out.push_str(sep);
            }
            out.push_str(then);
            out
        };
        format!(
            "{message}\n\n{}\n{}",
            line(
                &options_ja,
                primary.map(|p| p.ja.as_str()),
                &fallback.ja,
                ""
            ),
            line(
                &options_en,
                primary.map(|p| p.en.as_str()),
                &fallback.en,
                " "
            ),
        )
    }
}

/// `1 無事 / 2 負傷` and `1 Safe / 2 Injured` from labels written "無事 / Safe".
pub fn numbered_options(buttons: &[AnswerButton]) -> (String, String) {
    let (ja, en): (Vec<String>, Vec<String>) = buttons
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let (ja, en) = match b.label.split_once(" / ") {
                Some((ja, en)) => (ja.trim(), en.trim()),
                None => (b.label.trim(), b.label.trim()),
            };
            (format!("{} {ja}", i + 1), format!("{} {en}", i + 1))
        })
        .unzip();
    (ja.join(" / "), en.join(" / "))
}

/// Who receives the roll call. Each list, when empty, means "no restriction"; the three
/// restrictions all have to hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audience {
    pub departments: Vec<String>,
    pub kinds: Vec<ContactKind>,
    pub shelters: Vec<String>,
}

impl Audience {
    /// Whether `c` is in the audience. A shelter phone belongs to a shelter, not a department,
    /// so a department filter leaves every shelter phone out.
    pub fn matches(&self, c: &Contact) -> bool {
        let kind_ok = self.kinds.is_empty() || self.kinds.contains(&c.kind);
        let department_ok = self.departments.is_empty()
            || (c.kind != ContactKind::ShelterPhone
                && c.department
                    .as_deref()
                    .is_some_and(|d| self.departments.iter().any(|x| x == d.trim())));
        let shelter_ok = self.shelters.is_empty()
            || c.shelter
                .as_deref()
                .is_some_and(|s| self.shelters.iter().any(|x| x == s.trim()));
        kind_ok && department_ok && shelter_ok
    }
}

/// What happens besides the phone-call list once the deadline passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escalation {
    /// Send HQ a summary e-mail (counts and the call list). On unless turned off.
    pub email_hq: bool,
    /// E-mail each unconfirmed person directly. Off by default: it needs e-mail addresses,
    /// which live on the personal-data side.
    pub email_unconfirmed: bool,
    /// Send the chat message again to whoever has not read it after this long.
    pub resend_after: Option<Duration>,
}

impl Default for Escalation {
    fn default() -> Self {
        Self {
            email_hq: true,
            email_unconfirmed: false,
            resend_after: None,
        }
    }
}

// The file as written; `parse` turns it into a `Scenario` or an error.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<String>,
    title: Option<String>,
    #[serde(default)]
    drill: bool,
    /// A raw value so a bad duration gets our error (with an example), not serde's.
    deadline: Option<toml::Value>,
    #[serde(default)]
    message: RawMessage,
    #[serde(default)]
    buttons: Vec<RawButton>,
    #[serde(default)]
    shelter_buttons: Vec<RawButton>,
    #[serde(default)]
    audience: RawAudience,
    #[serde(default)]
    escalation: RawEscalation,
    simulation: Option<PopulationSpec>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMessage {
    #[serde(default)]
    ja: String,
    #[serde(default)]
    en: String,
    #[serde(default)]
    ask: RawAsks,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAsks {
    tap: Option<RawSentence>,
    tap_elsewhere: Option<RawSentence>,
    number: Option<RawSentence>,
    read_enough: Option<RawSentence>,
    reply: Option<RawSentence>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSentence {
    ja: String,
    en: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawButton {
    label: String,
    value: String,
    /// A string, so an unknown level gets an error naming the key and the allowed values.
    level: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudience {
    #[serde(default)]
    departments: Vec<String>,
    /// Strings, so an unknown kind gets an error naming `audience.kinds`.
    #[serde(default)]
    kinds: Vec<String>,
    #[serde(default)]
    shelters: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEscalation {
    email_hq: Option<bool>,
    #[serde(default)]
    email_unconfirmed: bool,
    resend_after: Option<toml::Value>,
}

/// Builds errors that all carry the same file name.
struct Checker<'a> {
    origin: &'a str,
}

impl Checker<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid {
            origin: self.origin.to_string(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn name(&self, raw: Option<String>) -> Result<String, ScenarioError> {
        let from_key = raw.is_some();
        let name = match raw {
            Some(n) => n.trim().to_string(),
            None => Path::new(self.origin)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        if !is_slug(&name, 64) {
            let hint = if from_key {
                ""
            } else {
                " (taken from the file name; set `name = \"...\"` to choose another)"
            };
            return Err(self.err(
                "name",
                format!(
                    "{name:?} is not a usable name: use 1 to 64 of a-z, 0-9, '_' and '-'{hint}"
                ),
            ));
        }
        Ok(name)
    }

    fn text(&self, key: &str, raw: &str, max: usize) -> Result<String, ScenarioError> {
        let text = raw.trim();
        if text.is_empty() {
            return Err(self.err(key, "is empty"));
        }
        let n = text.chars().count();
        if n > max {
            return Err(self.err(
                key,
                format!("is {n} characters long; keep it to {max} or fewer"),
            ));
        }
        // Messages may run over several lines; a title or label is one line.
        let multi_line = key.starts_with("message");
        if let Some((i, ch)) = text
            .chars()
            .enumerate()
            .find(|(_, ch)| ch.is_control() && !(multi_line && matches!(ch, '\n' | '\r' | '\t')))
        {
            return Err(self.err(
                key,
                format!(
                    "contains the control character U+{:04X} at character {}; delete it{}",
                    ch as u32,
                    i + 1,
                    if multi_line {
                        ""
                    } else {
                        " (this text is one line)"
                    }
                ),
            ));
        }
        if let Some(g) = FORBIDDEN_GREETINGS.iter().find(|g| text.contains(**g)) {
            return Err(self.err(
                key,
                format!(
                    "contains the greeting {g:?}; the chat guideline forbids business-mail \
                     greetings: start with what happened and what to do"
                ),
            ));
        }
        Ok(text.to_string())
    }

    /// The scenario's message says what happened and what to do about it; what to tap or
    /// whether reading is enough depends on the route, and is said by `[message.ask]`.
    fn no_route_promise(&self, key: &str, text: &str) -> Result<(), ScenarioError> {
        let lower = text.to_lowercase();
        match ROUTE_PROMISES.iter().find(|p| lower.contains(*p)) {
            Some(p) => Err(self.err(
                key,
                format!(
                    "says {p:?}; whether reading is enough depends on the route (LINE WORKS \
                     talk shows no reads): leave it out, anpi adds what to do per route from \
                     [message.ask]"
                ),
            )),
            None => Ok(()),
        }
    }

    fn asks(&self, raw: RawAsks) -> Result<Asks, ScenarioError> {
        let mut asks = Asks::default();
        for (name, raw, slot) in [
            ("tap", raw.tap, &mut asks.tap),
            ("tap_elsewhere", raw.tap_elsewhere, &mut asks.tap_elsewhere),
            ("number", raw.number, &mut asks.number),
            ("read_enough", raw.read_enough, &mut asks.read_enough),
            ("reply", raw.reply, &mut asks.reply),
        ] {
            if let Some(r) = raw {
                let key = format!("message.ask.{name}");
                *slot = Sentence {
                    ja: self.text(&format!("{key}.ja"), &r.ja, MAX_ASK_CHARS)?,
                    en: self.text(&format!("{key}.en"), &r.en, MAX_ASK_CHARS)?,
                };
            }
        }
        // Only the sentence for routes that show reads may say reading is enough.
        for (name, s) in [
            ("tap", &asks.tap),
            ("tap_elsewhere", &asks.tap_elsewhere),
            ("number", &asks.number),
            ("reply", &asks.reply),
        ] {
            self.no_route_promise(&format!("message.ask.{name}.ja"), &s.ja)?;
            self.no_route_promise(&format!("message.ask.{name}.en"), &s.en)?;
        }
        Ok(asks)
    }

    fn duration(&self, key: &str, v: &toml::Value) -> Result<Duration, ScenarioError> {
        const EXAMPLE: &str = "(write e.g. \"5m\" or \"300s\")";
        let d = match v {
            toml::Value::String(s) => humantime::parse_duration(s.trim())
                .map_err(|_| self.err(key, format!("{s:?} is not a duration {EXAMPLE}")))?,
            toml::Value::Integer(i) => {
                return Err(self.err(key, format!("{i} is not a duration {EXAMPLE}")))
            }
            other => {
                return Err(self.err(
                    key,
                    format!("a {} is not a duration {EXAMPLE}", other.type_str()),
                ))
            }
        };
        if !(MIN_DEADLINE..=MAX_DEADLINE).contains(&d) {
            return Err(self.err(
                key,
                format!(
                    "{} is out of range: it must be between {} and {}",
                    humantime::format_duration(d),
                    humantime::format_duration(MIN_DEADLINE),
                    humantime::format_duration(MAX_DEADLINE),
                ),
            ));
        }
        Ok(d)
    }

    fn buttons(&self, key: &str, raw: Vec<RawButton>) -> Result<Vec<Choice>, ScenarioError> {
        if raw.is_empty() {
            return Err(self.err(
                key,
                format!(
                    "none given; add 1 to {MAX_BUTTONS} [[{key}]] with a label, a value and a level"
                ),
            ));
        }
        if raw.len() > MAX_BUTTONS {
            return Err(self.err(
                key,
                format!(
                    "{} given; LINE WORKS shows at most {MAX_BUTTONS}",
                    raw.len()
                ),
            ));
        }
        // value -> 1-based position, to name the first holder of a duplicate.
        let mut seen_values: BTreeMap<String, usize> = BTreeMap::new();
        let mut seen_labels: BTreeMap<String, usize> = BTreeMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, b) in raw.into_iter().enumerate() {
            let n = i + 1;
            let label = b.label.trim().to_string();
            if label.is_empty() {
                return Err(self.err(format!("{key}[{n}].label"), "is empty"));
            }
            if let Some(ch) = label.chars().find(|c| c.is_control()) {
                return Err(self.err(
                    format!("buttons[{n}].label"),
                    format!(
                        "{label:?} contains the control character U+{:04X}; delete it",
                        ch as u32
                    ),
                ));
            }
            let chars = label.chars().count();
            if chars > MAX_LABEL_CHARS {
                return Err(self.err(
                    format!("{key}[{n}].label"),
                    format!(
                        "{label:?} is {chars} characters long; LINE WORKS shows {MAX_LABEL_CHARS}"
                    ),
                ));
            }
            if !is_slug(&b.value, MAX_VALUE_CHARS) {
                return Err(self.err(
                    format!("{key}[{n}].value"),
                    format!(
                        "{:?} is not a usable value: use 1 to {MAX_VALUE_CHARS} of a-z, 0-9, \
                         '_' and '-'",
                        b.value
                    ),
                ));
            }
            if let Some(first) = seen_values.insert(b.value.clone(), n) {
                return Err(self.err(
                    format!("{key}[{n}].value"),
                    format!(
                        "{:?} is also the value of {key}[{first}]; HQ could not tell the \
                         answers apart",
                        b.value
                    ),
                ));
            }
            if let Some(first) = seen_labels.insert(label.clone(), n) {
                return Err(self.err(
                    format!("{key}[{n}].label"),
                    format!("{label:?} is also the label of {key}[{first}]"),
                ));
            }
            let level = match b.level.as_deref() {
                Some(l) => l
                    .parse::<AnswerLevel>()
                    .map_err(|e| self.err(format!("{key}[{n}].level"), e))?,
                None => AnswerLevel::conventional(&b.value).ok_or_else(|| {
                    self.err(
                        format!("{key}[{n}].level"),
                        format!(
                            "missing; say what {:?} means for HQ: level = \"ok\" (nothing to \
                             do), \"attention\" (HQ reads it) or \"urgent\" (HQ acts at once)",
                            b.value
                        ),
                    )
                })?,
            };
            out.push(Choice {
                label,
                value: b.value,
                level,
            });
        }
        Ok(out)
    }

    fn names(&self, key: &str, raw: Vec<String>) -> Result<Vec<String>, ScenarioError> {
        raw.into_iter()
            .map(|s| {
                let t = s.trim();
                if t.is_empty() {
                    Err(self.err(key, "contains an empty name"))
                } else {
                    Ok(t.to_string())
                }
            })
            .collect()
    }

    fn audience(&self, raw: RawAudience) -> Result<Audience, ScenarioError> {
        let kinds = raw
            .kinds
            .iter()
            .map(|k| {
                ContactKind::deserialize(k.trim().into_deserializer())
                    .map_err(|e: serde::de::value::Error| self.err("audience.kinds", e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Audience {
            departments: self.names("audience.departments", raw.departments)?,
            kinds,
            shelters: self.names("audience.shelters", raw.shelters)?,
        })
    }
}

/// 1..=max of `[a-z0-9_-]`: safe in a URL, a CLI argument, a callback and a file name.
fn is_slug(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Adds `prefix` unless the text already starts with it, so a drill file that spells out
/// 【訓練】 itself does not get it twice.
fn with_prefix(prefix: &str, text: &str) -> String {
    if text.starts_with(prefix) {
        text.to_string()
    } else {
        format!("{prefix}{text}")
    }
}

impl Scenario {
    /// Reads and checks one scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| io_error(path, &e))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Checks a scenario's text. `origin` names it in errors and, without a `name` key, gives
    /// the name (its file stem).
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let raw: RawScenario = toml::from_str(text).map_err(|e| ScenarioError::Syntax {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let c = Checker { origin };

        let name = c.name(raw.name)?;
        let title = match raw.title {
            Some(t) => c.text("title", &t, MAX_TITLE_CHARS)?,
            None => {
                return Err(c.err(
                    "title",
                    "missing; add a short title for HQ lists, e.g. title = \"地震 安否確認\"",
                ))
            }
        };
        let message_ja = c.text("message.ja", &raw.message.ja, MAX_MESSAGE_JA_CHARS)?;
        let message_en = c.text("message.en", &raw.message.en, MAX_MESSAGE_EN_CHARS)?;
        c.no_route_promise("message.ja", &message_ja)?;
        c.no_route_promise("message.en", &message_en)?;
        let asks = c.asks(raw.message.ask)?;
        // A real alarm that looks like a drill gets ignored: refuse the mix-up here.
        if !raw.drill {
            if message_ja.starts_with(DRILL_PREFIX_JA) {
                return Err(c.err(
                    "message.ja",
                    format!("starts with {DRILL_PREFIX_JA} but drill = false"),
                ));
            }
            if message_en.starts_with(DRILL_PREFIX_EN) {
                return Err(c.err(
                    "message.en",
                    format!("starts with {DRILL_PREFIX_EN} but drill = false"),
                ));
            }
        }
        let buttons = c.buttons("buttons", raw.buttons)?;
        let shelter_buttons = if raw.shelter_buttons.is_empty() {
            crate::answers::default_shelter_choices()
        } else {
            c.buttons("shelter_buttons", raw.shelter_buttons)?
        };
        let deadline = match &raw.deadline {
            Some(v) => c.duration("deadline", v)?,
            None => DEFAULT_DEADLINE,
        };
        let audience = c.audience(raw.audience)?;
        let resend_after = match &raw.escalation.resend_after {
            Some(v) => Some(c.duration("escalation.resend_after", v)?),
            None => None,
        };
        let escalation = Escalation {
            email_hq: raw.escalation.email_hq.unwrap_or(true),
            email_unconfirmed: raw.escalation.email_unconfirmed,
            resend_after,
        };

        Ok(Scenario {
            name,
            title,
            message_ja,
            message_en,
            asks,
            buttons,
            shelter_buttons,
            audience,
            deadline,
            drill: raw.drill,
            escalation,
            simulation: raw.simulation,
        })
    }

    /// The scenario's message: Japanese, a blank line, English. What to do is added per route
    /// by [`Asks::compose`] (see [`Scenario::text_for`]). Pass `self.drill || <the trigger's
    /// drill flag>`, so a real template can be rehearsed; a drill is marked 【訓練】 / [DRILL]
    /// up front.
    pub fn message_text(&self, drill: bool) -> String {
        if drill {
            format!(
                "{}\n\n{}",
                with_prefix(DRILL_PREFIX_JA, &self.message_ja),
                with_prefix(&format!("{DRILL_PREFIX_EN} "), &self.message_en),
            )
        } else {
            format!("{}\n\n{}", self.message_ja, self.message_en)
        }
    }

    /// The whole text a person gets on `route`: the message and what to do there.
    pub fn text_for(&self, drill: bool, route: RouteTraits) -> String {
        self.asks.compose(
            &self.message_text(drill),
            route,
            &crate::answers::buttons(&self.buttons),
        )
    }

    /// Every `*.toml` in `dir`, checked and sorted by name. Files are read in path order and
    /// the first bad one is the error, so the same directory always gives the same answer.
    pub fn load_dir(dir: &Path) -> Result<Vec<Scenario>, ScenarioError> {
        let mut out: Vec<(Scenario, PathBuf)> = Vec::new();
        for path in toml_files(dir)? {
            let s = Self::load(&path)?;
            if let Some((_, first)) = out.iter().find(|(o, _)| o.name == s.name) {
                return Err(ScenarioError::Invalid {
                    origin: path.display().to_string(),
                    key: "name".to_string(),
                    message: format!("{:?} is also the name of {}", s.name, first.display()),
                });
            }
            out.push((s, path));
        }
        out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        Ok(out.into_iter().map(|(s, _)| s).collect())
    }

    /// Every `*.toml` in `dir`, each loaded on its own: a broken file (or a second file with
    /// a name already taken) comes back as its file name and error, and the others stay
    /// usable. Only a folder that cannot be read at all is an error.
    pub fn load_dir_each(dir: &Path) -> Result<Vec<ScenarioFile>, ScenarioError> {
        let mut out: Vec<ScenarioFile> = Vec::new();
        for path in toml_files(dir)? {
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let loaded = Self::load(&path).and_then(|s| {
                let taken = out
                    .iter()
                    .find(|(_, o)| o.as_ref().is_ok_and(|o| o.name == s.name));
                match taken {
                    Some((first, _)) => Err(ScenarioError::Invalid {
                        origin: file.clone(),
                        key: "name".to_string(),
                        message: format!("{:?} is also the name of {first}", s.name),
                    }),
                    None => Ok(s),
                }
            });
            out.push((file, loaded));
        }
        Ok(out)
    }

    /// What the operator typed: a path (anything with a folder in it, e.g. `./custom.toml`),
    /// a file name in `dir` (`flood.toml`), or a name looked up as `dir/<name>.toml`, then by
    /// the `name` key of the files in `dir`.
    pub fn find(dir: &Path, name_or_path: &str) -> Result<Scenario, ScenarioError> {
        let as_path = Path::new(name_or_path);
        // A bare word never reaches outside `dir`: a name that came in over HTTP must not
        // read, say, the contacts file beside the daemon and echo its lines in an error.
        if as_path.is_absolute() || as_path.components().count() > 1 {
            return Self::load(as_path);
        }
        let direct = if name_or_path.ends_with(".toml") {
            Some(dir.join(name_or_path))
        } else if is_slug(name_or_path, 64) {
            Some(dir.join(format!("{name_or_path}.toml")))
        } else {
            None
        };
        if let Some(direct) = direct.filter(|p| p.is_file()) {
            return Self::load(&direct);
        }
        // The `name` key may differ from the file stem. A broken file is listed by its stem
        // here: the operator asked for something else, and `load` on it will say what is wrong.
        let mut available = Vec::new();
        for path in toml_files(dir)? {
            match Self::load(&path) {
                Ok(s) if s.name == name_or_path => return Ok(s),
                Ok(s) => available.push(s.name),
                Err(_) => available.extend(
                    path.file_stem()
                        .map(|s| format!("{} (invalid)", s.to_string_lossy())),
                ),
            }
        }
        available.sort();
        Err(ScenarioError::NotFound {
            wanted: name_or_path.to_string(),
            dir: dir.display().to_string(),
            available,
        })
    }
}

impl ScenarioError {
    /// The error for someone outside the server (an HTTP client): file names but no folder
    /// paths, and no more than a short prefix of what the file or request said.
    pub fn public(&self) -> String {
        let file = |origin: &str| {
            Path::new(origin)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| origin.to_string())
        };
        let short = |m: &str| {
            let m: String = m.chars().take(300).collect();
            m
        };
        match self {
            Self::Io { path, .. } => format!("{}: the file could not be read", file(path)),
            Self::Syntax { origin, message } => format!("{}: {}", file(origin), short(message)),
            Self::Invalid {
                origin,
                key,
                message,
            } => format!("{}: {key}: {}", file(origin), short(message)),
            Self::NotFound {
                wanted, available, ..
            } => format!(
                "scenario {:?} not found (available: {})",
                wanted.chars().take(64).collect::<String>(),
                list_or_none(available)
            ),
        }
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> ScenarioError {
    let message = if e.kind() == std::io::ErrorKind::InvalidData {
        "is not UTF-8 text; save it as UTF-8".to_string()
    } else {
        format!("cannot read: {e}")
    };
    ScenarioError::Io {
        path: path.display().to_string(),
        message,
    }
}

/// The `*.toml` files directly in `dir`, in path order.
fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, ScenarioError> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_error(dir, &e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| io_error(dir, &e))?.path();
        if path.extension().is_some_and(|x| x == "toml") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::StaffId;

    #[test]
    fn a_broken_file_is_listed_with_its_error_and_the_others_stay_usable() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), EARTHQUAKE).unwrap();
        std::fs::write(dir.path().join("b.toml"), "title = [").unwrap();
        std::fs::write(dir.path().join("c.toml"), EARTHQUAKE).unwrap();
        let each = Scenario::load_dir_each(dir.path()).unwrap();
        let files: Vec<&str> = each.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(files, ["a.toml", "b.toml", "c.toml"]);
        assert!(each[0].1.is_ok());
        let broken = each[1].1.as_ref().unwrap_err().public();
        assert!(broken.starts_with("b.toml: "), "{broken}");
        let dir_text = dir.path().display().to_string();
        assert!(!broken.contains(&dir_text), "{broken}");
        let twice = each[2].1.as_ref().unwrap_err().public();
        assert!(twice.contains("also the name of a.toml"), "{twice}");
        let missing = Scenario::find(dir.path(), "nothing").unwrap_err().public();
        assert!(!missing.contains(&dir_text), "{missing}");
        assert!(missing.contains("earthquake"), "{missing}");
    }

    const EARTHQUAKE: &str = include_str!("../scenarios/earthquake.toml");
    const FLOOD: &str = include_str!("../scenarios/flood.toml");
    const DRILL: &str = include_str!("../scenarios/drill.toml");

    /// A small valid scenario; tests change one line of it.
    const MINIMAL: &str = r#"
title = "テスト"
deadline = "5m"
[message]
ja = "地震がありました。読んだら下のボタンを押してください。"
en = "An earthquake. Tap a button below."
[[buttons]]
label = "無事 / Safe"
value = "safe"
[[buttons]]
label = "負傷 / Injured"
value = "injured"
"#;

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(text, "scenarios/test.toml")
    }

    fn invalid_key(e: &ScenarioError) -> &str {
        match e {
            ScenarioError::Invalid { key, .. } => key,
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    fn contact(kind: ContactKind, department: Option<&str>, shelter: Option<&str>) -> Contact {
        Contact {
            id: StaffId::parse("S0001").unwrap(),
            name: "三条 太郎".to_string(),
            kana: None,
            department: department.map(str::to_string),
            role: None,
            call_priority: 1,
            phones: Vec::new(),
            email: None,
            chat: BTreeMap::new(),
            kind,
            shelter: shelter.map(str::to_string),
        }
    }

    #[test]
    fn shipped_earthquake_scenario_is_valid_and_real() {
        let s = Scenario::parse(EARTHQUAKE, "scenarios/earthquake.toml").unwrap();
        assert_eq!(s.name, "earthquake");
        assert!(!s.drill);
        assert_eq!(s.deadline, Duration::from_secs(300));
        assert!(s.buttons.iter().any(|b| b.value == "safe"));
        assert!(s.buttons.len() >= 4);
        assert!(s.escalation.email_hq);
        assert!(s.simulation.is_none());
    }

    #[test]
    fn shipped_flood_scenario_is_valid_and_real() {
        let s = Scenario::parse(FLOOD, "scenarios/flood.toml").unwrap();
        assert_eq!(s.name, "flood");
        assert!(!s.drill);
        assert!(s.buttons.iter().any(|b| b.value == "evacuating"));
    }

    #[test]
    fn shipped_drill_scenario_is_a_drill_with_a_population() {
        let s = Scenario::parse(DRILL, "scenarios/drill.toml").unwrap();
        assert_eq!(s.name, "drill");
        assert!(s.drill);
        assert_eq!(s.deadline, Duration::from_secs(300));
        assert_eq!(s.simulation.as_ref().map(|p| p.population), Some(1000));
        assert!(s.message_text(true).starts_with(DRILL_PREFIX_JA));
    }

    #[test]
    fn defaults_apply_when_keys_are_left_out() {
        let s = parse(&MINIMAL.replace("deadline = \"5m\"\n", "")).unwrap();
        assert_eq!(s.name, "test");
        assert_eq!(s.deadline, DEFAULT_DEADLINE);
        assert!(!s.drill);
        assert_eq!(s.audience, Audience::default());
        assert_eq!(s.escalation, Escalation::default());
        assert!(s.escalation.email_hq);
    }

    #[test]
    fn greeting_is_refused_with_the_phrase_named() {
        let text = MINIMAL.replace(
            "ja = \"地震がありました。",
            "ja = \"お疲れ様です。地震がありました。",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(invalid_key(&e), "message.ja");
        let shown = e.to_string();
        assert!(shown.contains("お疲れ様です"), "{shown}");
        assert!(
            shown.starts_with("scenarios/test.toml: message.ja: "),
            "{shown}"
        );

        let text = MINIMAL.replace("押してください。", "押してください。よろしくお願いします。");
        let shown = parse(&text).unwrap_err().to_string();
        assert!(shown.contains("よろしくお願いします"), "{shown}");
    }

    #[test]
    fn control_characters_are_refused_but_a_message_may_have_line_breaks() {
        let text = MINIMAL.replace("title = \"テスト\"", "title = \"テ\\u0000スト\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(invalid_key(&e), "title");
        assert!(e.to_string().contains("U+0000 at character 2"), "{e}");
        let text = MINIMAL.replace("label = \"無事 / Safe\"", "label = \"無事\\u001b\"");
        assert_eq!(invalid_key(&parse(&text).unwrap_err()), "buttons[1].label");
        let text = MINIMAL.replace("An earthquake.", "An\\u0007 earthquake.");
        assert_eq!(invalid_key(&parse(&text).unwrap_err()), "message.en");
        let text = MINIMAL.replace("地震がありました。", "地震がありました。\\n\\t");
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn unknown_key_is_refused_with_the_key_and_line_named() {
        let text = MINIMAL.replace("[message]\n", "[message]\njp = \"x\"\n");
        let e = parse(&text).unwrap_err();
        let ScenarioError::Syntax { origin, message } = &e else {
            panic!("expected a Syntax error, got {e:?}");
        };
        assert_eq!(origin, "scenarios/test.toml");
        assert!(message.contains("jp"), "{message}");
        assert!(message.contains("line 5"), "{message}");

        let text = format!("colour = \"red\"\n{MINIMAL}");
        let shown = parse(&text).unwrap_err().to_string();
        assert!(shown.contains("colour"), "{shown}");
    }

    #[test]
    fn bad_deadline_is_named_with_an_example() {
        let text = MINIMAL.replace("deadline = \"5m\"", "deadline = \"five minutes\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "scenarios/test.toml: deadline: \"five minutes\" is not a duration \
             (write e.g. \"5m\" or \"300s\")"
        );

        let text = MINIMAL.replace("deadline = \"5m\"", "deadline = 300");
        assert_eq!(invalid_key(&parse(&text).unwrap_err()), "deadline");
    }

    #[test]
    fn deadline_outside_30s_to_24h_is_refused() {
        for bad in ["10s", "25h"] {
            let text = MINIMAL.replace("\"5m\"", &format!("\"{bad}\""));
            let e = parse(&text).unwrap_err();
            assert_eq!(invalid_key(&e), "deadline", "{bad}");
            assert!(e.to_string().contains("out of range"), "{e}");
        }
        for good in ["30s", "24h"] {
            let text = MINIMAL.replace("\"5m\"", &format!("\"{good}\""));
            parse(&text).unwrap();
        }
    }

    #[test]
    fn duplicate_button_values_are_refused() {
        let text = MINIMAL.replace("value = \"injured\"", "value = \"safe\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(invalid_key(&e), "buttons[2].value");
        assert!(e.to_string().contains("buttons[1]"), "{e}");
    }

    #[test]
    fn more_than_13_buttons_are_refused_and_13_pass() {
        let with = |n: usize| {
            let mut text = MINIMAL.split("[[buttons]]").next().unwrap().to_string();
            for i in 0..n {
                text.push_str(&format!(
                    "[[buttons]]\nlabel = \"選択{i}\"\nvalue = \"v{i}\"\nlevel = \"ok\"\n"
                ));
            }
            parse(&text)
        };
        assert_eq!(with(13).unwrap().buttons.len(), 13);
        let e = with(14).unwrap_err();
        assert_eq!(invalid_key(&e), "buttons");
        assert_eq!(invalid_key(&with(0).unwrap_err()), "buttons");
    }

    #[test]
    fn every_button_has_a_level_and_an_unknown_one_is_refused_with_the_choices() {
        let s = parse(MINIMAL).unwrap();
        let levels: Vec<_> = s.buttons.iter().map(|b| b.level).collect();
        assert_eq!(levels, [AnswerLevel::Ok, AnswerLevel::Urgent]);

        let text = MINIMAL.replace(
            "value = \"injured\"",
            "value = \"injured\"\nlevel = \"critical\"",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(invalid_key(&e), "buttons[2].level");
        let shown = e.to_string();
        assert!(
            shown.starts_with("scenarios/test.toml: buttons[2].level: "),
            "{shown}"
        );
        assert!(
            shown.contains("\"ok\", \"attention\" or \"urgent\""),
            "{shown}"
        );

        // A value anpi does not know must say what it means.
        let text = MINIMAL.replace("value = \"injured\"", "value = \"support\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(invalid_key(&e), "buttons[2].level");
        assert!(e.to_string().contains("missing"), "{e}");
        let text = MINIMAL.replace(
            "value = \"injured\"",
            "value = \"support\"\nlevel = \"attention\"",
        );
        assert_eq!(
            parse(&text).unwrap().buttons[1].level,
            AnswerLevel::Attention
        );
    }

    #[test]
    fn shelter_phones_get_their_own_buttons_or_the_default_set() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.shelter_buttons, crate::answers::default_shelter_choices());
        let text = format!(
            "{MINIMAL}[[shelter_buttons]]\nlabel = \"開設済\"\nvalue = \"opened\"\n\
             [[shelter_buttons]]\nlabel = \"物資不足\"\nvalue = \"supplies\"\nlevel = \"urgent\"\n"
        );
        let s = parse(&text).unwrap();
        let got: Vec<_> = s
            .shelter_buttons
            .iter()
            .map(|b| (b.value.as_str(), b.level))
            .collect();
        assert_eq!(
            got,
            [
                ("opened", AnswerLevel::Ok),
                ("supplies", AnswerLevel::Urgent)
            ]
        );
        let text = format!(
            "{MINIMAL}[[shelter_buttons]]\nlabel = \"x\"\nvalue = \"x\"\nlevel = \"high\"\n"
        );
        assert_eq!(
            invalid_key(&parse(&text).unwrap_err()),
            "shelter_buttons[1].level"
        );
    }

    #[test]
    fn shipped_scenarios_give_every_button_an_explicit_level() {
        for (name, text) in [
            ("earthquake", EARTHQUAKE),
            ("flood", FLOOD),
            ("drill", DRILL),
        ] {
            let raw: toml::Value = toml::from_str(text).unwrap();
            for key in ["buttons", "shelter_buttons"] {
                let list = raw.get(key).and_then(|b| b.as_array());
                let list = list.unwrap_or_else(|| panic!("{name}: no {key}"));
                for b in list {
                    assert!(b.get("level").is_some(), "{name}: {key} {b:?} has no level");
                }
            }
            let s = Scenario::parse(text, name).unwrap();
            assert!(
                s.buttons.iter().any(|b| b.level == AnswerLevel::Urgent),
                "{name}: no way to ask for help"
            );
        }
    }

    #[test]
    fn bad_button_labels_and_values_are_refused() {
        let cases = [
            ("value = \"safe\"", "value = \"Safe!\"", "buttons[1].value"),
            ("value = \"safe\"", "value = \"\"", "buttons[1].value"),
            (
                "label = \"無事 / Safe\"",
                "label = \"  \"",
                "buttons[1].label",
            ),
            (
                "label = \"無事 / Safe\"",
                "label = \"無事です / I am safe and sound\"",
                "buttons[1].label",
            ),
        ];
        for (from, to, key) in cases {
            let e = parse(&MINIMAL.replace(from, to)).unwrap_err();
            assert_eq!(invalid_key(&e), key, "{to}: {e}");
        }
    }

    #[test]
    fn empty_or_long_messages_are_refused() {
        let text = MINIMAL.replace("en = \"An earthquake. Tap a button below.\"", "en = \" \"");
        assert_eq!(invalid_key(&parse(&text).unwrap_err()), "message.en");

        let long = "あ".repeat(MAX_MESSAGE_JA_CHARS + 1);
        let text = MINIMAL.replace(
            "ja = \"地震がありました。読んだら下のボタンを押してください。\"",
            &format!("ja = \"{long}\""),
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(invalid_key(&e), "message.ja");
        assert!(e.to_string().contains("501"), "{e}");
    }

    #[test]
    fn real_scenario_with_a_drill_prefix_is_refused() {
        let text = MINIMAL.replace("ja = \"地震", "ja = \"【訓練】地震");
        assert_eq!(invalid_key(&parse(&text).unwrap_err()), "message.ja");
        let text = format!("drill = true\n{text}");
        assert!(parse(&text).unwrap().drill);
    }

    #[test]
    fn unknown_contact_kind_is_refused() {
        let text = format!("{MINIMAL}[audience]\nkinds = [\"staff\", \"mayor\"]\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(invalid_key(&e), "audience.kinds");
        assert!(e.to_string().contains("mayor"), "{e}");

        let text = format!("{MINIMAL}[audience]\nkinds = [\"shelter_phone\"]\n");
        assert_eq!(
            parse(&text).unwrap().audience.kinds,
            vec![ContactKind::ShelterPhone]
        );
    }

    #[test]
    fn escalation_keys_are_read() {
        let text = format!(
            "{MINIMAL}[escalation]\nemail_hq = false\nemail_unconfirmed = true\nresend_after = \"10m\"\n"
        );
        let e = parse(&text).unwrap().escalation;
        assert_eq!(
            e,
            Escalation {
                email_hq: false,
                email_unconfirmed: true,
                resend_after: Some(Duration::from_secs(600)),
            }
        );
        let text = format!("{MINIMAL}[escalation]\nresend_after = \"soon\"\n");
        assert_eq!(
            invalid_key(&parse(&text).unwrap_err()),
            "escalation.resend_after"
        );
    }

    #[test]
    fn name_comes_from_the_key_or_the_file_stem_and_must_be_a_slug() {
        assert_eq!(parse(MINIMAL).unwrap().name, "test");
        let text = format!("name = \"quake-2\"\n{MINIMAL}");
        assert_eq!(parse(&text).unwrap().name, "quake-2");
        let text = format!("name = \"地震\"\n{MINIMAL}");
        assert_eq!(invalid_key(&parse(&text).unwrap_err()), "name");
        let e = Scenario::parse(MINIMAL, "scenarios/My Quake.toml").unwrap_err();
        assert_eq!(invalid_key(&e), "name");
    }

    #[test]
    fn audience_everyone_matches_all_contacts() {
        let all = Audience::default();
        assert!(all.matches(&contact(ContactKind::Staff, None, None)));
        assert!(all.matches(&contact(
            ContactKind::ShelterPhone,
            None,
            Some("第一中学校")
        )));
    }

    #[test]
    fn audience_department_filter_leaves_out_shelter_phones() {
        let a = Audience {
            departments: vec!["総務課".to_string()],
            ..Audience::default()
        };
        assert!(a.matches(&contact(ContactKind::Staff, Some("総務課"), None)));
        assert!(!a.matches(&contact(ContactKind::Staff, Some("建設課"), None)));
        assert!(!a.matches(&contact(ContactKind::Staff, None, None)));
        assert!(!a.matches(&contact(
            ContactKind::ShelterPhone,
            Some("総務課"),
            Some("第一中学校")
        )));
    }

    #[test]
    fn audience_filters_are_anded() {
        let a = Audience {
            departments: vec![],
            kinds: vec![ContactKind::ShelterPhone],
            shelters: vec!["第一中学校".to_string()],
        };
        assert!(a.matches(&contact(
            ContactKind::ShelterPhone,
            None,
            Some("第一中学校")
        )));
        assert!(!a.matches(&contact(
            ContactKind::ShelterPhone,
            None,
            Some("第二中学校")
        )));
        assert!(!a.matches(&contact(ContactKind::Staff, None, Some("第一中学校"))));
        assert!(!a.matches(&contact(ContactKind::ShelterPhone, None, None)));
    }

    #[test]
    fn message_text_puts_japanese_first_and_marks_drills() {
        let s = parse(MINIMAL).unwrap();
        let real = s.message_text(false);
        assert_eq!(
            real,
            "地震がありました。読んだら下のボタンを押してください。\n\nAn earthquake. Tap a button below."
        );
        assert!(
            !real.contains("無事"),
            "buttons are not repeated in the text"
        );

        let drill = s.message_text(true);
        assert_eq!(
            drill,
            "【訓練】地震がありました。読んだら下のボタンを押してください。\n\n\
             [DRILL] An earthquake. Tap a button below."
        );
        // A drill file that already says 【訓練】 does not get it twice.
        let d = Scenario::parse(DRILL, "scenarios/drill.toml").unwrap();
        assert_eq!(d.message_text(true).matches(DRILL_PREFIX_JA).count(), 1);
        assert_eq!(d.message_text(true).matches(DRILL_PREFIX_EN).count(), 1);
    }

    const TALK: RouteTraits = RouteTraits {
        reads_visible: false,
        buttons: ButtonsShown::WithMessage,
    };
    const BOARD: RouteTraits = RouteTraits {
        reads_visible: true,
        buttons: ButtonsShown::Elsewhere,
    };
    const NUMBERS: RouteTraits = RouteTraits {
        reads_visible: true,
        buttons: ButtonsShown::Nowhere,
    };

    fn promises_reading(text: &str) -> bool {
        ["既読", "読むだけ", "reading this is enough"]
            .iter()
            .any(|p| text.contains(p))
    }

    #[test]
    fn where_reads_are_invisible_the_text_asks_for_a_tap_or_a_reply_never_reading_alone() {
        for (name, text) in [
            ("earthquake", EARTHQUAKE),
            ("flood", FLOOD),
            ("drill", DRILL),
        ] {
            let s = Scenario::parse(text, &format!("scenarios/{name}.toml")).unwrap();
            let talk = s.text_for(false, TALK);
            assert!(!promises_reading(&talk), "{name}: {talk}");
            assert!(talk.contains("下のボタンを1つ押してください。"), "{talk}");
            assert!(talk.contains("何か一言返信してください"), "{talk}");
            assert!(talk.contains("Tap one button below. If you cannot, send any reply."));
            assert!(talk.starts_with(&s.message_text(false)));
            // A must-read board post has no buttons but counts reads.
            let board = s.text_for(false, BOARD);
            assert!(!board.contains("下のボタン"), "{board}");
            assert!(board.contains("続けて届くメッセージのボタン"), "{board}");
            assert!(promises_reading(&board), "{board}");
        }
    }

    #[test]
    fn without_buttons_the_numbered_options_are_the_instruction() {
        let s = Scenario::parse(EARTHQUAKE, "scenarios/earthquake.toml").unwrap();
        let text = s.text_for(false, NUMBERS);
        let tail = text.strip_prefix(&s.message_text(false)).unwrap();
        assert_eq!(
            tail,
            "\n\n1 無事 / 2 出動可 / 3 出動不可 / 4 負傷 / 5 救助要請\n\
             番号で返信してください。できない場合は、読むだけで構いません。\n\
             1 Safe / 2 Can work / 3 Cannot work / 4 Injured / 5 Need help\n\
             Reply with a number. If you cannot, reading this is enough."
        );
        // No read receipts and no buttons: a reply, never reading alone.
        let blind = RouteTraits {
            reads_visible: false,
            buttons: ButtonsShown::Nowhere,
        };
        assert!(!promises_reading(&s.text_for(false, blind)));
    }

    #[test]
    fn a_message_that_promises_reading_is_enough_is_refused_and_asks_can_be_reworded() {
        let text = MINIMAL.replace(
            "押してください。\"",
            "押してください。既読だけでも構いません。\"",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(invalid_key(&e), "message.ja");
        assert!(e.to_string().contains("[message.ask]"), "{e}");
        let text = MINIMAL.replace("Tap a button below.", "Reading is enough.");
        assert_eq!(invalid_key(&parse(&text).unwrap_err()), "message.en");

        let with_ask = MINIMAL.replace(
            "[[buttons]]\nlabel = \"無事 / Safe\"",
            "[message.ask]\nreply = { ja = \"返信してください。\", en = \"Please reply.\" }\n\
             [[buttons]]\nlabel = \"無事 / Safe\"",
        );
        let s = parse(&with_ask).unwrap();
        assert_eq!(s.asks.reply.en, "Please reply.");
        assert_eq!(s.asks.tap, Asks::default().tap);
        assert!(s
            .text_for(false, TALK)
            .ends_with("Tap one button below. Please reply."));
        // Only read_enough may say reading is enough.
        let bad = MINIMAL.replace(
            "[[buttons]]\nlabel = \"無事 / Safe\"",
            "[message.ask]\nreply = { ja = \"既読で結構です。\", en = \"Reply.\" }\n\
             [[buttons]]\nlabel = \"無事 / Safe\"",
        );
        assert_eq!(
            invalid_key(&parse(&bad).unwrap_err()),
            "message.ask.reply.ja"
        );
        let unknown = MINIMAL.replace(
            "[[buttons]]\nlabel = \"無事 / Safe\"",
            "[message.ask]\nwave = { ja = \"x\", en = \"y\" }\n[[buttons]]\nlabel = \"無事 / Safe\"",
        );
        assert!(matches!(parse(&unknown), Err(ScenarioError::Syntax { .. })));
    }

    fn dir_with_shipped_files() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("earthquake.toml", EARTHQUAKE),
            ("flood.toml", FLOOD),
            ("drill.toml", DRILL),
        ] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        std::fs::write(dir.path().join("README.md"), "not a scenario").unwrap();
        dir
    }

    #[test]
    fn load_dir_reads_every_toml_sorted_by_name() {
        let dir = dir_with_shipped_files();
        let names: Vec<String> = Scenario::load_dir(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["drill", "earthquake", "flood"]);
    }

    #[test]
    fn load_dir_fails_on_a_bad_file_or_a_duplicate_name() {
        let dir = dir_with_shipped_files();
        std::fs::write(
            dir.path().join("zz.toml"),
            "name = \"flood\"\n".to_string() + MINIMAL,
        )
        .unwrap();
        let e = Scenario::load_dir(dir.path()).unwrap_err();
        assert_eq!(invalid_key(&e), "name");
        assert!(e.to_string().contains("zz.toml"), "{e}");

        std::fs::write(dir.path().join("zz.toml"), "title = ").unwrap();
        let e = Scenario::load_dir(dir.path()).unwrap_err();
        assert!(matches!(e, ScenarioError::Syntax { .. }), "{e:?}");
    }

    #[test]
    fn find_by_name_by_name_key_and_by_path() {
        let dir = dir_with_shipped_files();
        assert_eq!(Scenario::find(dir.path(), "flood").unwrap().name, "flood");

        std::fs::write(
            dir.path().join("quake-night.toml"),
            format!("name = \"night\"\n{MINIMAL}"),
        )
        .unwrap();
        assert_eq!(Scenario::find(dir.path(), "night").unwrap().name, "night");

        let elsewhere = tempfile::tempdir().unwrap();
        let path = elsewhere.path().join("custom.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let s = Scenario::find(dir.path(), path.to_str().unwrap()).unwrap();
        assert_eq!(s.name, "custom");

        assert_eq!(
            Scenario::find(dir.path(), "drill.toml").unwrap().name,
            "drill"
        );
    }

    #[test]
    fn find_never_reads_a_bare_name_outside_the_directory() {
        // Tests run in the crate root, where Cargo.toml exists: it must not be opened.
        assert!(Path::new("Cargo.toml").is_file());
        let dir = dir_with_shipped_files();
        let e = Scenario::find(dir.path(), "Cargo.toml").unwrap_err();
        assert!(matches!(e, ScenarioError::NotFound { .. }), "{e:?}");
        let e = Scenario::find(dir.path(), "..").unwrap_err();
        assert!(matches!(e, ScenarioError::NotFound { .. }), "{e:?}");
    }

    #[test]
    fn find_unknown_name_lists_the_available_names() {
        let dir = dir_with_shipped_files();
        let e = Scenario::find(dir.path(), "tsunami").unwrap_err();
        let ScenarioError::NotFound { available, .. } = &e else {
            panic!("expected NotFound, got {e:?}");
        };
        assert_eq!(available, &["drill", "earthquake", "flood"]);
        let shown = e.to_string();
        assert!(
            shown.contains("\"tsunami\"") && shown.contains("drill, earthquake, flood"),
            "{shown}"
        );
    }

    #[test]
    fn load_names_the_file_it_could_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sjis.toml");
        std::fs::write(&path, [0x82u8, 0xa0, 0x0a]).unwrap();
        let e = Scenario::load(&path).unwrap_err();
        assert!(matches!(e, ScenarioError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("sjis.toml") && e.to_string().contains("UTF-8"));
    }
}
