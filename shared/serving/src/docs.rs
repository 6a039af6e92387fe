//! `/docs`: a small API explorer over `/openapi.json` (embedded assets, no CDN, no inline
//! script, a strict Content-Security-Policy). The key typed into it stays in the tab's
//! `sessionStorage` and is sent only to this origin.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("../assets/docs.html");
const SCRIPT: &str = include_str!("../assets/explorer.js");
const STYLE: &str = include_str!("../assets/explorer.css");

/// Same-origin scripts, styles and requests only; no frames, forms or plugins.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// An embedded asset with the strict policy (also the console's, [`crate::console`]).
pub(crate) fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The explorer page.
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// The explorer's script.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The explorer's style sheet.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
