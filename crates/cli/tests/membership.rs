//! Cluster membership as an SRE changes it, with the CLI against real
//! `kaon server` processes on loopback: a fourth node joins as a learner
//! and catches up, is promoted to voter, takes over leadership, and an old
//! member is removed; writes and reads work through any node meanwhile.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{LogsOnPanic, Procs, free_port, free_ports, kaon, wait_for};

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

// ------------------------------------------------ mistakes that must not brick

/// `GET path` on the admin port: (status code, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string()))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// gRPC health of `service` ("" = the server) on `api`: 1 SERVING,
/// 2 NOT_SERVING; None if it does not answer.
fn grpc_health(api: u16, service: &str) -> Option<i32> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    rt().block_on(async {
        let ch = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{api}"))
            .ok()?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            .ok()?;
        HealthClient::new(ch)
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .ok()
            .map(|r| r.into_inner().status)
    })
}

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

/// Starts `kaon server` node `id` (1-based) on loopback with its own data
/// directory under `dir`, against the emulator on `mesos`.
fn node(
    dir: &std::path::Path,
    id: usize,
    api: u16,
    raft: u16,
    mesos: u16,
    extra: &[String],
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("n{id}.stderr")))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_kaon"))
        .args(["server", "--node-id", &id.to_string()])
        .args(["--listen", &format!("127.0.0.1:{api}")])
        .args(["--raft-listen", &format!("127.0.0.1:{raft}")])
        .arg("--data-dir")
        .arg(dir.join(format!("n{id}")))
        .args(["--mesos-master", &format!("http://127.0.0.1:{mesos}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn emulator(dir: &std::path::Path, mesos: u16) -> Child {
    let exe = env!("CARGO_BIN_EXE_kaon");
    Command::new(exe)
        .args(["mesos-emulator", "--master", &format!("127.0.0.1:{mesos}")])
        .arg("--work-dir")
        .arg(dir.join("mesos"))
        .args(["--executor-path", exe])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Issue 9, B and C: an address nothing listens on, or that is no address,
/// cannot cost a one-node cluster its quorum; the stray learner is removed;
/// a real node joins, is promoted, and once removed reports NOT_SERVING.
#[test]
fn a_mistyped_add_node_cannot_brick_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    // Every port from one call: distinct (separate free_port calls can
    // return one port twice, as the harness found for clusters).
    let p = free_ports(7);
    let mesos = p[6];
    let (api, raft, admin) = ([p[0], p[1]], [p[2], p[3]], [p[4], p[5]]);
    let extra = |i: usize| {
        vec![
            "--admin-listen".to_string(),
            format!("127.0.0.1:{}", admin[i]),
            "--catch-up-timeout-ms".into(),
            "1500".into(),
        ]
    };
    let mut procs = Procs(vec![emulator(dir.path(), mesos)]);
    procs
        .0
        .push(node(dir.path(), 1, api[0], raft[0], mesos, &extra(0)));
    wait_for("node 1 to be ready", Duration::from_secs(30), || {
        (http_get(admin[0], "/readyz")?.0 == 200).then_some(())
    });
    assert_eq!(
        http_get(admin[0], "/healthz").unwrap(),
        (200, "ok\n".into())
    );
    assert_eq!(grpc_health(api[0], ""), Some(SERVING));
    assert_eq!(grpc_health(api[0], "kaon.v1.Kaon"), Some(SERVING));
    let spec = dir.path().join("one.yaml");
    std::fs::write(
        &spec,
        "apiVersion: kaon/v1\nname: one\nsteps:\n  a: {shell: 'true'}\n",
    )
    .unwrap();
    let spec = spec.to_str().unwrap();

    // Not an address: refused by the CLI, and by the server when sent raw.
    let (code, _, err) = kaon(api[0], &["cluster", "add-node", "2", "not an addr"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("raft address \"not an addr\" has no port"),
        "{err}"
    );
    assert!(err.contains("expected HOST:PORT"), "{err}");
    let raw = rt().block_on(async {
        let mut c = kaon_harness::client(&format!("http://127.0.0.1:{}", api[0]))
            .await
            .unwrap();
        c.add_node(kaon_api::v1::AddNodeRequest {
            node_id: 2,
            raft_addr: "127.0.0.1".into(),
            learner: false,
        })
        .await
    });
    let e = raw.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message()
            .starts_with("raft_addr: \"127.0.0.1\" has no port"),
        "{e:?}"
    );
    assert_eq!(members(api[0]), vec![(1, true)]);

    // Nothing listens there: the call fails after the catch-up timeout,
    // node 2 stays a learner (no quorum lost), and can be removed.
    let nowhere = format!("127.0.0.1:{}", raft[1]);
    let (code, _, err) = kaon(api[0], &["cluster", "add-node", "2", &nowhere]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("node 2 was added as a learner but did not catch up within catch_up_timeout_ms = 1500 ms"),
        "{err}"
    );
    assert!(err.contains("kaon cluster remove-node 2"), "{err}");
    assert_eq!(members(api[0]), vec![(1, true), (2, false)]);
    let (code, out, err) = kaon(api[0], &["submit", spec, "--watch"]);
    assert_eq!(code, 0, "the cluster still commits: {out}{err}");
    assert_eq!(http_get(admin[0], "/readyz").unwrap().0, 200);
    let (code, out, err) = kaon(api[0], &["cluster", "remove-node", "2"]);
    assert_eq!((code, out.trim()), (0, "node 2 removed"), "{err}");
    assert_eq!(members(api[0]), vec![(1, true)]);

    // A restart finds a leader again (it used to exit here).
    procs.0[1].kill().unwrap();
    procs.0[1].wait().unwrap();
    procs.0[1] = node(dir.path(), 1, api[0], raft[0], mesos, &extra(0));
    wait_for("node 1 to be ready again", Duration::from_secs(30), || {
        (http_get(admin[0], "/readyz")?.0 == 200).then_some(())
    });

    // The real node 2 joins, catches up and is promoted.
    let mut join = extra(1);
    join.push("--join".into());
    procs
        .0
        .push(node(dir.path(), 2, api[1], raft[1], mesos, &join));
    wait_for("node 2 to listen", Duration::from_secs(30), || {
        http_get(admin[1], "/healthz")
    });
    let (code, out, err) = kaon(api[0], &["cluster", "add-node", "2", &nowhere]);
    assert_eq!((code, out.trim()), (0, "node 2 added as a voter"), "{err}");
    assert_eq!(members(api[0]), vec![(1, true), (2, true)]);
    // Adding it again as it is changes nothing and succeeds (a retry).
    let (code, _, err) = kaon(api[0], &["cluster", "add-node", "2", &nowhere]);
    assert_eq!(code, 0, "{err}");
    wait_for("node 2 to be ready", Duration::from_secs(20), || {
        (grpc_health(api[1], "")? == SERVING).then_some(())
    });
    let (code, out, err) = kaon(api[1], &["submit", spec, "--watch"]);
    assert_eq!(code, 0, "{out}{err}");

    // Removed, node 2 tells the truth: NOT_SERVING, /readyz 503.
    let (code, _, err) = kaon(api[0], &["cluster", "remove-node", "2"]);
    assert_eq!(code, 0, "{err}");
    wait_for(
        "the removed node 2 to say NOT_SERVING",
        Duration::from_secs(20),
        || (grpc_health(api[1], "")? == NOT_SERVING).then_some(()),
    );
    let (code, body) = http_get(admin[1], "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("not ready: node 2 "), "{body}");
    assert_eq!(http_get(admin[1], "/healthz").unwrap().0, 200);
    assert_eq!(grpc_health(api[0], ""), Some(SERVING));
}

/// Issue 9, C: the health service and reflection, v1 and v1alpha, list
/// every service (grpcio-reflection clients speak v1alpha).
#[test]
fn reflection_v1_and_v1alpha_list_the_api_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_server(dir.path());
    let url = server.url.clone();
    let (v1, v1alpha) = rt().block_on(async {
        use tonic_reflection::pb::{v1, v1alpha};
        let ch = tonic::transport::Channel::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut a = v1::server_reflection_client::ServerReflectionClient::new(ch.clone());
        let req = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let mut s = a
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let names_v1 = match s.message().await.unwrap().unwrap().message_response {
            Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
                l.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        };
        let mut b = v1alpha::server_reflection_client::ServerReflectionClient::new(ch);
        let req = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        let mut s = b
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let names_alpha = match s.message().await.unwrap().unwrap().message_response {
            Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
                l.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        };
        (names_v1, names_alpha)
    });
    for names in [&v1, &v1alpha] {
        for want in ["kaon.v1.Kaon", "grpc.health.v1.Health"] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
    }
}

/// Issue 9, B and C: with 2 of 3 voters gone the survivor says
/// NOT_SERVING; removals that would leave no reachable quorum are refused;
/// `kaon cluster recover` brings the survivor back as a one-node cluster
/// with every event it held.
#[test]
fn a_survivor_of_a_lost_majority_says_so_and_is_recovered_offline() {
    let mut c = common::cluster();
    let urls = c.urls();
    let rt = rt();
    let li = rt
        .block_on(c.wait_healthy(Duration::from_secs(30)))
        .unwrap();
    let leader = li as u64 + 1;
    let spec = "apiVersion: kaon/v1\nname: one\nsteps:\n  a: {shell: 'true'}\n";
    for k in 0..3 {
        rt.block_on(kaon_harness::submit_to_leader(
            &urls,
            spec,
            &format!("k{k}"),
            Duration::from_secs(30),
        ));
    }
    let (fa, fb) = {
        let f: Vec<usize> = (0..3).filter(|&i| i != li).collect();
        (f[0], f[1])
    };

    // One follower dies: removing the other (live) follower would leave
    // the leader and the dead node, of which only one is reachable.
    c.kill(fa);
    wait_for(
        "the leader to see it unreachable",
        Duration::from_secs(10),
        || {
            let s = status(c.api[li])?;
            let m = s["members"]
                .as_array()?
                .iter()
                .find(|m| m["id"] == fa + 1)?
                .clone();
            (m["reachable"] == false).then_some(())
        },
    );
    let (code, _, err) = kaon(
        c.api[li],
        &["cluster", "remove-node", &(fb + 1).to_string()],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!("after removing node {}: only", fb + 1)),
        "{err}"
    );
    assert_eq!(members(c.api[li]).len(), 3, "nothing changed");
    assert_eq!(
        grpc_health(c.api[li], ""),
        Some(SERVING),
        "2 of 3 is a quorum"
    );

    // The second follower dies: no quorum. The survivor stays up, says
    // NOT_SERVING, and still answers cluster status.
    c.kill(fb);
    wait_for(
        "the survivor to say NOT_SERVING",
        Duration::from_secs(20),
        || (grpc_health(c.api[li], "")? == NOT_SERVING).then_some(()),
    );
    let s = status(c.api[li]).expect("cluster status still answers");
    assert_eq!(s["ready"], false, "{s}");
    assert!(
        s["not_ready_reason"]
            .as_str()
            .unwrap()
            .contains("no quorum answered")
            || s["not_ready_reason"]
                .as_str()
                .unwrap()
                .contains("knows no leader"),
        "{s}"
    );

    // Offline recovery refuses a running node, then works on a stopped one.
    let data = c.data_dir(li);
    let me = format!("{}={}:{}", leader, c.hosts[li], c.raft[li]);
    let (code, _, err) = kaon(
        c.api[li],
        &[
            "cluster",
            "recover",
            "--data-dir",
            data.to_str().unwrap(),
            "--member",
            &me,
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("stop the node first"), "{err}");
    assert!(
        err.contains("already open"),
        "the lock is what refused: {err}"
    );
    c.kill(li);
    let (code, out, err) = kaon(
        c.api[li],
        &[
            "cluster",
            "recover",
            "--data-dir",
            data.to_str().unwrap(),
            "--member",
            &me,
            "--dry-run",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dry run: nothing written"), "{out}");
    let (code, out, err) = kaon(
        c.api[li],
        &[
            "cluster",
            "recover",
            "--data-dir",
            data.to_str().unwrap(),
            "--member",
            &me,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("wrote membership {me}")), "{out}");
    c.start_node(li).unwrap();
    wait_for(
        "the recovered node to serve",
        Duration::from_secs(30),
        || (grpc_health(c.api[li], "")? == SERVING).then_some(()),
    );
    assert_eq!(members(c.api[li]), vec![(leader, true)]);
    let (code, out, err) = kaon(c.api[li], &["--output", "json", "runs"]);
    assert_eq!(code, 0, "{err}");
    let runs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 3, "every run kept: {out}");
    let path = std::env::temp_dir().join(format!("kaon-recover-{}.yaml", std::process::id()));
    std::fs::write(&path, spec).unwrap();
    let (code, out, err) = kaon(c.api[li], &["submit", path.to_str().unwrap(), "--watch"]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, 0, "it commits and runs again: {out}{err}");
}

/// Issue 10, section 6, with real processes: an executor that stops
/// answering (SIGSTOP) is shut down after the leader's silence limit, and
/// its step is retried as lost; the stopped attempt's step does not
/// outlive it.
#[test]
fn a_hung_executor_is_shut_down_and_its_step_retried() {
    let dir = tempfile::tempdir().unwrap();
    let p = free_ports(3);
    let (mesos, api, raft) = (p[0], p[1], p[2]);
    let mut procs = Procs(vec![emulator(dir.path(), mesos)]);
    let _logs = LogsOnPanic(vec![dir.path().join("n1.stderr")]);
    let extra = vec!["--executor-silence-ms-max".to_string(), "3000".to_string()];
    procs.0.push(node(dir.path(), 1, api, raft, mesos, &extra));
    wait_for("node 1 to serve", Duration::from_secs(30), || {
        (grpc_health(api, "")? == SERVING).then_some(())
    });
    let marker = dir.path().join("attempt-1-ran");
    let spec = dir.path().join("hang.yaml");
    std::fs::write(
        &spec,
        format!(
            "apiVersion: kaon/v1\nname: hang\nsteps:\n  a: {{shell: 'if [ -f {m} ]; then exit 0; fi; touch {m}; exec sleep 120'}}\n",
            m = marker.display()
        ),
    )
    .unwrap();
    let (code, out, err) = kaon(api, &["submit", spec.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let id = out.trim().strip_prefix("run ").unwrap().to_string();
    wait_for("attempt 1 to run", Duration::from_secs(30), || {
        marker.exists().then_some(())
    });
    // The executor of attempt 1: the process whose working directory is a
    // sandbox under the emulator's work dir and whose command is `executor`.
    let sandboxes = dir.path().join("mesos");
    let procs_under = |what: &str| -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                cwd.is_some_and(|c| c.starts_with(&sandboxes))
                    && String::from_utf8_lossy(&cmd).contains(what)
            })
            .collect()
    };
    let executor = wait_for("attempt 1's executor", Duration::from_secs(10), || {
        procs_under("executor").first().copied()
    });
    // SAFETY: stopping a process this test's cluster started.
    unsafe { libc::kill(executor, libc::SIGSTOP) };
    let run = wait_for(
        "the run to succeed on attempt 2",
        Duration::from_secs(60),
        || {
            let (_, out, _) = kaon(api, &["--output", "json", "run", "show", &id]);
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            (v["status"] == "succeeded").then_some(v)
        },
    );
    assert_eq!(run["steps"][0]["attempts"], 2, "{run}");
    wait_for(
        "attempt 1's step to be gone",
        Duration::from_secs(20),
        || procs_under("sleep").is_empty().then_some(()),
    );
}

/// Every event of the cluster as protobuf JSON (`kaon audit export`).
fn exported(urls: &str) -> Vec<serde_json::Value> {
    let (code, out, err) = common::kaon_at(urls, &["audit", "export"]);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect()
}

/// The run ids named by events of `kind` (protobuf JSON name).
fn runs_in(events: &[serde_json::Value], kind: &str, field: &str) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e.get(kind))
        .flat_map(|b| match &b[field] {
            serde_json::Value::Array(a) => a
                .iter()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect(),
            v => vec![v.as_str().unwrap_or("").to_string()],
        })
        .collect()
}

/// Issue 11, section 3 (upgrades): a rolling restart of a 3-node cluster
/// onto a kaon that writes a newer event kind, one node at a time, under
/// load and with a step in flight, loses nothing and launches nothing
/// twice; the leader writes the new kind (RunsRetired) only once every
/// voter applies it. The "old" kaon is this binary pinned to event schema
/// 1 (`--event-schema-max 1`), as an operator pins a staged upgrade.
#[test]
fn a_rolling_upgrade_under_load_loses_nothing_and_writes_new_events_last() {
    let old = ["--event-schema-max", "1", "--run-retention", "1s"];
    let mut c = common::Cluster::builder(common::KAON)
        .server_args(&old)
        .start()
        .expect("the cluster starts");
    let urls = c.urls().join(",");
    let rt = rt();
    rt.block_on(c.wait_healthy(Duration::from_secs(30)))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let long = dir.path().join("long.yaml");
    std::fs::write(
        &long,
        format!(
            "apiVersion: kaon/v1\nname: long\nsteps:\n  s: {{shell: 'while [ ! -f {} ]; do sleep 0.1; done'}}\n",
            go.display()
        ),
    )
    .unwrap();
    let quick = dir.path().join("quick.yaml");
    std::fs::write(
        &quick,
        "apiVersion: kaon/v1\nname: quick\nsteps:\n  a: {shell: 'true'}\n",
    )
    .unwrap();
    let (code, out, err) = common::kaon_at(&urls, &["submit", long.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let long_id = out.trim().strip_prefix("run ").unwrap().to_string();
    let (code, out, err) = common::kaon_at(&urls, &["submit", quick.to_str().unwrap(), "--watch"]);
    assert_eq!(code, 0, "{out}{err}");

    // Load: submissions all through the upgrade; each accepted id counts.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, urls, quick) = (stop.clone(), urls.clone(), quick.clone());
        std::thread::spawn(move || {
            let mut accepted = Vec::new();
            let mut k = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                k += 1;
                let key = format!("load-{k}");
                let (code, out, _) =
                    common::kaon_at(&urls, &["submit", quick.to_str().unwrap(), "--key", &key]);
                if code == 0 {
                    // `run N`, or `run N (existing: same idempotency key)`
                    // when the CLI's own retry (an answer lost in a leader
                    // change) found the run its first try started.
                    let id = out.trim().strip_prefix("run ").unwrap_or("");
                    accepted.push(id.split_whitespace().next().unwrap_or("").to_string());
                }
            }
            accepted
        })
    };
    // The quick run's retention (1 s) has passed, by the cluster's own
    // clock (the load keeps adding events): a retirement is due from now
    // on, and held back while a voter is old.
    let ms = |e: &serde_json::Value| e["timeUnixMs"].as_str().unwrap().parse::<i64>().unwrap();
    wait_for(
        "the quick run's retention to pass",
        Duration::from_secs(30),
        || {
            let events = exported(&urls);
            let done = events
                .iter()
                .find(|e| e.get("runFinished").is_some())
                .map(ms)?;
            (events.iter().map(ms).max()? > done + 1_500).then_some(())
        },
    );
    assert!(runs_in(&exported(&urls), "runsRetired", "runIds").is_empty());
    // Followers first, the leader last, one at a time; each restarted
    // node serves and catches up before the next goes. (Under load the
    // nodes' applied indexes never stand equal: the leader every node
    // names is enough here.)
    let leader = rt.block_on(c.wait_leader(None, Duration::from_secs(30)));
    let order: Vec<usize> = (0..3).filter(|&i| i != leader).chain([leader]).collect();
    c.set_server_args(&["--run-retention", "1s"]);
    for (n, &i) in order.iter().enumerate() {
        c.stop(i);
        c.start_node(i).unwrap();
        // Under load the applied indexes never stand still: the restarted
        // node is back when all agree on a leader that sees every member
        // and it applied what the leader had when it came back.
        let caught_up = rt.block_on(kaon_harness::try_wait_until(
            Duration::from_secs(60),
            || async {
                let l = c.leader(None).await?;
                let target = c.status(l).await?.applied_event_index;
                let mine = c.status(i).await?.applied_event_index;
                (mine >= target.saturating_sub(50)).then_some(())
            },
        ));
        assert!(
            caught_up.is_some(),
            "node {} did not rejoin within 60 s: {}",
            i + 1,
            rt.block_on(c.describe())
        );
        if n < 2 {
            let events = exported(&urls);
            assert!(
                runs_in(&events, "runsRetired", "runIds").is_empty(),
                "{} of 3 nodes upgraded: an old voter cannot apply RunsRetired, none is written",
                n + 1
            );
        }
        if n == 1 {
            // An upgraded node leads while the old one is still a voter:
            // only what it learned of its peers holds RunsRetired back.
            let to = order[0];
            let (code, out, err) = common::kaon_at(
                &urls,
                &["cluster", "transfer-leader", &(to + 1).to_string()],
            );
            assert_eq!(code, 0, "{out}{err}");
            let from = exported(&urls).len();
            wait_for(
                "the upgraded leader to record new runs' ends",
                Duration::from_secs(60),
                || {
                    let events = exported(&urls);
                    let leads = rt.block_on(c.leader(None)) == Some(to);
                    (leads && runs_in(&events[from..], "runFinished", "runId").len() >= 2)
                        .then_some(())
                },
            );
            assert!(
                runs_in(&exported(&urls), "runsRetired", "runIds").is_empty(),
                "an upgraded leader with an old voter writes no RunsRetired"
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let accepted = load.join().unwrap();
    assert!(
        !accepted.is_empty(),
        "the load was accepted during the upgrade"
    );
    std::fs::write(&go, "").unwrap();

    // Every accepted run and the long one end, succeeded, launched once
    // per step; and, every voter now upgraded, finished runs are retired.
    let events = wait_for(
        "every run to end and be retired",
        Duration::from_secs(90),
        || {
            let events = exported(&urls);
            let finished = runs_in(&events, "runFinished", "runId");
            let retired = runs_in(&events, "runsRetired", "runIds");
            let all = accepted.iter().chain([&long_id]);
            all.clone()
                .all(|r| finished.contains(r) && retired.contains(r))
                .then_some(events)
        },
    );
    for e in events.iter().filter_map(|e| e.get("runFinished")) {
        assert_eq!(e["outcome"], "RUN_OUTCOME_SUCCEEDED", "{e}");
    }
    // Each step ran once: one attempt was seen running (an attempt that
    // a leader recorded but never sent, lost with it, is retried and
    // never ran).
    for r in accepted.iter().chain([&long_id]) {
        let of_run: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| {
                e.as_object()
                    .is_some_and(|o| o.values().any(|b| b["runId"] == **r))
            })
            .collect();
        let ran: std::collections::BTreeSet<String> = of_run
            .iter()
            .filter_map(|e| e.get("taskStatusObserved"))
            .filter(|o| o["state"] == "TASK_STATE_RUNNING" || o["state"] == "TASK_STATE_FINISHED")
            .map(|o| o["attempt"].to_string())
            .collect();
        assert_eq!(ran.len(), 1, "run {r}: its one step ran once: {of_run:#?}");
    }
}
