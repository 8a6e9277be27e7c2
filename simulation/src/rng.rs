//! The one source of randomness of a simulated run: SplitMix64 from the
//! seed. Every choice (workload, faults, task outcomes, openraft's
//! elections, tokio's scheduler) derives from the seed, so a seed is a
//! reproducible run.

/// A SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

/// One SplitMix64 output for `x` (a stateless hash, for outcomes that must
/// not depend on the order they are asked in).
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable hash of `text` mixed with `seed`.
pub fn hash(seed: u64, text: &str) -> u64 {
    text.bytes().fold(mix(seed), |h, b| mix(h ^ u64::from(b)))
}

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(mix(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// A derived, independent generator (for a sub-system).
    pub fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }
}
