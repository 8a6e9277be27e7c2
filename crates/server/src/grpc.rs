//! The public gRPC API (`kaon.v1.Kaon`) over the runtime and the log.
//!
//! Writes go through the runtime (decide, then commit); reads come from the
//! applied state. Domain rejections map to gRPC codes that name the problem:
//! INVALID_ARGUMENT (with every spec error), NOT_FOUND, FAILED_PRECONDITION,
//! RESOURCE_EXHAUSTED.

use std::collections::BTreeMap;
use std::sync::Arc;

use kaon_api::v1;
use kaon_api::v1::kaon_server::Kaon;
use kaon_core::decide::{Command, Rejection, SubmitTarget, status_name};
use kaon_core::events::{Body, Event};
use kaon_core::state::{InstKind, Run, RunStatus, State};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::log::EventLog;
use crate::runtime::{CommandOutcome, RuntimeSlot};

/// Most runs one ListRuns page returns.
pub const LIST_PAGE_SIZE_MAX: u32 = 1000;
/// Events a watch sends per batch.
const WATCH_BATCH_EVENTS_MAX: usize = 1024;

/// The service.
pub struct KaonService<L: EventLog> {
    log: Arc<L>,
    runtime: RuntimeSlot,
}

impl<L: EventLog> KaonService<L> {
    /// Serves `log` (reads) and the runtime in `runtime` (writes; empty on
    /// a node that is not the leader).
    pub fn new(log: Arc<L>, runtime: RuntimeSlot) -> Self {
        KaonService { log, runtime }
    }

    async fn command(&self, cmd: Command) -> Result<CommandOutcome, Status> {
        let Some(runtime) = self.runtime.read().await.clone() else {
            let hint = match self
                .log
                .cluster_status()
                .and_then(|c| c.leader.map(|l| (l, c.id, c.members)))
            {
                Some((leader, me, _)) if leader == me => {
                    return Err(Status::unavailable(
                        "this node was just elected leader and is starting its effect runtime: retry shortly",
                    ));
                }
                Some((leader, _, members)) => {
                    let addr = members
                        .iter()
                        .find(|m| m.id == leader)
                        .map(|m| m.addr.clone())
                        .unwrap_or_default();
                    format!("; the leader is node {leader} (Raft address {addr})")
                }
                None => "; no leader is known yet".to_string(),
            };
            return Err(Status::unavailable(format!(
                "this node is not the leader{hint}: send writes to the leader"
            )));
        };
        match runtime.command(cmd).await {
            Err(e) => Err(Status::unavailable(format!(
                "the leader runtime is not running: {e}"
            ))),
            Ok(Err(r)) => Err(rejection_status(r)),
            Ok(Ok(o)) => Ok(o),
        }
    }
}

/// Maps a domain rejection to a gRPC status with a message naming the problem.
pub fn rejection_status(r: Rejection) -> Status {
    match &r {
        Rejection::InvalidSpec(_) | Rejection::InvalidArgument(_) => {
            Status::invalid_argument(r.to_string())
        }
        Rejection::NotFound(_) => Status::not_found(r.to_string()),
        Rejection::FailedPrecondition(_) => Status::failed_precondition(r.to_string()),
        Rejection::LimitExceeded(_) => Status::resource_exhausted(r.to_string()),
    }
}

fn run_status(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Running => "running",
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "failed",
        RunStatus::Cancelled => "cancelled",
    }
}

/// The API view of a run.
pub fn run_view(r: &Run) -> v1::Run {
    v1::Run {
        id: r.id,
        workflow: r.workflow.clone(),
        version: r.version,
        status: run_status(r.status).into(),
        message: r.message.clone(),
        submitted_unix_ms: r.submitted_ms,
        finished_unix_ms: r.finished_ms.unwrap_or(0),
        params_json: r.params.to_string(),
        steps: r
            .instances
            .iter()
            .filter(|i| !i.path.is_empty())
            .map(|i| v1::Step {
                path: i.path.clone(),
                status: status_name(i.status).into(),
                attempts: i.attempts.len() as u32,
                percent: i.percent,
                status_text: i.status_text.clone(),
                message: i.message.clone(),
                outputs_json: i.outputs.clone().unwrap_or_default(),
                kind: match i.kind {
                    InstKind::Task => "task",
                    InstKind::Group => "group",
                    InstKind::Loop => "loop",
                    InstKind::Iteration => "iteration",
                    InstKind::Foreach => "foreach",
                }
                .into(),
            })
            .collect(),
    }
}

/// The run an event is about, if any.
pub fn run_of(e: &Event) -> Option<u64> {
    Some(match e.body.as_ref()? {
        Body::RunSubmitted(_) => e.index,
        Body::NodeStarted(b) => b.run_id,
        Body::ForeachExpanded(b) => b.run_id,
        Body::LoopIterationStarted(b) => b.run_id,
        Body::TaskLaunchRequested(b) => b.run_id,
        Body::TaskStatusObserved(b) => b.run_id,
        Body::RetryScheduled(b) => b.run_id,
        Body::TaskKillRequested(b) => b.run_id,
        Body::NodeFinished(b) => b.run_id,
        Body::NodeSkipped(b) => b.run_id,
        Body::ProgressReported(b) => b.run_id,
        Body::RunCancelRequested(b) => b.run_id,
        Body::RunFinished(b) => b.run_id,
        _ => return None,
    })
}

#[tonic::async_trait]
impl<L: EventLog> Kaon for KaonService<L> {
    async fn register_workflow(
        &self,
        req: Request<v1::RegisterWorkflowRequest>,
    ) -> Result<Response<v1::RegisterWorkflowResponse>, Status> {
        let out = self
            .command(Command::RegisterWorkflow {
                source: req.into_inner().spec,
            })
            .await?;
        if let Some((name, version)) = out.decision.existing_version {
            return Ok(Response::new(v1::RegisterWorkflowResponse {
                name,
                version,
                created: false,
            }));
        }
        for e in &out.committed {
            if let Some(Body::WorkflowRegistered(w)) = &e.body {
                return Ok(Response::new(v1::RegisterWorkflowResponse {
                    name: w.name.clone(),
                    version: w.version,
                    created: true,
                }));
            }
        }
        Err(Status::aborted(
            "the registration lost a race with another; retry",
        ))
    }

    async fn list_workflows(
        &self,
        _: Request<v1::ListWorkflowsRequest>,
    ) -> Result<Response<v1::ListWorkflowsResponse>, Status> {
        let workflows = self.log.with_state(|s: &State| {
            s.workflows
                .iter()
                .map(|(name, w)| v1::WorkflowSummary {
                    name: name.clone(),
                    latest_version: w.versions.last().map(|v| v.version).unwrap_or(0),
                    schedules: w.schedules.len() as u32,
                })
                .collect()
        });
        Ok(Response::new(v1::ListWorkflowsResponse { workflows }))
    }

    async fn submit_run(
        &self,
        req: Request<v1::SubmitRunRequest>,
    ) -> Result<Response<v1::SubmitRunResponse>, Status> {
        let req = req.into_inner();
        let target = match req.workflow {
            Some(v1::submit_run_request::Workflow::Registered(r)) => SubmitTarget::Registered {
                name: r.name,
                version: (r.version != 0).then_some(r.version),
            },
            Some(v1::submit_run_request::Workflow::InlineSpec(source)) => {
                SubmitTarget::Inline { source }
            }
            None => {
                return Err(Status::invalid_argument(
                    "workflow: give a registered workflow or an inline spec",
                ));
            }
        };
        let mut params = BTreeMap::new();
        for (k, v) in req.params_json {
            let value = serde_json::from_str(&v).map_err(|e| {
                Status::invalid_argument(format!(
                    "params.{k}: value is not JSON ({e}); write text values as JSON strings"
                ))
            })?;
            params.insert(k, value);
        }
        let out = self
            .command(Command::SubmitRun {
                target,
                params,
                idempotency_key: req.idempotency_key,
            })
            .await?;
        if let Some(id) = out.decision.existing_run {
            return Ok(Response::new(v1::SubmitRunResponse {
                run_id: id,
                existing: true,
            }));
        }
        let id = out
            .committed
            .iter()
            .find(|e| matches!(e.body, Some(Body::RunSubmitted(_))))
            .map(|e| e.index)
            .ok_or_else(|| Status::internal("submit committed no run"))?;
        Ok(Response::new(v1::SubmitRunResponse {
            run_id: id,
            existing: false,
        }))
    }

    async fn get_run(&self, req: Request<v1::GetRunRequest>) -> Result<Response<v1::Run>, Status> {
        let id = req.into_inner().run_id;
        self.log
            .with_state(|s| s.run(id).map(run_view))
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("run {id}")))
    }

    async fn list_runs(
        &self,
        req: Request<v1::ListRunsRequest>,
    ) -> Result<Response<v1::ListRunsResponse>, Status> {
        let req = req.into_inner();
        let size = match req.page_size {
            0 => 50,
            n if n > LIST_PAGE_SIZE_MAX => {
                return Err(Status::invalid_argument(format!(
                    "page_size {n} is over LIST_PAGE_SIZE_MAX = {LIST_PAGE_SIZE_MAX}"
                )));
            }
            n => n,
        } as usize;
        let below = if req.page_token == 0 {
            u64::MAX
        } else {
            req.page_token
        };
        let (runs, next) = self.log.with_state(|s| {
            let mut out = Vec::new();
            let mut next = 0;
            for (&id, r) in s.runs.range(..below).rev() {
                if (!req.workflow.is_empty() && r.workflow != req.workflow)
                    || (!req.status.is_empty() && run_status(r.status) != req.status)
                {
                    continue;
                }
                if out.len() == size {
                    next = id + 1;
                    break;
                }
                out.push(v1::RunSummary {
                    id,
                    workflow: r.workflow.clone(),
                    version: r.version,
                    status: run_status(r.status).into(),
                    submitted_unix_ms: r.submitted_ms,
                    finished_unix_ms: r.finished_ms.unwrap_or(0),
                    message: r.message.clone(),
                });
            }
            (out, next)
        });
        Ok(Response::new(v1::ListRunsResponse {
            runs,
            next_page_token: next,
        }))
    }

    type WatchRunStream = ReceiverStream<Result<v1::WatchRunEvent, Status>>;

    async fn watch_run(
        &self,
        req: Request<v1::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let req = req.into_inner();
        let run_id = req.run_id;
        if self.log.with_state(|s| s.run(run_id).is_none()) {
            return Err(Status::not_found(format!("run {run_id}")));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let log = self.log.clone();
        let mut committed = log.subscribe();
        tokio::spawn(async move {
            // The run's events start at its own index.
            let mut cursor = req.after_index.max(run_id - 1);
            loop {
                let batch = log.events_after(cursor, WATCH_BATCH_EVENTS_MAX);
                let mut finished = false;
                for e in batch {
                    cursor = e.index;
                    if run_of(&e) != Some(run_id) {
                        continue;
                    }
                    finished |= matches!(e.body, Some(Body::RunFinished(_)));
                    let run = log.with_state(|s| s.run(run_id).map(run_view));
                    if tx
                        .send(Ok(v1::WatchRunEvent {
                            event: Some(e),
                            run,
                        }))
                        .await
                        .is_err()
                    {
                        return; // the client went away
                    }
                }
                if finished {
                    return;
                }
                if log.events_after(cursor, 1).is_empty() && committed.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cancel_run(
        &self,
        req: Request<v1::CancelRunRequest>,
    ) -> Result<Response<v1::CancelRunResponse>, Status> {
        let req = req.into_inner();
        let reason = if req.reason.is_empty() {
            "cancelled by a client".to_string()
        } else {
            req.reason
        };
        self.command(Command::CancelRun {
            run_id: req.run_id,
            reason,
        })
        .await?;
        Ok(Response::new(v1::CancelRunResponse {}))
    }

    async fn list_schedules(
        &self,
        _: Request<v1::ListSchedulesRequest>,
    ) -> Result<Response<v1::ListSchedulesResponse>, Status> {
        let schedules = self.log.with_state(|s| {
            let mut out = Vec::new();
            for (name, w) in &s.workflows {
                let Some(v) = w.versions.last() else { continue };
                for (i, (plan, st)) in v.plan.schedules.iter().zip(&w.schedules).enumerate() {
                    out.push(v1::Schedule {
                        workflow: name.clone(),
                        index: i as u32,
                        cron: plan.pattern.clone(),
                        timezone: plan.timezone.name().to_string(),
                        paused: st.paused,
                        last_fire_unix_ms: st.last_fire_ms.unwrap_or(0),
                    });
                }
            }
            out
        });
        Ok(Response::new(v1::ListSchedulesResponse { schedules }))
    }

    async fn set_schedule_paused(
        &self,
        req: Request<v1::SetSchedulePausedRequest>,
    ) -> Result<Response<v1::SetSchedulePausedResponse>, Status> {
        let r = req.into_inner();
        self.command(Command::SetSchedulePaused {
            workflow: r.workflow,
            index: r.index,
            paused: r.paused,
        })
        .await?;
        Ok(Response::new(v1::SetSchedulePausedResponse {}))
    }

    async fn cluster_status(
        &self,
        _: Request<v1::ClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatusResponse>, Status> {
        let st = self
            .log
            .cluster_status()
            .ok_or_else(|| Status::failed_precondition("this node's log is not replicated"))?;
        let matched: BTreeMap<u64, u64> = st.replication.iter().copied().collect();
        let members = st
            .members
            .iter()
            .map(|m| v1::ClusterMember {
                id: m.id,
                raft_addr: m.addr.clone(),
                voter: m.voter,
                lag_entries: matched
                    .get(&m.id)
                    .map(|&x| st.committed_index.saturating_sub(x))
                    .unwrap_or(0),
            })
            .collect();
        Ok(Response::new(v1::ClusterStatusResponse {
            node_id: st.id,
            state: st.state,
            term: st.term,
            leader_id: st.leader.unwrap_or(0),
            last_log_index: st.last_log_index,
            committed_index: st.committed_index,
            applied_index: st.applied_index,
            applied_event_index: st.applied_event_index,
            members,
        }))
    }
}

/// Serves the API (plus gRPC health and reflection) on `listener` until
/// `shutdown` resolves.
pub async fn serve<L: EventLog>(
    log: Arc<L>,
    runtime: RuntimeSlot,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<v1::kaon_server::KaonServer<KaonService<L>>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kaon_api::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(v1::kaon_server::KaonServer::new(KaonService::new(
            log, runtime,
        )))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await?;
    Ok(())
}
