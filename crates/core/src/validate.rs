//! Validation: turns a parsed [`WorkflowSpec`] into a [`Plan`], or into the
//! full list of what is wrong, each error naming the exact place.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;
use std::str::FromStr;

use petgraph::graphmap::DiGraphMap;

use crate::expr::{self, Expression, Template};
use crate::limits::Limits;
use crate::plan::{
    Body, Constraint, Foreach, NodeId, Plan, PlanNode, Repeat, Resources, RetryPolicy, Schedule,
    TaskTemplate,
};
use crate::spec::{
    self, BackoffKind, EnvValue, ExhaustedMode, FailureMode, NodeSpec, OverlapPolicy, ParamType,
    Quantity, ResourceSpec, RetrySpec, Steps, WorkflowSpec,
};

/// One problem in a spec: where (a dotted path like
/// `steps.train.depends_on[0]`, plus line and column for syntax errors) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// Dotted path to the offending value ("" for the whole document).
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// 1-based line, for syntax and shape errors.
    pub line: Option<usize>,
    /// 1-based column, for syntax and shape errors.
    pub column: Option<usize>,
}

impl SpecError {
    /// An error at `path`.
    pub fn new(path: &str, message: impl Into<String>) -> Self {
        SpecError {
            path: path.to_string(),
            message: message.into(),
            line: None,
            column: None,
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, "line {l} column {c}: ")?;
        }
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Step kinds kaon knows, with the interpreter prepended to `run`.
pub const STEP_KINDS: &[(&str, &[&str])] = &[
    ("command", &[]),
    ("python", &["python3"]),
    ("r", &["Rscript"]),
    ("spark", &["spark-submit"]),
    ("jvm", &["java"]),
    ("container", &[]),
];

/// Parses and validates a spec in one go: the `kaon validate` path.
pub fn compile_source(source: &str, limits: &Limits) -> Result<Plan, Vec<SpecError>> {
    let spec = spec::parse(source, limits).map_err(|e| vec![e])?;
    compile(&spec, limits)
}

/// Validates a parsed spec, reporting every error found.
pub fn compile(spec: &WorkflowSpec, limits: &Limits) -> Result<Plan, Vec<SpecError>> {
    compile_with(spec, limits, true)
}

/// Compiles a spec read back from the log. The leader admitted it under the
/// rules of its version, so checks added since (`Compiler::admission`) are
/// not applied: a log written by an older kaon must replay.
pub fn compile_recorded(spec: &WorkflowSpec, limits: &Limits) -> Result<Plan, Vec<SpecError>> {
    compile_with(spec, limits, false)
}

fn compile_with(
    spec: &WorkflowSpec,
    limits: &Limits,
    admission: bool,
) -> Result<Plan, Vec<SpecError>> {
    let mut c = Compiler {
        admission,
        limits,
        errors: Vec::new(),
        nodes: Vec::new(),
        spec,
        tasks: 0,
        groups: 0,
    };
    if spec.api_version != spec::API_VERSION {
        c.err(
            "apiVersion",
            format!(
                "must be {:?}, got {:?}",
                spec::API_VERSION,
                spec.api_version
            ),
        );
    }
    if let Some(kind) = &spec.kind
        && kind != "Workflow"
    {
        c.err("kind", format!("must be \"Workflow\", got {kind:?}"));
    }
    c.check_name("name", &spec.name);
    for (name, p) in &spec.params {
        let path = format!("params.{name}");
        c.check_name(&path, name);
        if let Some(d) = &p.default
            && let Err(m) = check_param_type(p.ty, d)
        {
            c.err(&format!("{path}.default"), m);
        }
    }
    let timeout_ms = spec.timeout.as_ref().and_then(|t| c.duration("timeout", t));
    let defaults = spec.defaults.clone().unwrap_or_default();
    if let Some(t) = &defaults.timeout {
        c.duration("defaults.timeout", t);
    }
    for (k, v) in &defaults.env {
        let _ = c.check_env_value("defaults.env", k, v);
    }
    for (tname, t) in &spec.templates {
        c.check_name(&format!("templates.{tname}"), tname);
        if t.steps.is_empty() {
            c.err(
                &format!("templates.{tname}.steps"),
                "a template needs at least one step",
            );
        }
    }
    let on_failure = spec.on_failure.unwrap_or(FailureMode::FailFast);
    if on_failure == FailureMode::Ignore {
        c.err(
            "on_failure",
            "a workflow's on_failure must be fail_fast or finish_running (ignore is per step)",
        );
    }
    if spec.steps.is_empty() {
        c.err("steps", "a workflow needs at least one step");
    }
    // Count what the templates expand to before expanding them: a small spec
    // of nested `uses` can describe billions of nodes (issue 9 D).
    if let Err(e) = check_expansion(spec, limits) {
        c.errors.push(e);
        return Err(dedup(c.errors));
    }
    // `run` (its id and workflow) in every step: a step may name files
    // after its run; `run.status` means something only in exit handlers.
    let ctx = Scope {
        levels: Vec::new(),
        vars: vec!["params".into(), "run".into()],
    };
    let root = c.group(
        None,
        0,
        "",
        &spec.steps,
        "steps",
        &defaults,
        on_failure,
        &ctx,
        1,
        &mut Vec::new(),
    );
    let on_exit = spec.on_exit.as_ref().map(|steps| {
        let ctx = Scope {
            levels: Vec::new(),
            vars: vec!["params".into(), "run".into()],
        };
        c.group(
            None,
            1,
            "",
            steps,
            "on_exit",
            &defaults,
            on_failure,
            &ctx,
            1,
            &mut Vec::new(),
        )
    });
    // Steps and groups the user wrote (the synthetic body and exit handler
    // groups do not count).
    let user_nodes = c.tasks + c.groups;
    if user_nodes > limits.steps_per_workflow_max {
        c.err(
            "steps",
            format!(
                "workflow has {} nodes, over the limit steps_per_workflow_max = {}",
                user_nodes, limits.steps_per_workflow_max
            ),
        );
    }
    let schedules = c.schedules();
    let Compiler {
        errors,
        nodes,
        tasks,
        groups,
        ..
    } = c;
    if !errors.is_empty() {
        return Err(dedup(errors));
    }
    Ok(Plan {
        name: spec.name.clone(),
        nodes,
        root,
        on_exit,
        params: spec
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        timeout_ms,
        schedules,
        task_count: tasks,
        group_count: groups,
    })
}

/// Does the pattern match any time within 28 years of a fixed date (a
/// full cycle of the Gregorian calendar between 2001 and 2028: Feb 29 falls
/// on every weekday)? `0 0 31 2 *` does not. The date
/// is fixed so that validation stays a pure function of the spec.
fn fires_ever(c: &croner::Cron) -> bool {
    use chrono::TimeZone;
    let Some(start) = chrono::Utc.with_ymd_and_hms(2001, 1, 1, 0, 0, 0).single() else {
        return true;
    };
    let horizon_ms: i64 = 28 * 366 * 24 * 3_600 * 1_000;
    match c.find_next_occurrence(&start, true) {
        Ok(t) => t.timestamp_millis() - start.timestamp_millis() <= horizon_ms,
        Err(_) => false,
    }
}

/// `steps.a-b`: a dotted reference to a name with a '-' (CEL reads it as
/// `steps.a - b`).
fn dashed_step_ref() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        // Not after a '.', a word character or a quote: `params.steps.a-1`
        // and `'steps.a-b'` are not step references.
        regex::Regex::new(r"(?:^|[^\w.'\x22])(steps\.[A-Za-z_][A-Za-z0-9_]*(?:-[A-Za-z0-9_]+)+)")
            .expect("valid regex")
    })
}

/// Counts the nodes the workflow would have once every `uses` is expanded,
/// without expanding anything: time and memory linear in the spec's size.
/// Refuses, naming `steps_per_workflow_max` and the template that crosses
/// it, a spec whose expansion is over the limit. Unknown and recursive
/// templates count as one node here; the full check reports them.
fn check_expansion(spec: &WorkflowSpec, limits: &Limits) -> Result<(), SpecError> {
    /// Expanded size of each template, filled in on first use.
    struct Counter<'a> {
        spec: &'a WorkflowSpec,
        sizes: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        depth_max: usize,
    }
    impl<'a> Counter<'a> {
        /// `depth` bounds the recursion: deeper than `nesting_depth_max`
        /// the full check refuses the spec anyway, so nothing below is
        /// counted (a chain of thousands of templates must not overflow
        /// the stack here).
        fn steps(&mut self, steps: &'a Steps, depth: usize) -> usize {
            if depth > self.depth_max {
                return 0;
            }
            let mut total = 0usize;
            for node in steps.values() {
                let inner = match (&node.steps, &node.uses) {
                    (Some(s), _) => self.steps(s, depth + 1),
                    (None, Some(t)) => self.template(t, depth + 1),
                    (None, None) => 0,
                };
                total = total.saturating_add(1).saturating_add(inner);
            }
            total
        }
        fn template(&mut self, name: &'a str, depth: usize) -> usize {
            if let Some(&n) = self.sizes.get(name) {
                return n;
            }
            let Some((key, t)) = self.spec.templates.get_key_value(name) else {
                return 0;
            };
            if self.stack.contains(&name) {
                return 0;
            }
            self.stack.push(name);
            let n = self.steps(&t.steps, depth);
            self.stack.pop();
            self.sizes.insert(key.as_str(), n);
            n
        }
    }
    let mut c = Counter {
        spec,
        sizes: BTreeMap::new(),
        stack: Vec::new(),
        depth_max: limits.nesting_depth_max,
    };
    let mut total = c.steps(&spec.steps, 1);
    if let Some(exit) = &spec.on_exit {
        total = total.saturating_add(c.steps(exit, 1));
    }
    if total <= limits.steps_per_workflow_max {
        return Ok(());
    }
    let shown = |n: usize| {
        if n == usize::MAX {
            "more than 18446744073709551615".to_string()
        } else {
            n.to_string()
        }
    };
    // The smallest template already over the limit on its own is where the
    // blow-up happens; without one, name the largest template used.
    let over = c
        .sizes
        .iter()
        .filter(|(_, n)| **n > limits.steps_per_workflow_max)
        .min_by_key(|(_, n)| **n);
    let largest = c.sizes.iter().max_by_key(|(_, n)| **n);
    let (path, message) = match (over, largest) {
        (Some((t, n)), _) => (
            format!("templates.{t}"),
            format!(
                "template {t:?} expands to {} nodes, over the limit steps_per_workflow_max = {} \
                 (the workflow would have {} nodes)",
                shown(*n),
                limits.steps_per_workflow_max,
                shown(total)
            ),
        ),
        (None, Some((t, n))) if *n > 0 => (
            "steps".to_string(),
            format!(
                "the workflow expands to {} nodes, over the limit steps_per_workflow_max = {} \
                 (the largest template, {t:?}, expands to {n} nodes)",
                shown(total),
                limits.steps_per_workflow_max
            ),
        ),
        _ => (
            "steps".to_string(),
            format!(
                "workflow has {} nodes, over the limit steps_per_workflow_max = {}",
                shown(total),
                limits.steps_per_workflow_max
            ),
        ),
    };
    Err(SpecError::new(&path, message))
}

/// Checks submit-time parameters against the plan and fills in defaults.
/// Unknown and missing parameters and type mismatches are all reported.
pub fn resolve_params(
    plan: &Plan,
    given: &BTreeMap<String, serde_json::Value>,
    limits: &Limits,
) -> Result<serde_json::Map<String, serde_json::Value>, Vec<SpecError>> {
    let mut errors = Vec::new();
    let mut out = serde_json::Map::new();
    for (name, v) in given {
        match plan.params.get(name) {
            None => errors.push(SpecError::new(
                &format!("params.{name}"),
                format!(
                    "unknown parameter{}",
                    did_you_mean(name, plan.params.keys())
                ),
            )),
            Some(p) => match check_param_type(p.ty, v) {
                Ok(()) => {
                    out.insert(name.clone(), v.clone());
                }
                Err(m) => errors.push(SpecError::new(&format!("params.{name}"), m)),
            },
        }
    }
    for (name, p) in &plan.params {
        if !out.contains_key(name) && !given.contains_key(name) {
            match &p.default {
                Some(d) => {
                    out.insert(name.clone(), d.clone());
                }
                None => errors.push(SpecError::new(
                    &format!("params.{name}"),
                    "required parameter has no default and was not given",
                )),
            }
        }
    }
    let bytes = serde_json::Value::Object(out.clone()).to_string().len();
    if bytes > limits.params_bytes_max {
        errors.push(SpecError::new(
            "params",
            format!(
                "parameters are {bytes} bytes as JSON, over the limit params_bytes_max = {}",
                limits.params_bytes_max
            ),
        ));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn check_param_type(ty: ParamType, v: &serde_json::Value) -> Result<(), String> {
    let ok = match ty {
        ParamType::String => v.is_string(),
        ParamType::Int => v.is_i64() || v.is_u64(),
        ParamType::Float => v.is_number(),
        ParamType::Bool => v.is_boolean(),
        ParamType::List => v.is_array(),
        ParamType::Map => v.is_object(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected {}, got {} {v}",
            format!("{ty:?}").to_lowercase(),
            expr::json_type(v)
        ))
    }
}

fn dedup(errors: Vec<SpecError>) -> Vec<SpecError> {
    let mut seen = BTreeSet::new();
    errors
        .into_iter()
        .filter(|e| seen.insert((e.path.clone(), e.message.clone())))
        .collect()
}

/// ` (did you mean "x"?)` when a close name exists.
pub fn did_you_mean<'a>(name: &str, candidates: impl Iterator<Item = &'a String>) -> String {
    let mut best: Option<(usize, &String)> = None;
    for c in candidates {
        let d = strsim::levenshtein(name, c);
        if d <= (name.len() / 3).max(1) && d < name.len() && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    match best {
        Some((_, c)) => format!(" (did you mean {c:?}?)"),
        None => String::new(),
    }
}

/// One level of sibling names, shared (not copied) by every node in it so
/// that validation stays linear in the number of steps.
#[derive(Clone)]
struct Level {
    /// Sibling names in order.
    names: Rc<Vec<String>>,
    /// Dependencies by sibling position (valid only when `acyclic`).
    deps: Rc<Vec<Vec<u32>>>,
    acyclic: bool,
    /// Position of the node whose subtree is being checked; `None` when every
    /// sibling is visible (a loop's `until` sees the whole iteration).
    at: Option<usize>,
}

impl Level {
    /// Is sibling `target` upstream of the node at `at`? (Search on demand:
    /// references are rare, transitive closures for 10,000 steps are not.)
    fn is_upstream(&self, target: usize) -> bool {
        let Some(at) = self.at else { return true };
        if !self.acyclic {
            return true; // the cycle is already reported
        }
        let mut seen = BTreeSet::new();
        let mut stack = self.deps[at].clone();
        while let Some(d) = stack.pop() {
            if d as usize == target {
                return true;
            }
            if seen.insert(d) {
                stack.extend(self.deps[d as usize].iter().copied());
            }
        }
        false
    }
}

/// Names visible from inside a group, innermost last.
struct Scope {
    /// Enclosing levels, outermost first.
    levels: Vec<Level>,
    /// Variables bound (params, item, index, iteration, run).
    vars: Vec<String>,
}

struct Compiler<'a> {
    /// Admitting a new spec (every check) or compiling one from the log
    /// (only the checks every version has made; see `compile_recorded`).
    admission: bool,
    limits: &'a Limits,
    errors: Vec<SpecError>,
    nodes: Vec<PlanNode>,
    spec: &'a WorkflowSpec,
    tasks: usize,
    groups: usize,
}

impl Compiler<'_> {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(SpecError::new(path, message));
    }

    fn check_name(&mut self, path: &str, name: &str) {
        let ok = !name.is_empty()
            && name.len() <= self.limits.name_bytes_max
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && name.as_bytes()[0].is_ascii_lowercase();
        if !ok {
            self.err(
                path,
                format!(
                    "invalid name {name:?}: use 1 to {} characters a-z, 0-9, '-' or '_', starting with a letter",
                    self.limits.name_bytes_max
                ),
            );
        }
    }

    fn duration(&mut self, path: &str, text: &str) -> Option<u64> {
        match humantime::parse_duration(text) {
            Ok(d) => {
                let ms = d.as_millis();
                if ms == 0 {
                    self.err(path, format!("duration {text:?} must be positive"));
                    None
                } else if ms > u128::from(self.limits.duration_ms_max) {
                    self.err(
                        path,
                        format!(
                            "duration {text:?} is over the limit duration_ms_max = {} ms",
                            self.limits.duration_ms_max
                        ),
                    );
                    None
                } else {
                    Some(ms as u64)
                }
            }
            Err(e) => {
                self.err(
                    path,
                    format!("invalid duration {text:?}: {e} (use e.g. \"90s\", \"10m\", \"2h\")"),
                );
                None
            }
        }
    }

    /// An env entry: a template, or (`Err`) a secret's name, checked.
    fn check_env_value(
        &mut self,
        path: &str,
        k: &str,
        v: &EnvValue,
    ) -> Result<Option<Template>, String> {
        match v {
            EnvValue::Text(t) => Ok(self.check_env(path, k, t)),
            EnvValue::Secret { secret } => {
                self.check_env(path, k, "");
                self.check_secret_name(&format!("{path}.{k}.secret"), secret);
                Err(secret.clone())
            }
        }
    }

    /// A secret name is a plain file name in the agent's secrets
    /// directory: letters, digits, `.`, `_`, `-`, not starting with `.`.
    fn check_secret_name(&mut self, path: &str, name: &str) {
        let ok = !name.is_empty()
            && name.len() <= 128
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            self.err(
                path,
                format!(
                    "invalid secret name {name:?}: letters, digits, '.', '_' and '-', at most 128, not starting with '.'"
                ),
            );
        }
    }

    fn check_env(&mut self, path: &str, k: &str, v: &str) -> Option<Template> {
        let valid = !k.is_empty()
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !k.as_bytes()[0].is_ascii_digit();
        if !valid {
            self.err(
                &format!("{path}.{k}"),
                format!("invalid environment variable name {k:?}"),
            );
        }
        match Template::compile(v, self.limits) {
            Ok(t) => Some(t),
            Err(m) => {
                self.err(&format!("{path}.{k}"), m);
                None
            }
        }
    }

    fn expression(&mut self, path: &str, source: &str, scope: &Scope) -> Option<Expression> {
        match expr::compile(source, self.limits) {
            Ok(e) => {
                self.check_refs(path, &e, scope);
                Some(e)
            }
            Err(m) => {
                self.err(path, m);
                None
            }
        }
    }

    fn template(&mut self, path: &str, source: &str, scope: &Scope) -> Option<Template> {
        match Template::compile(source, self.limits) {
            Ok(t) => {
                for e in t.expressions() {
                    self.check_refs(path, e, scope);
                }
                Some(t)
            }
            Err(m) => {
                self.err(path, m);
                None
            }
        }
    }

    /// Variables must be bound; `steps.x` must name a visible node that is
    /// upstream of the referencing node (otherwise its outputs may not exist yet).
    fn check_refs(&mut self, path: &str, e: &Expression, scope: &Scope) {
        // `steps.user-selection` parses as `steps.user - selection`: say so
        // once instead of reporting a step and a variable that do not exist.
        if self.admission
            && let Some(m) = dashed_step_ref().captures(&e.source).and_then(|c| c.get(1))
        {
            let name = &m.as_str()["steps.".len()..];
            self.err(
                path,
                format!(
                    "{:?} reads as a subtraction in {:?}: write steps['{name}'] for a step name with '-'",
                    m.as_str(),
                    e.source
                ),
            );
            return;
        }
        for v in &e.variables {
            if v != "steps" && !scope.vars.contains(v) {
                let hint = did_you_mean(v, scope.vars.iter());
                self.err(
                    path,
                    format!(
                        "unknown variable {v:?} in {:?}{hint}; available: steps, {}",
                        e.source,
                        scope.vars.join(", ")
                    ),
                );
            }
        }
        let Some(refs) = &e.step_refs else { return };
        'refs: for r in refs {
            if !self.admission && e.indexed_step_refs.contains(r) {
                continue;
            }
            // Innermost level first: the current siblings, then outer levels.
            for level in scope.levels.iter().rev() {
                if let Some(pos) = level.names.iter().position(|n| n == r) {
                    if !level.is_upstream(pos) {
                        self.err(path, format!("refers to steps.{r}, which is not upstream of this node: add it to depends_on (directly or through another step)"));
                    }
                    continue 'refs;
                }
            }
            let all: Vec<String> = scope
                .levels
                .iter()
                .flat_map(|l| l.names.iter().cloned())
                .collect();
            self.err(
                path,
                format!(
                    "unknown step {r:?} in {:?}{}",
                    e.source,
                    did_you_mean(r, all.iter())
                ),
            );
        }
    }

    /// Fields that kaon passes to Mesos as written: a `${{ }}` there would
    /// reach the agent unrendered, so it is refused.
    fn literal_only(&mut self, path: &str, text: &str) {
        if self.admission && text.contains("${{") {
            self.err(
                path,
                "${{ }} is not rendered here: this field is passed to Mesos as written; use a literal value",
            );
        }
    }

    /// An expression that uses no variable has one value: compute it now and
    /// refuse the wrong type at validate, not at run time.
    fn constant_type(&mut self, path: &str, e: &Expression, want: &str, hint: &str) {
        if !self.admission || !e.variables.is_empty() {
            return;
        }
        match expr::eval(e, &expr::Bindings::default()) {
            Ok(v) if expr::json_type(&v) == want => {}
            Ok(v) => self.err(
                path,
                format!(
                    "{:?} is always the {} {v}: {hint}",
                    e.source,
                    expr::json_type(&v)
                ),
            ),
            Err(m) => self.err(path, format!("cannot be evaluated: {m}")),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn group(
        &mut self,
        parent: Option<NodeId>,
        index: u32,
        name: &str,
        steps: &Steps,
        path: &str,
        defaults: &spec::StepDefaults,
        on_failure: FailureMode,
        outer: &Scope,
        depth: usize,
        using: &mut Vec<String>,
    ) -> NodeId {
        let id = self.nodes.len() as NodeId;
        self.nodes.push(PlanNode {
            name: name.to_string(),
            parent,
            index,
            depends_on: Vec::new(),
            dependents: Vec::new(),
            when: None,
            foreach: None,
            on_failure,
            body: Body::Group {
                children: Vec::new(),
                repeat: None,
            },
        });
        if depth > self.limits.nesting_depth_max {
            self.err(
                path,
                format!(
                    "groups nest {depth} deep, over the limit nesting_depth_max = {}",
                    self.limits.nesting_depth_max
                ),
            );
            return id;
        }
        let names: Vec<String> = steps.keys().cloned().collect();
        // Dependencies and cycles among siblings.
        let mut graph = DiGraphMap::<u32, ()>::new();
        let mut deps: Vec<Vec<u32>> = Vec::new();
        let index_of: BTreeMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        for (i, (sname, node)) in steps.iter().enumerate() {
            graph.add_node(i as u32);
            let mut mine = Vec::new();
            for (j, d) in node.depends_on.iter().enumerate() {
                match index_of.get(d.as_str()).copied() {
                    None => self.err(
                        &format!("{path}.{sname}.depends_on[{j}]"),
                        format!("unknown step {d:?}{}", did_you_mean(d, names.iter())),
                    ),
                    Some(k) if k == i => self.err(
                        &format!("{path}.{sname}.depends_on[{j}]"),
                        format!("step {sname:?} depends on itself"),
                    ),
                    Some(k) if mine.contains(&(k as u32)) => self.err(
                        &format!("{path}.{sname}.depends_on[{j}]"),
                        format!("duplicate dependency {d:?}"),
                    ),
                    Some(k) => {
                        mine.push(k as u32);
                        graph.add_edge(k as u32, i as u32, ());
                    }
                }
            }
            deps.push(mine);
        }
        let mut acyclic = true;
        for scc in petgraph::algo::tarjan_scc(&graph) {
            if scc.len() > 1 {
                acyclic = false;
                let cycle = find_cycle(&deps, &scc);
                let shown: Vec<&str> = cycle.iter().map(|&i| names[i as usize].as_str()).collect();
                self.err(path, format!("dependency cycle: {}", shown.join(" -> ")));
            }
        }
        let level = Level {
            names: Rc::new(names),
            deps: Rc::new(deps),
            acyclic,
            at: None,
        };
        let mut children = Vec::new();
        for (i, (sname, node)) in steps.iter().enumerate() {
            let npath = format!("{path}.{sname}");
            self.check_name(&npath, sname);
            let mut scope = Scope {
                levels: outer.levels.clone(),
                vars: outer.vars.clone(),
            };
            scope.levels.push(Level {
                at: Some(i),
                ..level.clone()
            });
            let child = self.node(
                id, i as u32, sname, node, &npath, defaults, on_failure, &mut scope, depth, using,
            );
            self.nodes[child as usize].depends_on = level.deps[i].clone();
            children.push(child);
        }
        for (i, d) in level.deps.iter().enumerate() {
            for &k in d {
                let target = children[k as usize];
                self.nodes[target as usize].dependents.push(i as u32);
            }
        }
        if let Body::Group { children: c, .. } = &mut self.nodes[id as usize].body {
            *c = children;
        }
        id
    }

    #[allow(clippy::too_many_arguments)]
    fn node(
        &mut self,
        parent: NodeId,
        index: u32,
        name: &str,
        n: &NodeSpec,
        path: &str,
        defaults: &spec::StepDefaults,
        inherited_failure: FailureMode,
        scope: &mut Scope,
        depth: usize,
        using: &mut Vec<String>,
    ) -> NodeId {
        let when = n.when.as_ref().and_then(|w| {
            let wpath = format!("{path}.when");
            let e = self.expression(&wpath, w, scope)?;
            self.constant_type(&wpath, &e, "bool", "a condition must be true or false");
            Some(e)
        });
        let on_failure = n.on_failure.unwrap_or(inherited_failure);
        let inherit_to_children = if on_failure == FailureMode::Ignore {
            inherited_failure
        } else {
            on_failure
        };
        let foreach = n.foreach.as_ref().and_then(|f| {
            let fpath = format!("{path}.foreach");
            let items = self.expression(&format!("{fpath}.items"), &f.items, scope);
            if let Some(e) = &items {
                self.constant_type(
                    &format!("{fpath}.items"),
                    e,
                    "list",
                    "foreach needs a list (e.g. \"['us', 'eu']\" or \"steps.a.outputs.regions\")",
                );
            }
            let var = f.var.clone().unwrap_or_else(|| "item".to_string());
            if f.var.is_some() {
                self.check_name(&format!("{fpath}.as"), &var);
                if ["params", "steps", "index", "iteration", "run"].contains(&var.as_str()) {
                    self.err(
                        &format!("{fpath}.as"),
                        format!("{var:?} is a reserved variable name"),
                    );
                }
            }
            if f.max_concurrency == Some(0) {
                self.err(&format!("{fpath}.max_concurrency"), "must be at least 1");
            }
            let max_items = f.max_items.unwrap_or(self.limits.foreach_items_max);
            if max_items > self.limits.foreach_items_max {
                self.err(
                    &format!("{fpath}.max_items"),
                    format!(
                        "{max_items} is over the limit foreach_items_max = {}",
                        self.limits.foreach_items_max
                    ),
                );
            }
            Some(Foreach {
                items: items?,
                var,
                max_concurrency: f.max_concurrency,
                max_items,
            })
        });
        if let Some(f) = &n.foreach {
            scope
                .vars
                .push(f.var.clone().unwrap_or_else(|| "item".to_string()));
            scope.vars.push("index".to_string());
        }
        let shapes = [
            n.run.is_some(),
            n.shell.is_some(),
            n.steps.is_some(),
            n.uses.is_some(),
        ];
        let count = shapes.iter().filter(|b| **b).count();
        let id = if count != 1 {
            if count == 0 {
                self.err(path, "a node needs one of run (argv), shell (command line), steps (a group) or uses (a template)");
            } else {
                self.err(
                    path,
                    "a node may have only one of run, shell, steps and uses",
                );
            }
            self.placeholder(parent, index, name)
        } else if n.steps.is_some() || n.uses.is_some() {
            self.group_node(
                parent,
                index,
                name,
                n,
                path,
                defaults,
                inherit_to_children,
                scope,
                depth,
                using,
            )
        } else {
            self.task(parent, index, name, n, path, defaults, scope)
        };
        let node = &mut self.nodes[id as usize];
        node.when = when;
        node.foreach = foreach;
        node.on_failure = on_failure;
        id
    }

    fn placeholder(&mut self, parent: NodeId, index: u32, name: &str) -> NodeId {
        let id = self.nodes.len() as NodeId;
        self.nodes.push(PlanNode {
            name: name.to_string(),
            parent: Some(parent),
            index,
            depends_on: Vec::new(),
            dependents: Vec::new(),
            when: None,
            foreach: None,
            on_failure: FailureMode::FailFast,
            body: Body::Group {
                children: Vec::new(),
                repeat: None,
            },
        });
        id
    }

    #[allow(clippy::too_many_arguments)]
    fn group_node(
        &mut self,
        parent: NodeId,
        index: u32,
        name: &str,
        n: &NodeSpec,
        path: &str,
        defaults: &spec::StepDefaults,
        on_failure: FailureMode,
        scope: &mut Scope,
        depth: usize,
        using: &mut Vec<String>,
    ) -> NodeId {
        self.groups += 1;
        for (field, set) in [
            ("kind", n.kind.is_some()),
            ("env", !n.env.is_empty()),
            ("secrets", !n.secrets.is_empty()),
            ("files", !n.files.is_empty()),
            ("image", n.image.is_some()),
            ("resources", n.resources.is_some()),
            ("constraints", !n.constraints.is_empty()),
            ("retry", n.retry.is_some()),
            ("timeout", n.timeout.is_some()),
        ] {
            if set {
                self.err(
                    &format!("{path}.{field}"),
                    format!("{field} applies to steps, not to groups"),
                );
            }
        }
        let (steps, spath) = match (&n.steps, &n.uses) {
            (Some(s), _) => (s.clone(), format!("{path}.steps")),
            (None, Some(t)) => match self.spec.templates.get(t) {
                None => {
                    let hint = did_you_mean(t, self.spec.templates.keys());
                    self.err(
                        &format!("{path}.uses"),
                        format!("unknown template {t:?}{hint}"),
                    );
                    return self.placeholder(parent, index, name);
                }
                Some(_) if using.contains(t) => {
                    self.err(
                        &format!("{path}.uses"),
                        format!(
                            "template {t:?} uses itself (through {})",
                            using.join(" -> ")
                        ),
                    );
                    return self.placeholder(parent, index, name);
                }
                Some(tpl) => (tpl.steps.clone(), format!("templates.{t}.steps")),
            },
            (None, None) => unreachable!("group_node is only called for steps or uses"),
        };
        if steps.is_empty() {
            self.err(&spath, "a group needs at least one step");
        }
        // The loop's `until` sees the iteration's children.
        let repeat_spec = n.repeat.clone();
        if n.repeat.is_some() {
            scope.vars.push("iteration".to_string());
        }
        // Everything in this node's scope is upstream for its children.
        let mut inner = Scope {
            levels: scope.levels.clone(),
            vars: scope.vars.clone(),
        };
        if let Some(t) = &n.uses {
            using.push(t.clone());
        }
        let id = self.group(
            Some(parent),
            index,
            name,
            &steps,
            &spath,
            defaults,
            on_failure,
            &inner,
            depth + 1,
            using,
        );
        if n.uses.is_some() {
            using.pop();
        }
        let repeat = repeat_spec.and_then(|r| {
            let rpath = format!("{path}.repeat");
            if r.max_iterations == 0 || r.max_iterations > self.limits.loop_iterations_max {
                self.err(
                    &format!("{rpath}.max_iterations"),
                    format!(
                        "must be between 1 and loop_iterations_max = {}, got {}",
                        self.limits.loop_iterations_max, r.max_iterations
                    ),
                );
            }
            inner.levels.push(Level {
                names: Rc::new(steps.keys().cloned().collect()),
                deps: Rc::new(Vec::new()),
                acyclic: true,
                at: None,
            });
            let until = self.expression(&format!("{rpath}.until"), &r.until, &inner)?;
            Some(Repeat {
                until,
                max_iterations: r.max_iterations,
                on_exhausted: r.on_max_iterations.unwrap_or(ExhaustedMode::Fail),
            })
        });
        if let Body::Group { repeat: r, .. } = &mut self.nodes[id as usize].body {
            *r = repeat;
        }
        id
    }

    #[allow(clippy::too_many_arguments)]
    fn task(
        &mut self,
        parent: NodeId,
        index: u32,
        name: &str,
        n: &NodeSpec,
        path: &str,
        defaults: &spec::StepDefaults,
        scope: &Scope,
    ) -> NodeId {
        self.tasks += 1;
        if n.repeat.is_some() {
            self.err(
                &format!("{path}.repeat"),
                "repeat applies to groups: put the steps to repeat under `steps:`",
            );
        }
        let kind = n.kind.clone().unwrap_or_else(|| "command".to_string());
        let prefix: &[&str] = match STEP_KINDS.iter().find(|(k, _)| *k == kind) {
            Some((_, p)) => p,
            None => {
                let known: Vec<&str> = STEP_KINDS.iter().map(|(k, _)| *k).collect();
                self.err(
                    &format!("{path}.kind"),
                    format!(
                        "unknown step kind {kind:?}, expected one of {}",
                        known.join(", ")
                    ),
                );
                &[]
            }
        };
        if kind == "container" && n.image.is_none() {
            self.err(&format!("{path}.image"), "kind container needs an image");
        }
        if kind != "container" && n.image.is_some() {
            self.err(&format!("{path}.image"), "image is only for kind container");
        }
        let mut argv = Vec::new();
        let shell = n.shell.is_some();
        if let Some(line) = &n.shell {
            if !prefix.is_empty() {
                self.err(
                    &format!("{path}.shell"),
                    format!("kind {kind} takes run (argv), not shell"),
                );
            }
            argv.extend(self.template(&format!("{path}.shell"), line, scope));
        }
        if let Some(run) = &n.run {
            if run.is_empty() {
                self.err(
                    &format!("{path}.run"),
                    "run needs at least the program to start",
                );
            }
            for p in prefix {
                argv.push(
                    Template::compile(p, self.limits).expect("interpreter names are literals"),
                );
            }
            for (i, a) in run.iter().enumerate() {
                argv.extend(self.template(&format!("{path}.run[{i}]"), a, scope));
            }
        }
        let mut env: BTreeMap<String, Template> = BTreeMap::new();
        // Secret env entries, by variable (a step's own entries win over
        // the defaults', a text entry over a secret of the same name).
        let mut secret_env: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in &defaults.env {
            match v {
                EnvValue::Text(v) => {
                    if let Ok(t) = Template::compile(v, self.limits) {
                        env.insert(k.clone(), t);
                    }
                }
                EnvValue::Secret { secret } => {
                    secret_env.insert(k.clone(), secret.clone());
                }
            }
        }
        for (k, v) in &n.env {
            match self.check_env_value(&format!("{path}.env"), k, v) {
                Ok(Some(t)) => {
                    for e in t.expressions() {
                        self.check_refs(&format!("{path}.env.{k}"), e, scope);
                    }
                    secret_env.remove(k);
                    env.insert(k.clone(), t);
                }
                Ok(None) => {}
                Err(secret) => {
                    env.remove(k);
                    secret_env.insert(k.clone(), secret);
                }
            }
        }
        let mut secrets: Vec<(String, String)> = secret_env.into_iter().collect();
        for (i, name) in n.secrets.iter().enumerate() {
            self.check_secret_name(&format!("{path}.secrets[{i}]"), name);
            secrets.push((String::new(), name.clone()));
        }
        secrets.sort();
        secrets.dedup();
        for (i, f) in n.files.iter().enumerate() {
            if f.uri.trim().is_empty() {
                self.err(&format!("{path}.files[{i}].uri"), "uri is empty");
            }
            self.literal_only(&format!("{path}.files[{i}].uri"), &f.uri);
        }
        if let Some(image) = &n.image {
            self.literal_only(&format!("{path}.image"), image);
        }
        for (i, c) in n.constraints.iter().enumerate() {
            let cpath = format!("{path}.constraints[{i}]");
            self.literal_only(&format!("{cpath}.attribute"), &c.attribute);
            if let Some(v) = &c.equals {
                self.literal_only(&format!("{cpath}.equals"), v);
            }
            if let Some(v) = &c.like {
                self.literal_only(&format!("{cpath}.like"), v);
            }
        }
        let resources = self.resources(path, n.resources.as_ref(), defaults.resources.as_ref());
        let mut constraints = Vec::new();
        for (i, c) in n.constraints.iter().enumerate() {
            let cpath = format!("{path}.constraints[{i}]");
            match (&c.equals, &c.like) {
                (Some(v), None) => {
                    constraints.push(Constraint::Equals(c.attribute.clone(), v.clone()))
                }
                (None, Some(re)) => match regex::Regex::new(&format!("^(?:{re})$")) {
                    Ok(_) => constraints.push(Constraint::Like(c.attribute.clone(), re.clone())),
                    Err(e) => self.err(
                        &format!("{cpath}.like"),
                        format!("invalid regular expression: {e}"),
                    ),
                },
                _ => self.err(&cpath, "a constraint needs exactly one of equals and like"),
            }
        }
        let retry = match (&n.retry, &defaults.retry) {
            (Some(r), _) => self.retry(&format!("{path}.retry"), Some(r)),
            (None, d) => self.retry("defaults.retry", d.as_ref()),
        };
        let timeout_ms = match (&n.timeout, &defaults.timeout) {
            (Some(t), _) => self.duration(&format!("{path}.timeout"), t),
            (None, Some(t)) => humantime::parse_duration(t)
                .ok()
                .map(|d| d.as_millis() as u64),
            (None, None) => None,
        };
        let id = self.nodes.len() as NodeId;
        self.nodes.push(PlanNode {
            name: name.to_string(),
            parent: Some(parent),
            index,
            depends_on: Vec::new(),
            dependents: Vec::new(),
            when: None,
            foreach: None,
            on_failure: FailureMode::FailFast,
            body: Body::Task(Box::new(TaskTemplate {
                kind,
                argv,
                shell,
                env: env.into_iter().collect(),
                secrets,
                files: n
                    .files
                    .iter()
                    .map(|f| (f.uri.clone(), f.executable, f.extract))
                    .collect(),
                image: n.image.clone(),
                resources,
                constraints,
                retry,
                timeout_ms,
            })),
        });
        id
    }

    fn quantity_mb(&mut self, path: &str, q: &Quantity) -> Option<f64> {
        let v = match q {
            Quantity::Number(n) => *n,
            Quantity::Text(t) => match parse_size_mb(t) {
                Some(v) => v,
                None => {
                    self.err(path, format!("invalid size {t:?}: use a number of MB or e.g. \"512MiB\", \"4GiB\", \"2GB\""));
                    return None;
                }
            },
        };
        if !v.is_finite() || v < 0.0 {
            self.err(path, format!("size must be a non-negative number, got {v}"));
            return None;
        }
        Some(v)
    }

    fn resources(
        &mut self,
        path: &str,
        r: Option<&ResourceSpec>,
        d: Option<&ResourceSpec>,
    ) -> Resources {
        // A value taken from `defaults` is reported once, at `defaults.*`,
        // not once per step that inherits it.
        let node_path = format!("{path}.resources");
        let pick = |f: fn(&ResourceSpec) -> bool| -> Option<(&ResourceSpec, String)> {
            match r.filter(|r| f(r)) {
                Some(r) => Some((r, node_path.clone())),
                None => d
                    .filter(|d| f(d))
                    .map(|d| (d, "defaults.resources".to_string())),
            }
        };
        let mut out = Resources {
            cpus: 0.1,
            mem_mb: 128.0,
            disk_mb: 0.0,
            gpus: 0,
        };
        if let Some((src, rpath)) = pick(|x| x.cpus.is_some()) {
            let c = src.cpus.unwrap_or_default();
            if !c.is_finite() || c <= 0.0 || c > self.limits.task_cpus_max {
                self.err(
                    &format!("{rpath}.cpus"),
                    format!(
                        "cpus must be > 0 and at most task_cpus_max = {}, got {c}",
                        self.limits.task_cpus_max
                    ),
                );
            } else {
                out.cpus = c;
            }
        }
        if let Some((src, rpath)) = pick(|x| x.mem.is_some())
            && let Some(m) = src
                .mem
                .as_ref()
                .and_then(|q| self.quantity_mb(&format!("{rpath}.mem"), q))
        {
            if m <= 0.0 || m > self.limits.task_mem_mb_max {
                self.err(
                    &format!("{rpath}.mem"),
                    format!(
                        "mem must be > 0 and at most task_mem_mb_max = {} MB, got {m} MB",
                        self.limits.task_mem_mb_max
                    ),
                );
            } else {
                out.mem_mb = m;
            }
        }
        if let Some((src, rpath)) = pick(|x| x.disk.is_some())
            && let Some(m) = src
                .disk
                .as_ref()
                .and_then(|q| self.quantity_mb(&format!("{rpath}.disk"), q))
        {
            if m > self.limits.task_disk_mb_max {
                self.err(
                    &format!("{rpath}.disk"),
                    format!(
                        "disk must be at most task_disk_mb_max = {} MB, got {m} MB",
                        self.limits.task_disk_mb_max
                    ),
                );
            } else {
                out.disk_mb = m;
            }
        }
        if let Some((src, rpath)) = pick(|x| x.gpus.is_some()) {
            let g = src.gpus.unwrap_or_default();
            if g.fract() != 0.0 || g < 0.0 || g > f64::from(self.limits.task_gpus_max) {
                self.err(
                    &format!("{rpath}.gpus"),
                    format!(
                        "gpus must be a whole number from 0 to task_gpus_max = {}, got {g}",
                        self.limits.task_gpus_max
                    ),
                );
            } else {
                out.gpus = g as u32;
            }
        }
        out
    }

    fn retry(&mut self, path: &str, r: Option<&RetrySpec>) -> RetryPolicy {
        let mut p = RetryPolicy {
            user_errors: 0,
            platform_errors: 3,
            timeouts: 0,
            backoff: BackoffKind::Exponential,
            initial_ms: 10_000,
            factor: 2.0,
            max_ms: 600_000,
        };
        let Some(r) = r else { return p };
        for (field, v, slot) in [
            ("user_errors", r.user_errors, &mut p.user_errors),
            ("platform_errors", r.platform_errors, &mut p.platform_errors),
            ("timeouts", r.timeouts, &mut p.timeouts),
        ] {
            if let Some(v) = v {
                if v > self.limits.retries_per_kind_max {
                    self.errors.push(SpecError::new(
                        &format!("{path}.{field}"),
                        format!(
                            "{v} is over the limit retries_per_kind_max = {}",
                            self.limits.retries_per_kind_max
                        ),
                    ));
                } else {
                    *slot = v;
                }
            }
        }
        if let Some(b) = &r.backoff {
            p.backoff = b.kind;
            if let Some(i) = &b.initial {
                p.initial_ms = self
                    .duration(&format!("{path}.backoff.initial"), i)
                    .unwrap_or(p.initial_ms);
            }
            if let Some(m) = &b.max {
                p.max_ms = self
                    .duration(&format!("{path}.backoff.max"), m)
                    .unwrap_or(p.max_ms);
            }
            if let Some(f) = b.factor {
                if !f.is_finite() || !(1.0..=100.0).contains(&f) {
                    self.err(
                        &format!("{path}.backoff.factor"),
                        format!("factor must be between 1 and 100, got {f}"),
                    );
                } else {
                    p.factor = f;
                }
            }
            if p.initial_ms > p.max_ms {
                self.err(&format!("{path}.backoff"), "initial is longer than max");
            }
        }
        p
    }

    fn schedules(&mut self) -> Vec<Schedule> {
        let mut out = Vec::new();
        if self.spec.schedules.len() > self.limits.schedules_per_workflow_max {
            self.err(
                "schedules",
                format!(
                    "{} schedules, over the limit schedules_per_workflow_max = {}",
                    self.spec.schedules.len(),
                    self.limits.schedules_per_workflow_max
                ),
            );
        }
        for (i, s) in self.spec.schedules.iter().enumerate() {
            let path = format!("schedules[{i}]");
            let fields = s.cron.split_whitespace().count();
            let cron = match croner::Cron::from_str(&s.cron) {
                Ok(_) if self.admission && !(fields == 1 || fields == 5 || fields == 6) => {
                    self.err(
                        &format!("{path}.cron"),
                        format!(
                            "cron pattern {:?} has {fields} fields: use 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)",
                            s.cron
                        ),
                    );
                    None
                }
                Ok(c) if self.admission && !fires_ever(&c) => {
                    self.err(
                        &format!("{path}.cron"),
                        format!(
                            "cron pattern {:?} never fires (no matching date in 28 years)",
                            s.cron
                        ),
                    );
                    None
                }
                Ok(c) => Some(c),
                Err(e) => {
                    self.err(
                        &format!("{path}.cron"),
                        format!("invalid cron pattern {:?}: {e}", s.cron),
                    );
                    None
                }
            };
            let tzname = s.timezone.clone().unwrap_or_else(|| "UTC".to_string());
            let tz = match tzname.parse::<chrono_tz::Tz>() {
                Ok(tz) => Some(tz),
                Err(_) => {
                    self.err(&format!("{path}.timezone"), format!("unknown time zone {tzname:?} (use an IANA name such as \"Europe/Amsterdam\")"));
                    None
                }
            };
            let catchup = s
                .catchup_window
                .as_ref()
                .map(|w| self.duration(&format!("{path}.catchup_window"), w));
            for (k, v) in &s.params {
                match self.spec.params.get(k) {
                    None => {
                        let hint = did_you_mean(k, self.spec.params.keys());
                        self.err(
                            &format!("{path}.params.{k}"),
                            format!("unknown parameter{hint}"),
                        );
                    }
                    Some(p) => {
                        if let Err(m) = check_param_type(p.ty, v) {
                            self.err(&format!("{path}.params.{k}"), m);
                        }
                    }
                }
            }
            for (k, p) in &self.spec.params {
                if p.default.is_none() && !s.params.contains_key(k) {
                    self.err(
                        &format!("{path}.params"),
                        format!(
                            "required parameter {k:?} has no default: the schedule must set it"
                        ),
                    );
                }
            }
            if let (Some(cron), Some(tz)) = (cron, tz) {
                out.push(Schedule {
                    pattern: s.cron.clone(),
                    cron,
                    timezone: tz,
                    overlap: s.overlap.unwrap_or(OverlapPolicy::Skip),
                    catchup_window_ms: catchup.flatten().unwrap_or(0),
                    params: s.params.clone(),
                    paused: s.paused,
                });
            }
        }
        out
    }
}

/// Parses `512`, `512MB`, `512MiB`, `4GB`, `4GiB`, `1TiB` into MB (MiB and MB
/// are both treated as Mesos megabytes, i.e. 2^20 bytes).
fn parse_size_mb(t: &str) -> Option<f64> {
    let t = t.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1.0,
        "k" | "kb" | "kib" => 1.0 / 1024.0,
        "g" | "gb" | "gib" => 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0,
        _ => return None,
    };
    Some(n * mult)
}

/// Finds one cycle inside a strongly connected component, as a closed path
/// starting and ending at the lowest-numbered node (deterministic message).
fn find_cycle(deps: &[Vec<u32>], scc: &[u32]) -> Vec<u32> {
    let set: BTreeSet<u32> = scc.iter().copied().collect();
    let start = *set.iter().next().expect("scc is not empty");
    // Walk "depends on" edges (node -> its dependency) inside the component
    // until a node repeats; edges reversed give the execution order.
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let next = deps[cur as usize]
            .iter()
            .copied()
            .filter(|d| set.contains(d))
            .min()
            .expect("every node of an scc has an edge inside it");
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let mut cycle: Vec<u32> = path[pos..].to_vec();
            cycle.push(next);
            cycle.reverse();
            return cycle;
        }
        path.push(next);
        cur = next;
    }
}
