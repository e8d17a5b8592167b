//! `anpi bench`: the throughput benchmark. For each size it runs one roll call through the
//! real application against the simulator with no rate limit and nobody reading, and reports
//! time to all-sent, sends per second, time from the deadline to the call list being ready,
//! and peak memory; and, in the same run, the rate at which a bare HTTP client can post to
//! the same simulator (the ceiling anpi is compared with).
//!
//! The simulator runs in a child process (`anpi simulator`), so the memory and CPU figures
//! are anpi's own, and the ceiling is measured across processes as anpi's sends are.
//!
//! With `--dashboards N --callers M`, every size is also run with N HQ pages following the
//! roll call live (each an event stream that refetches the call list whenever its version
//! changes, as the page does) and M callers working the queue (claim the next person, record
//! an outcome), and the figures of both are printed side by side with their ratio.
//!
//! Figures are printed, never asserted: the machines are shared and noisy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::clock::{ManualClock, SharedClock};
use crate::config::Config;
use crate::contacts::synthetic;
use crate::scenario::Scenario;
use crate::simulator::SimStats;
use crate::startup::Application;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Roll-call sizes to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000usize, 100_000])]
    pub sizes: Vec<usize>,
    /// Requests for the bare-client ceiling measurement.
    #[arg(long, default_value_t = 50_000)]
    pub ceiling_requests: usize,
    /// Concurrency of the bare client (anpi's own in-flight limit is the same by default).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Dispatcher send loops (each one a claim / send / record pipeline).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Deliveries a send loop may hold claimed and unrecorded (`[dispatch] batch_size`).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Run on PostgreSQL: the server's URL (e.g. postgres://root@127.0.0.1:5432/postgres).
    /// Each size gets a fresh database there, dropped afterwards. Default: a SQLite file.
    #[arg(long)]
    pub database: Option<String>,
    /// Replicas (whole applications in this process) sharing the one database.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Repetitions of the whole measurement (every size, then the ceiling); the summary gives
    /// the median of each figure.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Measure instead how long an urgent answer (救助要請) takes from the platform to HQ's
    /// action list, at each of --sizes recipients.
    #[arg(long)]
    pub urgent: bool,
    /// Instead: time a JMA telegram from the feed poll that lists it to its decision and to
    /// the first message sent (see `crate::jma::bench`).
    #[arg(long)]
    pub jma: bool,
    /// With --jma: the telegram to list (default: shared/data/jma/32-39_11_05_120615_VXSE53.xml
    /// beside the current folder or a parent).
    #[arg(long)]
    pub telegram: Option<std::path::PathBuf>,
    /// HQ pages following each roll call live while it runs (event streams that refetch the
    /// call list when it changes). With this or `--callers`, each size runs with and without.
    #[arg(long, default_value_t = 0)]
    pub dashboards: usize,
    /// Callers working the call queue while it runs (claim the next person, record an outcome).
    #[arg(long, default_value_t = 0)]
    pub callers: usize,
}

/// The HQ token the bench's pages and callers use.
const BENCH_HQ_TOKEN: &str = "bench-hq-token-0123456789abcdef";
const BENCH_CALLER_TOKEN: &str = "bench-caller-token-0123456789abcdef";

/// What a run puts on anpi besides the roll call itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Load {
    pub dashboards: usize,
    pub callers: usize,
}

impl Load {
    fn is_none(&self) -> bool {
        self.dashboards == 0 && self.callers == 0
    }
}

/// One size's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    pub recipients: usize,
    /// Pages and callers that ran alongside.
    pub load: Load,
    /// Progress events the pages received, and call-list fetches they made.
    pub stream_events: u64,
    pub list_fetches: u64,
    /// Claims and outcomes the callers made.
    pub calls: u64,
    pub all_sent_secs: f64,
    /// Of which: the roll call and every delivery written (one transaction).
    pub start_ms: f64,
    pub sends_per_sec: f64,
    pub deadline_to_escalated_ms: f64,
    pub call_list_query_ms: f64,
    pub duplicates: u64,
}

const BENCH_SCENARIO: &str = r#"
name = "bench"
title = "ベンチマーク"
drill = true
deadline = "5m"
[message]
ja = "【訓練】安否確認です。読んだら下のボタンを押してください。"
en = "Drill: safety check. Tap a button below."
[[buttons]]
label = "無事 / Safe"
value = "safe"
"#;

/// Not on jemalloc here: nothing to say.
#[cfg(target_env = "msvc")]
fn allocator_figures() -> Option<(f64, f64)> {
    None
}

/// What the allocator holds now, in MiB: allocated by the program, and resident. `None`
/// where the process does not run on jemalloc.
#[cfg(not(target_env = "msvc"))]
fn allocator_figures() -> Option<(f64, f64)> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let allocated = stats::allocated::read().ok()?;
    let resident = stats::resident::read().ok()?;
    (allocated > 0).then(|| (mib(allocated), mib(resident)))
}

/// Peak resident memory of this process, in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    rss_mib("VmHWM:")
}

/// A `/proc/self/status` memory figure (`VmHWM:`, `VmRSS:`), in MiB.
fn rss_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub mod urgent;

pub async fn run(args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    if args.jma {
        return crate::jma::bench::run(args.runs.max(1), args.telegram.as_deref()).await;
    }
    println!("anpi bench — release build expected (cargo run --release -- bench)");
    #[cfg(not(target_env = "msvc"))]
    if let Ok(conf) = tikv_jemalloc_ctl::config::malloc_conf::read() {
        println!(
            "allocator: jemalloc ({})",
            conf.trim_matches(|c: char| c == '\0' || c.is_whitespace())
        );
    }
    if args.urgent {
        anyhow::ensure!(
            (1..=20).contains(&args.runs),
            "--runs must be between 1 and 20"
        );
        urgent::run(&args.sizes, args.runs).await?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    anyhow::ensure!(
        (1..=8).contains(&args.replicas),
        "--replicas must be between 1 and 8"
    );
    if let Some(url) = &args.database {
        anyhow::ensure!(
            crate::store::is_postgres_url(url),
            "--database {:?} is not a postgres:// URL (without it the bench uses SQLite)",
            crate::config::redact_url(url)
        );
    }
    println!(
        "backend: {}; replicas: {}",
        args.database
            .as_deref()
            .map_or_else(|| "SQLite".to_string(), crate::config::redact_url),
        args.replicas
    );
    anyhow::ensure!(
        (1..=20).contains(&args.runs),
        "--runs must be between 1 and 20"
    );
    let mut results: Vec<BenchResult> = Vec::new();
    let mut ceilings = Vec::new();
    let mut first_rss = None;
    let loaded = Load {
        dashboards: args.dashboards,
        callers: args.callers,
    };
    anyhow::ensure!(
        loaded.dashboards <= 200 && loaded.callers <= 50,
        "--dashboards at most 200, --callers at most 50"
    );
    let loads = if loaded.is_none() {
        vec![Load::default()]
    } else {
        vec![Load::default(), loaded]
    };
    for run in 1..=args.runs {
        let mut best: Option<f64> = None;
        for &n in &args.sizes {
            for &load in &loads {
                let r = run_size(n, &args, load).await?;
                println!(
                    "run {run}/{}: {:>7} recipients{}: all sent in {:.2}s ({:.0} sends/s; roll call written in {:.0} ms); deadline -> all escalated {:.0} ms; call list query {:.0} ms; duplicates {}{}",
                    args.runs, r.recipients, describe(load), r.all_sent_secs, r.sends_per_sec, r.start_ms, r.deadline_to_escalated_ms, r.call_list_query_ms, r.duplicates,
                    if load.is_none() { String::new() } else { format!("; {} stream events, {} list fetches, {} calls", r.stream_events, r.list_fetches, r.calls) }
                );
                if load.is_none() {
                    best = Some(best.map_or(r.sends_per_sec, |b: f64| b.max(r.sends_per_sec)));
                }
                results.push(r);
            }
        }
        // Measured right after anpi's runs, so both see the same phase of a shared machine.
        let ceiling = bare_ceiling(args.ceiling_requests, args.concurrency).await?;
        println!(
            "run {run}/{}: bare HTTP client -> same simulator, concurrency {}: {:.0} requests/s (the ceiling){}",
            args.runs,
            args.concurrency,
            ceiling,
            best.map_or_else(String::new, |b| format!("; anpi at its best {:.0}% of it", 100.0 * b / ceiling))
        );
        ceilings.push(ceiling);
        if let Some((allocated, resident)) = allocator_figures() {
            println!(
                "run {run}/{}: after it, {allocated:.0} MiB allocated, {resident:.0} MiB resident (allocator), {:.0} MiB resident (process)",
                args.runs,
                rss_mib("VmRSS:").unwrap_or(f64::NAN)
            );
        }
        if run == 1 {
            first_rss = peak_rss_mib();
        }
    }
    println!("median of {} runs:", args.runs);
    let mut best_median: Option<f64> = None;
    for &n in &args.sizes {
        let mut quiet_sent = None;
        for &load in &loads {
            let of_size: Vec<&BenchResult> = results
                .iter()
                .filter(|r| r.recipients == n && r.load == load)
                .collect();
            let med = |f: fn(&BenchResult) -> f64| median(of_size.iter().map(|r| f(r)).collect());
            let rate = med(|r| r.sends_per_sec);
            let sent = med(|r| r.all_sent_secs);
            println!(
                "{:>7} recipients{}: all sent in {:.2}s ({:.0} sends/s; roll call written in {:.0} ms); deadline -> all escalated {:.0} ms; call list query {:.0} ms; duplicates {}{}",
                n,
                describe(load),
                sent,
                rate,
                med(|r| r.start_ms),
                med(|r| r.deadline_to_escalated_ms),
                med(|r| r.call_list_query_ms),
                of_size.iter().map(|r| r.duplicates).sum::<u64>(),
                match quiet_sent {
                    Some(q) if !load.is_none() => format!("; {:.2}x the time without them", sent / q),
                    _ => String::new(),
                }
            );
            if load.is_none() {
                quiet_sent = Some(sent);
                best_median = Some(best_median.map_or(rate, |b: f64| b.max(rate)));
            }
        }
    }
    let ceiling = median(ceilings.clone());
    println!(
        "bare HTTP client -> same simulator, concurrency {}: {:.0} requests/s (the ceiling)",
        args.concurrency, ceiling
    );
    if let Some(best) = best_median {
        println!(
            "anpi at its best: {:.0}% of the ceiling",
            100.0 * best / ceiling
        );
    }
    // The first run is what one daemon doing these roll calls holds at most; later runs in
    // the same process add what the allocator keeps from earlier ones.
    if let (Some(first), Some(all)) = (first_rss, peak_rss_mib()) {
        println!("peak RSS: {first:.0} MiB after run 1, {all:.0} MiB after all runs");
    }
    println!(
        "{}",
        json!({"results": results, "ceilings_rps": ceilings, "ceiling_rps": ceiling,
               "peak_rss_mib_run_1": first_rss, "peak_rss_mib": peak_rss_mib()})
    );
    Ok(std::process::ExitCode::SUCCESS)
}

fn describe(load: Load) -> String {
    if load.is_none() {
        String::new()
    } else {
        format!(
            " with {} dashboards and {} callers",
            load.dashboards, load.callers
        )
    }
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

async fn run_size(n: usize, args: &BenchArgs, load: Load) -> anyhow::Result<BenchResult> {
    let tmp = tempfile::tempdir()?;
    let manual = ManualClock::new(Utc::now());
    let clock: SharedClock = Arc::new(manual.clone());
    let sim = ChildSim::spawn().await?;
    let bench_db = match &args.database {
        Some(server) => Some(BenchDatabase::create(server).await?),
        None => None,
    };
    let url = match &bench_db {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", tmp.path().join("bench.db").display()),
    };
    let config = Config::from_toml(&format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [database]
        url = "{}"
        [api]
        hq_tokens = ["{BENCH_HQ_TOKEN}"]
        caller_tokens = ["{BENCH_CALLER_TOKEN}"]
        [dispatch]
        workers = {}
        batch_size = {}
        [providers.simulator]
        url = "{}"
        token = "bench-token"
        poll_wait = "200ms"
        max_in_flight = {}
        "#,
        url, args.workers, args.batch, sim.url, args.concurrency,
    ))?;
    let mut apps = Vec::new();
    for _ in 0..args.replicas.max(1) {
        apps.push(Application::build_with_clock(config.clone(), clock.clone()).await?);
    }
    let hq = apps[0].hq();
    let store = apps[0].store();
    let base = format!("http://{}", apps[0].local_addr());
    let wakeups: Vec<_> = apps.iter().filter_map(|a| a.dispatch_wakeup()).collect();
    let deadline_workers: Vec<_> = apps.iter().map(|a| a.deadlines()).collect();
    hq.import_contacts(&synthetic::generate(n, 42).contacts)
        .await?;
    let scenario = Scenario::parse(BENCH_SCENARIO, "bench")?;
    let cancel = CancellationToken::new();
    let running: Vec<_> = apps
        .into_iter()
        .map(|app| tokio::spawn(app.run_until_stopped(cancel.clone())))
        .collect();

    let t0 = Instant::now();
    let (rc, _) = hq.start(&scenario, None, None).await?;
    let started = t0.elapsed();
    // Pages and callers join the moment the roll call exists, as HQ's screens would.
    let pressure = Pressure::start(&base, rc.id.0, load);
    for w in &wakeups {
        w.notify_waiters();
    }
    while store.next_due_attempt("simulator").await?.is_some() {
        // Coarse enough not to load the database the run is measuring; fine enough for a
        // figure of seconds.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_sent = t0.elapsed();

    // Whichever replica holds the deadline lease escalates.
    let mut escalated: Vec<_> = deadline_workers
        .iter()
        .map(|d| {
            let mut f = Box::pin(d.escalated.notified());
            f.as_mut().enable();
            f
        })
        .collect();
    let t1 = Instant::now();
    manual.advance(scenario.deadline + Duration::from_millis(1));
    let any_escalated = futures::future::select_all(escalated.iter_mut().map(|f| f.as_mut()));
    tokio::time::timeout(Duration::from_secs(60), any_escalated)
        .await
        .context("the deadline worker did not escalate within 60 s")?;
    let to_escalated = t1.elapsed();
    let t2 = Instant::now();
    let list = hq.call_list(rc.id).await?;
    let list_ms = t2.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        list.len() == n,
        "call list has {} entries, expected {n}",
        list.len()
    );
    let stats = sim.stats().await?;
    let (stream_events, list_fetches, calls) = pressure.stop().await;
    cancel.cancel();
    for r in running {
        let _ = r.await;
    }
    if let Some(db) = bench_db {
        db.drop_it().await;
    }
    Ok(BenchResult {
        recipients: n,
        load,
        stream_events,
        list_fetches,
        calls,
        all_sent_secs: all_sent.as_secs_f64(),
        start_ms: started.as_secs_f64() * 1000.0,
        sends_per_sec: n as f64 / all_sent.as_secs_f64(),
        deadline_to_escalated_ms: to_escalated.as_secs_f64() * 1000.0,
        call_list_query_ms: list_ms,
        duplicates: stats.duplicates,
    })
}

/// HQ pages and callers working against a running anpi over HTTP.
struct Pressure {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stream_events: Arc<std::sync::atomic::AtomicU64>,
    list_fetches: Arc<std::sync::atomic::AtomicU64>,
    calls: Arc<std::sync::atomic::AtomicU64>,
}

impl Pressure {
    fn start(base: &str, rc: i64, load: Load) -> Self {
        use std::sync::atomic::AtomicU64;
        let p = Self {
            stop: CancellationToken::new(),
            tasks: Vec::new(),
            stream_events: Arc::new(AtomicU64::new(0)),
            list_fetches: Arc::new(AtomicU64::new(0)),
            calls: Arc::new(AtomicU64::new(0)),
        };
        let client = reqwest::Client::new();
        let mut tasks = Vec::new();
        for _ in 0..load.dashboards {
            tasks.push(tokio::spawn(dashboard(
                client.clone(),
                base.to_string(),
                rc,
                p.stop.clone(),
                p.stream_events.clone(),
                p.list_fetches.clone(),
            )));
        }
        for i in 0..load.callers {
            tasks.push(tokio::spawn(caller(
                client.clone(),
                base.to_string(),
                rc,
                format!("desk-{i}"),
                p.stop.clone(),
                p.calls.clone(),
            )));
        }
        Self { tasks, ..p }
    }

    /// Stops every page and caller; returns (stream events, list fetches, calls).
    async fn stop(self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering;
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        (
            self.stream_events.load(Ordering::Relaxed),
            self.list_fetches.load(Ordering::Relaxed),
            self.calls.load(Ordering::Relaxed),
        )
    }
}

/// One HQ page: follows the roll call's event stream and, as the page does, fetches the
/// whole call list whenever the stream says it changed.
async fn dashboard(
    client: reqwest::Client,
    base: String,
    rc: i64,
    stop: CancellationToken,
    events: Arc<std::sync::atomic::AtomicU64>,
    fetches: Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::Ordering;
    let url = format!("{base}/api/rollcalls/{rc}/stream?token={BENCH_HQ_TOKEN}");
    let Ok(mut resp) = client.get(&url).send().await else {
        return;
    };
    let mut pending = String::new();
    let mut version = String::new();
    loop {
        let chunk = tokio::select! {
            _ = stop.cancelled() => return,
            c = resp.chunk() => c,
        };
        let Ok(Some(chunk)) = chunk else { return };
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) else {
                continue;
            };
            events.fetch_add(1, Ordering::Relaxed);
            // Only what decides the list fetch is read: the page's own rendering runs on
            // HQ's desks, not on anpi's machine, so the bench does not spend its cores on it.
            #[derive(serde::Deserialize)]
            struct Event {
                #[serde(default)]
                calls_version: String,
            }
            let now = serde_json::from_str::<Event>(data.trim())
                .map(|e| e.calls_version)
                .unwrap_or_default();
            if now != version {
                version = now;
                let list = client
                    .get(format!("{base}/api/rollcalls/{rc}/escalations?scope=all"))
                    .bearer_auth(BENCH_HQ_TOKEN)
                    .send()
                    .await;
                if let Ok(r) = list {
                    let _ = r.bytes().await;
                    fetches.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// One caller working the queue: takes the next person, records an outcome, and asks again
/// (a few times a second while the queue is empty).
async fn caller(
    client: reqwest::Client,
    base: String,
    rc: i64,
    desk: String,
    stop: CancellationToken,
    calls: Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::Ordering;
    while !stop.is_cancelled() {
        let next = client
            .post(format!("{base}/api/rollcalls/{rc}/calls/next"))
            .bearer_auth(BENCH_CALLER_TOKEN)
            .json(&json!({ "desk": desk }))
            .send()
            .await;
        calls.fetch_add(1, Ordering::Relaxed);
        let entry: Option<serde_json::Value> = match next {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v.get("entry").cloned())
                .filter(|e| !e.is_null()),
            Err(_) => None,
        };
        match entry.and_then(|e| e["staff_id"].as_str().map(String::from)) {
            Some(staff) => {
                let _ = client
                    .post(format!("{base}/api/rollcalls/{rc}/calls/{staff}"))
                    .bearer_auth(BENCH_CALLER_TOKEN)
                    .json(&json!({ "outcome": "no-answer", "desk": desk }))
                    .send()
                    .await;
                calls.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        }
    }
}

/// A fresh PostgreSQL database for one bench size.
struct BenchDatabase {
    server: String,
    name: String,
    url: String,
}

impl BenchDatabase {
    async fn create(server: &str) -> anyhow::Result<Self> {
        use sqlx::{Connection, Executor};
        let shown = crate::config::redact_url(server);
        let mut conn = sqlx::PgConnection::connect(server)
            .await
            .with_context(|| format!("connecting to {shown}"))?;
        let name = format!("anpi_bench_{:08x}", rand::random::<u32>());
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .with_context(|| format!("creating database {name} on {shown}"))?;
        let _ = conn.close().await;
        let base = server.rsplit_once('/').map_or(server, |(b, _)| b);
        Ok(Self {
            server: server.to_string(),
            url: format!("{base}/{name}"),
            name,
        })
    }

    async fn drop_it(self) {
        use sqlx::{Connection, Executor};
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.server).await {
            let _ = conn
                .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
                .await;
        }
    }
}

/// Posts `requests` messages straight to a fresh simulator with a plain reqwest client.
async fn bare_ceiling(requests: usize, concurrency: usize) -> anyhow::Result<f64> {
    let sim = ChildSim::spawn().await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .build()?;
    let url = format!("{}/v1/messages", sim.url);
    let t = Instant::now();
    let ok = futures::stream::iter(0..requests)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            async move {
                client
                    .post(url)
                    .bearer_auth("bench-token")
                    .json(&json!({
                        "delivery_id": i, "roll_call_id": 1, "to": format!("sim-B{i}"),
                        "text": "【訓練】安否確認です。読んだら下のボタンを押してください。\n\nDrill: safety check.",
                        "buttons": [{"label": "無事 / Safe", "value": "safe"}]
                    }))
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
        })
        .buffer_unordered(concurrency)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        ok == requests,
        "only {ok} of {requests} bare requests succeeded"
    );
    Ok(requests as f64 / secs)
}

/// `anpi simulator` in a child process, killed when dropped.
struct ChildSim {
    url: String,
    _child: tokio::process::Child,
}

impl ChildSim {
    async fn spawn() -> anyhow::Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let exe = std::env::current_exe().context("finding the anpi executable")?;
        let mut child = tokio::process::Command::new(exe)
            .args([
                "simulator",
                "--listen",
                "127.0.0.1:0",
                "--token",
                "bench-token",
                "--read-after",
                "never",
                "--print-url",
            ])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the simulator process")?;
        let stdout = child.stdout.take().context("simulator stdout")?;
        let mut line = String::new();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .context("reading the simulator's address")?;
        anyhow::ensure!(line.starts_with("http://"), "simulator said {line:?}");
        Ok(Self {
            url: line.trim().to_string(),
            _child: child,
        })
    }

    async fn stats(&self) -> anyhow::Result<SimStats> {
        Ok(reqwest::Client::new()
            .get(format!("{}/v1/stats", self.url))
            .bearer_auth("bench-token")
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_is_the_middle_value() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
        assert!(median(Vec::new()).is_nan());
    }
}
