//! The agent's executor API seen by a third-party executor: the test itself
//! plays the executor over raw HTTP (the spawned "executor" process only
//! records its environment and sleeps).

mod common;

use common::*;
use kaon_mesos::recordio::Decoder;
use kaon_mesos::types::{CommandInfo, ExecutorInfo, ExecutorType, Id, TaskInfo, TaskState};

struct RawExecutor {
    url: String,
    framework: String,
    executor: String,
    client: reqwest::Client,
}

impl RawExecutor {
    async fn call(&self, body: serde_json::Value) -> reqwest::Response {
        self.client
            .post(&self.url)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    fn envelope(&self, kind: &str) -> serde_json::Value {
        serde_json::json!({"type": kind, "framework_id": {"value": self.framework}, "executor_id": {"value": self.executor}})
    }

    async fn subscribe(
        &self,
        unacked_tasks: Vec<serde_json::Value>,
    ) -> (reqwest::Response, Decoder) {
        let mut body = self.envelope("SUBSCRIBE");
        body["subscribe"] = serde_json::json!({"unacknowledged_tasks": unacked_tasks});
        let resp = self.call(body).await;
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers().get("mesos-stream-id").is_none(),
            "executor API has no stream id"
        );
        (resp, Decoder::default())
    }
}

async fn next_event(
    resp: &mut reqwest::Response,
    dec: &mut Decoder,
    pending: &mut Vec<serde_json::Value>,
) -> serde_json::Value {
    while pending.is_empty() {
        let chunk = tokio::time::timeout(EVENT_WAIT_MAX, resp.chunk())
            .await
            .expect("event in time")
            .unwrap()
            .expect("stream open");
        pending.extend(
            dec.feed(&chunk)
                .unwrap()
                .into_iter()
                .map(|r| serde_json::from_slice(&r).unwrap()),
        );
    }
    pending.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_executor_protocol_and_lost_tasks_on_resubscribe() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.executor_heartbeat_interval = std::time::Duration::from_millis(100);
    let emu = kaon_mesos_emulator::Emulator::start(cfg).await.unwrap();
    let (h, mut rx) = driver(&emu.master_url(), framework(None, 60.0));
    let fw = subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    let exec = ExecutorInfo {
        kind: Some(ExecutorType::Custom),
        executor_id: Id::new("raw-exec"),
        framework_id: None,
        command: Some(CommandInfo::shell(
            "env > env.tmp && mv env.tmp env.txt; exec sleep 30",
        )),
        resources: resources(0.05, 32.0),
        name: None,
        data: None,
        shutdown_grace_period: None,
    };
    let task = |id: &str| TaskInfo {
        name: id.into(),
        task_id: Id::new(id),
        agent_id: offer.agent_id.clone(),
        resources: resources(0.1, 32.0),
        executor: Some(exec.clone()),
        command: None,
        kill_policy: None,
        data: None,
        labels: None,
    };
    launch(&h, &offer, vec![task("x"), task("y")]).await;

    let agent = emu.agent_addrs()[0];
    let raw = RawExecutor {
        url: format!("http://{agent}/api/v1/executor"),
        framework: fw.value.clone(),
        executor: "raw-exec".into(),
        client: reqwest::Client::new(),
    };
    // UPDATE before SUBSCRIBE: 403.
    let mut update = raw.envelope("UPDATE");
    update["update"] = serde_json::json!({"status": {"task_id": {"value": "y"}, "state": "TASK_RUNNING", "source": "SOURCE_EXECUTOR", "uuid": "AAECAwQFBgcICQoLDA0ODw=="}});
    let early = raw.call(update.clone()).await;
    assert_eq!(early.status(), 403);

    let (mut stream, mut dec) = raw.subscribe(vec![]).await;
    let mut pending = Vec::new();
    let subscribed_ev = next_event(&mut stream, &mut dec, &mut pending).await;
    assert_eq!(subscribed_ev["type"], "SUBSCRIBED");
    assert_eq!(
        subscribed_ev["subscribed"]["executor_info"]["executor_id"]["value"],
        "raw-exec"
    );
    assert_eq!(
        subscribed_ev["subscribed"]["framework_info"]["id"]["value"],
        fw.value.as_str()
    );
    assert_eq!(
        subscribed_ev["subscribed"]["agent_info"]["hostname"],
        "127.0.0.1"
    );
    let mut launched = Vec::new();
    for _ in 0..2 {
        let ev = next_event(&mut stream, &mut dec, &mut pending).await;
        assert_eq!(ev["type"], "LAUNCH");
        launched.push(
            ev["launch"]["task"]["task_id"]["value"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    launched.sort();
    assert_eq!(launched, ["x", "y"]);

    // The executor's environment is the Mesos one.
    let mut env = String::new();
    eventually("executor wrote env.txt", || {
        env = find(dir.path(), "env.txt")
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        env.contains("LIBPROCESS_PORT")
    })
    .await;
    for (k, v) in [
        ("MESOS_FRAMEWORK_ID", fw.value.clone()),
        ("MESOS_EXECUTOR_ID", "raw-exec".into()),
        ("MESOS_AGENT_ENDPOINT", agent.to_string()),
        ("MESOS_SLAVE_ID", offer.agent_id.value.clone()),
        ("MESOS_SLAVE_PID", format!("slave(1)@{agent}")),
        ("MESOS_CHECKPOINT", "0".into()),
        ("MESOS_HTTP_COMMAND_EXECUTOR", "0".into()),
        ("MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD", "2secs".into()),
        ("LIBPROCESS_PORT", "0".into()),
    ] {
        assert!(
            env.lines().any(|l| l == format!("{k}={v}")),
            "missing {k}={v} in\n{env}"
        );
    }
    assert!(
        env.lines()
            .any(|l| l.starts_with("MESOS_DIRECTORY=/") && l.contains("/executors/raw-exec/runs/"))
    );

    // Agent restart: the stream ends; re-subscribe listing only y.
    emu.restart_agent(0);
    while tokio::time::timeout(EVENT_WAIT_MAX, stream.chunk())
        .await
        .expect("stream closes")
        .unwrap()
        .is_some()
    {}
    assert_eq!(
        raw.call(raw.envelope("HEARTBEAT")).await.status(),
        503,
        "agent recovering"
    );
    emu.finish_agent_recovery(0);
    let y = serde_json::to_value(task("y")).unwrap();
    let (mut stream, mut dec) = raw.subscribe(vec![y]).await;
    let mut pending = Vec::new();
    assert_eq!(
        next_event(&mut stream, &mut dec, &mut pending).await["type"],
        "SUBSCRIBED"
    );
    let lost = update_acking(&h, &mut rx, "x", TaskState::Lost).await;
    assert_eq!(lost.reason.as_deref(), Some("REASON_AGENT_RESTARTED"));

    // UPDATE for y is recorded, acknowledged to the executor and forwarded.
    assert_eq!(raw.call(update).await.status(), 202);
    let mut ack = next_event(&mut stream, &mut dec, &mut pending).await;
    let mut heartbeats = 0;
    while ack["type"] == "HEARTBEAT" {
        heartbeats += 1;
        ack = next_event(&mut stream, &mut dec, &mut pending).await;
    }
    assert_eq!(ack["type"], "ACKNOWLEDGED");
    assert_eq!(ack["acknowledged"]["uuid"], "AAECAwQFBgcICQoLDA0ODw==");
    let running = update_acking(&h, &mut rx, "y", TaskState::Running).await;
    assert_eq!(running.executor_id, Some(Id::new("raw-exec")));
    // The agent keeps the executor's stream alive with HEARTBEAT events.
    while heartbeats == 0 {
        let ev = next_event(&mut stream, &mut dec, &mut pending).await;
        assert_eq!(ev["type"], "HEARTBEAT");
        heartbeats += 1;
    }
    h.stop();
    emu.shutdown().await;
}

fn find(root: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(f) = find(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}
