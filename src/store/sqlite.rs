//! The embedded default store: one SQLite file in WAL mode, created if missing.
//!
//! Every hot-path operation is one set-based statement over a JSON array of rows
//! (`json_each`), never a statement per row: on SQLite through sqlx each statement costs a
//! cross-thread round trip, rows cost almost nothing.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Row, SqlitePool};
use tokio::sync::Mutex;

use super::shared::{
    self, corrupt, entry_from_row, kind_str, mail_outcome_columns, parse_kind, BatchReader,
    Dialect, Membership, RollInfo, ENTRY_COLUMNS, MAIL_COLUMNS, ON_ACTION_LIST, OUTCOME_GUARD,
};
use super::{
    refused_outcome, ApplySummary, LoggedEvent, ResendResult, Store, StoreError, StoreResult,
};
use crate::answers::UrgentWords;
use crate::clock::Millis;
use crate::contacts::Contact;
use crate::email::{MailOutcome, MailState, NewMail, StoredMail};
use crate::ids::{ChatHandle, RollCallId, StaffId};
use crate::providers::InboundEvent;
use crate::rollcall::{
    CallListEntry, CallOutcome, ClaimedDelivery, LateAnswer, NewDelivery, NewRollCall, Note,
    Progress, Recipient, RollCall, RollCallState, SendResult,
};

/// Rows per multi-row statement when writing deliveries: 18 bound values a row, under
/// SQLite's limit of 32,766 per statement.
const INSERT_CHUNK: usize = 1_800;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// SQLite has one writer at a time. Writers in this process queue here instead of in
    /// SQLite's busy handler, which sleeps in steps of milliseconds and wastes most of them.
    writer: Arc<Mutex<()>>,
    /// What makes a free-text answer urgent.
    words: Arc<UrgentWords>,
}

impl SqliteStore {
    /// Connects to `sqlite://PATH` (creating the file) or `sqlite::memory:`.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let memory = url.contains(":memory:");
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let opts = if memory {
            opts.journal_mode(SqliteJournalMode::Memory)
        } else {
            // Switching a file to WAL takes an exclusive lock that the busy timeout does not
            // wait for, so several pool connections doing it at once on a new file can fail
            // with "database is locked". WAL is stored in the file: set it once, on one
            // connection, before the pool opens any.
            let first = opts
                .clone()
                .journal_mode(SqliteJournalMode::Wal)
                .connect()
                .await?;
            first.close().await?;
            opts
        };
        let pool = SqlitePoolOptions::new()
            // An in-memory database exists once per connection: keep exactly one.
            .max_connections(if memory { 1 } else { 4 })
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts)
            .await?;
        Ok(Self {
            pool,
            writer: Arc::new(Mutex::new(())),
            words: Arc::new(UrgentWords::default()),
        })
    }

    /// Uses `words` to tell urgent free text from the rest.
    pub fn with_urgent_words(mut self, words: UrgentWords) -> Self {
        self.words = Arc::new(words);
        self
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// One sent message, as `record_send_results` hands it to SQLite in a JSON array.
#[derive(serde::Serialize)]
struct SentRow<'a> {
    id: i64,
    at: Millis,
    dl: Millis,
    mid: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct RetryRow<'a> {
    id: i64,
    next: Millis,
    err: &'a str,
    refund: i64,
    lease: Millis,
}

#[derive(serde::Serialize)]
struct FailedRow<'a> {
    id: i64,
    err: &'a str,
}

/// `rows` as one JSON array for `json_each`, or None when there are none.
fn rows_json<T: serde::Serialize>(rows: &[T]) -> StoreResult<Option<String>> {
    if rows.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(rows)
        .map(Some)
        .map_err(|e| corrupt("send results", e))
}

fn row_to_roll_call(r: &sqlx::sqlite::SqliteRow) -> StoreResult<RollCall> {
    let buttons: String = r.try_get("buttons")?;
    let shelter_buttons: Option<String> = r.try_get("shelter_buttons")?;
    let state: String = r.try_get("state")?;
    let info = RollInfo::parse(&state, &buttons, shelter_buttons.as_deref())?;
    Ok(RollCall {
        id: RollCallId(r.try_get("id")?),
        scenario: r.try_get("scenario")?,
        title: r.try_get("title")?,
        message: r.try_get("message")?,
        buttons: info.buttons,
        shelter_buttons: info.shelter_buttons,
        resend_after_ms: r.try_get("resend_after_ms")?,
        drill: r.try_get::<i64, _>("drill")? != 0,
        deadline_ms: r.try_get("deadline_ms")?,
        provider: r.try_get("provider")?,
        state: if state == "closed" {
            RollCallState::Closed
        } else {
            RollCallState::Open
        },
        created_at: r.try_get("created_at")?,
        closed_at: r.try_get("closed_at")?,
        recipients: r.try_get("recipients")?,
        asks: match r.try_get::<Option<String>, _>("asks")? {
            Some(a) => serde_json::from_str(&a)
                .map_err(|e| StoreError::Corrupt(format!("roll call asks: {e}")))?,
            None => Default::default(),
        },
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("migrations/sqlite").run(&self.pool).await?;
        Ok(())
    }

    async fn replace_contacts(&self, contacts: &[Contact], now: Millis) -> StoreResult<usize> {
        let _w = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM contacts")
            .execute(&mut *tx)
            .await?;
        for chunk in contacts.chunks(INSERT_CHUNK) {
            let rows: Vec<serde_json::Value> = chunk
                .iter()
                .map(|c| {
                    Ok(json!({
                        "id": c.id.as_str(),
                        "doc": serde_json::to_string(c).map_err(|e| corrupt("contact", e))?,
                    }))
                })
                .collect::<StoreResult<_>>()?;
            sqlx::query(
                "INSERT INTO contacts (id, doc, imported_at) \
                 SELECT json_extract(value, '$.id'), json_extract(value, '$.doc'), $2 \
                 FROM json_each($1)",
            )
            .bind(serde_json::Value::Array(rows).to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(contacts.len())
    }

    async fn contacts(&self) -> StoreResult<Vec<Contact>> {
        // One JSON array in one value: a round trip per row to SQLite's thread costs more than
        // the documents themselves (a 100,000-person city is about 25 MB of text).
        let all: Option<String> = sqlx::query_scalar(
            "SELECT '[' || group_concat(doc, ',') || ']' FROM (SELECT doc FROM contacts ORDER BY id)",
        )
        .fetch_one(&self.pool)
        .await?;
        match all {
            Some(all) => serde_json::from_str(&all).map_err(|e| corrupt("stored contacts", e)),
            None => Ok(Vec::new()),
        }
    }

    async fn create_roll_call(
        &self,
        new: &NewRollCall,
        recipients: &[NewDelivery],
        now: Millis,
    ) -> StoreResult<RollCall> {
        let _w = self.writer.lock().await;
        if let Some(key) = &new.idempotency_key {
            if let Some(existing) = self.roll_call_by_key(key).await? {
                return Ok(existing);
            }
        }
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO roll_calls (scenario, title, message, buttons, drill, deadline_ms, \
             provider, state, created_at, recipients, idempotency_key, shelter_buttons, \
             resend_after_ms, asks) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'open', $8, $9, $10, $11, $12, $13) RETURNING id",
        )
        .bind(&new.scenario)
        .bind(&new.title)
        .bind(&new.message)
        .bind(serde_json::to_string(&new.buttons).map_err(|e| corrupt("buttons", e))?)
        .bind(new.drill as i64)
        .bind(new.deadline_ms)
        .bind(&new.provider)
        .bind(now)
        .bind(recipients.len() as i64)
        .bind(&new.idempotency_key)
        .bind(serde_json::to_string(&new.shelter_buttons).map_err(|e| corrupt("buttons", e))?)
        .bind(new.resend_after_ms)
        .bind(serde_json::to_string(&new.asks).map_err(|e| corrupt("asks", e))?)
        .fetch_one(&mut *tx)
        .await;
        let id: i64 = match inserted {
            Ok(row) => row.try_get("id")?,
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                drop(tx);
                let key = new.idempotency_key.as_deref().unwrap_or_default();
                return self
                    .roll_call_by_key(key)
                    .await?
                    .ok_or_else(|| corrupt("idempotency key", "vanished"));
            }
            Err(e) => return Err(e.into()),
        };
        // Multi-row inserts with every value bound: no per-row statement and no JSON to take
        // apart on the way in.
        for chunk in recipients.chunks(INSERT_CHUNK) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO deliveries (roll_call_id, staff_id, name, department, shelter, kind, \
                 call_priority, phones, email, provider, chat_handle, state, next_attempt_at, \
                 last_error, escalated_at, escalation_reason, kana, role) ",
            );
            insert.push_values(chunk, |mut row, d| {
                let phones = serde_json::to_string(&d.phones).unwrap_or_else(|_| "[]".into());
                let reachable = d.chat_handle.is_some();
                row.push_bind(id)
                    .push_bind(d.staff_id.as_str())
                    .push_bind(d.name.as_str())
                    .push_bind(d.department.as_deref())
                    .push_bind(d.shelter.as_deref())
                    .push_bind(kind_str(d.kind))
                    .push_bind(i64::from(d.call_priority))
                    .push_bind(phones)
                    .push_bind(d.email.as_deref())
                    .push_bind(new.provider.as_str())
                    .push_bind(d.chat_handle.as_ref().map(|h| h.as_str()))
                    .push_bind(if reachable { "pending" } else { "failed" })
                    .push_bind(now)
                    .push_bind((!reachable).then(|| format!("no chat id on {}", new.provider)))
                    .push_bind((!reachable).then_some(now))
                    .push_bind((!reachable).then_some("no_chat_id"))
                    .push_bind(d.kana.as_deref())
                    .push_bind(d.role.as_deref());
            });
            insert.build().execute(&mut *tx).await?;
        }
        let row = sqlx::query("SELECT * FROM roll_calls WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let rc = row_to_roll_call(&row)?;
        tx.commit().await?;
        Ok(rc)
    }

    async fn roll_call(&self, id: RollCallId) -> StoreResult<Option<RollCall>> {
        let row = sqlx::query("SELECT * FROM roll_calls WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(row_to_roll_call).transpose()
    }

    async fn roll_calls(&self) -> StoreResult<Vec<RollCall>> {
        let rows = sqlx::query("SELECT * FROM roll_calls ORDER BY id DESC")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row_to_roll_call).collect()
    }

    async fn close_roll_call(&self, id: RollCallId, now: Millis) -> StoreResult<bool> {
        let _w = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(shared::CLOSE_ROLL_CALL)
            .bind(id.0)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if changed == 0 {
            let exists = sqlx::query("SELECT 1 FROM roll_calls WHERE id = $1")
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                return Err(StoreError::NoSuchRollCall(id));
            }
            return Ok(false);
        }
        sqlx::query(shared::FAIL_UNSENT_AT_CLOSE)
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&shared::carry_urgent_sql())
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn progress(&self, id: RollCallId) -> StoreResult<Progress> {
        let mut p = Progress::default();
        let rows = sqlx::query(&shared::progress_sql())
            .bind(id.0)
            .fetch_all(&self.pool)
            .await?;
        shared::fold_progress(&rows, &mut p)?;
        for r in sqlx::query(shared::ANSWERS_SQL)
            .bind(id.0)
            .fetch_all(&self.pool)
            .await?
        {
            p.answers.insert(r.try_get(0)?, r.try_get::<i64, _>(1)?);
        }
        let times = sqlx::query(shared::TIMES_SQL)
            .bind(id.0)
            .fetch_one(&self.pool)
            .await?;
        p.last_sent_at = times.try_get("last_sent")?;
        p.next_deadline_at = times.try_get("next_dl")?;
        Ok(p)
    }

    async fn claim_due_deliveries(
        &self,
        provider: &str,
        now: Millis,
        lease: Duration,
        limit: usize,
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        let _w = self.writer.lock().await;
        let lease_until = now + lease.as_millis() as i64;
        // Expired leases first (a crashed worker's batch), then due pending rows; each part
        // walks the (provider, state, next_attempt_at) index and stops at the limit. A claimed
        // row's next_attempt_at is its lease's end, so both parts are index ranges; the
        // lease_until check keeps a row claimed by an anpi from before that rule (a replica
        // not yet upgraded) until its real lease ends.
        let rows = sqlx::query(
            "UPDATE deliveries SET state = 'sending', lease_until = $1, next_attempt_at = $1, \
               attempts = attempts + 1 \
             WHERE id IN ( \
               SELECT id FROM ( \
                 SELECT id FROM (SELECT id FROM deliveries \
                    WHERE provider = $2 AND state = 'sending' AND next_attempt_at <= $3 \
                      AND lease_until <= $3 LIMIT $4) \
                 UNION ALL \
                 SELECT id FROM (SELECT id FROM deliveries \
                    WHERE provider = $2 AND state = 'pending' AND next_attempt_at <= $3 LIMIT $4) \
               ) LIMIT $4) \
             RETURNING id, roll_call_id, chat_handle, attempts, kind",
        )
        .bind(lease_until)
        .bind(provider)
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| claimed(r, lease_until)).collect()
    }

    async fn record_send_results(&self, results: &[SendResult], now: Millis) -> StoreResult<()> {
        let mut sent = Vec::new();
        let mut retry = Vec::new();
        let mut failed = Vec::new();
        for r in results {
            match r {
                SendResult::Sent {
                    id,
                    at,
                    deadline_at,
                    message_id,
                } => sent.push(SentRow {
                    id: *id,
                    at: *at,
                    dl: *deadline_at,
                    mid: message_id.as_deref(),
                }),
                SendResult::Retry {
                    id,
                    next_attempt_at,
                    error,
                    refund_attempt,
                    lease_until,
                } => retry.push(RetryRow {
                    id: *id,
                    next: *next_attempt_at,
                    err: error,
                    refund: i64::from(*refund_attempt),
                    lease: *lease_until,
                }),
                SendResult::Failed { id, error } => failed.push(FailedRow {
                    id: *id,
                    err: error,
                }),
            }
        }
        // Built before taking the writer's turn, which other writers wait for.
        let (sent, retry, failed) = (rows_json(&sent)?, rows_json(&retry)?, rows_json(&failed)?);
        let _w = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        if let Some(sent) = sent {
            sqlx::query(
                "UPDATE deliveries SET \
                   state = CASE WHEN deliveries.state = 'sending' THEN 'sent' ELSE deliveries.state END, \
                   sent_at = COALESCE(deliveries.sent_at, j.at), \
                   deadline_at = COALESCE(deliveries.deadline_at, j.dl), \
                   message_id = COALESCE(j.mid, deliveries.message_id), \
                   lease_until = NULL, \
                   resend_at = COALESCE(deliveries.resend_at, j.at + \
                     (SELECT r.resend_after_ms FROM roll_calls r WHERE r.id = deliveries.roll_call_id)) \
                 FROM (SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.at') AS at, \
                              json_extract(value, '$.dl') AS dl, json_extract(value, '$.mid') AS mid \
                       FROM json_each($1)) AS j \
                 WHERE deliveries.id = j.id AND deliveries.state IN ('sending', 'read', 'answered')",
            )
            .bind(sent)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(retry) = retry {
            sqlx::query(
                "UPDATE deliveries SET state = 'pending', next_attempt_at = j.next, \
                   last_error = j.err, lease_until = NULL, attempts = deliveries.attempts - j.refund \
                 FROM (SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.next') AS next, \
                              json_extract(value, '$.err') AS err, json_extract(value, '$.refund') AS refund, \
                              json_extract(value, '$.lease') AS lease \
                       FROM json_each($1)) AS j \
                 WHERE deliveries.id = j.id AND deliveries.state = 'sending' \
                   AND deliveries.lease_until = j.lease",
            )
            .bind(retry)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(failed) = failed {
            sqlx::query(
                "UPDATE deliveries SET state = 'failed', last_error = j.err, lease_until = NULL, \
                   escalated_at = COALESCE(deliveries.escalated_at, $2), \
                   escalation_reason = COALESCE(deliveries.escalation_reason, 'send_failed') \
                 FROM (SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.err') AS err \
                       FROM json_each($1)) AS j \
                 WHERE deliveries.id = j.id AND deliveries.state = 'sending'",
            )
            .bind(failed)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn next_due_attempt(&self, provider: &str) -> StoreResult<Option<Millis>> {
        let row = sqlx::query(
            "SELECT MIN(t) AS t FROM ( \
               SELECT MIN(next_attempt_at) AS t FROM deliveries WHERE provider = $1 AND state = 'pending' \
               UNION ALL \
               SELECT MIN(next_attempt_at) AS t FROM deliveries WHERE provider = $1 AND state = 'sending')",
        )
        .bind(provider)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("t")?)
    }

    async fn apply_events(
        &self,
        provider: &str,
        events: &[InboundEvent],
        cursor: Option<&str>,
        now: Millis,
    ) -> StoreResult<ApplySummary> {
        let _w = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let summary = {
            let mut reader = Batch(&mut tx);
            shared::apply_batch(
                &mut reader,
                Dialect::Sqlite,
                &self.words,
                provider,
                events,
                now,
            )
            .await?
        };
        if let Some(c) = cursor {
            sqlx::query(
                "INSERT INTO provider_cursors (provider, cursor, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (provider) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at",
            )
            .bind(provider)
            .bind(c)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(summary)
    }

    async fn cursor(&self, provider: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT cursor FROM provider_cursors WHERE provider = $1")
            .bind(provider)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("cursor")).transpose()?)
    }

    async fn events(&self, roll_call: RollCallId, limit: usize) -> StoreResult<Vec<LoggedEvent>> {
        let rows = sqlx::query(
            "SELECT id, provider, event_id, roll_call_id, delivery_id, from_handle, kind, value, \
                    occurred_at, received_at \
             FROM events WHERE roll_call_id = $1 ORDER BY id LIMIT $2",
        )
        .bind(roll_call.0)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LoggedEvent {
                    id: r.try_get("id")?,
                    provider: r.try_get("provider")?,
                    event_id: r.try_get("event_id")?,
                    roll_call_id: r.try_get("roll_call_id")?,
                    delivery_id: r.try_get("delivery_id")?,
                    from: r.try_get("from_handle")?,
                    kind: r.try_get("kind")?,
                    value: r.try_get("value")?,
                    occurred_at: r.try_get("occurred_at")?,
                    received_at: r.try_get("received_at")?,
                })
            })
            .collect()
    }

    async fn next_deadline(&self) -> StoreResult<Option<Millis>> {
        // `+roll_call_id` keeps SQLite on the partial deadline index (the earliest entry of
        // an open roll call) instead of walking every delivery of every open roll call.
        let t = sqlx::query_scalar(
            "SELECT deadline_at FROM deliveries \
             WHERE state = 'sent' AND escalated_at IS NULL AND deadline_at IS NOT NULL \
               AND +roll_call_id IN (SELECT id FROM roll_calls WHERE state = 'open') \
             ORDER BY deadline_at LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(t)
    }

    async fn escalate_due(&self, now: Millis) -> StoreResult<u64> {
        let _w = self.writer.lock().await;
        let n = sqlx::query(
            "UPDATE deliveries SET escalated_at = $1, escalation_reason = 'never_read' \
             WHERE state = 'sent' AND escalated_at IS NULL AND deadline_at <= $1 \
               AND +roll_call_id IN (SELECT id FROM roll_calls WHERE state = 'open')",
        )
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    async fn chat_recipients(&self, id: RollCallId) -> StoreResult<Vec<super::ChatRecipient>> {
        let mut rows = sqlx::query(super::RECIPIENT_SQL)
            .bind(id.0)
            .fetch(&self.pool);
        let mut out = Vec::new();
        while let Some(r) = rows.try_next().await? {
            out.push(super::chat_recipient(
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
                r.try_get(5)?,
                r.try_get(6)?,
                r.try_get(7)?,
            )?);
        }
        out.sort_unstable_by(super::ChatRecipient::follow_up_order);
        Ok(out)
    }

    async fn call_list(&self, id: RollCallId) -> StoreResult<Vec<CallListEntry>> {
        if self.roll_call(id).await?.is_none() {
            return Err(StoreError::NoSuchRollCall(id));
        }
        // Sorted here rather than by SQLite, which would copy every wide row into a temporary
        // b-tree first: for 100,000 entries that took seconds.
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM deliveries WHERE roll_call_id = $1 AND {ON_ACTION_LIST}"
        );
        let mut rows = sqlx::query(&sql).bind(id.0).fetch(&self.pool);
        // Converted row by row: the list can be 100,000 long, and holding every raw row as
        // well as every entry would double the memory it takes.
        let mut out = Vec::new();
        while let Some(row) = rows.try_next().await? {
            out.push(entry_from_row(&row)?);
        }
        out.sort_unstable_by(CallListEntry::call_order);
        Ok(out)
    }

    async fn entry(&self, id: RollCallId, staff: &StaffId) -> StoreResult<Option<CallListEntry>> {
        let row = sqlx::query(&format!(
            "SELECT {ENTRY_COLUMNS} FROM deliveries WHERE roll_call_id = $1 AND staff_id = $2"
        ))
        .bind(id.0)
        .bind(staff.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(entry_from_row).transpose()
    }

    async fn record_call(
        &self,
        id: RollCallId,
        staff: &StaffId,
        outcome: Option<CallOutcome>,
        note: Option<&str>,
        by: &str,
        now: Millis,
        after_close: bool,
    ) -> StoreResult<CallListEntry> {
        let note_json = note
            .map(|n| {
                serde_json::to_string(&Note {
                    at: now,
                    by: by.to_string(),
                    text: n.to_string(),
                })
            })
            .transpose()
            .map_err(|e| corrupt("note", e))?;
        let _w = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let (set, guard) = match outcome {
            Some(_) => (
                "outcome = $3, outcome_at = $4, outcome_by = $5, \
                 call_claimed_by = NULL, call_claimed_until = NULL,",
                OUTCOME_GUARD,
            ),
            None => ("", ""),
        };
        let open = if after_close {
            ""
        } else {
            "AND roll_call_id IN (SELECT id FROM roll_calls WHERE state = 'open')"
        };
        let row = sqlx::query(&format!(
            "UPDATE deliveries SET {set} \
               notes = CASE WHEN $6 IS NULL THEN notes \
                            ELSE json_insert(COALESCE(notes, '[]'), '$[#]', json($6)) END \
             WHERE roll_call_id = $1 AND staff_id = $2 {guard} \
               {open} \
               AND COALESCE($3, '') = COALESCE($3, '') AND $4 = $4 AND $5 = $5 \
             RETURNING {ENTRY_COLUMNS}, chat_handle"
        ))
        .bind(id.0)
        .bind(staff.as_str())
        .bind(outcome.map(|o| o.as_str()))
        .bind(now)
        .bind(by)
        .bind(&note_json)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            drop(tx);
            drop(_w);
            return Err(refused_outcome(self, id, staff, by, now).await);
        };
        let entry = entry_from_row(&row)?;
        let handle: Option<String> = row.try_get("chat_handle")?;
        // The call and the note are evidence too: they go in the same append-only log as
        // chat events.
        sqlx::query(shared::CALL_EVENT_SQL)
            .bind(shared::call_event_id(entry.delivery_id, now, by))
            .bind(id.0)
            .bind(entry.delivery_id)
            .bind(handle.unwrap_or_else(|| staff.to_string()))
            .bind(shared::call_event_kind(outcome))
            .bind(shared::call_event_value(outcome, note, by))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(entry)
    }

    async fn answered(
        &self,
        id: RollCallId,
        level: crate::answers::AnswerLevel,
    ) -> StoreResult<Vec<CallListEntry>> {
        let rows = sqlx::query(&shared::answered_sql())
            .bind(id.0)
            .bind(level.rank())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(entry_from_row).collect()
    }

    async fn recipients(&self, id: RollCallId) -> StoreResult<Vec<Recipient>> {
        if self.roll_call(id).await?.is_none() {
            return Err(StoreError::NoSuchRollCall(id));
        }
        let rows = sqlx::query(shared::RECIPIENTS_SQL)
            .bind(id.0)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(shared::recipient_from_row).collect()
    }

    async fn late_answers(&self, open_only: bool) -> StoreResult<Vec<LateAnswer>> {
        let rows = sqlx::query(shared::LATE_ANSWERS_SQL)
            .bind(i64::from(open_only))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(shared::late_from_row).collect()
    }

    async fn close_late_answer(
        &self,
        id: i64,
        by: &str,
        note: &str,
        now: Millis,
    ) -> StoreResult<bool> {
        let _w = self.writer.lock().await;
        let n = sqlx::query(shared::CLOSE_LATE_SQL)
            .bind(id)
            .bind(now)
            .bind(by)
            .bind(note)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    async fn urgent_open(&self) -> StoreResult<i64> {
        let n: i64 = sqlx::query_scalar(&shared::urgent_open_sql())
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    async fn claim_due_resends(
        &self,
        provider: &str,
        now: Millis,
        lease: Duration,
        limit: usize,
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        let _w = self.writer.lock().await;
        let lease_until = now + lease.as_millis() as i64;
        let rows = sqlx::query(&shared::claim_resends_sql(""))
            .bind(lease_until)
            .bind(provider)
            .bind(now)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| claimed(r, lease_until)).collect()
    }

    async fn record_resends(&self, results: &[ResendResult]) -> StoreResult<()> {
        let rows = shared::resend_rows(results);
        if rows.is_empty() {
            return Ok(());
        }
        let _w = self.writer.lock().await;
        sqlx::query(&shared::record_resends_sql(Dialect::Sqlite))
            .bind(rows)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn next_resend(&self, provider: &str) -> StoreResult<Option<Millis>> {
        let t = sqlx::query_scalar(shared::NEXT_RESEND_SQL)
            .bind(provider)
            .fetch_optional(&self.pool)
            .await?;
        Ok(t.flatten())
    }

    async fn claim_next_call(
        &self,
        id: RollCallId,
        caller: &str,
        now: Millis,
        hold: Duration,
    ) -> StoreResult<Option<CallListEntry>> {
        let _w = self.writer.lock().await;
        let row = sqlx::query(&shared::claim_next_call_sql(Dialect::Sqlite))
            .bind(id.0)
            .bind(caller)
            .bind(now + hold.as_millis() as i64)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(entry_from_row).transpose()
    }

    async fn release_call(
        &self,
        id: RollCallId,
        staff: &StaffId,
        caller: &str,
    ) -> StoreResult<bool> {
        let _w = self.writer.lock().await;
        let n = sqlx::query(
            "UPDATE deliveries SET call_claimed_by = NULL, call_claimed_until = NULL \
             WHERE roll_call_id = $1 AND staff_id = $2 AND call_claimed_by = $3",
        )
        .bind(id.0)
        .bind(staff.as_str())
        .bind(caller)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    async fn provider_state(&self, provider: &str, key: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT value FROM provider_state WHERE provider = $1 AND key = $2")
            .bind(provider)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    async fn set_provider_state(
        &self,
        provider: &str,
        key: &str,
        value: &str,
        now: Millis,
    ) -> StoreResult<()> {
        let _w = self.writer.lock().await;
        sqlx::query(
            "INSERT INTO provider_state (provider, key, value, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (provider, key) DO UPDATE SET value = excluded.value, \
               updated_at = excluded.updated_at",
        )
        .bind(provider)
        .bind(key)
        .bind(value)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: Millis,
        ttl: Duration,
    ) -> StoreResult<bool> {
        let _w = self.writer.lock().await;
        let n = sqlx::query(
            "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until \
             WHERE leases.holder = excluded.holder OR leases.until <= $4",
        )
        .bind(name)
        .bind(holder)
        .bind(now + ttl.as_millis() as i64)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    async fn jma_telegram_seen(&self, scope: &str, key: &str) -> StoreResult<Option<String>> {
        self.q_jma_telegram_seen(scope, key).await
    }

    async fn jma_events(
        &self,
        scope: &str,
        rule: &str,
        keys: &[String],
    ) -> StoreResult<Vec<crate::jma::decide::EventState>> {
        self.q_jma_events(scope, rule, keys).await
    }

    async fn jma_last_start(
        &self,
        scope: &str,
        rule: &str,
    ) -> StoreResult<Option<crate::jma::decide::EventState>> {
        self.q_jma_last_start(scope, rule).await
    }

    async fn jma_record(
        &self,
        record: &crate::jma::JmaRecord,
        updates: &[crate::jma::decide::EventState],
        now: Millis,
    ) -> StoreResult<Option<i64>> {
        self.q_jma_record(record, updates, now).await
    }

    async fn jma_log(
        &self,
        scope: Option<&str>,
        roll_call: Option<RollCallId>,
        limit: usize,
    ) -> StoreResult<Vec<crate::jma::JmaRecord>> {
        self.q_jma_log(scope, roll_call, limit).await
    }

    async fn jma_fetched(&self, url: &str) -> StoreResult<bool> {
        self.q_jma_fetched(url).await
    }

    async fn jma_mark_fetched(&self, url: &str, now: Millis) -> StoreResult<()> {
        self.q_jma_mark_fetched(url, now).await
    }

    async fn notified_staff(&self, id: RollCallId) -> StoreResult<Vec<StaffId>> {
        self.q_notified_staff(id).await
    }

    async fn drill_rows(&self, id: RollCallId) -> StoreResult<Vec<crate::drills::DeliveryTimes>> {
        self.q_drill_rows(id).await
    }

    async fn renew_claims(&self, held: &[(i64, Millis)], until: Millis) -> StoreResult<Vec<i64>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<serde_json::Value> = held
            .iter()
            .map(|(id, lease)| json!({"id": id, "l": lease}))
            .collect();
        let rows = serde_json::Value::Array(rows).to_string();
        let _w = self.writer.lock().await;
        let renewed = sqlx::query_scalar(
            "UPDATE deliveries SET lease_until = $1, next_attempt_at = $1 \
             FROM (SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.l') AS l \
                   FROM json_each($2)) AS j \
             WHERE deliveries.id = j.id AND deliveries.state = 'sending' \
               AND deliveries.lease_until = j.l \
             RETURNING deliveries.id",
        )
        .bind(until)
        .bind(rows)
        .fetch_all(&self.pool)
        .await?;
        Ok(renewed)
    }

    async fn set_caught_up(&self, provider: &str, at: Millis, now: Millis) -> StoreResult<()> {
        let _w = self.writer.lock().await;
        sqlx::query(
            "INSERT INTO feed_positions (provider, caught_up_to, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (provider) DO UPDATE SET \
               caught_up_to = MAX(feed_positions.caught_up_to, excluded.caught_up_to), \
               updated_at = excluded.updated_at",
        )
        .bind(provider)
        .bind(at)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn caught_up(&self, provider: &str) -> StoreResult<Option<Millis>> {
        Ok(
            sqlx::query_scalar("SELECT caught_up_to FROM feed_positions WHERE provider = $1")
                .bind(provider)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn enqueue_mails(
        &self,
        mails: &[NewMail],
        now: Millis,
        wall: Millis,
    ) -> StoreResult<u64> {
        let _w = self.writer.lock().await;
        let mut tx = self.pool.begin().await?;
        let mut new = 0;
        for m in mails {
            new += sqlx::query(
                "INSERT INTO mail_outbox (kind, dedupe_key, roll_call_id, recipients, subject, \
                   body, csv_name, csv, meta, state, attempts, next_attempt_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10, $11) \
                 ON CONFLICT (dedupe_key) DO NOTHING",
            )
            .bind(&m.kind)
            .bind(&m.dedupe_key)
            .bind(m.roll_call_id.map(|r| r.0))
            .bind(serde_json::to_string(&m.to).map_err(|e| corrupt("recipients", e))?)
            .bind(&m.subject)
            .bind(&m.body)
            .bind(m.csv.as_ref().map(|(n, _)| n.as_str()))
            .bind(m.csv.as_ref().map(|(_, b)| b.as_slice()))
            .bind(m.meta.as_deref())
            .bind(wall)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(new)
    }

    async fn claim_mail(
        &self,
        wall: Millis,
        lease_until: Millis,
    ) -> StoreResult<Option<StoredMail>> {
        let _w = self.writer.lock().await;
        let row = sqlx::query(&format!(
            "UPDATE mail_outbox SET state = 'sending', lease_until = $1, attempts = attempts + 1 \
             WHERE id = (SELECT id FROM mail_outbox \
               WHERE (state = 'pending' AND next_attempt_at <= $2) \
                  OR (state = 'sending' AND lease_until <= $2) \
               ORDER BY next_attempt_at, id LIMIT 1) \
             RETURNING {MAIL_COLUMNS}"
        ))
        .bind(lease_until)
        .bind(wall)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_to_mail).transpose()
    }

    async fn finish_mail(
        &self,
        id: i64,
        lease_until: Millis,
        outcome: &MailOutcome,
        now: Millis,
    ) -> StoreResult<bool> {
        let (state, next, error, sent_at) = mail_outcome_columns(outcome, now);
        let _w = self.writer.lock().await;
        let n = sqlx::query(
            "UPDATE mail_outbox SET state = $3, lease_until = NULL, \
               next_attempt_at = COALESCE($4, next_attempt_at), last_error = $5, \
               sent_at = COALESCE($6, sent_at) \
             WHERE id = $1 AND state = 'sending' AND lease_until = $2",
        )
        .bind(id)
        .bind(lease_until)
        .bind(state)
        .bind(next)
        .bind(error)
        .bind(sent_at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    async fn mails(&self, roll_call: Option<RollCallId>) -> StoreResult<Vec<StoredMail>> {
        let rows = sqlx::query(&format!(
            "SELECT {MAIL_COLUMNS} FROM mail_outbox \
             WHERE $1 IS NULL OR roll_call_id = $1 ORDER BY id"
        ))
        .bind(roll_call.map(|r| r.0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_to_mail).collect()
    }

    async fn mail_by_key(&self, key: &str) -> StoreResult<Option<StoredMail>> {
        let row = sqlx::query(&format!(
            "SELECT {MAIL_COLUMNS} FROM mail_outbox WHERE dedupe_key = $1"
        ))
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_to_mail).transpose()
    }

    async fn next_mail_due(&self) -> StoreResult<Option<Millis>> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(t) FROM ( \
               SELECT MIN(next_attempt_at) AS t FROM mail_outbox WHERE state = 'pending' \
               UNION ALL \
               SELECT MIN(lease_until) AS t FROM mail_outbox WHERE state = 'sending')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn lease(&self, name: &str) -> StoreResult<Option<(String, Millis)>> {
        Ok(
            sqlx::query_as("SELECT holder, until FROM leases WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn take_lease(
        &self,
        name: &str,
        from: &str,
        to: &str,
        now: Millis,
        ttl: Duration,
    ) -> StoreResult<bool> {
        let _w = self.writer.lock().await;
        let n = sqlx::query(
            "UPDATE leases SET holder = $3, until = $4 WHERE name = $1 AND holder = $2",
        )
        .bind(name)
        .bind(from)
        .bind(to)
        .bind(now + ttl.as_millis() as i64)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

impl SqliteStore {
    async fn roll_call_by_key(&self, key: &str) -> StoreResult<Option<RollCall>> {
        let row = sqlx::query("SELECT * FROM roll_calls WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(row_to_roll_call).transpose()
    }
}

fn row_to_mail(r: &sqlx::sqlite::SqliteRow) -> StoreResult<StoredMail> {
    let to: String = r.try_get("recipients")?;
    let state: String = r.try_get("state")?;
    let csv_name: Option<String> = r.try_get("csv_name")?;
    let csv: Option<Vec<u8>> = r.try_get("csv")?;
    Ok(StoredMail {
        id: r.try_get("id")?,
        mail: NewMail {
            kind: r.try_get("kind")?,
            dedupe_key: r.try_get("dedupe_key")?,
            roll_call_id: r.try_get::<Option<i64>, _>("roll_call_id")?.map(RollCallId),
            to: serde_json::from_str(&to).map_err(|e| corrupt("mail recipients", e))?,
            subject: r.try_get("subject")?,
            body: r.try_get("body")?,
            csv: csv_name.zip(csv),
            meta: r.try_get("meta")?,
        },
        state: MailState::parse(&state).ok_or_else(|| corrupt("mail state", &state))?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        lease_until: r.try_get("lease_until")?,
        last_error: r.try_get("last_error")?,
        created_at: r.try_get("created_at")?,
        sent_at: r.try_get("sent_at")?,
    })
}

/// A claimed delivery from `RETURNING id, roll_call_id, chat_handle, attempts, kind`.
fn claimed(r: &sqlx::sqlite::SqliteRow, lease_until: Millis) -> StoreResult<ClaimedDelivery> {
    let handle: Option<String> = r.try_get("chat_handle")?;
    let handle = handle.ok_or_else(|| corrupt("claimed delivery", "no chat id"))?;
    Ok(ClaimedDelivery {
        id: r.try_get("id")?,
        roll_call_id: RollCallId(r.try_get("roll_call_id")?),
        chat_handle: ChatHandle::parse(&handle).map_err(|e| corrupt("chat id", e))?,
        attempts: r.try_get("attempts")?,
        kind: parse_kind(r.try_get("kind")?)?,
        lease_until,
    })
}

/// An inbound batch's reads and writes, inside its transaction.
struct Batch<'a, 't>(&'a mut sqlx::Transaction<'t, sqlx::Sqlite>);

#[async_trait]
impl BatchReader for Batch<'_, '_> {
    async fn memberships(
        &mut self,
        provider: &str,
        handles: &[String],
        named: &[i64],
    ) -> StoreResult<Vec<(String, Membership)>> {
        let rows = sqlx::query(
            "SELECT d.chat_handle, d.roll_call_id, d.id, d.kind, d.sent_at, r.state \
             FROM deliveries AS d JOIN roll_calls AS r ON r.id = d.roll_call_id \
             WHERE d.provider = $1 AND d.chat_handle IN (SELECT value FROM json_each($2)) \
               AND (r.state = 'open' OR d.roll_call_id IN (SELECT value FROM json_each($3)) \
                    OR d.roll_call_id = (SELECT MAX(x.roll_call_id) FROM deliveries AS x \
                                         WHERE x.provider = d.provider \
                                           AND x.chat_handle = d.chat_handle))",
        )
        .bind(provider)
        .bind(json!(handles).to_string())
        .bind(json!(named).to_string())
        .fetch_all(&mut **self.0)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    Membership {
                        roll_call: r.try_get(1)?,
                        delivery: r.try_get(2)?,
                        kind: parse_kind(r.try_get(3)?)?,
                        sent_at: r.try_get(4)?,
                        open: r.try_get::<&str, _>(5)? == "open",
                    },
                ))
            })
            .collect()
    }

    async fn roll_infos(&mut self, ids: &[i64]) -> StoreResult<HashMap<i64, RollInfo>> {
        let rows = sqlx::query(
            "SELECT id, state, buttons, shelter_buttons FROM roll_calls \
             WHERE id IN (SELECT value FROM json_each($1))",
        )
        .bind(json!(ids).to_string())
        .fetch_all(&mut **self.0)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    RollInfo::parse(r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)?,
                ))
            })
            .collect()
    }

    async fn run(
        &mut self,
        sql: &str,
        provider: &str,
        now: Millis,
        rows: String,
    ) -> StoreResult<(u64, Vec<String>)> {
        if sql.contains("RETURNING") {
            let out = sqlx::query(sql)
                .bind(provider)
                .bind(now)
                .bind(rows)
                .fetch_all(&mut **self.0)
                .await?;
            let firsts = out
                .iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((firsts.len() as u64, firsts))
        } else {
            let n = sqlx::query(sql)
                .bind(provider)
                .bind(now)
                .bind(rows)
                .execute(&mut **self.0)
                .await?
                .rows_affected();
            Ok((n, Vec::new()))
        }
    }
}

super::jma_sql::jma_queries!(SqliteStore);

impl SqliteStore {
    /// Serialises the JMA writes with this process's other writers (SQLite has one writer).
    async fn jma_write_lock(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        Some(self.writer.lock().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opening a new file must not race its own pool connections into "database is locked".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_file_opens_in_wal_mode_every_time() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..150 {
            let url = format!("sqlite://{}", dir.path().join(format!("{i}.db")).display());
            let store = SqliteStore::connect(&url).await.expect("opens");
            // Four connections at once, as the pool hands them out under load.
            let modes = futures::future::try_join_all((0..4).map(|_| {
                sqlx::query_scalar::<_, String>("PRAGMA journal_mode").fetch_one(store.pool())
            }))
            .await
            .expect("every connection works");
            assert!(modes.iter().all(|m| m == "wal"), "{modes:?}");
        }
    }
}
