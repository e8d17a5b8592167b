//! The HQ web page and the shelter phone's page (`/shelter`): HTML, one stylesheet and their
//! scripts, compiled into the binary
//! (no build step, nothing fetched from the internet). The page holds only the token the
//! operator pasted (in `sessionStorage`) and does everything through the JSON API, so the
//! page can do exactly what its token's role allows and nothing more.
//!
//! Invariant: these routes serve static text only; no personal data is in them.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::ApiState;

const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const APP_CSS: &str = include_str!("web/app.css");
const SHELTER_HTML: &str = include_str!("web/shelter.html");
const SHELTER_JS: &str = include_str!("web/shelter.js");
/// The provider-trouble banner (kept apart from `app.js`).
const HEALTH_BANNER_JS: &str = include_str!("web/health-banner.js");
/// The JMA section and the drill report (kept apart from `app.js`).
const JMA_JS: &str = include_str!("web/jma.js");

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/", get(|| async { page(INDEX_HTML) }))
        .route("/shelter", get(|| async { page(SHELTER_HTML) }))
        .route("/app.js", get(|| async { script(APP_JS) }))
        .route("/shelter.js", get(|| async { script(SHELTER_JS) }))
        .route(
            "/health-banner.js",
            get(|| async { script(HEALTH_BANNER_JS) }),
        )
        .route("/jma.js", get(|| async { script(JMA_JS) }))
        .route(
            "/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
}

/// The page may only load its own script and style, and nothing may frame it.
const CSP: &str =
    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'";

/// An HTML page under the content security policy. The shelter page is opened from
/// `/shelter#token=...`: the part after `#` never reaches the server.
fn page(html: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
}

fn script(js: &'static str) -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", js)
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}
