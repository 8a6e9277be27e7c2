//! CEL expressions: compiled at submit, evaluated only by the decider.
//!
//! kaon uses the `cel` crate (a maintained CEL implementation) instead of a
//! hand-written language. Expressions are compiled when a spec is validated,
//! with limits on source size, AST size and a static cost bound (AST nodes
//! times the largest list each nested comprehension may walk). Evaluation
//! results that change state (foreach lists, conditions) are recorded in
//! events, so replay never evaluates an expression again.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::objects::{Key, Map};
use cel::{Context, Env, Program, Value};

use crate::limits::Limits;

/// The standard CEL environment, built once (it is immutable data).
fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib()))
}

/// A compiled expression plus what it references.
#[derive(Clone)]
pub struct Expression {
    /// The source text, for messages and audit.
    pub source: String,
    program: Arc<Program>,
    /// Names `x` used as `steps.x`; `None` if `steps` is used another way
    /// (then every visible step is put in the context).
    pub step_refs: Option<BTreeSet<String>>,
    /// Top-level variables referenced (`params`, `steps`, `item`, ...).
    pub variables: BTreeSet<String>,
    /// Names in `step_refs` written only in bracket form (`steps['x']`).
    /// Versions before this one did not check them, so a spec read back from
    /// the log is not refused for them.
    pub indexed_step_refs: BTreeSet<String>,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expression({:?})", self.source)
    }
}

impl PartialEq for Expression {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// Compiles `source`, checking it against the limits. The error text says
/// what is wrong (parse position or the limit exceeded).
pub fn compile(source: &str, limits: &Limits) -> Result<Expression, String> {
    if source.len() > limits.expression_bytes_max {
        return Err(format!(
            "expression is {} bytes, over the limit expression_bytes_max = {}",
            source.len(),
            limits.expression_bytes_max
        ));
    }
    if source.trim().is_empty() {
        return Err("expression is empty".to_string());
    }
    let program = env().compile(source).map_err(|e| match e.errors.first() {
        Some(first) => format!(
            "invalid CEL expression {source:?}: {} (at column {})",
            first.msg.trim(),
            first.pos.1
        ),
        None => format!("invalid CEL expression {source:?}"),
    })?;
    let mut walk = Walk::default();
    walk.visit(program.expression(), 0);
    if walk.nodes > limits.expression_nodes_max {
        return Err(format!(
            "expression has {} nodes, over the limit expression_nodes_max = {}",
            walk.nodes, limits.expression_nodes_max
        ));
    }
    let width = u64::from(limits.foreach_items_max.max(1));
    let cost =
        (walk.nodes as u64).saturating_mul(width.saturating_pow(walk.max_comprehension_depth));
    if cost > limits.expression_cost_max {
        return Err(format!(
            "expression cost bound {cost} (nodes {} x list width {width}^{} nested comprehensions) is over the limit expression_cost_max = {}",
            walk.nodes, walk.max_comprehension_depth, limits.expression_cost_max
        ));
    }
    let refs = program.references();
    let mut variables = BTreeSet::new();
    for v in refs.variables() {
        if !walk.bound.contains(v) {
            variables.insert(v.to_string());
        }
    }
    Ok(Expression {
        source: source.to_string(),
        program: Arc::new(program),
        indexed_step_refs: walk
            .indexed_refs
            .difference(&walk.step_refs)
            .cloned()
            .collect(),
        step_refs: if walk.steps_used_opaquely {
            None
        } else {
            Some(walk.step_refs.union(&walk.indexed_refs).cloned().collect())
        },
        variables,
    })
}

#[derive(Default)]
struct Walk {
    nodes: usize,
    max_comprehension_depth: u32,
    step_refs: BTreeSet<String>,
    indexed_refs: BTreeSet<String>,
    steps_used_opaquely: bool,
    /// Variables a comprehension binds (`x` in `list.map(x, x * 2)`).
    bound: BTreeSet<String>,
}

impl Walk {
    fn visit(&mut self, e: &IdedExpr, depth: u32) {
        self.nodes += 1;
        match &e.expr {
            Expr::Select(sel) => {
                if let Expr::Ident(name) = &sel.operand.expr
                    && name == "steps"
                {
                    self.nodes += 1;
                    self.step_refs.insert(sel.field.clone());
                    return;
                }
                self.visit(&sel.operand, depth);
            }
            Expr::Ident(name) => {
                if name == "steps" {
                    self.steps_used_opaquely = true;
                }
            }
            Expr::Call(call) => {
                // `steps['name']` is the same reference as `steps.name`
                // (the only way to write a name with a '-').
                if call.func_name == cel::common::ast::operators::INDEX
                    && let [operand, key] = call.args.as_slice()
                    && matches!(&operand.expr, Expr::Ident(name) if name == "steps")
                    && let Expr::Literal(LiteralValue::String(field)) = &key.expr
                {
                    self.nodes += 2;
                    self.indexed_refs.insert(field.to_string());
                    return;
                }
                if let Some(t) = &call.target {
                    self.visit(t, depth);
                }
                for a in &call.args {
                    self.visit(a, depth);
                }
            }
            Expr::Comprehension(c) => {
                self.bound.insert(c.iter_var.clone());
                self.bound.extend(c.iter_var2.clone());
                self.bound.insert(c.accu_var.clone());
                let d = depth + 1;
                self.max_comprehension_depth = self.max_comprehension_depth.max(d);
                self.visit(&c.iter_range, depth);
                self.visit(&c.accu_init, depth);
                self.visit(&c.loop_cond, d);
                self.visit(&c.loop_step, d);
                self.visit(&c.result, depth);
            }
            Expr::List(l) => {
                for x in &l.elements {
                    self.visit(x, depth);
                }
            }
            Expr::Map(m) => {
                for entry in &m.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(me) => {
                            self.visit(&me.key, depth);
                            self.visit(&me.value, depth);
                        }
                        EntryExpr::StructField(sf) => self.visit(&sf.value, depth),
                    }
                }
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    if let EntryExpr::StructField(sf) = &entry.expr {
                        self.visit(&sf.value, depth);
                    }
                }
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
}

/// Variables visible to an expression, as JSON.
#[derive(Debug, Default)]
pub struct Bindings {
    /// Top-level variables by name (`params`, `steps`, `item`, `index`, ...).
    pub vars: Vec<(String, serde_json::Value)>,
}

impl Bindings {
    /// Adds a variable.
    pub fn set(&mut self, name: &str, value: serde_json::Value) {
        self.vars.push((name.to_string(), value));
    }
}

/// Evaluates `expr` to JSON. Errors (missing keys, type errors) are returned
/// as text for the event log, never a panic.
pub fn eval(expr: &Expression, bindings: &Bindings) -> Result<serde_json::Value, String> {
    let mut ctx = Context::with_env(env().clone());
    for (name, value) in &bindings.vars {
        ctx.add_variable_from_value(name.as_str(), from_json(value));
    }
    let value = expr
        .program
        .execute(&ctx)
        .map_err(|e| format!("evaluating {:?}: {e}", expr.source))?;
    to_json(&value).map_err(|e| format!("evaluating {:?}: {e}", expr.source))
}

/// Evaluates a condition; anything but a boolean is an error.
pub fn eval_bool(expr: &Expression, bindings: &Bindings) -> Result<bool, String> {
    match eval(expr, bindings)? {
        serde_json::Value::Bool(b) => Ok(b),
        other => Err(format!(
            "condition {:?} must be a bool, got {}",
            expr.source,
            json_type(&other)
        )),
    }
}

/// JSON to CEL. Integers that fit `i64` become CEL `int` (not `uint`), so
/// `index + 1` and `params.epochs * 2` work as users expect.
fn from_json(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(a) => Value::List(Arc::new(a.iter().map(from_json).collect())),
        serde_json::Value::Object(o) => {
            // The cel crate stores maps in a HashMap; building one is fine
            // (we never iterate it ourselves).
            #[allow(clippy::disallowed_types)]
            let mut m = std::collections::HashMap::with_capacity(o.len());
            for (k, v) in o {
                m.insert(Key::String(Arc::new(k.clone())), from_json(v));
            }
            Value::Map(Map { map: Arc::new(m) })
        }
    }
}

fn to_json(v: &Value) -> Result<serde_json::Value, String> {
    v.json().map_err(|e| e.to_string())
}

/// Name of a JSON value's type, for messages.
pub fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(n) if n.is_f64() => "float",
        serde_json::Value::Number(_) => "int",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "list",
        serde_json::Value::Object(_) => "map",
    }
}

/// A string with `${{ expr }}` holes, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq)]
enum TemplatePart {
    Text(String),
    Expr(Expression),
}

impl Template {
    /// Compiles every hole; an unclosed `${{` is an error.
    pub fn compile(source: &str, limits: &Limits) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("${{") {
            if start > 0 {
                parts.push(TemplatePart::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 3..];
            let Some(end) = after.find("}}") else {
                return Err(format!("unclosed \"${{{{\" in {source:?}"));
            };
            parts.push(TemplatePart::Expr(compile(after[..end].trim(), limits)?));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// True if the template has no holes.
    pub fn is_literal(&self) -> bool {
        self.parts
            .iter()
            .all(|p| matches!(p, TemplatePart::Text(_)))
    }

    /// The expressions in the holes.
    pub fn expressions(&self) -> impl Iterator<Item = &Expression> {
        self.parts.iter().filter_map(|p| match p {
            TemplatePart::Expr(e) => Some(e),
            TemplatePart::Text(_) => None,
        })
    }

    /// Renders: strings are inserted as-is, other values as JSON.
    pub fn render(&self, bindings: &Bindings) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                TemplatePart::Text(t) => out.push_str(t),
                TemplatePart::Expr(e) => match eval(e, bindings)? {
                    serde_json::Value::String(s) => out.push_str(&s),
                    other => out.push_str(&other.to_string()),
                },
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compiles_and_collects_step_refs() {
        let e = compile(
            "steps.prepare.outputs.regions.size() > 0 && params.x == 1",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(e.step_refs, Some(BTreeSet::from(["prepare".to_string()])));
        // The bracket form is the same reference (and the only way to
        // write a name with a '-').
        let indexed = compile("steps['user-selection'].outputs.x", &Limits::default()).unwrap();
        assert_eq!(
            indexed.step_refs,
            Some(BTreeSet::from(["user-selection".to_string()]))
        );
        assert_eq!(
            indexed.indexed_step_refs,
            BTreeSet::from(["user-selection".to_string()])
        );
        // A computed key is opaque: every visible step is put in the context.
        let opaque = compile("steps[params.which].outputs.x", &Limits::default()).unwrap();
        assert_eq!(opaque.step_refs, None);
        // Comprehension variables are not free variables.
        let bound = compile("[1, 2].map(x, x * 2)", &Limits::default()).unwrap();
        assert!(bound.variables.is_empty(), "{:?}", bound.variables);
    }

    #[test]
    fn evaluates_with_bindings() {
        let e = compile("steps.v.outputs.stable == true", &Limits::default()).unwrap();
        let mut b = Bindings::default();
        b.set("steps", json!({"v": {"outputs": {"stable": true}}}));
        assert!(eval_bool(&e, &b).unwrap());
        b.vars.clear();
        b.set("steps", json!({"v": {"outputs": {"stable": false}}}));
        assert!(!eval_bool(&e, &b).unwrap());
        let not_bool = compile("steps.v.outputs.stable", &Limits::default()).unwrap();
        b.vars.clear();
        b.set("steps", json!({"v": {"outputs": {"stable": 1}}}));
        let err = eval_bool(&not_bool, &b).unwrap_err();
        assert!(err.contains("must be a bool, got int"), "{err}");
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            expression_bytes_max: 10,
            ..Limits::default()
        };
        let err = compile("1 + 2 + 3 + 4 + 5", &limits).unwrap_err();
        assert!(err.contains("expression_bytes_max = 10"), "{err}");
        let limits = Limits {
            expression_cost_max: 1000,
            ..Limits::default()
        };
        let err = compile("[1,2].all(x, [3].all(y, x < y))", &limits).unwrap_err();
        assert!(err.contains("expression_cost_max = 1000"), "{err}");
        let err = compile("1 +", &Limits::default()).unwrap_err();
        assert!(err.starts_with("invalid CEL expression"), "{err}");
    }

    #[test]
    fn template_renders_strings_raw_and_others_as_json() {
        let t = Template::compile(
            "--region=${{ item }} --n=${{ index + 1 }}",
            &Limits::default(),
        )
        .unwrap();
        let mut b = Bindings::default();
        b.set("item", json!("eu"));
        b.set("index", json!(2));
        assert_eq!(t.render(&b).unwrap(), "--region=eu --n=3");
        assert!(Template::compile("x ${{ oops", &Limits::default()).is_err());
    }
}
