//! Supervised member processes: started with an environment, signalled by PID, every wait
//! bounded, and killed when dropped.
//!
//! A [`MemberProcess`] runs one program (the demo's `member` mode in the chaos runs). Its
//! standard output is read line by line: lines that parse as a [`Record`] are kept with the
//! process's history, anything else is kept as text for diagnostics (the last
//! [`KEPT_TEXT_LINES`] lines of standard output and standard error together).
//!
//! Every signal is sent with `kill(2)` to the PID this module started, and only while the child
//! has not been reaped, so a reused PID is never signalled. [`MemberProcess::kill`],
//! [`MemberProcess::pause`] and [`MemberProcess::resume`] return when the signal was sent, on
//! [`mono_ns`]'s clock, which is the clock the members record their own history on.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::mono_ns;
use super::record::{Record, Stamped};

/// How many lines of text (not records) each process keeps for diagnostics.
pub const KEPT_TEXT_LINES: usize = 200;

/// How long a killed process may take to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of process supervision.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A signal could not be sent.
    #[error("cannot send signal {signal} to process {pid}: {source}")]
    Signal {
        /// The PID.
        pid: u32,
        /// The signal number.
        signal: i32,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The process has exited already (or was never started).
    #[error("process {0} is not running")]
    NotRunning(String),
}

/// How to start one member.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The member's id (for messages and records).
    pub id: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment (nothing is inherited but `PATH`).
    pub env: Vec<(String, String)>,
}

/// What a process has printed: its records, and its other lines.
#[derive(Debug, Default)]
pub struct Output {
    /// Every record, in the order printed.
    pub records: Vec<Stamped>,
    /// The last lines that were not records (standard output and standard error).
    pub text: VecDeque<String>,
    /// How many standard-output lines looked like records (`{...}`) but did not parse.
    pub malformed: u64,
}

impl Output {
    fn text_line(&mut self, line: String) {
        if self.text.len() == KEPT_TEXT_LINES {
            self.text.pop_front();
        }
        self.text.push_back(line);
    }
}

/// Where a supervised process stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Running.
    Running,
    /// Stopped by SIGSTOP at this time.
    Paused {
        /// When the SIGSTOP was sent.
        since: u64,
    },
    /// Exited or killed, at this time (reaped).
    Exited {
        /// When it was killed, or seen to have exited.
        at: u64,
    },
}

/// One supervised process.
#[derive(Debug)]
pub struct MemberProcess {
    spec: Spec,
    child: Option<Child>,
    pid: u32,
    started_at: u64,
    state: State,
    output: Arc<Mutex<Output>>,
    readers: Vec<JoinHandle<()>>,
}

impl MemberProcess {
    /// Starts `spec`; its records go to this process's [`Output`].
    pub fn spawn(spec: Spec) -> Result<Self, ProcessError> {
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A harness that dies must not leave members behind.
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|source| ProcessError::Spawn {
            program: spec.program.display().to_string(),
            source,
        })?;
        let started_at = mono_ns();
        let pid = child.id().unwrap_or(0);
        let output = Arc::new(Mutex::new(Output::default()));
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            let output = output.clone();
            let member = spec.id.clone();
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut out = lock(&output);
                    if line.starts_with('{') {
                        match serde_json::from_str::<Record>(&line) {
                            Ok(record) => out.records.push(Stamped {
                                member: member.clone(),
                                pid,
                                record,
                            }),
                            Err(_) => {
                                out.malformed += 1;
                                out.text_line(line);
                            }
                        }
                    } else {
                        out.text_line(line);
                    }
                }
            }));
        }
        if let Some(stderr) = child.stderr.take() {
            let output = output.clone();
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    lock(&output).text_line(line);
                }
            }));
        }
        Ok(Self {
            spec,
            child: Some(child),
            pid,
            started_at,
            state: State::Running,
            output,
            readers,
        })
    }

    /// The member's id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// How it was started.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// When it was started ([`mono_ns`]).
    pub fn started_at(&self) -> u64 {
        self.started_at
    }

    /// Where it stands (an exit the supervisor has not looked at yet shows at the next
    /// [`MemberProcess::poll_exit`]).
    pub fn state(&self) -> State {
        self.state
    }

    /// When the process exited (or was killed), if it has.
    pub fn exited_at(&self) -> Option<u64> {
        match self.state {
            State::Exited { at } => Some(at),
            _ => None,
        }
    }

    /// Notices an exit that happened by itself; returns the state.
    pub fn poll_exit(&mut self) -> State {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(_)) = child.try_wait()
        {
            self.child = None;
            self.state = State::Exited { at: mono_ns() };
        }
        self.state
    }

    /// Sends `signal` to the process, if it has not been reaped (its PID is still ours).
    fn signal(&self, signal: i32) -> Result<u64, ProcessError> {
        // PID 0 (unknown) would signal this whole process group: never.
        if self.child.is_none() || self.pid == 0 {
            return Err(ProcessError::NotRunning(self.spec.id.clone()));
        }
        let pid = libc::pid_t::try_from(self.pid)
            .map_err(|_| ProcessError::NotRunning(self.spec.id.clone()))?;
        // The time is taken before the signal: the process cannot act after the signal lands,
        // and it may land at once.
        let at = mono_ns();
        // SAFETY: kill(2) on a child we started and have not reaped (so the PID is not reused);
        // it has no memory effects on this process.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            return Err(ProcessError::Signal {
                pid: self.pid,
                signal,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(at)
    }

    /// SIGKILL, then reaps the process (bounded). Returns when the signal was sent.
    pub async fn kill(&mut self) -> Result<u64, ProcessError> {
        let at = self.signal(libc::SIGKILL)?;
        self.reap().await;
        self.state = State::Exited { at };
        Ok(at)
    }

    /// SIGSTOP. Returns when the signal was sent.
    pub fn pause(&mut self) -> Result<u64, ProcessError> {
        let at = self.signal(libc::SIGSTOP)?;
        self.state = State::Paused { since: at };
        Ok(at)
    }

    /// SIGCONT. Returns when the signal was sent.
    pub fn resume(&mut self) -> Result<u64, ProcessError> {
        let at = self.signal(libc::SIGCONT)?;
        self.state = State::Running;
        Ok(at)
    }

    /// SIGTERM, then waits at most `grace` for the exit, then SIGKILL. Returns whether the
    /// process exited by itself within the grace, and its exit status when it did.
    pub async fn terminate(&mut self, grace: Duration) -> Result<Option<i32>, ProcessError> {
        if matches!(self.state, State::Paused { .. }) {
            self.resume()?;
        }
        self.signal(libc::SIGTERM)?;
        let status = match self.child.as_mut() {
            Some(child) => timeout(grace, child.wait()).await,
            None => return Err(ProcessError::NotRunning(self.spec.id.clone())),
        };
        match status {
            Ok(Ok(status)) => {
                self.child = None;
                self.state = State::Exited { at: mono_ns() };
                self.drain_output().await;
                Ok(Some(status.code().unwrap_or(-1)))
            }
            _ => {
                self.kill().await?;
                Ok(None)
            }
        }
    }

    async fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = timeout(REAP_TIMEOUT, child.wait()).await;
        }
        self.drain_output().await;
    }

    /// Waits (briefly) for the output readers to reach the end of the pipes, so that every line
    /// printed before the exit is in.
    async fn drain_output(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = timeout(Duration::from_secs(2), reader).await;
        }
    }

    /// The records so far (a copy).
    pub fn records(&self) -> Vec<Stamped> {
        lock(&self.output).records.clone()
    }

    /// How many records it has printed so far.
    pub fn record_count(&self) -> usize {
        lock(&self.output).records.len()
    }

    /// Reads the output under a lock.
    pub fn with_output<T>(&self, f: impl FnOnce(&Output) -> T) -> T {
        f(&lock(&self.output))
    }

    /// The last lines of text it printed, joined.
    pub fn text_tail(&self, lines: usize) -> String {
        let out = lock(&self.output);
        let skip = out.text.len().saturating_sub(lines);
        out.text
            .iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for MemberProcess {
    fn drop(&mut self) {
        // `kill_on_drop` sends SIGKILL (which also ends a stopped process) and tokio reaps it in
        // the background.
        for reader in &self.readers {
            reader.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
