//! Reading JMA disaster-prevention XML (気象庁防災情報XML): a telegram's control and head
//! parts (Status, InfoType, EventID, Serial, times) and, per family, the codes it gives each
//! area (intensity, tsunami kind, warning kinds in force, landslide and river kinds); and the
//! Atom feeds that list telegrams.
//!
//! Invariant: parsing never panics and never guesses. A document that is not a telegram, or a
//! kind anpi does not know, parses to `Kind::Other` (never acted on); names and titles are
//! kept for display only, every decision reads codes.

use chrono::{DateTime, FixedOffset, Utc};
use roxmltree::{Document, Node};

use super::rules::{code_level, Family, Intensity};

/// Why a document could not be read as a telegram.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ParseError {
    #[error("not XML: {0}")]
    NotXml(String),
    #[error("not a JMA telegram (root element <{0}>)")]
    NotTelegram(String),
    #[error("telegram lacks {0}")]
    Missing(&'static str),
    #[error("telegram has a bad {field}: {value:?}")]
    Bad { field: &'static str, value: String },
}

/// Control/Status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// 通常: real.
    Normal,
    /// 訓練: an exercise; may only ever start a drill.
    Drill,
    /// 試験: a technical test; never acted on.
    Test,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Self::Normal => "通常",
            Self::Drill => "訓練",
            Self::Test => "試験",
        }
    }
}

/// Head/InfoType.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InfoType {
    /// 発表
    Issue,
    /// 訂正: replaces an earlier telegram; decided afresh.
    Correction,
    /// 取消: withdraws an earlier telegram.
    Cancel,
}

impl InfoType {
    pub fn label(self) -> &'static str {
        match self {
            Self::Issue => "発表",
            Self::Correction => "訂正",
            Self::Cancel => "取消",
        }
    }
}

/// What kind of telegram it is, from Control/Title (JMA's name of the telegram type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A telegram a rule family acts on.
    Trigger(Family),
    /// A known telegram that no rule acts on (緊急地震速報, 震源に関する情報, ...), with why.
    NotTrigger(&'static str),
    /// Anything else.
    Other,
}

/// Control/Title -> kind, type code and, for snapshot families, the snapshot group (VPWW53
/// and VPWW54 carry the same warnings, so they share one).
fn classify(title: &str) -> (Kind, &'static str, &'static str) {
    use Family::*;
    match title {
        "震度速報" => (Kind::Trigger(Earthquake), "VXSE51", ""),
        "震源・震度に関する情報" => (Kind::Trigger(Earthquake), "VXSE53", ""),
        "震源に関する情報" => (
            Kind::NotTrigger("震源のみ: no intensities, so nothing to compare"),
            "VXSE52",
            "",
        ),
        "津波警報・注意報・予報a" => (Kind::Trigger(Tsunami), "VTSE41", ""),
        "津波情報a" => (Kind::Trigger(Tsunami), "VTSE51", ""),
        "気象特別警報・警報・注意報" => (Kind::Trigger(Warning), "VPWW53", "warnings"),
        "気象警報・注意報（Ｈ２７）" => (Kind::Trigger(Warning), "VPWW54", "warnings"),
        "土砂災害警戒情報" => (Kind::Trigger(Landslide), "VXWW50", "landslide"),
        "指定河川洪水予報" => (Kind::Trigger(River), "VXKO", ""),
        "水位周知河川に関する情報" => (Kind::Trigger(River), "VXSU", ""),
        t if t.starts_with("緊急地震速報") => (
            Kind::NotTrigger("緊急地震速報: the roll call waits for the observed intensities"),
            "VXSE4x",
            "",
        ),
        t if t.starts_with("気象警報・注意報（Ｒ０６）") => {
            (Kind::Trigger(Warning), "VPWW5x", "")
        }
        _ => (Kind::Other, "", ""),
    }
}

fn group_name(title: &str, group: &str) -> String {
    if group.is_empty() {
        title.to_string()
    } else {
        group.to_string()
    }
}

/// The snapshot group of a telegram type (Control/Title): VPWW53 and VPWW54 share
/// "warnings"; every other type is its own group (each 2026 VPWW5x title, 土砂災害警戒情報).
pub fn snapshot_group_of(title: &str) -> String {
    group_name(title, classify(title).2)
}

/// One area a telegram speaks about, with what it says there.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AreaReport {
    pub code: String,
    pub name: String,
    /// Comparable level (intensity level 1-9 for earthquakes; see [`code_level`]).
    pub level: i32,
    /// The kind codes in force there (warnings, landslide, tsunami, river); an intensity's
    /// code for earthquakes.
    pub codes: Vec<String>,
    /// What it says, for HQ ("震度5弱", "大雨危険警報").
    pub label: String,
}

/// A parsed telegram.
#[derive(Debug, Clone)]
pub struct Telegram {
    pub kind: Kind,
    /// JMA's type code (VXSE53): from the file name or feed entry when known, else from the
    /// kind.
    pub code: String,
    /// Control/Title: the telegram type's name.
    pub control_title: String,
    pub status: Status,
    pub info_type: InfoType,
    /// Head/EventID, split on spaces (a tsunami telegram can carry several).
    pub event_ids: Vec<String>,
    pub serial: String,
    /// Control/DateTime: when JMA sent it.
    pub sent_at: DateTime<Utc>,
    /// Head/ReportDateTime.
    pub reported_at: DateTime<FixedOffset>,
    /// Head/Title and Headline/Text, shown to HQ only.
    pub head_title: String,
    pub headline: String,
    /// The office a snapshot telegram covers (its 府県予報区 or TargetArea code).
    pub office: Option<String>,
    /// Snapshot group: telegrams of one group from one office replace each other.
    pub snapshot_group: String,
    pub areas: Vec<AreaReport>,
}

impl Telegram {
    pub fn family(&self) -> Option<Family> {
        match self.kind {
            Kind::Trigger(f) => Some(f),
            _ => None,
        }
    }

    /// What makes this telegram itself unique: (type, EventID, Serial, InfoType); without a
    /// Serial (震度速報, 津波警報, the warnings) its send time stands in, and a snapshot is
    /// named by its office.
    pub fn dedupe_key(&self) -> String {
        let ids = if self.event_ids.is_empty() {
            self.office.clone().unwrap_or_default()
        } else {
            self.event_ids.join(" ")
        };
        let serial = if self.serial.is_empty() {
            self.sent_at.format("%Y%m%dT%H%M%SZ").to_string()
        } else {
            self.serial.clone()
        };
        format!(
            "{}|{}|{}|{}|{}",
            self.control_title,
            ids,
            serial,
            self.info_type.label(),
            self.status.label()
        )
    }
}

fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn children<'a, 'i: 'a>(n: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    n.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

fn text(n: Option<Node<'_, '_>>) -> String {
    n.and_then(|n| n.text()).unwrap_or("").trim().to_string()
}

fn path<'a, 'i>(n: Node<'a, 'i>, names: &[&str]) -> Option<Node<'a, 'i>> {
    let mut cur = n;
    for name in names {
        cur = child(cur, name)?;
    }
    Some(cur)
}

/// The type code in a telegram's file name or URL (`..._VXSE53_150000.xml`, `..._VXKOii.xml`).
pub fn code_from_name(name: &str) -> Option<String> {
    let file = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let b = file.as_bytes();
    (0..b.len().saturating_sub(5)).find_map(|i| {
        let w = &b[i..i + 6];
        let starts = i == 0 || !b[i - 1].is_ascii_alphanumeric();
        (starts
            && w[0] == b'V'
            && w[1..4].iter().all(u8::is_ascii_uppercase)
            && w[4..6].iter().all(|c| c.is_ascii_alphanumeric()))
        .then(|| file[i..i + 6].to_string())
    })
}

/// The office suffix of a feed entry's file name (`..._VPWW53_150000.xml` -> `150000`).
pub fn office_from_name(name: &str) -> Option<String> {
    let stem = name.rsplit('/').next()?.strip_suffix(".xml")?;
    let last = stem.rsplit('_').next()?;
    (last.len() == 6 && last.bytes().all(|b| b.is_ascii_digit())).then(|| last.to_string())
}

/// Parses a telegram. `name` (file name or URL, may be empty) supplies the type code.
pub fn parse(xml: &str, name: &str) -> Result<Telegram, ParseError> {
    let doc = Document::parse(xml).map_err(|e| ParseError::NotXml(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "Report" {
        return Err(ParseError::NotTelegram(root.tag_name().name().to_string()));
    }
    let control = child(root, "Control").ok_or(ParseError::Missing("Control"))?;
    let head = child(root, "Head").ok_or(ParseError::Missing("Head"))?;
    let control_title = text(child(control, "Title"));
    let status = match text(child(control, "Status")).as_str() {
        "通常" => Status::Normal,
        "訓練" => Status::Drill,
        "試験" => Status::Test,
        other => {
            return Err(ParseError::Bad {
                field: "Control/Status",
                value: other.into(),
            })
        }
    };
    let info_type = match text(child(head, "InfoType")).as_str() {
        "発表" => InfoType::Issue,
        "訂正" => InfoType::Correction,
        "取消" => InfoType::Cancel,
        other => {
            return Err(ParseError::Bad {
                field: "Head/InfoType",
                value: other.into(),
            })
        }
    };
    let sent = text(child(control, "DateTime"));
    let sent_at = DateTime::parse_from_rfc3339(&sent)
        .map_err(|_| ParseError::Bad {
            field: "Control/DateTime",
            value: sent.clone(),
        })?
        .with_timezone(&Utc);
    let reported = text(child(head, "ReportDateTime"));
    let reported_at = DateTime::parse_from_rfc3339(&reported).map_err(|_| ParseError::Bad {
        field: "Head/ReportDateTime",
        value: reported.clone(),
    })?;
    let (kind, table_code, group) = classify(&control_title);
    let code = code_from_name(name)
        .filter(|c| table_code.is_empty() || c.starts_with(&table_code[..4]))
        .unwrap_or_else(|| table_code.to_string());
    let snapshot_group = group_name(&control_title, group);
    let mut t = Telegram {
        kind: kind.clone(),
        code,
        control_title,
        status,
        info_type,
        event_ids: text(child(head, "EventID"))
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        serial: text(child(head, "Serial")),
        sent_at,
        reported_at,
        head_title: text(child(head, "Title")),
        headline: text(path(head, &["Headline", "Text"])),
        office: None,
        snapshot_group,
        areas: Vec::new(),
    };
    let body = child(root, "Body");
    if let (Kind::Trigger(family), Some(body)) = (kind, body) {
        match family {
            Family::Earthquake => earthquake(&mut t, body),
            Family::Tsunami => tsunami(&mut t, body),
            Family::Warning => warnings(&mut t, body),
            Family::Landslide => landslide(&mut t, body),
            Family::River => river(&mut t, head, body),
        }
    }
    Ok(t)
}

fn push_max(areas: &mut Vec<AreaReport>, a: AreaReport) {
    match areas.iter_mut().find(|x| x.code == a.code) {
        Some(x) if a.level > x.level => *x = a,
        Some(x) => {
            for c in a.codes {
                if !x.codes.contains(&c) {
                    x.codes.push(c);
                }
            }
        }
        None => areas.push(a),
    }
}

/// Body/Intensity/Observation: every 細分区域 (Pref/Area) and 市町村等 (Pref/Area/City) with
/// its intensity. An element with `<Condition>震度５弱以上未入電</Condition>` reads as the
/// stronger of its MaxInt and 5弱: JMA sends the condition beside a lower MaxInt when some
/// stations reported less while others that may have 5弱 or more have not reported (藤枝市
/// MaxInt 4 with the condition reads 5弱), and alone when no station reported. The Headline
/// lists the same cities under 震度５弱以上未入電; the Body alone is read, so nothing counts
/// twice. Without the condition, MaxInt is read as given.
fn earthquake(t: &mut Telegram, body: Node) {
    let Some(obs) = path(body, &["Intensity", "Observation"]) else {
        return;
    };
    let mut add = |n: Node| {
        let reported = child(n, "MaxInt").and_then(|m| Intensity::parse(&text(Some(m))));
        let unreceived = children(n, "Condition")
            .filter_map(|c| Intensity::parse(&text(Some(c))))
            .max();
        let (i, label) = match (reported, unreceived) {
            (Some(r), Some(u)) if u > r => {
                (u, format!("震度5弱以上未入電（入電分 {}）", r.label()))
            }
            (None, Some(u)) => (u, "震度5弱以上未入電".to_string()),
            (Some(r), _) => (r, r.label().to_string()),
            (None, None) => return,
        };
        push_max(
            &mut t.areas,
            AreaReport {
                code: text(child(n, "Code")),
                name: text(child(n, "Name")),
                level: i.level(),
                codes: vec![i.code().to_string()],
                label,
            },
        );
    };
    for pref in children(obs, "Pref") {
        for area in children(pref, "Area") {
            add(area);
            for city in children(area, "City") {
                add(city);
            }
        }
    }
}

/// Body/Tsunami/Forecast/Item: each 津波予報区 with its Category/Kind code.
fn tsunami(t: &mut Telegram, body: Node) {
    let Some(fc) = path(body, &["Tsunami", "Forecast"]) else {
        return;
    };
    for item in children(fc, "Item") {
        let Some(area) = child(item, "Area") else {
            continue;
        };
        let code = text(path(item, &["Category", "Kind", "Code"]));
        let Some((level, label)) = code_level(Family::Tsunami, &code) else {
            continue;
        };
        push_max(
            &mut t.areas,
            AreaReport {
                code: text(child(area, "Code")),
                name: text(child(area, "Name")),
                level,
                codes: vec![code],
                label,
            },
        );
    }
}

/// Body/Warning/Item: each area (府県予報区 to 市町村等) with the kinds in force there (Kind
/// codes whose Status is not 解除 or 発表警報・注意報はなし). The office is the 府県予報区.
fn warnings(t: &mut Telegram, body: Node) {
    for w in children(body, "Warning") {
        let prefecture_level = w
            .attribute("type")
            .is_some_and(|ty| ty.contains("府県予報区等"));
        for item in children(w, "Item") {
            let Some(area) = child(item, "Area") else {
                continue;
            };
            let code = text(child(area, "Code"));
            if prefecture_level && t.office.is_none() && !code.is_empty() {
                t.office = Some(code.clone());
            }
            let mut level = 0;
            let mut codes = Vec::new();
            let mut labels = Vec::new();
            for k in children(item, "Kind") {
                let status = text(child(k, "Status"));
                let kc = text(child(k, "Code"));
                if kc.is_empty() || status == "解除" || status.contains("はなし") {
                    continue;
                }
                if let Some((l, name)) = code_level(Family::Warning, &kc) {
                    level = level.max(l);
                    labels.push(name);
                    codes.push(kc);
                }
            }
            push_max(
                &mut t.areas,
                AreaReport {
                    code,
                    name: text(child(area, "Name")),
                    level,
                    codes,
                    label: if labels.is_empty() {
                        "なし".into()
                    } else {
                        labels.join("・")
                    },
                },
            );
        }
    }
}

/// Body/Warning/Item of 土砂災害警戒情報: each 市町村等 with its kind (3 警戒 in force when
/// 発表 or 継続). The office is Body/TargetArea.
fn landslide(t: &mut Telegram, body: Node) {
    t.office = child(body, "TargetArea")
        .map(|a| text(child(a, "Code")))
        .filter(|c| !c.is_empty());
    for w in children(body, "Warning") {
        for item in children(w, "Item") {
            let Some(area) = child(item, "Area") else {
                continue;
            };
            let kc = text(path(item, &["Kind", "Code"]));
            let status = text(path(item, &["Kind", "Status"]));
            let in_force = kc == "3" && (status == "発表" || status == "継続");
            let (level, codes, label) = if in_force {
                (4, vec![kc], "土砂災害警戒情報".to_string())
            } else {
                (0, Vec::new(), status)
            };
            push_max(
                &mut t.areas,
                AreaReport {
                    code: text(child(area, "Code")),
                    name: text(child(area, "Name")),
                    level,
                    codes,
                    label,
                },
            );
        }
    }
}

/// River telegrams give the kind per section and river in Head/Headline/Information; the
/// cities that may flood (浸水想定地区) are in the Body. Every one of those areas gets the
/// telegram's kind.
fn river(t: &mut Telegram, head: Node, body: Node) {
    let mut best: Option<(i32, String, String)> = None;
    let mut areas: Vec<(String, String)> = Vec::new();
    if let Some(hl) = child(head, "Headline") {
        for info in children(hl, "Information") {
            for item in children(info, "Item") {
                let kc = text(path(item, &["Kind", "Code"]));
                if let Some((l, name)) = code_level(Family::River, &kc) {
                    if best.as_ref().is_none_or(|(bl, _, _)| l > *bl) {
                        best = Some((l, kc.clone(), name));
                    }
                }
                for a in item
                    .children()
                    .filter(|c| c.tag_name().name() == "Areas")
                    .flat_map(|a| children(a, "Area"))
                {
                    areas.push((text(child(a, "Code")), text(child(a, "Name"))));
                }
            }
        }
    }
    for n in body.descendants().filter(|n| n.is_element()) {
        match n.tag_name().name() {
            "CityCode" => areas.push((text(Some(n)), text(child(n.parent().unwrap_or(n), "City")))),
            "Area" if n.ancestors().any(|a| a.tag_name().name() == "Warning") => {
                areas.push((text(child(n, "Code")), text(child(n, "Name"))))
            }
            _ => {}
        }
    }
    let Some((level, kc, label)) = best else {
        return;
    };
    for (code, name) in areas {
        if code.is_empty() {
            continue;
        }
        push_max(
            &mut t.areas,
            AreaReport {
                code,
                name,
                level,
                codes: vec![kc.clone()],
                label: label.clone(),
            },
        );
    }
}

/// One entry of a JMA Atom feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    /// The telegram's URL as the feed gives it.
    pub url: String,
    /// Its file name (`20220714065411_0_VPWW53_150000.xml`).
    pub file: String,
    /// Type code from the file name (VPWW53), if any.
    pub code: Option<String>,
    /// Office suffix from the file name (150000), if any.
    pub office: Option<String>,
    pub title: String,
    pub updated: Option<DateTime<FixedOffset>>,
}

/// Whether `file` is a plain telegram file name (no path, no surprises).
fn safe_file_name(file: &str) -> bool {
    !file.is_empty()
        && file.len() <= 128
        && file.ends_with(".xml")
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !file.contains("..")
}

/// Parses an Atom feed into its entries (newest first, as JMA lists them). Entries whose
/// link is not a plain `.xml` file name are left out.
pub fn parse_feed(xml: &str) -> Result<Vec<FeedEntry>, ParseError> {
    let doc = Document::parse(xml).map_err(|e| ParseError::NotXml(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "feed" {
        return Err(ParseError::NotTelegram(root.tag_name().name().to_string()));
    }
    let mut out = Vec::new();
    for e in children(root, "entry") {
        let url = children(e, "link")
            .find_map(|l| l.attribute("href"))
            .map(str::to_string)
            .unwrap_or_else(|| text(child(e, "id")));
        let file = url.rsplit('/').next().unwrap_or("").to_string();
        if !safe_file_name(&file) {
            continue;
        }
        out.push(FeedEntry {
            code: code_from_name(&file),
            office: office_from_name(&file),
            file,
            url,
            title: text(child(e, "title")),
            updated: DateTime::parse_from_rfc3339(&text(child(e, "updated"))).ok(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_code_and_office_come_from_the_file_name() {
        assert_eq!(
            code_from_name("20220714065411_0_VPWW53_150000.xml").as_deref(),
            Some("VPWW53")
        );
        assert_eq!(
            code_from_name("/x/16_01_01_220728_VXKOii.xml").as_deref(),
            Some("VXKOii")
        );
        assert_eq!(code_from_name("README.md"), None);
        assert_eq!(
            office_from_name("https://x/data/20220714065411_0_VPWW53_150000.xml").as_deref(),
            Some("150000")
        );
    }

    #[test]
    fn a_document_that_is_not_a_telegram_is_an_error_not_a_panic() {
        assert!(matches!(
            parse("<feed/>", ""),
            Err(ParseError::NotTelegram(_))
        ));
        assert!(matches!(parse("# README", ""), Err(ParseError::NotXml(_))));
        assert!(matches!(parse("", ""), Err(ParseError::NotXml(_))));
    }

    fn area<'a>(t: &'a Telegram, code: &str) -> &'a AreaReport {
        t.areas
            .iter()
            .find(|a| a.code == code)
            .unwrap_or_else(|| panic!("{code} is not in the telegram"))
    }

    #[test]
    fn a_city_with_five_minus_unreceived_beside_a_lower_max_int_reads_five_minus() {
        let name = "32-35_07_06_100915_VXSE53.xml";
        let t = parse(&crate::jma::sample_telegram(name), name).unwrap();
        // 藤枝市 and 富士市: MaxInt 4 with 震度５弱以上未入電.
        for city in ["2221400", "2221000"] {
            let a = area(&t, city);
            assert_eq!(
                (a.level, a.codes.as_slice()),
                (5, &["5-".to_string()][..]),
                "{a:?}"
            );
            assert!(a.label.contains("未入電"), "{a:?}");
        }
        // Without the condition, MaxInt is read as given, lower or higher.
        assert_eq!(area(&t, "2242900").level, 4, "川根本町 4");
        assert_eq!(area(&t, "2221900").level, 5, "下田市 5弱");
        // 西伊豆町 5強 has an unreceived station but no condition: 5強 stays.
        assert_eq!(area(&t, "2230600").level, 6);
        assert_eq!(area(&t, "442").level, 7, "静岡県中部 6弱");
        // The condition alone (no MaxInt): 5弱.
        let name = "32-35_06_03_100915_VXSE53.xml";
        let t = parse(&crate::jma::sample_telegram(name), name).unwrap();
        assert_eq!(area(&t, "0338100").level, 5, "金ケ崎町");
        assert_eq!(area(&t, "0636500").level, 5, "大蔵村 4 + 未入電");
    }

    #[test]
    fn feed_entries_with_odd_links_are_left_out() {
        let xml = r#"<feed xmlns="http://www.w3.org/2005/Atom">
          <entry><title>a</title><id>x</id><link href="https://h/data/20220714065411_0_VPWW53_150000.xml"/></entry>
          <entry><title>b</title><id>y</id><link href="https://h/data/../../etc/passwd"/></entry>
        </feed>"#;
        let e = parse_feed(xml).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].office.as_deref(), Some("150000"));
    }
}
