//! `kaon-cluster-bench`: the comparative cluster benchmarks of issue 4,
//! measured on a real 3-node kaon cluster of `kaon server` processes sharing
//! one external `kaon mesos-emulator`, all on loopback.
//!
//! Phases (all by default; `--only a,b` picks some):
//! - `throughput`: committed events/s and submits/s with N concurrent
//!   submitters (gRPC SubmitRun to the leader) for `--secs` seconds; the
//!   workflow's one step has a false `when`, so a run commits its events
//!   without launching a process. Events are counted by the leader's
//!   ClusterStatus `applied_event_index` over the window.
//! - `latency`: sequential submits from one client (p50/p99); the
//!   throughput phase reports the latency under load.
//! - `failover`: SIGKILL the leader `--failovers` times; time from the kill
//!   to the first successful submit on a survivor (tries with a short
//!   deadline, like `etcd_bench.py failover`) and to the launch of that
//!   run's one `true` step (its committed `TaskLaunchRequested` and its
//!   `TASK_RUNNING` observation, from the events' leader timestamps); then
//!   restart the killed node from its data dir and wait until the cluster is
//!   healthy again. Each kill's JSON line carries the run's committed events
//!   (ms after the kill) and its number of launch attempts. A survivor that
//!   does not lead forwards the submit to the leader it knows; the run is
//!   watched on the survivor that answered (a linearizable read: it asks the
//!   leader for a read index first; the reported times are event timestamps,
//!   not the watch's).
//! - `sched`: scheduling overhead on the peer harnesses' two workflows (a
//!   100-step chain and a 1 -> 200 -> 1 fan of `true` steps, 2 execution
//!   slots), with the metric definitions of `../shared/bench/peers/wf_stats.py`.
//!
//! Output: a table on stdout, one JSON line per measurement on stdout and in
//! `--out`, and wf_stats-compatible JSON lines (one per workflow run) in
//! `--wf-out`. Every process it starts runs in its own process group and is
//! killed with it when the bench ends.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use kaon_api::v1;
use kaon_api::v1::kaon_client::KaonClient;
use kaon_core::events::{Body, Event, TaskState};
use kaon_harness::Cluster;
use tonic::transport::Channel;

type Client = KaonClient<Channel>;

/// Cluster start / recovery deadline.
const HEALTHY_DEADLINE: Duration = Duration::from_secs(60);
/// Deadline for a workflow run (chain/fan) to finish.
const RUN_DEADLINE: Duration = Duration::from_secs(300);
/// Give up on a failover after this long.
const FAILOVER_GIVE_UP: Duration = Duration::from_secs(30);
/// Back-off after a submit try that failed fast (etcd_bench.py uses 5 ms).
const FAST_ERROR_BACKOFF: Duration = Duration::from_millis(5);

struct Args {
    kaon: PathBuf,
    dir: Option<PathBuf>,
    out: Option<PathBuf>,
    wf_out: Option<PathBuf>,
    secs: f64,
    concurrency: usize,
    seq: usize,
    failovers: usize,
    runs: usize,
    attempt_timeout: Duration,
    only: Vec<String>,
}

const PHASES: [&str; 4] = ["throughput", "latency", "sched", "failover"];

fn usage() -> &'static str {
    "usage: kaon-cluster-bench [--kaon PATH] [--dir DIR] [--out FILE.jsonl] [--wf-out FILE.jsonl]
       [--secs 15] [--concurrency 64] [--seq 1000] [--failovers 20] [--runs 3]
       [--attempt-timeout-ms 50] [--only throughput,latency,failover,sched]"
}

fn parse() -> anyhow::Result<Args> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut a = Args {
        kaon: exe.with_file_name("kaon"),
        dir: None,
        out: None,
        wf_out: None,
        secs: 15.0,
        concurrency: 64,
        seq: 1000,
        failovers: 20,
        runs: 3,
        attempt_timeout: Duration::from_millis(50),
        only: PHASES.iter().map(|s| s.to_string()).collect(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{}", usage());
            std::process::exit(0);
        }
        let val = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{}", usage()))?;
        let num = |v: &str| -> anyhow::Result<f64> {
            v.parse::<f64>()
                .with_context(|| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--kaon" => a.kaon = PathBuf::from(val),
            "--dir" => a.dir = Some(PathBuf::from(val)),
            "--out" => a.out = Some(PathBuf::from(val)),
            "--wf-out" => a.wf_out = Some(PathBuf::from(val)),
            "--secs" => a.secs = num(&val)?,
            "--concurrency" => a.concurrency = num(&val)? as usize,
            "--seq" => a.seq = num(&val)? as usize,
            "--failovers" => a.failovers = num(&val)? as usize,
            "--runs" => a.runs = num(&val)? as usize,
            "--attempt-timeout-ms" => a.attempt_timeout = Duration::from_millis(num(&val)? as u64),
            "--only" => {
                a.only = val.split(',').map(str::to_string).collect();
                if let Some(p) = a.only.iter().find(|p| !PHASES.contains(&p.as_str())) {
                    bail!("--only: unknown phase {p:?} (phases: {})", PHASES.join(","));
                }
            }
            other => bail!("unknown argument {other}\n{}", usage()),
        }
    }
    if !a.kaon.exists() {
        bail!(
            "no kaon binary at {} (build it: cargo build --release -p kaon-cli, or pass --kaon)",
            a.kaon.display()
        );
    }
    if a.concurrency == 0 || a.runs == 0 {
        bail!("--concurrency and --runs must be at least 1");
    }
    Ok(a)
}

// ---------------------------------------------------------------- workflows

fn skip_spec() -> String {
    "apiVersion: kaon/v1\nname: bench-skip\nsteps:\n  s: {run: [\"true\"], when: \"false\"}\n"
        .to_string()
}

fn one_step_spec() -> String {
    "apiVersion: kaon/v1\nname: bench-one\nsteps:\n  t: {run: [\"true\"]}\n".to_string()
}

const SLOT_DEFAULTS: &str = "defaults:\n  resources: {cpus: 1, mem: 64MiB}\n";

fn chain_spec() -> String {
    let mut s = format!("apiVersion: kaon/v1\nname: bench-chain\n{SLOT_DEFAULTS}steps:\n");
    for i in 0..100 {
        if i == 0 {
            s += "  t000: {run: [\"true\"]}\n";
        } else {
            s += &format!(
                "  t{i:03}: {{run: [\"true\"], depends_on: [t{:03}]}}\n",
                i - 1
            );
        }
    }
    s
}

fn fan_spec() -> String {
    let mut s = format!(
        "apiVersion: kaon/v1\nname: bench-fan\n{SLOT_DEFAULTS}steps:\n  start: {{run: [\"true\"]}}\n"
    );
    let mids: Vec<String> = (0..200).map(|i| format!("f{i:03}")).collect();
    for m in &mids {
        s += &format!("  {m}: {{run: [\"true\"], depends_on: [start]}}\n");
    }
    s += &format!(
        "  end: {{run: [\"true\"], depends_on: [{}]}}\n",
        mids.join(", ")
    );
    s
}

async fn register(c: &mut Client, spec: String) -> anyhow::Result<()> {
    c.register_workflow(v1::RegisterWorkflowRequest { spec })
        .await
        .context("registering a workflow")?;
    Ok(())
}

async fn submit(c: &mut Client, workflow: &str, key: &str) -> Result<u64, tonic::Status> {
    Ok(c.submit_run(v1::SubmitRunRequest {
        workflow: Some(v1::submit_run_request::Workflow::Registered(
            v1::WorkflowRef {
                name: workflow.into(),
                version: 0,
            },
        )),
        params_json: Default::default(),
        idempotency_key: key.into(),
    })
    .await?
    .into_inner()
    .run_id)
}

/// Streams the run's committed events from its start until `RunFinished`;
/// `on_event` sees each as it arrives.
async fn watch_until_finished(
    c: &mut Client,
    run_id: u64,
    deadline: Duration,
    mut on_event: impl FnMut(&Event),
) -> anyhow::Result<Vec<Event>> {
    let fut = async {
        let mut stream = c
            .watch_run(v1::WatchRunRequest {
                run_id,
                after_index: 0,
            })
            .await?
            .into_inner();
        let mut events = Vec::new();
        while let Some(ev) = stream.message().await? {
            let Some(e) = ev.event else { continue };
            on_event(&e);
            let done = matches!(e.body, Some(Body::RunFinished(_)));
            events.push(e);
            if done {
                return Ok(events);
            }
        }
        bail!("the watch of run {run_id} ended before RunFinished")
    };
    tokio::time::timeout(deadline, fut)
        .await
        .with_context(|| format!("run {run_id} did not finish within {deadline:?}"))?
}

// ---------------------------------------------------------------- stats

/// Linear-interpolated percentile of sorted values (as etcd_bench.py `pct`).
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = (sorted.len() - 1) as f64 * p / 100.0;
    let lo = k as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (k - lo as f64)
}

/// Median as Python's `statistics.median`.
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn now_unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

struct Out {
    file: Option<std::fs::File>,
    wf_file: Option<std::fs::File>,
    table: Vec<(String, String)>,
}

impl Out {
    fn line(&mut self, v: serde_json::Value) {
        println!("{v}");
        if let Some(f) = &mut self.file {
            let _ = writeln!(f, "{v}");
        }
    }
    fn wf_line(&mut self, v: serde_json::Value) {
        println!("{v}");
        if let Some(f) = &mut self.wf_file {
            let _ = writeln!(f, "{v}");
        }
    }
    fn row(&mut self, metric: impl Into<String>, value: impl Into<String>) {
        self.table.push((metric.into(), value.into()));
    }
}

// ---------------------------------------------------------------- phases

/// Errors of a phase by gRPC code (`Unavailable`, `DeadlineExceeded`, ...;
/// `ClientTimeout` when the bench's own per-call deadline fired), each
/// with the first message seen, so a failure says why.
#[derive(Default)]
struct Errors {
    by_code: BTreeMap<String, (u64, String)>,
}

impl Errors {
    fn add(&mut self, code: &str, message: &str) {
        let e = self
            .by_code
            .entry(code.to_string())
            .or_insert_with(|| (0, message.chars().take(200).collect()));
        e.0 += 1;
    }
    fn merge(&mut self, other: Errors) {
        for (code, (n, msg)) in other.by_code {
            let e = self.by_code.entry(code).or_insert((0, msg));
            e.0 += n;
        }
    }
    fn total(&self) -> u64 {
        self.by_code.values().map(|(n, _)| n).sum()
    }
    fn json(&self) -> serde_json::Value {
        self.by_code
            .iter()
            .map(|(c, (n, m))| {
                (
                    c.clone(),
                    serde_json::json!({"count": n, "first_message": m}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
    fn summary(&self) -> String {
        if self.by_code.is_empty() {
            return "errors 0".into();
        }
        let parts: Vec<String> = self
            .by_code
            .iter()
            .map(|(c, (n, m))| format!("{c} x{n} ({m})"))
            .collect();
        format!("errors {}: {}", self.total(), parts.join("; "))
    }
}

/// The bench's own deadline on one submit under load (a submit that takes
/// longer is counted as `ClientTimeout`).
const LOAD_CALL_DEADLINE: Duration = Duration::from_secs(10);

/// `concurrency` submitters for `secs`; returns (latencies in s, errors by
/// code, submits completed inside the window, committed events in the
/// window).
async fn load(
    cluster: &Cluster,
    leader: usize,
    concurrency: usize,
    secs: f64,
) -> anyhow::Result<(Vec<f64>, Errors, u64, u64)> {
    let client = cluster.connect(leader).await?;
    let before = status(cluster, leader).await?.applied_event_index;
    let t0 = Instant::now();
    let stop_at = t0 + Duration::from_secs_f64(secs);
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let mut c = client.clone();
        workers.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut in_window) = (Vec::new(), Errors::default(), 0u64);
            while Instant::now() < stop_at {
                let s = Instant::now();
                match tokio::time::timeout(LOAD_CALL_DEADLINE, submit(&mut c, "bench-skip", ""))
                    .await
                {
                    Ok(Ok(_)) => {
                        let done = Instant::now();
                        lat.push((done - s).as_secs_f64());
                        if done <= stop_at {
                            in_window += 1;
                        }
                    }
                    Ok(Err(st)) => errors.add(&format!("{:?}", st.code()), st.message()),
                    Err(_) => errors.add(
                        "ClientTimeout",
                        &format!("no answer within the bench's {LOAD_CALL_DEADLINE:?}"),
                    ),
                }
            }
            (lat, errors, in_window)
        }));
    }
    // The committed index at the end of the window (not after the stragglers).
    tokio::time::sleep_until(stop_at.into()).await;
    let after = status(cluster, leader).await?.applied_event_index;
    let (mut lat, mut errors, mut in_window) = (Vec::new(), Errors::default(), 0);
    for w in workers {
        let (l, e, n) = w.await?;
        lat.extend(l);
        errors.merge(e);
        in_window += n;
    }
    Ok((sorted(lat), errors, in_window, after - before))
}

/// Node `i`'s ClusterStatus, or an error saying it did not answer.
async fn status(cluster: &Cluster, i: usize) -> anyhow::Result<v1::ClusterStatusResponse> {
    cluster
        .status(i)
        .await
        .with_context(|| format!("node {} does not answer ClusterStatus", i + 1))
}

/// The highest Raft term any answering node reports (each election raises
/// it at least by one).
async fn max_term(cluster: &Cluster) -> u64 {
    let mut t = 0;
    for i in 0..cluster.len() {
        if let Some(s) = cluster.status(i).await {
            t = t.max(s.term);
        }
    }
    t
}

async fn phase_throughput(
    cluster: &Cluster,
    a: &Args,
    out: &mut Out,
    leader: usize,
) -> anyhow::Result<()> {
    eprintln!(
        "# throughput: {} submitters x {} s against the leader (node {})",
        a.concurrency,
        a.secs,
        leader + 1
    );
    load(cluster, leader, a.concurrency, 1.0).await?; // warm-up, as etcd_bench.py
    let (lat, errors, submits, events) = load(cluster, leader, a.concurrency, a.secs).await?;
    let v = serde_json::json!({
        "test": "throughput", "concurrency": a.concurrency, "seconds": a.secs,
        "events": events, "events_per_s": events as f64 / a.secs,
        "submits": submits, "submits_per_s": submits as f64 / a.secs,
        "events_per_submit": events as f64 / submits.max(1) as f64,
        "errors": errors.total(), "errors_by_code": errors.json(),
        "p50_ms": pct(&lat, 50.0) * 1e3, "p99_ms": pct(&lat, 99.0) * 1e3,
    });
    out.row(
        format!(
            "committed events/s, {} submitters, {} s",
            a.concurrency, a.secs
        ),
        format!(
            "{:.0} events/s ({:.0} submits/s x {:.1} events; {})",
            events as f64 / a.secs,
            submits as f64 / a.secs,
            events as f64 / submits.max(1) as f64,
            errors.summary()
        ),
    );
    out.row(
        format!("submit latency under load ({} in flight)", a.concurrency),
        format!(
            "p50 {:.2} ms, p99 {:.2} ms",
            pct(&lat, 50.0) * 1e3,
            pct(&lat, 99.0) * 1e3
        ),
    );
    out.line(v);
    Ok(())
}

async fn phase_latency(
    cluster: &Cluster,
    a: &Args,
    out: &mut Out,
    leader: usize,
) -> anyhow::Result<()> {
    eprintln!(
        "# latency: {} sequential submits, one client -> leader",
        a.seq
    );
    let mut c = cluster.connect(leader).await?;
    for _ in 0..50 {
        submit(&mut c, "bench-skip", "").await?;
    }
    let mut lat = Vec::with_capacity(a.seq);
    let t0 = Instant::now();
    for _ in 0..a.seq {
        let s = Instant::now();
        submit(&mut c, "bench-skip", "").await?;
        lat.push(s.elapsed().as_secs_f64());
    }
    let wall = t0.elapsed().as_secs_f64();
    let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    let lat = sorted(lat);
    out.row(
        format!("sequential submit latency, n={}", a.seq),
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, mean {:.2} ms ({:.0} submits/s)",
            pct(&lat, 50.0) * 1e3,
            pct(&lat, 99.0) * 1e3,
            mean * 1e3,
            a.seq as f64 / wall
        ),
    );
    out.line(serde_json::json!({
        "test": "seq_submit", "n": a.seq,
        "p50_ms": pct(&lat, 50.0) * 1e3, "p99_ms": pct(&lat, 99.0) * 1e3,
        "mean_ms": mean * 1e3, "max_ms": lat.last().copied().unwrap_or(f64::NAN) * 1e3,
        "submits_per_s": a.seq as f64 / wall,
    }));
    Ok(())
}

fn summary(v: &[f64]) -> String {
    let s = sorted(v.to_vec());
    format!(
        "median {:.0} ms, p99 {:.0} ms, min {:.0}, max {:.0} (n={})",
        median(&s),
        pct(&s, 99.0),
        s.first().copied().unwrap_or(f64::NAN),
        s.last().copied().unwrap_or(f64::NAN),
        s.len()
    )
}

async fn phase_failover(
    cluster: &mut Cluster,
    a: &Args,
    out: &mut Out,
    mut leader: usize,
) -> anyhow::Result<usize> {
    eprintln!(
        "# failover x{}: SIGKILL the leader; first successful submit on a survivor ({} ms tries), then its step's launch",
        a.failovers,
        a.attempt_timeout.as_millis()
    );
    let nonce = now_unix_ms() as u64;
    let (mut commit, mut intent, mut running, mut recovery) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Kills after which the step needed more than one launch attempt.
    let mut relaunched = 0usize;
    // Elections between a healthy cluster and the next kill.
    let (mut depositions, mut last_term_after) = (0u64, None);
    for k in 0..a.failovers {
        // The leader now: a restarted node may have deposed the one the
        // last round ended with (it comes back with a higher term; openraft
        // has no pre-vote), and killing a follower measures nothing.
        leader = cluster.wait_healthy(HEALTHY_DEADLINE).await?;
        let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let mut clients = Vec::new();
        for &i in &survivors {
            let mut c = cluster.connect(i).await?;
            // The connection is up (HTTP/2 established) before the kill.
            c.cluster_status(v1::ClusterStatusRequest {}).await?;
            clients.push(c);
        }
        let term_before = status(cluster, leader).await?.term;
        if let Some(t) = last_term_after {
            // Elections after the last round was healthy: a restarted node
            // deposed the leader.
            depositions += term_before.saturating_sub(t);
        }
        let kill_ms = now_unix_ms();
        let t0 = Instant::now();
        cluster.kill(leader);
        let key = format!("failover-{nonce}-{k}");
        let mut attempts = 0usize;
        let (run_id, via) = loop {
            if t0.elapsed() > FAILOVER_GIVE_UP {
                bail!("no submit succeeded within {FAILOVER_GIVE_UP:?} after killing the leader");
            }
            let j = attempts % clients.len();
            attempts += 1;
            let s = Instant::now();
            match tokio::time::timeout(
                a.attempt_timeout,
                submit(&mut clients[j], "bench-one", &key),
            )
            .await
            {
                Ok(Ok(id)) => break (id, survivors[j]),
                _ => {
                    if s.elapsed() < a.attempt_timeout {
                        tokio::time::sleep(FAST_ERROR_BACKOFF).await;
                    }
                }
            }
        };
        let commit_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut seen_running_ms = None;
        let mut c = clients[survivors.iter().position(|&i| i == via).unwrap_or(0)].clone();
        let events = watch_until_finished(&mut c, run_id, FAILOVER_GIVE_UP, |e| {
            if seen_running_ms.is_none()
                && let Some(Body::TaskStatusObserved(t)) = &e.body
                && (t.state == TaskState::Running as i32 || t.state == TaskState::Finished as i32)
            {
                seen_running_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
            }
        })
        .await?;
        let intent_ms = events.iter().find_map(|e| match &e.body {
            Some(Body::TaskLaunchRequested(_)) => Some(e.time_unix_ms as f64 - kill_ms),
            _ => None,
        });
        let running_ms = events.iter().find_map(|e| match &e.body {
            Some(Body::TaskStatusObserved(t)) if t.state == TaskState::Running as i32 => {
                Some(e.time_unix_ms as f64 - kill_ms)
            }
            _ => None,
        });
        // The run's committed events, ms after the kill (leader clocks), so a
        // slow launch can be read from the results.
        let timeline: Vec<serde_json::Value> = events
            .iter()
            .filter_map(|e| {
                let b = e.body.as_ref()?;
                let mut v = serde_json::json!({
                    "ms": (e.time_unix_ms as f64 - kill_ms).round(),
                    "event": kaon_core::events::body_name(b),
                });
                match b {
                    Body::TaskLaunchRequested(l) => v["attempt"] = l.attempt.into(),
                    Body::TaskStatusObserved(t) => {
                        v["attempt"] = t.attempt.into();
                        v["state"] = format!("{:?}", t.state()).into();
                        if !t.reason.is_empty() {
                            v["reason"] = t.reason.clone().into();
                        }
                        if !t.message.is_empty() {
                            v["message"] = t.message.clone().into();
                        }
                    }
                    _ => {}
                }
                Some(v)
            })
            .collect();
        let launches = events
            .iter()
            .filter(|e| matches!(e.body, Some(Body::TaskLaunchRequested(_))))
            .count();
        if launches > 1 {
            relaunched += 1;
        }
        let outcome_ok = events.iter().any(|e| {
            matches!(&e.body, Some(Body::RunFinished(f)) if f.outcome == kaon_core::events::RunOutcome::Succeeded as i32)
        });
        // Restart the killed node from its data dir; wait until healthy.
        let r0 = Instant::now();
        cluster.start_node(leader)?;
        let new_leader = cluster.wait_healthy(HEALTHY_DEADLINE).await?;
        let recovery_s = r0.elapsed().as_secs_f64();
        let term_after = status(cluster, new_leader).await?.term;
        last_term_after = Some(term_after);
        out.line(serde_json::json!({
            "test": "failover", "kill": k + 1, "killed_node": leader + 1,
            "new_leader": new_leader + 1, "via_node": via + 1, "term_before": term_before,
            "term_after": term_after, "attempts": attempts, "run_id": run_id,
            "commit_ms": commit_ms, "launch_intent_ms": intent_ms,
            "task_running_ms": running_ms, "task_running_seen_by_client_ms": seen_running_ms,
            "run_succeeded": outcome_ok, "launch_attempts": launches, "recovery_s": recovery_s,
            "events": timeline,
        }));
        commit.push(commit_ms);
        if let Some(x) = intent_ms {
            intent.push(x);
        }
        if let Some(x) = running_ms {
            running.push(x);
        }
        recovery.push(recovery_s * 1e3);
        leader = new_leader;
    }
    let stats = |v: &[f64]| {
        let s = sorted(v.to_vec());
        serde_json::json!({"n": s.len(), "median_ms": median(&s), "p99_ms": pct(&s, 99.0),
            "min_ms": s.first(), "max_ms": s.last()})
    };
    out.line(serde_json::json!({
        "test": "failover_summary", "kills": a.failovers,
        "attempt_timeout_ms": a.attempt_timeout.as_millis() as u64,
        "to_commit": stats(&commit), "to_launch_intent": stats(&intent),
        "to_task_running": stats(&running), "restart_to_healthy": stats(&recovery),
        "kills_with_relaunched_step": relaunched,
        "elections_after_healthy": depositions,
    }));
    out.row(
        "failover: kill -9 leader -> first successful submit",
        summary(&commit),
    );
    out.row(
        "failover: kill -9 leader -> launch intent committed",
        summary(&intent),
    );
    out.row(
        "failover: kill -9 leader -> step TASK_RUNNING recorded",
        summary(&running),
    );
    out.row(
        "failover: kills whose step needed a second launch attempt",
        format!("{relaunched} of {}", a.failovers),
    );
    out.row(
        "failover: elections after the cluster was healthy again (a restarted node deposing the leader)",
        format!("{depositions} in {} kills", a.failovers),
    );
    out.row(
        "failover: restart of killed node -> cluster healthy",
        summary(&recovery),
    );
    Ok(leader)
}

/// One run of a shape; the wf_stats.py `summarize` fields, from kaon's own
/// records: a task's start is the leader timestamp of its committed
/// TASK_RUNNING observation, its end that of its TASK_FINISHED.
async fn sched_run(
    cluster: &Cluster,
    leader: usize,
    shape: &str,
    warmup: bool,
) -> anyhow::Result<serde_json::Value> {
    let mut c = cluster.connect(leader).await?;
    let workflow = format!("bench-{shape}");
    let t0 = Instant::now();
    let run_id = submit(&mut c, &workflow, "").await?;
    let mut wall = 0.0;
    let events = watch_until_finished(&mut c, run_id, RUN_DEADLINE, |e| {
        if matches!(e.body, Some(Body::RunFinished(_))) {
            wall = t0.elapsed().as_secs_f64();
        }
    })
    .await?;
    let mut path: BTreeMap<u32, String> = BTreeMap::new();
    // First launch intent per step (leader timestamp, s): splits a handoff
    // into "commit the intent" and "Mesos launch until TASK_RUNNING".
    let mut intent: BTreeMap<String, f64> = BTreeMap::new();
    let mut times: BTreeMap<String, (Option<f64>, Option<f64>)> = BTreeMap::new();
    let (mut submitted, mut finished, mut status) = (0.0, 0.0, String::new());
    for e in &events {
        let t = e.time_unix_ms as f64 / 1e3;
        match &e.body {
            Some(Body::RunSubmitted(_)) => submitted = t,
            Some(Body::RunFinished(f)) => {
                finished = t;
                status = format!("{:?}", f.outcome());
            }
            Some(Body::TaskLaunchRequested(l)) => {
                path.insert(l.instance, l.step_path.clone());
                times.entry(l.step_path.clone()).or_default();
                intent.entry(l.step_path.clone()).or_insert(t);
            }
            Some(Body::TaskStatusObserved(s)) => {
                let Some(p) = path.get(&s.instance) else {
                    continue;
                };
                let slot = times.entry(p.clone()).or_default();
                if s.state == TaskState::Running as i32 && slot.0.is_none() {
                    slot.0 = Some(t);
                } else if s.state == TaskState::Finished as i32 {
                    slot.1 = Some(t);
                }
            }
            _ => {}
        }
    }
    let n = times.len();
    let starts: Vec<f64> = times.values().filter_map(|v| v.0).collect();
    let ends: Vec<f64> = times.values().filter_map(|v| v.1).collect();
    let bodies: Vec<f64> = times
        .values()
        .filter_map(|(s, e)| Some(e.as_ref()? - s.as_ref()?))
        .collect();
    let mut v = serde_json::json!({
        "shape": shape, "n_tasks": n, "wall_s": wall,
        "tasks_per_s": n as f64 / wall, "per_task_ms": wall / n as f64 * 1e3,
        "engine": "kaon", "run_id": run_id, "status": status, "warmup": warmup,
        "run_submitted_to_finished_s": finished - submitted,
        "times": "leader timestamps (ms) of committed TaskStatusObserved RUNNING / FINISHED",
    });
    if let (Some(lo), Some(hi)) = (
        starts.iter().copied().reduce(f64::min),
        ends.iter().copied().reduce(f64::max),
    ) {
        v["engine_s"] = (hi - lo).into();
    }
    if !bodies.is_empty() {
        v["task_body_ms"] = (median(&bodies) * 1e3).into();
    }
    let get = |k: &str| times.get(k).and_then(|&(s, e)| Some((s?, e?)));
    if shape == "chain" {
        // Paths t000..t099 sort in chain order.
        let ids: Vec<&String> = times.keys().collect();
        let gaps: Option<Vec<f64>> = (1..ids.len())
            .map(|i| Some(get(ids[i])?.0 - get(ids[i - 1])?.1))
            .collect();
        match gaps {
            Some(g) => {
                let s = sorted(g.clone());
                v["handoff_ms"] = (median(&g) * 1e3).into();
                v["handoff_p90_ms"] = (s[(0.9 * (s.len() - 1) as f64) as usize] * 1e3).into();
                // Breakdown: end(t_{i-1}) -> intent(t_i) committed -> start(t_i).
                let split: Option<Vec<(f64, f64)>> = (1..ids.len())
                    .map(|i| {
                        let it = *intent.get(ids[i])?;
                        Some((it - get(ids[i - 1])?.1, get(ids[i])?.0 - it))
                    })
                    .collect();
                if let Some(split) = split {
                    let (a, b): (Vec<f64>, Vec<f64>) = split.into_iter().unzip();
                    v["handoff_to_intent_ms"] = (median(&a) * 1e3).into();
                    v["handoff_intent_to_running_ms"] = (median(&b) * 1e3).into();
                }
            }
            None => v["handoff_error"] = "a task has no RUNNING or FINISHED time".into(),
        }
    } else {
        let mids: Option<Vec<(f64, f64)>> = times
            .keys()
            .filter(|k| *k != "start" && *k != "end")
            .map(|k| get(k))
            .collect();
        match (get("start"), get("end"), mids) {
            (Some(s), Some(e), Some(m)) => {
                let first = m.iter().map(|x| x.0).fold(f64::INFINITY, f64::min);
                let last = m.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
                v["fan_out_handoff_ms"] = ((first - s.1) * 1e3).into();
                v["fan_in_handoff_ms"] = ((e.0 - last) * 1e3).into();
                // The 200 launch intents: from the first to the last committed.
                let its: Vec<f64> = intent
                    .iter()
                    .filter(|(k, _)| *k != "start" && *k != "end")
                    .map(|(_, &t)| t)
                    .collect();
                if let (Some(lo), Some(hi)) = (
                    its.iter().copied().reduce(f64::min),
                    its.iter().copied().reduce(f64::max),
                ) {
                    v["fan_out_intents_span_ms"] = ((hi - lo) * 1e3).into();
                }
            }
            _ => v["handoff_error"] = "a task has no RUNNING or FINISHED time".into(),
        }
    }
    Ok(v)
}

async fn phase_sched(
    cluster: &Cluster,
    a: &Args,
    out: &mut Out,
    leader: usize,
) -> anyhow::Result<()> {
    eprintln!(
        "# scheduling overhead: chain 100 and fan 1->200->1 of `true`, 2 slots; warm-up of each, then {} runs",
        a.runs
    );
    let mut order = vec![("chain", true), ("fan", true)];
    for _ in 0..a.runs {
        order.push(("chain", false));
        order.push(("fan", false));
    }
    let mut runs = Vec::new();
    for (shape, warmup) in order {
        let v = sched_run(cluster, leader, shape, warmup).await?;
        if v["status"] != "Succeeded" {
            bail!("{shape} run did not succeed: {v}");
        }
        out.wf_line(v.clone());
        if !warmup {
            runs.push(v);
        }
    }
    for shape in ["chain", "fan"] {
        let rs: Vec<&serde_json::Value> = runs.iter().filter(|r| r["shape"] == shape).collect();
        let med = |k: &str| {
            let xs: Vec<f64> = rs.iter().filter_map(|r| r[k].as_f64()).collect();
            median(&xs)
        };
        let walls: Vec<String> = rs
            .iter()
            .map(|r| format!("{:.2}", r["wall_s"].as_f64().unwrap_or(f64::NAN)))
            .collect();
        let handoff = if shape == "chain" {
            format!("link handoff {:.0} ms", med("handoff_ms"))
        } else {
            format!(
                "fan-out {:.0} ms, fan-in {:.0} ms",
                med("fan_out_handoff_ms"),
                med("fan_in_handoff_ms")
            )
        };
        out.row(
            format!(
                "{shape} ({} tasks), median of {} [{}]",
                rs.first().map(|r| r["n_tasks"].clone()).unwrap_or_default(),
                rs.len(),
                walls.join(", ")
            ),
            format!(
                "wall {:.2} s, {:.1} tasks/s, {:.1} ms/task, {handoff}, task body {:.0} ms",
                med("wall_s"),
                med("tasks_per_s"),
                med("per_task_ms"),
                med("task_body_ms")
            ),
        );
    }
    Ok(())
}

async fn run(a: Args) -> anyhow::Result<()> {
    let tmp;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("kaon-cluster-bench.")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let open = |p: &Option<PathBuf>| -> anyhow::Result<Option<std::fs::File>> {
        p.as_ref()
            .map(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening {}", p.display()))
            })
            .transpose()
    };
    let mut out = Out {
        file: open(&a.out)?,
        wf_file: open(&a.wf_out)?,
        table: Vec::new(),
    };
    // 2 slots: each step asks cpus 1 (+ 0.01 for kaon's executor).
    let mut cluster = Cluster::builder(&a.kaon)
        .dir(&dir)
        .agent("127.0.0.1:0;cpus=2.1;mem=16384;disk=100000;ports=31000-32000")
        .start()?;
    let t_start = Instant::now();
    let mut leader = cluster.wait_healthy(HEALTHY_DEADLINE).await?;
    eprintln!(
        "# 3-node cluster healthy after {:.1} s, leader node {}; data and logs in {}",
        t_start.elapsed().as_secs_f64(),
        leader + 1,
        dir.display()
    );
    {
        let mut c = cluster.connect(leader).await?;
        for spec in [skip_spec(), one_step_spec(), chain_spec(), fan_spec()] {
            register(&mut c, spec).await?;
        }
    }
    out.line(serde_json::json!({
        "test": "setup", "kaon": a.kaon.display().to_string(), "dir": dir.display().to_string(),
        "nodes": 3, "leader": leader + 1, "agent_cpus": 2.1, "step_cpus": 1,
    }));
    let on = |p: &str| a.only.iter().any(|x| x == p);
    // Elections per phase: the highest Raft term before and after. Without
    // faults (every phase but failover) there must be none (issue 8).
    let mut elections = Vec::new();
    for phase in PHASES {
        if !on(phase) {
            continue;
        }
        let term_before = max_term(&cluster).await;
        match phase {
            "throughput" => phase_throughput(&cluster, &a, &mut out, leader).await?,
            "latency" => phase_latency(&cluster, &a, &mut out, leader).await?,
            "sched" => phase_sched(&cluster, &a, &mut out, leader).await?,
            "failover" => leader = phase_failover(&mut cluster, &a, &mut out, leader).await?,
            _ => unreachable!("PHASES holds the phases run() knows"),
        }
        if phase != "failover" {
            leader = cluster.wait_healthy(HEALTHY_DEADLINE).await?;
        }
        let term_after = max_term(&cluster).await;
        let n = term_after.saturating_sub(term_before);
        out.line(serde_json::json!({
            "test": "elections", "phase": phase, "term_before": term_before,
            "term_after": term_after, "elections": n,
        }));
        elections.push(format!("{phase} {n}"));
    }
    out.row(
        "elections per phase (Raft term increase)",
        elections.join(", "),
    );
    let _ = leader;
    drop(cluster);
    println!();
    println!("| kaon 3-node cluster (kaon-cluster-bench) | value |");
    println!("|---|---|");
    for (m, v) in &out.table {
        println!("| {m} | {v} |");
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kaon-cluster-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
