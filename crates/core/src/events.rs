//! The event schema (generated from `proto/kaon/events/v1/events.proto`)
//! and small helpers around it.

#![allow(missing_docs, clippy::all)]

/// Generated protobuf types.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/kaon.events.v1.rs"));
}

pub use pb::event::Body;
pub use pb::{Event, FailureCause, KillCause, NodeOutcome, RunOutcome, SkipReason, TaskState};

use prost::Message;

/// Encodes an event to the bytes stored in the log and hashed into the chain.
pub fn encode(e: &Event) -> Vec<u8> {
    e.encode_to_vec()
}

/// Decodes an event; a malformed record is an error naming the index.
pub fn decode(bytes: &[u8]) -> Result<Event, prost::DecodeError> {
    Event::decode(bytes)
}

impl TaskState {
    /// Terminal per Mesos' `isTerminalState` (TASK_LOST counts as terminal).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Finished
                | TaskState::Failed
                | TaskState::Killed
                | TaskState::Error
                | TaskState::Lost
                | TaskState::Dropped
                | TaskState::Gone
                | TaskState::GoneByOperator
        )
    }

    /// The Mesos name of this state, e.g. `TASK_FINISHED` (the inverse of
    /// [`TaskState::from_mesos`]).
    pub fn mesos_name(self) -> &'static str {
        match self {
            TaskState::Unspecified => "TASK_UNSPECIFIED",
            TaskState::Staging => "TASK_STAGING",
            TaskState::Starting => "TASK_STARTING",
            TaskState::Running => "TASK_RUNNING",
            TaskState::Killing => "TASK_KILLING",
            TaskState::Finished => "TASK_FINISHED",
            TaskState::Failed => "TASK_FAILED",
            TaskState::Killed => "TASK_KILLED",
            TaskState::Error => "TASK_ERROR",
            TaskState::Lost => "TASK_LOST",
            TaskState::Dropped => "TASK_DROPPED",
            TaskState::Unreachable => "TASK_UNREACHABLE",
            TaskState::Gone => "TASK_GONE",
            TaskState::GoneByOperator => "TASK_GONE_BY_OPERATOR",
            TaskState::Unknown => "TASK_UNKNOWN",
        }
    }

    /// Parses a Mesos state name such as `TASK_RUNNING`.
    pub fn from_mesos(name: &str) -> Option<TaskState> {
        Some(match name {
            "TASK_STAGING" => TaskState::Staging,
            "TASK_STARTING" => TaskState::Starting,
            "TASK_RUNNING" => TaskState::Running,
            "TASK_KILLING" => TaskState::Killing,
            "TASK_FINISHED" => TaskState::Finished,
            "TASK_FAILED" => TaskState::Failed,
            "TASK_KILLED" => TaskState::Killed,
            "TASK_ERROR" => TaskState::Error,
            "TASK_LOST" => TaskState::Lost,
            "TASK_DROPPED" => TaskState::Dropped,
            "TASK_UNREACHABLE" => TaskState::Unreachable,
            "TASK_GONE" => TaskState::Gone,
            "TASK_GONE_BY_OPERATOR" => TaskState::GoneByOperator,
            "TASK_UNKNOWN" => TaskState::Unknown,
            _ => return None,
        })
    }
}

/// The run an event is about, if it is about one (metrics, audits).
pub fn body_run(b: &Body) -> Option<u64> {
    Some(match b {
        Body::NodeStarted(x) => x.run_id,
        Body::ForeachExpanded(x) => x.run_id,
        Body::LoopIterationStarted(x) => x.run_id,
        Body::TaskLaunchRequested(x) => x.run_id,
        Body::TaskStatusObserved(x) => x.run_id,
        Body::RetryScheduled(x) => x.run_id,
        Body::TaskKillRequested(x) => x.run_id,
        Body::NodeFinished(x) => x.run_id,
        Body::NodeSkipped(x) => x.run_id,
        Body::ProgressReported(x) => x.run_id,
        Body::RunCancelRequested(x) => x.run_id,
        Body::RunFinished(x) => x.run_id,
        Body::WorkflowRegistered(_)
        | Body::RunSubmitted(_)
        | Body::FrameworkRegistered(_)
        | Body::ScheduleFired(_)
        | Body::SchedulePauseChanged(_)
        | Body::LeaderStarted(_)
        | Body::RunsRetired(_)
        | Body::ChainHeadSigned(_) => return None,
    })
}

/// The (run, instance) an event is about, if it is about one instance.
pub fn body_instance(b: &Body) -> Option<(u64, u32)> {
    Some(match b {
        Body::NodeStarted(x) => (x.run_id, x.instance),
        Body::ForeachExpanded(x) => (x.run_id, x.instance),
        Body::LoopIterationStarted(x) => (x.run_id, x.instance),
        Body::TaskLaunchRequested(x) => (x.run_id, x.instance),
        Body::TaskStatusObserved(x) => (x.run_id, x.instance),
        Body::RetryScheduled(x) => (x.run_id, x.instance),
        Body::TaskKillRequested(x) => (x.run_id, x.instance),
        Body::NodeFinished(x) => (x.run_id, x.instance),
        Body::NodeSkipped(x) => (x.run_id, x.instance),
        Body::ProgressReported(x) => (x.run_id, x.instance),
        _ => return None,
    })
}

/// The newest event schema this kaon applies: 1 = the kinds up to
/// `LeaderStarted`; 2 adds `RunsRetired`; 3 adds `ChainHeadSigned`. A
/// leader writes a kind only
/// when every voter applies its schema ([`body_schema`];
/// `Limits::event_schema_max`); a replica refuses a kind it does not know
/// (`ApplyError::UnknownEvent`) and stops rather than guess.
pub const EVENT_SCHEMA: u32 = 3;

/// The event schema that introduced `b`'s kind.
pub fn body_schema(b: &Body) -> u32 {
    match b {
        Body::RunsRetired(_) => 2,
        Body::ChainHeadSigned(_) => 3,
        _ => 1,
    }
}

/// Short name of an event body, for logs and golden files.
pub fn body_name(b: &Body) -> &'static str {
    match b {
        Body::WorkflowRegistered(_) => "WorkflowRegistered",
        Body::RunSubmitted(_) => "RunSubmitted",
        Body::NodeStarted(_) => "NodeStarted",
        Body::ForeachExpanded(_) => "ForeachExpanded",
        Body::LoopIterationStarted(_) => "LoopIterationStarted",
        Body::TaskLaunchRequested(_) => "TaskLaunchRequested",
        Body::TaskStatusObserved(_) => "TaskStatusObserved",
        Body::RetryScheduled(_) => "RetryScheduled",
        Body::TaskKillRequested(_) => "TaskKillRequested",
        Body::NodeFinished(_) => "NodeFinished",
        Body::NodeSkipped(_) => "NodeSkipped",
        Body::ProgressReported(_) => "ProgressReported",
        Body::RunCancelRequested(_) => "RunCancelRequested",
        Body::RunFinished(_) => "RunFinished",
        Body::FrameworkRegistered(_) => "FrameworkRegistered",
        Body::ScheduleFired(_) => "ScheduleFired",
        Body::SchedulePauseChanged(_) => "SchedulePauseChanged",
        Body::LeaderStarted(_) => "LeaderStarted",
        Body::RunsRetired(_) => "RunsRetired",
        Body::ChainHeadSigned(_) => "ChainHeadSigned",
    }
}
