//! The `chime` binary: parse flags, load the profile, serve until SIGINT/SIGTERM.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use chime::clock::SystemClock;
use chime::config::{process_env, Args, Config};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Test builds only (the `fail` crate's `failpoints` feature): failpoints from the
    // `FAILPOINTS` variable, e.g. the power-cut simulation (`store::powercut`).
    let _failpoints = fail::has_failpoints().then(fail::FailScenario::setup);
    let args = Args::parse();
    let loaded = match Config::load(&args, process_env()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("chime: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("chime-http").build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chime: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = loaded.config;
    let result = runtime.block_on(async {
        let server = chime::server::start(&config, Arc::new(SystemClock)).await?;
        tracing::info!(
            profile = %loaded.profile,
            data_dir = %config.data_dir.display(),
            listen = %server.addr,
            flush = ?config.store.flush,
            "chime listening; recovering"
        );
        server.run_until_signal().await
    });
    match result {
        Ok(()) => {
            tracing::info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut msg = format!("chime: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}
