//! The TOML contacts file (`[[contact]]` entries; contacts.example.toml documents it).
//!
//! Invariant: every value keeps the byte span it was read from, so each problem names the
//! line of the offending key, or of its `[[contact]]` header when a key is missing; and an
//! unknown key is an error, never silently ignored (a misspelt `phone =` would otherwise
//! drop someone's number from the call list).

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

use super::entry::{self, At, Labels, RawEntry};
use super::lines::LineIndex;
use super::{finish, ContactsError, Directory, Problem};

/// A TOML value with spans all the way down. `toml::Value` loses spans, and a derived
/// struct stops at the first unknown key; this keeps both the positions and the chance to
/// report every problem at once.
#[derive(Debug)]
enum Node {
    Str(String),
    Int(i64),
    Float,
    Bool,
    Datetime,
    Array(Vec<Spanned<Node>>),
    Table(Vec<(String, Spanned<Node>)>),
}

/// The key toml uses to smuggle a datetime through serde's data model.
const DATETIME_KEY: &str = "$__toml_private_datetime";

impl Node {
    fn describe(&self) -> &'static str {
        match self {
            Node::Str(_) => "text",
            Node::Int(_) => "a whole number",
            Node::Float => "a decimal number",
            Node::Bool => "true/false",
            Node::Datetime => "a date",
            Node::Array(_) => "a list",
            Node::Table(_) => "a table",
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a TOML value")
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Node, E> {
                Ok(Node::Str(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Node, E> {
                i64::try_from(v).map(Node::Int).map_err(E::custom)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Float)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Bool)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == DATETIME_KEY {
                        map.next_value::<String>()?;
                        return Ok(Node::Datetime);
                    }
                    entries.push((key, map.next_value()?));
                }
                Ok(Node::Table(entries))
            }
        }
        d.deserialize_any(NodeVisitor)
    }
}

/// Byte offset -> 1-based line, by the one rule every contacts message uses.
struct Lines(LineIndex);

impl Lines {
    fn new(text: &str) -> Self {
        Self(LineIndex::new(text.as_bytes()))
    }
    fn of(&self, offset: usize) -> usize {
        self.0.line_of(offset)
    }
}

const KNOWN_KEYS: &str =
    "id, name, kana, department, role, call_priority, phones, email, kind, shelter and chat";

/// Parses the TOML contacts format. `origin` names the file in problems.
pub fn parse_toml(text: &str, origin: &str) -> Result<Directory, ContactsError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines = Lines::new(text);
    let mut problems = Vec::new();
    if text.trim().is_empty() {
        problems.push(Problem::file(
            "contact",
            "the file is empty; add [[contact]] entries (see contacts.example.toml)",
        ));
        return finish(origin, Vec::new(), problems);
    }
    let root = match toml::from_str::<Node>(text) {
        Ok(root) => root,
        Err(e) => {
            let line = e.span().map_or(1, |s| lines.of(s.start));
            problems.push(Problem::at(
                line,
                "toml",
                format!("syntax error: {}", e.message().trim_end()),
            ));
            return finish(origin, Vec::new(), problems);
        }
    };
    let Node::Table(top) = root else {
        problems.push(Problem::file("toml", "the file is not a TOML table"));
        return finish(origin, Vec::new(), problems);
    };

    let mut entries = Vec::new();
    for (key, value) in top {
        let line = lines.of(value.span().start);
        if key != "contact" {
            problems.push(Problem::at(
                line,
                key,
                "unknown top-level key; this file holds only [[contact]] entries",
            ));
            continue;
        }
        match value.into_inner() {
            Node::Array(items) => {
                for item in items {
                    let span = item.span();
                    let entry_line = lines.of(span.start);
                    match item.into_inner() {
                        Node::Table(fields) => {
                            entries.push(read_entry(entry_line, fields, &lines, &mut problems));
                        }
                        other => problems.push(Problem::at(
                            entry_line,
                            "contact",
                            format!("each contact must be a table, not {}", other.describe()),
                        )),
                    }
                }
            }
            other => problems.push(Problem::at(
                line,
                "contact",
                format!(
                    "expected [[contact]] entries (double brackets), found {}",
                    other.describe()
                ),
            )),
        }
    }
    let contacts = entry::build(entries, &Labels::new(), &mut problems);
    finish(origin, contacts, problems)
}

/// The keys a contact may have, as `'static` names for [`RawEntry::reported`].
const TEXT_KEYS: [&str; 8] = [
    "id",
    "name",
    "kana",
    "department",
    "role",
    "email",
    "kind",
    "shelter",
];

fn read_entry(
    line: usize,
    fields: Vec<(String, Spanned<Node>)>,
    lines: &Lines,
    problems: &mut Vec<Problem>,
) -> RawEntry {
    let mut e = RawEntry {
        line,
        ..RawEntry::default()
    };
    for (key, value) in fields {
        let at_line = lines.of(value.span().start);
        let node = value.into_inner();
        let mut wrong = |e: &mut RawEntry, field: &'static str, want: &str, node: &Node| {
            e.reported.push(field);
            problems.push(Problem::at(
                at_line,
                field,
                format!("expected {want}, found {}", node.describe()),
            ));
        };
        match (key.as_str(), node) {
            ("call_priority", Node::Int(n)) => {
                e.call_priority = Some(At::new(n.to_string(), at_line, key));
            }
            ("call_priority", other) => wrong(
                &mut e,
                "call_priority",
                "a whole number from 1 to 9 (without quotes)",
                &other,
            ),
            // One number without brackets is what people write; accept it.
            ("phones", Node::Str(s)) => e.phones.push(At::new(s, at_line, key)),
            ("phones", Node::Array(items)) => {
                for item in items {
                    let item_line = lines.of(item.span().start);
                    match item.into_inner() {
                        Node::Str(s) => e.phones.push(At::new(s, item_line, "phones")),
                        other => wrong(&mut e, "phones", "phone numbers as text", &other),
                    }
                }
            }
            ("phones", other) => wrong(
                &mut e,
                "phones",
                "a list of numbers like [\"090-1234-5678\"]",
                &other,
            ),
            ("chat", Node::Table(handles)) => {
                for (provider, handle) in handles {
                    let h_line = lines.of(handle.span().start);
                    let field = format!("chat.{provider}");
                    match handle.into_inner() {
                        Node::Str(s) => e.chat.push((provider, At::new(s, h_line, field))),
                        other => {
                            e.reported.push("chat");
                            problems.push(Problem::at(
                                h_line,
                                field,
                                format!("expected the chat id as text, found {}", other.describe()),
                            ));
                        }
                    }
                }
            }
            ("chat", other) => wrong(
                &mut e,
                "chat",
                "a [contact.chat] table of provider = \"id\"",
                &other,
            ),
            (k, node) => match TEXT_KEYS.iter().find(|t| **t == k) {
                Some(&field) => match node {
                    Node::Str(s) => {
                        let slot = match field {
                            "id" => &mut e.id,
                            "name" => &mut e.name,
                            "kana" => &mut e.kana,
                            "department" => &mut e.department,
                            "role" => &mut e.role,
                            "email" => &mut e.email,
                            "kind" => &mut e.kind,
                            _ => &mut e.shelter,
                        };
                        *slot = Some(At::new(s, at_line, field));
                    }
                    other => wrong(&mut e, field, "text in quotes", &other),
                },
                None => problems.push(Problem::at(
                    at_line,
                    k,
                    format!("unknown key; a contact can have {KNOWN_KEYS}"),
                )),
            },
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::super::{ContactKind, PhoneNumber};
    use super::*;

    fn problems(text: &str) -> Vec<(Option<usize>, String, String)> {
        match parse_toml(text, "contacts.toml") {
            Ok(d) => panic!("expected an error, got {} contacts", d.len()),
            Err(e) => e
                .problems()
                .iter()
                .map(|p| (p.line, p.field.clone(), p.message.clone()))
                .collect(),
        }
    }

    const GOOD: &str = r#"
[[contact]]
id = "S0001"
name = "田中 一郎"
kana = "たなか いちろう"
department = "防災対策室"
role = "室長"
call_priority = 1
phones = ["090-1234-5678", "0256-34-5525"]
email = "tanaka@City.Example.jp"
kind = "staff"
shelter = "三条小学校"
[contact.chat]
lineworks = "tanaka@sanjo-city"
matrix = "@tanaka:city.example"
simulator = "sim-S0001"

[[contact]]
id = "P0001"
name = "三条小学校避難所"
kind = "shelter_phone"
shelter = "三条小学校"
phones = "080-0000-0001"
chat = { simulator = "sim-P0001" }
"#;

    #[test]
    fn a_full_entry_reads_every_field() {
        let dir = parse_toml(GOOD, "contacts.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dir.len(), 2);
        let c = &dir.contacts[0];
        assert_eq!(c.id.as_str(), "S0001");
        assert_eq!(c.name, "田中 一郎");
        assert_eq!(c.kana.as_deref(), Some("たなか いちろう"));
        assert_eq!(c.department.as_deref(), Some("防災対策室"));
        assert_eq!(c.role.as_deref(), Some("室長"));
        assert_eq!(c.call_priority, 1);
        assert_eq!(
            c.phones,
            [
                PhoneNumber::parse("+819012345678").unwrap(),
                PhoneNumber::parse("+81256345525").unwrap()
            ]
        );
        assert_eq!(c.email.as_ref().unwrap().as_str(), "tanaka@city.example.jp");
        assert_eq!(c.kind, ContactKind::Staff);
        assert_eq!(c.shelter.as_deref(), Some("三条小学校"));
        assert_eq!(
            c.chat_handle("matrix").unwrap().as_str(),
            "@tanaka:city.example"
        );
        assert_eq!(c.chat.len(), 3);
        let p = &dir.contacts[1];
        assert_eq!(p.kind, ContactKind::ShelterPhone);
        assert_eq!(p.call_priority, 5);
        assert_eq!(p.phones.len(), 1);
        assert_eq!(p.chat_handle("simulator").unwrap().as_str(), "sim-P0001");
    }

    #[test]
    fn unknown_keys_are_named_with_their_lines() {
        let text = "[[contact]]\nid = \"S1\"\nname = \"a\"\nphone = \"090-1234-5678\"\n\
                    [[contact]]\nid = \"S2\"\nname = \"b\"\nphones = []\nnickname = \"x\"\n\
                    simulator = \"x\"\n";
        let p = problems(text);
        let got: Vec<_> = p.iter().map(|p| (p.0, p.1.as_str())).collect();
        assert_eq!(
            got,
            [
                (Some(1), "phones"),
                (Some(4), "phone"),
                (Some(5), "phones"),
                (Some(9), "nickname"),
                (Some(10), "simulator"),
            ]
        );
        assert!(p[1]
            .2
            .starts_with("unknown key; a contact can have id, name"));
        assert!(p[0].2.contains("neither a phone number nor a chat id"));
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let p = problems("[[contact]]\nid = \"S1\"\nname = \"田中\nphones = []\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, Some(3));
        assert_eq!(p[0].1, "toml");
        assert!(p[0].2.starts_with("syntax error: "), "{p:?}");
    }

    #[test]
    fn wrong_value_types_are_explained() {
        let p = problems(
            "[[contact]]\nid = 1\nname = \"a\"\ncall_priority = \"1\"\nphones = [1]\n\
             chat = \"x\"\n",
        );
        let got: Vec<_> = p
            .iter()
            .map(|p| (p.0, p.1.as_str(), p.2.as_str()))
            .collect();
        assert_eq!(
            got[..4],
            [
                (
                    Some(2),
                    "id",
                    "expected text in quotes, found a whole number"
                ),
                (
                    Some(4),
                    "call_priority",
                    "expected a whole number from 1 to 9 (without quotes), found text"
                ),
                (
                    Some(5),
                    "phones",
                    "expected phone numbers as text, found a whole number"
                ),
                (
                    Some(6),
                    "chat",
                    "expected a [contact.chat] table of provider = \"id\", found text"
                ),
            ]
        );
    }

    #[test]
    fn a_single_table_instead_of_entries_is_explained() {
        let p = problems("[contact]\nid = \"S1\"\n");
        assert_eq!(p[0].1, "contact");
        assert!(p[0].2.contains("double brackets"), "{p:?}");
        let p = problems("title = \"x\"\n");
        assert_eq!((p[0].0, p[0].1.as_str()), (Some(1), "title"));
    }

    #[test]
    fn bad_chat_ids_point_at_the_provider_line() {
        let text = "[[contact]]\nid = \"S1\"\nname = \"a\"\n[contact.chat]\nmatrix = \"@a b:x\"\n\
                    \"line works\" = \"x\"\n";
        let p = problems(text);
        assert_eq!((p[0].0, p[0].1.as_str()), (Some(5), "chat.matrix"));
        assert!(p[0].2.contains("contains ' '"), "{p:?}");
        assert_eq!((p[1].0, p[1].1.as_str()), (Some(6), "chat.line works"));
        assert!(p[1].2.contains("is not a provider name"), "{p:?}");
        assert_eq!(
            p.len(),
            2,
            "a malformed chat id is not also 'unreachable': {p:?}"
        );
    }

    #[test]
    fn a_file_with_only_comments_has_no_contacts() {
        let p = problems("# nothing yet\n");
        assert_eq!(p[0].0, None);
        assert_eq!(p[0].1, "contact");
        assert!(p[0].2.starts_with("there are no contacts"), "{p:?}");
        let p = problems("  \n");
        assert!(p[0].2.starts_with("the file is empty"), "{p:?}");
    }
}
