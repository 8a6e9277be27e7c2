//! kaon's custom Mesos executor (the `kaon-executor` binary).
//!
//! It speaks the v1 executor HTTP API to the agent named in its environment,
//! runs each step's command in its own process group with stdout/stderr
//! going to files in the sandbox, relays progress and heartbeats as framework
//! messages, and reports the step's outputs in the terminal status `data`.
//! The step-facing contract is documented in the crate README.

use crate::process::parse_stout_duration;
use crate::recordio::{Decoder, RECORD_BYTES_MAX_DEFAULT};
use crate::types::executor::{self as ex, Call, CallType, Event, EventType};
use crate::types::{B64, Id, Source, TaskInfo, TaskState, TaskStatus};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::mpsc;

mod container;
mod spark;
pub use container::{ContainerSpec, DOCKER_PROGRAM_DEFAULT, container_name};
use container::{
    container_pid, container_spawn_error, docker_program, docker_run_args, remove_container,
    stop_container,
};
pub use spark::{SPARK_POLL_INTERVAL, SPARK_REST_BYTES_MAX};

/// Default cap of the outputs file, in bytes (status `data` travels through
/// the master and the scheduler's log, so it must stay small).
pub const OUTPUTS_BYTES_MAX_DEFAULT: usize = 64 * 1024;
/// Hard cap of the outputs file in bytes, whatever the step spec asks for:
/// the terminal status travels through the agent, the master and the
/// scheduler's event log.
pub const OUTPUTS_BYTES_HARD_MAX: usize = 4 * 1024 * 1024;
/// Default SIGTERM→SIGKILL grace for a killed step.
pub const KILL_GRACE_DEFAULT: Duration = Duration::from_secs(3);
/// Default period of heartbeat framework messages per running step.
pub const HEARTBEAT_DEFAULT: Duration = Duration::from_secs(10);
/// How often the progress file is checked for new lines.
pub const PROGRESS_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Longest progress line kept, in bytes; longer lines are truncated.
pub const PROGRESS_LINE_BYTES_MAX: usize = 4096;
/// Env var naming the file where the step writes its outputs (JSON object).
pub const ENV_OUTPUTS_FILE: &str = "KAON_OUTPUTS_FILE";
/// Env var naming the file where the step appends progress lines.
pub const ENV_PROGRESS_FILE: &str = "KAON_PROGRESS_FILE";
/// Env var carrying the task id to the step.
pub const ENV_TASK_ID: &str = "KAON_TASK_ID";
/// Env var of the executor (set in its `CommandInfo` by the scheduler): it
/// exits after this many milliseconds with no step (default 0: with its
/// last step). One executor runs many steps meanwhile.
pub const ENV_IDLE_MS: &str = "KAON_EXECUTOR_IDLE_MS";
/// Env var every step inherits naming its executor process
/// (`process::identity`): a starting executor kills what an executor of
/// the same framework and agent that is gone left behind.
pub const ENV_EXECUTOR_PROCESS: &str = "KAON_EXECUTOR_PROCESS";

/// What to run, carried as JSON in `TaskInfo.data` of a custom-executor task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StepSpec {
    /// argv to exec directly (argv\[0\] is the program); takes precedence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// Shell command run with `/bin/sh -c` when `argv` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Extra environment for the step.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Cap of the outputs file in bytes (default [`OUTPUTS_BYTES_MAX_DEFAULT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs_bytes_max: Option<usize>,
    /// SIGTERM→SIGKILL grace in seconds (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_grace_seconds: Option<f64>,
    /// Heartbeat message period in seconds (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_seconds: Option<f64>,
    /// Run the step in this container (`kind: container`) through Docker
    /// on the agent, not on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSpec>,
    /// Bytes each of `stdout` and `stderr` keeps (default
    /// [`STEP_LOG_BYTES_MAX_DEFAULT`]): when a file would grow past it, it
    /// becomes `<name>.1` (replacing the one before) and a new file starts,
    /// so a step that prints gigabytes uses at most twice this per stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_bytes_max: Option<u64>,
    /// The step's kind when the executor treats it specially: `spark`
    /// (`argv` is a `spark-submit` command line: the executor watches the
    /// application, see [`crate::spark`]). Other kinds only choose the
    /// interpreter, which is already in `argv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Secrets the step uses, by name: read from the agent's secrets
    /// directory ([`ENV_SECRETS_DIR`]) just before the step starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretRef>,
}

/// A secret a step uses (names only: values never travel through Mesos).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SecretRef {
    /// File name in the secrets directory.
    pub name: String,
    /// Environment variable to put the value in; empty: a file
    /// `$KAON_SECRETS/<name>` of the step's own.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub env: String,
}

/// Executor environment variable: the agent's secrets directory.
pub const ENV_SECRETS_DIR: &str = "KAON_SECRETS_DIR";
/// Step environment variable: the directory of the step's secret files.
pub const ENV_SECRETS: &str = "KAON_SECRETS";
/// The step's secret files, under its sandbox (removed when it ends).
pub const SECRETS_SUBDIR: &str = ".kaon-secrets";
/// Largest secret read, bytes.
pub const SECRET_BYTES_MAX: u64 = 1 << 20;

/// A step's secret environment variables, and its secret files' directory.
type ResolvedSecrets = (Vec<(String, String)>, Option<PathBuf>);

/// Reads the step's secrets from the agent's secrets directory: the
/// environment variables to set, and writes the file secrets (mode 0600
/// in a 0700 directory) under `dir`. Errors name the secret and the
/// directory, never a value.
fn resolve_secrets(secrets: &[SecretRef], dir: &Path) -> Result<ResolvedSecrets, String> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if secrets.is_empty() {
        return Ok((Vec::new(), None));
    }
    let Some(from) = std::env::var_os(ENV_SECRETS_DIR).map(PathBuf::from) else {
        return Err(format!(
            "the step uses secret {:?}, but this agent has no secrets directory \
             (kaon server --secrets-dir, passed to executors as {ENV_SECRETS_DIR})",
            secrets[0].name
        ));
    };
    let mut env = Vec::new();
    let mut files_dir = None;
    for s in secrets {
        let plain = !s.name.is_empty()
            && !s.name.starts_with('.')
            && s.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !plain {
            return Err(format!("secret name {:?} is not a plain file name", s.name));
        }
        let path = from.join(&s.name);
        let len = std::fs::metadata(&path)
            .map_err(|e| format!("secret {:?} not found in {} ({e})", s.name, from.display()))?
            .len();
        if len > SECRET_BYTES_MAX {
            return Err(format!(
                "secret {:?} in {} is {len} bytes, more than {SECRET_BYTES_MAX}",
                s.name,
                from.display()
            ));
        }
        let value = std::fs::read(&path)
            .map_err(|e| format!("secret {:?} in {}: {e}", s.name, from.display()))?;
        if s.env.is_empty() {
            let d = dir.join(SECRETS_SUBDIR);
            if files_dir.is_none() {
                let _ = std::fs::remove_dir_all(&d);
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&d)
                    .map_err(|e| format!("creating {}: {e}", d.display()))?;
                files_dir = Some(d.clone());
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(d.join(&s.name))
                .map_err(|e| format!("writing secret {:?} for the step: {e}", s.name))?;
            f.write_all(&value)
                .map_err(|e| format!("writing secret {:?} for the step: {e}", s.name))?;
        } else {
            let mut text = String::from_utf8(value)
                .map_err(|_| format!("secret {:?} is not UTF-8 text (use it as a file)", s.name))?;
            // A file written by `echo` ends with a newline nobody means.
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            env.push((s.env.clone(), text));
        }
    }
    Ok((env, files_dir))
}

/// [`StepSpec::kind`] of a Spark step.
pub const KIND_SPARK: &str = "spark";

impl StepSpec {
    /// Whether the executor watches this step as a Spark application: a
    /// `kind: spark` step whose program is `spark-submit`.
    pub fn is_spark(&self) -> bool {
        self.kind.as_deref() == Some(KIND_SPARK)
            && self
                .argv
                .first()
                .is_some_and(|p| p.rsplit('/').next() == Some("spark-submit"))
    }
}

/// How long the executor waits for one Docker CLI call it needs an answer
/// from (`docker ps`, `docker inspect`) before it goes on without it.
pub const DOCKER_CALL_WAIT: Duration = Duration::from_secs(10);

/// How often a step's resident memory is checked against its `mem`.
pub const MEMORY_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// How often the memory check looks through all of `/proc` for the
/// group's processes; in between it re-reads only the ones it knows (a
/// full scan per poll per executor is too much with hundreds of steps).
pub const MEMORY_RESCAN_INTERVAL: Duration = Duration::from_secs(5);

/// `(process group, resident pages)` of process `pid`, from
/// `/proc/<pid>/stat` (fields 5 and 24; `comm` may hold spaces and
/// parentheses, so fields are counted from its closing one).
fn stat_group_rss(pid: &str) -> Option<(i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(2)?.parse().ok()?, f.get(21)?.parse().ok()?))
}

fn page_bytes() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64
}

/// The processes of each of `groups` (one scan of `/proc` for all).
pub fn groups_members(groups: &BTreeSet<i32>) -> BTreeMap<i32, Vec<String>> {
    let mut out: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for pid in dir
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
    {
        if let Some((g, _)) = stat_group_rss(&pid)
            && groups.contains(&g)
        {
            out.entry(g).or_default().push(pid);
        }
    }
    out
}

/// Resident memory of `members` still in group `pgid`, bytes; drops the
/// ones that are gone or left it.
pub fn members_rss_bytes(pgid: i32, members: &mut Vec<String>) -> u64 {
    let mut pages = 0;
    members.retain(|pid| match stat_group_rss(pid) {
        Some((g, rss)) if g == pgid => {
            pages += rss;
            true
        }
        _ => false,
    });
    pages * page_bytes()
}

/// Default of [`StepSpec::log_bytes_max`]: 256 MiB per stream and file.
pub const STEP_LOG_BYTES_MAX_DEFAULT: u64 = 256 * 1024 * 1024;

/// How long a finished step's output may take to drain from its pipes
/// into the log files before the terminal update goes out anyway.
pub const LOG_DRAIN_WAIT: Duration = Duration::from_secs(2);

/// Copies a step's stdout or stderr into `path` (appending), rotating to
/// `<path>.1` whenever the file would pass `max` bytes. Reads until EOF
/// (every holder of the pipe gone), so the step never blocks on it.
async fn copy_log(mut from: impl tokio::io::AsyncRead + Unpin, path: PathBuf, max: u64) {
    use std::io::Write;
    use tokio::io::AsyncReadExt;
    let max = max.max(1);
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
    };
    let Ok(mut file) = open(&path) else { return };
    let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = vec![0u8; (64 * 1024).min(max as usize)];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if size > 0 && size + n as u64 > max {
            let mut rotated = path.clone().into_os_string();
            rotated.push(".1");
            let _ = std::fs::rename(&path, &rotated);
            match open(&path) {
                Ok(f) => file = f,
                Err(_) => return,
            }
            size = 0;
        }
        if file.write_all(&buf[..n]).is_err() {
            // Disk full or gone: keep draining so the step is not blocked.
            continue;
        }
        size += n as u64;
    }
}

/// One step's memory limit, as the executor's poller checks it.
struct MemoryWatch {
    /// A container step's container (its process group is found once it runs).
    container: Option<String>,
    /// The process group measured.
    group: Option<i32>,
    /// The task's `mem`, bytes.
    limit_bytes: u64,
    /// The group's processes, from the last scan.
    members: Vec<String>,
}

/// The steps whose memory the executor's one poller checks, by task id.
type MemoryWatches = std::sync::Arc<std::sync::Mutex<BTreeMap<String, MemoryWatch>>>;

/// The executor's memory poller: every [`MEMORY_POLL_INTERVAL`] it sums
/// each watched step's resident memory (re-reading the processes it
/// knows; one scan of `/proc` for all steps every
/// [`MEMORY_RESCAN_INTERVAL`], so hundreds of steps cost one scan); a step
/// over its limit is reported once and no longer watched (it is then
/// killed and fails with `REASON_CONTAINER_LIMITATION_MEMORY`, as Mesos'
/// memory isolator reports it). Processes that leave their group
/// (setsid) escape it: cgroups would not let them. Ends with the executor.
fn watch_memory(watches: MemoryWatches, tx: mpsc::UnboundedSender<Internal>) {
    tokio::spawn(async move {
        let mut scanned: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(MEMORY_POLL_INTERVAL).await;
            if tx.is_closed() {
                return;
            }
            // Containers not yet resolved to a process group.
            let unresolved: Vec<(String, String)> = match watches.lock() {
                Ok(w) => w
                    .iter()
                    .filter(|(_, w)| w.group.is_none())
                    .filter_map(|(t, w)| Some((t.clone(), w.container.clone()?)))
                    .collect(),
                Err(_) => return,
            };
            let mut resolved = Vec::new();
            for (task, name) in unresolved {
                // The container's first process, once it runs: its
                // process group holds the step's processes.
                // Bounded, so a slow daemon does not hold up every step's check.
                if let Some(g) = tokio::time::timeout(DOCKER_CALL_WAIT, container_pid(&name))
                    .await
                    .ok()
                    .flatten()
                    // SAFETY: getpgid has no memory-safety preconditions.
                    .map(|pid| unsafe { libc::getpgid(pid) })
                    .filter(|g| *g > 0)
                {
                    resolved.push((task, g));
                }
            }
            let Ok(mut w) = watches.lock() else { return };
            for (task, g) in resolved {
                if let Some(x) = w.get_mut(&task) {
                    x.group = Some(g);
                }
            }
            if scanned.is_none_or(|t| t.elapsed() >= MEMORY_RESCAN_INTERVAL) {
                let groups: BTreeSet<i32> = w.values().filter_map(|x| x.group).collect();
                let mut found = groups_members(&groups);
                for x in w.values_mut() {
                    if let Some(g) = x.group {
                        x.members = found.remove(&g).unwrap_or_default();
                    }
                }
                scanned = Some(tokio::time::Instant::now());
            }
            let mut over = Vec::new();
            for (task, x) in w.iter_mut() {
                let Some(g) = x.group else { continue };
                let used = members_rss_bytes(g, &mut x.members);
                if used > x.limit_bytes {
                    over.push((task.clone(), used));
                }
            }
            for (task_id, used_bytes) in over {
                w.remove(&task_id);
                let _ = tx.send(Internal::MemoryExceeded {
                    task_id,
                    used_bytes,
                });
            }
        }
    });
}

/// Kills the processes an executor of this framework on this agent that
/// is gone left behind (its steps carry [`ENV_EXECUTOR_PROCESS`]): on a
/// Mesos agent with cgroups its container's destruction did it; without
/// them (or after an agent crash) they would run on beside the retries.
fn sweep_orphans(env: &ExecutorEnv) -> usize {
    let same = |e: &[Vec<u8>], var: &str, want: Option<&str>| {
        want.is_some_and(|w| crate::process::env_value(e, var) == Some(w.as_bytes()))
    };
    crate::process::signal_matching(libc::SIGKILL, |e| {
        let Some(owner) = crate::process::env_value(e, ENV_EXECUTOR_PROCESS) else {
            return false;
        };
        same(e, "MESOS_FRAMEWORK_ID", Some(&env.framework_id))
            && same(e, "MESOS_SLAVE_ID", env.agent_id.as_deref())
            && !crate::process::is_alive(&String::from_utf8_lossy(owner))
    })
}

/// JSON put in `TaskStatus.data` of the terminal update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    /// Exit code, when the step exited normally.
    pub exit_code: Option<i32>,
    /// Signal number, when the step was killed by a signal.
    pub signal: Option<i32>,
    /// The outputs object (absent on failure to read it).
    pub outputs: Option<serde_json::Value>,
    /// Machine-readable cause: `exited`, `nonzero_exit`, `signaled`,
    /// `killed`, `outputs_too_large`, `outputs_invalid`, `spawn_failed`,
    /// `bad_step_spec`, `memory_limit`, `container_failed`, and
    /// [`REASON_PLATFORM_FAILURE`].
    pub reason: String,
    /// Human-readable detail on failure.
    pub error: Option<String>,
}

/// [`StepResult::reason`] of a step that failed through no fault of its
/// own (a Spark executor lost, a shuffle fetch failure, a driver killed by
/// someone else): the scheduler counts it against the platform budget.
/// The Mesos `reason` of such an update stays unset (an executor may only
/// send Mesos' own reasons), so it travels in the result.
pub const REASON_PLATFORM_FAILURE: &str = "platform_failure";

/// Framework message payloads (JSON) sent to the scheduler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExecutorMessage {
    /// The step is alive.
    Heartbeat {
        /// Task.
        task_id: String,
    },
    /// Percent complete reported by the step (0–100).
    Progress {
        /// Task.
        task_id: String,
        /// Percent.
        percent: f64,
    },
    /// Free-text status reported by the step.
    Status {
        /// Task.
        task_id: String,
        /// Text.
        text: String,
    },
}

/// Why the executor could not run.
#[derive(Debug, Error)]
pub enum ExecutorError {
    /// A required environment variable is missing.
    #[error("environment variable {0} is not set; kaon-executor must be started by a Mesos agent")]
    MissingEnv(&'static str),
    /// The agent refused or could not be reached.
    #[error("agent {endpoint}: {detail}")]
    Agent {
        /// Agent address.
        endpoint: String,
        /// What happened.
        detail: String,
    },
}

/// The executor's view of its environment (set by the agent).
#[derive(Debug, Clone)]
pub struct ExecutorEnv {
    /// `http://<MESOS_AGENT_ENDPOINT>/api/v1/executor`.
    pub agent_url: String,
    /// Framework id.
    pub framework_id: String,
    /// Executor id.
    pub executor_id: String,
    /// Sandbox directory.
    pub sandbox: PathBuf,
    /// Whether the framework checkpoints (then reconnect after agent loss).
    pub checkpoint: bool,
    /// Total time to keep trying to reconnect (MESOS_RECOVERY_TIMEOUT).
    pub recovery_timeout: Duration,
    /// Max backoff between reconnects (MESOS_SUBSCRIPTION_BACKOFF_MAX).
    pub subscription_backoff_max: Duration,
    /// Grace for SHUTDOWN (MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD).
    pub shutdown_grace: Duration,
    /// The agent's id (MESOS_SLAVE_ID), if set.
    pub agent_id: Option<String>,
    /// How long to stay without a step before exiting ([`ENV_IDLE_MS`]).
    pub idle: Duration,
}

impl ExecutorEnv {
    /// Reads the Mesos executor environment.
    pub fn from_env() -> Result<Self, ExecutorError> {
        let get = |k: &'static str| std::env::var(k).map_err(|_| ExecutorError::MissingEnv(k));
        let dur = |k: &str, d: Duration| {
            std::env::var(k)
                .ok()
                .and_then(|v| parse_stout_duration(&v))
                .unwrap_or(d)
        };
        Ok(ExecutorEnv {
            agent_url: format!("http://{}/api/v1/executor", get("MESOS_AGENT_ENDPOINT")?),
            framework_id: get("MESOS_FRAMEWORK_ID")?,
            executor_id: get("MESOS_EXECUTOR_ID")?,
            sandbox: PathBuf::from(get("MESOS_DIRECTORY")?),
            checkpoint: std::env::var("MESOS_CHECKPOINT").is_ok_and(|v| v == "1"),
            recovery_timeout: dur("MESOS_RECOVERY_TIMEOUT", Duration::from_secs(15 * 60)),
            subscription_backoff_max: dur("MESOS_SUBSCRIPTION_BACKOFF_MAX", Duration::from_secs(2)),
            shutdown_grace: dur(
                "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD",
                Duration::from_secs(5),
            ),
            agent_id: std::env::var("MESOS_SLAVE_ID").ok(),
            idle: std::env::var(ENV_IDLE_MS)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_millis)
                .unwrap_or(Duration::ZERO),
        })
    }
}

/// Reads and bounds the outputs file. `Ok(None)` when the step wrote none.
pub fn read_outputs(
    path: &Path,
    outputs_bytes_max: usize,
) -> Result<Option<serde_json::Value>, (String, String)> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err((
                "outputs_invalid".into(),
                format!("cannot stat outputs file {}: {e}", path.display()),
            ));
        }
    };
    if meta.len() > outputs_bytes_max as u64 {
        return Err((
            "outputs_too_large".into(),
            format!(
                "outputs file is {} bytes, over the limit of {outputs_bytes_max} bytes",
                meta.len()
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        (
            "outputs_invalid".into(),
            format!("cannot read outputs file: {e}"),
        )
    })?;
    if bytes.len() > outputs_bytes_max {
        return Err((
            "outputs_too_large".into(),
            format!(
                "outputs file grew to {} bytes, over the limit of {outputs_bytes_max} bytes",
                bytes.len()
            ),
        ));
    }
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(Some(v)),
        Ok(_) => Err((
            "outputs_invalid".into(),
            "outputs file must hold a JSON object".into(),
        )),
        Err(e) => Err((
            "outputs_invalid".into(),
            format!("outputs file is not valid JSON: {e}"),
        )),
    }
}

/// Parses one progress line (`percent 42`, `status some text`).
pub fn parse_progress_line(task_id: &str, line: &str) -> Option<ExecutorMessage> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    match word {
        "percent" => {
            let p: f64 = rest.trim().parse().ok()?;
            (p.is_finite() && (0.0..=100.0).contains(&p)).then(|| ExecutorMessage::Progress {
                task_id: task_id.into(),
                percent: p,
            })
        }
        "status" => Some(ExecutorMessage::Status {
            task_id: task_id.into(),
            text: rest.to_owned(),
        }),
        _ => None,
    }
}

/// Incremental reader of a step's progress file (shared between the poller
/// and the final drain when the step exits).
struct ProgressReader {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl ProgressReader {
    fn poll(&mut self, task_id: &str) -> Vec<ExecutorMessage> {
        let mut out = Vec::new();
        let Ok(bytes) = read_from(&self.path, self.offset) else {
            return out;
        };
        self.offset += bytes.len() as u64;
        for b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                match parse_progress_line(task_id, &line) {
                    Some(m) => out.push(m),
                    None => {
                        tracing::info!(task = %task_id, %line, "unrecognised progress line ignored")
                    }
                }
            } else if self.partial.len() < PROGRESS_LINE_BYTES_MAX {
                self.partial.push(b);
            }
        }
        out
    }
}

type SharedProgress = std::sync::Arc<std::sync::Mutex<ProgressReader>>;

enum Internal {
    Exited {
        task_id: String,
        status: Option<std::process::ExitStatus>,
    },
    Message(ExecutorMessage),
    /// The step's process group uses more memory than the task asked for.
    MemoryExceeded {
        task_id: String,
        used_bytes: u64,
    },
}

struct Running {
    /// Plain command task (no step contract): Mesos command-executor statuses.
    command_mode: bool,
    pgid: i32,
    progress: SharedProgress,
    killed: bool,
    spec: StepSpec,
    dir: PathBuf,
    /// The task's memory (`mem` of its resources), bytes.
    mem_limit_bytes: Option<u64>,
    /// Set when the step was stopped for using more: the most it used.
    memory_exceeded: Option<u64>,
    /// A Spark step: what its watcher learnt.
    spark: Option<spark::SharedSpark>,
}

struct Executor {
    env: ExecutorEnv,
    client: reqwest::Client,
    tasks: BTreeMap<String, Running>,
    /// Launched tasks with no acknowledged update yet.
    unacked_tasks: BTreeMap<String, TaskInfo>,
    /// Updates sent but not ACKNOWLEDGED, in send order.
    unacked_updates: Vec<TaskStatus>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    launched_any: bool,
    shutting_down: bool,
    /// The framework understands TASK_KILLING (from SUBSCRIBED).
    killing_state: bool,
    /// This process's [`crate::process::identity`], given to its steps.
    identity: String,
    /// The memory limits the one poller checks.
    memory: MemoryWatches,
    /// Containers an executor that is gone left behind were removed
    /// (done before the first container step).
    containers_swept: bool,
}

/// Runs the executor until it is shut down or its work is done. Returns the
/// process exit code.
pub async fn run(env: ExecutorEnv) -> Result<i32, ExecutorError> {
    let (internal_tx, mut internal_rx) = mpsc::unbounded_channel();
    let identity = crate::process::identity(std::process::id() as i32).unwrap_or_default();
    let swept = sweep_orphans(&env);
    if swept > 0 {
        tracing::warn!(
            swept,
            "killed processes left behind by an executor of this framework that is gone"
        );
    }
    let memory = MemoryWatches::default();
    watch_memory(memory.clone(), internal_tx.clone());
    let mut exe = Executor {
        env,
        client: reqwest::Client::new(),
        tasks: BTreeMap::new(),
        unacked_tasks: BTreeMap::new(),
        unacked_updates: Vec::new(),
        internal_tx,
        launched_any: false,
        shutting_down: false,
        killing_state: false,
        identity,
        memory,
        containers_swept: false,
    };
    let mut idle_since: Option<tokio::time::Instant> = None;
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut disconnected_since: Option<Instant> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        let resp = exe.subscribe().await;
        let mut resp = match resp {
            Ok(r) => {
                disconnected_since = None;
                backoff = Duration::from_millis(50);
                r
            }
            Err(e) => {
                let since = *disconnected_since.get_or_insert_with(Instant::now);
                if !exe.env.checkpoint || since.elapsed() > exe.env.recovery_timeout {
                    exe.kill_all(Duration::ZERO);
                    return Err(e);
                }
                tracing::warn!(error = %e, "agent unreachable; retrying subscription");
                // Keep handling step exits and progress while the agent is
                // away; updates that cannot be sent stay unacknowledged and
                // travel in the next SUBSCRIBE.
                let pause = tokio::time::sleep(backoff);
                tokio::pin!(pause);
                loop {
                    tokio::select! {
                        _ = &mut pause => break,
                        Some(msg) = internal_rx.recv() => exe.on_internal(msg).await,
                    }
                }
                backoff = (backoff * 2).min(exe.env.subscription_backoff_max);
                continue;
            }
        };
        let mut decoder = Decoder::new(RECORD_BYTES_MAX_DEFAULT);
        let stream_end = loop {
            tokio::select! {
                chunk = resp.chunk() => {
                    let chunk = match chunk {
                        Ok(Some(c)) => c,
                        Ok(None) => break "agent closed the stream".to_string(),
                        Err(e) => break format!("stream read failed: {e}"),
                    };
                    let records = match decoder.feed(&chunk) {
                        Ok(r) => r,
                        Err(e) => break e.to_string(),
                    };
                    for r in records {
                        match serde_json::from_slice::<Event>(&r) {
                            Ok(ev) => exe.on_event(ev).await,
                            Err(e) => tracing::warn!(error = %e, "undecodable executor event ignored"),
                        }
                    }
                }
                Some(msg) = internal_rx.recv() => exe.on_internal(msg).await,
                _ = async { match sigterm.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {
                    tracing::info!("SIGTERM: shutting down");
                    exe.shutdown();
                }
                _ = tokio::time::sleep_until(idle_since.map(|t| t + exe.env.idle).unwrap_or_else(tokio::time::Instant::now)), if idle_since.is_some() => {
                    tracing::info!(idle = ?exe.env.idle, "no step for the idle time: exiting");
                    return Ok(0);
                }
            }
            if exe.done() {
                if exe.shutting_down || exe.env.idle.is_zero() {
                    return Ok(0);
                }
                idle_since.get_or_insert_with(tokio::time::Instant::now);
            } else {
                idle_since = None;
            }
        };
        tracing::warn!(reason = %stream_end, "lost the agent");
        if !exe.env.checkpoint {
            exe.kill_all(Duration::ZERO);
            return Err(ExecutorError::Agent {
                endpoint: exe.env.agent_url.clone(),
                detail: stream_end,
            });
        }
        disconnected_since.get_or_insert_with(Instant::now);
    }
}

impl Executor {
    /// Labels of a container step naming this executor process, its
    /// framework and agent: a later executor removes the containers one
    /// that is gone left behind (see `container::sweep_orphans`).
    fn owner_labels(&self) -> Vec<(&'static str, String)> {
        vec![
            (container::LABEL_EXECUTOR, self.identity.clone()),
            (container::LABEL_FRAMEWORK, self.env.framework_id.clone()),
            (
                container::LABEL_AGENT,
                self.env.agent_id.clone().unwrap_or_default(),
            ),
        ]
    }

    fn done(&self) -> bool {
        (self.launched_any || self.shutting_down)
            && self.tasks.is_empty()
            && self.unacked_updates.is_empty()
    }

    fn call(&self, kind: CallType) -> Call {
        Call {
            executor_id: Id::new(&self.env.executor_id),
            framework_id: Id::new(&self.env.framework_id),
            kind,
            subscribe: None,
            update: None,
            message: None,
        }
    }

    async fn post(&self, call: &Call) -> Result<reqwest::Response, ExecutorError> {
        let err = |detail: String| ExecutorError::Agent {
            endpoint: self.env.agent_url.clone(),
            detail,
        };
        let resp = self
            .client
            .post(&self.env.agent_url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .body(serde_json::to_vec(call).unwrap_or_default())
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        if !resp.status().is_success() {
            let status = resp.status();
            return Err(err(format!(
                "{status}: {}",
                resp.text().await.unwrap_or_default()
            )));
        }
        Ok(resp)
    }

    async fn subscribe(&self) -> Result<reqwest::Response, ExecutorError> {
        let mut call = self.call(CallType::Subscribe);
        call.subscribe = Some(ex::Subscribe {
            unacknowledged_tasks: self.unacked_tasks.values().cloned().collect(),
            unacknowledged_updates: self
                .unacked_updates
                .iter()
                .map(|s| ex::UnackedUpdate { status: s.clone() })
                .collect(),
        });
        self.post(&call).await
    }

    async fn send_update(
        &mut self,
        task_id: &str,
        state: TaskState,
        message: Option<String>,
        data: Option<Vec<u8>>,
    ) {
        self.send_update_with_reason(task_id, state, None, message, data)
            .await;
    }

    async fn send_update_with_reason(
        &mut self,
        task_id: &str,
        state: TaskState,
        reason: Option<&str>,
        message: Option<String>,
        data: Option<Vec<u8>>,
    ) {
        let mut status = TaskStatus::new(Id::new(task_id), state);
        status.reason = reason.map(String::from);
        status.source = Some(Source::Executor);
        status.executor_id = Some(Id::new(&self.env.executor_id));
        status.message = message;
        status.data = data.map(B64);
        status.uuid = Some(B64(uuid::Uuid::new_v4().as_bytes().to_vec()));
        status.timestamp = Some(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        );
        self.unacked_updates.push(status.clone());
        let mut call = self.call(CallType::Update);
        call.update = Some(ex::Update { status });
        if let Err(e) = self.post(&call).await {
            // Kept in unacked_updates; resent with the next SUBSCRIBE.
            tracing::warn!(error = %e, task = task_id, "status update not delivered yet");
        }
    }

    async fn send_message(&self, msg: &ExecutorMessage) {
        let mut call = self.call(CallType::Message);
        call.message = Some(ex::Message {
            data: B64(serde_json::to_vec(msg).unwrap_or_default()),
        });
        if let Err(e) = self.post(&call).await {
            tracing::debug!(error = %e, "framework message dropped");
        }
    }

    async fn on_event(&mut self, ev: Event) {
        match ev.kind {
            EventType::Subscribed => {
                if let Some(sub) = ev.subscribed {
                    self.killing_state = sub.framework_info.has_capability("TASK_KILLING_STATE");
                }
                tracing::info!("subscribed to agent");
            }
            EventType::Launch => {
                if let Some(l) = ev.launch {
                    self.launch(l.task).await;
                }
            }
            EventType::Kill => {
                if let Some(k) = ev.kill {
                    let grace = k
                        .kill_policy
                        .and_then(|p| p.grace_period)
                        .map(|g| g.to_std());
                    let first = self.tasks.get(&k.task_id.value).is_some_and(|t| !t.killed);
                    self.kill(&k.task_id.value, grace);
                    if first && self.killing_state {
                        self.send_update(&k.task_id.value, TaskState::Killing, None, None)
                            .await;
                    }
                }
            }
            EventType::Acknowledged => {
                if let Some(a) = ev.acknowledged {
                    self.unacked_updates
                        .retain(|s| s.uuid.as_ref() != Some(&a.uuid));
                    self.unacked_tasks.remove(&a.task_id.value);
                }
            }
            EventType::Message => tracing::info!("framework message from the scheduler ignored"),
            EventType::Shutdown => self.shutdown(),
            EventType::Error => {
                tracing::warn!(message = ?ev.error.map(|e| e.message), "agent reported an error")
            }
            EventType::Heartbeat => {}
            other => tracing::info!(event = ?other, "ignoring executor event type"),
        }
    }

    fn shutdown(&mut self) {
        self.shutting_down = true;
        self.kill_all(
            self.env
                .shutdown_grace
                .saturating_sub(Duration::from_millis(500)),
        );
    }

    fn kill_all(&mut self, grace: Duration) {
        let ids: Vec<String> = self.tasks.keys().cloned().collect();
        for id in ids {
            self.kill(&id, Some(grace));
        }
    }

    fn kill(&mut self, task_id: &str, grace: Option<Duration>) {
        let Some(t) = self.tasks.get_mut(task_id) else {
            return;
        };
        let grace = grace
            .or(t
                .spec
                .kill_grace_seconds
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64))
            .unwrap_or(KILL_GRACE_DEFAULT);
        t.killed = true;
        let pgid = t.pgid;
        if let Some(s) = &t.spark {
            // Cluster deploy mode: the driver runs elsewhere.
            spark::kill_application(&t.spec.argv, &t.spec.env, s);
        }
        if t.spec.container.is_some() {
            // The container is the daemon's child, not ours: stop it
            // there; the CLI then exits by itself.
            let name = container_name(task_id);
            tokio::spawn(async move {
                stop_container(name, grace).await;
                crate::process::signal_group(pgid, libc::SIGKILL);
            });
            return;
        }
        crate::process::signal_group(pgid, libc::SIGTERM);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            crate::process::signal_group(pgid, libc::SIGKILL);
        });
    }

    async fn launch(&mut self, task: TaskInfo) {
        let task_id = task.task_id.value.clone();
        self.launched_any = true;
        self.unacked_tasks.insert(task_id.clone(), task.clone());
        if let Some(cmd) = &task.command {
            // Command-executor mode: the agent runs a plain CommandInfo task
            // through kaon-executor (checkpointed command tasks).
            self.launch_command(&task_id, cmd).await;
            return;
        }
        let spec = match step_spec(task.data.as_ref()) {
            Ok(s) => s,
            Err(result) => {
                self.send_update(
                    &task_id,
                    TaskState::Failed,
                    result.error.clone(),
                    serde_json::to_vec(&result).ok(),
                )
                .await;
                return;
            }
        };
        let mut spec = spec;
        if spec.container.is_some() && !self.containers_swept {
            self.containers_swept = true;
            // Bounded: a Docker daemon that hangs must not stall the
            // executor's other steps (their heartbeats, updates, kills).
            if tokio::time::timeout(DOCKER_CALL_WAIT, container::sweep_orphans(&self.env))
                .await
                .is_err()
            {
                tracing::warn!(wait = ?DOCKER_CALL_WAIT, "the Docker daemon did not list containers in time; orphans not swept");
            }
        }
        if spec.is_spark() {
            // The UI on a free port, which the driver logs and the watcher reads.
            spec.argv = crate::spark::with_free_ui_port(&spec.argv);
        }
        let dir = self.env.sandbox.join(task_dir(&task_id));
        let mem_limit_bytes = task
            .resources
            .iter()
            .find(|r| r.name == "mem")
            .and_then(|r| r.scalar.as_ref())
            .map(|v| (v.value * 1024.0 * 1024.0) as u64)
            .filter(|b| *b > 0);
        match self.spawn_step(&task_id, &spec, &dir) {
            Ok(pgid) => {
                let progress = std::sync::Arc::new(std::sync::Mutex::new(ProgressReader {
                    path: dir.join("progress"),
                    offset: 0,
                    partial: Vec::new(),
                }));
                let spark_state = spec.is_spark().then(spark::SharedSpark::default);
                self.tasks.insert(
                    task_id.clone(),
                    Running {
                        pgid,
                        progress: progress.clone(),
                        killed: false,
                        spec: spec.clone(),
                        dir: dir.clone(),
                        command_mode: false,
                        mem_limit_bytes,
                        memory_exceeded: None,
                        spark: spark_state.clone(),
                    },
                );
                if let Some(shared) = &spark_state {
                    spark::watch(
                        task_id.clone(),
                        dir.join("stderr"),
                        shared,
                        self.client.clone(),
                        self.internal_tx.clone(),
                    );
                }
                self.send_update(&task_id, TaskState::Running, None, None)
                    .await;
                if let Some(limit) = mem_limit_bytes {
                    // Container steps also get Docker's --memory, which not
                    // every kernel setup enforces: the check covers both.
                    let watch = MemoryWatch {
                        container: spec.container.as_ref().map(|_| container_name(&task_id)),
                        group: spec.container.is_none().then_some(pgid),
                        limit_bytes: limit,
                        members: Vec::new(),
                    };
                    if let Ok(mut m) = self.memory.lock() {
                        m.insert(task_id.clone(), watch);
                    }
                }
                self.watch_progress(task_id, progress, &spec);
            }
            Err(detail) => {
                let result = StepResult {
                    exit_code: None,
                    signal: None,
                    outputs: None,
                    reason: "spawn_failed".into(),
                    error: Some(detail.clone()),
                };
                self.send_update(
                    &task_id,
                    TaskState::Failed,
                    Some(detail),
                    serde_json::to_vec(&result).ok(),
                )
                .await;
            }
        }
    }

    async fn launch_command(&mut self, task_id: &str, cmd: &crate::types::CommandInfo) {
        let mut spec = StepSpec::default();
        let value = cmd.value.clone().unwrap_or_default();
        if cmd.shell.unwrap_or(true) {
            spec.shell = Some(value);
        } else {
            spec.argv = std::iter::once(value)
                .chain(cmd.arguments.iter().skip(1).cloned())
                .collect();
        }
        for v in cmd.environment.iter().flat_map(|e| e.variables.iter()) {
            spec.env
                .insert(v.name.clone(), v.value.clone().unwrap_or_default());
        }
        self.send_update(task_id, TaskState::Starting, None, None)
            .await;
        let dir = self.env.sandbox.clone();
        match self.spawn_step(task_id, &spec, &dir) {
            Ok(pgid) => {
                let progress = std::sync::Arc::new(std::sync::Mutex::new(ProgressReader {
                    path: dir.join("progress"),
                    offset: 0,
                    partial: Vec::new(),
                }));
                self.tasks.insert(
                    task_id.to_owned(),
                    Running {
                        pgid,
                        progress,
                        killed: false,
                        spec,
                        dir,
                        command_mode: true,
                        mem_limit_bytes: None,
                        memory_exceeded: None,
                        spark: None,
                    },
                );
                self.send_update(task_id, TaskState::Running, None, None)
                    .await;
            }
            Err(detail) => {
                self.send_update(task_id, TaskState::Failed, Some(detail), None)
                    .await;
            }
        }
    }

    /// Starts the step's process group in `dir`; returns its pgid.
    fn spawn_step(&self, task_id: &str, spec: &StepSpec, dir: &Path) -> Result<i32, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let file = |name: &str| {
            // Append: in command mode these are the executor's own log files.
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .map_err(|e| format!("cannot create {name}: {e}"))
        };
        file("stdout")?;
        file("stderr")?;
        file("progress")?;
        let _ = std::fs::remove_file(dir.join("outputs.json"));
        let (secret_env, secret_files) = resolve_secrets(&spec.secrets, dir)?;
        let mut cmd = match (&spec.container, spec.argv.split_first()) {
            (Some(c), _) => {
                let mut cmd = tokio::process::Command::new(docker_program());
                cmd.args(docker_run_args(task_id, spec, c, dir, &self.owner_labels()));
                cmd
            }
            (None, Some((prog, args))) => {
                let mut c = tokio::process::Command::new(prog);
                c.args(args);
                c
            }
            (None, None) => {
                let mut c = tokio::process::Command::new("/bin/sh");
                c.arg("-c").arg(spec.shell.clone().unwrap_or_default());
                c
            }
        };
        cmd.current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .envs(&spec.env)
            .env(ENV_OUTPUTS_FILE, dir.join("outputs.json"))
            .env(ENV_PROGRESS_FILE, dir.join("progress"))
            .env(ENV_TASK_ID, task_id)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; the step dies with the executor.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        // Every process of the step carries its executor's identity: a
        // later executor kills what this one leaves behind if it dies.
        cmd.env(ENV_EXECUTOR_PROCESS, &self.identity);
        // Secret values go into the process environment only (for a
        // container, the docker CLI's, which `--env NAME` passes on).
        cmd.envs(secret_env);
        if let Some(d) = &secret_files {
            cmd.env(ENV_SECRETS, d);
        }
        let remove_secrets = move || {
            if let Some(d) = &secret_files {
                let _ = std::fs::remove_dir_all(d);
            }
        };
        let spawned = cmd.spawn();
        if spawned.is_err() {
            remove_secrets();
        }
        let mut child = spawned.map_err(|e| match &spec.container {
            Some(c) => container_spawn_error(&c.image, &e),
            None => spawn_error(spec.argv.first().map(String::as_str), &spec.env, &e),
        })?;
        let pgid = child.id().map(|p| p as i32).unwrap_or(0);
        let max = spec.log_bytes_max.unwrap_or(STEP_LOG_BYTES_MAX_DEFAULT);
        let mut copiers = Vec::new();
        if let Some(out) = child.stdout.take() {
            copiers.push(tokio::spawn(copy_log(out, dir.join("stdout"), max)));
        }
        if let Some(err) = child.stderr.take() {
            copiers.push(tokio::spawn(copy_log(err, dir.join("stderr"), max)));
        }
        let tx = self.internal_tx.clone();
        let task_id = task_id.to_owned();
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            remove_secrets();
            // Leftover processes of the step's group hold the pipes open:
            // they end with it (as they would anyway), then the logs drain.
            crate::process::signal_group(pgid, libc::SIGKILL);
            let _ =
                tokio::time::timeout(LOG_DRAIN_WAIT, futures_util::future::join_all(copiers)).await;
            let _ = tx.send(Internal::Exited { task_id, status });
        });
        Ok(pgid)
    }

    fn watch_progress(&self, task_id: String, progress: SharedProgress, spec: &StepSpec) {
        let tx = self.internal_tx.clone();
        let heartbeat = spec
            .heartbeat_seconds
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(HEARTBEAT_DEFAULT);
        tokio::spawn(async move {
            let mut next_heartbeat = tokio::time::Instant::now() + heartbeat;
            loop {
                tokio::time::sleep(PROGRESS_POLL_INTERVAL).await;
                let msgs = progress
                    .lock()
                    .map(|mut p| p.poll(&task_id))
                    .unwrap_or_default();
                for m in msgs {
                    if tx.send(Internal::Message(m)).is_err() {
                        return;
                    }
                }
                if tokio::time::Instant::now() >= next_heartbeat {
                    next_heartbeat += heartbeat;
                    if tx
                        .send(Internal::Message(ExecutorMessage::Heartbeat {
                            task_id: task_id.clone(),
                        }))
                        .is_err()
                    {
                        return;
                    }
                }
                if std::sync::Arc::strong_count(&progress) == 1 {
                    return; // the task is gone
                }
            }
        });
    }

    async fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::Message(m) => {
                let task = match &m {
                    ExecutorMessage::Heartbeat { task_id }
                    | ExecutorMessage::Progress { task_id, .. }
                    | ExecutorMessage::Status { task_id, .. } => task_id,
                };
                if self.tasks.contains_key(task) {
                    self.send_message(&m).await;
                }
            }
            Internal::MemoryExceeded {
                task_id,
                used_bytes,
            } => {
                if let Some(t) = self.tasks.get_mut(&task_id)
                    && !t.killed
                {
                    tracing::info!(task = %task_id, used_bytes, "memory limit exceeded: killing the step");
                    t.memory_exceeded = Some(used_bytes);
                    if t.spec.container.is_some() {
                        tokio::spawn(stop_container(container_name(&task_id), Duration::ZERO));
                    }
                    crate::process::signal_group(t.pgid, libc::SIGKILL);
                }
            }
            Internal::Exited { task_id, status } => {
                use std::os::unix::process::ExitStatusExt;
                let Some(t) = self.tasks.remove(&task_id) else {
                    return;
                };
                if let Ok(mut m) = self.memory.lock() {
                    m.remove(&task_id);
                }
                // Relay progress written just before exit, before the terminal update.
                let last = t
                    .progress
                    .lock()
                    .map(|mut p| p.poll(&task_id))
                    .unwrap_or_default();
                for m in &last {
                    self.send_message(m).await;
                }
                // Give any leftover children of the step's group the same end.
                crate::process::signal_group(t.pgid, libc::SIGKILL);
                if t.spec.container.is_some() {
                    // `--rm` removes it on a normal exit; not if the CLI died.
                    tokio::spawn(remove_container(container_name(&task_id)));
                }
                let code = status.and_then(|s| s.code());
                let signal = status.and_then(|s| s.signal());
                if t.command_mode {
                    let (state, message) = match (t.killed, code, signal) {
                        (true, _, _) => (
                            TaskState::Killed,
                            "Command terminated by a kill request".to_string(),
                        ),
                        (false, Some(0), _) => {
                            (TaskState::Finished, "Command exited with status 0".into())
                        }
                        (false, Some(c), _) => {
                            (TaskState::Failed, format!("Command exited with status {c}"))
                        }
                        (false, None, Some(sig)) => (
                            TaskState::Failed,
                            format!("Command terminated with signal {sig}"),
                        ),
                        _ => (
                            TaskState::Failed,
                            "Command ended with an unknown status".into(),
                        ),
                    };
                    self.send_update(&task_id, state, Some(message), None).await;
                    return;
                }
                let limit = t
                    .spec
                    .outputs_bytes_max
                    .unwrap_or(OUTPUTS_BYTES_MAX_DEFAULT)
                    .min(OUTPUTS_BYTES_HARD_MAX);
                if let (Some(used), Some(limit)) = (t.memory_exceeded, t.mem_limit_bytes) {
                    let mb = |b: u64| b.div_ceil(1024 * 1024);
                    // Mesos' words (cgroups memory isolator).
                    let message = format!(
                        "Memory limit exceeded: Requested: {}MB Maximum Used: {}MB",
                        mb(limit),
                        mb(used)
                    );
                    let result = StepResult {
                        exit_code: code,
                        signal,
                        outputs: None,
                        reason: "memory_limit".into(),
                        error: Some(message.clone()),
                    };
                    self.send_update_with_reason(
                        &task_id,
                        TaskState::Failed,
                        Some("REASON_CONTAINER_LIMITATION_MEMORY"),
                        Some(message),
                        serde_json::to_vec(&result).ok(),
                    )
                    .await;
                    return;
                }
                // A Spark step that failed on its own: whose failure it was.
                let spark_failure = match (&t.spark, t.killed, code) {
                    (Some(_), false, c) if c != Some(0) => Some(crate::spark::classify_exit(
                        &spark::log_tail(&t.dir.join("stderr")),
                        signal,
                        false,
                    )),
                    _ => None,
                };
                let (state, reason, error, outputs) = if t.killed {
                    (
                        TaskState::Killed,
                        "killed".to_string(),
                        Some("step killed on request".to_string()),
                        None,
                    )
                } else if let (Some(c), Some(125..=127)) = (&t.spec.container, code) {
                    // Docker's own failures: 125 the daemon or CLI (an image
                    // that does not exist, bad options), 126/127 the command
                    // in the image. Its words are the last stderr lines.
                    let said = last_lines(&t.dir.join("stderr"), 3);
                    (
                        TaskState::Failed,
                        "container_failed".into(),
                        Some(format!(
                            "the container step (image {:?}) did not run: docker exited {}: {said}",
                            c.image,
                            code.unwrap_or(-1)
                        )),
                        None,
                    )
                } else if let Some(crate::spark::Failure::Platform(why)) = spark_failure {
                    // The platform's failure (a lost executor, a fetch
                    // failure, a driver killed by someone else): the
                    // scheduler retries it under the platform budget.
                    (
                        TaskState::Failed,
                        REASON_PLATFORM_FAILURE.into(),
                        Some(format!(
                            "{why}; spark-submit ended with {}",
                            match (code, signal) {
                                (_, Some(s)) => format!("signal {s}"),
                                (c, None) => format!("status {}", c.unwrap_or(-1)),
                            }
                        )),
                        None,
                    )
                } else if let Some(sig) = signal {
                    (
                        TaskState::Failed,
                        "signaled".into(),
                        Some(format!("step terminated by signal {sig}")),
                        None,
                    )
                } else if code != Some(0) {
                    (
                        TaskState::Failed,
                        "nonzero_exit".into(),
                        Some(format!("step exited with status {}", code.unwrap_or(-1))),
                        None,
                    )
                } else {
                    match read_outputs(&t.dir.join("outputs.json"), limit) {
                        Ok(outputs) => (TaskState::Finished, "exited".into(), None, outputs),
                        Err((reason, detail)) => (TaskState::Failed, reason, Some(detail), None),
                    }
                };
                if state == TaskState::Finished && t.spark.is_some() {
                    // Spark knew only the jobs started so far: done is 100.
                    self.send_message(&ExecutorMessage::Progress {
                        task_id: task_id.clone(),
                        percent: 100.0,
                    })
                    .await;
                }
                let result = StepResult {
                    exit_code: code,
                    signal,
                    outputs,
                    reason,
                    error: error.clone(),
                };
                self.send_update(&task_id, state, error, serde_json::to_vec(&result).ok())
                    .await;
            }
        }
    }
}

/// The last `n` non-empty lines of a (small) text file, joined by " / ".
fn last_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| {
            let tail = b.len().saturating_sub(8192);
            String::from_utf8_lossy(&b[tail..]).into_owned()
        })
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

fn read_from(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(1 << 20).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The step a task carries in `TaskInfo.data`, or the failed result to
/// report instead (`bad_step_spec`, its error saying what is wrong): kaon's
/// executor and the emulator's scripted one read tasks the same way.
pub fn step_spec(data: Option<&B64>) -> Result<StepSpec, StepResult> {
    let detail = match data.map(|d| serde_json::from_slice::<StepSpec>(&d.0)) {
        Some(Ok(s)) if !s.argv.is_empty() || s.shell.is_some() => return Ok(s),
        Some(Err(e)) => format!("TaskInfo.data is not a kaon step spec: {e}"),
        _ => "TaskInfo.data must carry a step spec with 'argv' or 'shell'".into(),
    };
    Err(StepResult {
        exit_code: None,
        signal: None,
        outputs: None,
        reason: "bad_step_spec".into(),
        error: Some(detail),
    })
}

/// Where, inside its executor's sandbox, a task's files (stdout, stderr,
/// progress, outputs.json) live: `tasks/<task id, made path-safe>`.
pub fn task_dir(task_id: &str) -> String {
    format!("tasks/{}", sanitize(task_id))
}

fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// An `ExecutorInfo` that runs `kaon-executor` (a bare name the emulator
/// resolves, or an absolute path on real Mesos).
pub fn executor_info(
    executor_id: &str,
    executor_path: &str,
    resources: Vec<crate::types::Resource>,
) -> crate::types::ExecutorInfo {
    crate::types::ExecutorInfo {
        kind: Some(crate::types::ExecutorType::Custom),
        executor_id: Id::new(executor_id),
        framework_id: None,
        command: Some(crate::types::CommandInfo {
            shell: Some(false),
            value: Some(executor_path.into()),
            arguments: vec!["kaon-executor".into()],
            ..Default::default()
        }),
        resources,
        name: Some("kaon executor".into()),
        data: None,
        shutdown_grace_period: None,
    }
}

/// What a step kind's interpreter is, and where it comes from, for the
/// message when it is missing (issue 9 G: `kind: r` on an agent without R).
const INTERPRETERS: &[(&str, &str)] = &[
    (
        "Rscript",
        "kind: r needs R (Debian: apt-get install r-base-core)",
    ),
    (
        "spark-submit",
        "kind: spark needs Spark (e.g. pip install pyspark, which ships spark-submit)",
    ),
    ("python3", "kind: python needs Python 3"),
    ("java", "kind: jvm needs a Java runtime"),
    (
        "docker",
        "kind: container needs Docker (CLI and daemon) on the agent",
    ),
];

/// The error for a step that could not be started, naming the program
/// and, when it is missing, the PATH searched and what provides it.
fn spawn_error(prog: Option<&str>, env: &BTreeMap<String, String>, e: &std::io::Error) -> String {
    let prog = prog.unwrap_or("/bin/sh");
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            let path = env
                .get("PATH")
                .cloned()
                .or_else(|| std::env::var("PATH").ok())
                .unwrap_or_default();
            let hint = INTERPRETERS
                .iter()
                .find(|(p, _)| *p == prog)
                .map(|(_, h)| format!("; {h}"))
                .unwrap_or_default();
            format!(
                "cannot start step: program {prog:?} is not installed on agent {host:?} \
                 (not found in PATH={path}){hint}"
            )
        }
        std::io::ErrorKind::PermissionDenied => {
            format!("cannot start step: {prog:?} on agent {host:?} is not executable: {e}")
        }
        _ => format!("cannot start step {prog:?}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        assert_eq!(
            parse_progress_line("t", "percent 42\n"),
            Some(ExecutorMessage::Progress {
                task_id: "t".into(),
                percent: 42.0
            })
        );
        assert_eq!(
            parse_progress_line("t", "status loading data"),
            Some(ExecutorMessage::Status {
                task_id: "t".into(),
                text: "loading data".into()
            })
        );
        assert_eq!(parse_progress_line("t", "percent 420"), None);
        assert_eq!(parse_progress_line("t", "percent NaN"), None);
        assert_eq!(parse_progress_line("t", "bogus"), None);
    }

    #[test]
    fn outputs_are_bounded_and_must_be_objects() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.json");
        assert_eq!(read_outputs(&p, 10), Ok(None));
        std::fs::write(&p, r#"{"a":1}"#).unwrap();
        assert_eq!(read_outputs(&p, 100), Ok(Some(serde_json::json!({"a":1}))));
        assert_eq!(read_outputs(&p, 3).unwrap_err().0, "outputs_too_large");
        std::fs::write(&p, "[1]").unwrap();
        assert_eq!(read_outputs(&p, 100).unwrap_err().0, "outputs_invalid");
    }
}
