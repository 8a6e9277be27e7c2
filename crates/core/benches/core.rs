//! Core benchmarks (a bench program, not a timed test).
//!
//! `cargo bench -p kaon-core --bench core` prints:
//! - apply throughput and full replay of 1,000,000 events (decode + apply +
//!   hash chain), goal >= 2,000,000 events/s on one core;
//! - decide latency on a 10,000-step DAG when one step finishes, goal
//!   < 50 us (work proportional to what changed);
//! - heap bytes per completed step held in state.
//!
//! Set `KAON_BENCH_EVENTS` to change the log size and `KAON_BENCH_ONLY`
//! (`decide` or `replay`) to run one part.

// A bench measures wall time and reads its configuration: the pure-core
// bans are for the library, not for this program.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use kaon_core::Limits;
use kaon_core::decide::{Input, TaskUpdate, decide};
use kaon_core::events::{self, Body, Event, TaskState};
use kaon_core::sim::{Outcome, Sim};
use kaon_core::state::{InstKind, NodeStatus, State};

struct Counting;
static HEAP: AtomicIsize = AtomicIsize::new(0);

/// mimalloc (the allocator kaon's server binary uses) with a byte counter,
/// so the memory figure is heap actually held by state.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        HEAP.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { MiMalloc.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        HEAP.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { MiMalloc.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        HEAP.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { MiMalloc.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn build_log(target: usize) -> Vec<Event> {
    kaon_core::sim::fan_log(target)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn bench_replay(n: usize) {
    let t = Instant::now();
    let log = build_log(n);
    eprintln!(
        "generated {} events through decide+apply in {:.1} s",
        log.len(),
        t.elapsed().as_secs_f64()
    );
    let encoded: Vec<Vec<u8>> = log.iter().map(events::encode).collect();
    let bytes: usize = encoded.iter().map(Vec::len).sum();
    let mut replay = Vec::new();
    let mut apply_only = Vec::new();
    let mut final_state = None;
    let loops: usize = std::env::var("KAON_BENCH_LOOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for _ in 0..loops {
        let before = HEAP.load(Ordering::Relaxed);
        let t = Instant::now();
        let mut s = State::default();
        for (i, b) in encoded.iter().enumerate() {
            s.apply_bytes(i as u64 + 1, b).expect("applies");
        }
        replay.push(n as f64 / t.elapsed().as_secs_f64());
        let heap = HEAP.load(Ordering::Relaxed) - before;
        // Apply alone: events already decoded (outside the timing), each
        // applied with its stored bytes (hash chain included).
        drop(final_state.take());
        let decoded: Vec<Event> = encoded
            .iter()
            .map(|b| events::decode(b).expect("decodes"))
            .collect();
        let t = Instant::now();
        let mut s2 = State::default();
        for (e, b) in decoded.into_iter().zip(&encoded) {
            s2.apply_owned(e, b).expect("applies");
        }
        apply_only.push(n as f64 / t.elapsed().as_secs_f64());
        drop(s2);
        final_state = Some((s, heap));
    }
    // Breakdown: decode alone, hash chain alone.
    let t = Instant::now();
    let mut sink = 0usize;
    for b in &encoded {
        sink += events::decode(b).expect("decodes").index as usize;
    }
    let decode_rate = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut chain = [0u8; 32];
    for b in &encoded {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(chain);
        h.update(b);
        chain = h.finalize().into();
    }
    let hash_rate = n as f64 / t.elapsed().as_secs_f64();
    std::hint::black_box((sink, chain));
    println!("  decode only                {decode_rate:>12.0} events/s");
    println!("  sha-256 chain only         {hash_rate:>12.0} events/s");
    let (s, heap) = final_state.expect("ran");
    let t = Instant::now();
    let digest = s.digest();
    let digest_ms = t.elapsed().as_secs_f64() * 1e3;
    let steps = s
        .runs
        .values()
        .flat_map(|r| r.instances.iter())
        .filter(|i| i.kind == InstKind::Task && i.status == NodeStatus::Succeeded)
        .count();
    println!(
        "replay of {n} events ({:.1} MB encoded, {:.0} B/event): decode + apply + hash chain",
        bytes as f64 / 1e6,
        bytes as f64 / n as f64
    );
    println!(
        "  replay_from_bytes   median {:>12.0} events/s  (best {:.0})",
        median(&mut replay.clone()),
        replay.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "  apply (pre-decoded) median {:>12.0} events/s  (apply + hash chain)",
        median(&mut apply_only)
    );
    println!(
        "  digest of final state: {:.1} ms ({} runs, digest {:02x}{:02x}..)",
        digest_ms,
        s.runs.len(),
        digest[0],
        digest[1]
    );
    println!(
        "memory: {} completed steps in state, heap {:.1} MB => {:.0} bytes per completed step (incl. runs, events' outputs)",
        steps,
        heap as f64 / 1e6,
        heap as f64 / steps as f64
    );
}

/// A 100 x 100 layered DAG: every step depends on two of the previous layer.
fn layered_spec(layers: usize, width: usize) -> String {
    let mut out = String::from("apiVersion: kaon/v1\nname: big\nsteps:\n");
    let mut seed: u64 = 42;
    for l in 0..layers {
        for w in 0..width {
            out.push_str(&format!("  s{l}-{w}:\n    run: [./t]\n"));
            if l > 0 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let a = (seed >> 33) as usize % width;
                let b = (a + 1 + (seed >> 40) as usize % (width - 1)) % width;
                out.push_str(&format!(
                    "    depends_on: [s{}-{a}, s{}-{b}]\n",
                    l - 1,
                    l - 1
                ));
            }
        }
    }
    out
}

fn chain_spec(n: usize) -> String {
    let mut out = String::from("apiVersion: kaon/v1\nname: chain\nsteps:\n  s0: {run: [./t]}\n");
    for k in 1..n {
        out.push_str(&format!(
            "  s{k}: {{run: [./t], depends_on: [s{}]}}\n",
            k - 1
        ));
    }
    out
}

/// Drives a 10,000-step DAG half way, then times decide for a running step
/// finishing: the Mesos update, and the committed event that launches
/// whatever became ready.
fn bench_decide_on(name: &str, src: &str) {
    let limits = Limits::default();
    let t = Instant::now();
    kaon_core::compile_source(src, &limits).expect("valid 10,000-step spec");
    println!(
        "{name}: validate + compile the 10,000-step spec: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let mut sim = Sim::new(limits.clone());
    sim.submit(src, BTreeMap::new()).expect("submits");
    let mut policy = |_: &str, _: u32| Outcome::Finish("{}".into());
    while sim.launched.len() < 5_000 {
        sim.step(&mut policy);
    }
    sim.pump();
    let live = sim.live_tasks();
    let mut update_us = Vec::new();
    let mut committed_us = Vec::new();
    let mut launched = 0usize;
    for k in 0..200 {
        let task = &live[k % live.len()];
        let u = TaskUpdate {
            task_id: task.clone(),
            state: TaskState::Finished,
            exit_code: Some(0),
            outputs_json: Some("{}".into()),
            uuid: vec![1; 16],
            ..TaskUpdate::default()
        };
        let t = Instant::now();
        let d = decide(&sim.state, Input::TaskUpdate(u), sim.now, &limits).expect("decides");
        update_us.push(t.elapsed().as_secs_f64() * 1e6);
        let mut s = sim.state.clone();
        let body = d.events.into_iter().next().expect("one event");
        let ev = Event {
            index: s.applied_index + 1,
            time_unix_ms: sim.now,
            body: Some(body),
        };
        s.apply(&ev).expect("applies");
        let t = Instant::now();
        let d2 = decide(&s, Input::Committed(&ev), sim.now, &limits).expect("decides");
        committed_us.push(t.elapsed().as_secs_f64() * 1e6);
        launched += d2
            .events
            .iter()
            .filter(|b| matches!(b, Body::TaskLaunchRequested(_)))
            .count();
    }
    let mut total: Vec<f64> = update_us
        .iter()
        .zip(&committed_us)
        .map(|(a, b)| a + b)
        .collect();
    println!(
        "{name}: decide when one of {} running steps finishes ({} samples, {} launches decided):",
        live.len(),
        update_us.len(),
        launched
    );
    println!(
        "  TaskUpdate -> TaskStatusObserved      median {:>7.2} us  p99 {:>7.2} us",
        median(&mut update_us.clone()),
        pct(&mut update_us, 0.99)
    );
    println!(
        "  Committed(finished) -> next launches  median {:>7.2} us  p99 {:>7.2} us",
        median(&mut committed_us.clone()),
        pct(&mut committed_us, 0.99)
    );
    println!(
        "  both                                  median {:>7.2} us  p99 {:>7.2} us",
        median(&mut total.clone()),
        pct(&mut total, 0.99)
    );
}

fn bench_decide() {
    bench_decide_on("layered 100x100 DAG", &layered_spec(100, 100));
    bench_decide_on("10,000-step chain", &chain_spec(10_000));
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let n: usize = std::env::var("KAON_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let only = std::env::var("KAON_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "decide" {
        bench_decide();
    }
    if only.is_empty() || only == "replay" {
        bench_replay(n);
    }
}
