//! HTTP front ends of the emulated master (`/api/v1/scheduler`, `/version`,
//! `/health`, `/state`, `/master/redirect`) and agents (`/api/v1/executor`,
//! `/health`, `/state`, `/files/download`), with Mesos 1.11's order of
//! checks and status codes.

// Handlers return `Result<Response, Response>` so `?` short-circuits with the
// Mesos error answer; boxing every error response would only add noise.
#![allow(clippy::result_large_err)]

use super::MESOS_VERSION;
use super::state::{CallAuth, Core, Leadership};
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::serve::ListenerExt as _;
use bytes::Bytes;
use kaon_mesos::types::executor as ex;
use kaon_mesos::types::scheduler as sch;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc;

const JSON: &str = "application/json";
const PROTOBUF: &str = "application/x-protobuf";

/// Event streams carry small records that must not wait for Nagle's
/// algorithm (it adds ~40 ms per event on loopback).
fn nodelay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, body.into()).into_response()
}

/// Runs a closure when the streaming body is dropped (client gone or stream
/// finished).
struct OnDrop(Option<Box<dyn FnOnce() + Send>>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

fn stream_response(
    rx: mpsc::UnboundedReceiver<Bytes>,
    on_drop: OnDrop,
    stream_id: Option<&str>,
) -> Response {
    let stream = futures_util::stream::unfold((rx, on_drop), |(mut rx, guard)| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<Bytes, Infallible>(b), (rx, guard)))
    });
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, JSON);
    if let Some(id) = stream_id {
        builder = builder.header("Mesos-Stream-Id", id);
    }
    builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Content-Type check shared by both APIs: missing → 400, protobuf → 415
/// (the emulator speaks JSON only), anything else but exact JSON → 415.
fn check_content_type(headers: &HeaderMap) -> Result<(), Response> {
    match headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or(""))
    {
        None => Err(text(
            StatusCode::BAD_REQUEST,
            "Expecting 'Content-Type' to be present",
        )),
        Some(JSON) => Ok(()),
        Some(PROTOBUF) => Err(text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "The kaon Mesos emulator only supports application/json",
        )),
        Some(other) => Err(text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Expecting 'Content-Type' of {JSON} or {PROTOBUF}, got '{other}'"),
        )),
    }
}

/// Accept negotiation for streaming calls: JSON if acceptable, else 406.
fn check_accept(headers: &HeaderMap) -> Result<(), Response> {
    let Some(accept) = headers.get(header::ACCEPT) else {
        return Ok(());
    };
    let accept = accept.to_str().unwrap_or("");
    let ok = accept.split(',').any(|m| {
        let m = m.split(';').next().unwrap_or("").trim();
        m == JSON || m == "*/*" || m == "application/*"
    });
    if ok {
        Ok(())
    } else {
        Err(text(
            StatusCode::NOT_ACCEPTABLE,
            format!("Expecting 'Accept' to allow '{JSON}' or '{PROTOBUF}'"),
        ))
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Response> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        text(
            StatusCode::BAD_REQUEST,
            format!("Failed to parse body into JSON: {e}"),
        )
    })?;
    serde_json::from_value(value).map_err(|e| {
        text(
            StatusCode::BAD_REQUEST,
            format!("Failed to convert JSON into {what} protobuf: {e}"),
        )
    })
}

async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

/// The master's HTTP front end as a router, for its TCP server or for an
/// in-process transport.
pub(crate) fn master_router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/api/v1/scheduler", any(scheduler))
        .route("/master/api/v1/scheduler", any(scheduler))
        .route("/version", get(version))
        .route("/health", get(health))
        .route("/master/health", get(health))
        .route("/state", get(master_state))
        .route("/master/state", get(master_state))
        .route("/master/redirect", get(redirect))
        .route("/api/v1", axum::routing::post(operator_api))
        .route("/master/api/v1", axum::routing::post(operator_api))
        .route("/master/frameworks", get(master_frameworks))
        .route("/frameworks", get(master_frameworks))
        .route("/master/tasks", get(master_tasks))
        .route("/tasks", get(master_tasks))
        .route("/master/slaves", get(master_slaves))
        .route("/slaves", get(master_slaves))
        .route("/master/teardown", axum::routing::post(master_teardown))
        .route("/teardown", axum::routing::post(master_teardown))
        .with_state(core)
}

pub(crate) async fn serve_master(
    core: Arc<Core>,
    listener: tokio::net::TcpListener,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let tls = core.config.master_tls.clone();
    let app = master_router(core);
    let served = match tls {
        Some((cert, key)) => match tls_acceptor(&cert, &key) {
            Ok(acceptor) => {
                axum::serve(TlsListener { listener, acceptor }, app)
                    .with_graceful_shutdown(stopped(stop))
                    .await
            }
            Err(e) => {
                tracing::error!(error = %e, "the master's TLS certificate or key does not load");
                return;
            }
        },
        None => {
            axum::serve(listener.tap_io(nodelay), app)
                .with_graceful_shutdown(stopped(stop))
                .await
        }
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "master server stopped");
    }
}

/// A rustls (ring) acceptor for the master's certificate and key (PEM).
fn tls_acceptor(cert: &str, key: &str) -> Result<tokio_rustls::TlsAcceptor, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| format!("key: {e}"))?;
    #[allow(deprecated)] // ring, as in the rest of kaon
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The master's listener when it serves HTTPS: TCP accept, then the TLS
/// handshake (a failed one is logged and skipped).
struct TlsListener {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, addr) = match self.listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                self.acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(s)) => return (s, addr),
                Ok(Err(e)) => tracing::warn!(%addr, error = %e, "TLS handshake refused"),
                Err(_) => tracing::warn!(%addr, "TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

async fn version() -> Response {
    let body = serde_json::json!({
        "version": MESOS_VERSION,
        "build_date": "2020-11-24 00:00:00",
        "build_time": 1606176000.0,
        "build_user": "kaon",
        "git_sha": "kaon-emulator",
        "git_tag": MESOS_VERSION,
    });
    ([(header::CONTENT_TYPE, JSON)], body.to_string()).into_response()
}

async fn health() -> Response {
    StatusCode::OK.into_response()
}

async fn redirect(State(core): State<Arc<Core>>) -> Response {
    let leadership = core.lock().leadership.clone();
    match leadership {
        Leadership::Leader => Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(header::LOCATION, format!("//{}", core.master_addr))
            .body(Body::empty())
            .unwrap_or_default(),
        Leadership::Standby { leader: Some(l) } => Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(header::LOCATION, format!("//{l}"))
            .body(Body::empty())
            .unwrap_or_default(),
        Leadership::Standby { leader: None } => {
            text(StatusCode::SERVICE_UNAVAILABLE, "No leader elected")
        }
    }
}

fn json_response(v: &serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, JSON)], v.to_string()).into_response()
}

/// `/master/frameworks`: the frameworks part of `/master/state`.
async fn master_frameworks(State(core): State<Arc<Core>>) -> Response {
    let st = state_json(&core);
    json_response(&serde_json::json!({
        "frameworks": st["frameworks"], "completed_frameworks": st["completed_frameworks"],
    }))
}

/// `/master/tasks`: every task of every framework.
async fn master_tasks(State(core): State<Arc<Core>>) -> Response {
    let st = state_json(&core);
    let tasks: Vec<serde_json::Value> = st["frameworks"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|f| f["tasks"].as_array().cloned().unwrap_or_default())
        .collect();
    json_response(&serde_json::json!({ "tasks": tasks }))
}

/// `/master/slaves`: the agents.
async fn master_slaves(State(core): State<Arc<Core>>) -> Response {
    let st = state_json(&core);
    json_response(&serde_json::json!({ "slaves": st["slaves"] }))
}

/// `POST /master/teardown` with form body `frameworkId=<id>`.
async fn master_teardown(State(core): State<Arc<Core>>, body: Bytes) -> Response {
    let body = String::from_utf8_lossy(&body);
    let id = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "frameworkId")
        .map(|(_, v)| v.to_owned());
    let Some(id) = id else {
        return text(
            StatusCode::BAD_REQUEST,
            "Missing 'frameworkId' query parameter in the request body",
        );
    };
    if !core.lock().frameworks.contains_key(&id) {
        return text(
            StatusCode::BAD_REQUEST,
            "No framework found with specified ID",
        );
    }
    core.remove_framework(&id);
    StatusCode::OK.into_response()
}

/// `POST /api/v1`: the read-only part of the v1 operator API (GET_HEALTH,
/// GET_VERSION, GET_FRAMEWORKS, GET_AGENTS, GET_TASKS, GET_STATE); other
/// call types answer 501.
async fn operator_api(State(core): State<Arc<Core>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = check_content_type(&headers) {
        return r;
    }
    let call: serde_json::Value = match parse_json(&body, "Call") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(kind) = call["type"].as_str() else {
        return text(StatusCode::BAD_REQUEST, "Expecting 'type' to be present");
    };
    let guard = core.lock();
    let st: &super::state::State = &guard;
    let frameworks = || {
        serde_json::json!({
            "frameworks": st.frameworks.values().map(|f| serde_json::json!({
                "framework_info": f.info, "active": f.sub.is_some(),
                "connected": f.sub.is_some(), "recovered": false,
            })).collect::<Vec<_>>(),
            "completed_frameworks": st.completed.iter().map(|id| serde_json::json!({
                "framework_info": {"id": {"value": id}, "user": "", "name": ""}, "active": false, "connected": false, "recovered": false,
            })).collect::<Vec<_>>(),
        })
    };
    let agents = || {
        serde_json::json!({
            "agents": st.agents.iter().map(|a| serde_json::json!({
                "agent_info": a.info(), "active": true, "version": MESOS_VERSION,
                "pid": format!("slave(1)@{}", a.addr),
                "total_resources": a.total.to_mesos(), "allocated_resources": a.used.to_mesos(),
            })).collect::<Vec<_>>(),
        })
    };
    let tasks = || {
        serde_json::json!({
            "tasks": st.frameworks.values().flat_map(|f| f.tasks.values().map(move |t| serde_json::json!({
                "name": t.info.name, "task_id": t.info.task_id, "framework_id": {"value": f.id},
                "executor_id": {"value": t.executor_id}, "agent_id": {"value": st.agents[t.agent].id},
                "state": t.status.state, "resources": t.resources.to_mesos(), "statuses": [t.status],
            }))).collect::<Vec<_>>(),
        })
    };
    let body = match kind {
        "GET_HEALTH" => serde_json::json!({"type": kind, "get_health": {"healthy": true}}),
        "GET_VERSION" => serde_json::json!({"type": kind, "get_version": {"version_info": {
            "version": MESOS_VERSION, "build_user": "kaon", "git_tag": MESOS_VERSION,
        }}}),
        "GET_FRAMEWORKS" => serde_json::json!({"type": kind, "get_frameworks": frameworks()}),
        "GET_AGENTS" => serde_json::json!({"type": kind, "get_agents": agents()}),
        "GET_TASKS" => serde_json::json!({"type": kind, "get_tasks": tasks()}),
        "GET_STATE" => serde_json::json!({"type": kind, "get_state": {
            "get_tasks": tasks(), "get_executors": {"executors": []},
            "get_frameworks": frameworks(), "get_agents": agents(),
        }}),
        other => {
            return text(
                StatusCode::NOT_IMPLEMENTED,
                format!("operator call {other} is not emulated"),
            );
        }
    };
    drop(guard);
    json_response(&body)
}

async fn master_state(State(core): State<Arc<Core>>) -> Response {
    json_response(&state_json(&core))
}

fn state_json(core: &Arc<Core>) -> serde_json::Value {
    let st = core.lock();
    let res = |r: &kaon_mesos::resources::Resources| {
        let mut m = serde_json::Map::new();
        for (k, v) in &r.scalars {
            m.insert(k.clone(), serde_json::json!(v));
        }
        for (k, v) in &r.ranges {
            let s: Vec<String> = v.iter().map(|(b, e)| format!("{b}-{e}")).collect();
            m.insert(k.clone(), serde_json::json!(format!("[{}]", s.join(", "))));
        }
        serde_json::Value::Object(m)
    };
    let slaves: Vec<_> = st
        .agents
        .iter()
        .map(|a| {
            serde_json::json!({
                "id": a.id, "hostname": a.hostname, "pid": format!("slave(1)@{}", a.addr),
                "port": a.addr.port(), "resources": res(&a.total), "used_resources": res(&a.used),
                "attributes": a.attributes.iter().map(|x| (x.name.clone(), serde_json::json!(x.value_text()))).collect::<serde_json::Map<_, _>>(),
                "active": true, "version": MESOS_VERSION,
            })
        })
        .collect();
    let frameworks: Vec<_> = st
        .frameworks
        .values()
        .map(|f| {
            let tasks: Vec<_> = f
                .tasks
                .values()
                .map(|t| {
                    serde_json::json!({
                        "id": t.status.task_id.value, "name": t.info.name, "framework_id": f.id,
                        "executor_id": t.executor_id, "slave_id": st.agents[t.agent].id,
                        "state": t.status.state.name(), "resources": res(&t.resources),
                    })
                })
                .collect();
            serde_json::json!({
                "id": f.id, "name": f.info.name, "user": f.info.user,
                "active": f.sub.is_some(), "connected": f.sub.is_some(), "recovered": false,
                "failover_timeout": f.info.failover_timeout.unwrap_or(0.0),
                "checkpoint": f.info.checkpoint.unwrap_or(false),
                "capabilities": f.info.capabilities.iter().map(|c| c.kind.clone()).collect::<Vec<_>>(),
                "tasks": tasks,
                "offers": st.offers.iter().filter(|(_, o)| o.framework == f.id).map(|(id, _)| serde_json::json!({"id": id})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let body = serde_json::json!({
        "version": MESOS_VERSION,
        "id": st.master_id,
        "pid": format!("master@{}", core.master_addr),
        "hostname": core.config.hostname,
        "leader": format!("master@{}", core.master_addr),
        "activated_slaves": st.agents.len(),
        "deactivated_slaves": 0,
        "slaves": slaves,
        "frameworks": frameworks,
        "completed_frameworks": st.completed.iter().map(|id| serde_json::json!({"id": id})).collect::<Vec<_>>(),
    });
    body
}

async fn scheduler(
    State(core): State<Arc<Core>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match scheduler_inner(&core, method, uri, headers, body) {
        Ok(r) | Err(r) => r,
    }
}

/// Whether `headers` carry valid framework credentials (HTTP Basic), when
/// the emulator requires them.
fn authenticated(core: &Core, headers: &HeaderMap) -> bool {
    use base64::Engine as _;
    if core.config.credentials.is_empty() {
        return true;
    }
    let Some(basic) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Some(pair) = base64::engine::general_purpose::STANDARD
        .decode(basic.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
    else {
        return false;
    };
    let Some((p, s)) = pair.split_once(':') else {
        return false;
    };
    core.config
        .credentials
        .iter()
        .any(|(cp, cs)| cp == p && cs == s)
}

fn scheduler_inner(
    core: &Arc<Core>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Response> {
    // 0. Framework authentication, when required (as Mesos: 401 with a
    // Basic challenge).
    if !authenticated(core, &headers) {
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: the framework's credentials (HTTP Basic) are missing or wrong",
        );
        r.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Basic realm=\"mesos\""),
        );
        return Err(r);
    }
    // 1-2. Leadership and recovery.
    {
        let mut st = core.lock();
        match &st.leadership {
            Leadership::Leader => {}
            Leadership::Standby { leader: Some(l) } => {
                let path = uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/api/v1/scheduler");
                return Err(Response::builder()
                    .status(StatusCode::TEMPORARY_REDIRECT)
                    .header(header::LOCATION, format!("//{l}{path}"))
                    .body(Body::empty())
                    .unwrap_or_default());
            }
            Leadership::Standby { leader: None } => {
                return Err(text(StatusCode::SERVICE_UNAVAILABLE, "No leader elected"));
            }
        }
        if st.unavailable_next > 0 {
            st.unavailable_next -= 1;
            return Err(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "Master has not finished recovery",
            ));
        }
    }
    // 3. Method.
    if method != Method::POST {
        return Err(Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(header::ALLOW, "POST")
            .body(Body::from(format!("Expecting 'POST', received '{method}'")))
            .unwrap_or_default());
    }
    // 4. Content type and parsing.
    check_content_type(&headers)?;
    let call: sch::Call = parse_json(&body, "Call")?;
    // 5. Validation.
    let kind = call
        .kind
        .ok_or_else(|| text(StatusCode::BAD_REQUEST, "Expecting 'type' to be present"))?;
    validate_scheduler_call(&call, kind)?;
    if kind == sch::CallType::Unknown {
        return Err(text(StatusCode::NOT_IMPLEMENTED, ""));
    }
    let stream_id = headers
        .get("Mesos-Stream-Id")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    if kind == sch::CallType::Subscribe {
        // 6-7. Accept negotiation, no stream id on SUBSCRIBE.
        check_accept(&headers)?;
        if stream_id.is_some() {
            return Err(text(
                StatusCode::BAD_REQUEST,
                "Subscribe calls should not include the 'Mesos-Stream-Id' header",
            ));
        }
        let sub = call.subscribe.unwrap_or_else(|| sch::Subscribe {
            framework_info: Default::default(),
            suppressed_roles: Vec::new(),
        });
        let (stream_id, rx) = core.subscribe(sub.framework_info, &sub.suppressed_roles);
        let framework = {
            let st = core.lock();
            st.frameworks
                .values()
                .find(|f| f.sub.as_ref().is_some_and(|s| s.stream_id == stream_id))
                .map(|f| f.id.clone())
        };
        let guard_core = Arc::downgrade(core);
        let sid = stream_id.clone();
        let guard = OnDrop(Some(Box::new(move || {
            if let (Some(core), Some(fw)) = (guard_core.upgrade(), framework)
                && tokio::runtime::Handle::try_current().is_ok()
            {
                core.disconnected(&fw, &sid);
            }
        })));
        return Ok(stream_response(rx, guard, Some(&stream_id)));
    }
    // 8. Framework and stream id.
    let framework = call
        .framework_id
        .clone()
        .map(|f| f.value)
        .unwrap_or_default();
    match core.check_stream(&framework, stream_id.as_deref()) {
        CallAuth::Ok => {}
        CallAuth::NotFound => {
            return Err(text(StatusCode::BAD_REQUEST, "Framework cannot be found"));
        }
        CallAuth::NotSubscribed => {
            return Err(text(StatusCode::FORBIDDEN, "Framework is not subscribed"));
        }
        CallAuth::MissingStreamId => {
            return Err(text(
                StatusCode::BAD_REQUEST,
                "All non-subscribe calls should include the 'Mesos-Stream-Id' header",
            ));
        }
        CallAuth::WrongStreamId => {
            return Err(text(
                StatusCode::BAD_REQUEST,
                format!(
                    "The stream ID '{}' included in this request didn't match the stream ID currently associated with framework ID {framework}",
                    stream_id.unwrap_or_default()
                ),
            ));
        }
    }
    match kind {
        sch::CallType::Teardown => core.remove_framework(&framework),
        sch::CallType::Accept => core.accept(&framework, call.accept.as_ref().expect("validated")),
        sch::CallType::Decline => {
            core.decline(&framework, call.decline.as_ref().expect("validated"))
        }
        sch::CallType::Revive => core.revive(&framework),
        sch::CallType::Suppress => core.suppress(&framework),
        sch::CallType::Kill => core.kill(&framework, call.kill.as_ref().expect("validated")),
        sch::CallType::Shutdown => {
            core.shutdown_call(&framework, call.shutdown.as_ref().expect("validated"))
        }
        sch::CallType::Acknowledge => {
            core.acknowledge(&framework, call.acknowledge.as_ref().expect("validated"))
        }
        sch::CallType::Reconcile => {
            core.reconcile(&framework, call.reconcile.as_ref().expect("validated"))
        }
        sch::CallType::Message => {
            core.message_to_executor(&framework, call.message.as_ref().expect("validated"))
        }
        sch::CallType::UpdateFramework => {
            let u = call.update_framework.as_ref().expect("validated");
            return match core.update_framework(&framework, u) {
                Ok(()) => Ok(StatusCode::OK.into_response()),
                Err(m) => Err(text(StatusCode::BAD_REQUEST, m)),
            };
        }
        other => tracing::debug!(call = ?other, "call accepted and ignored by the emulator"),
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

fn validate_scheduler_call(call: &sch::Call, kind: sch::CallType) -> Result<(), Response> {
    use sch::CallType as T;
    let missing = |field: &str| {
        text(
            StatusCode::BAD_REQUEST,
            format!("Expecting '{field}' to be present"),
        )
    };
    let present = match kind {
        T::Subscribe => call.subscribe.is_some(),
        T::Accept => call.accept.is_some(),
        T::Decline => call.decline.is_some(),
        T::Kill => call.kill.is_some(),
        T::Shutdown => call.shutdown.is_some(),
        T::Acknowledge => call.acknowledge.is_some(),
        T::Reconcile => call.reconcile.is_some(),
        T::Message => call.message.is_some(),
        T::UpdateFramework => call.update_framework.is_some(),
        _ => true,
    };
    if !present {
        let field = serde_json::to_value(kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_lowercase))
            .unwrap_or_default();
        return Err(missing(&field));
    }
    if kind == T::Subscribe {
        let info_id = call
            .subscribe
            .as_ref()
            .and_then(|s| s.framework_info.id.as_ref());
        if call.framework_id.is_some() && call.framework_id.as_ref() != info_id {
            return Err(text(
                StatusCode::BAD_REQUEST,
                "'framework_id' differs from 'subscribe.framework_info.id'",
            ));
        }
    } else if call.framework_id.is_none() {
        return Err(missing("framework_id"));
    }
    if let Some(u) = &call.update_framework
        && u.framework_info.id.as_ref() != call.framework_id.as_ref()
    {
        return Err(text(
            StatusCode::BAD_REQUEST,
            "'framework_id' differs from 'update_framework.framework_info.id'",
        ));
    }
    if let Some(ack) = &call.acknowledge
        && ack.uuid.0.len() != 16
    {
        return Err(text(
            StatusCode::BAD_REQUEST,
            format!(
                "'uuid' is not a valid UUID: expected 16 bytes, got {}",
                ack.uuid.0.len()
            ),
        ));
    }
    Ok(())
}

// ----- agent -----

#[derive(Clone)]
struct AgentCtx {
    core: Arc<Core>,
    agent: usize,
}

/// Agent `agent`'s HTTP front end as a router, for its TCP server or to be
/// called in-process (executors running in the emulator's process).
pub(crate) fn agent_router(core: Arc<Core>, agent: usize) -> Router {
    Router::new()
        .route("/api/v1/executor", any(executor_api))
        .route("/slave(1)/api/v1/executor", any(executor_api))
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/state", get(agent_state))
        .route("/slave(1)/state", get(agent_state))
        .route("/files/download", get(files_download))
        .route("/files/read", get(files_read))
        .with_state(AgentCtx { core, agent })
}

pub(crate) async fn serve_agent(
    core: Arc<Core>,
    agent: usize,
    listener: tokio::net::TcpListener,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let app = agent_router(core, agent);
    if let Err(e) = axum::serve(listener.tap_io(nodelay), app)
        .with_graceful_shutdown(stopped(stop))
        .await
    {
        tracing::error!(error = %e, agent, "agent server stopped");
    }
}

/// Tasks as an agent's `/state` lists them under an executor (Mesos'
/// `Task` JSON, the fields kaon's emulator knows).
fn task_refs<'a>(
    framework: &str,
    executor: &str,
    ids: impl Iterator<Item = &'a String>,
) -> Vec<serde_json::Value> {
    ids.map(|id| serde_json::json!({"id": id, "framework_id": framework, "executor_id": executor}))
        .collect()
}

async fn agent_state(State(ctx): State<AgentCtx>) -> Response {
    let st = ctx.core.lock();
    let a = &st.agents[ctx.agent];
    let executors: Vec<_> = a
        .executors
        .iter()
        .map(|((f, e), rec)| {
            serde_json::json!({
                "framework_id": f, "id": e, "directory": rec.sandbox.display().to_string(),
                "tasks": task_refs(f, e, rec.tasks.iter()),
                "queued_tasks": task_refs(f, e, rec.queued.iter().map(|t| &t.task_id.value)),
                "completed_tasks": task_refs(f, e, rec.completed.iter()),
                "subscribed": rec.sub.is_some(),
            })
        })
        .collect();
    let completed: Vec<_> = a
        .completed_executors
        .iter()
        .map(|c| {
            serde_json::json!({
                "framework_id": c.framework_id, "id": c.id,
                "directory": c.directory.display().to_string(),
                "tasks": task_refs(&c.framework_id, &c.id, c.tasks.iter()),
                "completed_tasks": task_refs(&c.framework_id, &c.id, c.completed_tasks.iter()),
            })
        })
        .collect();
    let body = serde_json::json!({
        "version": MESOS_VERSION, "id": a.id, "hostname": a.hostname,
        "pid": format!("slave(1)@{}", a.addr), "executors": executors,
        "completed_executors": completed,
    });
    drop(st);
    ([(header::CONTENT_TYPE, JSON)], body.to_string()).into_response()
}

/// Serves a file from the agent's sandboxes (`?path=` absolute path), like
/// Mesos's `/files/download`; paths outside the work dir are refused.
async fn files_download(
    State(ctx): State<AgentCtx>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let (path, p) = match sandbox_file(&ctx, &q) {
        Ok(x) => x,
        Err(r) => return r,
    };
    match tokio::fs::read(&p).await {
        Ok(bytes) => bytes.into_response(),
        Err(e) => text(StatusCode::NOT_FOUND, format!("cannot read {path}: {e}")),
    }
}

/// The file a `/files/...` request's `?path=` names, resolved, if it lies
/// inside the sandboxes (the work dir); else the error response. Returns
/// the path as given (for messages) and the resolved one.
fn sandbox_file(
    ctx: &AgentCtx,
    q: &BTreeMap<String, String>,
) -> Result<(String, std::path::PathBuf), Response> {
    let Some(path) = q.get("path") else {
        return Err(text(
            StatusCode::BAD_REQUEST,
            "Expecting 'path' to be present",
        ));
    };
    let root = std::fs::canonicalize(&ctx.core.config.work_dir).unwrap_or_default();
    match std::fs::canonicalize(path) {
        Ok(p) if p.starts_with(&root) => Ok((path.clone(), p)),
        Ok(_) => Err(text(StatusCode::FORBIDDEN, "path is outside the sandboxes")),
        Err(_) => Err(text(StatusCode::NOT_FOUND, format!("{path} not found"))),
    }
}

/// Most bytes one `/files/read` returns (Mesos pages reads the same way).
const FILES_READ_BYTES_MAX: u64 = 1 << 20;

/// Mesos's `/files/read?path=&offset=&length=`: `{"data": "...", "offset": N}`;
/// `offset=-1` answers the file size as `offset` with no data. Paths outside
/// the sandboxes are refused.
async fn files_read(
    State(ctx): State<AgentCtx>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let (path, p) = match sandbox_file(&ctx, &q) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let offset: i64 = match q.get("offset").map(|o| o.parse()) {
        None => 0,
        Some(Ok(o)) if o >= -1 => o,
        Some(_) => return text(StatusCode::BAD_REQUEST, "Failed to parse offset"),
    };
    let length: u64 = match q.get("length").map(|o| o.parse::<u64>()) {
        None => FILES_READ_BYTES_MAX,
        Some(Ok(n)) => n.min(FILES_READ_BYTES_MAX),
        Some(Err(_)) => return text(StatusCode::BAD_REQUEST, "Failed to parse length"),
    };
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, Vec<u8>)> {
        use std::io::{Read, Seek};
        let mut f = std::fs::File::open(&p)?;
        let size = f.metadata()?.len();
        if offset < 0 {
            return Ok((size, Vec::new()));
        }
        let start = (offset as u64).min(size);
        f.seek(std::io::SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        f.take(length).read_to_end(&mut buf)?;
        Ok((start, buf))
    })
    .await;
    match read {
        Ok(Ok((offset, data))) => json_response(&serde_json::json!({
            "data": String::from_utf8_lossy(&data), "offset": offset,
        })),
        Ok(Err(e)) => text(StatusCode::NOT_FOUND, format!("cannot read {path}: {e}")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn executor_api(
    State(ctx): State<AgentCtx>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match executor_inner(&ctx, method, headers, body) {
        Ok(r) | Err(r) => r,
    }
}

fn executor_inner(
    ctx: &AgentCtx,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Response> {
    {
        let mut st = ctx.core.lock();
        if st.shutting_down {
            return Err(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "Agent is shutting down",
            ));
        }
        if st.agents[ctx.agent].recovering {
            let is_update = serde_json::from_slice::<serde_json::Value>(&body)
                .is_ok_and(|v| v["type"] == "UPDATE");
            if is_update {
                st.agents[ctx.agent].refused_updates += 1;
            }
            return Err(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "Agent has not finished recovery",
            ));
        }
    }
    if method != Method::POST {
        return Err(Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(header::ALLOW, "POST")
            .body(Body::empty())
            .unwrap_or_default());
    }
    check_content_type(&headers)?;
    let call: ex::Call = parse_json(&body, "Call")?;
    let bad = |m: String| text(StatusCode::BAD_REQUEST, m);
    match call.kind {
        ex::CallType::Unknown => return Err(bad("Expecting 'type' to be present".into())),
        ex::CallType::Subscribe if call.subscribe.is_none() => {
            return Err(bad("Expecting 'subscribe' to be present".into()));
        }
        ex::CallType::Message if call.message.is_none() => {
            return Err(bad("Expecting 'message' to be present".into()));
        }
        ex::CallType::Update => {
            let Some(u) = &call.update else {
                return Err(bad("Expecting 'update' to be present".into()));
            };
            let s = &u.status;
            if s.uuid.as_ref().is_none_or(|u| u.0.len() != 16) {
                return Err(bad(
                    "'TaskStatus.uuid' must be present and a valid UUID".into()
                ));
            }
            if s.source != Some(kaon_mesos::types::Source::Executor) {
                return Err(bad("Received Call from executor with invalid source".into()));
            }
            if s.state == kaon_mesos::types::TaskState::Staging {
                return Err(bad(
                    "Received TASK_STAGING from executor which is not allowed".into(),
                ));
            }
            if s.executor_id
                .as_ref()
                .is_some_and(|e| *e != call.executor_id)
            {
                return Err(bad("ExecutorID in Call and TaskStatus do not match".into()));
            }
        }
        _ => {}
    }
    let (fw, exec) = (
        call.framework_id.value.clone(),
        call.executor_id.value.clone(),
    );
    let subscribed = ctx
        .core
        .executor_known(ctx.agent, &fw, &exec)
        .map_err(|m| text(StatusCode::BAD_REQUEST, m))?;
    match call.kind {
        ex::CallType::Subscribe => {
            check_accept(&headers)?;
            let sub = call.subscribe.unwrap_or_default();
            let rx = ctx
                .core
                .executor_subscribe(ctx.agent, &fw, &exec, &sub)
                .ok_or_else(|| text(StatusCode::BAD_REQUEST, "Executor cannot be found"))?;
            Ok(stream_response(rx, OnDrop(None), None))
        }
        ex::CallType::Update | ex::CallType::Message if !subscribed => {
            Err(text(StatusCode::FORBIDDEN, "Executor is not subscribed"))
        }
        ex::CallType::Update => {
            let status = call.update.map(|u| u.status).expect("validated");
            ctx.core.executor_update(ctx.agent, &fw, &exec, status);
            Ok(StatusCode::ACCEPTED.into_response())
        }
        ex::CallType::Message => {
            let data = call.message.map(|m| m.data).expect("validated");
            ctx.core.executor_message(ctx.agent, &fw, &exec, data);
            Ok(StatusCode::ACCEPTED.into_response())
        }
        _ => Ok(StatusCode::ACCEPTED.into_response()),
    }
}
