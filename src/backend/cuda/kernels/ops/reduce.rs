//! Launch wrappers of `kernels/reduce.ptx`: the sum of a buffer and the per-column (per-channel) sums,
//! f64 partials per block then a final pass, so results are reproducible.

use super::*;

/// The sum of all elements (f64 accumulation), as a one-element buffer. Kernels
/// `sum_partial_f32` (grid G = min(ceil(n/256), 1024), block 256) then `sum_final_f64`
/// (grid 1, block 256). Deterministic.
pub fn sum_all(x: &CudaStorage) -> Result<CudaStorage> {
    let _r = nvtx::range("sum_all");
    let n = count("sum_all", x.len())?;
    let dev = x.device().clone();
    if n == 0 {
        return dev.zeros(1);
    }
    let g = sum_blocks(n);
    let mut partial = scratch_f64(&dev, g as usize)?;
    launch!(dev, entry::SUM_PARTIAL_F32, cfg((g, 1, 1), BLOCK), partial.slice_mut(), x.slice(), &n)?;
    let mut out = dev.alloc(1)?;
    let scale = 1.0f64;
    launch!(dev, entry::SUM_FINAL_F64, cfg((1, 1, 1), BLOCK), out.slice_mut(), partial.slice(), &g, &scale)?;
    Ok(out)
}

/// Blocks of the first pass of a deterministic sum over `n` elements (`sum_partial_f32`, and
/// `softmax_xent_f32` over `n` rows): min(ceil(n/256), 1024), at least 1.
pub fn sum_blocks(n: u32) -> u32 {
    n.div_ceil(BLOCK).clamp(1, MAX_SUM_BLOCKS)
}

/// Column sums of `x [rows, cols]` (f64, deterministic) into `out [cols]`:
/// `reduce_cols_partial_f32` on grid (ceil(cols/256), chunks), then `reduce_cols_final_f64`.
fn column_sums(dev: &CudaDevice, out: &mut CudaStorage, x: &CudaStorage, rows: u32, cols: u32) -> Result<()> {
    let (chunks, rpc) = row_chunks(rows, cols);
    let mut partial = scratch_f64(dev, chunks as usize * cols as usize)?;
    let colblocks = cols.div_ceil(BLOCK);
    launch!(dev, entry::REDUCE_COLS_PARTIAL_F32, cfg((colblocks, chunks, 1), BLOCK), partial.slice_mut(), x.slice(), &rows, &cols, &rpc)?;
    launch!(dev, entry::REDUCE_COLS_FINAL_F64, grid_1d(cols), out.slice_mut(), partial.slice(), &cols, &chunks)
}

/// How to cut `rows` into chunks for a column reduction: (chunks, rows per chunk), aiming at
/// about 1024 blocks in all, chunks <= 65535.
pub fn row_chunks(rows: u32, cols: u32) -> (u32, u32) {
    let colblocks = cols.div_ceil(BLOCK).max(1);
    let want = (1024 / colblocks).max(1);
    let chunks0 = want.min(rows).clamp(1, MAX_GRID_Y);
    let rpc = rows.div_ceil(chunks0).max(1);
    (rows.div_ceil(rpc).max(1), rpc)
}

/// `out[m] = sum over o, i of x[o, m, i]` (f64, deterministic). inner == 1: the column
/// reduction above; inner > 1: `reduce_mid_partial_f32` on grid (outer * nchunk, min(mid, 65535))
/// with nchunk = ceil(inner / 2048), block min(256, inner rounded up to 32), then
/// `reduce_cols_final_f64` over the [outer * nchunk, mid] partials.
pub fn reduce_to_mid(x: &CudaStorage, s: BroadcastSpec) -> Result<CudaStorage> {
    let _r = nvtx::range("reduce_to_mid");
    check_len("reduce_to_mid", "input", x.len(), s.outer * s.mid * s.inner)?;
    count("reduce_to_mid", x.len())?;
    let dev = x.device().clone();
    if s.mid == 0 {
        return dev.alloc(0);
    }
    if s.outer == 0 || s.inner == 0 {
        return dev.zeros(s.mid);
    }
    let mut out = dev.alloc(s.mid)?;
    let (outer, mid, inner) = (s.outer as u32, s.mid as u32, s.inner as u32);
    if inner == 1 {
        column_sums(&dev, &mut out, x, outer, mid)?;
        return Ok(out);
    }
    let (nchunk, pieces, block) = plane_split("reduce_to_mid", s.outer, s.mid, s.inner)?;
    let mut partial = scratch_f64(&dev, pieces as usize * mid as usize)?;
    let chunk = PLANE_CHUNK;
    launch!(
        dev,
        entry::REDUCE_MID_PARTIAL_F32,
        partial_cfg(pieces, mid, block),
        partial.slice_mut(),
        x.slice(),
        &outer,
        &mid,
        &inner,
        &chunk,
        &nchunk
    )?;
    launch!(dev, entry::REDUCE_COLS_FINAL_F64, grid_1d(mid), out.slice_mut(), partial.slice(), &mid, &pieces)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_chunks_cover_every_row() {
        for &(rows, cols) in &[(1600u32, 4096u32), (1, 1), (100_000, 2), (5, 64), (7, 300_000)] {
            let (chunks, rpc) = row_chunks(rows, cols);
            assert!((1..=MAX_GRID_Y).contains(&chunks));
            assert!(chunks * rpc >= rows && (chunks - 1) * rpc < rows.max(1), "{rows} {cols}");
        }
    }
}
