//! The callback wire format: the signature the platform puts on what it posts to
//! `POST /callbacks/lineworks`, and what a verified body is (an answer, a reply, a sticker,
//! or an event anpi does not record). The platform never retries a callback.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::send::parse_postback;
use crate::ids::ChatHandle;
use crate::providers::http::excerpt;
use crate::providers::{InboundEvent, InboundKind};

/// Why a callback was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("missing or wrong X-WORKS-BotId")]
    WrongBot,
    #[error("missing or invalid X-WORKS-Signature")]
    BadSignature,
    #[error("malformed callback body: {0}")]
    Malformed(String),
}

impl CallbackError {
    /// The metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::WrongBot => "wrong_bot",
            Self::BadSignature => "bad_signature",
            Self::Malformed(_) => "malformed",
        }
    }
}

/// base64(HMAC-SHA256(bot secret, body)): what the platform puts in `X-WORKS-Signature`.
pub fn sign(bot_secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(bot_secret.as_bytes()).expect("HMAC takes any key size");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks the bot id and the signature (constant time) of a callback.
pub fn verify(
    bot_id: &str,
    bot_secret: &str,
    header_bot: Option<&str>,
    header_sig: Option<&str>,
    body: &[u8],
) -> Result<(), CallbackError> {
    use subtle::ConstantTimeEq;
    let got_bot = header_bot.ok_or(CallbackError::WrongBot)?;
    if !bool::from(got_bot.trim().as_bytes().ct_eq(bot_id.as_bytes())) {
        return Err(CallbackError::WrongBot);
    }
    let sig = header_sig.ok_or(CallbackError::BadSignature)?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig.trim())
        .map_err(|_| CallbackError::BadSignature)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(bot_secret.as_bytes()).expect("HMAC takes any key size");
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&sig)
        .map_err(|_| CallbackError::BadSignature)
}

#[derive(Deserialize)]
struct CallbackBody {
    #[serde(rename = "type")]
    kind: String,
    source: CallbackSource,
    #[serde(rename = "issuedTime")]
    issued_time: Option<DateTime<Utc>>,
    content: Option<Value>,
    data: Option<String>,
}

#[derive(Deserialize)]
struct CallbackSource {
    #[serde(rename = "userId")]
    user_id: Option<String>,
}

/// The largest callback body accepted. The biggest event the bot callback documents is a
/// text message of at most 2,000 characters (bot-callback-message, bot-send-text); JSON-escaped
/// as `\uXXXX` pairs that is under 24 KB with its envelope, so 64 KiB is generous and a
/// megabyte-sized body is refused (413) before it is read whole.
pub const CALLBACK_BODY_LIMIT: usize = 64 * 1024;

/// What a verified callback body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Something from a person anpi records.
    Event(InboundEvent),
    /// An event anpi does not use (join, leave, a postback of another bot): logged, not stored.
    Ignored {
        /// The callback's `type`.
        kind: String,
        /// Who sent it, when the body says.
        from: Option<String>,
        /// Why it is not used.
        why: String,
    },
}

impl Parsed {
    /// The event, if it is one.
    pub fn into_event(self) -> Option<InboundEvent> {
        match self {
            Self::Event(e) => Some(e),
            Self::Ignored { .. } => None,
        }
    }
}

/// Turns a verified callback body into an event, or says why it is not one (event types anpi
/// does not use, a postback without anpi's prefix). The event id is a hash of the body, so
/// the same callback delivered twice is one event. `occurred_at` is the platform's
/// `issuedTime` (when the platform says the person acted); the store records its own receipt
/// time beside it.
pub fn parse_callback(body: &[u8], received_at: DateTime<Utc>) -> Result<Parsed, CallbackError> {
    let cb: CallbackBody =
        serde_json::from_slice(body).map_err(|e| CallbackError::Malformed(e.to_string()))?;
    let event_id = format!("lw-cb:{:x}", Sha256::digest(body));
    let occurred_at = cb.issued_time.unwrap_or(received_at);
    let answer = |data: &str| {
        parse_postback(data).map(|(rc, value)| (Some(rc), InboundKind::Answer { value }))
    };
    let ignored = |why: String| Parsed::Ignored {
        kind: cb.kind.clone(),
        from: cb.source.user_id.clone(),
        why,
    };
    let parsed = match cb.kind.as_str() {
        "postback" => {
            let data = cb
                .data
                .as_deref()
                .ok_or_else(|| CallbackError::Malformed("postback without data".into()))?;
            match answer(data) {
                Some(a) => Some(a),
                None => {
                    return Ok(ignored(format!(
                        "postback data without anpi's prefix: {:?}",
                        excerpt(data)
                    )))
                }
            }
        }
        "message" => {
            let content = cb
                .content
                .as_ref()
                .ok_or_else(|| CallbackError::Malformed("message without content".into()))?;
            // A tap on one of anpi's buttons is that answer; anything else the person sends
            // (text, a sticker, a photo, another bot's button) is a reply all the same.
            let postback = content.get("postback").and_then(Value::as_str);
            let tap = postback.and_then(answer);
            if let (Some(data), None) = (postback, &tap) {
                tracing::info!(
                    user = cb.source.user_id.as_deref().unwrap_or("?"),
                    data = %excerpt(data),
                    "LINE WORKS message with a postback without anpi's prefix: kept as a reply"
                );
            }
            if tap.is_some() {
                tap
            } else {
                match content.get("type").and_then(Value::as_str) {
                    Some("text") => content.get("text").and_then(Value::as_str).map(|t| {
                        (
                            None,
                            InboundKind::Reply {
                                text: t.to_string(),
                            },
                        )
                    }),
                    Some("sticker") => {
                        let id = format!(
                            "{}/{}",
                            content
                                .get("packageId")
                                .map(|v| v.to_string().trim_matches('"').to_string())
                                .unwrap_or_default(),
                            content
                                .get("stickerId")
                                .map(|v| v.to_string().trim_matches('"').to_string())
                                .unwrap_or_default()
                        );
                        Some((None, InboundKind::Sticker { id }))
                    }
                    Some(other) => Some((
                        None,
                        InboundKind::Reply {
                            text: format!("[{other}]"),
                        },
                    )),
                    None => None,
                }
            }
        }
        _ => None,
    };
    let Some((roll_call_id, kind)) = parsed else {
        return Ok(ignored("an event type anpi does not record".into()));
    };
    let user = cb
        .source
        .user_id
        .clone()
        .ok_or_else(|| CallbackError::Malformed("no source.userId".into()))?;
    let from = ChatHandle::parse(&user).map_err(|e| CallbackError::Malformed(e.to_string()))?;
    Ok(Parsed::Event(InboundEvent {
        event_id,
        roll_call_id,
        from,
        kind,
        occurred_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RollCallId;

    #[test]
    fn callbacks_verify_and_parse() {
        let body = r#"{"type":"message","source":{"userId":"u1"},"issuedTime":"2026-03-11T05:47:00.000Z","content":{"type":"text","text":"無事です"}}"#.as_bytes();
        let sig = sign("s3cret", body);
        assert_eq!(verify("b1", "s3cret", Some("b1"), Some(&sig), body), Ok(()));
        assert_eq!(
            verify("b1", "s3cret", Some("b2"), Some(&sig), body),
            Err(CallbackError::WrongBot)
        );
        assert_eq!(
            verify("b1", "other", Some("b1"), Some(&sig), body),
            Err(CallbackError::BadSignature)
        );
        assert_eq!(
            verify("b1", "s3cret", Some("b1"), None, body),
            Err(CallbackError::BadSignature)
        );
        let e = parse_callback(body, Utc::now())
            .unwrap()
            .into_event()
            .unwrap();
        assert_eq!(
            e.kind,
            InboundKind::Reply {
                text: "無事です".into()
            }
        );
        assert_eq!(e.roll_call_id, None);
        assert!(e.event_id.starts_with("lw-cb:"));
        assert_eq!(
            parse_callback(body, Utc::now())
                .unwrap()
                .into_event()
                .unwrap()
                .event_id,
            e.event_id
        );

        let tap = r#"{"type":"message","source":{"userId":"u1"},"content":{"type":"text","text":"無事","postback":"anpi:9:safe"}}"#.as_bytes();
        let e = parse_callback(tap, Utc::now())
            .unwrap()
            .into_event()
            .unwrap();
        assert_eq!(
            e.kind,
            InboundKind::Answer {
                value: "safe".into()
            }
        );
        assert_eq!(e.roll_call_id, Some(RollCallId(9)));

        let sticker = br#"{"type":"message","source":{"userId":"u1"},"content":{"type":"sticker","packageId":"1","stickerId":"2"}}"#;
        assert!(matches!(
            parse_callback(sticker, Utc::now())
                .unwrap()
                .into_event()
                .unwrap()
                .kind,
            InboundKind::Sticker { .. }
        ));
        // Another bot's button, or a photo: a reply all the same.
        let foreign = r#"{"type":"message","source":{"userId":"u1"},"content":{"type":"text","text":"はい","postback":"other-bot:1"}}"#.as_bytes();
        assert_eq!(
            parse_callback(foreign, Utc::now())
                .unwrap()
                .into_event()
                .unwrap()
                .kind,
            InboundKind::Reply {
                text: "はい".into()
            }
        );
        let photo = br#"{"type":"message","source":{"userId":"u1"},"content":{"type":"image","resourceId":"r1"}}"#;
        assert_eq!(
            parse_callback(photo, Utc::now())
                .unwrap()
                .into_event()
                .unwrap()
                .kind,
            InboundKind::Reply {
                text: "[image]".into()
            }
        );
        let leave = br#"{"type":"leave","source":{"userId":"u1"}}"#;
        assert!(matches!(
            parse_callback(leave, Utc::now()),
            Ok(Parsed::Ignored { kind, .. }) if kind == "leave"
        ));
        // Another bot's postback: not anpi's, said why.
        let other = br#"{"type":"postback","source":{"userId":"u1"},"data":"action=buy"}"#;
        match parse_callback(other, Utc::now()).unwrap() {
            Parsed::Ignored { why, from, .. } => {
                assert!(why.contains("prefix"), "{why}");
                assert_eq!(from.as_deref(), Some("u1"));
            }
            e => panic!("{e:?}"),
        }
        // The platform's time travels as the event's time.
        let at = parse_callback(body, Utc::now())
            .unwrap()
            .into_event()
            .unwrap()
            .occurred_at;
        assert_eq!(at.to_rfc3339(), "2026-03-11T05:47:00+00:00");
        assert!(matches!(
            parse_callback(b"[]", Utc::now()),
            Err(CallbackError::Malformed(_))
        ));
        assert!(matches!(
            parse_callback(
                br#"{"type":"postback","source":{"userId":"u1"}}"#,
                Utc::now()
            ),
            Err(CallbackError::Malformed(_))
        ));
    }
}
