//! Storage: the database is the truth, and every worker reconciles from it. The [`Store`]
//! trait speaks in domain operations; each backend is one file ([`sqlite`] is the embedded
//! default, [`postgres`] the one for several replicas), chosen from the database URL, and
//! holds only what its database does its own way. What both share is written once: `common`
//! implements the trait for both, `shared` holds the statements (one per dialect where they
//! must differ), row decoding, progress counting and how inbound events become answers;
//! [`schema`] keeps each database's schema in step with the binary.
//!
//! Invariants every backend keeps: creating a roll call writes it and all its deliveries in
//! one transaction; a claim hands each due delivery to one worker until its lease expires;
//! outcome updates only move a delivery forward; the event log is append-only.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::Millis;
use crate::contacts::{Contact, ContactKind};
use crate::email::{MailOutcome, NewMail, StoredMail};
use crate::ids::{ChatHandle, RollCallId, StaffId};
use crate::providers::InboundEvent;
use crate::rollcall::{
    CallListEntry, CallOutcome, ClaimedDelivery, DeliveryState, LateAnswer, NewDelivery,
    NewRollCall, Progress, Recipient, RollCall, SendResult,
};

mod common;
mod jma_sql;
pub mod postgres;
pub mod schema;
mod shared;
pub mod sqlite;

/// Contacts per page when a roll call's deliveries are made from the stored directory
/// ([`Store::start_roll_call`]).
pub(crate) const DIRECTORY_PAGE: usize = 10_000;

/// Where a backend's directory reader sends its pages: each non-empty, in staff-id order,
/// then one empty page for the end (or an error).
pub(crate) type DirectoryPages = tokio::sync::mpsc::Sender<StoreResult<Vec<Contact>>>;

/// What can go wrong in storage, in terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("roll call {0} does not exist")]
    NoSuchRollCall(RollCallId),
    #[error("{staff} is not a recipient of roll call {roll_call}")]
    NoSuchRecipient {
        roll_call: RollCallId,
        staff: StaffId,
    },
    #[error("roll call {0} is closed")]
    Closed(RollCallId),
    /// The change would undo someone else's work (a call another caller holds, an outcome
    /// already reached); the message says what and what to do.
    #[error("{0}")]
    Conflict(String),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DATABASE")]
    UnsupportedUrl(String),
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the database schema is at version {database}, newer than this anpi knows ({binary}): \
         upgrade anpi, or point it at another database"
    )]
    SchemaTooNew { database: i64, binary: i64 },
    #[error(
        "the database schema is at version {}, behind this anpi ({binary}): run `anpi migrate`",
        database.map_or_else(|| "none".to_string(), |v| v.to_string())
    )]
    SchemaBehind { database: Option<i64>, binary: i64 },
}

impl StoreError {
    /// A connection-level problem worth retrying (the database is busy or unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Database(
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
            )
        ) || matches!(self, Self::Database(sqlx::Error::Database(e)) if e.message().contains("locked") || e.message().contains("busy"))
            || matches!(self, Self::Database(sqlx::Error::Database(e)) if e.code().is_some_and(|c| postgres_transient(&c)))
    }
}

impl StoreError {
    /// Opening the database failed for a reason that may pass by itself: the server is down,
    /// restarting, full, or not taking connections to this database for now (`55000`, as
    /// `ALLOW_CONNECTIONS false` says). A wrong URL, password or schema is not among them.
    pub fn may_pass(&self) -> bool {
        self.is_transient()
            || matches!(self, Self::Database(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55000"))
    }
}

/// PostgreSQL error classes that say "try again": connection exceptions (08), the server
/// shutting down or terminating the backend (57P01-57P03), too many connections (53300), and
/// lost races (40001, 40P01).
fn postgres_transient(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01"
        )
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What an inbound batch changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplySummary {
    /// Events new to the log (replays are not counted).
    pub logged: u64,
    /// Deliveries that moved to read.
    pub read: u64,
    /// Deliveries that moved to answered or changed their answer.
    pub answered: u64,
    /// New urgent answers among the events (on an open roll call, or kept as late answers).
    pub urgent: u64,
    /// Urgent answers to a closed roll call that no open roll call of the person could take.
    pub late: u64,
}

/// What became of a re-send (`resend_after`).
#[derive(Debug, Clone, PartialEq)]
pub enum ResendResult {
    Sent {
        id: i64,
        at: Millis,
    },
    /// Try again at `next` (the platform was busy or rate-limited).
    Retry {
        id: i64,
        next: Millis,
        error: String,
    },
    /// The platform refused it for good; the first send still stands.
    Failed {
        id: i64,
        error: String,
    },
}

/// One event-log entry, for HQ's record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoggedEvent {
    pub id: i64,
    pub provider: String,
    pub event_id: String,
    pub roll_call_id: Option<i64>,
    pub delivery_id: Option<i64>,
    pub from: String,
    pub kind: String,
    pub value: Option<String>,
    pub occurred_at: Millis,
    pub received_at: Millis,
}

/// A recipient of a roll call who has a chat id, as follow-up messages (the answer buttons
/// after a board post) need them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatRecipient {
    pub delivery_id: i64,
    pub staff_id: StaffId,
    pub kind: ContactKind,
    pub call_priority: u8,
    pub department: Option<String>,
    pub shelter: Option<String>,
    pub chat_handle: ChatHandle,
    pub state: DeliveryState,
}

impl ChatRecipient {
    /// Who gets a follow-up first: shelter phones, then by call priority, then staff id.
    pub fn follow_up_order(&self, other: &Self) -> std::cmp::Ordering {
        let key = |r: &Self| (r.kind != ContactKind::ShelterPhone, r.call_priority);
        key(self)
            .cmp(&key(other))
            .then_with(|| self.staff_id.as_str().cmp(other.staff_id.as_str()))
    }
}

/// A broadcast that went out: a roll call's board post, or its message to one department
/// room. Recorded before the deliveries it covers, so they are recorded again after a crash
/// without posting twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broadcast {
    /// When it went out (the deliveries it covers count as sent then).
    pub posted_at: Millis,
    /// The platform's id for it (a board post's id, whose reads are followed).
    pub post_id: Option<String>,
}

/// What anpi knows of a Matrix user's DM room with the bot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatrixRoom {
    /// The DM room `anpi matrix prepare` made; `None` when only the fields below are known.
    pub room_id: Option<String>,
    /// When `prepare` invited them again after they left: until they accept, a send says
    /// they left.
    pub left_at: Option<Millis>,
    /// The room found end-to-end encrypted, if one was.
    pub encrypted_room: Option<String>,
}

/// A check anpi sent in a Matrix room, as remembered for the receipts and answers that come
/// back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixCheck {
    pub event_id: String,
    /// The room it is in, when known.
    pub room_id: Option<String>,
    /// The roll call it asks about (as the check's content names it).
    pub roll_call_id: i64,
    /// The person it went to, when known.
    pub to: Option<String>,
    /// The answer values in the order they were numbered in the text ("1" = values[0]).
    pub values: Vec<String>,
    /// The homeserver's `origin_server_ts`, filled in the first time it is needed.
    pub origin_ts: Option<i64>,
    /// The check sent before this one in the same room, when there was one.
    pub prev: Option<String>,
    /// When anpi sent it; `None` for a check learnt from the homeserver afterwards, which is
    /// never a room's newest.
    pub sent_at: Option<Millis>,
}

/// The operations anpi needs from a database.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Brings the schema up to date.
    async fn migrate(&self) -> StoreResult<()>;

    /// Replaces the stored contacts with `contacts`, all or nothing. Returns how many.
    async fn replace_contacts(&self, contacts: &[Contact], now: Millis) -> StoreResult<usize>;
    async fn contacts(&self) -> StoreResult<Vec<Contact>>;

    /// Writes a roll call, its plans and one delivery per recipient in one transaction. People
    /// without a chat id are escalated at once. With an idempotency key already used, returns
    /// the roll call made the first time and writes nothing.
    async fn create_roll_call(
        &self,
        new: &NewRollCall,
        recipients: &[NewDelivery],
        now: Millis,
    ) -> StoreResult<RollCall>;
    /// Writes a roll call as [`Store::create_roll_call`] does, its deliveries made by
    /// `composer` from the stored directory one page at a time (in staff-id order, all pages
    /// from one snapshot): each page is read and parsed while the one before it is written,
    /// and a city's directory is never held whole. `None`: the composer decided to write
    /// nothing, and nothing was. With an idempotency key already used, returns the roll call
    /// made the first time without calling the composer.
    async fn start_roll_call(
        &self,
        new: &NewRollCall,
        composer: &mut dyn crate::rollcall::DeliveryComposer,
        now: Millis,
    ) -> StoreResult<Option<RollCall>>;
    async fn roll_call(&self, id: RollCallId) -> StoreResult<Option<RollCall>>;
    async fn roll_calls(&self) -> StoreResult<Vec<RollCall>>;
    /// Replaces roll call `id`'s dispatch plan (JSON): the dispatcher's own choice when none
    /// was written at start, or the fall-back to 1:1 sends.
    async fn set_dispatch_plan(&self, id: RollCallId, plan: &str) -> StoreResult<()>;
    /// Closes a roll call: nothing more is sent or escalated for it. False if already closed.
    async fn close_roll_call(&self, id: RollCallId, now: Millis) -> StoreResult<bool>;
    async fn progress(&self, id: RollCallId) -> StoreResult<Progress>;

    /// Claims up to `limit` deliveries of `provider` that are due (pending and due, or whose
    /// lease ran out), marking them sending until `now + lease`.
    async fn claim_due_deliveries(
        &self,
        provider: &str,
        now: Millis,
        lease: Duration,
        limit: usize,
    ) -> StoreResult<Vec<ClaimedDelivery>>;
    /// Records a batch of send results with a few set-based statements.
    async fn record_send_results(&self, results: &[SendResult], now: Millis) -> StoreResult<()>;
    /// When the next pending delivery of `provider` becomes due, if any.
    async fn next_due_attempt(&self, provider: &str) -> StoreResult<Option<Millis>>;

    /// Logs inbound events and applies them to deliveries, and stores the feed cursor, in one
    /// transaction. Duplicates and out-of-order events change nothing they should not.
    async fn apply_events(
        &self,
        provider: &str,
        events: &[InboundEvent],
        cursor: Option<&str>,
        now: Millis,
    ) -> StoreResult<ApplySummary>;
    async fn cursor(&self, provider: &str) -> StoreResult<Option<String>>;
    async fn events(&self, roll_call: RollCallId, limit: usize) -> StoreResult<Vec<LoggedEvent>>;

    /// The earliest deadline of a sent, unread, not yet escalated delivery of an open roll call.
    async fn next_deadline(&self) -> StoreResult<Option<Millis>>;
    /// Every recipient of roll call `id` with a chat id, in
    /// [`ChatRecipient::follow_up_order`].
    async fn chat_recipients(&self, id: RollCallId) -> StoreResult<Vec<ChatRecipient>>;

    /// Escalates every sent, unread delivery whose deadline has passed. Returns how many.
    async fn escalate_due(&self, now: Millis) -> StoreResult<u64>;
    /// HQ's action list: everyone with an urgent answer, ever escalated, called or written
    /// about, in the one order of [`CallListEntry::call_order`].
    async fn call_list(&self, id: RollCallId) -> StoreResult<Vec<CallListEntry>>;
    /// One recipient's entry, whether or not they are on the action list.
    async fn entry(&self, id: RollCallId, staff: &StaffId) -> StoreResult<Option<CallListEntry>>;
    /// Records what HQ learned about a person by phone and/or a note, in one transaction,
    /// audited in the event log. With an outcome, the store's guard applies (not over another
    /// caller's hold; a reached person is not put back by a late "no answer"). The roll call
    /// must be open, unless `after_close` (HQ's choice to record calls made after it closed,
    /// marked late by the caller's name).
    #[allow(clippy::too_many_arguments)]
    async fn record_call(
        &self,
        id: RollCallId,
        staff: &StaffId,
        outcome: Option<CallOutcome>,
        note: Option<&str>,
        by: &str,
        now: Millis,
        after_close: bool,
    ) -> StoreResult<CallListEntry>;
    async fn record_call_outcome(
        &self,
        id: RollCallId,
        staff: &StaffId,
        outcome: CallOutcome,
        by: &str,
        now: Millis,
    ) -> StoreResult<CallListEntry> {
        self.record_call(id, staff, Some(outcome), None, by, now, false)
            .await
    }
    /// Everyone whose standing answer has `level`, the newest answer first.
    async fn answered(
        &self,
        id: RollCallId,
        level: crate::answers::AnswerLevel,
    ) -> StoreResult<Vec<CallListEntry>>;
    /// Every recipient of the roll call (for a caller's search by name, kana, id or phone).
    async fn recipients(&self, id: RollCallId) -> StoreResult<Vec<Recipient>>;
    /// Urgent answers to closed roll calls that no open roll call took; only those HQ has not
    /// closed when `open_only`.
    async fn late_answers(&self, open_only: bool) -> StoreResult<Vec<LateAnswer>>;
    /// HQ closes a late answer with a note. False if there is no such open one.
    async fn close_late_answer(
        &self,
        id: i64,
        by: &str,
        note: &str,
        now: Millis,
    ) -> StoreResult<bool>;
    /// Open urgent entries over all open roll calls, plus open late answers (for /metrics).
    async fn urgent_open(&self) -> StoreResult<i64>;

    /// Claims up to `limit` deliveries of `provider` whose re-send is due: still sent and
    /// unread, in an open roll call, not re-sent yet, not claimed by another worker.
    async fn claim_due_resends(
        &self,
        provider: &str,
        now: Millis,
        lease: Duration,
        limit: usize,
    ) -> StoreResult<Vec<ClaimedDelivery>>;
    async fn record_resends(&self, results: &[ResendResult]) -> StoreResult<()>;
    /// When the next re-send of `provider` falls due, if any.
    async fn next_resend(&self, provider: &str) -> StoreResult<Option<Millis>>;

    /// Gives `caller` the next person to ring: the entry they already hold, else shelter
    /// phones first, then by call priority, then longest unread; entries that got no answer go
    /// to the back. Nobody is given to two callers at once; a hold lapses after `hold`.
    async fn claim_next_call(
        &self,
        id: RollCallId,
        caller: &str,
        now: Millis,
        hold: Duration,
    ) -> StoreResult<Option<CallListEntry>>;
    /// Lets go of `caller`'s hold on a person without recording an outcome.
    async fn release_call(
        &self,
        id: RollCallId,
        staff: &StaffId,
        caller: &str,
    ) -> StoreResult<bool>;

    /// A small piece of state kept under a provider's (or a worker's) name: the pace the
    /// platform showed, a feed's health.
    async fn provider_state(&self, provider: &str, key: &str) -> StoreResult<Option<String>>;
    async fn set_provider_state(
        &self,
        provider: &str,
        key: &str,
        value: &str,
        now: Millis,
    ) -> StoreResult<()>;

    /// The broadcast of roll call `roll_call` through `provider`: its board post (`group`
    /// `None`) or its message to the room of `group`, if it went out.
    async fn broadcast_done(
        &self,
        roll_call: RollCallId,
        provider: &str,
        group: Option<&str>,
    ) -> StoreResult<Option<Broadcast>>;
    /// Records a broadcast that went out. A broadcast recorded before keeps its first record;
    /// false then.
    async fn record_broadcast(
        &self,
        roll_call: RollCallId,
        provider: &str,
        group: Option<&str>,
        done: &Broadcast,
    ) -> StoreResult<bool>;

    /// How far roll call `roll_call`'s button follow-up wave got (JSON of
    /// [`crate::dispatch::WaveState`]), once it started.
    async fn button_wave(&self, roll_call: RollCallId) -> StoreResult<Option<String>>;
    /// Records how far roll call `roll_call`'s button follow-up wave got.
    async fn set_button_wave(&self, roll_call: RollCallId, state: &str) -> StoreResult<()>;

    /// What an earlier e-mail worker noted when it decided roll call `roll_call`'s deadline
    /// mails, if it did.
    async fn mail_decided(&self, roll_call: RollCallId) -> StoreResult<Option<String>>;
    /// Writes roll call `roll_call`'s deadline mails as [`Store::enqueue_mails`] does and, in
    /// the same transaction, notes them decided (`note`): a crash leaves both or neither.
    async fn decide_mails(
        &self,
        roll_call: RollCallId,
        mails: &[NewMail],
        note: &str,
        now: Millis,
        wall: Millis,
    ) -> StoreResult<u64>;

    /// What is known of Matrix user `user`'s DM room.
    async fn matrix_room(&self, user: &str) -> StoreResult<Option<MatrixRoom>>;
    /// Records `room` as `user`'s DM room.
    async fn set_matrix_room(&self, user: &str, room: &str, now: Millis) -> StoreResult<()>;
    /// Records that `user` left their room and was invited to it again.
    async fn set_matrix_left(&self, user: &str, now: Millis) -> StoreResult<()>;
    /// The rooms found end-to-end encrypted, as (user, room), by user.
    async fn matrix_encrypted_rooms(&self) -> StoreResult<Vec<(String, String)>>;
    /// Replaces the rooms known encrypted with `rooms` (user, room), in one transaction.
    async fn replace_matrix_encrypted_rooms(
        &self,
        rooms: &[(String, String)],
        now: Millis,
    ) -> StoreResult<()>;
    /// Records that `user`'s room `room` is encrypted.
    async fn add_matrix_encrypted_room(
        &self,
        user: &str,
        room: &str,
        now: Millis,
    ) -> StoreResult<()>;
    /// The check that Matrix event `event_id` is, if anpi knows it.
    async fn matrix_check(&self, event_id: &str) -> StoreResult<Option<MatrixCheck>>;
    /// The newest check anpi sent in `room`.
    async fn newest_matrix_check(&self, room: &str) -> StoreResult<Option<MatrixCheck>>;
    /// Records a check; one recorded before under the same event id stays as it is (false).
    async fn record_matrix_check(&self, check: &MatrixCheck) -> StoreResult<bool>;
    /// Fills in a check's `origin_server_ts`.
    async fn set_matrix_check_ts(&self, event_id: &str, ts: i64) -> StoreResult<()>;

    /// Takes or renews the lease `name` for `holder` until `now + ttl`, if it is free, expired
    /// or already `holder`'s. True when `holder` has it.
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: Millis,
        ttl: Duration,
    ) -> StoreResult<bool>;

    /// Renews dispatch claims still held: every `(delivery, lease end)` whose row is still
    /// sending under exactly that lease gets the lease end `until`. Returns the renewed ids (a
    /// row another worker has taken over since is left alone).
    async fn renew_claims(&self, held: &[(i64, Millis)], until: Millis) -> StoreResult<Vec<i64>>;

    /// Records that `provider`'s event feed is complete up to `at`: every event the platform
    /// held until then is stored. Only moves forward.
    async fn set_caught_up(&self, provider: &str, at: Millis, now: Millis) -> StoreResult<()>;
    /// How far `provider`'s event feed is known complete, if it ever was.
    async fn caught_up(&self, provider: &str) -> StoreResult<Option<Millis>>;

    /// Writes mails decided together, in one transaction; a mail whose dedupe key is already
    /// stored is skipped. Each is due at `wall` (wall clock). Returns how many were new.
    async fn enqueue_mails(&self, mails: &[NewMail], now: Millis, wall: Millis)
        -> StoreResult<u64>;
    /// Claims the next due mail (pending and due, or sending under an expired lease, oldest
    /// first) until `lease_until`, counting the attempt. Times are wall clock.
    async fn claim_mail(
        &self,
        wall: Millis,
        lease_until: Millis,
    ) -> StoreResult<Option<StoredMail>>;
    /// Records how a claimed mail's attempt ended, only while that claim (`lease_until`) still
    /// holds. False when it no longer did.
    async fn finish_mail(
        &self,
        id: i64,
        lease_until: Millis,
        outcome: &MailOutcome,
        now: Millis,
    ) -> StoreResult<bool>;
    /// Stored mails, oldest first: one roll call's, or all with `None`.
    async fn mails(&self, roll_call: Option<RollCallId>) -> StoreResult<Vec<StoredMail>>;
    /// The mail with this dedupe key.
    async fn mail_by_key(&self, key: &str) -> StoreResult<Option<StoredMail>>;
    /// When the next pending mail is due (wall clock), if any.
    async fn next_mail_due(&self) -> StoreResult<Option<Millis>>;

    /// Who holds the lease `name`, and until when.
    async fn lease(&self, name: &str) -> StoreResult<Option<(String, Millis)>>;
    /// Takes the lease `name` over from `from` (a holder known to be dead) for `to`, until
    /// `now + ttl`. False if `from` no longer holds it.
    async fn take_lease(
        &self,
        name: &str,
        from: &str,
        to: &str,
        now: Millis,
        ttl: Duration,
    ) -> StoreResult<bool>;

    /// Cheap liveness check of the database.
    async fn ping(&self) -> StoreResult<()>;

    // JMA triggers (`crate::jma`): what was seen before, per scope ("live", "replay").

    /// How the telegram with this dedupe key was decided before ("start, <when>"), if it was.
    async fn jma_telegram_seen(&self, scope: &str, key: &str) -> StoreResult<Option<String>>;
    /// The stored states of `rule` under any of `keys` (EventIDs, office episodes, snapshots),
    /// in the order of `keys`.
    async fn jma_events(
        &self,
        scope: &str,
        rule: &str,
        keys: &[String],
    ) -> StoreResult<Vec<crate::jma::decide::EventState>>;
    /// The state of `rule`'s latest event that started a roll call; with `real_only`, the
    /// latest that a real (not 訓練) telegram started.
    async fn jma_last_start(
        &self,
        scope: &str,
        rule: &str,
        real_only: bool,
    ) -> StoreResult<Option<crate::jma::decide::EventState>>;
    /// Records a telegram and its decision, and writes the state it changed, in one
    /// transaction. `None` (nothing written) when the telegram was recorded before.
    async fn jma_record(
        &self,
        record: &crate::jma::JmaRecord,
        updates: &[crate::jma::decide::EventState],
        now: Millis,
    ) -> StoreResult<Option<i64>>;
    /// Recorded telegrams, newest first: of one scope, or about one roll call.
    async fn jma_log(
        &self,
        scope: Option<&str>,
        roll_call: Option<RollCallId>,
        limit: usize,
    ) -> StoreResult<Vec<crate::jma::JmaRecord>>;
    /// Whether a telegram URL was fetched already.
    async fn jma_fetched(&self, url: &str) -> StoreResult<bool>;
    async fn jma_mark_fetched(&self, url: &str, now: Millis) -> StoreResult<()>;

    /// Everyone in the roll call whose message went out (a retraction goes to them).
    async fn notified_staff(&self, id: RollCallId) -> StoreResult<Vec<StaffId>>;
    /// Every delivery's times and outcome, for the drill report.
    async fn drill_rows(&self, id: RollCallId) -> StoreResult<Vec<crate::drills::DeliveryTimes>>;
}

pub type SharedStore = Arc<dyn Store>;

/// How to open a store, beyond its URL.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// What to do when the schema is behind this binary (a newer one is always refused).
    pub migrate: schema::MigratePolicy,
    /// Connection pool settings (PostgreSQL).
    pub postgres: postgres::PgSettings,
    /// The words that make a free-text answer urgent (`[answers] urgent_words`).
    pub urgent_words: crate::answers::UrgentWords,
}

/// True for the URLs [`open`] hands to the PostgreSQL backend.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Opens the store named by a database URL, bringing its schema up to date:
/// `sqlite://PATH` (created if missing), `sqlite::memory:`, or `postgres://...`.
pub async fn open(url: &str) -> StoreResult<SharedStore> {
    open_with(url, &OpenOptions::default()).await
}

/// Opens the store named by a database URL and checks its schema as `opts` say.
pub async fn open_with(url: &str, opts: &OpenOptions) -> StoreResult<SharedStore> {
    // A connection that read the schema before a migration changed it keeps describing
    // statements by the old one (SQLite: `SELECT *` then reads past its columns): after
    // applying migrations the pool is opened again, so every connection sees the new schema.
    if url.starts_with("sqlite:") {
        let store = sqlite::SqliteStore::connect(url).await?;
        if !schema::ensure(&schema::SQLITE, store.pool(), opts.migrate)
            .await?
            .is_empty()
        {
            store.pool().close().await;
            let store = sqlite::SqliteStore::connect(url).await?;
            return Ok(Arc::new(store.with_urgent_words(opts.urgent_words.clone())));
        }
        Ok(Arc::new(store.with_urgent_words(opts.urgent_words.clone())))
    } else if is_postgres_url(url) {
        let store = postgres::PostgresStore::connect(url, &opts.postgres).await?;
        if !schema::ensure(&schema::POSTGRES, store.pool(), opts.migrate)
            .await?
            .is_empty()
        {
            store.pool().close().await;
            let store = postgres::PostgresStore::connect(url, &opts.postgres).await?;
            return Ok(Arc::new(store.with_urgent_words(opts.urgent_words.clone())));
        }
        Ok(Arc::new(store.with_urgent_words(opts.urgent_words.clone())))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_string()))
    }
}

/// Brings the schema of the database at `url` up to date (`anpi migrate`). Returns how it
/// stood before and the versions applied.
pub async fn migrate_url(url: &str) -> StoreResult<(schema::SchemaStatus, Vec<i64>)> {
    let opts = OpenOptions::default();
    if url.starts_with("sqlite:") {
        let store = sqlite::SqliteStore::connect(url).await?;
        let before = schema::status(&schema::SQLITE, store.pool()).await?;
        let applied = schema::ensure(&schema::SQLITE, store.pool(), opts.migrate).await?;
        Ok((before, applied))
    } else if is_postgres_url(url) {
        let store = postgres::PostgresStore::connect(url, &opts.postgres).await?;
        let before = schema::status(&schema::POSTGRES, store.pool()).await?;
        let applied = schema::ensure(&schema::POSTGRES, store.pool(), opts.migrate).await?;
        Ok((before, applied))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_string()))
    }
}

/// Why a call outcome recorded by `by` was not written (the store's guard refused it, or
/// there is no such roll call or person): a hold by another caller, or a person already
/// reached. Anyone the guard refuses is on the call list, which tells which it was; this
/// runs only when a write was refused.
pub(crate) async fn refused_outcome<S: Store + ?Sized>(
    store: &S,
    id: RollCallId,
    staff: &StaffId,
    by: &str,
    now: Millis,
) -> StoreError {
    match store.roll_call(id).await {
        Ok(None) => return StoreError::NoSuchRollCall(id),
        Err(e) => return e,
        Ok(Some(rc)) if rc.state == crate::rollcall::RollCallState::Closed => {
            return StoreError::Closed(id)
        }
        Ok(Some(_)) => {}
    }
    let e = match store.entry(id, staff).await {
        Ok(Some(e)) => e,
        Ok(None) => {
            return StoreError::NoSuchRecipient {
                roll_call: id,
                staff: staff.clone(),
            }
        }
        Err(e) => return e,
    };
    if let (Some(holder), Some(until)) = (&e.claimed_by, e.claimed_until) {
        if until > now && holder != by {
            let secs = (until - now + 999) / 1000;
            return StoreError::Conflict(format!(
                "{staff} is being called by {holder}: let them record it (or release it), \
                 or try again in {secs} s when their hold ends"
            ));
        }
    }
    StoreError::Conflict(format!(
        "{staff} was already reached ({}, by {}): only another 'reached' outcome \
         (safe, injured, needs-help) can correct it",
        e.outcome.map_or("?", |o| o.as_str()),
        e.outcome_by.as_deref().unwrap_or("?")
    ))
}
