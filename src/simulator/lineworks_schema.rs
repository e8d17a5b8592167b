//! The request bodies of the LINE WORKS API 2.0 operations anpi uses, checked field by field
//! as the public reference (developers.worksmobile.com, JP/EN/KR) documents them. The
//! stand-in ([`super::lineworks`]) answers 400 with the platform's error shape to whatever
//! fails here, so a wrong shape fails a test instead of a real roll call.
//!
//! Invariant: every check names the field at fault (`content.quickReply.items[3].action.label`)
//! and the rule it breaks; a field the reference does not document is refused as unknown.
//! Where the reference is silent or ambiguous, the comment at the check says so and what was
//! chosen.

use chrono::NaiveDate;
use serde_json::{Map, Value};

/// Text of a text message, and of each `i18nTexts[].text`
/// (<https://developers.worksmobile.com/en/docs/bot-send-text>: "Maximum length: 2,000").
pub const MAX_TEXT_CHARS: usize = 2000;
/// Quick reply items (<https://developers.worksmobile.com/jp/docs/bot-quickreply>: 最大 13 個).
pub const MAX_QUICK_REPLY_ITEMS: usize = 13;
/// A postback action's label (<https://developers.worksmobile.com/jp/docs/bot-actionobject>:
/// 最大20文字, 12 in image carousels, which anpi does not use).
pub const MAX_LABEL_CHARS: usize = 20;
/// A postback action's `data` and `displayText` (same page: 最大 300 文字).
pub const MAX_POSTBACK_CHARS: usize = 300;
/// `imageUrl` of a quick reply item (bot-quickreply: 最大文字数 1,000).
pub const MAX_IMAGE_URL_CHARS: usize = 1000;
/// Board post title and body (<https://developers.worksmobile.com/jp/reference/board-post-create>:
/// title 1..200, body 1..716800).
pub const MAX_POST_TITLE_CHARS: usize = 200;
pub const MAX_POST_BODY_CHARS: usize = 716_800;
/// `mustReadEndDate`: 必読終了日(最大30日).
pub const MAX_MUST_READ_DAYS: i64 = 30;
/// Languages of `i18nTexts` / `i18nLabels` (bot-send-text).
const LANGUAGES: [&str; 5] = ["ko_KR", "ja_JP", "zh_CN", "zh_TW", "en_US"];

/// What a checked message body carries, for the stand-in's scripted people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedMessage {
    pub text: String,
    /// `data` of each postback quick reply, in order.
    pub postbacks: Vec<String>,
}

/// A checked board post body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPost {
    pub title: String,
    pub body: String,
    /// `enableComment`, default true.
    pub enable_comment: bool,
    /// `mustReadEndDate`; without one the post is not must-read.
    pub must_read_end: Option<NaiveDate>,
    /// `sendNotifications`, default true.
    pub send_notifications: bool,
}

type Obj = Map<String, Value>;

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Obj, String> {
    v.as_object()
        .ok_or_else(|| format!("{path}: must be an object, not {}", kind(v)))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Refuses any field not in `allowed`.
fn only(o: &Obj, path: &str, allowed: &[&str]) -> Result<(), String> {
    match o.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "{}: unknown field (this operation takes {})",
            join(path, k),
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

/// A string of `min..=max` characters; `Ok(None)` when absent and not `required`.
fn string<'a>(
    o: &'a Obj,
    path: &str,
    key: &str,
    required: bool,
    min: usize,
    max: usize,
) -> Result<Option<&'a str>, String> {
    let at = join(path, key);
    match o.get(key) {
        None if required => Err(format!("{at}: required")),
        None => Ok(None),
        Some(Value::String(s)) => {
            let n = s.chars().count();
            if n < min {
                Err(format!("{at}: at least {min} characters, got {n}"))
            } else if n > max {
                Err(format!("{at}: at most {max} characters, got {n}"))
            } else {
                Ok(Some(s))
            }
        }
        Some(other) => Err(format!("{at}: must be a string, not {}", kind(other))),
    }
}

fn boolean(o: &Obj, path: &str, key: &str) -> Result<Option<bool>, String> {
    match o.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(format!(
            "{}: must be a boolean, not {}",
            join(path, key),
            kind(other)
        )),
    }
}

fn array<'a>(o: &'a Obj, path: &str, key: &str) -> Result<Option<&'a Vec<Value>>, String> {
    match o.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(other) => Err(format!(
            "{}: must be an array, not {}",
            join(path, key),
            kind(other)
        )),
    }
}

/// `[{language, <field>}]` lists (i18nTexts, i18nLabels, i18nDisplayTexts).
fn i18n(o: &Obj, path: &str, key: &str, field: &str, max: usize) -> Result<(), String> {
    let Some(items) = array(o, path, key)? else {
        return Ok(());
    };
    for (i, item) in items.iter().enumerate() {
        let at = format!("{}[{i}]", join(path, key));
        let item = object(item, &at)?;
        only(item, &at, &["language", field])?;
        let lang = string(item, &at, "language", true, 1, 16)?.unwrap_or_default();
        if !LANGUAGES.contains(&lang) {
            return Err(format!(
                "{at}.language: {lang:?} is not one of {}",
                LANGUAGES.join(", ")
            ));
        }
        string(item, &at, field, true, 1, max)?;
    }
    Ok(())
}

/// The body of "Send messages (to a user)" and "Send messages (to a channel)"
/// (<https://developers.worksmobile.com/en/docs/bot-user-message-send>,
/// <https://developers.worksmobile.com/en/docs/bot-channel-message-send>): `{"content": ...}`
/// with the message types of <https://developers.worksmobile.com/en/docs/bot-send-text>.
///
/// Only the text type is modelled (it is the only one anpi sends); its quick reply is the
/// common property of every message type (bot-quickreply), placed inside `content`. Any other
/// type is refused, saying the stand-in does not model it.
pub fn message(body: &Value) -> Result<CheckedMessage, String> {
    let top = object(body, "body")?;
    only(top, "", &["content"])?;
    let content = top.get("content").ok_or("content: required")?;
    let content = object(content, "content")?;
    let ty = string(content, "content", "type", true, 1, 32)?.unwrap_or_default();
    if ty != "text" {
        return Err(format!(
            "content.type: {ty:?} is not modelled by this stand-in (anpi sends \"text\")"
        ));
    }
    only(
        content,
        "content",
        &["type", "text", "i18nTexts", "quickReply"],
    )?;
    let text = string(content, "content", "text", true, 1, MAX_TEXT_CHARS)?
        .unwrap_or_default()
        .to_string();
    i18n(content, "content", "i18nTexts", "text", MAX_TEXT_CHARS)?;
    let postbacks = match content.get("quickReply") {
        None => Vec::new(),
        Some(q) => quick_reply(q, "content.quickReply")?,
    };
    Ok(CheckedMessage { text, postbacks })
}

/// A quick reply object (bot-quickreply): `items` required, at most 13. The reference gives
/// no minimum; an empty list is accepted.
fn quick_reply(q: &Value, path: &str) -> Result<Vec<String>, String> {
    let q = object(q, path)?;
    only(q, path, &["items"])?;
    let items = array(q, path, "items")?.ok_or(format!("{path}.items: required"))?;
    if items.len() > MAX_QUICK_REPLY_ITEMS {
        return Err(format!(
            "{path}.items: at most {MAX_QUICK_REPLY_ITEMS} items, got {}",
            items.len()
        ));
    }
    let mut data = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}.items[{i}]");
        let item = object(item, &at)?;
        only(
            item,
            &at,
            &[
                "imageUrl",
                "imageResourceId",
                "i18nImageUrl",
                "i18nImageResourceIds",
                "action",
            ],
        )?;
        if let Some(url) = string(item, &at, "imageUrl", false, 1, MAX_IMAGE_URL_CHARS)? {
            if !url.starts_with("https://") {
                return Err(format!("{at}.imageUrl: HTTPS only"));
            }
            if item.contains_key("imageResourceId") {
                return Err(format!(
                    "{at}: imageUrl and imageResourceId cannot both be given"
                ));
            }
        }
        string(item, &at, "imageResourceId", false, 1, 1000)?;
        let action = item.get("action").ok_or(format!("{at}.action: required"))?;
        data.extend(action_object(action, &format!("{at}.action"), true)?);
    }
    Ok(data)
}

/// An action object (<https://developers.worksmobile.com/jp/docs/bot-actionobject>). Only the
/// postback action is modelled: `type`, `label` (required, at most 20), `data` (required, at
/// most 300), `displayText` (at most 300, required in a quick reply), `i18nLabels`,
/// `i18nDisplayTexts`. Returns its data.
fn action_object(a: &Value, path: &str, in_quick_reply: bool) -> Result<Option<String>, String> {
    let a = object(a, path)?;
    let ty = string(a, path, "type", true, 1, 32)?.unwrap_or_default();
    if ty != "postback" {
        return Err(format!(
            "{path}.type: {ty:?} is not modelled by this stand-in (anpi sends \"postback\")"
        ));
    }
    only(
        a,
        path,
        &[
            "type",
            "label",
            "data",
            "displayText",
            "i18nLabels",
            "i18nDisplayTexts",
        ],
    )?;
    string(a, path, "label", true, 1, MAX_LABEL_CHARS)?;
    let data = string(a, path, "data", true, 1, MAX_POSTBACK_CHARS)?;
    string(
        a,
        path,
        "displayText",
        in_quick_reply,
        1,
        MAX_POSTBACK_CHARS,
    )?;
    i18n(a, path, "i18nLabels", "label", MAX_LABEL_CHARS)?;
    i18n(
        a,
        path,
        "i18nDisplayTexts",
        "displayText",
        MAX_POSTBACK_CHARS,
    )?;
    Ok(data.map(str::to_string))
}

/// The body of "Create a post"
/// (<https://developers.worksmobile.com/jp/reference/board-post-create>): `title`, `body`,
/// `enableComment`, `mustReadEndDate`, `sendNotifications`. `isMustRead` and
/// `mustReadPeriod` appear only in responses (board-post-get) and are refused here as unknown.
///
/// `mustReadDays` is still listed on the JP page, marked deprecated and due for removal in
/// spring 2025 in favour of `mustReadEndDate`; the EN and KR pages no longer list it, so it
/// is refused. "最大30日" does not say from when, nor in which time zone: this takes `today`
/// (the domain's date, Asia/Tokyo for a Japanese city) to `today + 30` inclusive, and refuses
/// an end date before today.
pub fn board_post(body: &Value, today: NaiveDate) -> Result<CheckedPost, String> {
    let o = object(body, "body")?;
    if o.contains_key("mustReadDays") {
        return Err(
            "mustReadDays: deprecated and withdrawn (spring 2025): give mustReadEndDate".into(),
        );
    }
    only(
        o,
        "",
        &[
            "title",
            "body",
            "enableComment",
            "mustReadEndDate",
            "sendNotifications",
        ],
    )?;
    let title = string(o, "", "title", true, 1, MAX_POST_TITLE_CHARS)?
        .unwrap_or_default()
        .to_string();
    let text = string(o, "", "body", true, 1, MAX_POST_BODY_CHARS)?
        .unwrap_or_default()
        .to_string();
    let enable_comment = boolean(o, "", "enableComment")?.unwrap_or(true);
    let send_notifications = boolean(o, "", "sendNotifications")?.unwrap_or(true);
    let must_read_end = match string(o, "", "mustReadEndDate", false, 10, 10)? {
        None => None,
        Some(s) => {
            let d = NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map_err(|_| format!("mustReadEndDate: {s:?} is not a date (YYYY-MM-DD)"))?;
            let days = (d - today).num_days();
            if days < 0 {
                return Err(format!("mustReadEndDate: {s} is before today ({today})"));
            }
            if days > MAX_MUST_READ_DAYS {
                return Err(format!(
                    "mustReadEndDate: {s} is {days} days ahead; at most {MAX_MUST_READ_DAYS}"
                ));
            }
            Some(d)
        }
    };
    Ok(CheckedPost {
        title,
        body: text,
        enable_comment,
        must_read_end,
        send_notifications,
    })
}

/// The query of "Get readers of a post"
/// (<https://developers.worksmobile.com/en/docs/board-post-reader-list>). The page documents
/// no query parameter at all, yet pages its answer by `responseMetaData.nextCursor` (up to
/// 5,000 readers a page, read and unread alike). Every other list operation of the Board API
/// takes that value back as the `cursor` query parameter, so `cursor` is accepted and nothing
/// else (in particular not `count`, which this operation does not document).
pub fn readers_query(pairs: &[(String, String)]) -> Result<Option<String>, String> {
    let mut cursor = None;
    for (k, v) in pairs {
        if k != "cursor" {
            return Err(format!(
                "{k}: unknown query parameter (readers takes only cursor, from \
                 responseMetaData.nextCursor)"
            ));
        }
        if cursor.replace(v.clone()).is_some() {
            return Err("cursor: given twice".into());
        }
    }
    Ok(cursor)
}

/// The form of the token request (<https://developers.worksmobile.com/jp/docs/auth-jwt>):
/// `assertion`, `grant_type` (`urn:ietf:params:oauth:grant-type:jwt-bearer`), `client_id`,
/// `client_secret`, `scope`, all required.
pub fn token_form(pairs: &[(String, String)]) -> Result<TokenForm, String> {
    const KEYS: [&str; 5] = [
        "assertion",
        "grant_type",
        "client_id",
        "client_secret",
        "scope",
    ];
    let mut f = TokenForm::default();
    for (k, v) in pairs {
        let slot = match k.as_str() {
            "assertion" => &mut f.assertion,
            "grant_type" => &mut f.grant_type,
            "client_id" => &mut f.client_id,
            "client_secret" => &mut f.client_secret,
            "scope" => &mut f.scope,
            _ => {
                return Err(format!(
                    "{k}: unknown parameter (the JWT grant takes {})",
                    KEYS.join(", ")
                ))
            }
        };
        if slot.replace(v.clone()).is_some() {
            return Err(format!("{k}: given twice"));
        }
    }
    for (k, v) in [
        ("assertion", &f.assertion),
        ("grant_type", &f.grant_type),
        ("client_id", &f.client_id),
        ("client_secret", &f.client_secret),
        ("scope", &f.scope),
    ] {
        if v.as_deref().is_none_or(str::is_empty) {
            return Err(format!("{k}: required"));
        }
    }
    if f.grant_type.as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return Err("grant_type: must be urn:ietf:params:oauth:grant-type:jwt-bearer".into());
    }
    Ok(f)
}

/// A token request that passed [`token_form`].
#[derive(Debug, Default)]
pub struct TokenForm {
    pub assertion: Option<String>,
    pub grant_type: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub scope: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 3, 11).unwrap()
    }

    fn tap(label: &str, data: &str) -> Value {
        json!({"action": {"type": "postback", "label": label, "data": data, "displayText": label}})
    }

    #[test]
    fn a_text_message_with_quick_replies_passes_and_gives_its_postbacks() {
        let body = json!({"content": {"type": "text", "text": "安否確認",
            "quickReply": {"items": [tap("無事", "anpi:1:safe"), tap("負傷", "anpi:1:injured")]}}});
        let m = message(&body).unwrap();
        assert_eq!(m.text, "安否確認");
        assert_eq!(m.postbacks, ["anpi:1:safe", "anpi:1:injured"]);
    }

    #[test]
    fn message_rules_name_the_field() {
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"content": {"type": "text"}}),
                "content.text: required",
            ),
            (
                json!({"content": {"type": "text", "text": "あ".repeat(2001)}}),
                "content.text: at most 2000",
            ),
            (
                json!({"content": {"type": "text", "text": ""}}),
                "content.text: at least 1",
            ),
            (
                json!({"content": {"type": "text", "text": 5}}),
                "content.text: must be a string",
            ),
            (
                json!({"content": {"type": "text", "text": "x", "color": "red"}}),
                "content.color: unknown field",
            ),
            (
                json!({"content": {"type": "text", "text": "x"}, "notify": true}),
                "notify: unknown field",
            ),
            (json!({}), "content: required"),
            (
                json!({"content": {"type": "text", "text": "x",
                "quickReply": {"items": (0..14).map(|i| tap("a", &format!("d{i}"))).collect::<Vec<_>>()}}}),
                "content.quickReply.items: at most 13",
            ),
            (
                json!({"content": {"type": "text", "text": "x",
                "quickReply": {"items": [tap(&"長".repeat(21), "d")]}}}),
                "content.quickReply.items[0].action.label: at most 20",
            ),
            (
                json!({"content": {"type": "text", "text": "x",
                "quickReply": {"items": [{"action": {"type": "postback", "label": "a", "data": "d"}}]}}}),
                "content.quickReply.items[0].action.displayText: required",
            ),
            (
                json!({"content": {"type": "text", "text": "x",
                "quickReply": {"items": [{"type": "action", "action": {"type": "postback", "label": "a", "data": "d", "displayText": "a"}}]}}}),
                "content.quickReply.items[0].type: unknown field",
            ),
            (
                json!({"content": {"type": "text", "text": "x",
                "quickReply": {"items": [tap("a", &"d".repeat(301))]}}}),
                "content.quickReply.items[0].action.data: at most 300",
            ),
        ];
        for (body, want) in cases {
            let e = message(&body).unwrap_err();
            assert!(e.starts_with(want), "{body}: {e}");
        }
    }

    #[test]
    fn the_documented_board_body_passes_and_the_old_one_is_refused() {
        let ok = json!({"title": "安否確認", "body": "読んでください", "enableComment": false,
                        "mustReadEndDate": "2026-03-12", "sendNotifications": true});
        let p = board_post(&ok, today()).unwrap();
        assert_eq!(p.must_read_end, NaiveDate::from_ymd_opt(2026, 3, 12));
        assert!(!p.enable_comment && p.send_notifications);

        let old = json!({"title": "安否確認", "body": "x", "enableComment": false,
                         "isMustRead": true, "mustReadPeriod": {"endDate": "2026-03-12"},
                         "sendNotifications": true});
        let e = board_post(&old, today()).unwrap_err();
        assert!(e.starts_with("isMustRead: unknown field"), "{e}");

        let far = json!({"title": "t", "body": "b", "mustReadEndDate": "2026-04-11"});
        assert!(board_post(&far, today())
            .unwrap_err()
            .contains("at most 30"));
        let edge = json!({"title": "t", "body": "b", "mustReadEndDate": "2026-04-10"});
        board_post(&edge, today()).unwrap();
        let past = json!({"title": "t", "body": "b", "mustReadEndDate": "2026-03-10"});
        assert!(board_post(&past, today())
            .unwrap_err()
            .contains("before today"));
        let bad = json!({"title": "t", "body": "b", "mustReadEndDate": "2026/03/12"});
        assert!(board_post(&bad, today())
            .unwrap_err()
            .contains("not a date"));
        let days = json!({"title": "t", "body": "b", "mustReadDays": 1});
        assert!(board_post(&days, today())
            .unwrap_err()
            .contains("deprecated"));
        let long = json!({"title": "t".repeat(201), "body": "b"});
        assert!(board_post(&long, today())
            .unwrap_err()
            .starts_with("title: at most 200"));
        let flag = json!({"title": "t", "body": "b", "enableComment": "no"});
        assert!(board_post(&flag, today())
            .unwrap_err()
            .contains("must be a boolean"));
    }

    #[test]
    fn readers_take_only_a_cursor_and_tokens_only_the_jwt_grant() {
        let q = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(readers_query(&q(&[])), Ok(None));
        assert_eq!(
            readers_query(&q(&[("cursor", "abc")])),
            Ok(Some("abc".into()))
        );
        assert!(readers_query(&q(&[("count", "5000")]))
            .unwrap_err()
            .starts_with("count: unknown"));

        let good = [
            ("assertion", "a.b.c"),
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("client_id", "id"),
            ("client_secret", "s"),
            ("scope", "bot"),
        ];
        token_form(&q(&good)).unwrap();
        assert!(token_form(&q(&good[..4]))
            .unwrap_err()
            .starts_with("scope: required"));
        let mut extra = good.to_vec();
        extra.push(("refresh_token", "x"));
        assert!(token_form(&q(&extra))
            .unwrap_err()
            .starts_with("refresh_token: unknown"));
    }
}
