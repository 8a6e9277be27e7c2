//! `kaon cluster backup FILE` and `kaon cluster restore FILE --data-dir D`.
//!
//! A backup is the event archive up to an index the cluster committed:
//! everything kaon knows is derived from it (brief 4.1), so state,
//! schedules, runs and the hash chain all come back by replaying it. It is
//! read from a running cluster with a linearizable `ReadEvents` (the same
//! stream `kaon audit` reads), so it is a consistent prefix of the log; the
//! cluster keeps running meanwhile.
//!
//! The file (format version 1):
//!
//! ```text
//! KAON-BACKUP 1\n
//! {"format_version":1,"events":N,"chain_head":"..","state_digest":"..",...}\n
//! N x (u32 big-endian length, encoded kaon.events.v1.Event)
//! SHA-256 of every byte above (32 bytes)
//! ```
//!
//! The header says what to expect; the checksum catches a torn or altered
//! file before anything is written; the replay on restore recomputes the
//! chain head and the state digest and compares them with the header's.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::audit::{Source, each_event};
use crate::client::{Opts, status_error};

/// First line of every backup file.
const MAGIC: &[u8] = b"KAON-BACKUP 1\n";
/// The format this version writes and reads.
const FORMAT_VERSION: u64 = 1;
/// Longest header line accepted, bytes.
const HEADER_BYTES_MAX: usize = 1 << 20;
/// Largest single event accepted, bytes (events are far smaller: a spec is
/// bounded by the API's message size).
const EVENT_BYTES_MAX: usize = 64 << 20;

/// What the header records.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u64,
    /// Events in the file (1..=events).
    pub events: u64,
    /// Hash-chain head after the last event (hex).
    pub chain_head: String,
    /// Digest of the state the events build (hex).
    pub state_digest: String,
    /// Time of the last event, unix ms.
    pub last_event_unix_ms: i64,
    /// When the backup was taken, unix ms.
    pub created_unix_ms: i64,
    /// The members of the cluster it was taken from: (id, raft address).
    pub members: Vec<(u64, String)>,
    /// The kaon version that wrote it.
    pub kaon_version: String,
}

/// `kaon cluster backup FILE`.
pub async fn backup(o: &Opts, file: &Path) -> anyhow::Result<ExitCode> {
    let status = o
        .client()?
        .call(
            kaon_api::v1::ClusterStatusRequest {},
            |mut k, r| async move { k.cluster_status(r).await },
        )
        .await
        .map_err(status_error)?;
    let mut events: Vec<Vec<u8>> = Vec::new();
    let end = each_event(&Source::Live(o), 1, None, |bytes, _| {
        events.push(bytes.to_vec());
        Ok(())
    })
    .await?;
    // The events are checked before they are kept: they must rebuild the
    // chain head the cluster reported.
    let state = kaon_log::restore::replay(&events)
        .map_err(|e| anyhow::anyhow!("the events read do not replay: {e}"))?;
    let head = kaon_core::decide::hex(&state.chain);
    anyhow::ensure!(
        state.applied_index == end.last_index && head == end.head,
        "the events read ({} events, chain head {head}) are not what the cluster reported \
         ({} events, head {}); try again",
        state.applied_index,
        end.last_index,
        end.head
    );
    let header = Header {
        format_version: FORMAT_VERSION,
        events: state.applied_index,
        chain_head: head,
        state_digest: kaon_core::decide::hex(&state.digest()),
        last_event_unix_ms: state.last_event_ms,
        created_unix_ms: chrono::Utc::now().timestamp_millis(),
        members: status
            .members
            .iter()
            .map(|m| (m.id, m.raft_addr.clone()))
            .collect(),
        kaon_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let bytes = write_atomically(file, &header, &events)?;
    if o.json {
        println!(
            "{}",
            serde_json::json!({"file": file.display().to_string(), "bytes": bytes, "header": header})
        );
    } else {
        println!(
            "backed up {} events ({} bytes) to {}: chain head {}, state digest {}",
            header.events,
            bytes,
            file.display(),
            header.chain_head,
            header.state_digest
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the backup to `FILE.tmp`, syncs it, renames it over `file` and
/// syncs the directory: a crash leaves the old file or the new one, never
/// a torn one under the name. Returns the bytes written.
fn write_atomically(file: &Path, header: &Header, events: &[Vec<u8>]) -> anyhow::Result<u64> {
    // FILE.tmp beside it (not FILE with its extension replaced: a backup
    // named x.tmp must not be its own temporary file).
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = HashingWriter {
        inner: std::io::BufWriter::new(f),
        hash: Sha256::new(),
        bytes: 0,
    };
    let write = |w: &mut HashingWriter| -> std::io::Result<()> {
        w.write_all(MAGIC)?;
        w.write_all(&serde_json::to_vec(header)?)?;
        w.write_all(b"\n")?;
        for e in events {
            w.write_all(&(e.len() as u32).to_be_bytes())?;
            w.write_all(e)?;
        }
        Ok(())
    };
    write(&mut w).with_context(|| format!("writing {}", tmp.display()))?;
    let sum = w.hash.finalize();
    let mut inner = w.inner;
    inner.write_all(&sum)?;
    let f = inner
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing {}: {}", tmp.display(), e.error()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, file)
        .with_context(|| format!("renaming {} to {}", tmp.display(), file.display()))?;
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))?;
    Ok(w.bytes + sum.len() as u64)
}

struct HashingWriter {
    inner: std::io::BufWriter<std::fs::File>,
    hash: Sha256,
    bytes: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads and checks a backup file: magic, version, checksum, the events
/// the header announces. The error says what is wrong and where.
pub fn read(file: &Path) -> anyhow::Result<(Header, Vec<Vec<u8>>)> {
    let mut data = Vec::new();
    std::fs::File::open(file)
        .and_then(|mut f| f.read_to_end(&mut data))
        .with_context(|| format!("reading {}", file.display()))?;
    let name = file.display();
    anyhow::ensure!(
        data.starts_with(MAGIC),
        "{name} is not a kaon backup (it does not start with {:?})",
        String::from_utf8_lossy(MAGIC).trim_end()
    );
    anyhow::ensure!(
        data.len() >= MAGIC.len() + 32,
        "{name} is truncated: {} bytes",
        data.len()
    );
    let (body, sum) = data.split_at(data.len() - 32);
    anyhow::ensure!(
        Sha256::digest(body).as_slice() == sum,
        "{name} is damaged: its SHA-256 checksum does not match its contents \
         (a truncated copy, or an altered file)"
    );
    let rest = &body[MAGIC.len()..];
    let nl = rest
        .iter()
        .take(HEADER_BYTES_MAX)
        .position(|b| *b == b'\n')
        .with_context(|| format!("{name}: no header line"))?;
    let header: Header = serde_json::from_slice(&rest[..nl])
        .with_context(|| format!("{name}: the header does not parse"))?;
    anyhow::ensure!(
        header.format_version == FORMAT_VERSION,
        "{name} is backup format {}; this kaon ({}) reads format {FORMAT_VERSION}",
        header.format_version,
        env!("CARGO_PKG_VERSION")
    );
    let mut at = &rest[nl + 1..];
    let mut events = Vec::with_capacity(header.events.min(1 << 24) as usize);
    while !at.is_empty() {
        let index = events.len() + 1;
        anyhow::ensure!(at.len() >= 4, "{name}: event {index} is cut short");
        let len = u32::from_be_bytes(at[..4].try_into().expect("4 bytes")) as usize;
        anyhow::ensure!(
            len <= EVENT_BYTES_MAX && at.len() >= 4 + len,
            "{name}: event {index} claims {len} bytes, {} remain",
            at.len() - 4
        );
        events.push(at[4..4 + len].to_vec());
        at = &at[4 + len..];
    }
    anyhow::ensure!(
        events.len() as u64 == header.events,
        "{name} holds {} events, its header says {}",
        events.len(),
        header.events
    );
    Ok((header, events))
}

/// `kaon cluster restore FILE --data-dir D`.
pub fn restore(
    file: &Path,
    data_dir: &Path,
    node_id: u64,
    raft_addr: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (header, events) = read(file)?;
    let state = kaon_log::restore::replay(&events)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let (head, digest) = (
        kaon_core::decide::hex(&state.chain),
        kaon_core::decide::hex(&state.digest()),
    );
    // Checked before anything is written: the events must rebuild what
    // the header recorded when the backup was taken.
    anyhow::ensure!(
        head == header.chain_head && digest == header.state_digest,
        "{}: the events rebuild chain head {head} and state digest {digest}, but the header \
         records {} and {}: nothing was written",
        file.display(),
        header.chain_head,
        header.state_digest,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dir = data_dir.join("raft");
    let r = rt
        .block_on(kaon_log::restore::restore(
            &dir, node_id, raft_addr, state, events,
        ))
        .map_err(|e| anyhow::anyhow!("restoring {} into {}: {e}", file.display(), dir.display()))?;
    assert_eq!(
        kaon_core::decide::hex(&r.digest),
        digest,
        "the restored node holds the replayed state"
    );
    if json {
        println!(
            "{}",
            serde_json::json!({"data_dir": data_dir.display().to_string(), "node_id": node_id,
                "raft_addr": raft_addr, "events": r.events, "chain_head": head, "state_digest": digest})
        );
    } else {
        println!(
            "restored {} events into {} (node {node_id}, raft address {raft_addr}): chain head \
             {head}, state digest {digest}\nstart it: kaon server --node-id {node_id} --data-dir {} \
             --raft-listen {raft_addr} --mesos-master URL; add nodes with `kaon cluster add-node`",
            r.events,
            data_dir.display(),
            data_dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
