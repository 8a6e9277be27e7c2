//! Container steps (`kind: container`, issue 10 section 3): the step runs
//! in its image through the Docker CLI on the agent, with the step's
//! resources as Docker limits and its task directory mounted.

use super::{ENV_OUTPUTS_FILE, ENV_PROGRESS_FILE, ENV_TASK_ID, StepSpec, spawn_error};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// A container step: the image and the step's resources as Docker limits.
///
/// Why the executor runs `docker run` itself rather than asking Mesos'
/// Docker containerizer: kaon's executor stays the step's supervisor, so a
/// container step keeps every contract of the other kinds (outputs and
/// progress files, heartbeats, kill grace, the same result JSON); with
/// Mesos' Docker containerizer a custom executor's DOCKER ContainerInfo
/// goes on the ExecutorInfo and runs the *executor* inside the step's
/// image, which would need kaon's binary (and its libc) in every image;
/// and an agent needs only the Docker CLI and daemon, not the docker
/// containerizer (`--containerizers=docker,mesos`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ContainerSpec {
    /// Image reference (`name[:tag]` or an id), as `docker run` takes it.
    pub image: String,
    /// CPUs (`docker run --cpus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory in MB (`docker run --memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_mb: Option<f64>,
}

/// Where the Docker CLI is looked up (PATH); `KAON_DOCKER` overrides it.
pub const DOCKER_PROGRAM_DEFAULT: &str = "docker";

/// The Docker CLI to use.
pub(super) fn docker_program() -> String {
    std::env::var("KAON_DOCKER").unwrap_or_else(|_| DOCKER_PROGRAM_DEFAULT.into())
}

/// The container's name for a task: Docker's charset, unique per task id.
pub fn container_name(task_id: &str) -> String {
    // FNV-1a keeps two ids that sanitize alike apart, and the framework id
    // (the executor's MESOS_FRAMEWORK_ID) two clusters sharing one Docker
    // daemon: their runs have the same ids (two tests' publish steps
    // removed each other's containers).
    let framework = std::env::var("MESOS_FRAMEWORK_ID").unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in framework.bytes().chain([0]).chain(task_id.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let clean: String = task_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(100)
        .collect();
    format!("kaon-{clean}-{:08x}", h as u32)
}

/// The `docker run` argv for a container step running in `dir` (mounted
/// at the same path, so the outputs and progress files are where the
/// environment says, inside and out).
pub(super) fn docker_run_args(
    task_id: &str,
    spec: &StepSpec,
    c: &ContainerSpec,
    dir: &Path,
    owner: &[(&str, String)],
) -> Vec<String> {
    let d = dir.display().to_string();
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut a: Vec<String> = vec![
        "run".into(),
        "--rm".into(),
        "--name".into(),
        container_name(task_id),
        "--label".into(),
        format!("kaon.task={task_id}"),
        "--user".into(),
        format!("{uid}:{gid}"),
        // --mount, not --volume: sandbox paths hold colons (executor ids
        // derive from task ids such as `r4-i1-a1:train`).
        "--mount".into(),
        format!("type=bind,source={d},target={d}"),
        "--workdir".into(),
        d.clone(),
    ];
    for (k, v) in owner {
        a.push("--label".into());
        a.push(format!("{k}={v}"));
    }
    if let Some(cpus) = c.cpus.filter(|v| v.is_finite() && *v > 0.0) {
        a.push(format!("--cpus={cpus}"));
    }
    if let Some(mem) = c.mem_mb.filter(|v| v.is_finite() && *v >= 6.0) {
        a.push(format!("--memory={}m", mem.ceil() as u64));
    }
    let mut env: Vec<(String, String)> = spec.env.clone().into_iter().collect();
    env.push((ENV_OUTPUTS_FILE.into(), format!("{d}/outputs.json")));
    env.push((ENV_PROGRESS_FILE.into(), format!("{d}/progress")));
    env.push((ENV_TASK_ID.into(), task_id.into()));
    for (k, v) in env {
        a.push("--env".into());
        a.push(format!("{k}={v}"));
    }
    // Secrets: names only on the command line (`--env NAME` takes the
    // value from the docker CLI's own environment, which the executor
    // sets); files in the mounted sandbox.
    for s in spec.secrets.iter().filter(|s| !s.env.is_empty()) {
        a.push("--env".into());
        a.push(s.env.clone());
    }
    if spec.secrets.iter().any(|s| s.env.is_empty()) {
        a.push("--env".into());
        a.push(format!(
            "{}={d}/{}",
            super::ENV_SECRETS,
            super::SECRETS_SUBDIR
        ));
    }
    a.push(c.image.clone());
    if spec.argv.is_empty() {
        a.extend([
            "/bin/sh".into(),
            "-c".into(),
            spec.shell.clone().unwrap_or_default(),
        ]);
    } else {
        a.extend(spec.argv.iter().cloned());
    }
    a
}

/// Stops a container step's container: `docker stop` (SIGTERM, then
/// SIGKILL after `grace`), then `docker rm -f` (also when the CLI died).
pub(super) async fn stop_container(name: String, grace: Duration) {
    let docker = docker_program();
    let secs = if grace.is_zero() {
        "0".to_string()
    } else {
        grace.as_secs().max(1).to_string()
    };
    let _ = tokio::process::Command::new(&docker)
        .args(["stop", "--time", &secs, &name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    remove_container(name).await;
}

/// The host pid of a running container's first process.
pub(super) async fn container_pid(name: &str) -> Option<i32> {
    let out = tokio::process::Command::new(docker_program())
        .args(["inspect", "--format", "{{.State.Pid}}", name])
        .stderr(std::process::Stdio::null())
        .output()
        .await
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
}

/// Label naming the executor process ([`crate::process::identity`]) that
/// started a container step.
pub const LABEL_EXECUTOR: &str = "kaon.executor";
/// Label naming the framework of a container step.
pub const LABEL_FRAMEWORK: &str = "kaon.framework";
/// Label naming the agent of a container step.
pub const LABEL_AGENT: &str = "kaon.agent";

/// Removes the containers of this framework on this agent whose executor
/// process is gone (it crashed, or the agent lost it): the Docker daemon,
/// not the executor, is their parent, so nothing else stops them. Run once
/// before an executor's first container step; a machine without Docker
/// has none.
pub(super) async fn sweep_orphans(env: &super::ExecutorEnv) {
    let agent = env.agent_id.clone().unwrap_or_default();
    let listed = tokio::process::Command::new(docker_program())
        .args([
            "ps",
            "--all",
            "--no-trunc",
            "--filter",
            &format!("label={LABEL_FRAMEWORK}={}", env.framework_id),
            "--filter",
            &format!("label={LABEL_AGENT}={agent}"),
            "--format",
            &format!("{{{{.ID}}}} {{{{.Label \"{LABEL_EXECUTOR}\"}}}}"),
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .await;
    let Ok(out) = listed else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((id, owner)) = line.split_once(' ') else {
            continue;
        };
        if !crate::process::is_alive(owner.trim()) {
            tracing::warn!(
                container = id,
                owner,
                "removing a container an executor that is gone left behind"
            );
            remove_container(id.to_string()).await;
        }
    }
}

/// `docker rm -f NAME`, errors ignored (it is usually gone already).
pub(super) async fn remove_container(name: String) {
    let _ = tokio::process::Command::new(docker_program())
        .args(["rm", "--force", &name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
}

/// The error for a container step whose Docker CLI could not be started
/// (no Docker on the agent): it names the image, so the step is never
/// mistaken for one that ran.
pub(super) fn container_spawn_error(image: &str, e: &std::io::Error) -> String {
    format!(
        "cannot run the container step (image {image:?}): {}",
        spawn_error(Some(&docker_program()), &BTreeMap::new(), e)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_without_docker_fails_a_container_step_naming_the_image() {
        let e = std::io::Error::from(std::io::ErrorKind::NotFound);
        let m = container_spawn_error("trainer:1", &e);
        assert!(
            m.starts_with("cannot run the container step (image \"trainer:1\"): cannot start step: program \"docker\" is not installed on agent"),
            "{m}"
        );
        assert!(
            m.ends_with("kind: container needs Docker (CLI and daemon) on the agent"),
            "{m}"
        );
    }

    #[test]
    fn docker_run_gets_limits_mounts_and_the_step_contract() {
        let spec = StepSpec {
            shell: Some("echo hi".into()),
            env: [("A".to_string(), "1".to_string())].into(),
            ..StepSpec::default()
        };
        let c = ContainerSpec {
            image: "img:2".into(),
            cpus: Some(1.5),
            mem_mb: Some(256.0),
        };
        let owner = [("kaon.executor", "12:34".to_string())];
        let a = docker_run_args("r1-i2-a1:x", &spec, &c, Path::new("/sb/tasks/t"), &owner);
        let s = a.join(" ");
        assert!(s.starts_with("run --rm --name kaon-r1-i2-a1-x-"), "{s}");
        for want in [
            "--label kaon.task=r1-i2-a1:x",
            "--label kaon.executor=12:34",
            "--mount type=bind,source=/sb/tasks/t,target=/sb/tasks/t --workdir /sb/tasks/t",
            "--cpus=1.5 --memory=256m",
            "--env A=1",
            "--env KAON_OUTPUTS_FILE=/sb/tasks/t/outputs.json",
            "--env KAON_PROGRESS_FILE=/sb/tasks/t/progress",
            "--env KAON_TASK_ID=r1-i2-a1:x",
        ] {
            assert!(s.contains(want), "{want} in {s}");
        }
        assert!(s.ends_with("img:2 /bin/sh -c echo hi"), "{s}");
        assert_ne!(
            container_name("a:b"),
            container_name("a-b"),
            "ids that clean alike differ"
        );
    }

    #[test]
    fn a_container_steps_secrets_are_names_on_the_command_line() {
        let spec = StepSpec {
            shell: Some("true".into()),
            secrets: vec![
                crate::executor::SecretRef {
                    name: "db-password".into(),
                    env: "PW".into(),
                },
                crate::executor::SecretRef {
                    name: "api-key".into(),
                    env: String::new(),
                },
            ],
            ..StepSpec::default()
        };
        let c = ContainerSpec {
            image: "img".into(),
            cpus: None,
            mem_mb: None,
        };
        let a = docker_run_args("t", &spec, &c, Path::new("/sb"), &[]);
        let s = a.join(" ");
        assert!(
            s.contains("--env PW --env KAON_SECRETS=/sb/.kaon-secrets img"),
            "{s}"
        );
        assert!(!s.contains("PW="), "no value on the command line: {s}");
    }
}
