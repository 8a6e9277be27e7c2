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
