//! Output buffers of the CPU kernels, zeroed by the threads that go on to fill them.
//!
//! A serial `vec![0.0; n]` is a memset of the whole output on the calling thread alone (calloc
//! clears a reused heap block), while the other cores wait for the kernel's parallel region:
//! on two cores, about 8% of the training step's critical path. Here each parallel task zeroes
//! its own chunk just before it writes it, so the zeros land in cache and the clearing is
//! shared.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Below this many floats a buffer is zeroed on the calling thread.
const PARALLEL_MIN: usize = 1 << 15;
/// Floats per task when [`zeros`] clears in parallel.
const ZERO_CHUNK: usize = 1 << 14;

/// `chunk` zeroed: the same memory, now initialised, as f32.
fn zeroed(chunk: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    for v in chunk.iter_mut() {
        v.write(0.0);
    }
    // SAFETY: every element of `chunk` was just written, and `MaybeUninit<f32>` has the layout
    // of `f32`.
    unsafe { std::slice::from_raw_parts_mut(chunk.as_mut_ptr().cast::<f32>(), chunk.len()) }
}

/// `len` zeros; a large buffer is cleared in parallel.
pub fn zeros(len: usize) -> Vec<f32> {
    if len < PARALLEL_MIN {
        return vec![0.0; len];
    }
    filled_by_chunks(len, ZERO_CHUNK, |_, _| {})
}

/// A buffer of `len` floats made in parallel, chunk by chunk: chunk `i` (`chunk` floats, the
/// last one shorter) is zeroed and then handed to `fill(i, chunk)` by the task that holds it,
/// as `vec![0.0; len]` followed by `par_chunks_mut(chunk).enumerate().for_each(fill)` would.
pub fn filled_by_chunks(len: usize, chunk: usize, fill: impl Fn(usize, &mut [f32]) + Send + Sync) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len].par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| fill(i, zeroed(c)));
    // SAFETY: the capacity is at least `len`, and the chunks, which cover `0..len`, were all
    // zeroed (and maybe written since) before this point.
    unsafe { v.set_len(len) };
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_are_zeros_at_every_size() {
        for len in [0, 1, PARALLEL_MIN - 1, PARALLEL_MIN, 3 * ZERO_CHUNK + 7] {
            let v = zeros(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|x| x.to_bits() == 0), "{len}");
        }
    }

    #[test]
    fn chunks_arrive_zeroed_and_indexed_as_par_chunks_mut_numbers_them() {
        for (len, chunk) in [(0, 4), (10, 3), (12, 4), (1 << 16, 1000), (5, 0)] {
            let got = filled_by_chunks(len, chunk, |i, c| {
                assert!(c.iter().all(|x| x.to_bits() == 0), "chunk {i} not zeroed");
                for (j, x) in c.iter_mut().enumerate().filter(|(j, _)| j % 2 == 0) {
                    *x = (i * 1000 + j) as f32;
                }
            });
            let mut want = vec![0.0f32; len];
            want.par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| {
                for (j, x) in c.iter_mut().enumerate().filter(|(j, _)| j % 2 == 0) {
                    *x = (i * 1000 + j) as f32;
                }
            });
            assert_eq!(got, want, "len {len}, chunk {chunk}");
        }
    }
}
