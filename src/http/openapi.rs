//! The OpenAPI 3.1 spec of the API, generated from the handlers (`#[utoipa::path]`) and the
//! request and response types (`ToSchema`) they actually parse and serialize, and served at
//! `GET /openapi.json` (open, like `/healthz`). `tests/openapi.rs` checks that it lists exactly
//! the routes the router serves, and CI fuzzes the server against it with schemathesis.

use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{Code, ErrorBody, ErrorDetail};

/// Routes the spec documents whose handlers this build does not route yet: `(path, method)`.
/// Empty: every documented route is served (kept so that the test names the rule).
pub const PENDING_ROUTES: &[(&str, &str)] = &[];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "chime",
        description = "Durable delayed and scheduled messages over HTTP. Every non-2xx answer has the body \
            `{\"error\": {\"code\": \"UPPER_SNAKE\", \"message\": \"…\"}}`. Times are integers in ms since \
            the Unix epoch. With `auth.token` set, every `/v1` route requires `Authorization: Bearer <token>` \
            (else 401 UNAUTHORIZED); `/healthz`, `/readyz`, `/metrics`, `/openapi.json` and `/console` stay open. \
            Unknown routes answer 404 NOT_FOUND and wrong methods 405 METHOD_NOT_ALLOWED, in the same shape.",
        license(name = "Apache-2.0"),
    ),
    paths(
        super::healthz,
        super::readyz,
        serve_spec,
        super::console::console,
        super::metrics::metrics,
        super::send::list_topics,
        super::send::create_topic,
        super::send::send,
        super::send::find_by_key,
        super::send::get_message,
        super::send::cancel_message,
        super::groups::list_groups,
        super::groups::put_group,
        super::groups::get_group,
        super::consume::receive,
        super::consume::ack,
        super::groups::nack,
        super::groups::extend,
        super::groups::seek,
        super::groups::blocked,
        super::transactions::prepare,
        super::transactions::list_transactions,
        super::transactions::get_transaction,
        super::transactions::commit,
        super::transactions::rollback,
        super::transactions::check,
        super::timer_stats,
        super::congestion::congestion,
        super::storage::storage,
    ),
    components(schemas(ErrorBody, ErrorDetail, Code, super::send::MessageIn)),
    modifiers(&BearerAuth, &V1Common),
    tags(
        (name = "topics"), (name = "messages", description = "Send, schedule, look up and cancel"),
        (name = "consumers", description = "Consumer groups: receive and ack (at least once), nack with backoff, dead letters, extend, seek, configuration and lag"),
        (name = "transactions", description = "Transaction messages: prepare, commit or roll back as a whole, the producer's check-back"),
        (name = "timer", description = "Timer observability"),
        (name = "storage", description = "Disk use, retention and reclamation"), (name = "health"), (name = "meta"),
        (name = "console", description = "The web console: a page of its own that uses only this API"),
    )
)]
pub struct ApiDoc;

/// Declares the optional bearer token (`auth.token`).
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("Required on /v1 routes when the server has auth.token set"))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// What every `/v1` operation shares, added here once rather than on each handler, since one
/// layer does it for all of them: the optional bearer token (401 `UNAUTHORIZED` from
/// [`super::auth`]), 503 `UNAVAILABLE` until recovery has finished (`AppState::core`), and for
/// an operation with a body, 408 and 413 (`super::body`).
struct V1Common;

impl Modify for V1Common {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::security::SecurityRequirement;
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};

        let error = |description: &str, header: &str, ty: Type, header_description: &str| {
            let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
            let schema = ObjectBuilder::new().schema_type(ty);
            let header_doc = HeaderBuilder::new().schema(schema).description(Some(header_description)).build();
            ResponseBuilder::new()
                .description(description)
                .content("application/json", content)
                .header(header, header_doc)
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !super::auth::is_protected(path) {
                continue;
            }
            let ops = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for op in ops.into_iter().flatten() {
                let responses = &mut op.responses.responses;
                responses.entry("401".to_owned()).or_insert_with(|| {
                    error(
                        "UNAUTHORIZED: the server has auth.token set and the request lacks it",
                        "WWW-Authenticate",
                        Type::String,
                        "Bearer realm=\"chime\"",
                    )
                    .build()
                    .into()
                });
                responses.entry("503".to_owned()).or_insert_with(|| {
                    error(
                        "UNAVAILABLE: not ready (recovering), store full or poisoned",
                        "Retry-After",
                        Type::Integer,
                        "Seconds to wait",
                    )
                    .build()
                    .into()
                });
                if op.request_body.is_some() {
                    // Every body is read by `body::read_limited`, under its size limit and deadline.
                    responses.entry("408".to_owned()).or_insert_with(|| {
                        error(
                            "REQUEST_TIMEOUT: the body did not arrive within http.body_read_timeout",
                            "Connection",
                            Type::String,
                            "close",
                        )
                        .build()
                        .into()
                    });
                    responses.entry("413".to_owned()).or_insert_with(|| {
                        let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
                        ResponseBuilder::new()
                            .description("MESSAGE_TOO_LARGE: the body is over its limit")
                            .content("application/json", content)
                            .build()
                            .into()
                    });
                }
                op.security = Some(vec![
                    SecurityRequirement::default(),
                    SecurityRequirement::new("bearer", Vec::<String>::new()),
                ]);
            }
        }
    }
}

/// The spec as JSON, built once.
pub fn spec_json() -> &'static str {
    static SPEC: OnceLock<String> = OnceLock::new();
    SPEC.get_or_init(|| ApiDoc::openapi().to_json().expect("the spec serializes"))
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub async fn serve_spec() -> Response {
    let mut resp = spec_json().into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
