//! Issue 11, section 4: the auditor's questions, asked of a real server
//! (live) and of its stopped data directory (offline), with the same
//! answers: the state at an event (`audit state`), what changed between
//! two events (`audit diff`) and why kaon did what it did to a step
//! (`audit why`).

mod common;

use common::{Server, kaon_at, start_server};

fn kaon(server: &Server, args: &[&str]) -> (i32, String, String) {
    kaon_at(&server.url, args)
}

fn offline(args: &[&str], data: &std::path::Path) -> (i32, String, String) {
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    all.push("--data-dir".as_ref());
    all.push(data.as_os_str());
    common::kaon_local(&all)
}

/// `a`, then `b` which fails its first attempt (exit 3, retried once under
/// the user budget) and succeeds on its second, then `c`; `d` waits for a
/// condition that is false and is skipped.
fn spec(dir: &std::path::Path) -> String {
    format!(
        "apiVersion: kaon/v1
name: audited
steps:
  a: {{shell: 'true'}}
  b:
    depends_on: [a]
    retry: {{user_errors: 1, backoff: {{kind: fixed, initial: 50ms}}}}
    shell: 'test -f {m} || {{ touch {m}; exit 3; }}'
  c: {{depends_on: [b], shell: 'true'}}
  d: {{depends_on: [a], when: 'false', shell: 'true'}}
",
        m = dir.join("b-failed-once").display()
    )
}

#[test]
fn the_auditors_questions_are_answered_live_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audited.yaml");
    std::fs::write(&file, spec(dir.path())).unwrap();
    let data = dir.path().join("data");
    let server = start_server(&data);
    let (code, out, err) = kaon(
        &server,
        &[
            "--output",
            "json",
            "submit",
            file.to_str().unwrap(),
            "--watch",
        ],
    );
    assert_eq!(code, 0, "the run succeeds after b's retry: {out}{err}");
    let run: u64 = {
        let (_, out, _) = kaon(&server, &["--output", "json", "runs"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let runs = v["runs"].as_array().or(v.as_array()).cloned().unwrap();
        runs[0]["id"].as_u64().expect("a run id")
    };
    let r = run.to_string();

    // The events, to name points in the log: b's failed attempt.
    let (code, out, err) = kaon(&server, &["audit", "export"]);
    assert_eq!(code, 0, "{err}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let index = |e: &serde_json::Value| e["index"].as_str().unwrap().parse::<u64>().unwrap();
    let failed_at = events
        .iter()
        .find(|e| e["taskStatusObserved"]["state"] == "TASK_STATE_FAILED")
        .map(index)
        .expect("b's first attempt failed");
    let retry_at = events
        .iter()
        .find(|e| e["retryScheduled"].is_object())
        .map(index)
        .expect("b's retry was scheduled");
    assert!(retry_at > failed_at);
    let last = index(events.last().unwrap());
    let retry_at_s = retry_at.to_string();

    // audit state: once the retry is scheduled, b has one failed attempt,
    // a retry timer and no second attempt; at the end, two attempts.
    let (code, at_fail, err) = kaon(
        &server,
        &["audit", "state", "--at", &retry_at_s, "--run", &r],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        at_fail.starts_with(&format!("state after event {retry_at} (")),
        "{at_fail}"
    );
    assert!(
        at_fail.contains(&format!("run {run} step b timer retry: attempt 2 at ")),
        "{at_fail}"
    );
    assert!(
        at_fail.contains(&format!("run {run}: audited@1 running")),
        "{at_fail}"
    );
    assert!(
        at_fail.contains(&format!(
            "run {run} step b attempt 1: failed exit 3 cause user"
        )),
        "{at_fail}"
    );
    assert!(
        !at_fail.contains(&format!("run {run} step b attempt 2")),
        "{at_fail}"
    );
    assert!(
        at_fail.contains(&format!("run {run} step a: succeeded")),
        "{at_fail}"
    );
    let (code, json, err) = kaon(
        &server,
        &["--output", "json", "audit", "state", "--run", &r],
    );
    assert_eq!(code, 0, "{err}");
    let end: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(end["at"], last);
    let facts = &end["facts"];
    assert_eq!(facts[format!("run {run}")], "audited@1 succeeded", "{json}");
    assert_eq!(facts[format!("run {run} step b")], "succeeded", "{json}");
    assert_eq!(facts[format!("run {run} step d")], "skipped", "{json}");
    assert!(
        facts[format!("run {run} step b attempt 2")]
            .as_str()
            .unwrap()
            .starts_with("finished exit 0"),
        "{json}"
    );
    let (_, st, _) = kaon(&server, &["--output", "json", "cluster", "status"]);
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(
        end["digest"], st["state_digest"],
        "the same state the node holds"
    );

    // audit diff from the retry's scheduling to the end.
    let (code, diff, err) = kaon(
        &server,
        &["audit", "diff", "--from", &retry_at_s, "--run", &r],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        diff.starts_with(&format!("from event {retry_at} to event {last}: ")),
        "{diff}"
    );
    for want in [
        format!("~ run {run}: audited@1 running -> audited@1 succeeded"),
        format!("+ run {run} step b attempt 2: finished exit 0"),
        format!("- run {run} step b timer retry: attempt 2 at "),
        format!("~ run {run} step c: pending -> succeeded"),
        "TaskLaunchRequested".to_string(),
        "RunFinished".to_string(),
    ] {
        assert!(diff.contains(&want), "no {want:?} in:\n{diff}");
    }
    assert!(
        !diff.contains(&format!("run {run} step a:")),
        "a did not change after the failure:\n{diff}"
    );
    let (code, _, err) = kaon(&server, &["audit", "diff", "--from", "5", "--to", "2"]);
    assert_eq!(code, 2);
    assert!(err.contains("--from 5 is after --to 2"), "{err}");

    // audit why: b's story, each decision with its cause and its leader.
    let (code, why, err) = kaon(&server, &["audit", "why", &r, "b"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = why.lines().collect();
    let find = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{why}"))
    };
    let launch1 = find("b: launch intent for attempt 1");
    assert!(
        lines[launch1 + 1].contains("because dependency a succeeded at event"),
        "{why}"
    );
    let failed = find("b: attempt 1 failed exit 3");
    assert!(
        lines[failed].contains("counted against the user budget"),
        "{why}"
    );
    let retry = find("b: retry: attempt 2 not before");
    assert!(
        lines[retry + 1].contains(&format!(
            "because attempt 1 failed (user budget) at event {failed_at}"
        )),
        "{why}"
    );
    let launch2 = find("b: launch intent for attempt 2");
    assert!(
        lines[launch2 + 1].contains("because retry scheduled at event"),
        "{why}"
    );
    let done = find("b: finished: succeeded");
    assert!(
        launch1 < failed && failed < retry && retry < launch2 && launch2 < done,
        "{why}"
    );
    for l in lines.iter().filter(|l| l.starts_with('#')) {
        assert!(
            l.contains("[leader node 1 term "),
            "every decision names its leader: {l}"
        );
    }
    let (code, why_d, err) = kaon(&server, &["audit", "why", &r, "d"]);
    assert_eq!(code, 0, "{err}");
    assert!(why_d.contains("d: skipped: condition_false"), "{why_d}");
    let (code, _, err) = kaon(&server, &["audit", "why", &r, "nope"]);
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!("run {run} has no step \"nope\"")) && err.contains("a, b, c, d"),
        "{err}"
    );

    // Digests an auditor keeps: a snapshot's (its chain head and state
    // digest are printed) and one from `audit state`; verify checks the
    // log against them, and says which one a log does not match.
    let (code, snap, err) = kaon(&server, &["--output", "json", "cluster", "snapshot"]);
    assert_eq!(code, 0, "{err}");
    let snap_v: serde_json::Value = serde_json::from_str(&snap).unwrap();
    assert!(snap_v["event_index"].as_u64().unwrap() >= last, "{snap}");
    let kept = dir.path().join("kept.txt");
    let at_retry: serde_json::Value = {
        let (_, out, _) = kaon(
            &server,
            &["--output", "json", "audit", "state", "--at", &retry_at_s],
        );
        serde_json::from_str(&out).unwrap()
    };
    std::fs::write(
        &kept,
        format!(
            "# kept by the auditor\n{retry_at} {} {}\n{}",
            at_retry["chain"].as_str().unwrap(),
            at_retry["digest"].as_str().unwrap(),
            snap.trim()
        ),
    )
    .unwrap();
    let kept_s = kept.to_str().unwrap();
    let (code, out, err) = kaon(&server, &["audit", "verify", "--digests", kept_s]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("all 2 kept checkpoints match"), "{out}");
    let forged = dir.path().join("forged.txt");
    let mut text = std::fs::read_to_string(&kept).unwrap();
    let digest = at_retry["digest"].as_str().unwrap();
    let flipped = format!(
        "{}{}",
        if digest.starts_with('0') { '1' } else { '0' },
        &digest[1..]
    );
    text = text.replace(digest, &flipped);
    text.push_str("\n999999 ");
    text.push_str(at_retry["chain"].as_str().unwrap());
    std::fs::write(&forged, text).unwrap();
    let (code, _, err) = kaon(
        &server,
        &["audit", "verify", "--digests", forged.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("does NOT match what the auditor kept"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "event {retry_at}: the state digest is {digest}, {}:2 kept {flipped}",
            forged.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("keeps event 999999, but the log ends at event"),
        "{err}"
    );

    // Offline, from the stopped node's data directory: the same answers.
    drop(server);
    let (code, off, err) = offline(&["audit", "verify", "--digests", kept_s], &data);
    assert_eq!(code, 0, "{err}");
    assert!(off.contains("all 2 kept checkpoints match"), "{off}");
    let (code, off, err) = offline(&["audit", "why", &r, "b"], &data);
    assert_eq!(code, 0, "{err}");
    assert_eq!(off, why);
    let (code, off, err) = offline(&["audit", "state", "--at", &retry_at_s, "--run", &r], &data);
    assert_eq!(code, 0, "{err}");
    assert_eq!(off, at_fail);
}

/// Issue 11, section 4: `kaon workflow what-if` replays past runs' recorded
/// outcomes through a new definition and shows where it decides
/// differently, registering nothing.
#[test]
fn what_if_shows_what_a_new_definition_would_have_done() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audited.yaml");
    let old = spec(dir.path());
    std::fs::write(&file, &old).unwrap();
    let server = start_server(&dir.path().join("data"));
    let (code, out, err) = kaon(&server, &["submit", file.to_str().unwrap(), "--watch"]);
    assert_eq!(code, 0, "{out}{err}");

    // The same definition: nothing differs.
    let (code, out, err) = kaon(&server, &["workflow", "what-if", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(": succeeded (the same); 0 of 4 steps decided differently"),
        "{out}"
    );

    // Without b's retry the run fails at b and c never runs; with d's
    // condition true, d runs (nothing recorded it: assumed to succeed).
    let new = dir.path().join("new.yaml");
    std::fs::write(
        &new,
        old.replace(
            "    retry: {user_errors: 1, backoff: {kind: fixed, initial: 50ms}}\n",
            "",
        ),
    )
    .unwrap();
    let (code, out, err) = kaon(&server, &["workflow", "what-if", new.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": succeeded -> failed;"), "{out}");
    assert!(
        out.contains("~ b: succeeded after 2 attempts -> failed after 1 attempt"),
        "{out}"
    );
    assert!(out.contains("~ c: succeeded after 1 attempt -> "), "{out}");
    std::fs::write(&new, old.replace("when: 'false'", "when: 'true'")).unwrap();
    let (code, out, err) = kaon(
        &server,
        &[
            "--output",
            "json",
            "workflow",
            "what-if",
            new.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let diffs = v[0]["differences"].as_array().unwrap();
    assert_eq!(diffs.len(), 1, "{out}");
    assert_eq!(diffs[0]["step"], "d");
    assert_eq!(diffs[0]["recorded"]["status"], "skipped");
    assert_eq!(diffs[0]["would"]["status"], "succeeded");
    assert_eq!(diffs[0]["assumed_attempts"], 1);

    // Nothing was registered.
    let (_, list, _) = kaon(&server, &["--output", "json", "workflow", "list"]);
    assert!(list.contains("\"latest_version\":1"), "{list}");
    // A broken definition says why.
    std::fs::write(&new, "apiVersion: kaon/v1\nname: audited\nsteps: {}\n").unwrap();
    let (code, _, err) = kaon(&server, &["workflow", "what-if", new.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("new.yaml"), "{err}");
}

/// Issue 11, section 3 (state that does not grow forever): with
/// `--run-retention 2s` a finished run leaves the live state (the API says
/// it was retired, the run list no longer has it, the metric counts it)
/// while a running one stays; its history is still in the archive for the
/// auditor (`audit why`, `audit state --at` an earlier event).
#[test]
fn finished_runs_leave_the_live_state_after_the_retention_and_stay_auditable() {
    let cluster = common::Cluster::builder(common::KAON)
        .nodes(1)
        .server_args(&["--run-retention", "2s"])
        .start()
        .expect("a one-node cluster starts");
    let url = cluster.url(0);
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done.yaml");
    std::fs::write(
        &done,
        "apiVersion: kaon/v1\nname: done\nsteps:\n  a: {shell: 'true'}\n",
    )
    .unwrap();
    let slow = dir.path().join("slow.yaml");
    std::fs::write(
        &slow,
        "apiVersion: kaon/v1\nname: slow\nsteps:\n  s: {shell: 'exec sleep 600'}\n",
    )
    .unwrap();
    let (code, out, err) = kaon_at(&url, &["submit", slow.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let slow_id = out.trim().strip_prefix("run ").unwrap().to_string();
    let (code, out, err) = kaon_at(&url, &["submit", done.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let done_id = out.trim().strip_prefix("run ").unwrap().to_string();
    // It succeeds (the watch may end by finding it retired already: the
    // retention is 2 s and this machine may be slow).
    let (code, out, err) = kaon_at(&url, &["run", "watch", &done_id]);
    assert!(code == 0 || err.contains("retired"), "{out}{err}");
    let err = common::wait_for(
        "the finished run to be retired",
        std::time::Duration::from_secs(30),
        || {
            let (code, _, err) = kaon_at(&url, &["run", "show", &done_id]);
            (code != 0 && err.contains("retired")).then_some(err)
        },
    );
    assert!(err.contains(&format!("run {done_id}")), "{err}");
    let (_, out, _) = kaon_at(&url, &["--output", "json", "runs"]);
    let runs: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<String> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].to_string())
        .collect();
    assert_eq!(
        ids,
        vec![slow_id.clone()],
        "only the running run is live: {out}"
    );
    // The archive still answers for it.
    let (code, out, err) = kaon_at(&url, &["audit", "why", &done_id, "a"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("launch"), "{out}");
    let (code, out, err) = kaon_at(
        &url,
        &[
            "--output", "json", "audit", "state", "--at", &done_id, "--run", &done_id,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let body = common::wait_for(
        "the retirement metric",
        std::time::Duration::from_secs(10),
        || {
            let text = http_get(&cluster.admin_url(0), "/metrics")?;
            text.lines()
                .any(|l| l == "kaon_runs_retired_total 1")
                .then_some(text)
        },
    );
    assert!(body.contains("kaon_runs_retired_total 1"));
    let (code, _, err) = kaon_at(&url, &["run", "cancel", &slow_id]);
    assert_eq!(code, 0, "{err}");
}

/// The body of a plain HTTP/1.0 GET of `path` on `base` (`http://host:port`).
fn http_get(base: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr = base.strip_prefix("http://")?;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.lines()
        .next()?
        .contains(" 200 ")
        .then(|| body.to_string())
}

/// Issue 12, section 4: the leader signs the chain head; `audit verify
/// --public-key` proves a log is the one that was signed, and a forged
/// copy whose hash chain was recomputed end to end (it passes every check
/// without the key) is caught, naming where it differs.
#[test]
fn a_signed_log_verifies_and_a_rewritten_copy_is_caught() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let (code, out, err) =
        common::kaon_local(&["audit".as_ref(), "keygen".as_ref(), keys.as_os_str()]);
    assert_eq!(code, 0, "{out}{err}");
    let key = keys.join("signing.key");
    let public = keys.join("signing.pub");
    let data = dir.path().join("data");
    let server = Server::start_with(
        std::path::Path::new(common::KAON),
        &data,
        &[
            "--signing-key",
            key.to_str().unwrap(),
            "--sign-every",
            "200ms",
        ],
        &[],
    )
    .unwrap();
    let spec_file = dir.path().join("audited.yaml");
    std::fs::write(&spec_file, spec(dir.path())).unwrap();
    let (code, out, err) = kaon(&server, &["submit", spec_file.to_str().unwrap(), "--watch"]);
    assert_eq!(code, 0, "{out}{err}");
    let public_s = public.to_str().unwrap();
    // Signed up to the run's end (the signatures come every 200 ms).
    let ok = common::wait_for(
        "a signature covering the run",
        std::time::Duration::from_secs(20),
        || {
            let (code, out, _) = kaon(&server, &["audit", "verify", "--public-key", public_s]);
            (code == 0
                && out.contains("signatures by the given key")
                && !out.contains("later events not signed"))
            .then_some(out)
        },
    );
    assert!(ok.starts_with("ok: "), "{ok}");
    // Another key: nothing in this log is signed by it.
    let other = dir.path().join("other");
    common::kaon_local(&["audit".as_ref(), "keygen".as_ref(), other.as_os_str()]);
    let (code, _, err) = kaon(
        &server,
        &[
            "audit",
            "verify",
            "--public-key",
            other.join("signing.pub").to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("signed only by"), "{err}");

    // A forger with the backup rewrites one event (step b's first attempt
    // succeeded, not exit 3), recomputes the chain, the header and the
    // checksum, and restores it: a consistent log, but not the signed one.
    let backup = dir.path().join("backup.kaon");
    let (code, out, err) = kaon(&server, &["cluster", "backup", backup.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    drop(server);
    let bytes = std::fs::read(&backup).unwrap();
    let body = &bytes[..bytes.len() - 32];
    let first_nl = body.iter().position(|&b| b == b'\n').unwrap();
    let second_nl = first_nl
        + 1
        + body[first_nl + 1..]
            .iter()
            .position(|&b| b == b'\n')
            .unwrap();
    let header: serde_json::Value = serde_json::from_slice(&body[first_nl + 1..second_nl]).unwrap();
    let mut events: Vec<Vec<u8>> = Vec::new();
    let mut at = second_nl + 1;
    while at < body.len() {
        let n = u32::from_be_bytes(body[at..at + 4].try_into().unwrap()) as usize;
        events.push(body[at + 4..at + 4 + n].to_vec());
        at += 4 + n;
    }
    let mut forged_at = 0;
    for e in events.iter_mut() {
        let mut ev = kaon_core::events::decode(e).unwrap();
        if let Some(kaon_core::events::Body::TaskStatusObserved(t)) = &mut ev.body
            && t.exit_code == Some(3)
        {
            t.exit_code = Some(0);
            forged_at = ev.index;
            *e = kaon_core::events::encode(&ev);
            break;
        }
    }
    assert!(forged_at > 0, "the failed attempt's observation was found");
    // A naive forgery (only that event changed) already fails the
    // archive's own check: the heads the signatures recorded differ.
    let restore = |events: &[Vec<u8>], name: &str| {
        let state = kaon_log::restore::replay(events).unwrap();
        let mut header = header.clone();
        header["chain_head"] = kaon_core::decide::hex(&state.chain).into();
        header["state_digest"] = kaon_core::decide::hex(&state.digest()).into();
        let mut forged = body[..first_nl + 1].to_vec();
        forged.extend(serde_json::to_vec(&header).unwrap());
        forged.push(b'\n');
        for e in events {
            forged.extend((e.len() as u32).to_be_bytes());
            forged.extend(e);
        }
        let sum = Sha256::digest(&forged);
        forged.extend(sum);
        let file = dir.path().join(format!("{name}.kaon"));
        std::fs::write(&file, forged).unwrap();
        let restored = dir.path().join(name);
        let (code, out, err) = common::kaon_local(&[
            "cluster".as_ref(),
            "restore".as_ref(),
            file.as_os_str(),
            "--data-dir".as_ref(),
            restored.as_os_str(),
        ]);
        assert_eq!(code, 0, "the forgery is self-consistent: {out}{err}");
        restored
    };
    let naive = restore(&events, "naive");
    let (code, _, err) = offline(&["audit", "verify"], &naive);
    assert_ne!(code, 0);
    assert!(err.contains("was altered"), "{err}");
    // A careful forger also rewrites the heads the signatures recorded
    // (it cannot redo the signatures).
    let mut heads: std::collections::BTreeMap<u64, [u8; 32]> = Default::default();
    let mut s = kaon_core::State::default();
    for e in events.iter_mut() {
        let mut ev = kaon_core::events::decode(e).unwrap();
        if let Some(kaon_core::events::Body::ChainHeadSigned(x)) = &mut ev.body {
            x.chain_head = heads[&x.index].to_vec();
            *e = kaon_core::events::encode(&ev);
        }
        s.apply(&ev).unwrap();
        heads.insert(ev.index, s.chain);
    }
    let restored = restore(&events, "careful");
    // Without the key the forgery passes; with it, it is caught, and the
    // report brackets the changed event.
    let (code, out, err) = offline(&["audit", "verify"], &restored);
    assert_eq!(
        code, 0,
        "a recomputed chain checks out by itself: {out}{err}"
    );
    let (code, out, err) = offline(&["audit", "verify", "--public-key", public_s], &restored);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("is NOT the one that was signed"), "{err}");
    let at_or_before: u64 = err
        .split("at or before event ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        at_or_before >= forged_at,
        "{err} (forged event {forged_at})"
    );
    if let Some(after) = err
        .split("and after event ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok())
    {
        assert!(after < forged_at, "{err} (forged event {forged_at})");
    }
}
