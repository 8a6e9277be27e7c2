//! Issue 12, section 1 (TLS), on a real 3-node cluster started with
//! `--tls-ca/--tls-cert/--tls-key` from `kaon tls init`: clients over
//! https with the cluster CA, plain text refused clearly, a node with a
//! certificate from another CA kept out, and certificates rotated under
//! load without losing a run.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Cluster, KAON, Procs, free_ports, kaon_at, kaon_local, wait_for};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn tls_init(dir: &Path, nodes: &str) {
    let (code, out, err) = kaon_local(&[
        "tls".as_ref(),
        "init".as_ref(),
        dir.as_os_str(),
        "--nodes".as_ref(),
        nodes.as_ref(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
}

const QUICK: &str = "apiVersion: kaon/v1\nname: quick\nsteps:\n  a: {shell: 'true'}\n";

#[test]
fn a_tls_cluster_serves_only_tls_keeps_strangers_out_and_rotates_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    tls_init(&certs, "3");
    let ca = certs.join("ca.pem");
    let ca_s = ca.to_str().unwrap().to_string();
    let c = Cluster::builder(KAON)
        .server_args(&[
            "--tls-ca",
            &ca_s,
            "--tls-cert",
            certs.join("node-{n}.pem").to_str().unwrap(),
            "--tls-key",
            certs.join("node-{n}.key").to_str().unwrap(),
        ])
        .tls_ca(std::fs::read(&ca).unwrap())
        .start()
        .expect("the cluster starts");
    let rt = rt();
    let leader = rt.block_on(c.wait_leader(None, Duration::from_secs(30)));
    let follower = (leader + 1) % 3;
    let urls = c.urls().join(",");
    assert!(urls.starts_with("https://"), "{urls}");
    let quick = dir.path().join("quick.yaml");
    std::fs::write(&quick, QUICK).unwrap();

    // Over TLS, through a follower (forwarded to the leader over TLS) and
    // run by the executor: the Raft and API paths both work.
    let (code, out, err) = kaon_at(
        &c.url(follower),
        &[
            "--tls-ca",
            &ca_s,
            "submit",
            quick.to_str().unwrap(),
            "--watch",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("succeeded"), "{out}");

    // Plain text to the TLS port: refused, with a hint.
    let plain = c.url(follower).replace("https://", "http://");
    let (code, out, err) = kaon_at(&plain, &["--timeout", "2", "runs"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--tls-ca"),
        "a plain-text client is told about TLS: {code} {out} {err}"
    );
    // https without the CA, and with another CA: refused, saying why.
    let (code, _, err) = kaon_at(&c.url(follower), &["--timeout", "2", "runs"]);
    assert_ne!(code, 0);
    assert!(err.contains("needs the cluster CA"), "{err}");
    let other = dir.path().join("other");
    tls_init(&other, "1");
    let (code, _, _) = kaon_at(
        &c.url(follower),
        &[
            "--timeout",
            "2",
            "--tls-ca",
            other.join("ca.pem").to_str().unwrap(),
            "runs",
        ],
    );
    assert_ne!(
        code, 0,
        "a server the client's CA did not sign is not trusted"
    );

    // A node with a certificate from another CA cannot join: the leader
    // cannot reach it and it cannot reach the leader; voters stay 3.
    let p = free_ports(2);
    let mut procs = Procs(Vec::new());
    let n4_log = dir.path().join("n4.log");
    procs.0.push(
        Command::new(KAON)
            .args(["server", "--node-id", "4", "--join"])
            .args(["--listen", &format!("127.0.0.1:{}", p[0])])
            .args(["--raft-listen", &format!("127.0.0.1:{}", p[1])])
            .arg("--data-dir")
            .arg(dir.path().join("n4"))
            .args(["--mesos-master", &c.mesos_url()])
            .arg("--tls-ca")
            .arg(other.join("ca.pem"))
            .arg("--tls-cert")
            .arg(other.join("node-1.pem"))
            .arg("--tls-key")
            .arg(other.join("node-1.key"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&n4_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let (code, out, err) = kaon_at(
        &urls,
        &[
            "--tls-ca",
            &ca_s,
            "--timeout",
            "20",
            "cluster",
            "add-node",
            "4",
            &format!("127.0.0.1:{}", p[1]),
        ],
    );
    assert_ne!(code, 0, "the stranger joined: {out}{err}");
    let st = rt.block_on(c.status(leader)).unwrap();
    let voters = st.members.iter().filter(|m| m.voter).count();
    assert_eq!(voters, 3, "{st:?}");
    wait_for(
        "the stranger to log the refused handshake",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&n4_log)
                .unwrap_or_default()
                .contains("TLS handshake refused")
                .then_some(())
        },
    );
    if let Some(s4) = st.members.iter().find(|m| m.id == 4) {
        // Left behind as a learner: remove it (it never received a byte).
        assert!(!s4.voter);
        let (code, out, err) = kaon_at(&urls, &["--tls-ca", &ca_s, "cluster", "remove-node", "4"]);
        assert_eq!(code, 0, "{out}{err}");
    }
    drop(procs);

    // Rotation under load: new certificates (same CA) written over every
    // node's files while clients submit; every accepted run succeeds.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, urls, quick, ca_s) = (stop.clone(), urls.clone(), quick.clone(), ca_s.clone());
        std::thread::spawn(move || {
            let mut accepted = Vec::new();
            let mut k = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                k += 1;
                let key = format!("load-{k}");
                let (code, out, _) = kaon_at(
                    &urls,
                    &[
                        "--tls-ca",
                        &ca_s,
                        "submit",
                        quick.to_str().unwrap(),
                        "--key",
                        &key,
                    ],
                );
                if code == 0 {
                    accepted.push(out.trim().strip_prefix("run ").unwrap_or("").to_string());
                }
            }
            accepted
        })
    };
    for n in 1..=3 {
        let (code, out, err) = kaon_local(&[
            "tls".as_ref(),
            "cert".as_ref(),
            certs.as_os_str(),
            format!("node-{n}").as_ref(),
            "--host".as_ref(),
            format!("node-{n}").as_ref(),
        ]);
        assert_eq!(code, 0, "{out}{err}");
    }
    wait_for(
        "every node to reload its certificate",
        Duration::from_secs(20),
        || {
            (0..3)
                .all(|i| {
                    std::fs::read_to_string(c.log_path(i))
                        .unwrap_or_default()
                        .contains("TLS certificates reloaded")
                })
                .then_some(())
        },
    );
    // New connections after the rotation: a follower forwards again.
    let (code, out, err) = kaon_at(
        &c.url(follower),
        &[
            "--tls-ca",
            &ca_s,
            "submit",
            quick.to_str().unwrap(),
            "--watch",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let accepted = load.join().unwrap();
    assert!(
        !accepted.is_empty(),
        "submissions were accepted during the rotation"
    );
    wait_for(
        "every accepted run to succeed",
        Duration::from_secs(60),
        || {
            accepted
                .iter()
                .all(|r| {
                    let (_, out, _) = kaon_at(&urls, &["--tls-ca", &ca_s, "run", "show", r]);
                    out.contains("succeeded")
                })
                .then_some(())
        },
    );
}

/// Issue 12, section 2: a client certificate of the cluster CA is an
/// identity (its common name listed in the tokens file with a role): the
/// caller's reads are served by any node, its writes by the leader (a
/// follower sends it there: a certificate cannot be forwarded), and the
/// events record it; an unlisted certificate is refused.
#[test]
fn a_client_certificate_is_an_identity_with_a_role() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    tls_init(&certs, "3");
    for name in ["ci-bot", "stranger"] {
        let (code, out, err) = kaon_local(&[
            "tls".as_ref(),
            "cert".as_ref(),
            certs.as_os_str(),
            name.as_ref(),
        ]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let admin = kaon_server::auth::new_token();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - {{principal: root, role: admin, sha256: {}}}\ncertificates:\n  - {{common_name: ci-bot, role: submitter}}\n",
            kaon_server::auth::token_sha256(&admin)
        ),
    )
    .unwrap();
    let ca = certs.join("ca.pem");
    let ca_s = ca.to_str().unwrap().to_string();
    let c = Cluster::builder(KAON)
        .server_args(&[
            "--tls-ca",
            &ca_s,
            "--tls-cert",
            certs.join("node-{n}.pem").to_str().unwrap(),
            "--tls-key",
            certs.join("node-{n}.key").to_str().unwrap(),
            "--auth-file",
            tokens.to_str().unwrap(),
        ])
        .tls_ca(std::fs::read(&ca).unwrap())
        .token(&admin)
        .start()
        .expect("the cluster starts");
    let rt = rt();
    let leader = rt.block_on(c.wait_leader(None, Duration::from_secs(30)));
    let follower = c.url((leader + 1) % 3);
    let quick = dir.path().join("quick.yaml");
    std::fs::write(&quick, QUICK).unwrap();
    let as_cert = |name: &str, args: &[&str]| {
        let cert = certs.join(format!("{name}.pem"));
        let key = certs.join(format!("{name}.key"));
        let mut all = vec![
            "--tls-ca",
            ca_s.as_str(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        all.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        kaon_at(&follower, &refs)
    };
    // A write through a follower: sent on to the leader, and recorded as
    // the certificate's principal.
    let (code, out, err) = as_cert("ci-bot", &["submit", quick.to_str().unwrap(), "--watch"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = as_cert("ci-bot", &["runs"]);
    assert_eq!(code, 0, "a linearizable read at a follower: {err}");
    assert!(out.contains("quick"), "{out}");
    let (code, _, err) = as_cert("ci-bot", &["workflow", "register", quick.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("ci-bot (role submitter)"), "{err}");
    let (code, _, err) = as_cert("stranger", &["runs"]);
    assert_ne!(code, 0);
    assert!(err.contains("not listed"), "{err}");
    let (code, out, err) = kaon_at(
        &follower,
        &["--tls-ca", &ca_s, "--token", &admin, "audit", "export"],
    );
    assert_eq!(code, 0, "{err}");
    let submitted: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|e| e.get("runSubmitted").cloned())
        .collect();
    assert_eq!(submitted.len(), 1);
    assert_eq!(submitted[0]["requestedBy"]["principal"], "ci-bot");
    assert_eq!(submitted[0]["requestedBy"]["method"], "certificate");
}
