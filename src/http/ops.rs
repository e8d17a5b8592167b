//! Operations endpoints: `/healthz` for load balancers and `/metrics` for Prometheus. Neither
//! needs a token; neither shows personal data.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::ApiState;
use crate::rollcall::RollCallState;

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

async fn healthz(State(s): State<ApiState>) -> impl IntoResponse {
    match s.hq.store().ping().await {
        // Provider trouble and a stale JMA feed are reported but answered 200: this process
        // still serves HQ, and a load balancer that took it out would take out every replica.
        Ok(()) => {
            let degraded = s.health.degraded();
            let mut body = json!({"status": "ok", "database": "ok", "provider": s.hq.provider()});
            if !degraded.is_empty() {
                body["status"] = json!("degraded");
                body["degraded"] = json!(degraded
                    .iter()
                    .map(|d| json!({"component": d.component, "since": d.since,
                                    "reason": d.reason}))
                    .collect::<Vec<_>>());
            }
            if let Some(jma) = jma_health(&s).await {
                if jma["status"] != "ok" {
                    body["status"] = json!("degraded");
                }
                body["jma"] = jma;
            }
            (StatusCode::OK, Json(body))
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "degraded", "database": e.to_string()})),
        ),
    }
}

/// The JMA feeds' health, when the watcher is on: "ok", or "stale" naming the feeds.
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
            if let Ok(p) = s.hq.store().progress(rc.id).await {
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
