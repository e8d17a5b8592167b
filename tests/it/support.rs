//! Test harness: `spawn_app` gives a running anpi (the real `Application`) on port 0 with a
//! fresh SQLite file, the built-in simulator and a clock the test controls.

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

pub struct Options {
    pub contacts: Vec<Contact>,
    pub script: Script,
    pub faults: Faults,
    pub sim_rate_limit_per_minute: u32,
    pub provider_rate_limit_per_minute: u32,
    pub clock: TestClock,
    /// Extra TOML merged into the app's configuration.
    pub extra_config: String,
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
        },
        opts.script,
        clock.clone(),
    )
    .await
    .expect("simulator starts");
    let db_path = tmp.path().join("anpi.db");
    let config = Config::from_toml(&format!(
        r#"
{speed_toml}
[server]
listen = "127.0.0.1:0"
[database]
url = "sqlite://{db}"
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
        db = db_path.display(),
        scen = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"),
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
