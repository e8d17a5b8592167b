//! The PostgreSQL store: the backend for organisations that run several replicas of anpi on
//! one database.
//!
//! Same tables, columns and semantics as [`super::sqlite`]; only the dialect differs. Every
//! hot-path operation is one set-based statement over arrays (`UNNEST`), never a statement per
//! row. Invariants beyond the trait's: a claim locks its rows with `FOR UPDATE SKIP LOCKED`,
//! so two replicas claiming at once get disjoint batches and never wait on each other; a
//! transaction that loses a deadlock or serialisation race is retried here, so a worker never
//! drops a batch's results because another replica touched the same rows.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row, Transaction};

/// Retry results as one array per column (id, next attempt, error, refund, claim's lease).
#[derive(Debug, Default)]
struct RetryColumns {
    id: Vec<i64>,
    next: Vec<i64>,
    err: Vec<String>,
    refund: Vec<i64>,
    lease: Vec<i64>,
}

/// One batch of send results, split by outcome kind into columns for `UNNEST`.
#[derive(Debug, Default)]
struct ResultColumns {
    sent: (Vec<i64>, Vec<i64>, Vec<i64>, Vec<Option<String>>),
    retry: RetryColumns,
    failed: (Vec<i64>, Vec<String>),
}

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

/// Rows per multi-row statement when writing deliveries and contacts.
const INSERT_CHUNK: usize = 10_000;
/// Attempts at a transaction that lost a deadlock or serialisation race.
const RACE_RETRIES: u32 = 5;
/// How long a health check waits for the database before calling it unreachable.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// How the connection pool behaves; from the `[database]` settings.
#[derive(Debug, Clone)]
pub struct PgSettings {
    pub max_connections: u32,
    /// How long an operation waits for a connection before it fails (and its worker retries).
    pub acquire_timeout: Duration,
}

impl Default for PgSettings {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// What makes a free-text answer urgent.
    words: Arc<UrgentWords>,
}

impl PostgresStore {
    /// Connects to `postgres://...` or `postgresql://...`. The pool tests each connection
    /// before handing it out, so connections the server dropped (a restart, a terminated
    /// backend) are replaced instead of failing the next statement.
    pub async fn connect(url: &str, settings: &PgSettings) -> StoreResult<Self> {
        let opts = PgConnectOptions::from_str(url)?.application_name("anpi");
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .min_connections(0)
            .acquire_timeout(settings.acquire_timeout)
            .test_before_acquire(true)
            .idle_timeout(Some(Duration::from_secs(300)))
            .connect_with(opts)
            .await?;
        Ok(Self {
            pool,
            words: Arc::new(UrgentWords::default()),
        })
    }

    /// Uses `words` to tell urgent free text from the rest.
    pub fn with_urgent_words(mut self, words: UrgentWords) -> Self {
        self.words = Arc::new(words);
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn replace_contacts_once(
        &self,
        chunks: &[(Vec<String>, Vec<String>)],
        now: Millis,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM contacts")
            .execute(&mut *tx)
            .await?;
        for (ids, docs) in chunks {
            sqlx::query(
                "INSERT INTO contacts (id, doc, imported_at) \
                 SELECT id, doc, $3 FROM UNNEST($1::text[], $2::text[]) AS j(id, doc)",
            )
            .bind(ids)
            .bind(docs)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn close_once(&self, id: RollCallId, now: Millis) -> StoreResult<bool> {
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

    async fn record_once(&self, cols: &ResultColumns, now: Millis) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let (sent, retry, failed) = (&cols.sent, &cols.retry, &cols.failed);
        if !sent.0.is_empty() {
            sqlx::query(
                "UPDATE deliveries AS d SET \
                   state = CASE WHEN d.state = 'sending' THEN 'sent' ELSE d.state END, \
                   sent_at = COALESCE(d.sent_at, j.at), \
                   deadline_at = COALESCE(d.deadline_at, j.dl), \
                   message_id = COALESCE(j.mid, d.message_id), \
                   lease_until = NULL, \
                   resend_at = COALESCE(d.resend_at, j.at + \
                     (SELECT r.resend_after_ms FROM roll_calls r WHERE r.id = d.roll_call_id)) \
                 FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[]) \
                   AS j(id, at, dl, mid) \
                 WHERE d.id = j.id AND d.state IN ('sending', 'read', 'answered')",
            )
            .bind(&sent.0)
            .bind(&sent.1)
            .bind(&sent.2)
            .bind(&sent.3)
            .execute(&mut *tx)
            .await?;
        }
        if !retry.id.is_empty() {
            sqlx::query(
                "UPDATE deliveries AS d SET state = 'pending', next_attempt_at = j.next, \
                   last_error = j.err, lease_until = NULL, attempts = d.attempts - j.refund \
                 FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[]) \
                   AS j(id, next, err, refund, lease) \
                 WHERE d.id = j.id AND d.state = 'sending' AND d.lease_until = j.lease",
            )
            .bind(&retry.id)
            .bind(&retry.next)
            .bind(&retry.err)
            .bind(&retry.refund)
            .bind(&retry.lease)
            .execute(&mut *tx)
            .await?;
        }
        if !failed.0.is_empty() {
            sqlx::query(
                "UPDATE deliveries AS d SET state = 'failed', last_error = j.err, \
                   lease_until = NULL, \
                   escalated_at = COALESCE(d.escalated_at, $3), \
                   escalation_reason = COALESCE(d.escalation_reason, 'send_failed') \
                 FROM UNNEST($1::bigint[], $2::text[]) AS j(id, err) \
                 WHERE d.id = j.id AND d.state = 'sending'",
            )
            .bind(&failed.0)
            .bind(&failed.1)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn roll_call_by_key(&self, key: &str) -> StoreResult<Option<RollCall>> {
        let row = sqlx::query("SELECT * FROM roll_calls WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(row_to_roll_call).transpose()
    }
}

/// Runs `op` (which opens and commits its own transaction) again if it lost a deadlock or
/// serialisation race to another replica: the database rolled it back, so repeating is safe.
async fn retrying<T, Fut>(op: impl Fn() -> Fut) -> StoreResult<T>
where
    Fut: std::future::Future<Output = StoreResult<T>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match op().await {
            Err(e) if attempt < RACE_RETRIES && lost_race(&e) => {
                tracing::debug!(error = %e, attempt, "transaction lost a race; retrying");
            }
            other => return other,
        }
    }
}

/// A deadlock (40P01) or serialisation failure (40001): the transaction was rolled back.
fn lost_race(e: &StoreError) -> bool {
    matches!(e, StoreError::Database(sqlx::Error::Database(d))
        if matches!(d.code().as_deref(), Some("40P01" | "40001")))
}

fn pg_row_to_mail(r: &PgRow) -> StoreResult<StoredMail> {
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

fn row_to_roll_call(r: &PgRow) -> StoreResult<RollCall> {
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
        drill: r.try_get("drill")?,
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
impl Store for PostgresStore {
    async fn migrate(&self) -> StoreResult<()> {
        super::schema::POSTGRES.run(&self.pool).await?;
        Ok(())
    }

    async fn replace_contacts(&self, contacts: &[Contact], now: Millis) -> StoreResult<usize> {
        let mut chunks: Vec<(Vec<String>, Vec<String>)> = Vec::new();
        for chunk in contacts.chunks(INSERT_CHUNK) {
            let ids = chunk.iter().map(|c| c.id.to_string()).collect();
            let docs = chunk
                .iter()
                .map(|c| serde_json::to_string(c).map_err(|e| corrupt("contact", e)))
                .collect::<StoreResult<_>>()?;
            chunks.push((ids, docs));
        }
        retrying(|| self.replace_contacts_once(&chunks, now)).await?;
        Ok(contacts.len())
    }

    async fn contacts(&self) -> StoreResult<Vec<Contact>> {
        let rows = sqlx::query("SELECT doc FROM contacts ORDER BY id COLLATE \"C\"")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let doc: &str = r.try_get("doc")?;
                serde_json::from_str(doc).map_err(|e| corrupt("stored contact", e))
            })
            .collect()
    }

    async fn create_roll_call(
        &self,
        new: &NewRollCall,
        recipients: &[NewDelivery],
        now: Millis,
    ) -> StoreResult<RollCall> {
        if let Some(key) = &new.idempotency_key {
            if let Some(existing) = self.roll_call_by_key(key).await? {
                return Ok(existing);
            }
        }
        let buttons = serde_json::to_string(&new.buttons).map_err(|e| corrupt("buttons", e))?;
        let mut tx = self.pool.begin().await?;
        // A concurrent start with the same key waits here on the unique index until the first
        // commits, then inserts nothing: the first roll call is the answer.
        let inserted = sqlx::query(
            "INSERT INTO roll_calls (scenario, title, message, buttons, drill, deadline_ms, \
             provider, state, created_at, recipients, idempotency_key, shelter_buttons, \
             resend_after_ms, asks) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'open', $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        )
        .bind(&new.scenario)
        .bind(&new.title)
        .bind(&new.message)
        .bind(&buttons)
        .bind(new.drill)
        .bind(new.deadline_ms)
        .bind(&new.provider)
        .bind(now)
        .bind(recipients.len() as i64)
        .bind(&new.idempotency_key)
        .bind(serde_json::to_string(&new.shelter_buttons).map_err(|e| corrupt("buttons", e))?)
        .bind(new.resend_after_ms)
        .bind(serde_json::to_string(&new.asks).map_err(|e| corrupt("asks", e))?)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = inserted else {
            tx.rollback().await?;
            let key = new.idempotency_key.as_deref().unwrap_or_default();
            return self
                .roll_call_by_key(key)
                .await?
                .ok_or_else(|| corrupt("idempotency key", "vanished"));
        };
        let id: i64 = row.try_get("id")?;
        for chunk in recipients.chunks(INSERT_CHUNK) {
            let mut staff = Vec::with_capacity(chunk.len());
            let mut name = Vec::with_capacity(chunk.len());
            let mut dept = Vec::with_capacity(chunk.len());
            let mut shelter = Vec::with_capacity(chunk.len());
            let mut kind = Vec::with_capacity(chunk.len());
            let mut prio = Vec::with_capacity(chunk.len());
            let mut phones = Vec::with_capacity(chunk.len());
            let mut email = Vec::with_capacity(chunk.len());
            let mut handle = Vec::with_capacity(chunk.len());
            let mut kana = Vec::with_capacity(chunk.len());
            let mut role = Vec::with_capacity(chunk.len());
            for d in chunk {
                kana.push(d.kana.clone());
                role.push(d.role.clone());
                staff.push(d.staff_id.to_string());
                name.push(d.name.clone());
                dept.push(d.department.clone());
                shelter.push(d.shelter.clone());
                kind.push(kind_str(d.kind));
                prio.push(d.call_priority as i64);
                phones.push(serde_json::to_string(&d.phones).unwrap_or_else(|_| "[]".into()));
                email.push(d.email.clone());
                handle.push(d.chat_handle.as_ref().map(|h| h.to_string()));
            }
            sqlx::query(
                "INSERT INTO deliveries (roll_call_id, staff_id, name, department, shelter, kind, \
                 call_priority, phones, email, provider, chat_handle, state, next_attempt_at, \
                 last_error, escalated_at, escalation_reason, kana, role) \
                 SELECT $1, s, n, d, sh, k, p, ph, e, $2, h, \
                   CASE WHEN h IS NULL THEN 'failed' ELSE 'pending' END, $3, \
                   CASE WHEN h IS NULL THEN 'no chat id on ' || $2 END, \
                   CASE WHEN h IS NULL THEN $3 END, \
                   CASE WHEN h IS NULL THEN 'no_chat_id' END, ka, ro \
                 FROM UNNEST($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
                             $9::bigint[], $10::text[], $11::text[], $12::text[], \
                             $13::text[], $14::text[]) \
                   AS j(s, n, d, sh, k, p, ph, e, h, ka, ro)",
            )
            .bind(id)
            .bind(&new.provider)
            .bind(now)
            .bind(&staff)
            .bind(&name)
            .bind(&dept)
            .bind(&shelter)
            .bind(&kind)
            .bind(&prio)
            .bind(&phones)
            .bind(&email)
            .bind(&handle)
            .bind(&kana)
            .bind(&role)
            .execute(&mut *tx)
            .await?;
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
        retrying(|| self.close_once(id, now)).await
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
        let lease_until = now + lease.as_millis() as i64;
        // Expired leases first (a crashed replica's batch), then due pending rows, oldest
        // first; a claimed row's next_attempt_at is its lease's end, so both walk one index
        // (lease_until is checked too, for rows claimed by a replica not yet upgraded). SKIP LOCKED: rows another replica is claiming this instant are passed over,
        // and a row changed since this statement's snapshot is re-checked before it is taken.
        let rows = sqlx::query(
            "WITH expired AS ( \
               SELECT id FROM deliveries \
               WHERE provider = $2 AND state = 'sending' AND next_attempt_at <= $3 \
                 AND lease_until <= $3 \
               LIMIT $4 FOR UPDATE SKIP LOCKED), \
             due AS ( \
               SELECT id FROM deliveries \
               WHERE provider = $2 AND state = 'pending' AND next_attempt_at <= $3 \
               ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED), \
             picked AS ( \
               SELECT id FROM (SELECT id FROM expired UNION ALL SELECT id FROM due) AS u LIMIT $4) \
             UPDATE deliveries AS d \
             SET state = 'sending', lease_until = $1, next_attempt_at = $1, \
               attempts = d.attempts + 1 \
             FROM picked WHERE d.id = picked.id \
             RETURNING d.id, d.roll_call_id, d.chat_handle, d.attempts, d.kind",
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
        let mut cols = ResultColumns::default();
        for r in results {
            match r {
                SendResult::Sent {
                    id,
                    at,
                    deadline_at,
                    message_id,
                } => {
                    cols.sent.0.push(*id);
                    cols.sent.1.push(*at);
                    cols.sent.2.push(*deadline_at);
                    cols.sent.3.push(message_id.clone());
                }
                SendResult::Retry {
                    id,
                    next_attempt_at,
                    error,
                    refund_attempt,
                    lease_until,
                } => {
                    cols.retry.id.push(*id);
                    cols.retry.next.push(*next_attempt_at);
                    cols.retry.err.push(error.clone());
                    cols.retry.refund.push(*refund_attempt as i64);
                    cols.retry.lease.push(*lease_until);
                }
                SendResult::Failed { id, error } => {
                    cols.failed.0.push(*id);
                    cols.failed.1.push(error.clone());
                }
            }
        }
        retrying(|| self.record_once(&cols, now)).await
    }

    async fn next_due_attempt(&self, provider: &str) -> StoreResult<Option<Millis>> {
        let row = sqlx::query(
            "SELECT LEAST( \
               (SELECT MIN(next_attempt_at) FROM deliveries WHERE provider = $1 AND state = 'pending'), \
               (SELECT MIN(next_attempt_at) FROM deliveries WHERE provider = $1 AND state = 'sending')) AS t",
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
        retrying(|| async {
            let mut tx = self.pool.begin().await?;
            let summary = {
                let mut reader = Batch(&mut tx);
                shared::apply_batch(
                    &mut reader,
                    Dialect::Postgres,
                    &self.words,
                    provider,
                    events,
                    now,
                )
                .await?
            };
            if let Some(c) = cursor {
                sqlx::query(
                    "INSERT INTO provider_cursors (provider, cursor, updated_at) \
                     VALUES ($1, $2, $3) ON CONFLICT (provider) DO UPDATE SET \
                       cursor = EXCLUDED.cursor, updated_at = EXCLUDED.updated_at",
                )
                .bind(provider)
                .bind(c)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(summary)
        })
        .await
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
        let row = sqlx::query(
            "SELECT MIN(deadline_at) AS t FROM deliveries \
             WHERE state = 'sent' AND escalated_at IS NULL \
               AND roll_call_id IN (SELECT id FROM roll_calls WHERE state = 'open')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("t")?)
    }

    async fn escalate_due(&self, now: Millis) -> StoreResult<u64> {
        let n = sqlx::query(
            "UPDATE deliveries SET escalated_at = $1, escalation_reason = 'never_read' \
             WHERE state = 'sent' AND escalated_at IS NULL AND deadline_at <= $1 \
               AND roll_call_id IN (SELECT id FROM roll_calls WHERE state = 'open')",
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
        let rows = sqlx::query(&format!(
            "SELECT {ENTRY_COLUMNS} FROM deliveries \
             WHERE roll_call_id = $1 AND {ON_ACTION_LIST} ORDER BY {}",
            Dialect::Postgres.action_order(false)
        ))
        .bind(id.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry_from_row).collect()
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
        let found =
            retrying(|| self.call_once(id, staff, outcome, note, by, now, after_close)).await?;
        match found {
            Some(entry) => Ok(entry),
            None => Err(refused_outcome(self, id, staff, by, now).await),
        }
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
        let lease_until = now + lease.as_millis() as i64;
        let rows = sqlx::query(&shared::claim_resends_sql("FOR UPDATE SKIP LOCKED"))
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
        let sql = shared::record_resends_sql(Dialect::Postgres);
        retrying(|| async {
            sqlx::query(&sql).bind(&rows).execute(&self.pool).await?;
            Ok(())
        })
        .await
    }

    async fn next_resend(&self, provider: &str) -> StoreResult<Option<Millis>> {
        let t: Option<Option<i64>> = sqlx::query_scalar(shared::NEXT_RESEND_SQL)
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
        let row = sqlx::query(&shared::claim_next_call_sql(Dialect::Postgres))
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
        sqlx::query(
            "INSERT INTO provider_state (provider, key, value, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (provider, key) DO UPDATE SET value = EXCLUDED.value, \
               updated_at = EXCLUDED.updated_at",
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
        // One statement: concurrent callers are serialised on the row; exactly one of them
        // finds it free or expired.
        let n = sqlx::query(
            "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, until = EXCLUDED.until \
             WHERE leases.holder = EXCLUDED.holder OR leases.until <= $4",
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
        let (ids, leases): (Vec<i64>, Vec<i64>) = held.iter().copied().unzip();
        let renewed = retrying(|| async {
            Ok(sqlx::query_scalar(
                "UPDATE deliveries AS d SET lease_until = $1, next_attempt_at = $1 \
                 FROM UNNEST($2::bigint[], $3::bigint[]) AS j(id, l) \
                 WHERE d.id = j.id AND d.state = 'sending' AND d.lease_until = j.l \
                 RETURNING d.id",
            )
            .bind(until)
            .bind(&ids)
            .bind(&leases)
            .fetch_all(&self.pool)
            .await?)
        })
        .await?;
        Ok(renewed)
    }

    async fn set_caught_up(&self, provider: &str, at: Millis, now: Millis) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO feed_positions (provider, caught_up_to, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (provider) DO UPDATE SET \
               caught_up_to = GREATEST(feed_positions.caught_up_to, EXCLUDED.caught_up_to), \
               updated_at = EXCLUDED.updated_at",
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
        retrying(|| async {
            let mut tx = self.pool.begin().await?;
            let mut new = 0;
            for m in mails {
                new += sqlx::query(
                    "INSERT INTO mail_outbox (kind, dedupe_key, roll_call_id, recipients, \
                       subject, body, csv_name, csv, meta, state, attempts, next_attempt_at, \
                       created_at) \
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
        })
        .await
    }

    async fn claim_mail(
        &self,
        wall: Millis,
        lease_until: Millis,
    ) -> StoreResult<Option<StoredMail>> {
        let row = sqlx::query(&format!(
            "UPDATE mail_outbox SET state = 'sending', lease_until = $1, attempts = attempts + 1 \
             WHERE id = (SELECT id FROM mail_outbox \
               WHERE (state = 'pending' AND next_attempt_at <= $2) \
                  OR (state = 'sending' AND lease_until <= $2) \
               ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING {MAIL_COLUMNS}"
        ))
        .bind(lease_until)
        .bind(wall)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(pg_row_to_mail).transpose()
    }

    async fn finish_mail(
        &self,
        id: i64,
        lease_until: Millis,
        outcome: &MailOutcome,
        now: Millis,
    ) -> StoreResult<bool> {
        let (state, next, error, sent_at) = mail_outcome_columns(outcome, now);
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
             WHERE $1::bigint IS NULL OR roll_call_id = $1 ORDER BY id"
        ))
        .bind(roll_call.map(|r| r.0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(pg_row_to_mail).collect()
    }

    async fn mail_by_key(&self, key: &str) -> StoreResult<Option<StoredMail>> {
        let row = sqlx::query(&format!(
            "SELECT {MAIL_COLUMNS} FROM mail_outbox WHERE dedupe_key = $1"
        ))
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(pg_row_to_mail).transpose()
    }

    async fn next_mail_due(&self) -> StoreResult<Option<Millis>> {
        Ok(sqlx::query_scalar(
            "SELECT LEAST( \
               (SELECT MIN(next_attempt_at) FROM mail_outbox WHERE state = 'pending'), \
               (SELECT MIN(lease_until) FROM mail_outbox WHERE state = 'sending'))",
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
        match tokio::time::timeout(PING_TIMEOUT, sqlx::query("SELECT 1").execute(&self.pool)).await
        {
            Ok(res) => {
                res?;
                Ok(())
            }
            Err(_) => Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
        }
    }
}

/// The body of [`Store::apply_events`], inside its transaction.
impl PostgresStore {
    /// One try at [`Store::record_call`]; `None` when the guard refused it.
    #[allow(clippy::too_many_arguments)]
    async fn call_once(
        &self,
        id: RollCallId,
        staff: &StaffId,
        outcome: Option<CallOutcome>,
        note: Option<&str>,
        by: &str,
        now: Millis,
        after_close: bool,
    ) -> StoreResult<Option<CallListEntry>> {
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
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE deliveries SET {set} \
               notes = CASE WHEN $6::text IS NULL THEN notes \
                            ELSE (COALESCE(notes::jsonb, '[]'::jsonb) || jsonb_build_array($6::jsonb))::text END \
             WHERE roll_call_id = $1 AND staff_id = $2 {guard} \
               {open} \
               AND COALESCE($3::text, '') = COALESCE($3::text, '') AND $4::bigint = $4::bigint \
               AND $5::text = $5::text \
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
        let Some(row) = row else { return Ok(None) };
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
        Ok(Some(entry))
    }
}

/// A claimed delivery from `RETURNING id, roll_call_id, chat_handle, attempts, kind`.
fn claimed(r: &PgRow, lease_until: Millis) -> StoreResult<ClaimedDelivery> {
    let handle: Option<&str> = r.try_get("chat_handle")?;
    let handle = handle.ok_or_else(|| corrupt("claimed delivery", "no chat id"))?;
    Ok(ClaimedDelivery {
        id: r.try_get("id")?,
        roll_call_id: RollCallId(r.try_get("roll_call_id")?),
        chat_handle: ChatHandle::parse(handle).map_err(|e| corrupt("chat id", e))?,
        attempts: r.try_get("attempts")?,
        kind: parse_kind(r.try_get("kind")?)?,
        lease_until,
    })
}

/// An inbound batch's reads and writes, inside its transaction.
struct Batch<'a, 't>(&'a mut Transaction<'t, Postgres>);

#[async_trait]
impl BatchReader for Batch<'_, '_> {
    async fn memberships(
        &mut self,
        provider: &str,
        handles: &[String],
        named: &[i64],
    ) -> StoreResult<Vec<(String, Membership)>> {
        // Hold the open roll calls open until this batch commits: a close waits for it, so no
        // answer is written into a roll call that closed after it was read as open (and the
        // close then carries any urgent answer to the late answers).
        sqlx::query("SELECT id FROM roll_calls WHERE state = 'open' FOR SHARE")
            .fetch_all(&mut **self.0)
            .await?;
        let rows = sqlx::query(
            "SELECT d.chat_handle, d.roll_call_id, d.id, d.kind, d.sent_at, r.state \
             FROM deliveries AS d JOIN roll_calls AS r ON r.id = d.roll_call_id \
             WHERE d.provider = $1 AND d.chat_handle = ANY($2::text[]) \
               AND (r.state = 'open' OR d.roll_call_id = ANY($3::bigint[]) \
                    OR d.roll_call_id = (SELECT MAX(x.roll_call_id) FROM deliveries AS x \
                                         WHERE x.provider = d.provider \
                                           AND x.chat_handle = d.chat_handle))",
        )
        .bind(provider)
        .bind(handles)
        .bind(named)
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
            "SELECT id, state, buttons, shelter_buttons FROM roll_calls WHERE id = ANY($1::bigint[])",
        )
        .bind(ids)
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

super::jma_sql::jma_queries!(PostgresStore);

impl PostgresStore {
    /// Serialises the JMA writes (PostgreSQL needs no lock of anpi's own).
    async fn jma_write_lock(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        None
    }
}
