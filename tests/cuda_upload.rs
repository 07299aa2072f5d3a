//! Host-to-device copies of every kind arrive bit for bit: small ones (queued inline by the
//! driver), mid-sized ones through the pinned staging buffer (several in a row, reusing and
//! then growing the buffer, queued behind device work), and large ones from pageable memory.
//! The same body runs on the CPU; without a GPU the CUDA half prints that it was skipped, and
//! with HYPERSEG_REQUIRE_GPU=1 it fails.

mod common;

use common::rand_vec;
use hyperseg_engine::backend::cuda::staging::{is_staged, MAX_STAGED_BYTES, MIN_STAGED_BYTES};
use hyperseg_engine::{Device, Result, Tensor};

fn uploads_arrive_exactly(dev: &Device) -> Result<()> {
    let sizes =
        [7, MIN_STAGED_BYTES / 4 - 1, MIN_STAGED_BYTES / 4, 3 * 64 * 64 * 5, 3 * 64 * 64 * 5, 5 * 3 * 224 * 224, MAX_STAGED_BYTES / 4 + 1];
    assert!(!is_staged(sizes[1]) && is_staged(sizes[2]) && !is_staged(sizes[6]));
    // Device work queued first, so that the copies wait behind it.
    let busy = Tensor::from_vec(rand_vec(1 << 20, 1), [1 << 20], dev)?;
    let mut pending = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let _work = busy.sqr()?.sqrt()?;
        let values = rand_vec(n, 10 + i as u64);
        pending.push((Tensor::from_vec(values.clone(), [n], dev)?, values));
    }
    for (i, (t, want)) in pending.iter().enumerate() {
        let got = t.to_vec()?;
        let same = got.len() == want.len() && got.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{dev}: upload {i} of {} values differs", want.len());
    }
    Ok(())
}

test_device!(uploads_arrive_exactly, uploads_arrive_exactly_cpu, uploads_arrive_exactly_cuda);
