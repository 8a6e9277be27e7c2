//! Issue 8, part 3: a seeded nemesis against a 3-node cluster of real
//! `kaon server` processes, each in a network namespace of its own (real
//! partitions: the kernel drops the packets), sharing one Mesos emulator
//! whose steps are real processes.
//!
//! The workload reads outputs downstream (a foreach over a step's outputs,
//! a join that uses them, a loop until a step's output says done, a chain
//! passing a value) and a step that fails as the user's error; every step
//! appends its task id to a file of its own, so executions are counted from
//! outside kaon. Meanwhile the nemesis, from the seed: SIGKILLs the
//! leader; kills the leader and a follower the moment a step's sandbox
//! appears (the launch reached Mesos, its TASK_RUNNING not yet committed:
//! the reconciliation defect's window); SIGSTOPs the leader past its
//! election timeout; kills a follower; takes the quorum away; isolates the
//! leader from its peers, symmetrically or only its outgoing packets; cuts
//! the leader off from the Mesos master. Then the network heals, every
//! node runs, and every run must end as its shape says, with each step
//! executed exactly as often as its retry rules allow (once, or twice for
//! the failing step's one user retry), the outputs recorded as written and
//! read downstream, every acknowledged submission present on every node,
//! and a re-submitted key answering the same run.
//!
//! Seeds: `KAON_NEMESIS_SEEDS` (default `1,2`; e.g. `1-20`), faults per
//! seed `KAON_NEMESIS_FAULTS` (default 10). Needs root for the network
//! namespaces (`NetLab`); `KAON_NEMESIS_LOOPBACK=1` runs on loopback
//! without the partition faults.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Cluster, KAON, NetLab, all_run_ids, get_run, lines, run_events, submit_to_leader, wait_until,
};
use kaon_core::events::{Body, Event, FailureCause, TaskState};

/// splitmix64: a small seeded generator (the test must replay a seed's
/// choices; the timing of real processes will still differ).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

/// The workload's shapes, each with what the test expects of it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    /// gen -> foreach over gen's items -> join reading gen's tag.
    Fan { items: u64 },
    /// A loop until check's output says done (at iteration 2).
    Loop,
    /// a -> b -> c passing a value through outputs.
    Chain,
    /// A step that exits 3, with one user retry: it runs exactly twice.
    Fails,
}

/// One submitted run: its key, shape, marks directory and run id.
#[derive(Clone, Debug)]
struct Submitted {
    key: String,
    shape: Shape,
    marks: PathBuf,
    run_id: u64,
}

const DEFAULTS: &str = "defaults:\n  resources: {cpus: 0.1, mem: 16MiB}\n  retry: {platform_errors: 3, backoff: {kind: fixed, initial: 200ms}}\n";

/// The spec of a run of `shape` whose steps mark `m` (a directory).
fn spec(shape: Shape, key: &str, m: &Path, body_ms: u64) -> String {
    let m = m.display();
    let s = format!("{:.3}", body_ms as f64 / 1000.0);
    let steps = match shape {
        Shape::Fan { items } => {
            let list: Vec<String> = (0..items).map(|i| format!("\\\"{key}-{i}\\\"")).collect();
            format!(
                r#"  gen:
    shell: 'echo "$KAON_TASK_ID" >> {m}/gen; sleep {s}; printf "{{\"items\": [{items}], \"tag\": \"{key}\"}}" > "$KAON_OUTPUTS_FILE"'
  fan:
    depends_on: [gen]
    foreach: {{items: steps.gen.outputs.items}}
    shell: 'echo "${{{{ item }}}} $KAON_TASK_ID" >> {m}/fan'
  join:
    depends_on: [fan]
    shell: 'echo "${{{{ steps.gen.outputs.tag }}}} $KAON_TASK_ID" >> {m}/join'
"#,
                items = list.join(", ")
            )
        }
        Shape::Loop => format!(
            r#"  block:
    repeat: {{until: "steps.check.outputs.done", max_iterations: 4}}
    steps:
      check:
        shell: 'echo "$KAON_TASK_ID" >> {m}/check; sleep {s}; if [ "${{{{ iteration }}}}" -ge 2 ]; then echo "{{\"done\": true}}"; else echo "{{\"done\": false}}"; fi > "$KAON_OUTPUTS_FILE"'
"#
        ),
        Shape::Chain => format!(
            r#"  a:
    shell: 'echo "$KAON_TASK_ID" >> {m}/a; sleep {s}; echo "{{\"v\": \"{key}\"}}" > "$KAON_OUTPUTS_FILE"'
  b:
    depends_on: [a]
    shell: 'echo "$KAON_TASK_ID" >> {m}/b; echo "{{\"v\": \"${{{{ steps.a.outputs.v }}}}-b\"}}" > "$KAON_OUTPUTS_FILE"'
  c:
    depends_on: [b]
    shell: 'echo "${{{{ steps.b.outputs.v }}}} $KAON_TASK_ID" >> {m}/c'
"#
        ),
        Shape::Fails => format!(
            r#"  bad:
    retry: {{user_errors: 1, platform_errors: 3, backoff: {{kind: fixed, initial: 200ms}}}}
    shell: 'echo "$KAON_TASK_ID" >> {m}/bad; sleep {s}; exit 3'
"#
        ),
    };
    format!("apiVersion: kaon/v1\nname: nemesis\n{DEFAULTS}steps:\n{steps}")
}

/// The task ids (last word of each line) of `marks/name`, asserting none
/// ran twice: a task id is one attempt of one step, so a repeated id is a
/// launch Mesos ran twice.
fn executions(marks: &Path, name: &str) -> Vec<String> {
    let ids: Vec<String> = lines(marks, name)
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "{name}: a task id ran twice: {ids:?}"
    );
    ids
}

/// The first words of each line of `marks/name`, sorted.
fn values(marks: &Path, name: &str) -> Vec<String> {
    let mut v: Vec<String> = lines(marks, name)
        .iter()
        .map(|l| l.split(' ').next().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

/// What the nemesis did in one pass (printed, so a failure shows the
/// schedule that led to it).
#[derive(Default)]
struct Log {
    faults: Vec<String>,
    kills: usize,
}

/// How long any node may take to name a leader again after a fault heals.
const LEADER_DEADLINE: Duration = Duration::from_secs(45);

/// One fault from the seed; returns when it has healed and a leader is
/// known again.
async fn fault(cluster: &mut Cluster, rng: &mut Rng, log: &mut Log, partitions: bool) {
    let leader = cluster.wait_leader(None, LEADER_DEADLINE).await;
    let follower = (leader + 1 + rng.range(0, 1) as usize) % 3;
    let kinds = if partitions { 8 } else { 5 };
    let what = match rng.range(0, kinds - 1) {
        0 => {
            let down = rng.ms(0, 1500);
            cluster.kill(leader);
            log.kills += 1;
            tokio::time::sleep(down).await; // the fault's duration, not a synchronisation
            cluster.start_node(leader).unwrap();
            format!("kill -9 leader n{} for {down:?}", leader + 1)
        }
        1 => {
            // The reconciliation defect's window: a launch reached Mesos
            // (its step directory appeared) and no quorum is left to
            // record what it reports.
            let mesos = cluster.mesos_dir();
            let before = common::step_dirs(&mesos);
            let end = Instant::now() + Duration::from_secs(10);
            let mut hit = false;
            while Instant::now() < end {
                if common::step_dirs(&mesos).len() > before.len() {
                    hit = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            cluster.kill(leader);
            cluster.kill(follower);
            log.kills += 2;
            let down = rng.ms(500, 2500);
            tokio::time::sleep(down).await;
            cluster.start_node(leader).unwrap();
            cluster.start_node(follower).unwrap();
            format!(
                "kill -9 leader n{} and follower n{} {} for {down:?}",
                leader + 1,
                follower + 1,
                if hit {
                    "as a sandbox appeared"
                } else {
                    "(no launch within 10 s)"
                }
            )
        }
        2 => {
            let d = rng.ms(1000, 3000);
            cluster.pause(leader);
            tokio::time::sleep(d).await;
            cluster.resume(leader);
            format!("SIGSTOP leader n{} for {d:?}", leader + 1)
        }
        3 => {
            let down = rng.ms(300, 2000);
            cluster.kill(follower);
            log.kills += 1;
            tokio::time::sleep(down).await;
            cluster.start_node(follower).unwrap();
            format!("kill -9 follower n{} for {down:?}", follower + 1)
        }
        4 => {
            let other = 3 - leader - follower;
            let down = rng.ms(1000, 3000);
            cluster.kill(follower);
            cluster.kill(other);
            log.kills += 2;
            tokio::time::sleep(down).await;
            cluster.start_node(follower).unwrap();
            cluster.start_node(other).unwrap();
            format!(
                "quorum lost: kill -9 followers n{} and n{} for {down:?}",
                follower + 1,
                other + 1
            )
        }
        5 => {
            let d = rng.ms(1000, 3000);
            let net = cluster.net().expect("partitions need the lab");
            net.isolate(leader).unwrap();
            tokio::time::sleep(d).await;
            net.heal().unwrap();
            format!("partition: leader n{} isolated for {d:?}", leader + 1)
        }
        6 => {
            let d = rng.ms(1000, 3000);
            let net = cluster.net().expect("partitions need the lab");
            for j in (0..3).filter(|&j| j != leader) {
                net.cut(leader, j).unwrap();
            }
            tokio::time::sleep(d).await;
            net.heal().unwrap();
            format!(
                "asymmetric partition: leader n{}'s packets to its peers dropped for {d:?}",
                leader + 1
            )
        }
        _ => {
            let d = rng.ms(1000, 3000);
            let net = cluster.net().expect("partitions need the lab");
            net.cut_port(leader, cluster.mesos).unwrap();
            tokio::time::sleep(d).await;
            net.heal().unwrap();
            format!(
                "leader n{} cut off from the Mesos master for {d:?}",
                leader + 1
            )
        }
    };
    eprintln!("  nemesis: {what}");
    log.faults.push(what);
    cluster.wait_leader(None, LEADER_DEADLINE).await;
}

/// Submits `runs` runs from the seed, spaced out, each retried with its key
/// until acknowledged; returns them (also into `acks` as they land).
async fn workload(
    urls: Vec<String>,
    marks: PathBuf,
    seed: u64,
    runs: usize,
    acks: Arc<Mutex<Vec<Submitted>>>,
) {
    let mut rng = Rng(seed ^ 0x5eed);
    for n in 0..runs {
        let shape = match rng.range(0, 3) {
            0 => Shape::Fan {
                items: rng.range(2, 4),
            },
            1 => Shape::Loop,
            2 => Shape::Chain,
            _ => Shape::Fails,
        };
        let key = format!("s{seed}-r{n}");
        let dir = marks.join(&key);
        std::fs::create_dir_all(&dir).unwrap();
        let body_ms = rng.range(100, 1200);
        let spec = spec(shape, &key, &dir, body_ms);
        let r = submit_to_leader(&urls, &spec, &key, Duration::from_secs(120)).await;
        acks.lock().unwrap().push(Submitted {
            key,
            shape,
            marks: dir,
            run_id: r.run_id,
        });
        tokio::time::sleep(rng.ms(50, 700)).await; // the workload's pace
    }
}

/// How each attempt of a run ended, from its committed events: (task id,
/// its terminal result's state, cause and message). State-only
/// observations (reconciliation answers) are skipped: they end nothing.
fn attempt_ends(events: &[Event]) -> Vec<(String, TaskState, FailureCause, String)> {
    let mut ids = BTreeMap::new();
    let mut ends = BTreeMap::new();
    for e in events {
        match &e.body {
            Some(Body::TaskLaunchRequested(l)) => {
                ids.insert((l.instance, l.attempt), l.task_id.clone());
            }
            Some(Body::TaskStatusObserved(o)) if !o.state_only && o.state().is_terminal() => {
                ends.entry((o.instance, o.attempt)).or_insert((
                    o.state(),
                    o.cause(),
                    o.message.clone(),
                ));
            }
            _ => {}
        }
    }
    ids.into_iter()
        .filter_map(|(k, id)| ends.remove(&k).map(|(st, c, m)| (id, st, c, m)))
        .collect()
}

/// The attempts of a run against what ran (the marks): an attempt whose
/// result is the step's own (it finished, or failed as the user's error)
/// ran; an attempt ended as a platform loss never ran, since this nemesis
/// kills no executor and no agent (a loss of a step that ran is issue 8's
/// defect: "retried under the platform budget, its command runs a second
/// time"). Returns the number of platform losses (launches that never
/// reached an executor).
fn check_attempts(ctx: &str, events: &[Event], ran: &BTreeSet<String>) -> usize {
    let mut lost = 0;
    for (id, state, cause, message) in attempt_ends(events) {
        match (state, cause) {
            (TaskState::Finished, _) | (_, FailureCause::User) => assert!(
                ran.contains(&id),
                "{ctx}: attempt {id} ended {state:?} ({message}) but its command never ran"
            ),
            (_, FailureCause::Platform) => {
                assert!(
                    !ran.contains(&id),
                    "{ctx}: attempt {id} ran, yet was recorded as a platform loss ({state:?}: {message}) and retried"
                );
                lost += 1;
            }
            other => panic!("{ctx}: attempt {id} ended unexpectedly: {other:?} ({message})"),
        }
    }
    lost
}

/// Every task id in the marks directory `m`.
fn all_executions(m: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(m).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        out.extend(executions(m, &name));
    }
    out
}

/// Checks one finished run against its shape; returns its executions.
fn check_run(s: &Submitted, r: &kaon_api::v1::Run) -> usize {
    let m = &s.marks;
    let ctx = format!("run {} ({}, {:?})", s.run_id, s.key, s.shape);
    let outputs = |path: &str| -> serde_json::Value {
        let st = r
            .steps
            .iter()
            .find(|x| x.path == path)
            .unwrap_or_else(|| panic!("{ctx}: no step {path}"));
        serde_json::from_str(&st.outputs_json).unwrap_or_default()
    };
    match s.shape {
        Shape::Fan { items } => {
            assert_eq!(r.status, "succeeded", "{ctx}: {r:?}");
            assert_eq!(executions(m, "gen").len(), 1, "{ctx}: gen ran once");
            let want: Vec<String> = (0..items).map(|i| format!("{}-{i}", s.key)).collect();
            assert_eq!(
                executions(m, "fan").len(),
                items as usize,
                "{ctx}: one execution per item"
            );
            assert_eq!(
                values(m, "fan"),
                want,
                "{ctx}: one element per item gen wrote"
            );
            assert_eq!(
                values(m, "join"),
                std::slice::from_ref(&s.key),
                "{ctx}: join read gen's tag once"
            );
            assert_eq!(
                outputs("gen"),
                serde_json::json!({"items": want, "tag": s.key}),
                "{ctx}: gen's recorded outputs are the ones it wrote"
            );
            2 + items as usize
        }
        Shape::Loop => {
            assert_eq!(r.status, "succeeded", "{ctx}: {r:?}");
            assert_eq!(
                executions(m, "check").len(),
                2,
                "{ctx}: done at iteration 2, each once"
            );
            2
        }
        Shape::Chain => {
            assert_eq!(r.status, "succeeded", "{ctx}: {r:?}");
            assert_eq!(executions(m, "a").len(), 1, "{ctx}: a ran once");
            assert_eq!(executions(m, "b").len(), 1, "{ctx}: b ran once");
            assert_eq!(
                values(m, "c"),
                [format!("{}-b", s.key)],
                "{ctx}: c read b's value once"
            );
            assert_eq!(
                outputs("a"),
                serde_json::json!({"v": s.key}),
                "{ctx}: a's outputs"
            );
            3
        }
        Shape::Fails => {
            assert_eq!(r.status, "failed", "{ctx}: {r:?}");
            assert_eq!(
                executions(m, "bad").len(),
                2,
                "{ctx}: one run and its one user retry, never a platform retry"
            );
            let bad = r.steps.iter().find(|x| x.path == "bad").expect("bad");
            assert!(bad.message.contains("exited with code 3"), "{ctx}: {bad:?}");
            2
        }
    }
}

/// One seed: a fresh cluster, the workload and the nemesis together, then
/// heal and check.
async fn pass(seed: u64, faults: usize, net: Option<Arc<NetLab>>) {
    let partitions = net.is_some();
    let mut b = Cluster::builder(KAON);
    if let Some(n) = net {
        b = b.netlab(n);
    }
    let mut cluster = b.start().expect("the cluster starts");
    cluster.wait_leader(None, LEADER_DEADLINE).await;
    let marks = cluster.dir.join("marks");
    let acks = Arc::new(Mutex::new(Vec::new()));
    let runs = 2 * faults;
    let submitter = tokio::spawn(workload(
        cluster.urls(),
        marks.clone(),
        seed,
        runs,
        acks.clone(),
    ));
    let mut rng = Rng(seed);
    let mut log = Log::default();
    eprintln!("seed {seed}: {runs} runs, {faults} faults");
    for _ in 0..faults {
        tokio::time::sleep(rng.ms(100, 1500)).await; // time between faults
        fault(&mut cluster, &mut rng, &mut log, partitions).await;
    }
    submitter.await.expect("the workload submits every run");
    let acks: Vec<Submitted> = acks.lock().unwrap().clone();
    assert_eq!(acks.len(), runs, "every submission was acknowledged");

    // Healed (every fault above ends healed): every run ends.
    cluster.wait_leader(None, LEADER_DEADLINE).await;
    let (mut total, mut lost) = (0, 0);
    for s in &acks {
        let r = wait_until(
            &format!("run {} ({}) to end", s.run_id, s.key),
            Duration::from_secs(180),
            || async {
                for u in cluster.urls() {
                    if let Some(r) = get_run(&u, s.run_id).await
                        && r.status != "running"
                    {
                        return Some(r);
                    }
                }
                None
            },
        )
        .await;
        total += check_run(s, &r);
        let events = run_events(&cluster.urls()[0], s.run_id)
            .await
            .expect("the run's events");
        let ctx = format!("run {} ({}, {:?})", s.run_id, s.key, s.shape);
        lost += check_attempts(&ctx, &events, &all_executions(&s.marks));
    }
    // Idempotency: a key submitted again answers its run.
    let again = &acks[rng.range(0, acks.len() as u64 - 1) as usize];
    let spec = spec(again.shape, &again.key, &again.marks, 100);
    let r = submit_to_leader(&cluster.urls(), &spec, &again.key, Duration::from_secs(30)).await;
    assert_eq!(r.run_id, again.run_id, "a retried key answers the same run");
    // Every acknowledged run is on every node.
    let want: BTreeSet<u64> = acks.iter().map(|s| s.run_id).collect();
    for i in 0..3 {
        let u = cluster.url(i);
        let ids = wait_until(
            &format!("node {} to hold every run", i + 1),
            Duration::from_secs(30),
            || async { all_run_ids(&u).await.filter(|ids| want.is_subset(ids)) },
        )
        .await;
        assert!(want.is_subset(&ids), "node {}", i + 1);
    }
    let mut shapes = BTreeMap::new();
    for s in &acks {
        *shapes
            .entry(
                format!("{:?}", s.shape)
                    .split(' ')
                    .next()
                    .unwrap()
                    .to_string(),
            )
            .or_insert(0) += 1;
    }
    eprintln!(
        "seed {seed}: ok: {} faults ({} process kills), {} runs {shapes:?}, {total} step executions, each as often as its retry rules allow; {lost} launches lost before they ran (retried under the platform budget)",
        log.faults.len(),
        log.kills,
        acks.len()
    );
}

/// `1,2` or `1-20` (or a mix: `1-3,7`).
fn seeds() -> Vec<u64> {
    let spec = std::env::var("KAON_NEMESIS_SEEDS").unwrap_or_else(|_| "1,2".into());
    let mut out = Vec::new();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                out.extend(a.trim().parse::<u64>().unwrap()..=b.trim().parse().unwrap())
            }
            None => out.push(part.trim().parse().unwrap()),
        }
    }
    out
}

#[test]
fn seeded_nemesis_with_real_processes_and_partitions_loses_no_output_and_runs_no_step_twice() {
    let loopback = std::env::var_os("KAON_NEMESIS_LOOPBACK").is_some();
    // The lab first, on this thread, then the runtime: its threads (and the
    // processes they start) inherit the lab's network namespace.
    let net = if loopback {
        None
    } else {
        Some(Arc::new(NetLab::enter(3).expect(
            "network namespaces (run as root, or set KAON_NEMESIS_LOOPBACK=1 to run without partitions)",
        )))
    };
    let faults: usize = std::env::var("KAON_NEMESIS_FAULTS")
        .ok()
        .map(|v| v.parse().expect("KAON_NEMESIS_FAULTS is a number"))
        .unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for seed in seeds() {
        rt.block_on(pass(seed, faults, net.clone()));
    }
}
