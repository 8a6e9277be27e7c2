//! A minority partition through TCP proxies (issue 4, "Tests"): every
//! directed Raft link i -> j of a 3-node cluster goes through an in-test
//! proxy (node i is given `--peer j=<proxy i->j>`) that can refuse new
//! connections and cut open ones. The leader is cut off from both others:
//! it cannot commit, the majority elects a new leader and runs workflows;
//! after healing, the old leader converges on the majority's log.
//!
//! Each node dials its peers at its own `--peer` addresses (the
//! membership records one address per node; `NetworkFactory` dials the
//! configured ones), so per-link proxies see every Raft message.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Cluster, cluster_status, get_run, submit_to_leader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards connections from `listener` to 127.0.0.1:`target` while `cut`
/// is false; when it turns true, open connections are closed and new ones
/// are refused (accepted and closed at once).
async fn proxy(listener: TcpListener, target: u16, cut: watch::Receiver<bool>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        if *cut.borrow() {
            continue; // dropped: the dialer sees the connection close
        }
        let mut cut = cut.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = cut.wait_for(|&c| c) => {}
            }
        });
    }
}

/// The leader node `i`'s status names, if it names one.
async fn leader_seen_by(cluster: &Cluster, i: usize) -> Option<usize> {
    let st = cluster.status(i).await?;
    (st.leader_id != 0).then(|| (st.leader_id - 1) as usize)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_leader_cannot_commit_majority_continues_and_it_converges_after_heal() {
    let raft: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    // switches[i][j], ports[i][j]: the proxy node i dials to reach node j.
    let mut switches = [[None, None, None], [None, None, None], [None, None, None]];
    let mut ports = vec![vec![0u16; 3]; 3];
    for i in 0..3 {
        for j in (0..3).filter(|&j| j != i) {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            ports[i][j] = l.local_addr().unwrap().port();
            let (tx, rx) = watch::channel(false);
            tokio::spawn(proxy(l, raft[j], rx));
            switches[i][j] = Some(tx);
        }
    }
    let set = |i: usize, j: usize, cut: bool| {
        switches[i][j].as_ref().unwrap().send_replace(cut);
    };
    let ports2 = ports.clone();
    let cluster = Cluster::builder(common::KAON)
        .peers(raft.clone(), move |i, j| {
            format!("127.0.0.1:{}", ports2[i][j])
        })
        .start()
        .unwrap();
    let old = cluster.wait_leader(None, Duration::from_secs(30)).await;
    // (Raft traffic goes through the proxies: each node dials its
    // `--peer` addresses, whatever the membership records. If it did not,
    // the cut-off leader below would still commit.)
    let spec = "apiVersion: kaon/v1\nname: p\nsteps:\n  a: {run: [\"true\"], resources: {cpus: 0.1, mem: 16MiB}}\n  b: {depends_on: [a], run: [\"true\"], resources: {cpus: 0.1, mem: 16MiB}}\n";
    let wait_done = |url: String, run: u64| async move {
        common::wait_until(
            &format!("run {run} to end"),
            Duration::from_secs(60),
            || async { get_run(&url, run).await.filter(|r| r.status != "running") },
        )
        .await
    };
    let warm = cluster
        .submit(spec, "before", Duration::from_secs(30))
        .await;
    assert_eq!(
        wait_done(cluster.url(old), warm.run_id).await.status,
        "succeeded"
    );

    // Cut the leader off from both others, both directions.
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    for &o in &others {
        set(old, o, true);
        set(o, old, true);
    }
    let before = cluster.status(old).await.unwrap();
    // The majority elects a new leader.
    let new = common::wait_until(
        "the majority to elect a new leader",
        Duration::from_secs(15),
        || async {
            let a = leader_seen_by(&cluster, others[0]).await?;
            let b = leader_seen_by(&cluster, others[1]).await?;
            (a == b && a != old).then_some(a)
        },
    )
    .await;
    // The old leader cannot commit: a submit sent to it is not acknowledged
    // (refused, or no answer within 3 s) and its commit index stays put.
    let mut c = common::client_with_timeout(&cluster.url(old), Duration::from_secs(3))
        .await
        .unwrap();
    let r = c
        .submit_run(kaon_api::v1::SubmitRunRequest {
            workflow: Some(kaon_api::v1::submit_run_request::Workflow::InlineSpec(
                spec.into(),
            )),
            params_json: Default::default(),
            idempotency_key: "minority".into(),
        })
        .await;
    assert!(
        r.is_err(),
        "the cut-off leader acknowledged a submit: {r:?}"
    );
    let during = cluster.status(old).await.unwrap();
    assert_eq!(
        during.committed_index, before.committed_index,
        "the cut-off node committed entries"
    );
    // The majority accepts submits and runs them to the end.
    let majority: Vec<String> = others.iter().map(|&i| cluster.url(i)).collect();
    let mut runs = vec![warm.run_id];
    for n in 0..3 {
        let r = submit_to_leader(
            &majority,
            spec,
            &format!("majority-{n}"),
            Duration::from_secs(30),
        )
        .await;
        runs.push(r.run_id);
    }
    for &run in &runs[1..] {
        assert_eq!(
            wait_done(cluster.url(new), run).await.status,
            "succeeded",
            "run {run}"
        );
    }
    let after = cluster.status(old).await.unwrap();
    assert_eq!(after.committed_index, before.committed_index);
    assert!(
        cluster.status(new).await.unwrap().committed_index > before.committed_index,
        "the majority committed"
    );

    // Heal: the old leader converges (same applied event index as the
    // others) and serves the majority's runs.
    for &o in &others {
        set(old, o, false);
        set(o, old, false);
    }
    let applied = common::wait_until("all three to converge", Duration::from_secs(30), || async {
        let mut idx = BTreeSet::new();
        let mut leaders = BTreeSet::new();
        for i in 0..3 {
            let st = cluster_status(&cluster.url(i)).await?;
            idx.insert(st.applied_event_index);
            leaders.insert(st.leader_id);
        }
        (idx.len() == 1 && leaders.len() == 1 && !leaders.contains(&(old as u64 + 1)))
            .then(|| *idx.first().unwrap())
    })
    .await;
    assert!(applied > before.applied_event_index);
    for &run in &runs {
        let r = get_run(&cluster.url(old), run).await;
        assert_eq!(
            r.map(|r| r.status),
            Some("succeeded".into()),
            "run {run} on the old leader"
        );
    }
    // Nothing the minority was asked to do survived: the same runs everywhere.
    let on_old = common::all_run_ids(&cluster.url(old)).await.unwrap();
    let on_new = common::all_run_ids(&cluster.url(new)).await.unwrap();
    assert_eq!(on_old, on_new);
    assert_eq!(on_old, runs.iter().copied().collect::<BTreeSet<_>>());
}
