//! `anpi bench --jma`: how fast a telegram becomes a roll call. A loopback stand-in for JMA's
//! server serves a feed; each run lists a new, current 震源・震度に関する情報 for Sanjo
//! (JMA's 2011-03-11 telegram, its times and EventID set to now) and times, from the start of
//! the watcher's poll that sees it, the decision being recorded and the first message being
//! sent through the chat simulator to 1,000 recipients.
//!
//! Figures are printed, never asserted: the machines are shared and noisy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::contacts::synthetic;
use crate::startup::Application;

/// The telegram each run lists: 新潟県中越 震度5弱 (JMA sample 32-39_11_05).
const TELEGRAM: &str = "32-39_11_05_120615_VXSE53.xml";

/// Finds `shared/data/jma/<TELEGRAM>` beside the current folder or one of its ancestors.
fn find_telegram(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        anyhow::ensure!(p.is_file(), "--telegram {}: no such file", p.display());
        return Ok(p.to_path_buf());
    }
    let here = std::env::current_dir()?;
    here.ancestors()
        .map(|d| d.join("shared/data/jma").join(TELEGRAM))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("{TELEGRAM} not found under shared/data/jma beside {} or its parents: give --telegram FILE", here.display())
        })
}

/// `xml` with every element `tag`'s text set to `value` (test data templating only).
fn set_text(xml: &str, tag: &str, value: &str) -> String {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let Some(j) = rest[i..].find(&close) else {
            break;
        };
        out.push_str(&rest[..i + open.len()]);
        out.push_str(value);
        rest = &rest[i + j..];
    }
    out.push_str(rest);
    out
}

#[derive(Default)]
struct Served {
    feed: String,
    data: HashMap<String, String>,
}

async fn feed(State(s): State<Arc<Mutex<Served>>>) -> Response {
    let body = s.lock().unwrap_or_else(|e| e.into_inner()).feed.clone();
    body.into_response()
}

async fn data(State(s): State<Arc<Mutex<Served>>>, UrlPath(name): UrlPath<String>) -> Response {
    match s
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .data
        .get(&name)
        .cloned()
    {
        Some(b) => b.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn atom(entries: &[String]) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\" lang=\"ja\">\n<title>高頻度（地震火山）</title>\n{}</feed>\n",
        entries.concat()
    )
}

/// Runs the benchmark `runs` times and prints every run and the medians.
pub async fn run(runs: usize, telegram: Option<&Path>) -> anyhow::Result<std::process::ExitCode> {
    let path = find_telegram(telegram)?;
    let original =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    println!(
        "anpi bench --jma — telegram {} (times and EventID set to now), 1,000 recipients",
        path.display()
    );
    let served = Arc::new(Mutex::new(Served {
        feed: atom(&[]),
        data: HashMap::new(),
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/", listener.local_addr()?);
    let router = Router::new()
        .route("/feed/{name}", get(feed))
        .route("/data/{name}", get(data))
        .with_state(served.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let clock: SharedClock = Arc::new(SystemClock);
    let sim = crate::simulator::Simulator::start(
        crate::simulator::SimConfig::new("bench-token"),
        Default::default(),
        clock.clone(),
    )
    .await?;
    let tmp = tempfile::tempdir()?;
    let config = Config::from_toml(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"sqlite://{}\"\n[scenarios]\ndir = \"{}\"\n\
         [providers.simulator]\nurl = \"{}\"\ntoken = \"bench-token\"\n\
         [[triggers]]\nname = \"sanjo-quake\"\nfamily = \"earthquake\"\nareas = [\"1520400\", \"371\"]\nintensity = \"5-\"\nscenario = \"bench\"\n\
         [jma]\nenabled = true\nbase_url = \"{base}\"\nfeeds = [\"eqvol\"]\npoll_interval = \"10m\"\nstale_after = \"30m\"\n",
        tmp.path().join("bench.db").display(),
        tmp.path().display(),
        sim.base_url(),
    ))?;
    std::fs::write(
        tmp.path().join("bench.toml"),
        "name = \"bench\"\ntitle = \"地震 安否確認\"\ndeadline = \"5m\"\n[message]\nja = \"【安否確認】市内で強い地震がありました。読んだらボタンを押してください。\"\nen = \"Safety check: tap a button.\"\n[[buttons]]\nlabel = \"無事 / Safe\"\nvalue = \"safe\"\n",
    )?;
    let app = Application::build_with_clock(config, clock.clone()).await?;
    let hq = app.hq();
    hq.import_contacts(&synthetic::generate(1000, 1).contacts)
        .await?;
    let watcher = app
        .feed_watcher()
        .context("the feed watcher is not set up")?;
    let store = app.store();
    let cancel = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(cancel.clone()));
    // The daemon's own watcher polls once at start (an empty feed), then sleeps 10 minutes:
    // each run below drives one poll itself.
    let end = Instant::now() + Duration::from_secs(30);
    while crate::jma::feed::health(
        &store,
        &crate::jma::JmaConfig {
            feeds: vec!["eqvol".into()],
            ..Default::default()
        },
    )
    .await[0]
        .ok_at
        .is_none()
    {
        anyhow::ensure!(Instant::now() < end, "the feed watcher never polled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut decided = Vec::new();
    let mut recorded = Vec::new();
    let mut first_sent = Vec::new();
    let mut entries = Vec::new();
    for i in 1..=runs {
        let now = chrono::Utc::now();
        let jst = now.with_timezone(&chrono_tz::Asia::Tokyo).fixed_offset();
        let event = format!("{}{:02}", now.format("%Y%m%d%H%M"), i % 100);
        let mut xml = set_text(
            &original,
            "DateTime",
            &now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        );
        xml = set_text(&xml, "ReportDateTime", &jst.to_rfc3339());
        xml = set_text(&xml, "TargetDateTime", &jst.to_rfc3339());
        xml = set_text(&xml, "EventID", &event);
        let file = format!("{}{:04}_0_VXSE53_010000.xml", now.format("%Y%m%d%H%M%S"), i);
        entries.insert(
            0,
            format!(
                "<entry><title>震源・震度に関する情報</title><id>{base}data/{file}</id><updated>{}</updated><link type=\"application/xml\" href=\"{base}data/{file}\"/></entry>\n",
                now.format("%Y-%m-%dT%H:%M:%SZ")
            ),
        );
        {
            let mut s = served.lock().unwrap_or_else(|e| e.into_inner());
            s.data.insert(file.clone(), xml);
            s.feed = atom(&entries);
        }
        let began = Instant::now();
        let report = watcher.run_once().await;
        let (outcome, took) = report.decided.first().context("the poll decided nothing")?;
        let decided_in = outcome
            .decided_at
            .map_or(*took, |at| at.saturating_duration_since(began));
        let rc = outcome
            .decisions
            .iter()
            .find_map(|d| d.roll_call)
            .map(crate::ids::RollCallId)
            .context("the telegram started no roll call")?;
        let sent_after = loop {
            let p = store.progress(rc).await?;
            if p.overall.sent + p.overall.read + p.overall.answered > 0 {
                break began.elapsed();
            }
            anyhow::ensure!(
                began.elapsed() < Duration::from_secs(60),
                "nothing was sent"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        println!(
            "run {i}/{runs}: poll -> decision {:.1} ms; -> roll call written and decision recorded {:.1} ms; -> first message sent {:.1} ms (roll call #{rc})",
            decided_in.as_secs_f64() * 1000.0,
            took.as_secs_f64() * 1000.0,
            sent_after.as_secs_f64() * 1000.0
        );
        decided.push(decided_in.as_secs_f64() * 1000.0);
        recorded.push(took.as_secs_f64() * 1000.0);
        first_sent.push(sent_after.as_secs_f64() * 1000.0);
        hq.wait_all_sent(rc, Duration::from_millis(20)).await?;
        hq.close(rc).await?;
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (d50, dmax) = med(decided);
    let (r50, rmax) = med(recorded);
    let (s50, smax) = med(first_sent);
    println!(
        "median (max) of {runs}: poll -> decision {d50:.1} ms ({dmax:.1}); -> recorded {r50:.1} ms ({rmax:.1}); -> first message sent {s50:.1} ms ({smax:.1})"
    );
    cancel.cancel();
    let _ = running.await;
    server.abort();
    sim.shutdown().await;
    Ok(std::process::ExitCode::SUCCESS)
}
