//! RecordIO framing (`<decimal length>\n<payload>`) used by the Mesos v1
//! scheduler and executor event streams.
//!
//! HTTP chunk boundaries mean nothing: a record may be split across chunks and
//! one chunk may carry several records, so the [`Decoder`] is incremental. It
//! refuses length prefixes above a configured maximum *before* allocating, so a
//! hostile or corrupt stream (e.g. a length of 10 GB) cannot exhaust memory.

use thiserror::Error;

/// Default largest record the decoder accepts, in bytes (16 MiB). Mesos events
/// are far smaller; OFFERS for a large cluster stay well under this.
pub const RECORD_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;

/// Longest accepted length prefix, in ASCII digits. `u64::MAX` has 20 digits;
/// anything longer is garbage and is refused without buffering it.
pub const LENGTH_PREFIX_DIGITS_MAX: usize = 20;

/// Why a RecordIO byte stream could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RecordIoError {
    /// A byte other than an ASCII digit or LF appeared in a length prefix.
    #[error("recordio: invalid byte 0x{byte:02x} in length prefix at stream offset {offset}")]
    InvalidPrefixByte {
        /// The offending byte.
        byte: u8,
        /// Offset of the byte from the start of the stream.
        offset: u64,
    },
    /// The length prefix had more digits than any valid length.
    #[error(
        "recordio: length prefix longer than {LENGTH_PREFIX_DIGITS_MAX} digits at stream offset {offset}"
    )]
    PrefixTooLong {
        /// Offset of the start of the prefix.
        offset: u64,
    },
    /// An LF without any digit before it.
    #[error("recordio: empty length prefix at stream offset {offset}")]
    EmptyPrefix {
        /// Offset of the LF.
        offset: u64,
    },
    /// The record is larger than the configured maximum.
    #[error(
        "recordio: record of {length} bytes exceeds the limit of {record_bytes_max} bytes (stream offset {offset})"
    )]
    RecordTooLarge {
        /// Announced length.
        length: u64,
        /// Configured limit.
        record_bytes_max: usize,
        /// Offset of the start of the prefix.
        offset: u64,
    },
    /// The stream ended inside a record.
    #[error("recordio: stream ended inside a record ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the incomplete record that were received.
        buffered: usize,
    },
    /// A previous error poisoned the decoder; the stream cannot be resynchronised.
    #[error("recordio: decoder already failed: {0}")]
    Poisoned(Box<RecordIoError>),
}

/// Frames one payload as a RecordIO record.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 12);
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload);
    out
}

/// Incremental RecordIO decoder: feed it arbitrary chunks, get whole records.
#[derive(Debug)]
pub struct Decoder {
    record_bytes_max: usize,
    /// Digits of the length prefix being read.
    prefix: Vec<u8>,
    /// Start offset of the current prefix (for error messages).
    prefix_offset: u64,
    /// Length of the record whose payload is being read, if past the prefix.
    pending: Option<usize>,
    payload: Vec<u8>,
    offset: u64,
    failed: Option<RecordIoError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(RECORD_BYTES_MAX_DEFAULT)
    }
}

impl Decoder {
    /// A decoder that refuses records longer than `record_bytes_max` bytes.
    pub fn new(record_bytes_max: usize) -> Self {
        Decoder {
            record_bytes_max,
            prefix: Vec::with_capacity(LENGTH_PREFIX_DIGITS_MAX),
            prefix_offset: 0,
            pending: None,
            payload: Vec::new(),
            offset: 0,
            failed: None,
        }
    }

    /// Feeds the next chunk and returns every record it completed, in order.
    /// Zero-length records are tolerated and skipped (Mesos never sends them).
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<Vec<Vec<u8>>, RecordIoError> {
        if let Some(err) = &self.failed {
            return Err(RecordIoError::Poisoned(Box::new(err.clone())));
        }
        let mut records = Vec::new();
        while !chunk.is_empty() {
            match self.pending {
                Some(length) => {
                    let take = (length - self.payload.len()).min(chunk.len());
                    self.payload.extend_from_slice(&chunk[..take]);
                    chunk = &chunk[take..];
                    self.offset += take as u64;
                    if self.payload.len() == length {
                        records.push(std::mem::take(&mut self.payload));
                        self.pending = None;
                        self.prefix_offset = self.offset;
                    }
                }
                None => {
                    let byte = chunk[0];
                    chunk = &chunk[1..];
                    let at = self.offset;
                    self.offset += 1;
                    if let Err(err) = self.prefix_byte(byte, at) {
                        self.failed = Some(err.clone());
                        return Err(err);
                    }
                    if self.pending == Some(0) {
                        self.pending = None;
                        self.prefix_offset = self.offset;
                    }
                }
            }
        }
        Ok(records)
    }

    fn prefix_byte(&mut self, byte: u8, at: u64) -> Result<(), RecordIoError> {
        match byte {
            b'0'..=b'9' => {
                if self.prefix.len() >= LENGTH_PREFIX_DIGITS_MAX {
                    return Err(RecordIoError::PrefixTooLong {
                        offset: self.prefix_offset,
                    });
                }
                self.prefix.push(byte);
                Ok(())
            }
            b'\n' => {
                if self.prefix.is_empty() {
                    return Err(RecordIoError::EmptyPrefix { offset: at });
                }
                let length = self.prefix.iter().try_fold(0u64, |acc, d| {
                    acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
                });
                self.prefix.clear();
                let too_large = |length| RecordIoError::RecordTooLarge {
                    length,
                    record_bytes_max: self.record_bytes_max,
                    offset: self.prefix_offset,
                };
                let length = length.ok_or_else(|| too_large(u64::MAX))?;
                if length > self.record_bytes_max as u64 {
                    return Err(too_large(length));
                }
                // Reserve at most what is already known to be needed soon; the
                // payload grows as bytes arrive, never from the prefix alone.
                self.payload = Vec::new();
                self.pending = Some(length as usize);
                Ok(())
            }
            other => Err(RecordIoError::InvalidPrefixByte {
                byte: other,
                offset: at,
            }),
        }
    }

    /// Declares the end of the stream; fails if it ended inside a record.
    pub fn finish(&self) -> Result<(), RecordIoError> {
        if let Some(err) = &self.failed {
            return Err(RecordIoError::Poisoned(Box::new(err.clone())));
        }
        let buffered = self.prefix.len() + self.payload.len();
        if self.pending.is_some() || !self.prefix.is_empty() {
            return Err(RecordIoError::Truncated { buffered });
        }
        Ok(())
    }

    /// Bytes currently held for an incomplete record.
    pub fn buffered_bytes(&self) -> usize {
        self.prefix.len() + self.payload.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_reference_example() {
        let stream = b"104\n{\"type\":\"SUBSCRIBED\",\"subscribed\":{\"framework_id\":{\"value\":\"f-0000\"},\"heartbeat_interval_seconds\":15.0}}20\n{\"type\":\"HEARTBEAT\"}";
        let mut d = Decoder::default();
        let recs = d.feed(stream).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1], b"{\"type\":\"HEARTBEAT\"}");
        d.finish().unwrap();
    }

    #[test]
    fn refuses_ten_gigabyte_prefix_without_allocating() {
        let mut d = Decoder::new(RECORD_BYTES_MAX_DEFAULT);
        let err = d.feed(b"10000000000\n{").unwrap_err();
        assert!(
            matches!(
                err,
                RecordIoError::RecordTooLarge {
                    length: 10_000_000_000,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(d.buffered_bytes(), 0);
        assert!(matches!(d.feed(b"1\nx"), Err(RecordIoError::Poisoned(_))));
    }

    #[test]
    fn refuses_garbage_and_overlong_prefixes() {
        assert!(matches!(
            Decoder::default().feed(b"12a\n"),
            Err(RecordIoError::InvalidPrefixByte {
                byte: b'a',
                offset: 2
            })
        ));
        assert!(matches!(
            Decoder::default().feed(b"\n"),
            Err(RecordIoError::EmptyPrefix { .. })
        ));
        assert!(matches!(
            Decoder::default().feed(&[b'9'; 30]),
            Err(RecordIoError::PrefixTooLong { .. })
        ));
        assert!(matches!(
            Decoder::default().feed(b"99999999999999999999\n"),
            Err(RecordIoError::RecordTooLarge { .. })
        ));
    }

    #[test]
    fn truncated_stream_is_reported() {
        let mut d = Decoder::default();
        assert!(d.feed(b"5\nab").unwrap().is_empty());
        assert_eq!(d.finish(), Err(RecordIoError::Truncated { buffered: 2 }));
    }

    proptest! {
        #[test]
        fn any_chunking_yields_the_same_records(
            records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..200), 0..20),
            cuts in proptest::collection::vec(0usize..4000, 0..30),
        ) {
            let stream: Vec<u8> = records.iter().flat_map(|r| encode(r)).collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut d = Decoder::default();
            let mut out = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain(std::iter::once(stream.len())) {
                out.extend(d.feed(&stream[start..cut]).unwrap());
                start = cut;
            }
            d.finish().unwrap();
            prop_assert_eq!(out, records);
        }

        #[test]
        fn garbage_never_panics_and_stays_bounded(
            garbage in proptest::collection::vec(any::<u8>(), 0..2000),
            chunk in 1usize..64,
        ) {
            let record_bytes_max = 1024;
            let mut d = Decoder::new(record_bytes_max);
            for piece in garbage.chunks(chunk) {
                match d.feed(piece) {
                    Ok(recs) => for r in recs { prop_assert!(r.len() <= record_bytes_max) },
                    Err(_) => break,
                }
                prop_assert!(d.buffered_bytes() <= record_bytes_max + LENGTH_PREFIX_DIGITS_MAX);
            }
        }

        /// Structure-aware: well-framed records whose payloads are mutated
        /// Mesos events, decoded as the driver decodes them: errors, never
        /// a panic.
        #[test]
        fn framed_mutated_events_decode_or_fail_cleanly(
            picks in proptest::collection::vec((0usize..4, any::<u16>(), any::<u8>()), 1..12),
        ) {
            let samples: [&[u8]; 4] = [
                br#"{"type":"SUBSCRIBED","subscribed":{"framework_id":{"value":"f"},"heartbeat_interval_seconds":15.0}}"#,
                br#"{"type":"OFFERS","offers":{"offers":[{"id":{"value":"o"},"framework_id":{"value":"f"},"agent_id":{"value":"a"},"hostname":"h","resources":[{"name":"cpus","type":"SCALAR","scalar":{"value":1.0}}]}]}}"#,
                br#"{"type":"UPDATE","update":{"status":{"task_id":{"value":"t"},"state":"TASK_RUNNING","uuid":"AAAA"}}}"#,
                br#"{"type":"HEARTBEAT"}"#,
            ];
            let mut stream = Vec::new();
            for (k, at, byte) in &picks {
                let mut payload = samples[*k].to_vec();
                let at = *at as usize % payload.len();
                payload[at] = *byte;
                stream.extend(encode(&payload));
            }
            let mut d = Decoder::default();
            for rec in d.feed(&stream).unwrap() {
                let _ = serde_json::from_slice::<crate::types::scheduler::Event>(&rec);
            }
            d.finish().unwrap();
        }
    }
}
