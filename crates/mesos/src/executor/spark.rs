//! Watching a running `kind: spark` step (issue 10 section 2): the I/O
//! half of [`crate::spark`], which holds every rule.
//!
//! While `spark-submit` runs, a watcher reads the driver's log (the step's
//! `stderr` file) for the UI's port and, in cluster deploy mode, the
//! submission id; once it has the port it polls Spark's monitoring REST API
//! every [`SPARK_POLL_INTERVAL`] and sends the step's percent complete and
//! status text (application id, UI link, active job and stage, failed task
//! attempts) as the executor's progress messages, only when they change.
//! The executor reads the shared [`SparkState`] to kill a cluster-mode
//! application and, when the step ends, to say whose failure it was.

use super::{ExecutorMessage, Internal, read_from};
use crate::spark::{self, Application, Job, Report, Stage};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often the watcher reads the driver log and polls the REST API.
pub const SPARK_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Largest REST answer read, bytes (a long application's job list grows
/// with every job; a bigger answer is skipped, not buffered).
pub const SPARK_REST_BYTES_MAX: usize = 4 * 1024 * 1024;

/// How long one REST request may take (a busy driver answers late; the
/// next poll tries again).
pub const SPARK_REST_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest driver-log line kept while looking for the port, bytes.
const LOG_LINE_BYTES_MAX: usize = 8 * 1024;

/// The highest percent reported while `spark-submit` runs: Spark knows
/// only the jobs started so far, so 100 is said only by a successful exit.
pub const RUNNING_PERCENT_MAX: f64 = 99.0;

/// What the watcher learnt about the step's application.
#[derive(Debug, Default)]
pub(super) struct SparkState {
    log_offset: u64,
    partial: Vec<u8>,
    /// The driver UI's port (from the driver log).
    pub ui_port: Option<u16>,
    /// Cluster deploy mode: the driver's submission id (to kill it).
    pub submission_id: Option<String>,
    /// The application id (from the REST API).
    pub app_id: Option<String>,
    last: Option<Report>,
}

/// Shared between the watcher and the executor; the watcher ends when the
/// executor drops its handle (the step ended).
pub(super) type SharedSpark = Arc<Mutex<SparkState>>;

impl SparkState {
    /// Reads the driver log's new lines for the UI port and the submission
    /// id (both are printed early; a rotated log starts again at 0).
    fn scan_log(&mut self, stderr: &Path) {
        if self.ui_port.is_some() && self.submission_id.is_some() {
            return;
        }
        let len = std::fs::metadata(stderr).map(|m| m.len()).unwrap_or(0);
        if len < self.log_offset {
            self.log_offset = 0;
            self.partial.clear();
        }
        let Ok(bytes) = read_from(stderr, self.log_offset) else {
            return;
        };
        self.log_offset += bytes.len() as u64;
        for b in bytes {
            if b != b'\n' {
                if self.partial.len() < LOG_LINE_BYTES_MAX {
                    self.partial.push(b);
                }
                continue;
            }
            let line = String::from_utf8_lossy(&self.partial).into_owned();
            self.partial.clear();
            if self.ui_port.is_none() {
                self.ui_port = spark::ui_port_from_log_line(&line);
            }
            if self.submission_id.is_none() {
                self.submission_id = spark::submission_id_from_log_line(&line);
            }
        }
    }
}

/// This machine's name, for the UI link a user follows (the watcher itself
/// polls the driver on loopback: in client and local mode it runs here).
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // or truncates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match (rc, std::str::from_utf8(&buf[..end])) {
        (0, Ok(h)) if !h.is_empty() => h.to_string(),
        _ => "localhost".into(),
    }
}

/// GET `url` as JSON, bounded by [`SPARK_REST_BYTES_MAX`] and
/// [`SPARK_REST_TIMEOUT`]; `None` on any failure (the next poll retries).
async fn get_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
) -> Option<T> {
    let mut resp = client
        .get(url)
        .timeout(SPARK_REST_TIMEOUT)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.ok()? {
        if body.len() + chunk.len() > SPARK_REST_BYTES_MAX {
            tracing::info!(%url, "Spark REST answer over SPARK_REST_BYTES_MAX; skipped");
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).ok()
}

/// One poll of the driver's REST API: the application's progress.
async fn poll_rest(client: &reqwest::Client, port: u16, link: &str) -> Option<(String, Report)> {
    let base = format!("http://127.0.0.1:{port}/api/v1/applications");
    let apps: Vec<Application> = get_json(client, &base).await?;
    // A driver's UI serves its one application.
    let app = apps.into_iter().next()?;
    let jobs: Vec<Job> = get_json(client, &format!("{base}/{}/jobs", app.id)).await?;
    let stages: Vec<Stage> = get_json(client, &format!("{base}/{}/stages?status=active", app.id))
        .await
        .unwrap_or_default();
    let report = spark::summarize(&app, link, &jobs, &stages);
    Some((app.id, report))
}

/// Watches the step `task_id` until `alive` is gone: see the module docs.
pub(super) fn watch(
    task_id: String,
    stderr: PathBuf,
    shared: &SharedSpark,
    client: reqwest::Client,
    tx: mpsc::UnboundedSender<Internal>,
) {
    let alive: Weak<Mutex<SparkState>> = Arc::downgrade(shared);
    tokio::spawn(async move {
        let host = host_name();
        loop {
            tokio::time::sleep(SPARK_POLL_INTERVAL).await;
            let Some(state) = alive.upgrade() else {
                return;
            };
            let port = {
                let Ok(mut st) = state.lock() else { return };
                st.scan_log(&stderr);
                st.ui_port
            };
            let Some(port) = port else { continue };
            let link = format!("http://{host}:{port}");
            let Some((app_id, mut report)) = poll_rest(&client, port, &link).await else {
                continue;
            };
            report.percent = report.percent.min(RUNNING_PERCENT_MAX);
            let changed = {
                let Ok(mut st) = state.lock() else { return };
                st.app_id = Some(app_id);
                let changed = st.last.as_ref() != Some(&report);
                st.last = Some(report.clone());
                changed
            };
            if !changed {
                continue;
            }
            for m in [
                ExecutorMessage::Progress {
                    task_id: task_id.clone(),
                    percent: report.percent,
                },
                ExecutorMessage::Status {
                    task_id: task_id.clone(),
                    text: report.status,
                },
            ] {
                if tx.send(Internal::Message(m)).is_err() {
                    return;
                }
            }
        }
    });
}

/// The last [`spark::LOG_TAIL_BYTES_MAX`] bytes of the driver log.
pub(super) fn log_tail(stderr: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(stderr) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(spark::LOG_TAIL_BYTES_MAX as u64);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_ok() {
        let _ = f
            .take(spark::LOG_TAIL_BYTES_MAX as u64)
            .read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Kills a cluster-deploy-mode application (`spark-submit --kill`), when
/// the step is one and its submission id is known; in client and local
/// mode the driver is the step's process, which the group kill ends.
pub(super) fn kill_application(
    argv: &[String],
    env: &std::collections::BTreeMap<String, String>,
    state: &SharedSpark,
) {
    let submission = state.lock().ok().and_then(|s| s.submission_id.clone());
    let Some(cmd) = submission.and_then(|id| spark::kill_command(argv, &id)) else {
        return;
    };
    // The step's environment (SPARK_HOME, JAVA_HOME, credentials).
    let env = env.clone();
    tokio::spawn(async move {
        let Some((prog, args)) = cmd.split_first() else {
            return;
        };
        let run = tokio::process::Command::new(prog)
            .args(args)
            .envs(&env)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status();
        match tokio::time::timeout(SPARK_KILL_WAIT, run).await {
            Ok(Ok(s)) if s.success() => tracing::info!(?cmd, "Spark application killed"),
            other => tracing::warn!(?cmd, ?other, "spark-submit --kill did not succeed"),
        }
    });
}

/// How long `spark-submit --kill` may take.
pub const SPARK_KILL_WAIT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_and_submission_are_read_from_a_growing_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr");
        std::fs::write(&log, "INFO SparkContext: Running Spark version 4.3.0\nINFO Utils: Successfully started service 'SparkUI' on po").unwrap();
        let mut st = SparkState::default();
        st.scan_log(&log);
        assert_eq!(st.ui_port, None, "half a line is not a line");
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(
            &mut f,
            b"rt 41187.\nINFO Client: Driver successfully submitted as driver-7\n",
        )
        .unwrap();
        st.scan_log(&log);
        assert_eq!(st.ui_port, Some(41187));
        assert_eq!(st.submission_id.as_deref(), Some("driver-7"));
        // Rotated: the new file is shorter; reading starts again.
        std::fs::write(&log, "x\n").unwrap();
        st.ui_port = None;
        st.scan_log(&log);
        assert_eq!(st.log_offset, 2);
    }
}
