//! Scheduler driver for the Mesos v1 HTTP API.
//!
//! [`Driver::subscribe`] opens the SUBSCRIBE stream in a background task and
//! hands every event to its owner through a channel. It keeps the
//! `Mesos-Stream-Id` for all later calls, follows 307 redirects to the
//! leading master, retries 503 with backoff, and re-subscribes with the same
//! framework id when the stream dies (end of body, error, or too many missed
//! heartbeats). It never acknowledges status updates itself: the owner calls
//! [`DriverHandle::acknowledge`] once it has durably recorded an update.

use crate::recordio::{Decoder, RECORD_BYTES_MAX_DEFAULT, RecordIoError};
use crate::transport::{HttpRequest, HttpResponse, HttpTransport, MesosTransport, TransportError};
use crate::types::scheduler::{self as sch, Call, CallType, Event, EventType};
use crate::types::{B64, FrameworkInfo, Id, Offer, TaskStatus};
use axum::http::{HeaderMap, HeaderValue, Method};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, watch};

/// Why a driver call failed.
#[derive(Debug, Error)]
pub enum DriverError {
    /// No live subscription (no stream id yet, or it was lost).
    #[error("not subscribed to the master (no Mesos-Stream-Id); cannot send {call}")]
    NotSubscribed {
        /// The call that was attempted.
        call: String,
    },
    /// The HTTP request could not be made.
    #[error("HTTP request to {url} failed: {source}")]
    Transport {
        /// Target.
        url: String,
        /// Cause (from the configured [`MesosTransport`]).
        source: TransportError,
    },
    /// The master answered with an error status.
    #[error("master at {url} answered {status}: {body}")]
    Status {
        /// Target.
        url: String,
        /// HTTP status.
        status: u16,
        /// Response body (Mesos puts the reason there).
        body: String,
    },
    /// Too many redirects or 503s in a row.
    #[error("gave up on {url} after {attempts} attempts: {last}")]
    GaveUp {
        /// Target.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// Last answer.
        last: String,
    },
    /// A 307 without a usable `Location`.
    #[error("redirect from {url} has no usable Location header")]
    BadRedirect {
        /// Target.
        url: String,
    },
    /// The ACKNOWLEDGE was asked for an update that carries no uuid or agent.
    #[error("status update of task {task} has no {missing}; it must not be acknowledged")]
    NotAcknowledgeable {
        /// The task.
        task: String,
        /// "uuid" or "agent_id".
        missing: &'static str,
    },
    /// The event stream was corrupt.
    #[error("event stream from {url} is corrupt: {source}")]
    Stream {
        /// Master.
        url: String,
        /// Cause.
        source: RecordIoError,
    },
}

/// Driver settings.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Base URL of any master, e.g. `http://127.0.0.1:5050`.
    pub master_url: String,
    /// The framework; set `id` to a caller-chosen framework id to re-attach
    /// to existing tasks, and `failover_timeout` (seconds, kaon default one
    /// week) so tasks survive a scheduler failover.
    pub framework_info: FrameworkInfo,
    /// Missed heartbeats after which the stream is declared dead (Mesos
    /// docs: 5).
    pub heartbeat_misses_max: u32,
    /// First re-subscribe / 503 retry delay.
    pub backoff_min: Duration,
    /// Cap of the exponential backoff (Mesos docs: ~15 s).
    pub backoff_max: Duration,
    /// Timeout of non-streaming calls (Mesos docs: ~75 s).
    pub request_timeout: Duration,
    /// Redirects followed per request before giving up.
    pub redirects_max: u32,
    /// 503 answers retried per request before giving up.
    pub unavailable_retries_max: u32,
    /// Largest accepted event, in bytes.
    pub record_bytes_max: usize,
    /// Capacity of the event channel to the owner.
    pub event_buffer: usize,
    /// How HTTP reaches the master: reqwest over TCP (default) or, for
    /// simulations, [`MesosTransport::in_process`] to the emulator's master
    /// router.
    pub transport: MesosTransport,
    /// Framework credentials (principal, secret) sent as HTTP Basic on
    /// every call, for a master with `--authenticate_http_frameworks`; the
    /// principal should also be `framework_info.principal`.
    pub credential: Option<(String, String)>,
}

/// kaon's default failover timeout: one week, in seconds.
pub const FAILOVER_TIMEOUT_DEFAULT_SECS: f64 = 7.0 * 24.0 * 3600.0;

impl DriverConfig {
    /// Defaults for a framework at `master_url`.
    pub fn new(master_url: impl Into<String>, framework_info: FrameworkInfo) -> Self {
        DriverConfig {
            master_url: master_url.into(),
            framework_info,
            heartbeat_misses_max: 5,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(15),
            request_timeout: Duration::from_secs(75),
            redirects_max: 5,
            unavailable_retries_max: 20,
            record_bytes_max: RECORD_BYTES_MAX_DEFAULT,
            event_buffer: 4096,
            transport: MesosTransport::default(),
            credential: None,
        }
    }
}

/// What the driver hands its owner.
#[derive(Debug, Clone, PartialEq)]
pub enum DriverEvent {
    /// Subscribed (first time or again after a reconnect).
    Subscribed {
        /// The framework id (assigned or confirmed).
        framework_id: Id,
        /// Master's heartbeat period.
        heartbeat_interval: Duration,
        /// Base URL of the master that answered.
        master_url: String,
    },
    /// New offers.
    Offers(Vec<Offer>),
    /// An offer is no longer valid.
    Rescind(Id),
    /// A task status update; acknowledge it (if it has a uuid) after
    /// recording it.
    Update(TaskStatus),
    /// Framework message from an executor.
    Message {
        /// Agent.
        agent_id: Id,
        /// Executor.
        executor_id: Id,
        /// Payload.
        data: Vec<u8>,
    },
    /// Agent lost or executor exited.
    Failure(sch::Failure),
    /// The master ended the subscription for good (e.g. "Framework failed
    /// over"); the driver stops.
    Error(String),
    /// The stream broke; the driver re-subscribes by itself.
    Disconnected {
        /// Why.
        reason: String,
    },
}

struct Session {
    master_url: String,
    stream_id: Option<String>,
    framework_id: Option<Id>,
    /// FrameworkInfo used for (re-)subscription; UPDATE_FRAMEWORK changes it.
    framework_info: FrameworkInfo,
}

struct Inner {
    transport: Arc<dyn HttpTransport>,
    config: DriverConfig,
    session: Mutex<Session>,
    stop: watch::Sender<bool>,
}

/// Sends calls on behalf of the subscribed framework. Cheap to clone.
#[derive(Clone)]
pub struct DriverHandle {
    inner: Arc<Inner>,
}

/// Entry point of the scheduler driver.
pub struct Driver;

impl Driver {
    /// Starts subscribing in the background (on the current tokio runtime)
    /// and returns the call handle and the event receiver. Dropping the
    /// receiver or calling [`DriverHandle::stop`] ends the driver.
    pub fn subscribe(config: DriverConfig) -> (DriverHandle, mpsc::Receiver<DriverEvent>) {
        let (tx, rx) = mpsc::channel(config.event_buffer.max(1));
        let transport = config.transport.instantiate();
        let (stop, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            transport,
            session: Mutex::new(Session {
                master_url: config.master_url.trim_end_matches('/').to_owned(),
                stream_id: None,
                framework_id: config.framework_info.id.clone(),
                framework_info: config.framework_info.clone(),
            }),
            config,
            stop,
        });
        tokio::spawn(run(inner.clone(), tx));
        (DriverHandle { inner }, rx)
    }
}

/// Resolves a `Location` header against `base` (handles Mesos's
/// protocol-relative `//host:port/path`). Returns the new base URL.
fn resolve_location(base: &str, location: &str) -> Option<String> {
    let absolute = if let Some(rest) = location.strip_prefix("//") {
        let scheme = base.split("://").next().unwrap_or("http");
        format!("{scheme}://{rest}")
    } else if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        return None;
    };
    let (scheme, rest) = absolute.split_once("://")?;
    let host = rest.split('/').next().filter(|h| !h.is_empty())?;
    Some(format!("{scheme}://{host}"))
}

impl Inner {
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// POSTs a call, following redirects and retrying 503.
    async fn post(
        &self,
        body: Vec<u8>,
        stream_id: Option<String>,
        streaming: bool,
    ) -> Result<HttpResponse, DriverError> {
        let body = bytes::Bytes::from(body);
        let mut backoff = self.config.backoff_min;
        let (mut redirects, mut unavailable) = (0u32, 0u32);
        loop {
            let base = self.session().master_url.clone();
            let url = format!("{base}/api/v1/scheduler");
            let json = HeaderValue::from_static("application/json");
            let mut headers = HeaderMap::new();
            headers.insert("Content-Type", json.clone());
            headers.insert("Accept", json);
            if let Some((p, s)) = &self.config.credential {
                use base64::Engine as _;
                let basic = base64::engine::general_purpose::STANDARD.encode(format!("{p}:{s}"));
                if let Ok(v) = HeaderValue::from_str(&format!("Basic {basic}")) {
                    headers.insert("Authorization", v);
                }
            }
            if let Some(sid) = stream_id
                .as_deref()
                .and_then(|s| HeaderValue::from_str(s).ok())
            {
                headers.insert("Mesos-Stream-Id", sid);
            }
            let request = HttpRequest {
                method: Method::POST,
                url: url.clone(),
                headers,
                body: body.clone(),
                timeout: (!streaming).then_some(self.config.request_timeout),
            };
            let resp =
                self.transport
                    .send(request)
                    .await
                    .map_err(|source| DriverError::Transport {
                        url: url.clone(),
                        source,
                    })?;
            match resp.status {
                307 => {
                    redirects += 1;
                    let loc = resp
                        .headers
                        .get("Location")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let next = resolve_location(&base, loc)
                        .ok_or_else(|| DriverError::BadRedirect { url: url.clone() })?;
                    tracing::info!(from = %base, to = %next, "following master redirect");
                    if redirects > self.config.redirects_max {
                        return Err(DriverError::GaveUp {
                            url,
                            attempts: redirects,
                            last: "307".into(),
                        });
                    }
                    self.session().master_url = next;
                }
                503 => {
                    unavailable += 1;
                    let text = resp.text().await;
                    if unavailable > self.config.unavailable_retries_max {
                        return Err(DriverError::GaveUp {
                            url,
                            attempts: unavailable,
                            last: format!("503 {text}"),
                        });
                    }
                    tracing::info!(%url, %text, ?backoff, "master unavailable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
                s if (200..300).contains(&s) => return Ok(resp),
                401 => {
                    let body = resp.text().await;
                    return Err(DriverError::Status {
                        url,
                        status: 401,
                        body: format!(
                            "{body} (the master wants framework credentials: kaon server \
                             --mesos-principal and --mesos-secret-file{})",
                            if self.config.credential.is_some() {
                                "; the ones given were refused"
                            } else {
                                ""
                            }
                        ),
                    });
                }
                s => {
                    let body = resp.text().await;
                    return Err(DriverError::Status {
                        url,
                        status: s,
                        body,
                    });
                }
            }
        }
    }
}

async fn run(inner: Arc<Inner>, tx: mpsc::Sender<DriverEvent>) {
    let mut stop = inner.stop.subscribe();
    let mut backoff = inner.config.backoff_min;
    loop {
        if *stop.borrow() {
            return;
        }
        let outcome = tokio::select! {
            o = stream_once(&inner, &tx) => o,
            _ = stop.changed() => return,
        };
        inner.session().stream_id = None;
        match outcome {
            StreamEnd::Fatal(message) => {
                let _ = tx.send(DriverEvent::Error(message)).await;
                return;
            }
            StreamEnd::OwnerGone => return,
            StreamEnd::Broken {
                reason,
                was_subscribed,
            } => {
                if was_subscribed {
                    backoff = inner.config.backoff_min;
                }
                tracing::warn!(%reason, ?backoff, "scheduler stream lost; re-subscribing");
                if tx.send(DriverEvent::Disconnected { reason }).await.is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(inner.config.backoff_max);
    }
}

enum StreamEnd {
    Fatal(String),
    OwnerGone,
    Broken {
        reason: String,
        was_subscribed: bool,
    },
}

async fn stream_once(inner: &Inner, tx: &mpsc::Sender<DriverEvent>) -> StreamEnd {
    let (mut info, framework_id) = {
        let s = inner.session();
        (s.framework_info.clone(), s.framework_id.clone())
    };
    info.id = framework_id.clone();
    let call = Call {
        framework_id,
        kind: Some(CallType::Subscribe),
        subscribe: Some(sch::Subscribe {
            framework_info: info,
            suppressed_roles: Vec::new(),
        }),
        ..Default::default()
    };
    let body = serde_json::to_vec(&call).unwrap_or_default();
    let mut resp = match inner.post(body, None, true).await {
        Ok(r) => r,
        Err(DriverError::Status { status, body, .. }) if (400..500).contains(&status) => {
            return StreamEnd::Fatal(format!("SUBSCRIBE refused with {status}: {body}"));
        }
        Err(e) => {
            return StreamEnd::Broken {
                reason: e.to_string(),
                was_subscribed: false,
            };
        }
    };
    let Some(stream_id) = resp
        .headers
        .get("Mesos-Stream-Id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return StreamEnd::Broken {
            reason: "SUBSCRIBE response has no Mesos-Stream-Id".into(),
            was_subscribed: false,
        };
    };
    let master_url = inner.session().master_url.clone();
    let mut decoder = Decoder::new(inner.config.record_bytes_max);
    // Until SUBSCRIBED tells us the heartbeat period, allow the request timeout.
    let mut silence_max = inner.config.request_timeout;
    let mut subscribed = false;
    loop {
        let chunk = match tokio::time::timeout(silence_max, resp.chunk()).await {
            Err(_) => {
                return StreamEnd::Broken {
                    reason: format!("no event for {silence_max:?} (missed heartbeats)"),
                    was_subscribed: subscribed,
                };
            }
            Ok(Err(e)) => {
                return StreamEnd::Broken {
                    reason: format!("stream read failed: {e}"),
                    was_subscribed: subscribed,
                };
            }
            Ok(Ok(None)) => {
                return StreamEnd::Broken {
                    reason: "master closed the stream".into(),
                    was_subscribed: subscribed,
                };
            }
            Ok(Ok(Some(c))) => c,
        };
        let records = match decoder.feed(&chunk) {
            Ok(r) => r,
            Err(source) => {
                let e = DriverError::Stream {
                    url: master_url.clone(),
                    source,
                };
                return StreamEnd::Broken {
                    reason: e.to_string(),
                    was_subscribed: subscribed,
                };
            }
        };
        for record in records {
            let event: Event = match serde_json::from_slice(&record) {
                Ok(e) => e,
                Err(e) => {
                    return StreamEnd::Broken {
                        reason: format!("undecodable event from {master_url}: {e}"),
                        was_subscribed: subscribed,
                    };
                }
            };
            let out = match event.kind {
                EventType::Subscribed => {
                    let Some(s) = event.subscribed else { continue };
                    let hb = Duration::from_secs_f64(
                        s.heartbeat_interval_seconds
                            .filter(|h| h.is_finite())
                            .unwrap_or(15.0)
                            .clamp(0.001, 86400.0),
                    );
                    silence_max = hb * inner.config.heartbeat_misses_max.max(1);
                    subscribed = true;
                    {
                        let mut session = inner.session();
                        session.framework_id = Some(s.framework_id.clone());
                        session.stream_id = Some(stream_id.clone());
                    }
                    tracing::info!(framework = %s.framework_id, %master_url, "subscribed");
                    Some(DriverEvent::Subscribed {
                        framework_id: s.framework_id,
                        heartbeat_interval: hb,
                        master_url: master_url.clone(),
                    })
                }
                EventType::Heartbeat => None,
                EventType::Offers => event.offers.map(|o| DriverEvent::Offers(o.offers)),
                EventType::Rescind => event.rescind.map(|r| DriverEvent::Rescind(r.offer_id)),
                EventType::Update => event.update.map(|u| DriverEvent::Update(u.status)),
                EventType::Message => event.message.map(|m| DriverEvent::Message {
                    agent_id: m.agent_id,
                    executor_id: m.executor_id,
                    data: m.data.0,
                }),
                EventType::Failure => event.failure.map(DriverEvent::Failure),
                EventType::Error => {
                    let message = event.error.map(|e| e.message).unwrap_or_default();
                    return StreamEnd::Fatal(message);
                }
                other => {
                    tracing::info!(event = ?other, "ignoring scheduler event type the driver does not handle");
                    None
                }
            };
            if let Some(out) = out
                && tx.send(out).await.is_err()
            {
                return StreamEnd::OwnerGone;
            }
        }
    }
}

impl DriverHandle {
    /// The current subscription's stream id, if subscribed.
    pub fn stream_id(&self) -> Option<String> {
        self.inner.session().stream_id.clone()
    }

    /// The framework id, once known.
    pub fn framework_id(&self) -> Option<Id> {
        self.inner.session().framework_id.clone()
    }

    /// Base URL of the master currently used (after redirects).
    pub fn master_url(&self) -> String {
        self.inner.session().master_url.clone()
    }

    /// Stops the driver (closes the stream; calls fail afterwards).
    pub fn stop(&self) {
        let _ = self.inner.stop.send(true);
        self.inner.session().stream_id = None;
    }

    /// Sends any call on the current subscription (framework id filled in).
    pub async fn call(&self, mut call: Call) -> Result<(), DriverError> {
        let kind = call.kind.map(|k| format!("{k:?}")).unwrap_or_default();
        let (stream_id, framework_id) = {
            let s = self.inner.session();
            (s.stream_id.clone(), s.framework_id.clone())
        };
        let Some(stream_id) = stream_id else {
            return Err(DriverError::NotSubscribed { call: kind });
        };
        if call.framework_id.is_none() {
            call.framework_id = framework_id;
        }
        let body = serde_json::to_vec(&call).unwrap_or_default();
        self.inner
            .post(body, Some(stream_id), false)
            .await
            .map(|_| ())
    }

    fn base(kind: CallType) -> Call {
        Call {
            kind: Some(kind),
            ..Default::default()
        }
    }

    /// ACCEPT offers with operations (e.g. [`sch::Operation::launch`]).
    pub async fn accept(
        &self,
        offer_ids: Vec<Id>,
        operations: Vec<sch::Operation>,
        refuse_seconds: Option<f64>,
    ) -> Result<(), DriverError> {
        let mut c = Self::base(CallType::Accept);
        c.accept = Some(sch::Accept {
            offer_ids,
            operations,
            filters: refuse_seconds.map(|s| crate::types::Filters {
                refuse_seconds: Some(s),
            }),
        });
        self.call(c).await
    }

    /// DECLINE offers for `refuse_seconds`.
    pub async fn decline(
        &self,
        offer_ids: Vec<Id>,
        refuse_seconds: Option<f64>,
    ) -> Result<(), DriverError> {
        let mut c = Self::base(CallType::Decline);
        c.decline = Some(sch::Decline {
            offer_ids,
            filters: refuse_seconds.map(|s| crate::types::Filters {
                refuse_seconds: Some(s),
            }),
        });
        self.call(c).await
    }

    /// REVIVE (clears filters, un-suppresses).
    pub async fn revive(&self, roles: Vec<String>) -> Result<(), DriverError> {
        let mut c = Self::base(CallType::Revive);
        c.revive = Some(sch::Roles { roles });
        self.call(c).await
    }

    /// SUPPRESS offers.
    pub async fn suppress(&self, roles: Vec<String>) -> Result<(), DriverError> {
        let mut c = Self::base(CallType::Suppress);
        c.suppress = Some(sch::Roles { roles });
        self.call(c).await
    }

    /// KILL a task.
    pub async fn kill(&self, task_id: Id, agent_id: Option<Id>) -> Result<(), DriverError> {
        let mut c = Self::base(CallType::Kill);
        c.kill = Some(sch::Kill {
            task_id,
            agent_id,
            kill_policy: None,
        });
        self.call(c).await
    }

    /// SHUTDOWN an executor.
    pub async fn shutdown(&self, executor_id: Id, agent_id: Id) -> Result<(), DriverError> {
        let mut c = Self::base(CallType::Shutdown);
        c.shutdown = Some(sch::Shutdown {
            executor_id,
            agent_id,
        });
        self.call(c).await
    }

    /// ACKNOWLEDGE an update (only updates with a uuid may be acknowledged).
    pub async fn acknowledge(&self, status: &TaskStatus) -> Result<(), DriverError> {
        let task = status.task_id.value.clone();
        let uuid = status.uuid.clone().ok_or(DriverError::NotAcknowledgeable {
            task: task.clone(),
            missing: "uuid",
        })?;
        let agent_id = status
            .agent_id
            .clone()
            .ok_or(DriverError::NotAcknowledgeable {
                task,
                missing: "agent_id",
            })?;
        let mut c = Self::base(CallType::Acknowledge);
        c.acknowledge = Some(sch::Acknowledge {
            agent_id,
            task_id: status.task_id.clone(),
            uuid,
        });
        self.call(c).await
    }

    /// RECONCILE: explicit for the listed (task, agent) pairs, implicit if
    /// the list is empty.
    pub async fn reconcile(&self, tasks: Vec<(Id, Option<Id>)>) -> Result<(), DriverError> {
        let mut c = Self::base(CallType::Reconcile);
        c.reconcile = Some(sch::Reconcile {
            tasks: tasks
                .into_iter()
                .map(|(task_id, agent_id)| sch::ReconcileTask { task_id, agent_id })
                .collect(),
        });
        self.call(c).await
    }

    /// The reconciliation round recommended after every SUBSCRIBED: one
    /// explicit RECONCILE for the tasks the owner believes non-terminal
    /// (with agent ids when known), then an implicit one to discover tasks
    /// the owner does not know about. Answers arrive as UPDATE events with
    /// `reason: REASON_RECONCILIATION` and no uuid (never acknowledge them).
    pub async fn reconcile_round(&self, known: Vec<(Id, Option<Id>)>) -> Result<(), DriverError> {
        if !known.is_empty() {
            self.reconcile(known).await?;
        }
        self.reconcile(Vec::new()).await
    }

    /// UPDATE_FRAMEWORK: change the FrameworkInfo (name, roles,
    /// capabilities, failover timeout...) without re-subscribing; later
    /// re-subscriptions use it too.
    pub async fn update_framework(&self, mut info: FrameworkInfo) -> Result<(), DriverError> {
        info.id = self.framework_id();
        let mut c = Self::base(CallType::UpdateFramework);
        c.update_framework = Some(sch::UpdateFramework {
            framework_info: info.clone(),
            suppressed_roles: Vec::new(),
        });
        self.call(c).await?;
        self.inner.session().framework_info = info;
        Ok(())
    }

    /// MESSAGE to an executor (best effort).
    pub async fn message(
        &self,
        agent_id: Id,
        executor_id: Id,
        data: Vec<u8>,
    ) -> Result<(), DriverError> {
        let mut c = Self::base(CallType::Message);
        c.message = Some(sch::Message {
            agent_id,
            executor_id,
            data: B64(data),
        });
        self.call(c).await
    }

    /// TEARDOWN the framework: kills all its tasks; the id becomes unusable.
    pub async fn teardown(&self) -> Result<(), DriverError> {
        let r = self.call(Self::base(CallType::Teardown)).await;
        self.stop();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_protocol_relative_locations() {
        assert_eq!(
            resolve_location("http://a:1", "//10.0.0.2:5050/api/v1/scheduler").as_deref(),
            Some("http://10.0.0.2:5050")
        );
        assert_eq!(
            resolve_location("http://a:1", "http://b:2/x").as_deref(),
            Some("http://b:2")
        );
        assert_eq!(resolve_location("http://a:1", "/relative"), None);
        assert_eq!(resolve_location("http://a:1", "//"), None);
    }
}
