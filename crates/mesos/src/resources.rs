//! Resource arithmetic (scalars and port ranges) shared by the emulator's
//! allocator and the scheduler-side offer matcher.
//!
//! Mesos compares scalars in fixed point with three decimals; we round to the
//! same precision after every operation so `0.1 + 0.2` fits in `0.3`.

use crate::types::{Resource, ValueType};
use std::collections::BTreeMap;

/// Rounds to Mesos's fixed-point precision (three decimals).
fn fixed(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A bag of scalar resources and range resources, keyed by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// Scalar resources (`cpus`, `mem`, `disk`, `gpus`, ...).
    pub scalars: BTreeMap<String, f64>,
    /// Range resources (`ports`), kept sorted and merged.
    pub ranges: BTreeMap<String, Vec<(u64, u64)>>,
}

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

/// Mesos's `stringify(Resources)` shape, without reservation and
/// allocation details: `cpus:2; mem:1024; ports:[31000-31009, 31020-31020]`.
/// Used in the emulator's TASK_ERROR messages.
impl std::fmt::Display for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self
            .scalars
            .iter()
            .map(|(k, v)| format!("{k}:{}", fixed(*v)))
            .collect();
        for (k, rs) in &self.ranges {
            let list: Vec<String> = rs.iter().map(|(b, e)| format!("{b}-{e}")).collect();
            parts.push(format!("{k}:[{}]", list.join(", ")));
        }
        f.write_str(&parts.join("; "))
    }
}

impl Resources {
    /// Sums a Mesos resource list (SET and TEXT values are ignored).
    pub fn from_mesos(list: &[Resource]) -> Self {
        let mut out = Resources::default();
        for r in list {
            match r.kind {
                ValueType::Scalar => {
                    if let Some(s) = &r.scalar
                        && s.value.is_finite()
                        && s.value > 0.0
                    {
                        *out.scalars.entry(r.name.clone()).or_default() += s.value;
                    }
                }
                ValueType::Ranges => {
                    if let Some(rs) = &r.ranges {
                        let e = out.ranges.entry(r.name.clone()).or_default();
                        e.extend(rs.range.iter().map(|x| (x.begin, x.end)));
                    }
                }
                _ => {}
            }
        }
        for v in out.scalars.values_mut() {
            *v = fixed(*v);
        }
        for v in out.ranges.values_mut() {
            *v = normalize(std::mem::take(v));
        }
        out.ranges.retain(|_, v| !v.is_empty());
        out
    }

    /// Renders as an unreserved Mesos resource list.
    pub fn to_mesos(&self) -> Vec<Resource> {
        let mut out: Vec<Resource> = self
            .scalars
            .iter()
            .filter(|(_, v)| **v > 0.0)
            .map(|(k, v)| Resource::scalar(k, *v))
            .collect();
        out.extend(
            self.ranges
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| Resource::ranges(k, v)),
        );
        out
    }

    /// A scalar value (0 when absent).
    pub fn scalar(&self, name: &str) -> f64 {
        self.scalars.get(name).copied().unwrap_or(0.0)
    }

    /// Whether nothing is in the bag.
    pub fn is_empty(&self) -> bool {
        self.scalars.values().all(|v| *v <= 0.0) && self.ranges.values().all(Vec::is_empty)
    }

    /// Whether `other` fits entirely inside `self`.
    pub fn contains(&self, other: &Resources) -> bool {
        let scalars_fit = other
            .scalars
            .iter()
            .all(|(k, v)| *v <= 0.0 || fixed(self.scalar(k) - v) >= 0.0);
        let ranges_fit = other.ranges.iter().all(|(k, want)| {
            let have = self.ranges.get(k).map(Vec::as_slice).unwrap_or(&[]);
            want.iter()
                .all(|(b, e)| have.iter().any(|(hb, he)| hb <= b && e <= he))
        });
        scalars_fit && ranges_fit
    }

    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &Resources) {
        for (k, v) in &other.scalars {
            let e = self.scalars.entry(k.clone()).or_default();
            *e = fixed(*e + v);
        }
        for (k, v) in &other.ranges {
            let e = self.ranges.entry(k.clone()).or_default();
            e.extend(v.iter().copied());
            *e = normalize(std::mem::take(e));
        }
    }

    /// Removes `other` from `self` (saturating: never goes negative).
    pub fn subtract(&mut self, other: &Resources) {
        for (k, v) in &other.scalars {
            if let Some(e) = self.scalars.get_mut(k) {
                *e = fixed((*e - v).max(0.0));
            }
        }
        self.scalars.retain(|_, v| *v > 0.0);
        for (k, remove) in &other.ranges {
            if let Some(have) = self.ranges.get_mut(k) {
                let mut out = Vec::new();
                for &(hb, he) in have.iter() {
                    let mut pieces = vec![(hb, he)];
                    for &(rb, re) in remove {
                        pieces = pieces
                            .into_iter()
                            .flat_map(|(b, e)| {
                                let mut keep = Vec::new();
                                if re < b || rb > e {
                                    keep.push((b, e));
                                } else {
                                    if rb > b {
                                        keep.push((b, rb - 1));
                                    }
                                    if re < e {
                                        keep.push((re.saturating_add(1), e));
                                    }
                                }
                                keep
                            })
                            .collect();
                    }
                    out.extend(pieces);
                }
                *have = normalize(out);
            }
        }
        self.ranges.retain(|_, v| !v.is_empty());
    }

    /// Takes `count` ports from the `ports` ranges, lowest first, if available.
    pub fn take_ports(&self, count: u64) -> Option<Vec<(u64, u64)>> {
        if count == 0 {
            return Some(Vec::new());
        }
        let mut left = count;
        let mut out = Vec::new();
        for &(b, e) in self.ranges.get("ports").map(Vec::as_slice).unwrap_or(&[]) {
            let n = (e - b).saturating_add(1).min(left);
            out.push((b, b + (n - 1)));
            left -= n;
            if left == 0 {
                return Some(out);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_and_range_arithmetic() {
        let mut total = Resources::from_mesos(&[
            Resource::scalar("cpus", 1.0),
            Resource::ranges("ports", &[(100, 110)]),
        ]);
        let part = Resources::from_mesos(&[
            Resource::scalar("cpus", 0.1),
            Resource::scalar("cpus", 0.2),
            Resource::ranges("ports", &[(103, 104)]),
        ]);
        assert!(total.contains(&part));
        total.subtract(&part);
        assert_eq!(total.scalar("cpus"), 0.7);
        assert_eq!(total.ranges["ports"], vec![(100, 102), (105, 110)]);
        assert!(!total.contains(&part));
        total.add(&part);
        assert_eq!(total.ranges["ports"], vec![(100, 110)]);
        assert_eq!(total.take_ports(12), None);
        assert_eq!(total.take_ports(2), Some(vec![(100, 101)]));
        // Extreme ranges from the network must not overflow.
        let mut huge = Resources::from_mesos(&[Resource::ranges("ports", &[(0, u64::MAX)])]);
        assert_eq!(huge.take_ports(3), Some(vec![(0, 2)]));
        huge.subtract(&Resources::from_mesos(&[Resource::ranges(
            "ports",
            &[(5, u64::MAX)],
        )]));
        assert_eq!(huge.ranges["ports"], vec![(0, 4)]);
    }
}
