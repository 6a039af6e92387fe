//! `/console`: the web console — predict, models (audit log, promote, rollback, approve),
//! history and its export, monitoring, training runs, A/B, batch jobs — as views over the JSON
//! API (docs/console.md). Embedded assets, no build step, no CDN, no inline script, the same
//! strict Content-Security-Policy as `/docs`; the key typed into it stays in the tab's
//! `sessionStorage`. What the API returns is written as text, never parsed as HTML.

use axum::response::Response;

use crate::docs::asset;

const PAGE: &str = include_str!("../assets/console.html");
const SCRIPT: &str = include_str!("../assets/console.js");
const STYLE: &str = include_str!("../assets/console.css");

/// The console page.
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// The console's script.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The console's style sheet.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
