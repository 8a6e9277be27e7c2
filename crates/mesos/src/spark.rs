//! Watching a `kind: spark` step (issue 10 section 2): the pure half.
//!
//! The executor runs `spark-submit` and learns about the application from
//! two places: the driver's log (its stderr: the UI's port, and in cluster
//! deploy mode the submission id to kill it with) and Spark's monitoring
//! REST API on the driver's UI (`/api/v1/applications`, `.../jobs`,
//! `.../stages`). Everything here turns those texts into decisions, with no
//! I/O, so that it is tested on recorded answers of a real Spark (4.3.0,
//! from PyPI's `pyspark`); the executor does the polling and the killing.
//!
//! The executor's half (the log reader, the REST poller, the kill) is
//! `executor/spark.rs`.
//!
//! The rules for whose failure a failed Spark step is (the retry budget it
//! counts against) are in [`classify_exit`].

use serde::Deserialize;

/// Spark's setting for the driver UI's port. The executor passes `0` (a
/// free port, which the driver logs) unless the step sets it itself.
pub const UI_PORT_CONF: &str = "spark.ui.port";

/// Bytes of the driver log's end to give [`classify_exit`]: a job's
/// abort reason is printed last, and a log can be gigabytes.
pub const LOG_TAIL_BYTES_MAX: usize = 256 * 1024;

/// `argv` (`spark-submit ...`) with `--conf spark.ui.port=0` after the
/// program unless the step already chose a port: Spark then binds a free
/// port and logs it, which [`ui_port_from_log_line`] reads.
pub fn with_free_ui_port(argv: &[String]) -> Vec<String> {
    let chosen = options(argv).iter().any(|(o, v)| {
        matches!(*o, "--conf" | "-c")
            && v.and_then(|v| v.split_once('='))
                .is_some_and(|(k, _)| k == UI_PORT_CONF)
    });
    let Some((prog, rest)) = argv.split_first() else {
        return Vec::new();
    };
    let mut out = vec![prog.clone()];
    if !chosen {
        out.push("--conf".into());
        out.push(format!("{UI_PORT_CONF}=0"));
    }
    out.extend(rest.iter().cloned());
    out
}

/// The UI's port from a driver log line
/// (`INFO Utils: Successfully started service 'SparkUI' on port 41187.`).
pub fn ui_port_from_log_line(line: &str) -> Option<u16> {
    let rest = line
        .split("Successfully started service 'SparkUI' on port ")
        .nth(1)?;
    rest.trim().trim_end_matches('.').parse().ok()
}

/// The submission id of a cluster-deploy-mode driver from a `spark-submit`
/// log line: standalone (`Driver successfully submitted as driver-...`)
/// and the REST submission client (`Submission successfully created as
/// driver-...`, as Mesos' cluster dispatcher answers).
pub fn submission_id_from_log_line(line: &str) -> Option<String> {
    [
        "successfully submitted as ",
        "Submission successfully created as ",
    ]
    .iter()
    .find_map(|m| line.split(m).nth(1))
    .and_then(|rest| rest.split_whitespace().next())
    .map(|id| id.trim_end_matches(['.', ',']).to_string())
    .filter(|id| !id.is_empty())
}

/// `spark-submit`'s own options with their values (`--master X` or
/// `--master=X`), up to the application file: what follows it is the
/// application's own arguments, never spark-submit's.
fn options(argv: &[String]) -> Vec<(&str, Option<&str>)> {
    let mut out = Vec::new();
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        if !a.starts_with('-') {
            break; // the application file
        }
        match a.split_once('=') {
            Some((o, v)) if o.starts_with("--") => out.push((o, Some(v))),
            _ if matches!(a.as_str(), "--verbose" | "-v" | "--supervise") => out.push((a, None)),
            _ => out.push((a, it.next().map(String::as_str))),
        }
    }
    out
}

/// The value of a `spark-submit` option (see [`options`]).
fn option<'a>(argv: &'a [String], name: &str) -> Option<&'a str> {
    options(argv)
        .into_iter()
        .find(|(o, _)| *o == name)
        .and_then(|(_, v)| v)
}

/// The command that kills a cluster-deploy-mode application
/// (`spark-submit --master M --kill ID`); `None` in client mode, where the
/// driver is the step's own process and killing its group is the kill.
pub fn kill_command(argv: &[String], submission_id: &str) -> Option<Vec<String>> {
    if option(argv, "--deploy-mode") != Some("cluster") {
        return None;
    }
    let master = option(argv, "--master")?;
    Some(vec![
        argv.first()?.clone(),
        "--master".into(),
        master.into(),
        "--kill".into(),
        submission_id.into(),
    ])
}

/// An application in `/api/v1/applications`.
#[derive(Debug, Clone, Deserialize)]
pub struct Application {
    /// Application id (`local-1764...`, `app-2026...`, `application_...`).
    pub id: String,
    /// The name the job gave itself.
    #[serde(default)]
    pub name: String,
}

/// A job in `/api/v1/applications/{id}/jobs` (the fields kaon reads).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Job {
    /// Job id.
    pub job_id: i64,
    /// What started it (`count at job.py:12`).
    pub name: String,
    /// RUNNING, SUCCEEDED, FAILED, UNKNOWN.
    pub status: String,
    /// Tasks of all its stages.
    pub num_tasks: u64,
    /// Tasks done.
    pub num_completed_tasks: u64,
    /// Tasks not needed (their stage's output was already there).
    pub num_skipped_tasks: u64,
    /// Task attempts that failed.
    pub num_failed_tasks: u64,
}

/// A stage in `/api/v1/applications/{id}/stages` (the fields kaon reads).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Stage {
    /// ACTIVE, COMPLETE, PENDING, SKIPPED, FAILED.
    pub status: String,
    /// Stage id.
    pub stage_id: i64,
    /// Its tasks.
    pub num_tasks: u64,
    /// Tasks done.
    pub num_complete_tasks: u64,
    /// Task attempts that failed.
    pub num_failed_tasks: u64,
    /// What it runs.
    pub name: String,
}

/// What a step reports about its application at one poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Tasks done (completed or skipped) over tasks known, 0–100.
    pub percent: f64,
    /// The application id, UI link, active job and stage, failed tasks.
    pub status: String,
}

/// The step's progress from one poll of the REST API. Percent counts the
/// tasks of every job seen so far (Spark knows no job before it starts,
/// so a new job can lower it); the executor reports at most 99 while
/// `spark-submit` runs and 100 when it exits 0.
pub fn summarize(app: &Application, ui_url: &str, jobs: &[Job], stages: &[Stage]) -> Report {
    let total: u64 = jobs.iter().map(|j| j.num_tasks).sum();
    let done: u64 = jobs
        .iter()
        .map(|j| (j.num_completed_tasks + j.num_skipped_tasks).min(j.num_tasks))
        .sum();
    let percent = if total == 0 {
        0.0
    } else {
        (100.0 * done as f64 / total as f64).clamp(0.0, 100.0)
    };
    let mut status = format!("spark {} ({ui_url})", app.id);
    let running = jobs
        .iter()
        .filter(|j| j.status == "RUNNING")
        .max_by_key(|j| j.job_id);
    if let Some(j) = running {
        status.push_str(&format!(": job {} {:?}", j.job_id, j.name));
    }
    let active = stages
        .iter()
        .filter(|s| s.status == "ACTIVE")
        .max_by_key(|s| s.stage_id);
    if let Some(s) = active {
        status.push_str(&format!(
            ", stage {} {}/{} tasks",
            s.stage_id, s.num_complete_tasks, s.num_tasks
        ));
    }
    let failed: u64 = jobs.iter().map(|j| j.num_failed_tasks).sum();
    if failed > 0 {
        status.push_str(&format!(", {failed} failed task attempts"));
    }
    Report { percent, status }
}

/// Whose failure a failed `spark-submit` was: the retry budget it counts
/// against.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The user's code (an exception, a bad argument, a task that failed
    /// on its own): the step's retries.
    User,
    /// The platform's (an executor lost, a shuffle fetch failure, the
    /// driver killed by someone other than kaon, the cluster manager
    /// removing the application): the platform budget; why, in words.
    Platform(String),
}

/// Markers of the platform's failures in a driver log, with their words.
const PLATFORM_MARKERS: &[(&str, &str)] = &[
    ("ExecutorLostFailure", "a Spark executor was lost"),
    ("FetchFailed", "a shuffle fetch failed"),
    (
        "Executor heartbeat timed out",
        "a Spark executor stopped heartbeating",
    ),
    (
        "Master removed our application",
        "the cluster manager removed the application",
    ),
    (
        "Container killed by",
        "the cluster manager killed a container",
    ),
];

/// The rules: a driver killed by a signal
/// kaon did not send is the platform's (the OOM killer, a node going
/// away); a job aborted because of a lost executor, a fetch failure, a
/// heartbeat timeout or the cluster manager is the platform's; anything
/// else (an exception in the user's code, a task failing by itself, a bad
/// argument) is the user's. The abort line decides when there is one, as
/// a stage that recovered from a fetch failure and then failed in the
/// user's code is the user's failure.
pub fn classify_exit(log_tail: &str, signal: Option<i32>, killed_by_kaon: bool) -> Failure {
    if let (Some(sig), false) = (signal, killed_by_kaon) {
        return Failure::Platform(format!("the Spark driver was killed by signal {sig}"));
    }
    let abort = log_tail.lines().rfind(|l| l.contains("Job aborted"));
    let platform = |text: &str| PLATFORM_MARKERS.iter().find(|(m, _)| text.contains(m));
    let found = match abort {
        Some(line) => platform(line),
        // No abort line: a marker counts unless the user's code failed.
        None if log_tail.contains("Traceback (most recent call last)")
            || log_tail.contains("Exception in thread \"main\"") =>
        {
            None
        }
        None => platform(log_tail),
    };
    match found {
        Some((_, why)) => Failure::Platform(format!("{why} (Spark)")),
        None => Failure::User,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn the_ui_port_is_left_to_spark_unless_the_step_chose_one() {
        assert_eq!(
            with_free_ui_port(&v(&["spark-submit", "--master", "local[2]", "job.py", "x"])),
            v(&[
                "spark-submit",
                "--conf",
                "spark.ui.port=0",
                "--master",
                "local[2]",
                "job.py",
                "x"
            ])
        );
        let own = v(&["spark-submit", "--conf", "spark.ui.port=4050", "job.py"]);
        assert_eq!(with_free_ui_port(&own), own);
        // The application's own arguments are not spark-submit's options.
        let app_arg = v(&[
            "spark-submit",
            "-v",
            "job.py",
            "--conf",
            "spark.ui.port=4050",
        ]);
        assert_eq!(
            with_free_ui_port(&app_arg)[1..3],
            v(&["--conf", "spark.ui.port=0"])
        );
    }

    #[test]
    fn a_real_driver_log_gives_the_port_and_the_submission() {
        // Lines of spark-submit 4.3.0 (pyspark from PyPI) on this machine.
        let line =
            "26/12/02 21:05:47 INFO Utils: Successfully started service 'SparkUI' on port 41187.";
        assert_eq!(ui_port_from_log_line(line), Some(41187));
        assert_eq!(
            ui_port_from_log_line(
                "INFO Utils: Successfully started service 'sparkDriver' on port 38135."
            ),
            None
        );
        assert_eq!(
            submission_id_from_log_line(
                "INFO Client: Driver successfully submitted as driver-20261202210547-0001"
            )
            .as_deref(),
            Some("driver-20261202210547-0001")
        );
        assert_eq!(
            submission_id_from_log_line("INFO SparkContext: Submitted application: x"),
            None
        );
    }

    #[test]
    fn only_a_cluster_mode_application_is_killed_through_spark_submit() {
        let cluster = v(&[
            "spark-submit",
            "--master",
            "spark://m:7077",
            "--deploy-mode",
            "cluster",
            "app.jar",
            "--deploy-mode",
            "client",
        ]);
        assert_eq!(
            kill_command(&cluster, "driver-1"),
            Some(v(&[
                "spark-submit",
                "--master",
                "spark://m:7077",
                "--kill",
                "driver-1"
            ]))
        );
        // The application's own arguments after the app file do not count.
        let client = v(&[
            "spark-submit",
            "--master",
            "local[2]",
            "app.py",
            "--deploy-mode",
            "cluster",
        ]);
        assert_eq!(kill_command(&client, "driver-1"), None);
    }

    #[test]
    fn progress_is_tasks_done_over_tasks_known_with_the_app_and_active_stage() {
        let app: Application = serde_json::from_str(
            r#"{"id":"local-1764709546000","name":"kaon-test","attempts":[]}"#,
        )
        .unwrap();
        let jobs: Vec<Job> = serde_json::from_str(
            r#"[{"jobId":4,"name":"treeAggregate at WeightedLeastSquares.scala:109","status":"RUNNING",
                 "numTasks":16,"numActiveTasks":2,"numCompletedTasks":6,"numSkippedTasks":2,"numFailedTasks":1},
                {"jobId":2,"name":"first","status":"SUCCEEDED","numTasks":8,"numCompletedTasks":8}]"#,
        )
        .unwrap();
        let stages: Vec<Stage> = serde_json::from_str(
            r#"[{"status":"ACTIVE","stageId":6,"numTasks":8,"numCompleteTasks":6,"name":"treeAggregate"},
                {"status":"COMPLETE","stageId":5,"numTasks":8,"numCompleteTasks":8}]"#,
        )
        .unwrap();
        let r = summarize(&app, "http://127.0.0.1:41187", &jobs, &stages);
        assert_eq!(r.percent, 100.0 * 16.0 / 24.0);
        assert_eq!(
            r.status,
            "spark local-1764709546000 (http://127.0.0.1:41187): job 4 \
             \"treeAggregate at WeightedLeastSquares.scala:109\", stage 6 6/8 tasks, 1 failed task attempts"
        );
        assert_eq!(summarize(&app, "u", &[], &[]).percent, 0.0);
    }

    #[test]
    fn whose_failure_a_spark_step_is() {
        let lost = "ERROR TaskSetManager: Task 0 in stage 1.0 failed 4 times; aborting job\n\
            py4j.protocol.Py4JJavaError: org.apache.spark.SparkException: Job aborted due to stage failure: \
            Task 0 in stage 1.0 failed 4 times, most recent failure: Lost task 0.3 in stage 1.0 (TID 5) \
            (10.0.0.2 executor 1): ExecutorLostFailure (executor 1 exited caused by one of the running tasks)";
        assert!(
            matches!(classify_exit(lost, None, false), Failure::Platform(w) if w.contains("executor was lost"))
        );
        let user = "Job aborted due to stage failure: Task 3 in stage 0.0 failed 1 times, most recent failure: \
            Lost task 3.0 in stage 0.0 (TID 3): org.apache.spark.api.python.PythonException: \
            Traceback (most recent call last): ZeroDivisionError: division by zero\n\
            earlier: FetchFailed(BlockManagerId(1), shuffleId=0)";
        // The abort line decides: the fetch failure was recovered from.
        assert_eq!(classify_exit(user, None, false), Failure::User);
        assert_eq!(
            classify_exit(
                "Traceback (most recent call last):\nValueError: bad input",
                None,
                false
            ),
            Failure::User
        );
        assert!(matches!(
            classify_exit("", Some(9), false),
            Failure::Platform(_)
        ));
        assert_eq!(classify_exit("", Some(15), true), Failure::User);
    }
}
