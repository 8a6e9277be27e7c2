//! JSON model of the Mesos v1 scheduler and executor APIs (the subset kaon
//! uses), encoded the way Mesos encodes it: snake_case `.proto` field names,
//! ids as `{"value": ..}` objects, enums as names, `bytes` as standard Base64.
//!
//! Optional fields are `Option`/`Vec` and are omitted when unset, so the
//! output is compact and a third-party client sees Mesos-shaped JSON. Unknown
//! JSON keys are ignored on input, as Mesos does.

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Mesos id (`FrameworkID`, `OfferID`, `AgentID`, `TaskID`, `ExecutorID`,
/// `ContainerID`); all of them are `{"value": "..."}` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Id {
    /// The id text.
    pub value: String,
}

impl Id {
    /// Wraps a string as an id.
    pub fn new(value: impl Into<String>) -> Self {
        Id {
            value: value.into(),
        }
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.value)
    }
}

/// A protobuf `bytes` field: standard Base64 with padding on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct B64(pub Vec<u8>);

impl Serialize for B64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(B64)
            .map_err(|e| serde::de::Error::custom(format!("invalid base64 in bytes field: {e}")))
    }
}

/// Value type of a resource or attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum ValueType {
    #[serde(rename = "SCALAR")]
    Scalar,
    #[serde(rename = "RANGES")]
    Ranges,
    #[serde(rename = "SET")]
    Set,
    #[serde(rename = "TEXT")]
    Text,
}

/// `Value.Scalar`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scalar {
    /// The number (cores, MB, ...).
    pub value: f64,
}

/// One inclusive range `[begin, end]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// First value.
    pub begin: u64,
    /// Last value (inclusive).
    pub end: u64,
}

/// `Value.Ranges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Ranges {
    /// The ranges.
    #[serde(default)]
    pub range: Vec<Range>,
}

/// `Value.Set`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ValueSet {
    /// The items.
    #[serde(default)]
    pub item: Vec<String>,
}

/// `Value.Text`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Text {
    /// The text.
    pub value: String,
}

/// A resource (`cpus`, `mem`, `disk`, `ports`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    /// Resource name.
    pub name: String,
    /// Value type.
    #[serde(rename = "type")]
    pub kind: ValueType,
    /// Scalar value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scalar: Option<Scalar>,
    /// Ranges value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<Ranges>,
    /// Set value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<ValueSet>,
    /// Legacy role (`"*"` = unreserved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Role the resource is allocated to (MULTI_ROLE frameworks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_info: Option<AllocationInfo>,
}

/// `Resource.AllocationInfo` / `Offer.allocation_info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AllocationInfo {
    /// The role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

impl Resource {
    /// An unreserved scalar resource.
    pub fn scalar(name: &str, value: f64) -> Self {
        Resource {
            name: name.into(),
            kind: ValueType::Scalar,
            scalar: Some(Scalar { value }),
            ranges: None,
            set: None,
            role: Some("*".into()),
            allocation_info: None,
        }
    }

    /// An unreserved ranges resource.
    pub fn ranges(name: &str, ranges: &[(u64, u64)]) -> Self {
        Resource {
            name: name.into(),
            kind: ValueType::Ranges,
            scalar: None,
            ranges: Some(Ranges {
                range: ranges
                    .iter()
                    .map(|&(begin, end)| Range { begin, end })
                    .collect(),
            }),
            set: None,
            role: Some("*".into()),
            allocation_info: None,
        }
    }
}

/// An agent attribute (`rack: r1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attribute {
    /// Attribute name.
    pub name: String,
    /// Value type.
    #[serde(rename = "type")]
    pub kind: ValueType,
    /// Text value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Text>,
    /// Scalar value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scalar: Option<Scalar>,
    /// Ranges value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<Ranges>,
    /// Set value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<ValueSet>,
}

impl Attribute {
    /// A text attribute.
    pub fn text(name: &str, value: &str) -> Self {
        Attribute {
            name: name.into(),
            kind: ValueType::Text,
            text: Some(Text {
                value: value.into(),
            }),
            scalar: None,
            ranges: None,
            set: None,
        }
    }

    /// The value rendered as text (for constraint matching).
    pub fn value_text(&self) -> String {
        if let Some(t) = &self.text {
            return t.value.clone();
        }
        if let Some(s) = &self.scalar {
            return s.value.to_string();
        }
        if let Some(s) = &self.set {
            return s.item.join(",");
        }
        String::new()
    }
}

/// `FrameworkInfo.Capability`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    /// Capability name, e.g. `MULTI_ROLE`, `PARTITION_AWARE`. Kept as text so
    /// unknown names do not fail parsing (Mesos drops them).
    #[serde(rename = "type")]
    pub kind: String,
}

/// `FrameworkInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FrameworkInfo {
    /// OS user tasks run as by default (required).
    pub user: String,
    /// Display name (required).
    pub name: String,
    /// Set on re-subscription (caller-supplied id keeps tasks after failover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    /// Seconds the master keeps tasks running after a disconnect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_timeout: Option<f64>,
    /// Whether agents checkpoint this framework's tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<bool>,
    /// Legacy single role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Roles (with the MULTI_ROLE capability).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Scheduler host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Authentication principal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Capabilities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<Capability>,
}

impl FrameworkInfo {
    /// Whether the framework declared a capability.
    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities.iter().any(|c| c.kind == name)
    }
}

/// `Environment.Variable`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `Environment`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Environment {
    /// Variables.
    #[serde(default)]
    pub variables: Vec<EnvVar>,
}

/// `CommandInfo.URI` (the emulator does not fetch URIs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandUri {
    /// URI.
    pub value: String,
}

/// `CommandInfo`: a shell command (`shell` default true) or an argv.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CommandInfo {
    /// URIs to fetch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uris: Vec<CommandUri>,
    /// Environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    /// Run `value` through `/bin/sh -c` (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<bool>,
    /// Shell command or executable path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Full argv (argv\[0\] included) when `shell` is false.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arguments: Vec<String>,
    /// OS user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl CommandInfo {
    /// A shell command.
    pub fn shell(cmd: &str) -> Self {
        CommandInfo {
            shell: Some(true),
            value: Some(cmd.into()),
            ..Default::default()
        }
    }
}

/// `DurationInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurationInfo {
    /// Nanoseconds.
    pub nanoseconds: i64,
}

impl DurationInfo {
    /// As a std duration (negative clamps to zero).
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.nanoseconds.max(0) as u64)
    }
}

/// `KillPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KillPolicy {
    /// Time between SIGTERM and SIGKILL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<DurationInfo>,
}

/// Executor type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum ExecutorType {
    #[serde(rename = "UNKNOWN")]
    Unknown,
    #[serde(rename = "DEFAULT")]
    Default,
    #[serde(rename = "CUSTOM")]
    Custom,
}

/// `ExecutorInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutorInfo {
    /// DEFAULT or CUSTOM.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ExecutorType>,
    /// Executor id (required).
    pub executor_id: Id,
    /// Owning framework (the master fills it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework_id: Option<Id>,
    /// How to start the executor (required for CUSTOM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandInfo>,
    /// Executor's own resources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Resource>,
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Opaque data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<B64>,
    /// Grace period for SHUTDOWN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_period: Option<DurationInfo>,
}

/// `Label`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// Key.
    pub key: String,
    /// Value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `Labels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Labels {
    /// Labels.
    #[serde(default)]
    pub labels: Vec<Label>,
}

/// `TaskInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Name (required).
    pub name: String,
    /// Task id (required).
    pub task_id: Id,
    /// Agent to run on (required; must equal the offer's agent).
    pub agent_id: Id,
    /// Resources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Resource>,
    /// Custom executor (exactly one of `executor` / `command`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<ExecutorInfo>,
    /// Command for the built-in command executor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandInfo>,
    /// Kill policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_policy: Option<KillPolicy>,
    /// Opaque data for the executor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<B64>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
}

/// Task states with their Mesos names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum TaskState {
    #[serde(rename = "TASK_STAGING")]
    Staging,
    #[serde(rename = "TASK_STARTING")]
    Starting,
    #[serde(rename = "TASK_RUNNING")]
    Running,
    #[serde(rename = "TASK_KILLING")]
    Killing,
    #[serde(rename = "TASK_FINISHED")]
    Finished,
    #[serde(rename = "TASK_FAILED")]
    Failed,
    #[serde(rename = "TASK_KILLED")]
    Killed,
    #[serde(rename = "TASK_ERROR")]
    Error,
    #[serde(rename = "TASK_LOST")]
    Lost,
    #[serde(rename = "TASK_DROPPED")]
    Dropped,
    #[serde(rename = "TASK_UNREACHABLE")]
    Unreachable,
    #[serde(rename = "TASK_GONE")]
    Gone,
    #[serde(rename = "TASK_GONE_BY_OPERATOR")]
    GoneByOperator,
    #[serde(rename = "TASK_UNKNOWN")]
    Unknown,
}

impl TaskState {
    /// Mesos's `isTerminalState`.
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

    /// The wire name, e.g. `TASK_RUNNING`.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// Who generated a status update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Source {
    #[serde(rename = "SOURCE_MASTER")]
    Master,
    #[serde(rename = "SOURCE_AGENT")]
    Agent,
    #[serde(rename = "SOURCE_EXECUTOR")]
    Executor,
}

/// `TaskStatus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// Task (required).
    pub task_id: Id,
    /// State (required).
    pub state: TaskState,
    /// Human-readable text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// `REASON_*` name, kept as text so new reasons do not fail parsing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Opaque data (kaon: terminal step result, see README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<B64>,
    /// Agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<Id>,
    /// Executor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor_id: Option<Id>,
    /// Seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<f64>,
    /// 16 random bytes for reliable updates; absent for master-generated ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<B64>,
    /// Health check result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
}

impl TaskStatus {
    /// A bare status for `task_id` in `state`.
    pub fn new(task_id: Id, state: TaskState) -> Self {
        TaskStatus {
            task_id,
            state,
            message: None,
            source: None,
            reason: None,
            data: None,
            agent_id: None,
            executor_id: None,
            timestamp: None,
            uuid: None,
            healthy: None,
        }
    }
}

/// `Filters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Filters {
    /// Seconds before resources declined are offered again (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refuse_seconds: Option<f64>,
}

/// `Address` (in offer URLs and MasterInfo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// Host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// IP text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Port.
    pub port: u16,
}

/// `URL`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Url {
    /// Scheme.
    pub scheme: String,
    /// Address.
    pub address: Address,
    /// Path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// `Offer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    /// Offer id.
    pub id: Id,
    /// Framework.
    pub framework_id: Id,
    /// Agent.
    pub agent_id: Id,
    /// Agent host name.
    pub hostname: String,
    /// Agent URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<Url>,
    /// Offered resources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Resource>,
    /// Agent attributes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<Attribute>,
    /// Executors of this framework already on the agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executor_ids: Vec<Id>,
    /// Role the offer is allocated to (MULTI_ROLE frameworks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_info: Option<AllocationInfo>,
}

/// `AgentInfo` (sent to executors in SUBSCRIBED).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Host name.
    pub hostname: String,
    /// Port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Agent id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    /// Total resources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Resource>,
    /// Attributes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<Attribute>,
}

/// `MasterInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MasterInfo {
    /// Master id.
    pub id: String,
    /// IPv4 as a network-order u32.
    pub ip: u32,
    /// Port.
    pub port: u32,
    /// libprocess pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    /// Host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
}

pub mod scheduler;

pub mod executor;

#[cfg(test)]
mod tests {
    use super::scheduler::{Event, EventType};
    use super::*;

    #[test]
    fn parses_reference_offer_and_task_json() {
        let offer: Offer = serde_json::from_str(
            r#"{"id": {"value": "M-O7"}, "framework_id": {"value": "M-0000"}, "agent_id": {"value": "M-S0"},
            "hostname": "127.0.0.1",
            "url": {"scheme": "http", "address": {"hostname": "127.0.0.1", "ip": "127.0.0.1", "port": 5051}, "path": "/slave(1)"},
            "resources": [
              {"name": "cpus", "type": "SCALAR", "scalar": {"value": 4.0}, "role": "*"},
              {"name": "ports","type": "RANGES", "ranges": {"range": [{"begin": 31000, "end": 32000}]}, "role": "*"}],
            "attributes": [{"name": "rack", "type": "TEXT", "text": {"value": "r1"}}],
            "executor_ids": [{"value": "meson-exec-1"}], "unknown_future_field": 1}"#,
        )
        .unwrap();
        assert_eq!(offer.attributes[0].value_text(), "r1");
        assert_eq!(
            offer.resources[1].ranges.as_ref().unwrap().range[0].end,
            32000
        );
        let task: TaskInfo = serde_json::from_str(
            r#"{"name": "step-1", "task_id": {"value": "wf42-step1-a1"}, "agent_id": {"value": "M-S0"},
            "resources": [],
            "executor": {"executor_id": {"value": "meson-exec-wf42-step1"}, "type": "CUSTOM",
              "command": {"value": "/opt/meson/bin/meson-executor", "shell": false,
                          "arguments": ["meson-executor", "--log=info"],
                          "uris": [{"value": "http://artifacts/x.tgz", "extract": true}]},
              "data": "eyJ3b3JrZmxvdyI6IjQyIn0="},
            "data": "eyJzdGVwIjoxfQ=="}"#,
        )
        .unwrap();
        assert_eq!(task.data.unwrap().0, br#"{"step":1}"#);
        assert_eq!(task.executor.unwrap().kind, Some(ExecutorType::Custom));
    }

    #[test]
    fn events_serialize_like_mesos() {
        let mut ev = Event::bare(EventType::Update);
        let mut status = TaskStatus::new(Id::new("t"), TaskState::Running);
        status.uuid = Some(B64(vec![0; 16]));
        status.source = Some(Source::Executor);
        ev.update = Some(super::scheduler::Update { status });
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"type":"UPDATE","update":{"status":{"task_id":{"value":"t"},"state":"TASK_RUNNING","source":"SOURCE_EXECUTOR","uuid":"AAAAAAAAAAAAAAAAAAAAAA=="}}}"#
        );
        let mut err = Event::bare(EventType::Error);
        err.error = Some(super::scheduler::ErrorBody {
            message: "Framework failed over".into(),
        });
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"type":"ERROR","error":{"message":"Framework failed over"}}"#
        );
        let unknown: Event = serde_json::from_str(r#"{"type":"SOMETHING_NEW"}"#).unwrap();
        assert_eq!(unknown.kind, EventType::Unknown);
        assert!(serde_json::from_str::<B64>(r#""not base64!""#).is_err());
    }
}
