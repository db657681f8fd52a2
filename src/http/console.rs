//! The console (API.md "Console"): `GET /console` answers one HTML page, with its stylesheet and
//! script inlined, all compiled into the binary from `src/http/console/` (no build step, nothing
//! fetched at run time).
//!
//! The page is a client of the public `/v1` API and nothing else: every figure it shows, a
//! script can get with the same calls. It is open like `/healthz`; when the server has a token,
//! the page's first `/v1` call answers 401, and the page asks for the token once and keeps it in
//! the tab's `sessionStorage`.
//!
//! Its Content-Security-Policy lets the page talk to this server only (`connect-src 'self'`),
//! load nothing else and be framed by no one.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page, assembled once: `index.html` with `console.css` and `console.js` in place of their
/// markers.
static PAGE: LazyLock<String> = LazyLock::new(|| {
    include_str!("console/index.html").replacen("/*CONSOLE_CSS*/", include_str!("console/console.css"), 1).replacen(
        "/*CONSOLE_JS*/",
        include_str!("console/console.js"),
        1,
    )
});

const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console page.
#[utoipa::path(get, path = "/console", tag = "console", responses(
    (status = 200, description = "The console: one HTML page, scripts and styles inlined", content_type = "text/html", body = String),
))]
pub(super) async fn console() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE.as_str(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::PAGE;

    #[test]
    fn the_page_inlines_its_assets_and_loads_nothing_from_elsewhere() {
        assert!(!PAGE.contains("/*CONSOLE_CSS*/") && !PAGE.contains("/*CONSOLE_JS*/"));
        assert!(PAGE.contains("function api("), "the script is inlined");
        for outside in ["src=\"http", "href=\"http", "src=\"//", "href=\"//", "url(", "@import", "rel=\"stylesheet\""] {
            assert!(!PAGE.contains(outside), "the page loads something from elsewhere: {outside}");
        }
    }
}
