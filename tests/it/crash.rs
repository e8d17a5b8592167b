//! Crash safety: the real `anpi serve` process is killed with SIGKILL during dispatch and again
//! while watching for receipts. After each restart nobody is lost, each recipient has exactly
//! one delivery row, the simulator saw at most the in-flight batches twice, and the stored
//! deadlines hold.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anpi::clock::{ScaledClock, SharedClock};
use anpi::contacts::synthetic;
use anpi::hq::Hq;
use anpi::providers::Capabilities;
use anpi::simulator::{Faults, Script, SimConfig, Simulator};
use anpi::store::{sqlite::SqliteStore, Store};
use chrono::Utc;

use crate::support::*;

const SPEED: f64 = 20.0;
const BATCH: usize = 100;
const WORKERS: usize = 2;

pub(crate) fn spawn_daemon(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_anpi"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env_remove("ANPI_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("anpi starts")
}

pub(crate) fn kill(child: &mut Child) {
    // SIGKILL: no chance to finish anything.
    child.kill().expect("kill");
    child.wait().expect("reap");
}

pub(crate) async fn wait_until<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_dispatch_and_while_watching_loses_nothing() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let epoch = Utc::now();
    let clock: SharedClock = Arc::new(ScaledClock::new(epoch, SPEED));
    let contacts = synthetic::generate(2_000, 77).contacts;
    let hs = handles(&contacts);
    let mut script = Script::default();
    let mut readers = BTreeSet::new();
    for (i, (c, h)) in contacts.iter().zip(&hs).enumerate() {
        if i % 2 == 0 {
            script.insert(h.clone(), read_after(mins(1)));
            readers.insert(c.id.to_string());
        }
    }
    let sim = Simulator::start(
        SimConfig {
            token: SIM_TOKEN.into(),
            rate_limit: None,
            // Every answer takes 20 ms, so dispatch lasts long enough to be interrupted.
            faults: Faults {
                slow_share: 1.0,
                slow_delay: Duration::from_millis(20),
                ..Faults::default()
            },
            default_behaviour: Default::default(),
            population: None,
        },
        script,
        clock.clone(),
    )
    .await
    .unwrap();
    let db = tmp.path().join("anpi.db");
    let config = tmp.path().join("anpi.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
[database]
url = "sqlite://{}"
[time]
speed = {SPEED}
epoch = "{}"
[dispatch]
batch_size = {BATCH}
workers = {WORKERS}
lease = "60s"
[providers.simulator]
url = "{}"
token = "{SIM_TOKEN}"
max_in_flight = 16
poll_wait = "100ms"
"#,
            db.display(),
            epoch.to_rfc3339(),
            sim.base_url()
        ),
    )
    .unwrap();
    let log = tmp.path().join("anpi.log");

    // HQ writes the roll call straight into the database the daemon will use.
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap(),
    );
    store.migrate().await.unwrap();
    let hq = Hq::new(
        store.clone(),
        clock.clone(),
        "simulator".into(),
        Capabilities {
            read_receipts: true,
            buttons: true,
            idempotent_sends: false,
            rate_limit: None,
            max_in_flight: 16,
        },
        Arc::new(tokio::sync::Notify::new()),
    );
    hq.import_contacts(&contacts).await.unwrap();
    let (rc, _) = hq.start(&scenario(), None, None).await.unwrap();

    // 1. Kill during dispatch.
    let mut daemon = spawn_daemon(&config, &log);
    let end = Instant::now() + Duration::from_secs(30);
    while sim.stats().accepted < 400 {
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!(
                "anpi serve exited with {status}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < end,
            "dispatch did not get under way; anpi's log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill(&mut daemon);
    let at_kill = sim.stats().accepted;
    assert!(
        at_kill < 2_000,
        "dispatch finished before the kill ({at_kill}); slow the simulator"
    );

    // 2. Restart; let it finish sending; kill it again while it watches for receipts.
    let mut daemon = spawn_daemon(&config, &log);
    wait_until("all sent", Duration::from_secs(60), || {
        let store = store.clone();
        async move {
            let p = store.progress(rc.id).await.unwrap();
            p.overall.pending == 0 && p.overall.sending == 0
        }
    })
    .await;
    let first_deadline = store.progress(rc.id).await.unwrap().next_deadline_at;
    kill(&mut daemon);
    let killed_at = clock.now_millis();
    if let Some(d) = first_deadline {
        assert!(
            killed_at < d,
            "the second kill must come before the first deadline"
        );
    }
    // Receipts keep arriving at the platform while anpi is down.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. Restart and let every deadline pass.
    let mut daemon = spawn_daemon(&config, &log);
    let last_deadline: i64 =
        sqlx::query_scalar("SELECT MAX(deadline_at) FROM deliveries WHERE roll_call_id = $1")
            .bind(rc.id.0)
            .fetch_one(
                SqliteStore::connect(&format!("sqlite://{}", db.display()))
                    .await
                    .unwrap()
                    .pool(),
            )
            .await
            .unwrap();
    let never: BTreeSet<String> = contacts
        .iter()
        .map(|c| c.id.to_string())
        .filter(|id| !readers.contains(id))
        .collect();
    wait_until(
        "escalation of everyone unread",
        Duration::from_secs(60),
        || {
            let store = store.clone();
            let n = never.len() as i64;
            async move { store.progress(rc.id).await.unwrap().overall.to_call == n }
        },
    )
    .await;
    assert!(clock.now_millis() >= last_deadline - 60_000);
    kill(&mut daemon);

    // Nobody lost: one delivery row each, everyone sent, exactly the unread on the list.
    let sq = SqliteStore::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT staff_id, COUNT(*) FROM deliveries WHERE roll_call_id = $1 GROUP BY staff_id",
    )
    .bind(rc.id.0)
    .fetch_all(sq.pool())
    .await
    .unwrap();
    assert_eq!(rows.len(), 2_000);
    assert!(rows.iter().all(|(_, n)| *n == 1));
    let p = store.progress(rc.id).await.unwrap();
    assert_eq!(
        p.overall.confirmed() as usize,
        readers.len(),
        "{:?}",
        p.overall
    );
    assert_eq!(p.overall.failed, 0);
    let list: BTreeSet<String> = store
        .call_list(rc.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.to_call())
        .map(|e| e.staff_id.to_string())
        .collect();
    assert_eq!(list, never);

    // The stored deadlines held: nobody escalated before their deadline, nor long after.
    let late: Vec<(i64, Option<i64>)> = sqlx::query_as(crate::support::ESCALATION_TIMES_SQL)
        .bind(rc.id.0)
        .fetch_all(sq.pool())
        .await
        .unwrap();
    assert_eq!(late.len(), never.len());
    for (deadline, escalated) in &late {
        let escalated = &escalated.expect("unread past the deadline but not escalated");
        assert!(escalated >= deadline, "escalated before the deadline");
        assert!(
            escalated - deadline < 20_000,
            "escalated {} ms late",
            escalated - deadline
        );
    }

    // Everyone got the message; duplicates only from the batches in flight at the first kill.
    let mut per: HashMap<String, u32> = HashMap::new();
    for h in &hs {
        per.insert(h.to_string(), sim.received(rc.id, h));
    }
    assert!(
        per.values().all(|n| *n >= 1),
        "someone never got the message"
    );
    let dup = sim.stats().duplicates;
    assert!(
        dup <= (BATCH * WORKERS) as u64,
        "{dup} duplicates exceed the in-flight bound {}",
        BATCH * WORKERS
    );
    sim.shutdown().await;
}
