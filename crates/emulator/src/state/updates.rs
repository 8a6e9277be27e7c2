//! The agent's status-update manager (one update in flight per task,
//! retried until acknowledged) and the master's reconciliation.

use super::*;

impl Core {
    /// Agent side of a status update: record it, update the master's view,
    /// release resources on terminal states and forward it in order.
    pub fn status_update(
        &self,
        st: &mut State,
        agent: usize,
        framework: &str,
        mut status: TaskStatus,
    ) {
        let task_id = status.task_id.value.clone();
        if let Some(u) = &status.uuid
            && !st.agents[agent].seen_uuids.insert(u.0.clone())
        {
            tracing::debug!(task = %task_id, "duplicate status update dropped");
            return;
        }
        status.agent_id = Some(Id::new(&st.agents[agent].id));
        if status.timestamp.is_none() {
            status.timestamp = Some(self.now_secs());
        }
        let Some(fw) = st.frameworks.get_mut(framework) else {
            return;
        };
        let Some(task) = fw.tasks.get_mut(&task_id) else {
            return;
        };
        if status.executor_id.is_none() {
            status.executor_id = Some(Id::new(&task.executor_id));
        }
        let was_terminal = task.status.state.is_terminal();
        task.status = status.clone();
        if status.state.is_terminal() && !was_terminal {
            let released = task.resources.clone();
            let executor = task.executor_id.clone();
            st.agents[agent].used.subtract(&released);
            if let Some(e) = st.agents[agent]
                .executors
                .get_mut(&(framework.to_owned(), executor))
            {
                if e.tasks.remove(&task_id) {
                    if e.completed.len() >= COMPLETED_TASKS_PER_EXECUTOR_MAX {
                        e.completed.pop_front();
                    }
                    e.completed.push_back(task_id.clone());
                }
                e.queued.retain(|t| t.task_id.value != task_id);
            }
            self.allocate.notify_one();
        }
        let retry_min = self.config.status_update_retry_min;
        let stream = st.agents[agent]
            .updates
            .entry((framework.to_owned(), task_id))
            .or_insert_with(|| UpdateStream {
                queue: VecDeque::new(),
                next_retry: Instant::now(),
                backoff: retry_min,
            });
        stream.queue.push_back(status);
        if stream.queue.len() == 1 {
            stream.backoff = retry_min;
            stream.next_retry = Instant::now() + retry_min;
            let head = stream.queue[0].clone();
            if let Some(fw) = st.frameworks.get(framework) {
                let mut ev = sch::Event::bare(sch::EventType::Update);
                ev.update = Some(sch::Update { status: head });
                fw.send(&ev);
            }
        }
    }

    /// Resends every unacknowledged head update whose retry time has come.
    pub fn retry_updates(&self) {
        let mut st = self.lock();
        let now = Instant::now();
        let max = self.config.status_update_retry_max;
        let State {
            agents, frameworks, ..
        } = &mut *st;
        for agent in agents.iter_mut() {
            for ((f, _), stream) in agent.updates.iter_mut() {
                if stream.next_retry > now {
                    continue;
                }
                let (Some(head), Some(fw)) = (stream.queue.front(), frameworks.get(f)) else {
                    continue;
                };
                if fw.sub.is_none() {
                    continue;
                }
                let mut ev = sch::Event::bare(sch::EventType::Update);
                ev.update = Some(sch::Update {
                    status: head.clone(),
                });
                fw.send(&ev);
                stream.next_retry = now + stream.backoff;
                stream.backoff = (stream.backoff * 2).min(max);
            }
        }
    }

    /// Scheduler ACKNOWLEDGE: drop the head if the uuid matches and release
    /// the next update of that task.
    pub fn acknowledge(&self, framework: &str, ack: &sch::Acknowledge) {
        let mut st = self.lock();
        let Some(a) = st.agents.iter().position(|a| a.id == ack.agent_id.value) else {
            tracing::debug!(agent = %ack.agent_id, "ACKNOWLEDGE for an unknown agent dropped");
            return;
        };
        let key = (framework.to_owned(), ack.task_id.value.clone());
        let retry_min = self.config.status_update_retry_min;
        let Some(stream) = st.agents[a].updates.get_mut(&key) else {
            return;
        };
        if stream.queue.front().and_then(|s| s.uuid.as_ref()) != Some(&ack.uuid) {
            tracing::debug!(task = %ack.task_id, "ACKNOWLEDGE with an unexpected uuid ignored");
            return;
        }
        let acked = stream.queue.pop_front();
        stream.backoff = retry_min;
        stream.next_retry = Instant::now() + retry_min;
        let next = stream.queue.front().cloned();
        if next.is_none() {
            st.agents[a].updates.remove(&key);
            if acked.is_some_and(|s| s.state.is_terminal())
                && let Some(fw) = st.frameworks.get_mut(framework)
            {
                fw.tasks.remove(&ack.task_id.value);
            }
        }
        if let (Some(status), Some(fw)) = (next, st.frameworks.get(framework)) {
            let mut ev = sch::Event::bare(sch::EventType::Update);
            ev.update = Some(sch::Update { status });
            fw.send(&ev);
        }
    }

    pub fn reconcile(&self, framework: &str, r: &sch::Reconcile) {
        let st = self.lock();
        let Some(fw) = st.frameworks.get(framework) else {
            return;
        };
        // Mesos answers `task->status_update_state()`: the state of the
        // update being delivered (the oldest unacknowledged one), not the
        // latest state, which may still be queued behind it (master.cpp,
        // `Master::reconcile`). `/master/state` shows the latest.
        let answer = |t: &TaskRec| {
            let delivering = st
                .agents
                .get(t.agent)
                .and_then(|a| {
                    a.updates
                        .get(&(framework.to_owned(), t.status.task_id.value.clone()))
                })
                .and_then(|u| u.queue.front())
                .map(|s| s.state);
            let mut s = TaskStatus::new(
                t.status.task_id.clone(),
                delivering.unwrap_or(t.status.state),
            );
            s.source = Some(Source::Master);
            s.reason = Some("REASON_RECONCILIATION".into());
            s.message = Some("Reconciliation: Latest task state".into());
            s.agent_id = t.status.agent_id.clone();
            s.executor_id = t.status.executor_id.clone();
            s.timestamp = Some(self.now_secs());
            s
        };
        let mut out = Vec::new();
        if r.tasks.is_empty() {
            out.extend(fw.tasks.values().map(answer));
        } else {
            for t in &r.tasks {
                match fw.tasks.get(&t.task_id.value) {
                    Some(rec) => out.push(answer(rec)),
                    None => {
                        let known_agent = t
                            .agent_id
                            .as_ref()
                            .is_some_and(|a| st.agents.iter().any(|x| x.id == a.value));
                        let state = match (fw.partition_aware(), known_agent) {
                            (false, _) => TaskState::Lost,
                            (true, true) => TaskState::Gone,
                            (true, false) => TaskState::Unknown,
                        };
                        let mut s = TaskStatus::new(t.task_id.clone(), state);
                        s.source = Some(Source::Master);
                        s.reason = Some("REASON_RECONCILIATION".into());
                        s.message = Some("Reconciliation: Task is unknown".into());
                        s.agent_id = t.agent_id.clone();
                        s.timestamp = Some(self.now_secs());
                        out.push(s);
                    }
                }
            }
        }
        for status in out {
            let mut ev = sch::Event::bare(sch::EventType::Update);
            ev.update = Some(sch::Update { status });
            fw.send(&ev);
        }
    }
}
