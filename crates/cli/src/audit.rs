//! `kaon audit verify|replay|export`: the auditor's questions, asked of a
//! running cluster (events streamed over gRPC, `ReadEvents`) or of a
//! stopped node's data directory (`--data-dir`). Both sources feed the
//! same code: every event is decoded, its index checked to follow the last,
//! and folded into a fresh `kaon_core::State`, which recomputes the hash
//! chain; `verify` compares the result with the head the node recorded.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use kaon_api::v1;
use kaon_core::events::{self, Event};

use crate::client::{Opts, status_error};

/// Events read from the archive per batch (offline).
const OFFLINE_BATCH_EVENTS: u64 = 10_000;

/// Where the events come from.
pub enum Source<'a> {
    /// A running server (`--server`), linearizable unless `--stale`.
    Live(&'a Opts),
    /// A stopped node's data directory.
    Offline(&'a Path),
}

/// The end of the log as the source saw it.
struct End {
    /// The last event index the source had (not only what was asked for).
    last_index: u64,
    /// Hex hash-chain head at `last_index`, as the node recorded it.
    head: String,
}

/// Opens a stopped node's event archive; a running node's is refused with
/// an "in use" error that says what to do instead.
pub fn open_archive(data_dir: &Path) -> anyhow::Result<kaon_log::StateMachineStore> {
    let dir = data_dir.join("raft");
    anyhow::ensure!(
        dir.join("state.redb").exists(),
        "{} holds no kaon event log (expected raft/state.redb)",
        data_dir.display()
    );
    kaon_log::StateMachineStore::open(&dir).map_err(|e| {
        if e.is_in_use() {
            anyhow::anyhow!(
                "{} is in use by a running kaon server: stop it first, or audit it live \
                 (the same command without --data-dir, with --server)",
                dir.display()
            )
        } else {
            anyhow::anyhow!("opening the event archive in {}: {e}", dir.display())
        }
    })
}

/// Calls `f` with every event from `from` to `to` (None: to the end), in
/// order, with its encoded bytes; returns where the log ends.
async fn each_event(
    source: &Source<'_>,
    from: u64,
    to: Option<u64>,
    mut f: impl FnMut(&[u8], Event) -> anyhow::Result<()>,
) -> anyhow::Result<End> {
    match source {
        Source::Offline(dir) => {
            let store = open_archive(dir)?;
            let last = store.applied_event_index();
            let end = to.unwrap_or(last).min(last);
            let mut at = from.max(1);
            while at <= end {
                let upto = at.saturating_add(OFFLINE_BATCH_EVENTS - 1).min(end);
                let batch = store.read_event_bytes(at, upto)?;
                if batch.is_empty() {
                    break;
                }
                for (index, bytes) in batch {
                    let e = events::decode(&bytes)
                        .with_context(|| format!("event {index} does not decode"))?;
                    f(&bytes, e)?;
                    at = index + 1;
                }
            }
            let head = kaon_core::decide::hex(&store.with_state(|s| s.chain));
            Ok(End {
                last_index: last,
                head,
            })
        }
        Source::Live(o) => {
            let req = v1::ReadEventsRequest {
                from_index: from,
                to_index: 0,
            };
            let mut stream = o
                .client()?
                .call(req, |mut k, r| async move { k.read_events(r).await })
                .await
                .map_err(status_error)?;
            let mut end = End {
                last_index: 0,
                head: String::new(),
            };
            while let Some(batch) = stream.message().await.map_err(status_error)? {
                end.last_index = batch.last_index;
                if !batch.chain_head.is_empty() {
                    end.head = batch.chain_head.clone();
                }
                for bytes in &batch.events {
                    let e = events::decode(bytes).context("an event does not decode")?;
                    if to.is_some_and(|t| e.index > t) {
                        continue;
                    }
                    f(bytes, e)?;
                }
            }
            anyhow::ensure!(
                !end.head.is_empty(),
                "the stream ended before the server sent the chain head (try again)"
            );
            Ok(end)
        }
    }
}

/// Folds events into a state, checking that indexes follow each other.
struct Fold {
    state: kaon_core::State,
}

impl Fold {
    fn apply(&mut self, e: &Event) -> anyhow::Result<()> {
        let want = self.state.applied_index + 1;
        anyhow::ensure!(
            e.index == want,
            "event {} where event {want} was expected: the log has a hole or is out of order",
            e.index
        );
        self.state
            .apply(e)
            .map_err(|err| anyhow::anyhow!("replaying event {}: {err}", e.index))
    }
}

/// `kaon audit verify`.
pub async fn verify(source: Source<'_>) -> anyhow::Result<ExitCode> {
    if let Source::Offline(dir) = source {
        // The archive's own check first: every stored record against the
        // chain head stored with the events.
        let store = open_archive(dir)?;
        if let Err(e) = store.verify_chain() {
            eprintln!("kaon audit verify: the log does NOT check out: {e}");
            return Ok(ExitCode::FAILURE);
        }
    }
    let mut fold = Fold {
        state: kaon_core::State::default(),
    };
    let end = match each_event(&source, 1, None, |_, e| fold.apply(&e)).await {
        Ok(end) => end,
        Err(e) => {
            eprintln!("kaon audit verify: the log does NOT check out: {e:#}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let head = kaon_core::decide::hex(&fold.state.chain);
    if fold.state.applied_index != end.last_index || head != end.head {
        eprintln!(
            "kaon audit verify: the log does NOT check out: recomputed {} events with chain \
             head {head}, the node recorded {} events with head {}",
            fold.state.applied_index, end.last_index, end.head
        );
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "ok: {} events, hash chain head {head}",
        fold.state.applied_index
    );
    Ok(ExitCode::SUCCESS)
}

/// `kaon audit replay`.
pub async fn replay(
    source: Source<'_>,
    until: Option<u64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut fold = Fold {
        state: kaon_core::State::default(),
    };
    let end = each_event(&source, 1, until, |_, e| fold.apply(&e)).await?;
    if let Some(u) = until {
        anyhow::ensure!(
            u <= end.last_index,
            "--until {u} is past the end of the log: the last event is {}",
            end.last_index
        );
    }
    let state = fold.state;
    let digest = kaon_core::decide::hex(&state.digest());
    if json {
        let runs: Vec<_> = state
            .runs
            .values()
            .map(|r| serde_json::json!({"id": r.id, "workflow": r.workflow, "version": r.version, "status": format!("{:?}", r.status).to_lowercase()}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"applied_index": state.applied_index, "last_index": end.last_index, "digest": digest, "chain": kaon_core::decide::hex(&state.chain), "runs": runs})
        );
    } else {
        println!(
            "state at event {} (the log ends at {}): digest {digest}",
            state.applied_index, end.last_index
        );
        for r in state.runs.values() {
            println!(
                "  run {} {}@{}: {:?}",
                r.id, r.workflow, r.version, r.status
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kaon audit export`: every event as one JSON object per line, in the
/// protobuf JSON mapping of `kaon.events.v1.Event` (field names in
/// lowerCamelCase, 64-bit integers as strings, enums by name), so any
/// tool can read it and it outlives kaon's versions like the protobuf does.
pub async fn export(source: Source<'_>, from: u64, to: Option<u64>) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let pool = prost_reflect::DescriptorPool::decode(kaon_api::FILE_DESCRIPTOR_SET)
        .context("the API's descriptor set")?;
    let desc = pool
        .get_message_by_name("kaon.events.v1.Event")
        .context("kaon.events.v1.Event in the descriptor set")?;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    let options = prost_reflect::SerializeOptions::new().skip_default_fields(true);
    let mut n = 0u64;
    let end = each_event(&source, from, to, |bytes, _| {
        let msg = prost_reflect::DynamicMessage::decode(desc.clone(), bytes)?;
        let mut ser = serde_json::Serializer::new(&mut out);
        msg.serialize_with_options(&mut ser, &options)?;
        out.write_all(b"\n")?;
        n += 1;
        Ok(())
    })
    .await?;
    out.flush()?;
    drop(out);
    if let Some(t) = to {
        anyhow::ensure!(
            t <= end.last_index,
            "--to {t} is past the end of the log: the last event is {} ({n} exported)",
            end.last_index
        );
    }
    eprintln!("exported {n} events (the log ends at {})", end.last_index);
    Ok(ExitCode::SUCCESS)
}
