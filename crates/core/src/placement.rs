//! Where a task may run: a pure first-fit matcher from launches waiting for
//! resources and the offers Mesos made to a launch plan and the offers to
//! decline (brief 4: placement is policy, so it lives in the pure core
//! where the randomized tests reach it).
//!
//! First-fit in request order (the leader passes the oldest launch first)
//! over offers sorted by offer id, packing as many tasks per offer as fit.
//! Pure and deterministic: it never over-commits an offer, always respects
//! constraints, and gives the same plan for the same inputs in any offer
//! order (property-tested below). Scalars are compared in Mesos' fixed
//! point with three decimals, so `0.1 + 0.2` fits in `0.3`.

use std::collections::BTreeMap;

/// Rounds to Mesos' fixed-point precision (three decimals).
fn fixed(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// An offer as placement sees it (the shell converts Mesos' JSON).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Offer {
    /// Offer id.
    pub id: String,
    /// Agent id.
    pub agent_id: String,
    /// Agent host name.
    pub hostname: String,
    /// Scalar resources offered (`cpus`, `mem`, `disk`, `gpus`, ...).
    pub scalars: BTreeMap<String, f64>,
    /// Port ranges offered, inclusive.
    pub ports: Vec<(u64, u64)>,
    /// Agent attributes as text.
    pub attributes: BTreeMap<String, String>,
}

/// A placement constraint on the agent.
#[derive(Debug, Clone)]
pub enum Constraint {
    /// Attribute `name` must equal `value`.
    Equals {
        /// Attribute name.
        name: String,
        /// Required value.
        value: String,
    },
    /// Attribute `name` must be absent or differ from `value`.
    NotEquals {
        /// Attribute name.
        name: String,
        /// Forbidden value.
        value: String,
    },
    /// Attribute `name` must be present and match `pattern` in full.
    Like {
        /// Attribute name.
        name: String,
        /// The compiled pattern (anchored at both ends).
        pattern: regex::Regex,
    },
    /// The agent's host name must be `hostname`.
    Hostname {
        /// Host name.
        hostname: String,
    },
}

impl Constraint {
    /// A `like` constraint: `pattern` must match the whole value. An
    /// invalid pattern was refused at submit (validate); here it never
    /// matches.
    pub fn like(name: &str, pattern: &str) -> Option<Constraint> {
        regex::Regex::new(&format!("^(?:{pattern})$"))
            .ok()
            .map(|pattern| Constraint::Like {
                name: name.to_string(),
                pattern,
            })
    }
}

impl PartialEq for Constraint {
    fn eq(&self, other: &Self) -> bool {
        use Constraint::*;
        match (self, other) {
            (Equals { name: a, value: x }, Equals { name: b, value: y })
            | (NotEquals { name: a, value: x }, NotEquals { name: b, value: y }) => {
                a == b && x == y
            }
            (
                Like {
                    name: a,
                    pattern: x,
                },
                Like {
                    name: b,
                    pattern: y,
                },
            ) => a == b && x.as_str() == y.as_str(),
            (Hostname { hostname: a }, Hostname { hostname: b }) => a == b,
            _ => false,
        }
    }
}

/// A task waiting to be placed.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// kaon's task id.
    pub id: String,
    /// Scalars it needs (the executor's share included).
    pub scalars: BTreeMap<String, f64>,
    /// Number of ports it needs (taken from the offer's ranges).
    pub ports: u64,
    /// Constraints that must all hold.
    pub constraints: Vec<Constraint>,
}

/// One task placed on one offer.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// Task id.
    pub task_id: String,
    /// Agent the task will run on.
    pub agent_id: String,
    /// Ports assigned, as inclusive ranges.
    pub ports: Vec<(u64, u64)>,
}

/// The matcher's answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Offers to accept, each with the tasks packed into it, by offer id.
    pub launches: Vec<(String, Vec<Placement>)>,
    /// Offers with nothing placed: decline them.
    pub decline: Vec<String>,
    /// Tasks that fit no offer (in request order).
    pub unplaced: Vec<String>,
}

impl Offer {
    /// Whether every constraint holds on this offer's agent.
    pub fn satisfies(&self, constraints: &[Constraint]) -> bool {
        constraints.iter().all(|c| match c {
            Constraint::Equals { name, value } => self.attributes.get(name) == Some(value),
            Constraint::NotEquals { name, value } => self.attributes.get(name) != Some(value),
            Constraint::Like { name, pattern } => self
                .attributes
                .get(name)
                .is_some_and(|v| pattern.is_match(v)),
            Constraint::Hostname { hostname } => &self.hostname == hostname,
        })
    }
}

impl Constraint {
    /// The constraint as a user wrote it, for messages.
    fn describe(&self) -> String {
        match self {
            Constraint::Equals { name, value } => format!("{name} = {value:?}"),
            Constraint::NotEquals { name, value } => format!("{name} != {value:?}"),
            Constraint::Like { name, pattern } => {
                let p = pattern.as_str();
                let p = p
                    .strip_prefix("^(?:")
                    .and_then(|p| p.strip_suffix(")$"))
                    .unwrap_or(p);
                format!("{name} like {p:?}")
            }
            Constraint::Hostname { hostname } => format!("hostname = {hostname:?}"),
        }
    }
}

/// Why one offer, empty of other tasks, cannot host `r`; None if it can.
/// Constraints first (they do not change while the agent lives), then
/// scalars, then ports.
pub fn why_not(offer: &Offer, r: &Request) -> Option<String> {
    let host = if offer.hostname.is_empty() {
        &offer.agent_id
    } else {
        &offer.hostname
    };
    if let Some(c) = r
        .constraints
        .iter()
        .find(|c| !offer.satisfies(std::slice::from_ref(*c)))
    {
        let has = |name: &str| match offer.attributes.get(name) {
            Some(v) => format!("{name} = {v:?}"),
            None => format!("no attribute {name}"),
        };
        let actual = match c {
            Constraint::Equals { name, .. }
            | Constraint::NotEquals { name, .. }
            | Constraint::Like { name, .. } => has(name),
            Constraint::Hostname { .. } => format!("hostname {host:?}"),
        };
        return Some(format!(
            "constraint {} not met (agent {host} has {actual})",
            c.describe()
        ));
    }
    for (k, need) in &r.scalars {
        let have = fixed(offer.scalars.get(k).copied().unwrap_or(0.0));
        if *need > 0.0 && fixed(have - need) < 0.0 {
            return Some(format!(
                "needs {k} {} (the executor's share included), agent {host} offers {have}",
                fixed(*need)
            ));
        }
    }
    let ports: u64 = normalize(offer.ports.clone())
        .iter()
        .map(|(b, e)| e - b + 1)
        .sum();
    if ports < r.ports {
        return Some(format!(
            "needs {} ports, agent {host} offers {ports}",
            r.ports
        ));
    }
    None
}

/// Why none of `offers` could host `r` even with nothing else placed (a
/// pending reason for its status), or None when some offer could (then it
/// only waits its turn) or there are no offers. Deterministic: the offer
/// with the smallest id is the example given.
pub fn unplaceable(r: &Request, offers: &[Offer]) -> Option<String> {
    let mut order: Vec<&Offer> = offers.iter().collect();
    order.sort_by(|a, b| a.id.cmp(&b.id));
    order.dedup_by(|a, b| a.agent_id == b.agent_id);
    if order.is_empty() {
        return None;
    }
    let mut reasons = Vec::with_capacity(order.len());
    for o in &order {
        reasons.push(why_not(o, r)?);
    }
    let n = order.len();
    Some(format!(
        "pending: none of the {n} agent{} offering resources can run it: {}{}",
        if n == 1 { "" } else { "s" },
        reasons[0],
        if n > 1 {
            format!(" (and {} more)", n - 1)
        } else {
            String::new()
        }
    ))
}

/// What is left of one offer while tasks are packed into it.
struct Left {
    scalars: BTreeMap<String, f64>,
    ports: Vec<(u64, u64)>,
}

impl Left {
    fn fits(&self, need: &BTreeMap<String, f64>) -> bool {
        need.iter().all(|(k, v)| {
            *v <= 0.0 || fixed(self.scalars.get(k).copied().unwrap_or(0.0) - v) >= 0.0
        })
    }

    fn free_ports(&self) -> u64 {
        self.ports.iter().map(|(b, e)| e - b + 1).sum()
    }

    /// Takes `n` ports from the lowest ranges.
    fn take_ports(&mut self, mut n: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        while n > 0 {
            let (b, e) = self.ports[0];
            let k = (e - b + 1).min(n);
            out.push((b, b + k - 1));
            n -= k;
            if b + k > e {
                self.ports.remove(0);
            } else {
                self.ports[0].0 = b + k;
            }
        }
        out
    }

    fn take(&mut self, need: &BTreeMap<String, f64>) {
        for (k, v) in need {
            if let Some(have) = self.scalars.get_mut(k) {
                *have = fixed(*have - v);
            }
        }
    }
}

/// Sorted, merged, valid ranges.
fn normalize(mut rs: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    rs.retain(|(b, e)| b <= e);
    rs.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(rs.len());
    for (b, e) in rs {
        match out.last_mut() {
            Some(last) if b <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => out.push((b, e)),
        }
    }
    out
}

/// Places `requests` (in priority order) on `offers`. Offer ids are unique
/// in Mesos; should one repeat, only one copy is used.
pub fn place(requests: &[Request], offers: &[Offer]) -> Plan {
    let mut order: Vec<&Offer> = offers.iter().collect();
    order.sort_by(|a, b| a.id.cmp(&b.id));
    order.dedup_by(|a, b| a.id == b.id);
    let mut left: Vec<Left> = order
        .iter()
        .map(|o| Left {
            scalars: o
                .scalars
                .iter()
                .map(|(k, v)| (k.clone(), fixed(*v)))
                .collect(),
            ports: normalize(o.ports.clone()),
        })
        .collect();
    let mut placed: Vec<Vec<Placement>> = vec![Vec::new(); order.len()];
    let mut unplaced = Vec::new();
    for r in requests {
        let slot = order.iter().enumerate().position(|(i, o)| {
            o.satisfies(&r.constraints)
                && left[i].fits(&r.scalars)
                && left[i].free_ports() >= r.ports
        });
        match slot {
            Some(i) => {
                left[i].take(&r.scalars);
                let ports = left[i].take_ports(r.ports);
                placed[i].push(Placement {
                    task_id: r.id.clone(),
                    agent_id: order[i].agent_id.clone(),
                    ports,
                });
            }
            None => unplaced.push(r.id.clone()),
        }
    }
    let mut plan = Plan {
        unplaced,
        ..Plan::default()
    };
    for (o, ps) in order.into_iter().zip(placed) {
        if ps.is_empty() {
            plan.decline.push(o.id.clone());
        } else {
            plan.launches.push((o.id.clone(), ps));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scalars(cpus: f64, mem: f64) -> BTreeMap<String, f64> {
        BTreeMap::from([("cpus".to_string(), cpus), ("mem".to_string(), mem)])
    }

    fn offer(id: &str, agent: &str, host: &str, cpus: f64, mem: f64) -> Offer {
        Offer {
            id: id.into(),
            agent_id: agent.into(),
            hostname: host.into(),
            scalars: scalars(cpus, mem),
            ..Offer::default()
        }
    }

    fn request(id: &str, cpus: f64, mem: f64, constraints: Vec<Constraint>) -> Request {
        Request {
            id: id.into(),
            scalars: scalars(cpus, mem),
            ports: 0,
            constraints,
        }
    }

    #[test]
    fn packs_several_tasks_per_offer_and_declines_the_rest() {
        let offers = vec![
            offer("O2", "S2", "b", 4.0, 4096.0),
            offer("O1", "S1", "a", 1.0, 1024.0),
        ];
        let tasks: Vec<Request> = (0..3)
            .map(|i| request(&format!("t{i}"), 0.5, 512.0, vec![]))
            .collect();
        let plan = place(&tasks, &offers);
        assert_eq!(plan.launches.len(), 2);
        assert_eq!(plan.launches[0].0, "O1");
        assert_eq!(plan.launches[0].1.len(), 2, "two tasks packed into O1");
        assert_eq!(plan.launches[1].1[0].task_id, "t2");
        assert!(plan.decline.is_empty() && plan.unplaced.is_empty());
        let hostbound = request(
            "h",
            0.1,
            1.0,
            vec![Constraint::Hostname {
                hostname: "b".into(),
            }],
        );
        let plan = place(&[hostbound], &offers);
        assert_eq!(plan.launches[0].0, "O2");
        assert_eq!(plan.decline, vec!["O1".to_string()]);
    }

    #[test]
    fn like_constraints_match_the_whole_attribute() {
        let mut gpu = offer("O1", "S1", "a", 4.0, 4096.0);
        gpu.attributes.insert("zone".into(), "eu-west-1a".into());
        let mut other = offer("O2", "S2", "b", 4.0, 4096.0);
        other.attributes.insert("zone".into(), "us-east-1".into());
        let like = Constraint::like("zone", "eu-.*").unwrap();
        let plan = place(&[request("t", 1.0, 1.0, vec![like])], &[other, gpu]);
        assert_eq!(plan.launches[0].0, "O1");
        let partial = Constraint::like("zone", "west").unwrap();
        let plan = place(
            &[request("t", 1.0, 1.0, vec![partial])],
            &[offer("O1", "S1", "a", 4.0, 4096.0)],
        );
        assert_eq!(plan.unplaced, vec!["t".to_string()], "anchored: no match");
        assert!(Constraint::like("zone", "(").is_none(), "invalid pattern");
    }

    #[test]
    fn an_unplaceable_request_says_why() {
        let mut a = offer("o1", "a1", "h1", 4.0, 1024.0);
        a.attributes.insert("rack".into(), "eu-1".into());
        let b = offer("o2", "a2", "h2", 64.0, 1024.0);
        let rack = Constraint::like("rack", "us-.*").unwrap();
        let r = request("t", 1.0, 64.0, vec![rack.clone()]);
        assert_eq!(
            why_not(&a, &r).unwrap(),
            "constraint rack like \"us-.*\" not met (agent h1 has rack = \"eu-1\")"
        );
        assert_eq!(
            why_not(&b, &r).unwrap(),
            "constraint rack like \"us-.*\" not met (agent h2 has no attribute rack)"
        );
        assert_eq!(
            unplaceable(&r, &[b.clone(), a.clone()]).unwrap(),
            "pending: none of the 2 agents offering resources can run it: constraint rack like \"us-.*\" not met (agent h1 has rack = \"eu-1\") (and 1 more)"
        );
        let big = request("t", 32.0, 64.0, vec![]);
        assert_eq!(
            unplaceable(&big, &[a.clone()]).unwrap(),
            "pending: none of the 1 agent offering resources can run it: needs cpus 32 (the executor's share included), agent h1 offers 4"
        );
        // One offer could host it alone: it only waits its turn.
        assert_eq!(unplaceable(&big, &[a, b]), None);
        assert_eq!(unplaceable(&r, &[]), None);
    }

    #[test]
    fn fixed_point_scalars_fit_exactly() {
        let plan = place(
            &[
                request("a", 0.1, 1.0, vec![]),
                request("b", 0.2, 1.0, vec![]),
            ],
            &[offer("O1", "S1", "h", 0.3, 2.0)],
        );
        assert_eq!(plan.launches[0].1.len(), 2);
    }

    fn offer_strategy() -> impl Strategy<Value = Offer> {
        (
            0u32..50,
            0u32..17,
            0u32..5000,
            prop::option::of(0u64..20),
            prop::option::of(0u8..3),
        )
            .prop_map(|(id, cpus, mem, ports, rack)| Offer {
                id: format!("O{id:03}"),
                agent_id: format!("S{}", id % 7),
                hostname: format!("h{}", id % 7),
                scalars: scalars(f64::from(cpus) / 2.0, f64::from(mem)),
                ports: ports
                    .map(|n| vec![(31000 + u64::from(id) * 100, 31000 + u64::from(id) * 100 + n)])
                    .unwrap_or_default(),
                attributes: rack
                    .map(|r| ("rack".to_string(), format!("r{r}")))
                    .into_iter()
                    .collect(),
            })
    }

    fn request_strategy() -> impl Strategy<Value = Request> {
        (
            0u32..1000,
            1u32..9,
            1u32..2000,
            0u64..4,
            prop::option::of((0u8..3, 0u8..3)),
        )
            .prop_map(|(id, cpus, mem, ports, c)| Request {
                id: format!("t{id}"),
                scalars: scalars(f64::from(cpus) / 4.0, f64::from(mem)),
                ports,
                constraints: c
                    .map(|(r, kind)| {
                        let (name, value) = ("rack".to_string(), format!("r{r}"));
                        match kind {
                            0 => Constraint::Equals { name, value },
                            1 => Constraint::NotEquals { name, value },
                            _ => Constraint::like(&name, &format!("r[{r}-2]")).unwrap(),
                        }
                    })
                    .into_iter()
                    .collect(),
            })
    }

    proptest! {
        #[test]
        fn plan_is_sound_and_deterministic(
            offers in prop::collection::vec(offer_strategy(), 0..8).prop_map(|v| {
                // Mesos offer ids are unique; keep that invariant.
                v.into_iter().enumerate().map(|(i, mut o)| { o.id = format!("O{:03}", (i * 37) % 101); o }).collect::<Vec<_>>()
            }),
            requests in prop::collection::vec(request_strategy(), 0..25).prop_map(|v| {
                // kaon task ids are unique.
                v.into_iter().enumerate().map(|(i, mut t)| { t.id = format!("t{i}"); t }).collect::<Vec<_>>()
            }),
        ) {
            let plan = place(&requests, &offers);
            // Deterministic, also under any offer order.
            let mut reversed = offers.clone();
            reversed.reverse();
            prop_assert_eq!(&plan, &place(&requests, &offers));
            prop_assert_eq!(&plan, &place(&requests, &reversed));
            let by_id: BTreeMap<&str, &Offer> = offers.iter().map(|o| (o.id.as_str(), o)).collect();
            let mut placed_count = 0;
            for (offer_id, placements) in &plan.launches {
                let o = by_id[offer_id.as_str()];
                // Never over-commits: the sum of placements fits the offer.
                let mut used: BTreeMap<String, f64> = BTreeMap::new();
                let mut ports = Vec::new();
                for p in placements {
                    let r = requests.iter().find(|r| r.id == p.task_id).unwrap();
                    prop_assert!(o.satisfies(&r.constraints));
                    prop_assert_eq!(&p.agent_id, &o.agent_id);
                    prop_assert_eq!(p.ports.iter().map(|(b, e)| e - b + 1).sum::<u64>(), r.ports);
                    for (k, v) in &r.scalars {
                        *used.entry(k.clone()).or_default() += v;
                    }
                    ports.extend(p.ports.iter().copied());
                }
                for (k, v) in &used {
                    let have = o.scalars.get(k).copied().unwrap_or(0.0);
                    prop_assert!(fixed(have - v) >= 0.0, "{} over-committed on {}", offer_id, k);
                }
                // Ports come from the offer and are never assigned twice.
                let n: u64 = ports.iter().map(|(b, e)| e - b + 1).sum();
                prop_assert_eq!(normalize(ports.clone()).iter().map(|(b, e)| e - b + 1).sum::<u64>(), n, "ports assigned twice");
                for (b, e) in &ports {
                    prop_assert!(o.ports.iter().any(|(ob, oe)| ob <= b && e <= oe));
                }
                placed_count += placements.len();
            }
            prop_assert_eq!(placed_count + plan.unplaced.len(), requests.len());
            // Every distinct offer is either used or declined, never both.
            prop_assert_eq!(plan.launches.len() + plan.decline.len(), by_id.len());
        }
    }
}
