//! Error classes of the ThingWorx client, and the value-coercion error.
//!
//! The worker acts on [`PlatformError::class`]: `auth` stops the delivery and alerts, `not_found`
//! and `bad_request` dead-letter the record, `retryable` backs off (honouring `retry_after`),
//! `invalid_response` and `config` are operator problems.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use twinbridge_core::BaseType;

/// The longest snippet of a response body kept in an error.
pub const SNIPPET_MAX_CHARS: usize = 200;

/// A failed platform call.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The client could not be built (bad URL, unreadable CA file, forbidden header…).
    #[error("invalid platform client configuration: {0}")]
    Config(String),
    /// 401/403: wrong or missing appKey or missing permissions. Never retried.
    #[error("platform refused the request ({status}) for {what}: {snippet}")]
    Auth {
        status: u16,
        what: String,
        snippet: String,
    },
    /// 404: unknown Thing, property, template, service or URL.
    #[error("not found on the platform ({status}) for {what}: {snippet}")]
    NotFound {
        status: u16,
        what: String,
        snippet: String,
    },
    /// The platform rejected the request itself (type mismatch, bad input…): retrying the same
    /// request cannot succeed, so the worker dead-letters it.
    #[error("platform rejected {what} ({status}): {snippet}")]
    BadRequest {
        status: u16,
        what: String,
        snippet: String,
    },
    /// Throttled or unavailable (429, 5xx, timeout, connection error): retry with backoff, not
    /// before `retry_after` when the server (or a proxy) sent `Retry-After`.
    #[error("platform unavailable for {what}: {reason}")]
    Retryable {
        status: Option<u16>,
        what: String,
        reason: String,
        retry_after: Option<Duration>,
    },
    /// A success status with a body that is not the JSON expected (an HTML page from a proxy, a
    /// truncated answer…) or a redirect (wrong base URL). Not retried: an operator must look.
    #[error("platform answered {status} with an unexpected body for {what}: {snippet}")]
    InvalidResponse {
        status: u16,
        what: String,
        snippet: String,
    },
}

impl PlatformError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, PlatformError::Retryable { .. })
    }

    /// A stable, lowercase label for metrics and logs.
    pub fn class(&self) -> &'static str {
        match self {
            PlatformError::Config(_) => "config",
            PlatformError::Auth { .. } => "auth",
            PlatformError::NotFound { .. } => "not_found",
            PlatformError::BadRequest { .. } => "bad_request",
            PlatformError::Retryable { .. } => "retryable",
            PlatformError::InvalidResponse { .. } => "invalid_response",
        }
    }

    /// How long the server asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PlatformError::Retryable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status, when the platform answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            PlatformError::Config(_) => None,
            PlatformError::Retryable { status, .. } => *status,
            PlatformError::Auth { status, .. }
            | PlatformError::NotFound { status, .. }
            | PlatformError::BadRequest { status, .. }
            | PlatformError::InvalidResponse { status, .. } => Some(*status),
        }
    }

    /// Maps an error answer (any status outside 2xx) to its class. Pure, so it is unit-tested
    /// with every status; `retry_after_header` is the raw `Retry-After` value.
    pub fn from_status(
        status: StatusCode,
        retry_after_header: Option<&str>,
        body: &[u8],
        what: &str,
    ) -> PlatformError {
        let code = status.as_u16();
        let snippet = snippet(body);
        let what = what.to_string();
        match code {
            401 | 403 => PlatformError::Auth {
                status: code,
                what,
                snippet,
            },
            404 | 410 => PlatformError::NotFound {
                status: code,
                what,
                snippet,
            },
            // The platform API does not redirect: a redirect means a wrong base URL (http that
            // should be https, a login proxy), which retrying cannot fix.
            300..=399 => PlatformError::InvalidResponse {
                status: code,
                what: format!("{what} (unexpected redirect)"),
                snippet,
            },
            408 | 425 | 429 | 500..=599 => PlatformError::Retryable {
                status: Some(code),
                what,
                reason: format!("status {code}: {snippet}"),
                retry_after: retry_after_header.and_then(parse_retry_after),
            },
            _ => PlatformError::BadRequest {
                status: code,
                what,
                snippet,
            },
        }
    }

    /// Maps a transport failure (timeout, refused connection, reset…) to its class.
    pub fn from_transport(err: &reqwest::Error, what: &str) -> PlatformError {
        let what = what.to_string();
        if err.is_builder() {
            return PlatformError::Config(format!("{what}: {err}"));
        }
        let kind = if err.is_timeout() {
            "timeout"
        } else if err.is_connect() {
            "connect error"
        } else {
            "transport error"
        };
        PlatformError::Retryable {
            status: err.status().map(|s| s.as_u16()),
            what,
            reason: format!("{kind}: {}", error_chain(err)),
            retry_after: None,
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The start of a body as text, at most [`SNIPPET_MAX_CHARS`] characters, whitespace collapsed,
/// lossy for invalid UTF-8.
pub fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = String::new();
    let mut count = 0;
    let mut last_space = false;
    for c in text.trim().chars() {
        let c = if c.is_whitespace() || c.is_control() {
            ' '
        } else {
            c
        };
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        if count == SNIPPET_MAX_CHARS {
            out.push('…');
            break;
        }
        out.push(c);
        count += 1;
    }
    if out.is_empty() {
        out.push_str("<empty body>");
    }
    out
}

/// Parses `Retry-After`: delay seconds or an HTTP date (a date in the past means "now").
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A device value that cannot be converted to the property's base type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoercionError {
    #[error("unsupported base type {base_type} for property {property}")]
    UnsupportedType {
        base_type: BaseType,
        property: String,
    },
    #[error("property {property}: cannot convert {value} to {base_type}: {reason}")]
    Invalid {
        base_type: BaseType,
        property: String,
        /// The offending value, shortened for logs.
        value: String,
        reason: &'static str,
    },
}

impl CoercionError {
    pub fn property(&self) -> &str {
        match self {
            CoercionError::UnsupportedType { property, .. }
            | CoercionError::Invalid { property, .. } => property,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(code: u16, retry_after: Option<&str>) -> PlatformError {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT);
        PlatformError::from_status(status, retry_after, b"body", "test")
    }

    #[test]
    fn auth_statuses_are_never_retried() {
        for code in [401, 403] {
            let e = classify(code, Some("5"));
            assert_eq!(e.class(), "auth");
            assert!(!e.is_retryable());
            assert_eq!(e.retry_after(), None);
            assert_eq!(e.status(), Some(code));
        }
    }

    #[test]
    fn not_found_and_bad_request_are_final() {
        assert_eq!(classify(404, None).class(), "not_found");
        for code in [400, 405, 406, 409, 413, 415, 422] {
            let e = classify(code, None);
            assert_eq!(e.class(), "bad_request", "{code}");
            assert!(!e.is_retryable());
        }
    }

    proptest::proptest! {
        #[test]
        fn any_error_answer_is_classified(code in 300u16..600, body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000), ra in ".{0,40}") {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT);
            let e = PlatformError::from_status(status, Some(&ra), &body, "x");
            proptest::prop_assert_eq!(e.status(), Some(code));
            proptest::prop_assert!(e.to_string().chars().count() < SNIPPET_MAX_CHARS + 100);
            proptest::prop_assert_eq!(e.is_retryable(), e.class() == "retryable");
        }
    }

    #[test]
    fn redirects_are_invalid_responses() {
        for code in [301, 302, 307, 308] {
            let e = classify(code, None);
            assert_eq!(e.class(), "invalid_response", "{code}");
            assert!(!e.is_retryable());
        }
    }

    #[test]
    fn throttling_and_server_errors_are_retryable_with_retry_after() {
        for code in [429, 500, 502, 503, 504] {
            let e = classify(code, Some("7"));
            assert!(e.is_retryable(), "{code}");
            assert_eq!(e.class(), "retryable");
            assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        }
        assert_eq!(classify(503, None).retry_after(), None);
        assert_eq!(classify(503, Some("soon")).retry_after(), None);
    }

    #[test]
    fn retry_after_accepts_http_dates() {
        let future = SystemTime::now() + Duration::from_secs(120);
        let header = httpdate::fmt_http_date(future);
        let d = parse_retry_after(&header).unwrap_or_default();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn snippets_are_short_and_single_line() {
        let body = format!("<html>\n\n<body>{}</body></html>", "x".repeat(1000));
        let s = snippet(body.as_bytes());
        assert!(s.chars().count() <= SNIPPET_MAX_CHARS + 1);
        assert!(!s.contains('\n'));
        assert!(s.starts_with("<html> <body>xxx"));
        assert_eq!(snippet(b""), "<empty body>");
        assert_eq!(snippet(&[0xff, 0xfe, b'a']), "\u{fffd}\u{fffd}a");
    }
}
