//! The server under test: an external URL, a spawned `chime` child process, or a server started
//! in this process with `chime::server::start`.
//!
//! Spawned is the default when `target/release/chime` sits next to this binary: the server then
//! has its own process and the load generator's CPU use is measured apart from it. In process,
//! both share one process (and, on a small machine, the same cores); it needs no binary.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chime::clock::SystemClock;

use crate::report::Figures;
use chime::config::{Config, BUILTIN_PROFILES};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// Built-in profile of a server this tool starts (default, durable, test).
    #[arg(long, default_value = "default")]
    pub profile: String,
    /// Use a running server at this base URL (e.g. http://127.0.0.1:8080) instead of starting one.
    #[arg(long, conflicts_with_all = ["spawn", "in_process"])]
    pub url: Option<String>,
    /// Start `chime` from this binary's directory as a child process (default when it exists).
    #[arg(long, conflicts_with = "in_process")]
    pub spawn: bool,
    /// Start the server inside this process (it then shares the cores with the load generator).
    #[arg(long)]
    pub in_process: bool,
    /// Parent directory for the server's temporary data directory. Default: the system temp dir.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// How many runs, against which server, with how many client threads: the options every HTTP
/// scenario shares.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Runs, each against a fresh server; the median of each figure is reported.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Worker threads of the load generator's runtime. Default: the number of cores.
    #[arg(long)]
    pub client_threads: Option<usize>,
    #[command(flatten)]
    pub target: TargetArgs,
}

impl RunArgs {
    /// A scenario's report parameters with those these options set added.
    pub fn params(&self, mut scenario: serde_json::Value) -> Result<serde_json::Value, String> {
        for (k, v) in [
            ("runs", serde_json::json!(self.runs)),
            ("profile", serde_json::json!(self.target.profile)),
            ("server", serde_json::json!(self.target.mode()?.name())),
            ("url", serde_json::json!(self.target.url)),
            ("client_threads", serde_json::json!(self.client_threads)),
        ] {
            scenario[k] = v;
        }
        Ok(scenario)
    }

    /// Calls `f(target)` against a fresh server `runs` times; returns each run's figures, with
    /// the server's stop time (`server_stop_s`) for a server this tool started.
    pub fn each(
        &self,
        scenario: &str,
        mut f: impl FnMut(&mut Target) -> Result<Figures, String>,
    ) -> Result<Vec<Figures>, String> {
        let mode = self.target.mode()?;
        let mut out = Vec::new();
        for i in 0..self.runs {
            crate::note!("{scenario}: run {}/{} ({})", i + 1, self.runs, mode.name());
            let (mut figures, stop_time) = Target::run(&self.target, &mut f)?;
            if mode != Mode::Url {
                figures.add("server_stop_s", stop_time.as_secs_f64());
            }
            out.push(figures);
        }
        Ok(out)
    }
}

/// Runs against a fresh server of each of several built-in profiles (`ingest`, `cancel`).
#[derive(Debug, Clone, clap::Args)]
pub struct ProfileRuns {
    /// Built-in profiles to run, comma-separated (ignored with --url).
    #[arg(long, value_delimiter = ',', default_value = "default,durable")]
    pub profiles: Vec<String>,
    /// The server (its --profile is replaced by each of --profiles).
    #[command(flatten)]
    pub run: RunArgs,
}

impl ProfileRuns {
    /// The profiles to run (`url` alone with --url: that server, whatever its profile).
    pub fn profiles(&self) -> Result<Vec<String>, String> {
        if self.run.runs == 0 || self.profiles.is_empty() {
            return Err("--runs must be at least 1 and --profiles not empty".into());
        }
        Ok(if self.run.target.mode()? == Mode::Url { vec!["url".into()] } else { self.profiles.clone() })
    }

    /// Calls `f(profile, target, figures)` against a fresh server of each profile, `runs`
    /// times; returns each run's figures.
    pub fn each(
        &self,
        scenario: &str,
        mut f: impl FnMut(&str, &Target, &mut Figures) -> Result<(), String>,
    ) -> Result<Vec<Figures>, String> {
        let mode = self.run.target.mode()?;
        let mut runs = Vec::new();
        for i in 0..self.run.runs {
            let mut figures = Figures::default();
            for profile in self.profiles()? {
                crate::note!("{scenario}: run {}/{}, profile {profile} ({})", i + 1, self.run.runs, mode.name());
                let mut t = self.run.target.clone();
                if mode != Mode::Url {
                    t.profile = profile.clone();
                }
                Target::run(&t, |target| f(&profile, target, &mut figures))?;
            }
            runs.push(figures);
        }
        Ok(runs)
    }
}

/// How the server was started, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Url,
    Spawn,
    InProcess,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Url => "url",
            Mode::Spawn => "spawn",
            Mode::InProcess => "in-process",
        }
    }
}

pub fn chime_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.join("chime");
    bin.is_file().then_some(bin)
}

impl TargetArgs {
    pub fn mode(&self) -> Result<Mode, String> {
        if self.url.is_some() {
            Ok(Mode::Url)
        } else if self.in_process {
            Ok(Mode::InProcess)
        } else if chime_binary().is_some() {
            Ok(Mode::Spawn)
        } else if self.spawn {
            Err("--spawn: no `chime` binary next to this one (build it with `cargo build --release`)".into())
        } else {
            Ok(Mode::InProcess)
        }
    }
}

pub enum Target {
    Url(String),
    Spawned { base: String, child: Child, log: PathBuf, cmd: SpawnCmd, _dir: tempfile::TempDir },
    InProcess { base: String, running: chime::server::Running, rt: tokio::runtime::Runtime, _dir: tempfile::TempDir },
}

/// How a spawned server is started (again, by [`Target::restart`]).
pub struct SpawnCmd {
    port: u16,
    data_dir: PathBuf,
    profile: String,
}

impl SpawnCmd {
    /// Starts `chime` (its stderr appended to `log`) and waits until it is ready.
    fn spawn(&self, base: &str, log: &std::path::Path) -> Result<Child, String> {
        let bin = chime_binary().ok_or("no chime binary")?;
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| e.to_string())?;
        let mut child = Command::new(&bin)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--profile")
            .arg(&self.profile)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        if let Err(e) = wait_ready(base, Some(&mut child)) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{e}; server log:\n{}", std::fs::read_to_string(log).unwrap_or_default()));
        }
        Ok(child)
    }
}

/// Sends SIGTERM to `child` and waits (up to [`STOP_TIMEOUT`]) for a clean exit.
fn terminate(child: &mut Child, log: &std::path::Path) -> Result<(), String> {
    // Not a child that has exited already (a failed restart leaves one): its pid may be reused.
    if child.try_wait().map_err(|e| e.to_string())?.is_none() {
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => {
                return Err(format!(
                    "chime exited with {status}; log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                ))
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("chime did not stop within 60 s of SIGTERM".into());
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Target {
    /// Starts (or connects to) the server and waits until `/readyz` answers 200.
    pub fn start(args: &TargetArgs) -> Result<Target, String> {
        let mode = args.mode()?;
        if let Mode::Url = mode {
            let base = args.url.clone().unwrap_or_default().trim_end_matches('/').to_owned();
            wait_ready(&base, None)?;
            return Ok(Target::Url(base));
        }
        let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
        let dir =
            tempfile::Builder::new().prefix("chime-bench-server-").tempdir_in(parent).map_err(|e| e.to_string())?;
        let data_dir = dir.path().join("data");
        if mode == Mode::Spawn {
            let port = free_port()?;
            let base = format!("http://127.0.0.1:{port}");
            let log = dir.path().join("chime.log");
            let cmd = SpawnCmd { port, data_dir, profile: args.profile.clone() };
            let child = cmd.spawn(&base, &log)?;
            return Ok(Target::Spawned { base, child, log, cmd, _dir: dir });
        }
        let text = BUILTIN_PROFILES
            .iter()
            .find(|(n, _)| *n == args.profile)
            .map(|(_, t)| *t)
            .ok_or_else(|| format!("unknown built-in profile {:?}", args.profile))?;
        let mut config = Config::from_profile_str(text).map_err(|e| format!("profile {}: {e}", args.profile))?;
        config.listen = "127.0.0.1:0".to_owned();
        config.data_dir = data_dir;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("chime-http")
            .build()
            .map_err(|e| e.to_string())?;
        let running = rt
            .block_on(async {
                let r = chime::server::start(&config, Arc::new(SystemClock)).await?;
                r.wait_ready().await;
                Ok::<_, chime::server::ServerError>(r)
            })
            .map_err(|e| format!("start server: {e}"))?;
        let base = format!("http://{}", running.addr);
        wait_ready(&base, None)?;
        Ok(Target::InProcess { base, running, rt, _dir: dir })
    }

    pub fn base(&self) -> &str {
        match self {
            Target::Url(b) => b,
            Target::Spawned { base, .. } | Target::InProcess { base, .. } => base,
        }
    }

    /// The spawned server's log so far (its stderr at `RUST_LOG=warn`); `None` otherwise.
    pub fn server_log(&self) -> Option<String> {
        match self {
            Target::Spawned { log, .. } => std::fs::read_to_string(log).ok(),
            _ => None,
        }
    }

    /// The data directory of a server this tool started.
    pub fn data_dir(&self) -> Option<PathBuf> {
        match self {
            Target::Url(_) => None,
            Target::Spawned { _dir, .. } | Target::InProcess { _dir, .. } => Some(_dir.path().join("data")),
        }
    }

    /// The server's process id when it runs apart from this process.
    pub fn server_pid(&self) -> Option<u32> {
        match self {
            Target::Spawned { child, .. } => Some(child.id()),
            _ => None,
        }
    }

    /// Starts a target, runs `f` against it and stops it, whether `f` succeeded or not. Returns
    /// `f`'s result and how long the stop took; `f`'s error wins over the stop's.
    pub fn run<T>(
        args: &TargetArgs,
        f: impl FnOnce(&mut Target) -> Result<T, String>,
    ) -> Result<(T, Duration), String> {
        let mut target = Target::start(args)?;
        let result = f(&mut target);
        let t0 = Instant::now();
        let stopped = target.stop();
        let stop_time = t0.elapsed();
        let r = result?;
        stopped?;
        Ok((r, stop_time))
    }

    /// Stops a spawned server (SIGTERM, a clean exit) and starts it again on the same data
    /// directory and port; returns how long the stop took and how long until `/readyz` answered
    /// 200 again (recovery included).
    pub fn restart(&mut self) -> Result<(Duration, Duration), String> {
        let Target::Spawned { base, child, log, cmd, .. } = self else {
            return Err("only a server this tool spawned can be restarted".into());
        };
        let t0 = Instant::now();
        terminate(child, log)?;
        let stopped = t0.elapsed();
        let t1 = Instant::now();
        *child = cmd.spawn(base, log)?;
        Ok((stopped, t1.elapsed()))
    }

    /// Kills a spawned server (SIGKILL: a crash, no final flush or checkpoint), optionally
    /// empties the page cache (what a power cut leaves: every read comes from the disk), and
    /// starts it again on the same data directory and port. Returns how long until `/readyz`
    /// answered 200 again, and whether the page cache could be dropped (needs root).
    pub fn restart_after_kill(&mut self, drop_caches: bool) -> Result<(Duration, bool), String> {
        let Target::Spawned { base, child, log, cmd, .. } = self else {
            return Err("only a server this tool spawned can be killed and restarted".into());
        };
        child.kill().map_err(|e| format!("SIGKILL: {e}"))?;
        child.wait().map_err(|e| format!("wait after SIGKILL: {e}"))?;
        let dropped = drop_caches && {
            let _ = Command::new("sync").status();
            std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
        };
        let t1 = Instant::now();
        *child = cmd.spawn(base, log)?;
        Ok((t1.elapsed(), dropped))
    }

    /// Stops a server this tool started (SIGTERM for a child, then waits for a clean exit).
    pub fn stop(self) -> Result<(), String> {
        match self {
            Target::Url(_) => Ok(()),
            Target::Spawned { mut child, log, .. } => terminate(&mut child, &log),
            Target::InProcess { running, rt, .. } => {
                rt.block_on(running.stop()).map_err(|e| format!("stop server: {e}"))
            }
        }
    }
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Polls `GET {base}/readyz` with a blocking connection until it answers 200.
fn wait_ready(base: &str, mut child: Option<&mut Child>) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let client = crate::http::client(1)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(c) = child.as_deref_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!("chime exited during start-up with {status}"));
            }
        }
        let ok = rt.block_on(async {
            matches!(client.get(format!("{base}/readyz")).send().await, Ok(r) if r.status().is_success())
        });
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{base}/readyz did not answer 200 within {READY_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
