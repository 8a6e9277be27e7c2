//! Faults the tests inject (agent loss, stream drops, master failover,
//! redelivery, executor signals, agent restarts) and the shutdown.

use super::*;

impl Core {
    /// Simulates the loss of an agent's machine: its processes are killed,
    /// its outstanding offers are rescinded (RESCIND), its non-terminal
    /// tasks become TASK_LOST (TASK_UNREACHABLE for partition-aware
    /// frameworks; master-generated, no uuid, reason REASON_AGENT_REMOVED)
    /// and every subscribed framework gets FAILURE with the agent id.
    pub fn lose_agent(&self, agent: usize) {
        let mut st = self.lock();
        let Some(a) = st.agents.get_mut(agent) else {
            return;
        };
        if a.lost {
            return;
        }
        a.lost = true;
        a.recovering = true; // the executor API stops answering normally
        let agent_id = Id::new(&a.id);
        for e in std::mem::take(&mut a.executors).into_values() {
            e.signal(libc::SIGKILL);
        }
        a.updates.clear();
        a.used = Resources::default();
        let rescinded: Vec<(String, String)> = st
            .offers
            .iter()
            .filter(|(_, o)| o.agent == agent)
            .map(|(id, o)| (id.clone(), o.framework.clone()))
            .collect();
        for (offer_id, framework) in rescinded {
            st.offers.remove(&offer_id);
            if let Some(fw) = st.frameworks.get(&framework) {
                let mut ev = sch::Event::bare(sch::EventType::Rescind);
                ev.rescind = Some(sch::Rescind {
                    offer_id: Id::new(&offer_id),
                });
                fw.send(&ev);
            }
        }
        for fw in st.frameworks.values_mut() {
            let state = if fw.partition_aware() {
                TaskState::Unreachable
            } else {
                TaskState::Lost
            };
            let mut updates = Vec::new();
            for t in fw
                .tasks
                .values_mut()
                .filter(|t| t.agent == agent && !t.status.state.is_terminal())
            {
                let mut s = TaskStatus::new(t.status.task_id.clone(), state);
                s.source = Some(Source::Master);
                s.reason = Some("REASON_AGENT_REMOVED".into());
                s.message = Some("Agent was lost".into());
                s.agent_id = Some(agent_id.clone());
                s.executor_id = Some(Id::new(&t.executor_id));
                s.timestamp = Some(self.now_secs());
                t.status = s.clone();
                updates.push(s);
            }
            for status in updates {
                let mut ev = sch::Event::bare(sch::EventType::Update);
                ev.update = Some(sch::Update { status });
                fw.send(&ev);
            }
            let mut ev = sch::Event::bare(sch::EventType::Failure);
            ev.failure = Some(sch::Failure {
                agent_id: Some(agent_id.clone()),
                executor_id: None,
                status: None,
            });
            fw.send(&ev);
        }
    }

    /// Breaks `framework`'s subscription stream as a broken TCP connection
    /// would: the stream ends (no ERROR event) and the master handles the
    /// disconnection as usual (offers dropped, failover timer armed).
    /// Returns whether the framework was subscribed.
    pub fn drop_subscription(self: &Arc<Self>, framework: &str) -> bool {
        let stream_id = self
            .lock()
            .frameworks
            .get(framework)
            .and_then(|f| f.sub.as_ref().map(|s| s.stream_id.clone()));
        match stream_id {
            Some(sid) => {
                self.disconnected(framework, &sid);
                true
            }
            None => false,
        }
    }

    /// Simulates a master failover in place: a new master (new master id,
    /// fresh offer and framework counters) takes over at the same address.
    /// Every scheduler stream ends without an ERROR, outstanding offers,
    /// refuse filters and suppression are gone, frameworks are disconnected
    /// with no failover timer (it does not survive a master failover,
    /// MESOS-4659). Agents keep their tasks, executors and unacknowledged
    /// status updates; a re-SUBSCRIBE with the framework id gets them again.
    pub fn master_failover(&self) {
        let mut st = self.lock();
        st.master_id = self.ids.uuid_string();
        st.next_offer = 0;
        st.next_framework = 0;
        st.offers.clear();
        for fw in st.frameworks.values_mut() {
            // Dropping the sender ends the stream; the stream's own
            // disconnection hook then finds no subscription and does nothing.
            fw.sub = None;
            fw.epoch += 1; // disarms pending failover timers
            fw.filters.clear();
            fw.suppressed = false;
        }
        tracing::info!(master_id = %st.master_id, "simulated master failover");
    }

    /// Sends every in-flight (unacknowledged head) status update again now,
    /// as a retry would, to subscribed frameworks; the retry schedule is
    /// left alone. Updates queued behind an unacknowledged one stay queued.
    /// Returns how many were sent.
    pub fn redeliver_updates(&self) -> usize {
        let st = self.lock();
        let mut sent = 0;
        for agent in &st.agents {
            for ((f, _), stream) in &agent.updates {
                let (Some(head), Some(fw)) = (stream.queue.front(), st.frameworks.get(f)) else {
                    continue;
                };
                let mut ev = sch::Event::bare(sch::EventType::Update);
                ev.update = Some(sch::Update {
                    status: head.clone(),
                });
                if fw.send(&ev) {
                    sent += 1;
                }
            }
        }
        sent
    }

    /// Status updates the agents hold that the scheduler has not
    /// acknowledged (in flight or queued behind one).
    pub fn pending_updates(&self) -> usize {
        self.lock()
            .agents
            .iter()
            .flat_map(|a| a.updates.values())
            .map(|s| s.queue.len())
            .sum()
    }

    /// Sends `signal` to a launched executor (or command task) as `kill`
    /// would. Returns whether it was running.
    pub fn signal_executor(
        &self,
        agent: usize,
        framework: &str,
        executor: &str,
        signal: i32,
    ) -> bool {
        let process = self.lock().agents.get(agent).and_then(|a| {
            a.executors
                .get(&(framework.to_owned(), executor.to_owned()))
                .and_then(|e| e.process.clone())
        });
        match process {
            Some(p) => {
                p.signal(signal);
                true
            }
            None => false,
        }
    }

    /// Simulates an agent restart: executor streams close and the executor
    /// API answers 503 until [`Core::finish_agent_recovery`].
    pub fn restart_agent(&self, agent: usize) {
        let mut st = self.lock();
        if let Some(a) = st.agents.get_mut(agent) {
            a.recovering = true;
            for e in a.executors.values_mut() {
                e.sub = None;
            }
        }
    }

    /// Ends a simulated agent restart.
    pub fn finish_agent_recovery(&self, agent: usize) {
        if let Some(a) = self.lock().agents.get_mut(agent) {
            a.recovering = false;
        }
    }

    /// Kills every process group and waits (bounded) until all were reaped.
    pub async fn shutdown_all(&self, wait_max: Duration) {
        let processes: Vec<Arc<dyn LaunchedProcess>> = {
            let mut st = self.lock();
            st.shutting_down = true;
            st.offers.clear();
            for fw in st.frameworks.values_mut() {
                fw.sub = None;
            }
            for a in st.agents.iter_mut() {
                for e in a.executors.values_mut() {
                    e.sub = None;
                }
            }
            st.agents
                .iter()
                .flat_map(|a| a.executors.values().filter_map(|e| e.process.clone()))
                .collect()
        };
        for p in &processes {
            p.signal(libc::SIGKILL);
        }
        let deadline = tokio::time::Instant::now() + wait_max;
        loop {
            let waiter = self.processes_changed.notified();
            if self.lock().live_processes == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, waiter).await.is_err() {
                tracing::warn!("emulator shutdown: some processes were not reaped in time");
                return;
            }
        }
    }
}
