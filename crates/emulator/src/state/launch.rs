//! The agent's launches: executor environment and sandbox, starting the
//! process outside the lock, registration timeout, and what an exit means
//! (the container destroyed, its tasks reported).

use super::*;

impl Core {
    pub(crate) fn executor_env(
        &self,
        st: &State,
        framework: &str,
        agent: usize,
        executor_id: &str,
        sandbox: &std::path::Path,
        command_executor: bool,
    ) -> Vec<(String, String)> {
        let a = &st.agents[agent];
        let checkpoint = st
            .frameworks
            .get(framework)
            .and_then(|f| f.info.checkpoint)
            .unwrap_or(false);
        let dir = sandbox.display().to_string();
        let mut env = vec![
            ("MESOS_FRAMEWORK_ID".into(), framework.to_owned()),
            ("MESOS_EXECUTOR_ID".into(), executor_id.to_owned()),
            ("MESOS_AGENT_ENDPOINT".into(), a.addr.to_string()),
            ("MESOS_DIRECTORY".into(), dir.clone()),
            ("MESOS_SANDBOX".into(), dir),
            ("MESOS_SLAVE_ID".into(), a.id.clone()),
            ("MESOS_SLAVE_PID".into(), format!("slave(1)@{}", a.addr)),
            (
                "MESOS_CHECKPOINT".into(),
                if checkpoint { "1" } else { "0" }.into(),
            ),
            (
                "MESOS_HTTP_COMMAND_EXECUTOR".into(),
                if command_executor { "1" } else { "0" }.into(),
            ),
            (
                "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD".into(),
                stout_duration(self.config.executor_shutdown_grace),
            ),
            ("LIBPROCESS_PORT".into(), "0".into()),
        ];
        if checkpoint {
            env.push((
                "MESOS_RECOVERY_TIMEOUT".into(),
                stout_duration(Duration::from_secs(15 * 60)),
            ));
            env.push((
                "MESOS_SUBSCRIPTION_BACKOFF_MAX".into(),
                stout_duration(
                    (self.config.executor_reregistration_timeout / 2).min(Duration::from_secs(2)),
                ),
            ));
        }
        env
    }

    pub(crate) fn sandbox(
        &self,
        st: &State,
        framework: &str,
        agent: usize,
        executor_id: &str,
    ) -> PathBuf {
        self.config
            .work_dir
            .join("slaves")
            .join(&st.agents[agent].id)
            .join("frameworks")
            .join(framework)
            .join("executors")
            .join(executor_id)
            .join("runs")
            .join(self.ids.uuid_string())
    }

    /// Replaces a bare `kaon-executor` command with the configured path.
    pub(crate) fn resolve_executor(&self, mut cmd: CommandInfo) -> CommandInfo {
        let path = self.executor_path.display().to_string();
        if let Some(v) = &cmd.value {
            if v == "kaon-executor" {
                cmd.value = Some(path);
            } else if let Some(rest) = v.strip_prefix("kaon-executor ")
                && cmd.shell.unwrap_or(true)
            {
                cmd.value = Some(format!("{path} {rest}"));
            }
        }
        cmd
    }

    pub(crate) fn launch(
        self: &Arc<Self>,
        st: &mut State,
        framework: &str,
        agent: usize,
        task: TaskInfo,
        need: Resources,
    ) -> Option<SpawnJob> {
        let task_id = task.task_id.value.clone();
        let executor_id = task
            .executor
            .as_ref()
            .map(|e| e.executor_id.value.clone())
            .unwrap_or_else(|| task_id.clone());
        st.agents[agent].used.add(&need);
        let mut status = TaskStatus::new(task.task_id.clone(), TaskState::Staging);
        status.agent_id = Some(Id::new(&st.agents[agent].id));
        status.executor_id = Some(Id::new(&executor_id));
        let mut task_resources = Resources::from_mesos(&task.resources);
        let key = (framework.to_owned(), executor_id.clone());
        let existing = st.agents[agent].executors.contains_key(&key);
        if let Some(fw) = st.frameworks.get_mut(framework) {
            if !existing && task.executor.is_none() {
                task_resources = need.clone();
            }
            fw.tasks.insert(
                task_id.clone(),
                TaskRec {
                    info: task.clone(),
                    agent,
                    executor_id: executor_id.clone(),
                    status,
                    resources: task_resources,
                },
            );
        }
        if existing {
            let e = st.agents[agent].executors.get_mut(&key).expect("checked");
            e.tasks.insert(task_id);
            if e.sub.is_some() {
                let mut ev = ex::Event::bare(ex::EventType::Launch);
                ev.launch = Some(ex::Launch { task });
                e.send(&ev);
            } else {
                e.queued.push(task);
            }
            return None;
        }
        let sandbox = self.sandbox(st, framework, agent, &executor_id);
        let survive = self.config.checkpoint
            && st
                .frameworks
                .get(framework)
                .is_some_and(|f| f.info.checkpoint == Some(true));
        // Command tasks of checkpointing frameworks run under kaon-executor
        // acting as Mesos's command executor, so they can be recovered (and
        // report their exit status) after an emulator restart.
        let via_executor = survive && task.executor.is_none();
        let (command, info, command_task, exec_resources) = match &task.executor {
            Some(e) => {
                let mut info = e.clone();
                info.framework_id = Some(Id::new(framework));
                let cmd = self.resolve_executor(e.command.clone().unwrap_or_default());
                (cmd, info, false, Resources::from_mesos(&e.resources))
            }
            None => {
                let info = ExecutorInfo {
                    kind: None,
                    executor_id: Id::new(&executor_id),
                    framework_id: Some(Id::new(framework)),
                    command: task.command.clone(),
                    resources: Vec::new(),
                    name: Some(format!("Command Executor (Task: {task_id})")),
                    data: None,
                    shutdown_grace_period: None,
                };
                if via_executor {
                    let cmd = CommandInfo {
                        shell: Some(false),
                        value: Some(self.executor_path.display().to_string()),
                        arguments: vec!["kaon-executor".into()],
                        ..Default::default()
                    };
                    let info = ExecutorInfo {
                        command: Some(cmd.clone()),
                        ..info
                    };
                    (cmd, info, false, Resources::default())
                } else {
                    (
                        task.command.clone().unwrap_or_default(),
                        info,
                        true,
                        Resources::default(),
                    )
                }
            }
        };
        let env = self.executor_env(
            st,
            framework,
            agent,
            &executor_id,
            &sandbox,
            task.executor.is_none(),
        );
        let mut rec = ExecRec {
            info,
            command_task,
            http_command_executor: via_executor,
            process: None,
            sub: None,
            queued: Vec::new(),
            tasks: BTreeSet::from([task_id.clone()]),
            completed: Default::default(),
            resources: exec_resources,
            sandbox: sandbox.clone(),
            kill_requested: false,
            shutting_down: false,
            subscribed_before: false,
        };
        if !command_task {
            rec.queued.push(task.clone());
        }
        // Registered now (so more tasks for this executor queue up behind
        // it); the fork/exec happens in `run_spawn`, outside the lock.
        st.agents[agent].executors.insert(key, rec);
        let kind = if command_task {
            LaunchKind::CommandTask
        } else if via_executor {
            LaunchKind::CommandExecutor
        } else {
            LaunchKind::Executor
        };
        Some(SpawnJob {
            agent,
            framework: framework.to_owned(),
            executor_id,
            task_id: task.task_id.clone(),
            task,
            kind,
            agent_id: st.agents[agent].id.clone(),
            command,
            env,
            sandbox,
            survive,
            command_task,
        })
    }

    /// Starts the process of a launch prepared under the lock. Runs without
    /// the state lock held, so acknowledgements and other calls interleave
    /// with a large ACCEPT.
    pub(crate) fn run_spawn(self: &Arc<Self>, job: SpawnJob) {
        let request = LaunchRequest {
            kind: job.kind,
            agent: job.agent,
            agent_id: job.agent_id.clone(),
            framework_id: job.framework.clone(),
            executor_id: job.executor_id.clone(),
            task: job.task.clone(),
            command: job.command.clone(),
            env: job.env.clone(),
            sandbox: job.sandbox.clone(),
            die_with_parent: !job.survive,
            agent_router: crate::http::agent_router(self.clone(), job.agent),
            ids: self.ids.clone(),
            clock: self.config.clock.clone(),
        };
        let spawned = self.config.launcher.launch(request);
        let mut st = self.lock();
        let key = (job.framework.clone(), job.executor_id.clone());
        match spawned {
            Ok(launched) => {
                let process = launched.process;
                st.live_processes += 1;
                self.watch_exit(
                    launched.exit,
                    job.agent,
                    job.framework.clone(),
                    job.executor_id.clone(),
                );
                let Some(e) = st.agents[job.agent].executors.get_mut(&key) else {
                    // Removed while starting (teardown, shutdown): stop it.
                    process.signal(libc::SIGKILL);
                    return;
                };
                e.process = Some(process.clone());
                if e.kill_requested || e.shutting_down {
                    // A KILL or SHUTDOWN arrived while the process started.
                    process.signal(libc::SIGTERM);
                    self.kill_after(process, self.config.command_kill_grace);
                }
                if job.command_task {
                    for state in [TaskState::Starting, TaskState::Running] {
                        let mut s = TaskStatus::new(job.task_id.clone(), state);
                        s.source = Some(Source::Executor);
                        s.uuid = Some(self.new_uuid());
                        self.status_update(&mut st, job.agent, &job.framework, s);
                    }
                } else {
                    self.arm_registration_timeout(
                        job.agent,
                        job.framework.clone(),
                        job.executor_id.clone(),
                    );
                }
            }
            Err(err) => {
                tracing::warn!(%err, task = %job.task_id, "task launch failed");
                let tasks: Vec<String> = st.agents[job.agent]
                    .executors
                    .get(&key)
                    .map(|e| e.tasks.iter().cloned().collect())
                    .unwrap_or_default();
                for t in tasks {
                    let mut s = TaskStatus::new(Id::new(&t), TaskState::Failed);
                    s.source = Some(Source::Agent);
                    s.reason = Some("REASON_CONTAINER_LAUNCH_FAILED".into());
                    s.message = Some(err.to_string());
                    s.uuid = Some(self.new_uuid());
                    self.status_update(&mut st, job.agent, &job.framework, s);
                }
                if let Some(e) = st.agents[job.agent].executors.remove(&key) {
                    st.agents[job.agent].used.subtract(&e.resources);
                    st.agents[job.agent].executor_ended(&key.0, &key.1, &e);
                }
            }
        }
    }

    pub(crate) fn arm_registration_timeout(
        self: &Arc<Self>,
        agent: usize,
        framework: String,
        executor: String,
    ) {
        let core = Arc::downgrade(self);
        let timeout = self.config.executor_registration_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let Some(core) = core.upgrade() else { return };
            let mut st = core.lock();
            let key = (framework.clone(), executor.clone());
            let Some(e) = st.agents[agent].executors.get(&key) else {
                return;
            };
            if e.sub.is_some() {
                return;
            }
            tracing::warn!(%framework, %executor, "executor did not subscribe in time; destroying it");
            let (process, tasks): (Option<Arc<dyn LaunchedProcess>>, Vec<String>) =
                (e.process.clone(), e.tasks.iter().cloned().collect());
            if let Some(e) = st.agents[agent].executors.get_mut(&key) {
                e.shutting_down = true;
            }
            for t in tasks {
                let mut s = TaskStatus::new(Id::new(&t), TaskState::Failed);
                s.source = Some(Source::Agent);
                s.reason = Some("REASON_EXECUTOR_REGISTRATION_TIMEOUT".into());
                s.message =
                    Some("Executor did not register within the registration timeout".into());
                s.uuid = Some(core.new_uuid());
                core.status_update(&mut st, agent, &framework, s);
            }
            if let Some(p) = process {
                p.signal(libc::SIGKILL);
            }
        });
    }

    pub(crate) fn watch_exit(
        self: &Arc<Self>,
        exit: futures_util::future::BoxFuture<'static, Option<std::process::ExitStatus>>,
        agent: usize,
        framework: String,
        executor: String,
    ) {
        let core = Arc::downgrade(self);
        tokio::spawn(async move {
            let status = exit.await;
            let Some(core) = core.upgrade() else { return };
            core.process_exited(agent, &framework, &executor, status);
        });
    }

    pub(crate) fn process_exited(
        self: &Arc<Self>,
        agent: usize,
        framework: &str,
        executor: &str,
        status: Option<std::process::ExitStatus>,
    ) {
        use std::os::unix::process::ExitStatusExt;
        let mut st = self.lock();
        st.live_processes = st.live_processes.saturating_sub(1);
        self.processes_changed.notify_waiters();
        let key = (framework.to_owned(), executor.to_owned());
        let Some(e) = st.agents[agent].executors.remove(&key) else {
            return;
        };
        st.agents[agent].executor_ended(&key.0, &key.1, &e);
        // The container is destroyed: whatever the executor started dies
        // with it, before its tasks are reported ended (a retry must never
        // run beside a step of the dead executor).
        if let Some(p) = &e.process {
            p.destroy();
        }
        st.agents[agent].used.subtract(&e.resources);
        let code = status.and_then(|s| s.code());
        let signal = status.and_then(|s| s.signal());
        let raw = status.map(|s| s.into_raw());
        tracing::debug!(%framework, %executor, ?code, ?signal, "process exited");
        let live: Vec<String> = e
            .tasks
            .iter()
            .filter(|t| {
                st.frameworks
                    .get(framework)
                    .and_then(|f| f.tasks.get(*t))
                    .is_some_and(|t| !t.status.state.is_terminal())
            })
            .cloned()
            .collect();
        for t in live {
            let mut s;
            if e.command_task {
                let (state, message) = if e.kill_requested {
                    (
                        TaskState::Killed,
                        "Command terminated by a kill request".to_string(),
                    )
                } else {
                    match (code, signal) {
                        (Some(0), _) => {
                            (TaskState::Finished, "Command exited with status 0".into())
                        }
                        (Some(c), _) => {
                            (TaskState::Failed, format!("Command exited with status {c}"))
                        }
                        (None, Some(sig)) => (
                            TaskState::Failed,
                            format!("Command terminated with signal {sig}"),
                        ),
                        _ => (
                            TaskState::Failed,
                            "Command ended with an unknown status".into(),
                        ),
                    }
                };
                s = TaskStatus::new(Id::new(&t), state);
                s.source = Some(Source::Executor);
                s.message = Some(message);
                if state == TaskState::Failed {
                    s.reason = Some("REASON_COMMAND_EXECUTOR_FAILED".into());
                }
            } else {
                s = TaskStatus::new(Id::new(&t), TaskState::Failed);
                s.source = Some(Source::Agent);
                s.reason = Some("REASON_EXECUTOR_TERMINATED".into());
                s.message = Some("Executor terminated".into());
            }
            s.uuid = Some(self.new_uuid());
            self.status_update(&mut st, agent, framework, s);
        }
        if !e.command_task
            && !e.http_command_executor
            && let Some(fw) = st.frameworks.get(framework)
        {
            let mut ev = sch::Event::bare(sch::EventType::Failure);
            ev.failure = Some(sch::Failure {
                agent_id: Some(Id::new(&st.agents[agent].id)),
                executor_id: Some(Id::new(executor)),
                status: raw,
            });
            fw.send(&ev);
        }
        drop(st);
        self.allocate.notify_one();
    }
}
