//! Fuzzing on the stable toolchain (issue 9 D): structure-aware generators
//! under `cargo test`, a corpus of the nasty cases found so far
//! (`tests/fuzz-corpus/`), and a memory cap: every allocation goes through
//! [`CappedAlloc`], and a target that would grow past `MEMORY_BYTES_MAX`
//! fails instead of taking the machine down.
//!
//! Targets: the spec parser and validator (generated specs, corpus files and
//! byte-level mutations of them), and the event decoder plus replay
//! (mutations of a real event log). The RecordIO decoder's generators live
//! beside it (`crates/mesos/src/recordio.rs`). Short by default; the longer
//! run is `PROPTEST_CASES=20000 cargo test --release -p kaon-core --test fuzz`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use kaon_core::Limits;
use kaon_core::events;
use kaon_core::sim::{Outcome, Sim};
use kaon_core::state::State;
use proptest::prelude::*;

/// The most memory this test binary may hold at once: far above what any
/// target needs (a few MiB), far below what a blow-up takes (GiBs).
const MEMORY_BYTES_MAX: usize = 1 << 30;

/// The system allocator, refusing (so the process aborts with an allocation
/// error naming the size) once `MEMORY_BYTES_MAX` would be exceeded.
struct CappedAlloc;

static HELD_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let held = HELD_BYTES.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        if held > MEMORY_BYTES_MAX {
            HELD_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CappedAlloc = CappedAlloc;

/// Every corpus file, by name. (The test reads its fixtures; the core
/// itself still does no I/O.)
#[allow(clippy::disallowed_methods)]
fn corpus() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz-corpus");
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("corpus directory")
        .map(|e| {
            let p = e.expect("entry").path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).expect("corpus file is text"),
            )
        })
        .collect();
    out.sort();
    assert!(out.len() >= 8, "corpus has {} files", out.len());
    out
}

/// Compiles a spec; any answer is fine, a panic or abort is not. A valid
/// plan must respect the limits it was compiled under.
fn compile_checked(source: &str) {
    let limits = Limits::default();
    if let Ok(plan) = kaon_core::compile_source(source, &limits) {
        assert!(
            plan.task_count + plan.group_count <= limits.steps_per_workflow_max,
            "a plan over the step limit: {source}"
        );
    }
}

#[test]
fn every_corpus_file_gets_an_answer() {
    for (name, source) in corpus() {
        let result = kaon_core::compile_source(&source, &Limits::default());
        assert!(result.is_err(), "{name}: every corpus spec is invalid");
    }
}

/// Pieces the spec generator draws from: valid and broken values of every
/// field, expressions, crons and names.
const EXPRS: &[&str] = &[
    "true",
    "params.p > 0",
    "1 == 1",
    "[1, 2, 3]",
    "'yes'",
    "steps.a.outputs.x",
    "steps['a'].outputs.x",
    "steps.user-selection.outputs",
    "params.p",
    "[1, 2].map(x, x * 2)",
    "1 / 0",
    "item",
    "((((((((1))))))))",
    "${{ x }}",
    "",
];
const CRONS: &[&str] = &[
    "0 * * * *",
    "0 0 31 2 *",
    "* * * * * * *",
    "@daily",
    "61 * * * *",
    "",
];

#[derive(Debug, Clone)]
enum GenNode {
    Step {
        deps: Vec<usize>,
        when: Option<usize>,
        foreach: Option<usize>,
        arg: usize,
    },
    Group(Vec<GenNode>),
    Uses(usize),
}

/// An index into `EXPRS`, or (most of the time) past its end: then the
/// field gets a value of the right type, so that most specs stay valid.
fn expr_pick() -> impl Strategy<Value = usize> {
    0..EXPRS.len() * 12
}

fn gen_node() -> impl Strategy<Value = GenNode> {
    let leaf = prop_oneof![
        4 => (
            proptest::collection::vec(0usize..8, 0..3),
            proptest::option::of(expr_pick()),
            proptest::option::of(expr_pick()),
            expr_pick()
        )
            .prop_map(|(deps, when, foreach, arg)| GenNode::Step {
                deps,
                when,
                foreach,
                arg
            }),
        1 => (0usize..4).prop_map(GenNode::Uses),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        proptest::collection::vec(inner, 1..6).prop_map(GenNode::Group)
    })
}

/// `EXPRS[i]`, or `fallback` for an index past the end.
fn expr_or(i: usize, fallback: &'static str) -> &'static str {
    EXPRS.get(i).copied().unwrap_or(fallback)
}

/// Renders nodes as YAML. Names, dependencies and `uses` are kept valid
/// (earlier siblings, lower templates) so that many generated specs pass and
/// reach the deeper checks; the expressions and crons carry the damage.
fn render(nodes: &[GenNode], indent: usize, templates_below: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for (i, n) in nodes.iter().enumerate() {
        out.push_str(&format!("{pad}s{i}:\n"));
        match n {
            GenNode::Step {
                deps,
                when,
                foreach,
                arg,
            } => {
                let deps: Vec<String> = deps
                    .iter()
                    .filter(|_| i > 0)
                    .map(|d| format!("s{}", d % i.max(1)))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                out.push_str(&format!("{pad}  depends_on: [{}]\n", deps.join(", ")));
                if let Some(w) = when {
                    out.push_str(&format!("{pad}  when: {:?}\n", expr_or(*w, "params.p > 0")));
                }
                if let Some(f) = foreach {
                    out.push_str(&format!(
                        "{pad}  foreach: {{items: {:?}}}\n",
                        expr_or(*f, "[1, 2, 3]")
                    ));
                }
                out.push_str(&format!(
                    "{pad}  run: [x, {:?}]\n",
                    format!("${{{{ {} }}}}", expr_or(*arg, "params.p"))
                ));
            }
            GenNode::Group(children) => {
                out.push_str(&format!("{pad}  steps:\n"));
                render(children, indent + 4, templates_below, out);
            }
            GenNode::Uses(t) if templates_below > 0 => {
                out.push_str(&format!("{pad}  uses: t{}\n", t % templates_below))
            }
            GenNode::Uses(_) => out.push_str(&format!("{pad}  run: [x]\n")),
        }
    }
}

fn spec_source(templates: &[Vec<GenNode>], steps: &[GenNode], cron: Option<usize>) -> String {
    let mut s =
        String::from("apiVersion: kaon/v1\nname: fuzz\nparams:\n  p: {type: int, default: 1}\n");
    if let Some(c) = cron {
        s.push_str(&format!("schedules:\n  - cron: {:?}\n", CRONS[c]));
    }
    if !templates.is_empty() {
        s.push_str("templates:\n");
    }
    for (i, t) in templates.iter().enumerate() {
        s.push_str(&format!("  t{i}:\n    steps:\n"));
        render(t, 6, i, &mut s);
    }
    s.push_str("steps:\n");
    render(steps, 2, templates.len(), &mut s);
    s
}

/// Random bytes edits: flip, insert, delete, duplicate a range.
fn mutate(source: &str, edits: &[(u8, usize, u8)]) -> String {
    let mut b = source.as_bytes().to_vec();
    for &(op, at, byte) in edits {
        if b.is_empty() {
            b.push(byte);
            continue;
        }
        let at = at % b.len();
        match op % 4 {
            0 => b[at] ^= byte | 1,
            1 => b.insert(at, byte),
            2 => {
                b.remove(at);
            }
            _ => {
                let end = (at + usize::from(byte)).min(b.len());
                let piece = b[at..end].to_vec();
                b.splice(at..at, piece);
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// A real event log: the reference-pipeline shape run to its end by the
/// in-memory leader, then encoded as the log stores it.
fn real_log() -> Vec<Vec<u8>> {
    let source = "apiVersion: kaon/v1\nname: real\nsteps:\n  prepare: {run: [p]}\n  train:\n    depends_on: [prepare]\n    foreach: {items: \"[1, 2, 3]\"}\n    run: [t, \"${{ item }}\"]\n  publish: {depends_on: [train], run: [x]}\n";
    let mut sim = Sim::new(Limits::default());
    sim.submit(source, BTreeMap::new()).expect("valid spec");
    let mut policy = |_: &str, attempt: u32| {
        if attempt == 1 {
            Outcome::Lost
        } else {
            Outcome::Finish("{\"ok\": true}".to_string())
        }
    };
    sim.run_to_quiet(&mut policy, 10_000);
    let log: Vec<Vec<u8>> = sim.log.iter().map(events::encode).collect();
    let mut state = State::default();
    for (i, bytes) in log.iter().enumerate() {
        state
            .apply_bytes(i as u64 + 1, bytes)
            .expect("the unmutated log replays");
    }
    assert!(log.len() > 20, "a real log: {} events", log.len());
    log
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 500, .. ProptestConfig::default() })]

    /// Generated specs (templates using templates, groups, references,
    /// conditions, fan-outs, crons): the validator answers every one.
    #[test]
    fn generated_specs_get_an_answer(
        templates in proptest::collection::vec(proptest::collection::vec(gen_node(), 1..5), 0..4),
        steps in proptest::collection::vec(gen_node(), 1..8),
        cron in proptest::option::of(0..CRONS.len()),
    ) {
        let source = spec_source(&templates, &steps, cron);
        compile_checked(&source);
    }

    /// Byte-level mutations of the corpus and of a generated valid spec.
    #[test]
    fn mutated_specs_get_an_answer(
        pick in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..12),
    ) {
        let mut bases: Vec<String> = corpus().into_iter().map(|(_, s)| s).collect();
        bases.push(include_str!("../../../examples/reference-pipeline/pipeline.yaml").to_string());
        let base = pick.get(&bases);
        compile_checked(&mutate(base, &edits));
    }

    /// Mutated event records: decoding and replay answer with an error
    /// (a corrupted log names the index), never a panic.
    #[test]
    fn mutated_events_replay_or_fail_cleanly(
        target in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..8),
    ) {
        let log = real_log();
        let at = target.index(log.len());
        let mut state = State::default();
        for (i, bytes) in log.iter().enumerate() {
            let bytes = if i == at {
                let mut b = bytes.clone();
                for &(op, pos, byte) in &edits {
                    if b.is_empty() { b.push(byte); continue; }
                    let pos = pos % b.len();
                    match op % 3 {
                        0 => b[pos] ^= byte | 1,
                        1 => b.insert(pos, byte),
                        _ => { b.remove(pos); }
                    }
                }
                b
            } else {
                bytes.clone()
            };
            if state.apply_bytes(i as u64 + 1, &bytes).is_err() {
                break;
            }
        }
    }

    /// Arbitrary bytes as an event record.
    #[test]
    fn random_bytes_are_not_an_event(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut state = State::default();
        let _ = state.apply_bytes(1, &bytes);
    }
}
