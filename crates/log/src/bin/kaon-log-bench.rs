//! Committed events per second on a loopback cluster (3 nodes by default) with N
//! concurrent proposers (all proposing on the leader).
//!
//! Usage: kaon-log-bench [--nodes N] [--proposers N] [--events TOTAL] [--dir DIR]
//!
//! Each node keeps its redb files under DIR (default: a fresh directory in
//! the system temp dir, removed at the end), so the numbers include the
//! fsyncs every durable append and apply pays.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kaon_core::events::{Body, pb};
use kaon_log::RaftNode;
use kaon_log::node::NodeConfig;
use openraft::async_runtime::WatchReceiver;

/// How long to wait for the first leader.
const ELECTION_DEADLINE: Duration = Duration::from_secs(10);

struct Args {
    nodes: u64,
    proposers: u64,
    events: u64,
    dir: Option<PathBuf>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        nodes: 3,
        proposers: 8,
        events: 5_000,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--nodes" => a.nodes = val()?.parse().map_err(|e| format!("--nodes: {e}"))?,
            "--proposers" => {
                a.proposers = val()?.parse().map_err(|e| format!("--proposers: {e}"))?
            }
            "--events" => a.events = val()?.parse().map_err(|e| format!("--events: {e}"))?,
            "--dir" => a.dir = Some(PathBuf::from(val()?)),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    if a.proposers == 0 {
        return Err("--proposers must be at least 1".into());
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "{e}\nusage: kaon-log-bench [--nodes N] [--proposers N] [--events TOTAL] [--dir DIR]"
            );
            return ExitCode::from(2);
        }
    };
    let (dir, remove) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("kaon-log-bench-{}", std::process::id())),
            true,
        ),
    };
    let res = run(&args, &dir).await;
    if remove {
        let _ = std::fs::remove_dir_all(&dir);
    }
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args, dir: &std::path::Path) -> Result<(), String> {
    let mut nodes = BTreeMap::new();
    for id in 1..=args.nodes {
        let listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
        let cfg = NodeConfig::new(id, listen, dir.join(format!("n{id}")));
        let node = RaftNode::start(cfg).await.map_err(|e| e.to_string())?;
        nodes.insert(id, Arc::new(node));
    }
    let members = nodes
        .iter()
        .map(|(id, n)| (*id, n.addr().to_string()))
        .collect();
    nodes[&1]
        .initialize_with(members)
        .await
        .map_err(|e| e.to_string())?;
    // Warm up: one event committed through a leader that accepts writes
    // (the first leader seen may still be settling).
    let deadline = Instant::now() + ELECTION_DEADLINE;
    let leader = loop {
        let id = nodes[&1]
            .wait_for_leader(ELECTION_DEADLINE)
            .await
            .ok_or("no leader elected")?;
        let warm = Body::FrameworkRegistered(pb::FrameworkRegistered {
            framework_id: "warm-up".into(),
        });
        match nodes[&id].propose(warm).await {
            Ok(_) => break nodes[&id].clone(),
            Err(e) if Instant::now() > deadline => return Err(format!("warm-up: {e}")),
            Err(_) => {
                let mut rx = nodes[&1].raft().metrics();
                let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
            }
        }
    };
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.proposers {
        let leader = leader.clone();
        let next = next.clone();
        let total = args.events;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t = Instant::now();
                let body = Body::FrameworkRegistered(pb::FrameworkRegistered {
                    framework_id: "bench-framework-0001".into(),
                });
                leader.propose(body).await.map_err(|e| e.to_string())?;
                latencies.push(t.elapsed());
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.map_err(|e| e.to_string())??);
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    println!(
        "{} nodes, {} proposers: {} events in {:.2?} = {:.0} committed events/s; latency p50 {:.2?} p99 {:.2?} max {:.2?}",
        args.nodes,
        args.proposers,
        latencies.len(),
        elapsed,
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(1.0),
    );
    let digests: std::collections::BTreeSet<[u8; 32]> = {
        for n in nodes.values() {
            n.wait_for_event(args.events + 1, Duration::from_secs(30))
                .await;
        }
        nodes.values().map(|n| n.digest()).collect()
    };
    if digests.len() != 1 {
        return Err("replicas disagree on State::digest".into());
    }
    drop(leader);
    for (_, n) in nodes {
        if let Ok(n) = Arc::try_unwrap(n) {
            n.shutdown().await;
        }
    }
    Ok(())
}
