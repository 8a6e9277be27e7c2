//! Named limits (brief 4.8: everything has a limit, with its unit in the name).
//!
//! Every bound kaon's core enforces lives here with its default, so an
//! operator can see (and a test can pin) exactly where each refusal comes
//! from. Exceeding a limit is always a clear error naming the limit, never a
//! crash or a silent drop.

use serde::{Deserialize, Serialize};

/// The core's limits. `Limits::default()` is what a server uses unless its
/// configuration says otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Size of one workflow spec as submitted (YAML or JSON text).
    pub spec_bytes_max: usize,
    /// Nodes (steps and groups, after expanding `uses`) in one workflow.
    pub steps_per_workflow_max: usize,
    /// Depth of nested groups (the top level is depth 1).
    pub nesting_depth_max: usize,
    /// Elements one `foreach` may expand to; a spec may set a lower `max_items`.
    pub foreach_items_max: u32,
    /// Iterations of one bounded loop; a spec's `max_iterations` may not exceed it.
    pub loop_iterations_max: u32,
    /// Size of one CEL expression's source text.
    pub expression_bytes_max: usize,
    /// AST nodes in one compiled CEL expression.
    pub expression_nodes_max: usize,
    /// Static cost bound of one expression: AST nodes times the largest list
    /// it may iterate (`foreach_items_max`) per nested comprehension level.
    pub expression_cost_max: u64,
    /// Size of the JSON outputs one step may report.
    pub outputs_bytes_max: usize,
    /// Size of a run's parameters as JSON.
    pub params_bytes_max: usize,
    /// Retries of one kind (user, platform or timeout) a step may ask for.
    pub retries_per_kind_max: u32,
    /// Step instances (all attempts' owners, including foreach children and
    /// loop iterations) one run may create.
    pub instances_per_run_max: u32,
    /// Runs not yet finished, cluster-wide; more submissions are refused.
    pub active_runs_max: usize,
    /// Length of a step, group, parameter or workflow name.
    pub name_bytes_max: usize,
    /// Length of an idempotency key.
    pub idempotency_key_bytes_max: usize,
    /// Cron schedules per workflow.
    pub schedules_per_workflow_max: usize,
    /// Missed cron fires caught up in one go (older ones are recorded as missed).
    pub catchup_fires_max: u32,
    /// Minimum time between two recorded progress events of one attempt.
    pub progress_interval_ms_min: i64,
    /// Length of a progress status text; longer text is truncated.
    pub progress_text_bytes_max: usize,
    /// CPUs one task may ask for.
    pub task_cpus_max: f64,
    /// Memory one task may ask for.
    pub task_mem_mb_max: f64,
    /// Disk one task may ask for.
    pub task_disk_mb_max: f64,
    /// GPUs one task may ask for.
    pub task_gpus_max: u32,
    /// Longest step or workflow timeout and retry backoff.
    pub duration_ms_max: u64,
    /// How long an attempt that Mesos reported terminal by reconciliation
    /// (a state, not a result) waits for the reliable update that carries
    /// its outputs and exit code. If none comes, the attempt is recorded
    /// lost and retried under the platform budget. Mesos agents resend an
    /// unacknowledged update at once when a scheduler subscribes and then
    /// with backoff up to 10 minutes, hence the default.
    #[serde(default = "reliable_update_wait_ms_default")]
    pub reliable_update_wait_ms: i64,
    /// How often a kill is sent again while its task has not ended (a kill
    /// can be lost with a Mesos connection, a master failover or a leader).
    #[serde(default = "kill_resend_ms_default")]
    pub kill_resend_ms: i64,
    /// How long a finished run stays in the live state after it ended; the
    /// leader then retires it (`RunsRetired`; its events stay in the
    /// archive). 0: never (state then grows with every run). Off in the
    /// core's default; `kaon server --run-retention` defaults to 7 days.
    #[serde(default)]
    pub run_retention_ms: i64,
    /// The newest event schema the leader may write: what every voter
    /// applies (`events::body_schema`). The runtime lowers it while an
    /// older kaon is a voter (a rolling upgrade); features that need a
    /// newer kind wait.
    #[serde(default = "event_schema_max_default")]
    pub event_schema_max: u32,
    /// The leader signs the chain head this often while new events arrive
    /// (`ChainHeadSigned`, issue 12), ms; 0: never (no signing key). Off in
    /// the core's default; `kaon server --signing-key` turns it on.
    #[serde(default)]
    pub sign_every_ms: i64,
}

fn event_schema_max_default() -> u32 {
    crate::events::EVENT_SCHEMA
}

fn kill_resend_ms_default() -> i64 {
    30_000
}

fn reliable_update_wait_ms_default() -> i64 {
    10 * 60 * 1000
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            spec_bytes_max: 1024 * 1024,
            steps_per_workflow_max: 10_000,
            nesting_depth_max: 8,
            foreach_items_max: 10_000,
            loop_iterations_max: 1_000,
            expression_bytes_max: 4 * 1024,
            expression_nodes_max: 500,
            expression_cost_max: 10_000_000,
            outputs_bytes_max: 64 * 1024,
            params_bytes_max: 64 * 1024,
            retries_per_kind_max: 100,
            instances_per_run_max: 200_000,
            active_runs_max: 10_000,
            name_bytes_max: 63,
            idempotency_key_bytes_max: 128,
            schedules_per_workflow_max: 16,
            catchup_fires_max: 100,
            progress_interval_ms_min: 1_000,
            progress_text_bytes_max: 512,
            task_cpus_max: 1024.0,
            task_mem_mb_max: 16.0 * 1024.0 * 1024.0,
            task_disk_mb_max: 1024.0 * 1024.0 * 1024.0,
            task_gpus_max: 64,
            duration_ms_max: 366 * 24 * 3600 * 1000,
            reliable_update_wait_ms: reliable_update_wait_ms_default(),
            kill_resend_ms: kill_resend_ms_default(),
            run_retention_ms: 0,
            event_schema_max: event_schema_max_default(),
            sign_every_ms: 0,
        }
    }
}
