//! Japanese phone numbers: what HQ callers dial from the phone-call list.
//!
//! Invariant: a [`PhoneNumber`] always holds a Japanese number in E.164 form
//! (`+81` followed by the national significant number) whose length fits its
//! prefix, so every number on a call list can be dialled as shown.
//!
//! Grouping for people ([`PhoneNumber::national`]) is cosmetic: hyphens do not
//! change what is dialled. Mobile, IP and M2M numbers (070/080/090/050/060/020) are
//! grouped 3-4-4; 0120/0570/0180/0990 are 4-3-3 and 0800 is 4-3-4; Tokyo (03) and
//! Osaka (06) are 2-4-4; a handful of big-city three-digit area codes (011, 045,
//! 052, 075, 078, 082, 092, Niigata city's 025-2) are 3-3-4; every other landline is
//! shown as a four-digit area code, 0AAA-BB-CCCC, which is right for Sanjo (0256)
//! and most of rural Japan. Exact grouping would need the ministry's full
//! exchange table, which is not worth carrying for a display detail.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A Japanese phone number, stored as E.164 (`+81256345525`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneNumber(String);

/// Why a phone number was refused; rendered after the number itself so the IT person sees
/// both what they typed and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{raw:?} is not a Japanese phone number ({reason}; expected e.g. 090-1234-5678 or 0256-34-5525)")]
pub struct PhoneError {
    pub raw: String,
    pub reason: PhoneProblem,
}

/// The specific fault, kept separate so tests and callers can match on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneProblem {
    #[error("it is empty")]
    Empty,
    #[error("it contains {0:?}; use only digits, hyphens, spaces and brackets")]
    BadChar(char),
    #[error("it must start with 0, or with +81")]
    NoLeadingZero,
    #[error(
        "it starts with 81, the country code, without + and is not a Japanese number after \
         it; write it as +81 90-1234-5678 or as dialled in Japan, 090-1234-5678"
    )]
    CountryCodeWithoutPlus,
    #[error("only Japanese numbers (+81) can be called from the list")]
    NotJapanese,
    #[error("{0} is an international call prefix, not part of a number")]
    InternationalPrefix(String),
    #[error("it has {found} digits but a number starting {prefix} has {expected}")]
    WrongLength {
        prefix: String,
        found: usize,
        expected: usize,
    },
}

/// Maps the full-width and look-alike characters that Japanese input methods and Excel
/// produce to their ASCII meaning, so "０９０－１２３４－５６７８" reads like "090-1234-5678".
fn fold(c: char) -> char {
    match c {
        '０'..='９' => char::from_u32(c as u32 - '０' as u32 + '0' as u32).unwrap_or(c),
        '＋' => '+',
        '（' => '(',
        '）' => ')',
        // Hyphen look-alikes: full-width hyphen-minus, katakana long vowel mark (half and
        // full width), minus sign, and the Unicode hyphens and dashes.
        '－' | 'ー' | 'ｰ' | '−' | '‐' | '‑' | '‒' | '–' | '—' | '―' => '-',
        '\u{3000}' => ' ',
        _ => c,
    }
}

/// How many digits (including the leading 0) a national number with this beginning has.
fn expected_length(national: &str) -> Result<(&'static str, usize), PhoneProblem> {
    const FOUR: [(&str, usize); 5] = [
        ("0120", 10),
        ("0570", 10),
        ("0180", 10),
        ("0990", 10),
        ("0800", 11),
    ];
    const THREE_ELEVEN: [&str; 6] = ["070", "080", "090", "050", "060", "020"];
    if national.starts_with("010") || national.starts_with("00") {
        return Err(PhoneProblem::InternationalPrefix(national[..3].to_string()));
    }
    if let Some((p, n)) = FOUR.iter().find(|(p, _)| national.starts_with(p)) {
        return Ok((p, *n));
    }
    if let Some(p) = THREE_ELEVEN.iter().find(|p| national.starts_with(*p)) {
        return Ok((p, 11));
    }
    Ok(("0 (a landline)", 10))
}

impl PhoneNumber {
    /// Accepts the ways Japanese staff lists write numbers: hyphens, spaces, an area code in
    /// brackets, full-width characters, or international `+81` with or without `(0)` (and
    /// `81` without the `+` when nothing else can be meant).
    pub fn parse(raw: &str) -> Result<Self, PhoneError> {
        let fail = |reason| PhoneError {
            raw: raw.trim().to_string(),
            reason,
        };
        let folded: String = raw.trim().chars().map(fold).collect();
        if folded.is_empty() {
            return Err(fail(PhoneProblem::Empty));
        }
        let mut digits = String::with_capacity(folded.len());
        for (i, c) in folded.char_indices() {
            match c {
                '0'..='9' => digits.push(c),
                '-' | ' ' | '(' | ')' => {}
                '+' if i == 0 => {}
                other => return Err(fail(PhoneProblem::BadChar(other))),
            }
        }
        let national = if folded.starts_with('+') {
            let Some(rest) = digits.strip_prefix("81") else {
                return Err(fail(PhoneProblem::NotJapanese));
            };
            // "+81 (0)90..." and the common slip "+81 090..." both carry the trunk 0;
            // a Japanese significant number never starts with 0, so dropping it is safe.
            format!("0{}", rest.strip_prefix('0').unwrap_or(rest))
        } else if digits.starts_with('0') {
            digits
        } else if digits.starts_with("81") && digits.len() >= 11 {
            return Self::country_code_without_plus(&digits)
                .ok_or_else(|| fail(PhoneProblem::CountryCodeWithoutPlus));
        } else {
            return Err(fail(PhoneProblem::NoLeadingZero));
        };
        let (prefix, expected) = expected_length(&national).map_err(fail)?;
        if national.len() != expected {
            return Err(fail(PhoneProblem::WrongLength {
                prefix: prefix.to_string(),
                found: national.len(),
                expected,
            }));
        }
        Ok(Self(format!("+81{}", &national[1..])))
    }

    /// `81-90-1234-5678`: the country code written without its `+` (Excel drops a leading
    /// `+` from a cell it reads as a number). Read as `+81` only when 81 is followed by a
    /// whole national number without its 0, 11 or 12 digits in all: a domestic number
    /// always starts with 0, and one that lost its 0 has 9 or 10 digits, so such digits
    /// cannot be anything else. With the trunk 0 kept (`81-090-…`) or any other length it
    /// is refused, pointing at `+81`, rather than guessed.
    fn country_code_without_plus(digits: &str) -> Option<Self> {
        let rest = digits.strip_prefix("81")?;
        if !(11..=12).contains(&digits.len()) || rest.starts_with('0') {
            return None;
        }
        let national = format!("0{rest}");
        let (_, expected) = expected_length(&national).ok()?;
        (national.len() == expected).then(|| Self(format!("+81{rest}")))
    }

    /// The E.164 form, e.g. `+819012345678`.
    pub fn as_e164(&self) -> &str {
        &self.0
    }

    /// The number as dialled inside Japan, grouped with hyphens for people to read aloud.
    pub fn national(&self) -> String {
        let n = format!("0{}", self.0.trim_start_matches("+81"));
        let groups: &[usize] = match n.as_bytes() {
            [b'0', b'1', b'2', b'0', ..]
            | [b'0', b'5', b'7', b'0', ..]
            | [b'0', b'1', b'8', b'0', ..]
            | [b'0', b'9', b'9', b'0', ..] => &[4, 3, 3],
            [b'0', b'8', b'0', b'0', ..] => &[4, 3, 4],
            [b'0', b'2' | b'5' | b'6' | b'7' | b'8' | b'9', b'0', ..] if n.len() == 11 => {
                &[3, 4, 4]
            }
            [b'0', b'3' | b'6', ..] => &[2, 4, 4],
            [b'0', b'9', b'2', b'0', ..] => &[4, 2, 4],
            [b'0', b'1', b'1', ..]
            | [b'0', b'4', b'5', ..]
            | [b'0', b'5', b'2', ..]
            | [b'0', b'7', b'5', ..]
            | [b'0', b'7', b'8', ..]
            | [b'0', b'8', b'2', ..]
            | [b'0', b'9', b'2', ..]
            | [b'0', b'2', b'5', b'2', ..] => &[3, 3, 4],
            _ => &[4, 2, 4],
        };
        let mut out = String::with_capacity(n.len() + 2);
        let mut at = 0;
        for (i, g) in groups.iter().enumerate() {
            let end = (at + g).min(n.len());
            if i > 0 {
                out.push('-');
            }
            out.push_str(&n[at..end]);
            at = end;
        }
        out.push_str(&n[at..]);
        out
    }

    /// A link the HQ web page puts on the call list so a click dials from a softphone.
    pub fn tel_uri(&self) -> String {
        format!("tel:{}", self.0)
    }

    /// True for numbers that reach a person's pocket (mobile, IP phone): worth calling first
    /// when someone has several numbers.
    pub fn is_mobile(&self) -> bool {
        ["+8170", "+8180", "+8190", "+8150"]
            .iter()
            .any(|p| self.0.starts_with(p))
            && !self.0.starts_with("+81800")
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for PhoneNumber {
    type Err = PhoneError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for PhoneNumber {
    type Error = PhoneError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<PhoneNumber> for String {
    fn from(p: PhoneNumber) -> String {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domestic_and_international_formats_normalise_to_e164() {
        let table = [
            ("0256-34-5525", "+81256345525", "0256-34-5525"),
            ("090-1234-5678", "+819012345678", "090-1234-5678"),
            ("(0256)34-5525", "+81256345525", "0256-34-5525"),
            ("0256 34 5525", "+81256345525", "0256-34-5525"),
            (
                "０９０－１２３４－５６７８",
                "+819012345678",
                "090-1234-5678",
            ),
            (
                "０９０ー１２３４ー５６７８",
                "+819012345678",
                "090-1234-5678",
            ),
            ("090−1234−5678", "+819012345678", "090-1234-5678"),
            ("（０２５６）３４－５５２５", "+81256345525", "0256-34-5525"),
            ("+81 90 1234 5678", "+819012345678", "090-1234-5678"),
            ("+81-(0)90-1234-5678", "+819012345678", "090-1234-5678"),
            (
                "＋８１ ９０ １２３４ ５６７８",
                "+819012345678",
                "090-1234-5678",
            ),
            ("+81 090 1234 5678", "+819012345678", "090-1234-5678"),
            ("  07012345678 ", "+817012345678", "070-1234-5678"),
            ("050-1234-5678", "+815012345678", "050-1234-5678"),
            ("0120-123-456", "+81120123456", "0120-123-456"),
            ("0800-123-4567", "+818001234567", "0800-123-4567"),
            ("03-1234-5678", "+81312345678", "03-1234-5678"),
            ("06 1234 5678", "+81612345678", "06-1234-5678"),
            ("025-228-1000", "+81252281000", "025-228-1000"),
            ("0258-39-2200", "+81258392200", "0258-39-2200"),
        ];
        for (input, e164, national) in table {
            let p = PhoneNumber::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(p.to_string(), e164, "{input}");
            assert_eq!(p.national(), national, "{input}");
            assert_eq!(p.tel_uri(), format!("tel:{e164}"));
        }
    }

    #[test]
    fn malformed_numbers_are_refused_with_the_reason() {
        let table = [
            ("", PhoneProblem::Empty),
            (
                "090-12-34",
                PhoneProblem::WrongLength {
                    prefix: "090".into(),
                    found: 7,
                    expected: 11,
                },
            ),
            (
                "090-1234-56789",
                PhoneProblem::WrongLength {
                    prefix: "090".into(),
                    found: 12,
                    expected: 11,
                },
            ),
            (
                "0256-34-552",
                PhoneProblem::WrongLength {
                    prefix: "0 (a landline)".into(),
                    found: 9,
                    expected: 10,
                },
            ),
            (
                "0120-123-4567",
                PhoneProblem::WrongLength {
                    prefix: "0120".into(),
                    found: 11,
                    expected: 10,
                },
            ),
            ("090-1234-567a", PhoneProblem::BadChar('a')),
            ("090.1234.5678", PhoneProblem::BadChar('.')),
            ("256-34-5525", PhoneProblem::NoLeadingZero),
            ("+1 212 555 0100", PhoneProblem::NotJapanese),
            ("90+1234", PhoneProblem::BadChar('+')),
            (
                "010-1-212-555-0100",
                PhoneProblem::InternationalPrefix("010".into()),
            ),
        ];
        for (input, reason) in table {
            let err = PhoneNumber::parse(input).expect_err(input);
            assert_eq!(err.reason, reason, "{input}");
        }
    }

    #[test]
    fn the_country_code_without_plus_is_read_when_the_rest_is_a_japanese_number() {
        for (input, national) in [
            ("81-90-1234-5678", "090-1234-5678"),
            ("819012345678", "090-1234-5678"),
            ("81 256 34 5525", "0256-34-5525"),
            ("８１－３－１２３４－５６７８", "03-1234-5678"),
        ] {
            let p = PhoneNumber::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(p.national(), national, "{input}");
        }
        // The trunk 0 kept (13 digits), a short or overlong rest, or a rest that is not a
        // Japanese number: refused, pointing at +81.
        for input in [
            "81-090-1234-5678",
            "81-90-1234-567",
            "81-90-1234-56789",
            "81-0256-34-5525",
        ] {
            let err = PhoneNumber::parse(input).expect_err(input);
            assert_eq!(err.reason, PhoneProblem::CountryCodeWithoutPlus, "{input}");
            assert!(err.to_string().contains("+81 90-1234-5678"), "{err}");
        }
        assert_eq!(
            PhoneNumber::parse("8123-4567").unwrap_err().reason,
            PhoneProblem::NoLeadingZero,
            "too short to hold a country code"
        );
    }

    #[test]
    fn error_message_shows_the_input_and_an_example() {
        let err = PhoneNumber::parse("090-12-34").unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"090-12-34\" is not a Japanese phone number (it has 7 digits but a number \
             starting 090 has 11; expected e.g. 090-1234-5678 or 0256-34-5525)"
        );
    }

    #[test]
    fn serde_uses_the_e164_string_and_validates_on_the_way_in() {
        let p = PhoneNumber::parse("0256-34-5525").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"+81256345525\"");
        let back: PhoneNumber = serde_json::from_str("\"+81256345525\"").unwrap();
        assert_eq!(back, p);
        assert!(serde_json::from_str::<PhoneNumber>("\"12\"").is_err());
    }

    #[test]
    fn mobile_numbers_are_recognised() {
        assert!(PhoneNumber::parse("090-1234-5678").unwrap().is_mobile());
        assert!(!PhoneNumber::parse("0256-34-5525").unwrap().is_mobile());
        assert!(!PhoneNumber::parse("0800-123-4567").unwrap().is_mobile());
    }
}
