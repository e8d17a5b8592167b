//! One check to one person: a `m.text` in their DM room, under a transaction id made from the
//! delivery, so that a retry is the same send and a re-send is a second message.

use reqwest::header::AUTHORIZATION;
use serde_json::{json, Value};

use super::client::HOMESERVER;
use super::prepare::Unreachable;
use super::state::CheckRecord;
use super::{MatrixProvider, ROLL_CALL_KEY};
use crate::providers::{ChatProvider, OutboundMessage, ProviderError, Sent};

impl MatrixProvider {
    /// [`crate::providers::ChatProvider::send`]: the person's room, whether it reaches them,
    /// the send, and the check's record for the receipts that come back.
    pub(super) async fn send_check(&self, msg: &OutboundMessage) -> Result<Sent, ProviderError> {
        let Some(room) = self.dm_room(&msg.to).await? else {
            if !self.user_exists(msg.to.as_str()).await? {
                return Err(ProviderError::Permanent(format!(
                    "{}: {}",
                    Unreachable::UnknownUser,
                    msg.to
                )));
            }
            return Err(ProviderError::Permanent(format!(
                "no Matrix DM room with {} (run `anpi matrix prepare`)",
                msg.to
            )));
        };
        // A room the person is not in reaches no one: they go on the call list now, with the
        // reason, instead of waiting out the deadline as "never read". (The homeserver accepts
        // a post to a room nobody else is in.) A re-send skips the check: it follows a send
        // that found them in the room.
        if !msg.resend {
            if let Some(why) = self.unreachable(&room, msg.to.as_str()).await? {
                return Err(ProviderError::Permanent(format!(
                    "{why}: {} (DM room {room}; `anpi matrix prepare` lists and re-invites)",
                    msg.to
                )));
            }
        }
        // One transaction id per delivery: a retry of the same delivery is the same send.
        // A re-send is a second message, not a retry of the first.
        let again = if msg.resend { "-again" } else { "" };
        let txn = format!("anpi-{}-{}{again}", msg.roll_call_id, msg.delivery_id);
        let content = json!({
            "msgtype": "m.text",
            "body": msg.asks.compose(
                &msg.text,
                crate::scenario::RouteTraits::direct(&self.capabilities()),
                &msg.buttons
            ),
            ROLL_CALL_KEY: msg.roll_call_id.0,
        });
        let resp = self
            .client
            .put(self.url(&["rooms", &room, "send", "m.room.message", &txn]))
            .header(AUTHORIZATION, self.auth())
            .json(&content)
            .send()
            .await
            .map_err(|e| HOMESERVER.transport_error(e))?;
        if !resp.status().is_success() {
            return Err(self.refused(resp, "send").await);
        }
        // Accepted: from here on nothing may turn this into a failure.
        self.token_accepted();
        let event_id = match resp.bytes().await {
            Ok(b) => serde_json::from_slice::<Value>(&b)
                .ok()
                .and_then(|v| v["event_id"].as_str().map(str::to_string)),
            Err(_) => None,
        };
        if let Some(ev) = &event_id {
            let rec = CheckRecord {
                rc: msg.roll_call_id.0,
                to: Some(msg.to.as_str().to_string()),
                values: msg.buttons.iter().map(|b| b.value.clone()).collect(),
                ts: None,
                prev: None,
            };
            if let Err(e) = self.remember_sent_check(&room, ev, rec).await {
                tracing::warn!(error = %e, "sent, but could not remember the check's event");
            }
        }
        Ok(Sent {
            message_id: event_id,
        })
    }
}
