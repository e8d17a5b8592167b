//! The embedded default store: one SQLite file in WAL mode, created if missing.
//!
//! Every hot-path operation is one set-based statement over a JSON array of rows
//! (`json_each`), never a statement per row: on SQLite through sqlx each statement costs a
//! cross-thread round trip, rows cost almost nothing. What SQLite and PostgreSQL share is
//! written once ([`super::common`]); this file holds what SQLite does its own way: the JSON
//! batches, one writer at a time, and opening the file.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Sqlite, SqlitePool, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use super::shared::{
    corrupt, in_one_transaction, kind_str, record_failed_sql, record_retry_sql, record_sent_sql,
    renew_claims_sql, split_results, Dialect, INSERT_DELIVERIES,
};
use super::StoreResult;
use crate::answers::UrgentWords;
use crate::clock::Millis;
use crate::contacts::Contact;
use crate::rollcall::{NewDelivery, NewRollCall, SendResult};

/// Rows per multi-row statement when writing deliveries: 11 bound values a row (and 3 for
/// the roll call), under SQLite's limit of 32,766 per statement.
const INSERT_CHUNK: usize = 2_900;

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

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
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

/// One multi-row `INSERT` of roll call `id`'s deliveries `chunk`: the roll call's values bound
/// once, each recipient's eleven in a `VALUES` row. The rows' strings are moved into the
/// statement, not copied.
fn deliveries_insert(
    id: i64,
    new: &NewRollCall,
    chunk: Vec<NewDelivery>,
    now: Millis,
) -> sqlx::QueryBuilder<'_, Sqlite> {
    let mut insert = sqlx::QueryBuilder::<Sqlite>::new("WITH c(rc, pr, nw) AS (SELECT ");
    insert.push_bind(id).push(", ");
    insert.push_bind(new.provider.as_str()).push(", ");
    insert.push_bind(now);
    insert.push("), v(s, n, d, sh, k, p, ph, e, h, ka, ro) AS (");
    insert.push_values(chunk, |mut row, d| {
        let phones = serde_json::to_string(&d.phones).unwrap_or_else(|_| "[]".into());
        row.push_bind(String::from(d.staff_id))
            .push_bind(d.name)
            .push_bind(d.department)
            .push_bind(d.shelter)
            .push_bind(kind_str(d.kind))
            .push_bind(i64::from(d.call_priority))
            .push_bind(phones)
            .push_bind(d.email)
            .push_bind(d.chat_handle.map(String::from))
            .push_bind(d.kana)
            .push_bind(d.role);
    });
    // `CROSS JOIN` keeps the rows' order: the directory's, which ids and sends follow.
    insert
        .push(") ")
        .push(INSERT_DELIVERIES)
        .push("FROM v CROSS JOIN c");
    insert
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

    /// Sends the directory to `out` a page at a time ([`super::DirectoryPages`]), every page
    /// read in one read transaction (one snapshot, whatever an import commits meanwhile).
    /// Each page is one JSON array out of SQLite: a round trip per row to SQLite's thread
    /// costs more than the documents themselves.
    async fn read_directory(pool: SqlitePool, out: super::DirectoryPages) {
        let read = async {
            let mut conn = pool.acquire().await?;
            // Deferred: the snapshot is taken by the first page's read and kept to the end.
            let mut snapshot = conn.begin().await?;
            let mut after = String::new();
            loop {
                let (page, last): (Option<String>, Option<String>) = sqlx::query_as(
                    "SELECT '[' || group_concat(doc, ',') || ']', max(id) FROM \
                     (SELECT id, doc FROM contacts WHERE id > $1 ORDER BY id LIMIT $2)",
                )
                .bind(&after)
                .bind(super::DIRECTORY_PAGE as i64)
                .fetch_one(&mut *snapshot)
                .await?;
                let (Some(page), Some(last)) = (page, last) else {
                    break;
                };
                let page: Vec<Contact> =
                    serde_json::from_str(&page).map_err(|e| corrupt("stored contacts", e))?;
                after = last;
                let more = page.len() == super::DIRECTORY_PAGE;
                if out.send(Ok(page)).await.is_err() || !more {
                    break;
                }
            }
            snapshot.rollback().await?;
            StoreResult::Ok(())
        };
        let end = read.await.map(|()| Vec::new());
        // Nobody listening any more: the roll call's writer gave up, and says why itself.
        let _ = out.send(end).await;
    }

    /// Writes roll call `id`'s deliveries. Multi-row inserts with every value bound: no
    /// per-row statement and no JSON to take apart on the way in. Each chunk's statement is
    /// built while SQLite (on its own thread) writes the chunk before it.
    async fn insert_deliveries(
        tx: &mut Transaction<'_, Sqlite>,
        id: i64,
        new: &NewRollCall,
        recipients: Vec<NewDelivery>,
        now: Millis,
    ) -> StoreResult<()> {
        let mut rows = recipients.into_iter();
        let mut chunk = move || {
            let c: Vec<NewDelivery> = rows.by_ref().take(INSERT_CHUNK).collect();
            (!c.is_empty()).then(|| deliveries_insert(id, new, c, now))
        };
        let mut next = chunk();
        while let Some(mut insert) = next.take() {
            let (written, built) =
                futures::join!(insert.build().execute(&mut **tx), async { chunk() });
            written?;
            next = built;
        }
        Ok(())
    }

    async fn record_sends(&self, results: &[SendResult], now: Millis) -> StoreResult<()> {
        let rows = split_results(results);
        // Built before taking the writer's turn, which other writers wait for.
        let sent = rows_json(&rows.sent)?;
        let retry = rows_json(&rows.retry)?;
        let failed = rows_json(&rows.failed)?;
        let sqls = (
            record_sent_sql(Dialect::Sqlite),
            record_retry_sql(Dialect::Sqlite),
            record_failed_sql(Dialect::Sqlite),
        );
        let mut statements = Vec::new();
        if let Some(sent) = sent {
            statements.push(sqlx::query(&sqls.0).bind(sent));
        }
        if let Some(retry) = retry {
            statements.push(sqlx::query(&sqls.1).bind(retry));
        }
        if let Some(failed) = failed {
            statements.push(sqlx::query(&sqls.2).bind(failed).bind(now));
        }
        let _w = self.writer.lock().await;
        in_one_transaction(&self.pool, statements).await
    }

    async fn renew(&self, held: &[(i64, Millis)], until: Millis) -> StoreResult<Vec<i64>> {
        let rows: Vec<serde_json::Value> = held
            .iter()
            .map(|(id, lease)| json!({"id": id, "l": lease}))
            .collect();
        let rows = serde_json::Value::Array(rows).to_string();
        let _w = self.writer.lock().await;
        Ok(sqlx::query_scalar(&renew_claims_sql(Dialect::Sqlite))
            .bind(until)
            .bind(rows)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn check(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

super::common::store_impl!(SqliteStore, Sqlite, Dialect::Sqlite);

/// A list bound as one parameter: SQLite reads it as a JSON array (`json_each`).
fn list_param<T: serde::Serialize>(items: &[T]) -> String {
    json!(items).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Everyone(usize);

    impl crate::rollcall::DeliveryComposer for Everyone {
        fn page(&mut self, contacts: Vec<Contact>) -> Vec<NewDelivery> {
            self.0 += 1;
            contacts
                .iter()
                .map(|c| NewDelivery::from_contact(c, "simulator"))
                .collect()
        }

        fn finish(&mut self) -> Option<crate::rollcall::Composed> {
            Some(Default::default())
        }
    }

    /// An in-memory database has one connection, which the roll call's transaction takes:
    /// its directory is read before, not beside it (which would wait for ever).
    #[tokio::test]
    async fn a_one_connection_store_starts_a_roll_call_of_several_pages() {
        use crate::store::Store;
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let n = super::super::DIRECTORY_PAGE + 10;
        let contacts = crate::contacts::synthetic::generate(n, 7).contacts;
        store.replace_contacts(&contacts, 1).await.unwrap();
        let scenario =
            crate::scenario::Scenario::parse(include_str!("../../scenarios/drill.toml"), "drill")
                .unwrap();
        let new = crate::rollcall::new_roll_call(&scenario, "simulator", None, None);
        let mut everyone = Everyone(0);
        let rc = tokio::time::timeout(
            Duration::from_secs(60),
            store.start_roll_call(&new, &mut everyone, 2),
        )
        .await
        .expect("does not wait for a second connection")
        .unwrap()
        .expect("written");
        assert_eq!(everyone.0, 2);
        assert_eq!(rc.recipients as usize, n);
        assert_eq!(store.recipients(rc.id).await.unwrap().len(), n);
    }

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
