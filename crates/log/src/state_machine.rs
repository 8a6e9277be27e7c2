//! The replicated state machine: applies committed entries into
//! [`kaon_core::State`] and keeps every event forever.
//!
//! One redb file per node (`state.redb`) holds:
//!
//! - `event_archive`: every committed event by event index (1, 2, 3, ...),
//!   checksummed, never deleted — Raft log compaction does not touch it, so
//!   auditors can always read the whole history from event 1.
//! - `sm_meta/applied`: last applied Raft log id, last membership, event
//!   count and hash-chain head, written in the same transaction as the
//!   events it covers.
//! - `sm_meta/snapshot`: the latest snapshot's metadata and `State` bytes.
//!
//! Each applied batch is one durable transaction, committed before openraft
//! is told the entries are applied (and so before a client hears "ok").
//! On open, the state is rebuilt from the stored snapshot plus the archive
//! suffix (or from the archive alone) and checked against the stored chain
//! head.
//!
//! Snapshots sent to other nodes carry the `State` bytes *and* the archive,
//! so a node that joins or catches up by snapshot also holds the full audit
//! trail (see the README).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use futures_util::{Stream, TryStreamExt};
use kaon_core::State;
use kaon_core::events::{self, Event};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::record::{DbCtx, begin_durable, make_record, open_record, seal, unseal};
use crate::storage::{Storage, open_database};
use crate::types::alias::{LogId, Snapshot, SnapshotMeta, StoredMembership};
use crate::types::{Applied, TypeConfig};

/// File name of the state machine database inside a node's data directory.
pub const STATE_FILE: &str = "state.redb";

/// Committed events by event index: `crc32c || kaon.events.v1.Event bytes`.
const ARCHIVE: TableDefinition<u64, &[u8]> = TableDefinition::new("event_archive");
const ARCHIVE_NAME: &str = "event_archive";
/// Single records (applied position, snapshot).
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
const SM_META_NAME: &str = "sm_meta";
const KEY_APPLIED: &str = "applied";
const KEY_SNAPSHOT: &str = "snapshot";

/// Where the state machine stands; stored with the events it covers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AppliedRecord {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// Number of events applied (= index of the last one).
    event_index: u64,
    /// Hash-chain head after `event_index` events (as computed by the core).
    chain: [u8; 32],
}

/// The latest snapshot kept locally (the archive is added when it is sent).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    event_index: u64,
    state: Vec<u8>,
}

impl StoredSnapshot {
    /// What metrics and auditors see of it; `state` is the state it holds.
    fn info(&self, state: &State) -> SnapshotInfo {
        SnapshotInfo {
            event_index: self.event_index,
            log_index: self.meta.last_log_id.map(|l| l.index()).unwrap_or(0),
            state_bytes: self.state.len() as u64,
            last_event_unix_ms: state.last_event_ms,
            chain: state.chain,
            digest: state.digest(),
        }
    }
}

/// The bytes of a snapshot as shipped between nodes (sealed with a crc32c).
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBody {
    /// `State::to_snapshot()`.
    state: Vec<u8>,
    /// Index of `events[0]`: 1 for a full archive; higher when the sender
    /// trimmed the prefix the receiver already holds
    /// ([`trim_snapshot_archive`]).
    first_event: u64,
    /// Events `first_event..=n` (encoded `Event`s) of the audit archive.
    events: Vec<Vec<u8>>,
}

/// The bytes of a snapshot of `state` (`State::to_snapshot`) carrying the
/// whole archive `events` (events 1..=n, encoded), as nodes ship them: a
/// restore installs one into a new node.
pub(crate) fn snapshot_data(state: Vec<u8>, events: Vec<Vec<u8>>) -> Result<Vec<u8>, String> {
    let body = SnapshotBody {
        state,
        first_event: 1,
        events,
    };
    let payload = crate::record::encode(&body).map_err(|e| e.to_string())?;
    Ok(seal(&payload))
}

/// Checks and decodes a snapshot's shipped bytes.
fn open_snapshot_body(data: &[u8]) -> Result<SnapshotBody, String> {
    let payload =
        crate::record::unseal(Path::new("<snapshot>"), SM_META_NAME, "snapshot body", data)
            .map_err(|e| e.to_string())?;
    let body: SnapshotBody = crate::record::decode(payload)?;
    if body.first_event == 0 {
        return Err("snapshot archive starts at event 0".into());
    }
    Ok(body)
}

/// Drops from a snapshot's archive the first `receiver_has` events, which
/// the receiving node already holds, so only the missing suffix travels.
/// The receiver re-checks the whole chain (its prefix + the suffix) on
/// install. Returns the data unchanged if there is nothing to trim.
pub fn trim_snapshot_archive(data: Vec<u8>, receiver_has: u64) -> Result<Vec<u8>, String> {
    if receiver_has == 0 {
        return Ok(data);
    }
    let mut body = open_snapshot_body(&data)?;
    let n = body.first_event - 1 + body.events.len() as u64;
    if receiver_has >= n || receiver_has < body.first_event {
        // Receiver is ahead (install will refuse) or the body is already
        // trimmed further: leave it alone.
        return Ok(data);
    }
    let drop = (receiver_has + 1 - body.first_event) as usize;
    body.events.drain(..drop);
    body.first_event = receiver_has + 1;
    let payload = crate::record::encode(&body).map_err(|e| e.to_string())?;
    Ok(seal(&payload))
}

/// Result of [`StateMachineStore::verify_chain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Events checked (1..=events).
    pub events: u64,
    /// Recomputed hash-chain head.
    pub head: [u8; 32],
}

struct Mem {
    state: State,
    applied: AppliedRecord,
}

struct Inner {
    db: Database,
    path: PathBuf,
    mem: RwLock<Mem>,
    /// Events durably archived. The in-memory state may run ahead of it
    /// by the batch being committed (those entries are already committed
    /// in Raft); this is what [`StateMachineStore::applied_event_index`]
    /// reports, so "event n applied" always implies "event n on disk".
    durable_events: AtomicU64,
    io: crate::storage::Io,
    /// The latest snapshot this node holds (built, installed or opened),
    /// for metrics: `None` until there is one.
    snapshot: std::sync::Mutex<Option<SnapshotInfo>>,
}

/// What an SRE wants to know about a node's latest snapshot (metrics:
/// how big it is and how far behind the log it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Events it covers (1..=event_index).
    pub event_index: u64,
    /// Raft log index it covers.
    pub log_index: u64,
    /// Size of its serialized state, bytes (the event archive shipped with
    /// it is not counted: every node holds that anyway).
    pub state_bytes: u64,
    /// Time of the last event it covers, unix ms (0 if it covers none).
    pub last_event_unix_ms: i64,
    /// Hash-chain head after its last event: an auditor who keeps it can
    /// later check any copy of the log against it (`kaon audit verify
    /// --digests`).
    pub chain: [u8; 32],
    /// Digest of its state (`State::digest`).
    pub digest: [u8; 32],
}

/// The kaon state machine store. Cloning is cheap (shared handle); openraft
/// gets one clone, [`crate::RaftNode`] keeps another for reads.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

fn event_key(index: u64) -> String {
    format!("event index {index}")
}

/// `chain' = SHA-256(chain || event bytes)`, the core's hash chain.
fn chain_step(chain: &[u8; 32], bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(chain);
    h.update(bytes);
    h.finalize().into()
}

impl StateMachineStore {
    /// Opens (or creates) the state machine in `dir`, verifies the archive
    /// (checksums, consecutive indexes from 1) and rebuilds the state.
    pub fn open(dir: &Path) -> Result<StateMachineStore, StoreError> {
        StateMachineStore::open_on(&Storage::Files, dir)
    }

    /// [`StateMachineStore::open`] on the given storage: files in `dir`,
    /// or the in-memory data directory of a simulated node (`dir` unused).
    pub fn open_on(storage: &Storage, dir: &Path) -> Result<StateMachineStore, StoreError> {
        let (db, path) = open_database(storage, dir, STATE_FILE, |txn| {
            txn.open_table(ARCHIVE)?;
            txn.open_table(SM_META)?;
            Ok(())
        })?;
        let file = path.as_path();
        let (applied, snapshot) = {
            let txn = db.begin_read().ctx(file, "begin read")?;
            let meta = txn.open_table(SM_META).ctx(file, "open table")?;
            let applied: AppliedRecord = match meta.get(KEY_APPLIED).ctx(file, "read")? {
                None => AppliedRecord::default(),
                Some(v) => open_record(file, SM_META_NAME, "key applied", v.value())?,
            };
            let snapshot: Option<StoredSnapshot> = match meta.get(KEY_SNAPSHOT).ctx(file, "read")? {
                None => None,
                Some(v) => Some(open_record(file, SM_META_NAME, "key snapshot", v.value())?),
            };
            (applied, snapshot)
        };
        let corrupt = |table: &'static str, key: String, message: String| StoreError::Corrupt {
            file: path.clone(),
            table,
            key,
            message,
        };
        // Rebuild: snapshot (if any) + archive suffix, else the whole archive.
        let mut snapshot_info = None;
        let mut state = match &snapshot {
            Some(s) if s.event_index <= applied.event_index => {
                let state = State::from_snapshot(&s.state).map_err(|e| StoreError::Snapshot {
                    file: path.clone(),
                    message: e.to_string(),
                })?;
                snapshot_info = Some(s.info(&state));
                state
            }
            _ => State::default(),
        };
        // The archive's shape in O(1): keys are distinct event indexes, so
        // first = 1, last = n and n entries mean 1..=n with no hole. Only the
        // events after the snapshot are read (their checksums checked) and
        // applied, so a restart costs the snapshot plus the suffix, not the
        // whole history; `verify_chain` (`kaon audit verify`) reads it all.
        let archived;
        {
            let txn = db.begin_read().ctx(file, "begin read")?;
            let archive = txn.open_table(ARCHIVE).ctx(file, "open table")?;
            archived = archive.len().ctx(file, "count")?;
            let first = archive.first().ctx(file, "read")?.map(|(k, _)| k.value());
            let last = archive.last().ctx(file, "read")?.map(|(k, _)| k.value());
            let whole = match (first, last) {
                (None, None) => archived == 0,
                (Some(f), Some(l)) => f == 1 && l == archived,
                _ => false,
            };
            if !whole {
                return Err(corrupt(
                    ARCHIVE_NAME,
                    format!("events {first:?}..={last:?}"),
                    format!(
                        "hole in the archive: {archived} entries from {first:?} to {last:?}, \
                         expected events 1..={archived}"
                    ),
                ));
            }
            let from = state.applied_index + 1;
            for (expected, item) in (from..).zip(archive.range(from..).ctx(file, "scan")?) {
                let (k, v) = item.ctx(file, "read")?;
                let index = k.value();
                let bytes = unseal(file, ARCHIVE_NAME, event_key(index), v.value())?;
                assert_eq!(
                    index, expected,
                    "the archive's keys are 1..=n (checked above)"
                );
                state
                    .apply_bytes(index, bytes)
                    .map_err(|source| StoreError::Apply {
                        file: path.clone(),
                        source,
                    })?;
            }
        }
        if archived != applied.event_index
            || state.applied_index != applied.event_index
            || state.chain != applied.chain
        {
            return Err(corrupt(
                SM_META_NAME,
                "key applied".into(),
                format!(
                    "records {} events, archive holds {archived}, rebuilt state is at {} (chain {})",
                    applied.event_index,
                    state.applied_index,
                    if state.chain == applied.chain {
                        "matches"
                    } else {
                        "differs"
                    }
                ),
            ));
        }
        Ok(StateMachineStore {
            inner: Arc::new(Inner {
                db,
                path,
                durable_events: AtomicU64::new(applied.event_index),
                mem: RwLock::new(Mem { state, applied }),
                io: crate::storage::Io::of(storage),
                snapshot: std::sync::Mutex::new(snapshot_info),
            }),
        })
    }

    /// The latest snapshot this node holds, if any.
    pub fn snapshot_info(&self) -> Option<SnapshotInfo> {
        *self
            .inner
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn note_snapshot(&self, info: SnapshotInfo) {
        *self
            .inner
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(info);
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn mem(&self) -> RwLockReadGuard<'_, Mem> {
        // A poisoned lock means a panic elsewhere; the data is still the
        // last consistent state, so keep serving it.
        self.inner.mem.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the current state (never hold this across an await: it
    /// is a synchronous closure for that reason).
    pub fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.mem().state)
    }

    /// Index of the last event applied *and* durably archived (0 = none).
    pub fn applied_event_index(&self) -> u64 {
        self.inner.durable_events.load(Ordering::Acquire)
    }

    /// [`State::digest`] of the current state.
    pub fn digest(&self) -> [u8; 32] {
        self.mem().state.digest()
    }

    /// Reads archived events `from..=to` (encoded), checking each record.
    /// Indexes past the last event are simply absent.
    pub fn read_event_bytes(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let file = self.path();
        let txn = self.inner.db.begin_read().ctx(file, "begin read")?;
        let archive = txn.open_table(ARCHIVE).ctx(file, "open table")?;
        let mut out = Vec::new();
        if from > to {
            return Ok(out);
        }
        for item in archive.range(from..=to).ctx(file, "range")? {
            let (k, v) = item.ctx(file, "read")?;
            let bytes = unseal(file, ARCHIVE_NAME, event_key(k.value()), v.value())?;
            out.push((k.value(), bytes.to_vec()));
        }
        Ok(out)
    }

    /// Reads and decodes archived events `from..=to`: the audit trail,
    /// complete from event 1 even after Raft log compaction.
    pub fn read_events(&self, from: u64, to: u64) -> Result<Vec<Event>, StoreError> {
        self.read_event_bytes(from, to)?
            .into_iter()
            .map(|(i, b)| {
                events::decode(&b).map_err(|e| StoreError::Corrupt {
                    file: self.path().to_path_buf(),
                    table: ARCHIVE_NAME,
                    key: event_key(i),
                    message: format!("cannot decode event: {e}"),
                })
            })
            .collect()
    }

    /// Recomputes the hash chain from event 1 over the archive and checks
    /// it against the chain head the core computed when applying (stored
    /// in the same transaction as the events), and that every event's own
    /// index matches its position.
    pub fn verify_chain(&self) -> Result<ChainReport, StoreError> {
        let file = self.path();
        let txn = self.inner.db.begin_read().ctx(file, "begin read")?;
        let meta = txn.open_table(SM_META).ctx(file, "open table")?;
        let applied: AppliedRecord = match meta.get(KEY_APPLIED).ctx(file, "read")? {
            None => AppliedRecord::default(),
            Some(v) => open_record(file, SM_META_NAME, "key applied", v.value())?,
        };
        let archive = txn.open_table(ARCHIVE).ctx(file, "open table")?;
        let mut head = [0u8; 32];
        let mut n = 0u64;
        // Recent heads, to check the heads signed events recorded
        // (`ChainHeadSigned`): an altered event whose record was resealed
        // is then placed between two of them.
        let mut recent: std::collections::VecDeque<(u64, [u8; 32])> = Default::default();
        let mut last_matching_signed = 0u64;
        let corrupt = |key: String, message: String| StoreError::Corrupt {
            file: file.to_path_buf(),
            table: ARCHIVE_NAME,
            key,
            message,
        };
        for item in archive.iter().ctx(file, "scan")? {
            let (k, v) = item.ctx(file, "read")?;
            let index = k.value();
            let bytes = unseal(file, ARCHIVE_NAME, event_key(index), v.value())?;
            n += 1;
            if index != n {
                return Err(corrupt(
                    event_key(index),
                    format!("expected event index {n}"),
                ));
            }
            let ev = events::decode(bytes)
                .map_err(|e| corrupt(event_key(index), format!("cannot decode event: {e}")))?;
            if ev.index != index {
                return Err(corrupt(
                    event_key(index),
                    format!("event says index {}", ev.index),
                ));
            }
            if let Some(kaon_core::events::Body::ChainHeadSigned(s)) = &ev.body
                && let Some((_, h)) = recent.iter().find(|(i, _)| *i == s.index)
            {
                if h[..] != s.chain_head[..] {
                    return Err(corrupt(
                        event_key(s.index),
                        format!(
                            "the chain head after event {} is not the one signed at event {index}: \
                             an event at or before {} and after {last_matching_signed} was altered",
                            s.index, s.index
                        ),
                    ));
                }
                last_matching_signed = s.index;
            }
            head = chain_step(&head, bytes);
            recent.push_back((index, head));
            if recent.len() > 4_096 {
                recent.pop_front();
            }
        }
        if n != applied.event_index || head != applied.chain {
            return Err(corrupt(
                format!("event index {n}"),
                format!(
                    "recomputed chain over {n} events does not match the applied record ({} events)",
                    applied.event_index
                ),
            ));
        }
        Ok(ChainReport { events: n, head })
    }

    fn write_applied(
        &self,
        new_events: &[(u64, Vec<u8>)],
        applied: &AppliedRecord,
        snapshot: Option<&StoredSnapshot>,
    ) -> Result<(), StoreError> {
        let file = self.path();
        let applied_rec = make_record(file, SM_META_NAME, "key applied", applied)?;
        let snap_rec = match snapshot {
            Some(s) => Some(make_record(file, SM_META_NAME, "key snapshot", s)?),
            None => None,
        };
        let txn = begin_durable(&self.inner.db, file)?;
        {
            let mut archive = txn.open_table(ARCHIVE).ctx(file, "open table")?;
            for (i, bytes) in new_events {
                archive
                    .insert(*i, seal(bytes).as_slice())
                    .ctx(file, "insert event")?;
            }
            let mut meta = txn.open_table(SM_META).ctx(file, "open table")?;
            meta.insert(KEY_APPLIED, applied_rec.as_slice())
                .ctx(file, "insert")?;
            if let Some(r) = &snap_rec {
                meta.insert(KEY_SNAPSHOT, r.as_slice())
                    .ctx(file, "insert")?;
            }
        }
        txn.commit().ctx(file, "commit apply")
    }

    fn write_snapshot_record(&self, s: &StoredSnapshot) -> Result<(), StoreError> {
        let file = self.path();
        let rec = make_record(file, SM_META_NAME, "key snapshot", s)?;
        let txn = begin_durable(&self.inner.db, file)?;
        {
            let mut meta = txn.open_table(SM_META).ctx(file, "open table")?;
            meta.insert(KEY_SNAPSHOT, rec.as_slice())
                .ctx(file, "insert")?;
        }
        txn.commit().ctx(file, "commit snapshot")
    }

    fn read_snapshot_record(&self) -> Result<Option<StoredSnapshot>, StoreError> {
        let file = self.path();
        let txn = self.inner.db.begin_read().ctx(file, "begin read")?;
        let meta = txn.open_table(SM_META).ctx(file, "open table")?;
        match meta.get(KEY_SNAPSHOT).ctx(file, "read")? {
            None => Ok(None),
            Some(v) => Ok(Some(open_record(
                file,
                SM_META_NAME,
                "key snapshot",
                v.value(),
            )?)),
        }
    }

    /// The snapshot's bytes as openraft holds them: its state and none of
    /// the archive (`first_event` past its last event). Reading the whole
    /// archive here would make every restart (openraft reads the current
    /// snapshot twice while it starts) cost the whole history; the sender
    /// adds the events its receiver lacks when it ships the snapshot
    /// ([`StateMachineStore::fill_snapshot_archive`]).
    fn snapshot_bytes(&self, s: &StoredSnapshot) -> Result<Vec<u8>, StoreError> {
        let body = SnapshotBody {
            state: s.state.clone(),
            first_event: s.event_index + 1,
            events: Vec::new(),
        };
        make_record(self.path(), SM_META_NAME, "snapshot body", &body)
    }

    /// [`StateMachineStore::fill_snapshot_archive`] off the async executor
    /// (inline in a simulation, whose storage is memory).
    pub(crate) async fn fill_snapshot_archive_off(
        &self,
        data: Vec<u8>,
        receiver_has: u64,
    ) -> Result<Vec<u8>, String> {
        let file = self.path().to_path_buf();
        self.blocking(move |s| {
            s.fill_snapshot_archive(data, receiver_has)
                .map_err(|message| StoreError::Snapshot { file, message })
        })
        .await
        .map_err(|e| e.to_string())
    }

    /// Makes snapshot `data` carry exactly the archive events a receiver
    /// holding `receiver_has` events lacks: events it already holds are
    /// dropped ([`trim_snapshot_archive`]), events the data leaves out are
    /// read from this node's archive (which is never purged). Reads from
    /// disk: call it off the async executor for a large gap.
    pub fn fill_snapshot_archive(
        &self,
        data: Vec<u8>,
        receiver_has: u64,
    ) -> Result<Vec<u8>, String> {
        let mut body = open_snapshot_body(&data)?;
        let want_from = receiver_has + 1;
        if want_from >= body.first_event {
            return trim_snapshot_archive(data, receiver_has);
        }
        let missing = self
            .read_event_bytes(want_from, body.first_event - 1)
            .map_err(|e| e.to_string())?;
        let expected = body.first_event - want_from;
        if missing.len() as u64 != expected {
            return Err(format!(
                "the local archive holds {} of events {want_from}..={}",
                missing.len(),
                body.first_event - 1
            ));
        }
        let mut events: Vec<Vec<u8>> = missing.into_iter().map(|(_, b)| b).collect();
        events.append(&mut body.events);
        body.events = events;
        body.first_event = want_from;
        let payload = crate::record::encode(&body).map_err(|e| e.to_string())?;
        Ok(seal(&payload))
    }

    fn snapshot_err(&self, message: String) -> StoreError {
        StoreError::Snapshot {
            file: self.path().to_path_buf(),
            message,
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&StateMachineStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, io::Error> {
        self.inner.io.clone().run(self.clone(), f).await
    }

    /// Captures the current state for a snapshot, with what it tells of
    /// itself. Called by openraft from the state machine task between two
    /// `apply` calls, so the captured state is exactly what the archive
    /// holds durably.
    fn capture(&self) -> (StoredSnapshot, SnapshotInfo) {
        let mem = self.mem();
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: mem.applied.last_applied,
                last_membership: mem.applied.membership.clone(),
            },
            event_index: mem.state.applied_index,
            state: mem.state.to_snapshot(),
        };
        let info = stored.info(&mem.state);
        (stored, info)
    }
}

/// Builds a snapshot from a state captured by
/// `RaftStateMachine::get_snapshot_builder` (the build itself — storing the
/// record and reading the archive — runs off the state machine task).
pub struct SnapshotBuilder {
    store: StateMachineStore,
    captured: Option<(StoredSnapshot, SnapshotInfo)>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (stored, info) = match self.captured.take() {
            Some(s) => s,
            None => self.store.capture(),
        };
        self.store
            .blocking(move |s| {
                s.write_snapshot_record(&stored)?;
                s.note_snapshot(info);
                let data = s.snapshot_bytes(&stored)?;
                Ok(Snapshot {
                    meta: stored.meta,
                    snapshot: data,
                })
            })
            .await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let mem = self.mem();
        Ok((mem.applied.last_applied, mem.applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.try_next().await? {
            batch.push(item);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let mut new_events: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        let applied = {
            let mut mem = self.inner.mem.write().unwrap_or_else(|p| p.into_inner());
            for (entry, responder) in batch {
                let mut event_index = None;
                match entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Membership(m) => {
                        mem.applied.membership = StoredMembership::new(Some(entry.log_id), m);
                    }
                    EntryPayload::Normal(p) => {
                        // Stamp the event index: the next one after the
                        // last applied event, identical on every replica.
                        let index = mem.state.applied_index + 1;
                        let bytes = stamp(&p.event, index).map_err(|message| {
                            self.stop_loudly(StoreError::Corrupt {
                                file: self.path().to_path_buf(),
                                table: "raft_log",
                                key: format!("log index {}", entry.log_id.index),
                                message,
                            })
                        })?;
                        mem.state.apply_bytes(index, &bytes).map_err(|source| {
                            self.stop_loudly(StoreError::Apply {
                                file: self.path().to_path_buf(),
                                source,
                            })
                        })?;
                        new_events.push((index, bytes));
                        event_index = Some(index);
                    }
                }
                mem.applied.last_applied = Some(entry.log_id);
                replies.push((responder, Applied { event_index }));
            }
            mem.applied.event_index = mem.state.applied_index;
            mem.applied.chain = mem.state.chain;
            mem.applied.clone()
        };
        // Durable before anyone hears the entries are applied.
        let durable = applied.event_index;
        self.blocking(move |s| s.write_applied(&new_events, &applied, None))
            .await?;
        self.inner.durable_events.store(durable, Ordering::Release);
        for (responder, reply) in replies {
            if let Some(r) = responder {
                r.send(reply);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.clone(),
            captured: Some(self.capture()),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let meta = meta.clone();
        self.blocking(move |s| s.install(meta, snapshot)).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        self.blocking(|s| {
            let Some(stored) = s.read_snapshot_record()? else {
                return Ok(None);
            };
            let data = s.snapshot_bytes(&stored)?;
            Ok(Some(Snapshot {
                meta: stored.meta,
                snapshot: data,
            }))
        })
        .await
    }
}

impl StateMachineStore {
    fn stop_loudly(&self, e: StoreError) -> io::Error {
        tracing::error!(error = %e, "state machine cannot apply a committed entry; stopping this replica");
        io::Error::from(e)
    }

    /// Installs a snapshot received from the leader: checks its checksum,
    /// that the local archive prefix plus the shipped events hash to the
    /// snapshot state's chain head, and that shipped events agree with
    /// local ones; then stores the missing events, the applied position
    /// and the snapshot in one transaction.
    fn install(&self, meta: SnapshotMeta, data: Vec<u8>) -> Result<(), StoreError> {
        let payload = unseal(self.path(), SM_META_NAME, "received snapshot", &data)?;
        let body: SnapshotBody = crate::record::decode(payload)
            .map_err(|m| self.snapshot_err(format!("cannot decode: {m}")))?;
        let state =
            State::from_snapshot(&body.state).map_err(|e| self.snapshot_err(e.to_string()))?;
        if body.first_event == 0 {
            return Err(self.snapshot_err("archive starts at event 0".into()));
        }
        let n = body.first_event - 1 + body.events.len() as u64;
        if state.applied_index != n {
            return Err(self.snapshot_err(format!(
                "state is at event {} but the archive ends at {n}",
                state.applied_index
            )));
        }
        let local_n = self.mem().state.applied_index;
        if local_n > n {
            return Err(self.snapshot_err(format!(
                "snapshot has {n} events but this node already applied {local_n}"
            )));
        }
        if local_n + 1 < body.first_event {
            return Err(self.snapshot_err(format!(
                "archive shipped from event {} but this node holds only {local_n}",
                body.first_event
            )));
        }
        let local = self.read_event_bytes(1, local_n)?;
        if local.len() as u64 != local_n {
            return Err(self.snapshot_err(format!(
                "local archive holds {} events, state says {local_n}",
                local.len()
            )));
        }
        let shipped = |i: u64| &body.events[(i - body.first_event) as usize];
        let mut head = [0u8; 32];
        for (i, b) in &local {
            if *i >= body.first_event && shipped(*i) != b {
                return Err(self.snapshot_err(format!(
                    "event index {i} differs from the local archive: histories diverged"
                )));
            }
            head = chain_step(&head, b);
        }
        let new_events: Vec<(u64, Vec<u8>)> =
            (local_n + 1..=n).map(|i| (i, shipped(i).clone())).collect();
        for (_, b) in &new_events {
            head = chain_step(&head, b);
        }
        if head != state.chain {
            return Err(self.snapshot_err(
                "archive (local prefix + shipped events) does not hash to the state's chain head"
                    .into(),
            ));
        }
        let applied = AppliedRecord {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            event_index: n,
            chain: state.chain,
        };
        let stored = StoredSnapshot {
            meta,
            event_index: n,
            state: body.state,
        };
        self.write_applied(&new_events, &applied, Some(&stored))?;
        self.note_snapshot(stored.info(&state));
        let mut mem = self.inner.mem.write().unwrap_or_else(|p| p.into_inner());
        *mem = Mem { state, applied };
        self.inner.durable_events.store(n, Ordering::Release);
        Ok(())
    }
}

/// Stamps event `index` on a proposed event (whose index must be 0).
///
/// The event's bytes are kept exactly as proposed and the index field
/// (field 1, varint) is prepended. For a canonically encoded proposal this
/// is byte-identical to re-encoding the event with the index set (prost
/// writes fields in field-number order and omits a zero index), and unlike
/// a decode/re-encode it keeps fields this version does not know, so
/// replicas of different versions produce identical bytes (and hash chains).
pub fn stamp(proposed: &[u8], index: u64) -> Result<Vec<u8>, String> {
    let ev =
        events::decode(proposed).map_err(|e| format!("proposed event does not decode: {e}"))?;
    if ev.index != 0 {
        return Err(format!("proposed event already carries index {}", ev.index));
    }
    let mut out = Vec::with_capacity(proposed.len() + EVENT_INDEX_PREFIX_MAX_BYTES);
    prost::encoding::encode_key(1, prost::encoding::WireType::Varint, &mut out);
    prost::encoding::encode_varint(index, &mut out);
    out.extend_from_slice(proposed);
    Ok(out)
}

/// Largest stamped prefix: one key byte plus a 10-byte varint.
const EVENT_INDEX_PREFIX_MAX_BYTES: usize = 11;
