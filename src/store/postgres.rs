//! The PostgreSQL store: the backend for organisations that run several replicas of anpi on
//! one database.
//!
//! Same tables, columns and semantics as [`super::sqlite`]; what the two share is written
//! once ([`super::common`]), and this file holds only what PostgreSQL does its own way. Every
//! hot-path operation is one set-based statement over arrays (`UNNEST`), never a statement per
//! row. Invariants beyond the trait's: a claim locks its rows with `FOR UPDATE SKIP LOCKED`,
//! so two replicas claiming at once get disjoint batches and never wait on each other; a
//! transaction that loses a deadlock or serialisation race is retried here, so a worker never
//! drops a batch's results because another replica touched the same rows.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::MutexGuard;

use super::shared::{
    corrupt, in_one_transaction, kind_str, record_failed_sql, record_retry_sql, record_sent_sql,
    renew_claims_sql, split_results, Dialect, INSERT_DELIVERIES,
};
use super::{StoreError, StoreResult};
use crate::answers::UrgentWords;
use crate::clock::Millis;
use crate::contacts::Contact;
use crate::rollcall::{NewDelivery, NewRollCall, SendResult};

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

    async fn record_once(&self, cols: &ResultColumns, now: Millis) -> StoreResult<()> {
        let (sent, retry, failed) = (&cols.sent, &cols.retry, &cols.failed);
        let sqls = (
            record_sent_sql(Dialect::Postgres),
            record_retry_sql(Dialect::Postgres),
            record_failed_sql(Dialect::Postgres),
        );
        let mut statements = Vec::new();
        if !sent.0.is_empty() {
            statements.push(
                sqlx::query(&sqls.0)
                    .bind(&sent.0)
                    .bind(&sent.1)
                    .bind(&sent.2)
                    .bind(&sent.3),
            );
        }
        if !retry.id.is_empty() {
            statements.push(
                sqlx::query(&sqls.1)
                    .bind(&retry.id)
                    .bind(&retry.next)
                    .bind(&retry.err)
                    .bind(&retry.refund)
                    .bind(&retry.lease),
            );
        }
        if !failed.0.is_empty() {
            statements.push(
                sqlx::query(&sqls.2)
                    .bind(&failed.0)
                    .bind(&failed.1)
                    .bind(now),
            );
        }
        in_one_transaction(&self.pool, statements).await
    }
}

/// A deadlock (40P01) or serialisation failure (40001): the transaction was rolled back.
fn lost_race(e: &StoreError) -> bool {
    matches!(e, StoreError::Database(sqlx::Error::Database(d))
        if matches!(d.code().as_deref(), Some("40P01" | "40001")))
}

/// What PostgreSQL does its own way, for [`super::common::store_impl!`].
impl PostgresStore {
    /// PostgreSQL needs no lock of anpi's own: rows are locked by the statements.
    async fn write_lock(&self) -> Option<MutexGuard<'_, ()>> {
        None
    }

    /// Runs `op` (which opens and commits its own transaction) again if it lost a deadlock or
    /// serialisation race to another replica: the database rolled it back, so repeating is
    /// safe.
    async fn retrying<T, Fut>(&self, op: impl Fn() -> Fut) -> StoreResult<T>
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

    async fn run_migrations(&self) -> StoreResult<()> {
        super::schema::POSTGRES.run(&self.pool).await?;
        Ok(())
    }

    async fn write_contacts(&self, contacts: &[Contact], now: Millis) -> StoreResult<()> {
        let mut chunks: Vec<(Vec<String>, Vec<String>)> = Vec::new();
        for chunk in contacts.chunks(INSERT_CHUNK) {
            let ids = chunk.iter().map(|c| c.id.to_string()).collect();
            let docs = chunk
                .iter()
                .map(|c| serde_json::to_string(c).map_err(|e| corrupt("contact", e)))
                .collect::<StoreResult<_>>()?;
            chunks.push((ids, docs));
        }
        self.retrying(|| self.replace_contacts_once(&chunks, now))
            .await
    }

    /// Sends the directory to `out` a page at a time ([`super::DirectoryPages`]): one
    /// statement (one snapshot), its rows taken as they arrive.
    async fn read_directory(pool: PgPool, out: super::DirectoryPages) {
        use futures::TryStreamExt;
        let read = async {
            let mut rows = sqlx::query_scalar::<_, String>(
                "SELECT doc FROM contacts ORDER BY id COLLATE \"C\"",
            )
            .fetch(&pool);
            let mut page = Vec::with_capacity(super::DIRECTORY_PAGE);
            while let Some(doc) = rows.try_next().await? {
                page.push(serde_json::from_str(&doc).map_err(|e| corrupt("stored contact", e))?);
                if page.len() == super::DIRECTORY_PAGE {
                    let full =
                        std::mem::replace(&mut page, Vec::with_capacity(super::DIRECTORY_PAGE));
                    if out.send(Ok(full)).await.is_err() {
                        return StoreResult::Ok(());
                    }
                }
            }
            if !page.is_empty() {
                let _ = out.send(Ok(page)).await;
            }
            StoreResult::Ok(())
        };
        let end = read.await.map(|()| Vec::new());
        // Nobody listening any more: the roll call's writer gave up, and says why itself.
        let _ = out.send(end).await;
    }

    /// Writes roll call `id`'s deliveries, one array per column.
    async fn insert_deliveries(
        tx: &mut Transaction<'_, Postgres>,
        id: i64,
        new: &NewRollCall,
        recipients: Vec<NewDelivery>,
        now: Millis,
    ) -> StoreResult<()> {
        let sql = format!(
            "{INSERT_DELIVERIES}\
             FROM UNNEST($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
                         $9::bigint[], $10::text[], $11::text[], $12::text[], $13::text[], \
                         $14::text[]) AS j(s, n, d, sh, k, p, ph, e, h, ka, ro) \
             CROSS JOIN (SELECT $1::bigint, $2::text, $3::bigint) AS c(rc, pr, nw)"
        );
        // The rows' strings are moved into the columns, not copied.
        let mut rows = recipients.into_iter().peekable();
        while rows.peek().is_some() {
            let n = rows.len().min(INSERT_CHUNK);
            let mut staff = Vec::with_capacity(n);
            let mut name = Vec::with_capacity(n);
            let mut dept = Vec::with_capacity(n);
            let mut shelter = Vec::with_capacity(n);
            let mut kind = Vec::with_capacity(n);
            let mut prio = Vec::with_capacity(n);
            let mut phones = Vec::with_capacity(n);
            let mut email = Vec::with_capacity(n);
            let mut handle = Vec::with_capacity(n);
            let mut kana = Vec::with_capacity(n);
            let mut role = Vec::with_capacity(n);
            for d in rows.by_ref().take(INSERT_CHUNK) {
                phones.push(serde_json::to_string(&d.phones).unwrap_or_else(|_| "[]".into()));
                kana.push(d.kana);
                role.push(d.role);
                staff.push(String::from(d.staff_id));
                name.push(d.name);
                dept.push(d.department);
                shelter.push(d.shelter);
                kind.push(kind_str(d.kind));
                prio.push(d.call_priority as i64);
                email.push(d.email);
                handle.push(d.chat_handle.map(String::from));
            }
            sqlx::query(&sql)
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
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn record_sends(&self, results: &[SendResult], now: Millis) -> StoreResult<()> {
        let rows = split_results(results);
        let cols = ResultColumns {
            sent: (
                rows.sent.iter().map(|r| r.id).collect(),
                rows.sent.iter().map(|r| r.at).collect(),
                rows.sent.iter().map(|r| r.dl).collect(),
                rows.sent.iter().map(|r| r.mid.map(String::from)).collect(),
            ),
            retry: RetryColumns {
                id: rows.retry.iter().map(|r| r.id).collect(),
                next: rows.retry.iter().map(|r| r.next).collect(),
                err: rows.retry.iter().map(|r| r.err.to_string()).collect(),
                refund: rows.retry.iter().map(|r| r.refund).collect(),
                lease: rows.retry.iter().map(|r| r.lease).collect(),
            },
            failed: (
                rows.failed.iter().map(|r| r.id).collect(),
                rows.failed.iter().map(|r| r.err.to_string()).collect(),
            ),
        };
        self.retrying(|| self.record_once(&cols, now)).await
    }

    async fn renew(&self, held: &[(i64, Millis)], until: Millis) -> StoreResult<Vec<i64>> {
        let (ids, leases): (Vec<i64>, Vec<i64>) = held.iter().copied().unzip();
        let sql = renew_claims_sql(Dialect::Postgres);
        self.retrying(|| async {
            Ok(sqlx::query_scalar(&sql)
                .bind(until)
                .bind(&ids)
                .bind(&leases)
                .fetch_all(&self.pool)
                .await?)
        })
        .await
    }

    async fn check(&self) -> StoreResult<()> {
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

super::common::store_impl!(PostgresStore, Postgres, Dialect::Postgres);

/// A list bound as one parameter: PostgreSQL takes it as an array.
fn list_param<T>(items: &[T]) -> &[T] {
    items
}
