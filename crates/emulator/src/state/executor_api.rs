//! The agent's executor API (SUBSCRIBE, UPDATE, MESSAGE) and what goes to
//! executors: KILL, SHUTDOWN, framework messages; re-registration after a
//! recovery.

use super::*;

impl Core {
    pub fn kill(self: &Arc<Self>, framework: &str, k: &sch::Kill) {
        let mut st = self.lock();
        let Some(fw) = st.frameworks.get(framework) else {
            return;
        };
        let Some(task) = fw.tasks.get(&k.task_id.value) else {
            drop(st);
            self.reconcile(
                framework,
                &sch::Reconcile {
                    tasks: vec![sch::ReconcileTask {
                        task_id: k.task_id.clone(),
                        agent_id: k.agent_id.clone(),
                    }],
                },
            );
            return;
        };
        if task.status.state.is_terminal() {
            return;
        }
        let agent = task.agent;
        let policy = k.kill_policy.clone().or(task.info.kill_policy.clone());
        let grace = policy
            .as_ref()
            .and_then(|p| p.grace_period)
            .map(|g| g.to_std())
            .unwrap_or(self.config.command_kill_grace);
        let killing_state = fw.info.has_capability("TASK_KILLING_STATE");
        let key = (framework.to_owned(), task.executor_id.clone());
        let Some(e) = st.agents[agent].executors.get_mut(&key) else {
            return;
        };
        if e.command_task {
            let first = !e.kill_requested;
            e.kill_requested = true;
            if let Some(p) = e.process.clone() {
                p.signal(libc::SIGTERM);
                self.kill_after(p, grace);
            }
            if first && killing_state {
                // The command executor reports TASK_KILLING to frameworks
                // that understand it.
                let mut s = TaskStatus::new(k.task_id.clone(), TaskState::Killing);
                s.source = Some(Source::Executor);
                s.uuid = Some(self.new_uuid());
                self.status_update(&mut st, agent, framework, s);
            }
        } else if e.queued.iter().any(|t| t.task_id == k.task_id) || e.sub.is_none() {
            e.queued.retain(|t| t.task_id != k.task_id);
            let mut s = TaskStatus::new(k.task_id.clone(), TaskState::Killed);
            s.source = Some(Source::Agent);
            s.reason = Some("REASON_TASK_KILLED_DURING_LAUNCH".into());
            s.message = Some("Killed before delivery to the executor".into());
            s.uuid = Some(self.new_uuid());
            self.status_update(&mut st, agent, framework, s);
        } else {
            let mut ev = ex::Event::bare(ex::EventType::Kill);
            ev.kill = Some(ex::Kill {
                task_id: k.task_id.clone(),
                kill_policy: policy,
            });
            e.send(&ev);
        }
    }

    pub(crate) fn kill_after(&self, process: Arc<dyn LaunchedProcess>, grace: Duration) {
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            process.signal(libc::SIGKILL);
        });
    }

    /// Shuts an executor down: SHUTDOWN event (or SIGTERM for command tasks),
    /// then SIGKILL to its process group after the grace period.
    pub fn shutdown_executor(&self, agent: usize, framework: &str, executor: &str) {
        let mut st = self.lock();
        let Some(a) = st.agents.get_mut(agent) else {
            return;
        };
        let Some(e) = a
            .executors
            .get_mut(&(framework.to_owned(), executor.to_owned()))
        else {
            return;
        };
        e.shutting_down = true;
        e.kill_requested = true;
        let grace = e
            .info
            .shutdown_grace_period
            .map(|g| g.to_std())
            .unwrap_or(self.config.executor_shutdown_grace);
        if e.command_task || !e.send(&ex::Event::bare(ex::EventType::Shutdown)) {
            e.signal(libc::SIGTERM);
        }
        if let Some(p) = e.process.clone() {
            self.kill_after(p, grace);
        }
    }

    pub fn shutdown_call(&self, framework: &str, s: &sch::Shutdown) {
        let agent = self
            .lock()
            .agents
            .iter()
            .position(|a| a.id == s.agent_id.value);
        if let Some(a) = agent {
            self.shutdown_executor(a, framework, &s.executor_id.value);
        }
    }

    pub fn message_to_executor(&self, framework: &str, m: &sch::Message) {
        let st = self.lock();
        let Some(a) = st.agents.iter().find(|a| a.id == m.agent_id.value) else {
            return;
        };
        if let Some(e) = a
            .executors
            .get(&(framework.to_owned(), m.executor_id.value.clone()))
        {
            let mut ev = ex::Event::bare(ex::EventType::Message);
            ev.message = Some(ex::Message {
                data: m.data.clone(),
            });
            if !e.send(&ev) {
                tracing::debug!(executor = %m.executor_id, "framework message dropped: executor not subscribed");
            }
        }
    }

    // ----- executor API (agent side) -----

    pub fn executor_known(
        &self,
        agent: usize,
        framework: &str,
        executor: &str,
    ) -> Result<bool, &'static str> {
        let st = self.lock();
        let a = &st.agents[agent];
        if !a.executors.keys().any(|(f, _)| f == framework) {
            return Err("Framework cannot be found");
        }
        match a
            .executors
            .get(&(framework.to_owned(), executor.to_owned()))
        {
            None => Err("Executor cannot be found"),
            Some(e) => Ok(e.sub.is_some()),
        }
    }

    pub fn executor_subscribe(
        &self,
        agent: usize,
        framework: &str,
        executor: &str,
        sub: &ex::Subscribe,
    ) -> Option<mpsc::UnboundedReceiver<Bytes>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = self.lock();
        let fw_info = st.frameworks.get(framework)?.info.clone();
        let agent_info = st.agents[agent].info();
        // Replay updates the executor never saw acknowledged (dedup by uuid).
        for u in &sub.unacknowledged_updates {
            let dup = u
                .status
                .uuid
                .as_ref()
                .is_none_or(|id| st.agents[agent].seen_uuids.contains(&id.0));
            let known = st
                .frameworks
                .get(framework)
                .and_then(|f| f.tasks.get(&u.status.task_id.value))
                .is_some();
            if !dup && known {
                self.status_update(&mut st, agent, framework, u.status.clone());
            }
        }
        // On re-subscription, tasks delivered to the executor that are still
        // STAGING and that it does not list were lost in transit.
        let lost: Vec<String> = match st.agents[agent]
            .executors
            .get(&(framework.to_owned(), executor.to_owned()))
        {
            Some(e) if e.subscribed_before => e
                .tasks
                .iter()
                .filter(|t| !e.queued.iter().any(|q| &q.task_id.value == *t))
                .filter(|t| {
                    !sub.unacknowledged_tasks
                        .iter()
                        .any(|u| &u.task_id.value == *t)
                })
                .filter(|t| {
                    st.frameworks
                        .get(framework)
                        .and_then(|f| f.tasks.get(*t))
                        .is_some_and(|r| r.status.state == TaskState::Staging)
                })
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        let partition_aware = st
            .frameworks
            .get(framework)
            .is_some_and(Framework::partition_aware);
        for t in lost {
            let state = if partition_aware {
                TaskState::Dropped
            } else {
                TaskState::Lost
            };
            let mut s = TaskStatus::new(Id::new(&t), state);
            s.source = Some(Source::Agent);
            s.reason = Some("REASON_AGENT_RESTARTED".into());
            s.message = Some("Task was not listed by the re-subscribing executor".into());
            s.uuid = Some(self.new_uuid());
            self.status_update(&mut st, agent, framework, s);
        }
        let e = st.agents[agent]
            .executors
            .get_mut(&(framework.to_owned(), executor.to_owned()))?;
        e.subscribed_before = true;
        let mut ev = ex::Event::bare(ex::EventType::Subscribed);
        ev.subscribed = Some(ex::Subscribed {
            executor_info: e.info.clone(),
            framework_info: fw_info,
            agent_info,
            container_id: Some(Id::new(
                e.sandbox
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            )),
        });
        let _ = tx.send(frame(&ev));
        for task in std::mem::take(&mut e.queued) {
            let mut ev = ex::Event::bare(ex::EventType::Launch);
            ev.launch = Some(ex::Launch { task });
            let _ = tx.send(frame(&ev));
        }
        // Every replayed update is now recorded: let the executor forget it.
        for u in &sub.unacknowledged_updates {
            if let Some(uuid) = &u.status.uuid {
                let mut ev = ex::Event::bare(ex::EventType::Acknowledged);
                ev.acknowledged = Some(ex::Acknowledged {
                    task_id: u.status.task_id.clone(),
                    uuid: uuid.clone(),
                });
                let _ = tx.send(frame(&ev));
            }
        }
        if e.shutting_down {
            let _ = tx.send(frame(&ex::Event::bare(ex::EventType::Shutdown)));
        }
        // Agent → executor heartbeats; they stop when this stream is
        // replaced or closed (only a weak sender is kept).
        let weak = tx.downgrade();
        let every = self.config.executor_heartbeat_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                let Some(tx) = weak.upgrade() else { return };
                if tx
                    .send(frame(&ex::Event::bare(ex::EventType::Heartbeat)))
                    .is_err()
                {
                    return;
                }
            }
        });
        e.sub = Some(tx); // replaces (and so closes) any previous stream
        Some(rx)
    }

    pub fn executor_update(
        &self,
        agent: usize,
        framework: &str,
        executor: &str,
        status: TaskStatus,
    ) {
        let mut st = self.lock();
        let uuid = status.uuid.clone();
        let task_id = status.task_id.clone();
        let known = st
            .frameworks
            .get(framework)
            .and_then(|f| f.tasks.get(&task_id.value))
            .is_some();
        if known {
            self.status_update(&mut st, agent, framework, status);
            // Checkpoint before acknowledging, as a Mesos agent does.
            self.persist(&st);
        }
        if let (Some(e), Some(uuid)) = (
            st.agents[agent]
                .executors
                .get(&(framework.to_owned(), executor.to_owned())),
            uuid,
        ) {
            let mut ev = ex::Event::bare(ex::EventType::Acknowledged);
            ev.acknowledged = Some(ex::Acknowledged { task_id, uuid });
            e.send(&ev);
        }
    }

    pub fn executor_message(&self, agent: usize, framework: &str, executor: &str, data: B64) {
        let st = self.lock();
        let Some(fw) = st.frameworks.get(framework) else {
            return;
        };
        let mut ev = sch::Event::bare(sch::EventType::Message);
        ev.message = Some(sch::Message {
            agent_id: Id::new(&st.agents[agent].id),
            executor_id: Id::new(executor),
            data,
        });
        if !fw.send(&ev) {
            tracing::debug!(%framework, "executor message dropped: framework disconnected");
        }
    }

    /// Watches an executor recovered from a checkpoint: it is not our child,
    /// so liveness is polled; it must re-subscribe within the
    /// re-registration timeout or it is destroyed.
    pub fn watch_recovered(
        self: &Arc<Self>,
        agent: usize,
        framework: String,
        executor: String,
        pgid: Option<i32>,
    ) {
        let poll_interval = Duration::from_millis(100);
        let alive = pgid.is_some_and(crate::checkpoint::alive);
        self.lock().live_processes += 1;
        if !alive {
            self.process_exited(agent, &framework, &executor, None);
            return;
        }
        let core = Arc::downgrade(self);
        let deadline = tokio::time::Instant::now() + self.config.executor_reregistration_timeout;
        tokio::spawn(async move {
            let mut checked_registration = false;
            loop {
                tokio::time::sleep(poll_interval).await;
                let Some(core) = core.upgrade() else { return };
                let key = (framework.clone(), executor.clone());
                let subscribed = match core.lock().agents[agent].executors.get(&key) {
                    None => return,
                    Some(e) => e.sub.is_some(),
                };
                if !pgid.is_some_and(crate::checkpoint::alive) {
                    core.process_exited(agent, &framework, &executor, None);
                    return;
                }
                if !checked_registration && tokio::time::Instant::now() >= deadline {
                    checked_registration = true;
                    if !subscribed {
                        tracing::warn!(%framework, %executor, "recovered executor did not re-subscribe; destroying it");
                        if let Some(p) = pgid {
                            process::signal_group(p, libc::SIGKILL);
                        }
                    }
                }
            }
        });
    }
}
