//! A 3-node kaon cluster as an SRE runs it: three `kaon server` processes
//! sharing one `kaon mesos-emulator`, on loopback. The leader is killed with
//! SIGKILL in the middle of a run: a follower takes over within a deadline,
//! re-subscribes to Mesos, reconciles, and the run completes with every
//! step's command run exactly once; followers forward writes.

mod common;

use common::{kaon, leader_of, wait_for};
use std::time::Duration;

#[test]
fn leader_killed_mid_run_and_the_run_completes_exactly_once() {
    let mut cluster = common::cluster();
    let api = cluster.api.clone();
    let dir = cluster.dir.as_path().to_path_buf();
    // Every node serves and agrees on one leader of three members.
    let leader = wait_for(
        "a leader of 3 members on every node",
        Duration::from_secs(30),
        || {
            let ls: Vec<Option<u64>> = api.iter().map(|&a| leader_of(a)).collect();
            (ls.iter().all(|l| l.is_some() && *l == ls[0])).then(|| ls[0].unwrap())
        },
    );
    let li = (leader - 1) as usize;
    let follower = (li + 1) % 3;

    let marks = dir.join("marks");
    let spec = dir.join("slow.yaml");
    let step = |name: &str, sleep: &str| format!("'echo {name} >> {}{sleep}'", marks.display());
    std::fs::write(
        &spec,
        format!(
            "apiVersion: kaon/v1\nname: slow\nsteps:\n  a: {{shell: {}}}\n  b: {{depends_on: [a], shell: {}}}\n  c: {{depends_on: [b], shell: {}}}\n  d: {{depends_on: [c], shell: {}}}\n",
            step("a", "; sleep 1"),
            step("b", "; sleep 1"),
            step("c", "; sleep 1"),
            step("d", "")
        ),
    )
    .unwrap();
    // A follower forwards writes to the leader, and its (linearizable)
    // read right after sees the run that write created.
    let (code, out, err) = kaon(
        api[follower],
        &[
            "workflow",
            "register",
            spec.to_str().unwrap(),
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["version"],
        1
    );
    let (code, out, err) = kaon(api[follower], &["--output", "json", "workflow", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"slow\""), "{out}");

    let (code, out, err) = kaon(
        api[li],
        &["submit", spec.to_str().unwrap(), "--key", "slow-1"],
    );
    assert_eq!(code, 0, "{err}");
    let run: u64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    // Kill the leader once step a has run.
    wait_for("step a to run", Duration::from_secs(30), || {
        std::fs::read_to_string(&marks)
            .ok()
            .filter(|m| m.contains('a'))
    });
    cluster.kill(li);
    let new_leader = wait_for("a new leader", Duration::from_secs(10), || {
        leader_of(api[follower]).filter(|&l| l != leader)
    });
    let ni = (new_leader - 1) as usize;
    let status = wait_for("the run to end", Duration::from_secs(60), || {
        let (code, out, _) = kaon(
            api[ni],
            &["--output", "json", "run", "show", &run.to_string()],
        );
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        (code == 0 && v["status"] != "running").then(|| v["status"].as_str().unwrap().to_string())
    });
    assert_eq!(status, "succeeded");
    assert_eq!(
        std::fs::read_to_string(&marks).unwrap(),
        "a\nb\nc\nd\n",
        "every step ran exactly once"
    );
    // The surviving replicas agree.
    let applied = |i: usize| {
        let (_, out, _) = kaon(api[i], &["--output", "json", "cluster", "status"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["applied_event_index"]
            .as_u64()
            .unwrap()
    };
    let other = (0..3).find(|&i| i != li && i != ni).unwrap();
    wait_for(
        "both survivors to apply the same events",
        Duration::from_secs(10),
        || (applied(ni) == applied(other)).then_some(()),
    );
    // The retried submit with the same key on the new leader is the same run.
    let (code, out, _) = kaon(
        api[ni],
        &["submit", spec.to_str().unwrap(), "--key", "slow-1"],
    );
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("run {run} (existing: same idempotency key)")
    );

    // The reference pipeline from the brief runs to success on the cluster,
    // submitted through a follower: the foreach width comes from prepare's
    // output (3 regions) and the training loop repeats once.
    let root = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/reference-pipeline"
    );
    let (code, out, err) = kaon(
        api[other],
        &[
            "submit",
            &format!("{root}/pipeline.yaml"),
            "-p",
            &format!("scripts={root}/scripts"),
            "--watch",
        ],
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let pipeline: u64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (code, out, _) = kaon(
        api[ni],
        &["--output", "json", "run", "show", &pipeline.to_string()],
    );
    assert_eq!(code, 0);
    let run: serde_json::Value = serde_json::from_str(&out).unwrap();
    let steps: Vec<(String, String)> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "task")
        .map(|s| {
            (
                s["path"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for it in 1..=2 {
        let regions = steps
            .iter()
            .filter(|(p, st)| {
                p.starts_with(&format!("train#{it}/region-model[")) && st == "succeeded"
            })
            .count();
        assert_eq!(regions, 3, "iteration {it}: {steps:?}");
    }
    assert!(
        !steps.iter().any(|(p, _)| p.starts_with("train#3/")),
        "{steps:?}"
    );
    assert!(
        steps.contains(&("publish".to_string(), "succeeded".to_string())),
        "{steps:?}"
    );
}
