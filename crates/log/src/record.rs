//! Checksummed records and database creation shared by both stores.
//!
//! Every value kaon-log writes to redb is `crc32c (u32, little endian) ||
//! payload`. redb protects its own page structure; the record checksum
//! catches a flipped bit inside a value (disk or filesystem corruption, a
//! bad copy) when the store is opened, instead of feeding a silently
//! damaged Raft entry or event to a replica.

use std::fmt::Display;
use std::fs;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::StoreError;

/// Bytes of the checksum prefix of every record.
const CHECKSUM_BYTES: usize = 4;

/// Adds redb context (file, operation) to any redb error.
pub(crate) trait DbCtx<T> {
    fn ctx(self, file: &Path, op: &'static str) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> DbCtx<T> for Result<T, E> {
    fn ctx(self, file: &Path, op: &'static str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::db(file, op)(e.into()))
    }
}

/// Prefixes `payload` with its crc32c.
pub(crate) fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHECKSUM_BYTES + payload.len());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks a record's checksum and returns its payload.
pub(crate) fn unseal<'a>(
    file: &Path,
    table: &'static str,
    key: impl Display,
    record: &'a [u8],
) -> Result<&'a [u8], StoreError> {
    if record.len() < CHECKSUM_BYTES {
        return Err(StoreError::Corrupt {
            file: file.to_path_buf(),
            table,
            key: key.to_string(),
            message: format!("record of {} bytes has no checksum", record.len()),
        });
    }
    let (sum, payload) = record.split_at(CHECKSUM_BYTES);
    let stored = u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]);
    let computed = crc32c::crc32c(payload);
    if stored != computed {
        return Err(StoreError::Checksum {
            file: file.to_path_buf(),
            table,
            key: key.to_string(),
            stored,
            computed,
        });
    }
    Ok(payload)
}

/// bincode configuration for internal records (openraft's types).
fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes an internal (openraft) value compactly.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(value, bincode_config())
}

/// Decodes an internal value; trailing bytes are an error.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (v, used) =
        bincode::serde::decode_from_slice(bytes, bincode_config()).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - used));
    }
    Ok(v)
}

/// Unseals and decodes one record.
pub(crate) fn open_record<T: DeserializeOwned>(
    file: &Path,
    table: &'static str,
    key: impl Display,
    record: &[u8],
) -> Result<T, StoreError> {
    let payload = unseal(file, table, &key, record)?;
    decode(payload).map_err(|message| StoreError::Corrupt {
        file: file.to_path_buf(),
        table,
        key: key.to_string(),
        message: format!("cannot decode: {message}"),
    })
}

/// Encodes and seals one record.
pub(crate) fn make_record<T: Serialize>(
    file: &Path,
    table: &'static str,
    key: impl Display,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    let payload = encode(value).map_err(|e| StoreError::Corrupt {
        file: file.to_path_buf(),
        table,
        key: key.to_string(),
        message: format!("cannot encode: {e}"),
    })?;
    Ok(seal(&payload))
}

/// Begins a write transaction that is durable (fsynced) when `commit`
/// returns: the Raft log may only acknowledge what is on disk.
pub(crate) fn begin_durable(db: &Database, file: &Path) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write().ctx(file, "begin write")?;
    txn.set_durability(Durability::Immediate)
        .ctx(file, "set durability")?;
    Ok(txn)
}

fn io_err(file: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    let file = file.to_path_buf();
    move |source| StoreError::Io { file, op, source }
}

/// Opens the database at `path`, creating it if absent.
///
/// A new database is created at `<path>.creating`, given its tables by
/// `init`, synced, renamed into place and the directory fsynced: a process
/// killed during creation leaves at most a stale `.creating` file (removed
/// on the next attempt), never a half-initialised database under the real
/// name.
pub(crate) fn create_or_open(
    path: &Path,
    init: impl FnOnce(&WriteTransaction) -> Result<(), redb::Error>,
) -> Result<Database, StoreError> {
    if !path.exists() {
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io_err(dir, "create directory"))?;
        let tmp: PathBuf = {
            let mut s = path.as_os_str().to_owned();
            s.push(".creating");
            s.into()
        };
        if tmp.exists() {
            fs::remove_file(&tmp).map_err(io_err(&tmp, "remove stale partial database"))?;
        }
        {
            let db = Database::create(&tmp).ctx(&tmp, "create database")?;
            let txn = begin_durable(&db, &tmp)?;
            init(&txn).ctx(&tmp, "create tables")?;
            txn.commit().ctx(&tmp, "commit new tables")?;
        }
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&tmp, "fsync new database"))?;
        fs::rename(&tmp, path).map_err(io_err(path, "rename new database into place"))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir, "fsync directory"))?;
    }
    Database::open(path).ctx(path, "open database")
}
