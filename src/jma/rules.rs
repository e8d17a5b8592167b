//! Trigger rules (`[[triggers]]`): which telegram family, which area codes, the threshold
//! (an intensity, a warning level or a list of codes), the scenario to start, and what
//! happens below the threshold. Also the code tables that turn JMA's per-area codes into
//! comparable levels.
//!
//! Invariant: a rule is only ever built from a configuration entry whose family, codes and
//! area codes were all checked here; nothing is matched on names or titles, only on codes.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A family of telegrams a rule can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// 震度速報 (VXSE51) and 震源・震度に関する情報 (VXSE53).
    Earthquake,
    /// 津波警報・注意報・予報 (VTSE41) and 津波情報 (VTSE51).
    Tsunami,
    /// 気象警報・注意報 (VPWW53/54, and VPWW55-61 since 2026).
    Warning,
    /// 土砂災害警戒情報 (VXWW50).
    Landslide,
    /// 指定河川洪水予報 (VXKO) and 水位周知河川に関する情報 (VXSU).
    River,
}

impl Family {
    pub const ALL: [Family; 5] = [
        Self::Earthquake,
        Self::Tsunami,
        Self::Warning,
        Self::Landslide,
        Self::River,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Earthquake => "earthquake",
            Self::Tsunami => "tsunami",
            Self::Warning => "warning",
            Self::Landslide => "landslide",
            Self::River => "river",
        }
    }

    pub fn label_ja(self) -> &'static str {
        match self {
            Self::Earthquake => "地震",
            Self::Tsunami => "津波",
            Self::Warning => "気象警報",
            Self::Landslide => "土砂災害警戒情報",
            Self::River => "洪水予報",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// Whether each telegram is a whole snapshot of an office's areas (no usable EventID):
    /// decisions come from what changed since the office's previous snapshot.
    pub fn is_snapshot(self) -> bool {
        matches!(self, Self::Warning | Self::Landslide)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A seismic intensity (震度), ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Intensity(u8);

impl Intensity {
    const CODES: [&'static str; 9] = ["1", "2", "3", "4", "5-", "5+", "6-", "6+", "7"];
    const LABELS: [&'static str; 9] = [
        "震度1",
        "震度2",
        "震度3",
        "震度4",
        "震度5弱",
        "震度5強",
        "震度6弱",
        "震度6強",
        "震度7",
    ];

    /// JMA's intensity code (`5-`, `6+`, ...). `震度５弱以上未入電` (5- or more, figure not yet
    /// received) counts as 5-: at least that strong.
    pub fn parse(code: &str) -> Option<Self> {
        let code = code.trim();
        if code.contains("５弱以上未入電") || code.contains("5弱以上未入電") {
            return Some(Self(5));
        }
        Self::CODES
            .iter()
            .position(|c| *c == code)
            .map(|i| Self(i as u8 + 1))
    }

    /// 1 (震度1) to 9 (震度7).
    pub fn level(self) -> i32 {
        i32::from(self.0)
    }

    pub fn from_level(level: i32) -> Option<Self> {
        (1..=9).contains(&level).then_some(Self(level as u8))
    }

    pub fn code(self) -> &'static str {
        Self::CODES[usize::from(self.0 - 1)]
    }

    pub fn label(self) -> &'static str {
        Self::LABELS[usize::from(self.0 - 1)]
    }
}

/// Tsunami kind codes (警報等情報要素／津波警報・注意報・予報) and their levels: 0 none or
/// lifted, 1 予報 (slight sea-level change), 2 注意報, 3 警報, 4 大津波警報.
const TSUNAMI_CODES: [(&str, i32, &str); 10] = [
    ("00", 0, "津波なし"),
    ("50", 0, "津波警報解除"),
    ("60", 0, "津波注意報解除"),
    ("71", 1, "津波予報（若干の海面変動）"),
    ("72", 1, "津波予報（若干の海面変動）"),
    ("73", 1, "津波予報（若干の海面変動）"),
    ("62", 2, "津波注意報"),
    ("51", 3, "津波警報"),
    ("52", 4, "大津波警報"),
    ("53", 4, "大津波警報"),
];

/// Weather warning codes (警報等情報要素／気象警報・注意報), including the 2026 system's
/// level codes. The level is 警戒レベル相当: 注意報 2, 警報 3, 危険警報 4, 特別警報 5.
const WARNING_CODES: [(&str, i32, &str); 37] = [
    ("00", 0, "解除"),
    ("02", 3, "暴風雪警報"),
    ("03", 3, "大雨警報"),
    ("04", 3, "洪水警報"),
    ("05", 3, "暴風警報"),
    ("06", 3, "大雪警報"),
    ("07", 3, "波浪警報"),
    ("08", 3, "高潮警報"),
    ("09", 3, "土砂災害警報"),
    ("10", 2, "大雨注意報"),
    ("12", 2, "大雪注意報"),
    ("13", 2, "風雪注意報"),
    ("14", 2, "雷注意報"),
    ("15", 2, "強風注意報"),
    ("16", 2, "波浪注意報"),
    ("17", 2, "融雪注意報"),
    ("18", 2, "洪水注意報"),
    ("19", 2, "高潮注意報"),
    ("20", 2, "濃霧注意報"),
    ("21", 2, "乾燥注意報"),
    ("22", 2, "なだれ注意報"),
    ("23", 2, "低温注意報"),
    ("24", 2, "霜注意報"),
    ("25", 2, "着氷注意報"),
    ("26", 2, "着雪注意報"),
    ("27", 2, "その他の注意報"),
    ("29", 2, "土砂災害注意報"),
    ("32", 5, "暴風雪特別警報"),
    ("33", 5, "大雨特別警報"),
    ("35", 5, "暴風特別警報"),
    ("36", 5, "大雪特別警報"),
    ("37", 5, "波浪特別警報"),
    ("38", 5, "高潮特別警報"),
    ("39", 5, "土砂災害特別警報"),
    ("43", 4, "大雨危険警報"),
    ("48", 4, "高潮危険警報"),
    ("49", 4, "土砂災害危険警報"),
];

/// 土砂災害警戒情報 kind codes: 3 警戒 is 警戒レベル4相当.
const LANDSLIDE_CODES: [(&str, i32, &str); 3] = [
    ("0", 0, "なし"),
    ("1", 0, "解除"),
    ("3", 4, "土砂災害警戒情報"),
];

/// The level of `code` in `family`, and its name; `None` for a code anpi does not know.
/// River codes (指定河川洪水予報, 水位周知河川) take the level of their tens digit: 2x
/// 氾濫注意 (2), 3x 氾濫警戒 (3), 4x 氾濫危険 (4), 5x 氾濫発生 (5); 1x is a lifting.
pub fn code_level(family: Family, code: &str) -> Option<(i32, String)> {
    let table: &[(&str, i32, &str)] = match family {
        Family::Tsunami => &TSUNAMI_CODES,
        Family::Warning => &WARNING_CODES,
        Family::Landslide => &LANDSLIDE_CODES,
        Family::River => {
            let b = code.as_bytes();
            if b.len() != 2 || !b.iter().all(u8::is_ascii_digit) || !(b'1'..=b'5').contains(&b[0]) {
                return None;
            }
            let level = i32::from(b[0] - b'0');
            let name = match level {
                1 => "洪水予報解除",
                2 => "レベル2氾濫注意",
                3 => "レベル3氾濫警戒",
                4 => "レベル4氾濫危険",
                _ => "レベル5氾濫発生",
            };
            return Some((if level == 1 { 0 } else { level }, name.to_string()));
        }
        Family::Earthquake => {
            return Intensity::parse(code).map(|i| (i.level(), i.label().to_string()))
        }
    };
    table
        .iter()
        .find(|(c, _, _)| *c == code)
        .map(|(_, l, n)| (*l, (*n).to_string()))
}

/// How a level reads to HQ.
pub fn level_label(family: Family, level: i32) -> String {
    match family {
        Family::Earthquake => Intensity::from_level(level)
            .map(|i| i.label().to_string())
            .unwrap_or_else(|| "震度なし".into()),
        Family::Tsunami => match level {
            0 => "津波なし・解除".into(),
            1 => "津波予報".into(),
            2 => "津波注意報".into(),
            3 => "津波警報".into(),
            _ => "大津波警報".into(),
        },
        _ if level <= 0 => "なし・解除".into(),
        _ => format!("警戒レベル{level}相当"),
    }
}

/// What a rule does with a telegram for its areas below the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Below {
    /// Tell HQ (page and e-mail); start nothing.
    Notify,
    /// Log it only.
    Ignore,
}

/// One `[[triggers]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerConfig {
    /// Shown to HQ and used in stored state; defaults to "<family>-<n>". Keep it stable.
    #[serde(default)]
    pub name: Option<String>,
    pub family: String,
    /// Area codes: 市町村等 (7 digits, e.g. 1520400), 地震情報細分区域 (3 digits, e.g. 371),
    /// 津波予報区 (3 digits), 府県予報区・細分区域 (6 digits), river and section codes.
    pub areas: Vec<String>,
    /// Earthquake threshold: the intensity at or above which to start (1 2 3 4 5- 5+ 6- 6+ 7).
    #[serde(default)]
    pub intensity: Option<String>,
    /// Tsunami, warning and river threshold: the level at or above which to start.
    #[serde(default)]
    pub level: Option<i32>,
    /// Threshold as a list of kind codes (any family but earthquake): start when one of them
    /// is in force for one of the areas.
    #[serde(default)]
    pub codes: Option<Vec<String>>,
    /// The scenario to start (a name in the scenarios folder).
    pub scenario: String,
    /// "notify" (tell HQ only, the default) or "ignore".
    #[serde(default = "default_below")]
    pub below: String,
    /// Earthquakes: within this long after a start, a new event in the same areas that is not
    /// stronger only tells HQ.
    #[serde(default, with = "humantime_serde")]
    pub aftershock_window: Option<Duration>,
    /// Offices whose telegrams to fetch (the `_150000` of a feed entry) for warning,
    /// landslide and river rules. Default: the prefectures of the 7-digit area codes.
    #[serde(default)]
    pub offices: Vec<String>,
}

fn default_below() -> String {
    "notify".into()
}

/// The threshold a rule starts at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Threshold {
    /// At or above this level (an intensity's level for earthquakes).
    Level(i32),
    /// When one of these codes is in force.
    Codes(BTreeSet<String>),
}

/// A checked rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub family: Family,
    pub areas: BTreeSet<String>,
    pub threshold: Threshold,
    pub scenario: String,
    pub below: Below,
    pub aftershock_window: Option<Duration>,
    pub offices: BTreeSet<String>,
}

/// A `[[triggers]]` entry that cannot be used; `key` names it like `triggers[0].intensity`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{key}: {message}")]
pub struct RuleError {
    pub key: String,
    pub message: String,
}

fn err(i: usize, field: &str, message: impl Into<String>) -> RuleError {
    RuleError {
        key: if field.is_empty() {
            format!("triggers[{i}]")
        } else {
            format!("triggers[{i}].{field}")
        },
        message: message.into(),
    }
}

/// Whether `code` has a shape an area code of `family` can have. JMA's full code tables are
/// not bundled, so this checks the shape and, for 市町村等 codes, the prefecture (01-47).
fn area_ok(family: Family, code: &str) -> bool {
    if code.is_empty() || !code.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let pref_ok = |c: &str| matches!(c[..2].parse::<u8>(), Ok(1..=47));
    match (family, code.len()) {
        (_, 7) => pref_ok(code),
        (Family::Earthquake | Family::Tsunami, 3) => code.as_bytes()[0] != b'0',
        (Family::Warning | Family::Landslide | Family::River, 6) => pref_ok(code),
        (Family::River, 8 | 10 | 12) => true,
        _ => false,
    }
}

impl Rule {
    /// Checks the `i`th `[[triggers]]` entry.
    pub fn from_config(i: usize, c: &TriggerConfig) -> Result<Rule, RuleError> {
        let family = Family::parse(c.family.trim()).ok_or_else(|| {
            err(
                i,
                "family",
                format!(
                    "{:?} is not a telegram family: use earthquake, tsunami, warning, landslide or river",
                    c.family
                ),
            )
        })?;
        let name = match &c.name {
            Some(n) if !n.trim().is_empty() => {
                let n = n.trim();
                if n.len() > 64
                    || !n
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
                {
                    return Err(err(
                        i,
                        "name",
                        format!("{n:?}: use a-z, 0-9, '-' and '_' (at most 64)"),
                    ));
                }
                n.to_string()
            }
            _ => format!("{}-{}", family, i + 1),
        };
        if c.areas.is_empty() {
            return Err(err(i, "areas", "give at least one area code"));
        }
        let mut areas = BTreeSet::new();
        for (j, a) in c.areas.iter().enumerate() {
            let a = a.trim();
            if !area_ok(family, a) {
                return Err(err(
                    i,
                    &format!("areas[{j}]"),
                    format!("{a:?} is not a {family} area code (e.g. 1520400 for 三条市, 371 for 新潟県中越, 340 for the 新潟県上中下越 tsunami area)"),
                ));
            }
            areas.insert(a.to_string());
        }
        let threshold = match (&c.intensity, c.level, &c.codes) {
            (Some(s), None, None) => {
                if family != Family::Earthquake {
                    return Err(err(
                        i,
                        "intensity",
                        "only earthquake rules take an intensity; use level or codes",
                    ));
                }
                let v = Intensity::parse(s).ok_or_else(|| {
                    err(
                        i,
                        "intensity",
                        format!("{s:?} is not an intensity: use 1 2 3 4 5- 5+ 6- 6+ 7"),
                    )
                })?;
                Threshold::Level(v.level())
            }
            (None, Some(l), None) => {
                let range = match family {
                    Family::Earthquake => {
                        return Err(err(
                            i,
                            "level",
                            "earthquake rules take an intensity (e.g. \"5-\")",
                        ))
                    }
                    Family::Tsunami => 1..=4,
                    Family::Landslide => 4..=4,
                    Family::Warning | Family::River => 2..=5,
                };
                if !range.contains(&l) {
                    return Err(err(
                        i,
                        "level",
                        format!(
                            "{l} is not a {family} level ({}-{})",
                            range.start(),
                            range.end()
                        ),
                    ));
                }
                Threshold::Level(l)
            }
            (None, None, Some(codes)) => {
                if family == Family::Earthquake {
                    return Err(err(
                        i,
                        "codes",
                        "earthquake rules take an intensity (e.g. \"5-\")",
                    ));
                }
                if codes.is_empty() {
                    return Err(err(i, "codes", "give at least one code"));
                }
                let mut set = BTreeSet::new();
                for (j, code) in codes.iter().enumerate() {
                    let code = code.trim();
                    match code_level(family, code) {
                        Some((l, _)) if l > 0 => {
                            set.insert(code.to_string());
                        }
                        Some(_) => {
                            return Err(err(
                                i,
                                &format!("codes[{j}]"),
                                format!("{code:?} means none or lifted; it cannot start anything"),
                            ))
                        }
                        None => {
                            return Err(err(
                                i,
                                &format!("codes[{j}]"),
                                format!("{code:?} is not a {family} code anpi knows"),
                            ))
                        }
                    }
                }
                Threshold::Codes(set)
            }
            _ => {
                return Err(err(
                    i,
                    "",
                    "give exactly one threshold: intensity (earthquake), level, or codes",
                ))
            }
        };
        if c.scenario.trim().is_empty() {
            return Err(err(i, "scenario", "name the scenario to start"));
        }
        let below = match c.below.trim() {
            "notify" => Below::Notify,
            "ignore" => Below::Ignore,
            other => {
                return Err(err(
                    i,
                    "below",
                    format!("{other:?}: use \"notify\" (tell HQ) or \"ignore\""),
                ))
            }
        };
        if c.aftershock_window.is_some() && family != Family::Earthquake {
            return Err(err(
                i,
                "aftershock_window",
                "only earthquake rules have an aftershock window",
            ));
        }
        if c.aftershock_window
            .is_some_and(|w| w > Duration::from_secs(7 * 24 * 3600))
        {
            return Err(err(i, "aftershock_window", "at most 7 days"));
        }
        let mut offices = BTreeSet::new();
        for (j, o) in c.offices.iter().enumerate() {
            let o = o.trim();
            if o.len() != 6 || !o.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(
                    i,
                    &format!("offices[{j}]"),
                    format!("{o:?} is not an office code like 150000"),
                ));
            }
            offices.insert(o.to_string());
        }
        if offices.is_empty()
            && matches!(family, Family::Warning | Family::Landslide | Family::River)
        {
            offices = areas
                .iter()
                .filter(|a| a.len() == 7 || a.len() == 6)
                .map(|a| format!("{}0000", &a[..2]))
                .collect();
        }
        Ok(Rule {
            name,
            family,
            areas,
            threshold,
            scenario: c.scenario.trim().to_string(),
            below,
            aftershock_window: c.aftershock_window,
            offices,
        })
    }

    /// Checks every entry, and that names are unique.
    pub fn all_from_config(list: &[TriggerConfig]) -> Result<Vec<Rule>, RuleError> {
        let mut rules: Vec<Rule> = Vec::new();
        for (i, c) in list.iter().enumerate() {
            let r = Rule::from_config(i, c)?;
            if rules.iter().any(|o| o.name == r.name) {
                return Err(err(i, "name", format!("{:?} is used twice", r.name)));
            }
            rules.push(r);
        }
        Ok(rules)
    }

    /// The level this rule starts at, for comparisons; a code list starts at its lowest code.
    pub fn start_level(&self) -> i32 {
        match &self.threshold {
            Threshold::Level(l) => *l,
            Threshold::Codes(codes) => codes
                .iter()
                .filter_map(|c| code_level(self.family, c).map(|(l, _)| l))
                .min()
                .unwrap_or(i32::MAX),
        }
    }

    /// Whether an area at `level` with `codes` in force reaches the threshold.
    pub fn reaches(&self, level: i32, codes: &[String]) -> bool {
        match &self.threshold {
            Threshold::Level(l) => level >= *l,
            Threshold::Codes(set) => codes.iter().any(|c| set.contains(c)),
        }
    }

    /// The threshold as HQ reads it.
    pub fn threshold_label(&self) -> String {
        match &self.threshold {
            Threshold::Level(l) => format!("{}以上", level_label(self.family, *l)),
            Threshold::Codes(c) => format!(
                "コード {}",
                c.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> TriggerConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn intensity_codes_order_and_unreceived_five_minus_counts_as_five_minus() {
        let i = |s| Intensity::parse(s).unwrap();
        assert!(i("5-") < i("5+") && i("4") < i("5-") && i("6+") < i("7"));
        assert_eq!(i("震度５弱以上未入電"), i("5-"));
        assert_eq!(i("5+").label(), "震度5強");
        assert!(Intensity::parse("5").is_none());
    }

    #[test]
    fn warning_levels_follow_the_2026_codes() {
        assert_eq!(code_level(Family::Warning, "43").unwrap().0, 4);
        assert_eq!(code_level(Family::Warning, "49").unwrap().0, 4);
        assert_eq!(code_level(Family::Warning, "33").unwrap().0, 5);
        assert_eq!(code_level(Family::Warning, "03").unwrap().0, 3);
        assert_eq!(code_level(Family::Warning, "10").unwrap().0, 2);
        assert!(code_level(Family::Warning, "99").is_none());
        assert_eq!(code_level(Family::River, "41").unwrap().0, 4);
        assert_eq!(code_level(Family::River, "53").unwrap().0, 5);
        assert!(code_level(Family::River, "7").is_none());
        assert_eq!(code_level(Family::Tsunami, "62").unwrap().0, 2);
    }

    #[test]
    fn a_sanjo_rule_is_checked_and_its_office_derived() {
        let r = Rule::from_config(
            0,
            &cfg("family = \"warning\"\nareas = [\"1520400\"]\nlevel = 4\nscenario = \"flood\"\n"),
        )
        .unwrap();
        assert_eq!(r.name, "warning-1");
        assert!(r.offices.contains("150000"));
        assert!(r.reaches(4, &[]) && !r.reaches(3, &[]));
        let r = Rule::from_config(
            1,
            &cfg("family = \"earthquake\"\nareas = [\"1520400\", \"371\"]\nintensity = \"5-\"\nscenario = \"earthquake\"\naftershock_window = \"2h\"\n"),
        )
        .unwrap();
        assert_eq!(r.start_level(), 5);
    }

    #[test]
    fn bad_entries_name_their_key() {
        let cases = [
            ("family = \"volcano\"\nareas = [\"1520400\"]\nlevel = 4\nscenario = \"x\"\n", "triggers[0].family"),
            ("family = \"warning\"\nareas = [\"15204\"]\nlevel = 4\nscenario = \"x\"\n", "triggers[0].areas[0]"),
            ("family = \"warning\"\nareas = [\"9920400\"]\nlevel = 4\nscenario = \"x\"\n", "triggers[0].areas[0]"),
            ("family = \"warning\"\nareas = [\"1520400\"]\ncodes = [\"99\"]\nscenario = \"x\"\n", "triggers[0].codes[0]"),
            ("family = \"warning\"\nareas = [\"1520400\"]\ncodes = [\"00\"]\nscenario = \"x\"\n", "triggers[0].codes[0]"),
            ("family = \"earthquake\"\nareas = [\"371\"]\nintensity = \"5\"\nscenario = \"x\"\n", "triggers[0].intensity"),
            ("family = \"earthquake\"\nareas = [\"371\"]\nlevel = 3\nscenario = \"x\"\n", "triggers[0].level"),
            ("family = \"tsunami\"\nareas = [\"340\"]\nlevel = 9\nscenario = \"x\"\n", "triggers[0].level"),
            ("family = \"tsunami\"\nareas = [\"340\"]\nscenario = \"x\"\n", "triggers[0]"),
            ("family = \"tsunami\"\nareas = [\"340\"]\nlevel = 3\nscenario = \"x\"\nbelow = \"shout\"\n", "triggers[0].below"),
            ("family = \"tsunami\"\nareas = [\"340\"]\nlevel = 3\nscenario = \"x\"\naftershock_window = \"1h\"\n", "triggers[0].aftershock_window"),
        ];
        for (text, key) in cases {
            let e = Rule::from_config(0, &cfg(text)).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        }
    }
}
