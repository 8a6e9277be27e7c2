//! kaon's deterministic cluster simulation (issue 8): whole kaon nodes in
//! one process, an in-process Mesos with scripted tasks, seeded faults,
//! and the invariants that define "nothing lost, nothing run twice".
//!
//! A run is a function of its seed: the workload, the faults, every task's
//! outcome, openraft's election timeouts (through `kaon_log::rt`) and
//! tokio's scheduling choices (its `rng_seed`, a `tokio_unstable` API; the
//! workspace builds with `--cfg tokio_unstable`, see `.cargo/config.toml`)
//! all derive from it, and time is tokio's paused clock. So the same seed
//! replays byte for byte, and a failing seed is a one-line reproduction.

pub mod checks;
pub mod rng;
pub mod workload;
pub mod world;

pub use world::{Options, Report};

/// Runs one seed to its report, on a fresh current-thread runtime with
/// paused time, every source of randomness derived from `seed`.
pub fn run_seed(seed: u64, opts: &Options) -> Report {
    kaon_log::rt::seed_thread_rng(rng::mix(seed ^ 0x6b61_6f6e));
    let mut b = tokio::runtime::Builder::new_current_thread();
    b.enable_all().start_paused(true);
    #[cfg(tokio_unstable)]
    b.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
    let rt = b.build().expect("a current-thread runtime builds");
    let opts = opts.clone();
    let report = rt.block_on(async move {
        match world::World::new(seed, opts).await {
            Ok(w) => w.run().await,
            Err(e) => Report {
                seed,
                violations: vec![format!("the simulated cluster did not start: {e}")],
                ..Report::default()
            },
        }
    });
    drop(rt);
    kaon_log::rt::unseed_thread_rng();
    report
}

/// The command that replays `seed` alone.
pub fn replay_command(seed: u64) -> String {
    format!("cargo run --release -p kaon-simulation -- --seed {seed}")
}
