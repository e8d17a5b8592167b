//! CSV import, as municipal HR systems and Japanese Excel write it: UTF-8 with or without a
//! BOM, or Shift_JIS (CP932); CRLF, LF or CR line endings; English or Japanese headers,
//! including the ones HR exports really use (携帯電話, 社員番号, 部署, LINE WORKS ID, 姓 / 名 …),
//! with or without a title line above them.
//!
//! Invariants: one encoding is chosen for the whole file, and when the bytes could be either
//! and neither reading is clearly names the file is refused rather than guessed (see
//! [`valid_utf8_or_shift_jis`]); every column is understood, deliberately ignored (a short
//! documented list such as 内線 or 住所 that anpi has no use for, or a blank header over an
//! empty column), or the file is refused naming the column and, when it is clearly a slip
//! of one, the header anpi knows (never one of another meaning); every problem names the physical line of its record by the one rule in
//! [`super::lines`], counting any title line; a problem a refused column may have caused (a
//! row whose number sits in an unknown column, or under a blank header) is not reported
//! until that column is fixed.

use std::collections::BTreeMap;

use encoding_rs::SHIFT_JIS;
use unicode_normalization::UnicodeNormalization;

use super::entry::{self, At, Labels, RawEntry};
use super::lines::LineIndex;
use super::{finish, ContactsError, Directory, PhoneNumber, Problem};

/// Which of a person's numbers a phone column holds. The groups are called in this order,
/// each in the file's column order: mobiles (the number most likely to be answered in a
/// disaster), then the person's other numbers (a home phone may be answered), then
/// emergency contacts (緊急連絡先, most often a relative's), wherever their columns sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PhoneGroup {
    Mobile,
    Own,
    Emergency,
}

/// What a header means.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Column {
    /// A canonical single-value field (`id`, `name`, `kana`, `department`, ...).
    Field(&'static str),
    /// A phone number column. Every phone column is read, called by [`PhoneGroup`].
    Phone { group: PhoneGroup },
    /// Family (姓) or given (名) part of `name` or `kana`, joined with a space.
    Part { field: &'static str, given: bool },
    /// `chat.<provider>`, or a header naming a provider's id (`LINE WORKS ID`).
    Chat(String),
    /// Known, and deliberately not used (内線, 住所, 生年月日 ...): skipped, and listed by
    /// `anpi contacts check` so nobody wonders where it went.
    Ignored,
    /// Refused; kept so the cells line up while the other columns are still checked.
    Unknown,
    /// No header text. Skipped while every row leaves it empty too; a value in it is
    /// refused naming the column's number, since anpi cannot tell what the value is.
    Blank,
}

/// A header's meaning in the alias table (a `Copy` form of [`Column`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meaning {
    Field(&'static str),
    Phone {
        group: PhoneGroup,
    },
    Family(&'static str),
    Given(&'static str),
    Chat(&'static str),
    Ignored,
    /// Refused, with what to do instead: the header is common but could mean two things.
    Unclear(&'static str),
}

/// What to do with a 係 column: it names the subsection, which is part of the department,
/// but HR exports usually have it beside 課 or 所属, and anpi keeps one department.
const KAKARI_HINT: &str = "係 is read as neither department nor role: if it is the only \
                           column naming where the person works, rename it 所属; if the file \
                           also has 課 or 所属, delete this column, or join the two into one \
                           所属 column (総務課 庶務係)";

/// Every header anpi reads, as people write it. Matching ignores case, full/half width,
/// spaces, `_`, `-`, `・`, `.` and brackets, so `氏名（カナ）`, `E-mail` and `ＩＤ` all match;
/// a phone or e-mail header may also carry a word saying whose it is (see [`QUALIFIERS`]).
/// Phone columns come in three [`PhoneGroup`]s: mobiles (any header naming 携帯, スマホ,
/// mobile or cell, as 公用携帯, 個人携帯, 携帯電話（私用）, 電話番号（携帯）), the person's other
/// numbers (電話番号, 自宅電話, 自宅TEL, TEL（自宅）…), and emergency contacts (緊急連絡先,
/// 緊急連絡先電話, 緊急連絡先（携帯）…).
const ALIASES: &[(&str, Meaning)] = {
    use Meaning::*;
    use PhoneGroup::*;
    &[
        // id
        ("id", Field("id")),
        ("staff_id", Field("id")),
        ("employee_id", Field("id")),
        ("職員番号", Field("id")),
        ("職員No", Field("id")),
        ("職員コード", Field("id")),
        ("職員ID", Field("id")),
        ("社員番号", Field("id")),
        ("社員No", Field("id")),
        ("社員コード", Field("id")),
        ("社員ID", Field("id")),
        ("従業員番号", Field("id")),
        ("従業員コード", Field("id")),
        ("個人コード", Field("id")),
        // name
        ("name", Field("name")),
        ("full_name", Field("name")),
        ("氏名", Field("name")),
        ("姓名", Field("name")),
        ("名前", Field("name")),
        ("職員名", Field("name")),
        ("社員名", Field("name")),
        ("漢字氏名", Field("name")),
        ("氏名（漢字）", Field("name")),
        ("姓", Family("name")),
        ("苗字", Family("name")),
        ("名字", Family("name")),
        ("family_name", Family("name")),
        ("last_name", Family("name")),
        ("名", Given("name")),
        ("given_name", Given("name")),
        ("first_name", Given("name")),
        // kana
        ("kana", Field("kana")),
        ("furigana", Field("kana")),
        ("ふりがな", Field("kana")),
        ("フリガナ", Field("kana")),
        ("かな", Field("kana")),
        ("カナ", Field("kana")),
        ("よみがな", Field("kana")),
        ("ヨミガナ", Field("kana")),
        ("読み", Field("kana")),
        ("読み仮名", Field("kana")),
        ("カナ氏名", Field("kana")),
        ("氏名カナ", Field("kana")),
        ("氏名（カナ）", Field("kana")),
        ("氏名（フリガナ）", Field("kana")),
        ("氏名（ふりがな）", Field("kana")),
        ("フリガナ（氏名）", Field("kana")),
        ("セイ", Family("kana")),
        ("姓（カナ）", Family("kana")),
        ("姓（フリガナ）", Family("kana")),
        ("姓（ヨミガナ）", Family("kana")),
        ("メイ", Given("kana")),
        ("名（カナ）", Given("kana")),
        ("名（フリガナ）", Given("kana")),
        ("名（ヨミガナ）", Given("kana")),
        // department
        ("department", Field("department")),
        ("dept", Field("department")),
        ("division", Field("department")),
        ("section", Field("department")),
        ("所属", Field("department")),
        ("所属名", Field("department")),
        ("所属名称", Field("department")),
        ("所属課名", Field("department")),
        ("所属課", Field("department")),
        ("所属部署", Field("department")),
        ("部署", Field("department")),
        ("部署名", Field("department")),
        ("部課", Field("department")),
        ("部門", Field("department")),
        ("部局", Field("department")),
        ("課", Field("department")),
        ("課名", Field("department")),
        // one column naming both, 総務課 庶務係
        ("課・係", Field("department")),
        ("係", Unclear(KAKARI_HINT)),
        ("係名", Unclear(KAKARI_HINT)),
        // role
        ("role", Field("role")),
        ("title", Field("role")),
        ("position", Field("role")),
        ("job_title", Field("role")),
        ("役職", Field("role")),
        ("役職名", Field("role")),
        ("職名", Field("role")),
        ("職位", Field("role")),
        // call priority
        ("call_priority", Field("call_priority")),
        ("priority", Field("call_priority")),
        ("優先度", Field("call_priority")),
        ("連絡優先度", Field("call_priority")),
        ("優先順位", Field("call_priority")),
        // phones: mobiles first
        ("mobile", Phone { group: Mobile }),
        ("mobile_phone", Phone { group: Mobile }),
        ("cell", Phone { group: Mobile }),
        ("cellphone", Phone { group: Mobile }),
        ("携帯", Phone { group: Mobile }),
        ("携帯電話", Phone { group: Mobile }),
        ("携帯電話番号", Phone { group: Mobile }),
        ("携帯番号", Phone { group: Mobile }),
        ("携帯TEL", Phone { group: Mobile }),
        ("スマートフォン", Phone { group: Mobile }),
        ("スマホ", Phone { group: Mobile }),
        ("phones", Phone { group: Own }),
        ("phone", Phone { group: Own }),
        ("tel", Phone { group: Own }),
        ("telephone", Phone { group: Own }),
        ("電話", Phone { group: Own }),
        ("電話番号", Phone { group: Own }),
        ("TEL番号", Phone { group: Own }),
        ("連絡先", Phone { group: Own }),
        ("連絡先電話番号", Phone { group: Own }),
        ("緊急連絡先", Phone { group: Emergency }),
        ("自宅電話", Phone { group: Own }),
        ("自宅電話番号", Phone { group: Own }),
        ("固定電話", Phone { group: Own }),
        // e-mail
        ("email", Field("email")),
        ("mail", Field("email")),
        ("email_address", Field("email")),
        ("mail_address", Field("email")),
        ("メール", Field("email")),
        ("メールアドレス", Field("email")),
        ("Eメール", Field("email")),
        ("Eメールアドレス", Field("email")),
        ("電子メール", Field("email")),
        ("メアド", Field("email")),
        // kind, shelter
        ("kind", Field("kind")),
        ("type", Field("kind")),
        ("種別", Field("kind")),
        ("種類", Field("kind")),
        ("shelter", Field("shelter")),
        ("避難所", Field("shelter")),
        ("避難所名", Field("shelter")),
        ("担当避難所", Field("shelter")),
        ("配置避難所", Field("shelter")),
        // chat ids named the way admins write them
        ("LINE WORKS ID", Chat("lineworks")),
        ("LINE WORKS", Chat("lineworks")),
        ("LINE WORKS アカウント", Chat("lineworks")),
        ("LINE WORKS ユーザーID", Chat("lineworks")),
        ("ラインワークス", Chat("lineworks")),
        ("ラインワークスID", Chat("lineworks")),
        ("ラインワークスアカウント", Chat("lineworks")),
        ("Matrix ID", Chat("matrix")),
        ("Matrix", Chat("matrix")),
        // columns anpi has no use for: skipped, and named by `anpi contacts check`
        ("内線", Ignored),
        ("内線番号", Ignored),
        ("FAX", Ignored),
        ("FAX番号", Ignored),
        // A PHS column is the office's in-building PHS (an extension): public PHS service
        // in Japan ended in 2023, so it holds no number HQ could call from outside.
        ("PHS", Ignored),
        ("PHS番号", Ignored),
        ("構内PHS", Ignored),
        ("住所", Ignored),
        ("address", Ignored),
        ("郵便番号", Ignored),
        ("生年月日", Ignored),
        ("birthday", Ignored),
        ("性別", Ignored),
        ("gender", Ignored),
        ("年齢", Ignored),
        ("入社日", Ignored),
        ("入庁日", Ignored),
        ("採用日", Ignored),
        ("雇用形態", Ignored),
        ("雇用区分", Ignored),
        ("所属コード", Ignored),
        ("部署コード", Ignored),
        ("備考", Ignored),
        ("note", Ignored),
        ("notes", Ignored),
    ]
};

/// The form headers are compared in: NFKC (full width to half width, half-width katakana
/// to full width, `（` to `(`), lower case, without spaces, `_`, `-`, `・`, `.` or brackets.
fn normalise(header: &str) -> String {
    header
        .nfkc()
        .flat_map(char::to_lowercase)
        .filter(|c| {
            !c.is_whitespace()
                && !matches!(
                    c,
                    '_' | '-' | '・' | '.' | '(' | ')' | '[' | ']' | '【' | '】' | '\u{feff}'
                )
        })
        .collect()
}

fn meaning_of(key: &str) -> Option<Meaning> {
    ALIASES
        .iter()
        .find(|(alias, _)| normalise(alias) == key)
        .map(|(_, m)| *m)
}

/// A word saying whose phone or address a column holds, written before the header anpi
/// knows (公用携帯, 自宅TEL) or after it in brackets (携帯電話（私用）, TEL（自宅）).
struct Qualifier {
    word: &'static str,
    /// For a phone header: `None` if the word does not apply, else the rank it gives.
    phone: Option<Rank>,
    email: bool,
}

/// Which [`PhoneGroup`] a qualified phone header is in.
#[derive(Clone, Copy)]
enum Rank {
    /// The header's own rank (自宅TEL is another number, 個人携帯 a mobile).
    Same,
    /// A mobile, whatever the header (電話番号（携帯）).
    Mobile,
    /// After the person's own numbers, mobile or not: 緊急連絡先 is most often a relative's.
    Emergency,
}

/// The qualifiers apply only to phone and e-mail headers, so 緊急連絡先氏名 (the relative's
/// name) never reads as the person's name; 庁内電話 is an extension, so 庁内 is for e-mail
/// only.
const QUALIFIERS: &[Qualifier] = {
    use Rank::*;
    const fn q(word: &'static str, phone: Option<Rank>, email: bool) -> Qualifier {
        Qualifier { word, phone, email }
    }
    &[
        q("緊急連絡先", Some(Emergency), false),
        q("携帯", Some(Mobile), true),
        q("公用", Some(Same), true),
        q("私用", Some(Same), true),
        q("個人", Some(Same), true),
        q("自宅", Some(Same), true),
        q("庁内", None, true),
    ]
};

/// A phone or e-mail header with one word from [`QUALIFIERS`] before or after it.
fn qualified_meaning(key: &str) -> Option<Meaning> {
    QUALIFIERS.iter().find_map(|q| {
        let word = normalise(q.word);
        let rest = key
            .strip_prefix(&word)
            .or_else(|| key.strip_suffix(&word))
            .filter(|rest| !rest.is_empty())?;
        match (meaning_of(rest)?, q.phone) {
            (Meaning::Phone { group }, Some(rank)) => Some(Meaning::Phone {
                group: match rank {
                    Rank::Same => group,
                    Rank::Mobile => PhoneGroup::Mobile,
                    Rank::Emergency => PhoneGroup::Emergency,
                },
            }),
            (m @ Meaning::Field("email"), _) if q.email => Some(m),
            _ => None,
        }
    })
}

/// A header's meaning by the alias table, any whose-phone word and any trailing number.
fn lookup(key: &str) -> Option<Meaning> {
    meaning_of(key)
        .or_else(|| qualified_meaning(key))
        .or_else(|| {
            // 電話2, phone2, 携帯電話２, 携帯電話（私用）2: more numbers of the same kind.
            let base = key.trim_end_matches(|c: char| c.is_ascii_digit());
            (base.len() < key.len())
                .then(|| meaning_of(base).or_else(|| qualified_meaning(base)))
                .flatten()
                .filter(|m| matches!(m, Meaning::Phone { .. }))
        })
}

/// Header text -> meaning. `None` for a column anpi does not read (unknown, or
/// [`Meaning::Unclear`]).
fn column_for(header: &str) -> Option<Column> {
    let trimmed = header.trim();
    let lower = trimmed.to_lowercase();
    if let Some(provider) = lower.strip_prefix("chat.") {
        return Some(Column::Chat(provider.to_string()));
    }
    Some(match lookup(&normalise(trimmed))? {
        Meaning::Field(f) => Column::Field(f),
        Meaning::Phone { group } => Column::Phone { group },
        Meaning::Family(f) => Column::Part {
            field: f,
            given: false,
        },
        Meaning::Given(f) => Column::Part {
            field: f,
            given: true,
        },
        Meaning::Chat(p) => Column::Chat(p.to_string()),
        Meaning::Ignored => Column::Ignored,
        Meaning::Unclear(_) => return None,
    })
}

/// What to do instead, for a header refused as [`Meaning::Unclear`].
fn unclear_hint(header: &str) -> Option<&'static str> {
    match meaning_of(&normalise(header))? {
        Meaning::Unclear(hint) => Some(hint),
        _ => None,
    }
}

/// The known header an unknown one is a slip of, when that is clear, so the suggestion
/// never names a column of another meaning. Japanese headers are compared with Japanese
/// aliases, and suggested only when a character is missing from a header of three or
/// more (電話番 for 電話番号): one
/// character changed or added is usually another word (自宅TEL is not 携帯TEL, 局名 is not
/// 氏名, 旧姓 is not 姓). Others are compared with the English aliases, allowing one letter
/// missing, added or swapped with the next (emial), or changed in a word of five letters or
/// more. A slip that fits headers of different meanings gets no suggestion.
fn closest_header(header: &str) -> Option<&'static str> {
    let key: Vec<char> = normalise(header).chars().collect();
    let japanese = !key.iter().all(char::is_ascii);
    // Two kanji short of a third is as often another word as a slip (職員 could be
    // 職員名 or 職員番号).
    if key.len() < if japanese { 3 } else { 2 } {
        return None;
    }
    let candidates = ALIASES
        .iter()
        .filter(|(_, m)| !matches!(m, Meaning::Ignored | Meaning::Unclear(_)))
        .map(|(alias, _)| *alias)
        .chain(["電話2", "phone2", "chat.lineworks", "chat.matrix"])
        .filter(|alias| normalise(alias).is_ascii() != japanese);
    let mut found: Option<(&'static str, Option<Column>)> = None;
    for alias in candidates {
        let known: Vec<char> = normalise(alias).chars().collect();
        let slip = if japanese {
            one_missing(&key, &known)
        } else {
            one_missing(&key, &known)
                || one_missing(&known, &key)
                || swapped(&key, &known)
                || (key.len() >= 5 && one_changed(&key, &known))
        };
        if !slip {
            continue;
        }
        let meaning = column_for(alias);
        match &found {
            None => found = Some((alias, meaning)),
            Some((_, m)) if *m != meaning => return None,
            Some(_) => {}
        }
    }
    found.map(|(alias, _)| alias)
}

/// `short` is `long` with one character left out.
fn one_missing(short: &[char], long: &[char]) -> bool {
    long.len() == short.len() + 1
        && (0..long.len()).any(|i| long[..i] == short[..i] && long[i + 1..] == short[i..])
}

/// Equal but for two neighbouring characters in the other order.
fn swapped(a: &[char], b: &[char]) -> bool {
    let differ: Vec<usize> = (0..a.len()).filter(|&i| b.get(i) != Some(&a[i])).collect();
    a.len() == b.len()
        && differ.len() == 2
        && differ[1] == differ[0] + 1
        && a[differ[0]] == b[differ[1]]
        && a[differ[1]] == b[differ[0]]
}

/// Equal but for one character.
fn one_changed(a: &[char], b: &[char]) -> bool {
    a.len() == b.len() && a.iter().zip(b).filter(|(x, y)| x != y).count() == 1
}

/// A cell's value without the "keep as text" wrapping Excel users and HR systems put on
/// numbers so Excel keeps their leading zeros: the formula `="0012"` (written in the file
/// as `"=""0012"""`, which the csv reader has already unquoted) and a leading apostrophe
/// `'0012`. Only these exact forms are unwrapped, whatever the column: an id `="0012"` is
/// the id 0012, as Excel shows it. The apostrophe is taken off only before a digit or `+`,
/// what it is there to protect, so a name or chat id that starts with one (`'Neill`) keeps
/// it. Anything else that starts with `=` is left as written, since it is not a value anpi
/// can read.
fn excel_text(cell: &str) -> &str {
    if let Some(inner) = cell
        .strip_prefix("=\"")
        .and_then(|rest| rest.strip_suffix('"'))
        .filter(|inner| !inner.contains('"'))
    {
        return inner.trim();
    }
    match cell.strip_prefix('\'') {
        Some(rest)
            if rest.starts_with(|c: char| {
                c.is_ascii_digit() || ('０'..='９').contains(&c) || matches!(c, '+' | '＋')
            }) =>
        {
            rest.trim()
        }
        _ => cell,
    }
}

/// Separators people put between several numbers in one cell.
const PHONE_SEPARATORS: [char; 7] = [';', '/', '、', '；', '／', ',', '，'];

const COLUMNS_HINT: &str = "use id, name, kana, department, role, call_priority, phones, \
                            phone2, email, kind, shelter, chat.<provider> (or 職員番号, 氏名, \
                            フリガナ, 所属, 役職, 優先度, 携帯電話, 電話番号, メールアドレス, \
                            種別, 避難所, LINE WORKS ID); contacts.example.toml lists every \
                            header anpi reads";

/// How far down a header may sit below a title row (職員緊急連絡網) and still be found.
const TITLE_LOOKAHEAD: usize = 10;

const TABS_MESSAGE: &str = "the columns are separated by tabs, not commas (a tab-separated text \
                            file named .csv); in Excel, save it as \"CSV UTF-8 (コンマ区切り)\"";

/// A title people put above the header (職員緊急連絡網, sometimes padded with commas): one
/// filled cell at most, and not a header anpi knows.
fn looks_like_title(record: &csv::StringRecord) -> bool {
    let mut filled = record.iter().map(str::trim).filter(|c| !c.is_empty());
    match (filled.next(), filled.next()) {
        (None, _) => true,
        (Some(cell), None) => column_for(cell).is_none(),
        _ => false,
    }
}

/// A row that reads as a header: two filled cells or more, at least half of them headers
/// anpi knows (the rest are reported as unknown columns in the usual way).
fn looks_like_header(record: &csv::StringRecord) -> bool {
    let filled: Vec<&str> = record
        .iter()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    let known = filled.iter().filter(|c| column_for(c).is_some()).count();
    filled.len() >= 2 && 2 * known >= filled.len()
}

/// What a phone cell looks like after Excel treated it as a number.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ExcelDamage {
    /// `9012345678`: the leading 0 went; the number it probably was.
    LostZero(PhoneNumber),
    /// `9.01235E+09`: shown in scientific notation; the last digits are gone.
    Scientific,
}

fn excel_damage(cell: &str) -> Option<ExcelDamage> {
    let folded: String = cell
        .trim()
        .chars()
        .map(|c| match c {
            '０'..='９' => char::from_u32(c as u32 - '０' as u32 + '0' as u32).unwrap_or(c),
            '．' => '.',
            '＋' => '+',
            'Ｅ' | 'ｅ' => 'E',
            _ => c,
        })
        .collect();
    if folded.len() >= 8 && folded.chars().all(|c| c.is_ascii_digit()) && !folded.starts_with('0') {
        return PhoneNumber::parse(&format!("0{folded}"))
            .ok()
            .map(ExcelDamage::LostZero);
    }
    let upper = folded.to_ascii_uppercase();
    let (mantissa, exponent) = upper.split_once('E')?;
    let exponent = exponent.strip_prefix('+').unwrap_or(exponent);
    let mantissa_ok = mantissa
        .split_once('.')
        .map_or(mantissa.len() == 1, |(a, b)| a.len() == 1 && !b.is_empty())
        && mantissa.chars().all(|c| c.is_ascii_digit() || c == '.');
    let exponent_ok = !exponent.is_empty() && exponent.chars().all(|c| c.is_ascii_digit());
    (mantissa_ok && exponent_ok).then_some(ExcelDamage::Scientific)
}

const EXCEL_NOTE: &str = "Excel turned these phone numbers into numbers: it drops the leading \
                          0 (090-1234-5678 becomes 9012345678) and shows long ones as \
                          9.01235E+09, losing the last digits. To keep them: in Excel select \
                          the phone columns, format the cells as Text (セルの書式設定 → 文字列), \
                          type the numbers again (or write them with hyphens), and save as \
                          \"CSV UTF-8 (コンマ区切り)\"; when opening a CSV, import it with \
                          Data → From Text/CSV (データ → テキストまたは CSV から) and set those \
                          columns to Text";

/// What Excel's "Unicode テキスト" writes (UTF-16 with a BOM, tab-separated).
const UTF16_MESSAGE: &str = "this file is UTF-16 (Excel's Unicode text); in Excel, save it as \
                             \"CSV UTF-8 (コンマ区切り)\" or \"CSV (コンマ区切り)\" (Shift_JIS)";

/// The file's text, decoded by one encoding chosen for the whole file.
fn decode(bytes: &[u8]) -> Result<String, Problem> {
    if bytes.starts_with(b"\xFF\xFE") || bytes.starts_with(b"\xFE\xFF") {
        return Err(Problem::file("encoding", UTF16_MESSAGE));
    }
    let bom = bytes.starts_with(b"\xEF\xBB\xBF");
    let body = if bom { &bytes[3..] } else { bytes };
    let body_start = bytes.len() - body.len();
    if let Ok(text) = std::str::from_utf8(body) {
        return if bom {
            Ok(text.to_string())
        } else {
            valid_utf8_or_shift_jis(text)
        };
    }
    // Which encoding is the file meant to be in? Text whose kana and kanji (3-byte UTF-8) are
    // mostly valid with a few bad bytes is UTF-8 that was damaged (and would decode as
    // Shift_JIS mojibake). Shift_JIS text is almost never valid UTF-8 beyond a stray
    // character, and the strays are 2-byte sequences (half-width katakana pairs such as ｻﾄ),
    // so only 3-byte characters count as evidence.
    let mut wide_chars = 0usize;
    let mut other_chars = 0usize;
    let mut utf8_bad = Vec::new();
    let mut at = 0;
    for chunk in body.utf8_chunks() {
        for c in chunk.valid().chars().filter(|c| !c.is_ascii()) {
            if c.len_utf8() >= 3 {
                wide_chars += 1;
            } else {
                other_chars += 1;
            }
        }
        at += chunk.valid().len();
        if !chunk.invalid().is_empty() {
            utf8_bad.push(at);
            at += chunk.invalid().len();
        }
    }
    let meant_utf8 = bom || (wide_chars > 0 && wide_chars >= utf8_bad.len());
    if !meant_utf8 {
        if let Some(text) = SHIFT_JIS.decode_without_bom_handling_and_without_replacement(body) {
            return Ok(text.into_owned());
        }
    }
    // Neither encoding reads the whole file: say which one it looks damaged in.
    let looks_utf8 = meant_utf8 || wide_chars + other_chars >= utf8_bad.len().max(1);
    let lines = LineIndex::new(bytes);
    let (first, count, message) = if looks_utf8 {
        (
            utf8_bad[0],
            utf8_bad.len(),
            "the file is UTF-8 but this line has bytes that are not: a character was cut or \
             saved in another encoding; retype the text around it",
        )
    } else {
        let bad = shift_jis_errors(body);
        (
            bad.first().copied().unwrap_or(0),
            bad.len().max(1),
            "this is neither UTF-8 nor Shift_JIS text; in Excel, save the file as \"CSV UTF-8 \
             (コンマ区切り)\"",
        )
    };
    let offset = body_start + first;
    let more = match count {
        1 => String::new(),
        n => format!(" ({} more bad places after this one)", n - 1),
    };
    Err(Problem::at(
        lines.line_of(offset),
        "encoding",
        format!("byte offset {offset}: {message}{more}"),
    ))
}

/// Reads a file that is valid UTF-8 and has no BOM. A Japanese staff list in UTF-8 has kana
/// and kanji, 3-byte characters; 2-byte ones (accented Latin, Greek, Cyrillic, Armenian ...)
/// are rare. Shift_JIS half-width katakana, on the other hand, often pair up into valid 2-byte
/// UTF-8 (ﾕｷ is the bytes of "շ"), and UTF-8 accented Latin is often clean Shift_JIS (José
/// reads as Josﾃｩ). So when the only non-ASCII characters are 2-byte ones and the file is
/// also clean Shift_JIS, the reading that looks like names wins: Latin letters inside words
/// with ASCII letters, or whole Greek or Cyrillic words, for UTF-8; half-width katakana not
/// run together with ASCII letters, for Shift_JIS. When both or neither look like names the
/// file is refused rather than guessed, since a wrong guess garbles every name silently; a
/// BOM (which Excel's "CSV UTF-8" writes) settles it.
fn valid_utf8_or_shift_jis(text: &str) -> Result<String, Problem> {
    let two_byte_only = text.chars().all(|c| c.len_utf8() <= 2);
    if !two_byte_only || text.is_ascii() {
        return Ok(text.to_string());
    }
    let Some(sjis) = SHIFT_JIS.decode_without_bom_handling_and_without_replacement(text.as_bytes())
    else {
        return Ok(text.to_string());
    };
    match (reads_as_utf8_names(text), reads_as_half_width_kana(&sjis)) {
        (true, false) => return Ok(text.to_string()),
        (false, true) => return Ok(sjis.into_owned()),
        _ => {}
    }
    let bytes = text.as_bytes();
    let first = bytes.iter().position(|b| !b.is_ascii()).unwrap_or(0);
    let start = bytes[..first]
        .iter()
        .rposition(|b| matches!(b, b'\r' | b'\n'))
        .map_or(0, |i| i + 1);
    let end = bytes[first..]
        .iter()
        .position(|b| matches!(b, b'\r' | b'\n'))
        .map_or(bytes.len(), |i| first + i);
    let line = &bytes[start..end];
    let as_utf8 = String::from_utf8_lossy(line);
    let (as_sjis, _) = SHIFT_JIS.decode_without_bom_handling(line);
    Err(Problem::at(
        LineIndex::new(bytes).line_of(first),
        "encoding",
        format!(
            "this line reads as {as_utf8:?} in UTF-8 and as {as_sjis:?} in Shift_JIS, and \
             anpi cannot tell which the file is; in Excel, save it as \"CSV UTF-8 \
             (コンマ区切り)\", which marks the file as UTF-8"
        ),
    ))
}

/// Words of letters and digits; everything else separates them.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
}

/// Every non-ASCII character of `text` is a symbol (°, ×) or a letter in a word that looks
/// like a name: Latin with at least one ASCII letter (José, Müller), or all Greek or all
/// Cyrillic of two letters or more.
fn reads_as_utf8_names(text: &str) -> bool {
    #[derive(PartialEq)]
    enum Script {
        Latin,
        Greek,
        Cyrillic,
        Other,
    }
    let script = |c: char| match c {
        'a'..='z' | 'A'..='Z' | '\u{C0}'..='\u{24F}' => Script::Latin,
        '\u{370}'..='\u{3FF}' => Script::Greek,
        '\u{400}'..='\u{52F}' => Script::Cyrillic,
        _ => Script::Other,
    };
    let symbols_ok = text
        .chars()
        .filter(|c| !c.is_ascii() && !c.is_alphanumeric())
        .all(|c| !c.is_control());
    symbols_ok
        && words(text).all(|word| {
            let letters: Vec<char> = word.chars().filter(|c| c.is_alphabetic()).collect();
            if letters.iter().all(char::is_ascii) {
                return true;
            }
            let first = script(letters[0]);
            letters.len() >= 2
                && first != Script::Other
                && letters.iter().all(|&c| script(c) == first)
                && (first != Script::Latin || letters.iter().any(char::is_ascii_alphabetic))
        })
}

/// Every non-ASCII character of `text` is half-width katakana, and no word mixes it with
/// ASCII letters (as Josﾃｩ, UTF-8 José read as Shift_JIS, does).
fn reads_as_half_width_kana(text: &str) -> bool {
    let half_width = |c: char| ('\u{FF61}'..='\u{FF9F}').contains(&c);
    text.chars().all(|c| c.is_ascii() || half_width(c))
        && words(text).all(|word| {
            !(word.chars().any(half_width) && word.chars().any(|c| c.is_ascii_alphabetic()))
        })
}

/// Offsets (in `body`) of every malformed Shift_JIS sequence.
fn shift_jis_errors(body: &[u8]) -> Vec<usize> {
    let mut decoder = SHIFT_JIS.new_decoder_without_bom_handling();
    let mut out = String::with_capacity(body.len() * 2);
    let mut bad = Vec::new();
    let mut pos = 0;
    loop {
        let (result, read) =
            decoder.decode_to_string_without_replacement(&body[pos..], &mut out, true);
        match result {
            encoding_rs::DecoderResult::InputEmpty => break,
            encoding_rs::DecoderResult::OutputFull => {
                out.reserve(body.len());
                pos += read;
            }
            encoding_rs::DecoderResult::Malformed(len, after) => {
                pos += read;
                bad.push(pos - after as usize - len as usize);
            }
        }
    }
    bad
}

/// A contacts CSV read, with the columns it skipped on purpose.
#[derive(Debug)]
pub struct CsvRead {
    pub directory: Directory,
    /// Headers anpi knows and does not use (内線, 住所 ...), as the file wrote them.
    pub ignored_columns: Vec<String>,
}

/// Parses a CSV export. `origin` names the file in problems.
pub fn parse_csv(bytes: &[u8], origin: &str) -> Result<Directory, ContactsError> {
    parse_csv_read(bytes, origin).map(|r| r.directory)
}

/// Like [`parse_csv`], also naming the columns skipped on purpose.
pub fn parse_csv_read(bytes: &[u8], origin: &str) -> Result<CsvRead, ContactsError> {
    let done = |contacts, problems, ignored_columns| {
        finish(origin, contacts, problems).map(|directory| CsvRead {
            directory,
            ignored_columns,
        })
    };
    let mut problems = Vec::new();
    let text = match decode(bytes) {
        Ok(t) => t,
        Err(p) => return done(Vec::new(), vec![p], Vec::new()),
    };
    if text.trim_start_matches('\u{feff}').trim().is_empty() {
        problems.push(Problem::file(
            "header",
            format!("the file is empty; it needs a header row ({COLUMNS_HINT})"),
        ));
        return done(Vec::new(), problems, Vec::new());
    }
    let lines = LineIndex::new(text.as_bytes());
    let line_at = |pos: Option<&csv::Position>| {
        pos.map_or(1, |p| {
            lines.content_line_at(text.as_bytes(), p.byte() as usize)
        })
    };

    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut records = Vec::new();
    let mut read_error = None;
    for result in reader.records() {
        match result {
            Ok(r) => records.push(r),
            Err(e) => {
                read_error = Some(e);
                break;
            }
        }
    }
    let is_blank = |r: &csv::StringRecord| r.iter().all(|c| c.trim().is_empty());
    let header_at = match records.iter().position(|r| !is_blank(r)) {
        None => {
            if let Some(e) = read_error {
                problems.push(csv_error(&e, line_at(e.position())));
                return done(Vec::new(), problems, Vec::new());
            }
            None
        }
        Some(first) => {
            let record = &records[first];
            let line = line_at(record.position());
            if record.len() == 1 && record[0].contains('\t') {
                problems.push(Problem::at(line, "header", TABS_MESSAGE));
                return done(Vec::new(), problems, Vec::new());
            }
            if looks_like_title(record) {
                let header = records
                    .iter()
                    .enumerate()
                    .skip(first + 1)
                    .take_while(|(_, r)| line_at(r.position()) <= TITLE_LOOKAHEAD)
                    .find(|(_, r)| looks_like_header(r))
                    .map(|(i, _)| i);
                if header.is_none() {
                    let title = record.iter().map(str::trim).collect::<String>();
                    problems.push(Problem::at(
                        line,
                        "header",
                        format!(
                            "this line looks like a title ({title:?}), not a header, and no \
                             header row follows it; the header (職員番号, 氏名, 携帯電話 ...) \
                             must be the first line of the file: delete the title or put the \
                             header under it"
                        ),
                    ));
                    return done(Vec::new(), problems, Vec::new());
                }
                header
            } else {
                Some(first)
            }
        }
    };

    let mut header_line = 1;
    let mut columns = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut labels = Labels::new();
    let mut ignored = Vec::new();
    if let Some(record) = header_at.map(|i| &records[i]) {
        header_line = line_at(record.position());
        let mut parts: Vec<(&'static str, bool, String)> = Vec::new();
        for cell in record.iter() {
            let name = cell.trim().to_string();
            if name.is_empty() {
                // Excel leaves header cells blank over columns someone once used; such a
                // column is skipped when it is empty in every row, and named otherwise.
                columns.push(Column::Blank);
                names.push(name);
                continue;
            }
            let column = column_for(&name).unwrap_or_else(|| {
                let message = match (unclear_hint(&name), closest_header(&name)) {
                    (Some(hint), _) => hint.to_string(),
                    (None, Some(near)) => format!(
                        "unknown column; did you mean {near:?}? (contacts.example.toml lists \
                         every header anpi reads)"
                    ),
                    (None, None) => format!("unknown column; {COLUMNS_HINT}"),
                };
                problems.push(Problem::at(
                    header_line,
                    &name,
                    format!(
                        "{message}. Until it is fixed, rows with a value in this column are \
                         not checked for missing values"
                    ),
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
                Column::Part { field, given } => {
                    if let Some((_, _, before)) =
                        parts.iter().find(|(f, g, _)| f == field && g == given)
                    {
                        problems.push(Problem::at(
                            header_line,
                            name.clone(),
                            format!(
                                "this column and {before:?} are the same part of {field}; keep one"
                            ),
                        ));
                    }
                    parts.push((field, *given, name.clone()));
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
                Column::Ignored => ignored.push(name.clone()),
                Column::Phone { .. } | Column::Unknown | Column::Blank => {}
            }
            columns.push(column);
            names.push(name);
        }
        // 姓 + 名 stand for the name; with a 氏名 column as well, the file says it twice.
        for field in ["name", "kana"] {
            let given: Vec<&str> = parts
                .iter()
                .filter(|(f, _, _)| *f == field)
                .map(|(_, _, n)| n.as_str())
                .collect();
            if given.is_empty() {
                continue;
            }
            let joined = given.join("/");
            if let Some(whole) = labels.get(field) {
                problems.push(Problem::at(
                    header_line,
                    joined,
                    format!(
                        "these columns and {whole:?} both give the {field}; keep one or the other"
                    ),
                ));
            } else {
                labels.insert(field, joined);
            }
        }
    }
    if columns.is_empty() {
        problems.push(Problem::file(
            "header",
            format!("the file has no header row ({COLUMNS_HINT})"),
        ));
        return done(Vec::new(), problems, ignored);
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
    // An unknown column may be the phone column misspelt: its own problem says so, and rows
    // are still checked (see `RawEntry::unread_column`).
    let reachable = columns
        .iter()
        .any(|c| matches!(c, Column::Chat(_) | Column::Phone { .. } | Column::Unknown));
    if !reachable {
        problems.push(Problem::at(
            header_line,
            "phones",
            "the header has neither a phone column (電話番号, 携帯電話 ...) nor a chat id column \
             (LINE WORKS ID, chat.<provider>), so no one could be reached",
        ));
    }
    if !labels.contains_key("id") || !labels.contains_key("name") || !reachable {
        // Every row would repeat the same complaint; the header problem says it once.
        return done(Vec::new(), problems, ignored);
    }
    if let Some(label) = columns
        .iter()
        .zip(&names)
        .find(|(c, _)| matches!(c, Column::Phone { .. }))
        .map(|(_, n)| n.clone())
    {
        labels.insert("phones", label);
    }

    // Rows may stop short of trailing blank-header columns.
    let needed = columns
        .iter()
        .rposition(|c| *c != Column::Blank)
        .map_or(0, |i| i + 1);
    let mut blank_values: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut entries = Vec::new();
    let mut excel_damaged = None;
    for record in header_at.map_or(&records[..0], |i| &records[i + 1..]) {
        if is_blank(record) {
            continue;
        }
        let line = line_at(record.position());
        let extra_filled = record
            .iter()
            .skip(columns.len())
            .any(|c| !c.trim().is_empty());
        if record.len() < needed || extra_filled {
            problems.push(Problem::at(
                line,
                "row",
                format!(
                    "this row has {} cells but the header has {} columns; check for a stray \
                     comma or a missing quote",
                    record.len(),
                    needed
                ),
            ));
            continue;
        }
        let mut e = RawEntry {
            line,
            ..RawEntry::default()
        };
        let mut own_phones = Vec::new();
        let mut emergency_phones = Vec::new();
        // (field, given, text, header)
        let mut name_parts: Vec<(&'static str, bool, String)> = Vec::new();
        for (index, ((column, header), cell)) in
            columns.iter().zip(&names).zip(record.iter()).enumerate()
        {
            let cell = excel_text(cell.trim());
            if cell.is_empty() {
                continue;
            }
            let at = At::new(cell, line, header.clone());
            let slot = match column {
                Column::Unknown => {
                    e.unread_column = true;
                    continue;
                }
                Column::Blank => {
                    blank_values.entry(index + 1).or_default().push(line);
                    e.unread_column = true;
                    continue;
                }
                Column::Ignored => continue,
                Column::Chat(provider) => {
                    e.chat.push((provider.clone(), at));
                    continue;
                }
                Column::Part { field, given } => {
                    name_parts.push((field, *given, cell.to_string()));
                    continue;
                }
                Column::Phone { group } => {
                    for number in cell
                        .split(PHONE_SEPARATORS)
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                    {
                        if let Some(damage) = excel_damage(number) {
                            excel_damaged.get_or_insert_with(|| header.clone());
                            problems.push(Problem::at(
                                line,
                                header.clone(),
                                match damage {
                                    ExcelDamage::LostZero(p) => format!(
                                        "{number:?} has lost its leading 0 (it was probably \
                                         {}); Excel did this, see the note at the top",
                                        p.national()
                                    ),
                                    ExcelDamage::Scientific => format!(
                                        "{number:?} is a phone number Excel rewrote in \
                                         scientific notation, and its last digits are gone; \
                                         type it again (see the note at the top)"
                                    ),
                                },
                            ));
                            e.reported.push("phones");
                            continue;
                        }
                        let at = At::new(number, line, header.clone());
                        match group {
                            PhoneGroup::Mobile => e.phones.push(at),
                            PhoneGroup::Own => own_phones.push(at),
                            PhoneGroup::Emergency => emergency_phones.push(at),
                        }
                    }
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
        e.phones.append(&mut own_phones);
        e.phones.append(&mut emergency_phones);
        for field in ["name", "kana"] {
            let mut parts: Vec<&(&str, bool, String)> =
                name_parts.iter().filter(|(f, _, _)| *f == field).collect();
            if parts.is_empty() {
                continue;
            }
            parts.sort_by_key(|(_, given, _)| *given);
            let joined = parts
                .iter()
                .map(|(_, _, t)| t.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            let at = Some(At::new(
                joined,
                line,
                labels.get(field).cloned().unwrap_or_default(),
            ));
            if field == "name" {
                e.name = at;
            } else {
                e.kana = at;
            }
        }
        entries.push(e);
    }
    if let Some(e) = read_error {
        problems.push(csv_error(&e, line_at(e.position())));
    }
    for (number, lines) in blank_values {
        const SHOWN: usize = 5;
        let mut list = lines
            .iter()
            .take(SHOWN)
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        if lines.len() > SHOWN {
            list.push_str(&format!(" and {} more", lines.len() - SHOWN));
        }
        problems.push(Problem::at(
            header_line,
            format!("column {number}"),
            format!(
                "column {number} has no header but has values on lines {list}: name it or \
                 delete it"
            ),
        ));
    }
    if let Some(header) = excel_damaged {
        problems.push(Problem::file(header, EXCEL_NOTE));
    }
    let contacts = entry::build(entries, &labels, &mut problems);
    done(contacts, problems, ignored)
}

/// The csv crate's own message carries its own line count; only the line from
/// [`LineIndex`] is shown.
fn csv_error(e: &csv::Error, line: usize) -> Problem {
    let what = match e.kind() {
        csv::ErrorKind::Io(io) => io.to_string(),
        csv::ErrorKind::Utf8 { .. } => "it is not UTF-8 text".to_string(),
        _ => "it is not well-formed CSV".to_string(),
    };
    Problem::at(line, "row", format!("cannot read this row: {what}"))
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
    fn a_shift_jis_file_with_a_broken_character_gets_one_error_naming_line_and_byte() {
        let (bytes, _, _) = encoding_rs::SHIFT_JIS.encode(JAPANESE);
        let mut bad = bytes.to_vec();
        let offset = bad.len() + 3;
        bad.extend_from_slice(b"S9,\x82\xff\x82,090-1234-5678\r\n");
        bad.extend_from_slice(b"S8,\x82\xff\x82,090-1234-5679\r\n");
        let p = problems(&bad);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p[0].0, p[0].1.as_str()), (Some(4), "encoding"));
        assert!(
            p[0].2.starts_with(&format!(
                "byte offset {offset}: this is neither UTF-8 nor Shift_JIS"
            )),
            "{p:?}"
        );
        assert!(
            p[0].2.contains("(3 more bad places after this one)"),
            "{p:?}"
        );
    }

    #[test]
    fn a_utf8_file_with_one_bad_byte_is_named_as_utf8_once() {
        let mut text = String::from("職員番号,氏名,電話番号\r\n");
        for i in 0..1010 {
            text.push_str(&format!("S{i},職員{i},090-0000-{i:04}\r\n"));
        }
        let mut bytes = b"\xEF\xBB\xBF".to_vec();
        bytes.extend_from_slice(text.as_bytes());
        // Line 501 is the row of S499: cut the 員 of its name short by a byte.
        let row = "S499,職員499".as_bytes();
        let start = bytes.windows(row.len()).position(|w| w == row).unwrap();
        let bad_at = start + "S499,職".len();
        bytes.remove(bad_at + 2);
        for bom in [true, false] {
            let input = if bom { &bytes[..] } else { &bytes[3..] };
            let p = problems(input);
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!((p[0].0, p[0].1.as_str()), (Some(501), "encoding"));
            let offset = bad_at - if bom { 0 } else { 3 };
            assert!(
                p[0].2
                    .starts_with(&format!("byte offset {offset}: the file is UTF-8 but")),
                "{p:?}"
            );
            assert!(
                !p[0].2.contains("CSV UTF-8"),
                "not told to save as what it is: {p:?}"
            );
        }
    }

    #[test]
    fn an_unknown_column_is_one_error_with_the_closest_header() {
        let p = problems(
            "id,name,phones,血液型,電話番号,chat.matrix,Chat.Matrix\nS1,a,090-1234-5678,x,,,\n"
                .as_bytes(),
        );
        let got: Vec<_> = p.iter().map(|p| (p.0, p.1.as_str())).collect();
        assert_eq!(
            got,
            [(Some(1), "血液型"), (Some(1), "Chat.Matrix")],
            "{p:?}"
        );
        assert!(p[0].2.starts_with("unknown column; use id, name"), "{p:?}");
        assert!(!p[0].2.contains("did you mean"), "nothing is close: {p:?}");

        let p = problems("職員番号,氏名,電話番,メールアドレス\nS1,a,090-1234-5678,\n".as_bytes());
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p[0].0, p[0].1.as_str()), (Some(1), "電話番"));
        assert!(
            p[0].2
                .starts_with("unknown column; did you mean \"電話番号\"?"),
            "{p:?}"
        );

        let p = problems("id,name,phone,emial\nS1,a,090-1234-5678,a@b.jp\n".as_bytes());
        assert!(
            p[0].2
                .starts_with("unknown column; did you mean \"email\"?"),
            "{p:?}"
        );
    }

    #[test]
    fn rows_whose_values_sit_in_an_unknown_column_get_no_follow_on_errors() {
        // The only phone number of every row is in the misspelt column.
        let mut text = String::from("職員番号,氏名,携帯電話番,内線\r\n");
        for i in 0..221 {
            text.push_str(&format!("S{i},職員{i},090-0000-{i:04},{i}\r\n"));
        }
        // A row with nothing in the unknown column is still checked.
        text.push_str("S999,,090-0000-9999,\r\nS1000,職員,,\r\n");
        let p = problems(text.as_bytes());
        let got: Vec<_> = p.iter().map(|p| (p.0, p.1.as_str())).collect();
        assert_eq!(
            got,
            [(Some(1), "携帯電話番"), (Some(224), "phones")],
            "{p:?}"
        );
        assert!(p[0].2.contains("did you mean \"携帯電話番号\"?"), "{p:?}");
    }

    #[test]
    fn duplicate_columns_are_named() {
        let p = problems("id,name,職員番号,電話\nS1,a,S1,090-1234-5678\n".as_bytes());
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p[0].0, p[0].1.as_str()), (Some(1), "職員番号"));
        assert_eq!(p[0].2, "this column and \"id\" both mean id; keep one");
    }

    /// An export as HR systems write it: cp932, CRLF, the headers HR uses.
    const HR_EXPORT: &str = "社員番号,姓,名,セイ,メイ,部署,役職,内線,電話番号,携帯電話,Ｅメール,LINE WORKS ID,住所\r\n\
        0012,田中,一郎,タナカ,イチロウ,防災対策室,室長,1234,0256-34-5525,090-1234-5678,tanaka@city.example.jp,tanaka@sanjo-city,三条市旭町2-3-1\r\n\
        0013,佐藤,花子,ｻﾄｳ,ﾊﾅｺ,総務課,,1235,,,,sato@sanjo-city,\r\n";

    #[test]
    fn an_hr_export_with_mobile_and_line_works_id_headers_loads() {
        let (bytes, _, unmappable) = encoding_rs::SHIFT_JIS.encode(HR_EXPORT);
        assert!(!unmappable);
        let read = parse_csv_read(&bytes, "社員.csv").unwrap_or_else(|e| panic!("{e}"));
        let dir = read.directory;
        assert_eq!(dir.len(), 2);
        let c = &dir.contacts[0];
        assert_eq!(c.id.as_str(), "0012");
        assert_eq!(c.name, "田中 一郎", "姓 and 名 are joined");
        assert_eq!(c.kana.as_deref(), Some("タナカ イチロウ"));
        assert_eq!(c.department.as_deref(), Some("防災対策室"));
        assert_eq!(c.role.as_deref(), Some("室長"));
        assert_eq!(
            c.phones.iter().map(|p| p.national()).collect::<Vec<_>>(),
            ["090-1234-5678", "0256-34-5525"],
            "the mobile is called first"
        );
        assert_eq!(
            c.email.as_ref().unwrap().to_string(),
            "tanaka@city.example.jp"
        );
        assert_eq!(
            c.chat_handle("lineworks").unwrap().as_str(),
            "tanaka@sanjo-city"
        );
        assert_eq!(
            dir.contacts[1].chat_handle("lineworks").unwrap().as_str(),
            "sato@sanjo-city"
        );
        assert_eq!(read.ignored_columns, ["内線", "住所"]);
    }

    #[test]
    fn header_spellings_match_whatever_the_width_case_or_brackets() {
        for (header, want) in [
            ("ＩＤ", Column::Field("id")),
            ("E-Mail", Column::Field("email")),
            ("氏名（カナ）", Column::Field("kana")),
            ("ﾌﾘｶﾞﾅ", Column::Field("kana")),
            (
                "携帯電話２",
                Column::Phone {
                    group: PhoneGroup::Mobile,
                },
            ),
            (
                "電話2",
                Column::Phone {
                    group: PhoneGroup::Own,
                },
            ),
            ("lineworks id", Column::Chat("lineworks".into())),
            ("課", Column::Field("department")),
            ("カナ", Column::Field("kana")),
            ("ID", Column::Field("id")),
            ("内線", Column::Ignored),
        ] {
            assert_eq!(column_for(header), Some(want), "{header}");
        }
        assert_eq!(column_for("血液型"), None);
    }

    #[test]
    fn a_phone_number_excel_mangled_gets_the_excel_hint() {
        let text = "職員番号,氏名,電話番号\r\nS1,田中,9012345678\r\nS2,佐藤,256345525\r\nS3,鈴木,9.01235E+09\r\nS4,高橋,090-12-34\r\n";
        let p = problems(text.as_bytes());
        let got: Vec<_> = p.iter().map(|p| (p.0, p.1.as_str())).collect();
        assert_eq!(
            got,
            [
                (None, "電話番号"),
                (Some(2), "電話番号"),
                (Some(3), "電話番号"),
                (Some(4), "電話番号"),
                (Some(5), "電話番号")
            ],
            "{p:?}"
        );
        assert!(
            p[0].2
                .starts_with("Excel turned these phone numbers into numbers"),
            "{p:?}"
        );
        assert!(p[0].2.contains("文字列"), "{p:?}");
        assert!(
            p[1].2
                .contains("lost its leading 0 (it was probably 090-1234-5678)"),
            "{p:?}"
        );
        assert!(p[2].2.contains("probably 0256-34-5525"), "{p:?}");
        assert!(p[3].2.contains("scientific notation"), "{p:?}");
        assert!(
            !p[4].2.contains("Excel"),
            "an ordinary typo is not blamed on Excel: {p:?}"
        );
        assert_eq!(
            p.iter().filter(|p| p.2.contains("Excel turned")).count(),
            1,
            "the explanation is given once"
        );
    }

    #[test]
    fn crlf_lf_and_cr_copies_give_the_lines_an_editor_shows() {
        // Line 1 header, 2 good, 3 blank, 4-5 a quoted note over two lines, 6 bad phone,
        // 7 a duplicate of line 2's id.
        let lines = [
            "id,name,phones,備考",
            "S1,a,090-1234-5678,",
            "",
            "S2,b,090-1234-5679,\"二行の",
            "備考\"",
            "S3,c,090-12-34,",
            "S1,d,090-1234-5670,",
        ];
        let mut seen = Vec::new();
        for eol in ["\n", "\r\n", "\r"] {
            for bom in ["", "\u{feff}"] {
                let text = format!("{bom}{}{eol}", lines.join(eol));
                let p = problems(text.as_bytes());
                let got: Vec<_> = p.iter().map(|p| (p.0, p.1.clone(), p.2.clone())).collect();
                assert_eq!(
                    got.iter().map(|g| (g.0, g.1.as_str())).collect::<Vec<_>>(),
                    [(Some(6), "phones"), (Some(7), "id")],
                    "{eol:?} bom={bom:?}"
                );
                assert!(got[1].2.contains("used on line 2 and line 7"), "{got:?}");
                seen.push(got);
            }
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn a_nul_in_a_contact_name_is_refused_with_its_line() {
        let p = problems(
            "職員番号,氏名,電話番号\r\nS1,田中,090-1234-5678\r\nS2,佐\0藤,090-1234-5679\r\n"
                .as_bytes(),
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p[0].0, p[0].1.as_str()), (Some(3), "氏名"));
        assert!(
            p[0].2.contains("a NUL character (U+0000) at character 2"),
            "{p:?}"
        );
        let p = problems("id,name,department,phones\nS1,a,\"防災\n対策室\",090-1234-5678\nS2,b,x\u{7}y,090-1234-5679\n".as_bytes());
        let got: Vec<_> = p.iter().map(|p| (p.0, p.1.as_str())).collect();
        assert_eq!(
            got,
            [(Some(2), "department"), (Some(4), "department")],
            "{p:?}"
        );
        assert!(p[0].2.contains("a line break"), "{p:?}");
        assert!(p[1].2.contains("U+0007"), "{p:?}");
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
        let text = "id,name,phones,備考\nS1,a,090-1234-5678,\"二行の\n備考\"\nS2,b,090-12-34,\n";
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

    fn cp932(text: &str) -> Vec<u8> {
        let (bytes, _, unmappable) = encoding_rs::SHIFT_JIS.encode(text);
        assert!(!unmappable, "{text}");
        bytes.into_owned()
    }

    #[test]
    fn half_width_kana_in_shift_jis_that_is_also_valid_utf8_is_read_as_shift_jis() {
        for text in [
            "id,name,phones\r\n1001,ﾕｷ,090-1234-5678\r\n",
            "ID,NAME,KANA,TEL\r\n1001,ﾕｷ ﾐｷ,ﾕｷ ﾐｷ,090-1234-5678\r\n",
        ] {
            let bytes = cp932(text);
            assert!(
                std::str::from_utf8(&bytes).is_ok(),
                "the trap: these bytes are valid UTF-8 too"
            );
            let dir = parse_csv(&bytes, "c.csv").unwrap_or_else(|e| panic!("{e}"));
            let name = text
                .split("\r\n")
                .nth(1)
                .unwrap()
                .split(',')
                .nth(1)
                .unwrap();
            assert_eq!(dir.contacts[0].name, name, "{text}");
        }
    }

    #[test]
    fn half_width_kana_shift_jis_with_accidental_utf8_pairs_is_not_called_damaged_utf8() {
        let text = "ID,NAME,TEL\r\n1001,ﾀﾅｶ ﾕｷ,090-1234-5678\r\n1002,ｻﾄｳ ﾏｷｺ,080-1111-2222\r\n";
        let dir = parse_csv(&cp932(text), "c.csv").unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<_> = dir.contacts.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["ﾀﾅｶ ﾕｷ", "ｻﾄｳ ﾏｷｺ"]);
    }

    #[test]
    fn utf8_latin_names_without_japanese_stay_utf8() {
        let text = "id,name,phones\nS1,José García,090-1234-5678\nS2,Anna Müller,090-1234-5679\n";
        assert!(
            encoding_rs::SHIFT_JIS
                .decode_without_bom_handling_and_without_replacement(text.as_bytes())
                .is_some(),
            "the trap: these bytes are clean Shift_JIS too (Josﾃｩ)"
        );
        let dir = parse_csv(text.as_bytes(), "c.csv").unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<_> = dir.contacts.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["José García", "Anna Müller"]);
        let dir = parse_csv(
            "id,name,phones\nS1,Иван,090-1234-5678\n".as_bytes(),
            "c.csv",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dir.contacts[0].name, "Иван");
    }

    #[test]
    fn bytes_that_read_as_names_both_ways_are_refused_not_guessed() {
        // Greek in UTF-8 is also clean half-width katakana in Shift_JIS (ﾎｩﾎｼﾎｭﾎｳﾎｱ).
        let text = "id,name,phones\nS1,a,090-1234-5678\nS2,Ωμέγα,090-1234-5679\n";
        let p = problems(text.as_bytes());
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p[0].0, p[0].1.as_str()), (Some(3), "encoding"));
        assert!(p[0].2.contains("\"S2,Ωμέγα,090-1234-5679\""), "{p:?}");
        assert!(p[0].2.contains("\"S2,ﾎｩﾎｼﾎｭﾎｳﾎｱ,090-1234-5679\""), "{p:?}");
        assert!(p[0].2.contains("CSV UTF-8"), "{p:?}");
        let mut bom = b"\xEF\xBB\xBF".to_vec();
        bom.extend_from_slice(text.as_bytes());
        let dir = parse_csv(&bom, "c.csv").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dir.contacts[1].name, "Ωμέγα", "a BOM says UTF-8");
    }

    #[test]
    fn blank_header_columns_left_empty_by_excel_are_ignored() {
        let text = "職員番号,氏名,携帯電話,,,\r\n1001,田中 一郎,090-1234-5678,,,\r\n1002,佐藤 花子,080-1111-2222\r\n,,,,,\r\n";
        let dir = parse_csv(&cp932(text), "c.csv").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dir.len(), 2);
    }

    #[test]
    fn a_blank_header_over_values_is_one_error_naming_the_column() {
        let text = "職員番号,氏名,,携帯電話\r\n1001,田中,x,090-1234-5678\r\n1002,佐藤,,080-1111-2222\r\n1003,鈴木,y,\r\n";
        let p = problems(&cp932(text));
        assert_eq!(
            p.len(),
            1,
            "no follow-on errors for rows with a value there: {p:?}"
        );
        assert_eq!((p[0].0, p[0].1.as_str()), (Some(1), "column 3"));
        assert_eq!(
            p[0].2,
            "column 3 has no header but has values on lines 2, 4: name it or delete it"
        );
    }

    #[test]
    fn a_title_row_above_the_header_is_skipped_and_lines_stay_the_files() {
        for title in ["職員緊急連絡網\r\n", "職員緊急連絡網,,,\r\n,,,\r\n"] {
            let body = "職員番号,氏名,携帯電話,所属\r\n1001,田中,090-1234-5678,防災\r\n1002,佐藤,090-12-34,総務\r\n";
            let text = format!("{title}{body}");
            let p = problems(&cp932(&text));
            let got: Vec<_> = p.iter().map(|p| (p.0, p.1.as_str())).collect();
            let line = title.lines().count() + 3;
            assert_eq!(got, [(Some(line), "携帯電話")], "{title:?}: {p:?}");
            let fixed = text.replace("090-12-34", "090-1234-5679");
            let dir = parse_csv(&cp932(&fixed), "c.csv").unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(dir.len(), 2);
        }
    }

    #[test]
    fn a_title_row_with_no_header_after_it_is_one_error() {
        let p = problems(&cp932("職員緊急連絡網\r\n1001,田中,090-1234-5678\r\n"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p[0].0, p[0].1.as_str()), (Some(1), "header"));
        assert!(
            p[0].2.contains("looks like a title (\"職員緊急連絡網\")"),
            "{p:?}"
        );
        assert!(p[0].2.contains("must be the first line"), "{p:?}");
    }

    #[test]
    fn a_full_width_staff_id_is_the_same_person_as_the_half_width_one() {
        let text = "職員番号,氏名,携帯電話\r\n1001,田中 一郎,090-1234-5678\r\n１００１,田中 一郎,090-1234-5678\r\n";
        let p = problems(&cp932(text));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p[0].0, p[0].1.as_str()), (Some(3), "職員番号"));
        assert!(
            p[0].2.starts_with("\"1001\" is used on line 2 and line 3"),
            "{p:?}"
        );
    }

    #[test]
    fn a_utf16_file_is_named_with_how_to_save_it() {
        let text = "職員番号\t氏名\t携帯電話\r\n1001\t田中\t090-1234-5678\r\n";
        let mut bytes = vec![0xFF, 0xFE];
        bytes.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        let p = problems(&bytes);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].1, "encoding");
        assert!(
            p[0].2
                .starts_with("this file is UTF-16 (Excel's Unicode text)"),
            "{p:?}"
        );
        assert!(p[0].2.contains("CSV UTF-8 (コンマ区切り)"), "{p:?}");
    }

    #[test]
    fn excel_keep_as_text_forms_are_unwrapped_in_every_column() {
        // As HR systems write them so Excel keeps leading zeros: ="0012" (raw in the file
        // often as "=""0012""") and a leading apostrophe.
        let text = "職員番号,氏名,優先度,携帯電話,電話番号\r\n\
            =\"0012\",田中 一郎,=\"1\",=\"09012345678\",'0256345525\r\n\
            \"=\"\"0013\"\"\",佐藤 花子,'2,'09012340000,\"=\"\"\"\"\"\r\n";
        let dir = parse_csv(&cp932(text), "c.csv").unwrap_or_else(|e| panic!("{e}"));
        let c = &dir.contacts[0];
        assert_eq!(c.id.as_str(), "0012");
        assert_eq!(c.call_priority, 1);
        assert_eq!(
            c.phones.iter().map(|p| p.national()).collect::<Vec<_>>(),
            ["090-1234-5678", "0256-34-5525"]
        );
        let c = &dir.contacts[1];
        assert_eq!(c.id.as_str(), "0013");
        assert_eq!(c.call_priority, 2);
        assert_eq!(
            c.phones.iter().map(|p| p.national()).collect::<Vec<_>>(),
            ["090-1234-0000"],
            "=\"\" is an empty cell"
        );
    }

    #[test]
    fn only_the_exact_keep_as_text_forms_are_unwrapped() {
        for (cell, kept) in [
            ("=\"0012\"", "0012"),
            ("'0012", "0012"),
            ("=\"\"", ""),
            ("=0012", "=0012"),
            ("=\"0012", "=\"0012"),
            ("=\"00\"12\"", "=\"00\"12\""),
            ("'+819012345678", "+819012345678"),
            ("'０９０", "０９０"),
            ("''0012", "''0012"),
            ("0012'", "0012'"),
            ("'Neill", "'Neill"),
            ("'n", "'n"),
            ("'", "'"),
            ("'-1", "'-1"),
        ] {
            assert_eq!(excel_text(cell), kept, "{cell}");
        }
    }

    #[test]
    fn an_apostrophe_before_a_name_or_chat_id_is_kept() {
        let text = "職員番号,氏名,携帯電話\r\n'0012,'Neill Sean,'09012345678\r\n";
        let dir = parse_csv(&cp932(text), "c.csv").unwrap_or_else(|e| panic!("{e}"));
        let c = &dir.contacts[0];
        assert_eq!(c.id.as_str(), "0012");
        assert_eq!(c.name, "'Neill Sean");
        assert_eq!(c.phones[0].national(), "090-1234-5678");

        // A chat id is not turned into another person's id: it is refused as written.
        let text = "職員番号,氏名,携帯電話,LINE WORKS ID\r\n\
            0012,田中 一郎,090-1234-5678,'tanaka@city-sanjo\r\n";
        let p = problems(&cp932(text));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            (p[0].0, p[0].1.as_str()),
            (Some(2), "LINE WORKS ID"),
            "{p:?}"
        );
    }

    #[test]
    fn a_shubetsu_column_of_employment_types_reads_as_staff() {
        let text = "職員番号,氏名,種別,携帯電話\r\n\
            1001,田中 一郎,正職員,090-1234-5678\r\n\
            1002,佐藤 花子,会計年度任用職員,080-1111-2222\r\n\
            1003,鈴木 三郎,再任用職員,080-1111-3333\r\n\
            1004,高橋 四郎,嘱託,080-1111-4444\r\n";
        let dir = parse_csv(&cp932(text), "c.csv").unwrap_or_else(|e| panic!("{e}"));
        assert!(dir.contacts.iter().all(|c| c.kind == ContactKind::Staff));
    }

    #[test]
    fn headers_hr_exports_use_for_name_department_and_email_are_read() {
        for (header, want) in [
            ("姓名", Column::Field("name")),
            ("フリガナ（氏名）", Column::Field("kana")),
            ("所属名称", Column::Field("department")),
            ("部局", Column::Field("department")),
            ("所属課名", Column::Field("department")),
            ("課・係", Column::Field("department")),
            ("メールアドレス（庁内）", Column::Field("email")),
            ("メールアドレス (庁内)", Column::Field("email")),
            ("ラインワークスアカウント", Column::Chat("lineworks".into())),
            (
                "Tel.",
                Column::Phone {
                    group: PhoneGroup::Own,
                },
            ),
            ("PHS", Column::Ignored),
            ("雇用区分", Column::Ignored),
            ("所属コード", Column::Ignored),
        ] {
            assert_eq!(column_for(header), Some(want), "{header}");
        }
        for header in ["緊急連絡先氏名", "緊急連絡先メール", "庁内電話", "自宅"]
        {
            assert_eq!(column_for(header), None, "{header}");
        }
    }

    #[test]
    fn phone_headers_with_whose_phone_it_is_are_read_mobiles_first() {
        for (header, group) in [
            ("公用携帯", PhoneGroup::Mobile),
            ("個人携帯", PhoneGroup::Mobile),
            ("携帯電話（私用）", PhoneGroup::Mobile),
            ("携帯電話(私用)", PhoneGroup::Mobile),
            ("携帯電話（公用）２", PhoneGroup::Mobile),
            ("電話番号（携帯）", PhoneGroup::Mobile),
            ("自宅電話", PhoneGroup::Own),
            ("自宅TEL", PhoneGroup::Own),
            ("ＴＥＬ（自宅）", PhoneGroup::Own),
            ("TEL(自宅)", PhoneGroup::Own),
            ("緊急連絡先電話", PhoneGroup::Emergency),
            ("緊急連絡先電話番号", PhoneGroup::Emergency),
            ("緊急連絡先", PhoneGroup::Emergency),
            ("緊急連絡先2", PhoneGroup::Emergency),
            // Most likely a relative's: called after the person's own numbers.
            ("緊急連絡先（携帯）", PhoneGroup::Emergency),
        ] {
            assert_eq!(
                column_for(header),
                Some(Column::Phone { group }),
                "{header}"
            );
        }
        let text = "職員番号,姓名,自宅TEL,緊急連絡先（携帯）,個人携帯,公用携帯,PHS\r\n\
            1001,田中 一郎,0256-34-5525,090-0000-0003,090-0000-0002,090-0000-0001,4321\r\n";
        let read = parse_csv_read(&cp932(text), "c.csv").unwrap_or_else(|e| panic!("{e}"));
        let c = &read.directory.contacts[0];
        assert_eq!(c.name, "田中 一郎");
        assert_eq!(
            c.phones.iter().map(|p| p.national()).collect::<Vec<_>>(),
            [
                "090-0000-0002",
                "090-0000-0001",
                "0256-34-5525",
                "090-0000-0003"
            ],
            "the person's mobiles in file order, then the home phone, then the emergency \
             contact"
        );
        assert_eq!(read.ignored_columns, ["PHS"]);
    }

    #[test]
    fn an_emergency_contact_left_of_the_home_phone_is_still_called_after_it() {
        let text = "職員番号,氏名,緊急連絡先,自宅TEL,緊急連絡先電話2,電話番号,携帯電話\r\n\
            1001,田中 一郎,090-0000-0009,0256-34-5525,090-0000-0008,0256-34-5526,090-0000-0001\r\n";
        let read = parse_csv_read(&cp932(text), "c.csv").unwrap_or_else(|e| panic!("{e}"));
        let c = &read.directory.contacts[0];
        assert_eq!(
            c.phones.iter().map(|p| p.national()).collect::<Vec<_>>(),
            [
                "090-0000-0001",
                "0256-34-5525",
                "0256-34-5526",
                "090-0000-0009",
                "090-0000-0008"
            ],
            "the mobile, the person's other numbers in file order, then the emergency \
             contacts in file order"
        );
    }

    #[test]
    fn a_suggestion_is_only_made_for_a_clear_slip_never_for_another_meaning() {
        for header in [
            "局名",
            "番号",
            "旧姓",
            "連絡先名",
            "職種",
            "自宅携帯TEL番号",
            "自宅FAX",
            "職員",
            "call",
        ] {
            assert_eq!(closest_header(header), None, "{header}");
        }
        for (header, near) in [
            ("電話番", "電話番号"),
            ("携帯電話番", "携帯電話番号"),
            ("メールアドレ", "メールアドレス"),
            ("emial", "email"),
            ("nmae", "name"),
            ("departmnt", "department"),
        ] {
            assert_eq!(closest_header(header), Some(near), "{header}");
        }
    }

    #[test]
    fn a_kakari_column_is_refused_with_what_to_do() {
        for header in ["係", "係名"] {
            let text = format!(
                "職員番号,氏名,所属,{header},携帯電話\r\n1001,田中,総務課,庶務係,090-1234-5678\r\n"
            );
            let p = problems(&cp932(&text));
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!((p[0].0, p[0].1.as_str()), (Some(1), header));
            assert!(p[0].2.contains("rename it 所属"), "{p:?}");
            assert!(p[0].2.contains("総務課 庶務係"), "{p:?}");
        }
    }

    #[test]
    fn a_tab_separated_file_named_csv_is_named() {
        let text = "職員番号\t氏名\t携帯電話\r\n1001\t田中\t090-1234-5678\r\n";
        let p = problems(&cp932(text));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p[0].0, p[0].1.as_str()), (Some(1), "header"));
        assert!(
            p[0].2.starts_with("the columns are separated by tabs"),
            "{p:?}"
        );
    }
}
