//! Fuzzing of everything that parses outside input: the cluster file, and the metadata a relay
//! reads from its cloud. Generators under proptest (stable toolchain, no extra tools): mutations of
//! the project's own fixtures, arbitrary text, and grammar-shaped values. Each property asserts
//! that parsing returns (a value or located errors) without panicking, within a second.
//!
//! A short run is part of every `cargo test`; a long one:
//! `HYBRIDGRID_FUZZ_SECONDS=3600 cargo test --release -p hybridgrid-core --test core fuzz_ -- --nocapture`
//! (docs/benchmarks.md records the last). A failing input is written to `fixtures/fuzz/` and
//! replayed by `fuzz_corpus_replays` from then on.

// The run's summary and a hang's input go to the test's output.
#![allow(clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

mod generators;

pub use generators::{metadata_items, mutated_cluster_file, peer_value};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The files mutations start from: every fixture and example.
pub fn seeds() -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["fixtures/valid", "fixtures/invalid", "examples"] {
        let Ok(list) = std::fs::read_dir(root().join(dir)) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = list.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        {
            if let Ok(t) = std::fs::read_to_string(&p) {
                out.push(t);
            }
        }
    }
    out
}

/// Runs `check` on inputs from `strategy`: `HYBRIDGRID_FUZZ_SECONDS` long, else 256 cases. A
/// case that panics or fails is saved under `fixtures/fuzz/` and fails the test; a case that
/// takes more than 10 s aborts the process with the input printed (a hang).
pub fn fuzz<S>(name: &str, strategy: S, check: impl Fn(&S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: std::fmt::Debug + AsRef<str>,
{
    let seconds: u64 = std::env::var("HYBRIDGRID_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let progress = Arc::new(AtomicU64::new(0));
    let current = Arc::new(Mutex::new(String::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let (progress, current, done) = (progress.clone(), current.clone(), done.clone());
        let name = name.to_owned();
        std::thread::spawn(move || {
            let mut last = (progress.load(Ordering::Relaxed), Instant::now());
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let now = progress.load(Ordering::Relaxed);
                if now != last.0 {
                    last = (now, Instant::now());
                } else if last.1.elapsed() > Duration::from_secs(10) {
                    let input = current.lock().map(|c| c.clone()).unwrap_or_default();
                    eprintln!("{name}: no progress for 10 s (a hang) on input:\n{input:?}");
                    std::process::abort();
                }
            }
        })
    };
    let mut total = 0u64;
    let slowest = std::cell::Cell::new(Duration::ZERO);
    loop {
        let mut runner = TestRunner::new(Config {
            cases: if seconds == 0 { 256 } else { 4096 },
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&strategy, |input| {
            if let Ok(mut c) = current.lock() {
                input.as_ref().clone_into(&mut c);
            }
            let t = Instant::now();
            let r = check(&input);
            let took = t.elapsed();
            slowest.set(slowest.get().max(took));
            progress.fetch_add(1, Ordering::Relaxed);
            prop_assert!(took < Duration::from_secs(1), "took {took:?}");
            r
        });
        total += u64::from(runner.config().cases);
        match result {
            Ok(()) => {}
            Err(TestError::Fail(why, input)) => {
                let text: &str = input.as_ref();
                let file = root().join("fixtures/fuzz").join(format!(
                    "{name}-{:016x}.txt",
                    text.bytes()
                        .fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b))
                            .wrapping_mul(0x100000001b3))
                ));
                let _ = std::fs::write(&file, text);
                panic!("{name}: {why}; input saved to {}: {text:?}", file.display());
            }
            Err(e) => panic!("{name}: {e}"),
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    eprintln!("{name}: {total} cases, slowest {:?}", slowest.get());
}

/// Every input saved by an earlier failure still parses without a panic.
pub fn corpus() -> Vec<(PathBuf, String)> {
    let Ok(list) = std::fs::read_dir(root().join("fixtures/fuzz")) else {
        return Vec::new();
    };
    list.flatten()
        .filter_map(|e| {
            let p = e.path();
            let t = std::fs::read_to_string(&p).ok()?;
            Some((p, t))
        })
        .collect()
}
