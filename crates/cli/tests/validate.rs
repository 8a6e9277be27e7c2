//! `kaon validate` end to end: the real binary, real files, exit codes.

use std::process::Command;

fn kaon(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kaon"));
    cmd.args(args);
    let out = if let Some(input) = stdin {
        use std::io::Write;
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn kaon");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    } else {
        cmd.output().expect("run kaon")
    };
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn valid_spec_prints_a_summary_and_exits_0() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/reference-pipeline/pipeline.yaml"
    );
    let (code, out, err) = kaon(&["validate", example], None);
    assert_eq!(code, 0, "stderr: {err}");
    assert!(
        out.trim_end().ends_with(
            "ok: workflow reference-pipeline: 7 steps, 1 groups, 1 schedules, exit handler"
        ),
        "{out}"
    );
}

#[test]
fn invalid_spec_prints_every_error_and_exits_1() {
    let bad = "apiVersion: kaon/v1\nname: x\nsteps:\n  prepare: {run: [p]}\n  train: {depends_on: [prepar], run: [t], resources: {cpus: 0}}\n";
    let (code, out, err) = kaon(&["validate", "-"], Some(bad));
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    assert_eq!(
        err,
        "-: steps.train.depends_on[0]: unknown step \"prepar\" (did you mean \"prepare\"?)\n\
         -: steps.train.resources.cpus: cpus must be > 0 and at most task_cpus_max = 1024, got 0\n\
         -: 2 errors\n"
    );
}

#[test]
fn json_output_and_missing_files() {
    let (code, out, _) = kaon(
        &["validate", "--output", "json", "/nonexistent/spec.yaml"],
        None,
    );
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v[0]["valid"], false);
    assert!(
        v[0]["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("cannot read: "),
        "{v}"
    );
}
