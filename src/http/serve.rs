//! The accept loop: HTTP/1.1 connections served by hyper with a header-read deadline, and
//! graceful shutdown.
//!
//! `axum::serve` cannot set hyper's `header_read_timeout`, so a client that opens connections
//! and sends its headers a byte at a time (slowloris) could hold them for ever. Here each
//! connection is served by hyper's http1 builder with a timer: if a request's headers are not
//! complete `header_read_timeout` after the connection became ready for one, the connection is
//! closed (an idle keep-alive connection is closed after the same time). Bodies have their own
//! deadline, set per request in [`super::body`].
//!
//! Shutdown is as with `axum::serve(..).with_graceful_shutdown(..)`: when `stop` resolves the
//! listener is closed, idle connections are closed, in-flight requests finish (long polls end
//! early through `AppState::shutting_down`), and `serve` returns once every connection is done.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// How connections are served.
#[derive(Debug, Clone, Copy)]
pub struct ConnOptions {
    /// Longest wait for a request's complete headers (config `http.header_read_timeout`).
    pub header_read_timeout: Duration,
}

/// Largest read buffer of a connection (hyper's default is about 400 KiB). It bounds what one
/// connection holds while its body is read or discarded, so the memory of many open connections
/// stays small; the request head must fit in it, and 64 KiB is far beyond any real one.
const READ_BUFFER: usize = 64 * 1024;

/// Pause after an accept error that is not about one connection (e.g. out of file
/// descriptors), so the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `stop` resolves, then drains the connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: ConnOptions,
    stop: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_buf_size(READ_BUFFER)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Small JSON answers: do not hold them back waiting for more to send (Nagle).
        let _ = stream.set_nodelay(true);
        let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A header-read timeout, a reset or a client that went away: nothing to do but close.
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Accept errors that concern only the connection being accepted.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}
