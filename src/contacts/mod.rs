//! The contacts directory: who gets the roll-call message, on which chat platform, and which
//! numbers HQ calls when they do not read it.
//!
//! Invariant: a [`Directory`] only exists whole and valid. Loading (TOML or CSV) is
//! all-or-nothing: every problem in the file is reported with its line and field, and nothing
//! partial is ever returned, because a roll call sent to a half-loaded staff list silently
//! leaves people out. Every contact has a unique id, a name, a priority in 1..=9, at least
//! one phone number or chat id, and a shelter if it is a shelter phone.
//!
//! Submodules: `phone` (Japanese numbers -> E.164), `email`, `entry` (checks shared by both
//! file formats), `lines` (the one line-numbering rule), `toml_file`, `csv_file`, and
//! [`synthetic`] (fictional populations for the demo and benchmarks).

mod csv_file;
mod email;
mod entry;
mod lines;
mod phone;
pub mod synthetic;
mod toml_file;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use crate::ids::{ChatHandle, StaffId};

pub use csv_file::{parse_csv, parse_csv_read, CsvRead};
pub use email::{EmailAddress, EmailError};
pub use phone::{PhoneError, PhoneNumber, PhoneProblem};
pub use toml_file::parse_toml;

/// Whether a contact is a person or a shared phone at an evacuation shelter; HQ reports
/// silent shelters separately from silent staff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactKind {
    Staff,
    ShelterPhone,
}

impl ContactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Staff => "staff",
            Self::ShelterPhone => "shelter_phone",
        }
    }
}

impl fmt::Display for ContactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a kind was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a kind of contact; use staff or shelter_phone (or 職員 / 避難所); an \
     employment type (正職員, 会計年度任用職員, 嘱託 …) is read as staff"
)]
pub struct KindError(pub String);

/// Employment types that do not end in 職員 or 社員 (see [`ContactKind::from_str`]).
const EMPLOYMENT_TYPES: &[&str] = &[
    "正規",
    "非正規",
    "常勤",
    "非常勤",
    "会計年度任用",
    "再任用",
    "任期付",
    "臨時",
    "臨時的任用",
    "嘱託",
    "パート",
    "パートタイム",
    "アルバイト",
    "派遣",
];

impl FromStr for ContactKind {
    type Err = KindError;
    /// Also takes the Japanese words HR exports use, since the CSV often comes from them.
    ///
    /// HR systems have a 種別 column of their own holding the employment type (正職員,
    /// 会計年度任用職員, 再任用職員, 嘱託 …), and an IT person exporting the staff list
    /// expects it to load as it is. Every such value describes a member of staff, which is
    /// all anpi's kind asks (staff, or the shared phone at a shelter), so they are read as
    /// staff: anything ending in 職員 or 社員, and the usual short forms. A shelter phone is
    /// never in an HR export, so nothing is lost; anything else is still refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let folded: String = s.trim().nfkc().collect::<String>().to_lowercase();
        match folded.as_str() {
            "staff" | "職員" => Ok(Self::Staff),
            "shelter_phone" | "shelter" | "避難所" | "避難所電話" => Ok(Self::ShelterPhone),
            t if t.ends_with("職員") || t.ends_with("社員") || EMPLOYMENT_TYPES.contains(&t) => {
                Ok(Self::Staff)
            }
            _ => Err(KindError(s.trim().to_string())),
        }
    }
}

/// Call priority when the file does not give one: the middle of 1..=9.
pub const DEFAULT_CALL_PRIORITY: u8 = 5;

/// One recipient of a roll call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub id: StaffId,
    /// What HQ reads out and prints on the call list.
    pub name: String,
    /// Reading of the name, so a caller can pronounce it and lists can sort in 五十音 order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kana: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// 1 = call first ... 9 = call last; default 5.
    #[serde(default = "default_priority")]
    pub call_priority: u8,
    /// First one = primary; callers work down the list.
    #[serde(default)]
    pub phones: Vec<PhoneNumber>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailAddress>,
    /// Provider name -> the person's id on it ("lineworks", "matrix", "simulator"). Only
    /// these ids, never phone or mail, are ever sent to a chat provider.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub chat: BTreeMap<String, ChatHandle>,
    #[serde(default = "default_kind")]
    pub kind: ContactKind,
    /// The shelter a shelter phone belongs to (required for shelter phones); for staff, the
    /// shelter they are assigned to open, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shelter: Option<String>,
}

fn default_priority() -> u8 {
    DEFAULT_CALL_PRIORITY
}

fn default_kind() -> ContactKind {
    ContactKind::Staff
}

impl Contact {
    pub fn primary_phone(&self) -> Option<&PhoneNumber> {
        self.phones.first()
    }

    /// The person's id on one provider; `None` means that provider cannot reach them and
    /// they belong on the call list straight away.
    pub fn chat_handle(&self, provider: &str) -> Option<&ChatHandle> {
        self.chat.get(provider)
    }
}

/// Every contact from one file, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    pub contacts: Vec<Contact>,
}

impl Directory {
    pub fn len(&self) -> usize {
        self.contacts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.contacts.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Contact> {
        self.contacts.iter()
    }

    /// A linear scan; for many look-ups (building a roll call of 100,000) use [`Self::by_id`]
    /// once instead.
    pub fn get(&self, id: &StaffId) -> Option<&Contact> {
        self.contacts.iter().find(|c| &c.id == id)
    }

    pub fn by_id(&self) -> HashMap<&StaffId, &Contact> {
        self.contacts.iter().map(|c| (&c.id, c)).collect()
    }

    /// Applies the file rules to a directory built in code or read from elsewhere (JSON, the
    /// database), so nothing reaches a roll call that the loader would have refused.
    /// Problems carry no line; the field is prefixed with the contact's id.
    pub fn validate(&self, origin: &str) -> Result<(), ContactsError> {
        let mut problems = Vec::new();
        if self.contacts.is_empty() {
            problems.push(Problem::file("contact", "there are no contacts"));
        }
        let mut seen: HashMap<&StaffId, usize> = HashMap::new();
        for (i, c) in self.contacts.iter().enumerate() {
            for (field, message) in entry::rule_violations(c, true) {
                problems.push(Problem {
                    line: None,
                    field: format!("{}.{field}", c.id),
                    message,
                });
            }
            if let Some(first) = seen.insert(&c.id, i) {
                problems.push(Problem {
                    line: None,
                    field: format!("{}.id", c.id),
                    message: format!(
                        "{:?} is used by contacts #{} and #{}; give each person their own id",
                        c.id.as_str(),
                        first + 1,
                        i + 1
                    ),
                });
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ContactsError::Invalid {
                origin: origin.to_string(),
                problems,
            })
        }
    }

    /// The directory in the TOML file format, e.g. for `anpi contacts import` to turn an HR
    /// CSV into the file the daemon loads. Phones are written in E.164.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        #[derive(Serialize)]
        struct File<'a> {
            contact: &'a [Contact],
        }
        toml::to_string(&File {
            contact: &self.contacts,
        })
    }
}

impl<'a> IntoIterator for &'a Directory {
    type Item = &'a Contact;
    type IntoIter = std::slice::Iter<'a, Contact>;
    fn into_iter(self) -> Self::IntoIter {
        self.contacts.iter()
    }
}

/// One thing wrong in a contacts file, precise enough to fix without reading code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line in the file; `None` when the problem is about the file as a whole.
    pub line: Option<usize>,
    /// The field or column as the file names it (`phones`, `電話番号`, `chat.lineworks`).
    pub field: String,
    pub message: String,
}

impl Problem {
    pub(crate) fn at(line: usize, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            line: Some(line),
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn file(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            line: None,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why contacts could not be loaded. `Invalid` lists every problem, one per line when
/// displayed, in the `file:line: field: message` form editors and people both understand.
#[derive(Debug, thiserror::Error)]
pub enum ContactsError {
    #[error("{origin}: cannot read the contacts file: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: contacts files must end in .toml or .csv, not {extension:?}")]
    UnsupportedFormat { origin: String, extension: String },
    #[error("{}", render(.origin, .problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

impl ContactsError {
    /// Every problem found; empty for errors about the file as a whole (unreadable, wrong
    /// extension).
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }

    pub fn origin(&self) -> &str {
        match self {
            Self::Read { origin, .. }
            | Self::UnsupportedFormat { origin, .. }
            | Self::Invalid { origin, .. } => origin,
        }
    }
}

fn render(origin: &str, problems: &[Problem]) -> String {
    let mut lines = Vec::with_capacity(problems.len());
    for p in problems {
        lines.push(match p.line {
            Some(line) => format!("{origin}:{line}: {}: {}", p.field, p.message),
            None => format!("{origin}: {}: {}", p.field, p.message),
        });
    }
    lines.join("\n")
}

/// Turns a list of problems into the all-or-nothing result every loader returns.
pub(crate) fn finish(
    origin: &str,
    contacts: Vec<Contact>,
    mut problems: Vec<Problem>,
) -> Result<Directory, ContactsError> {
    if problems.is_empty() {
        return Ok(Directory { contacts });
    }
    // File order reads best: an IT person fixes from the top down.
    problems.sort_by_key(|p| p.line.unwrap_or(0));
    Err(ContactsError::Invalid {
        origin: origin.to_string(),
        problems,
    })
}

/// Loads a contacts file, choosing the format by extension (`.toml` or `.csv`, any case).
/// The origin in errors is the path as given.
pub fn load_file(path: &Path) -> Result<Directory, ContactsError> {
    load_file_read(path).map(|r| r.directory)
}

/// Like [`load_file`], also naming the CSV columns skipped on purpose (内線, 住所 ...), for
/// `anpi contacts check` to show.
pub fn load_file_read(path: &Path) -> Result<CsvRead, ContactsError> {
    let origin = path.display().to_string();
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if extension != "toml" && extension != "csv" {
        return Err(ContactsError::UnsupportedFormat { origin, extension });
    }
    let bytes = std::fs::read(path).map_err(|source| ContactsError::Read {
        origin: origin.clone(),
        source,
    })?;
    if extension == "csv" {
        return parse_csv_read(&bytes, &origin);
    }
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let directory = match std::str::from_utf8(body) {
        Ok(text) => parse_toml(text, &origin)?,
        Err(e) => {
            let offset = bytes.len() - body.len() + e.valid_up_to();
            return finish(
                &origin,
                Vec::new(),
                vec![Problem::at(
                    lines::LineIndex::new(&bytes).line_of(offset),
                    "encoding",
                    format!("byte offset {offset}: the file is not UTF-8 text; save it as UTF-8"),
                )],
            )
            .map(|directory| CsvRead {
                directory,
                ignored_columns: Vec::new(),
            });
        }
    };
    Ok(CsvRead {
        directory,
        ignored_columns: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../contacts.example.toml");

    #[test]
    fn the_example_file_parses_and_shows_both_kinds() {
        let dir = parse_toml(EXAMPLE, "contacts.example.toml").unwrap_or_else(|e| panic!("{e}"));
        assert!((4..=6).contains(&dir.len()), "{} entries", dir.len());
        assert!(dir.iter().any(|c| c.kind == ContactKind::ShelterPhone));
        assert!(dir.iter().any(|c| c.kind == ContactKind::Staff));
    }

    #[test]
    fn the_example_file_documents_every_field() {
        for field in [
            "id",
            "name",
            "kana",
            "department",
            "role",
            "call_priority",
            "phones",
            "email",
            "kind",
            "shelter",
            "[contact.chat]",
            "lineworks",
            "matrix",
            "simulator",
        ] {
            assert!(
                EXAMPLE
                    .lines()
                    .any(|l| l.starts_with('#') && l.contains(field)),
                "{field} is not explained in a comment"
            );
        }
    }

    #[test]
    fn the_csv_example_in_the_example_file_loads_as_documented() {
        let csv: String = EXAMPLE
            .lines()
            .skip_while(|l| !l.contains("csv-example-begin"))
            .skip(1)
            .take_while(|l| !l.contains("csv-example-end"))
            .map(|l| format!("{}\r\n", l.trim_start_matches('#').trim()))
            .collect();
        let (bytes, _, _) = encoding_rs::SHIFT_JIS.encode(&csv);
        let read = parse_csv_read(&bytes, "example.csv").unwrap_or_else(|e| panic!("{e}"));
        let dir = read.directory;
        assert_eq!(dir.len(), 3);
        assert_eq!(dir.contacts[0].name, "田中 一郎");
        assert_eq!(dir.contacts[0].phones[0].national(), "090-0000-0001");
        assert_eq!(dir.contacts[2].kind, ContactKind::ShelterPhone);
        assert_eq!(dir.contacts[2].name, "三条小学校避難所");
        assert_eq!(read.ignored_columns, ["内線"]);
    }

    #[test]
    fn employment_types_from_an_hr_export_are_staff() {
        for kind in [
            "正職員",
            "会計年度任用職員",
            "再任用職員",
            "臨時職員",
            "嘱託",
            "嘱託職員",
            "非常勤",
            "任期付職員",
            "ﾊﾟｰﾄ",
            "アルバイト",
            "契約社員",
        ] {
            assert_eq!(
                kind.parse::<ContactKind>(),
                Ok(ContactKind::Staff),
                "{kind}"
            );
        }
        let err = "来庁者".parse::<ContactKind>().unwrap_err();
        assert!(
            err.to_string()
                .contains("an employment type (正職員, 会計年度任用職員, 嘱託 …) is read as staff"),
            "{err}"
        );
    }

    #[test]
    fn kind_parses_english_and_japanese_and_prints_snake_case() {
        assert_eq!("staff".parse::<ContactKind>().unwrap(), ContactKind::Staff);
        assert_eq!("職員".parse::<ContactKind>().unwrap(), ContactKind::Staff);
        assert_eq!(
            " Shelter_Phone ".parse::<ContactKind>().unwrap(),
            ContactKind::ShelterPhone
        );
        assert_eq!(
            "避難所".parse::<ContactKind>().unwrap(),
            ContactKind::ShelterPhone
        );
        assert!("visitor".parse::<ContactKind>().is_err());
        assert_eq!(ContactKind::ShelterPhone.as_str(), "shelter_phone");
        assert_eq!(
            serde_json::to_string(&ContactKind::ShelterPhone).unwrap(),
            "\"shelter_phone\""
        );
    }

    #[test]
    fn directory_round_trips_through_its_toml_form() {
        let dir = synthetic::generate(60, 7);
        let text = dir.to_toml().unwrap();
        let back = parse_toml(&text, "roundtrip.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, dir);
    }

    #[test]
    fn validate_refuses_a_directory_built_in_code_that_breaks_the_rules() {
        let mut dir = synthetic::generate(30, 1);
        dir.contacts[1].id = dir.contacts[0].id.clone();
        dir.contacts[2].phones.clear();
        dir.contacts[2].chat.clear();
        dir.contacts[3].call_priority = 0;
        let err = dir.validate("built").unwrap_err();
        let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["S00001.id", "S00003.phones", "S00004.call_priority"],
            "{err}"
        );
        assert!(
            err.to_string().contains("used by contacts #1 and #2"),
            "{err}"
        );
    }

    #[test]
    fn get_and_by_id_find_the_same_contact() {
        let dir = synthetic::generate(40, 3);
        let id = dir.contacts[17].id.clone();
        assert_eq!(dir.get(&id), Some(&dir.contacts[17]));
        assert_eq!(dir.by_id()[&id], &dir.contacts[17]);
        assert_eq!(dir.get(&StaffId::parse("nobody").unwrap()), None);
    }

    #[test]
    fn load_file_picks_the_format_by_extension_and_names_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("staff.CSV");
        std::fs::write(&csv, "id,name,phones\nS1,田中 一郎,090-1234-5678\n").unwrap();
        assert_eq!(load_file(&csv).unwrap().len(), 1);

        let toml = dir.path().join("contacts.toml");
        std::fs::write(
            &toml,
            "\u{feff}[[contact]]\nid = \"S1\"\nname = \"田中\"\nphones = [\"090-1234-5678\"]\n",
        )
        .unwrap();
        assert_eq!(load_file(&toml).unwrap().len(), 1);

        let xlsx = dir.path().join("staff.xlsx");
        std::fs::write(&xlsx, "x").unwrap();
        let err = load_file(&xlsx).unwrap_err();
        assert!(err.to_string().contains("not \"xlsx\""), "{err}");

        let missing = dir.path().join("missing.toml");
        assert!(matches!(
            load_file(&missing),
            Err(ContactsError::Read { .. })
        ));
    }

    #[test]
    fn a_toml_file_that_is_not_utf8_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("contacts.toml");
        let (sjis, _, _) = encoding_rs::SHIFT_JIS.encode("[[contact]]\nname = \"田中\"\n");
        std::fs::write(&path, &sjis).unwrap();
        let err = load_file(&path).unwrap_err();
        assert_eq!(err.problems()[0].line, Some(2), "{err}");
        assert_eq!(err.problems()[0].field, "encoding");
    }

    #[test]
    fn typed_ids_are_folded_and_stored_ids_read_back_as_stored() {
        let toml =
            "[[contact]]\nid = \"１００１\"\nname = \"田中\"\nphones = [\"090-1234-5678\"]\n\
                    [[contact]]\nid = \"1001\"\nname = \"田中\"\nphones = [\"090-1234-5679\"]\n";
        let err = toml_file::parse_toml(toml, "contacts.toml").unwrap_err();
        assert!(
            err.to_string()
                .contains("\"1001\" is used on line 2 and line 6"),
            "{err}"
        );

        // The HTTP import takes contacts as JSON: the CLI sends ids already folded, and a
        // stored contacts document is read back as it was stored, even from before ids were
        // folded, so two people stored as "1001" and "１００１" stay two people.
        let json = r#"[{"id":"ｓ０００１","name":"田中","phones":["+819012345678"]},
                       {"id":"1001","name":"田中","phones":["+819012345678"]},
                       {"id":"１００１","name":"佐藤","phones":["+819012345679"]},
                       {"id":"Ａ／１","name":"鈴木","phones":["+819012345670"]}]"#;
        let contacts: Vec<Contact> = serde_json::from_str(json).unwrap();
        let ids: Vec<&str> = contacts.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["ｓ０００１", "1001", "１００１", "Ａ／１"]);
        let dir = Directory { contacts };
        assert!(dir.get(&StaffId::parse("ｓ０００１").unwrap()).is_some());
        assert_eq!(dir.get(&StaffId::parse("s0001").unwrap()), None);
        assert_eq!(
            dir.get(&StaffId::parse("１００１").unwrap()).unwrap().name,
            "佐藤"
        );
    }
}
