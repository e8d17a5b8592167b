//! What a reply's text answers: a reply that starts with an option's number is that answer,
//! anything else is a free reply. The numbers are the ones the check's text gave its options.

use unicode_normalization::UnicodeNormalization;

use crate::providers::InboundKind;

/// What HQ reads for a reply anpi cannot decrypt.
pub const UNREADABLE: &str =
    "暗号化された返信（anpi には読めません）/ encrypted reply: anpi cannot read it";

/// A reply's text: one that starts with an option's number ("1", "１", "①", "1 無事です",
/// "1. ok") is that answer; anything else is a free reply.
pub(super) fn reply_kind(body: &str, values: &[String]) -> InboundKind {
    // A rich reply quotes the original in lines starting with "> ", then a blank line.
    let own: Vec<&str> = body
        .lines()
        .skip_while(|l| l.starts_with('>'))
        .skip_while(|l| l.trim().is_empty())
        .collect();
    let text = own.join("\n").trim().to_string();
    if let Some(value) = option_number(&text).and_then(|n| option(values, n)) {
        return InboundKind::Answer { value };
    }
    InboundKind::Reply { text }
}

/// The value of option `n` (numbered from 1).
pub(super) fn option(values: &[String], n: usize) -> Option<String> {
    n.checked_sub(1).and_then(|i| values.get(i)).cloned()
}

/// The option number `text` starts with: a circled digit (①, ❶) whatever follows, or digits
/// in any width (1, １, a keycap 1️⃣) followed by nothing, a space or punctuation, so that
/// "1時間後に行きます" is not option 1.
pub(super) fn option_number(text: &str) -> Option<usize> {
    let text = text.trim();
    let first = text.chars().next()?;
    let circled = match first {
        '\u{2460}'..='\u{2473}' => Some(first as u32 - 0x2460 + 1),
        '\u{2776}'..='\u{277F}' => Some(first as u32 - 0x2776 + 1),
        '\u{2780}'..='\u{2789}' => Some(first as u32 - 0x2780 + 1),
        '\u{278A}'..='\u{2793}' => Some(first as u32 - 0x278A + 1),
        _ => None,
    };
    if let Some(n) = circled {
        return Some(n as usize);
    }
    let norm: String = text.nfkc().collect();
    let digits: String = norm.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() || digits.len() > 2 {
        return None;
    }
    let rest = norm[digits.len()..].trim_start_matches(['\u{FE0F}', '\u{20E3}']);
    match rest.chars().next() {
        None => {}
        Some(c) if c.is_whitespace() || c.is_ascii_punctuation() => {}
        Some('、' | '。' | '：' | '・' | '）' | '番') => {}
        Some(_) => return None,
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_with_a_number_are_answers_and_quotes_are_stripped() {
        let values = vec!["safe".to_string(), "injured".to_string()];
        assert_eq!(
            reply_kind("1", &values),
            InboundKind::Answer {
                value: "safe".into()
            }
        );
        assert_eq!(
            reply_kind("> <@anpi:hs> 【安否確認】...\n\n１", &values),
            InboundKind::Answer {
                value: "safe".into()
            }
        );
        assert_eq!(
            reply_kind("3", &values),
            InboundKind::Reply { text: "3".into() }
        );
        assert_eq!(
            reply_kind("家族も無事です", &values),
            InboundKind::Reply {
                text: "家族も無事です".into()
            }
        );
    }

    #[test]
    fn leading_circled_and_full_width_digits_are_options_but_times_are_not() {
        let values: Vec<String> = ["safe", "can_work", "cannot_work", "injured"]
            .map(String::from)
            .to_vec();
        let answer = |v: &str| InboundKind::Answer { value: v.into() };
        for (text, want) in [
            ("1 無事です", "safe"),
            ("１　無事です", "safe"),
            ("①", "safe"),
            ("①無事", "safe"),
            ("❹", "injured"),
            ("4.", "injured"),
            ("２、出動できます", "can_work"),
            ("1️⃣", "safe"),
        ] {
            assert_eq!(reply_kind(text, &values), answer(want), "{text}");
        }
        for text in ["1時間後に行きます", "10", "5", "12345", "無事 1"] {
            assert_eq!(
                reply_kind(text, &values),
                InboundKind::Reply { text: text.into() },
                "{text}"
            );
        }
    }
}
