//! CSV import, as municipal HR systems and Japanese Excel write it: UTF-8 with or without a
//! BOM, or Shift_JIS (CP932); English or Japanese headers.
//!
//! Invariant: every column is understood or the file is refused naming the column, and every
//! problem names the physical line of its record, so what the IT person sees in a text
//! editor matches the message.

use encoding_rs::SHIFT_JIS;

use super::entry::{self, At, Labels, RawEntry};
use super::{finish, ContactsError, Directory, Problem};

/// What a header means.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Column {
    Field(&'static str),
    /// `phone2`, `電話2`: more numbers, appended after `phones`.
    ExtraPhone,
    /// `chat.<provider>`
    Chat(String),
    /// Refused; kept so the cells line up while the other columns are still checked.
    Unknown,
}

/// Header text -> canonical field. Japanese names are what HR exports use.
fn column_for(header: &str) -> Option<Column> {
    let h: String = header
        .trim_matches(|c: char| c.is_whitespace())
        .to_lowercase();
    if let Some(provider) = h.strip_prefix("chat.") {
        return Some(Column::Chat(provider.to_string()));
    }
    let field = match h.as_str() {
        "id" | "職員番号" => "id",
        "name" | "氏名" | "名前" => "name",
        "kana" | "ふりがな" | "フリガナ" => "kana",
        "department" | "所属" => "department",
        "role" | "役職" => "role",
        "call_priority" | "優先度" | "連絡優先度" => "call_priority",
        "phones" | "phone" | "電話" | "電話番号" => "phones",
        "email" | "メール" | "メールアドレス" => "email",
        "kind" | "種別" => "kind",
        "shelter" | "避難所" => "shelter",
        _ => {
            let numbered = ["phone", "電話番号", "電話"].iter().any(|p| {
                h.strip_prefix(p).is_some_and(|n| {
                    !n.is_empty()
                        && n.chars()
                            .all(|c| c.is_ascii_digit() || ('０'..='９').contains(&c))
                })
            });
            return numbered.then_some(Column::ExtraPhone);
        }
    };
    Some(Column::Field(field))
}

/// Separators people put between several numbers in one cell.
const PHONE_SEPARATORS: [char; 7] = [';', '/', '、', '；', '／', ',', '，'];

const COLUMNS_HINT: &str = "use id, name, kana, department, role, call_priority, phones, \
                            phone2, email, kind, shelter, chat.<provider> (or 職員番号, 氏名, \
                            ふりがな, 所属, 役職, 優先度, 電話, 電話2, メール, 種別, 避難所)";

/// Decodes the bytes, reporting each line that is neither UTF-8 nor Shift_JIS.
fn decode(bytes: &[u8], problems: &mut Vec<Problem>) -> Option<String> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Some(text.to_string());
    }
    // Shift_JIS trail bytes are never 0x0A, so splitting on '\n' cannot cut a character.
    let mut out = String::with_capacity(bytes.len() * 3 / 2);
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        match SHIFT_JIS.decode_without_bom_handling_and_without_replacement(line) {
            Some(text) => {
                if i > 0 {
                    out.push('\n');
                }
                out.push_str(&text);
            }
            None => problems.push(Problem::at(
                i + 1,
                "encoding",
                "this line is neither UTF-8 nor Shift_JIS text; in Excel, save as \
                 \"CSV UTF-8 (comma delimited)\"",
            )),
        }
    }
    problems.is_empty().then_some(out)
}

/// Parses a CSV export. `origin` names the file in problems.
pub fn parse_csv(bytes: &[u8], origin: &str) -> Result<Directory, ContactsError> {
    let mut problems = Vec::new();
    let Some(text) = decode(bytes, &mut problems) else {
        return finish(origin, Vec::new(), problems);
    };
    if text.trim().is_empty() {
        problems.push(Problem::file(
            "header",
            format!("the file is empty; it needs a header row ({COLUMNS_HINT})"),
        ));
        return finish(origin, Vec::new(), problems);
    }

    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut records = reader.records();

    let mut header_line = 1;
    let mut columns = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut labels = Labels::new();
    for result in records.by_ref() {
        let record = match result {
            Ok(r) => r,
            Err(e) => {
                problems.push(csv_error(&e));
                return finish(origin, Vec::new(), problems);
            }
        };
        if record.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        header_line = record.position().map_or(1, |p| p.line() as usize);
        for cell in record.iter() {
            let name = cell.trim().to_string();
            let column = column_for(&name).unwrap_or_else(|| {
                problems.push(Problem::at(
                    header_line,
                    name.clone(),
                    format!("unknown column; {COLUMNS_HINT}"),
                ));
                Column::Unknown
            });
            match &column {
                Column::Field(f) => {
                    if let Some(before) = labels.insert(f, name.clone()) {
                        problems.push(Problem::at(
                            header_line,
                            name.clone(),
                            format!("this column and {before:?} both mean {f}; keep one"),
                        ));
                    }
                }
                Column::Chat(p) => {
                    if columns.contains(&column) {
                        problems.push(Problem::at(
                            header_line,
                            name.clone(),
                            format!("a second column for chat provider {p:?}; keep one"),
                        ));
                    }
                }
                Column::ExtraPhone | Column::Unknown => {}
            }
            columns.push(column);
            names.push(name);
        }
        break;
    }
    if columns.is_empty() {
        problems.push(Problem::file(
            "header",
            format!("the file has no header row ({COLUMNS_HINT})"),
        ));
        return finish(origin, Vec::new(), problems);
    }
    for required in ["id", "name"] {
        if !labels.contains_key(required) {
            problems.push(Problem::at(
                header_line,
                required,
                format!("the header has no {required} column; {COLUMNS_HINT}"),
            ));
        }
    }
    let reachable = columns.iter().any(|c| {
        matches!(
            c,
            Column::Chat(_) | Column::ExtraPhone | Column::Field("phones")
        )
    });
    if !reachable {
        problems.push(Problem::at(
            header_line,
            "phones",
            "the header has neither a phones column nor a chat.<provider> column, so no one \
             could be reached",
        ));
    }
    if !labels.contains_key("id") || !labels.contains_key("name") || !reachable {
        // Every row would repeat the same complaint; the header problem says it once.
        return finish(origin, Vec::new(), problems);
    }

    let mut entries = Vec::new();
    for result in records {
        let record = match result {
            Ok(r) => r,
            Err(e) => {
                problems.push(csv_error(&e));
                break;
            }
        };
        if record.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        let line = record.position().map_or(0, |p| p.line() as usize);
        let extra_filled = record
            .iter()
            .skip(columns.len())
            .any(|c| !c.trim().is_empty());
        if record.len() < columns.len() || extra_filled {
            problems.push(Problem::at(
                line,
                "row",
                format!(
                    "this row has {} cells but the header has {} columns; check for a stray \
                     comma or a missing quote",
                    record.len(),
                    columns.len()
                ),
            ));
            continue;
        }
        let mut e = RawEntry {
            line,
            ..RawEntry::default()
        };
        let mut extra_phones = Vec::new();
        for ((column, header), cell) in columns.iter().zip(&names).zip(record.iter()) {
            let cell = cell.trim();
            if cell.is_empty() {
                continue;
            }
            let at = At::new(cell, line, header.clone());
            let slot = match column {
                Column::Unknown => continue,
                Column::Chat(provider) => {
                    e.chat.push((provider.clone(), at));
                    continue;
                }
                Column::ExtraPhone | Column::Field("phones") => {
                    let target = if *column == Column::ExtraPhone {
                        &mut extra_phones
                    } else {
                        &mut e.phones
                    };
                    target.extend(
                        cell.split(PHONE_SEPARATORS)
                            .map(str::trim)
                            .filter(|p| !p.is_empty())
                            .map(|p| At::new(p, line, header.clone())),
                    );
                    continue;
                }
                Column::Field("id") => &mut e.id,
                Column::Field("name") => &mut e.name,
                Column::Field("kana") => &mut e.kana,
                Column::Field("department") => &mut e.department,
                Column::Field("role") => &mut e.role,
                Column::Field("call_priority") => &mut e.call_priority,
                Column::Field("email") => &mut e.email,
                Column::Field("kind") => &mut e.kind,
                Column::Field(_) => &mut e.shelter,
            };
            *slot = Some(at);
        }
        e.phones.append(&mut extra_phones);
        entries.push(e);
    }
    let contacts = entry::build(entries, &labels, &mut problems);
    finish(origin, contacts, problems)
}

fn csv_error(e: &csv::Error) -> Problem {
    let line = e.position().map_or(1, |p| p.line() as usize);
    Problem::at(line, "row", format!("cannot read this row: {e}"))
}

#[cfg(test)]
mod tests {
    use super::super::{ContactKind, PhoneNumber};
    use super::*;

    fn problems(bytes: &[u8]) -> Vec<(Option<usize>, String, String)> {
        match parse_csv(bytes, "contacts.csv") {
            Ok(d) => panic!("expected an error, got {} contacts", d.len()),
            Err(e) => e
                .problems()
                .iter()
                .map(|p| (p.line, p.field.clone(), p.message.clone()))
                .collect(),
        }
    }

    const ENGLISH: &str = "id,name,kana,department,role,call_priority,phones,email,kind,shelter,chat.lineworks,chat.simulator\n\
        S0001, 田中 一郎 ,たなか いちろう,防災対策室,室長,1,090-1234-5678; 0256-34-5525,tanaka@city.example.jp,staff,三条小学校,tanaka@sanjo-city,sim-S0001\n\
        S0002,佐藤 花子,,総務課,,,,,,,,sim-S0002\n\
        P0001,三条小学校避難所,,,,,070-0000-0001,,shelter_phone,三条小学校,,\n";

    #[test]
    fn utf8_with_english_headers_reads_every_column() {
        let dir = parse_csv(ENGLISH.as_bytes(), "contacts.csv").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dir.len(), 3);
        let c = &dir.contacts[0];
        assert_eq!(c.name, "田中 一郎", "cells are trimmed");
        assert_eq!(c.call_priority, 1);
        assert_eq!(
            c.phones,
            [
                PhoneNumber::parse("090-1234-5678").unwrap(),
                PhoneNumber::parse("0256-34-5525").unwrap()
            ]
        );
        assert_eq!(
            c.chat_handle("lineworks").unwrap().as_str(),
            "tanaka@sanjo-city"
        );
        assert_eq!(c.shelter.as_deref(), Some("三条小学校"));
        let s = &dir.contacts[1];
        assert_eq!(
            (s.kana.as_ref(), s.role.as_ref(), s.email.as_ref()),
            (None, None, None)
        );
        assert_eq!(s.call_priority, 5, "an empty cell is absent");
        assert!(s.phones.is_empty());
        assert_eq!(dir.contacts[2].kind, ContactKind::ShelterPhone);
    }

    #[test]
    fn utf8_with_bom_reads_the_same() {
        let mut bytes = b"\xEF\xBB\xBF".to_vec();
        bytes.extend_from_slice(ENGLISH.as_bytes());
        let with_bom = parse_csv(&bytes, "contacts.csv").unwrap_or_else(|e| panic!("{e}"));
        let without = parse_csv(ENGLISH.as_bytes(), "contacts.csv").unwrap();
        assert_eq!(with_bom, without);
    }

    const JAPANESE: &str = "職員番号,氏名,フリガナ,所属,役職,優先度,電話番号,電話2,メールアドレス,種別,避難所,chat.LineWorks\r\n\
        S0001,田中 一郎,タナカ イチロウ,防災対策室,室長,１,０９０－１２３４－５６７８,0256-34-5525,tanaka@city.example.jp,職員,,tanaka@sanjo-city\r\n\
        P0001,三条小学校避難所,,,,,070-0000-0001／070-0000-0002,,,避難所,三条小学校,\r\n";

    #[test]
    fn shift_jis_from_excel_with_japanese_headers() {
        let (bytes, _, unmappable) = encoding_rs::SHIFT_JIS.encode(JAPANESE);
        assert!(!unmappable);
        assert!(
            std::str::from_utf8(&bytes).is_err(),
            "the sample really is Shift_JIS"
        );
        let dir = parse_csv(&bytes, "職員.csv").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dir.len(), 2);
        let c = &dir.contacts[0];
        assert_eq!(c.name, "田中 一郎");
        assert_eq!(c.kana.as_deref(), Some("タナカ イチロウ"));
        assert_eq!(c.department.as_deref(), Some("防災対策室"));
        assert_eq!(c.call_priority, 1, "full-width digits count");
        assert_eq!(c.phones.len(), 2, "電話2 is appended");
        assert_eq!(c.phones[1].national(), "0256-34-5525");
        assert_eq!(
            c.chat_handle("lineworks").unwrap().as_str(),
            "tanaka@sanjo-city"
        );
        let p = &dir.contacts[1];
        assert_eq!(p.kind, ContactKind::ShelterPhone);
        assert_eq!(p.phones.len(), 2, "／ separates numbers in one cell");
    }

    #[test]
    fn japanese_headers_in_utf8_read_the_same_as_shift_jis() {
        let (bytes, _, _) = encoding_rs::SHIFT_JIS.encode(JAPANESE);
        assert_eq!(
            parse_csv(JAPANESE.as_bytes(), "a.csv").unwrap(),
            parse_csv(&bytes, "a.csv").unwrap()
        );
    }

    #[test]
    fn undecodable_lines_are_named() {
        let (mut bytes, _, _) = encoding_rs::SHIFT_JIS.encode(JAPANESE);
        let mut bad = bytes.to_vec();
        bad.extend_from_slice(b"S9,\x82\xff\x82,090-1234-5678\r\n");
        bytes = bad.into();
        let p = problems(&bytes);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p[0].0, p[0].1.as_str()), (Some(4), "encoding"));
        assert!(p[0].2.contains("neither UTF-8 nor Shift_JIS"));
    }

    #[test]
    fn unknown_and_duplicate_columns_are_named() {
        let p = problems(
            "id,name,phones,住所,電話番号,chat.matrix,Chat.Matrix\nS1,a,090-1234-5678,x,,,\n"
                .as_bytes(),
        );
        let got: Vec<_> = p.iter().map(|p| (p.0, p.1.as_str())).collect();
        assert_eq!(
            got,
            [
                (Some(1), "住所"),
                (Some(1), "電話番号"),
                (Some(1), "Chat.Matrix")
            ]
        );
        assert!(p[0].2.starts_with("unknown column; use id, name"), "{p:?}");
        assert_eq!(
            p[1].2,
            "this column and \"phones\" both mean phones; keep one"
        );
    }

    #[test]
    fn missing_required_columns_are_reported_once_not_per_row() {
        let p = problems("name,email\na,a@city.example.jp\nb,b@city.example.jp\n".as_bytes());
        let got: Vec<_> = p.iter().map(|p| (p.0, p.1.as_str())).collect();
        assert_eq!(got, [(Some(1), "id"), (Some(1), "phones")]);
        assert_eq!(
            p[0].2,
            format!("the header has no id column; {COLUMNS_HINT}")
        );
    }

    #[test]
    fn a_row_with_the_wrong_number_of_cells_is_refused() {
        let p = problems("id,name,phones\nS1,a,090-1234-5678\nS2,b\nS3,c,090-1234-5679,extra\nS4,d,090-1234-5670,,\n".as_bytes());
        let got: Vec<_> = p.iter().map(|p| (p.0, p.1.as_str())).collect();
        assert_eq!(got, [(Some(3), "row"), (Some(4), "row")]);
        assert!(p[0]
            .2
            .starts_with("this row has 2 cells but the header has 3 columns"));
    }

    #[test]
    fn quoted_cells_keep_their_line_numbers_right() {
        let text = "id,name,phones\nS1,\"田中\n一郎\",090-1234-5678\nS2,b,090-12-34\n";
        let p = problems(text.as_bytes());
        assert_eq!((p[0].0, p[0].1.as_str()), (Some(4), "phones"), "{p:?}");
    }

    #[test]
    fn blank_rows_are_skipped_but_an_empty_file_is_an_error() {
        let dir = parse_csv(b"id,name,phones\n\nS1,a,090-1234-5678\n,,\n", "c.csv").unwrap();
        assert_eq!(dir.len(), 1);
        let p = problems(b"\xEF\xBB\xBF \r\n");
        assert_eq!((p[0].0, p[0].1.as_str()), (None, "header"));
        assert!(p[0].2.starts_with("the file is empty"));
        let p = problems(b"id,name,phones\n");
        assert_eq!((p[0].0, p[0].1.as_str()), (None, "contact"));
        assert!(p[0].2.starts_with("there are no contacts"));
    }

    #[test]
    fn errors_use_the_japanese_header_the_file_used() {
        let p = problems("職員番号,氏名,電話\nS1,,090-12-34\n".as_bytes());
        let got: Vec<_> = p.iter().map(|p| (p.0, p.1.as_str())).collect();
        assert_eq!(got, [(Some(2), "電話"), (Some(2), "氏名")]);
        assert_eq!(
            p[0].2,
            "\"090-12-34\" is not a Japanese phone number (it has 7 digits but a number \
             starting 090 has 11; expected e.g. 090-1234-5678 or 0256-34-5525)"
        );
    }
}
