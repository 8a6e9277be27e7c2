//! `kaon-simulation`: runs seeds of the cluster simulation, each in a
//! fresh process (no state leaks between seeds), several at a time, and
//! prints each failing seed with the command that replays it, then a
//! summary line.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Parser;
use kaon_simulation::{Options, Report, replay_command, run_seed};

#[derive(Parser, Debug)]
#[command(about = "kaon's deterministic cluster simulation under seeded faults")]
struct Args {
    /// Run exactly this seed (in this process) and print its report.
    #[arg(long)]
    seed: Option<u64>,
    /// Run this many seeds, starting at --first.
    #[arg(long, default_value_t = 20)]
    seeds: u64,
    /// The first seed of a batch.
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// Seeds run at once (one process each).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Run each seed twice and require the same trace (byte for byte).
    #[arg(long)]
    check_determinism: bool,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seconds of virtual time with clients and faults.
    #[arg(long, default_value_t = 90)]
    fault_secs: u64,
    /// No faults (a baseline).
    #[arg(long)]
    no_faults: bool,
    /// Log kaon's tracing output to stderr (filter as RUST_LOG, e.g.
    /// `kaon_server=debug`), for reading one seed's story.
    #[arg(long)]
    log: bool,
    /// Internal: print the report as one JSON line (child mode).
    #[arg(long, hide = true)]
    json: bool,
}

fn options(a: &Args) -> Options {
    Options {
        nodes: a.nodes,
        fault_span: Duration::from_secs(a.fault_secs),
        faults: !a.no_faults,
        ..Options::default()
    }
}

fn report_json(r: &Report) -> String {
    serde_json::json!({
        "seed": r.seed, "faults": r.faults, "violations": r.violations, "trace": r.trace,
        "events": r.events, "runs": r.runs, "acknowledged": r.acknowledged,
        "executions": r.executions, "virtual_ms": r.virtual_ms,
    })
    .to_string()
}

fn from_json(line: &str) -> Option<Report> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(Report {
        seed: v["seed"].as_u64()?,
        faults: v["faults"]
            .as_object()?
            .iter()
            .map(|(k, n)| {
                (
                    &*Box::leak(k.clone().into_boxed_str()),
                    n.as_u64().unwrap_or(0),
                )
            })
            .collect(),
        violations: v["violations"]
            .as_array()?
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        trace: v["trace"].as_str()?.to_string(),
        events: v["events"].as_u64()?,
        runs: v["runs"].as_u64()?,
        acknowledged: v["acknowledged"].as_u64()?,
        executions: v["executions"].as_u64()?,
        virtual_ms: v["virtual_ms"].as_u64()?,
    })
}

/// Runs `seed` in a child process of this binary.
fn child(seed: u64, a: &Args) -> Report {
    let exe = std::env::current_exe().expect("own path");
    let mut c = Command::new(exe);
    c.args(["--seed", &seed.to_string(), "--json"])
        .args(["--nodes", &a.nodes.to_string()])
        .args(["--fault-secs", &a.fault_secs.to_string()]);
    if a.no_faults {
        c.arg("--no-faults");
    }
    let out = c.stderr(Stdio::null()).output();
    let failed = |why: String| Report {
        seed,
        violations: vec![why],
        ..Report::default()
    };
    match out {
        Err(e) => failed(format!("could not start the seed's process: {e}")),
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .rev()
            .find_map(from_json)
            .unwrap_or_else(|| {
                failed(format!(
                    "the seed's process ended without a report ({})",
                    o.status
                ))
            }),
    }
}

fn main() {
    let a = Args::parse();
    if a.log {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "kaon_server=info,kaon_simulation=info".into()),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    if let Some(seed) = a.seed {
        let r = run_seed(seed, &options(&a));
        if a.json {
            println!("{}", report_json(&r));
        } else {
            println!(
                "seed {seed}: {} events, {} runs, {} acknowledged, {} executions, {:.0} s virtual; faults {:?}; trace {}",
                r.events,
                r.runs,
                r.acknowledged,
                r.executions,
                r.virtual_ms as f64 / 1000.0,
                r.faults,
                r.trace
            );
            for v in &r.violations {
                println!("  VIOLATION {v}");
            }
        }
        std::process::exit(i32::from(!r.violations.is_empty()));
    }
    let seeds: Vec<u64> = (a.first..a.first + a.seeds).collect();
    let results = std::sync::Mutex::new(BTreeMap::<u64, (Report, Option<Report>)>::new());
    let next = std::sync::Mutex::new(seeds.clone().into_iter());
    std::thread::scope(|s| {
        for _ in 0..a.jobs.max(1) {
            s.spawn(|| {
                loop {
                    let Some(seed) = next.lock().unwrap().next() else {
                        return;
                    };
                    let r = child(seed, &a);
                    let again = a.check_determinism.then(|| child(seed, &a));
                    let bad = !r.violations.is_empty()
                        || again.as_ref().is_some_and(|b| b.trace != r.trace);
                    if bad {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "FAIL seed {seed}: {}", replay_command(seed));
                        for v in &r.violations {
                            let _ = writeln!(out, "  {v}");
                        }
                        if let Some(b) = &again
                            && b.trace != r.trace
                        {
                            let _ = writeln!(
                                out,
                                "  not deterministic: trace {} then {}",
                                r.trace, b.trace
                            );
                        }
                    }
                    results.lock().unwrap().insert(seed, (r, again));
                }
            });
        }
    });
    let results = results.into_inner().unwrap();
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut violations, mut failing, mut nondet, mut events, mut executions) = (0, 0, 0, 0, 0);
    for (r, again) in results.values() {
        for (k, n) in &r.faults {
            *faults.entry(k).or_default() += n;
        }
        violations += r.violations.len();
        failing += usize::from(!r.violations.is_empty());
        nondet += usize::from(again.as_ref().is_some_and(|b| b.trace != r.trace));
        events += r.events;
        executions += r.executions;
    }
    let injected: u64 = faults.values().sum();
    println!(
        "{} seeds ({}..{}), {injected} faults injected, {violations} violations in {failing} seeds{}, {events} events, {executions} task executions",
        seeds.len(),
        a.first,
        a.first + a.seeds - 1,
        if a.check_determinism {
            format!(", {nondet} seeds not deterministic")
        } else {
            String::new()
        },
    );
    println!("faults: {faults:?}");
    std::process::exit(i32::from(failing > 0 || nondet > 0));
}
