//! Cluster membership as an SRE changes it, with the CLI against real
//! `kaon server` processes on loopback: a fourth node joins as a learner
//! and catches up, is promoted to voter, takes over leadership, and an old
//! member is removed; writes and reads work through any node meanwhile.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Procs, free_port, kaon, wait_for};

fn status(api: u16) -> Option<serde_json::Value> {
    let (code, out, _) = kaon(api, &["--output", "json", "cluster", "status"]);
    (code == 0).then(|| serde_json::from_str(&out).ok())?
}

/// (id, voter) of every member in `api`'s view.
fn members(api: u16) -> Vec<(u64, bool)> {
    status(api)
        .map(|s| {
            s["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| (m["id"].as_u64().unwrap(), m["voter"].as_bool().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn learner_joins_is_promoted_takes_over_and_a_member_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_kaon");
    let mesos = free_port();
    let raft: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let api: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let mut procs = Procs(Vec::new());
    procs.0.push(
        Command::new(exe)
            .args(["mesos-emulator", "--master", &format!("127.0.0.1:{mesos}")])
            .arg("--work-dir")
            .arg(dir.path().join("mesos"))
            .args(["--executor-path", exe])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = |i: usize, peers: &[usize], join: bool| -> Child {
        let mut c = Command::new(exe);
        c.args(["server", "--node-id", &(i + 1).to_string()])
            .args(["--listen", &format!("127.0.0.1:{}", api[i])])
            .args(["--raft-listen", &format!("127.0.0.1:{}", raft[i])])
            .arg("--data-dir")
            .arg(dir.path().join(format!("n{}", i + 1)))
            .args(["--mesos-master", &format!("http://127.0.0.1:{mesos}")])
            // Compact hard: a snapshot keeps only 2 log entries behind it.
            .args(["--keep-log-entries", "2"]);
        for &j in peers {
            c.args(["--peer", &format!("{}=127.0.0.1:{}", j + 1, raft[j])]);
        }
        if join {
            c.arg("--join");
        }
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    for i in 0..3 {
        let peers: Vec<usize> = (0..3).filter(|&j| j != i).collect();
        procs.0.push(start(i, &peers, false));
    }
    let leader = wait_for("a leader of 3 members", Duration::from_secs(30), || {
        let s = status(api[0])?;
        let l = s["leader_id"].as_u64()?;
        (l != 0 && members(api[0]).len() == 3).then_some(l)
    });
    let follower = (0..3).find(|&i| i as u64 + 1 != leader).unwrap();

    // Some history for the newcomer to catch up on, written via a follower.
    let spec = dir.path().join("one.yaml");
    std::fs::write(
        &spec,
        "apiVersion: kaon/v1\nname: one\nsteps:\n  a: {shell: 'true'}\n",
    )
    .unwrap();
    for k in 0..3 {
        let (code, _, err) = kaon(
            api[follower],
            &["submit", spec.to_str().unwrap(), "--key", &format!("k{k}")],
        );
        assert_eq!(code, 0, "{err}");
    }

    // Compaction: a snapshot on the leader drops its log behind it, so a
    // newcomer can only catch up from the snapshot (and its event archive).
    let li = (leader - 1) as usize;
    let (code, out, err) = kaon(api[li], &["--output", "json", "cluster", "snapshot"]);
    assert_eq!(code, 0, "{err}");
    let snap: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(snap["raft_log_index"].as_u64().unwrap() > 5, "{out}");

    // Node 4 starts without forming a cluster and is added as a learner
    // (the request goes to a follower, which forwards it).
    procs.0.push(start(3, &[], true));
    let raft4 = format!("127.0.0.1:{}", raft[3]);
    let (code, out, err) = kaon(
        api[follower],
        &["cluster", "add-node", "4", &raft4, "--learner"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "node 4 added as a learner");
    assert!(
        members(api[0]).contains(&(4, false)),
        "{:?}",
        members(api[0])
    );
    // It catches up: same events and state digest as the leader.
    wait_for("the learner to catch up", Duration::from_secs(20), || {
        let (a, b) = (status(api[li])?, status(api[3])?);
        (a["applied_event_index"] == b["applied_event_index"]
            && a["state_digest"] == b["state_digest"])
            .then_some(())
    });
    // A learner serves reads (linearizable: via the leader's read index).
    let (code, out, err) = kaon(api[3], &["--output", "json", "runs"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // A killed follower restarts and catches up, also after compaction.
    let f2 = (0..3).find(|&i| i != li && i != follower).unwrap();
    procs.0[f2 + 1].kill().unwrap();
    procs.0[f2 + 1].wait().unwrap();
    for k in 3..5 {
        let (code, _, err) = kaon(
            api[follower],
            &["submit", spec.to_str().unwrap(), "--key", &format!("k{k}")],
        );
        assert_eq!(code, 0, "{err}");
    }
    let (code, _, err) = kaon(api[li], &["cluster", "snapshot"]);
    assert_eq!(code, 0, "{err}");
    let peers: Vec<usize> = (0..3).filter(|&j| j != f2).collect();
    procs.0[f2 + 1] = start(f2, &peers, false);
    wait_for(
        "the restarted follower to catch up",
        Duration::from_secs(20),
        || {
            let (a, b) = (status(api[li])?, status(api[f2])?);
            (a["applied_event_index"] == b["applied_event_index"]
                && a["state_digest"] == b["state_digest"])
                .then_some(())
        },
    );

    // Promotion, then leadership moves to it.
    let (code, out, err) = kaon(api[li], &["cluster", "add-node", "4", &raft4]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "node 4 added as a voter");
    assert!(members(api[li]).contains(&(4, true)));
    // Transfer is best effort under Raft (an election may pick another
    // node on a busy machine); the command waits and says so, so retry.
    wait_for("node 4 to lead", Duration::from_secs(60), || {
        let (code, _, _) = kaon(api[follower], &["cluster", "transfer-leader", "4"]);
        (code == 0).then_some(())?;
        (0..4)
            .all(|i| status(api[i]).is_some_and(|s| s["leader_id"] == 4))
            .then_some(())
    });
    // The new leader runs new work; a submit through an old member works.
    let (code, out, err) = kaon(api[0], &["submit", spec.to_str().unwrap(), "--watch"]);
    assert_eq!(code, 0, "{out}{err}");

    // Remove the old leader; the remaining three keep going.
    let (code, out, err) = kaon(api[3], &["cluster", "remove-node", &leader.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("node {leader} removed"));
    let left: Vec<u64> = members(api[3]).into_iter().map(|(id, _)| id).collect();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(!left.contains(&leader), "{left:?}");
    let other = (0..3).find(|&i| i != li).unwrap();
    let (code, out, err) = kaon(api[other], &["submit", spec.to_str().unwrap(), "--watch"]);
    assert_eq!(code, 0, "{out}{err}");
    // Errors name the problem.
    let (code, _, err) = kaon(api[3], &["cluster", "remove-node", "99"]);
    assert_eq!(code, 2);
    assert!(err.contains("NotFound: node 99 is not a member"), "{err}");
    let (code, _, err) = kaon(api[3], &["cluster", "transfer-leader", "99"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a voter"), "{err}");
    // A stale read from any node answers without the leader.
    let (code, out, err) = kaon(api[other], &["--stale", "--output", "json", "runs"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("succeeded"), "{out}");
}
