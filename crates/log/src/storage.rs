//! Where a node's two redb databases live: files in its data directory
//! (production) or an in-memory "directory" handed in by a simulation.
//!
//! The storage is handed to [`crate::RaftNode::start`] in
//! [`crate::NodeConfig::storage`] rather than reached for, so the same node
//! code runs against disks in production and against memory when many
//! nodes share one test process. Both paths go through redb with the same
//! tables, checksummed records and `Durability::Immediate` transactions;
//! only the byte store under redb differs.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use redb::backends::InMemoryBackend;
use redb::{Database, StorageBackend, WriteTransaction};

/// The error type of redb's backend I/O methods (without its
/// `experimental-api-5` feature).
type BackendIoError = io::Error;

use crate::error::StoreError;
use crate::record::{DbCtx, begin_durable, create_or_open};

/// Where a node keeps `raft-log.redb` and `state.redb`.
#[derive(Debug, Clone, Default)]
pub enum Storage {
    /// Files in [`crate::NodeConfig::data_dir`], created atomically
    /// (temp file + rename + directory fsync) and written with
    /// `Durability::Immediate`. The default.
    #[default]
    Files,
    /// redb's in-memory backend, one per database, held by a
    /// [`MemStorage`] that outlives the node: a simulation can stop a node
    /// and start it again on the same `MemStorage` (a process crash with
    /// an intact disk), or drop it (a lost disk).
    Memory(MemStorage),
}

/// An in-memory data directory: one redb in-memory backend per database
/// file name, created on first open. Cloning shares the contents.
///
/// Writes are "durable" as soon as redb commits them (its `fsync` is a
/// no-op here), so this models a disk that never loses a committed
/// transaction; simulating torn or lost writes would need a backend that
/// buffers until `sync_data`.
#[derive(Clone, Default)]
pub struct MemStorage {
    disks: Arc<Mutex<BTreeMap<String, Arc<MemDisk>>>>,
}

impl fmt::Debug for MemStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("MemStorage")
            .field("files", &disks.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl MemStorage {
    /// An empty in-memory data directory.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    fn disk(&self, name: &str) -> Arc<MemDisk> {
        let mut disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        disks.entry(name.to_string()).or_default().clone()
    }
}

/// The bytes of one in-memory database plus an "open" flag, so that two
/// live `Database`s never share a backend (redb's file lock does that for
/// files; the in-memory backend has no locks).
#[derive(Debug, Default)]
struct MemDisk {
    bytes: InMemoryBackend,
    open: AtomicBool,
}

/// The backend handed to redb: delegates to the shared [`MemDisk`] and
/// releases it when redb closes the database.
#[derive(Debug)]
struct MemDiskHandle(Arc<MemDisk>);

impl StorageBackend for MemDiskHandle {
    fn len(&self) -> Result<u64, BackendIoError> {
        self.0.bytes.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendIoError> {
        self.0.bytes.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), BackendIoError> {
        self.0.bytes.set_len(len)
    }

    fn sync_data(&self) -> Result<(), BackendIoError> {
        self.0.bytes.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendIoError> {
        self.0.bytes.write(offset, data)
    }

    fn close(&self) -> Result<(), BackendIoError> {
        self.0.open.store(false, Ordering::Release);
        Ok(())
    }
}

/// Opens (creating if needed) database `file` of a node whose data
/// directory is `dir` on `storage`; `init` creates the tables of a new
/// database. Returns the database and the path errors should name (for
/// memory: `<memory>/<file>`).
pub(crate) fn open_database(
    storage: &Storage,
    dir: &Path,
    file: &str,
    init: impl FnOnce(&WriteTransaction) -> Result<(), redb::Error>,
) -> Result<(Database, PathBuf), StoreError> {
    match storage {
        Storage::Files => {
            let path = dir.join(file);
            let db = create_or_open(&path, init)?;
            Ok((db, path))
        }
        Storage::Memory(mem) => {
            let path = Path::new("<memory>").join(file);
            let disk = mem.disk(file);
            if disk.open.swap(true, Ordering::AcqRel) {
                return Err(StoreError::Io {
                    file: path,
                    op: "open database",
                    source: io::Error::new(
                        io::ErrorKind::ResourceBusy,
                        "in-memory database is already open (stop the node first)",
                    ),
                });
            }
            let fresh = disk.bytes.len().map(|n| n == 0).unwrap_or(true);
            // On failure redb calls `close`, which clears the open flag.
            let db = Database::builder()
                .create_with_backend(MemDiskHandle(disk))
                .ctx(&path, "open database")?;
            if fresh {
                let txn = begin_durable(&db, &path)?;
                init(&txn).ctx(&path, "create tables")?;
                txn.commit().ctx(&path, "commit new tables")?;
            }
            Ok((db, path))
        }
    }
}
