//! Hostile requests against a real `kaon server` (issue 9 D): bytes that are
//! not a message, a template bomb, and a seeded stream of random requests to
//! the read, submit and run handlers. The server must answer each with a
//! clear error (never INTERNAL, never a crash) and keep serving.

mod common;

use std::time::{Duration, Instant};

use common::start_server;
use kaon_api::v1;
use tonic::Code;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Sends and receives raw bytes, so a test can put anything on the wire.
#[derive(Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

async fn raw_call(url: &str, method: &str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connects");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_maybe_shared(format!("/kaon.v1.Kaon/{method}"))
        .expect("path");
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(|r| r.into_inner())
}

/// Bytes that no protobuf message decodes from: a truncated varint, a
/// field with wire type 7, a length running past the end.
const GARBAGE: &[&[u8]] = &[
    &[0x08],
    &[0x0f, 0x01],
    &[0x12, 0x7f, b'x'],
    &[
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ],
];

#[test]
fn garbage_bytes_are_invalid_argument_on_every_method() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for method in [
            "SubmitRun",
            "GetRun",
            "ListRuns",
            "CancelRun",
            "RetryRun",
            "ReadStepLogs",
            "RegisterWorkflow",
            "SetSchedulePaused",
            "AddNode",
            "RemoveNode",
        ] {
            for bytes in GARBAGE {
                let err = raw_call(&server.url, method, bytes.to_vec())
                    .await
                    .expect_err("garbage is refused");
                assert_eq!(
                    err.code(),
                    Code::InvalidArgument,
                    "{method} with {bytes:?}: {err:?}"
                );
                assert!(
                    err.message().contains("not a valid protobuf"),
                    "{method}: {}",
                    err.message()
                );
            }
        }
        // And the server still serves.
        let status = kaon_harness::cluster_status(&server.url).await;
        assert!(status.is_some(), "the server answers after garbage");
    });
}

/// A 1.2 KB spec describing 11,111,111 steps is refused quickly over gRPC,
/// and the server that refused it still serves.
#[test]
fn a_template_bomb_is_refused_and_the_server_lives() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let src = include_str!("../../core/tests/fuzz-corpus/template-bomb.yaml");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let err = kaon_harness::submit(&server.url, src, "bomb")
            .await
            .expect_err("refused");
        assert!(err.starts_with("InvalidArgument"), "{err}");
        assert!(err.contains("steps_per_workflow_max"), "{err}");
        assert!(err.contains("\"t3\""), "{err}");
        assert!(
            kaon_harness::cluster_status(&server.url).await.is_some(),
            "the server answers after the bomb"
        );
    });
}

/// xorshift64*: a seeded stream of choices, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn text(&mut self) -> String {
        const PIECES: &[&str] = &[
            "",
            "a",
            "train#2/validate",
            "../../etc/passwd",
            "\u{0}",
            "ü",
            "%s%n",
            "${{ x }}",
            "steps",
            "-1",
            "99999999999999999999",
            " ",
            "\n",
            "stdout",
            "stderr",
            "succeeded",
        ];
        let n = self.below(4);
        (0..n)
            .map(|_| PIECES[self.below(PIECES.len() as u64) as usize])
            .collect()
    }
    /// Usually one of `valid`, sometimes random text: requests both pass
    /// and fail the handlers' checks.
    fn mostly(&mut self, valid: &[&str]) -> String {
        if self.below(3) == 0 {
            self.text()
        } else {
            valid[self.below(valid.len() as u64) as usize].to_string()
        }
    }
    fn id(&mut self) -> u64 {
        match self.below(4) {
            0 => 0,
            1 => u64::MAX,
            2 => self.below(5),
            _ => self.next(),
        }
    }
}

/// Random (well-formed) requests to the handlers an outside client reaches
/// most: each answer is OK or a client error, never INTERNAL or UNKNOWN, and
/// the server stays up. Seed from `KAON_FUZZ_SEED`, count from
/// `KAON_FUZZ_REQUESTS` (default 300; the longer run is a separate command
/// in the README).
#[test]
fn random_requests_get_answers_not_crashes() {
    let seed: u64 = std::env::var("KAON_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(9);
    let requests: u64 = std::env::var("KAON_FUZZ_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = kaon_harness::client(&server.url).await.expect("client");
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let started = Instant::now();
        let (mut ok, mut refused) = (0u64, 0u64);
        for i in 0..requests {
            let kind = rng.below(8);
            let result: Result<(), tonic::Status> = match kind {
                0 => c
                    .get_run(v1::GetRunRequest {
                        run_id: rng.id(),
                    })
                    .await
                    .map(drop),
                1 => c
                    .list_runs(v1::ListRunsRequest {
                        workflow: rng.mostly(&["", "f0", "f1"]),
                        status: rng.mostly(&["", "running", "succeeded", "failed"]),
                        page_size: rng.below(1_200) as u32,
                        page_token: rng.id(),
                    })
                    .await
                    .map(drop),
                2 => c
                    .read_step_logs(v1::ReadStepLogsRequest {
                        run_id: rng.id(),
                        step_path: rng.text(),
                        attempt: rng.below(3) as u32,
                        stream: rng.mostly(&["", "stdout", "stderr"]),
                        offset: rng.next() as i64 % 4_096,
                        ..Default::default()
                    })
                    .await
                    .map(drop),
                3 => c
                    .cancel_run(v1::CancelRunRequest {
                        run_id: rng.id(),
                        reason: rng.text(),
                    })
                    .await
                    .map(drop),
                4 => c
                    .retry_run(v1::RetryRunRequest {
                        run_id: rng.id(),
                        idempotency_key: rng.text(),
                    })
                    .await
                    .map(drop),
                5 => {
                    let spec = format!(
                        "apiVersion: kaon/v1\nname: f{}\nsteps:\n  a: {{shell: \"{}\", when: \"{}\"}}\n",
                        rng.below(3),
                        rng.mostly(&["true", "echo hi", "exit 3"]).escape_default(),
                        rng.mostly(&["true", "1 == 1", "false"]).escape_default()
                    );
                    c.submit_run(v1::SubmitRunRequest {
                        workflow: Some(v1::submit_run_request::Workflow::InlineSpec(spec)),
                        params_json: if rng.below(2) == 0 {
                            Default::default()
                        } else {
                            [(rng.text(), rng.text())].into_iter().collect()
                        },
                        idempotency_key: rng.text(),
                    })
                    .await
                    .map(drop)
                }
                6 => c
                    .submit_run(v1::SubmitRunRequest {
                        workflow: Some(v1::submit_run_request::Workflow::Registered(
                            v1::WorkflowRef {
                                name: rng.mostly(&["f0", "f1", "f2"]),
                                version: rng.below(3) as u32,
                            },
                        )),
                        params_json: Default::default(),
                        idempotency_key: String::new(),
                    })
                    .await
                    .map(drop),
                _ => c
                    .set_schedule_paused(v1::SetSchedulePausedRequest {
                        workflow: rng.mostly(&["f0", "f1"]),
                        index: rng.below(2) as u32,
                        paused: rng.below(2) == 0,
                    })
                    .await
                    .map(drop),
            };
            if result.is_ok() {
                ok += 1;
            }
            if let Err(e) = result {
                refused += 1;
                assert!(
                    !matches!(e.code(), Code::Internal | Code::Unknown | Code::Unavailable),
                    "seed {seed} request {i} (kind {kind}): {e:?}"
                );
            }
        }
        if requests >= 100 {
            assert!(
                ok > requests / 20 && refused > requests / 20,
                "the stream reaches both answers: {ok} ok, {refused} refused"
            );
        }
        assert!(
            kaon_harness::cluster_status(&server.url)
                .await
                .is_some(),
            "seed {seed}: the server answers after {requests} requests ({:?})",
            started.elapsed()
        );
    });
}
