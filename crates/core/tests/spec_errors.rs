//! The catalogue of bad specs (`tests/spec_errors.yaml`): each must give
//! exactly its listed errors, in order, with path and message.

use kaon_core::{Limits, compile_source};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    source: String,
    errors: Vec<String>,
}

#[test]
fn bad_specs_give_exact_errors() {
    let text = include_str!("spec_errors.yaml");
    let cases: Vec<Case> = serde_yaml_ng::from_str(text).expect("catalogue parses");
    assert!(cases.len() >= 15, "catalogue too small: {}", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let got: Vec<String> = match compile_source(&c.source, &Limits::default()) {
            Ok(_) => vec!["<valid>".to_string()],
            Err(errs) => errs.iter().map(|e| e.to_string()).collect(),
        };
        if got != c.errors {
            failures.push(format!(
                "{}:\n  expected {:#?}\n  got      {:#?}",
                c.name, c.errors, got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn spec_size_limit() {
    let limits = Limits {
        spec_bytes_max: 64,
        ..Limits::default()
    };
    let src = format!(
        "apiVersion: kaon/v1\nname: x\nsteps:\n  a: {{run: [x]}}\n# {}\n",
        "x".repeat(100)
    );
    let errs = compile_source(&src, &limits).unwrap_err();
    assert_eq!(
        errs[0].to_string(),
        format!(
            "spec is {} bytes, over the limit spec_bytes_max = 64",
            src.len()
        )
    );
}

#[test]
fn steps_per_workflow_limit() {
    let limits = Limits {
        steps_per_workflow_max: 2,
        ..Limits::default()
    };
    let src =
        "apiVersion: kaon/v1\nname: x\nsteps:\n  a: {run: [x]}\n  b: {run: [x]}\n  c: {run: [x]}\n";
    let errs = compile_source(src, &limits).unwrap_err();
    assert_eq!(
        errs[0].to_string(),
        "steps: workflow has 3 nodes, over the limit steps_per_workflow_max = 2"
    );
}

#[test]
fn json_is_accepted_and_valid_specs_summarise() {
    let src = r#"{"apiVersion": "kaon/v1", "name": "j", "steps": {"a": {"run": ["x"]}, "g": {"steps": {"b": {"shell": "y"}}}}}"#;
    let plan = compile_source(src, &Limits::default()).unwrap();
    assert_eq!(plan.summary(), "workflow j: 2 steps, 1 groups, 0 schedules");
}

#[test]
fn readme_and_example_specs_are_valid() {
    let readme = include_str!("../../../README.md");
    let start = readme.find("```yaml\n").expect("README has a yaml example") + 8;
    let end = start + readme[start..].find("```").expect("closed");
    let plan = compile_source(&readme[start..end], &Limits::default())
        .unwrap_or_else(|e| panic!("README example: {e:?}"));
    assert_eq!(
        plan.summary(),
        "workflow train-models: 5 steps, 1 groups, 1 schedules, exit handler"
    );
    let example = include_str!("../../../examples/reference-pipeline/pipeline.yaml");
    compile_source(example, &Limits::default()).expect("reference pipeline is valid");
}

/// 7 levels of templates, each using the one below 10 times: 1.2 KB that
/// describes 11,111,111 nodes. Refused from a count, not by expanding (which
/// took 9.5 GB before), naming the limit and the template that crosses it.
#[test]
fn template_expansion_is_counted_before_it_is_done() {
    // The same spec is in the fuzz corpus.
    let src = include_str!("fuzz-corpus/template-bomb.yaml").to_string();
    assert!(src.len() < 1_400, "the spec is small: {} bytes", src.len());
    let errs = compile_source(&src, &Limits::default()).unwrap_err();
    assert_eq!(
        errs.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        vec![
            "templates.t3: template \"t3\" expands to 11110 nodes, over the limit \
             steps_per_workflow_max = 10000 (the workflow would have 11111111 nodes)"
        ]
    );
    // Under the limit, the same shape still compiles.
    let small = src.replace("a: {uses: t6}", "a: {uses: t2}");
    let small = small
        .split('\n')
        .filter(|l| {
            !l.starts_with("  t3")
                && !l.starts_with("  t4")
                && !l.starts_with("  t5")
                && !l.starts_with("  t6")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let plan = compile_source(&small, &Limits::default()).expect("1,111 nodes compile");
    assert_eq!(plan.task_count + plan.group_count, 1 + 1_110);
}

/// Many uses of a template that is small on its own: the workflow's total
/// is what crosses the limit, and the message says which template is largest.
#[test]
fn many_uses_of_a_small_template_name_the_total() {
    let limits = Limits {
        steps_per_workflow_max: 50,
        ..Limits::default()
    };
    let mut src = String::from(
        "apiVersion: kaon/v1\nname: wide\ntemplates:\n  t: {steps: {a: {run: [x]}, b: {run: [x]}}}\nsteps:\n",
    );
    for i in 0..20 {
        src += &format!("  g{i}: {{uses: t}}\n");
    }
    let errs = compile_source(&src, &limits).unwrap_err();
    assert_eq!(
        errs[0].to_string(),
        "steps: the workflow expands to 60 nodes, over the limit steps_per_workflow_max = 50 \
         (the largest template, \"t\", expands to 2 nodes)"
    );
}

/// 200 nested groups: the YAML parser's recursion limit is reported as
/// kaon's `nesting_depth_max`, with a short path.
#[test]
fn deep_nesting_names_the_limit() {
    let mut src = String::from("apiVersion: kaon/v1\nname: deep\nsteps:\n");
    let mut indent = String::from("  ");
    for i in 0..200 {
        src += &format!("{indent}g{i}:\n{indent}  steps:\n");
        indent += "    ";
    }
    src += &format!("{indent}leaf: {{run: [x]}}\n");
    let errs = compile_source(&src, &Limits::default()).unwrap_err();
    assert_eq!(errs.len(), 1);
    let e = errs[0].to_string();
    assert!(
        e.contains("groups may nest at most nesting_depth_max = 8 deep"),
        "{e}"
    );
    assert!(e.len() < 200, "short message: {e}");
    assert!(e.contains("steps.g0.steps.g1"), "{e}");
}

/// A spec from the log is compiled without checks added after it was
/// admitted: an old log must replay.
#[test]
fn recorded_specs_skip_checks_added_since() {
    let src = "apiVersion: kaon/v1\nname: old\nschedules:\n  - cron: \"0 0 31 2 *\"\nsteps:\n  a: {when: \"'yes'\", run: [x, \"${{ steps['nope'].outputs.x }}\"]}\n";
    assert!(compile_source(src, &Limits::default()).is_err());
    let spec = kaon_core::spec::parse(src, &Limits::default()).unwrap();
    kaon_core::validate::compile_recorded(&spec, &Limits::default()).expect("compiles as recorded");
}

/// A chain of 5,000 templates, each using the next: the expansion count
/// stops at `nesting_depth_max` instead of recursing 5,000 deep (which
/// overflowed the stack), and the nesting limit is what is reported.
#[test]
fn a_long_chain_of_templates_is_refused_without_deep_recursion() {
    let mut src = String::from("apiVersion: kaon/v1\nname: chain\ntemplates:\n");
    for i in 0..5_000 {
        src += &format!("  t{i}: {{steps: {{a: {{uses: t{}}}}}}}\n", i + 1);
    }
    src += "  t5000: {steps: {a: {run: [x]}}}\nsteps:\n  s: {uses: t0}\n";
    let errs = compile_source(&src, &Limits::default()).unwrap_err();
    assert!(
        errs.iter().any(|e| e
            .to_string()
            .contains("over the limit nesting_depth_max = 8")),
        "{errs:?}"
    );
}
