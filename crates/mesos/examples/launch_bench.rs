//! Launch-throughput benchmark: `true` tasks through driver + emulator
//! (+ kaon-executor for custom-executor tasks).
//!
//! Build the executor first, then run, e.g.:
//! `cargo build --release -p kaon-mesos --bins --examples &&
//!  target/release/examples/launch_bench command 1000`
//! Modes: `command` (built-in command tasks) or `executor` (one kaon-executor
//! per task). Optional third argument: maximum tasks in flight.

use kaon_core::placement::{self, Request};
use kaon_mesos::driver::{Driver, DriverConfig, DriverEvent};
use kaon_mesos::executor::{StepSpec, executor_info};
use kaon_mesos::resources::Resources;
use kaon_mesos::types::scheduler::Operation;
use kaon_mesos::types::{B64, CommandInfo, FrameworkInfo, Id, Resource, TaskInfo, TaskState};
use kaon_mesos_emulator::{AgentConfig, Emulator, EmulatorConfig};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Filter on leftovers and declined offers. The same resources are not
/// re-offered for this long, but resources freed by finishing tasks are
/// offered at once (Mesos filters only block offers that are a subset of what
/// was refused), so a scheduler does not spin on offers it cannot use.
const REFUSE_SECONDS: f64 = 5.0;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().unwrap_or_else(|| "command".into());
    let total: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let inflight_max: usize = args
        .get(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX);
    let mut inflight = 0usize;
    let mut declined_with_work = false;
    let custom = mode == "executor";
    let dir = tempfile::tempdir()?;
    let emu = Emulator::start(EmulatorConfig {
        agents: vec![AgentConfig::loopback(1000.0, 1_000_000.0)],
        allocation_interval: Duration::from_millis(100),
        work_dir: dir.path().to_path_buf(),
        ..EmulatorConfig::default()
    })
    .await?;
    let info = FrameworkInfo {
        user: "bench".into(),
        name: "launch-bench".into(),
        failover_timeout: Some(60.0),
        ..Default::default()
    };
    let (h, mut rx) = Driver::subscribe(DriverConfig::new(emu.master_url(), info));
    let task_res = |cpus: f64| {
        vec![
            Resource::scalar("cpus", cpus),
            Resource::scalar("mem", 32.0),
        ]
    };
    let mut pending: VecDeque<usize> = (0..total).collect();
    let mut accepted_at: HashMap<String, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(total);
    let mut done = 0usize;
    let mut failed = 0usize;
    let mut started: Option<Instant> = None;
    while done < total {
        let ev = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("driver ended"))?;
        match ev {
            DriverEvent::Offers(offers) => {
                // The offers as kaon's placement sees them (the same first
                // fit kaon's leader uses).
                let views: Vec<placement::Offer> = offers
                    .iter()
                    .map(|o| {
                        let r = Resources::from_mesos(&o.resources);
                        placement::Offer {
                            id: o.id.value.clone(),
                            agent_id: o.agent_id.value.clone(),
                            hostname: o.hostname.clone(),
                            scalars: r.scalars,
                            ..placement::Offer::default()
                        }
                    })
                    .collect();
                let mut reqs = Vec::new();
                for &i in pending.iter().take(inflight_max.saturating_sub(inflight)) {
                    let mut r = Resources::from_mesos(&task_res(0.01));
                    if custom {
                        r.add(&Resources::from_mesos(&task_res(0.01)));
                    }
                    reqs.push(Request {
                        id: format!("t{i}"),
                        scalars: r.scalars,
                        ports: 0,
                        constraints: vec![],
                    });
                }
                let plan = placement::place(&reqs, &views);
                started.get_or_insert_with(Instant::now);
                for (offer_id, placements) in plan.launches {
                    let tasks: Vec<TaskInfo> = placements
                        .iter()
                        .map(|p| TaskInfo {
                            name: p.task_id.clone(),
                            task_id: Id::new(&p.task_id),
                            agent_id: Id::new(&p.agent_id),
                            resources: task_res(0.01),
                            executor: custom.then(|| {
                                executor_info(
                                    &format!("e-{}", p.task_id),
                                    "kaon-executor",
                                    task_res(0.01),
                                )
                            }),
                            command: (!custom).then(|| CommandInfo::shell("true")),
                            kill_policy: None,
                            data: custom.then(|| {
                                B64(serde_json::to_vec(&StepSpec {
                                    argv: vec!["true".into()],
                                    ..Default::default()
                                })
                                .unwrap_or_default())
                            }),
                            labels: None,
                        })
                        .collect();
                    inflight += tasks.len();
                    let now = Instant::now();
                    for t in &tasks {
                        accepted_at.insert(t.task_id.value.clone(), now);
                    }
                    pending.retain(|i| !placements.iter().any(|p| p.task_id == format!("t{i}")));
                    h.accept(
                        vec![Id::new(offer_id)],
                        vec![Operation::launch(tasks)],
                        Some(REFUSE_SECONDS),
                    )
                    .await?;
                }
                if !plan.decline.is_empty() && !pending.is_empty() {
                    // Declined while work is waiting: REVIVE once a slot frees.
                    declined_with_work = true;
                }
                if !plan.decline.is_empty() {
                    h.decline(
                        plan.decline.into_iter().map(Id::new).collect(),
                        Some(REFUSE_SECONDS),
                    )
                    .await?;
                }
            }
            DriverEvent::Update(s) => {
                if s.uuid.is_some() {
                    // Acks are pipelined: the owner need not wait for each 202.
                    let (h, s) = (h.clone(), s.clone());
                    tokio::spawn(async move { h.acknowledge(&s).await });
                }
                if s.state == TaskState::Running
                    && let Some(t0) = accepted_at.get(&s.task_id.value)
                {
                    latencies.push(t0.elapsed());
                }
                if s.state.is_terminal() {
                    done += 1;
                    inflight = inflight.saturating_sub(1);
                    if declined_with_work && !pending.is_empty() {
                        declined_with_work = false;
                        h.revive(vec![]).await?;
                    }
                    if s.state != TaskState::Finished {
                        failed += 1;
                    }
                }
            }
            _ => {}
        }
    }
    let elapsed = started.map(|s| s.elapsed()).unwrap_or_default();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "mode={mode} tasks={total} failed={failed} wall={:.2}s throughput={:.1} tasks/s accept->RUNNING median={:.1}ms p99={:.1}ms",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
    h.stop();
    emu.shutdown().await;
    Ok(())
}
