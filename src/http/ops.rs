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
        // Provider trouble is reported but answered 200: this process still serves HQ, and a
        // load balancer that took it out would take out every replica at once.
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
            (StatusCode::OK, Json(body))
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "degraded", "database": e.to_string()})),
        ),
    }
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
                for (k, v) in [
                    ("pending", c.pending),
                    ("sending", c.sending),
                    ("sent", c.sent),
                    ("read", c.read),
                    ("answered", c.answered),
                    ("failed", c.failed),
                ] {
                    *g.deliveries.entry(k).or_default() += v;
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
                    *g.call_list.entry(k).or_default() += v;
                }
            }
        }
    }
    g.urgent_open = s.hq.store().urgent_open().await.unwrap_or_default();
    let mut text = s.metrics.render(&g);
    text.push_str(&s.health.render_metrics());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
