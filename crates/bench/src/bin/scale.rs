//! `kaon-scale-bench`: the midnight peak (issue 11, section 3: "10,000
//! schedules firing in the same minute start all their runs within 10 s
//! without delaying running steps; 10,000 active runs").
//!
//! It starts one `kaon server` (embedded Mesos emulator) in a temporary
//! directory, registers `--schedules` workflows whose cron fires at the
//! same minute (the first minute boundary at least `--lead-s` seconds
//! away), and a few seconds before that minute starts a probe: a chain of
//! short steps that runs through the peak. From the committed events
//! (read back over the API) it reports when the schedules' runs were
//! recorded and launched relative to the fire minute, how many runs were
//! active at once, the probe's step-to-step gaps (a step's end to the next
//! step running) before and during the peak, and the server's resident
//! memory at the peak.
//!
//! `cargo build --release -p kaon-cli -p kaon-bench && ./target/release/kaon-scale-bench --kaon target/release/kaon`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures_util::StreamExt;
use kaon_api::v1;
use kaon_bench::{arg, resident_bytes};
use kaon_core::events::{Body, Event, TaskState};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn pct(v: &mut [i64], p: f64) -> i64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kaon-scale-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Events after `after` (ReadEvents), decoded.
async fn events_after(url: &str, after: u64) -> anyhow::Result<Vec<Event>> {
    let mut c = kaon_harness::client_with_timeout(url, Duration::from_secs(60))
        .await
        .context("connecting")?;
    let mut stream = c
        .read_events(v1::ReadEventsRequest {
            from_index: after + 1,
            to_index: 0,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.message().await? {
        for b in batch.events {
            out.push(kaon_core::events::decode(&b)?);
        }
    }
    Ok(out)
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let schedules: usize = arg(&args, "--schedules", 10_000)?;
    let lead_s: i64 = arg(&args, "--lead-s", 150)?;
    let probe_steps: usize = arg(&args, "--probe-steps", 300)?;
    let kaon: PathBuf = arg(&args, "--kaon", PathBuf::from("target/release/kaon"))?;
    anyhow::ensure!(kaon.exists(), "{} does not exist (--kaon)", kaon.display());
    let tmp = tempfile::Builder::new().prefix("kaon-scale.").tempdir()?;
    let server = kaon_harness::Server::start_with(
        &kaon,
        &tmp.path().join("data"),
        &["--run-retention", "0"],
        &[("RUST_LOG", "warn")],
    )?;
    let pid = server.proc.as_ref().map(|p| p.pid()).unwrap_or(0);
    let url = server.url.clone();
    let rt = tokio::runtime::Runtime::new()?;

    // The fire minute: the first minute boundary at least lead_s away.
    let fire_ms = (now_ms() + lead_s * 1000).div_euclid(60_000) * 60_000 + 60_000;
    let (hh, mm) = ((fire_ms / 3_600_000) % 24, (fire_ms / 60_000) % 60);
    let t = Instant::now();
    rt.block_on(async {
        let specs = (0..schedules).map(|i| {
            format!(
                "apiVersion: kaon/v1\nname: s{i}\nsteps:\n  a: {{shell: 'true'}}\nschedules:\n  - cron: \"{mm} {hh} * * *\"\n    timezone: UTC\n"
            )
        });
        let url = &url;
        let mut done = futures_util::stream::iter(specs)
            .map(|spec| async move {
                let mut c = kaon_harness::client_with_timeout(url, Duration::from_secs(60))
                    .await
                    .context("connecting")?;
                c.register_workflow(v1::RegisterWorkflowRequest { spec })
                    .await
                    .context("registering")?;
                anyhow::Ok(())
            })
            .buffer_unordered(64);
        while let Some(r) = done.next().await {
            r?;
        }
        anyhow::Ok(())
    })?;
    let registered_s = t.elapsed().as_secs_f64();
    eprintln!(
        "registered {schedules} scheduled workflows in {registered_s:.1} s; they fire at {hh:02}:{mm:02} UTC"
    );
    anyhow::ensure!(
        now_ms() < fire_ms - 15_000,
        "registration ended too close to the fire minute: raise --lead-s"
    );
    let before = rt
        .block_on(kaon_harness::cluster_status(&url))
        .context("status")?
        .applied_event_index;

    // The probe: a chain of short steps through the peak, started ~12 s
    // before it.
    while now_ms() < fire_ms - 12_000 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut probe = String::from("apiVersion: kaon/v1\nname: probe\nsteps:\n");
    for i in 0..probe_steps {
        let dep = if i == 0 {
            String::new()
        } else {
            format!(", depends_on: [p{}]", i - 1)
        };
        probe.push_str(&format!("  p{i}: {{shell: 'sleep 0.1'{dep}}}\n"));
    }
    let probe_run = rt
        .block_on(kaon_harness::submit(&url, &probe, ""))
        .map_err(|e| anyhow::anyhow!("probe: {e}"))?
        .run_id;

    // Follow the log until every scheduled run finished (or 10 minutes).
    let mut events: Vec<Event> = Vec::new();
    let mut last = before;
    let mut peak_rss = 0u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut finished_sched = 0usize;
    let mut probe_done = false;
    while (finished_sched < schedules || !probe_done) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        peak_rss = peak_rss.max(resident_bytes(pid as u32).unwrap_or(0));
        let new = rt.block_on(events_after(&url, last))?;
        if let Some(e) = new.last() {
            last = e.index;
        }
        for e in &new {
            match &e.body {
                Some(Body::RunFinished(f)) if f.run_id == probe_run => probe_done = true,
                Some(Body::RunFinished(_)) => finished_sched += 1,
                _ => {}
            }
        }
        events.extend(new);
    }

    // Scheduled runs: recorded (RunSubmitted) and first launch, vs the fire.
    let mut sched_runs: BTreeMap<u64, (i64, Option<i64>)> = BTreeMap::new();
    let (mut active, mut peak_active) = (0i64, 0i64);
    let mut probe_end: BTreeMap<u32, i64> = BTreeMap::new();
    let mut probe_launch: BTreeMap<u32, i64> = BTreeMap::new();
    let mut probe_running: BTreeMap<u32, i64> = BTreeMap::new();
    for e in &events {
        match &e.body {
            Some(Body::RunSubmitted(r)) => {
                active += 1;
                peak_active = peak_active.max(active);
                if r.workflow != "probe" {
                    sched_runs.insert(e.index, (e.time_unix_ms, None));
                }
            }
            Some(Body::RunFinished(_)) => active -= 1,
            Some(Body::TaskLaunchRequested(l)) if l.run_id == probe_run => {
                probe_launch.insert(l.instance, e.time_unix_ms);
            }
            Some(Body::TaskLaunchRequested(l)) => {
                if let Some(s) = sched_runs.get_mut(&l.run_id) {
                    s.1.get_or_insert(e.time_unix_ms);
                }
            }
            Some(Body::TaskStatusObserved(o))
                if o.run_id == probe_run
                    && TaskState::try_from(o.state).is_ok_and(|s| s.is_terminal()) =>
            {
                probe_end.insert(o.instance, e.time_unix_ms);
            }
            Some(Body::TaskStatusObserved(o))
                if o.run_id == probe_run && o.state == TaskState::Running as i32 =>
            {
                probe_running.entry(o.instance).or_insert(e.time_unix_ms);
            }
            _ => {}
        }
    }
    anyhow::ensure!(
        sched_runs.len() == schedules,
        "{} of {schedules} scheduled runs were recorded",
        sched_runs.len()
    );
    let mut recorded: Vec<i64> = sched_runs.values().map(|(s, _)| s - fire_ms).collect();
    let mut launched: Vec<i64> = sched_runs
        .values()
        .filter_map(|(_, l)| l.map(|l| l - fire_ms))
        .collect();
    // Probe gaps: previous step's end -> next step running (its task
    // started on the agent: the launch queue's wait included). The chain's
    // instances are numbered in order (the body is instance 0).
    let (mut calm, mut peak) = (Vec::new(), Vec::new());
    for (inst, running) in &probe_running {
        if let Some(end) = probe_end.get(&(inst - 1)) {
            let gap = running - end;
            if *end < fire_ms {
                calm.push(gap);
            } else if *end < fire_ms + 60_000 {
                peak.push(gap);
            }
        }
    }
    let r_max = recorded.iter().copied().max().unwrap_or(0);
    let l_max = launched.iter().copied().max().unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({
            "bench": "scale", "schedules": schedules, "registered_s": registered_s,
            "recorded_ms_after_fire": {"p50": pct(&mut recorded, 0.5), "p99": pct(&mut recorded, 0.99), "max": r_max},
            "launched_ms_after_fire": {"p50": pct(&mut launched, 0.5), "p99": pct(&mut launched, 0.99), "max": l_max},
            "peak_active_runs": peak_active,
            "probe_gap_ms_before": {"n": calm.len(), "p50": pct(&mut calm, 0.5), "max": calm.iter().copied().max().unwrap_or(0)},
            "probe_gap_ms_during": {"n": peak.len(), "p50": pct(&mut peak, 0.5), "p99": pct(&mut peak, 0.99), "max": peak.iter().copied().max().unwrap_or(0)},
            "probe": {"launches": probe_launch.len(), "ends": probe_end.len(),
                      "first_launch_ms_after_fire": probe_launch.values().min().map(|t| t - fire_ms),
                      "last_end_ms_after_fire": probe_end.values().max().map(|t| t - fire_ms)},
            "peak_rss_bytes": peak_rss,
            "all_finished": finished_sched == schedules && probe_done,
        })
    );
    println!(
        "{schedules} schedules at one minute: every run recorded {:.1} s after the fire, \
         every first step launched {:.1} s after; {peak_active} runs active at once; \
         probe step gaps median {} ms before, median {} / max {} ms during; peak RSS {:.0} MB",
        r_max as f64 / 1000.0,
        l_max as f64 / 1000.0,
        pct(&mut calm, 0.5),
        pct(&mut peak, 0.5),
        peak.iter().copied().max().unwrap_or(0),
        peak_rss as f64 / 1e6
    );
    drop(server);
    Ok(())
}
