//! The master's allocator: offers from free agent resources, refuse
//! filters, DECLINE, REVIVE and SUPPRESS.

use super::*;

impl Core {
    /// One allocation round: offer every agent's unused, unoffered resources
    /// to a subscribed, unsuppressed framework whose filters allow it.
    pub fn allocate_once(&self) {
        let mut st = self.lock();
        if st.shutting_down {
            return;
        }
        let now = Instant::now();
        let mut events: BTreeMap<String, Vec<Offer>> = BTreeMap::new();
        for a in 0..st.agents.len() {
            if st.agents[a].lost {
                continue;
            }
            let mut avail = st.agents[a].total.clone();
            avail.subtract(&st.agents[a].used);
            for o in st.offers.values().filter(|o| o.agent == a) {
                avail.subtract(&o.resources);
            }
            if avail.scalar("cpus") < MIN_CPUS && avail.scalar("mem") < MIN_MEM_MB {
                continue;
            }
            let target = st.frameworks.values().find(|fw| {
                fw.sub.is_some()
                    && !fw.suppressed
                    && !fw.filters.get(&a).is_some_and(|fs| {
                        fs.iter()
                            .any(|(refused, until)| *until > now && refused.contains(&avail))
                    })
            });
            let Some(fw) = target else { continue };
            let fw_id = fw.id.clone();
            // MULTI_ROLE frameworks see which role each offer is for.
            let allocation =
                fw.info
                    .has_capability("MULTI_ROLE")
                    .then(|| kaon_mesos::types::AllocationInfo {
                        role: Some(fw.info.roles.first().cloned().unwrap_or_else(|| "*".into())),
                    });
            let executor_ids: Vec<Id> = st.agents[a]
                .executors
                .iter()
                .filter(|((f, _), e)| *f == fw_id && !e.command_task && !e.http_command_executor)
                .map(|((_, e), _)| Id::new(e))
                .collect();
            let offer_id = format!("{}-O{}", st.master_id, st.next_offer);
            st.next_offer += 1;
            let agent = &st.agents[a];
            let offer = Offer {
                id: Id::new(&offer_id),
                framework_id: Id::new(&fw_id),
                agent_id: Id::new(&agent.id),
                hostname: agent.hostname.clone(),
                url: Some(kaon_mesos::types::Url {
                    scheme: "http".into(),
                    address: kaon_mesos::types::Address {
                        hostname: Some(agent.hostname.clone()),
                        ip: Some(agent.addr.ip().to_string()),
                        port: agent.addr.port(),
                    },
                    path: Some("/slave(1)".into()),
                }),
                resources: avail
                    .to_mesos()
                    .into_iter()
                    .map(|mut r| {
                        r.allocation_info = allocation.clone();
                        r
                    })
                    .collect(),
                attributes: agent.attributes.clone(),
                executor_ids,
                allocation_info: allocation,
            };
            st.offers.insert(
                offer_id,
                OutstandingOffer {
                    framework: fw_id.clone(),
                    agent: a,
                    resources: avail,
                },
            );
            events.entry(fw_id).or_default().push(offer);
        }
        for (fw_id, offers) in events {
            if let Some(fw) = st.frameworks.get(&fw_id) {
                let mut ev = sch::Event::bare(sch::EventType::Offers);
                ev.offers = Some(sch::Offers { offers });
                fw.send(&ev);
            }
        }
    }

    pub(crate) fn add_filter(
        st: &mut State,
        framework: &str,
        agent: usize,
        refused: Resources,
        filters: Option<&kaon_mesos::types::Filters>,
    ) {
        let secs = filters
            .and_then(|f| f.refuse_seconds)
            .unwrap_or(REFUSE_SECONDS_DEFAULT);
        let secs = if secs.is_finite() {
            secs.clamp(0.0, REFUSE_SECONDS_MAX)
        } else {
            REFUSE_SECONDS_DEFAULT
        };
        if secs <= 0.0 || refused.is_empty() {
            return;
        }
        if let Some(fw) = st.frameworks.get_mut(framework) {
            let now = Instant::now();
            let list = fw.filters.entry(agent).or_default();
            list.retain(|(_, until)| *until > now);
            list.push((refused, now + Duration::from_secs_f64(secs)));
        }
    }

    pub fn decline(&self, framework: &str, d: &sch::Decline) {
        let mut st = self.lock();
        for id in &d.offer_ids {
            if st
                .offers
                .get(&id.value)
                .is_some_and(|o| o.framework == framework)
                && let Some(o) = st.offers.remove(&id.value)
            {
                Self::add_filter(&mut st, framework, o.agent, o.resources, d.filters.as_ref());
            }
        }
        drop(st);
        self.allocate.notify_one();
    }

    pub fn revive(&self, framework: &str) {
        let mut st = self.lock();
        if let Some(fw) = st.frameworks.get_mut(framework) {
            fw.suppressed = false;
            fw.filters.clear();
        }
        drop(st);
        self.allocate.notify_one();
    }

    pub fn suppress(&self, framework: &str) {
        if let Some(fw) = self.lock().frameworks.get_mut(framework) {
            fw.suppressed = true;
        }
    }
}
