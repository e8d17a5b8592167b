//! Operations endpoints: `/healthz` for load balancers and `/metrics` for Prometheus. Neither
//! needs a token; neither shows personal data.
//!
//! `/healthz` lists named problems (`{"status": "degraded", "problems": [{"name":
//! "database", "reason": "unreachable"}]}`). Anyone may see each problem's name and generic
//! reason; its `detail` (which can hold internal error text) is shown only to a caller with an
//! HQ or caller token. The database, the chat provider's health ([`crate::health`]) and the
//! JMA feed are checked here; other parts of anpi add their own checks through
//! [`HealthChecks::register`].
//!
//! Invariants: the answer without a token holds no error text, path or secret; the status is
//! 503 only for a problem that makes this replica unable to serve (a load balancer should
//! send requests elsewhere), "degraded" with 200 for one every replica shares.

use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use super::{ApiState, Role};
use crate::rollcall::RollCallState;

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

/// One thing wrong with this replica or with what it depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Short and stable, for alerts: "database", "provider", "receipts".
    pub name: String,
    /// What anyone may be told: generic words, no internal text.
    pub reason: String,
    /// The cause in full, for a caller with a token only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// This replica cannot serve requests (503, so a load balancer sends them elsewhere).
    /// False for problems every replica shares (the chat platform failing, a stale feed).
    #[serde(skip)]
    pub fatal: bool,
}

impl Problem {
    pub fn new(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            reason: reason.into(),
            detail: None,
            fatal: false,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn fatal(mut self) -> Self {
        self.fatal = true;
        self
    }
}

type Check = Arc<dyn Fn() -> Vec<Problem> + Send + Sync>;

/// Health checks registered by other parts of anpi: each says, cheaply and without waiting,
/// what is wrong now (an empty list when nothing is).
#[derive(Default)]
pub struct HealthChecks {
    checks: RwLock<Vec<Check>>,
}

impl std::fmt::Debug for HealthChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.checks.read().map(|c| c.len()).unwrap_or_default();
        f.debug_struct("HealthChecks").field("checks", &n).finish()
    }
}

impl HealthChecks {
    /// Adds a check; it runs on every `/healthz` request, so it must only read state.
    pub fn register(&self, check: impl Fn() -> Vec<Problem> + Send + Sync + 'static) {
        self.checks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(check));
    }

    /// Every registered check's problems.
    pub fn problems(&self) -> Vec<Problem> {
        let checks: Vec<Check> = self
            .checks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        checks.iter().flat_map(|c| c()).collect()
    }
}

async fn healthz(State(s): State<ApiState>, headers: HeaderMap) -> impl IntoResponse {
    let mut problems = Vec::new();
    if let Err(e) = s.hq.store().ping().await {
        problems.push(
            Problem::new("database", "unreachable")
                .with_detail(e.to_string())
                .fatal(),
        );
    }
    problems.extend(s.checks.problems());
    // The chat platform failing is every replica's problem: reported, not fatal.
    let degraded = s.health.degraded();
    for d in &degraded {
        problems.push(
            Problem::new(format!("provider:{}", d.component.as_str()), "failing")
                .with_detail(d.reason.clone()),
        );
    }
    let jma = jma_health(&s).await;
    if let Some(j) = jma.as_ref().filter(|j| j["status"] != "ok") {
        problems.push(Problem::new("jma_feed", "stale").with_detail(j["stale"].to_string()));
    }
    // Details only for someone who may read the roll calls anyway.
    let trusted =
        headers.contains_key(header::AUTHORIZATION) && s.authorize(&headers, Role::Caller).is_ok();
    if !trusted {
        for p in &mut problems {
            p.detail = None;
        }
    }
    let status = if problems.iter().any(|p| p.fatal) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let word = if problems.is_empty() {
        "ok"
    } else {
        "degraded"
    };
    let mut body = json!({"status": word, "problems": problems, "provider": s.hq.provider()});
    if trusted {
        if !degraded.is_empty() {
            body["degraded"] = json!(degraded
                .iter()
                .map(|d| json!({"component": d.component, "since": d.since,
                                "reason": d.reason}))
                .collect::<Vec<_>>());
        }
        if let Some(j) = jma {
            body["jma"] = j;
        }
    }
    (status, Json(body))
}

/// The JMA feeds' health, when the feed watcher is on.
pub(super) async fn jma_health(s: &ApiState) -> Option<serde_json::Value> {
    let cfg = &s.config.jma;
    if !cfg.enabled {
        return None;
    }
    let now = s.hq.clock().now_millis();
    let feeds = crate::jma::feed::health(s.hq.store(), cfg).await;
    let stale: Vec<&str> = feeds
        .iter()
        .filter(|f| f.stale(now, cfg.stale_after))
        .map(|f| f.feed.as_str())
        .collect();
    Some(json!({
        "status": if stale.is_empty() { "ok" } else { "stale" },
        "stale": stale,
        "feeds": feeds,
    }))
}

async fn metrics(State(s): State<ApiState>) -> impl IntoResponse {
    let mut g = crate::metrics::Gauges::default();
    if let Ok(list) = s.hq.list().await {
        for rc in &list {
            let state = if rc.state == RollCallState::Open {
                "open"
            } else {
                "closed"
            };
            *g.roll_calls.entry((state, rc.drill)).or_default() += 1;
        }
        for rc in list.iter().filter(|r| r.state == RollCallState::Open) {
            // The shared progress: every scrape and page reads the same computation.
            if let Ok(p) = s.hq.progress(rc.id).await {
                let c = &p.overall;
                // Drills are counted apart, so a drill never looks like a real emergency.
                let (deliveries, call_list) = if rc.drill {
                    (&mut g.drill_deliveries, &mut g.drill_call_list)
                } else {
                    (&mut g.deliveries, &mut g.call_list)
                };
                for (k, v) in [
                    ("pending", c.pending),
                    ("sending", c.sending),
                    ("sent", c.sent),
                    ("read", c.read),
                    ("answered", c.answered),
                    ("failed", c.failed),
                ] {
                    *deliveries.entry(k).or_default() += v;
                }
                for (k, v) in [
                    ("escalated", c.escalated),
                    ("to_call", c.to_call),
                    ("reached", c.reached),
                    ("injured", c.injured),
                    ("needs_help", c.needs_help),
                    ("unreachable", c.unreachable),
                    ("urgent_open", c.urgent_open),
                    ("resent", c.resent),
                ] {
                    *call_list.entry(k).or_default() += v;
                }
            }
        }
    }
    if s.config.jma.enabled {
        let now = s.hq.clock().now_millis();
        for f in crate::jma::feed::health(s.hq.store(), &s.config.jma).await {
            let up = f.ok_at.is_some() && !f.stale(now, s.config.jma.stale_after);
            let age = f.ok_at.map(|ok| (now - ok).max(0) as f64 / 1000.0);
            g.jma_feeds.push((f.feed, up, age));
        }
    }
    g.urgent_open = s.hq.store().urgent_open().await.unwrap_or_default();
    let mut text = s.metrics.render(&g);
    text.push_str(&s.health.render_metrics());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_checks_add_their_problems() {
        let h = HealthChecks::default();
        assert!(h.problems().is_empty());
        h.register(|| vec![Problem::new("provider", "failing").with_detail("503 from x")]);
        h.register(Vec::new);
        let p = h.problems();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].name, "provider");
        assert!(!p[0].fatal);
    }
}
