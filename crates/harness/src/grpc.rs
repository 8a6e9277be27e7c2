//! gRPC calls the tests and the bench make, with deadlines.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kaon_api::v1;
use kaon_api::v1::kaon_client::KaonClient;
use tonic::transport::Channel;

/// A client for the API at `url`: connect deadline 1 s, call deadline 5 s.
pub async fn client(url: &str) -> Option<KaonClient<Channel>> {
    client_with_timeout(url, Duration::from_secs(5)).await
}

/// A client whose calls time out after `timeout`.
pub async fn client_with_timeout(url: &str, timeout: Duration) -> Option<KaonClient<Channel>> {
    let ch = Channel::from_shared(url.to_string())
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .timeout(timeout)
        .connect()
        .await
        .ok()?;
    Some(KaonClient::new(ch))
}

/// ClusterStatus of the node at `url`, None if it does not answer.
pub async fn cluster_status(url: &str) -> Option<v1::ClusterStatusResponse> {
    client(url)
        .await?
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// One SubmitRun of an inline spec with an idempotency key; the error is
/// `CODE: message`.
pub async fn submit(url: &str, spec: &str, key: &str) -> Result<v1::SubmitRunResponse, String> {
    let mut c = client(url)
        .await
        .ok_or_else(|| format!("{url} does not answer"))?;
    c.submit_run(v1::SubmitRunRequest {
        workflow: Some(v1::submit_run_request::Workflow::InlineSpec(
            spec.to_string(),
        )),
        params_json: Default::default(),
        idempotency_key: key.to_string(),
    })
    .await
    .map(|r| r.into_inner())
    .map_err(|e| format!("{:?}: {}", e.code(), e.message()))
}

/// Submits `spec` with `key` through the nodes at `urls` (any node
/// forwards to the leader), retrying (same key) across errors and leader
/// changes until acknowledged; panics after `deadline`.
pub async fn submit_to_leader(
    urls: &[String],
    spec: &str,
    key: &str,
    deadline: Duration,
) -> v1::SubmitRunResponse {
    let end = Instant::now() + deadline;
    let mut last = String::new();
    loop {
        assert!(
            Instant::now() < end,
            "submit {key} not acknowledged in {deadline:?}: {last}"
        );
        for url in urls {
            match submit(url, spec, key).await {
                Ok(r) => return r,
                Err(e) => last = e,
            }
        }
        tokio::time::sleep(crate::POLL).await;
    }
}

/// GetRun on the node at `url`.
pub async fn get_run(url: &str, run_id: u64) -> Option<v1::Run> {
    client(url)
        .await?
        .get_run(v1::GetRunRequest { run_id })
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Every run id the node at `url` holds (ListRuns, all pages).
pub async fn all_run_ids(url: &str) -> Option<BTreeSet<u64>> {
    let mut c = client(url).await?;
    let mut ids = BTreeSet::new();
    let mut page_token = 0;
    loop {
        let r = c
            .list_runs(v1::ListRunsRequest {
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner();
        ids.extend(r.runs.iter().map(|r| r.id));
        if r.next_page_token == 0 {
            return Some(ids);
        }
        page_token = r.next_page_token;
    }
}

/// All committed events of a finished run (WatchRun from its start; the
/// stream ends with RunFinished).
pub async fn run_events(url: &str, run_id: u64) -> Option<Vec<kaon_core::events::Event>> {
    let mut c = client_with_timeout(url, Duration::from_secs(30)).await?;
    let mut stream = c
        .watch_run(v1::WatchRunRequest {
            run_id,
            after_index: 0,
        })
        .await
        .ok()?
        .into_inner();
    let mut events = Vec::new();
    while let Some(m) = stream.message().await.ok()? {
        events.extend(m.event);
    }
    Some(events)
}
