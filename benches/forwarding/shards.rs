//! The engine-only shard bench (`FORWARDING_SHARDS=K`): K threads, each owning a world
//! of its own (an engine, its room, its clients) running the same profile, as one engine
//! per core with rooms kept on their shard would. Each round runs shard 0 alone, then all
//! K together (the order alternating between rounds), for the same wall-clock interval,
//! and prints the packets forwarded per wall-clock second in all, and the ratio K / 1.
//!
//! The clients' work (their DTLS-SRTP, TWCC feedback) runs on the shard's thread too, so
//! the wall-clock rate is the whole simulation's, not the engine's alone; what the ratio
//! shows is whether independent engines scale with the cores they are given (shared
//! allocator, caches, memory bandwidth). Each shard's packets per second of engine time
//! are printed beside it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use super::{STEP, env_or};

/// A profile's world as a shard runs it.
pub trait Shard {
    /// Starts counting.
    fn start(&mut self);
    /// One step of the profile's load and of the world.
    fn step(&mut self);
    /// Stops counting: packets counted (media packets in the realistic profile) and the
    /// time spent in the engine's calls.
    fn stop(&mut self) -> (u64, Duration);
}

/// What one shard did in one phase.
#[derive(Clone, Copy)]
struct Run {
    packets: u64,
    engine: Duration,
    wall: Duration,
}

impl Run {
    fn wall_rate(&self) -> f64 {
        self.packets as f64 / self.wall.as_secs_f64()
    }

    fn engine_rate(&self) -> f64 {
        self.packets as f64 / self.engine.as_secs_f64()
    }
}

/// Runs `shards` worlds made by `make`, `rounds` times one alone and all together.
pub fn run<B: Shard>(shards: usize, rounds: usize, what: &str, make: impl Fn() -> B + Sync) {
    let wall = Duration::from_millis(env_or("FORWARDING_WALL_MS", 3000));
    // Bounds each phase whatever the clock does: far more virtual time than a phase
    // reaches (the world runs slower than real time).
    let max_steps = (wall.as_secs_f64() * 20.0 / STEP.as_secs_f64()) as u64;
    println!(
        "shards: {shards} threads, each with its own engine and room; {rounds} rounds of \
         {:.1} s wall-clock, 1 shard then {shards} (alternating); {what} per wall-clock second",
        wall.as_secs_f64()
    );
    let barrier = Barrier::new(shards + 1);
    let active = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Run>>> = Mutex::new(vec![None; shards]);
    let mut ratios = Vec::new();
    let mut totals = (Vec::new(), Vec::new());
    std::thread::scope(|scope| {
        for index in 0..shards {
            let (barrier, active, results, make) = (&barrier, &active, &results, &make);
            scope.spawn(move || {
                let mut bench = make();
                barrier.wait();
                loop {
                    barrier.wait();
                    let running = active.load(Ordering::SeqCst);
                    if running == 0 {
                        return;
                    }
                    if index < running {
                        bench.start();
                        let started = Instant::now();
                        let deadline = started + wall;
                        let mut steps = 0;
                        while Instant::now() < deadline && steps < max_steps {
                            bench.step();
                            steps += 1;
                        }
                        let (packets, engine) = bench.stop();
                        results.lock().expect("no panic holding it")[index] = Some(Run {
                            packets,
                            engine,
                            wall: started.elapsed(),
                        });
                    }
                    barrier.wait();
                }
            });
        }
        // Every shard connected.
        barrier.wait();
        let phase = |running: usize| -> Vec<Run> {
            active.store(running, Ordering::SeqCst);
            barrier.wait();
            barrier.wait();
            let mut results = results.lock().expect("no panic holding it");
            results.iter_mut().filter_map(Option::take).collect()
        };
        for round in 0..rounds {
            let (one, all) = if round % 2 == 0 {
                let one = phase(1);
                (one, phase(shards))
            } else {
                let all = phase(shards);
                (phase(1), all)
            };
            let one_rate = one[0].wall_rate();
            let all_rate: f64 = all.iter().map(Run::wall_rate).sum();
            let engine: Vec<String> = all
                .iter()
                .map(|r| format!("{:.0}", r.engine_rate()))
                .collect();
            println!(
                "  round {round}: 1 shard {one_rate:>9.0}/s (engine {:.0}/s per core); \
                 {shards} shards {all_rate:>9.0}/s (engine per core: {}); ratio {:.2}",
                one[0].engine_rate(),
                engine.join(", "),
                all_rate / one_rate
            );
            ratios.push(all_rate / one_rate);
            totals.0.push(one_rate);
            totals.1.push(all_rate);
        }
        active.store(0, Ordering::SeqCst);
        barrier.wait();
    });
    let summary = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() - 1], v[v.len() / 2])
    };
    let (best, median) = summary(&mut ratios);
    let (one_best, one_median) = summary(&mut totals.0);
    let (all_best, all_median) = summary(&mut totals.1);
    println!(
        "  1 shard best {one_best:.0}/s median {one_median:.0}/s; {shards} shards best \
         {all_best:.0}/s median {all_median:.0}/s; ratio {shards}/1 best {best:.2} median {median:.2}"
    );
}
