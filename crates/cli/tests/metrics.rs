//! Issue 11, section 1: every node of a running 3-node cluster serves
//! `GET /metrics` on its admin port in Prometheus' text format, read here
//! with a Prometheus text parser (`prometheus-parse`) and a strict check of
//! every line; the numbers follow what the cluster did.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Cluster, wait_until};

/// One scrape: (family, labels) -> value, plus the raw text.
struct Scrape {
    samples: Vec<prometheus_parse::Sample>,
    text: String,
}

impl Scrape {
    /// The sum of a metric's samples whose labels include `labels`.
    fn sum(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(_) | prometheus_parse::Value::Summary(_) => 0.0,
            })
            .sum()
    }

    /// A histogram's observation count (`<name>_count`).
    fn count(&self, histogram: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.metric == histogram)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                _ => 0.0,
            })
            .sum()
    }

    /// Label values of a metric's samples for one label key.
    fn label_values(&self, metric: &str, key: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter_map(|s| s.labels.get(key).map(str::to_string))
            .collect();
        v.sort();
        v
    }
}

/// Every line is a comment (`# HELP name text` / `# TYPE name type`) or
/// a sample `name{label="value",...} number`, and every sample's family
/// was declared by a TYPE line before it.
fn check_syntax(text: &str) -> Result<(), String> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let at = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !name_ok(name) {
                return Err(at("bad metric name in a comment"));
            }
            match kind {
                "HELP" => {}
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return Err(at("unknown type"));
                    }
                    typed.insert(name.to_string(), t.to_string());
                }
                _ => return Err(at("a comment that is neither HELP nor TYPE")),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
        if value.parse::<f64>().is_err() && !["+Inf", "-Inf", "NaN"].contains(&value) {
            return Err(at("the value is not a number"));
        }
        let name = series.split('{').next().unwrap_or("");
        if !name_ok(name) {
            return Err(at("bad metric name"));
        }
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .ok_or_else(|| at("labels not in braces"))?;
            for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once("=\"")
                    .ok_or_else(|| at("a label without =\""))?;
                if !name_ok(k) || v.contains('\n') {
                    return Err(at("bad label"));
                }
            }
        }
        let family_declared = typed.contains_key(name)
            || ["_bucket", "_sum", "_count"].iter().any(|s| {
                name.strip_suffix(s)
                    .is_some_and(|f| typed.get(f).is_some_and(|t| t == "histogram"))
            });
        if !family_declared {
            return Err(at("a sample whose family has no TYPE line before it"));
        }
    }
    Ok(())
}

async fn scrape(cluster: &Cluster, i: usize) -> Option<Scrape> {
    let resp = reqwest::get(format!("{}/metrics", cluster.admin_url(i)))
        .await
        .ok()?;
    assert_eq!(resp.status(), 200, "GET /metrics on node {}", i + 1);
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        ctype.starts_with("text/plain; version=0.0.4"),
        "node {}: content type {ctype:?}",
        i + 1
    );
    let text = resp.text().await.ok()?;
    if let Err(e) = check_syntax(&text) {
        panic!(
            "node {}: not the Prometheus text format: {e}\n{text}",
            i + 1
        );
    }
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("node {}: the parser refused it: {e}\n{text}", i + 1));
    Some(Scrape {
        samples: parsed.samples,
        text,
    })
}

/// A run of two steps: `a` succeeds; `b` fails its first attempt (user
/// error, retried once) and succeeds on the second.
fn spec(marks: &std::path::Path) -> String {
    format!(
        "apiVersion: kaon/v1
name: metered
defaults:
  resources: {{cpus: 0.1, mem: 16MiB}}
steps:
  a: {{shell: 'true'}}
  b:
    depends_on: [a]
    retry: {{user_errors: 1, backoff: {{kind: fixed, initial: 100ms}}}}
    shell: 'test -f {m} || {{ touch {m}; exit 3; }}'
",
        m = marks.join("b-failed-once").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_metrics_that_follow_the_cluster() {
    let cluster = common::cluster();
    let leader = cluster.wait_leader(None, Duration::from_secs(30)).await;
    let marks = tempfile::tempdir().unwrap();
    let ack = cluster
        .submit(&spec(marks.path()), "metered-1", Duration::from_secs(30))
        .await;
    let url = cluster.url(leader);
    wait_until("the run to succeed", Duration::from_secs(60), || {
        let url = url.clone();
        async move {
            let run = common::get_run(&url, ack.run_id).await?;
            (run.status == "succeeded").then_some(())
        }
    })
    .await;

    // Every replica applied the run's events: its event counters say so
    // (counted from each process's start, which is before the run).
    let mut scrapes = Vec::new();
    let c = &cluster;
    for i in 0..cluster.len() {
        let s = wait_until(
            &format!("node {} to count the finished run", i + 1),
            Duration::from_secs(30),
            || async move {
                let s = scrape(c, i).await?;
                (s.sum("kaon_runs_finished_total", &[("outcome", "succeeded")]) == 1.0).then_some(s)
            },
        )
        .await;
        let who = format!("node {}:\n{}", i + 1, s.text);
        assert_eq!(
            s.sum("kaon_runs_submitted_total", &[("trigger", "manual")]),
            1.0,
            "{who}"
        );
        assert_eq!(
            s.sum("kaon_step_attempts_launched_total", &[]),
            3.0,
            "{who}"
        );
        assert_eq!(
            s.sum(
                "kaon_step_attempts_ended_total",
                &[("state", "finished"), ("cause", "none")]
            ),
            2.0,
            "{who}"
        );
        assert_eq!(
            s.sum(
                "kaon_step_attempts_ended_total",
                &[("state", "failed"), ("cause", "user")]
            ),
            1.0,
            "{who}"
        );
        assert_eq!(
            s.sum("kaon_retries_scheduled_total", &[("budget", "user")]),
            1.0,
            "{who}"
        );
        assert_eq!(
            s.sum("kaon_steps_finished_total", &[("outcome", "succeeded")]),
            2.0,
            "{who}"
        );
        assert_eq!(
            s.count("kaon_step_attempt_duration_seconds", &[]),
            3.0,
            "{who}"
        );
        assert_eq!(
            s.count("kaon_run_duration_seconds", &[("outcome", "succeeded")]),
            1.0,
            "{who}"
        );
        assert_eq!(s.sum("kaon_runs", &[("status", "succeeded")]), 1.0, "{who}");
        assert_eq!(s.sum("kaon_runs_active", &[]), 0.0, "{who}");
        assert_eq!(s.sum("kaon_workflows", &[]), 1.0, "{who}");
        assert_eq!(s.sum("kaon_raft_voters", &[]), 3.0, "{who}");
        assert!(s.sum("kaon_raft_term", &[]) >= 1.0, "{who}");
        assert!(
            s.sum("kaon_events_applied_total", &[("kind", "RunFinished")]) == 1.0,
            "{who}"
        );
        assert!(
            s.sum("kaon_process_resident_memory_bytes", &[]) > 0.0,
            "{who}"
        );
        scrapes.push(s);
    }

    // One leader, known to all; only it holds the Mesos subscription and
    // did the Mesos work, and it reports each follower's replication lag.
    let leaders: Vec<usize> = (0..scrapes.len())
        .filter(|&i| scrapes[i].sum("kaon_raft_is_leader", &[]) == 1.0)
        .collect();
    assert_eq!(leaders, vec![leader], "exactly the leader says it leads");
    for (i, s) in scrapes.iter().enumerate() {
        assert_eq!(
            s.sum("kaon_raft_leader_id", &[]),
            (leader + 1) as f64,
            "node {} names the leader",
            i + 1
        );
        let on_leader = i == leader;
        assert_eq!(
            s.sum("kaon_mesos_subscribed", &[]),
            if on_leader { 1.0 } else { 0.0 },
            "node {}: mesos_subscribed\n{}",
            i + 1,
            s.text
        );
        let lag_peers = s.label_values("kaon_raft_replication_lag_entries", "peer");
        if on_leader {
            let mut want: Vec<String> = (0..cluster.len())
                .filter(|&j| j != leader)
                .map(|j| (j + 1).to_string())
                .collect();
            want.sort();
            assert_eq!(lag_peers, want, "the leader reports each follower's lag");
        } else {
            assert!(
                lag_peers.is_empty(),
                "a follower reports no lag: {lag_peers:?}"
            );
        }
    }
    let l = &scrapes[leader];
    let who = format!("leader:\n{}", l.text);
    assert!(
        l.sum("kaon_mesos_offers_received_total", &[]) >= 1.0,
        "{who}"
    );
    assert_eq!(l.sum("kaon_mesos_tasks_launched_total", &[]), 3.0, "{who}");
    assert!(
        l.sum("kaon_mesos_offers_accepted_total", &[]) >= 1.0,
        "{who}"
    );
    assert!(l.sum("kaon_mesos_task_updates_total", &[]) >= 3.0, "{who}");
    assert!(
        l.count("kaon_log_append_duration_seconds", &[]) >= 1.0,
        "{who}"
    );
    assert_eq!(l.sum("kaon_launches_waiting", &[]), 0.0, "{who}");
    assert_eq!(l.sum("kaon_launch_wait_oldest_seconds", &[]), 0.0, "{who}");
}

#[test]
fn the_syntax_check_rejects_what_prometheus_would() {
    let good = "# HELP kaon_x_total X.\n# TYPE kaon_x_total counter\nkaon_x_total{a=\"b\"} 1\n";
    assert_eq!(check_syntax(good), Ok(()));
    for bad in [
        "kaon_x_total 1\n",
        "# TYPE kaon_x gauge\nkaon_x one\n",
        "# TYPE kaon_x gauge\nkaon-x 1\n",
        "# TYPE kaon_x gauge\nkaon_x{a=b} 1\n",
        "# TYPE kaon_x nonsense\n",
    ] {
        assert!(check_syntax(bad).is_err(), "accepted {bad:?}");
    }
}

// ------------------------------------------------------------------ traces

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;

/// An in-process OTLP collector: keeps every export it receives.
#[derive(Clone, Default)]
struct Collector(std::sync::Arc<std::sync::Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// One exported span, flattened: name, trace and parent ids, attributes
/// as text, and its resource's service name.
#[derive(Debug, Clone)]
struct Exported {
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    attrs: BTreeMap<String, String>,
    service: String,
}

fn flatten(reqs: &[ExportTraceServiceRequest]) -> Vec<Exported> {
    let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    };
    let mut out = Vec::new();
    for r in reqs {
        for rs in &r.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| text(&a.value))
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push(Exported {
                        name: s.name.clone(),
                        trace: s.trace_id.clone(),
                        id: s.span_id.clone(),
                        parent: s.parent_span_id.clone(),
                        attrs: s
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), text(&a.value)))
                            .collect(),
                        service: service.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Issue 11, section 1: with `--otlp-endpoint` a node exports one trace per
/// run over OTLP/gRPC: the API call (`submit_run`, with the workflow and
/// run id) is its root, and `decide`, `raft.append` and `mesos.launch`
/// (with the run, step and attempt ids) are in the same trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_a_run_reach_an_otlp_collector_as_one_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stop_rx.await;
                },
            ),
    );
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{addr}");
    let node = common::Server::start_with(
        std::path::Path::new(common::KAON),
        &dir.path().join("data"),
        &["--otlp-endpoint", &endpoint],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
    .expect("kaon server starts");
    let url = node.url.clone();
    let spec = dir.path().join("traced.yaml");
    std::fs::write(
        &spec,
        "apiVersion: kaon/v1\nname: traced\nsteps:\n  a: {shell: 'true'}\n",
    )
    .unwrap();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        common::kaon_at(&url, &["submit", spec.to_str().unwrap(), "--watch"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = common::kaon_at(&node.url, &["runs"]);
    assert_eq!(code, 0);
    let run = out
        .lines()
        .find(|l| l.contains("traced"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the run is listed")
        .to_string();
    let spans = wait_until(
        "the run's spans at the collector",
        Duration::from_secs(30),
        || {
            let spans = flatten(&collector.0.lock().unwrap());
            let run = run.clone();
            async move {
                let root = spans
                    .iter()
                    .find(|s| s.name == "submit_run" && s.attrs.get("run") == Some(&run))?
                    .clone();
                let launched = spans.iter().any(|s| {
                    s.name == "mesos.launch"
                        && s.trace == root.trace
                        && s.attrs.get("run") == Some(&run)
                });
                launched.then_some((root, spans))
            }
        },
    )
    .await;
    let (root, spans) = spans;
    assert_eq!(root.service, "kaon");
    assert_eq!(
        root.attrs.get("workflow").map(String::as_str),
        Some("traced"),
        "{root:?}"
    );
    let in_trace: Vec<&Exported> = spans.iter().filter(|s| s.trace == root.trace).collect();
    let decide = in_trace
        .iter()
        .find(|s| s.name == "decide" && s.parent == root.id)
        .unwrap_or_else(|| panic!("decide under submit_run: {in_trace:#?}"));
    assert_eq!(
        decide.attrs.get("command").map(String::as_str),
        Some("submit_run")
    );
    assert!(
        in_trace.iter().any(|s| s.name == "raft.append"),
        "the append of the submission is in the run's trace: {in_trace:#?}"
    );
    let launch = in_trace
        .iter()
        .find(|s| s.name == "mesos.launch")
        .expect("checked above");
    assert_eq!(
        launch.attrs.get("step").map(String::as_str),
        Some("a"),
        "{launch:?}"
    );
    assert_eq!(
        launch.attrs.get("attempt").map(String::as_str),
        Some("1"),
        "{launch:?}"
    );
    assert!(
        launch
            .attrs
            .get("task")
            .is_some_and(|t| t.starts_with(&format!("r{run}-"))),
        "{launch:?}"
    );
    drop(node);
    let _ = stop_tx.send(());
    let _ = server.await;
}
