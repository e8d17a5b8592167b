//! `anpi bench --urgent`: how long an urgent answer takes from the chat platform to HQ's
//! action list. One roll call of `--sizes` recipients runs through the real application
//! against the simulator on the wall clock; a set of people tap 救助要請 at spread-out times
//! after their message arrives, and an HQ client polls `GET /api/rollcalls/{id}/escalations`
//! (the list every view reads) every few milliseconds. For each urgent person, the latency is
//! from the moment the answer became visible on the platform's feed (the event's platform
//! time, kept in the event log) to the first poll that shows them at the top as urgent.
//!
//! Figures are printed, never asserted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::contacts::{synthetic, ContactKind};
use crate::scenario::Scenario;
use crate::simulator::{Behaviour, Faults, Script, SimAnswer, SimConfig, Simulator};
use crate::startup::Application;

const SCENARIO: &str = r#"
name = "bench-urgent"
title = "ベンチマーク 要対応"
drill = true
deadline = "5m"
[message]
ja = "【訓練】安否確認です。下のボタンを押してください。"
en = "Drill: safety check. Tap a button below."
[[buttons]]
label = "無事 / Safe"
value = "safe"
level = "ok"
[[buttons]]
label = "救助要請 / Need help"
value = "need_help"
level = "urgent"
"#;

/// People who ask for help in one run.
const URGENT: usize = 40;
/// How often HQ's client polls the list.
const POLL: Duration = Duration::from_millis(5);

/// Runs the measurement `runs` times for each size and prints the latencies.
pub async fn run(sizes: &[usize], runs: usize) -> anyhow::Result<()> {
    println!(
        "urgent answer -> HQ's action list (API), {URGENT} people asking for help, polled every {} ms",
        POLL.as_millis()
    );
    for &size in sizes {
        let mut all = Vec::new();
        for run in 1..=runs {
            let mut lat = once(size).await?;
            lat.sort_by(f64::total_cmp);
            println!(
                "  {size:>7} recipients, run {run}: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
                pct(&lat, 0.5),
                pct(&lat, 0.95),
                lat.last().copied().unwrap_or(0.0)
            );
            all.extend(lat);
        }
        all.sort_by(f64::total_cmp);
        println!(
            "{size:>7} recipients, all runs ({} answers): p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
            all.len(),
            pct(&all, 0.5),
            pct(&all, 0.95),
            all.last().copied().unwrap_or(0.0)
        );
    }
    Ok(())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// One roll call; the latency of each urgent answer, in milliseconds.
async fn once(size: usize) -> anyhow::Result<Vec<f64>> {
    let tmp = tempfile::tempdir()?;
    let contacts = synthetic::generate(size, 11).contacts;
    let staff: Vec<_> = contacts
        .iter()
        .filter(|c| c.kind == ContactKind::Staff)
        .collect();
    // Spread over the whole send, so the answers arrive while messages still go out.
    let step = (staff.len() / URGENT).max(1);
    let mut script = Script::default();
    let mut urgent = HashMap::new();
    for (i, c) in staff.iter().step_by(step).take(URGENT).enumerate() {
        let h = c.chat.get("simulator").context("a chat id")?.clone();
        let after = Duration::from_millis(2_000 + 150 * i as u64);
        script.insert(
            h,
            Behaviour::reads_after(after).answering(after, SimAnswer::Button("need_help".into())),
        );
        urgent.insert(c.id.clone(), ());
    }
    let clock: SharedClock = Arc::new(SystemClock);
    let sim = Simulator::start(
        SimConfig {
            token: "bench-token".into(),
            rate_limit: None,
            faults: Faults::default(),
            default_behaviour: Behaviour::default(),
            population: None,
        },
        script,
        clock.clone(),
    )
    .await?;
    let token = "bench-hq-token-0123456789";
    let config = Config::from_toml(&format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [database]
        url = "sqlite://{}"
        [api]
        hq_tokens = ["{token}"]
        [providers.simulator]
        url = "{}"
        token = "bench-token"
        poll_wait = "200ms"
        "#,
        tmp.path().join("anpi.db").display(),
        sim.base_url(),
    ))?;
    let app = Application::build_with_clock(config, clock.clone()).await?;
    let base = format!("http://{}", app.local_addr());
    let hq = app.hq();
    hq.import_contacts(&contacts).await?;
    let cancel = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(cancel.clone()));
    let scenario = Scenario::parse(SCENARIO, "bench-urgent")?;
    let (rc, _) = hq.start(&scenario, None, None).await?;

    let http = reqwest::Client::new();
    let url = format!("{base}/api/rollcalls/{}/escalations", rc.id);
    let mut seen: HashMap<String, i64> = HashMap::new();
    let give_up = Instant::now() + Duration::from_secs(120);
    while seen.len() < urgent.len() && Instant::now() < give_up {
        let v: serde_json::Value = http
            .get(&url)
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        let at = clock.now_millis();
        for x in v["entries"].as_array().into_iter().flatten() {
            if x["action"] != "urgent" {
                break;
            }
            if let Some(id) = x["entry"]["staff_id"].as_str() {
                seen.entry(id.to_string()).or_insert(at);
            }
        }
        tokio::time::sleep(POLL).await;
    }
    let events = hq.store().events(rc.id, 1_000_000).await?;
    let mut lat = Vec::new();
    for e in events.iter().filter(|e| e.kind == "answer") {
        let Some(d) = e.delivery_id else { continue };
        let Some(entry) = hq
            .call_list(rc.id)
            .await?
            .into_iter()
            .find(|x| x.delivery_id == d)
        else {
            continue;
        };
        if let Some(at) = seen.get(entry.staff_id.as_str()) {
            lat.push((at - e.occurred_at).max(0) as f64);
        }
    }
    anyhow::ensure!(
        lat.len() == urgent.len(),
        "only {} of {} urgent answers reached the list within 2 minutes",
        lat.len(),
        urgent.len()
    );
    cancel.cancel();
    let _ = running.await;
    sim.shutdown().await;
    Ok(lat)
}
