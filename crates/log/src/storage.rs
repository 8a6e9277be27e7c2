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
    /// Simulated latency of every store operation, microseconds (a slow
    /// disk), waited on `tokio::time` before the operation runs.
    latency_us: Arc<std::sync::atomic::AtomicU64>,
}

impl fmt::Debug for MemStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        let open: Vec<&String> = disks
            .iter()
            .filter(|(_, d)| d.open.load(Ordering::Acquire))
            .map(|(k, _)| k)
            .collect();
        f.debug_struct("MemStorage")
            .field("files", &disks.keys().collect::<Vec<_>>())
            .field("open", &open)
            .finish()
    }
}

impl MemStorage {
    /// An empty in-memory data directory.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Makes every store operation on this "disk" take `latency` (virtual
    /// time under a paused clock): a slow disk, for simulations.
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.latency_us.store(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The simulated latency of one store operation.
    pub fn latency(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.latency_us.load(Ordering::Relaxed))
    }

    /// The process that held these databases died: whatever of it still
    /// runs can no longer read or write them (its I/O fails), and the next
    /// life may open them at once. What was committed stays.
    pub fn crash(&self) {
        let disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        for d in disks.values() {
            d.life.fetch_add(1, Ordering::AcqRel);
            d.open.store(false, Ordering::Release);
        }
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
    /// Bumped by [`MemStorage::crash`]: handles of an older life fail.
    life: std::sync::atomic::AtomicU64,
}

/// The backend handed to redb: delegates to the shared [`MemDisk`] and
/// releases it when redb closes the database. It belongs to one life of
/// the node: after a crash it refuses all I/O.
#[derive(Debug)]
struct MemDiskHandle(Arc<MemDisk>, u64);

impl MemDiskHandle {
    fn alive(&self) -> Result<&InMemoryBackend, BackendIoError> {
        if self.0.life.load(Ordering::Acquire) == self.1 {
            Ok(&self.0.bytes)
        } else {
            Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the node crashed: this disk belongs to its next life",
            ))
        }
    }
}

impl StorageBackend for MemDiskHandle {
    fn len(&self) -> Result<u64, BackendIoError> {
        self.alive()?.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendIoError> {
        self.alive()?.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), BackendIoError> {
        self.alive()?.set_len(len)
    }

    fn sync_data(&self) -> Result<(), BackendIoError> {
        self.alive()?.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendIoError> {
        self.alive()?.write(offset, data)
    }

    fn close(&self) -> Result<(), BackendIoError> {
        if self.0.life.load(Ordering::Acquire) == self.1 {
            self.0.open.store(false, Ordering::Release);
        }
        Ok(())
    }
}

/// How a store runs its (synchronous) redb operations.
#[derive(Debug, Clone)]
pub(crate) enum Io {
    /// On tokio's blocking thread pool (files: fsync blocks).
    Pool,
    /// Inline on the calling task, after the disk's simulated latency:
    /// memory never blocks, and a simulation must not depend on the
    /// timing of OS threads.
    Inline(MemStorage),
}

impl Io {
    pub(crate) fn of(storage: &Storage) -> Io {
        match storage {
            Storage::Files => Io::Pool,
            Storage::Memory(m) => Io::Inline(m.clone()),
        }
    }

    /// Runs `f` as this storage wants it run.
    pub(crate) async fn run<S, T>(
        &self,
        this: S,
        f: impl FnOnce(&S) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, io::Error>
    where
        S: Send + 'static,
        T: Send + 'static,
    {
        match self {
            Io::Pool => tokio::task::spawn_blocking(move || f(&this))
                .await
                .map_err(io::Error::other)?
                .map_err(io::Error::from),
            Io::Inline(mem) => {
                let latency = mem.latency();
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                f(&this).map_err(io::Error::from)
            }
        }
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
                .create_with_backend(MemDiskHandle(
                    disk.clone(),
                    disk.life.load(Ordering::Acquire),
                ))
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
