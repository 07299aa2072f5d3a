//! Timing: the median of timed iterations with the device synchronised around each, and steps
//! queued back to back.

use std::time::Instant;

use crate::device::Device;
use crate::error::Result;
use crate::train::PendingStep;

/// Wall-clock times of the timed iterations of one measurement, in milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    pub samples_ms: Vec<f64>,
}

impl Timing {
    /// The median (the mean of the two middle values for an even count).
    pub fn median_ms(&self) -> f64 {
        let mut v = self.samples_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
        }
    }
    /// The fastest iteration.
    pub fn min_ms(&self) -> f64 {
        self.samples_ms.iter().copied().fold(f64::INFINITY, f64::min)
    }
    /// The slowest iteration.
    pub fn max_ms(&self) -> f64 {
        self.samples_ms.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }
}

/// Runs `f` `warmup` times, then `iters` times timed, synchronising `device` before and after
/// each timed call (device work is asynchronous: the clock stops only when it has finished).
pub fn time_iters(device: &Device, warmup: usize, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    for _ in 0..warmup {
        f()?;
    }
    device.synchronize()?;
    let mut samples_ms = Vec::with_capacity(iters);
    for _ in 0..iters {
        device.synchronize()?;
        let t0 = Instant::now();
        f()?;
        device.synchronize()?;
        samples_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(Timing { samples_ms })
}

/// Queues `iters` steps back to back as the trainer does (each step finished only after the
/// next one is queued, so the host queues ahead of the device; `run_bench` also uploads each
/// step's images, as the trainer does) and returns the mean time per
/// step, from a synchronised device to the last step finished: a throughput, where
/// [`time_iters`] measures the latency of one synchronised step.
pub fn time_pipelined(device: &Device, iters: usize, mut queue: impl FnMut() -> Result<PendingStep>) -> Result<f64> {
    device.synchronize()?;
    let t0 = Instant::now();
    let mut pending: Option<PendingStep> = None;
    for _ in 0..iters {
        let queued = queue()?;
        if let Some(done) = pending.replace(queued) {
            done.finish()?;
        }
    }
    if let Some(done) = pending {
        done.finish()?;
    }
    device.synchronize()?;
    Ok(t0.elapsed().as_secs_f64() * 1e3 / iters.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(Timing { samples_ms: vec![3.0, 1.0, 2.0] }.median_ms(), 2.0);
        assert_eq!(Timing { samples_ms: vec![4.0, 1.0, 2.0, 3.0] }.median_ms(), 2.5);
    }
}
