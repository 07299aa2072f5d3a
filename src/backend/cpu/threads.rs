//! The CPU backend's threads: rayon's global pool, with the thread that drives the engine as
//! one of its workers.
//!
//! A CPU training step runs a few hundred parallel regions (every GEMM, im2col, batch-norm pass
//! and Adam update), most of them well under a millisecond. Called from a thread outside the
//! pool, each region is handed to a pool thread while the caller sleeps on a latch and is woken
//! at the end: two context switches per region, and pool threads spinning on `sched_yield`
//! between regions. On a 2-core machine that overhead was about a third of the quick start's
//! CPU time. Called from a worker of the pool, a region starts on the caller's own thread and the
//! other workers steal halves of it, as rayon intends.
//!
//! [`use_calling_thread`] makes the calling thread worker 0 of the global pool (rayon's
//! `use_current_thread`). The command-line tool calls it first thing; a program embedding the
//! engine on the CPU should call it from the thread that drives training or inference.
//!
//! Results do not depend on it: the pool keeps its size, so every parallel split (the `gemm`
//! crate's included) is the same and every value is the same, bit for bit.

/// Makes the calling thread a worker of rayon's global pool, so the CPU backend's parallel
/// regions start on it instead of being handed to a pool thread.
///
/// Call it once, early, from a thread that lives as long as the engine is used (the main thread):
/// the pool counts on its worker 0 for the rest of the process. Returns whether the calling
/// thread is a pool worker now. It is not, and nothing changes, where the global pool was
/// already built (by an earlier call from another thread, by the program or by a first parallel
/// region), or where the pool would have a single thread: that thread would then be the only
/// one to run work sent to the pool from other threads, and it runs such work only while inside
/// a parallel region of its own.
pub fn use_calling_thread() -> bool {
    if rayon::current_thread_index().is_some() {
        return true;
    }
    let builder = rayon::ThreadPoolBuilder::new();
    // The size rayon would give the pool (RAYON_NUM_THREADS, else the cores).
    let set = |name| std::env::var(name).ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 0);
    let threads = set("RAYON_NUM_THREADS")
        .or_else(|| set("RAYON_RS_NUM_CPUS"))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    threads > 1 && builder.use_current_thread().build_global().is_ok()
}
