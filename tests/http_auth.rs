//! Bearer-token auth (API.md "Auth"): with `auth.token` set every `/v1` route needs
//! `Authorization: Bearer <token>` (else 401 UNAUTHORIZED in the error shape), the open routes
//! stay open, and without a token the binary refuses a non-loopback address (exit status 2)
//! unless `allow_insecure = true`. The token never reaches the log.

mod common;

use std::process::{Command, Stdio};

use chime::config::Secret;
use common::{assert_error, test_config, TestServer};

const TOKEN: &str = "Zm9vYmFyLXRoZS10b2tlbi0xMjM0";

async fn call(s: &TestServer, method: &str, path: &str, auth: Option<&str>, body: Option<&str>) -> (u16, String) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = s.http.request(m, s.url(path));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    if status == 401 {
        let www = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
        assert!(www.is_some_and(|v| v.starts_with("Bearer")), "401 without WWW-Authenticate: Bearer");
    }
    (status, resp.text().await.unwrap())
}

/// Every /v1 route of API.md, with a body that would succeed when authorized.
const V1: &[(&str, &str, Option<&str>)] = &[
    ("GET", "/v1/topics", None),
    ("PUT", "/v1/topics/auth-t", Some(r#"{"queues": 2}"#)),
    ("POST", "/v1/topics/auth-t/messages", Some(r#"{"body": "x"}"#)),
    ("GET", "/v1/topics/auth-t/messages/000000000000000000000000", None),
    ("DELETE", "/v1/topics/auth-t/messages/000000000000000000000000", None),
    ("POST", "/v1/topics/auth-t/groups/g/receive", Some("{}")),
    ("POST", "/v1/topics/auth-t/groups/g/ack", Some(r#"{"receipt_handles": []}"#)),
    ("GET", "/v1/timer/stats", None),
    ("GET", "/v1/timer/congestion", None),
    ("GET", "/v1/no/such/route", None),
    ("PATCH", "/v1/topics", None),
];

#[tokio::test]
async fn token_guards_every_v1_route_and_leaves_the_open_ones_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.auth.token = Secret(TOKEN.to_owned());
    let s = TestServer::start(&config).await;

    let wrong = [
        None,
        Some("Bearer wrong-token"),
        Some(&*format!("Bearer {TOKEN}x")),
        Some(&TOKEN[..TOKEN.len() - 1]),
        Some(&*format!("Basic {TOKEN}")),
        Some("Bearer"),
    ];
    for (method, path, body) in V1 {
        for auth in wrong {
            let (status, text) = call(&s, method, path, auth, *body).await;
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
            assert_error(status, &v, 401, "UNAUTHORIZED");
            assert!(!text.contains(TOKEN), "the answer echoes the token: {text}");
        }
    }
    // Nothing was created by the refused requests.
    let bearer = format!("Bearer {TOKEN}");
    let (status, text) = call(&s, "GET", "/v1/topics", Some(&bearer), None).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap()["topics"], serde_json::json!([]));

    // With the token, each route answers what it would without auth (never 401).
    for (method, path, body) in V1 {
        for auth in [bearer.clone(), format!("bearer {TOKEN}")] {
            let (status, text) = call(&s, method, path, Some(&auth), *body).await;
            assert_ne!(status, 401, "{method} {path}: {text}");
            assert!(status < 500, "{method} {path}: {status} {text}");
        }
    }
    let (status, text) = call(&s, "GET", "/v1/topics", Some(&bearer), None).await;
    assert_eq!(status, 200);
    assert!(text.contains("auth-t"), "{text}");

    // The open routes need nothing (404 for a route not served in this build is fine, 401 is not).
    for path in ["/healthz", "/readyz", "/openapi.json", "/metrics"] {
        let (status, text) = call(&s, "GET", path, None, None).await;
        assert_ne!(status, 401, "{path}: {text}");
    }
    let (status, _) = call(&s, "GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
    s.stop().await;
}

#[tokio::test]
async fn without_a_token_v1_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&test_config(dir.path())).await;
    let (status, text) = call(&s, "GET", "/v1/topics", None, None).await;
    assert_eq!(status, 200, "{text}");
    // A stray Authorization header is ignored when no token is configured.
    let (status, _) = call(&s, "GET", "/v1/topics", Some("Bearer anything"), None).await;
    assert_eq!(status, 200);
    s.stop().await;
}

fn chime(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chime"));
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CHIME_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied()).stdin(Stdio::null());
    cmd.output().expect("run chime")
}

#[test]
fn binary_refuses_a_public_address_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = chime(&["--listen", "0.0.0.0:0", "--data-dir", data, "--profile", "test"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains("--listen") && err.contains("without authentication"), "{err}");
    assert!(err.contains("auth.token") && err.contains("allow_insecure"), "{err}");
    // A bad token is a configuration error that does not print the value.
    let out = chime(
        &["--listen", "127.0.0.1:0", "--data-dir", data, "--profile", "test"],
        &[("CHIME_AUTH_TOKEN", "secret with spaces")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains("CHIME_AUTH_TOKEN") && !err.contains("secret with"), "{err}");
}

#[tokio::test]
async fn binary_with_a_token_on_a_public_address_serves_and_never_logs_the_token() {
    use common::binary::{free_port, Proc};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = reqwest::Client::new();
    for (name, env) in [("token", ("CHIME_AUTH_TOKEN", TOKEN)), ("insecure", ("CHIME_ALLOW_INSECURE", "true"))] {
        // Every address of the machine; the test reaches it through loopback.
        let port = free_port();
        let stderr = dir.path().join(format!("{name}.stderr"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chime"));
        cmd.arg("--listen").arg(format!("0.0.0.0:{port}")).arg("--data-dir").arg(&data).args(["--profile", "test"]);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CHIME_") {
                cmd.env_remove(k);
            }
        }
        cmd.env(env.0, env.1).env("RUST_LOG", "trace");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&stderr).unwrap());
        let child = cmd.spawn().expect("spawn chime");
        let mut p = Proc { child, base: format!("http://127.0.0.1:{port}"), stderr, done: None };
        p.wait_ready(&http).await;
        let mut req = http.post(format!("{}/v1/topics/t/messages", p.base)).body(r#"{"body":"x"}"#);
        if name == "token" {
            let status = req.try_clone().unwrap().send().await.unwrap().status().as_u16();
            assert_eq!(status, 401, "{name}: no token");
            req = req.bearer_auth(TOKEN);
        }
        let status = req.send().await.unwrap().status().as_u16();
        assert_eq!(status, 201, "{name}");
        p.terminate().await;
        let log = std::fs::read_to_string(&p.stderr).unwrap();
        assert!(log.contains("chime listening"), "{name}: {log}");
        assert!(!log.contains(TOKEN), "{name}: the log contains the token:\n{log}");
    }
}
