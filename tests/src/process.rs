//! A real `kiln worker` process, for the tests and tools that need one the
//! operating system can signal: the bench, the chaos run and the secrets
//! test (the in-process workers of [`crate::harness::Env`] cover the rest).
//!
//! Its stdout and stderr go, together, to a log file the caller names, so a
//! test can read everything the process printed and a tool can show a tail
//! when it dies. Signals are sent with `kill(2)` through `nix`, not by
//! running the `kill` program, so a failed signal is an error the caller
//! sees rather than a lost exit status. Dropping a `WorkerProcess` that is
//! still running kills it, so a panicking test leaves no worker behind.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
pub use nix::sys::signal::Signal;

/// How often [`WorkerProcess::stop`] looks whether the process ended.
const POLL: Duration = Duration::from_millis(50);

/// A running `kiln worker`.
pub struct WorkerProcess {
    child: Child,
    log: PathBuf,
    /// The exit status, once reaped (a `Child` may be waited for only once).
    exited: Option<ExitStatus>,
}

/// How [`WorkerProcess::stop`] ended the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It had ended by itself before it was asked to.
    Already(ExitStatus),
    /// It ended within the grace time of SIGTERM.
    Terminated(ExitStatus, Duration),
    /// It did not end within the grace time and was SIGKILLed.
    Killed(Duration),
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Already(status) => write!(f, "had already exited ({status})"),
            Self::Terminated(status, took) => {
                write!(f, "stopped by SIGTERM in {took:.2?} ({status})")
            }
            Self::Killed(grace) => write!(f, "did not stop within {grace:?} of SIGTERM; killed"),
        }
    }
}

impl WorkerProcess {
    /// Starts `kiln worker` from `kiln` with `envs` on top of this process's
    /// environment, appending its output to `log` (created if missing: a
    /// restarted worker keeps adding to the same file).
    ///
    /// The metrics address and the OTLP endpoint are removed from the
    /// inherited environment, so a developer's settings cannot make workers
    /// fight over a port or export test spans; `envs` may set them again.
    pub fn spawn<K, V>(
        kiln: &Path,
        envs: impl IntoIterator<Item = (K, V)>,
        log: &Path,
    ) -> anyhow::Result<Self>
    where
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open the worker log {}", log.display()))?;
        let child = Command::new(kiln)
            .arg("worker")
            .env_remove("KILN_METRICS_ADDR")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(envs)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (build it with `cargo build -p kiln-worker --bin kiln`)",
                    kiln.display()
                )
            })?;
        Ok(Self {
            child,
            log: log.to_owned(),
            exited: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file its stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything it printed so far (empty if the log cannot be read).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines it printed.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Sends `signal`. An error means the process is gone (and reaped) or
    /// the signal could not be delivered.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        if let Some(status) = self.exited {
            anyhow::bail!("worker {} has exited ({status})", self.pid());
        }
        let pid = i32::try_from(self.pid()).context("process id out of range")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .with_context(|| format!("cannot send {signal} to worker {pid}"))
    }

    /// Its exit status if it has ended (reaping it), without waiting.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits at most `limit` for it to end by itself.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if start.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILL (as a crash would end it) and reap. False if it had already
    /// ended.
    pub fn kill(&mut self) -> bool {
        if self.exit_status().is_some() {
            return false;
        }
        let sent = self.signal(Signal::SIGKILL).is_ok();
        // After SIGKILL the wait is immediate.
        self.exited = self.child.wait().ok();
        sent
    }

    /// The graceful path: SIGCONT (a stopped process cannot act on
    /// SIGTERM), SIGTERM, up to `grace` to end, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration) -> Stopped {
        if let Some(status) = self.exit_status() {
            return Stopped::Already(status);
        }
        let start = Instant::now();
        // Either may fail only because the process just ended, which the
        // wait below sees.
        let _ = self.signal(Signal::SIGCONT);
        let _ = self.signal(Signal::SIGTERM);
        if let Some(status) = self.wait_exit(grace).await {
            Stopped::Terminated(status, start.elapsed())
        } else {
            self.kill();
            Stopped::Killed(grace)
        }
    }

    /// Waits at most `limit` for it to end by itself, else kills it.
    pub async fn wait_or_kill(&mut self, limit: Duration) -> Option<ExitStatus> {
        let status = self.wait_exit(limit).await;
        if status.is_none() {
            self.kill();
        }
        status
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
