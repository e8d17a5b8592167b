//! What the adapter remembers between requests, kept in the store's Matrix tables. Every read
//! and write of it is in this file:
//! - per person ([`MatrixRoom`]): the DM room (written by `anpi matrix prepare`, read by every
//!   send); whether `prepare` invited them again after they left, so that a send before they
//!   accept says they left; the room found end-to-end encrypted, for the warning `anpi serve`
//!   gives at start;
//! - per sent check ([`MatrixCheck`]): the roll call it belongs to (a cache: the check's own
//!   content also carries `org.anpi.roll_call`, so a lost write costs a lookup, not a
//!   receipt). The newest check sent in a room is what a receipt on any later event (receipts
//!   only move forward) still confirms. Each check also names the check sent before it in the
//!   room (`prev`), so a receipt on a later check (an announcement after a safety check, or two
//!   roll calls at once) confirms the earlier ones too.

use std::collections::HashMap;

use super::MatrixProvider;
use crate::ids::ChatHandle;
use crate::providers::ProviderError;
use crate::store::{MatrixCheck, MatrixRoom, StoreError};

/// What one check in a room is, as remembered for the receipts that come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CheckRecord {
    pub(super) rc: i64,
    /// The person the check went to, when known.
    pub(super) to: Option<String>,
    /// The answer values in the order they were numbered in the text ("1" = values[0]).
    pub(super) values: Vec<String>,
    /// The homeserver's `origin_server_ts`, filled in the first time it is needed.
    pub(super) ts: Option<i64>,
    /// The check sent before this one in the same room, when there was one.
    pub(super) prev: Option<String>,
}

impl From<MatrixCheck> for CheckRecord {
    fn from(c: MatrixCheck) -> Self {
        Self {
            rc: c.roll_call_id,
            to: c.to,
            values: c.values,
            ts: c.origin_ts,
            prev: c.prev,
        }
    }
}

impl MatrixProvider {
    /// What is known of `user`'s DM room.
    async fn room_of(&self, user: &str) -> Result<Option<MatrixRoom>, ProviderError> {
        self.store.matrix_room(user).await.map_err(store_error)
    }

    /// The DM room anpi uses for `user`, if `prepare` made one.
    pub async fn dm_room(&self, user: &ChatHandle) -> Result<Option<String>, ProviderError> {
        Ok(self.room_of(user.as_str()).await?.and_then(|r| r.room_id))
    }

    /// Records the DM room `prepare` made for `user`.
    pub(super) async fn set_dm_room(&self, user: &str, room: &str) -> Result<(), ProviderError> {
        self.store
            .set_matrix_room(user, room, self.clock.now_millis())
            .await
            .map_err(store_error)
    }

    /// Notes that `user` left their room and was invited again (see [`Self::has_left`]).
    pub(super) async fn mark_left(&self, user: &str) -> Result<(), ProviderError> {
        self.store
            .set_matrix_left(user, self.clock.now_millis())
            .await
            .map_err(store_error)
    }

    /// Whether `user` was invited again after leaving: until they accept, they left.
    pub(super) async fn has_left(&self, user: &str) -> Result<bool, ProviderError> {
        Ok(self
            .room_of(user)
            .await?
            .is_some_and(|r| r.left_at.is_some()))
    }

    /// The rooms `prepare` (or the event feed) found encrypted, person -> room.
    pub async fn encrypted_rooms(&self) -> Result<HashMap<String, String>, ProviderError> {
        let rooms = self.store.matrix_encrypted_rooms().await;
        Ok(rooms.map_err(store_error)?.into_iter().collect())
    }

    /// Replaces the encrypted rooms with what `prepare` found.
    pub(super) async fn set_encrypted_rooms(
        &self,
        rooms: &HashMap<String, String>,
    ) -> Result<(), ProviderError> {
        let rooms: Vec<(String, String)> =
            rooms.iter().map(|(u, r)| (u.clone(), r.clone())).collect();
        self.store
            .replace_matrix_encrypted_rooms(&rooms, self.clock.now_millis())
            .await
            .map_err(store_error)
    }

    /// Notes that `room` (of `user`) is encrypted, for the warning at start.
    pub(super) async fn remember_encrypted(
        &self,
        user: &str,
        room: &str,
    ) -> Result<(), ProviderError> {
        let known = self.room_of(user).await?.and_then(|r| r.encrypted_room);
        if known.as_deref() != Some(room) {
            self.store
                .add_matrix_encrypted_room(user, room, self.clock.now_millis())
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }

    /// The record of the check `event`, if one is kept.
    pub(super) async fn check_record(
        &self,
        event: &str,
    ) -> Result<Option<CheckRecord>, ProviderError> {
        let check = self.store.matrix_check(event).await.map_err(store_error)?;
        Ok(check.map(CheckRecord::from))
    }

    /// Keeps the record of check `event` in `room` learnt from the homeserver (a lost write
    /// after a send): never the room's newest.
    pub(super) async fn save_learnt_check(
        &self,
        room: &str,
        event: &str,
        rec: &CheckRecord,
    ) -> Result<(), ProviderError> {
        self.record_check(room, event, rec, None).await
    }

    /// Keeps the homeserver's timestamp of check `event`, once looked up.
    pub(super) async fn save_check_ts(&self, event: &str, ts: i64) -> Result<(), ProviderError> {
        self.store
            .set_matrix_check_ts(event, ts)
            .await
            .map_err(store_error)
    }

    /// The newest check sent in `room`: its event id and record.
    pub(super) async fn latest_check_event(
        &self,
        room: &str,
    ) -> Result<Option<(String, CheckRecord)>, ProviderError> {
        let check = self.store.newest_matrix_check(room).await;
        Ok(check
            .map_err(store_error)?
            .map(|c| (c.event_id.clone(), CheckRecord::from(c))))
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
        if self.check_record(event).await?.is_some() {
            return Ok(());
        }
        rec.prev = self
            .latest_check_event(room)
            .await?
            .map(|(e, _)| e)
            .filter(|p| p != event);
        let now = self.clock.now_millis();
        self.record_check(room, event, &rec, Some(now)).await
    }

    async fn record_check(
        &self,
        room: &str,
        event: &str,
        rec: &CheckRecord,
        sent_at: Option<i64>,
    ) -> Result<(), ProviderError> {
        let check = MatrixCheck {
            event_id: event.to_string(),
            room_id: Some(room.to_string()),
            roll_call_id: rec.rc,
            to: rec.to.clone(),
            values: rec.values.clone(),
            origin_ts: rec.ts,
            prev: rec.prev.clone(),
            sent_at,
        };
        self.store
            .record_matrix_check(&check)
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

pub(super) fn store_error(e: StoreError) -> ProviderError {
    ProviderError::Retryable {
        after: None,
        reason: format!("Matrix state in the store: {e}"),
    }
}
