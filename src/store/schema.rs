//! Schema versions: which migrations this binary carries for each backend, which a database
//! has applied, and what to do about the difference at start-up.
//!
//! Invariant: anpi never runs against a schema it does not know. A database migrated by a
//! newer anpi is refused with a message naming both versions; a database behind this binary
//! is brought up to date (the default) or refused with "run `anpi migrate`", as configured.
//! Migrations are append-only, so "newer" means "has a version this binary lacks".

use sqlx::migrate::{Migrate, Migrator};
use sqlx::{Database, Pool};

use super::{StoreError, StoreResult};

/// The SQLite migrations, compiled in.
pub static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
/// The PostgreSQL migrations, compiled in.
pub static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// What start-up does with a database whose schema is behind this binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MigratePolicy {
    /// Apply pending migrations (under the migrator's lock, so replicas starting together
    /// migrate once).
    #[default]
    Apply,
    /// Refuse to start and say to run `anpi migrate`.
    Refuse,
}

/// How a database's schema compares with this binary's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// The newest version applied to the database, if any.
    pub database: Option<i64>,
    /// The newest version this binary knows.
    pub binary: i64,
    /// Versions this binary would apply.
    pub pending: Vec<i64>,
    /// Versions the database has that this binary does not know (a newer anpi applied them).
    pub unknown: Vec<i64>,
}

impl SchemaStatus {
    pub fn is_current(&self) -> bool {
        self.pending.is_empty() && self.unknown.is_empty()
    }
}

/// Reads the database's migration record (creating the empty record table if missing).
pub async fn status<DB: Database>(migrator: &Migrator, pool: &Pool<DB>) -> StoreResult<SchemaStatus>
where
    DB::Connection: Migrate,
{
    let mut conn = pool.acquire().await?;
    conn.ensure_migrations_table().await?;
    if let Some(v) = conn.dirty_version().await? {
        return Err(StoreError::Corrupt(format!(
            "migration {v} was left half-applied; repair the database before starting anpi"
        )));
    }
    let applied: Vec<i64> = conn
        .list_applied_migrations()
        .await?
        .into_iter()
        .map(|m| m.version)
        .collect();
    let known: Vec<i64> = migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| m.version)
        .collect();
    Ok(SchemaStatus {
        database: applied.iter().copied().max(),
        binary: known.iter().copied().max().unwrap_or(0),
        pending: known
            .iter()
            .copied()
            .filter(|v| !applied.contains(v))
            .collect(),
        unknown: applied
            .iter()
            .copied()
            .filter(|v| !known.contains(v))
            .collect(),
    })
}

/// Checks the schema and, by `policy`, applies what is pending. Returns the versions applied.
pub async fn ensure<DB: Database>(
    migrator: &Migrator,
    pool: &Pool<DB>,
    policy: MigratePolicy,
) -> StoreResult<Vec<i64>>
where
    DB::Connection: Migrate,
{
    let st = status(migrator, pool).await?;
    if !st.unknown.is_empty() {
        return Err(StoreError::SchemaTooNew {
            database: st.database.unwrap_or_default(),
            binary: st.binary,
        });
    }
    if st.pending.is_empty() {
        return Ok(Vec::new());
    }
    match policy {
        MigratePolicy::Apply => {
            migrator.run(pool).await?;
            Ok(st.pending)
        }
        MigratePolicy::Refuse => Err(StoreError::SchemaBehind {
            database: st.database,
            binary: st.binary,
        }),
    }
}
