//! The console (`GET /console`) in a real browser: headless Chromium driven over the DevTools
//! protocol (`headless_chrome`) against a real server with known data. The figures the page
//! shows must be those the API answers, the chart has one bar per bucket, cancel, commit and
//! rollback from the page act on the server, a test message sent from the page is seen to
//! arrive, and with a token set the page asks for it.
//!
//! Screenshots of every view go to `target/console-screenshots/`.
//!
//! Chromium: `CHIME_TEST_CHROMIUM`, else `chromium` (Debian's package; `.ci/run` installs it).
//! Without one the test says so and passes, except under CI (`CI` set), where it fails.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chime::config::Secret;
use common::{test_config, TestServer};
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHIME_TEST_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

fn browser(profile: &Path) -> Option<Browser> {
    let Some(path) = chromium() else {
        assert!(std::env::var_os("CI").is_none(), "CI must have Chromium for the console test (.ci/run installs it)");
        eprintln!("SKIPPED: no Chromium found (set CHIME_TEST_CHROMIUM or install Debian's chromium)");
        return None;
    };
    // Without the background-networking flags Chromium keeps calling Google's hosts.
    let args: Vec<&OsStr> = [
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    .iter()
    .map(OsStr::new)
    .collect();
    let opts = LaunchOptions::default_builder()
        .path(Some(path))
        .headless(true)
        .sandbox(false)
        .window_size(Some((1280, 960)))
        .user_data_dir(Some(profile.to_path_buf()))
        .idle_browser_timeout(Duration::from_secs(300))
        .args(args)
        .build()
        .unwrap();
    Some(Browser::new(opts).expect("launch Chromium"))
}

fn shots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn screenshot(tab: &Tab, name: &str) {
    let png = tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true).unwrap();
    std::fs::write(shots_dir().join(format!("{name}.png")), png).unwrap();
}

/// Evaluates `expr` in the page and returns its value as JSON (`expr` yields a JSON string).
fn eval(tab: &Tab, expr: &str) -> Value {
    let r = tab
        .evaluate(&format!("JSON.stringify((() => {{ {expr} }})())"), true)
        .unwrap_or_else(|e| panic!("{expr}: {e}"));
    match r.value {
        Some(Value::String(s)) => serde_json::from_str(&s).unwrap(),
        other => panic!("{expr}: {other:?}"),
    }
}

/// Polls `expr` (a body returning a value) for at most `within` until `done` holds on it:
/// `Ok` with that value, or `Err` with the last one.
fn poll(tab: &Tab, expr: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Result<Value, Value> {
    let deadline = Instant::now() + within;
    loop {
        let v = eval(tab, expr);
        if done(&v) {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`poll`] for [`WAIT`]; fails the test on a timeout.
fn wait_for(tab: &Tab, what: &str, expr: &str, done: impl Fn(&Value) -> bool) -> Value {
    poll(tab, expr, WAIT, done).unwrap_or_else(|last| panic!("waiting for {what}: last {last}"))
}

/// The expression for how many refreshes `view` has had (the page counts them on `<body>`).
fn refreshed(view: &str) -> String {
    format!("return Number(document.body.getAttribute('data-refreshed-{view}') || 0);")
}

fn refreshes(tab: &Tab, view: &str) -> u64 {
    eval(tab, &refreshed(view)).as_u64().unwrap()
}

/// Shows `view` and, for a view that refreshes, waits for a refresh that started after now.
fn open_view(tab: &Tab, view: &str) {
    let before = refreshes(tab, view);
    eval(tab, &format!("location.hash = '#{view}'; return true;"));
    let shown = format!("return !document.getElementById('view-{view}').hidden;");
    wait_for(tab, &format!("the {view} view"), &shown, |v| v == true);
    if ["timer", "topics", "transactions", "storage"].contains(&view) {
        wait_for(tab, &format!("a refresh of {view}"), &refreshed(view), |v| v.as_u64().unwrap() >= before + 2);
    }
}

/// Clicks the element with the mouse. A refresh may draw the element again between finding and
/// clicking it: then it is found again.
fn click(tab: &Tab, selector: &str) {
    for attempt in 1.. {
        let el = tab.wait_for_element_with_custom_timeout(selector, WAIT).unwrap_or_else(|e| panic!("{selector}: {e}"));
        match el.click() {
            Ok(_) => return,
            Err(e) if attempt < 5 => eprintln!("click {selector}: {e}; again"),
            Err(e) => panic!("click {selector}: {e}"),
        }
    }
}

/// Clicks a confirm button twice (the first click arms it for 5 s, the second acts) until
/// `done` (a body returning a bool) holds. On a busy machine two clicks can be further apart
/// than the arming lasts; the second then arms again, so the pair is tried up to 3 times.
fn confirm(tab: &Tab, button: &str, done: &str) {
    for _ in 0..3 {
        click(tab, button);
        click(tab, button);
        if poll(tab, done, Duration::from_secs(10), |v| v == true).is_ok() {
            return;
        }
    }
    panic!("{button}: not done after three confirmed clicks");
}

/// Waits up to 10 s for `done`; if it does not hold, confirms with [`confirm`].
fn confirm_unless(tab: &Tab, button: &str, done: &str) {
    if poll(tab, done, Duration::from_secs(10), |v| v == true).is_err() {
        confirm(tab, button, done);
    }
}

/// The console tests one at a time: two browsers and two servers at once overload 2 cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Types into an input after clearing it.
fn fill(tab: &Tab, selector: &str, text: &str) {
    eval(tab, &format!("document.querySelector({selector:?}).value = ''; return true;"));
    tab.wait_for_element(selector).unwrap().click().unwrap();
    tab.type_str(text).unwrap();
}

async fn api(s: &TestServer, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = s.call(method, path, body.map(|b| b.to_string()).as_deref()).await;
    assert!((200..300).contains(&status), "{method} {path}: {status} {v}");
    v
}

struct Seeded {
    /// Scheduled with key `order-7`, to be cancelled from the page.
    to_cancel: String,
    /// A normal message with key `order-1`.
    normal: String,
    commit: String,
    rollback: String,
}

/// Known data: scheduled messages at known distances, groups with backlog, in-flight and dead
/// letters, a FIFO group with blocked message groups, two prepared transactions.
async fn seed(s: &TestServer) -> Seeded {
    const MIN: i64 = 60_000;
    let normal = api(s, "POST", "/v1/topics/orders/messages", Some(json!({"body": "n1", "keys": ["order-1"]}))).await;
    api(s, "POST", "/v1/topics/orders/messages", Some(json!([{"body": "n2"}, {"body": "n3", "tag": "TagA"}]))).await;
    // Due within the hour: 5 at +10 min, 2 at +40 min, 1 (key order-7) at +20 min; 4 at +5 h; 1 at +3 days.
    let mut batch: Vec<Value> = (0..5).map(|i| json!({"body": format!("s10-{i}"), "delay_ms": 10 * MIN})).collect();
    batch.extend((0..2).map(|i| json!({"body": format!("s40-{i}"), "delay_ms": 40 * MIN})));
    batch.extend((0..4).map(|i| json!({"body": format!("s5h-{i}"), "delay_ms": 300 * MIN})));
    batch.push(json!({"body": "s3d", "delay_ms": 3 * 24 * 60 * MIN}));
    api(s, "POST", "/v1/topics/orders/messages", Some(Value::Array(batch))).await;
    let to_cancel = api(
        s,
        "POST",
        "/v1/topics/orders/messages",
        Some(json!({"body": "s20", "keys": ["order-7"], "tag": "TagB", "delay_ms": 20 * MIN})),
    )
    .await;

    // billing: one in flight, two in backlog.
    assert_eq!(s.receive("orders", "billing", json!({"max_messages": 1, "invisible_ms": 600000})).await.len(), 1);
    // audit: one attempt, its nack dead-letters.
    api(s, "PUT", "/v1/topics/orders/groups/audit", Some(json!({"max_delivery_attempts": 1}))).await;
    let got = s.receive("orders", "audit", json!({"max_messages": 1})).await;
    let nack = json!({"receipt_handles": [got[0]["receipt_handle"]]});
    assert_eq!(api(s, "POST", "/v1/topics/orders/groups/audit/nack", Some(nack)).await["nacked"], 1);
    // A reader of the dead letter topic.
    api(s, "PUT", "/v1/topics/%25DLQ%25audit/groups/dlq-reader", Some(json!({}))).await;

    // FIFO: truck-1 has 3 messages, truck-2 one; each group's head goes out.
    let fifo: Vec<Value> = ["truck-1", "truck-1", "truck-2", "truck-1"]
        .iter()
        .enumerate()
        .map(|(i, g)| json!({"body": format!("f{i}"), "message_group": g}))
        .collect();
    api(s, "POST", "/v1/topics/shipments/messages", Some(Value::Array(fifo))).await;
    api(s, "PUT", "/v1/topics/shipments/groups/dispatch", Some(json!({"fifo": true}))).await;
    assert_eq!(s.receive("shipments", "dispatch", json!({"max_messages": 10, "invisible_ms": 600000})).await.len(), 2);

    let prepare = |body: &str| {
        json!({"producer_group": "checkout", "messages": [
            {"topic": "orders", "body": body}, {"topic": "shipments", "body": body, "delay_ms": 1000}]})
    };
    let commit = api(s, "POST", "/v1/transactions", Some(prepare("to commit"))).await;
    let rollback = api(s, "POST", "/v1/transactions", Some(prepare("to roll back"))).await;
    let id = |v: &Value, k: &str| v[k].as_str().unwrap().to_string();
    Seeded {
        to_cancel: id(&to_cancel, "message_id"),
        normal: id(&normal, "message_id"),
        commit: id(&commit, "transaction_id"),
        rollback: id(&rollback, "transaction_id"),
    }
}

/// The chart's bars as `(start_ms, count, height)`, read in one evaluation (the chart is
/// drawn again every second).
fn bars(tab: &Tab) -> Vec<(i64, u64, f64)> {
    let v = eval(
        tab,
        "return [...document.querySelectorAll('#chart rect.bar')]\
           .map(r => [Number(r.dataset.start), Number(r.dataset.count), Number(r.getAttribute('height'))]);",
    );
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| (b[0].as_i64().unwrap(), b[1].as_u64().unwrap(), b[2].as_f64().unwrap()))
        .collect()
}

/// Shows the chart's `range`, checks its bars against the congestion endpoint; returns the
/// number of messages the window holds.
async fn check_chart(s: &TestServer, tab: &Tab, range: &str, n: usize, bucket_ms: i64) -> u64 {
    click(tab, &format!("#chart-range button[data-range={range}]"));
    wait_for(tab, &format!("{n} bars"), "return document.querySelectorAll('#chart rect.bar').length;", |v| v == n);
    let drawn = bars(tab);
    let got: Vec<(i64, u64)> = drawn.iter().map(|b| (b.0, b.1)).collect();
    let from = got[0].0;
    assert_eq!(from % bucket_ms, 0, "{range}: the window starts on a bucket boundary");
    let path =
        format!("/v1/timer/congestion?from_ms={from}&to_ms={}&bucket_ms={bucket_ms}", from + n as i64 * bucket_ms);
    let want: Vec<(i64, u64)> = api(s, "GET", &path, None).await["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["start_ms"].as_i64().unwrap(), b["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, want, "{range}: the bars are the congestion buckets");
    let max = got.iter().map(|b| b.1).max().unwrap();
    for &(_, count, h) in &drawn {
        assert_eq!(h > 0.0, count > 0, "{range}: a bar is drawn exactly when its bucket has messages");
        if count == max {
            assert!(h > 150.0, "{range}: the fullest bar is full height: {h}");
        }
    }
    got.iter().map(|b| b.1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_what_the_api_answers_and_acts_on_the_server() {
    let _one = ONE_AT_A_TIME.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let Some(browser) = browser(&tmp.path().join("chromium")) else { return };
    let s = TestServer::start(&test_config(&tmp.path().join("data"))).await;
    let seeded = seed(&s).await;
    let tab: Arc<Tab> = browser.new_tab().unwrap();
    tab.set_default_timeout(WAIT);
    tab.navigate_to(&s.url("/console")).unwrap().wait_until_navigated().unwrap();
    eval(
        &tab,
        "window.__violations = []; \
         document.addEventListener('securitypolicyviolation', e => window.__violations.push(e.blockedURI)); return true;",
    );

    // Timer: the figures, the stages, the chart of what falls due when.
    wait_for(tab.as_ref(), "the timer view", &refreshed("timer"), |v| v.as_u64().unwrap() >= 2);
    assert!(eval(&tab, "return document.getElementById('token-dialog').hidden;").as_bool().unwrap(), "no token asked");
    let stats = api(&s, "GET", "/v1/timer/stats", None).await;
    assert_eq!(stats["pending_total"], 13, "13 scheduled (prepared transactions do not count): {stats}");
    let shown = eval(&tab, "return document.getElementById('timer-pending').textContent;");
    assert_eq!(shown, json!(stats["pending_total"].to_string()));
    let stages = eval(&tab, "return [...document.querySelectorAll('#stages tbody tr')].map(r => r.dataset.stage);");
    assert_eq!(stages, json!(["enqueue_get", "enqueue_put", "dequeue_get", "dequeue_get_message", "dequeue_put"]));
    let capacity =
        eval(&tab, "return document.querySelector('#stages tr[data-stage=enqueue_put] .capacity').textContent;");
    let want = stats["stages"]["enqueue_put"]["queue_capacity"].as_u64().unwrap();
    assert_eq!(capacity.as_str().unwrap().replace(',', ""), want.to_string());
    assert_eq!(check_chart(&s, &tab, "hour", 60, 60_000).await, 8, "5 + 1 + 2 due within the hour");
    screenshot(&tab, "timer");
    assert_eq!(check_chart(&s, &tab, "day", 96, 900_000).await, 12, "and 4 at +5 h");
    assert_eq!(check_chart(&s, &tab, "week", 168, 3_600_000).await, 13, "and 1 at +3 days");

    // Topics, groups, dead letters, blocked FIFO message groups.
    open_view(&tab, "topics");
    for topic in ["orders", "shipments"] {
        let want = api(&s, "GET", &format!("/v1/topics/{topic}/groups"), None).await;
        for g in want["groups"].as_array().unwrap() {
            let name = g["name"].as_str().unwrap();
            let row = eval(
                &tab,
                &format!(
                    "const r = document.querySelector('#groups-table tr[data-topic={topic:?}][data-group={name:?}]'); \
                     return r && ['backlog', 'in_flight', 'dead_lettered', 'expired'].map(c => Number(r.querySelector('.' + c).textContent));"
                ),
            );
            let fig = |k: &str| g[k].clone();
            assert_eq!(
                row,
                json!([fig("backlog"), fig("in_flight"), fig("dead_lettered"), fig("expired")]),
                "{topic}/{name}"
            );
        }
    }
    let billing = eval(&tab, "const r = document.querySelector('#groups-table tr[data-group=billing]'); return [r.querySelector('.backlog').textContent, r.querySelector('.in_flight').textContent];");
    assert_eq!(billing, json!(["2", "1"]), "the known figures themselves");
    // Its readers come from `/v1/topics/%25DLQ%25audit/groups`: the name is encoded in the path.
    let dlq = eval(&tab, "return [...document.querySelectorAll('#dlq-table tbody tr')].map(r => [r.dataset.topic, r.querySelector('.messages').textContent, r.cells[2].textContent]);");
    assert_eq!(dlq, json!([["%DLQ%audit", "1", "dlq-reader"]]));
    let blocked_api = api(&s, "GET", "/v1/topics/shipments/groups/dispatch/blocked", None).await;
    let mut want: Vec<(String, u64)> = blocked_api["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["message_group"].as_str().unwrap().to_string(), b["waiting"].as_u64().unwrap()))
        .collect();
    want.sort();
    assert_eq!(want, vec![("truck-1".to_string(), 2), ("truck-2".to_string(), 0)]);
    let mut got: Vec<(String, u64)> = serde_json::from_value(eval(
        &tab,
        "return [...document.querySelectorAll('#blocked-table tbody tr')].map(r => [r.dataset.messageGroup, Number(r.querySelector('.waiting').textContent)]);",
    ))
    .unwrap();
    got.sort();
    assert_eq!(got, want);
    screenshot(&tab, "topics");

    // Messages: by key, then cancel the scheduled one from the page; a delivered one has no
    // cancel button.
    open_view(&tab, "messages");
    fill(&tab, "#find-topic", "orders");
    eval(&tab, "document.getElementById('find-by').value = 'key'; return true;");
    fill(&tab, "#find-value", "order-7");
    click(&tab, "#find-form button[type=submit]");
    let row = format!("#find-result tr[data-id='{}']", seeded.to_cancel);
    let state = format!("return (document.querySelector(\"{row} .state\") || {{}}).textContent || null;");
    wait_for(&tab, "the found message", &state, |v| *v == "scheduled");
    screenshot(&tab, "messages");
    click(&tab, &format!("{row} button.cancel"));
    let armed = eval(&tab, &format!("return document.querySelector(\"{row} button.cancel\").textContent;"));
    assert_eq!(armed, "Confirm cancel", "the first click only arms the button");
    let st = api(&s, "GET", &format!("/v1/topics/orders/messages/{}", seeded.to_cancel), None).await;
    assert_eq!(st["state"], "scheduled", "not cancelled by the first click");
    // The second click cancels (or, if a slow machine let the 5 s arming end, arms again:
    // then `confirm` clicks in pairs).
    click(&tab, &format!("{row} button.cancel"));
    let cancelled = format!("return (document.querySelector(\"{row} .state\") || {{}}).textContent === 'cancelled';");
    confirm_unless(&tab, &format!("{row} button.cancel"), &cancelled);
    let st = api(&s, "GET", &format!("/v1/topics/orders/messages/{}", seeded.to_cancel), None).await;
    assert_eq!(st["state"], "cancelled");
    eval(&tab, "document.getElementById('find-by').value = 'id'; return true;");
    fill(&tab, "#find-value", &seeded.normal);
    click(&tab, "#find-form button[type=submit]");
    let row = format!("#find-result tr[data-id='{}']", seeded.normal);
    wait_for(
        &tab,
        "the normal message",
        &format!("return (document.querySelector(\"{row} .state\") || {{}}).textContent || null;"),
        |v| *v == "delivered",
    );
    assert_eq!(eval(&tab, &format!("return document.querySelectorAll(\"{row} button\").length;")), 0);

    // Transactions: commit one and roll back the other from the page.
    open_view(&tab, "transactions");
    let listed =
        eval(&tab, "return [...document.querySelectorAll('#txn-table tbody tr')].map(r => r.dataset.txn).sort();");
    let mut want = vec![seeded.commit.clone(), seeded.rollback.clone()];
    want.sort();
    assert_eq!(listed, json!(want));
    screenshot(&tab, "transactions");
    for (id, how, state) in [(&seeded.commit, "commit", "committed"), (&seeded.rollback, "rollback", "rolled_back")] {
        let row = format!("#txn-table tr[data-txn='{id}']");
        confirm(&tab, &format!("{row} button.{how}"), &format!("return !document.querySelector(\"{row}\");"));
        assert_eq!(api(&s, "GET", &format!("/v1/transactions/{id}"), None).await["state"], state);
    }

    // Storage.
    open_view(&tab, "storage");
    let storage = api(&s, "GET", "/v1/storage", None).await;
    for key in
        ["commitlog.segments", "commitlog.first_offset", "pinned.pending_messages", "accepting", "disk.total_bytes"]
    {
        let shown = eval(
            &tab,
            &format!("const d = document.querySelector('#storage dd[data-k=\"{key}\"]'); return d && d.dataset.v;"),
        );
        let want = key.split('.').fold(&storage, |v, k| &v[k]);
        assert_eq!(shown.as_str(), Some(want.to_string().as_str()), "{key}: {storage}");
    }
    // And what is on screen, for the figures that do not move.
    let text = |key: &str| {
        eval(&tab, &format!("return document.querySelector('#storage dd[data-k=\"{key}\"]').textContent;"))
            .as_str()
            .unwrap()
            .replace(',', "")
    };
    assert_eq!(text("commitlog.segments"), storage["commitlog"]["segments"].to_string());
    assert_eq!(text("commitlog.first_offset"), storage["commitlog"]["first_offset"].to_string());
    assert_eq!(text("pinned.pending_messages"), storage["pinned"]["pending_messages"].to_string());
    assert_eq!(text("accepting"), "yes");
    screenshot(&tab, "storage");

    // Send a test message with a delay and watch it arrive.
    open_view(&tab, "send");
    fill(&tab, "#send-topic", "console-test");
    fill(&tab, "#send-delay", "5000");
    click(&tab, "#send-form button[type=submit]");
    let id = wait_for(
        &tab,
        "the send",
        "return document.querySelector('#send-result [data-k=message_id]').textContent || null;",
        |v| v.is_string(),
    );
    let id = id.as_str().unwrap().to_string();
    assert_eq!(eval(&tab, "return document.getElementById('send-state').textContent;"), "scheduled");
    let st = api(&s, "GET", &format!("/v1/topics/console-test/messages/{id}"), None).await;
    assert_eq!(st["state"], "scheduled", "sent with its delay: {st}");
    wait_for(&tab, "the arrival", "return document.getElementById('send-state').textContent;", |v| *v == "delivered");
    let st = api(&s, "GET", &format!("/v1/topics/console-test/messages/{id}"), None).await;
    assert_eq!(st["state"], "delivered");
    screenshot(&tab, "send");

    // The page only ever called /v1 routes of this server, and nothing it tried was refused by
    // its Content-Security-Policy (a request elsewhere would be: it never reaches the list).
    assert_eq!(eval(&tab, "return window.__violations.length;"), 0, "{}", eval(&tab, "return window.__violations;"));
    let resources = eval(&tab, "return performance.getEntriesByType('resource').map(e => e.name);");
    assert!(resources.as_array().unwrap().len() > 20, "{resources}");
    for url in resources.as_array().unwrap() {
        let url = url.as_str().unwrap();
        assert!(url.starts_with(&s.url("/v1/")) || url.starts_with("data:"), "the page fetched {url}");
    }
    drop(tab);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_console_asks_for_it_once_and_keeps_it_for_the_tab() {
    let _one = ONE_AT_A_TIME.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let Some(browser) = browser(&tmp.path().join("chromium")) else { return };
    let mut config = test_config(&tmp.path().join("data"));
    config.auth.token = Secret("s3cret".into());
    let s = TestServer::start(&config).await;
    let (status, _) = s.call("GET", "/v1/topics", None).await;
    assert_eq!(status, 401, "the server wants the token");
    let r = s.http.get(s.url("/console")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the page itself is open");
    let header = |k: &str| r.headers().get(k).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert!(header("content-security-policy").contains("connect-src 'self'"), "talks to this server only");
    assert!(r.text().await.unwrap().contains("<title>chime console</title>"));

    let tab = browser.new_tab().unwrap();
    tab.set_default_timeout(WAIT);
    tab.navigate_to(&s.url("/console#topics")).unwrap().wait_until_navigated().unwrap();
    let dialog = "return document.getElementById('token-dialog').hidden === false;";
    wait_for(&tab, "the token prompt", dialog, |v| v == true);
    screenshot(&tab, "token");
    fill(&tab, "#token-input", "wrong");
    click(&tab, "#token-form button[type=submit]");
    wait_for(&tab, "the refusal", "return document.getElementById('token-error').textContent;", |v| {
        *v == "That token was refused."
    });
    assert_eq!(eval(&tab, dialog), true, "asked again");
    fill(&tab, "#token-input", "s3cret");
    click(&tab, "#token-form button[type=submit]");
    wait_for(&tab, "the topics with the token", &refreshed("topics"), |v| v.as_u64().unwrap() >= 1);
    assert_eq!(eval(&tab, dialog), false);
    // Kept for the tab: a reload does not ask again (the marker tells the new page from the old).
    eval(&tab, "window.__old_page = true; return true;");
    tab.reload(true, None).unwrap().wait_until_navigated().unwrap();
    wait_for(&tab, "the reloaded page", "return window.__old_page === undefined;", |v| v == true);
    wait_for(&tab, "the topics after a reload", &refreshed("topics"), |v| v.as_u64().unwrap() >= 1);
    assert_eq!(eval(&tab, dialog), false, "not asked again in the same tab");
    drop(tab);
    s.stop().await;
}
