//! Issue 12, section 2 (who may do what), on real 3-node clusters started
//! with `--auth-file`: every role against every RPC, with and without
//! tokens, through a follower and through the leader; a submitter's own
//! runs; who asked, recorded in the events; the tokens file reloaded; the
//! web UI's sign-in.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Cluster, KAON, kaon_at, wait_for};
use kaon_api::v1;
use kaon_api::v1::kaon_client::KaonClient;
use kaon_server::auth::{Role, new_token, token_sha256};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Tokens for one principal per role (named after the role) plus a second
/// submitter, and the tokens file listing them.
struct Tokens {
    by_role: Vec<(Role, String)>,
    other_submitter: String,
    file: std::path::PathBuf,
}

impl Tokens {
    fn write(dir: &Path) -> Tokens {
        let by_role: Vec<(Role, String)> = Role::ALL.iter().map(|&r| (r, new_token())).collect();
        let other_submitter = new_token();
        let file = dir.join("tokens.yaml");
        let t = Tokens {
            by_role,
            other_submitter,
            file,
        };
        t.save(&[]);
        t
    }

    /// Writes the file without the principals in `revoked`.
    fn save(&self, revoked: &[&str]) {
        let mut y = String::from("tokens:\n");
        let entries = self
            .by_role
            .iter()
            .map(|(r, t)| (r.name().to_string(), r.name(), t))
            .chain([("submitter2".to_string(), "submitter", &self.other_submitter)]);
        for (principal, role, token) in entries {
            if revoked.contains(&principal.as_str()) {
                continue;
            }
            y.push_str(&format!(
                "  - {{principal: {principal}, role: {role}, sha256: {}}}\n",
                token_sha256(token)
            ));
        }
        // Written whole, then renamed: the server never reads half a file.
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, y).unwrap();
        std::fs::rename(&tmp, &self.file).unwrap();
    }

    fn of(&self, r: Role) -> &str {
        &self.by_role.iter().find(|(x, _)| *x == r).unwrap().1
    }
}

fn secured_cluster(tokens: &Tokens) -> Cluster {
    Cluster::builder(KAON)
        .server_args(&["--auth-file", tokens.file.to_str().unwrap()])
        .token(tokens.of(Role::Admin))
        .start()
        .expect("the cluster starts")
}

fn with_token<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(Duration::from_secs(10));
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

const QUICK: &str = "apiVersion: kaon/v1\nname: quick\nsteps:\n  a: {shell: 'true'}\n";

/// One call of every RPC with arguments that are harmless when allowed;
/// the code it ended with.
async fn call(
    c: &mut KaonClient<Channel>,
    rpc: &str,
    token: Option<&str>,
    n: usize,
) -> Result<(), Status> {
    let t = token;
    let missing = 999_999;
    match rpc {
        "RegisterWorkflow" => c
            .register_workflow(with_token(
                v1::RegisterWorkflowRequest {
                    spec: QUICK.replace("quick", &format!("registered-{n}")),
                },
                t,
            ))
            .await
            .map(drop),
        "ListWorkflows" => c
            .list_workflows(with_token(v1::ListWorkflowsRequest {}, t))
            .await
            .map(drop),
        "GetWorkflow" => c
            .get_workflow(with_token(
                v1::GetWorkflowRequest {
                    name: "quick".into(),
                },
                t,
            ))
            .await
            .map(drop),
        "SubmitRun" => c
            .submit_run(with_token(
                v1::SubmitRunRequest {
                    workflow: Some(v1::submit_run_request::Workflow::InlineSpec(QUICK.into())),
                    params_json: Default::default(),
                    idempotency_key: format!("table-{n}"),
                },
                t,
            ))
            .await
            .map(drop),
        "GetRun" => c
            .get_run(with_token(v1::GetRunRequest { run_id: missing }, t))
            .await
            .map(drop),
        "ListRuns" => c
            .list_runs(with_token(
                v1::ListRunsRequest {
                    page_size: 5,
                    ..Default::default()
                },
                t,
            ))
            .await
            .map(drop),
        "WatchRun" => c
            .watch_run(with_token(
                v1::WatchRunRequest {
                    run_id: missing,
                    after_index: 0,
                },
                t,
            ))
            .await
            .map(drop),
        "CancelRun" => c
            .cancel_run(with_token(
                v1::CancelRunRequest {
                    run_id: missing,
                    reason: String::new(),
                },
                t,
            ))
            .await
            .map(drop),
        "ListSchedules" => c
            .list_schedules(with_token(v1::ListSchedulesRequest {}, t))
            .await
            .map(drop),
        "SetSchedulePaused" => c
            .set_schedule_paused(with_token(
                v1::SetSchedulePausedRequest {
                    workflow: "no-such-workflow".into(),
                    index: 0,
                    paused: true,
                },
                t,
            ))
            .await
            .map(drop),
        "ClusterStatus" => c
            .cluster_status(with_token(v1::ClusterStatusRequest {}, t))
            .await
            .map(drop),
        "RetryRun" => c
            .retry_run(with_token(
                v1::RetryRunRequest {
                    run_id: missing,
                    idempotency_key: String::new(),
                },
                t,
            ))
            .await
            .map(drop),
        "ReadStepLogs" => c
            .read_step_logs(with_token(
                v1::ReadStepLogsRequest {
                    run_id: missing,
                    step_path: "a".into(),
                    ..Default::default()
                },
                t,
            ))
            .await
            .map(drop),
        "InitCluster" => c
            .init_cluster(with_token(v1::InitClusterRequest::default(), t))
            .await
            .map(drop),
        "AddNode" => c
            .add_node(with_token(
                v1::AddNodeRequest {
                    node_id: 0,
                    raft_addr: String::new(),
                    learner: true,
                },
                t,
            ))
            .await
            .map(drop),
        "RemoveNode" => c
            .remove_node(with_token(v1::RemoveNodeRequest { node_id: 99 }, t))
            .await
            .map(drop),
        "TransferLeader" => c
            .transfer_leader(with_token(v1::TransferLeaderRequest { node_id: 99 }, t))
            .await
            .map(drop),
        "Snapshot" => c
            .snapshot(with_token(v1::SnapshotRequest {}, t))
            .await
            .map(drop),
        "ReadEvents" => c
            .read_events(with_token(
                v1::ReadEventsRequest {
                    from_index: 1,
                    to_index: 2,
                },
                t,
            ))
            .await
            .map(drop),
        "ReadIndex" => c
            .read_index(with_token(v1::ReadIndexRequest {}, t))
            .await
            .map(drop),
        other => panic!("no call for {other}"),
    }
}

/// Every RPC of `kaon.v1.Kaon` and the weakest role that may call it.
const TABLE: &[(&str, Role)] = &[
    ("ListWorkflows", Role::Viewer),
    ("GetWorkflow", Role::Viewer),
    ("GetRun", Role::Viewer),
    ("ListRuns", Role::Viewer),
    ("WatchRun", Role::Viewer),
    ("ListSchedules", Role::Viewer),
    ("ClusterStatus", Role::Viewer),
    ("ReadStepLogs", Role::Viewer),
    ("ReadEvents", Role::Viewer),
    ("ReadIndex", Role::Viewer),
    ("SubmitRun", Role::Submitter),
    ("CancelRun", Role::Submitter),
    ("RetryRun", Role::Submitter),
    ("RegisterWorkflow", Role::Operator),
    ("SetSchedulePaused", Role::Operator),
    ("InitCluster", Role::Admin),
    ("AddNode", Role::Admin),
    ("RemoveNode", Role::Admin),
    ("TransferLeader", Role::Admin),
    ("Snapshot", Role::Admin),
];

#[test]
fn every_role_against_every_rpc_through_a_follower_and_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::write(dir.path());
    let c = secured_cluster(&tokens);
    let rt = rt();
    let leader = rt.block_on(c.wait_leader(None, Duration::from_secs(30)));
    let follower = (0..3).find(|&i| i != leader).unwrap();
    // The table names every RPC the API has.
    let proto = include_str!("../../../proto/kaon/v1/api.proto");
    let rpcs = proto
        .lines()
        .filter(|l| l.trim().starts_with("rpc "))
        .count();
    assert_eq!(TABLE.len(), rpcs, "every RPC has a row in the test's table");
    let unknown = new_token();
    let mut n = 0;
    let mut checked = 0;
    for node in [follower, leader] {
        let mut client = rt.block_on(c.connect(node)).unwrap();
        for &(rpc, needed) in TABLE {
            let callers: Vec<(Option<Role>, Option<&str>)> =
                [(None, None), (None, Some(unknown.as_str()))]
                    .into_iter()
                    .chain(Role::ALL.iter().map(|&r| (Some(r), Some(tokens.of(r)))))
                    .collect();
            // (ReadIndex is the leader's alone: a follower answers an
            // allowed caller UNAVAILABLE, naming the leader.)
            for (role, token) in callers {
                n += 1;
                let got = rt.block_on(call(&mut client, rpc, token, n));
                let what = format!("{rpc} as {role:?} at node {}", node + 1);
                match role {
                    None => {
                        let e = got.expect_err(&what);
                        assert_eq!(e.code(), Code::Unauthenticated, "{what}: {e:?}");
                    }
                    Some(r) if r < needed => {
                        let e = got.expect_err(&what);
                        assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
                        assert!(
                            e.message()
                                .contains(&format!("needs the {} role", needed.name()))
                                && e.message().contains(&format!(
                                    "{} (role {})",
                                    r.name(),
                                    r.name()
                                )),
                            "{what}: the refusal names the caller and the role needed: {}",
                            e.message()
                        );
                    }
                    Some(_) => {
                        if let Err(e) = got
                            && !(rpc == "ReadIndex" && node == follower)
                        {
                            assert!(
                                !matches!(
                                    e.code(),
                                    Code::PermissionDenied
                                        | Code::Unauthenticated
                                        | Code::Unavailable
                                ),
                                "{what}: allowed, but {e:?}"
                            );
                        }
                    }
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * TABLE.len() * 6);
}

/// Events of the cluster as JSON (`kaon audit export` with a token).
fn exported(url: &str, token: &str) -> Vec<serde_json::Value> {
    let (code, out, err) = kaon_at(url, &["--token", token, "audit", "export"]);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect()
}

#[test]
fn a_submitter_acts_on_its_own_runs_and_every_command_event_says_who_asked() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::write(dir.path());
    let c = secured_cluster(&tokens);
    let rt = rt();
    let leader = rt.block_on(c.wait_leader(None, Duration::from_secs(30)));
    let follower = c.url((leader + 1) % 3);
    let go = dir.path().join("go");
    let spec = dir.path().join("long.yaml");
    std::fs::write(
        &spec,
        format!(
            "apiVersion: kaon/v1\nname: long\nsteps:\n  s: {{shell: 'while [ ! -f {} ]; do sleep 0.1; done'}}\n",
            go.display()
        ),
    )
    .unwrap();
    let sub = tokens.of(Role::Submitter);
    let op = tokens.of(Role::Operator);
    // Through a follower: the leader sees the submitter, not the node.
    let (code, out, err) = kaon_at(
        &follower,
        &["--token", sub, "submit", spec.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    let run = out.trim().strip_prefix("run ").unwrap().to_string();
    // Another submitter may not cancel it; the refusal says whose it is.
    let (code, _, err) = kaon_at(
        &follower,
        &["--token", &tokens.other_submitter, "run", "cancel", &run],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("PermissionDenied")
            && err.contains("submitter2 (role submitter) may not cancel run")
            && err.contains("submitted by submitter"),
        "{err}"
    );
    // Without a token the CLI says how to pass one.
    let (code, _, err) = kaon_at(&follower, &["runs"]);
    assert_ne!(code, 0);
    assert!(err.contains("KAON_TOKEN"), "{err}");
    // An operator may cancel anyone's run; the submitter retries its own.
    let (code, out, err) = kaon_at(&follower, &["--token", op, "run", "cancel", &run]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for("the run to end cancelled", Duration::from_secs(30), || {
        let (_, out, _) = kaon_at(&follower, &["--token", sub, "run", "show", &run]);
        out.contains("cancelled").then_some(())
    });
    std::fs::write(&go, "").unwrap();
    let (code, out, err) = kaon_at(
        &follower,
        &["--token", &tokens.other_submitter, "run", "retry", &run],
    );
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("PermissionDenied"), "{err}");
    let (code, out, err) = kaon_at(&follower, &["--token", sub, "run", "retry", &run]);
    assert_eq!(code, 0, "{out}{err}");

    // The log says who asked for each command event.
    let events = exported(&follower, tokens.of(Role::Viewer));
    let by = |kind: &str| -> Vec<serde_json::Value> {
        events
            .iter()
            .filter_map(|e| e.get(kind))
            .map(|b| b["requestedBy"].clone())
            .collect()
    };
    let submitted = by("runSubmitted");
    assert_eq!(submitted.len(), 2, "{submitted:?}");
    for s in &submitted {
        assert_eq!(s["principal"], "submitter", "{s}");
        assert_eq!(s["method"], "token", "{s}");
        assert_eq!(s["role"], "submitter", "{s}");
    }
    let cancelled = by("runCancelRequested");
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0]["principal"], "operator");
    assert_eq!(cancelled[0]["role"], "operator");
    assert!(
        by("workflowRegistered")
            .iter()
            .all(|a| a["principal"] == "submitter"),
        "a submitted spec's version records its submitter"
    );
    // `kaon audit why` answers who submitted and who cancelled.
    let (code, out, err) = kaon_at(
        &follower,
        &[
            "--token",
            tokens.of(Role::Viewer),
            "audit",
            "why",
            &run,
            "s",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("by submitter") && out.contains("by operator"),
        "{out}"
    );
}

#[test]
fn a_revoked_token_stops_working_without_a_restart_and_the_ui_asks_for_one() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens::write(dir.path());
    let c = secured_cluster(&tokens);
    let rt = rt();
    rt.block_on(c.wait_leader(None, Duration::from_secs(30)));
    let url = c.url(0);
    let viewer = tokens.of(Role::Viewer);
    let (code, _, err) = kaon_at(&url, &["--token", viewer, "runs"]);
    assert_eq!(code, 0, "{err}");
    tokens.save(&["viewer"]);
    wait_for(
        "every node to refuse the revoked token",
        Duration::from_secs(15),
        || {
            (0..3)
                .all(|i| {
                    let (code, _, err) =
                        kaon_at(&c.url(i), &["--token", viewer, "--stale", "runs"]);
                    code != 0 && err.contains("not known")
                })
                .then_some(())
        },
    );

    // The web UI: no token, the sign-in form; a wrong one, refused; the
    // right one, a cookie that no script can read, then the pages.
    let ui = c.admin_url(0);
    let op = tokens.of(Role::Operator).to_string();
    rt.block_on(async {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let login = |token: &str| {
            http.post(format!("{ui}/ui/login"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("token={token}"))
                .send()
        };
        let r = http.get(format!("{ui}/ui/")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401);
        assert!(r.text().await.unwrap().contains("action=\"/ui/login\""));
        let r = login("kaon_wrong").await.unwrap();
        assert_eq!(r.status().as_u16(), 401);
        assert!(r.headers().get("set-cookie").is_none());
        let r = login(&op).await.unwrap();
        assert_eq!(r.status().as_u16(), 303, "{:?}", r.headers());
        let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let pair = cookie.split(';').next().unwrap().to_string();
        let r = http
            .get(format!("{ui}/ui/"))
            .header("cookie", &pair)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(r.text().await.unwrap().contains("Sign out"));
    });
}

#[test]
fn a_node_with_a_malformed_tokens_file_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.yaml");
    std::fs::write(
        &file,
        "tokens:\n  - {principal: a, role: superuser, sha256: 00}\n",
    )
    .unwrap();
    let out = std::process::Command::new(KAON)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--raft-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--auth-file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tokens.yaml") && err.contains("tokens[0]") && err.contains("superuser"),
        "{err}"
    );
}

/// Every file under `dir` (bytes), for a search.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                todo.push(p);
            } else if t.is_file()
                && let Ok(b) = std::fs::read(&p)
            {
                out.push((p, b));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Issue 12, section 3: a step's secrets, named in the spec, reach the
/// step (as a variable and as a file) and nothing else: not the data
/// directory (event log, snapshots, sandboxes after the step), not the
/// node's log, not any API answer.
#[test]
fn secrets_reach_the_step_and_never_the_log_the_api_or_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let (pw, key) = ("pw-7f3a9c-SECRET", "ak-55e1b0-SECRET");
    std::fs::write(secrets.join("db-password"), format!("{pw}\n")).unwrap();
    std::fs::write(secrets.join("api-key"), key).unwrap();
    let data = dir.path().join("data");
    let server = common::Server::start_with(
        Path::new(KAON),
        &data,
        &["--secrets-dir", secrets.to_str().unwrap()],
        &[],
    )
    .unwrap();
    let url = server.url.clone();
    let spec = dir.path().join("uses-secrets.yaml");
    std::fs::write(
        &spec,
        format!(
            "apiVersion: kaon/v1\nname: uses-secrets\nsteps:\n  s:\n    shell: 'test \"$(printf %s \"$PW\" | sha256sum | cut -c1-64)\" = {} && test \"$(sha256sum < \"$KAON_SECRETS/api-key\" | cut -c1-64)\" = {} && ls -ld \"$KAON_SECRETS\" && echo checked'\n    env: {{PW: {{secret: db-password}}, MODE: plain}}\n    secrets: [api-key]\n  after: {{shell: 'echo done', depends_on: [s]}}\n",
            // The spec holds the values' hashes only (it is in the log).
            token_sha256(pw),
            token_sha256(key)
        ),
    )
    .unwrap();
    let (code, out, err) = kaon_at(&url, &["submit", spec.to_str().unwrap(), "--watch"]);
    assert_eq!(code, 0, "the step saw both secrets: {out}{err}");
    let run = out
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let (_, logs, _) = kaon_at(&url, &["run", "logs", &run, "s"]);
    assert!(
        logs.contains("checked") && logs.contains("drwx------"),
        "the secret files' directory is the step's alone: {logs}"
    );

    // A missing secret fails the step, naming it and where it was looked for.
    let missing = dir.path().join("missing.yaml");
    std::fs::write(
        &missing,
        "apiVersion: kaon/v1\nname: missing\nsteps:\n  m: {shell: 'true', env: {X: {secret: nope}}}\n",
    )
    .unwrap();
    let (code, out, err) = kaon_at(&url, &["submit", missing.to_str().unwrap(), "--watch"]);
    assert_ne!(code, 0);
    let missing_run = out
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{out}{err}"))
        .to_string();
    // A name that is not a plain file name is refused at submission.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: kaon/v1\nname: bad\nsteps:\n  b: {shell: 'true', secrets: ['../etc/passwd']}\n",
    )
    .unwrap();
    let (code, _, err) = kaon_at(&url, &["submit", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("steps.b.secrets[0]") && err.contains("invalid secret name"),
        "{err}"
    );

    // Every API answer about the runs.
    let mut answers = Vec::new();
    for args in [
        vec!["run", "show", run.as_str(), "--output", "json"],
        vec!["run", "show", run.as_str()],
        vec!["run", "logs", run.as_str(), "s"],
        vec!["run", "logs", run.as_str(), "s", "--stderr"],
        vec!["audit", "export"],
        vec!["workflow", "list"],
        vec!["runs", "--output", "json"],
    ] {
        let (code, out, err) = kaon_at(&url, &args);
        assert_eq!(code, 0, "{args:?}: {err}");
        answers.push((format!("{args:?}"), out + &err));
    }
    let (_, shown, _) = kaon_at(&url, &["run", "show", &missing_run]);
    assert!(
        shown.contains("secret \"nope\" not found in"),
        "the failure names the secret: {shown}"
    );
    drop(server);
    for (what, text) in &answers {
        for v in [pw, key] {
            assert!(!text.contains(v), "{what} shows a secret value");
        }
    }
    let files = files_under(&data);
    assert!(files.len() > 5, "the data directory was searched");
    for (p, bytes) in &files {
        for v in [pw, key] {
            assert!(!contains(bytes, v), "{} holds a secret value", p.display());
        }
    }
}

/// Issue 12, section 4: a node whose event archive was altered on disk
/// refuses to start, saying so, and `kaon cluster rebuild-node` plus a
/// start with `--join` rebuilds it from its peers.
#[test]
fn an_altered_archive_stops_its_node_and_the_node_is_rebuilt_from_its_peers() {
    let mut c = common::cluster();
    let rt = rt();
    let leader = rt.block_on(c.wait_leader(None, Duration::from_secs(30)));
    let victim = (leader + 1) % 3;
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("marked.yaml");
    let marker = "kaon-archive-marker-7d1c";
    std::fs::write(
        &spec,
        format!("apiVersion: kaon/v1\nname: marked\nsteps:\n  a: {{shell: 'echo {marker}'}}\n"),
    )
    .unwrap();
    let urls = c.urls().join(",");
    let (code, out, err) = kaon_at(&urls, &["submit", spec.to_str().unwrap(), "--watch"]);
    assert_eq!(code, 0, "{out}{err}");
    rt.block_on(c.wait_healthy(Duration::from_secs(30)))
        .unwrap();
    c.stop(victim);
    // Someone edits the node's archive file in place.
    let file = c.data_dir(victim).join("raft/state.redb");
    let mut bytes = std::fs::read(&file).unwrap();
    let mut altered = 0;
    let m = marker.as_bytes();
    for i in 0..bytes.len().saturating_sub(m.len()) {
        if &bytes[i..i + m.len()] == m {
            bytes[i + m.len() - 1] = b'X';
            altered += 1;
        }
    }
    assert!(altered > 0, "the marker is in the archive");
    std::fs::write(&file, bytes).unwrap();
    c.start_node(victim).unwrap();
    wait_for(
        "the altered node to refuse to start",
        Duration::from_secs(30),
        || c.has_exited(victim).then_some(()),
    );
    let log = std::fs::read_to_string(c.log_path(victim)).unwrap();
    assert!(
        log.contains("event archive") && log.contains("rebuild-node"),
        "the node says what is wrong and how to rebuild: {log}"
    );
    c.stop(victim);
    // Rebuild (one command, on the node's host): out of the cluster, the
    // archive moved aside, and back in once the node is started again.
    let others: Vec<String> = (0..3).filter(|&i| i != victim).map(|i| c.url(i)).collect();
    let rebuild = {
        let (others, data, addr) = (
            others.join(","),
            c.data_dir(victim),
            format!("127.0.0.1:{}", c.raft[victim]),
        );
        let id = (victim + 1).to_string();
        std::thread::spawn(move || {
            kaon_at(
                &others,
                &[
                    "cluster",
                    "rebuild-node",
                    "--data-dir",
                    data.to_str().unwrap(),
                    "--node-id",
                    &id,
                    "--raft-addr",
                    &addr,
                    "--wait",
                    "60",
                ],
            )
        })
    };
    wait_for(
        "the archive to be moved aside",
        Duration::from_secs(30),
        || (!c.data_dir(victim).join("raft").exists()).then_some(()),
    );
    c.set_server_args(&["--join"]);
    c.start_node(victim).unwrap();
    c.set_server_args(&[]);
    let (code, out, err) = rebuild.join().unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("does not verify") && out.contains("is back"),
        "{out}"
    );
    rt.block_on(c.wait_healthy(Duration::from_secs(60)))
        .expect("the rebuilt node catches up with the others");
    let (code, out, err) = kaon_at(&c.url(victim), &["runs", "--stale"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("marked"),
        "the rebuilt node holds the history: {out}"
    );
}

/// Issue 12, section 2: a Mesos master that authenticates frameworks (the
/// emulator with `--credentials`) accepts kaon with its principal and
/// secret, and refuses a wrong secret, which kaon's log names.
#[test]
fn kaon_authenticates_to_a_mesos_master_that_requires_it() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials.json");
    std::fs::write(
        &creds,
        r#"{"credentials": [{"principal": "kaon", "secret": "s3cr3t-fw"}]}"#,
    )
    .unwrap();
    let mesos = common::free_port();
    let _emu = common::Procs(vec![
        std::process::Command::new(KAON)
            .args(["mesos-emulator", "--master", &format!("127.0.0.1:{mesos}")])
            .arg("--work-dir")
            .arg(dir.path().join("mesos"))
            .args(["--executor-path", KAON])
            .arg("--credentials")
            .arg(&creds)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    ]);
    let master = format!("http://127.0.0.1:{mesos}");
    wait_for("the emulator to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", mesos)).ok()
    });
    let good = dir.path().join("good-secret");
    std::fs::write(&good, "s3cr3t-fw\n").unwrap();
    let server = common::Server::start_with(
        Path::new(KAON),
        &dir.path().join("good"),
        &[
            "--mesos-master",
            &master,
            "--mesos-principal",
            "kaon",
            "--mesos-secret-file",
            good.to_str().unwrap(),
        ],
        &[],
    )
    .unwrap();
    let spec = dir.path().join("quick.yaml");
    std::fs::write(&spec, QUICK).unwrap();
    let (code, out, err) = kaon_at(&server.url, &["submit", spec.to_str().unwrap(), "--watch"]);
    assert_eq!(code, 0, "{out}{err}");
    drop(server);
    let bad = dir.path().join("bad-secret");
    std::fs::write(&bad, "guess").unwrap();
    let data = dir.path().join("bad");
    let server = common::Server::start_with(
        Path::new(KAON),
        &data,
        &[
            "--mesos-master",
            &master,
            "--mesos-principal",
            "kaon",
            "--mesos-secret-file",
            bad.to_str().unwrap(),
        ],
        &[],
    )
    .unwrap();
    wait_for("the refusal in kaon's log", Duration::from_secs(20), || {
        let log = std::fs::read_to_string(data.join("server.stderr")).unwrap_or_default();
        (log.contains("401") && log.contains("the ones given were refused")).then_some(())
    });
    let log = std::fs::read_to_string(data.join("server.stderr")).unwrap();
    assert!(!log.contains("guess"), "the secret is not logged");
    drop(server);
}

/// Issue 12, section 1: the Mesos connection over HTTPS when the master
/// URL says so (the emulator serving HTTPS), verified against
/// `--mesos-ca`; an https master without a CA is refused at start.
#[test]
fn kaon_reaches_an_https_mesos_master_verified_by_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let (code, out, err) = common::kaon_local(&[
        "tls".as_ref(),
        "init".as_ref(),
        certs.as_os_str(),
        "--nodes".as_ref(),
        "1".as_ref(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let mesos = common::free_port();
    let _emu = common::Procs(vec![
        std::process::Command::new(KAON)
            .args(["mesos-emulator", "--master", &format!("127.0.0.1:{mesos}")])
            .arg("--work-dir")
            .arg(dir.path().join("mesos"))
            .args(["--executor-path", KAON])
            .arg("--tls-cert")
            .arg(certs.join("node-1.pem"))
            .arg("--tls-key")
            .arg(certs.join("node-1.key"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    ]);
    wait_for("the emulator to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", mesos)).ok()
    });
    let master = format!("https://127.0.0.1:{mesos}");
    let out = std::process::Command::new(KAON)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--raft-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("no-ca"))
        .args(["--mesos-master", &master])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--mesos-ca"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = common::Server::start_with(
        Path::new(KAON),
        &dir.path().join("data"),
        &[
            "--mesos-master",
            &master,
            "--mesos-ca",
            certs.join("ca.pem").to_str().unwrap(),
        ],
        &[],
    )
    .unwrap();
    let spec = dir.path().join("hello.yaml");
    std::fs::write(
        &spec,
        "apiVersion: kaon/v1\nname: hello\nsteps:\n  a: {shell: 'echo hello-over-tls'}\n",
    )
    .unwrap();
    let (code, out, err) = kaon_at(&server.url, &["submit", spec.to_str().unwrap(), "--watch"]);
    assert_eq!(code, 0, "{out}{err}");
    let run = out
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let (code, out, err) = kaon_at(&server.url, &["run", "logs", &run, "a"]);
    assert_eq!(code, 0, "step logs through the https master: {err}");
    assert!(out.contains("hello-over-tls"), "{out}");
}
