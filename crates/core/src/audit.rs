//! What an auditor asks of the state at one point of the log, as flat
//! facts (key -> value): runs, steps, attempts, launch intents Mesos has
//! not confirmed, armed timers. Flat so two points compare key by key
//! (`kaon audit diff`) and print or serialize as they are (`kaon audit
//! state`, the web UI's audit page).

/// A time for the audit views: `2026-12-05 01:02:03.456Z` (UTC).
pub fn at_time(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) if ms > 0 => t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string(),
        _ => "-".into(),
    }
}

/// `TASK_FAILED` -> `failed`.
pub fn task_state(s: crate::events::TaskState) -> String {
    s.mesos_name()
        .trim_start_matches("TASK_")
        .to_ascii_lowercase()
}

/// A `Debug` name in lower case (`Running` -> `running`).
pub fn lower<T: std::fmt::Debug>(v: T) -> String {
    format!("{v:?}").to_ascii_lowercase()
}

/// What an auditor asks about one point of the log, as flat facts (key ->
/// value), so two points can be compared key by key (`audit diff`) and
/// printed or emitted as JSON (`audit state`).
pub fn facts(s: &crate::State, run: Option<u64>) -> std::collections::BTreeMap<String, String> {
    let mut f = std::collections::BTreeMap::new();
    if run.is_none() {
        for (name, w) in &s.workflows {
            if let Some(v) = w.versions.last() {
                f.insert(format!("workflow {name}"), format!("version {}", v.version));
            }
            for (i, sc) in w.schedules.iter().enumerate() {
                f.insert(
                    format!("workflow {name} schedule {i}"),
                    if sc.paused { "paused" } else { "active" }.to_string(),
                );
            }
        }
        if let Some(id) = &s.framework_id {
            f.insert("mesos framework".into(), id.clone());
        }
        if let Some((node, term)) = s.leader {
            f.insert("leader".into(), format!("node {node} term {term}"));
        }
    }
    for r in s.runs.values().filter(|r| run.is_none_or(|id| id == r.id)) {
        let key = format!("run {}", r.id);
        f.insert(
            key.clone(),
            format!("{}@{} {}", r.workflow, r.version, lower(r.status)),
        );
        if let Some(timeout) = r.plan.timeout_ms.filter(|_| r.finished_ms.is_none()) {
            f.insert(
                format!("{key} timer workflow-timeout"),
                at_time(r.submitted_ms.saturating_add(timeout as i64)),
            );
        }
        for inst in r.instances.iter().filter(|i| !i.path.is_empty()) {
            let sk = format!("{key} step {}", inst.path);
            let mut v = lower(inst.status);
            if inst.percent > 0 && !inst.status.is_terminal() {
                v.push_str(&format!(" {}%", inst.percent));
            }
            f.insert(sk.clone(), v);
            for a in &inst.attempts {
                let mut v = task_state(a.state);
                if let Some(c) = a.exit_code {
                    v.push_str(&format!(" exit {c}"));
                }
                if let Some(c) = a.cause {
                    v.push_str(&format!(" cause {}", lower(c)));
                }
                if let Some(k) = a.kill {
                    v.push_str(&format!(" kill {}", lower(k)));
                }
                if !a.agent_id.is_empty() {
                    v.push_str(&format!(" on {}", a.agent_id));
                }
                f.insert(format!("{sk} attempt {}", a.number), v);
                if a.ended_ms.is_none() {
                    if a.state == crate::events::TaskState::Staging {
                        f.insert(
                            format!("{sk} attempt {} intent", a.number),
                            format!(
                                "launch recorded at event {}, not yet seen by Mesos",
                                a.launch_event
                            ),
                        );
                    }
                    if a.timeout_ms > 0 {
                        f.insert(
                            format!("{sk} attempt {} timer timeout", a.number),
                            at_time(a.launched_ms.saturating_add(a.timeout_ms as i64)),
                        );
                    }
                }
            }
            if let Some((attempt, at)) = inst.retry {
                f.insert(
                    format!("{sk} timer retry"),
                    format!("attempt {attempt} at {}", at_time(at)),
                );
            }
        }
    }
    f
}
