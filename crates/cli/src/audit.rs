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
pub(crate) struct End {
    /// The last event index the source had (not only what was asked for).
    pub(crate) last_index: u64,
    /// Hex hash-chain head at `last_index`, as the node recorded it.
    pub(crate) head: String,
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
pub(crate) async fn each_event(
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

/// A checkpoint an auditor kept: the chain head (and maybe the state
/// digest) the log had after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// Event index.
    pub index: u64,
    /// Hash-chain head after it (hex).
    pub chain: String,
    /// State digest after it (hex), if kept.
    pub digest: Option<String>,
    /// Where it was kept (`FILE:LINE`), for the report.
    pub at: String,
}

/// Reads the checkpoints in `file`: one per line, either `INDEX CHAIN_HEAD
/// [STATE_DIGEST]` or a JSON object as kaon prints them (`kaon --output
/// json cluster snapshot`, `audit state`, a backup's header line); `#`
/// starts a comment.
pub fn read_kept(file: &Path) -> anyhow::Result<Vec<Kept>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("{}:{}", file.display(), n + 1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        let kept = if line.starts_with('{') {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{at}: not JSON"))?;
            let field = |names: &[&str]| names.iter().find_map(|n| v.get(*n).cloned());
            let index = field(&["event_index", "at", "events"])
                .and_then(|x| x.as_u64())
                .with_context(|| format!("{at}: no event index (event_index, at or events)"))?;
            let chain = field(&["chain_head", "chain"])
                .and_then(|x| x.as_str().map(str::to_string))
                .with_context(|| format!("{at}: no chain head (chain_head or chain)"))?;
            let digest =
                field(&["state_digest", "digest"]).and_then(|x| x.as_str().map(str::to_string));
            Kept {
                index,
                chain,
                digest,
                at,
            }
        } else {
            let mut parts = line.split_whitespace();
            let index = parts
                .next()
                .and_then(|x| x.parse::<u64>().ok())
                .with_context(|| format!("{at}: expected INDEX CHAIN_HEAD [STATE_DIGEST]"))?;
            let chain = parts
                .next()
                .with_context(|| format!("{at}: expected INDEX CHAIN_HEAD [STATE_DIGEST]"))?
                .to_string();
            let digest = parts.next().map(str::to_string);
            Kept {
                index,
                chain,
                digest,
                at,
            }
        };
        anyhow::ensure!(kept.index > 0, "{}: event indexes start at 1", kept.at);
        anyhow::ensure!(
            hex64(&kept.chain) && kept.digest.as_deref().is_none_or(hex64),
            "{}: a chain head and a digest are 64 hex digits",
            kept.at
        );
        out.push(kept);
    }
    Ok(out)
}

/// `kaon audit verify`.
/// Chain heads kept while verifying, to check signatures against: a
/// signature names an event this many events back at most (the leader
/// signs its latest head and records the signature right after).
const SIGNED_HEAD_LOOKBACK_EVENTS: u64 = 65_536;

/// What `--public-key` checking found.
#[derive(Default)]
struct Signatures {
    /// Signatures by a trusted key that match the recomputed chain.
    good: u64,
    /// The last event a good signature covers.
    last_good: u64,
    /// Problems: a signature that does not verify, or a signed head the
    /// recomputed chain does not have.
    bad: Vec<String>,
    /// Public keys (hex) that signed but are not trusted.
    untrusted: std::collections::BTreeSet<String>,
    /// Events (signatures aside) after the last good signature's.
    unsigned: Vec<u64>,
}

pub async fn verify(
    source: Source<'_>,
    kept: &[Kept],
    public_keys: &[[u8; 32]],
) -> anyhow::Result<ExitCode> {
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
    let mut by_index: std::collections::BTreeMap<u64, Vec<&Kept>> = Default::default();
    for k in kept {
        by_index.entry(k.index).or_default().push(k);
    }
    let mut differs: Vec<String> = Vec::new();
    let mut heads: std::collections::BTreeMap<u64, [u8; 32]> = Default::default();
    let mut sigs = Signatures::default();
    let end = match each_event(&source, 1, None, |_, e| {
        if let Some(kaon_core::events::Body::ChainHeadSigned(s)) = &e.body
            && !public_keys.is_empty()
        {
            use kaon_server::signing;
            let key = signing::key_hex(&s.public_key);
            if !public_keys.iter().any(|k| k[..] == s.public_key[..]) {
                sigs.untrusted.insert(key);
            } else if !signing::verify(&s.public_key, s.index, &s.chain_head, &s.signature) {
                // The recorded head was changed too (the signature is of
                // another head): the history differs up to there.
                sigs.bad.push(format!(
                    "this log differs from the one that was signed at or before event {} (the \
                     signature recorded at event {} is not of the head recorded with it){}",
                    s.index,
                    e.index,
                    if sigs.last_good > 0 {
                        format!(
                            " and after event {} (the last signed head that matches)",
                            sigs.last_good
                        )
                    } else {
                        String::new()
                    }
                ));
            } else {
                match heads.get(&s.index) {
                    Some(h) if h[..] == s.chain_head[..] => {
                        sigs.good += 1;
                        sigs.last_good = s.index;
                        sigs.unsigned.retain(|&i| i > s.index);
                    }
                    Some(h) => sigs.bad.push(format!(
                        "this log differs from the one that was signed at or before event {} \
                         (signed head {}, this log's {}){}",
                        s.index,
                        kaon_core::decide::hex(&s.chain_head),
                        kaon_core::decide::hex(h),
                        if sigs.last_good > 0 {
                            format!(
                                " and after event {} (the last signed head that matches)",
                                sigs.last_good
                            )
                        } else {
                            String::new()
                        }
                    )),
                    None => sigs.bad.push(format!(
                        "event {}: signs event {}, too far back to check",
                        e.index, s.index
                    )),
                }
            }
        }
        fold.apply(&e)?;
        if !public_keys.is_empty() {
            if !matches!(e.body, Some(kaon_core::events::Body::ChainHeadSigned(_))) {
                sigs.unsigned.push(e.index);
            }
            heads.insert(e.index, fold.state.chain);
            while heads.len() as u64 > SIGNED_HEAD_LOOKBACK_EVENTS {
                heads.pop_first();
            }
        }
        if let Some(ks) = by_index.get(&e.index) {
            let chain = kaon_core::decide::hex(&fold.state.chain);
            let digest = ks
                .iter()
                .any(|k| k.digest.is_some())
                .then(|| kaon_core::decide::hex(&fold.state.digest()));
            for k in ks {
                if !k.chain.eq_ignore_ascii_case(&chain) {
                    differs.push(format!(
                        "event {}: the chain head is {chain}, {} kept {}",
                        k.index, k.at, k.chain
                    ));
                }
                if let (Some(want), Some(got)) = (&k.digest, &digest)
                    && !want.eq_ignore_ascii_case(got)
                {
                    differs.push(format!(
                        "event {}: the state digest is {got}, {} kept {want}",
                        k.index, k.at
                    ));
                }
            }
        }
        Ok(())
    })
    .await
    {
        Ok(end) => end,
        Err(e) => {
            eprintln!("kaon audit verify: the log does NOT check out: {e:#}");
            return Ok(ExitCode::FAILURE);
        }
    };
    for k in kept.iter().filter(|k| k.index > fold.state.applied_index) {
        differs.push(format!(
            "{} keeps event {}, but the log ends at event {}: events are missing",
            k.at, k.index, fold.state.applied_index
        ));
    }
    if !differs.is_empty() {
        eprintln!(
            "kaon audit verify: the log does NOT match what the auditor kept:\n  {}",
            differs.join("\n  ")
        );
        return Ok(ExitCode::FAILURE);
    }
    if !public_keys.is_empty() {
        if let Some(first) = sigs.bad.first() {
            eprintln!(
                "kaon audit verify: the log is NOT the one that was signed: {first}{}",
                if sigs.bad.len() > 1 {
                    format!(" (and {} more)", sigs.bad.len() - 1)
                } else {
                    String::new()
                }
            );
            return Ok(ExitCode::FAILURE);
        }
        if sigs.good == 0 {
            eprintln!(
                "kaon audit verify: no chain head in this log is signed by the given key{}",
                if sigs.untrusted.is_empty() {
                    " (no signatures at all: was the leader given --signing-key? were they removed?)".to_string()
                } else {
                    format!(
                        " (signed only by {}: pass its public key too if it is the cluster's, e.g. after a rotation)",
                        sigs.untrusted
                            .iter()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    let head = kaon_core::decide::hex(&fold.state.chain);
    if fold.state.applied_index != end.last_index || head != end.head {
        eprintln!(
            "kaon audit verify: the log does NOT check out: recomputed {} events with chain \
             head {head}, the node recorded {} events with head {}",
            fold.state.applied_index, end.last_index, end.head
        );
        return Ok(ExitCode::FAILURE);
    }
    if !public_keys.is_empty() {
        let unsigned = sigs.unsigned.len();
        println!(
            "ok: {} events, hash chain head {head}; signed: {} signatures by the given key, the last \
             covering event {}{}{}",
            fold.state.applied_index,
            sigs.good,
            sigs.last_good,
            if unsigned > 0 {
                format!(" ({unsigned} later events not signed yet)")
            } else {
                String::new()
            },
            if sigs.untrusted.is_empty() {
                String::new()
            } else {
                format!(
                    "; also signed by keys not given: {}",
                    sigs.untrusted
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
    } else if kept.is_empty() {
        println!(
            "ok: {} events, hash chain head {head}",
            fold.state.applied_index
        );
    } else {
        println!(
            "ok: {} events, hash chain head {head}; all {} kept checkpoints match",
            fold.state.applied_index,
            kept.len()
        );
    }
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

use kaon_core::audit::{at_time, facts, lower, task_state};

/// Replays the log to `at` (None: the end); returns the state and where
/// the log ends.
async fn state_at(source: &Source<'_>, at: Option<u64>) -> anyhow::Result<(kaon_core::State, End)> {
    let mut fold = Fold {
        state: kaon_core::State::default(),
    };
    let end = each_event(source, 1, at, |_, e| fold.apply(&e)).await?;
    if let Some(u) = at {
        anyhow::ensure!(
            u <= end.last_index,
            "event {u} is past the end of the log: the last event is {}",
            end.last_index
        );
    }
    Ok((fold.state, end))
}

/// `kaon audit state --at I [--run ID]`: what the scheduler knew after
/// event I: runs, steps, attempts, launch intents not yet seen by Mesos
/// and armed timers.
pub async fn state(
    source: Source<'_>,
    at: Option<u64>,
    run: Option<u64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (state, end) = state_at(&source, at).await?;
    if let Some(id) = run {
        anyhow::ensure!(
            state.runs.contains_key(&id),
            "run {id} does not exist at event {} (runs are numbered by their RunSubmitted event)",
            state.applied_index
        );
    }
    let f = facts(&state, run);
    let digest = kaon_core::decide::hex(&state.digest());
    if json {
        println!(
            "{}",
            serde_json::json!({
                "at": state.applied_index,
                "time": at_time(state.last_event_ms),
                "last_index": end.last_index,
                "digest": digest,
                "chain": kaon_core::decide::hex(&state.chain),
                "facts": f,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "state after event {} ({}; the log ends at {}): digest {digest}",
        state.applied_index,
        at_time(state.last_event_ms),
        end.last_index
    );
    for (k, v) in &f {
        println!("  {k}: {v}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `kaon audit diff --from A --to B`: what changed between the state after
/// event A and the state after event B (facts added, removed, changed),
/// and which kinds of events came in between.
pub async fn diff(
    source: Source<'_>,
    from: u64,
    to: Option<u64>,
    run: Option<u64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if let Some(to) = to {
        anyhow::ensure!(from <= to, "--from {from} is after --to {to}");
    }
    let mut fold = Fold {
        state: kaon_core::State::default(),
    };
    let mut before = None;
    let mut kinds: std::collections::BTreeMap<&'static str, u64> = Default::default();
    if from == 0 {
        before = Some(facts(&fold.state, run));
    }
    let end = each_event(&source, 1, to, |_, e| {
        fold.apply(&e)?;
        if e.index == from {
            before = Some(facts(&fold.state, run));
        } else if e.index > from
            && let Some(b) = &e.body
            && run.is_none_or(|r| events::body_run(b) == Some(r))
        {
            *kinds.entry(events::body_name(b)).or_default() += 1;
        }
        Ok(())
    })
    .await?;
    let before = before.ok_or_else(|| {
        anyhow::anyhow!(
            "--from {from} is past the end of the log: the last event is {}",
            end.last_index
        )
    })?;
    if let Some(t) = to {
        anyhow::ensure!(
            t <= end.last_index,
            "--to {t} is past the end of the log: the last event is {}",
            end.last_index
        );
    }
    let after = facts(&fold.state, run);
    let mut changes = Vec::new();
    for (k, v) in &after {
        match before.get(k) {
            None => changes.push(("+", k.clone(), String::new(), v.clone())),
            Some(old) if old != v => changes.push(("~", k.clone(), old.clone(), v.clone())),
            _ => {}
        }
    }
    for (k, v) in &before {
        if !after.contains_key(k) {
            changes.push(("-", k.clone(), v.clone(), String::new()));
        }
    }
    changes.sort_by(|a, b| a.1.cmp(&b.1));
    let to = fold.state.applied_index;
    if json {
        let list: Vec<_> = changes
            .iter()
            .map(|(op, k, old, new)| {
                serde_json::json!({"change": match *op { "+" => "added", "-" => "removed", _ => "changed" }, "key": k, "before": old, "after": new})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"from": from, "to": to, "events": kinds, "changes": list})
        );
        return Ok(ExitCode::SUCCESS);
    }
    let n: u64 = kinds.values().sum();
    println!(
        "from event {from} to event {to}: {n} events, {} changes",
        changes.len()
    );
    for (kind, count) in &kinds {
        println!("  {count:>6} {kind}");
    }
    for (op, k, old, new) in &changes {
        match *op {
            "+" => println!("+ {k}: {new}"),
            "-" => println!("- {k}: {old}"),
            _ => println!("~ {k}: {old} -> {new}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `STEP` names this instance path: itself, or one of its foreach
/// elements or loop iterations (`STEP[2]`, `STEP#3`, `STEP/child`).
fn path_matches(path: &str, step: &str) -> bool {
    path == step
        || path
            .strip_prefix(step)
            .is_some_and(|rest| rest.starts_with(['[', '#', '/']))
}

/// One line of `audit why`.
#[derive(serde::Serialize)]
struct WhyLine {
    index: u64,
    time: String,
    /// The leader in office when the event was recorded ("node N term T").
    leader: String,
    step: String,
    what: String,
    /// Earlier events that led to this one.
    because: Vec<String>,
}

/// `kaon audit why RUN STEP`: every decision kaon recorded about a step
/// (launches, observations, retries, kills, skips, its end) in order, each
/// with its time, the leader that recorded it, and the earlier events
/// that led to it.
pub async fn why(
    source: Source<'_>,
    run: u64,
    step: String,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use events::Body as B;
    use events::pb;
    let mut fold = Fold {
        state: kaon_core::State::default(),
    };
    let mut leader = String::from("none recorded");
    // Per (run, instance): the index of the event that ended it.
    let mut finished: std::collections::BTreeMap<(u64, u32), (u64, String)> = Default::default();
    // Per (instance, attempt): the index of its terminal observation.
    let mut ended: std::collections::BTreeMap<(u32, u32), (u64, String)> = Default::default();
    let mut retried: std::collections::BTreeMap<(u32, u32), u64> = Default::default();
    let mut cancel: Option<(u64, String)> = None;
    let mut last_failure: Option<(u64, String)> = None;
    let mut lines = Vec::new();
    // Ends found by this event, printed after its own line.
    let mut pending_end: Vec<WhyLine> = Vec::new();
    // The run as it was when it left the live state, if it was retired.
    let mut retired: Option<kaon_core::state::Run> = None;
    each_event(&source, 1, None, |_, e| {
        if let Some(B::RunsRetired(x)) = &e.body
            && x.run_ids.contains(&run)
        {
            retired = fold.state.run(run).cloned();
        }
        fold.apply(&e)?;
        let Some(b) = &e.body else { return Ok(()) };
        if let B::LeaderStarted(l) = b {
            leader = format!("node {} term {}", l.node_id, l.term);
            return Ok(());
        }
        let submitted_here = matches!(b, B::RunSubmitted(_)) && e.index == run;
        if events::body_run(b) != Some(run) && !submitted_here {
            return Ok(());
        }
        let s = &fold.state;
        let r = s.run(run).expect("the run of an applied event exists");
        let path_of = |i: u32| {
            r.instances
                .get(i as usize)
                .map(|x| x.path.clone())
                .unwrap_or_default()
        };
        // Remember what later events may point back to: a cancel request,
        // and every instance that ended with this event (a step ends with
        // its last attempt's observation, a group with NodeFinished).
        if let B::RunCancelRequested(c) = b {
            cancel = Some((e.index, c.reason.clone()));
        }
        if let B::TaskStatusObserved(t) = b
            && !t.state_only
            && let Ok(st) = kaon_core::events::TaskState::try_from(t.state)
            && st.is_terminal()
        {
            let how = match pb::FailureCause::try_from(t.cause)
                .ok()
                .filter(|c| *c != pb::FailureCause::Unspecified)
            {
                Some(c) => format!(
                    "{} ({} budget)",
                    task_state(st),
                    c.as_str_name()
                        .trim_start_matches("FAILURE_CAUSE_")
                        .to_ascii_lowercase()
                ),
                None => task_state(st),
            };
            ended.insert((t.instance, t.attempt), (e.index, how));
        }
        for (id, x) in r.instances.iter().enumerate() {
            let key = (run, id as u32);
            if !x.status.is_terminal() || finished.contains_key(&key) {
                continue;
            }
            let outcome = lower(x.status);
            if x.status == kaon_core::state::NodeStatus::Failed {
                last_failure = Some((e.index, x.path.clone()));
            }
            finished.insert(key, (e.index, outcome.clone()));
            if !x.path.is_empty() && path_matches(&x.path, &step) {
                let mut because = Vec::new();
                if let Some((attempt, (idx, how))) = ended
                    .range((id as u32, 0)..=(id as u32, u32::MAX))
                    .next_back()
                    .map(|((_, a), v)| (a, v))
                {
                    because.push(format!("attempt {attempt} {how} at event {idx}"));
                }
                if let B::NodeFinished(n) = b
                    && n.reused_from_run != 0
                {
                    because.push(format!(
                        "its result was reused from run {}",
                        n.reused_from_run
                    ));
                }
                pending_end.push(WhyLine {
                    index: e.index,
                    time: at_time(e.time_unix_ms),
                    leader: leader.clone(),
                    step: x.path.clone(),
                    what: format!("finished: {outcome}"),
                    because,
                });
            }
        }
        // Who asked for the run and for its cancellation (clusters that
        // authenticate record it; issue 12).
        let asked = match b {
            B::RunSubmitted(x) => Some((
                match x.trigger.as_ref().and_then(|t| t.kind.as_ref()) {
                    Some(pb::trigger::Kind::Schedule(_)) => {
                        "run submitted by its schedule".to_string()
                    }
                    Some(pb::trigger::Kind::Retry(r)) => {
                        format!("run submitted as a retry of run {}", r.retried_run_id)
                    }
                    _ => "run submitted".to_string(),
                },
                &x.requested_by,
            )),
            B::RunCancelRequested(x) => {
                Some((format!("cancel requested: {}", x.reason), &x.requested_by))
            }
            _ => None,
        };
        if let Some((what, by)) = asked {
            let what = match by {
                Some(a) => format!("{what} (by {}, {} via {})", a.principal, a.role, a.method),
                None => what,
            };
            lines.push(WhyLine {
                index: e.index,
                time: at_time(e.time_unix_ms),
                leader: leader.clone(),
                step: String::new(),
                what,
                because: Vec::new(),
            });
        }
        let Some((_, inst)) = events::body_instance(b) else {
            lines.append(&mut pending_end);
            return Ok(());
        };
        let path = path_of(inst);
        if !path_matches(&path, &step) {
            lines.append(&mut pending_end);
            return Ok(());
        }
        let mut because = Vec::new();
        let what = match b {
            B::TaskLaunchRequested(l) => {
                if l.attempt > 1 {
                    if let Some(idx) = retried.get(&(inst, l.attempt)) {
                        because.push(format!("retry scheduled at event {idx}"));
                    }
                    if let Some((idx, how)) = ended.get(&(inst, l.attempt - 1)) {
                        because.push(format!("attempt {} {how} at event {idx}", l.attempt - 1));
                    }
                } else {
                    let i = &r.instances[inst as usize];
                    let node = &r.plan.nodes[i.node as usize];
                    let siblings = r
                        .instances
                        .iter()
                        .enumerate()
                        .filter(|(_, x)| x.parent == i.parent && x.node != i.node);
                    for (sid, sib) in siblings {
                        let sn = &r.plan.nodes[sib.node as usize];
                        if node.depends_on.contains(&sn.index)
                            && let Some((idx, outcome)) = finished.get(&(run, sid as u32))
                        {
                            because
                                .push(format!("dependency {} {outcome} at event {idx}", sib.path));
                        }
                    }
                    if because.is_empty() {
                        because
                            .push("no dependencies: it starts with its run (or its group)".into());
                    }
                }
                format!(
                    "launch intent for attempt {} (task {}, {} cpus, {} MB{})",
                    l.attempt,
                    l.task_id,
                    l.resources.as_ref().map(|x| x.cpus).unwrap_or(0.0),
                    l.resources.as_ref().map(|x| x.mem_mb).unwrap_or(0.0),
                    if l.timeout_ms > 0 {
                        format!(", timeout {} ms", l.timeout_ms)
                    } else {
                        String::new()
                    }
                )
            }
            B::TaskStatusObserved(t) => {
                let st = kaon_core::events::TaskState::try_from(t.state)
                    .map(task_state)
                    .unwrap_or_else(|_| "unknown".into());
                let terminal =
                    kaon_core::events::TaskState::try_from(t.state).is_ok_and(|s| s.is_terminal());
                let mut w = format!("attempt {} {st}", t.attempt);
                if let Some(c) = t.exit_code {
                    w.push_str(&format!(" exit {c}"));
                }
                if !t.reason.is_empty() {
                    w.push_str(&format!(" ({})", t.reason));
                }
                if t.state_only {
                    w.push_str(" [reconciliation report: not the result]");
                } else if terminal {
                    let cause = pb::FailureCause::try_from(t.cause)
                        .ok()
                        .filter(|c| *c != pb::FailureCause::Unspecified)
                        .map(|c| {
                            c.as_str_name()
                                .trim_start_matches("FAILURE_CAUSE_")
                                .to_ascii_lowercase()
                        });
                    let how = match &cause {
                        Some(c) => format!("{st} ({c} budget)"),
                        None => st.clone(),
                    };
                    if let Some(c) = cause {
                        w.push_str(&format!(", counted against the {c} budget"));
                    }
                    debug_assert_eq!(ended.get(&(inst, t.attempt)).map(|x| &x.1), Some(&how));
                }
                let src = pb::TaskSource::try_from(t.source_kind)
                    .map(|s| {
                        s.as_str_name()
                            .trim_start_matches("TASK_SOURCE_")
                            .to_ascii_lowercase()
                    })
                    .unwrap_or_default();
                if !src.is_empty() && src != "unspecified" {
                    w.push_str(&format!("; reported by the {src}"));
                }
                w
            }
            B::RetryScheduled(x) => {
                retried.insert((inst, x.next_attempt), e.index);
                if let Some((idx, how)) = ended.get(&(inst, x.next_attempt - 1)) {
                    because.push(format!(
                        "attempt {} {how} at event {idx}",
                        x.next_attempt - 1
                    ));
                }
                format!(
                    "retry: attempt {} not before {}",
                    x.next_attempt,
                    at_time(x.not_before_unix_ms)
                )
            }
            B::TaskKillRequested(k) => {
                let cause = pb::KillCause::try_from(k.cause).unwrap_or(pb::KillCause::Unspecified);
                match cause {
                    pb::KillCause::RunCancelled => {
                        if let Some((idx, reason)) = &cancel {
                            because.push(format!("run cancel requested at event {idx}: {reason}"));
                        }
                    }
                    pb::KillCause::FailFast => {
                        if let Some((idx, p)) = &last_failure {
                            because.push(format!("step {p} failed at event {idx} (fail fast)"));
                        }
                    }
                    _ => {}
                }
                format!(
                    "kill attempt {}: {}",
                    k.attempt,
                    cause
                        .as_str_name()
                        .trim_start_matches("KILL_CAUSE_")
                        .to_ascii_lowercase()
                )
            }
            B::NodeSkipped(x) => {
                let reason = pb::SkipReason::try_from(x.reason)
                    .map(|r| {
                        r.as_str_name()
                            .trim_start_matches("SKIP_REASON_")
                            .to_ascii_lowercase()
                    })
                    .unwrap_or_default();
                if reason == "upstream_failed" || reason == "run_ending" {
                    for ((_, sid), (idx, outcome)) in finished.range((run, 0)..=(run, u32::MAX)) {
                        if outcome == "failed" || outcome == "cancelled" {
                            because.push(format!("{} {outcome} at event {idx}", path_of(*sid)));
                        }
                    }
                }
                format!(
                    "skipped: {reason}{}",
                    if x.message.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", x.message)
                    }
                )
            }
            B::NodeStarted(_) => "started (its children were created)".into(),
            B::ForeachExpanded(x) => format!("foreach expanded over {}", x.items_json),
            B::LoopIterationStarted(x) => format!("loop iteration {} started", x.iteration),
            // The end itself is reported from the state (above); progress
            // is not a decision.
            _ => {
                lines.append(&mut pending_end);
                return Ok(());
            }
        };
        lines.push(WhyLine {
            index: e.index,
            time: at_time(e.time_unix_ms),
            leader: leader.clone(),
            step: path,
            what,
            because,
        });
        lines.append(&mut pending_end);
        Ok(())
    })
    .await?;
    let Some(r) = fold.state.run(run).or(retired.as_ref()) else {
        anyhow::bail!(
            "run {run} is not in the log (runs are numbered by their RunSubmitted event)"
        );
    };
    if lines.iter().all(|l| l.step.is_empty()) {
        let known: Vec<&str> = r
            .instances
            .iter()
            .map(|i| i.path.as_str())
            .filter(|p| !p.is_empty())
            .collect();
        anyhow::bail!(
            "run {run} has no step {step:?} that kaon recorded anything about; its steps: {}",
            known.join(", ")
        );
    }
    if json {
        println!("{}", serde_json::to_string(&lines)?);
        return Ok(ExitCode::SUCCESS);
    }
    for l in &lines {
        println!(
            "#{} {} [leader {}] {}: {}",
            l.index,
            l.time,
            l.leader,
            if l.step.is_empty() { "run" } else { &l.step },
            l.what
        );
        for b in &l.because {
            println!("      because {b}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
