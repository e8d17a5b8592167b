//! The embedded default store: one SQLite file in WAL mode, created if missing.
//!
//! Every hot-path operation is one set-based statement over a JSON array of rows
//! (`json_each`), never a statement per row: on SQLite through sqlx each statement costs a
//! cross-thread round trip, rows cost almost nothing. What SQLite and PostgreSQL share is
//! written once ([`super::common`]); this file holds what SQLite does its own way: the JSON
//! batches, one writer at a time, and opening the file.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Sqlite, SqlitePool, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use super::shared::{
    corrupt, kind_str, membership_from_row, roll_info_from_row, BatchReader, Dialect, Membership,
    RollInfo,
};
use super::StoreResult;
use crate::answers::UrgentWords;
use crate::clock::Millis;
use crate::contacts::Contact;
use crate::rollcall::{NewDelivery, NewRollCall, SendResult};

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

/// What SQLite does its own way, for [`super::common::store_impl!`].
impl SqliteStore {
    /// SQLite has one writer at a time: every write of this process takes its turn here.
    async fn write_lock(&self) -> Option<MutexGuard<'_, ()>> {
        Some(self.writer.lock().await)
    }

    /// Runs a transaction once: writers queue for [`Self::write_lock`], so none loses a race
    /// to another and is rolled back for it.
    async fn retrying<T, Fut>(&self, op: impl Fn() -> Fut) -> StoreResult<T>
    where
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        op().await
    }

    async fn run_migrations(&self) -> StoreResult<()> {
        sqlx::migrate!("migrations/sqlite").run(&self.pool).await?;
        Ok(())
    }

    async fn write_contacts(&self, contacts: &[Contact], now: Millis) -> StoreResult<()> {
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
        Ok(())
    }

    async fn read_contacts(&self) -> StoreResult<Vec<Contact>> {
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

    /// Writes roll call `id`'s deliveries. Multi-row inserts with every value bound: no
    /// per-row statement and no JSON to take apart on the way in.
    async fn insert_deliveries(
        tx: &mut Transaction<'_, Sqlite>,
        id: i64,
        new: &NewRollCall,
        recipients: &[NewDelivery],
        now: Millis,
    ) -> StoreResult<()> {
        for chunk in recipients.chunks(INSERT_CHUNK) {
            let mut insert = sqlx::QueryBuilder::<Sqlite>::new(
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
            insert.build().execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Claims due deliveries (the caller holds the writer's turn), returning `id,
    /// roll_call_id, chat_handle, attempts, kind`.
    async fn claim_due(
        &self,
        provider: &str,
        now: Millis,
        lease_until: Millis,
        limit: usize,
    ) -> StoreResult<Vec<SqliteRow>> {
        // Expired leases first (a crashed worker's batch), then due pending rows; each part
        // walks the (provider, state, next_attempt_at) index and stops at the limit. A claimed
        // row's next_attempt_at is its lease's end, so both parts are index ranges; the
        // lease_until check keeps a row claimed by an anpi from before that rule (a replica
        // not yet upgraded) until its real lease ends.
        Ok(sqlx::query(
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
        .await?)
    }

    async fn record_sends(&self, results: &[SendResult], now: Millis) -> StoreResult<()> {
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

    async fn renew(&self, held: &[(i64, Millis)], until: Millis) -> StoreResult<Vec<i64>> {
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

    async fn check(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

super::common::store_impl!(SqliteStore, Dialect::Sqlite);

/// An inbound batch's reads and writes, inside its transaction.
struct Batch<'a, 't>(&'a mut Transaction<'t, Sqlite>);

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
        rows.iter().map(membership_from_row).collect()
    }

    async fn roll_infos(&mut self, ids: &[i64]) -> StoreResult<HashMap<i64, RollInfo>> {
        let rows = sqlx::query(
            "SELECT id, state, buttons, shelter_buttons FROM roll_calls \
             WHERE id IN (SELECT value FROM json_each($1))",
        )
        .bind(json!(ids).to_string())
        .fetch_all(&mut **self.0)
        .await?;
        rows.iter().map(roll_info_from_row).collect()
    }

    async fn run(
        &mut self,
        sql: &str,
        provider: &str,
        now: Millis,
        rows: String,
    ) -> StoreResult<(u64, Vec<String>)> {
        self.run_rows(sql, provider, now, rows).await
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
