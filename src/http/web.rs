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
const HEALTH_BANNER_JS: &str = include_str!("web/health-banner.js");

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/app.css", get(app_css))
        .route("/shelter", get(shelter))
        .route("/shelter.js", get(shelter_js))
        .route("/health-banner.js", get(health_banner_js))
}

/// The page may only load its own script and style, and nothing may frame it.
const CSP: &str =
    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'";

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
}

/// The shelter phone's page (opened from `/shelter#token=...`: the part after `#` never
/// reaches the server).
async fn shelter() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SHELTER_HTML,
    )
}

async fn shelter_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SHELTER_JS,
    )
}

async fn app_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
}

async fn app_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_CSS,
    )
}

async fn health_banner_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        HEALTH_BANNER_JS,
    )
}
