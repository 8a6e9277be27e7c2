//! Test helper for the crash-safety tests. Writes forever, one durable
//! operation at a time, and after each one returns writes a line to
//! `<ack file>`; the test SIGKILLs it at an arbitrary moment and checks
//! that everything acknowledged survived.
//!
//! - `log` mode: appends Raft log entries to the log store in `<dir>`;
//!   acknowledges the Raft index.
//! - `state` mode: applies committed entries to the state machine in
//!   `<dir>`; acknowledges the event index.
//!
//! Usage: kaon-log-crash-helper <log|state> <dir> <ack file>

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kaon_core::events::{self, Body, Event, pb};
use kaon_log::types::alias::Entry;
use kaon_log::types::{Proposal, log_id};
use kaon_log::{LogStore, StateMachineStore};
use openraft::EntryPayload;
use openraft::entry::RaftEntry;
use openraft::storage::RaftStateMachine;

fn entry(index: u64) -> Entry {
    let event = Event {
        index: 0,
        time_unix_ms: 0,
        body: Some(Body::FrameworkRegistered(pb::FrameworkRegistered {
            framework_id: format!("crash-{index}"),
        })),
    };
    Entry::new(
        log_id(1, 1, index),
        EntryPayload::Normal(Proposal {
            event: events::encode(&event),
        }),
    )
}

/// Opens the acknowledgement file for appending. A line torn by the
/// previous kill is terminated first, so it cannot merge with the next one
/// (the test ignores it: it was never a complete acknowledgement).
fn ack_file(path: &str) -> Result<std::fs::File, String> {
    let err = |e: std::io::Error| format!("{path}: {e}");
    let torn = std::fs::read(path)
        .map(|b| b.last().is_some_and(|&c| c != b'\n'))
        .unwrap_or(false);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    if torn {
        f.write_all(b"torn\n").map_err(err)?;
    }
    Ok(f)
}

/// Writes one acknowledgement line with a single write call.
fn acknowledge(f: &mut std::fs::File, n: u64) -> Result<(), String> {
    f.write_all(format!("{n}\n").as_bytes())
        .map_err(|e| e.to_string())
}

fn run_log(dir: &Path, ack: &str) -> Result<(), String> {
    let store = LogStore::open(dir).map_err(|e| e.to_string())?;
    let mut next = store
        .verify()
        .map_err(|e| e.to_string())?
        .last_index
        .map_or(1, |i| i + 1);
    let mut ack = ack_file(ack)?;
    loop {
        store
            .append_durable(&[entry(next)])
            .map_err(|e| e.to_string())?;
        // Acknowledge only after the append returned (= fsynced).
        acknowledge(&mut ack, next)?;
        next += 1;
    }
}

fn run_state(dir: &Path, ack: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut sm = StateMachineStore::open(dir).map_err(|e| e.to_string())?;
        let (applied, _) = sm.applied_state().await.map_err(|e| e.to_string())?;
        let mut next = applied.map_or(1, |l| l.index + 1);
        let mut ack = ack_file(ack)?;
        loop {
            let items = vec![Ok((entry(next), None))];
            sm.apply(futures_util::stream::iter(items))
                .await
                .map_err(|e| e.to_string())?;
            // Acknowledge only after apply returned (= archived durably).
            acknowledge(&mut ack, sm.applied_event_index())?;
            next += 1;
        }
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: kaon-log-crash-helper <log|state> <dir> <ack file>");
        return ExitCode::from(2);
    }
    let dir = PathBuf::from(&args[2]);
    let res = match args[1].as_str() {
        "log" => run_log(&dir, &args[3]),
        "state" => run_state(&dir, &args[3]),
        other => Err(format!("unknown mode {other}")),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
