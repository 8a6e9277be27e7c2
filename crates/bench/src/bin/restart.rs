//! `kaon-restart-bench`: how long a node with a long history takes to
//! restart and serve (issue 11 section 3: goal under 2 s with 1,000,000
//! events behind it).
//!
//! It generates `--events` events of the core benchmark's workload (runs of
//! a 10-step fan driven through decide and apply, `kaon_core::sim::fan_log`),
//! writes them into a data directory the way `kaon cluster restore` does
//! (the events and a snapshot of their state), then `--restarts` times
//! starts `kaon server` on it (embedded Mesos emulator) and measures the
//! time from spawning the process to its first ready `ClusterStatus`
//! (it serves linearizable reads and writes), and the process' resident
//! memory then; each run ends with SIGKILL, as a crash would.
//! `--retention-ms MS` generates the log with that run retention (a fan run
//! takes ~10 s of simulated time: ~MS/10,000 finished runs stay live), as
//! on a node whose history is longer than its retention.
//!
//! `cargo build --release -p kaon-cli -p kaon-bench && ./target/release/kaon-restart-bench --kaon ./target/release/kaon`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use kaon_api::v1;
use kaon_bench::{arg, resident_bytes};

/// Give up on a start after this long.
const START_DEADLINE: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kaon-restart-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let events: usize = arg(&args, "--events", 1_000_000)?;
    let restarts: usize = arg(&args, "--restarts", 3)?;
    let kaon: PathBuf = arg(&args, "--kaon", PathBuf::from("target/release/kaon"))?;
    // Simulated run retention (0: none); a fan run takes ~10 s of it.
    let retention_ms: i64 = arg(&args, "--retention-ms", 0)?;
    anyhow::ensure!(kaon.exists(), "{} does not exist (--kaon)", kaon.display());
    let tmp = tempfile::Builder::new().prefix("kaon-restart.").tempdir()?;
    let data = tmp.path().join("data");

    let t = Instant::now();
    let log = kaon_core::sim::fan_log_retained(events, retention_ms);
    let encoded: Vec<Vec<u8>> = log.iter().map(kaon_core::events::encode).collect();
    drop(log);
    let bytes: usize = encoded.iter().map(Vec::len).sum();
    eprintln!(
        "generated {} events ({:.1} MB encoded) in {:.1} s",
        encoded.len(),
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let state = kaon_log::restore::replay(&encoded)?;
    let runs = state.runs.len();
    let ports = kaon_harness::free_ports(2);
    let (api, raft) = (ports[0], ports[1]);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(kaon_log::restore::restore(
        &data.join("raft"),
        1,
        &format!("127.0.0.1:{raft}"),
        state,
        encoded,
    ))?;
    let on_disk: u64 = std::fs::read_dir(data.join("raft"))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "wrote the data directory ({runs} runs, {:.1} MB on disk) in {:.1} s",
        on_disk as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let url = format!("http://127.0.0.1:{api}");
    let mut times = Vec::new();
    for i in 0..restarts {
        let log = std::fs::File::create(tmp.path().join(format!("server-{i}.log")))?;
        let start = Instant::now();
        let mut child = std::process::Command::new(&kaon)
            .args(["server", "--node-id", "1"])
            .args(["--listen", &format!("127.0.0.1:{api}")])
            .args(["--raft-listen", &format!("127.0.0.1:{raft}")])
            .arg("--data-dir")
            .arg(&data)
            // The log's times are simulated (long past): with a retention
            // the node would retire every run right after it starts.
            .args(["--run-retention", "0"])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting kaon server")?;
        let ready = rt.block_on(async {
            loop {
                if start.elapsed() > START_DEADLINE {
                    return None;
                }
                if let Some(mut c) = kaon_harness::client(&url).await
                    && let Ok(r) = c.cluster_status(v1::ClusterStatusRequest {}).await
                    && r.get_ref().ready
                {
                    return Some((start.elapsed(), r.into_inner().applied_event_index));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let rss = resident_bytes(child.id());
        let _ = child.kill();
        let _ = child.wait();
        if args.iter().any(|a| a == "--show-log") {
            let text = std::fs::read_to_string(tmp.path().join(format!("server-{i}.log")))?;
            eprintln!("--- server log of restart {}:\n{text}", i + 1);
        }
        let (took, applied) = ready.with_context(|| {
            format!(
                "the server did not serve within {START_DEADLINE:?}; its log: {}",
                tmp.path().join(format!("server-{i}.log")).display()
            )
        })?;
        anyhow::ensure!(
            applied >= events as u64,
            "the restarted node applied {applied} events, fewer than the {events} written"
        );
        println!(
            "{}",
            serde_json::json!({"bench": "restart", "events": events, "runs": runs, "retention_ms": retention_ms,
                "restart": i + 1, "ready_ms": took.as_secs_f64() * 1000.0,
                "rss_bytes": rss, "data_bytes": on_disk})
        );
        times.push(took.as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
    println!(
        "restart with {events} events behind it ({runs} runs): median {:.0} ms to serve, \
         best {:.0} ms, worst {:.0} ms over {restarts} restarts",
        median * 1000.0,
        times.first().copied().unwrap_or(0.0) * 1000.0,
        times.last().copied().unwrap_or(0.0) * 1000.0,
    );
    Ok(())
}
