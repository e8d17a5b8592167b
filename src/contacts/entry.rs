//! The checks both file formats share: raw text values with their line numbers go in,
//! typed [`Contact`]s or problems come out.
//!
//! Invariant: every rule about a contact lives here once (in [`build`] for field syntax, in
//! [`rule_violations`] for whole-contact rules), so TOML, CSV and
//! [`Directory::validate`](super::Directory::validate) can never disagree about what a valid
//! contact is.

use std::collections::{BTreeMap, HashMap};

use super::{Contact, ContactKind, EmailAddress, PhoneNumber, Problem, DEFAULT_CALL_PRIORITY};
use crate::ids::{ChatHandle, StaffId};

/// A raw value and where it came from, so a problem can point at it.
#[derive(Debug, Clone)]
pub(super) struct At {
    pub value: String,
    pub line: usize,
    /// The name the file uses for this value (a CSV header may be Japanese).
    pub field: String,
}

impl At {
    pub fn new(value: impl Into<String>, line: usize, field: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            line,
            field: field.into(),
        }
    }
}

/// One contact as read from a file, before any checking.
#[derive(Debug, Default)]
pub(super) struct RawEntry {
    /// Where the entry starts: the `[[contact]]` header or the CSV record.
    pub line: usize,
    pub id: Option<At>,
    pub name: Option<At>,
    pub kana: Option<At>,
    pub department: Option<At>,
    pub role: Option<At>,
    pub call_priority: Option<At>,
    pub phones: Vec<At>,
    pub email: Option<At>,
    pub kind: Option<At>,
    pub shelter: Option<At>,
    /// Provider name as written, and the handle.
    pub chat: Vec<(String, At)>,
    /// Canonical fields the reader already reported as unusable (wrong type, say), so the
    /// builder does not also call them missing.
    pub reported: Vec<&'static str>,
    /// The row has a value in a column the reader refused (an unknown CSV header): a value
    /// that seems missing may be sitting there, so missing values are not reported.
    pub unread_column: bool,
}

/// The file's own name for each canonical field, used when a problem is about a field that
/// is absent (a CSV with a 氏名 column should hear about 氏名, not `name`).
pub(super) type Labels = BTreeMap<&'static str, String>;

fn label(labels: &Labels, field: &'static str) -> String {
    labels
        .get(field)
        .cloned()
        .unwrap_or_else(|| field.to_string())
}

/// Trimmed text, with blank treated as absent: a spreadsheet cannot tell "" from nothing.
fn text(v: &Option<At>) -> Option<String> {
    v.as_ref()
        .map(|a| a.value.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

const PRIORITY_HINT: &str = "use 1 (call first) to 9 (call last)";

/// Provider names become config keys and metric labels, so keep them plain.
fn provider_ok(p: &str) -> bool {
    !p.is_empty()
        && p.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Digits typed in full width (Excel with the IME on) mean the same number.
fn fold_digits(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| match c {
            '０'..='９' => char::from_u32(c as u32 - '０' as u32 + '0' as u32).unwrap_or(c),
            '－' => '-',
            _ => c,
        })
        .collect()
}

/// Why a text value is refused for holding a control character (NUL, a line break, ...):
/// invisible in a spreadsheet, but it breaks printed lists, CSV downloads and PostgreSQL
/// (which stores no NUL). `None` when the text is clean.
pub(crate) fn control_char_problem(value: &str) -> Option<String> {
    let (i, c) = value.chars().enumerate().find(|(_, c)| c.is_control())?;
    let what = match c {
        '\0' => "a NUL character (U+0000)".to_string(),
        '\n' | '\r' | '\u{85}' => "a line break".to_string(),
        '\t' => "a tab".to_string(),
        c => format!("the control character U+{:04X}", c as u32),
    };
    let fix = if matches!(c, '\n' | '\r' | '\u{85}') {
        "put the value on one line (in Excel a cell with Alt+Enter holds one)"
    } else {
        "delete it (it is invisible in most editors; retyping the value removes it)"
    };
    // Quote enough to find the value, not all of it.
    let shown: String = value.trim().chars().take(40).collect();
    let more = if value.trim().chars().nth(40).is_some() {
        "…"
    } else {
        ""
    };
    Some(format!(
        "{shown:?}{more} contains {what} at character {}; {fix}",
        i + 1
    ))
}

/// Takes every value holding a control character out of the entry, reporting it once with
/// its line and field; the builder then treats the value as reported, not as missing.
fn scrub(e: &mut RawEntry, problems: &mut Vec<Problem>) {
    let mut report = |at: &At| match control_char_problem(&at.value) {
        Some(message) => {
            problems.push(Problem::at(at.line, at.field.clone(), message));
            true
        }
        None => false,
    };
    let singles: [(&'static str, &mut Option<At>); 9] = [
        ("id", &mut e.id),
        ("name", &mut e.name),
        ("kana", &mut e.kana),
        ("department", &mut e.department),
        ("role", &mut e.role),
        ("call_priority", &mut e.call_priority),
        ("email", &mut e.email),
        ("kind", &mut e.kind),
        ("shelter", &mut e.shelter),
    ];
    for (field, slot) in singles {
        if slot.as_ref().is_some_and(&mut report) {
            *slot = None;
            e.reported.push(field);
        }
    }
    let before = e.phones.len();
    e.phones.retain(|at| !report(at));
    if e.phones.len() != before {
        e.reported.push("phones");
    }
    let before = e.chat.len();
    e.chat.retain(|(_, at)| !report(at));
    if e.chat.len() != before {
        e.reported.push("chat");
    }
}

/// Rules about a contact as a whole. `check_reachable = false` skips the "unreachable"
/// rule when the numbers or ids were given but malformed: those already have a problem of
/// their own, and a second one would send the reader looking for a missing column.
pub(super) fn rule_violations(c: &Contact, check_reachable: bool) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if c.name.trim().is_empty() {
        out.push((
            "name",
            "is missing or empty; every contact needs a name HQ can read out".to_string(),
        ));
    }
    if !(1..=9).contains(&c.call_priority) {
        out.push((
            "call_priority",
            format!("{} is out of range; {PRIORITY_HINT}", c.call_priority),
        ));
    }
    if check_reachable && c.phones.is_empty() && c.chat.is_empty() {
        out.push((
            "phones",
            "this contact has neither a phone number nor a chat id; give at least one so they \
             can be reached"
                .to_string(),
        ));
    }
    if c.kind == ContactKind::ShelterPhone && c.shelter.as_deref().is_none_or(str::is_empty) {
        out.push((
            "shelter",
            "a shelter phone needs the name of its shelter (e.g. shelter = \"三条小学校\")"
                .to_string(),
        ));
    }
    // Files are scrubbed value by value in `build`; this catches a directory that came
    // another way (the HTTP API, the database).
    let texts = [
        ("name", Some(c.name.as_str())),
        ("kana", c.kana.as_deref()),
        ("department", c.department.as_deref()),
        ("role", c.role.as_deref()),
        ("shelter", c.shelter.as_deref()),
    ];
    for (field, value) in texts {
        if let Some(message) = value.and_then(control_char_problem) {
            out.push((field, message));
        }
    }
    out
}

/// Checks every entry and the directory as a whole, collecting every problem.
pub(super) fn build(
    entries: Vec<RawEntry>,
    labels: &Labels,
    problems: &mut Vec<Problem>,
) -> Vec<Contact> {
    let mut contacts = Vec::with_capacity(entries.len());
    let mut first_line: HashMap<StaffId, usize> = HashMap::with_capacity(entries.len());
    for mut e in entries {
        let before = problems.len();
        scrub(&mut e, problems);
        let mut fail = |line: usize, field: &str, message: String| {
            problems.push(Problem::at(line, field, message));
        };

        let id = match &e.id {
            Some(at) => match StaffId::typed(&at.value) {
                Ok(id) => {
                    if let Some(first) = first_line.get(&id) {
                        fail(
                            at.line,
                            &at.field,
                            format!(
                                "{:?} is used on line {first} and line {}; give each person \
                                 their own id",
                                id.as_str(),
                                at.line
                            ),
                        );
                    } else {
                        first_line.insert(id.clone(), at.line);
                    }
                    Some(id)
                }
                Err(err) => {
                    fail(at.line, &at.field, err.to_string());
                    None
                }
            },
            None if e.reported.contains(&"id") || e.unread_column => None,
            None => {
                fail(
                    e.line,
                    &label(labels, "id"),
                    "is missing; every contact needs an id (the staff number, say)".to_string(),
                );
                None
            }
        };

        let call_priority = match &e.call_priority {
            None => DEFAULT_CALL_PRIORITY,
            Some(at) if at.value.trim().is_empty() => DEFAULT_CALL_PRIORITY,
            Some(at) => match fold_digits(&at.value).parse::<i64>() {
                Ok(n) if (1..=9).contains(&n) => n as u8,
                Ok(n) => {
                    fail(
                        at.line,
                        &at.field,
                        format!("{n} is out of range; {PRIORITY_HINT}"),
                    );
                    DEFAULT_CALL_PRIORITY
                }
                Err(_) => {
                    fail(
                        at.line,
                        &at.field,
                        format!("{:?} is not a number; {PRIORITY_HINT}", at.value.trim()),
                    );
                    DEFAULT_CALL_PRIORITY
                }
            },
        };

        let mut reach_failed = false;
        let mut phones: Vec<PhoneNumber> = Vec::with_capacity(e.phones.len());
        for at in &e.phones {
            match PhoneNumber::parse(&at.value) {
                Ok(p) if phones.contains(&p) => {}
                Ok(p) => phones.push(p),
                Err(err) => {
                    reach_failed = true;
                    fail(at.line, &at.field, err.to_string());
                }
            }
        }

        let mut chat = BTreeMap::new();
        for (provider, at) in &e.chat {
            let key = provider.trim().to_ascii_lowercase();
            if !provider_ok(&key) {
                reach_failed = true;
                fail(
                    at.line,
                    &at.field,
                    format!(
                        "{provider:?} is not a provider name; use lowercase letters, digits, \
                         '-' or '_' (lineworks, matrix, simulator)"
                    ),
                );
                continue;
            }
            if at.value.trim().is_empty() {
                continue;
            }
            match ChatHandle::parse(&at.value) {
                Ok(h) => {
                    if chat.insert(key.clone(), h).is_some() {
                        fail(
                            at.line,
                            &at.field,
                            format!("a second chat id for {key:?}; give one per provider"),
                        );
                    }
                }
                Err(err) => {
                    reach_failed = true;
                    fail(at.line, &at.field, err.to_string());
                }
            }
        }

        let email = match &e.email {
            Some(at) if !at.value.trim().is_empty() => match EmailAddress::parse(&at.value) {
                Ok(m) => Some(m),
                Err(err) => {
                    fail(at.line, &at.field, err.to_string());
                    None
                }
            },
            _ => None,
        };

        let kind = match &e.kind {
            Some(at) if !at.value.trim().is_empty() => match at.value.parse::<ContactKind>() {
                Ok(k) => k,
                Err(err) => {
                    fail(at.line, &at.field, err.to_string());
                    ContactKind::Staff
                }
            },
            _ => ContactKind::Staff,
        };

        let contact = Contact {
            // A placeholder only ever seen by the rules below: a missing or bad id has
            // already failed the load.
            id: id.unwrap_or_else(|| StaffId::parse("?").expect("'?' is a valid staff id")),
            name: text(&e.name).unwrap_or_default(),
            kana: text(&e.kana),
            department: text(&e.department),
            role: text(&e.role),
            call_priority,
            phones,
            email,
            chat,
            kind,
            shelter: text(&e.shelter),
        };
        let check_reachable =
            !reach_failed && !e.reported.contains(&"phones") && !e.reported.contains(&"chat");
        for (field, message) in rule_violations(&contact, check_reachable) {
            // A value the reader could not take may be the one that seems missing.
            let absence = matches!(field, "name" | "phones" | "shelter");
            if e.reported.contains(&field) || (absence && e.unread_column) {
                continue;
            }
            let (line, name) = match field {
                "name" | "call_priority" => {
                    let at = if field == "name" {
                        &e.name
                    } else {
                        &e.call_priority
                    };
                    match at {
                        Some(a) => (a.line, a.field.clone()),
                        None => (e.line, label(labels, field)),
                    }
                }
                // The absent shelter is best explained where the kind was set.
                "shelter" => (
                    e.kind.as_ref().map_or(e.line, |k| k.line),
                    label(labels, field),
                ),
                _ => (e.line, label(labels, field)),
            };
            problems.push(Problem::at(line, name, message));
        }
        if problems.len() == before {
            contacts.push(contact);
        }
    }
    if contacts.is_empty() && problems.is_empty() {
        problems.push(Problem::file(
            "contact",
            "there are no contacts in the file; see contacts.example.toml",
        ));
    }
    contacts
}

#[cfg(test)]
mod tests {
    use super::super::{parse_csv, parse_toml, ContactsError};

    fn csv_problems(text: &str) -> Vec<(Option<usize>, String, String)> {
        flatten(parse_csv(text.as_bytes(), "contacts.csv"))
    }

    fn toml_problems(text: &str) -> Vec<(Option<usize>, String, String)> {
        flatten(parse_toml(text, "contacts.toml"))
    }

    fn flatten<T>(r: Result<T, ContactsError>) -> Vec<(Option<usize>, String, String)> {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e
                .problems()
                .iter()
                .map(|p| (p.line, p.field.clone(), p.message.clone()))
                .collect(),
        }
    }

    fn one(p: Vec<(Option<usize>, String, String)>) -> (Option<usize>, String, String) {
        assert_eq!(p.len(), 1, "{p:?}");
        p.into_iter().next().unwrap_or_default()
    }

    const HEADER: &str = "id,name,phones,email,call_priority,kind,shelter,chat.simulator\n";

    fn csv_with(row: &str) -> String {
        format!("{HEADER}S1,田中,090-1234-5678,,,,,\n{row}\nS3,佐藤,090-1234-5670,,,,,\n")
    }

    #[test]
    fn duplicate_ids_name_both_lines() {
        let (line, field, msg) = one(csv_problems(&csv_with("S1,鈴木,090-1234-5679,,,,,")));
        assert_eq!((line, field.as_str()), (Some(3), "id"));
        assert_eq!(
            msg,
            "\"S1\" is used on line 2 and line 3; give each person their own id"
        );

        let text = "[[contact]]\nid = \"A\"\nname = \"a\"\nphones = \"090-1234-5678\"\n\n\
                    [[contact]]\nname = \"b\"\nid = \"A\"\nphones = \"090-1234-5679\"\n";
        let (line, field, msg) = one(toml_problems(text));
        assert_eq!((line, field.as_str()), (Some(8), "id"));
        assert!(msg.contains("used on line 2 and line 8"), "{msg}");
    }

    #[test]
    fn a_person_with_neither_phone_nor_chat_is_refused() {
        let (line, field, msg) = one(csv_problems(&csv_with(
            "S2,鈴木,,suzuki@city.example.jp,,,,",
        )));
        assert_eq!((line, field.as_str()), (Some(3), "phones"));
        assert_eq!(
            msg,
            "this contact has neither a phone number nor a chat id; give at least one so they \
             can be reached"
        );
        let text = "[[contact]]\nid = \"A\"\nname = \"a\"\n";
        assert_eq!(
            one(toml_problems(text)).0,
            Some(1),
            "points at the [[contact]] header"
        );
    }

    #[test]
    fn a_chat_id_alone_is_enough() {
        let text = csv_with("S2,鈴木,,,,,,sim-S2");
        assert_eq!(
            parse_csv(text.as_bytes(), "c.csv").map(|d| d.len()).ok(),
            Some(3)
        );
    }

    #[test]
    fn malformed_phone_is_refused_with_the_number_and_an_example() {
        let (line, field, msg) = one(csv_problems(&csv_with("S2,鈴木,090-12-34,,,,,")));
        assert_eq!((line, field.as_str()), (Some(3), "phones"));
        assert!(
            msg.starts_with("\"090-12-34\" is not a Japanese phone number"),
            "{msg}"
        );
        assert!(
            msg.ends_with("expected e.g. 090-1234-5678 or 0256-34-5525)"),
            "{msg}"
        );
    }

    #[test]
    fn malformed_email_is_refused() {
        let (line, field, msg) = one(csv_problems(&csv_with(
            "S2,鈴木,090-1234-5679,suzuki@city,,,,",
        )));
        assert_eq!((line, field.as_str()), (Some(3), "email"));
        assert_eq!(
            msg,
            "\"suzuki@city\" is not an e-mail address (the part after the @ must be a domain \
             like city.example.jp; expected e.g. tanaka@city.example.jp)"
        );
    }

    #[test]
    fn empty_or_missing_name_is_refused() {
        let (line, field, msg) = one(csv_problems(&csv_with("S2, ,090-1234-5679,,,,,")));
        assert_eq!((line, field.as_str()), (Some(3), "name"));
        assert_eq!(
            msg,
            "is missing or empty; every contact needs a name HQ can read out"
        );
        let text = "[[contact]]\nid = \"A\"\nphones = \"090-1234-5678\"\n";
        let (line, field, _) = one(toml_problems(text));
        assert_eq!((line, field.as_str()), (Some(1), "name"));
    }

    #[test]
    fn call_priority_outside_one_to_nine_is_refused() {
        for (cell, msg) in [
            (
                "10",
                "10 is out of range; use 1 (call first) to 9 (call last)",
            ),
            (
                "0",
                "0 is out of range; use 1 (call first) to 9 (call last)",
            ),
            (
                "高",
                "\"高\" is not a number; use 1 (call first) to 9 (call last)",
            ),
        ] {
            let row = format!("S2,鈴木,090-1234-5679,,{cell},,,");
            let (line, field, got) = one(csv_problems(&csv_with(&row)));
            assert_eq!(
                (line, field.as_str(), got.as_str()),
                (Some(3), "call_priority", msg)
            );
        }
        let text = "[[contact]]\nid = \"A\"\nname = \"a\"\nphones = \"090-1234-5678\"\n\
                    call_priority = 12\n";
        let (line, field, _) = one(toml_problems(text));
        assert_eq!((line, field.as_str()), (Some(5), "call_priority"));
    }

    #[test]
    fn a_shelter_phone_without_a_shelter_is_refused() {
        let (line, field, msg) = one(csv_problems(&csv_with(
            "P1,避難所,090-1234-5679,,,避難所,,",
        )));
        assert_eq!((line, field.as_str()), (Some(3), "shelter"));
        assert_eq!(
            msg,
            "a shelter phone needs the name of its shelter (e.g. shelter = \"三条小学校\")"
        );
        let text = "[[contact]]\nid = \"P\"\nname = \"p\"\nphones = \"090-1234-5678\"\n\
                    kind = \"shelter_phone\"\n";
        let (line, field, _) = one(toml_problems(text));
        assert_eq!(
            (line, field.as_str()),
            (Some(5), "shelter"),
            "points at the kind line"
        );
    }

    #[test]
    fn an_unknown_kind_is_refused() {
        let (line, field, msg) = one(csv_problems(&csv_with("S2,鈴木,090-1234-5679,,,来客,,")));
        assert_eq!((line, field.as_str()), (Some(3), "kind"));
        assert_eq!(
            msg,
            "\"来客\" is not a kind of contact; use staff or shelter_phone (or 職員 / 避難所); \
             an employment type (正職員, 会計年度任用職員, 嘱託 …) is read as staff"
        );
    }

    #[test]
    fn bad_staff_and_chat_ids_are_refused_with_the_ids_message() {
        let (line, field, msg) = one(csv_problems(&csv_with("S 2,鈴木,090-1234-5679,,,,,")));
        assert_eq!((line, field.as_str()), (Some(3), "id"));
        assert!(msg.starts_with("staff id \"S 2\" contains ' '"), "{msg}");

        let (line, field, msg) = one(csv_problems(&csv_with("S2,鈴木,,,,,,sim/S2")));
        assert_eq!((line, field.as_str()), (Some(3), "chat.simulator"));
        assert!(msg.starts_with("chat id \"sim/S2\" contains '/'"), "{msg}");

        let text = "[[contact]]\nname = \"a\"\nphones = \"090-1234-5678\"\n";
        let (line, field, msg) = one(toml_problems(text));
        assert_eq!((line, field.as_str()), (Some(1), "id"));
        assert!(msg.starts_with("is missing"), "{msg}");
    }

    #[test]
    fn every_problem_in_the_file_is_reported_not_just_the_first() {
        let text = format!(
            "{HEADER}S1,田中,090-12-34,x@y,0,,,\nS1,,,,,避難所,,\nS3,佐藤,090-1234-5670,,,,,\n"
        );
        let got: Vec<_> = csv_problems(&text)
            .into_iter()
            .map(|p| (p.0, p.1))
            .collect();
        let want = [
            (Some(2), "call_priority"),
            (Some(2), "phones"),
            (Some(2), "email"),
            (Some(3), "id"),
            (Some(3), "name"),
            (Some(3), "phones"),
            (Some(3), "shelter"),
        ];
        let want: Vec<_> = want.iter().map(|(l, f)| (*l, f.to_string())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn one_bad_row_among_good_ones_loads_nothing() {
        let mut text = HEADER.to_string();
        for i in 0..50 {
            text.push_str(&format!("S{i},職員{i},090-0000-{i:04},,,,,\n"));
        }
        assert_eq!(
            parse_csv(text.as_bytes(), "c.csv").map(|d| d.len()).ok(),
            Some(50)
        );
        text.push_str("S99,最後,090-0000-99,,,,,\n");
        let err = parse_csv(text.as_bytes(), "c.csv").unwrap_err();
        assert_eq!(err.problems().len(), 1);
    }

    #[test]
    fn display_lists_one_problem_per_line_with_file_and_line() {
        let text = format!("{HEADER}S1,田中,090-12-34,,,,,\nS2,鈴木,,,,,,\n");
        let err = parse_csv(text.as_bytes(), "contacts.csv").unwrap_err();
        let shown = err.to_string();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 2, "{shown}");
        assert!(
            lines[0].starts_with("contacts.csv:2: phones: \"090-12-34\" is not a Japanese phone"),
            "{shown}"
        );
        assert!(
            lines[1].starts_with("contacts.csv:3: phones: this contact has neither"),
            "{shown}"
        );
        assert_eq!(err.origin(), "contacts.csv");
    }

    #[test]
    fn control_characters_are_refused_in_toml_and_in_a_directory_from_elsewhere() {
        let text = "[[contact]]\nid = \"A\"\nname = \"田\\u0000中\"\nphones = \"090-1234-5678\"\n";
        let (line, field, msg) = one(toml_problems(text));
        assert_eq!((line, field.as_str()), (Some(3), "name"));
        assert!(
            msg.contains("a NUL character (U+0000) at character 2"),
            "{msg}"
        );

        let mut dir = crate::contacts::synthetic::generate(3, 1);
        dir.contacts[1].department = Some("総務\u{1b}[31m課".into());
        dir.contacts[2].name = "改行\nあり".into();
        let err = dir.validate("api").unwrap_err();
        let got: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(got, ["S00002.department", "S00003.name"], "{err}");
        assert!(err.to_string().contains("U+001B"), "{err}");
    }

    #[test]
    fn odd_but_printable_unicode_is_kept() {
        let name = "Ａ\u{301}👨\u{200d}👩 \u{5d0}\u{5d1} ｶﾀｶﾅ\u{2028}x\u{feff}y";
        let text = format!("id,name,phones\nS1,{name},090-1234-5678\n");
        let dir = parse_csv(text.as_bytes(), "c.csv").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dir.contacts[0].name, name);
    }
}
