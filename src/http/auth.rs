//! Bearer-token authentication of the `/v1` routes (API.md "Auth").
//!
//! With `auth.token` set, a request whose path is `/v1` or under `/v1/` must carry
//! `Authorization: Bearer <token>` (the scheme is case-insensitive, RFC 7235), else it is
//! answered 401 `UNAUTHORIZED` with `WWW-Authenticate: Bearer` before any handler runs, so an
//! unauthenticated client cannot read, write or even learn which `/v1` routes exist.
//! `/healthz`, `/readyz`, `/metrics`, `/openapi.json` and `/console` stay open (the console
//! page asks for the token and sends it on its own `/v1` calls).
//!
//! The comparison is constant-time in the token's bytes (`subtle`): its time does not depend
//! on how many leading bytes match. It does reveal whether the lengths are equal, which is
//! harmless for a random token. The token is never logged: the config holds it in a `Secret`
//! whose `Debug` is redacted, and the 401 message never echoes what the client sent.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::{ApiError, Code};
use super::AppState;

/// Whether `path` is guarded when a token is set.
pub fn is_protected(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// Whether the `Authorization` header value carries exactly `token` as a bearer token.
fn bearer_matches(value: Option<&HeaderValue>, token: &[u8]) -> Result<(), &'static str> {
    let value = value.ok_or("missing Authorization header: this server requires a bearer token")?;
    let value = value.as_bytes();
    let (scheme, rest) = match value.iter().position(|&b| b == b' ') {
        Some(i) => (&value[..i], &value[i + 1..]),
        None => return Err("malformed Authorization header: expected \"Bearer <token>\""),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err("unsupported Authorization scheme: expected \"Bearer <token>\"");
    }
    let presented = rest.trim_ascii();
    if bool::from(presented.ct_eq(token)) {
        Ok(())
    } else {
        Err("invalid bearer token")
    }
}

/// The middleware: passes the request on, or answers 401.
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = state.auth_token() else { return next.run(req).await };
    if !is_protected(req.uri().path()) {
        return next.run(req).await;
    }
    match bearer_matches(req.headers().get(header::AUTHORIZATION), token.as_bytes()) {
        Ok(()) => next.run(req).await,
        Err(why) => {
            let mut resp = ApiError::new(Code::Unauthorized, why).into_response();
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"chime\""));
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(v: &str) -> Result<(), &'static str> {
        bearer_matches(Some(&HeaderValue::from_str(v).unwrap()), b"t0ken")
    }

    #[test]
    fn accepts_only_the_exact_bearer_token() {
        assert!(check("Bearer t0ken").is_ok());
        assert!(check("bearer t0ken").is_ok());
        assert!(check("BEARER  t0ken ").is_ok());
        assert!(check("Bearer t0ke").is_err());
        assert!(check("Bearer t0ken2").is_err());
        assert!(check("Bearer T0KEN").is_err());
        assert!(check("Bearer ").is_err());
        assert!(check("Basic t0ken").is_err());
        assert!(check("t0ken").is_err());
        assert!(bearer_matches(None, b"t0ken").is_err());
    }

    #[test]
    fn protects_v1_only() {
        assert!(is_protected("/v1/topics"));
        assert!(is_protected("/v1"));
        assert!(is_protected("/v1/no/such/route"));
        for open in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/console", "/", "/v2/topics"] {
            assert!(!is_protected(open), "{open}");
        }
    }
}
