//! What the adapter remembers between requests, kept in the store's provider state (provider
//! `matrix`). Every read and write of it is in this file:
//! - `room:<user id>` -> the DM room id (written by `anpi matrix prepare`, read by every send);
//! - `event:<event id>` -> the roll call a sent check belongs to (a cache: the check's own
//!   content also carries `org.anpi.roll_call`, so a lost write costs a lookup, not a receipt);
//! - `latest:<room id>` -> the newest check sent in that room, so that a receipt on any later
//!   event (receipts only move forward) still confirms it. Each check also names the check
//!   sent before it in the room (`prev`), so a receipt on a later check (an announcement after
//!   a safety check, or two roll calls at once) confirms the earlier ones too;
//! - `left:<user id>` -> set when `prepare` invited someone again after they left, so that a
//!   send before they accept says they left;
//! - `encrypted_rooms` -> the rooms found end-to-end encrypted (person -> room), for the
//!   warning `anpi serve` gives at start.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{MatrixProvider, NAME};
use crate::ids::ChatHandle;
use crate::providers::ProviderError;
use crate::store::StoreError;

/// What one check in a room is, as remembered for the receipts that come back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct CheckRecord {
    pub(super) rc: i64,
    /// The person the check went to, when known.
    #[serde(default)]
    pub(super) to: Option<String>,
    /// The answer values in the order they were numbered in the text ("1" = values[0]).
    #[serde(default)]
    pub(super) values: Vec<String>,
    /// The homeserver's `origin_server_ts`, filled in the first time it is needed.
    #[serde(default)]
    pub(super) ts: Option<i64>,
    /// The check sent before this one in the same room, when there was one.
    #[serde(default)]
    pub(super) prev: Option<String>,
}

fn room_key(user: &str) -> String {
    format!("room:{user}")
}

fn event_key(event: &str) -> String {
    format!("event:{event}")
}

fn latest_key(room: &str) -> String {
    format!("latest:{room}")
}

/// Set when `prepare` invited someone again after they left: until they accept, a send says
/// they left.
fn left_key(user: &str) -> String {
    format!("left:{user}")
}

/// The rooms known to be encrypted, as a JSON map person -> room.
const ENCRYPTED_KEY: &str = "encrypted_rooms";

impl MatrixProvider {
    async fn get_state(&self, key: &str) -> Result<Option<String>, ProviderError> {
        self.store
            .provider_state(NAME, key)
            .await
            .map_err(store_error)
    }

    async fn set_state(&self, key: &str, value: &str) -> Result<(), ProviderError> {
        self.store
            .set_provider_state(NAME, key, value, self.clock.now_millis())
            .await
            .map_err(store_error)
    }

    /// The DM room anpi uses for `user`, if `prepare` made one.
    pub async fn dm_room(&self, user: &ChatHandle) -> Result<Option<String>, ProviderError> {
        self.get_state(&room_key(user.as_str())).await
    }

    /// Records the DM room `prepare` made for `user`.
    pub(super) async fn set_dm_room(&self, user: &str, room: &str) -> Result<(), ProviderError> {
        self.set_state(&room_key(user), room).await
    }

    /// Notes that `user` left their room and was invited again (see [`Self::has_left`]).
    pub(super) async fn mark_left(&self, user: &str) -> Result<(), ProviderError> {
        self.set_state(&left_key(user), "1").await
    }

    /// Whether `user` was invited again after leaving: until they accept, they left.
    pub(super) async fn has_left(&self, user: &str) -> Result<bool, ProviderError> {
        Ok(self.get_state(&left_key(user)).await?.is_some())
    }

    /// The rooms `prepare` (or the event feed) found encrypted, person -> room.
    pub async fn encrypted_rooms(&self) -> Result<HashMap<String, String>, ProviderError> {
        Ok(self
            .get_state(ENCRYPTED_KEY)
            .await?
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default())
    }

    /// Replaces the encrypted rooms with what `prepare` found.
    pub(super) async fn set_encrypted_rooms(
        &self,
        rooms: &HashMap<String, String>,
    ) -> Result<(), ProviderError> {
        self.set_state(
            ENCRYPTED_KEY,
            &serde_json::to_string(rooms).unwrap_or_default(),
        )
        .await
    }

    /// Notes that `room` (of `user`) is encrypted, for the warning at start.
    pub(super) async fn remember_encrypted(
        &self,
        user: &str,
        room: &str,
    ) -> Result<(), ProviderError> {
        let mut rooms = self.encrypted_rooms().await?;
        if rooms.get(user).map(String::as_str) != Some(room) {
            rooms.insert(user.to_string(), room.to_string());
            self.set_encrypted_rooms(&rooms).await?;
        }
        Ok(())
    }

    /// The record of the check `event`, if one is kept and readable.
    pub(super) async fn check_record(
        &self,
        event: &str,
    ) -> Result<Option<CheckRecord>, ProviderError> {
        Ok(self
            .get_state(&event_key(event))
            .await?
            .and_then(|raw| serde_json::from_str(&raw).ok()))
    }

    /// Keeps (or replaces) the record of the check `event`.
    pub(super) async fn save_check_record(
        &self,
        event: &str,
        rec: &CheckRecord,
    ) -> Result<(), ProviderError> {
        self.set_state(
            &event_key(event),
            &serde_json::to_string(rec).unwrap_or_default(),
        )
        .await
    }

    /// The newest check sent in `room`.
    pub(super) async fn latest_check_event(
        &self,
        room: &str,
    ) -> Result<Option<String>, ProviderError> {
        self.get_state(&latest_key(room)).await
    }

    /// Remembers a check just sent as `event` in `room`, after the room's newest one (which
    /// becomes its `prev`). A retried send the homeserver recognised (same transaction id)
    /// returns the event it already has: its record, and the room's order, stay as they are.
    pub(super) async fn remember_sent_check(
        &self,
        room: &str,
        event: &str,
        mut rec: CheckRecord,
    ) -> Result<(), ProviderError> {
        if self.get_state(&event_key(event)).await?.is_some() {
            return Ok(());
        }
        rec.prev = self.latest_check_event(room).await?.filter(|p| p != event);
        self.save_check_record(event, &rec).await?;
        self.set_state(&latest_key(room), event).await
    }
}

pub(super) fn store_error(e: StoreError) -> ProviderError {
    ProviderError::Retryable {
        after: None,
        reason: format!("provider state: {e}"),
    }
}
