//! Driver against a scripted fake master: garbage streams, records split
//! into 1-byte chunks, unknown event types, and a stream that goes silent.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use futures_util::StreamExt as _;
use kaon_mesos::driver::{Driver, DriverConfig, DriverEvent};
use kaon_mesos::recordio::encode;
use kaon_mesos::types::{FrameworkInfo, TaskState};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Script {
    bodies: Mutex<Vec<serde_json::Value>>,
}

fn stream_of(bytes: Vec<u8>, one_byte_chunks: bool) -> Body {
    let chunks: Vec<Result<Bytes, Infallible>> = if one_byte_chunks {
        bytes
            .into_iter()
            .map(|b| Ok(Bytes::from(vec![b])))
            .collect()
    } else {
        vec![Ok(Bytes::from(bytes))]
    };
    // After the scripted bytes the stream stays open and silent.
    Body::from_stream(futures_util::stream::iter(chunks).chain(futures_util::stream::pending()))
}

async fn scheduler(State(script): State<Arc<Script>>, body: Bytes) -> Response {
    let call: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let n = {
        let mut bodies = script.bodies.lock().unwrap();
        bodies.push(call);
        bodies.len()
    };
    let subscribed = br#"{"type":"SUBSCRIBED","subscribed":{"framework_id":{"value":"fake-fw"},"heartbeat_interval_seconds":0.05}}"#;
    let update = br#"{"type":"UPDATE","update":{"status":{"task_id":{"value":"t"},"state":"TASK_RUNNING","uuid":"AAAAAAAAAAAAAAAAAAAAAA=="}}}"#;
    let body = match n {
        1 => stream_of(b"10000000000\n{".to_vec(), false),
        2 => {
            let mut bytes = encode(subscribed);
            bytes.extend(encode(br#"{"type":"HEARTBEAT"}"#));
            bytes.extend(encode(
                br#"{"type":"SOMETHING_NEWER","something_newer":{}}"#,
            ));
            bytes.extend(encode(update));
            stream_of(bytes, true)
        }
        _ => stream_of(encode(subscribed), false),
    };
    Response::builder()
        .header("Content-Type", "application/json")
        .header("Mesos-Stream-Id", format!("stream-{n}"))
        .body(body)
        .unwrap()
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<DriverEvent>) -> DriverEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("event in time")
        .expect("driver alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_survives_garbage_rechunking_and_silence() {
    let script = Arc::new(Script::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/api/v1/scheduler", post(scheduler))
        .with_state(script.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let info = FrameworkInfo {
        user: "u".into(),
        name: "n".into(),
        ..Default::default()
    };
    let mut cfg = DriverConfig::new(format!("http://{addr}"), info);
    cfg.heartbeat_misses_max = 3;
    cfg.backoff_min = Duration::from_millis(10);
    cfg.backoff_max = Duration::from_millis(50);
    let (h, mut rx) = Driver::subscribe(cfg);

    // 1: a 10 GB length prefix is refused without allocating; driver reconnects.
    match next(&mut rx).await {
        DriverEvent::Disconnected { reason } => {
            assert!(reason.contains("exceeds the limit"), "{reason}")
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    // 2: records delivered one byte per chunk; unknown event type skipped.
    assert!(
        matches!(next(&mut rx).await, DriverEvent::Subscribed { ref framework_id, .. } if framework_id.value == "fake-fw")
    );
    match next(&mut rx).await {
        DriverEvent::Update(s) => assert_eq!(s.state, TaskState::Running),
        other => panic!("expected Update, got {other:?}"),
    }
    assert_eq!(h.stream_id().as_deref(), Some("stream-2"));
    // Silence for 3 heartbeat periods: the stream is declared dead.
    match next(&mut rx).await {
        DriverEvent::Disconnected { reason } => {
            assert!(reason.contains("missed heartbeats"), "{reason}")
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(matches!(
        next(&mut rx).await,
        DriverEvent::Subscribed { .. }
    ));
    let bodies = script.bodies.lock().unwrap().clone();
    assert!(bodies.len() >= 3);
    assert!(
        bodies[0]["framework_id"].is_null(),
        "first SUBSCRIBE has no framework id"
    );
    assert_eq!(
        bodies[2]["framework_id"]["value"], "fake-fw",
        "re-subscribe reuses the framework id"
    );
    assert_eq!(
        bodies[2]["subscribe"]["framework_info"]["id"]["value"],
        "fake-fw"
    );
    h.stop();
    server.abort();
}
