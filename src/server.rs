//! The server's lifecycle: lock the data directory, listen, recover, serve, shut down.
//!
//! Order at start: the directory lock first (a second process exits at once, before binding),
//! then the listener (`/healthz` answers during recovery), then recovery on a blocking thread;
//! `/readyz` turns 200 when it finishes. At shutdown: stop accepting, let in-flight requests
//! finish (long polls end early), then persist group progress, flush and checkpoint the store.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::clock::SharedClock;
use crate::config::{Config, FlushMode};
use crate::group::{GroupError, GroupOptions, Groups};
use crate::http::{self, AppState, Core, Limits};
use crate::store::lock::{DirLock, LockError};
use crate::store::{FlushPolicy, Store, StoreError, StoreOptions};
use crate::timer::{Geometry, TimerEngine, TimerError, TimerOptions};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("recovery failed")]
    Store(#[from] StoreError),
    #[error("consumer groups failed")]
    Group(#[from] GroupError),
    #[error("timer failed")]
    Timer(#[from] TimerError),
    #[error("retention failed")]
    Retention(#[from] crate::retention::RetentionError),
    #[error("server failed")]
    Io(#[from] std::io::Error),
    #[error("recovery task failed: {0}")]
    Task(String),
}

/// The store's options from the config.
pub fn store_options(config: &Config) -> StoreOptions {
    let interval = config.store.flush_interval.0;
    StoreOptions {
        dir: config.data_dir.clone(),
        segment_size: config.store.segment_size.0,
        cq_segment_entries: config.store.consume_queue_segment_entries,
        flush: match config.store.flush {
            FlushMode::Async => FlushPolicy::Async { interval },
            FlushMode::Sync => FlushPolicy::Sync,
        },
        checkpoint_interval: interval,
    }
}

/// Retention's options from the config.
pub fn retention_options(config: &Config) -> crate::retention::RetentionOptions {
    crate::retention::RetentionOptions {
        data_dir: config.data_dir.clone(),
        retention: config.store.retention.0,
        retention_bytes: config.store.retention_bytes.0,
        check_interval: config.store.retention_check_interval.0,
        soft_limit: config.store.disk_soft_limit,
        hard_limit: config.store.disk_hard_limit,
        carry_margin: crate::retention::carry_margin(config.store.retention_check_interval.0),
    }
}

/// The timer's options from the config.
pub fn group_options(config: &Config) -> GroupOptions {
    GroupOptions {
        dir: config.data_dir.join("groups"),
        persist_interval: config.group.persist_interval.0,
        max_groups_per_topic: config.limits.max_groups_per_topic,
    }
}

pub fn timer_options(config: &Config) -> TimerOptions {
    TimerOptions {
        dir: config.data_dir.join("timer"),
        geometry: Geometry::new(config.timer.precision.0.as_millis().max(1) as i64, config.timer.slots),
        lookahead_ms: config.timer.lookahead.0.as_millis() as i64,
        // 64 MiB timer-log segments with 1 GiB commit-log segments; smaller with smaller ones.
        timer_log_segment_units: (config.store.segment_size.0 / 1024).clamp(4096, 1 << 20),
        state_cells_per_file: crate::timer::state::CELLS_PER_FILE,
        checkpoint_interval: config.store.flush_interval.0,
        queue_capacity: config.timer.queue_capacity as usize,
        default_queues: config.default_queues,
        max_per_slot: (config.timer.max_per_slot > 0).then_some(config.timer.max_per_slot),
        progress_interval: Some(config.timer.progress_interval.0).filter(|d| !d.is_zero()),
        lag_warn_ms: config.timer.lag_warn.0.as_millis() as i64,
    }
}

fn limits(config: &Config) -> Limits {
    Limits {
        max_message_bytes: config.max_message_bytes.0 as usize,
        max_request_bytes: config.max_request_bytes.0 as usize,
        auto_create_topics: config.auto_create_topics,
        default_queues: config.default_queues,
        max_delay_ms: config.timer.max_delay.0.as_millis() as i64,
        body_read_timeout: config.http.body_read_timeout.0,
        admission: http::admission::AdmissionOptions {
            max_inflight_bytes: config.admission.max_inflight_bytes.0,
            max_enqueue_lag: config.admission.max_enqueue_lag,
            retry_after_secs: config.admission.retry_after.0.as_secs_f64().ceil() as u32,
        },
    }
}

/// A server started by [`start`].
pub struct Running {
    pub addr: SocketAddr,
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    serve: tokio::task::JoinHandle<Result<(), ServerError>>,
}

/// Locks the data directory, binds, starts recovery in the background and serves.
pub async fn start(config: &Config, clock: SharedClock) -> Result<Running, ServerError> {
    let lock = DirLock::acquire(&config.data_dir)?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| ServerError::Bind { addr: config.listen.clone(), source })?;
    let addr = listener.local_addr()?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let state = AppState::new(limits(config), config.auth.token.clone(), shutdown_rx.clone());

    let opts = store_options(config);
    let group_opts = group_options(config);
    let timer_opts = timer_options(config);
    let max_topics = config.limits.max_topics;
    let broker_opts = crate::service::BrokerOptions {
        auto_create_topics: config.auto_create_topics,
        default_queues: config.default_queues,
        dedup_window_ms: config.dedup.window.0.as_millis() as i64,
        txn: crate::service::transactions::TxnOptions {
            check_interval_ms: config.transaction.check_interval.0.as_millis() as i64,
            check_max: config.transaction.check_max,
            unresolved_commit: config.transaction.unresolved == crate::config::Unresolved::Commit,
        },
    };
    let retention_opts = retention_options(config);
    let clock_for_retention = clock.clone();
    let ready_state = state.clone();
    let recovery = tokio::task::spawn_blocking(move || -> Result<Core, ServerError> {
        let store = Store::open_locked(lock, opts, clock)?;
        store.topics().set_max_topics(max_topics);
        tracing::info!(recovery = %store.recovery_report(), "recovery finished");
        // Groups first: they cut progress that is ahead of its queue back to what the queue
        // holds (a power cut took the queue's tail), and the timer, once started, at once
        // fires what fell due while the server was down into those very queue offsets.
        // Tests delay here (`sleep(ms)`) to check that nothing fires before the groups are cut.
        fail::fail_point!("server::before_groups");
        let groups = Groups::open(store.clone(), group_opts)?;
        let timer = TimerEngine::start(store.clone(), timer_opts)?;
        tracing::info!(recovery = %timer.recovery_summary(), "timer started");
        let broker = crate::service::Broker::new(store.clone(), timer.clone(), broker_opts);
        let prepared = broker.recover_transactions().map_err(|e| ServerError::Task(format!("transactions: {e}")))?;
        tracing::info!(prepared, "transactions recovered");
        let retention = crate::retention::Retention::start(
            store.clone(),
            timer.clone(),
            groups.clone(),
            clock_for_retention,
            retention_opts,
            Arc::new(crate::retention::real_disk),
        )?;
        let txns = broker.transactions_table().clone();
        retention.pin_below(Box::new(move || txns.pinned_below()));
        let consumers = crate::service::Consumers::new(broker.clone(), groups.clone());
        Ok(Core { store, groups, timer, broker, consumers, retention })
    });

    let app = http::router(state.clone());
    let conn_options = http::serve::ConnOptions { header_read_timeout: config.http.header_read_timeout.0 };
    let mut stop_rx = shutdown_rx;
    let failed = shutdown.clone();
    let serve = tokio::spawn(async move {
        let stop = async move {
            let _ = stop_rx.wait_for(|&s| s).await;
        };
        let server = http::serve::serve(listener, app, conn_options, stop);
        let server = tokio::spawn(server);
        match recovery.await {
            Ok(Ok(core)) => {
                // Transactions nobody resolved after their last check: once a second.
                let (broker, mut stop) = (core.broker.clone(), failed.subscribe());
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                            _ = stop.wait_for(|&s| s) => return,
                        }
                        broker.resolve_timeouts().await;
                    }
                });
                ready_state.set_ready(core);
            }
            Ok(Err(e)) => {
                let _ = failed.send(true);
                let _ = server.await;
                return Err(e);
            }
            Err(e) => {
                let _ = failed.send(true);
                let _ = server.await;
                return Err(ServerError::Task(e.to_string()));
            }
        }
        server.await.map_err(|e| ServerError::Task(e.to_string()))??;
        // Requests are done: persist progress, then the final flush and checkpoint.
        if let Ok(core) = ready_state.core() {
            core.retention.shutdown();
            core.timer.shutdown()?;
            core.groups.shutdown()?;
            core.store.shutdown()?;
        }
        Ok(())
    });
    Ok(Running { addr, state, shutdown, serve })
}

impl Running {
    /// Waits until recovery has finished (or failed).
    pub async fn wait_ready(&self) -> bool {
        loop {
            if self.state.core().is_ok() {
                return true;
            }
            if self.serve.is_finished() {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub fn core(&self) -> Option<&Core> {
        self.state.core().ok()
    }

    /// Stops accepting, drains requests, flushes; returns how the server ended.
    pub async fn stop(self) -> Result<(), ServerError> {
        let _ = self.shutdown.send(true);
        self.serve.await.map_err(|e| ServerError::Task(e.to_string()))?
    }

    /// Runs until SIGINT or SIGTERM, then stops cleanly.
    pub async fn run_until_signal(self) -> Result<(), ServerError> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = wait_finished(&self.serve) => {}
        }
        self.stop().await
    }
}

async fn wait_finished<T>(h: &tokio::task::JoinHandle<T>) {
    while !h.is_finished() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
