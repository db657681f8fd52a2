//! Slow clients cannot hold the server: a client that sends its headers a byte at a time is
//! disconnected after `http.header_read_timeout`, one that trickles its body gets 408
//! REQUEST_TIMEOUT after `http.body_read_timeout` (nothing stored), and while they are held
//! other clients are served normally.

mod common;

use std::time::{Duration, Instant};

use chime::config::HumanDuration;
use common::{assert_error, test_config, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `head` a byte every `gap` until the server closes the connection; returns how long
/// that took, and everything the server sent.
async fn trickle_until_closed(addr: std::net::SocketAddr, head: &[u8], gap: Duration, give_up: Duration) -> Duration {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    let mut i = 0;
    loop {
        assert!(start.elapsed() < give_up, "server still reading slow headers after {give_up:?}");
        // The byte after the last one cycles over the head without ever ending it.
        let b = head[i % head.len()];
        i += 1;
        if s.write_all(&[b]).await.is_err() {
            return start.elapsed();
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(gap, s.read(&mut buf)).await {
            Err(_) => {}                                      // nothing yet: keep trickling
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(), // closed
            Ok(Ok(_)) => {}                                   // an error answer; the close follows
        }
    }
}

#[tokio::test]
async fn slow_headers_are_cut_off_and_others_are_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.http.header_read_timeout = HumanDuration::from_millis(600);
    let s = TestServer::start(&config).await;
    let addr = s.running.as_ref().unwrap().addr;

    // Header bytes that never finish the head (no blank line).
    let head = b"POST /v1/topics/slow/messages HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let slow: Vec<_> = (0..40)
        .map(|_| tokio::spawn(trickle_until_closed(addr, head, Duration::from_millis(50), Duration::from_secs(30))))
        .collect();

    // While they trickle, normal requests are answered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..20 {
        let (status, v) = s.send("fast", serde_json::json!({ "body": format!("m{i}") })).await;
        assert_eq!(status, 201, "{v}");
    }
    let (status, _) = s.call("GET", "/healthz", None).await;
    assert_eq!(status, 200);

    for h in slow {
        let took = h.await.unwrap();
        // Cut off at the deadline, not before (a little slack for timer granularity), and by
        // the configured 600 ms, not the 20 s default (the rest is room for a loaded machine).
        assert!(took >= Duration::from_millis(500), "closed after {took:?}, before the 600 ms deadline");
        assert!(took < Duration::from_secs(5), "closed after {took:?}: not by the configured 600 ms deadline");
    }
    // The slow clients stored nothing.
    let (_, v) = s.call("GET", "/v1/topics", None).await;
    let names: Vec<_> =
        v["topics"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, vec!["fast".to_owned()]);
    s.stop().await;
}

#[tokio::test]
async fn a_trickled_body_gets_408_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.http.body_read_timeout = HumanDuration::from_millis(500);
    let s = TestServer::start(&config).await;
    let addr = s.running.as_ref().unwrap().addr;

    let body = br#"{"body": "this body arrives far too slowly to be accepted by the server"}"#;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/topics/slowbody/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    for b in body.iter() {
        if c.write_all(&[*b]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(50), c.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
        }
    }
    // Read the rest of the answer, up to the close.
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer)).await;
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert!(text.starts_with("HTTP/1.1 408"), "answer after {took:?}: {text}");
    assert!(text.to_ascii_lowercase().contains("connection: close"), "{text}");
    let json = &text[text.find("\r\n\r\n").expect("head ends") + 4..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_error(408, &v, 408, "REQUEST_TIMEOUT");
    assert!(took >= Duration::from_millis(400), "408 after {took:?}");

    let (_, v) = s.call("GET", "/v1/topics", None).await;
    assert_eq!(v["topics"], serde_json::json!([]), "the timed-out send stored something");
    // A body sent in pieces within the deadline is fine.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(head.replace("slowbody", "ok").as_bytes()).await.unwrap();
    c.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.write_all(&body[10..]).await.unwrap();
    let mut buf = [0u8; 12];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 201");
    s.stop().await;
}

/// README: `http.header_read_timeout` is also the keep-alive idle limit. A connection that has
/// been answered and then sends nothing is closed by the server after that long (here 600 ms),
/// not the 20 s default; one that sends its next request in time is served on it.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.http.header_read_timeout = HumanDuration::from_millis(600);
    let s = TestServer::start(&config).await;
    let addr = s.running.as_ref().unwrap().addr;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let answer = async |c: &mut TcpStream| {
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await.unwrap().unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    };
    answer(&mut c).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    answer(&mut c).await; // within the limit: the connection is still open
    let idle = Instant::now();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(30), c.read(&mut buf)).await.expect("closed within 30 s");
    assert!(matches!(r, Ok(0) | Err(_)), "the server sent {r:?} instead of closing");
    let took = idle.elapsed();
    assert!(took >= Duration::from_millis(500), "closed after {took:?} idle, before the 600 ms limit");
    assert!(took < Duration::from_secs(5), "closed after {took:?} idle: not by the configured 600 ms");
    s.stop().await;
}
