//! The master's ACCEPT: offers checked, tasks validated as Mesos 1.11
//! validates them (TASK_ERROR with its words), launches handed to agents.

use super::*;

impl Core {
    /// Validates a task against Mesos's rules; `Err` is the TASK_ERROR text.
    pub(crate) fn validate_task(
        st: &State,
        framework: &str,
        agent: usize,
        task: &TaskInfo,
    ) -> Result<(), String> {
        if task.command.is_some() == task.executor.is_some() {
            return Err("Task should have at least one (but not both) of CommandInfo or ExecutorInfo present".into());
        }
        if task.agent_id.value != st.agents[agent].id {
            return Err(format!(
                "Task uses agent {} but the offer is for agent {}",
                task.agent_id, st.agents[agent].id
            ));
        }
        if task.resources.is_empty() {
            return Err("Task uses no resources".into());
        }
        let fw = &st.frameworks[framework];
        if fw
            .tasks
            .get(&task.task_id.value)
            .is_some_and(|t| !t.status.state.is_terminal())
        {
            return Err(format!("Task has duplicate ID: {}", task.task_id));
        }
        if let Some(e) = &task.executor {
            if e.command.is_none() {
                return Err("Executor must have a CommandInfo".into());
            }
            if let Some(kind) = e.kind
                && kind != kaon_mesos::types::ExecutorType::Custom
            {
                return Err("Executor type must be CUSTOM for LAUNCH".into());
            }
            if let Some(existing) = st.agents[agent]
                .executors
                .get(&(framework.to_owned(), e.executor_id.value.clone()))
            {
                let mut ours = e.clone();
                ours.framework_id = Some(Id::new(framework));
                if existing.info != ours {
                    return Err(format!(
                        "ExecutorInfo for executor {} differs from the running one",
                        e.executor_id
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn accept(self: &Arc<Self>, framework: &str, a: &sch::Accept) {
        let mut st = self.lock();
        // Tasks to launch, with a refusal (reason, message) for operations
        // the emulator rejects as Mesos would, or does not support.
        let mut tasks: Vec<(TaskInfo, Option<(&str, String)>)> = Vec::new();
        for op in &a.operations {
            match op.kind {
                sch::OperationType::Launch => {
                    let refusal = op.id.as_ref().map(|_| {
                        (
                            "REASON_TASK_INVALID",
                            "LAUNCH operations must not set an operation id".to_string(),
                        )
                    });
                    for t in op.launch.iter().flat_map(|l| l.task_infos.iter()) {
                        tasks.push((t.clone(), refusal.clone()));
                    }
                }
                sch::OperationType::LaunchGroup => {
                    for t in op
                        .launch_group
                        .iter()
                        .flat_map(|g| g.task_group.tasks.iter())
                    {
                        tasks.push((
                            t.clone(),
                            Some((
                                "REASON_TASK_GROUP_INVALID",
                                "LAUNCH_GROUP is not supported by the kaon Mesos emulator".into(),
                            )),
                        ));
                    }
                }
                other => {
                    tracing::info!(operation = ?other, "offer operation not emulated; ignored")
                }
            }
        }
        let mut seen = BTreeSet::new();
        let mut agent = None;
        let mut invalid = a
            .offer_ids
            .is_empty()
            .then(|| "No offers given".to_string());
        for id in &a.offer_ids {
            match st.offers.get(&id.value) {
                Some(o) if o.framework == framework && seen.insert(id.value.clone()) => {
                    if agent.is_some_and(|x| x != o.agent) {
                        invalid = Some("Aggregated offers must belong to one agent".into());
                    }
                    agent = Some(o.agent);
                }
                _ => invalid = Some(format!("Offer {id} is no longer valid")),
            }
        }
        let mut pool = Resources::default();
        for id in &seen {
            if let Some(o) = st.offers.remove(id) {
                pool.add(&o.resources);
            }
        }
        let Some(fw) = st.frameworks.get(framework) else {
            return;
        };
        if invalid.is_some() || agent.is_none() {
            let message = invalid.unwrap_or_else(|| "Invalid offers".into());
            let state = if fw.partition_aware() {
                TaskState::Dropped
            } else {
                TaskState::Lost
            };
            for (t, _) in &tasks {
                self.master_update(
                    fw,
                    &t.task_id,
                    state,
                    "REASON_INVALID_OFFERS",
                    message.clone(),
                    None,
                );
            }
            drop(st);
            self.allocate.notify_one();
            return;
        }
        let agent = agent.unwrap_or(0);
        let mut launches = Vec::new();
        for (task, refusal) in tasks {
            let fw = &st.frameworks[framework];
            if let Some((reason, message)) = refusal {
                self.master_update(
                    fw,
                    &task.task_id,
                    TaskState::Error,
                    reason,
                    message,
                    Some(task.agent_id.clone()),
                );
                continue;
            }
            if let Err(message) = Self::validate_task(&st, framework, agent, &task) {
                self.master_update(
                    fw,
                    &task.task_id,
                    TaskState::Error,
                    "REASON_TASK_INVALID",
                    message,
                    Some(task.agent_id.clone()),
                );
                continue;
            }
            let mut need = Resources::from_mesos(&task.resources);
            let new_executor = task.executor.as_ref().is_some_and(|e| {
                !st.agents[agent]
                    .executors
                    .contains_key(&(framework.to_owned(), e.executor_id.value.clone()))
                    && !launches.iter().any(|(t, _): &(TaskInfo, Resources)| {
                        t.executor.as_ref().map(|x| &x.executor_id) == Some(&e.executor_id)
                    })
            });
            if new_executor && let Some(e) = &task.executor {
                need.add(&Resources::from_mesos(&e.resources));
            }
            if !pool.contains(&need) {
                self.master_update(
                    fw,
                    &task.task_id,
                    TaskState::Error,
                    "REASON_TASK_INVALID",
                    // Mesos 1.11's wording (master/validation.cpp,
                    // validateResourceUsage); frameworks match on it.
                    format!(
                        "Total resources {need} required by task and its executor is more than available {pool}"
                    ),
                    Some(task.agent_id.clone()),
                );
                continue;
            }
            pool.subtract(&need);
            launches.push((task, need));
        }
        Self::add_filter(&mut st, framework, agent, pool, a.filters.as_ref());
        let jobs: Vec<SpawnJob> = launches
            .into_iter()
            .filter_map(|(task, need)| self.launch(&mut st, framework, agent, task, need))
            .collect();
        drop(st);
        for job in jobs {
            self.run_spawn(job);
        }
        self.allocate.notify_one();
    }
}
