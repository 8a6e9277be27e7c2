//! Offer matching: a pure function from ready tasks and current offers to a
//! launch plan and the offers to decline.
//!
//! First-fit in task order (callers pass tasks by priority) over offers
//! sorted by offer id, packing as many tasks per offer as fit. Being pure and
//! deterministic, it can be replayed from kaon's event log and tested with
//! properties: it never over-commits an offer, always respects constraints,
//! and gives the same plan for the same inputs in any offer order.

use crate::resources::Resources;
use crate::types::{Id, Offer};
use std::collections::BTreeMap;

/// A placement constraint on the agent's attributes or host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Constraint {
    /// Agent attribute `name` must have text value `value`.
    AttributeEquals {
        /// Attribute name.
        name: String,
        /// Required value.
        value: String,
    },
    /// Agent attribute `name` must be absent or differ from `value`.
    AttributeNotEquals {
        /// Attribute name.
        name: String,
        /// Forbidden value.
        value: String,
    },
    /// The agent's host name must be `hostname`.
    Hostname {
        /// Host name.
        hostname: String,
    },
}

/// A task ready to launch.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRequest {
    /// kaon's task id.
    pub id: String,
    /// Scalar resources (cpus, mem, disk, gpus, ...), including any executor
    /// overhead the caller wants accounted.
    pub resources: Resources,
    /// Number of ports needed (taken from the offer's `ports` ranges).
    pub ports: u64,
    /// Constraints that must all hold.
    pub constraints: Vec<Constraint>,
}

/// What the matcher needs from an offer.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferView {
    /// Offer id.
    pub offer_id: Id,
    /// Agent id.
    pub agent_id: Id,
    /// Agent host name.
    pub hostname: String,
    /// Offered resources.
    pub resources: Resources,
    /// Agent attributes as text.
    pub attributes: BTreeMap<String, String>,
}

impl OfferView {
    /// Builds the view of a Mesos offer.
    pub fn from_offer(offer: &Offer) -> Self {
        OfferView {
            offer_id: offer.id.clone(),
            agent_id: offer.agent_id.clone(),
            hostname: offer.hostname.clone(),
            resources: Resources::from_mesos(&offer.resources),
            attributes: offer
                .attributes
                .iter()
                .map(|a| (a.name.clone(), a.value_text()))
                .collect(),
        }
    }

    /// Whether every constraint holds on this offer's agent.
    pub fn satisfies(&self, constraints: &[Constraint]) -> bool {
        constraints.iter().all(|c| match c {
            Constraint::AttributeEquals { name, value } => self.attributes.get(name) == Some(value),
            Constraint::AttributeNotEquals { name, value } => {
                self.attributes.get(name) != Some(value)
            }
            Constraint::Hostname { hostname } => &self.hostname == hostname,
        })
    }
}

/// One task placed on one offer.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Task id.
    pub task_id: String,
    /// Agent the task will run on (for `TaskInfo.agent_id`).
    pub agent_id: Id,
    /// Resources reserved (scalars plus the assigned ports).
    pub resources: Resources,
    /// Ports assigned, as inclusive ranges.
    pub ports: Vec<(u64, u64)>,
}

/// The matcher's answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LaunchPlan {
    /// Offers to ACCEPT, each with the tasks packed into it, by offer id.
    pub launches: Vec<(Id, Vec<Placement>)>,
    /// Offers with nothing placed: DECLINE them.
    pub decline: Vec<Id>,
    /// Tasks that fit no offer (in input order).
    pub unplaced: Vec<String>,
}

/// Matches `tasks` (in priority order) against `offers`. Offer ids are
/// unique in Mesos; should one repeat, only one copy is used.
pub fn match_offers(tasks: &[TaskRequest], offers: &[OfferView]) -> LaunchPlan {
    let mut order: Vec<&OfferView> = offers.iter().collect();
    order.sort_by(|a, b| a.offer_id.cmp(&b.offer_id));
    order.dedup_by(|a, b| a.offer_id == b.offer_id);
    let mut remaining: Vec<Resources> = order.iter().map(|o| o.resources.clone()).collect();
    let mut placed: Vec<Vec<Placement>> = vec![Vec::new(); order.len()];
    let mut unplaced = Vec::new();
    for task in tasks {
        let mut done = false;
        for (i, offer) in order.iter().enumerate() {
            if !offer.satisfies(&task.constraints) || !remaining[i].contains(&task.resources) {
                continue;
            }
            let Some(ports) = remaining[i].take_ports(task.ports) else {
                continue;
            };
            let mut take = task.resources.clone();
            if !ports.is_empty() {
                take.ranges.insert("ports".into(), ports.clone());
            }
            remaining[i].subtract(&take);
            placed[i].push(Placement {
                task_id: task.id.clone(),
                agent_id: offer.agent_id.clone(),
                resources: take,
                ports,
            });
            done = true;
            break;
        }
        if !done {
            unplaced.push(task.id.clone());
        }
    }
    let mut plan = LaunchPlan {
        unplaced,
        ..Default::default()
    };
    for (offer, placements) in order.into_iter().zip(placed) {
        if placements.is_empty() {
            plan.decline.push(offer.offer_id.clone());
        } else {
            plan.launches.push((offer.offer_id.clone(), placements));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn res(cpus: f64, mem: f64) -> Resources {
        let mut r = Resources::default();
        r.scalars.insert("cpus".into(), cpus);
        r.scalars.insert("mem".into(), mem);
        r
    }

    fn offer_strategy() -> impl Strategy<Value = OfferView> {
        (
            0u32..50,
            0u32..17,
            0u32..5000,
            prop::option::of(0u64..20),
            prop::option::of(0u8..3),
        )
            .prop_map(|(id, cpus, mem, ports, rack)| {
                let mut r = res(f64::from(cpus) / 2.0, f64::from(mem));
                if let Some(n) = ports {
                    r.ranges.insert(
                        "ports".into(),
                        vec![(31000 + u64::from(id) * 100, 31000 + u64::from(id) * 100 + n)],
                    );
                }
                OfferView {
                    offer_id: Id::new(format!("O{id:03}")),
                    agent_id: Id::new(format!("S{}", id % 7)),
                    hostname: format!("h{}", id % 7),
                    resources: r,
                    attributes: rack
                        .map(|r| ("rack".to_string(), format!("r{r}")))
                        .into_iter()
                        .collect(),
                }
            })
    }

    fn task_strategy() -> impl Strategy<Value = TaskRequest> {
        (
            0u32..1000,
            1u32..9,
            1u32..2000,
            0u64..4,
            prop::option::of((0u8..3, any::<bool>())),
        )
            .prop_map(|(id, cpus, mem, ports, c)| TaskRequest {
                id: format!("t{id}"),
                resources: res(f64::from(cpus) / 4.0, f64::from(mem)),
                ports,
                constraints: c
                    .map(|(r, eq)| {
                        let (name, value) = ("rack".to_string(), format!("r{r}"));
                        if eq {
                            Constraint::AttributeEquals { name, value }
                        } else {
                            Constraint::AttributeNotEquals { name, value }
                        }
                    })
                    .into_iter()
                    .collect(),
            })
    }

    #[test]
    fn packs_several_tasks_per_offer_and_declines_the_rest() {
        let offers = vec![
            OfferView {
                offer_id: Id::new("O2"),
                agent_id: Id::new("S2"),
                hostname: "b".into(),
                resources: res(4.0, 4096.0),
                attributes: BTreeMap::new(),
            },
            OfferView {
                offer_id: Id::new("O1"),
                agent_id: Id::new("S1"),
                hostname: "a".into(),
                resources: res(1.0, 1024.0),
                attributes: BTreeMap::new(),
            },
        ];
        let tasks: Vec<TaskRequest> = (0..3)
            .map(|i| TaskRequest {
                id: format!("t{i}"),
                resources: res(0.5, 512.0),
                ports: 0,
                constraints: vec![],
            })
            .collect();
        let plan = match_offers(&tasks, &offers);
        assert_eq!(plan.launches.len(), 2);
        assert_eq!(plan.launches[0].0, Id::new("O1"));
        assert_eq!(plan.launches[0].1.len(), 2, "two tasks packed into O1");
        assert_eq!(plan.launches[1].1[0].task_id, "t2");
        assert!(plan.decline.is_empty() && plan.unplaced.is_empty());
        let hostbound = TaskRequest {
            id: "h".into(),
            resources: res(0.1, 1.0),
            ports: 0,
            constraints: vec![Constraint::Hostname {
                hostname: "b".into(),
            }],
        };
        let plan = match_offers(&[hostbound], &offers);
        assert_eq!(plan.launches[0].0, Id::new("O2"));
        assert_eq!(plan.decline, vec![Id::new("O1")]);
    }

    proptest! {
        #[test]
        fn plan_is_sound_and_deterministic(
            offers in prop::collection::vec(offer_strategy(), 0..8).prop_map(|v| {
                // Mesos offer ids are unique; keep that invariant.
                v.into_iter().enumerate().map(|(i, mut o)| { o.offer_id = Id::new(format!("O{:03}", (i * 37) % 101)); o }).collect::<Vec<_>>()
            }),
            tasks in prop::collection::vec(task_strategy(), 0..25).prop_map(|v| {
                // kaon task ids are unique.
                v.into_iter().enumerate().map(|(i, mut t)| { t.id = format!("t{i}"); t }).collect::<Vec<_>>()
            }),
        ) {
            let plan = match_offers(&tasks, &offers);
            // Deterministic, also under any offer order.
            let mut reversed = offers.clone();
            reversed.reverse();
            prop_assert_eq!(&plan, &match_offers(&tasks, &offers));
            prop_assert_eq!(&plan, &match_offers(&tasks, &reversed));
            let by_id: BTreeMap<&Id, &OfferView> = offers.iter().map(|o| (&o.offer_id, o)).collect();
            let mut placed_count = 0;
            for (offer_id, placements) in &plan.launches {
                let offer = by_id[offer_id];
                // Never over-commits: the sum of placements fits the offer.
                let mut used = Resources::default();
                for p in placements {
                    used.add(&p.resources);
                    let task = tasks.iter().find(|t| t.id == p.task_id).unwrap();
                    prop_assert!(offer.satisfies(&task.constraints));
                    prop_assert!(p.resources.contains(&task.resources));
                    prop_assert_eq!(p.ports.iter().map(|(b, e)| e - b + 1).sum::<u64>(), task.ports);
                    prop_assert_eq!(&p.agent_id, &offer.agent_id);
                }
                prop_assert!(offer.resources.contains(&used), "over-committed {:?}", offer_id);
                let ports: u64 = placements.iter().flat_map(|p| p.ports.iter()).map(|(b, e)| e - b + 1).sum();
                prop_assert_eq!(used.ranges.get("ports").map(|r| r.iter().map(|(b, e)| e - b + 1).sum::<u64>()).unwrap_or(0), ports, "ports assigned twice");
                placed_count += placements.len();
            }
            prop_assert_eq!(placed_count + plan.unplaced.len(), tasks.len());
            // Every distinct offer is either used or declined, never both.
            prop_assert_eq!(plan.launches.len() + plan.decline.len(), by_id.len());
            // An unplaced task fits nowhere, even in what is left over.
            for t in tasks.iter().filter(|t| plan.unplaced.contains(&t.id)) {
                for o in by_id.values() {
                    let mut left = o.resources.clone();
                    if let Some((_, ps)) = plan.launches.iter().find(|(id, _)| *id == o.offer_id) {
                        for p in ps { left.subtract(&p.resources); }
                    }
                    let fits = o.satisfies(&t.constraints) && left.contains(&t.resources) && left.take_ports(t.ports).is_some();
                    prop_assert!(!fits, "task {} left unplaced but fits {:?}", t.id, o.offer_id);
                }
            }
        }
    }
}
