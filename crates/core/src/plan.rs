//! A validated, compiled workflow: what runs are executed against.
//!
//! The spec tree is flattened into a vector of nodes addressed by
//! [`NodeId`]; `uses:` templates are expanded; durations, sizes, cron
//! patterns and expressions are parsed. A run is pinned to one `Plan`
//! (one registered version) for its whole life.

use std::collections::BTreeMap;

use crate::expr::{Expression, Template};
use crate::spec::{BackoffKind, ExhaustedMode, FailureMode, OverlapPolicy, ParamSpec};

/// Index of a node in [`Plan::nodes`].
pub type NodeId = u32;

/// A compiled workflow version.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Workflow name.
    pub name: String,
    /// All nodes; `nodes[root]` is the synthetic top-level group.
    pub nodes: Vec<PlanNode>,
    /// The synthetic group holding the top-level steps.
    pub root: NodeId,
    /// The synthetic group holding the exit handler's steps, if any.
    pub on_exit: Option<NodeId>,
    /// Declared parameters.
    pub params: BTreeMap<String, ParamSpec>,
    /// Workflow timeout.
    pub timeout_ms: Option<u64>,
    /// Cron triggers.
    pub schedules: Vec<Schedule>,
    /// Steps (task nodes) in the plan, before any foreach/loop expansion.
    pub task_count: usize,
    /// Groups (excluding the synthetic root and exit handler).
    pub group_count: usize,
}

/// One node of the plan.
#[derive(Debug, Clone)]
pub struct PlanNode {
    /// Name among its siblings ("" for synthetic groups).
    pub name: String,
    /// Enclosing group.
    pub parent: Option<NodeId>,
    /// Position among its siblings (index into the parent's children).
    pub index: u32,
    /// Sibling positions this node waits for.
    pub depends_on: Vec<u32>,
    /// Sibling positions waiting for this node.
    pub dependents: Vec<u32>,
    /// Condition; false skips the node.
    pub when: Option<Expression>,
    /// Run-time expansion.
    pub foreach: Option<Foreach>,
    /// Effect of this node's failure on the run.
    pub on_failure: FailureMode,
    /// Step or group.
    pub body: Body,
}

/// What a node does.
#[derive(Debug, Clone)]
pub enum Body {
    /// A step: one Mesos task per attempt.
    Task(Box<TaskTemplate>),
    /// A group of child nodes, optionally repeated.
    Group {
        /// Children, in spec order; `nodes[children[i]].index == i`.
        children: Vec<NodeId>,
        /// Bounded loop.
        repeat: Option<Repeat>,
    },
}

/// A step's launch description before rendering its `${{ }}` holes.
#[derive(Debug, Clone)]
pub struct TaskTemplate {
    /// Step kind (command, python, r, spark, jvm, container).
    pub kind: String,
    /// argv (or one shell line when `shell`).
    pub argv: Vec<Template>,
    /// Run through `/bin/sh -c`.
    pub shell: bool,
    /// Environment, sorted by name.
    pub env: Vec<(String, Template)>,
    /// Secrets the agent resolves at launch: (environment variable or ""
    /// for a file, secret name), sorted.
    pub secrets: Vec<(String, String)>,
    /// Files fetched into the sandbox.
    pub files: Vec<(String, bool, bool)>,
    /// Container image (kind container).
    pub image: Option<String>,
    /// Resources per attempt.
    pub resources: Resources,
    /// Placement constraints.
    pub constraints: Vec<Constraint>,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Per-attempt timeout.
    pub timeout_ms: Option<u64>,
}

/// Task resources in Mesos units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resources {
    /// Cores.
    pub cpus: f64,
    /// Megabytes.
    pub mem_mb: f64,
    /// Megabytes.
    pub disk_mb: f64,
    /// Whole GPUs.
    pub gpus: u32,
}

/// A placement constraint.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// Attribute equals value.
    Equals(String, String),
    /// Attribute matches a regular expression (anchored).
    Like(String, String),
}

/// Retry budgets and backoff.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after user errors.
    pub user_errors: u32,
    /// Retries after platform errors.
    pub platform_errors: u32,
    /// Retries after timeouts.
    pub timeouts: u32,
    /// Backoff kind.
    pub backoff: BackoffKind,
    /// First wait.
    pub initial_ms: u64,
    /// Exponential factor.
    pub factor: f64,
    /// Cap on one wait.
    pub max_ms: u64,
}

impl RetryPolicy {
    /// Wait before attempt `next_attempt` (2 = first retry).
    pub fn backoff_ms(&self, next_attempt: u32) -> u64 {
        match self.backoff {
            BackoffKind::Fixed => self.initial_ms.min(self.max_ms),
            BackoffKind::Exponential => {
                let n = next_attempt.saturating_sub(2).min(64) as i32;
                let wait = (self.initial_ms as f64) * self.factor.powi(n);
                if wait.is_finite() && wait < self.max_ms as f64 {
                    wait as u64
                } else {
                    self.max_ms
                }
            }
        }
    }
}

/// Compiled `foreach`.
#[derive(Debug, Clone)]
pub struct Foreach {
    /// The list expression.
    pub items: Expression,
    /// Element variable name.
    pub var: String,
    /// Children running at once.
    pub max_concurrency: Option<u32>,
    /// Most elements.
    pub max_items: u32,
}

/// Compiled bounded loop.
#[derive(Debug, Clone)]
pub struct Repeat {
    /// Stop condition.
    pub until: Expression,
    /// Most iterations.
    pub max_iterations: u32,
    /// What exhausting the iterations means.
    pub on_exhausted: ExhaustedMode,
}

/// Compiled cron trigger.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The cron pattern as written.
    pub pattern: String,
    /// Parsed pattern.
    pub cron: croner::Cron,
    /// Time zone the pattern is read in.
    pub timezone: chrono_tz::Tz,
    /// Overlap policy.
    pub overlap: OverlapPolicy,
    /// Catch-up window.
    pub catchup_window_ms: u64,
    /// Parameters for the runs it starts.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Starts paused.
    pub paused: bool,
}

impl Plan {
    /// The node with id `id`.
    pub fn node(&self, id: NodeId) -> &PlanNode {
        &self.nodes[id as usize]
    }

    /// Children of a group node (empty for a task).
    pub fn children(&self, id: NodeId) -> &[NodeId] {
        match &self.node(id).body {
            Body::Group { children, .. } => children,
            Body::Task(_) => &[],
        }
    }

    /// One line: `workflow NAME: N steps, G groups, S schedules`.
    pub fn summary(&self) -> String {
        format!(
            "workflow {}: {} steps, {} groups, {} schedules{}",
            self.name,
            self.task_count,
            self.group_count,
            self.schedules.len(),
            if self.on_exit.is_some() {
                ", exit handler"
            } else {
                ""
            }
        )
    }
}
