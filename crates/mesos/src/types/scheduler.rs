//! `mesos.v1.scheduler.Call` and `mesos.v1.scheduler.Event`.

use super::{
    B64, ExecutorInfo, Filters, FrameworkInfo, Id, KillPolicy, MasterInfo, Offer, TaskInfo,
    TaskStatus,
};
use serde::{Deserialize, Serialize};

/// Scheduler call types. Unknown names fail parsing (Mesos: 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallType {
    Unknown,
    Subscribe,
    Teardown,
    Accept,
    Decline,
    Revive,
    Kill,
    Shutdown,
    Acknowledge,
    Reconcile,
    Message,
    Request,
    Suppress,
    AcceptInverseOffers,
    DeclineInverseOffers,
    AcknowledgeOperationStatus,
    ReconcileOperations,
    UpdateFramework,
}

/// `Call.Subscribe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Framework description (required).
    pub framework_info: FrameworkInfo,
    /// Roles that start suppressed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressed_roles: Vec<String>,
}

/// Offer operation types (only LAUNCH is implemented by the emulator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationType {
    Unknown,
    Launch,
    Reserve,
    Unreserve,
    Create,
    Destroy,
    LaunchGroup,
    GrowVolume,
    ShrinkVolume,
    CreateDisk,
    DestroyDisk,
}

/// `Offer.Operation.Launch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Launch {
    /// Tasks to launch.
    #[serde(default)]
    pub task_infos: Vec<TaskInfo>,
}

/// `TaskGroupInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TaskGroup {
    /// Tasks of the group.
    #[serde(default)]
    pub tasks: Vec<TaskInfo>,
}

/// `Offer.Operation.LaunchGroup` (parsed so it can be refused clearly; the
/// emulator does not run task groups).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchGroup {
    /// The executor for the group.
    pub executor: ExecutorInfo,
    /// The tasks.
    pub task_group: TaskGroup,
}

/// `Offer.Operation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// Type (required).
    #[serde(rename = "type")]
    pub kind: OperationType,
    /// Operation id (invalid for LAUNCH).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    /// LAUNCH body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<Launch>,
    /// LAUNCH_GROUP body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_group: Option<LaunchGroup>,
}

impl Operation {
    /// A LAUNCH operation.
    pub fn launch(task_infos: Vec<TaskInfo>) -> Self {
        Operation {
            kind: OperationType::Launch,
            id: None,
            launch: Some(Launch { task_infos }),
            launch_group: None,
        }
    }
}

/// `Call.Accept`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Accept {
    /// Offers consumed.
    #[serde(default)]
    pub offer_ids: Vec<Id>,
    /// Operations, applied in order.
    #[serde(default)]
    pub operations: Vec<Operation>,
    /// Filter for leftovers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Filters>,
}

/// `Call.Decline`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Decline {
    /// Offers declined.
    #[serde(default)]
    pub offer_ids: Vec<Id>,
    /// Filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Filters>,
}

/// `Call.Revive` / `Call.Suppress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Roles {
    /// Roles (empty = all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

/// `Call.Kill`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kill {
    /// Task (required).
    pub task_id: Id,
    /// Agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<Id>,
    /// Kill policy override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_policy: Option<KillPolicy>,
}

/// `Call.Shutdown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shutdown {
    /// Executor (required).
    pub executor_id: Id,
    /// Agent (required).
    pub agent_id: Id,
}

/// `Call.Acknowledge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledge {
    /// Agent (required).
    pub agent_id: Id,
    /// Task (required).
    pub task_id: Id,
    /// The update's uuid (16 bytes, required).
    pub uuid: B64,
}

/// `Call.Reconcile.Task`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileTask {
    /// Task (required).
    pub task_id: Id,
    /// Agent, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<Id>,
}

/// `Call.Reconcile`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Reconcile {
    /// Tasks (empty = implicit reconciliation).
    #[serde(default)]
    pub tasks: Vec<ReconcileTask>,
}

/// `Call.Message` (scheduler → executor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Agent (required).
    pub agent_id: Id,
    /// Executor (required).
    pub executor_id: Id,
    /// Payload (required).
    pub data: B64,
}

/// `mesos.v1.scheduler.Call`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Call {
    /// Framework (required except for SUBSCRIBE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework_id: Option<Id>,
    /// Call type (required).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<CallType>,
    /// SUBSCRIBE body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Subscribe>,
    /// ACCEPT body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept: Option<Accept>,
    /// DECLINE body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline: Option<Decline>,
    /// KILL body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill: Option<Kill>,
    /// SHUTDOWN body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown: Option<Shutdown>,
    /// ACKNOWLEDGE body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledge: Option<Acknowledge>,
    /// RECONCILE body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<Reconcile>,
    /// MESSAGE body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    /// REVIVE body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revive: Option<Roles>,
    /// SUPPRESS body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppress: Option<Roles>,
    /// UPDATE_FRAMEWORK body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_framework: Option<UpdateFramework>,
}

/// `Call.UpdateFramework`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateFramework {
    /// The new FrameworkInfo (its id must equal the call's framework id).
    pub framework_info: FrameworkInfo,
    /// Roles to suppress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressed_roles: Vec<String>,
}

/// Scheduler event types; names this model does not know parse as `Unknown`
/// so a newer master cannot break the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    Subscribed,
    Offers,
    Rescind,
    Update,
    Message,
    Failure,
    Error,
    Heartbeat,
    InverseOffers,
    RescindInverseOffer,
    UpdateOperationStatus,
    #[serde(other)]
    Unknown,
}

/// `Event.Subscribed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscribed {
    /// Framework id (assigned or confirmed).
    pub framework_id: Id,
    /// Heartbeat period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_seconds: Option<f64>,
    /// Master description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_info: Option<MasterInfo>,
}

/// `Event.Offers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Offers {
    /// Offers.
    #[serde(default)]
    pub offers: Vec<Offer>,
}

/// `Event.Rescind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rescind {
    /// Offer.
    pub offer_id: Id,
}

/// `Event.Update`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// The status.
    pub status: TaskStatus,
}

/// `Event.Failure`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Failure {
    /// Agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<Id>,
    /// Executor that exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor_id: Option<Id>,
    /// Raw wait status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
}

/// `Event.Error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Why the subscription ended.
    pub message: String,
}

/// `mesos.v1.scheduler.Event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Event type.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// SUBSCRIBED body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribed: Option<Subscribed>,
    /// OFFERS body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offers: Option<Offers>,
    /// RESCIND body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescind: Option<Rescind>,
    /// UPDATE body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<Update>,
    /// MESSAGE body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    /// FAILURE body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
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
            offers: None,
            rescind: None,
            update: None,
            message: None,
            failure: None,
            error: None,
        }
    }
}

/// Re-exported for convenience in LAUNCH helpers.
pub type Executor = ExecutorInfo;
