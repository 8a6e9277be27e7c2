//! Child processes in their own process groups.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// A child process leading its own process group. Dropping it SIGKILLs the
/// group and reaps the child, so nothing it started outlives its owner.
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Spawns `cmd` in a new process group with stdin closed and stdout and
    /// stderr appended to `log`.
    pub fn spawn(cmd: &mut Command, log: &Path) -> anyhow::Result<Proc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        Ok(Proc { child })
    }

    /// Spawns `cmd` in a new process group as it is configured (the caller
    /// sets up stdio, e.g. a piped stdout to read the first line).
    pub fn spawn_raw(cmd: &mut Command) -> anyhow::Result<Proc> {
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        Ok(Proc { child })
    }

    /// The child (e.g. to take its piped stdout).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The process id (also the process group id).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Whether the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `sig` to the process group, if the child has not been reaped
    /// (so the pid is still ours).
    pub fn signal_group(&mut self, sig: i32) {
        if self.is_running() {
            // SAFETY: kill(2) on the group this unreaped child leads.
            unsafe {
                libc::kill(-self.pid(), sig);
            }
        }
    }

    /// SIGKILLs the group and waits until the child is gone.
    pub fn kill9(mut self) {
        self.kill_in_place();
    }

    fn kill_in_place(&mut self) {
        // SIGCONT first: a stopped group dies of SIGKILL too, but its
        // children would stay stopped if they escaped the group.
        self.signal_group(libc::SIGKILL);
        self.signal_group(libc::SIGCONT);
        let _ = self.child.wait();
    }

    /// Sends `sig`, waits up to `grace` for the exit, then SIGKILLs the group.
    pub fn stop(mut self, sig: i32, grace: Duration) {
        self.signal_group(sig);
        let end = Instant::now() + grace;
        while Instant::now() < end && self.is_running() {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_in_place();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_in_place();
    }
}

/// A free TCP port on 127.0.0.1 for a server a test starts (see
/// [`free_ports`]).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// Ports handed out below the kernel's ephemeral range start here.
const TEST_PORT_FIRST: u32 = 10_000;

/// `n` distinct free TCP ports on 127.0.0.1 for servers a test starts.
///
/// They come from below the kernel's ephemeral range
/// (`ip_local_port_range`), which the kernel never picks for a `bind(0)` or
/// an outgoing connection: a port asked of the kernel and released could be
/// taken by any client socket before the server bound it (CI saw a node
/// fail with "Address already in use" that way). A process-wide counter,
/// started at an offset from the pid, keeps this process's tests and
/// concurrent test processes apart; each port is checked free by binding
/// it. Where the range leaves no room below it, the kernel's choice is
/// used (all `n` held at once, so one call never repeats a port).
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let ephemeral_first = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let pool = ephemeral_first.saturating_sub(TEST_PORT_FIRST);
    if pool < 1_000 {
        let held: Vec<std::net::TcpListener> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
            .collect();
        return held
            .iter()
            .map(|l| l.local_addr().expect("bound").port())
            .collect();
    }
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % pool,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let mut ports = Vec::with_capacity(n);
    let mut tried = 0;
    while ports.len() < n {
        assert!(
            tried < pool,
            "no free loopback port in {TEST_PORT_FIRST}..{ephemeral_first}"
        );
        tried += 1;
        let port = (TEST_PORT_FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % pool) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    ports
}

/// The last `n` lines of a file (for failure reports).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Prints the last lines of each log when dropped during a panic: a test
/// that fails waiting on real processes says what they logged (CI keeps
/// nothing else).
pub struct LogsOnPanic(pub Vec<std::path::PathBuf>);

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.0 {
                eprintln!("---- last lines of {} ----\n{}", p.display(), tail(p, 80));
            }
        }
    }
}

/// Processes (pid, command name) whose environment has `var` set to a
/// value starting with `prefix`: how a test finds what a step left behind
/// (every step inherits its executor's `MESOS_DIRECTORY`, inside the
/// test's own directory, and carries `KAON_TASK_ID`).
pub fn processes_with_env(var: &str, prefix: &str) -> Vec<(i32, String)> {
    let want = format!("{var}={prefix}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|kv| kv.starts_with(want.as_bytes()))
            })
        })
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (pid, comm.trim().to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ports_are_distinct_bindable_and_never_ephemeral() {
        let ephemeral_first: u16 =
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
        let mut ports = free_ports(50);
        ports.extend((0..50).map(|_| free_port()));
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            ports.len(),
            "a port handed out twice: {ports:?}"
        );
        for p in ports {
            if u32::from(ephemeral_first) >= TEST_PORT_FIRST + 1_000 {
                assert!(p < ephemeral_first, "port {p} is in the ephemeral range");
            }
            std::net::TcpListener::bind(("127.0.0.1", p)).expect("a handed-out port binds");
        }
    }
}
