//! The durable Raft log: entries, vote, committed log id and the purge
//! point, in one redb file (`raft-log.redb` in the node's data directory).
//!
//! Every write is a redb transaction with `Durability::Immediate`: when a
//! method returns (and before openraft's flush callback fires) the data is
//! fsynced. Records are checksummed (see `record`) and the whole file is
//! verified when it is opened.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::StoreError;
use crate::record::{DbCtx, begin_durable, make_record, open_record};
use crate::storage::{Storage, open_database};
use crate::types::TypeConfig;
use crate::types::alias::{Entry, LogId, Vote};

/// File name of the Raft log database inside a node's data directory.
pub const LOG_FILE: &str = "raft-log.redb";

/// Log entries by Raft log index.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Single records: vote, committed, last purged log id.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const LOG_NAME: &str = "raft_log";
const META_NAME: &str = "raft_meta";

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";

/// What [`LogStore::open`] found in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSummary {
    /// Number of entries present.
    pub entries: u64,
    /// Index of the first present entry.
    pub first_index: Option<u64>,
    /// Index of the last present entry.
    pub last_index: Option<u64>,
}

/// The Raft log store. Cloning is cheap; clones share the database (the
/// clone handed to openraft as its log reader included).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    io: crate::storage::Io,
}

fn log_key(index: u64) -> String {
    format!("log index {index}")
}

impl LogStore {
    /// Opens (or creates) the log in `dir` and verifies every record:
    /// checksums, decodability, key = entry index, no holes, and the first
    /// entry directly after the purge point. A corrupt file is an error
    /// naming the file and the index.
    pub fn open(dir: &Path) -> Result<LogStore, StoreError> {
        LogStore::open_on(&Storage::Files, dir)
    }

    /// [`LogStore::open`] on the given storage: files in `dir`, or the
    /// in-memory data directory of a simulated node (`dir` unused).
    pub fn open_on(storage: &Storage, dir: &Path) -> Result<LogStore, StoreError> {
        let (db, path) = open_database(storage, dir, LOG_FILE, |txn| {
            txn.open_table(LOG)?;
            txn.open_table(META)?;
            Ok(())
        })?;
        let store = LogStore {
            inner: Arc::new(Inner {
                db,
                path,
                io: crate::storage::Io::of(storage),
            }),
        };
        store.verify()?;
        Ok(store)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Re-reads and checks the whole file (see [`LogStore::open`]).
    pub fn verify(&self) -> Result<LogSummary, StoreError> {
        let file = self.path();
        let txn = self.inner.db.begin_read().ctx(file, "begin read")?;
        let meta = txn.open_table(META).ctx(file, "open table")?;
        let mut purged: Option<LogId> = None;
        for item in meta.iter().ctx(file, "scan")? {
            let (k, v) = item.ctx(file, "read")?;
            let key = k.value();
            let what = format!("key {key}");
            match key {
                KEY_VOTE => {
                    open_record::<Vote>(file, META_NAME, what, v.value())?;
                }
                KEY_COMMITTED => {
                    open_record::<Option<LogId>>(file, META_NAME, what, v.value())?;
                }
                KEY_PURGED => {
                    purged = Some(open_record::<LogId>(file, META_NAME, what, v.value())?);
                }
                _ => {
                    return Err(self.corrupt(META_NAME, what, "unknown key".into()));
                }
            }
        }
        let log = txn.open_table(LOG).ctx(file, "open table")?;
        let mut summary = LogSummary {
            entries: 0,
            first_index: None,
            last_index: None,
        };
        for item in log.iter().ctx(file, "scan")? {
            let (k, v) = item.ctx(file, "read")?;
            let index = k.value();
            let entry: Entry = open_record(file, LOG_NAME, log_key(index), v.value())?;
            if entry.log_id.index != index {
                return Err(self.corrupt(
                    LOG_NAME,
                    log_key(index),
                    format!("holds the entry of index {}", entry.log_id.index),
                ));
            }
            let expected = match summary.last_index {
                Some(last) => last.checked_add(1),
                None => purged.and_then(|p| p.index.checked_add(1)),
            };
            if let Some(expected) = expected
                && index != expected
            {
                return Err(self.corrupt(
                    LOG_NAME,
                    log_key(index),
                    format!("hole in the log: expected index {expected} next"),
                ));
            }
            summary.first_index.get_or_insert(index);
            summary.last_index = Some(index);
            summary.entries += 1;
        }
        Ok(summary)
    }

    fn corrupt(&self, table: &'static str, key: String, message: String) -> StoreError {
        StoreError::Corrupt {
            file: self.path().to_path_buf(),
            table,
            key,
            message,
        }
    }

    /// Appends entries durably: returns once they are fsynced. Used by the
    /// openraft `append` and directly by the crash-safety test helper.
    pub fn append_durable(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let file = self.path();
        let txn = begin_durable(&self.inner.db, file)?;
        {
            let mut log = txn.open_table(LOG).ctx(file, "open table")?;
            for e in entries {
                let index = e.log_id.index;
                let rec = make_record(file, LOG_NAME, log_key(index), e)?;
                log.insert(index, rec.as_slice())
                    .ctx(file, "insert entry")?;
            }
        }
        txn.commit().ctx(file, "commit append")
    }

    /// Reads the entries whose index lies in `range`, in order.
    pub fn read_entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, StoreError> {
        let file = self.path();
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        if is_empty_range(start, end) {
            return Ok(Vec::new());
        }
        let txn = self.inner.db.begin_read().ctx(file, "begin read")?;
        let log = txn.open_table(LOG).ctx(file, "open table")?;
        let mut out = Vec::new();
        for item in log.range::<u64>((start, end)).ctx(file, "range")? {
            let (k, v) = item.ctx(file, "read")?;
            out.push(open_record(file, LOG_NAME, log_key(k.value()), v.value())?);
        }
        Ok(out)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StoreError> {
        let file = self.path();
        let txn = self.inner.db.begin_read().ctx(file, "begin read")?;
        let log = txn.open_table(LOG).ctx(file, "open table")?;
        match log.last().ctx(file, "read last")? {
            None => Ok(None),
            Some((k, v)) => {
                let e: Entry = open_record(file, LOG_NAME, log_key(k.value()), v.value())?;
                Ok(Some(e.log_id))
            }
        }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let file = self.path();
        let txn = self.inner.db.begin_read().ctx(file, "begin read")?;
        let meta = txn.open_table(META).ctx(file, "open table")?;
        match meta.get(key).ctx(file, "read")? {
            None => Ok(None),
            Some(v) => Ok(Some(open_record(
                file,
                META_NAME,
                format!("key {key}"),
                v.value(),
            )?)),
        }
    }

    fn write_meta<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let file = self.path();
        let rec = make_record(file, META_NAME, format!("key {key}"), value)?;
        let txn = begin_durable(&self.inner.db, file)?;
        {
            let mut meta = txn.open_table(META).ctx(file, "open table")?;
            meta.insert(key, rec.as_slice()).ctx(file, "insert")?;
        }
        txn.commit().ctx(file, "commit")
    }

    /// Deletes every entry with index > `after` (all of them for None).
    fn truncate_durable(&self, after: Option<u64>) -> Result<(), StoreError> {
        let file = self.path();
        let txn = begin_durable(&self.inner.db, file)?;
        {
            let mut log = txn.open_table(LOG).ctx(file, "open table")?;
            let start = match after {
                Some(i) => Bound::Excluded(i),
                None => Bound::Unbounded,
            };
            log.retain_in::<u64, _>((start, Bound::Unbounded), |_, _| false)
                .ctx(file, "truncate")?;
        }
        txn.commit().ctx(file, "commit truncate")
    }

    /// Records the purge point and deletes every entry up to it, atomically.
    fn purge_durable(&self, upto: &LogId) -> Result<(), StoreError> {
        let file = self.path();
        let rec = make_record(file, META_NAME, format!("key {KEY_PURGED}"), upto)?;
        let txn = begin_durable(&self.inner.db, file)?;
        {
            let mut meta = txn.open_table(META).ctx(file, "open table")?;
            meta.insert(KEY_PURGED, rec.as_slice())
                .ctx(file, "insert")?;
            let mut log = txn.open_table(LOG).ctx(file, "open table")?;
            log.retain_in::<u64, _>(..=upto.index, |_, _| false)
                .ctx(file, "purge")?;
        }
        txn.commit().ctx(file, "commit purge")
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LogStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, io::Error> {
        self.inner.io.clone().run(self.clone(), f).await
    }
}

fn is_empty_range(start: Bound<u64>, end: Bound<u64>) -> bool {
    let lo = match start {
        Bound::Included(s) => s,
        Bound::Excluded(s) => match s.checked_add(1) {
            Some(s) => s,
            None => return true,
        },
        Bound::Unbounded => 0,
    };
    match end {
        Bound::Included(e) => e < lo,
        Bound::Excluded(e) => e <= lo,
        Bound::Unbounded => false,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.read_entries(range)?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.read_meta(KEY_VOTE)?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.read_meta(KEY_PURGED)?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let vote = *vote;
        self.blocking(move |s| s.write_meta(KEY_VOTE, &vote)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.blocking(move |s| s.write_meta(KEY_COMMITTED, &committed))
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.read_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // Durable before the callback: append_durable commits with
        // Durability::Immediate.
        let res = self.blocking(move |s| s.append_durable(&entries)).await;
        match res {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let after = last_log_id.map(|l| l.index);
        self.blocking(move |s| s.truncate_durable(after)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.blocking(move |s| s.purge_durable(&log_id)).await
    }
}
