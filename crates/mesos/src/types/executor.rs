//! `mesos.v1.executor.Call` and `mesos.v1.executor.Event`.

use super::{AgentInfo, B64, ExecutorInfo, FrameworkInfo, Id, KillPolicy, TaskInfo, TaskStatus};
use serde::{Deserialize, Serialize};

/// Executor call types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallType {
    Unknown,
    Subscribe,
    Update,
    Message,
    Heartbeat,
}

/// One unacknowledged update carried in SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnackedUpdate {
    /// The status.
    pub status: TaskStatus,
}

/// `Call.Subscribe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Subscribe {
    /// Tasks launched but never acknowledged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unacknowledged_tasks: Vec<TaskInfo>,
    /// Updates not yet ACKNOWLEDGED by the agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unacknowledged_updates: Vec<UnackedUpdate>,
}

/// `Call.Update`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// The status.
    pub status: TaskStatus,
}

/// `Call.Message` / `Event.Message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Payload.
    pub data: B64,
}

/// `mesos.v1.executor.Call`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// Executor (required).
    pub executor_id: Id,
    /// Framework (required).
    pub framework_id: Id,
    /// Type (required).
    #[serde(rename = "type")]
    pub kind: CallType,
    /// SUBSCRIBE body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Subscribe>,
    /// UPDATE body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<Update>,
    /// MESSAGE body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
}

/// Executor event types; unknown names parse as `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    Subscribed,
    Launch,
    Kill,
    Acknowledged,
    Message,
    Error,
    Shutdown,
    LaunchGroup,
    Heartbeat,
    #[serde(other)]
    Unknown,
}

/// `Event.Subscribed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscribed {
    /// This executor.
    pub executor_info: ExecutorInfo,
    /// Its framework.
    pub framework_info: FrameworkInfo,
    /// The agent.
    pub agent_info: AgentInfo,
    /// Container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<Id>,
}

/// `Event.Launch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    /// The task.
    pub task: TaskInfo,
}

/// `Event.Kill`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kill {
    /// Task.
    pub task_id: Id,
    /// Kill policy override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_policy: Option<KillPolicy>,
}

/// `Event.Acknowledged`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledged {
    /// Task.
    pub task_id: Id,
    /// The acknowledged update's uuid.
    pub uuid: B64,
}

/// `Event.Error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Text.
    pub message: String,
}

/// `mesos.v1.executor.Event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Type.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// SUBSCRIBED body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribed: Option<Subscribed>,
    /// LAUNCH body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<Launch>,
    /// KILL body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill: Option<Kill>,
    /// ACKNOWLEDGED body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<Acknowledged>,
    /// MESSAGE body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    /// ERROR body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Event {
    /// An event of `kind` with no body.
    pub fn bare(kind: EventType) -> Self {
        Event {
            kind,
            subscribed: None,
            launch: None,
            kill: None,
            acknowledged: None,
            message: None,
            error: None,
        }
    }
}
