//! The simulation's fixed CI set (issue 8): a batch of seeds, each run
//! twice in its own process, must keep every invariant and replay byte for
//! byte. A longer batch is `cargo run --release -p kaon-simulation --
//! --seeds 1000` (RELIABILITY.md).

use std::process::Command;

#[test]
fn a_fixed_set_of_seeds_keeps_every_invariant_and_replays_byte_for_byte() {
    let out = Command::new(env!("CARGO_BIN_EXE_kaon-simulation"))
        .args([
            "--seeds",
            "12",
            "--first",
            "1",
            "--jobs",
            "2",
            "--check-determinism",
        ])
        .output()
        .expect("the simulation runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "seeds failed or did not replay:\n{stdout}"
    );
    assert!(
        stdout.contains("0 violations in 0 seeds, 0 seeds not deterministic"),
        "{stdout}"
    );
}

#[test]
fn a_seed_without_faults_runs_every_workflow_to_the_end() {
    let out = Command::new(env!("CARGO_BIN_EXE_kaon-simulation"))
        .args(["--seed", "7", "--no-faults", "--fault-secs", "40"])
        .output()
        .expect("the simulation runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("faults {}"), "no faults injected: {stdout}");
}
