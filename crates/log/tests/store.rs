//! Store-level behaviour: event index mapping, restart, corruption
//! detection at open, crash safety of appends.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kaon_core::State;
use kaon_core::events::{self, Body, Event, pb};
use kaon_log::types::alias::Entry;
use kaon_log::types::{Proposal, log_id};
use kaon_log::{LogStore, StateMachineStore, StoreError};
use openraft::entry::RaftEntry;
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, Membership, RaftSnapshotBuilder};

fn fw(id: &str) -> Body {
    Body::FrameworkRegistered(pb::FrameworkRegistered {
        framework_id: id.to_string(),
    })
}

/// A proposed event as the leader sends it: index 0, leader's time.
fn proposal(id: &str) -> Proposal {
    Proposal {
        event: events::encode(&Event {
            index: 0,
            time_unix_ms: 1_700_000_000_000,
            body: Some(fw(id)),
        }),
    }
}

fn normal(index: u64, id: &str) -> Entry {
    Entry::new(log_id(1, 1, index), EntryPayload::Normal(proposal(id)))
}

fn blank(index: u64) -> Entry {
    Entry::new_blank(log_id(1, 1, index))
}

async fn apply(sm: &mut StateMachineStore, entries: Vec<Entry>) -> std::io::Result<()> {
    let items = entries.into_iter().map(|e| Ok((e, None)));
    sm.apply(futures_util::stream::iter(items)).await
}

#[tokio::test]
async fn event_indexes_are_consecutive_across_blank_and_membership_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachineStore::open(dir.path()).unwrap();
    let members = Membership::new_with_defaults(vec![BTreeSet::from([1u64])], []);
    apply(
        &mut sm,
        vec![
            blank(1),
            normal(2, "a"),
            Entry::new_membership(log_id(1, 1, 3), members),
            normal(4, "b"),
            blank(5),
            normal(6, "c"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(sm.applied_event_index(), 3);
    let evs = sm.read_events(1, 100).unwrap();
    let got: Vec<(u64, String)> = evs
        .iter()
        .map(|e| match &e.body {
            Some(Body::FrameworkRegistered(f)) => (e.index, f.framework_id.clone()),
            other => panic!("unexpected body {other:?}"),
        })
        .collect();
    assert_eq!(got, vec![(1, "a".into()), (2, "b".into()), (3, "c".into())]);
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 1, 6)));
    assert_eq!(membership.log_id(), &Some(log_id(1, 1, 3)));

    // The archive replays to exactly the live state (what an auditor does).
    let mut replay = State::default();
    for (i, bytes) in sm.read_event_bytes(1, 3).unwrap() {
        replay.apply_bytes(i, &bytes).unwrap();
    }
    assert_eq!(replay.digest(), sm.digest());
    let report = sm.verify_chain().unwrap();
    assert_eq!(report.events, 3);
    assert_eq!(report.head, replay.chain);
}

#[test]
fn stamping_equals_reencoding_and_keeps_unknown_fields() {
    use kaon_log::state_machine::stamp;
    let ev = Event {
        index: 0,
        time_unix_ms: 1_700_000_000_123,
        body: Some(fw("stamp")),
    };
    let proposed = events::encode(&ev);
    for index in [1u64, 127, 128, 300, u64::MAX] {
        let mut with_index = ev.clone();
        with_index.index = index;
        assert_eq!(
            stamp(&proposed, index).unwrap(),
            events::encode(&with_index)
        );
    }
    // A field this version does not know (number 1000, varint 7) survives
    // stamping byte for byte; the event still decodes.
    let mut newer = proposed.clone();
    newer.extend_from_slice(&[0xc0, 0x3e, 0x07]);
    let stamped = stamp(&newer, 5).unwrap();
    assert!(stamped.ends_with(&[0xc0, 0x3e, 0x07]));
    assert_eq!(events::decode(&stamped).unwrap().index, 5);
    // An already-indexed proposal is refused.
    let mut indexed = ev.clone();
    indexed.index = 9;
    assert!(stamp(&events::encode(&indexed), 1).is_err());
}

#[tokio::test]
async fn undecodable_proposal_stops_the_state_machine() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = StateMachineStore::open(dir.path()).unwrap();
    let bad = Entry::new(
        log_id(1, 1, 1),
        EntryPayload::Normal(Proposal {
            event: vec![0xff, 0xff, 0xff],
        }),
    );
    let err = apply(&mut sm, vec![bad]).await.unwrap_err();
    assert!(err.to_string().contains("log index 1"), "{err}");
    assert_eq!(sm.applied_event_index(), 0);
}

#[tokio::test]
async fn state_machine_reopens_to_the_same_state_with_and_without_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let digest;
    {
        let mut sm = StateMachineStore::open(dir.path()).unwrap();
        apply(
            &mut sm,
            (1..=5).map(|i| normal(i, &format!("x{i}"))).collect(),
        )
        .await
        .unwrap();
        digest = sm.digest();
    }
    {
        let mut sm = StateMachineStore::open(dir.path()).unwrap();
        assert_eq!(sm.digest(), digest);
        assert_eq!(sm.applied_event_index(), 5);
        assert_eq!(sm.snapshot_info(), None, "no snapshot yet");
        // Snapshot at 5, then more events: reopen = snapshot + archive suffix.
        let mut b = sm.get_snapshot_builder().await;
        let snap = b.build_snapshot().await.unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 1, 5)));
        let info = sm.snapshot_info().expect("the snapshot just built");
        assert_eq!((info.event_index, info.log_index), (5, 5));
        assert!(info.state_bytes > 0, "{info:?}");
        apply(
            &mut sm,
            (6..=8).map(|i| normal(i, &format!("x{i}"))).collect(),
        )
        .await
        .unwrap();
    }
    let sm = StateMachineStore::open(dir.path()).unwrap();
    assert_eq!(sm.applied_event_index(), 8);
    assert_eq!(sm.verify_chain().unwrap().events, 8);
    let info = sm
        .snapshot_info()
        .expect("the stored snapshot, after a reopen");
    assert_eq!(info.event_index, 5, "{info:?}");
}

#[tokio::test]
async fn snapshot_carries_the_archive_to_a_fresh_node() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let mut leader = StateMachineStore::open(a.path()).unwrap();
    apply(
        &mut leader,
        (1..=6).map(|i| normal(i, &format!("s{i}"))).collect(),
    )
    .await
    .unwrap();
    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    // What openraft holds carries no archive (restarts stay cheap); the
    // sender fills in what its receiver lacks.
    let mut fresh = StateMachineStore::open(b.path()).unwrap();
    let err = fresh
        .install_snapshot(&snap.meta, snap.snapshot.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("holds only 0"), "{err}");
    assert_eq!(fresh.applied_event_index(), 0);
    let full = leader
        .fill_snapshot_archive(snap.snapshot.clone(), 0)
        .unwrap();
    assert!(full.len() > snap.snapshot.len());
    fresh
        .install_snapshot(&snap.meta, full.clone())
        .await
        .unwrap();
    assert_eq!(fresh.digest(), leader.digest());
    assert_eq!(
        fresh.read_events(1, 6).unwrap(),
        leader.read_events(1, 6).unwrap()
    );
    assert_eq!(fresh.verify_chain().unwrap().events, 6);
    drop(fresh);
    // Durable: survives a reopen.
    let fresh = StateMachineStore::open(b.path()).unwrap();
    assert_eq!(fresh.digest(), leader.digest());

    // A damaged snapshot is refused, not installed.
    let c = tempfile::tempdir().unwrap();
    let mut other = StateMachineStore::open(c.path()).unwrap();
    let mut bad = full.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    let err = other.install_snapshot(&snap.meta, bad).await.unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    assert_eq!(other.applied_event_index(), 0);
}

#[tokio::test]
async fn snapshot_ships_only_the_archive_suffix_a_node_lacks() {
    use kaon_log::state_machine::trim_snapshot_archive;
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let mut leader = StateMachineStore::open(a.path()).unwrap();
    let mut behind = StateMachineStore::open(b.path()).unwrap();
    let all: Vec<Entry> = (1..=20).map(|i| normal(i, &format!("t{i}"))).collect();
    apply(&mut leader, all.clone()).await.unwrap();
    apply(&mut behind, all[..7].to_vec()).await.unwrap();
    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    let full = leader
        .fill_snapshot_archive(snap.snapshot.clone(), 0)
        .unwrap();
    let trimmed = leader
        .fill_snapshot_archive(snap.snapshot.clone(), 7)
        .unwrap();
    assert!(trimmed.len() < full.len());
    assert_eq!(trim_snapshot_archive(full.clone(), 7).unwrap(), trimmed);
    behind
        .install_snapshot(&snap.meta, trimmed.clone())
        .await
        .unwrap();
    assert_eq!(behind.digest(), leader.digest());
    assert_eq!(
        behind.read_events(1, 20).unwrap(),
        leader.read_events(1, 20).unwrap()
    );
    assert_eq!(behind.verify_chain().unwrap().events, 20);

    // A node without the prefix cannot use a trimmed snapshot.
    let mut empty = StateMachineStore::open(c.path()).unwrap();
    let err = empty
        .install_snapshot(&snap.meta, trimmed)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("holds only 0"), "{err}");
    assert_eq!(empty.applied_event_index(), 0);
    // Nothing to trim for an empty receiver or one that is ahead.
    assert_eq!(trim_snapshot_archive(full.clone(), 0).unwrap(), full);
    assert_eq!(trim_snapshot_archive(full.clone(), 25).unwrap(), full);
}

/// A node whose archive diverges from the leader's refuses the snapshot.
#[tokio::test]
async fn snapshot_with_a_different_history_is_refused() {
    use kaon_log::state_machine::trim_snapshot_archive;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut leader = StateMachineStore::open(a.path()).unwrap();
    let mut other = StateMachineStore::open(b.path()).unwrap();
    apply(
        &mut leader,
        (1..=6).map(|i| normal(i, &format!("l{i}"))).collect(),
    )
    .await
    .unwrap();
    apply(
        &mut other,
        (1..=3).map(|i| normal(i, &format!("o{i}"))).collect(),
    )
    .await
    .unwrap();
    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let full = leader
        .fill_snapshot_archive(snap.snapshot.clone(), 0)
        .unwrap();
    let err = other
        .install_snapshot(&snap.meta, full.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("diverged"), "{err}");
    let trimmed = trim_snapshot_archive(full, 3).unwrap();
    let err = other
        .install_snapshot(&snap.meta, trimmed)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("chain head"), "{err}");
    assert_eq!(other.applied_event_index(), 3);
}

/// Flips one byte inside every occurrence of `marker` in `file`; returns
/// how many were found.
fn corrupt_marker(file: &Path, marker: &[u8]) -> usize {
    let mut bytes = std::fs::read(file).unwrap();
    let mut found = 0;
    let mut i = 0;
    while i + marker.len() <= bytes.len() {
        if &bytes[i..i + marker.len()] == marker {
            bytes[i + marker.len() - 1] ^= 0x01;
            found += 1;
            i += marker.len();
        } else {
            i += 1;
        }
    }
    std::fs::write(file, bytes).unwrap();
    found
}

#[tokio::test]
async fn corrupt_log_record_is_detected_at_open_naming_file_and_index() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogStore::open(dir.path()).unwrap();
        let entries: Vec<Entry> = (1..=5)
            .map(|i| normal(i, &format!("marker-log-entry-{i:04}")))
            .collect();
        log.append_durable(&entries).unwrap();
    }
    let file = dir.path().join(kaon_log::log_store::LOG_FILE);
    assert!(corrupt_marker(&file, b"marker-log-entry-0003") >= 1);
    let err = match LogStore::open(dir.path()) {
        Ok(_) => panic!("corruption not detected"),
        Err(e) => e,
    };
    assert!(matches!(err, StoreError::Checksum { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("raft-log.redb"), "{msg}");
    assert!(msg.contains("log index 3"), "{msg}");
}

#[tokio::test]
async fn corrupt_archived_event_is_detected_at_open_naming_file_and_index() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut sm = StateMachineStore::open(dir.path()).unwrap();
        apply(
            &mut sm,
            (1..=4)
                .map(|i| normal(i, &format!("marker-archive-{i:04}")))
                .collect(),
        )
        .await
        .unwrap();
    }
    let file = dir.path().join(kaon_log::state_machine::STATE_FILE);
    assert!(corrupt_marker(&file, b"marker-archive-0002") >= 1);
    let err = match StateMachineStore::open(dir.path()) {
        Ok(_) => panic!("corruption not detected"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(msg.contains("state.redb"), "{msg}");
    assert!(msg.contains("event index 2"), "{msg}");
}

#[tokio::test]
async fn truncate_and_purge_survive_reopen() {
    use openraft::storage::RaftLogStorage;
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::open(dir.path()).unwrap();
        let entries: Vec<Entry> = (1..=10).map(|i| normal(i, "t")).collect();
        log.append_durable(&entries).unwrap();
        log.purge(log_id(1, 1, 3)).await.unwrap();
        log.truncate_after(Some(log_id(1, 1, 7))).await.unwrap();
    }
    let mut log = LogStore::open(dir.path()).unwrap();
    let s = log.verify().unwrap();
    assert_eq!(
        (s.first_index, s.last_index, s.entries),
        (Some(4), Some(7), 4)
    );
    let st = log.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 1, 3)));
    assert_eq!(st.last_log_id, Some(log_id(1, 1, 7)));
}

/// Highest acknowledged number written by the helper. Only complete lines
/// count: a line torn by the kill was never fully acknowledged (the helper
/// terminates it with "torn" before appending more).
fn acked(file: &Path) -> u64 {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(file) {
        f.read_to_string(&mut s).unwrap();
    }
    s.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

fn crash_iterations() -> u32 {
    std::env::var("KAON_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// Runs the helper in `mode` `iterations` times, SIGKILLing it after a
/// varying number of acknowledgements; after each kill calls `check` with
/// the highest acknowledged number. Returns the final acknowledged number.
fn kill_rounds(mode: &str, check: impl Fn(u32, &Path, u64)) -> u64 {
    let iterations = crash_iterations();
    let dir = tempfile::tempdir().unwrap();
    let ack = dir.path().join("acked.txt");
    let data = dir.path().join("data");
    let exe = env!("CARGO_BIN_EXE_kaon-log-crash-helper");
    let mut last_acked = 0;
    for round in 0..iterations {
        let mut child = Command::new(exe)
            .arg(mode)
            .arg(&data)
            .arg(&ack)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Vary the kill point: 0..=4 new acknowledgements (0 = possibly
        // during start-up or first creation of the database).
        let want = last_acked + u64::from(round % 5);
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked(&ack) < want {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("helper exited early ({status}): {err}");
            }
            assert!(Instant::now() < deadline, "helper made no progress");
            std::thread::yield_now();
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let n = acked(&ack);
        check(round, &data, n);
        last_acked = n;
    }
    assert!(last_acked > 0, "nothing was ever acknowledged");
    eprintln!("{mode}: {iterations} SIGKILL rounds, {last_acked} acknowledged, all present");
    last_acked
}

/// Kill -9 the appender at arbitrary moments; every acknowledged entry must
/// be present after reopening, with no holes. Rounds: env
/// `KAON_CRASH_ITERATIONS` (default 20).
#[test]
fn acknowledged_appends_survive_sigkill() {
    kill_rounds("log", |round, data, n| {
        let log = LogStore::open(data)
            .unwrap_or_else(|e| panic!("round {round}: reopen after SIGKILL: {e}"));
        let last = log.verify().unwrap().last_index.unwrap_or(0);
        assert!(
            last >= n,
            "round {round}: acknowledged {n}, log ends at {last}"
        );
        let entries = log.read_entries(1..=n).unwrap();
        assert_eq!(entries.len() as u64, n, "round {round}");
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.log_id.index, i as u64 + 1);
        }
    });
}

/// Kill -9 the state machine while it applies: every acknowledged event is
/// archived, the state rebuilds on reopen and the chain verifies.
#[test]
fn acknowledged_applies_survive_sigkill() {
    kill_rounds("state", |round, data, n| {
        let sm = StateMachineStore::open(data)
            .unwrap_or_else(|e| panic!("round {round}: reopen after SIGKILL: {e}"));
        let have = sm.applied_event_index();
        assert!(have >= n, "round {round}: acknowledged {n}, applied {have}");
        let report = sm.verify_chain().unwrap();
        assert_eq!(report.events, have);
        let evs = sm.read_events(1, n).unwrap();
        assert_eq!(evs.len() as u64, n);
        assert!(evs.iter().enumerate().all(|(i, e)| e.index == i as u64 + 1));
    });
}
