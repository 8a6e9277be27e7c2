//! Workflow spec v1 (`apiVersion: kaon/v1`): the document a user writes.
//!
//! This module is only the serde model and the parse step. Parsing checks
//! syntax, shapes and unknown fields (one error, with its path, line and
//! column); [`crate::validate`] then checks meaning and reports every
//! problem it finds at once. Durations, sizes and expressions stay strings
//! here so that validation can say exactly where a bad one is.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::limits::Limits;
use crate::validate::SpecError;

/// The only accepted `apiVersion`.
pub const API_VERSION: &str = "kaon/v1";

/// Ordered map from step name to node, in the order the user wrote them.
pub type Steps = UniqueMap<NodeSpec>;

/// A string-keyed map that keeps the user's order and refuses duplicate
/// keys (YAML parsers otherwise let the last one silently win).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct UniqueMap<V>(pub IndexMap<String, V>);

impl<V> Default for UniqueMap<V> {
    fn default() -> Self {
        UniqueMap(IndexMap::new())
    }
}

impl<V> std::ops::Deref for UniqueMap<V> {
    type Target = IndexMap<String, V>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<V> std::ops::DerefMut for UniqueMap<V> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<'a, V> IntoIterator for &'a UniqueMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = indexmap::map::Iter<'a, String, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<V> FromIterator<(String, V)> for UniqueMap<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        UniqueMap(iter.into_iter().collect())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
            type Value = UniqueMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map with unique keys")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = IndexMap::new();
                while let Some(k) = map.next_key::<String>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!("duplicate name {k:?}")));
                    }
                    let v = map.next_value()?;
                    out.insert(k, v);
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// A whole workflow definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    /// Must be `kaon/v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Optional document kind; if given it must be `Workflow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Workflow name: registered versions are grouped under it.
    pub name: String,
    /// Free text for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Typed parameters, overridable at submit.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub params: UniqueMap<ParamSpec>,
    /// Defaults every step inherits unless it says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<StepDefaults>,
    /// Reusable group definitions, referenced by `uses:`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub templates: UniqueMap<TemplateSpec>,
    /// The workflow's top-level nodes.
    pub steps: Steps,
    /// Exit handler: steps that always run after the body ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_exit: Option<Steps>,
    /// Workflow timeout (e.g. `2h`); the run is cancelled when it passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// What a failed step does to the run unless the step overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<FailureMode>,
    /// Cron triggers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<ScheduleSpec>,
}

/// Parameter types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// UTF-8 text.
    String,
    /// 64-bit signed integer.
    Int,
    /// 64-bit float.
    Float,
    /// true / false.
    Bool,
    /// JSON array.
    List,
    /// JSON object.
    Map,
}

/// One workflow parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    /// Its type; values are checked against it at submit.
    #[serde(rename = "type")]
    pub ty: ParamType,
    /// Default; without one the parameter is required at submit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    /// Free text for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Step defaults at workflow level.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDefaults {
    /// Default resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceSpec>,
    /// Default retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Default step timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Environment added to every step (a step's own entries win).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub env: UniqueMap<EnvValue>,
}

/// An environment variable's value: text (may use `${{ expr }}`), or
/// `{secret: NAME}`: the value of a secret read on the agent when the
/// step starts, which never enters the spec, the event log, the API or
/// kaon's logs (issue 12).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, expecting = "text, or {secret: NAME}")]
pub enum EnvValue {
    /// A value (template).
    Text(String),
    /// A secret by name.
    Secret {
        /// The secret's name in the agent's secrets directory.
        secret: String,
    },
}

/// A reusable group definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// The group's nodes.
    pub steps: Steps,
}

/// A node: a step (has `run` or `shell`) or a group (has `steps` or `uses`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Sibling nodes that must finish first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// CEL condition; false means the node is skipped (and recorded so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Expand this node once per element of a run-time list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreach: Option<ForeachSpec>,
    /// Step kind: command (default), python, r, spark, jvm, container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Command as argv (no shell). Elements may use `${{ expr }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Vec<String>>,
    /// Command as one shell line (`/bin/sh -c`). May use `${{ expr }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Environment variables; values may use `${{ expr }}`, or be
    /// `{secret: NAME}`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub env: UniqueMap<EnvValue>,
    /// Secrets by name, each put in a file of the step's own
    /// (`$KAON_SECRETS/NAME`, readable by the step only, removed when it
    /// ends); values are read on the agent, never stored by kaon.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Files fetched into the task sandbox before it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileSpec>,
    /// Container image (kind `container` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Resources one attempt needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceSpec>,
    /// Agent placement constraints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<ConstraintSpec>,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Per-attempt timeout, e.g. `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// What this node's failure does to the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<FailureMode>,
    /// Group: inline child nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Steps>,
    /// Group: use a template's nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<String>,
    /// Group: repeat until a condition holds (bounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<RepeatSpec>,
}

/// A file fetched into the sandbox (Mesos CommandInfo.URI).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Where to fetch it from.
    pub uri: String,
    /// Mark it executable.
    #[serde(default)]
    pub executable: bool,
    /// Extract archives (default true, as in Mesos).
    #[serde(default = "yes")]
    pub extract: bool,
}

fn yes() -> bool {
    true
}

/// A number or a string with a unit (e.g. `512`, `"4GiB"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Quantity {
    /// A plain number, in the field's base unit.
    Number(f64),
    /// A number with a unit suffix.
    Text(String),
}

/// Resources of one task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    /// CPU cores, fractional allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory: a number of MB or a string like `4GiB`, `512MB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<Quantity>,
    /// Disk (scratch) space, same units as `mem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<Quantity>,
    /// Whole GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<f64>,
}

/// Placement on agents with a given attribute value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConstraintSpec {
    /// Agent attribute name, e.g. `rack`.
    pub attribute: String,
    /// Exact value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    /// Regular expression the whole value must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub like: Option<String>,
}

/// Separate retry budgets per kind of failure, and the backoff between tries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Retries after the command failed (non-zero exit, signal). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_errors: Option<u32>,
    /// Retries after the platform failed (task lost, agent gone). Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_errors: Option<u32>,
    /// Retries after the step timed out. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<u32>,
    /// Wait between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffSpec>,
}

/// Backoff kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackoffKind {
    /// The same wait every time.
    Fixed,
    /// initial * factor^(n-1), capped at max.
    Exponential,
}

/// Backoff between attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffSpec {
    /// Fixed or exponential.
    pub kind: BackoffKind,
    /// First wait, e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<String>,
    /// Multiplier for exponential backoff (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// Cap on one wait, e.g. `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
}

/// Failure modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Fail the run at once: kill running steps, start nothing new.
    FailFast,
    /// Start nothing new, let running steps finish, then fail.
    FinishRunning,
    /// This node's failure does not fail the run; dependents still run.
    Ignore,
}

/// `foreach`: one child per element of a list known at run time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForeachSpec {
    /// CEL expression that evaluates to a list, e.g. `steps.prepare.outputs.regions`.
    pub items: String,
    /// Variable name for the element (default `item`); `index` is its position.
    #[serde(rename = "as", default, skip_serializing_if = "Option::is_none")]
    pub var: Option<String>,
    /// Children running at once (default: unbounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Most elements allowed; more fail the node (default: the server limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_items: Option<u32>,
}

/// What happens when a loop reaches `max_iterations` without `until` holding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExhaustedMode {
    /// The loop node fails (default).
    Fail,
    /// The loop node succeeds with its last iteration's outputs.
    Succeed,
}

/// A bounded loop over a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepeatSpec {
    /// CEL condition checked after each iteration; true ends the loop.
    pub until: String,
    /// Most iterations.
    pub max_iterations: u32,
    /// What reaching `max_iterations` means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_max_iterations: Option<ExhaustedMode>,
}

/// What a cron fire does while a run of the same schedule is still active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Do not start a new run (default).
    Skip,
    /// Remember one fire; start it when the active run ends.
    QueueOne,
    /// Start every fire.
    AllowAll,
    /// Cancel the active run and start the new one.
    CancelPrevious,
}

/// A cron trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Cron expression (5 or 6 fields, or `@daily` style).
    pub cron: String,
    /// IANA time zone, e.g. `Europe/Amsterdam` (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Overlap policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<OverlapPolicy>,
    /// Missed fires younger than this are run after downtime (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catchup_window: Option<String>,
    /// Parameters for runs this schedule starts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Start paused.
    #[serde(default)]
    pub paused: bool,
}

/// Parses a spec from YAML (JSON is YAML too). On failure, returns one
/// error naming the path, line and column of the problem.
pub fn parse(source: &str, limits: &Limits) -> Result<WorkflowSpec, SpecError> {
    if source.len() > limits.spec_bytes_max {
        return Err(SpecError::new(
            "",
            format!(
                "spec is {} bytes, over the limit spec_bytes_max = {}",
                source.len(),
                limits.spec_bytes_max
            ),
        ));
    }
    let de = serde_yaml_ng::Deserializer::from_str(source);
    match serde_path_to_error::deserialize::<_, WorkflowSpec>(de) {
        Ok(spec) => Ok(spec),
        Err(err) => {
            let path = clean_path(&err.path().to_string());
            let inner = err.into_inner();
            let location = inner.location();
            let mut message = inner.to_string();
            // serde_yaml_ng appends " at line L column C" and may prefix a
            // path; we report both as fields of the error instead.
            if let Some(pos) = message.find(" at line ") {
                message.truncate(pos);
            }
            // The YAML layer may know a deeper path than serde does.
            let mut path = path;
            if let Some((prefix, rest)) = message.split_once(": ") {
                let prefix = clean_path(prefix);
                if !prefix.contains(' ') && (path.starts_with(&prefix) || prefix.starts_with(&path))
                {
                    if prefix.len() > path.len() {
                        path = prefix;
                    }
                    message = rest.to_string();
                }
            }
            if message.contains("recursion limit exceeded") {
                // The parser's own words come with a path hundreds of
                // characters long; name kaon's limit and where it starts.
                path = path.split('.').take(4).collect::<Vec<_>>().join(".");
                message = format!(
                    "the spec nests too deep for the YAML parser; groups may nest \
                     at most nesting_depth_max = {} deep",
                    limits.nesting_depth_max
                );
            }
            let mut e = SpecError::new(&path, message);
            if let Some(loc) = location {
                e.line = Some(loc.line());
                e.column = Some(loc.column());
            }
            Err(e)
        }
    }
}

/// serde_path_to_error writes `.` for the root and `?` for unknown parts.
fn clean_path(p: &str) -> String {
    let mut p = p;
    while let Some(rest) = p.strip_suffix(".?") {
        p = rest;
    }
    if p == "." || p == "?" {
        String::new()
    } else {
        p.to_string()
    }
}
