//! Talk messages: one to a person, or one to a department's room, each a text with the roll
//! call's answers as quick-reply postback buttons. Talk shows no reads on this platform, so
//! the text asks for an answer.

use serde_json::{json, Value};

use super::{refusal, LineWorksProvider};
use crate::health::Component;
use crate::ids::RollCallId;
use crate::providers::{
    AnswerButton, BroadcastRequest, Broadcasted, OutboundMessage, ProviderError, Sent,
};
use crate::scenario::{ButtonsShown, RouteTraits};

/// Talk and room messages: no read receipt, quick-reply buttons.
const TALK: RouteTraits = RouteTraits {
    reads_visible: false,
    buttons: ButtonsShown::WithMessage,
};

/// The platform shows at most 13 quick-reply items.
pub const MAX_QUICK_REPLIES: usize = 13;

/// A text message holds at most this many characters (bot-send-text).
pub const MAX_TEXT_CHARS: usize = 2000;

/// Quick-reply labels longer than this are cut.
const MAX_LABEL_CHARS: usize = 20;

/// The postback data of an answer button: which roll call, which answer.
pub fn postback_data(rc: RollCallId, value: &str) -> String {
    format!("anpi:{}:{value}", rc.0)
}

/// Reads what [`postback_data`] wrote.
pub fn parse_postback(data: &str) -> Option<(RollCallId, String)> {
    let rest = data.strip_prefix("anpi:")?;
    let (rc, value) = rest.split_once(':')?;
    let rc = RollCallId::parse(rc).ok()?;
    (!value.is_empty()).then(|| (rc, value.to_string()))
}

/// The body of "Send messages (to a user)" and "(to a channel)": a text message
/// (<https://developers.worksmobile.com/en/docs/bot-send-text>: `content.type` "text",
/// `content.text` at most 2,000 characters) with a quick reply
/// (<https://developers.worksmobile.com/jp/docs/bot-quickreply>: at most 13 items, each
/// `{"action": ...}` with no `type` of its own) of postback actions
/// (<https://developers.worksmobile.com/jp/docs/bot-actionobject>: `label` at most 20
/// characters, `data` at most 300, `displayText` required in a quick reply, at most 300).
///
/// A quick reply rather than a button template: the Action Objects table allows postback
/// actions in quick replies but not in button templates (message, URI and copy only).
///
/// The reference is ambiguous about what a tap sends back: the Postback Event page
/// (bot-callback-postback) lists only carousels and rich menus as its sources, while the
/// Action Objects page says a postback action answers with a Postback Event wherever it is.
/// [`super::parse_callback`] takes both a `postback` event and a message event whose
/// `content.postback` holds the data.
fn message_body(rc: RollCallId, text: &str, buttons: &[AnswerButton]) -> Value {
    let items: Vec<Value> = buttons
        .iter()
        .take(MAX_QUICK_REPLIES)
        .map(|b| {
            let label: String = b.label.chars().take(MAX_LABEL_CHARS).collect();
            json!({"action": {"type": "postback", "label": label,
                              "data": postback_data(rc, &b.value), "displayText": b.label}})
        })
        .collect();
    let text: String = text.chars().take(MAX_TEXT_CHARS).collect();
    let mut content = json!({"type": "text", "text": text});
    if !items.is_empty() {
        content["quickReply"] = json!({ "items": items });
    }
    json!({ "content": content })
}

impl LineWorksProvider {
    /// Posts a message and classifies the answer: 201 (no body) is success.
    async fn post_message(&self, url: String, body: Value) -> Result<(), ProviderError> {
        let res = async {
            let resp = self.call(|| self.client.post(&url).json(&body)).await?;
            if resp.status().is_success() {
                return Ok(());
            }
            Err(refusal(resp).await)
        }
        .await;
        self.report(Component::Sends, &res);
        res
    }

    /// One talk message to one person ([`crate::providers::ChatProvider::send`]).
    pub(super) async fn send_talk(&self, msg: &OutboundMessage) -> Result<Sent, ProviderError> {
        let url = self.api(&[
            "bots",
            &self.settings.bot_id,
            "users",
            msg.to.as_str(),
            "messages",
        ]);
        let text = msg.asks.compose(&msg.text, TALK, &msg.buttons);
        self.post_message(url, message_body(msg.roll_call_id, &text, &msg.buttons))
            .await?;
        // 201 with no body: the platform gives no message id.
        Ok(Sent { message_id: None })
    }

    /// One talk message to a department's room (the `Rooms` route).
    pub(super) async fn room_message(
        &self,
        req: &BroadcastRequest,
    ) -> Result<Broadcasted, ProviderError> {
        let group = req.group.as_deref().unwrap_or_default();
        let channel =
            self.settings.rooms.get(group).ok_or_else(|| {
                ProviderError::Permanent(format!("no LINE WORKS room for {group:?}"))
            })?;
        let url = self.api(&[
            "bots",
            &self.settings.bot_id,
            "channels",
            channel,
            "messages",
        ]);
        let text = req.asks.compose(&req.text, TALK, &req.buttons);
        self.post_message(url, message_body(req.roll_call_id, &text, &req.buttons))
            .await?;
        Ok(Broadcasted::default())
    }
}
