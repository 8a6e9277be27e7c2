//! The seam between an emulated agent and what it runs.
//!
//! A Mesos agent forks executors (and, for command tasks, the task's own
//! command) as processes, watches them exit and signals them to kill them.
//! The emulator does all of that through a [`Launcher`] handed in with
//! [`super::EmulatorConfig::launcher`]: [`ProcessLauncher`] (the default)
//! starts real processes in their own process groups, exactly as before;
//! a simulation hands in something that runs in-process instead (e.g.
//! [`super::scripted::ScriptedLauncher`]) and stays on paused tokio time.
//!
//! What the agent needs from a launched thing is small: its exit (a
//! [`std::process::ExitStatus`], which runs the agent's executor-exit path:
//! TASK_FAILED `REASON_EXECUTOR_TERMINATED` for unfinished tasks, FAILURE to
//! the scheduler) and a way to signal it ([`LaunchedProcess::signal`]: the
//! agent sends SIGTERM on kill/shutdown and SIGKILL after the grace period,
//! on registration timeout, agent loss and emulator shutdown).

use super::clock::Clock;
use super::ids::Ids;
use super::process::{self, SpawnError};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use kaon_mesos::types::{CommandInfo, TaskInfo};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;

/// What the agent launches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchKind {
    /// A task's own command (a task without an executor), run by the agent
    /// directly; its exit status is the task's outcome.
    CommandTask,
    /// A custom executor (`TaskInfo.executor`); it subscribes to the
    /// agent's executor API and reports its tasks itself.
    Executor,
    /// `kaon-executor` acting as Mesos's command executor for a command task
    /// of a checkpointing framework (`MESOS_HTTP_COMMAND_EXECUTOR=1`).
    CommandExecutor,
}

/// Everything the agent knows about one launch.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// What is launched.
    pub kind: LaunchKind,
    /// Index of the agent (configuration order).
    pub agent: usize,
    /// The agent's id.
    pub agent_id: String,
    /// The framework's id.
    pub framework_id: String,
    /// The executor's id (the task id for a command task).
    pub executor_id: String,
    /// The task whose launch started this process.
    pub task: TaskInfo,
    /// What to run (a bare `kaon-executor` already resolved to
    /// `EmulatorConfig::executor_path`).
    pub command: CommandInfo,
    /// The Mesos executor environment (`MESOS_AGENT_ENDPOINT`, ...), added
    /// to the inherited one.
    pub env: Vec<(String, String)>,
    /// The sandbox directory (not created yet: a real launch creates it).
    pub sandbox: PathBuf,
    /// Tie the process's life to the emulator's (`PR_SET_PDEATHSIG`); false
    /// for executors of checkpointing frameworks, which must survive an
    /// emulator restart.
    pub die_with_parent: bool,
    /// The agent's HTTP API (executor API, `/state`, `/files`) in-process,
    /// for executors that run in-process (the real ones reach it over TCP
    /// at `MESOS_AGENT_ENDPOINT`).
    pub agent_router: axum::Router,
    /// The emulator's id source, so in-process executors draw their status
    /// update uuids from the same seed.
    pub ids: Ids,
    /// The emulator's wall clock, for in-process executors' timestamps.
    pub clock: Clock,
}

/// A running launched thing, as the agent holds it.
pub trait LaunchedProcess: Send + Sync + 'static {
    /// Delivers `signal` (`libc::SIGTERM`, `libc::SIGKILL`, ...) the way a
    /// Mesos agent signals a container: to the whole process group. Must be
    /// harmless after exit.
    fn signal(&self, signal: i32);

    /// The process group id, for a real process (checkpointed so that a
    /// restarted emulator can find the executor again); `None` otherwise.
    fn pgid(&self) -> Option<i32> {
        None
    }

    /// Destroys what the launch started after its process ended, as a
    /// Mesos containerizer destroys the container (with cgroups: every
    /// process in it, whatever group it moved to). Default: SIGKILL to the
    /// group.
    fn destroy(&self) {
        self.signal(libc::SIGKILL);
    }
}

/// The result of a successful launch.
pub struct Launched {
    /// The handle the agent signals.
    pub process: Arc<dyn LaunchedProcess>,
    /// Resolves once, when the launched thing has exited (`None`: the exit
    /// status could not be learned). The agent then runs its exit path.
    pub exit: BoxFuture<'static, Option<ExitStatus>>,
}

impl std::fmt::Debug for Launched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launched")
            .field("pgid", &self.process.pgid())
            .finish_non_exhaustive()
    }
}

/// How an emulated agent starts executors and command tasks.
pub trait Launcher: Send + Sync + 'static {
    /// Starts what `request` describes, on the current tokio runtime. Runs
    /// without the emulator's state lock held. An error becomes TASK_FAILED
    /// `REASON_CONTAINER_LAUNCH_FAILED` for the launch's tasks.
    fn launch(&self, request: LaunchRequest) -> Result<Launched, SpawnError>;
}

impl std::fmt::Debug for dyn Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Launcher")
    }
}

/// A real process group, signalled with `killpg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessGroup {
    /// The group id (the leader's pid); 0 if unknown (signals are then
    /// not sent).
    pub pgid: i32,
    /// Its sandbox: every process it starts inherits it as
    /// `MESOS_DIRECTORY`, which is how [`LaunchedProcess::destroy`] finds
    /// the ones that left the group (kaon's executor puts each step in a
    /// group of its own).
    pub sandbox: Option<std::path::PathBuf>,
}

impl LaunchedProcess for ProcessGroup {
    fn signal(&self, signal: i32) {
        process::signal_group(self.pgid, signal);
    }

    fn pgid(&self) -> Option<i32> {
        (self.pgid > 0).then_some(self.pgid)
    }

    fn destroy(&self) {
        process::signal_group(self.pgid, libc::SIGKILL);
        if let Some(dir) = &self.sandbox {
            let dir = dir.display().to_string();
            process::signal_matching(libc::SIGKILL, |env| {
                process::env_value(env, "MESOS_DIRECTORY") == Some(dir.as_bytes())
            });
        }
    }
}

/// The default launcher: real local processes in their own process groups
/// ([`process::spawn`]), reaped by tokio.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessLauncher;

impl Launcher for ProcessLauncher {
    fn launch(&self, request: LaunchRequest) -> Result<Launched, SpawnError> {
        let mut child = process::spawn(
            &request.command,
            &request.env,
            &request.sandbox,
            request.die_with_parent,
        )?;
        let pgid = child.id().map(|p| p as i32).unwrap_or(0);
        Ok(Launched {
            process: Arc::new(ProcessGroup {
                pgid,
                sandbox: Some(request.sandbox.clone()),
            }),
            exit: async move { child.wait().await.ok() }.boxed(),
        })
    }
}

/// An exit status for "exited with `code`" (as `waitpid` reports it).
pub fn exit_status_code(code: i32) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus::from_raw((code & 0xff) << 8)
}

/// An exit status for "killed by `signal`".
pub fn exit_status_signal(signal: i32) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus::from_raw(signal & 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exit_statuses_read_back() {
        assert_eq!(exit_status_code(3).code(), Some(3));
        assert_eq!(exit_status_code(137).code(), Some(137));
        assert_eq!(exit_status_signal(9).signal(), Some(9));
        assert_eq!(exit_status_signal(9).code(), None);
    }
}
