//! The OpenAPI spec at `/openapi.json` lists exactly the routes the router serves (plus the
//! documented routes whose handlers are wired elsewhere, `PENDING_ROUTES`), documents every
//! field and error of API.md, and the server answers each documented route.

mod common;

use std::collections::BTreeSet;

use chime::http::openapi::PENDING_ROUTES;
use common::{test_config, TestServer};
use serde_json::Value;

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options", "trace"];

fn spec_routes(spec: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for m in METHODS {
            if item.get(*m).is_some() {
                out.insert((path.clone(), m.to_ascii_uppercase()));
            }
        }
    }
    out
}

/// The property names of component schema `name`.
fn props(spec: &Value, name: &str) -> BTreeSet<String> {
    let s = &spec["components"]["schemas"][name];
    s["properties"].as_object().unwrap_or_else(|| panic!("schema {name}: {s}")).keys().cloned().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn spec_lists_every_served_route_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    let resp = s.http.get(s.url("/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let spec: Value = resp.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."), "{}", spec["openapi"]);

    let served: BTreeSet<(String, String)> =
        chime::http::served_routes().into_iter().map(|(p, m)| (p.to_string(), m.to_string())).collect();
    let pending: BTreeSet<(String, String)> =
        PENDING_ROUTES.iter().map(|(p, m)| (p.to_string(), m.to_string())).collect();
    assert!(served.is_disjoint(&pending), "served routes still listed as pending: {:?}", served.intersection(&pending));
    let documented = spec_routes(&spec);
    let expected: BTreeSet<_> = served.union(&pending).cloned().collect();
    assert_eq!(documented, expected, "spec routes (left) differ from served + pending routes (right)");

    // API.md's routes are all there.
    for (p, m) in [
        ("/v1/topics", "GET"),
        ("/v1/topics/{topic}", "PUT"),
        ("/v1/topics/{topic}/messages", "POST"),
        ("/v1/topics/{topic}/messages/{message_id}", "GET"),
        ("/v1/topics/{topic}/messages/{message_id}", "DELETE"),
        ("/v1/topics/{topic}/groups/{group}/receive", "POST"),
        ("/v1/topics/{topic}/groups/{group}/ack", "POST"),
        ("/v1/timer/congestion", "GET"),
        ("/v1/timer/stats", "GET"),
        ("/metrics", "GET"),
        ("/healthz", "GET"),
        ("/readyz", "GET"),
        ("/openapi.json", "GET"),
    ] {
        assert!(documented.contains(&(p.to_string(), m.to_string())), "{m} {p} not documented");
    }

    // Every served route reaches its handler: never the 404 fallback or a 405.
    for (path, method) in &served {
        let url =
            path.replace("{topic}", "t").replace("{group}", "g").replace("{message_id}", "000000000000000000000000");
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = s.http.request(m, s.url(&url)).send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}: {text}");
        assert!(!text.contains("no such route"), "{method} {path} fell through to the fallback: {text}");
    }
    // A method the spec does not list on a served path is 405 (the router serves no extra).
    let (status, _) = s.call("PATCH", "/v1/topics", None).await;
    assert_eq!(status, 405);

    // Every operation documents a 2xx; every /v1 one 401; every error uses the error shape.
    for (path, item) in spec["paths"].as_object().unwrap() {
        for m in METHODS {
            let Some(op) = item.get(*m) else { continue };
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.keys().any(|k| k.starts_with('2')), "{m} {path}: no 2xx");
            if path.starts_with("/v1/") {
                assert!(responses.contains_key("401"), "{m} {path}: 401 undocumented");
                let sec = op["security"].as_array().unwrap_or_else(|| panic!("{m} {path}: no security"));
                assert!(sec.iter().any(|r| r.get("bearer").is_some()), "{m} {path}: {sec:?}");
                assert!(responses.contains_key("503"), "{m} {path}: 503 undocumented");
                if op.get("requestBody").is_some() {
                    assert!(responses.contains_key("408") && responses.contains_key("413"), "{m} {path}");
                }
            }
            for (code, r) in responses {
                if !code.starts_with('2') {
                    let schema = &r["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(schema, "#/components/schemas/ErrorBody", "{m} {path} {code}");
                }
            }
        }
    }
    assert_eq!(spec["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");

    // The fields of API.md.
    let codes: BTreeSet<String> = spec["components"]["schemas"]["Code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    for c in [
        "INVALID_ARGUMENT",
        "INVALID_TOPIC",
        "DELAY_OUT_OF_RANGE",
        "MESSAGE_TOO_LARGE",
        "NOT_FOUND",
        "ALREADY_DELIVERED",
        "UNAUTHORIZED",
        "BUSY",
        "UNAVAILABLE",
        "METHOD_NOT_ALLOWED",
    ] {
        assert!(codes.contains(c), "code {c} missing from {codes:?}");
    }
    assert_eq!(props(&spec, "ErrorBody"), set(&["error"]));
    assert_eq!(props(&spec, "ErrorDetail"), set(&["code", "message"]));
    assert_eq!(
        props(&spec, "MessageIn"),
        set(&[
            "body",
            "body_base64",
            "tag",
            "keys",
            "properties",
            "delay_ms",
            "deliver_at_ms",
            "deliver_at",
            "delay_level",
            "message_group",
            "dedup_id"
        ])
    );
    assert_eq!(props(&spec, "BlockedList"), set(&["blocked"]));
    assert_eq!(props(&spec, "BlockedOut"), set(&["message_group", "message_id", "since_ms", "attempts", "waiting"]));
    assert_eq!(props(&spec, "SendResult"), set(&["message_id", "topic", "deliver_at_ms", "state"]));
    assert_eq!(props(&spec, "BatchResult"), set(&["messages"]));
    assert_eq!(props(&spec, "TopicInfo"), set(&["name", "queues", "messages", "scheduled"]));
    assert_eq!(props(&spec, "TopicList"), set(&["topics"]));
    assert_eq!(props(&spec, "CreateTopic"), set(&["queues"]));
    assert_eq!(props(&spec, "MessageStatus"), set(&["message_id", "topic", "deliver_at_ms", "state"]));
    assert_eq!(props(&spec, "CancelResult"), set(&["message_id", "state"]));
    assert_eq!(props(&spec, "ReceiveIn"), set(&["max_messages", "wait_ms", "invisible_ms", "tag", "max_bytes"]));
    assert_eq!(
        props(&spec, "MessageOut"),
        set(&[
            "message_id",
            "topic",
            "tag",
            "keys",
            "properties",
            "body",
            "body_base64",
            "born_at_ms",
            "deliver_at_ms",
            "visible_at_ms",
            "delivery_attempt",
            "receipt_handle",
            "message_group",
            "dead_letter"
        ])
    );
    assert_eq!(props(&spec, "AckIn"), set(&["receipt_handles"]));
    // The consumer lifecycle (API.md v1 additions).
    assert_eq!(props(&spec, "DeadLetterOut"), set(&["topic", "group", "delivery_attempts"]));
    assert_eq!(
        props(&spec, "GroupListed"),
        set(&["name", "backlog", "in_flight", "dead_lettered", "expired", "fifo", "max_delivery_attempts"])
    );
    assert_eq!(props(&spec, "GroupConfigIn"), set(&["max_delivery_attempts", "retry", "dead_letter_topic", "fifo"]));
    assert_eq!(props(&spec, "RetryIn"), set(&["initial_ms", "max_ms", "multiplier"]));
    assert_eq!(props(&spec, "NackIn"), set(&["receipt_handles", "delay_ms"]));
    assert_eq!(props(&spec, "NackOut"), set(&["nacked", "invalid"]));
    assert_eq!(props(&spec, "ExtendIn"), set(&["receipt_handles", "invisible_ms"]));
    assert_eq!(props(&spec, "ExtendOut"), set(&["extended", "invalid"]));
    assert_eq!(props(&spec, "SeekIn"), set(&["to", "to_ms"]));
    assert_eq!(props(&spec, "SeekOut"), set(&["backlog"]));
    assert_eq!(
        props(&spec, "KeyedMessage"),
        set(&["message_id", "tag", "keys", "born_at_ms", "deliver_at_ms", "state"])
    );
    assert_eq!(props(&spec, "KeyedMessages"), set(&["messages"]));
    assert_eq!(props(&spec, "AckOut"), set(&["acked", "invalid"]));
    let stats = props(&spec, "TimerStatsOut");
    for f in ["pending_total", "enqueue_lag", "dequeue_lag_ms", "stages", "lateness_ms"] {
        assert!(stats.contains(f), "TimerStatsOut lacks {f}");
    }
    assert_eq!(props(&spec, "StageOut"), set(&["queue_depth", "queue_capacity", "processed"]));
    // API.md's fields, and the ones chime adds (documented in the README).
    assert_eq!(props(&spec, "LatenessOut"), set(&["count", "p50", "p90", "p99", "p999", "max"]));
    assert_eq!(
        props(&spec, "Congestion"),
        set(&["now_ms", "read_time_ms", "pending_total", "buckets", "from_ms", "to_ms", "bucket_ms"])
    );
    assert_eq!(props(&spec, "CongestionBucket"), set(&["start_ms", "count"]));
    let params: BTreeSet<String> = spec["paths"]["/v1/timer/congestion"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(params, set(&["from_ms", "to_ms", "bucket_ms"]));

    // The optional bodies the spec allows to be null are accepted as null (and as nothing).
    for (method, path) in [("PUT", "/v1/topics/{topic}"), ("POST", "/v1/topics/{topic}/groups/{group}/receive")] {
        let schema = &spec["paths"][path][method.to_ascii_lowercase()]["requestBody"]["content"]["application/json"]
            ["schema"]["oneOf"];
        assert!(schema.as_array().unwrap().iter().any(|s| s["type"] == "null"), "{method} {path}: {schema}");
        let url = path.replace("{topic}", "nullable").replace("{group}", "g");
        for body in ["null", " null ", ""] {
            let (status, v) = s.call(method, &url, Some(body)).await;
            assert!(status == 200 || status == 201, "{method} {path} with body {body:?}: {status} {v}");
        }
    }
    s.stop().await;
}
