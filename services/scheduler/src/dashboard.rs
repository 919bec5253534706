//! The live web dashboard, served by the scheduler at `/`: fleet overview, shards, workers (with
//! drain), Thing lookup with its delivery log and the DLQ (replay, purge).
//!
//! The page is static and holds no data, so it is served without a token; its script asks for
//! `scheduler.admin_token`, keeps it in `sessionStorage` and sends it on every admin API call. The
//! files are built into the binary (`dashboard/`: HTML, CSS, vanilla JS, an SVG icon) and load
//! nothing from elsewhere. Every answer carries a Content-Security-Policy that allows only this
//! origin (no inline script or style), `nosniff`, `no-referrer` and `X-Frame-Options: DENY`.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page's files: path, content type, body.
pub const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../dashboard/index.html"),
    ),
    (
        "/dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../dashboard/dashboard.js"),
    ),
    (
        "/dashboard.css",
        "text/css; charset=utf-8",
        include_str!("../dashboard/dashboard.css"),
    ),
    (
        "/favicon.svg",
        "image/svg+xml",
        include_str!("../dashboard/favicon.svg"),
    ),
];

/// Only this origin, for everything; no framing, no `<base>` change, forms post nowhere else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'; object-src 'none'";

/// The headers every dashboard answer carries (besides its content type).
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    // Files change with the binary: revalidate on every load.
    ("cache-control", "no-cache"),
];

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let headers = response.headers_mut();
    for &(name, value) in SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    response
}

/// The dashboard's routes, to merge beside the admin API (no state, no auth: the files hold no
/// data).
pub fn router() -> Router {
    ASSETS
        .iter()
        .fold(Router::new(), |r, &(path, content_type, body)| {
            r.route(path, get(move || async move { asset(content_type, body) }))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_script_or_style_and_loads_only_its_own_files() {
        let (_, _, html) = ASSETS[0];
        assert!(html.contains(r#"<script src="/dashboard.js" defer></script>"#));
        assert!(html.contains(r#"<link rel="stylesheet" href="/dashboard.css">"#));
        // No inline code: every <script> has a src, nothing has a style or on* attribute.
        assert_eq!(html.matches("<script").count(), 1);
        for banned in [
            " style=",
            " onclick=",
            " onload=",
            " onsubmit=",
            "<style",
            "http://",
            "https://",
        ] {
            assert!(!html.contains(banned), "index.html contains {banned}");
        }
        for (path, _, body) in ASSETS {
            for banned in ["http://", "https://", "@import", "eval("] {
                // The SVG names its XML namespace, which is not a load.
                if *path == "/favicon.svg" && banned == "http://" {
                    continue;
                }
                assert!(!body.contains(banned), "{path} contains {banned}");
            }
        }
    }

    #[test]
    fn the_script_calls_only_documented_admin_routes() {
        let (_, _, js) = ASSETS[1];
        let doc: serde_json::Value = serde_json::from_str(crate::admin::OPENAPI).unwrap();
        for path in [
            "/v1/fleet",
            "/v1/shards",
            "/v1/workers",
            "/v1/dlq",
            "/v1/dlq/replay",
        ] {
            assert!(js.contains(&format!("'{path}")), "the script uses {path}");
            assert!(doc["paths"][path].is_object(), "{path} is documented");
        }
    }
}
