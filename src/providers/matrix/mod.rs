//! The Matrix adapter: sends each person one `m.text` in their direct-message room with the
//! bot, and follows the bot's `/sync` stream for public read receipts (`m.read`), replies and
//! reactions.
//!
//! Before each first send the person's membership of their room is read: someone not joined
//! (never accepted, left, unknown user) is a permanent failure naming which, so they are on
//! the call list at once. What a person writes or reacts in their room counts for the newest
//! open roll call they are in (the event names none and the store decides), unless it replies
//! to or reacts on an open roll call's check; edits (`m.replace`) are read again as answers;
//! an encrypted reply is reported as unreadable, never dropped.
//!
//! Invariants: every HTTP outcome is classified here, once; a send the homeserver accepted is
//! never reported as failed; a refused bot token (401) is the bot's trouble, not the person's:
//! it is temporary, HQ is told (the health component `token`), and the token file is read
//! again so a new token works without a restart; a send is idempotent (the transaction id comes from the delivery,
//! so a retry after a timeout never posts twice); the sync cursor is `next_batch`, stored by the
//! core with the events it covers; without one, and once more on the first poll of every
//! process, the adapter does a full `/sync`, which returns every room's current receipts
//! (reconciliation after a restart or a lost cursor). A `/sync` whose timeline for a room anpi
//! sent checks to is `limited` left events out (more than the filter's 100, or a homeserver's
//! lower cap): they are read back with `/messages`, down to the previous sync's position and no
//! further than the room's oldest open check, and read before the page's own. A gap
//! that cannot be read back to its end is logged as an error naming the room and its person
//! and reported to HQ as the feed failing, never passed over in silence.
//!
//! What Matrix does not show is not guessed: a private receipt (`m.read.private`) is invisible
//! to the bot, so such a reader stays unconfirmed and is escalated at the deadline (the safe
//! direction). "Later than the check" is judged by `origin_server_ts`, which is exact for people
//! on the bot's own homeserver and as good as the servers' clocks across federation.
//!
//! # Layout
//! - `client`: the HTTP client, URLs, the lookups every part makes, and how each answer is
//!   classified.
//! - `state`: what the adapter remembers in the store (DM rooms, sent checks, encrypted rooms).
//! - `prepare`: `anpi matrix prepare`: one DM room per person, and who is unreachable and why.
//! - `send`: one check to one person.
//! - `sync`: the `/sync` event feed, and which check a receipt, reply or reaction is about.
//! - `replies`: what a reply's text answers.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderValue;
use reqwest::Url;

use super::{
    Capabilities, ChatProvider, EventBatch, OutboundMessage, ProviderError, RateLimit, Sent,
};
use crate::clock::SharedClock;
use crate::store::{SharedStore, StoreError};

mod client;
mod prepare;
mod replies;
mod send;
mod state;
mod sync;
#[cfg(test)]
mod tests;

pub use prepare::{PrepareReport, Unreachable};
pub use replies::UNREADABLE;

/// The provider's name in config, contacts and storage.
pub const NAME: &str = "matrix";

/// The key in a check's content that names its roll call.
const ROLL_CALL_KEY: &str = "org.anpi.roll_call";

/// A failure of `anpi matrix prepare`.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("homeserver: {0}")]
    Provider(#[from] ProviderError),
}

#[derive(Debug, Default)]
struct TokenState {
    refused: bool,
    changed_at: Option<std::time::Instant>,
}

/// A client for one bot account on one homeserver.
pub struct MatrixProvider {
    client: reqwest::Client,
    homeserver: Url,
    /// `Bearer <token>`; replaced when the homeserver refuses it and the token file holds a
    /// new one.
    auth: std::sync::RwLock<HeaderValue>,
    /// Where the token was read from, read again when the homeserver refuses it.
    token_file: Option<std::path::PathBuf>,
    /// Whether the token is being refused, and when a new one was last read.
    token: std::sync::Mutex<TokenState>,
    bot: String,
    store: SharedStore,
    clock: SharedClock,
    rate_limit: Option<RateLimit>,
    max_in_flight: usize,
    /// The inline `/sync` filter (JSON).
    filter: String,
    /// Its timeline part (a `RoomEventFilter`, JSON), for paging back with `/messages`.
    timeline_filter: String,
    /// Whether this process has read every room's current receipts once (see `poll_events`).
    reconciled: std::sync::atomic::AtomicBool,
    /// While `prepare` runs: lookups wait out 429s and outages (a send never does).
    patient: std::sync::atomic::AtomicBool,
    /// Where a gap in the event feed is reported ([`crate::health::Component::Feed`]).
    health: Option<std::sync::Arc<crate::health::Health>>,
}

impl fmt::Debug for MatrixProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MatrixProvider")
            .field("homeserver", &self.homeserver.as_str())
            .field("bot", &self.bot)
            .field("access_token", &"[redacted]")
            .field("rate_limit", &self.rate_limit)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

#[async_trait]
impl ChatProvider for MatrixProvider {
    fn name(&self) -> &str {
        NAME
    }

    async fn startup_notes(&self) -> Vec<String> {
        self.encrypted_rooms_note().await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            read_receipts: true,
            buttons: false,
            idempotent_sends: true,
            rate_limit: self.rate_limit,
            max_in_flight: self.max_in_flight,
        }
    }

    #[tracing::instrument(
        level = "debug",
        name = "matrix.send",
        skip_all,
        fields(roll_call = %msg.roll_call_id, delivery = msg.delivery_id)
    )]
    async fn send(&self, msg: &OutboundMessage) -> Result<Sent, ProviderError> {
        self.send_check(msg).await
    }

    #[tracing::instrument(level = "debug", name = "matrix.sync", skip(self))]
    async fn poll_events(
        &self,
        cursor: Option<&str>,
        wait: Duration,
    ) -> Result<EventBatch, ProviderError> {
        self.poll(cursor, wait).await
    }
}
