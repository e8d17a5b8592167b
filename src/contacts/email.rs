//! E-mail addresses for the optional second stage (summary or re-send by mail).
//!
//! Invariant: an [`EmailAddress`] has exactly one `@`, a non-empty local part, a dotted
//! domain without empty labels, no whitespace or non-ASCII characters, and a lowercased
//! domain. It is a sanity check for typos in a staff list, not RFC 5322.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An e-mail address as the mail server will be given it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

/// Why an address was refused, with what was typed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{raw:?} is not an e-mail address ({reason}; expected e.g. tanaka@city.example.jp)")]
pub struct EmailError {
    pub raw: String,
    pub reason: &'static str,
}

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let v = raw.trim();
        let fail = |reason| EmailError {
            raw: v.to_string(),
            reason,
        };
        if v.is_empty() {
            return Err(fail("it is empty"));
        }
        if v.contains('＠') {
            return Err(fail("it has a full-width ＠; type it in half-width"));
        }
        if v.chars().any(char::is_whitespace) {
            return Err(fail("it contains a space"));
        }
        // Full-width letters and dots typed by a Japanese input method look right on screen
        // and bounce; refusing them here saves a failed second stage during a disaster.
        if !v.is_ascii() || v.chars().any(|c| c.is_ascii_control()) {
            return Err(fail(
                "it contains a full-width or non-ASCII character; type it in half-width",
            ));
        }
        let mut parts = v.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(fail("it must contain exactly one @"));
        };
        if local.is_empty() {
            return Err(fail("nothing before the @"));
        }
        if !domain.contains('.') || domain.split('.').any(str::is_empty) {
            return Err(fail(
                "the part after the @ must be a domain like city.example.jp",
            ));
        }
        Ok(Self(format!("{local}@{}", domain.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for EmailAddress {
    type Err = EmailError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for EmailAddress {
    type Error = EmailError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<EmailAddress> for String {
    fn from(e: EmailAddress) -> String {
        e.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_is_lowercased_and_local_part_kept() {
        let e = EmailAddress::parse("  Tanaka.Ichiro@City.Example.JP ").unwrap();
        assert_eq!(e.to_string(), "Tanaka.Ichiro@city.example.jp");
    }

    #[test]
    fn malformed_addresses_are_refused_with_the_reason() {
        let table = [
            ("", "it is empty"),
            ("tanaka", "it must contain exactly one @"),
            ("a@b@city.example.jp", "it must contain exactly one @"),
            ("@city.example.jp", "nothing before the @"),
            (
                "tanaka@localhost",
                "the part after the @ must be a domain like city.example.jp",
            ),
            (
                "tanaka@city..jp",
                "the part after the @ must be a domain like city.example.jp",
            ),
            ("tanaka @city.example.jp", "it contains a space"),
            (
                "tanaka＠city.example.jp",
                "it has a full-width ＠; type it in half-width",
            ),
            (
                "ｔａｎａｋａ@city.example.jp",
                "it contains a full-width or non-ASCII character; type it in half-width",
            ),
        ];
        for (input, reason) in table {
            let err = EmailAddress::parse(input).expect_err(input);
            assert_eq!(err.reason, reason, "{input}");
        }
    }

    #[test]
    fn serde_round_trips_as_a_string() {
        let e = EmailAddress::parse("sato@city.example.jp").unwrap();
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, "\"sato@city.example.jp\"");
        assert_eq!(serde_json::from_str::<EmailAddress>(&json).unwrap(), e);
        assert!(serde_json::from_str::<EmailAddress>("\"nope\"").is_err());
    }
}
