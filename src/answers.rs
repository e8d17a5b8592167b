//! What an answer means: every answer a person gives (a button, a sticker, a free-text reply)
//! gets a level — `ok`, `attention` or `urgent` — that decides whether HQ must act on it.
//!
//! Invariants: the level of a button is fixed by the scenario that sent it; a sticker is `ok`;
//! free text is `attention`, or `urgent` when it contains one of the configured words that ask
//! for help. Levels are ordered, and the most severe answer a person has given stands: nothing
//! they send later lowers it (the store keeps that rule; this module only says what is more
//! severe).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use crate::providers::AnswerButton;

/// How HQ must treat an answer. Ordered: `Ok < Attention < Urgent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerLevel {
    /// Safe, can work, a sticker, a plain read: nothing to do.
    Ok,
    /// Cannot work, or free text HQ should read: shown, not on the action list.
    Attention,
    /// Injured, needs help, or free text asking for help: on HQ's action list at once.
    Urgent,
}

impl AnswerLevel {
    pub const ALL: [AnswerLevel; 3] = [Self::Ok, Self::Attention, Self::Urgent];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Attention => "attention",
            Self::Urgent => "urgent",
        }
    }

    /// The number stored with an answer: 1, 2, 3 (0 means "no answer yet"), so that the
    /// database can keep the most severe with `MAX`.
    pub fn rank(self) -> i64 {
        match self {
            Self::Ok => 1,
            Self::Attention => 2,
            Self::Urgent => 3,
        }
    }

    pub fn from_rank(rank: i64) -> Option<Self> {
        match rank {
            1 => Some(Self::Ok),
            2 => Some(Self::Attention),
            3 => Some(Self::Urgent),
            _ => None,
        }
    }

    /// How HQ reads it, Japanese first.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "問題なし / ok",
            Self::Attention => "要確認 / attention",
            Self::Urgent => "要対応 / urgent",
        }
    }

    /// The level of a button whose scenario gives none: the conventional values anpi ships
    /// with. Anything else must say its level (see [`crate::scenario`]).
    pub fn conventional(value: &str) -> Option<Self> {
        match value {
            "safe" | "ok" | "can_work" | "ack" | "evacuated" | "evacuating" | "at_home"
            | "opened" => Some(Self::Ok),
            "cannot_work" | "not_opened" | "staying" => Some(Self::Attention),
            "injured" | "need_help" | "needs_help" | "help" | "rescue" | "trapped"
            | "need_support" => Some(Self::Urgent),
            _ => None,
        }
    }
}

impl fmt::Display for AnswerLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AnswerLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|l| l.as_str() == s.trim())
            .ok_or_else(|| format!("{s:?} is not a level: use \"ok\", \"attention\" or \"urgent\""))
    }
}

/// One answer choice of a roll call: what the person sees, what comes back, and what it
/// means for HQ. Only [`Choice::button`] (label and value) ever goes to a chat provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredChoice")]
pub struct Choice {
    pub label: String,
    pub value: String,
    pub level: AnswerLevel,
}

/// A choice as stored; roll calls written before levels existed have none, and get the
/// conventional level of their value, else `attention` (shown to HQ, never silently `ok`).
#[derive(Deserialize)]
struct StoredChoice {
    label: String,
    value: String,
    level: Option<AnswerLevel>,
}

impl From<StoredChoice> for Choice {
    fn from(s: StoredChoice) -> Self {
        let level = s
            .level
            .or_else(|| AnswerLevel::conventional(&s.value))
            .unwrap_or(AnswerLevel::Attention);
        Self {
            label: s.label,
            value: s.value,
            level,
        }
    }
}

impl Choice {
    pub fn new(label: &str, value: &str, level: AnswerLevel) -> Self {
        Self {
            label: label.to_string(),
            value: value.to_string(),
            level,
        }
    }

    /// What the chat provider shows.
    pub fn button(&self) -> AnswerButton {
        AnswerButton {
            label: self.label.clone(),
            value: self.value.clone(),
        }
    }
}

/// The buttons of `choices`, as the chat provider sends them.
pub fn buttons(choices: &[Choice]) -> Vec<AnswerButton> {
    choices.iter().map(Choice::button).collect()
}

/// The buttons a shelter phone gets when its scenario names none: open and fine, not open,
/// needs support.
pub fn default_shelter_choices() -> Vec<Choice> {
    vec![
        Choice::new("開設済・異常なし / Open, OK", "opened", AnswerLevel::Ok),
        Choice::new("未開設 / Not open", "not_opened", AnswerLevel::Attention),
        Choice::new(
            "支援が必要 / Need support",
            "need_support",
            AnswerLevel::Urgent,
        ),
    ]
}

/// The words that make a free-text reply urgent when it is not a button.
pub const DEFAULT_URGENT_WORDS: &[&str] = &[
    // Stems where every ending asks for help (助けて, 助けを呼んで, 助けが必要); a word whose
    // ending may deny it is listed whole, in its plain and polite forms (動けない, 動けません),
    // since a denial right after a word cancels it (「けがはありません」).
    "助け",
    "救助",
    "救出",
    "怪我",
    "けが",
    "負傷",
    "閉じ込め",
    "動けない",
    "動けません",
    "動けなく",
    "出られない",
    "出られません",
    "出られなく",
    "歩けない",
    "歩けません",
    "下敷き",
    "挟ま",
    "生き埋め",
    "取り残",
    "孤立",
    "出血",
    "血が止",
    "骨折",
    "意識がない",
    "意識が無い",
    "意識がありません",
    "意識が戻",
    "意識不明",
    "歩けなく",
    "動けず",
    "出られず",
    // ら抜き, as spoken: 出れない.
    "出れない",
    "出れません",
    "血が出",
    "折れ",
    "重傷",
    "重体",
    "埋ま",
    "息をして",
    "呼吸",
    "燃え",
    "救急",
    "119",
    "倒壊",
    "潰れ",
    "つぶれ",
    "火事",
    "火災",
    "死にそう",
    // As typed in a hurry, left in kana (タスケテ and ﾀｽｹﾃ match too).
    "たすけ",
    "きゅうじょ",
    "とじこめ",
    "閉じこめ",
    "閉込",
    "うごけない",
    "うごけません",
    "でられない",
    "でられません",
    "あるけない",
    "あるけなく",
    "でれない",
    "したじき",
    "はさま",
    "help",
    "sos",
    "injured",
    "trapped",
];

/// The configured words that make free text urgent, normalised once so that full-width and
/// half-width forms, katakana and hiragana, and upper and lower case all match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrgentWords {
    /// (normalised word, whether it is matched as a whole word: plain ASCII words are, so
    /// "help" does not fire on "helpful"; Japanese has no spaces and is matched anywhere).
    words: Vec<(String, bool)>,
}

impl Default for UrgentWords {
    fn default() -> Self {
        Self::new(DEFAULT_URGENT_WORDS.iter().copied()).expect("the default words are valid")
    }
}

impl UrgentWords {
    /// Refuses an empty word: it would make every reply urgent.
    pub fn new<'a>(words: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut out = Vec::new();
        for (i, w) in words.into_iter().enumerate() {
            let n = normalise(w);
            if n.is_empty() {
                return Err(format!(
                    "word {} is empty; remove it or write a word that asks for help",
                    i + 1
                ));
            }
            let whole = n.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ');
            out.push((n, whole));
        }
        Ok(Self { words: out })
    }

    /// The first configured word `text` contains, if any, leaving out a word the text denies
    /// right after it (けがはありません, 怪我なし, 救助不要) or right before it (not injured, no
    /// help needed). Such a reply is still shown to HQ verbatim, as one to look at.
    pub fn find(&self, text: &str) -> Option<&str> {
        let t = normalise(text);
        self.words
            .iter()
            .find(|(w, whole)| {
                t.match_indices(w.as_str()).any(|(i, _)| {
                    let (before, after) = (&t[..i], &t[i + w.len()..]);
                    if *whole {
                        let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
                        !word(before.chars().next_back())
                            && !word(after.chars().next())
                            && !denied_before(before)
                    } else {
                        !denied_after(after)
                    }
                })
            })
            .map(|(w, _)| w.as_str())
    }

    /// The level of a free-text reply.
    pub fn level_of(&self, text: &str) -> AnswerLevel {
        if self.find(text).is_some() {
            AnswerLevel::Urgent
        } else {
            AnswerLevel::Attention
        }
    }
}

/// NFKC (full-width letters and digits, half-width katakana), lower case, katakana as
/// hiragana.
fn normalise(s: &str) -> String {
    s.trim()
        .nfkc()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            // Katakana ァ..ヶ -> hiragana ぁ..ゖ.
            '\u{30A1}'..='\u{30F6}' => char::from_u32(c as u32 - 0x60).unwrap_or(c),
            c => c,
        })
        .collect()
}

/// Japanese that denies the word before it (normalised: hiragana, NFKC), after an optional
/// particle.
const DENIED_AFTER: &[&str] = &[
    "なし",
    "無し",
    "ない",
    "無い",
    "なかった",
    "無かった",
    "ありません",
    "ございません",
    "していない",
    "してない",
    "していません",
    "してません",
    "しておりません",
    "不要",
    "いらない",
    "いりません",
];

/// `after` (what follows a Japanese word) denies it: 「けがはありません」「怪我なし」「救助不要」
/// 「怪我をしていません」.
fn denied_after(after: &str) -> bool {
    let rest = after.trim_start_matches([' ', '　']);
    let rest = rest
        .strip_prefix('は')
        .or_else(|| rest.strip_prefix('も'))
        .or_else(|| rest.strip_prefix('が'))
        .or_else(|| rest.strip_prefix('を'))
        .unwrap_or(rest)
        .trim_start_matches([' ', '　']);
    // 「救助がないと死ぬ」: a denial followed by と is a condition, and the reply still asks
    // for help; unless the と quotes it (「怪我はないと思う」「不要とのこと」「ないと言われた」).
    let condition = |r: &str| {
        r.strip_prefix('と')
            .is_some_and(|t| !t.starts_with(['思', 'お', '言', 'い', '聞', 'き', 'の']))
    };
    DENIED_AFTER
        .iter()
        .any(|d| rest.strip_prefix(d).is_some_and(|r| !condition(r)))
}

/// `before` (what precedes an English word) denies it: "not injured", "no help needed".
fn denied_before(before: &str) -> bool {
    let last = before
        .trim_end()
        .rsplit(|c: char| !c.is_ascii_alphanumeric() && c != '\'')
        .next()
        .unwrap_or("");
    matches!(
        last,
        "not" | "no" | "never" | "isn't" | "aren't" | "don't" | "dont"
    )
}

/// What one inbound answer means, once its roll call is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Meaning {
    pub level: AnswerLevel,
    /// The button value ("need_help"), "text" for free text, "sticker".
    pub value: String,
    /// What HQ reads: the button's label, 自由記述 / スタンプ.
    pub label: String,
    /// The words the person wrote, verbatim, for free text.
    pub text: Option<String>,
}

/// The label HQ sees for a free-text reply.
pub const TEXT_LABEL: &str = "自由記述 / text";
/// The label HQ sees for a sticker or reaction.
pub const STICKER_LABEL: &str = "スタンプ / sticker";

impl Meaning {
    /// A button tap: its level if it is one of `choices`; a value that is not one of them is
    /// kept as what the person sent, as free text.
    pub fn of_button(value: &str, choices: &[Choice], words: &UrgentWords) -> Self {
        match choices.iter().find(|c| c.value == value) {
            Some(c) => Self {
                level: c.level,
                value: c.value.clone(),
                label: c.label.clone(),
                text: None,
            },
            None => Self::of_text(value, words),
        }
    }

    pub fn of_text(text: &str, words: &UrgentWords) -> Self {
        Self {
            level: words.level_of(text),
            value: "text".to_string(),
            label: TEXT_LABEL.to_string(),
            text: Some(text.to_string()),
        }
    }

    pub fn sticker() -> Self {
        Self {
            level: AnswerLevel::Ok,
            value: "sticker".to_string(),
            label: STICKER_LABEL.to_string(),
            text: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered_and_round_trip() {
        assert!(AnswerLevel::Ok < AnswerLevel::Attention);
        assert!(AnswerLevel::Attention < AnswerLevel::Urgent);
        for l in AnswerLevel::ALL {
            assert_eq!(AnswerLevel::from_rank(l.rank()), Some(l));
            assert_eq!(l.as_str().parse::<AnswerLevel>().unwrap(), l);
        }
        let e = "critical".parse::<AnswerLevel>().unwrap_err();
        assert!(e.contains("\"ok\", \"attention\" or \"urgent\""), "{e}");
    }

    #[test]
    fn a_help_word_the_reply_denies_is_not_urgent_but_one_it_does_not_deny_still_is() {
        let w = UrgentWords::default();
        for calm in [
            "無事です。けがはありません",
            "家族全員怪我なし",
            "ケガ無し、出勤できます",
            "救助不要",
            "怪我をしていません",
            "火事はないです",
            "出血なし",
            "骨折はしていません",
            "怪我はないと思います",
            "救助は不要とのこと",
            "I'm fine, not injured",
            "no help needed",
        ] {
            assert_eq!(w.level_of(calm), AnswerLevel::Attention, "{calm}");
        }
        for help in [
            "けがはないが閉じ込められた",
            "足を怪我、家から出られない",
            "怪我あり",
            "救助が必要",
            "not sure, I think I'm injured",
            "help",
            "助けてください",
        ] {
            assert_eq!(w.level_of(help), AnswerLevel::Urgent, "{help}");
        }
    }

    #[test]
    fn free_text_with_a_help_word_is_urgent_in_any_width_or_script() {
        let w = UrgentWords::default();
        for urgent in [
            "足を怪我、家から出られない",
            "ケガをしました",
            "家が倒壊して閉じ込められた",
            "HELP! trapped on 2F",
            "ｈｅｌｐ",
            "助けてください",
            "たすけて",
            "タスケテ",
            "ﾀｽｹﾃ",
            "とじこめられた",
            "トイレに閉じこめられた",
            "家から出られない",
            "うごけない",
            "タンスの下敷きになった",
            "ドアに挟まれて",
            "出血がひどい",
            "骨折したかも",
            "救急車を呼んで",
            "SOS",
            "近所で火災",
            "動けません",
            "出られません",
            "足が挟まって動けなくなった",
            "助けを呼んで",
            "助けが必要",
            "取り残された",
            "救出してください",
            "母の意識がない",
            "血が止まらない",
            "家がつぶれた",
            "119番お願い",
            "救助がないと死ぬ",
            "母が意識がありません",
            "歩けなくなった",
            "家から出れない",
            "動けず困っている",
            "頭から血が出ている",
            "足の骨が折れた",
            "家族が重傷",
            "瓦礫に埋まっている",
            "息をしていない",
            "家が燃えている",
        ] {
            assert_eq!(w.level_of(urgent), AnswerLevel::Urgent, "{urgent}");
        }
        for attention in [
            "無事です。家族も大丈夫",
            "helpful neighbours here",
            "遅れます",
        ] {
            assert_eq!(w.level_of(attention), AnswerLevel::Attention, "{attention}");
        }
    }

    #[test]
    fn the_example_config_lists_the_default_words() {
        let example: toml::Value = toml::from_str(include_str!("../anpi.example.toml")).unwrap();
        let listed: Vec<&str> = example["answers"]["urgent_words"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(listed, DEFAULT_URGENT_WORDS);
    }

    #[test]
    fn configured_words_replace_the_defaults_and_empty_ones_are_refused() {
        let w = UrgentWords::new(["SOS", "浸水"]).unwrap();
        assert_eq!(w.level_of("1階が浸水"), AnswerLevel::Urgent);
        assert_eq!(w.level_of("sos"), AnswerLevel::Urgent);
        assert_eq!(w.level_of("助けて"), AnswerLevel::Attention);
        assert!(UrgentWords::new(["ok", " "])
            .unwrap_err()
            .contains("word 2"));
    }

    #[test]
    fn a_button_that_is_not_a_choice_is_kept_as_free_text() {
        let choices = vec![
            Choice::new("無事 / Safe", "safe", AnswerLevel::Ok),
            Choice::new("救助要請 / Need help", "need_help", AnswerLevel::Urgent),
        ];
        let w = UrgentWords::default();
        let m = Meaning::of_button("need_help", &choices, &w);
        assert_eq!(m.level, AnswerLevel::Urgent);
        assert_eq!(m.label, "救助要請 / Need help");
        let m = Meaning::of_button("other_bot_value", &choices, &w);
        assert_eq!(m.value, "text");
        assert_eq!(m.text.as_deref(), Some("other_bot_value"));
        assert_eq!(m.level, AnswerLevel::Attention);
    }

    #[test]
    fn stored_choices_without_a_level_get_the_conventional_one_or_attention() {
        let c: Vec<Choice> = serde_json::from_str(
            r#"[{"label":"無事","value":"safe"},{"label":"負傷","value":"injured"},
                {"label":"その他","value":"other"},{"label":"x","value":"y","level":"urgent"}]"#,
        )
        .unwrap();
        let levels: Vec<_> = c.iter().map(|c| c.level).collect();
        assert_eq!(
            levels,
            [
                AnswerLevel::Ok,
                AnswerLevel::Urgent,
                AnswerLevel::Attention,
                AnswerLevel::Urgent
            ]
        );
    }
}
