//! `use_calling_thread`: the calling thread joins rayon's global pool as worker 0, work sent to
//! the pool from other threads still runs, and a CPU training step gives the same values, bit for
//! bit, from a pool worker and from a thread outside the pool.
//!
//! One test in its own process: the global pool is built once per process.

mod common;

use common::train_tiny;
use hyperseg_engine::{use_calling_thread, Device, Result};
use rayon::prelude::*;

#[test]
fn calling_thread_joins_the_pool_and_results_do_not_change() -> Result<()> {
    assert_eq!(rayon::current_thread_index(), None, "the test thread starts outside any pool");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let expected = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 0).unwrap_or(cores);
    let joined = use_calling_thread();
    if expected < 2 {
        // A pool of one would have nobody else to run work sent from other threads.
        assert!(!joined, "a one-thread pool must not take the calling thread");
        assert_eq!(rayon::current_thread_index(), None);
        return Ok(());
    }
    assert!(joined, "the global pool was not built yet, so the calling thread must join it");
    assert_eq!(rayon::current_thread_index(), Some(0), "the calling thread is worker 0");
    assert_eq!(rayon::current_num_threads(), expected, "the pool keeps the size rayon would give it");
    assert!(use_calling_thread(), "a second call from a worker reports it is one");

    // Another thread cannot join the built pool; its parallel work runs on the other workers
    // while worker 0 is blocked outside rayon (here, in join()).
    let other = std::thread::spawn(|| {
        let joined = use_calling_thread();
        let index = rayon::current_thread_index();
        let sum: u64 = (0..100_000u64).into_par_iter().map(|i| i * i % 7).sum();
        (joined, index, sum)
    })
    .join()
    .expect("the other thread ran");
    let sum: u64 = (0..100_000u64).map(|i| i * i % 7).sum();
    assert_eq!(other, (false, None, sum));

    // The same training steps from the pool's worker 0 and from a thread outside the pool.
    let inside = train_tiny(&Device::Cpu, 3)?;
    let outside = std::thread::spawn(|| train_tiny(&Device::Cpu, 3)).join().expect("the other thread ran")?;
    assert!(inside.0.is_finite() && inside.1.is_finite(), "losses {inside:?}");
    assert_eq!(
        (inside.0.to_bits(), inside.1.to_bits()),
        (outside.0.to_bits(), outside.1.to_bits()),
        "losses inside the pool {inside:?}, outside {outside:?}"
    );
    Ok(())
}
