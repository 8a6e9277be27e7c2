//! Scheduler driver against the emulator with the in-process transport: the
//! driver hands its HTTP requests straight to the emulator's master router.
//! The master binds no socket and the driver is given a master URL whose
//! port nothing listens on, so any use of TCP by the driver would fail.

mod common;

use common::*;
use kaon_mesos::driver::{Driver, DriverConfig, DriverEvent, DriverHandle};
use kaon_mesos::transport::{HttpRequest, HttpTransport as _, InProcessTransport, MesosTransport};
use kaon_mesos::types::{FrameworkInfo, TaskState};
use kaon_mesos_emulator::{Emulator, EmulatorHandle};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc::Receiver;

/// A loopback address nothing listens on (bound, then released).
fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn start_in_process(work_dir: &std::path::Path) -> EmulatorHandle {
    let mut cfg = config(work_dir);
    cfg.master_addr = dead_addr();
    let emu = Emulator::start_in_process(cfg)
        .await
        .expect("emulator starts");
    assert!(
        std::net::TcpStream::connect(emu.master_addr()).is_err(),
        "the in-process master must not listen"
    );
    emu
}

fn in_process_driver(
    emu: &EmulatorHandle,
    info: FrameworkInfo,
) -> (DriverHandle, Receiver<DriverEvent>) {
    let mut c = DriverConfig::new(emu.master_url(), info);
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c.transport = MesosTransport::in_process(emu.master_router());
    Driver::subscribe(c)
}

/// GET `path` from the master through its router.
async fn get_json(emu: &EmulatorHandle, path: &str) -> serde_json::Value {
    let resp = InProcessTransport::new(emu.master_router())
        .send(HttpRequest {
            method: axum::http::Method::GET,
            url: format!("{}{path}", emu.master_url()),
            headers: Default::default(),
            body: Default::default(),
            timeout: Some(Duration::from_secs(5)),
        })
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    serde_json::from_str(&resp.text().await).unwrap()
}

/// Asserts that no offer arrives for `quiet` (other events are skipped).
async fn no_offers_for(rx: &mut Receiver<DriverEvent>, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return,
            Ok(None) => panic!("driver ended"),
            Ok(Some(DriverEvent::Offers(o))) => panic!("offer despite the filter: {o:?}"),
            Ok(Some(_)) => {}
        }
    }
}

/// SUBSCRIBE, offers, DECLINE with a filter, REVIVE, all in-process and on
/// paused tokio time (seconds of emulator time pass in milliseconds).
#[tokio::test(start_paused = true)]
async fn decline_and_revive_in_process_on_paused_time() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start_in_process(dir.path()).await;
    let wall = std::time::Instant::now();
    let (h, mut rx) = in_process_driver(&emu, framework(None, 60.0));
    let fw = subscribed(&mut rx).await;
    assert!(h.stream_id().is_some());
    let state = get_json(&emu, "/master/state").await;
    assert_eq!(state["frameworks"][0]["id"], fw.value.as_str());
    assert_eq!(state["frameworks"][0]["connected"], true);

    let offer = offers(&mut rx).await.remove(0);
    assert_eq!(offer.framework_id, fw);
    h.decline(vec![offer.id.clone()], Some(3600.0))
        .await
        .unwrap();
    // The allocator runs every 50 ms: a minute without offers is the filter.
    let quiet = Duration::from_secs(60);
    let virtual_start = tokio::time::Instant::now();
    no_offers_for(&mut rx, quiet).await;
    assert!(virtual_start.elapsed() >= quiet);

    h.revive(Vec::new()).await.unwrap();
    let again = offers(&mut rx).await.remove(0);
    assert_eq!(again.agent_id, offer.agent_id);
    assert_ne!(again.id, offer.id);
    assert!(
        wall.elapsed() < quiet / 2,
        "time should have been virtual, took {:?}",
        wall.elapsed()
    );
    h.stop();
    emu.shutdown().await;
}

/// A command task launched through the in-process transport runs as a real
/// process on the emulated agent; its updates come back in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_task_runs_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start_in_process(dir.path()).await;
    let (h, mut rx) = in_process_driver(&emu, framework(None, 60.0));
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    launch(&h, &offer, vec![command_task("t1", &offer, "exit 0")]).await;
    let done = update_acking(&h, &mut rx, "t1", TaskState::Finished).await;
    assert_eq!(
        done.message.as_deref(),
        Some("Command exited with status 0")
    );
    eventually("process reaped", || emu.live_processes() == 0).await;
    h.stop();
    emu.shutdown().await;
}
