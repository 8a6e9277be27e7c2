//! The web UI, served by every node on the admin port under `/ui/`.
//!
//! It is a client of the node's own gRPC API (over loopback), so it reads
//! exactly what `kaon` and every other client read, linearizable by
//! default, and its writes (cancel, retry, pause, resume) take the same
//! path: forwarded to the leader, decided in the core, committed before
//! they are answered. Pages are HTML rendered on the server (maud); a
//! run's DAG is laid out and drawn as SVG in Rust ([`dag`]); a running
//! run's page follows it over server-sent events with a few lines of plain
//! JavaScript (`ui.js`), which also follows a running step's log. No
//! JavaScript package is used (none can be fetched here).

pub mod dag;

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use kaon_api::v1;
use kaon_api::v1::kaon_client::KaonClient;
use maud::{DOCTYPE, Markup, html};
use tonic::transport::Channel;

/// Runs per page of the runs list.
const RUNS_PAGE_SIZE: u32 = 50;
/// Bytes of a step's log shown at first (the page then follows it).
const LOG_TAIL_BYTES: i64 = 64 * 1024;
/// Bytes one follow request reads at most.
const LOG_READ_BYTES_MAX: u32 = 256 * 1024;

const CSS: &str = include_str!("ui.css");
const JS: &str = include_str!("ui.js");
/// The tab icon: a green step box.
const ICON: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\">\
<rect x=\"1.5\" y=\"3.5\" width=\"13\" height=\"9\" rx=\"2\" fill=\"#e9f6ee\" stroke=\"#2e9d5b\" stroke-width=\"2\"/></svg>";

/// Name of the cookie that holds the signed-in user's API token.
const TOKEN_COOKIE: &str = "kaon_token";

tokio::task_local! {
    /// The token of the browser a request came from (its cookie), for the
    /// API calls that request makes: the UI acts with the user's rights,
    /// never its own.
    static TOKEN: Option<String>;
}

/// Puts the caller's token on every API call of one UI request.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

/// The UI's API client, carrying the user's token.
type Api = KaonClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// What the UI's handlers share: a channel to this node's API.
#[derive(Clone)]
pub struct Ui {
    channel: Channel,
}

impl Ui {
    /// A UI reading through the API at `api_url` (this node's, e.g.
    /// `http://127.0.0.1:7070`); connects on first use.
    ///
    /// With `tls`, the UI dials the API over TLS as the node itself (the
    /// API's certificate must name the address in `api_url`).
    pub fn new(
        api_url: &str,
        tls: Option<std::sync::Arc<kaon_log::tls::Tls>>,
    ) -> anyhow::Result<Ui> {
        let endpoint = Channel::from_shared(api_url.to_string())
            .map_err(|e| anyhow::anyhow!("the API address {api_url:?} for the UI: {e}"))?;
        let channel = match tls {
            Some(tls) => endpoint.connect_with_connector_lazy(tls.connector()),
            None => endpoint.connect_lazy(),
        };
        Ok(Ui { channel })
    }

    /// A client acting for the browser whose request is being served.
    fn api(&self) -> Api {
        let token = TOKEN.try_with(|t| t.clone()).ok().flatten();
        let bearer = token.and_then(|t| format!("Bearer {t}").parse().ok());
        KaonClient::with_interceptor(self.channel.clone(), Bearer(bearer))
    }
}

/// The UI's routes (under `/ui/`, and `/` redirecting there).
pub fn router(ui: Ui) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(runs_page))
        .route(
            "/ui/ui.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], CSS) }),
        )
        .route("/ui/icon.svg", get(icon))
        .route("/favicon.ico", get(icon))
        .route(
            "/ui/ui.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], JS) }),
        )
        .route("/ui/runs/{id}", get(run_page))
        .route("/ui/runs/{id}/live", get(run_live))
        .route("/ui/runs/{id}/fragment", get(run_fragment))
        .route("/ui/runs/{id}/cancel", post(run_cancel))
        .route("/ui/runs/{id}/retry", post(run_retry))
        .route("/ui/runs/{id}/steps/{*path}", get(step_page))
        .route("/ui/runs/{id}/log/{*path}", get(step_log))
        .route("/ui/workflows", get(workflows_page))
        .route("/ui/workflows/{name}", get(workflow_page))
        .route("/ui/schedules", get(schedules_page))
        .route("/ui/schedules/pause", post(schedule_pause))
        .route("/ui/cluster", get(cluster_page))
        .route("/ui/audit", get(audit_page))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .layer(axum::middleware::from_fn(with_token))
        .with_state(ui)
}

/// The value of cookie `name` in `headers`.
fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

/// Serves a request with its browser's token in [`TOKEN`].
async fn with_token(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let token = cookie(req.headers(), TOKEN_COOKIE);
    TOKEN.scope(token, next.run(req)).await
}

#[derive(serde::Deserialize, Default)]
struct LoginQuery {
    #[serde(default)]
    why: String,
}

fn login_form(why: &str) -> Markup {
    page(
        "Sign in",
        "",
        html! {
            h1 { "Sign in" }
            @if !why.is_empty() { p.error { (why) } }
            p { "This cluster needs an API token (an operator makes one with "
                code { "kaon token new" } "). It is kept in a cookie of this browser only." }
            form method="post" action="/ui/login" {
                input type="password" name="token" placeholder="kaon_…" autocomplete="off" required;
                " "
                button type="submit" { "Sign in" }
            }
        },
    )
}

async fn login_page(Query(q): Query<LoginQuery>) -> Response {
    html_response(login_form(&q.why))
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

/// Checks the token with a read the weakest role may make, then keeps it
/// in an HttpOnly, SameSite=Strict cookie (no script reads it; other
/// sites' forms do not send it).
async fn login(State(ui): State<Ui>, Form(f): Form<LoginForm>) -> Response {
    let token = f.token.trim().to_string();
    let fits = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b));
    if !fits {
        return (
            StatusCode::BAD_REQUEST,
            Html(login_form("That is not a kaon token.").into_string()),
        )
            .into_response();
    }
    let check = TOKEN
        .scope(Some(token.clone()), async {
            ui.api().cluster_status(v1::ClusterStatusRequest {}).await
        })
        .await;
    match check {
        Err(s) if s.code() == tonic::Code::Unauthenticated => (
            StatusCode::UNAUTHORIZED,
            Html(login_form(s.message()).into_string()),
        )
            .into_response(),
        _ => (
            [(
                header::SET_COOKIE,
                format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"),
            )],
            Redirect::to("/ui/"),
        )
            .into_response(),
    }
}

async fn logout() -> Response {
    (
        [(
            header::SET_COOKIE,
            format!("{TOKEN_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Redirect::to("/ui/login"),
    )
        .into_response()
}

async fn icon() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "image/svg+xml")], ICON)
}

/// An error page: the API's answer, with the matching HTTP status (a
/// missing or unknown token: the sign-in form).
struct UiError(StatusCode, String);

impl From<tonic::Status> for UiError {
    fn from(s: tonic::Status) -> UiError {
        let code = match s.code() {
            tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                StatusCode::BAD_REQUEST
            }
            tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        UiError(code, s.message().to_string())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        if self.0 == StatusCode::UNAUTHORIZED {
            return (self.0, Html(login_form(&self.1).into_string())).into_response();
        }
        let body = page(
            "Error",
            "",
            html! {
                h1 { "Error " (self.0.as_u16()) }
                p.error { (self.1) }
            },
        );
        (self.0, Html(body.into_string())).into_response()
    }
}

type UiResult = Result<Response, UiError>;

fn page(title: &str, nav: &str, body: Markup) -> Markup {
    let tab = |href: &str, name: &str, key: &str| {
        html! { a href=(href) class=(if nav == key { "active" } else { "" }) { (name) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · kaon" }
                link rel="stylesheet" href="/ui/ui.css";
                link rel="icon" href="/ui/icon.svg" type="image/svg+xml";
                script src="/ui/ui.js" defer {}
            }
            body {
                header {
                    a.brand href="/ui/" { "kaon" }
                    nav {
                        (tab("/ui/", "Runs", "runs"))
                        (tab("/ui/workflows", "Workflows", "workflows"))
                        (tab("/ui/schedules", "Schedules", "schedules"))
                        (tab("/ui/cluster", "Cluster", "cluster"))
                        (tab("/ui/audit", "Audit", "audit"))
                    }
                    @if TOKEN.try_with(|t| t.is_some()).unwrap_or(false) {
                        form.signout method="post" action="/ui/logout" {
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn html_response(m: Markup) -> Response {
    Html(m.into_string()).into_response()
}

use kaon_core::display::{human_duration as duration, utc_time as time};

fn badge(status: &str) -> Markup {
    html! { span class=(format!("badge status-{status}")) data-status=(status) { (status) } }
}

fn step_href(run: u64, path: &str) -> String {
    format!("/ui/runs/{run}/steps/{}", url_path(path))
}

use crate::grpc::url_escape as url_path;

fn query(p: &str) -> String {
    url_path(p).replace('/', "%2F")
}

#[derive(serde::Deserialize, Default)]
struct RunsQuery {
    #[serde(default)]
    workflow: String,
    #[serde(default)]
    status: String,
    /// Show runs below this id (paging).
    #[serde(default)]
    before: u64,
    /// Only runs submitted in the last this many hours (0: all).
    #[serde(default)]
    hours: u64,
}

async fn runs_page(State(ui): State<Ui>, Query(q): Query<RunsQuery>) -> UiResult {
    let mut api = ui.api();
    let list = api
        .list_runs(v1::ListRunsRequest {
            workflow: q.workflow.clone(),
            status: q.status.clone(),
            page_size: RUNS_PAGE_SIZE,
            page_token: q.before,
        })
        .await?
        .into_inner();
    let workflows = api
        .list_workflows(v1::ListWorkflowsRequest {})
        .await?
        .into_inner()
        .workflows;
    let now = now_ms();
    let since = (q.hours > 0).then(|| now - (q.hours as i64) * 3_600_000);
    let runs: Vec<&v1::RunSummary> = list
        .runs
        .iter()
        .filter(|r| since.is_none_or(|s| r.submitted_unix_ms >= s))
        .collect();
    // Runs come newest first: once one is older than the window, so are
    // all below it.
    let more = list.next_page_token != 0
        && since.is_none_or(|s| list.runs.last().is_some_and(|r| r.submitted_unix_ms >= s));
    let body = html! {
        h1 { "Runs" }
        form.filters method="get" action="/ui/" {
            label { "Workflow "
                select name="workflow" {
                    option value="" { "all" }
                    @for w in &workflows {
                        option value=(w.name) selected[w.name == q.workflow] { (w.name) }
                    }
                }
            }
            label { "Status "
                select name="status" {
                    @for s in ["", "running", "succeeded", "failed", "cancelled"] {
                        option value=(s) selected[s == q.status] { @if s.is_empty() { "all" } @else { (s) } }
                    }
                }
            }
            label { "Submitted "
                select name="hours" {
                    @for (h, name) in [(0u64, "any time"), (1, "last hour"), (24, "last day"), (168, "last week")] {
                        option value=(h) selected[h == q.hours] { (name) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        @if runs.is_empty() {
            p.empty { "No runs." }
        } @else {
            table.runs {
                thead { tr { th { "Run" } th { "Workflow" } th { "Status" } th { "Submitted" } th { "Duration" } th { "Message" } } }
                tbody {
                    @for r in &runs {
                        @let end = if r.finished_unix_ms > 0 { r.finished_unix_ms } else { now };
                        tr data-run=(r.id) {
                            td { a href=(format!("/ui/runs/{}", r.id)) { (r.id) } }
                            td { a href=(format!("/ui/workflows/{}", query(&r.workflow))) { (r.workflow) } "@" (r.version) }
                            td { (badge(&r.status)) }
                            td { (time(r.submitted_unix_ms)) }
                            td { (duration((end - r.submitted_unix_ms).max(0))) }
                            td.message { (r.message) }
                        }
                    }
                }
            }
        }
        @if more {
            p { a.more href=(format!("/ui/?workflow={}&status={}&hours={}&before={}", query(&q.workflow), query(&q.status), q.hours, list.next_page_token)) { "Older runs →" } }
        }
    };
    Ok(html_response(page("Runs", "runs", body)))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The last part of a step path, for its box.
fn label(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

/// The DAG of a run: every step a box; dependencies solid, membership in
/// a group/foreach/loop dashed; what waits for a group drawn after the
/// group's members.
fn run_dag(run: &v1::Run) -> Markup {
    let index: BTreeMap<&str, usize> = run
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.path.as_str(), i))
        .collect();
    let nodes: Vec<dag::Node> = run
        .steps
        .iter()
        .map(|s| dag::Node {
            path: s.path.clone(),
            label: label(&s.path),
            status: s.status.clone(),
            kind: s.kind.clone(),
            percent: s.percent,
            status_text: s.status_text.clone(),
            attempts: s.attempts,
            href: step_href(run.id, &s.path),
        })
        .collect();
    let mut children: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut edges = Vec::new();
    for (i, s) in run.steps.iter().enumerate() {
        if let Some(&p) = index.get(s.parent.as_str()) {
            children.entry(p).or_default().push(i);
            edges.push(dag::Edge {
                from: p,
                to: i,
                kind: dag::EdgeKind::Contains,
            });
        }
    }
    let descendants = |root: usize| {
        let mut out = Vec::new();
        let mut stack = vec![root];
        while let Some(v) = stack.pop() {
            for &c in children.get(&v).into_iter().flatten() {
                out.push(c);
                stack.push(c);
            }
        }
        out
    };
    for (i, s) in run.steps.iter().enumerate() {
        for d in &s.depends_on {
            let Some(&from) = index.get(d.as_str()) else {
                continue;
            };
            edges.push(dag::Edge {
                from,
                to: i,
                kind: dag::EdgeKind::Dependency,
            });
            for member in descendants(from) {
                edges.push(dag::Edge {
                    from: member,
                    to: i,
                    kind: dag::EdgeKind::Order,
                });
            }
        }
    }
    dag::svg(&nodes, &edges)
}

/// The part of a run's page that changes while it runs.
fn run_live_part(run: &v1::Run) -> Markup {
    let now = now_ms();
    let end = if run.finished_unix_ms > 0 {
        run.finished_unix_ms
    } else {
        now
    };
    html! {
        div.summary {
            (badge(&run.status))
            span { "submitted " (time(run.submitted_unix_ms)) }
            @if run.finished_unix_ms > 0 { span { "finished " (time(run.finished_unix_ms)) } }
            span { "took " (duration((end - run.submitted_unix_ms).max(0))) }
            @if !run.message.is_empty() { span.message { (run.message) } }
        }
        div.dag-wrap { (run_dag(run)) }
        table.steps {
            thead { tr { th { "Step" } th { "Kind" } th { "Status" } th { "Attempts" } th { "Progress" } th { "Last attempt" } } }
            tbody {
                @for s in &run.steps {
                    tr data-path=(s.path) data-status=(s.status) {
                        td { a href=(step_href(run.id, &s.path)) { (s.path) } }
                        td { (s.kind) }
                        td { (badge(&s.status)) }
                        td { (s.attempts) }
                        td {
                            @if s.status == "running" {
                                progress max="100" value=(s.percent) {} " " (s.percent) "%"
                            }
                            @if !s.status_text.is_empty() { " " span.status-text { (s.status_text) } }
                        }
                        td {
                            @if let Some(a) = s.attempt_list.last() {
                                (a.state.trim_start_matches("TASK_").to_ascii_lowercase())
                                @if let Some(c) = a.exit_code { " exit " (c) }
                                @if !a.cause.is_empty() { " (" (a.cause) ")" }
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn run_page(State(ui): State<Ui>, Path(id): Path<u64>) -> UiResult {
    let mut api = ui.api();
    let run = api
        .get_run(v1::GetRunRequest { run_id: id })
        .await?
        .into_inner();
    // The live stream starts after what this page shows.
    let after = api
        .cluster_status(v1::ClusterStatusRequest {})
        .await?
        .into_inner()
        .applied_event_index;
    let body = html! {
        div.title {
            h1 { "Run " (run.id) " · " a href=(format!("/ui/workflows/{}", query(&run.workflow))) { (run.workflow) } "@" (run.version) }
            div.actions {
                @if run.status == "running" {
                    form method="post" action=(format!("/ui/runs/{}/cancel", run.id)) {
                        button.danger type="submit" id="cancel" { "Cancel" }
                    }
                }
                @if run.status == "failed" || run.status == "cancelled" {
                    form method="post" action=(format!("/ui/runs/{}/retry", run.id)) {
                        input type="hidden" name="key" value=(kaon_api::client::new_idempotency_key());
                        button type="submit" id="retry" { "Retry" }
                    }
                }
            }
        }
        div #live data-run=(run.id) data-after=(after) data-status=(run.status) {
            (run_live_part(&run))
        }
        @if run.params_json != "{}" && !run.params_json.is_empty() {
            h2 { "Parameters" }
            pre.code { (run.params_json) }
        }
    };
    Ok(html_response(page(&format!("Run {id}"), "runs", body)))
}

async fn run_fragment(State(ui): State<Ui>, Path(id): Path<u64>) -> UiResult {
    let run = ui
        .api()
        .get_run(v1::GetRunRequest { run_id: id })
        .await?
        .into_inner();
    Ok(html_response(html! {
        div #live data-run=(run.id) data-status=(run.status) { (run_live_part(&run)) }
    }))
}

#[derive(serde::Deserialize)]
struct LiveQuery {
    #[serde(default)]
    after: u64,
}

/// Server-sent events: `change` for every event of the run after `after`,
/// `end` when it finishes (the page then stops listening).
async fn run_live(
    State(ui): State<Ui>,
    Path(id): Path<u64>,
    Query(q): Query<LiveQuery>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>>, UiError> {
    use futures_util::StreamExt;
    let stream = ui
        .api()
        .watch_run(v1::WatchRunRequest {
            run_id: id,
            after_index: q.after,
        })
        .await?
        .into_inner();
    let events = stream
        .map(|item| match item {
            Ok(ev) => {
                let done = matches!(
                    ev.event.as_ref().and_then(|e| e.body.as_ref()),
                    Some(kaon_core::events::Body::RunFinished(_))
                );
                let index = ev.event.map(|e| e.index).unwrap_or(0);
                Ok(SseEvent::default()
                    .event(if done { "end" } else { "change" })
                    .data(index.to_string()))
            }
            Err(s) => Ok(SseEvent::default().event("failed").data(s.message())),
        })
        .chain(futures_util::stream::once(async {
            Ok(SseEvent::default().event("end").data(""))
        }));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

async fn run_cancel(State(ui): State<Ui>, Path(id): Path<u64>) -> UiResult {
    ui.api()
        .cancel_run(v1::CancelRunRequest {
            run_id: id,
            reason: "cancelled from the web UI".into(),
        })
        .await?;
    Ok(Redirect::to(&format!("/ui/runs/{id}")).into_response())
}

#[derive(serde::Deserialize)]
struct RetryForm {
    /// The idempotency key the page was rendered with: a double click, or
    /// a resubmitted form, is one retry.
    #[serde(default)]
    key: String,
}

async fn run_retry(
    State(ui): State<Ui>,
    Path(id): Path<u64>,
    Form(f): Form<RetryForm>,
) -> UiResult {
    let key = f.key;
    let r = ui
        .api()
        .retry_run(v1::RetryRunRequest {
            run_id: id,
            idempotency_key: key,
        })
        .await?
        .into_inner();
    Ok(Redirect::to(&format!("/ui/runs/{}", r.run_id)).into_response())
}

async fn step_page(State(ui): State<Ui>, Path((id, path)): Path<(u64, String)>) -> UiResult {
    let run = ui
        .api()
        .get_run(v1::GetRunRequest { run_id: id })
        .await?
        .into_inner();
    let Some(step) = run.steps.iter().find(|s| s.path == path) else {
        return Err(UiError(
            StatusCode::NOT_FOUND,
            format!("run {id} has no step {path:?}"),
        ));
    };
    let mut logs = Vec::new();
    if step.kind == "task" && step.attempts > 0 {
        for stream in ["stdout", "stderr"] {
            let r = ui
                .api()
                .read_step_logs(v1::ReadStepLogsRequest {
                    run_id: id,
                    step_path: path.clone(),
                    attempt: 0,
                    stream: stream.into(),
                    offset: -LOG_TAIL_BYTES,
                    max_bytes: LOG_TAIL_BYTES as u32,
                })
                .await;
            logs.push((stream, r.map(|r| r.into_inner())));
        }
    }
    let body = html! {
        h1 { "Step " (step.path) }
        p { a href=(format!("/ui/runs/{id}")) { "← run " (id) " (" (run.workflow) ")" } }
        div.summary {
            (badge(&step.status))
            span { (step.kind) }
            @if step.status == "running" { span { progress max="100" value=(step.percent) {} " " (step.percent) "%" } }
            @if !step.status_text.is_empty() { span.status-text { (step.status_text) } }
            @if !step.message.is_empty() { span.message { (step.message) } }
        }
        @if !step.depends_on.is_empty() {
            p { "Waits for: "
                @for (i, d) in step.depends_on.iter().enumerate() {
                    @if i > 0 { ", " }
                    a href=(step_href(id, d)) { (d) }
                }
            }
        }
        @if !step.attempt_list.is_empty() {
            h2 { "Attempts" }
            table.attempts {
                thead { tr { th { "#" } th { "State" } th { "Exit" } th { "Budget" } th { "Killed" } th { "Agent" } th { "Launched" } th { "Took" } th { "Message" } } }
                tbody {
                    @for a in &step.attempt_list {
                        @let end = if a.ended_unix_ms > 0 { a.ended_unix_ms } else { now_ms() };
                        tr {
                            td { (a.number) }
                            td { (a.state.trim_start_matches("TASK_").to_ascii_lowercase()) }
                            td { @if let Some(c) = a.exit_code { (c) } }
                            td { (a.cause) }
                            td { (a.kill) }
                            td.mono { (a.agent_id) }
                            td { (time(a.launched_unix_ms)) }
                            td { (duration((end - a.launched_unix_ms).max(0))) }
                            td.message { (a.message) }
                        }
                    }
                }
            }
        }
        @if !step.outputs_json.is_empty() {
            h2 { "Outputs" }
            pre.code { (step.outputs_json) }
        }
        @for (stream, r) in &logs {
            h2 { (stream) }
            @match r {
                Ok(r) => {
                    pre.log id=(format!("log-{stream}")) data-run=(id) data-path=(step.path)
                        data-stream=(stream) data-offset=(r.offset + r.data.len() as i64)
                        data-complete=(r.complete) {
                        (String::from_utf8_lossy(&r.data))
                    }
                }
                Err(e) => { p.error { (e.message()) } }
            }
        }
    };
    Ok(html_response(page(&format!("Step {path}"), "runs", body)))
}

#[derive(serde::Deserialize)]
struct LogQuery {
    stream: String,
    offset: i64,
}

/// A piece of a step's log from `offset` (the page follows it).
async fn step_log(
    State(ui): State<Ui>,
    Path((id, path)): Path<(u64, String)>,
    Query(q): Query<LogQuery>,
) -> UiResult {
    let r = ui
        .api()
        .read_step_logs(v1::ReadStepLogsRequest {
            run_id: id,
            step_path: path,
            attempt: 0,
            stream: q.stream,
            offset: q.offset.max(0),
            max_bytes: LOG_READ_BYTES_MAX,
        })
        .await?
        .into_inner();
    let body = serde_json::json!({
        "data": String::from_utf8_lossy(&r.data),
        "offset": r.offset + r.data.len() as i64,
        "complete": r.complete,
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response())
}

async fn workflows_page(State(ui): State<Ui>) -> UiResult {
    let list = ui
        .api()
        .list_workflows(v1::ListWorkflowsRequest {})
        .await?
        .into_inner()
        .workflows;
    let body = html! {
        h1 { "Workflows" }
        @if list.is_empty() { p.empty { "No workflows registered." } } @else {
            table {
                thead { tr { th { "Name" } th { "Latest version" } th { "Schedules" } th {} } }
                tbody {
                    @for w in &list {
                        tr {
                            td { a href=(format!("/ui/workflows/{}", query(&w.name))) { (w.name) } }
                            td { (w.latest_version) }
                            td { (w.schedules) }
                            td { a href=(format!("/ui/?workflow={}", query(&w.name))) { "runs" } }
                        }
                    }
                }
            }
        }
    };
    Ok(html_response(page("Workflows", "workflows", body)))
}

#[derive(serde::Deserialize, Default)]
struct DiffQuery {
    #[serde(default)]
    from: u32,
    #[serde(default)]
    to: u32,
}

/// A spec as people read it: pretty JSON, one key per line.
fn pretty(spec_json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(spec_json)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| spec_json.to_string())
}

async fn workflow_page(
    State(ui): State<Ui>,
    Path(name): Path<String>,
    Query(q): Query<DiffQuery>,
) -> UiResult {
    let wf = ui
        .api()
        .get_workflow(v1::GetWorkflowRequest { name: name.clone() })
        .await?
        .into_inner();
    let latest = wf.versions.last().map(|v| v.version).unwrap_or(0);
    let to = if q.to == 0 { latest } else { q.to };
    let from = if q.from == 0 {
        to.saturating_sub(1)
    } else {
        q.from
    };
    let spec = |v: u32| {
        wf.versions
            .iter()
            .find(|x| x.version == v)
            .map(|x| pretty(&x.spec_json))
    };
    let diff = match (spec(from), spec(to)) {
        (Some(a), Some(b)) if from != to => Some((a, b)),
        _ => None,
    };
    let body = html! {
        h1 { "Workflow " (wf.name) }
        p { a href=(format!("/ui/?workflow={}", query(&wf.name))) { "its runs" } }
        table.versions {
            thead { tr { th { "Version" } th { "Registered" } th { "By" } th {} } }
            tbody {
                @for v in wf.versions.iter().rev() {
                    tr {
                        td { (v.version) }
                        td { (time(v.registered_unix_ms)) }
                        td { @if v.from_submit { "a submit" } @else { "register" } }
                        td { @if v.version > 1 { a href=(format!("?from={}&to={}", v.version - 1, v.version)) { "diff with " (v.version - 1) } } }
                    }
                }
            }
        }
        @if let Some((a, b)) = &diff {
            h2 #diff { "Changes from version " (from) " to " (to) }
            pre.diff {
                @for change in similar::TextDiff::from_lines(a, b).iter_all_changes() {
                    @let (class, sign) = match change.tag() {
                        similar::ChangeTag::Delete => ("del", "-"),
                        similar::ChangeTag::Insert => ("ins", "+"),
                        similar::ChangeTag::Equal => ("eq", " "),
                    };
                    span class=(class) { (sign) " " (change.value()) }
                }
            }
        }
        @if let Some(s) = spec(to) {
            h2 { "Version " (to) }
            pre.code { (s) }
        }
    };
    Ok(html_response(page(
        &format!("Workflow {name}"),
        "workflows",
        body,
    )))
}

async fn schedules_page(State(ui): State<Ui>) -> UiResult {
    let list = ui
        .api()
        .list_schedules(v1::ListSchedulesRequest {})
        .await?
        .into_inner()
        .schedules;
    let body = html! {
        h1 { "Schedules" }
        @if list.is_empty() { p.empty { "No schedules." } } @else {
            table {
                thead { tr { th { "Workflow" } th { "#" } th { "Cron" } th { "Time zone" } th { "Last fire" } th { "State" } th {} } }
                tbody {
                    @for s in &list {
                        tr data-workflow=(s.workflow) data-index=(s.index) {
                            td { a href=(format!("/ui/workflows/{}", query(&s.workflow))) { (s.workflow) } }
                            td { (s.index) }
                            td.mono { (s.cron) }
                            td { (s.timezone) }
                            td { (time(s.last_fire_unix_ms)) }
                            td { @if s.paused { span.badge.status-cancelled { "paused" } } @else { span.badge.status-succeeded { "active" } } }
                            td {
                                form method="post" action="/ui/schedules/pause" {
                                    input type="hidden" name="workflow" value=(s.workflow);
                                    input type="hidden" name="index" value=(s.index);
                                    input type="hidden" name="paused" value=(!s.paused);
                                    button type="submit" { @if s.paused { "Resume" } @else { "Pause" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(html_response(page("Schedules", "schedules", body)))
}

#[derive(serde::Deserialize)]
struct PauseForm {
    workflow: String,
    index: u32,
    paused: bool,
}

async fn schedule_pause(State(ui): State<Ui>, Form(f): Form<PauseForm>) -> UiResult {
    ui.api()
        .set_schedule_paused(v1::SetSchedulePausedRequest {
            workflow: f.workflow,
            index: f.index,
            paused: f.paused,
        })
        .await?;
    Ok(Redirect::to("/ui/schedules").into_response())
}

async fn cluster_page(State(ui): State<Ui>) -> UiResult {
    let st = ui
        .api()
        .cluster_status(v1::ClusterStatusRequest {})
        .await?
        .into_inner();
    let body = html! {
        h1 { "Cluster" }
        div.summary {
            span { "asked node " (st.node_id) " (" (st.state) ")" }
            span { "term " (st.term) }
            span { "leader " @if st.leader_id == 0 { "none" } @else { (st.leader_id) } }
            span { "committed " (st.committed_index) }
            span { "events " (st.applied_event_index) }
            @if st.ready { span.badge.status-succeeded { "ready" } } @else { span.badge.status-failed { "not ready: " (st.not_ready_reason) } }
        }
        table.members {
            thead { tr { th { "Node" } th { "Role" } th { "Raft address" } th { "API address" } th { "Lag (entries)" } th { "Reachable" } } }
            tbody {
                @for m in &st.members {
                    tr data-node=(m.id) {
                        td { (m.id) }
                        td { @if m.id == st.leader_id { "leader" } @else if m.voter { "voter" } @else { "learner" } }
                        td.mono { (m.raft_addr) }
                        td.mono { (m.api_addr) }
                        td { (m.lag_entries) }
                        td { @if m.reachable { "yes" } @else { "no" } }
                    }
                }
            }
        }
        p.mono { "state digest " (st.state_digest) }
    };
    Ok(html_response(page("Cluster", "cluster", body)))
}

#[derive(serde::Deserialize, Default)]
struct AuditQuery {
    /// Event index to show the state after (default: the end).
    #[serde(default)]
    at: Option<u64>,
    /// Compare with the state after this event.
    #[serde(default)]
    from: Option<u64>,
    /// Only this run.
    #[serde(default)]
    run: Option<u64>,
}

/// Replays the log (read through the API, linearizable) up to `to`,
/// calling `at` with the state after each event in `stops`.
async fn replay(
    ui: &Ui,
    to: Option<u64>,
    stops: &[u64],
    mut at: impl FnMut(u64, &kaon_core::State),
) -> Result<kaon_core::State, UiError> {
    let mut stream = ui
        .api()
        .read_events(v1::ReadEventsRequest {
            from_index: 1,
            to_index: to.unwrap_or(0),
        })
        .await?
        .into_inner();
    let mut state = kaon_core::State::default();
    if stops.contains(&0) {
        at(0, &state);
    }
    while let Some(batch) = stream.message().await? {
        for bytes in &batch.events {
            let e = kaon_core::events::decode(bytes).map_err(|err| {
                UiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("an event does not decode: {err}"),
                )
            })?;
            if to.is_some_and(|t| e.index > t) {
                continue;
            }
            state.apply(&e).map_err(|err| {
                UiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("event {}: {err}", e.index),
                )
            })?;
            if stops.contains(&e.index) {
                at(e.index, &state);
            }
        }
    }
    Ok(state)
}

/// The auditor's view: what the scheduler knew after an event (runs,
/// steps, attempts, unconfirmed launch intents, armed timers), and what
/// changed since another event (the same facts as `kaon audit state` and
/// `kaon audit diff`).
async fn audit_page(State(ui): State<Ui>, Query(q): Query<AuditQuery>) -> UiResult {
    let mut before = None;
    let stops: Vec<u64> = q.from.into_iter().collect();
    let state = replay(&ui, q.at, &stops, |_, s| {
        before = Some(kaon_core::audit::facts(s, q.run));
    })
    .await?;
    if let Some(at) = q.at
        && state.applied_index < at
    {
        return Err(UiError(
            StatusCode::BAD_REQUEST,
            format!(
                "event {at} is past the end of the log: the last event is {}",
                state.applied_index
            ),
        ));
    }
    let facts = kaon_core::audit::facts(&state, q.run);
    let digest = kaon_core::decide::hex(&state.digest());
    let chain = kaon_core::decide::hex(&state.chain);
    let num = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_default();
    let body = html! {
        h1 { "Audit" }
        form.filters method="get" action="/ui/audit" {
            label { "State after event " input type="number" name="at" min="1" value=(num(q.at)) placeholder="the end"; }
            label { "compared with event " input type="number" name="from" min="0" value=(num(q.from)) placeholder="none"; }
            label { "run " input type="number" name="run" min="1" value=(num(q.run)) placeholder="all"; }
            button type="submit" { "Show" }
        }
        div.summary {
            span { "after event " (state.applied_index) " (" (kaon_core::audit::at_time(state.last_event_ms)) ")" }
            span.mono { "digest " (digest) }
            span.mono { "chain head " (chain) }
        }
        @if let Some(b) = &before {
            h2 { "Changes since event " (num(q.from)) }
            table.diff {
                thead { tr { th {} th { "Fact" } th { "Before" } th { "After" } } }
                tbody {
                    @for (k, v) in &facts {
                        @match b.get(k) {
                            None => { tr.ins { td { "+" } td { (k) } td {} td { (v) } } }
                            Some(old) if old != v => { tr.chg { td { "~" } td { (k) } td { (old) } td { (v) } } }
                            _ => {}
                        }
                    }
                    @for (k, v) in b.iter().filter(|(k, _)| !facts.contains_key(*k)) {
                        tr.del { td { "-" } td { (k) } td { (v) } td {} }
                    }
                }
            }
        }
        h2 { "State" }
        table.facts {
            thead { tr { th { "Fact" } th { "Value" } } }
            tbody {
                @for (k, v) in &facts {
                    tr { td.mono { (k) } td { (v) } }
                }
            }
        }
    };
    Ok(html_response(page("Audit", "audit", body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded_for_urls() {
        assert_eq!(url_path("train#2/region[1]"), "train%232/region%5B1%5D");
        assert_eq!(query("a/b c"), "a%2Fb%20c");
    }
}
