//! Identifiers that cross module boundaries: who a person is ([`StaffId`]), how a chat
//! platform addresses them ([`ChatHandle`]) and which roll call a thing belongs to
//! ([`RollCallId`]). Raw strings become these at the edges (files, CLI, HTTP, database) and
//! nowhere else.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} is longer than {max} characters")]
    TooLong {
        what: &'static str,
        value: String,
        max: usize,
    },
    #[error("{what} {value:?} contains {ch:?}; use letters, digits, '-', '_', '.', '@' or ':'")]
    BadChar {
        what: &'static str,
        value: String,
        ch: char,
    },
    #[error("roll call id {0:?} is not a positive whole number")]
    BadRollCall(String),
}

fn check(what: &'static str, raw: &str, max: usize) -> Result<String, IdError> {
    let v = raw.trim();
    if v.is_empty() {
        return Err(IdError::Empty { what });
    }
    if v.chars().count() > max {
        return Err(IdError::TooLong {
            what,
            value: v.to_string(),
            max,
        });
    }
    if let Some(ch) = v
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || matches!(c, '/' | '\\' | '"' | '\''))
    {
        return Err(IdError::BadChar {
            what,
            value: v.to_string(),
            ch,
        });
    }
    Ok(v.to_string())
}

/// A member of staff's (or a shelter phone's) id in the contacts file: the HR number, say.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StaffId(String);

impl StaffId {
    /// The id exactly as given (trimmed). Ids read back from the database, the JSON import
    /// and URL paths come through here: what was stored is what is read back, so a row or a
    /// document stored before ids were folded still matches itself.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        check("staff id", raw, 64).map(Self)
    }

    /// An id a person typed (the contacts files, the daemon configuration, the CLI), in NFKC
    /// form: `１００１` typed with the IME on is `1001`, and `Ｓ０００１` is `S0001`.
    pub fn typed(raw: &str) -> Result<Self, IdError> {
        if raw.is_ascii() {
            // ASCII is its own NFKC form, and most ids (HR numbers) are ASCII.
            return Self::parse(raw);
        }
        let folded: String = raw.nfkc().collect();
        Self::parse(&folded)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A person's address on one chat platform (a LINE WORKS user id, a Matrix user id, a
/// simulator handle). Only this and the message ever go to a chat provider.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ChatHandle(String);

impl ChatHandle {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        check("chat id", raw, 255).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A roll call's number, given by the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RollCallId(pub i64);

impl RollCallId {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let t = raw.trim().trim_start_matches('#');
        match t.parse::<i64>() {
            Ok(n) if n > 0 => Ok(Self(n)),
            _ => Err(IdError::BadRollCall(raw.to_string())),
        }
    }
}

macro_rules! string_id {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl FromStr for $t {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
        impl TryFrom<String> for $t {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
    };
}
string_id!(StaffId);
string_id!(ChatHandle);

impl fmt::Display for RollCallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for RollCallId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staff_id_is_trimmed_and_rejects_blanks_and_spaces() {
        assert_eq!(StaffId::parse(" S0001 ").unwrap().as_str(), "S0001");
        assert_eq!(
            StaffId::parse("  ").unwrap_err(),
            IdError::Empty { what: "staff id" }
        );
        assert!(matches!(
            StaffId::parse("S 1"),
            Err(IdError::BadChar { ch: ' ', .. })
        ));
    }

    #[test]
    fn staff_id_typed_in_full_width_is_the_same_id() {
        assert_eq!(
            StaffId::typed("１００１").unwrap(),
            StaffId::typed("1001").unwrap()
        );
        assert_eq!(StaffId::typed("　Ｓ０００１　").unwrap().as_str(), "S0001");
        assert_eq!(StaffId::typed("S0001").unwrap().as_str(), "S0001");
    }

    #[test]
    fn staff_id_read_back_is_exactly_what_was_stored() {
        let stored: StaffId = serde_json::from_str("\"Ｓ０００１\"").unwrap();
        assert_eq!(stored.as_str(), "Ｓ０００１");
        assert_ne!(stored, StaffId::parse("S0001").unwrap());
        assert_eq!(serde_json::to_string(&stored).unwrap(), "\"Ｓ０００１\"");
        // Two ids that fold to one stay two when read back.
        assert_ne!(
            StaffId::parse("１００１").unwrap(),
            StaffId::parse("1001").unwrap()
        );
    }

    #[test]
    fn staff_id_stored_with_full_width_slashes_reads_back() {
        // ／＼＂＇ fold to characters `check` refuses; an id stored with them before ids
        // were folded must still read back.
        for raw in ["A／1", "A＼1", "A＂1", "A＇1"] {
            let stored: StaffId = serde_json::from_str(&format!("{raw:?}")).unwrap();
            assert_eq!(stored.as_str(), raw);
        }
        // Typed today, the same id is refused with the character named.
        assert!(matches!(
            StaffId::typed("A／1"),
            Err(IdError::BadChar { ch: '/', .. })
        ));
    }

    #[test]
    fn chat_handle_accepts_matrix_and_lineworks_forms() {
        ChatHandle::parse("@tanaka:city.example").unwrap();
        ChatHandle::parse("tanaka@city-sanjo").unwrap();
        ChatHandle::parse("b4e1c2d0-1111-2222-3333-444455556666").unwrap();
    }

    #[test]
    fn roll_call_id_is_positive() {
        assert_eq!(RollCallId::parse("#12").unwrap(), RollCallId(12));
        assert!(RollCallId::parse("0").is_err());
        assert!(RollCallId::parse("abc").is_err());
    }
}
