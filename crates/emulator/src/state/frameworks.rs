//! The master's frameworks: SUBSCRIBE, heartbeats, disconnection and
//! failover timeouts, removal, UPDATE_FRAMEWORK, the master's own updates.

use super::*;

impl Core {
    pub fn check_stream(&self, framework_id: &str, stream_id: Option<&str>) -> CallAuth {
        let st = self.lock();
        let Some(fw) = st.frameworks.get(framework_id) else {
            return CallAuth::NotFound;
        };
        let Some(sub) = &fw.sub else {
            return CallAuth::NotSubscribed;
        };
        match stream_id {
            None => CallAuth::MissingStreamId,
            Some(s) if s != sub.stream_id => CallAuth::WrongStreamId,
            Some(_) => CallAuth::Ok,
        }
    }

    pub(crate) fn master_info(&self, st: &State) -> kaon_mesos::types::MasterInfo {
        let ip = match self.master_addr.ip() {
            std::net::IpAddr::V4(v4) => u32::from_ne_bytes(v4.octets()),
            _ => 0,
        };
        kaon_mesos::types::MasterInfo {
            id: st.master_id.clone(),
            ip,
            port: u32::from(self.master_addr.port()),
            pid: Some(format!("master@{}", self.master_addr)),
            hostname: Some(self.config.hostname.clone()),
            version: Some(crate::MESOS_VERSION.into()),
            address: Some(kaon_mesos::types::Address {
                hostname: Some(self.config.hostname.clone()),
                ip: Some(self.master_addr.ip().to_string()),
                port: self.master_addr.port(),
            }),
        }
    }

    /// Validates the semantic parts of SUBSCRIBE that Mesos reports as an
    /// ERROR event on a 200 stream.
    pub(crate) fn subscribe_error(st: &State, info: &FrameworkInfo) -> Option<String> {
        let multi = info.has_capability("MULTI_ROLE");
        if !multi && !info.roles.is_empty() {
            return Some(
                "'FrameworkInfo.roles' is set but the MULTI_ROLE capability is not".into(),
            );
        }
        if multi && info.role.is_some() {
            return Some(
                "'FrameworkInfo.role' must not be set with the MULTI_ROLE capability".into(),
            );
        }
        if let Some(existing) = info.id.as_ref().and_then(|id| st.frameworks.get(&id.value))
            && existing.info.principal != info.principal
        {
            return Some("Changing framework's principal is not allowed".into());
        }
        let mut seen = BTreeSet::new();
        if info.roles.iter().any(|r| !seen.insert(r)) {
            return Some("'FrameworkInfo.roles' contains duplicate entries".into());
        }
        if let Some(t) = info.failover_timeout
            && (!t.is_finite() || t < 0.0)
        {
            return Some(format!("Invalid failover_timeout: {t}"));
        }
        if let Some(id) = &info.id
            && st.completed.contains(&id.value)
        {
            return Some("Framework has been removed".into());
        }
        None
    }

    /// Handles SUBSCRIBE; returns (stream id, event receiver). The first
    /// events (SUBSCRIBED + HEARTBEAT, or a single ERROR) are already queued.
    pub fn subscribe(
        self: &Arc<Self>,
        info: FrameworkInfo,
        suppressed_roles: &[String],
    ) -> (String, mpsc::UnboundedReceiver<Bytes>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stream_id = self.ids.uuid_string();
        let mut st = self.lock();
        if let Some(message) = Self::subscribe_error(&st, &info) {
            tracing::info!(%message, "SUBSCRIBE refused with an ERROR event");
            let mut ev = sch::Event::bare(sch::EventType::Error);
            ev.error = Some(sch::ErrorBody { message });
            let _ = tx.send(frame(&ev));
            return (stream_id, rx); // tx dropped: stream ends after the ERROR
        }
        let id = match &info.id {
            Some(id) if !id.value.is_empty() => id.value.clone(),
            _ => {
                let id = format!("{}-{:04}", st.master_id, st.next_framework);
                st.next_framework += 1;
                id
            }
        };
        let master_info = self.master_info(&st);
        let fw = st
            .frameworks
            .entry(id.clone())
            .or_insert_with(|| Framework {
                id: id.clone(),
                info: info.clone(),
                sub: None,
                epoch: 0,
                suppressed: false,
                filters: BTreeMap::new(),
                tasks: BTreeMap::new(),
            });
        if let Some(old) = fw.sub.take() {
            tracing::info!(framework = %id, "framework failed over to a new subscription");
            let mut ev = sch::Event::bare(sch::EventType::Error);
            ev.error = Some(sch::ErrorBody {
                message: "Framework failed over".into(),
            });
            let _ = old.tx.send(frame(&ev));
        }
        // user and checkpoint cannot change on re-subscription.
        let (user, checkpoint) = (fw.info.user.clone(), fw.info.checkpoint);
        fw.info = info;
        fw.info.user = user;
        fw.info.checkpoint = checkpoint;
        fw.info.id = Some(Id::new(&id));
        fw.epoch += 1;
        // Roles are not modelled separately: any suppressed role suppresses
        // the framework's offers until REVIVE.
        fw.suppressed = !suppressed_roles.is_empty();
        let mut ev = sch::Event::bare(sch::EventType::Subscribed);
        ev.subscribed = Some(sch::Subscribed {
            framework_id: Id::new(&id),
            heartbeat_interval_seconds: Some(self.config.heartbeat_interval.as_secs_f64()),
            master_info: Some(master_info),
        });
        let _ = tx.send(frame(&ev));
        let _ = tx.send(frame(&sch::Event::bare(sch::EventType::Heartbeat)));
        fw.sub = Some(Subscription {
            stream_id: stream_id.clone(),
            tx,
        });
        // Offers made to the previous subscription are gone.
        st.offers.retain(|_, o| o.framework != id);
        // Deliver pending status updates right away.
        let now = Instant::now();
        for agent in st.agents.iter_mut() {
            for ((f, _), stream) in agent.updates.iter_mut() {
                if *f == id {
                    stream.next_retry = now;
                }
            }
        }
        drop(st);
        self.retry_updates();
        self.allocate.notify_one();
        self.spawn_heartbeats(id, stream_id.clone());
        (stream_id, rx)
    }

    pub(crate) fn spawn_heartbeats(self: &Arc<Self>, framework: String, stream_id: String) {
        let core = Arc::downgrade(self);
        let every = self.config.heartbeat_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                let Some(core) = core.upgrade() else { return };
                let st = core.lock();
                let Some(fw) = st.frameworks.get(&framework) else {
                    return;
                };
                match &fw.sub {
                    Some(s) if s.stream_id == stream_id => {
                        if s.tx
                            .send(frame(&sch::Event::bare(sch::EventType::Heartbeat)))
                            .is_err()
                        {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        });
    }

    /// The streaming connection of `stream_id` is gone: mark the framework
    /// disconnected, drop its offers and arm the failover timer.
    pub fn disconnected(self: &Arc<Self>, framework: &str, stream_id: &str) {
        let mut st = self.lock();
        let Some(fw) = st.frameworks.get_mut(framework) else {
            return;
        };
        if fw.sub.as_ref().map(|s| s.stream_id.as_str()) != Some(stream_id) {
            return;
        }
        fw.sub = None;
        fw.epoch += 1;
        let epoch = fw.epoch;
        let timeout = fw.info.failover_timeout.unwrap_or(0.0).clamp(0.0, 1e9);
        tracing::info!(%framework, failover_timeout = timeout, "framework disconnected");
        st.offers.retain(|_, o| o.framework != framework);
        drop(st);
        let core = Arc::downgrade(self);
        let framework = framework.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(timeout)).await;
            let Some(core) = core.upgrade() else { return };
            let expired = {
                let st = core.lock();
                st.frameworks
                    .get(&framework)
                    .is_some_and(|f| f.sub.is_none() && f.epoch == epoch)
            };
            if expired {
                tracing::info!(%framework, "failover timeout expired; removing framework");
                core.remove_framework(&framework);
            }
        });
    }

    /// TEARDOWN or failover timeout: kill everything of the framework and
    /// remember its id as completed.
    pub fn remove_framework(self: &Arc<Self>, framework: &str) {
        let mut st = self.lock();
        let Some(fw) = st.frameworks.remove(framework) else {
            return;
        };
        st.completed.insert(fw.id.clone());
        st.offers.retain(|_, o| o.framework != framework);
        let mut to_shutdown = Vec::new();
        for (i, agent) in st.agents.iter_mut().enumerate() {
            agent.updates.retain(|(f, _), _| f != framework);
            for (f, e) in agent.executors.keys() {
                if f == framework {
                    to_shutdown.push((i, e.clone()));
                }
            }
        }
        drop(st);
        drop(fw); // closes the subscription stream, if any
        for (agent, executor) in to_shutdown {
            self.shutdown_executor(agent, framework, &executor);
        }
        self.allocate.notify_one();
    }

    /// UPDATE_FRAMEWORK: apply a new FrameworkInfo (the principal cannot
    /// change; user and checkpoint changes are ignored, as on re-subscribe).
    pub fn update_framework(
        &self,
        framework: &str,
        u: &sch::UpdateFramework,
    ) -> Result<(), String> {
        let mut st = self.lock();
        let Some(fw) = st.frameworks.get_mut(framework) else {
            return Err("Framework cannot be found".into());
        };
        if fw.info.principal != u.framework_info.principal {
            return Err("Changing framework's principal is not allowed".into());
        }
        let (user, checkpoint, id) = (fw.info.user.clone(), fw.info.checkpoint, fw.info.id.clone());
        fw.info = u.framework_info.clone();
        fw.info.user = user;
        fw.info.checkpoint = checkpoint;
        fw.info.id = id;
        fw.suppressed = !u.suppressed_roles.is_empty();
        drop(st);
        self.allocate.notify_one();
        Ok(())
    }

    pub(crate) fn master_update(
        &self,
        fw: &Framework,
        task_id: &Id,
        state: TaskState,
        reason: &str,
        message: String,
        agent_id: Option<Id>,
    ) {
        let mut status = TaskStatus::new(task_id.clone(), state);
        status.source = Some(Source::Master);
        status.reason = Some(reason.into());
        status.message = Some(message);
        status.agent_id = agent_id;
        status.timestamp = Some(self.now_secs());
        let mut ev = sch::Event::bare(sch::EventType::Update);
        ev.update = Some(sch::Update { status });
        fw.send(&ev);
    }
}
