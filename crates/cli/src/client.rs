//! The client commands (`submit`, `runs`, `run ...`, `workflow ...`,
//! `cluster ...`) over the public gRPC API, through
//! [`kaon_api::client::Client`]: any node will do, calls retry across
//! leader changes within their deadline.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use kaon_api::client::{Client, new_idempotency_key};
use kaon_api::v1;

/// How client commands reach the cluster and print.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Comma-separated server addresses.
    pub server: String,
    /// Deadline of each call, retries included.
    pub timeout: Duration,
    /// Accept stale reads from the node asked.
    pub stale: bool,
    /// `--output json`.
    pub json: bool,
    /// `--token` / `KAON_TOKEN`.
    pub token: Option<String>,
    /// `--tls-ca` / `KAON_TLS_CA`.
    pub tls_ca: Option<std::path::PathBuf>,
    /// `--tls-cert` and `--tls-key`: a client certificate.
    pub tls_identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Opts {
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        let mut c = Client::new(&self.server).map_err(|e| anyhow::anyhow!("--server: {e}"))?;
        c.deadline = self.timeout;
        c.stale_reads = self.stale;
        c.token = self.token.clone();
        if let Some((cert, key)) = &self.tls_identity {
            c.tls_identity = Some((
                std::fs::read(cert).with_context(|| format!("--tls-cert {}", cert.display()))?,
                std::fs::read(key).with_context(|| format!("--tls-key {}", key.display()))?,
            ));
        }
        if let Some(ca) = &self.tls_ca {
            c.tls_ca =
                Some(std::fs::read(ca).with_context(|| format!("--tls-ca {}", ca.display()))?);
        }
        Ok(c)
    }
}

/// Prints a command's result: `text`, or `json` with `--output json`.
fn done(o: &Opts, text: &str, json: serde_json::Value) {
    if o.json {
        println!("{json}");
    } else {
        println!("{text}");
    }
}

pub(crate) fn status_error(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

fn parse_params(params: &[String]) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for p in params {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("parameter {p:?}: expected NAME=VALUE"))?;
        // VALUE is JSON if it parses, else text.
        let json = match serde_json::from_str::<serde_json::Value>(v) {
            Ok(_) => v.to_string(),
            Err(_) => serde_json::Value::String(v.to_string()).to_string(),
        };
        out.insert(k.to_string(), json);
    }
    Ok(out)
}

/// `kaon submit`.
pub async fn submit(
    o: &Opts,
    file: &str,
    params: &[String],
    key: Option<String>,
    watch: bool,
) -> anyhow::Result<ExitCode> {
    let workflow = submit_target(file)?;
    if let v1::submit_run_request::Workflow::InlineSpec(text) = &workflow {
        let n = schedule_count(text);
        if n > 0 {
            eprintln!(
                "note: {file} has {n} schedule{}, not active: a submitted file runs once; \
                 `kaon workflow register {file}` activates its schedules",
                if n == 1 { "" } else { "s" }
            );
        }
    }
    let mut c = o.client()?;
    // A key makes the retries inside `call` safe: a submit whose answer was
    // lost in a leader change returns the same run.
    let req = v1::SubmitRunRequest {
        workflow: Some(workflow),
        params_json: parse_params(params)?,
        idempotency_key: key.clone().unwrap_or_else(new_idempotency_key),
    };
    let r = c
        .call(req, |mut k, r| async move { k.submit_run(r).await })
        .await
        .map_err(status_error)?;
    let existing = r.existing && key.is_some();
    if o.json {
        println!(
            "{}",
            serde_json::json!({"run_id": r.run_id, "existing": existing})
        );
    } else {
        println!(
            "run {}{}",
            r.run_id,
            if existing {
                " (existing: same idempotency key)"
            } else {
                ""
            }
        );
    }
    if watch {
        watch_run(o, r.run_id).await
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

/// What `kaon submit TARGET` runs: a spec file (inline, registered as a
/// new version if it changed), or, when no such file exists and TARGET is
/// a workflow name, `NAME` (its latest version) or `NAME@VERSION` of a
/// registered workflow (issue 9, G).
/// The number of `schedules:` a spec has (0 if it does not parse: the
/// server then says why).
fn schedule_count(text: &str) -> usize {
    kaon_core::spec::parse(text, &kaon_core::limits::Limits::default())
        .map(|s| s.schedules.len())
        .unwrap_or(0)
}

fn submit_target(target: &str) -> anyhow::Result<v1::submit_run_request::Workflow> {
    use v1::submit_run_request::Workflow;
    let path = std::path::Path::new(target);
    if path.exists() || target == "-" {
        let spec = if target == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading the spec from stdin")?
        } else {
            std::fs::read_to_string(path).with_context(|| format!("reading {target}"))?
        };
        return Ok(Workflow::InlineSpec(spec));
    }
    let looks_like_file = target.contains('/')
        || [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| target.ends_with(ext));
    if looks_like_file {
        anyhow::bail!("reading {target}: no such file");
    }
    let (name, version) = match target.split_once('@') {
        Some((n, v)) => (
            n,
            v.parse::<u32>().ok().filter(|v| *v > 0).with_context(|| {
                format!("{target}: the version after @ must be a number from 1 (e.g. {n}@2)")
            })?,
        ),
        None => (target, 0),
    };
    Ok(Workflow::Registered(v1::WorkflowRef {
        name: name.to_string(),
        version,
    }))
}

/// `kaon run retry`: a new run of a failed or cancelled run that reuses
/// its succeeded steps.
pub async fn retry(
    o: &Opts,
    id: u64,
    key: Option<String>,
    watch: bool,
) -> anyhow::Result<ExitCode> {
    let req = v1::RetryRunRequest {
        run_id: id,
        idempotency_key: key.clone().unwrap_or_else(new_idempotency_key),
    };
    let r = o
        .client()?
        .call(req, |mut k, r| async move { k.retry_run(r).await })
        .await
        .map_err(status_error)?;
    let existing = r.existing && key.is_some();
    if o.json {
        println!(
            "{}",
            serde_json::json!({"run_id": r.run_id, "retry_of": id, "existing": existing})
        );
    } else {
        println!(
            "run {} (retry of run {id}){}",
            r.run_id,
            if existing {
                " (existing: same idempotency key)"
            } else {
                ""
            }
        );
    }
    if watch {
        watch_run(o, r.run_id).await
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

fn run_json(r: &v1::Run) -> serde_json::Value {
    serde_json::json!({
        "id": r.id, "workflow": r.workflow, "version": r.version, "status": r.status, "message": r.message,
        "submitted_unix_ms": r.submitted_unix_ms, "finished_unix_ms": r.finished_unix_ms,
        "steps": r.steps.iter().map(|s| serde_json::json!({"path": s.path, "status": s.status, "kind": s.kind,
            "attempts": s.attempts, "percent": s.percent, "status_text": s.status_text, "message": s.message,
            "outputs": serde_json::from_str::<serde_json::Value>(&s.outputs_json).unwrap_or(serde_json::Value::Null)})).collect::<Vec<_>>(),
    })
}

fn run_line(r: &v1::Run) -> String {
    format!(
        "run {} {}@{}: {}{}",
        r.id,
        r.workflow,
        r.version,
        r.status,
        if r.message.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.message)
        }
    )
}

fn step_line(s: &v1::Step) -> String {
    let pct = if s.status == "running" {
        format!(" {:>3}%", s.percent)
    } else {
        String::new()
    };
    let live = s.status == "running" || s.status == "pending";
    format!(
        "  {:<10}{} {}{}",
        s.status,
        pct,
        s.path,
        if !s.message.is_empty() {
            format!(": {}", s.message)
        } else if live && !s.status_text.is_empty() {
            // Progress from the executor, or why it waits (a pending reason).
            format!(": {}", s.status_text)
        } else {
            String::new()
        }
    )
}

fn print_run(r: &v1::Run) {
    println!("{}", run_line(r));
    for s in r.steps.iter().filter(|s| s.kind == "task") {
        println!("{}", step_line(s));
    }
}

async fn get_run(c: &mut Client, id: u64) -> Result<v1::Run, tonic::Status> {
    c.call(v1::GetRunRequest { run_id: id }, |mut k, r| async move {
        k.get_run(r).await
    })
    .await
}

/// `kaon run show`.
pub async fn show(o: &Opts, id: u64) -> anyhow::Result<ExitCode> {
    let r = get_run(&mut o.client()?, id).await.map_err(status_error)?;
    if o.json {
        println!("{}", run_json(&r));
    } else {
        print_run(&r);
    }
    Ok(ExitCode::SUCCESS)
}

/// A terminal progress display of a run: the DAG's task steps with their
/// states and a bar per running step, redrawn in place.
struct Board {
    lines: usize,
}

impl Board {
    fn draw(&mut self, run: &v1::Run) {
        let mut out = String::new();
        if self.lines > 0 {
            // Up to the board's first line, then clear to the end.
            out.push_str(&format!("\x1b[{}A\x1b[J", self.lines));
        }
        let mut lines = vec![run_line(run)];
        let width = 20;
        for s in run.steps.iter().filter(|s| s.kind == "task") {
            let mark = match s.status.as_str() {
                "succeeded" => "ok  ",
                "running" => "..  ",
                "failed" => "FAIL",
                "failed_ignored" => "fail",
                "skipped" => "skip",
                "cancelled" => "cncl",
                "pending" => "wait",
                _ => "    ",
            };
            let bar = if s.status == "running" {
                let filled = (s.percent.min(100) as usize * width) / 100;
                format!(
                    " [{}{}] {:>3}%",
                    "#".repeat(filled),
                    " ".repeat(width - filled),
                    s.percent
                )
            } else {
                // The bar's width in blanks: the text column stays put.
                " ".repeat(width + 8)
            };
            let text =
                if !s.status_text.is_empty() && (s.status == "running" || s.status == "pending") {
                    format!("  {}", s.status_text)
                } else if !s.message.is_empty() && s.status != "succeeded" {
                    format!("  {}", s.message)
                } else {
                    String::new()
                };
            let line = format!("  {mark} {:<32}{bar}{text}", s.path);
            lines.push(line.trim_end().to_string());
        }
        for l in &lines {
            out.push_str(l);
            out.push('\n');
        }
        self.lines = lines.len();
        print!("{out}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
}

/// `kaon run watch`: until the run ends, a live board on a terminal, else
/// one line per step change (JSON lines with `--output json`); exit 0 if
/// it succeeded. A broken stream (node down, leader change) resumes from
/// the last event seen, at any node.
pub async fn watch_run(o: &Opts, id: u64) -> anyhow::Result<ExitCode> {
    let mut c = o.client()?;
    let mut board = (!o.json && std::io::stdout().is_terminal()).then_some(Board { lines: 0 });
    let mut last: HashMap<String, (String, u32)> = HashMap::new();
    let mut after = 0;
    let mut broken = 0u32;
    loop {
        let req = v1::WatchRunRequest {
            run_id: id,
            after_index: after,
        };
        let mut stream = c
            .call(req, |mut k, r| async move { k.watch_run(r).await })
            .await
            .map_err(status_error)?;
        loop {
            let ev = match stream.message().await {
                Ok(Some(ev)) => ev,
                Ok(None) | Err(_) => break,
            };
            broken = 0;
            if let Some(e) = &ev.event {
                after = e.index;
            }
            let Some(run) = ev.run else { continue };
            match &mut board {
                Some(b) => b.draw(&run),
                None => {
                    for s in run.steps.iter().filter(|s| s.kind == "task") {
                        let now = (s.status.clone(), s.percent);
                        if last.get(&s.path) != Some(&now) {
                            if o.json {
                                println!(
                                    "{}",
                                    serde_json::json!({"index": after, "path": s.path, "status": s.status, "percent": s.percent, "status_text": s.status_text})
                                );
                            } else {
                                let pct = if s.status == "running" && s.percent > 0 {
                                    format!(" {:>3}%", s.percent)
                                } else {
                                    String::new()
                                };
                                println!("  {:<10}{} {}", s.status, pct, s.path);
                            }
                            last.insert(s.path.clone(), now);
                        }
                    }
                }
            }
            if run.status != "running" {
                if !o.json && board.is_none() {
                    println!(
                        "run {id} {}{}",
                        run.status,
                        if run.message.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", run.message)
                        }
                    );
                }
                return Ok(if run.status == "succeeded" {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
        }
        // The stream ended before the run did: resume where it broke.
        broken += 1;
        if broken > 50 {
            anyhow::bail!("the watch of run {id} keeps breaking; last event seen: {after}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `kaon run cancel`.
pub async fn cancel(o: &Opts, id: u64, reason: String) -> anyhow::Result<ExitCode> {
    o.client()?
        .call(
            v1::CancelRunRequest { run_id: id, reason },
            |mut k, r| async move { k.cancel_run(r).await },
        )
        .await
        .map_err(status_error)?;
    done(
        o,
        &format!("run {id} cancelling"),
        serde_json::json!({"run_id": id, "cancelling": true}),
    );
    Ok(ExitCode::SUCCESS)
}

/// How far back `kaon run logs --tail N` looks for the last N lines (the
/// server's `LOG_READ_BYTES_MAX`: one read).
const TAIL_SCAN_BYTES_MAX: u32 = 1 << 20;

/// Where the last `n` lines of `data` start (a final line without a
/// newline counts as a line).
fn last_lines_start(data: &[u8], n: usize) -> usize {
    if n == 0 {
        return data.len();
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    body.iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(n - 1)
        .map(|(i, _)| i + 1)
        .unwrap_or(0)
}

/// `kaon run logs`: a step attempt's stdout or stderr; `--follow` keeps
/// reading until the attempt ends.
pub async fn logs(
    o: &Opts,
    id: u64,
    step: &str,
    attempt: u32,
    stderr: bool,
    tail: Option<u32>,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut c = o.client()?;
    let stream = if stderr { "stderr" } else { "stdout" };
    let mut offset: i64 = 0;
    let mut out = std::io::stdout().lock();
    if let Some(n) = tail {
        // The last `n` lines, found in the final TAIL_SCAN_BYTES_MAX bytes
        // (a log whose last lines are longer than that starts mid-line).
        let req = v1::ReadStepLogsRequest {
            run_id: id,
            step_path: step.to_string(),
            attempt,
            stream: stream.into(),
            offset: -i64::from(TAIL_SCAN_BYTES_MAX),
            max_bytes: TAIL_SCAN_BYTES_MAX,
        };
        let r = c
            .call(req, |mut k, r| async move { k.read_step_logs(r).await })
            .await
            .map_err(status_error)?;
        let start = last_lines_start(&r.data, n as usize);
        out.write_all(&r.data[start..])?;
        out.flush()?;
        offset = r.offset + r.data.len() as i64;
        if !follow || r.complete {
            return Ok(ExitCode::SUCCESS);
        }
    }
    loop {
        let req = v1::ReadStepLogsRequest {
            run_id: id,
            step_path: step.to_string(),
            attempt,
            stream: stream.into(),
            offset,
            max_bytes: 0,
        };
        let r = c
            .call(req, |mut k, r| async move { k.read_step_logs(r).await })
            .await
            .map_err(status_error)?;
        out.write_all(&r.data)?;
        out.flush()?;
        offset = r.offset + r.data.len() as i64;
        let more = offset < r.size;
        if more {
            continue;
        }
        if !follow || r.complete {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `kaon runs`.
pub async fn runs(
    o: &Opts,
    workflow: Option<String>,
    status: Option<String>,
    limit: u32,
    before: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let req = v1::ListRunsRequest {
        workflow: workflow.unwrap_or_default(),
        status: status.unwrap_or_default(),
        page_size: limit,
        page_token: before.unwrap_or(0),
    };
    let r = o
        .client()?
        .call(req, |mut k, r| async move { k.list_runs(r).await })
        .await
        .map_err(status_error)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    // Running runs count up to now.
    let duration_ms = |x: &v1::RunSummary| {
        let end = if x.finished_unix_ms > 0 {
            x.finished_unix_ms
        } else {
            now_ms
        };
        (x.submitted_unix_ms > 0).then(|| (end - x.submitted_unix_ms).max(0))
    };
    if o.json {
        let list: Vec<_> = r
            .runs
            .iter()
            .map(|x| {
                serde_json::json!({"id": x.id, "workflow": x.workflow, "version": x.version,
                    "status": x.status, "message": x.message,
                    "submitted_unix_ms": x.submitted_unix_ms,
                    "finished_unix_ms": (x.finished_unix_ms > 0).then_some(x.finished_unix_ms),
                    "duration_ms": duration_ms(x)})
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        println!(
            "{:<8} {:<24} {:<8} {:<10} {:<20} {:>9}  MESSAGE",
            "RUN", "WORKFLOW", "VERSION", "STATUS", "SUBMITTED (UTC)", "DURATION"
        );
        for x in &r.runs {
            println!(
                "{:<8} {:<24} {:<8} {:<10} {:<20} {:>9}  {}",
                x.id,
                x.workflow,
                x.version,
                x.status,
                utc_time(x.submitted_unix_ms),
                duration_ms(x).map(human_duration).unwrap_or_default(),
                x.message
            );
        }
        if r.next_page_token != 0 {
            println!("more: kaon runs --before {}", r.next_page_token);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub use kaon_core::display::{human_duration, utc_time};

/// `kaon workflow register`.
pub async fn register(o: &Opts, file: &str) -> anyhow::Result<ExitCode> {
    let spec = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    let schedules = schedule_count(&spec);
    let r = o
        .client()?
        .call(
            v1::RegisterWorkflowRequest { spec },
            |mut k, r| async move { k.register_workflow(r).await },
        )
        .await
        .map_err(status_error)?;
    if o.json {
        println!(
            "{}",
            serde_json::json!({"name": r.name, "version": r.version, "created": r.created})
        );
    } else {
        println!(
            "{} version {}{}",
            r.name,
            r.version,
            if r.created { "" } else { " (unchanged)" }
        );
        if schedules > 0 {
            println!(
                "{schedules} schedule{} registered (`kaon schedule list` shows them)",
                if schedules == 1 { "" } else { "s" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kaon workflow list`.
pub async fn workflows(o: &Opts) -> anyhow::Result<ExitCode> {
    let r = o
        .client()?
        .call(v1::ListWorkflowsRequest {}, |mut k, r| async move {
            k.list_workflows(r).await
        })
        .await
        .map_err(status_error)?;
    if o.json {
        let list: Vec<_> = r.workflows.iter().map(|w| serde_json::json!({"name": w.name, "latest_version": w.latest_version, "schedules": w.schedules})).collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        for w in &r.workflows {
            println!(
                "{} (latest version {}, {} schedules)",
                w.name, w.latest_version, w.schedules
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kaon schedule list`.
pub async fn schedules(o: &Opts) -> anyhow::Result<ExitCode> {
    let r = o
        .client()?
        .call(v1::ListSchedulesRequest {}, |mut k, r| async move {
            k.list_schedules(r).await
        })
        .await
        .map_err(status_error)?;
    let when = |ms: i64| {
        if ms == 0 {
            "never".to_string()
        } else {
            format!("{ms} (unix ms)")
        }
    };
    if o.json {
        let list: Vec<_> = r
            .schedules
            .iter()
            .map(|s| {
                serde_json::json!({"workflow": s.workflow, "index": s.index, "cron": s.cron,
                    "timezone": s.timezone, "paused": s.paused, "last_fire_unix_ms": s.last_fire_unix_ms})
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else if r.schedules.is_empty() {
        println!("no schedules (a workflow's schedules come with `kaon workflow register`)");
    } else {
        for s in &r.schedules {
            println!(
                "{} #{}  {:<20} {:<16} {}  last fire: {}",
                s.workflow,
                s.index,
                s.cron,
                if s.timezone.is_empty() {
                    "UTC"
                } else {
                    &s.timezone
                },
                if s.paused { "paused" } else { "active" },
                when(s.last_fire_unix_ms)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kaon schedule pause|resume WORKFLOW [INDEX]`.
pub async fn set_schedule_paused(
    o: &Opts,
    workflow: &str,
    index: u32,
    paused: bool,
) -> anyhow::Result<ExitCode> {
    o.client()?
        .call(
            v1::SetSchedulePausedRequest {
                workflow: workflow.to_string(),
                index,
                paused,
            },
            |mut k, r| async move { k.set_schedule_paused(r).await },
        )
        .await
        .map_err(status_error)?;
    let word = if paused { "paused" } else { "resumed" };
    done(
        o,
        &format!("schedule {workflow} #{index} {word}"),
        serde_json::json!({"workflow": workflow, "index": index, "paused": paused}),
    );
    Ok(ExitCode::SUCCESS)
}

/// `kaon cluster status`: the view of the first node that answers (give
/// one `--server` to ask a particular node).
pub async fn cluster_status(o: &Opts) -> anyhow::Result<ExitCode> {
    let r = o
        .client()?
        .call(v1::ClusterStatusRequest {}, |mut k, r| async move {
            k.cluster_status(r).await
        })
        .await
        .map_err(status_error)?;
    if o.json {
        let members: Vec<_> = r
            .members
            .iter()
            .map(|m| serde_json::json!({"id": m.id, "raft_addr": m.raft_addr, "api_addr": m.api_addr, "voter": m.voter, "lag_entries": m.lag_entries, "reachable": m.reachable}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"node_id": r.node_id, "state": r.state, "term": r.term, "leader_id": r.leader_id,
                "last_log_index": r.last_log_index, "committed_index": r.committed_index, "applied_index": r.applied_index,
                "applied_event_index": r.applied_event_index, "state_digest": r.state_digest, "members": members,
                "ready": r.ready, "not_ready_reason": r.not_ready_reason})
        );
    } else {
        println!(
            "node {} ({}), term {}, leader {}, log {} committed {} applied {} ({} events)",
            r.node_id,
            r.state,
            r.term,
            if r.leader_id == 0 {
                "unknown".to_string()
            } else {
                r.leader_id.to_string()
            },
            r.last_log_index,
            r.committed_index,
            r.applied_index,
            r.applied_event_index
        );
        if r.ready {
            println!("ready: serves reads and writes");
        } else {
            println!("NOT READY: {}", r.not_ready_reason);
        }
        let leads = r.leader_id == r.node_id;
        for m in &r.members {
            println!(
                "  member {} raft {} api {} {} lag {}{}",
                m.id,
                m.raft_addr,
                if m.api_addr.is_empty() {
                    "-"
                } else {
                    &m.api_addr
                },
                if m.voter { "voter" } else { "learner" },
                m.lag_entries,
                match (leads, m.reachable) {
                    (false, _) => "",
                    (true, true) => " reachable",
                    (true, false) => " UNREACHABLE",
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kaon cluster init`: forms a cluster from a node started with `--join`.
pub async fn cluster_init(o: &Opts, members: &[String]) -> anyhow::Result<ExitCode> {
    let mut map = HashMap::new();
    for m in members {
        let (id, addr) = parse_member(m)?;
        map.insert(id, addr);
    }
    o.client()?
        .call(
            v1::InitClusterRequest { members: map },
            |mut k, r| async move { k.init_cluster(r).await },
        )
        .await
        .map_err(status_error)?;
    done(
        o,
        &format!("cluster formed with {} members", members.len()),
        serde_json::json!({"members": members.len()}),
    );
    Ok(ExitCode::SUCCESS)
}

/// Parses `--member ID=HOST:PORT`, checking the address as the server
/// will (so a typo is refused before anything is sent).
pub fn parse_member(m: &str) -> anyhow::Result<(u64, String)> {
    let (id, addr) = m
        .split_once('=')
        .with_context(|| format!("--member {m:?}: expected ID=HOST:PORT (Raft address)"))?;
    let id: u64 = id
        .parse()
        .with_context(|| format!("--member {m:?}: the id must be a number"))?;
    anyhow::ensure!(id > 0, "--member {m:?}: node ids start at 1");
    kaon_log::membership::parse_raft_addr(addr)
        .map_err(|e| anyhow::anyhow!("--member {m:?}: raft address {e}"))?;
    Ok((id, addr.to_string()))
}

/// `kaon cluster add-node`.
pub async fn add_node(
    o: &Opts,
    id: u64,
    raft_addr: String,
    learner: bool,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(id > 0, "node ids start at 1");
    kaon_log::membership::parse_raft_addr(&raft_addr)
        .map_err(|e| anyhow::anyhow!("raft address {e}"))?;
    o.client()?
        .call(
            v1::AddNodeRequest {
                node_id: id,
                raft_addr,
                learner,
            },
            |mut k, r| async move { k.add_node(r).await },
        )
        .await
        .map_err(status_error)?;
    let role = if learner { "learner" } else { "voter" };
    done(
        o,
        &format!("node {id} added as a {role}"),
        serde_json::json!({"node_id": id, "role": role}),
    );
    Ok(ExitCode::SUCCESS)
}

/// `kaon cluster remove-node`.
pub async fn remove_node(o: &Opts, id: u64) -> anyhow::Result<ExitCode> {
    o.client()?
        .call(
            v1::RemoveNodeRequest { node_id: id },
            |mut k, r| async move { k.remove_node(r).await },
        )
        .await
        .map_err(status_error)?;
    done(
        o,
        &format!("node {id} removed"),
        serde_json::json!({"node_id": id, "removed": true}),
    );
    Ok(ExitCode::SUCCESS)
}

/// `kaon cluster transfer-leader`.
pub async fn transfer_leader(o: &Opts, id: u64) -> anyhow::Result<ExitCode> {
    o.client()?
        .call(
            v1::TransferLeaderRequest { node_id: id },
            |mut k, r| async move { k.transfer_leader(r).await },
        )
        .await
        .map_err(status_error)?;
    done(
        o,
        &format!("leadership handed to node {id}"),
        serde_json::json!({"leader_id": id}),
    );
    Ok(ExitCode::SUCCESS)
}

/// `kaon cluster snapshot` (on the node asked).
pub async fn snapshot(o: &Opts) -> anyhow::Result<ExitCode> {
    let r = o
        .client()?
        .call(v1::SnapshotRequest {}, |mut k, r| async move {
            k.snapshot(r).await
        })
        .await
        .map_err(status_error)?;
    if o.json {
        println!(
            "{}",
            serde_json::json!({"node_id": r.node_id, "raft_log_index": r.raft_log_index,
                "event_index": r.event_index, "chain_head": r.chain_head,
                "state_digest": r.state_digest})
        );
    } else {
        println!(
            "node {} snapshot at Raft log index {}, event {}: chain head {}, state digest {}",
            r.node_id, r.raft_log_index, r.event_index, r.chain_head, r.state_digest
        );
    }
    Ok(ExitCode::SUCCESS)
}
