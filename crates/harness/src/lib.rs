//! `kaon-harness`: clusters of real kaon processes, shared by the
//! real-process tests (`crates/cli/tests/`) and the cluster benchmark
//! (`crates/bench`), so that both start, kill, pause and partition nodes the
//! same way (issue 8, part 3: there used to be two copies).
//!
//! - [`Proc`]: a child in its own process group, killed with its group when
//!   dropped (also on panic), so a failing test or an interrupted bench
//!   leaves nothing running.
//! - [`Server`]: one `kaon server` with its embedded Mesos emulator.
//! - [`Cluster`]: 3 or 5 `kaon server` nodes sharing one external
//!   `kaon mesos-emulator`, on loopback or, with a [`NetLab`], each node in
//!   a network namespace of its own so that partitions are real (packets
//!   dropped by the kernel, not by a proxy).
//! - gRPC helpers ([`client`], [`submit_to_leader`], [`run_events`], ...)
//!   and deadline waits ([`wait_until`], [`wait_for`]): no test sleeps to
//!   synchronise.

mod cluster;
mod grpc;
mod net;
mod proc;

pub use cluster::{Cluster, ClusterBuilder, Server};
pub use grpc::{
    all_run_ids, client, client_with_timeout, cluster_status, get_run, run_events, submit,
    submit_to_leader,
};
pub use net::NetLab;
pub use proc::{LogsOnPanic, Proc, free_port, free_ports, processes_with_env, tail};

use std::future::Future;
use std::time::{Duration, Instant};

/// How often the waits below poll their condition.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `f` until it returns Some; panics naming `what` once `deadline`
/// has passed (tests: a condition that never holds is a failure).
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

/// [`wait_for`] polling every `every` instead of [`POLL`]: for a condition
/// that costs a process to check (a CLI call) while the machine is busy
/// with the work being waited for.
pub fn wait_for_every<T>(
    what: &str,
    deadline: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(every);
    }
}

/// Async [`wait_for`]: polls `f` until Some; panics naming `what` after
/// `deadline`.
pub async fn wait_until<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match try_wait_until(deadline, &mut f).await {
        Some(v) => v,
        None => panic!("timed out waiting for {what}"),
    }
}

/// [`wait_until`] without the panic: None once `deadline` has passed (the
/// bench reports it as an error).
pub async fn try_wait_until<T, F, Fut>(deadline: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Milliseconds since the Unix epoch (event timestamps are in these).
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
