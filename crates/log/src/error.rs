//! Storage errors. Every error names the file it concerns and, for record
//! errors, the table and key (log index / event index), so an operator can
//! find the bad record.

use std::path::PathBuf;

/// A storage failure of the Raft log or the state machine store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A record's checksum does not match its bytes: the file is corrupt.
    #[error(
        "{}: table {table}, {key}: checksum mismatch (stored {stored:08x}, computed {computed:08x}); the file is corrupt",
        file.display()
    )]
    Checksum {
        /// Database file.
        file: PathBuf,
        /// Table name.
        table: &'static str,
        /// Which record (e.g. "log index 7", "event index 3", "key vote").
        key: String,
        /// Checksum stored with the record.
        stored: u32,
        /// Checksum of the bytes read.
        computed: u32,
    },
    /// A record is structurally wrong (too short, undecodable, wrong index,
    /// a hole in the log).
    #[error("{}: table {table}, {key}: {message}", file.display())]
    Corrupt {
        /// Database file.
        file: PathBuf,
        /// Table name.
        table: &'static str,
        /// Which record.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// redb failed.
    #[error("{}: {op}: {source}", file.display())]
    Db {
        /// Database file.
        file: PathBuf,
        /// What we were doing.
        op: &'static str,
        /// The redb error.
        #[source]
        source: Box<redb::Error>,
    },
    /// A file-system operation failed.
    #[error("{}: {op}: {source}", file.display())]
    Io {
        /// The path.
        file: PathBuf,
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Applying a committed event failed: the replica must stop.
    #[error("{}: {source}", file.display())]
    Apply {
        /// State machine database file.
        file: PathBuf,
        /// The core's error (names the event index).
        #[source]
        source: kaon_core::state::ApplyError,
    },
    /// A snapshot could not be used.
    #[error("{}: snapshot: {message}", file.display())]
    Snapshot {
        /// State machine database file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl StoreError {
    /// The database is held by another process (a running node): redb's
    /// file lock refused it.
    pub fn is_in_use(&self) -> bool {
        matches!(self, StoreError::Db { source, .. }
            if matches!(**source, redb::Error::DatabaseAlreadyOpen))
    }

    /// Wraps a redb error with the file and operation.
    pub(crate) fn db(file: &std::path::Path, op: &'static str) -> impl FnOnce(redb::Error) -> Self {
        let file = file.to_path_buf();
        move |e| StoreError::Db {
            file,
            op,
            source: Box::new(e),
        }
    }
}

impl From<StoreError> for std::io::Error {
    fn from(e: StoreError) -> Self {
        std::io::Error::other(e)
    }
}
