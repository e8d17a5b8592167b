//! The feed watcher: polls JMA's Atom feeds with conditional GETs (ETag / If-Modified-Since),
//! fetches each telegram a rule could act on exactly once, oldest first, and hands it to the
//! [`Engine`]. After a gap longer than a short feed lists, it reads the long feed (`_l`) once
//! to catch up. Each feed's health (last good read, last error) is stored, so `/healthz`, the
//! HQ page and `/metrics` on every replica see a stale or failing feed.
//!
//! Invariants: it runs on one replica at a time (the singleton lease "jma"); a telegram URL is
//! marked fetched only after its decision is recorded, so a crash in between decides it again
//! (and the start's idempotency key keeps that from starting twice); a URL that keeps failing
//! is given up after a few polls, with a warning.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::parse::{self, FeedEntry};
use super::rules::Family;
use super::{Engine, JmaConfig, Outcome, Scope};
use crate::clock::{Millis, SharedClock};
use crate::store::SharedStore;

/// The `provider_state` namespace of the feed health records.
pub const STATE_NS: &str = "jma";
/// Polls a telegram URL may fail before it is given up.
const GIVE_UP_AFTER: u32 = 3;
/// The span a short (high-frequency) feed lists: JMA keeps at least 10 minutes in it.
const SHORT_FEED_SPAN: Duration = Duration::from_secs(9 * 60);

/// One feed's health, as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeedHealth {
    pub feed: String,
    /// Last successful read (200 or 304).
    pub ok_at: Option<Millis>,
    pub error: Option<String>,
    pub error_at: Option<Millis>,
}

impl FeedHealth {
    /// Whether this feed is failing (its last read failed: a good read clears the error) or
    /// has not been read for longer than `stale_after`.
    pub fn stale(&self, now: Millis, stale_after: Duration) -> bool {
        self.error.is_some()
            || self
                .ok_at
                .is_some_and(|ok| now - ok > stale_after.as_millis() as i64)
    }
}

fn health_key(feed: &str) -> String {
    format!("feed:{feed}")
}

/// Every configured feed's stored health (a feed never read has no record yet).
pub async fn health(store: &SharedStore, config: &JmaConfig) -> Vec<FeedHealth> {
    let mut out = Vec::new();
    for f in &config.feeds {
        let h = store
            .provider_state(STATE_NS, &health_key(f))
            .await
            .ok()
            .flatten()
            .and_then(|s| serde_json::from_str::<FeedHealth>(&s).ok())
            .unwrap_or(FeedHealth {
                feed: f.clone(),
                ..FeedHealth::default()
            });
        out.push(h);
    }
    out
}

/// What one poll did.
#[derive(Debug, Default)]
pub struct PollReport {
    /// Feed name -> "200", "304" or the error.
    pub feeds: Vec<(String, String)>,
    /// Telegrams fetched and decided, with how long after the poll began each was decided.
    pub decided: Vec<(Outcome, Duration)>,
    pub fetch_errors: u64,
}

#[derive(Debug, Default, Clone)]
struct Validators {
    etag: Option<String>,
    last_modified: Option<String>,
    /// The entries of the last full read, walked again on a 304 (a telegram whose fetch
    /// failed is retried though the feed did not change).
    entries: Vec<FeedEntry>,
}

/// Polls the feeds and feeds new telegrams to the engine.
#[derive(Debug)]
pub struct FeedWatcher {
    engine: Arc<Engine>,
    store: SharedStore,
    clock: SharedClock,
    config: JmaConfig,
    http: reqwest::Client,
    validators: Mutex<HashMap<String, Validators>>,
    failures: Mutex<HashMap<String, u32>>,
    /// Type codes worth fetching, and the offices that matter for office-based families.
    wanted: Vec<(Family, Option<std::collections::BTreeSet<String>>)>,
}

impl FeedWatcher {
    pub fn new(engine: Arc<Engine>, clock: SharedClock) -> anyhow::Result<Self> {
        let config = engine.config().jma.clone();
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("anpi/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let wanted = engine
            .rules()
            .iter()
            .map(|r| {
                let offices = (!r.offices.is_empty()
                    && matches!(
                        r.family,
                        Family::Warning | Family::Landslide | Family::River
                    ))
                .then(|| r.offices.clone());
                (r.family, offices)
            })
            .collect();
        Ok(Self {
            store: engine.store().clone(),
            engine,
            clock,
            config,
            http,
            validators: Mutex::default(),
            failures: Mutex::default(),
            wanted,
        })
    }

    /// Whether a rule could act on this entry: its type is one of a rule's family and, for
    /// office-based families, it comes from one of the rule's offices.
    fn relevant(&self, e: &FeedEntry) -> bool {
        let Some(code) = e.code.as_deref() else {
            return false;
        };
        let family = match code {
            "VXSE51" | "VXSE53" => Family::Earthquake,
            "VTSE41" | "VTSE51" => Family::Tsunami,
            "VXWW50" => Family::Landslide,
            c if c.starts_with("VXKO") || c.starts_with("VXSU") => Family::River,
            c if c.starts_with("VPWW")
                && c[4..].parse::<u8>().is_ok_and(|n| (53..=61).contains(&n)) =>
            {
                Family::Warning
            }
            _ => return false,
        };
        self.wanted.iter().any(|(f, offices)| {
            *f == family
                && offices
                    .as_ref()
                    .is_none_or(|o| e.office.as_ref().is_some_and(|x| o.contains(x)))
        })
    }

    async fn record_health(&self, feed: &str, ok: bool, error: Option<String>) {
        let now = self.clock.now_millis();
        let mut h = health(&self.store, &self.config)
            .await
            .into_iter()
            .find(|h| h.feed == feed)
            .unwrap_or(FeedHealth {
                feed: feed.into(),
                ..FeedHealth::default()
            });
        if ok {
            h.ok_at = Some(now);
            h.error = None;
            h.error_at = None;
        } else {
            h.error = error;
            h.error_at = Some(now);
        }
        if let Ok(text) = serde_json::to_string(&h) {
            if let Err(e) = self
                .store
                .set_provider_state(STATE_NS, &health_key(feed), &text, now)
                .await
            {
                warn!(error = %e, feed, "could not store the feed's health");
            }
        }
    }

    /// Reads a feed; `None` when it did not change (304).
    async fn get_feed(&self, name: &str, conditional: bool) -> Result<Option<String>, String> {
        self.get_feed_with(name, conditional)
            .await
            .map(|r| r.map(|(b, _)| b))
    }

    async fn get_feed_with(
        &self,
        name: &str,
        conditional: bool,
    ) -> Result<Option<(String, Validators)>, String> {
        let url = format!("{}feed/{name}.xml", self.config.base_url);
        let mut req = self.http.get(&url);
        if conditional {
            let v = self
                .validators
                .lock()
                .await
                .get(name)
                .cloned()
                .unwrap_or_default();
            if let Some(etag) = &v.etag {
                req = req.header(reqwest::header::IF_NONE_MATCH, etag);
            }
            if let Some(lm) = &v.last_modified {
                req = req.header(reqwest::header::IF_MODIFIED_SINCE, lm);
            }
        }
        let res = req.send().await.map_err(|e| format!("{url}: {e}"))?;
        if res.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        if !res.status().is_success() {
            return Err(format!("{url}: HTTP {}", res.status()));
        }
        let header = |h: reqwest::header::HeaderName| {
            res.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let v = Validators {
            etag: header(reqwest::header::ETAG),
            last_modified: header(reqwest::header::LAST_MODIFIED),
            entries: Vec::new(),
        };
        let body = res.text().await.map_err(|e| format!("{url}: {e}"))?;
        Ok(Some((body, v)))
    }

    /// One poll of every feed (and, after a gap, the long feeds).
    pub async fn run_once(&self) -> PollReport {
        let began = Instant::now();
        let mut report = PollReport::default();
        let healths = health(&self.store, &self.config).await;
        let now = self.clock.now_millis();
        for name in self.config.feeds.clone() {
            let gap = healths
                .iter()
                .find(|h| h.feed == name)
                .and_then(|h| h.ok_at)
                .is_some_and(|ok| now - ok > SHORT_FEED_SPAN.as_millis() as i64);
            let mut entries = Vec::new();
            if gap {
                let long = format!("{name}_l");
                info!(feed = %name, "gap since the last good read: reading the long feed once");
                match self.get_feed(&long, false).await {
                    Ok(Some(text)) => match parse::parse_feed(&text) {
                        Ok(e) => entries.extend(e),
                        Err(e) => warn!(feed = %long, error = %e, "long feed unreadable"),
                    },
                    Ok(None) => {}
                    Err(e) => warn!(feed = %long, error = %e, "long feed not read"),
                }
            }
            match self.get_feed_with(&name, true).await {
                Ok(None) => {
                    report.feeds.push((name.clone(), "304".into()));
                    if let Some(v) = self.validators.lock().await.get(&name) {
                        entries.extend(v.entries.iter().cloned());
                    }
                    self.record_health(&name, true, None).await;
                }
                Ok(Some((text, mut v))) => match parse::parse_feed(&text) {
                    Ok(e) => {
                        report.feeds.push((name.clone(), "200".into()));
                        v.entries = e.clone();
                        self.validators.lock().await.insert(name.clone(), v);
                        entries.extend(e);
                        self.record_health(&name, true, None).await;
                    }
                    Err(e) => {
                        let msg = format!("feed {name}: {e}");
                        report.feeds.push((name.clone(), msg.clone()));
                        self.record_health(&name, false, Some(msg)).await;
                    }
                },
                Err(e) => {
                    warn!(feed = %name, error = %e, "feed not read");
                    report.feeds.push((name.clone(), e.clone()));
                    self.record_health(&name, false, Some(e)).await;
                }
            }
            // Oldest first, each URL once.
            entries.reverse();
            let mut done = std::collections::HashSet::new();
            for e in entries {
                if !done.insert(e.url.clone()) || !self.relevant(&e) {
                    continue;
                }
                match self.store.jma_fetched(&e.url).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(err) => {
                        warn!(error = %err, "could not check fetched telegrams; next poll");
                        break;
                    }
                }
                match self.fetch_and_decide(&e).await {
                    Ok(Some(o)) => report.decided.push((o, began.elapsed())),
                    Ok(None) => report.fetch_errors += 1,
                    Err(err) => {
                        warn!(error = %err, url = %e.url, "telegram not decided; next poll");
                        report.fetch_errors += 1;
                    }
                }
            }
        }
        report
    }

    /// Fetches one telegram and decides on it. `Ok(None)`: the fetch failed (tried again next
    /// poll, given up after a few).
    async fn fetch_and_decide(&self, e: &FeedEntry) -> anyhow::Result<Option<Outcome>> {
        let url = format!("{}data/{}", self.config.base_url, e.file);
        let body = match self.http.get(&url).send().await {
            Ok(res) if res.status().is_success() => res.text().await.ok(),
            Ok(res) => {
                warn!(url, status = %res.status(), "telegram fetch refused");
                None
            }
            Err(err) => {
                warn!(url, error = %err, "telegram fetch failed");
                None
            }
        };
        let now = self.clock.now_millis();
        let Some(xml) = body else {
            let mut f = self.failures.lock().await;
            let n = f.entry(e.url.clone()).or_default();
            *n += 1;
            if *n >= GIVE_UP_AFTER {
                warn!(url = %e.url, "telegram could not be fetched {GIVE_UP_AFTER} times; given up");
                f.remove(&e.url);
                self.store.jma_mark_fetched(&e.url, now).await?;
            }
            return Ok(None);
        };
        let outcome = self.engine.process(&xml, &e.url, Scope::Live, None).await?;
        self.store.jma_mark_fetched(&e.url, now).await?;
        self.failures.lock().await.remove(&e.url);
        Ok(Some(outcome))
    }

    /// Polls every `poll_interval` until `cancel` fires; tidies retraction messages too.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            let r = self.run_once().await;
            if !r.decided.is_empty() {
                info!(
                    telegrams = r.decided.len(),
                    "JMA poll decided new telegrams"
                );
            }
            if let Err(e) = self.engine.tidy().await {
                warn!(error = %e, "could not close sent retraction messages");
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }
}
