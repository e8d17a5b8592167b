//! Several `anpi serve` processes on one PostgreSQL database, against the simulator in this
//! process: they share one roll call without sending anyone twice, survive SIGKILL of a
//! replica mid-dispatch and of the deadline-lease holder mid-watch, and recover by themselves
//! when the database drops every connection. Skipped without PostgreSQL (a failure in CI).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use anpi::clock::{ScaledClock, SharedClock};
use anpi::contacts::{synthetic, Contact};
use anpi::hq::Hq;
use anpi::ids::{ChatHandle, RollCallId};
use anpi::providers::Capabilities;
use anpi::rollcall::Progress;
use anpi::scenario::Scenario;
use anpi::simulator::{Faults, Script, SimConfig, SimHandle, Simulator};
use anpi::store::{postgres::PostgresStore, SharedStore};
use chrono::Utc;
use sqlx::{Connection, Executor};

use crate::crash::{kill, spawn_daemon, wait_until};
use crate::support::*;

const SPEED: f64 = 20.0;
const BATCH: usize = 100;
const WORKERS: usize = 2;
/// The singleton lease, in the application's clock (0.5 s of real time at SPEED).
const LEASE_TTL_MS: i64 = 10_000;
const PEOPLE: usize = 2_000;

/// Two minutes: six real seconds at SPEED.
fn short_scenario() -> Scenario {
    Scenario::parse(
        r#"
name = "replicas"
title = "レプリカ 安否確認"
deadline = "2m"
[message]
ja = "【安否確認】読んだら下のボタンを押してください。"
en = "Safety check: tap a button below."
[[buttons]]
label = "無事 / Safe"
value = "safe"
"#,
        "replicas.toml",
    )
    .unwrap()
}

struct Cluster {
    tmp: tempfile::TempDir,
    pg: PgDb,
    sim: SimHandle,
    clock: SharedClock,
    store: SharedStore,
    hq: Hq,
    config: PathBuf,
    contacts: Vec<Contact>,
    handles: Vec<ChatHandle>,
    /// Staff ids that read at 30 s; everyone else never reads.
    readers: BTreeSet<String>,
    people: usize,
}

/// What a cluster is made of; the default is what most tests here use.
struct Setup {
    dispatch_lease: String,
    /// The application clock's speed.
    speed: f64,
    people: usize,
    /// How long the simulator takes to accept each message.
    send_takes: Duration,
    /// `[replicas] lease_ttl`, in the application's clock.
    lease_ttl: String,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            dispatch_lease: "20s".into(),
            speed: SPEED,
            people: PEOPLE,
            send_takes: Duration::from_millis(20),
            lease_ttl: format!("{LEASE_TTL_MS}ms"),
        }
    }
}

struct Replica {
    child: Child,
    url: String,
}

impl Cluster {
    /// A fresh database, a slow simulator (every send takes 20 ms, so dispatch lasts long
    /// enough to be interrupted) and the roll call's contacts, or None without PostgreSQL.
    async fn new(dispatch_lease: &str) -> Option<Self> {
        Self::build(Setup {
            dispatch_lease: dispatch_lease.into(),
            ..Setup::default()
        })
        .await
    }

    async fn build(setup: Setup) -> Option<Self> {
        let Setup {
            dispatch_lease,
            speed,
            people,
            send_takes,
            lease_ttl,
        } = setup;
        init_logs();
        let pg = pg_url_or_skip().await?;
        let tmp = tempfile::tempdir().unwrap();
        let epoch = Utc::now();
        let clock: SharedClock = Arc::new(ScaledClock::new(epoch, speed));
        let contacts = synthetic::generate(people, 91).contacts;
        let handles = handles(&contacts);
        let mut script = Script::default();
        let mut readers = BTreeSet::new();
        for (i, (c, h)) in contacts.iter().zip(&handles).enumerate() {
            if i % 2 == 0 {
                script.insert(h.clone(), read_after(Duration::from_secs(30)));
                readers.insert(c.id.to_string());
            }
        }
        let sim = Simulator::start(
            SimConfig {
                token: SIM_TOKEN.into(),
                rate_limit: None,
                faults: Faults {
                    slow_share: 1.0,
                    slow_delay: send_takes,
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
        let config = tmp.path().join("anpi.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
listen = "127.0.0.1:0"
[database]
url = "{url}"
max_connections = 4
acquire_timeout = "1s"
[replicas]
lease_ttl = "{lease_ttl}"
[time]
speed = {speed}
epoch = "{epoch}"
[dispatch]
batch_size = {BATCH}
workers = {WORKERS}
lease = "{dispatch_lease}"
[providers.simulator]
url = "{sim}"
token = "{SIM_TOKEN}"
max_in_flight = 16
poll_wait = "100ms"
"#,
                url = pg.url,
                epoch = epoch.to_rfc3339(),
                sim = sim.base_url()
            ),
        )
        .unwrap();
        let store: SharedStore = anpi::store::open(&pg.url).await.unwrap();
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
        Some(Self {
            tmp,
            pg,
            sim,
            clock,
            store,
            hq,
            config,
            contacts,
            handles,
            readers,
            people,
        })
    }

    /// Starts one more `anpi serve` on this database and waits until it answers /healthz.
    async fn replica(&self) -> Replica {
        let (replica, _log) = self.spawn_replica();
        replica.wait_healthy().await;
        replica
    }

    /// Starts one more `anpi serve` on this database; returns it and its log file.
    fn spawn_replica(&self) -> (Replica, PathBuf) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = self.tmp.path().join(format!("anpi-{port}.toml"));
        let text = std::fs::read_to_string(&self.config)
            .unwrap()
            .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
        std::fs::write(&config, text).unwrap();
        let log = self.tmp.path().join(format!("anpi-{port}.log"));
        let child = spawn_daemon(&config, &log);
        let url = format!("http://127.0.0.1:{port}");
        (Replica { child, url }, log)
    }

    async fn start(&self) -> RollCallId {
        self.hq
            .start(&short_scenario(), None, None)
            .await
            .unwrap()
            .0
            .id
    }

    /// Progress, or None while the database is unreachable from the test too.
    async fn progress(&self, rc: RollCallId) -> Option<Progress> {
        self.store.progress(rc).await.ok()
    }

    async fn wait_for(&self, rc: RollCallId, what: &str, cond: impl Fn(&Progress) -> bool) {
        let end = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if self.progress(rc).await.is_some_and(|p| cond(&p)) {
                return;
            }
            assert!(
                std::time::Instant::now() < end,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn never_readers(&self) -> BTreeSet<String> {
        self.contacts
            .iter()
            .map(|c| c.id.to_string())
            .filter(|id| !self.readers.contains(id))
            .collect()
    }

    /// Waits for every deadline to pass and checks the outcome: everyone has one delivery
    /// and got the message, the readers are confirmed, the call list is exactly the rest, and
    /// each escalation came at its stored deadline, at most `late_ms` after it.
    async fn check_roll_call_ends_right(&self, rc: RollCallId, late_ms: i64) {
        let never = self.never_readers();
        let n = never.len() as i64;
        self.wait_for(rc, "everyone unread on the call list", |p| {
            p.overall.to_call == n
        })
        .await;
        let readers = self.readers.len() as i64;
        self.wait_for(rc, "every reader confirmed", |p| {
            p.overall.confirmed() == readers
        })
        .await;
        let p = self.progress(rc).await.unwrap();
        assert_eq!(p.overall.total, self.people as i64);
        assert_eq!(p.overall.failed, 0, "{:?}", p.overall);
        let list: BTreeSet<String> = self
            .store
            .call_list(rc)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.to_call())
            .map(|e| e.staff_id.to_string())
            .collect();
        assert_eq!(list, never);
        let pg = PostgresStore::connect(&self.pg.url, &Default::default())
            .await
            .unwrap();
        let rows: Vec<(i64, Option<i64>)> = sqlx::query_as(crate::support::ESCALATION_TIMES_SQL)
            .bind(rc.0)
            .fetch_all(pg.pool())
            .await
            .unwrap();
        assert_eq!(rows.len(), never.len());
        for (deadline, escalated) in &rows {
            let escalated = &escalated.expect("unread past the deadline but not escalated");
            assert!(escalated >= deadline, "escalated before the deadline");
            assert!(
                escalated - deadline <= late_ms,
                "escalated {} ms after the deadline (bound {late_ms})",
                escalated - deadline
            );
        }
        for h in &self.handles {
            assert!(self.sim.received(rc, h) >= 1, "{h} never got the message");
        }
    }

    /// The replica holding the deadline lease, by the pid in its instance id.
    async fn deadline_holder(&self) -> Option<u32> {
        let pg = PostgresStore::connect(&self.pg.url, &Default::default())
            .await
            .ok()?;
        let holder: String =
            sqlx::query_scalar("SELECT holder FROM leases WHERE name = 'deadlines'")
                .fetch_optional(pg.pool())
                .await
                .ok()??;
        holder.strip_prefix("pid")?.split('-').next()?.parse().ok()
    }
}

/// Sends counted by a replica's own /metrics.
async fn sends_by(replica: &Replica) -> u64 {
    let text = reqwest::get(format!("{}/metrics", replica.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("anpi_sends_total{") && l.contains("result=\"sent\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_roll_call_and_send_everyone_exactly_once() {
    let Some(cluster) = Cluster::new("20s").await else {
        return;
    };
    let mut a = cluster.replica().await;
    let mut b = cluster.replica().await;
    let rc = cluster.start().await;
    cluster
        .wait_for(rc, "everyone sent", |p| {
            p.overall.pending == 0 && p.overall.sending == 0
        })
        .await;
    let (by_a, by_b) = (sends_by(&a).await, sends_by(&b).await);
    assert!(by_a > 0 && by_b > 0, "both replicas sent ({by_a}, {by_b})");
    assert_eq!(by_a + by_b, PEOPLE as u64);
    cluster
        .check_roll_call_ends_right(rc, 3 * LEASE_TTL_MS)
        .await;
    let stats = cluster.sim.stats();
    assert_eq!(stats.accepted, PEOPLE as u64);
    assert_eq!(stats.duplicates, 0);
    for h in &cluster.handles {
        assert_eq!(cluster.sim.received(rc, h), 1, "{h}");
    }
    kill(&mut a.child);
    kill(&mut b.child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_dispatch_and_the_lease_holder_killed_mid_watch_lose_nothing() {
    let Some(cluster) = Cluster::new("20s").await else {
        return;
    };
    let mut a = cluster.replica().await;
    let mut b = cluster.replica().await;
    let rc = cluster.start().await;

    // 1. SIGKILL one replica while both are sending.
    wait_until("dispatch under way", Duration::from_secs(30), || {
        let n = cluster.sim.stats().accepted;
        async move { n >= 400 }
    })
    .await;
    kill(&mut a.child);
    assert!(
        cluster.sim.stats().accepted < PEOPLE as u64,
        "dispatch finished before the kill; slow the simulator"
    );
    // A new replica joins; the survivor and it finish the roll call.
    let mut c = cluster.replica().await;
    cluster
        .wait_for(rc, "everyone sent", |p| {
            p.overall.pending == 0 && p.overall.sending == 0
        })
        .await;

    // 2. SIGKILL whichever replica holds the deadline lease, before the first deadline.
    let first_deadline = cluster.progress(rc).await.unwrap().next_deadline_at;
    let holder = cluster.deadline_holder().await.expect("someone holds it");
    let (victim, survivor) = if holder == b.child.id() {
        (&mut b, &mut c)
    } else {
        assert_eq!(holder, c.child.id(), "the holder is a live replica");
        (&mut c, &mut b)
    };
    kill(&mut victim.child);
    if let Some(d) = first_deadline {
        assert!(
            cluster.clock.now_millis() < d,
            "the lease holder must die before the first deadline"
        );
    }

    // The survivor takes the lease over and escalates on time, give or take the lease.
    cluster
        .check_roll_call_ends_right(rc, 3 * LEASE_TTL_MS)
        .await;
    let dup = cluster.sim.stats().duplicates;
    assert!(
        dup <= (BATCH * WORKERS) as u64,
        "{dup} duplicates exceed what one replica had in flight ({})",
        BATCH * WORKERS
    );
    kill(&mut survivor.child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_cut_mid_roll_call_is_survived_health_says_degraded_and_nothing_is_lost() {
    // A dispatch lease (6 real seconds) longer than the outage: a batch sent just before the
    // cut is recorded after it, not sent again.
    let Some(cluster) = Cluster::new("120s").await else {
        return;
    };
    let mut a = cluster.replica().await;
    let mut b = cluster.replica().await;
    let rc = cluster.start().await;
    wait_until("dispatch under way", Duration::from_secs(30), || {
        let n = cluster.sim.stats().accepted;
        async move { n >= 300 }
    })
    .await;

    // Cut every connection a few times; the first time, keep the database refusing new
    // ones until the replicas' health check says so.
    let mut admin = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap();
    let name = &cluster.pg.name;
    for round in 0..4 {
        cut_off(&mut admin, name).await;
        if round == 0 {
            let health = format!("{}/healthz", a.url);
            wait_until("/healthz says degraded", Duration::from_secs(30), || {
                let health = health.clone();
                async move {
                    match reqwest::get(&health).await {
                        Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                            r.text().await.is_ok_and(|t| t.contains("degraded"))
                        }
                        _ => false,
                    }
                }
            })
            .await;
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        reopen(&mut admin, name).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = admin.close().await;

    // Both recover by themselves and finish the roll call.
    for r in [&a, &b] {
        let health = format!("{}/healthz", r.url);
        wait_until("/healthz ok again", Duration::from_secs(30), || {
            let health = health.clone();
            async move {
                reqwest::get(&health)
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
    }
    cluster
        .check_roll_call_ends_right(rc, 3 * LEASE_TTL_MS)
        .await;
    let errors = store_errors(&a).await + store_errors(&b).await;
    assert!(errors > 0, "/metrics counted no store errors");
    let dup = cluster.sim.stats().duplicates;
    assert!(
        dup <= (BATCH * WORKERS) as u64,
        "{dup} duplicates exceed one replica's in-flight batches"
    );
    kill(&mut a.child);
    kill(&mut b.child);
}

impl Replica {
    async fn wait_healthy(&self) {
        let health = format!("{}/healthz", self.url);
        wait_until(
            "the replica answers /healthz",
            Duration::from_secs(30),
            || {
                let health = health.clone();
                async move {
                    reqwest::get(&health)
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            },
        )
        .await;
    }
}

#[tokio::test]
async fn a_replica_started_while_the_database_refuses_connections_waits_and_comes_up() {
    let Some(cluster) = Cluster::new("60s").await else {
        return;
    };
    let mut admin = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap();
    let name = &cluster.pg.name;
    cut_off(&mut admin, name).await;
    let (mut replica, log) = cluster.spawn_replica();
    wait_until("the replica says it waits", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move { text.contains("the database is unreachable; waiting for it") }
    })
    .await;
    assert!(
        replica.child.try_wait().unwrap().is_none(),
        "the replica exited instead of waiting: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    reopen(&mut admin, name).await;
    let _ = admin.close().await;
    replica.wait_healthy().await;
    // And it works: a roll call through it ends right.
    let rc = cluster.start().await;
    cluster
        .check_roll_call_ends_right(rc, 3 * LEASE_TTL_MS)
        .await;
    kill(&mut replica.child);
}

/// Makes database `name` refuse new connections and ends every open one.
async fn cut_off(admin: &mut sqlx::PgConnection, name: &str) {
    admin
        .execute(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false").as_str())
        .await
        .unwrap();
    admin
        .execute(
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            )
            .as_str(),
        )
        .await
        .unwrap();
}

/// Lets database `name` take connections again.
async fn reopen(admin: &mut sqlx::PgConnection, name: &str) {
    admin
        .execute(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true").as_str())
        .await
        .unwrap();
}

async fn store_errors(replica: &Replica) -> u64 {
    let text = reqwest::get(format!("{}/metrics", replica.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("anpi_store_errors_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Who holds singleton lease `name` now (its instance id).
async fn lease_holder(store: &SharedStore, name: &str) -> Option<String> {
    store.lease(name).await.ok().flatten().map(|(h, _)| h)
}

fn pid_of(holder: &str) -> Option<u32> {
    holder.strip_prefix("pid")?.split('-').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_batch_hands_its_batch_over_within_the_dispatch_lease() {
    // Real time, a 5 s dispatch lease, and a platform slow enough that one replica's batch
    // takes longer than the lease to send.
    let Some(cluster) = Cluster::build(Setup {
        dispatch_lease: "5s".into(),
        speed: 1.0,
        people: 150,
        send_takes: Duration::from_millis(1_000),
        lease_ttl: "2s".into(),
    })
    .await
    else {
        return;
    };
    let mut a = cluster.replica().await;
    let rc = cluster.start().await;
    // a claims everyone (two send loops of 100 places each); only then does b join.
    cluster
        .wait_for(rc, "a claims the whole roll call", |p| {
            p.overall.pending == 0
        })
        .await;
    let mut b = cluster.replica().await;
    let claimed_at = std::time::Instant::now();
    wait_until(
        "a sends past its first lease",
        Duration::from_secs(60),
        || {
            let n = cluster.sim.stats().accepted;
            let long = claimed_at.elapsed() > Duration::from_secs(7);
            async move { n >= 48 && long }
        },
    )
    .await;
    // a's heartbeat kept its claims: in 7 s, past the 5 s lease, b took none of them.
    assert_eq!(sends_by(&b).await, 0, "b sent part of a's live batch");
    let at_kill = cluster.sim.stats().accepted;
    assert!(
        at_kill < 150,
        "a finished before the kill; slow the simulator"
    );
    kill(&mut a.child);
    let killed = std::time::Instant::now();
    wait_until("b takes a's batch over", Duration::from_secs(60), || {
        let b = &b;
        async move { sends_by(b).await > 0 }
    })
    .await;
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(9),
        "a's batch waited {took:?} after the kill (lease 5 s)"
    );
    cluster
        .wait_for(rc, "everyone sent", |p| {
            p.overall.pending == 0 && p.overall.sending == 0
        })
        .await;
    for h in &cluster.handles {
        assert!(
            cluster.sim.received(rc, h) >= 1,
            "{h} never got the message"
        );
    }
    let dup = cluster.sim.stats().duplicates;
    assert!(
        dup <= 16,
        "{dup} duplicates: more than a had in flight (16) at the kill"
    );
    kill(&mut b.child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn singleton_leases_go_with_their_process_handed_back_at_shutdown_and_taken_over_within_the_ttl(
) {
    let Some(cluster) = Cluster::build(Setup {
        speed: 1.0,
        people: 20,
        lease_ttl: "2s".into(),
        ..Setup::default()
    })
    .await
    else {
        return;
    };
    let mut a = cluster.replica().await;
    let mut b = cluster.replica().await;
    let holder = |cluster: &Cluster| {
        let store = cluster.store.clone();
        async move { lease_holder(&store, "deadlines").await }
    };
    wait_until(
        "someone holds the deadline lease",
        Duration::from_secs(30),
        || {
            let h = holder(&cluster);
            async move { h.await.is_some() }
        },
    )
    .await;
    let pick = |h: &str, a: &Replica, b: &Replica| -> bool {
        // true: a holds it
        let pid = pid_of(h).expect("the holder names its pid");
        assert!(pid == a.child.id() || pid == b.child.id(), "{h}");
        pid == a.child.id()
    };

    // 1. SIGKILL, the process left unreaped (it still exists to the machine): the survivor
    //    waits out the lease and takes it within the 2 s time to live.
    let first = holder(&cluster).await.unwrap();
    let (victim, survivor) = if pick(&first, &a, &b) {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    victim.child.kill().unwrap();
    let killed = std::time::Instant::now();
    wait_until(
        "the survivor takes the lease",
        Duration::from_secs(30),
        || {
            let h = holder(&cluster);
            let first = first.clone();
            async move { h.await.is_some_and(|h| h != first) }
        },
    )
    .await;
    let took = killed.elapsed();
    victim.child.wait().unwrap();
    assert!(
        took < Duration::from_millis(3_000),
        "took {took:?} to take over a 2 s lease"
    );
    let survivor_holder = holder(&cluster).await.unwrap();
    assert_eq!(pid_of(&survivor_holder), Some(survivor.child.id()));

    // 2. A replica restarted on this machine: the holder is SIGKILLed and reaped, so it is
    //    gone from the machine; the new process takes the lease at once.
    let mut c = cluster.replica().await;
    kill(&mut survivor.child);
    let killed = std::time::Instant::now();
    wait_until(
        "the new replica takes over",
        Duration::from_secs(30),
        || {
            let h = holder(&cluster);
            let c = c.child.id();
            async move { h.await.and_then(|h| pid_of(&h)) == Some(c) }
        },
    )
    .await;
    assert!(
        killed.elapsed() < Duration::from_millis(2_000),
        "{:?}",
        killed.elapsed()
    );

    // 3. A clean shutdown (SIGTERM) hands the lease back: it has ended when the process has.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &c.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    c.child.wait().unwrap();
    let (_, until) = cluster.store.lease("deadlines").await.unwrap().unwrap();
    assert!(
        until <= cluster.clock.now_millis(),
        "the lease outlived its process by {} ms",
        until - cluster.clock.now_millis()
    );
}
