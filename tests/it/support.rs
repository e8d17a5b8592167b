//! Test harness: `spawn_app` gives a running anpi (the real `Application`) on port 0 with a
//! fresh SQLite file (or, on request, a fresh PostgreSQL database), the built-in simulator and
//! a clock the test controls.
//!
//! PostgreSQL tests get their own database each (`anpi_t_<random>`, dropped afterwards) from
//! the server at `ANPI_TEST_PG` (default postgres://root@127.0.0.1:5432/postgres). When that
//! server is unreachable they are skipped with a message, except in CI (`CI` set), where that
//! is a failure.

use std::sync::Arc;
use std::time::Duration;

use anpi::clock::{ManualClock, ScaledClock, SharedClock};
use anpi::config::Config;
use anpi::contacts::{synthetic, Contact};
use anpi::hq::Hq;
use anpi::ids::{ChatHandle, RollCallId};
use anpi::rollcall::{CallListEntry, Progress, RollCall};
use anpi::scenario::Scenario;
use anpi::simulator::{Behaviour, Faults, Script, SimConfig, SimHandle, Simulator};
use anpi::startup::Application;
use anpi::store::SharedStore;
use chrono::{TimeZone, Utc};
use tokio_util::sync::CancellationToken;

pub const HQ_TOKEN: &str = "hq-token-0123456789abcdef";
pub const CALLER_TOKEN: &str = "caller-token-0123456789abcdef";
pub const SIM_TOKEN: &str = "sim-token";

/// Each unread or never-read delivery of roll call `$1`: its deadline, and when it was
/// escalated (in its row, or by the first escalation mark at or after its deadline), on either
/// backend.
pub const ESCALATION_TIMES_SQL: &str = "SELECT d.deadline_at, COALESCE(d.escalated_at, \
      (SELECT MIN(m.through) FROM escalation_marks m \
       WHERE m.roll_call_id = d.roll_call_id AND m.through >= d.deadline_at)) \
    FROM deliveries d \
    WHERE d.roll_call_id = $1 AND (d.escalation_reason = 'never_read' OR d.state = 'sent')";

/// Logs go to the test output only when asked: `TEST_LOG=1 cargo test`.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            ))
            .with_test_writer()
            .try_init();
    }
}

/// Which clock the app runs on.
pub enum TestClock {
    /// Stands still until the test moves it.
    Manual,
    /// Runs `speed` times faster than the wall.
    Scaled(f64),
}

/// The PostgreSQL server tests create their databases on.
pub fn pg_admin_url() -> String {
    std::env::var("ANPI_TEST_PG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "postgres://root@127.0.0.1:5432/postgres".to_string())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A fresh PostgreSQL database for one test; dropped (with its connections) when this is.
#[derive(Debug)]
pub struct PgDb {
    pub url: String,
    pub name: String,
    admin: String,
}

/// A fresh database, or `None` after printing why when PostgreSQL is unreachable here.
/// Panics instead when `CI` is set: there a missing PostgreSQL is a failure, not a skip.
pub async fn pg_url_or_skip() -> Option<PgDb> {
    use sqlx::{Connection, Executor};
    let admin = pg_admin_url();
    let conn = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&admin))
        .await
        .map_err(|_| "connection timed out".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => {
            if in_ci() {
                panic!("PostgreSQL at {admin} is unreachable and CI is set: {e}");
            }
            eprintln!("skipped: PostgreSQL at {admin} is unreachable ({e}); set ANPI_TEST_PG");
            return None;
        }
    };
    let name = format!("anpi_t_{:016x}", rand::random::<u64>());
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap_or_else(|e| panic!("creating test database {name} on {admin}: {e}"));
    let _ = conn.close().await;
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    Some(PgDb {
        url: format!("{base}/{name}"),
        name,
        admin,
    })
}

impl Drop for PgDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            use sqlx::{Connection, Executor};
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = c
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}

/// Keeps a test's database alive (a temporary SQLite file, or a PostgreSQL database) until
/// it is dropped.
#[derive(Debug)]
#[allow(dead_code)]
pub enum DbGuard {
    Sqlite(tempfile::TempDir),
    Postgres(PgDb),
}

impl DbGuard {
    /// Runs one SQL statement on this database from outside the store (to set up what another
    /// version of anpi would have left).
    pub async fn execute(&self, sql: &str) {
        use sqlx::{Connection, Executor};
        match self {
            DbGuard::Sqlite(tmp) => {
                let url = format!("sqlite://{}", tmp.path().join("c.db").display());
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                c.execute(sql).await.unwrap();
                c.close().await.unwrap();
            }
            DbGuard::Postgres(pg) => {
                let mut c = sqlx::PgConnection::connect(&pg.url).await.unwrap();
                c.execute(sql).await.unwrap();
                c.close().await.unwrap();
            }
        }
    }
}

/// Every backend this machine can run, each with a fresh, migrated store: SQLite always,
/// PostgreSQL when reachable (and always in CI).
pub async fn all_backends() -> Vec<(String, SharedStore, DbGuard)> {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", tmp.path().join("c.db").display());
    let mut v = vec![(
        "sqlite".to_string(),
        anpi::store::open(&url).await.unwrap(),
        DbGuard::Sqlite(tmp),
    )];
    if let Some(pg) = pg_url_or_skip().await {
        let store = anpi::store::open(&pg.url).await.unwrap();
        v.push(("postgres".to_string(), store, DbGuard::Postgres(pg)));
    }
    v
}

/// Which database a test app runs on.
#[derive(Debug, Default)]
pub enum TestDatabase {
    /// A fresh SQLite file in a temporary folder.
    #[default]
    SqliteFile,
    /// A fresh PostgreSQL database (from [`pg_url_or_skip`]).
    Postgres(PgDb),
}

pub struct Options {
    pub contacts: Vec<Contact>,
    pub script: Script,
    pub faults: Faults,
    pub sim_rate_limit_per_minute: u32,
    pub provider_rate_limit_per_minute: u32,
    pub clock: TestClock,
    /// Extra TOML merged into the app's configuration.
    pub extra_config: String,
    pub database: TestDatabase,
    /// The scenarios folder; the repository's `scenarios/` when None.
    pub scenarios_dir: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            contacts: synthetic::generate(50, 1).contacts,
            script: Script::default(),
            faults: Faults::default(),
            sim_rate_limit_per_minute: 0,
            provider_rate_limit_per_minute: 0,
            clock: TestClock::Manual,
            extra_config: String::new(),
            database: TestDatabase::SqliteFile,
            scenarios_dir: None,
        }
    }
}

pub struct TestApp {
    pub base_url: String,
    pub hq: Arc<Hq>,
    pub store: SharedStore,
    pub clock: SharedClock,
    pub manual: Option<ManualClock>,
    pub sim: SimHandle,
    pub http: reqwest::Client,
    pub db_path: std::path::PathBuf,
    cancel: CancellationToken,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _tmp: tempfile::TempDir,
    _pg: Option<PgDb>,
}

pub fn start_time() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 11, 5, 46, 0).unwrap()
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(opts: Options) -> TestApp {
    init_logs();
    let tmp = tempfile::tempdir().expect("temp dir");
    let (clock, manual, speed_toml): (SharedClock, Option<ManualClock>, String) = match opts.clock {
        TestClock::Manual => {
            let m = ManualClock::new(start_time());
            (Arc::new(m.clone()), Some(m), String::new())
        }
        TestClock::Scaled(speed) => {
            let epoch = Utc::now();
            (
                Arc::new(ScaledClock::new(epoch, speed)),
                None,
                format!(
                    "[time]\nspeed = {speed}\nepoch = \"{}\"\n",
                    epoch.to_rfc3339()
                ),
            )
        }
    };
    let rate_limit = (opts.sim_rate_limit_per_minute > 0).then(|| anpi::providers::RateLimit {
        requests: opts.sim_rate_limit_per_minute,
        per: Duration::from_secs(60),
    });
    let sim = Simulator::start(
        SimConfig {
            token: SIM_TOKEN.into(),
            rate_limit,
            faults: opts.faults,
            default_behaviour: Behaviour::default(),
            population: None,
        },
        opts.script,
        clock.clone(),
    )
    .await
    .expect("simulator starts");
    let db_path = tmp.path().join("anpi.db");
    let (db_url, pg) = match opts.database {
        TestDatabase::SqliteFile => (format!("sqlite://{}", db_path.display()), None),
        TestDatabase::Postgres(pg) => (pg.url.clone(), Some(pg)),
    };
    let config = Config::from_toml(&format!(
        r#"
{speed_toml}
[server]
listen = "127.0.0.1:0"
[database]
url = "{db_url}"
[api]
hq_tokens = ["{HQ_TOKEN}"]
caller_tokens = ["{CALLER_TOKEN}"]
[scenarios]
dir = "{scen}"
[providers.simulator]
url = "{url}"
token = "{SIM_TOKEN}"
rate_limit_per_minute = {rl}
poll_wait = "50ms"
{extra}
"#,
        scen = opts.scenarios_dir.as_ref().map_or_else(
            || concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios").to_string(),
            |d| d.display().to_string()
        ),
        url = sim.base_url(),
        rl = opts.provider_rate_limit_per_minute,
        extra = opts.extra_config,
    ))
    .expect("test config is valid");
    let app = Application::build_with_clock(config, clock.clone())
        .await
        .expect("app builds");
    let base_url = format!("http://{}", app.local_addr());
    let hq = app.hq();
    let store = app.store();
    hq.import_contacts(&opts.contacts)
        .await
        .expect("contacts import");
    let cancel = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(cancel.clone()));
    TestApp {
        base_url,
        hq,
        store,
        clock,
        manual,
        sim,
        http: reqwest::Client::new(),
        db_path,
        cancel,
        running: Some(running),
        _tmp: tmp,
        _pg: pg,
    }
}

/// A scenario for tests: 5-minute deadline, two buttons.
pub fn scenario() -> Scenario {
    Scenario::parse(
        r#"
name = "test"
title = "テスト 安否確認"
deadline = "5m"
[message]
ja = "【安否確認】読んだら下のボタンを押してください。"
en = "Safety check: tap a button below."
[[buttons]]
label = "無事 / Safe"
value = "safe"
[[buttons]]
label = "負傷 / Injured"
value = "injured"
"#,
        "test.toml",
    )
    .expect("test scenario parses")
}

pub fn handles(contacts: &[Contact]) -> Vec<ChatHandle> {
    contacts
        .iter()
        .map(|c| c.chat.get("simulator").expect("simulator chat id").clone())
        .collect()
}

pub fn read_after(d: Duration) -> Behaviour {
    Behaviour {
        read_after: Some(d),
        ..Behaviour::default()
    }
}

/// Loses every stored event-feed position in the SQLite file at `db`, as when a feed's
/// cursor was never stored (anpi must rebuild from what else it has).
pub async fn forget_feed_cursors(db: &std::path::Path) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("DELETE FROM provider_cursors")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

pub fn mins(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

impl TestApp {
    pub fn manual(&self) -> &ManualClock {
        self.manual
            .as_ref()
            .expect("this test app runs on a manual clock")
    }

    pub fn advance(&self, d: Duration) {
        self.manual().advance(d);
    }

    pub async fn start(&self, scenario: &Scenario) -> RollCall {
        self.hq
            .start(scenario, None, None)
            .await
            .expect("roll call starts")
            .0
    }

    pub async fn progress(&self, id: RollCallId) -> Progress {
        self.hq.status(id).await.expect("status").progress
    }

    /// Polls the roll call's progress until `cond` holds (20 s of real time at most).
    pub async fn wait_for(
        &self,
        id: RollCallId,
        what: &str,
        cond: impl Fn(&Progress) -> bool,
    ) -> Progress {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let p = self.progress(id).await;
            if cond(&p) {
                return p;
            }
            if std::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}; progress: {:?}", p.overall);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn all_sent(&self, id: RollCallId) -> Progress {
        self.wait_for(id, "everyone sent", |p| {
            p.overall.pending == 0 && p.overall.sending == 0
        })
        .await
    }

    pub async fn call_list(&self, id: RollCallId) -> Vec<CallListEntry> {
        self.hq.call_list(id).await.expect("call list")
    }

    pub async fn to_call_ids(&self, id: RollCallId) -> Vec<String> {
        let mut v: Vec<String> = self
            .call_list(id)
            .await
            .into_iter()
            .filter(|e| e.to_call())
            .map(|e| e.staff_id.to_string())
            .collect();
        v.sort();
        v
    }

    pub fn now(&self) -> chrono::DateTime<Utc> {
        self.clock.now()
    }

    pub async fn shutdown(mut self) {
        self.stop().await;
    }

    /// Stops anpi and waits for its workers, keeping the simulator and the store open.
    pub async fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(h) = self.running.take() {
            let _ = h.await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
