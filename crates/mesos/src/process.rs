//! Spawning task and executor processes the way a Mesos agent does: in a
//! sandbox directory, with stdout/stderr files, in their own process group;
//! signalling process groups; Mesos' duration strings. Shared by the
//! emulator's agent and kaon's executor, so nothing the executor ships
//! with depends on emulator code (issue 10, section 5).

use crate::types::CommandInfo;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

/// Why a process could not be started.
#[derive(Debug, Error)]
pub enum SpawnError {
    /// The CommandInfo has no `value`.
    #[error("command has no 'value' to run")]
    NoCommand,
    /// Creating sandbox files failed.
    #[error("cannot prepare sandbox {path}: {source}")]
    Sandbox {
        /// Sandbox path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// fork/exec failed.
    #[error("cannot start '{command}': {source}")]
    Exec {
        /// What was run.
        command: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Starts `cmd` in `sandbox` with `env` added to the inherited environment.
/// The child leads its own process group (so `killpg` reaches its children).
/// With `die_with_parent` it gets SIGKILL if the spawning thread dies, so an
/// emulator that crashes leaves no orphans; checkpointed executors are
/// spawned without it so they survive an emulator restart.
pub fn spawn(
    cmd: &CommandInfo,
    env: &[(String, String)],
    sandbox: &Path,
    die_with_parent: bool,
) -> Result<tokio::process::Child, SpawnError> {
    let value = cmd.value.clone().ok_or(SpawnError::NoCommand)?;
    std::fs::create_dir_all(sandbox).map_err(|source| SpawnError::Sandbox {
        path: sandbox.display().to_string(),
        source,
    })?;
    let open = |name: &str| {
        std::fs::File::create(sandbox.join(name)).map_err(|source| SpawnError::Sandbox {
            path: sandbox.join(name).display().to_string(),
            source,
        })
    };
    let stdout = open("stdout")?;
    let stderr = open("stderr")?;
    let mut command = if cmd.shell.unwrap_or(true) {
        let mut c = tokio::process::Command::new("/bin/sh");
        c.arg("-c").arg(&value);
        c
    } else {
        let mut c = tokio::process::Command::new(&value);
        if let Some((argv0, rest)) = cmd.arguments.split_first() {
            c.arg0(argv0);
            c.args(rest);
        }
        c
    };
    command
        .current_dir(sandbox)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(false);
    if let Some(envs) = &cmd.environment {
        for v in &envs.variables {
            command.env(&v.name, v.value.clone().unwrap_or_default());
        }
    }
    for (k, v) in env {
        command.env(k, v);
    }
    if die_with_parent {
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    command.spawn().map_err(|source| SpawnError::Exec {
        command: value,
        source,
    })
}

/// Sends `signal` to the process group `pgid` (errors such as "no such
/// process" are expected after exit and ignored).
pub fn signal_group(pgid: i32, signal: i32) {
    if pgid > 0 {
        // SAFETY: plain syscall with integer arguments.
        unsafe {
            libc::killpg(pgid, signal);
        }
    }
}

/// The environment of process `pid` as `NAME=VALUE` entries (empty when
/// it is gone or not ours to read).
pub fn environ(pid: i32) -> Vec<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| {
            env.split(|b| *b == 0)
                .filter(|kv| !kv.is_empty())
                .map(<[u8]>::to_vec)
                .collect()
        })
        .unwrap_or_default()
}

/// The value of `var` in an environment read by [`environ`].
pub fn env_value<'a>(env: &'a [Vec<u8>], var: &str) -> Option<&'a [u8]> {
    env.iter().find_map(|kv| {
        kv.strip_prefix(var.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"="))
    })
}

/// Every process id on this machine (a scan of `/proc`).
pub fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Names one process for as long as it lives: `PID:START` (its start
/// time in clock ticks since boot, `/proc/PID/stat` field 22), so a pid
/// the kernel reuses for another process is not taken for it.
pub fn identity(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `comm` may hold spaces and parentheses: count from its closing one.
    let rest = &stat[stat.rfind(')')? + 1..];
    let start = rest.split_whitespace().nth(19)?;
    Some(format!("{pid}:{start}"))
}

/// Whether the process an [`identity`] names still runs.
pub fn is_alive(identity: &str) -> bool {
    identity
        .split_once(':')
        .and_then(|(pid, _)| pid.parse::<i32>().ok())
        .and_then(self::identity)
        .is_some_and(|now| now == identity)
}

/// Sends `signal` to every process (and its process group) whose
/// environment `matches`, except this process; returns how many matched.
/// How a Mesos containerizer's destroy is emulated without cgroups: every
/// process a launch started inherits its markers, whatever group or
/// session it moved to.
pub fn signal_matching(signal: i32, matches: impl Fn(&[Vec<u8>]) -> bool) -> usize {
    let me = std::process::id() as i32;
    let mut n = 0;
    for pid in all_pids() {
        if pid == me || pid <= 1 {
            continue;
        }
        let env = environ(pid);
        if env.is_empty() || !matches(&env) {
            continue;
        }
        n += 1;
        // SAFETY: plain syscalls with integer arguments.
        unsafe {
            let pgid = libc::getpgid(pid);
            if pgid > 1 && pgid != libc::getpgid(0) {
                libc::killpg(pgid, signal);
            }
            libc::kill(pid, signal);
        }
    }
    n
}

/// Formats a duration the way stout does (`5secs`, `2mins`, `1.5hrs`), as
/// Mesos puts it in executor environment variables.
pub fn stout_duration(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    let units: [(&str, f64); 8] = [
        ("weeks", 7.0 * 86400e9),
        ("days", 86400e9),
        ("hrs", 3600e9),
        ("mins", 60e9),
        ("secs", 1e9),
        ("ms", 1e6),
        ("us", 1e3),
        ("ns", 1.0),
    ];
    for (name, size) in units {
        if ns >= size {
            let v = ns / size;
            let text = format!("{v:.6}");
            let text = text.trim_end_matches('0').trim_end_matches('.');
            return format!("{text}{name}");
        }
    }
    "0ns".into()
}

/// Parses a stout duration string (`5secs`, `1.5hrs`); `None` if malformed.
pub fn parse_stout_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let secs = match unit {
        "ns" => v / 1e9,
        "us" => v / 1e6,
        "ms" => v / 1e3,
        "secs" => v,
        "mins" => v * 60.0,
        "hrs" => v * 3600.0,
        "days" => v * 86400.0,
        "weeks" => v * 7.0 * 86400.0,
        _ => return None,
    };
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stout_durations_round_trip() {
        assert_eq!(stout_duration(Duration::from_secs(5)), "5secs");
        assert_eq!(stout_duration(Duration::from_secs(90 * 60)), "1.5hrs");
        assert_eq!(stout_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(
            parse_stout_duration("2mins"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_stout_duration("1.5hrs"),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(parse_stout_duration("5 parsecs"), None);
        assert_eq!(parse_stout_duration(""), None);
    }
}
