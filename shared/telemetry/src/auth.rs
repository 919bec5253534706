//! Bearer-token checks shared by the services' HTTP APIs.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// `Some(401)` with a JSON body naming `config_key` when a token is configured and the request
/// does not carry `Authorization: Bearer <token>`; `None` when the request may proceed.
pub fn unauthorized(
    headers: &HeaderMap,
    token: Option<&str>,
    config_key: &str,
) -> Option<Response> {
    let token = token?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    (given != Some(token)).then(|| {
        (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({
                "code": "unauthorized",
                "message": format!("a valid `Authorization: Bearer <{config_key}>` header is required"),
            })),
        )
            .into_response()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_only_when_configured() {
        let mut h = HeaderMap::new();
        assert!(unauthorized(&h, None, "k").is_none());
        assert_eq!(
            unauthorized(&h, Some("t"), "k").map(|r| r.status()),
            Some(StatusCode::UNAUTHORIZED)
        );
        h.insert(header::AUTHORIZATION, "Bearer t".parse().unwrap());
        assert!(unauthorized(&h, Some("t"), "k").is_none());
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert!(unauthorized(&h, Some("t"), "k").is_some());
    }
}
