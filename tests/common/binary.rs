//! A `chime` child process for tests of the real binary (crash, lock, exit status): started on
//! a free port with the `test` profile and its stderr in a file, polled until ready, signalled,
//! and killed if the test panics. Also a tiny seeded PRNG for reproducible load.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// xorshift64*: a tiny deterministic PRNG.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// The last `max` bytes of a log file (lossy UTF-8), for failure messages.
pub fn tail(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(b) => {
            let start = b.len().saturating_sub(max);
            let text = String::from_utf8_lossy(&b[start..]).into_owned();
            if start > 0 {
                format!("[... {start} bytes cut ...]\n{text}")
            } else {
                text
            }
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Prints every `*.stderr` file of the temp directory (all server generations) if the test
/// is panicking. Declared after the temp dir, so it runs before the dir is removed.
pub struct DumpLogsOnPanic(pub PathBuf);

impl Drop for DumpLogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.0)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "stderr"));
        files.sort();
        for f in files {
            eprintln!("===== {} =====\n{}\n===== end =====", f.display(), tail(&f, 12 * 1024));
        }
    }
}

/// A `chime` child process with its stderr in a file.
pub struct Proc {
    pub child: Child,
    pub base: String,
    pub stderr: PathBuf,
    pub done: Option<ExitStatus>,
}

impl Proc {
    /// Starts `chime --listen 127.0.0.1:PORT --data-dir DATA --profile test` with `env` added
    /// (every inherited CHIME_* variable removed).
    pub fn spawn(data: &Path, stderr: PathBuf, env: &[(&str, &str)]) -> Proc {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chime"));
        cmd.arg("--listen").arg(format!("127.0.0.1:{port}")).arg("--data-dir").arg(data).arg("--profile").arg("test");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CHIME_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied());
        let file = std::fs::File::create(&stderr).expect("create stderr file");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(file);
        let child = cmd.spawn().expect("spawn chime");
        Proc { child, base: format!("http://127.0.0.1:{port}"), stderr, done: None }
    }

    /// Starts a ready server; the log is `logs/NAME.stderr`. Retries with another port if the
    /// picked one was taken between `free_port()` and the bind.
    pub async fn start(data: &Path, logs: &Path, name: &str, http: &reqwest::Client) -> Proc {
        Proc::start_with(data, logs, name, http, &[]).await
    }

    /// [`Proc::start`] with `env` added.
    pub async fn start_with(
        data: &Path,
        logs: &Path,
        name: &str,
        http: &reqwest::Client,
        env: &[(&str, &str)],
    ) -> Proc {
        for attempt in 1..=3 {
            let suffix = if attempt == 1 { String::new() } else { format!("-retry{attempt}") };
            let mut p = Proc::spawn(data, logs.join(format!("{name}{suffix}.stderr")), env);
            if let Some(s) = p.wait_exit(Duration::from_millis(200)).await {
                let log = p.log();
                if log.contains("cannot listen") && attempt < 3 {
                    continue;
                }
                panic!("{name}: chime exited at once with {s}; stderr:\n{log}");
            }
            p.wait_ready(http).await;
            return p;
        }
        unreachable!()
    }

    /// The server's "recovery finished" log line, if any.
    pub fn recovery_line(&self) -> String {
        self.log_line("recovery finished")
    }

    /// The first line of the server's log containing `needle`.
    pub fn log_line(&self, needle: &str) -> String {
        let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        log.lines()
            .find(|l| l.contains(needle))
            .map_or_else(|| format!("<no line with {needle:?}>"), |l| l.trim().to_string())
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn log(&self) -> String {
        tail(&self.stderr, 12 * 1024)
    }

    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.done.is_none() {
            self.done = self.child.try_wait().expect("try_wait");
        }
        self.done
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls GET /readyz until 200; panics (with the log) if the process exits or on timeout.
    pub async fn wait_ready(&mut self, http: &reqwest::Client) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(s) = self.try_exit() {
                panic!("chime exited with {s} before it was ready; stderr:\n{}", self.log());
            }
            if let Ok(r) = http.get(format!("{}/readyz", self.base)).timeout(Duration::from_secs(2)).send().await {
                if r.status().as_u16() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "chime not ready within {READY_TIMEOUT:?}; stderr:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig)
            .unwrap_or_else(|e| panic!("kill({}, {sig}) failed: {e}", self.child.id()));
    }

    /// SIGKILL and reap.
    pub async fn kill9(&mut self) {
        assert!(self.try_exit().is_none(), "chime died before the SIGKILL: {:?}; stderr:\n{}", self.done, self.log());
        self.signal(Signal::SIGKILL);
        let s = self.wait_exit(Duration::from_secs(10)).await.expect("chime gone after SIGKILL");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(s.signal(), Some(9), "after SIGKILL: {s}");
    }

    /// SIGTERM; the exit status must be 0 within 10 s.
    pub async fn terminate(&mut self) {
        self.signal(Signal::SIGTERM);
        let s = self.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(s.and_then(|s| s.code()), Some(0), "exit after SIGTERM: {s:?}; stderr:\n{}", self.log());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
