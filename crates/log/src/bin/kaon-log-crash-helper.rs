//! Test helper for the crash-safety test: appends Raft log entries to the
//! store in `<dir>` forever, one durable append at a time, and after each
//! append returns writes the entry's index as a line to `<ack file>`. The
//! test SIGKILLs it at a random moment and checks that every acknowledged
//! entry survived.
//!
//! Usage: kaon-log-crash-helper <dir> <ack file>

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use kaon_core::events::{self, Body, Event, pb};
use kaon_log::LogStore;
use kaon_log::types::alias::Entry;
use kaon_log::types::{Proposal, log_id};
use openraft::EntryPayload;
use openraft::entry::RaftEntry;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: kaon-log-crash-helper <dir> <ack file>");
        return ExitCode::from(2);
    }
    let dir = PathBuf::from(&args[1]);
    let store = match LogStore::open(&dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut next = match store.verify() {
        Ok(s) => s.last_index.map_or(1, |i| i + 1),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ack = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args[2])
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{}: {e}", args[2]);
            return ExitCode::FAILURE;
        }
    };
    loop {
        let event = Event {
            index: 0,
            time_unix_ms: 0,
            body: Some(Body::FrameworkRegistered(pb::FrameworkRegistered {
                framework_id: format!("crash-{next}"),
            })),
        };
        let entry = Entry::new(
            log_id(1, 1, next),
            EntryPayload::Normal(Proposal {
                event: events::encode(&event),
            }),
        );
        if let Err(e) = store.append_durable(&[entry]) {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
        // Acknowledge only after the append returned (= fsynced).
        if let Err(e) = writeln!(ack, "{next}") {
            eprintln!("{}: {e}", args[2]);
            return ExitCode::FAILURE;
        }
        next += 1;
    }
}
