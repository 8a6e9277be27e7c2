//! The emulator answers malformed requests with Mesos 1.11's status codes.

mod common;

use common::*;
use kaon_mesos::recordio::Decoder;

async fn post(url: &str, ct: Option<&str>, stream: Option<&str>, body: &str) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(format!("{url}/api/v1/scheduler"))
        .body(body.to_owned());
    if let Some(ct) = ct {
        req = req.header("Content-Type", ct);
    }
    if let Some(s) = stream {
        req = req.header("Mesos-Stream-Id", s);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

const SUBSCRIBE: &str = r#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"user":"u","name":"n","failover_timeout":60}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_mesos_status_codes() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let url = emu.master_url();
    let client = reqwest::Client::new();

    // Method, content type, JSON.
    let get = client
        .get(format!("{url}/api/v1/scheduler"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST");
    assert_eq!(post(&url, None, None, SUBSCRIBE).await.0, 400);
    assert_eq!(post(&url, Some("text/plain"), None, SUBSCRIBE).await.0, 415);
    assert_eq!(
        post(&url, Some("application/json"), None, "{not json")
            .await
            .0,
        400
    );
    assert_eq!(
        post(
            &url,
            Some("application/json"),
            None,
            r#"{"type":"NO_SUCH_CALL"}"#
        )
        .await
        .0,
        400
    );
    let (code, body) = post(
        &url,
        Some("application/json"),
        None,
        r#"{"framework_id":{"value":"x"}}"#,
    )
    .await;
    assert_eq!(
        (code, body.as_str()),
        (400, "Expecting 'type' to be present")
    );
    // Missing sub-message, missing framework id, required field missing.
    assert_eq!(
        post(
            &url,
            Some("application/json"),
            None,
            r#"{"type":"ACCEPT","framework_id":{"value":"x"}}"#
        )
        .await
        .0,
        400
    );
    assert_eq!(
        post(&url, Some("application/json"), None, r#"{"type":"REVIVE"}"#)
            .await
            .0,
        400
    );
    assert_eq!(
        post(
            &url,
            Some("application/json"),
            None,
            r#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"user":"u"}}}"#
        )
        .await
        .0,
        400
    );
    // SUBSCRIBE with a stream id header; Accept that excludes JSON.
    assert_eq!(
        post(&url, Some("application/json"), Some("abc"), SUBSCRIBE)
            .await
            .0,
        400
    );
    let not_acceptable = client
        .post(format!("{url}/api/v1/scheduler"))
        .header("Content-Type", "application/json")
        .header("Accept", "text/html")
        .body(SUBSCRIBE)
        .send()
        .await
        .unwrap();
    assert_eq!(not_acceptable.status(), 406);

    // A real subscription, read raw.
    let mut sub = client
        .post(format!("{url}/api/v1/scheduler"))
        .header("Content-Type", "application/json")
        .body(SUBSCRIBE)
        .send()
        .await
        .unwrap();
    assert_eq!(sub.status(), 200);
    assert_eq!(sub.headers()["content-type"], "application/json");
    assert!(sub.headers().get("content-length").is_none());
    let stream_id = sub.headers()["mesos-stream-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut decoder = Decoder::default();
    let mut records = Vec::new();
    while records.len() < 2 {
        let chunk = sub.chunk().await.unwrap().expect("stream open");
        records.extend(decoder.feed(&chunk).unwrap());
    }
    let first: serde_json::Value = serde_json::from_slice(&records[0]).unwrap();
    assert_eq!(first["type"], "SUBSCRIBED");
    assert_eq!(first["subscribed"]["master_info"]["version"], "1.11.0");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&records[1]).unwrap()["type"],
        "HEARTBEAT"
    );
    let fw = first["subscribed"]["framework_id"]["value"]
        .as_str()
        .unwrap()
        .to_owned();

    let revive = format!(r#"{{"type":"REVIVE","framework_id":{{"value":"{fw}"}}}}"#);
    assert_eq!(
        post(&url, Some("application/json"), Some(&stream_id), &revive)
            .await
            .0,
        202
    );
    assert_eq!(
        post(&url, Some("application/json"), None, &revive).await.0,
        400,
        "missing stream id"
    );
    assert_eq!(
        post(&url, Some("application/json"), Some("wrong"), &revive)
            .await
            .0,
        400,
        "wrong stream id"
    );
    let unknown = r#"{"type":"REVIVE","framework_id":{"value":"nobody"}}"#;
    let (code, body) = post(&url, Some("application/json"), Some(&stream_id), unknown).await;
    assert_eq!((code, body.as_str()), (400, "Framework cannot be found"));
    let bad_uuid = format!(
        r#"{{"type":"ACKNOWLEDGE","framework_id":{{"value":"{fw}"}},"acknowledge":{{"agent_id":{{"value":"a"}},"task_id":{{"value":"t"}},"uuid":"AAAA"}}}}"#
    );
    assert_eq!(
        post(&url, Some("application/json"), Some(&stream_id), &bad_uuid)
            .await
            .0,
        400
    );
    let not_b64 = bad_uuid.replace("AAAA", "!!");
    assert_eq!(
        post(&url, Some("application/json"), Some(&stream_id), &not_b64)
            .await
            .0,
        400
    );
    let unknown_call = format!(r#"{{"type":"UNKNOWN","framework_id":{{"value":"{fw}"}}}}"#);
    assert_eq!(
        post(
            &url,
            Some("application/json"),
            Some(&stream_id),
            &unknown_call
        )
        .await
        .0,
        501
    );

    // Disconnect: the framework is known but not subscribed → 403.
    drop(sub);
    let deadline = std::time::Instant::now() + EVENT_WAIT_MAX;
    loop {
        let (code, _) = post(&url, Some("application/json"), Some(&stream_id), &revive).await;
        if code == 403 {
            break;
        }
        assert_eq!(code, 202);
        assert!(
            std::time::Instant::now() < deadline,
            "disconnect never noticed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Operator endpoints.
    let version: serde_json::Value = serde_json::from_str(
        &reqwest::get(format!("{url}/version"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(version["version"], "1.11.0");
    assert_eq!(
        reqwest::get(format!("{url}/health"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(master_state(&url).await["frameworks"][0]["id"], fw.as_str());
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_subscribe_gets_error_event_on_200_stream() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let body = r#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"user":"u","name":"n","roles":["a"]}}}"#;
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/scheduler", emu.master_url()))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let all = resp.bytes().await.unwrap();
    let recs = Decoder::default().feed(&all).unwrap();
    assert_eq!(recs.len(), 1, "exactly one ERROR, then the stream ends");
    let ev: serde_json::Value = serde_json::from_slice(&recs[0]).unwrap();
    assert_eq!(ev["type"], "ERROR");
    assert!(
        ev["error"]["message"]
            .as_str()
            .unwrap()
            .contains("MULTI_ROLE")
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_endpoint_rejects_bad_calls() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let agent = format!("http://{}/api/v1/executor", emu.agent_addrs()[0]);
    let client = reqwest::Client::new();
    let send = |ct: &'static str, body: &'static str| {
        client
            .post(&agent)
            .header("Content-Type", ct)
            .body(body)
            .send()
    };
    assert_eq!(send("text/plain", "{}").await.unwrap().status(), 415);
    assert_eq!(send("application/json", "[").await.unwrap().status(), 400);
    let sub = r#"{"type":"SUBSCRIBE","framework_id":{"value":"f"},"executor_id":{"value":"e"},"subscribe":{}}"#;
    let resp = send("application/json", sub).await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.text().await.unwrap(), "Framework cannot be found");
    let staging = r#"{"type":"UPDATE","framework_id":{"value":"f"},"executor_id":{"value":"e"},"update":{"status":{"task_id":{"value":"t"},"state":"TASK_STAGING","source":"SOURCE_EXECUTOR","uuid":"AAAAAAAAAAAAAAAAAAAAAA=="}}}"#;
    assert_eq!(
        send("application/json", staging).await.unwrap().status(),
        400
    );
    assert_eq!(client.get(&agent).send().await.unwrap().status(), 405);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_operator_api_read_calls() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let (h, mut rx) = driver(&emu.master_url(), framework(Some("opv1"), 60.0));
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    launch(&h, &offer, vec![command_task("v1", &offer, "sleep 30")]).await;
    update_acking(&h, &mut rx, "v1", kaon_mesos::types::TaskState::Running).await;
    let call = |body: &'static str| {
        let url = format!("{}/api/v1", emu.master_url());
        async move {
            let resp = reqwest::Client::new()
                .post(url)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (
                status,
                serde_json::from_str::<serde_json::Value>(&resp.text().await.unwrap())
                    .unwrap_or_default(),
            )
        }
    };
    let (code, v) = call(r#"{"type":"GET_VERSION"}"#).await;
    assert_eq!(
        (code, v["get_version"]["version_info"]["version"].as_str()),
        (200, Some("1.11.0"))
    );
    let (_, v) = call(r#"{"type":"GET_STATE"}"#).await;
    let st = &v["get_state"];
    assert_eq!(
        st["get_frameworks"]["frameworks"][0]["framework_info"]["id"]["value"],
        "opv1"
    );
    assert_eq!(st["get_tasks"]["tasks"][0]["state"], "TASK_RUNNING");
    assert_eq!(
        st["get_agents"]["agents"][0]["agent_info"]["id"]["value"],
        offer.agent_id.value.as_str()
    );
    assert_eq!(
        call(r#"{"type":"GET_HEALTH"}"#).await.1["get_health"]["healthy"],
        true
    );
    assert_eq!(call(r#"{"type":"SUBSCRIBE"}"#).await.0, 501);
    assert_eq!(call(r#"{}"#).await.0, 400);
    h.stop();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_with_suppressed_roles_starts_suppressed() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let body = r#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"user":"u","name":"n"},"suppressed_roles":["*"]}}"#;
    let mut resp = reqwest::Client::new()
        .post(format!("{}/api/v1/scheduler", emu.master_url()))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().expect("SUBSCRIBED");
    assert!(String::from_utf8_lossy(&first).contains("SUBSCRIBED"));
    let st = master_state(&emu.master_url()).await;
    assert_eq!(st["frameworks"][0]["connected"], true);
    // Mesos 1.11's `Master::suppress` only stops offers; the framework
    // stays active until it disconnects or is removed.
    assert_eq!(
        st["frameworks"][0]["active"], true,
        "suppressed is still active"
    );
    assert_eq!(st["frameworks"][0]["offers"].as_array().unwrap().len(), 0);
    drop(resp);
    emu.shutdown().await;
}
