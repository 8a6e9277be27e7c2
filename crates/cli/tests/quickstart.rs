//! Issue 9, A: the README's quickstart, exactly as written. The commands
//! are read from README.md ("## Run kaon": the `kaon server` block and the
//! block that submits the reference pipeline), `./target/release/kaon` is
//! replaced by the binary under test, and they run from a fresh working
//! directory (with `examples/` linked in, as in a checkout): no flags
//! beyond the README's. The reference pipeline must succeed. Before the
//! fix, the default relative `--data-dir kaon-data` nested every sandbox in
//! itself and the first step failed ("Directory nonexistent").
//!
//! The server listens on its default port, 127.0.0.1:7070, as the README
//! says: nothing else on this machine may hold it while the test runs.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{KAON, Proc};

/// Starts `cmd` (a `kaon server`) in `dir`, its stderr to
/// `dir/server.stderr`, and returns it with the first line it prints (empty
/// if none within 60 s).
fn start_in(dir: &Path, cmd: &mut Command) -> (Proc, String) {
    // The developer's own KAON_* settings must not change what is tested.
    for (k, _) in std::env::vars() {
        if k.starts_with("KAON_") && cmd.get_envs().all(|(e, _)| e != k.as_str()) {
            cmd.env_remove(&k);
        }
    }
    let mut server = Proc::spawn_raw(
        cmd.current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("server.stderr")).unwrap()),
    )
    .unwrap();
    let stdout = server.child_mut().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    (server, line)
}

/// The ```sh blocks of the README section `heading`, in order.
fn sh_blocks(readme: &str, heading: &str) -> Vec<String> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("README has a section {heading:?}"));
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(start) = rest.find("```sh\n") {
        let body = &rest[start + 6..];
        let end = body.find("```").expect("a closed code block");
        blocks.push(body[..end].to_string());
        rest = &body[end + 3..];
    }
    blocks
}

/// The README's commands with the binary under test.
fn with_binary(cmd: &str) -> String {
    cmd.replace("./target/release/kaon", KAON)
}

#[test]
fn the_readme_quickstart_runs_the_reference_pipeline_with_no_flags() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let blocks = sh_blocks(&readme, "Run kaon");
    let server = blocks
        .iter()
        .find(|b| b.contains("kaon server"))
        .expect("the README starts a server");
    let submit = blocks
        .iter()
        .find(|b| b.contains("kaon submit"))
        .expect("the README submits the reference pipeline");
    let server_cmd = with_binary(server.trim());
    assert!(
        !server_cmd.contains(" --"),
        "the quickstart's server takes no flags: {server_cmd}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        repo.join("examples").canonicalize().unwrap(),
        dir.path().join("examples"),
    )
    .unwrap();
    let mut argv = server_cmd.split_whitespace();
    let mut cmd = Command::new(argv.next().unwrap());
    cmd.args(argv);
    let (server, line) = start_in(dir.path(), &mut cmd);
    assert!(
        line.contains("127.0.0.1:7070"),
        "the server listens on the README's address: {line:?}\n{}",
        common::tail(&dir.path().join("server.stderr"), 20)
    );

    // The submit block, line by line as a user pastes it (the first
    // command, with its continuation lines, is the submit itself).
    let submit_cmd = with_binary(submit.split("\n./").next().unwrap());
    let out = Command::new("sh")
        .arg("-c")
        .arg(&submit_cmd)
        .current_dir(dir.path())
        .env("PWD", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("succeeded"),
        "the reference pipeline succeeds: {submit_cmd}\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        common::tail(&dir.path().join("server.stderr"), 30)
    );
    // Everything it made is in the fresh directory's kaon-data.
    let data = dir.path().join("kaon-data");
    assert!(data.join("raft").is_dir() && data.join("mesos").is_dir());
    let (code, runs, _) = common::kaon_at("http://127.0.0.1:7070", &["runs"]);
    assert_eq!(code, 0, "kaon runs works: {runs}");
    assert!(runs.contains("succeeded"), "{runs}");
    server.stop(libc::SIGTERM, Duration::from_secs(10));
}

/// Issue 9 G: every server flag also comes from `KAON_<NAME>`, and the
/// environment wins over `--config` (the command line wins over both).
#[test]
fn server_flags_come_from_kaon_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    let api = common::free_port();
    let raft = common::free_port();
    let data = dir.path().join("from-env");
    // The file names other values: the environment must win over them.
    let config = dir.path().join("kaon.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:1\"\nframework-name = \"from-file\"\n",
    )
    .unwrap();
    let mut cmd = Command::new(KAON);
    cmd.args(["server", "--config"])
        .arg(&config)
        .env("KAON_LISTEN", format!("127.0.0.1:{api}"))
        .env("KAON_RAFT_LISTEN", format!("127.0.0.1:{raft}"))
        .env("KAON_DATA_DIR", &data);
    let (server, line) = start_in(dir.path(), &mut cmd);
    let stderr = common::tail(&dir.path().join("server.stderr"), 20);
    assert!(
        line.contains(&format!("listening on 127.0.0.1:{api}")),
        "KAON_LISTEN is used, over the file's listen: {line:?}\n{stderr}"
    );
    assert!(
        line.contains(&data.display().to_string()),
        "KAON_DATA_DIR is used: {line:?}"
    );
    assert!(data.join("raft").exists(), "the log is in KAON_DATA_DIR");
    server.stop(libc::SIGTERM, Duration::from_secs(10));
}

/// Issue 9 G: a taken API port stops the server before it forms a cluster
/// (no event log is created), and the error says so once.
#[test]
fn a_taken_api_port_is_refused_before_the_node_forms_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let data = dir.path().join("data");
    let out = Command::new(KAON)
        .args(["server", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--raft-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the server must not start: {stderr}");
    assert!(
        stderr.contains(&format!("listening on 127.0.0.1:{port} (--listen)")),
        "{stderr}"
    );
    assert_eq!(stderr.matches("in use").count(), 1, "said once: {stderr}");
    assert!(
        !data.join("raft").exists(),
        "no event log was created before the port was checked"
    );
    drop(taken);
}

/// `KAON_CONFIG` names the config file as `--config` does: a file with an
/// unknown key is refused, naming the file, so it was read.
#[test]
fn kaon_config_names_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kaon.toml");
    std::fs::write(&config, "no-such-option = 1\n").unwrap();
    let out = Command::new(KAON)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--raft-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("KAON_CONFIG", &config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("unknown option \"no-such-option\"")
            && stderr.contains(&config.display().to_string()),
        "{stderr}"
    );
}

/// Issue 9 G, logs: off a terminal no colour codes, no openraft state
/// dumps, no warning for steps that exit 0, and a line per run and step
/// lifecycle event with its ids; `--log-format json` gives one JSON object
/// per line carrying the same fields.
#[test]
fn server_logs_are_plain_off_a_terminal_and_json_on_request() {
    for format in ["text", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let api = common::free_port();
        let mut cmd = Command::new(KAON);
        cmd.args(["server", "--listen", &format!("127.0.0.1:{api}")])
            .args(["--raft-listen", "127.0.0.1:0", "--log-format", format])
            .env_remove("RUST_LOG");
        let (server, line) = start_in(dir.path(), &mut cmd);
        assert!(line.contains("listening"), "{line:?}");
        let spec = dir.path().join("two.yaml");
        std::fs::write(
            &spec,
            "apiVersion: kaon/v1\nname: two\nsteps:\n  a: {shell: 'true'}\n  b: {shell: 'true', depends_on: [a]}\n",
        )
        .unwrap();
        let (code, out, err) = common::kaon(api, &["submit", spec.to_str().unwrap(), "--watch"]);
        assert_eq!(code, 0, "{out}{err}");
        let run = out
            .lines()
            .next()
            .unwrap()
            .strip_prefix("run ")
            .unwrap()
            .to_string();
        let log_path = dir.path().join("server.stderr");
        let log = common::wait_for("the run's last log line", Duration::from_secs(10), || {
            let log = std::fs::read_to_string(&log_path).ok()?;
            log.contains("run finished").then_some(log)
        });
        server.stop(libc::SIGTERM, Duration::from_secs(10));
        assert!(
            !log.contains('\u{1b}'),
            "no colour codes off a terminal:\n{log}"
        );
        assert!(
            !log.contains("openraft"),
            "no openraft dumps at info:\n{log}"
        );
        let before_stop = log.split("run finished").next().unwrap();
        assert!(
            !before_stop.contains("WARN"),
            "no warning while steps succeed:\n{log}"
        );
        if format == "json" {
            for l in log.lines() {
                let v: serde_json::Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
                assert!(
                    v["level"].is_string() && v["fields"]["message"].is_string(),
                    "{l}"
                );
            }
            let ended: Vec<serde_json::Value> = log
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter(|v| v["fields"]["message"] == "step attempt ended")
                .collect();
            assert_eq!(ended.len(), 2, "{log}");
            assert_eq!(ended[0]["fields"]["run"].to_string(), run);
            assert_eq!(ended[0]["fields"]["step"], "a");
            assert_eq!(ended[1]["fields"]["step"], "b");
            assert_eq!(ended[1]["fields"]["exit_code"], 0);
        } else {
            for what in [
                "run submitted",
                "step attempt launching",
                "step attempt ended",
                "run finished",
            ] {
                assert!(
                    log.lines()
                        .any(|l| l.contains(what) && l.contains(&format!("run={run}"))),
                    "{what} with run={run}:\n{log}"
                );
            }
            assert!(log.contains("step=b"), "{log}");
        }
    }
}

/// Issue 9 G: `kaon server --help` lists the server's flags only; client
/// commands keep the client flags.
#[test]
fn server_help_lists_server_flags_only() {
    let help = |args: &[&str]| {
        let out = Command::new(KAON).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let server = help(&["server", "--help"]);
    for flag in ["--listen", "--data-dir", "--admin-listen", "--log-format"] {
        assert!(server.contains(flag), "{flag} in:\n{server}");
    }
    for flag in ["--server ", "--timeout", "--stale", "--output"] {
        assert!(!server.contains(flag), "{flag} is a client flag:\n{server}");
    }
    let runs = help(&["runs", "--help"]);
    for flag in ["--server ", "--timeout", "--stale", "--output"] {
        assert!(runs.contains(flag), "{flag} in:\n{runs}");
    }
}
