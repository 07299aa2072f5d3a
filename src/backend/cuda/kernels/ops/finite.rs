//! Launch wrapper of `kernels/finite.ptx`: whether any of many buffers holds a non-finite value, in one
//! launch.

use super::*;

/// Elements per block of `nonfinite_multi_f32`.
pub const FINITE_CHUNK: u32 = 1 << 16;

/// Whether every element of every buffer is finite, in one launch: `+0.0`, `+inf` or `NaN`
/// as a one-element buffer (see `BackendStorage::non_finite`). Kernel `nonfinite_multi_f32`
/// (kernels/finite.ptx): a table of (address, n) per buffer and a (buffer, chunk) pair per
/// block, uploaded here; grid (number of 65536-element chunks over all buffers), block 256.
/// CPU reference: `cpu::elementwise::non_finite` (bit-exact: an OR of flags).
pub fn non_finite(buffers: &[&CudaStorage]) -> Result<CudaStorage> {
    let _r = nvtx::range("non_finite");
    let Some(first) = buffers.first() else {
        return Err(Error::bad_shape("non_finite", "no buffers"));
    };
    let dev = first.device().clone();
    let mut out = dev.zeros(1)?;
    let mut bufs: Vec<(u64, u32)> = Vec::with_capacity(buffers.len());
    for b in buffers {
        same_device("non_finite", first, b)?;
        bufs.push((b.raw_ptr(), count("non_finite", b.len())?));
    }
    let (table, blocks) = nonfinite_tables(&bufs);
    let nblocks = count("non_finite", blocks.len() / 2)?;
    if nblocks == 0 {
        return Ok(out);
    }
    let table_d = upload_u64(&dev, &table, FeedKind::Constant)?;
    let blocks_d = upload_u32(&dev, &blocks, FeedKind::Constant)?;
    let chunk = FINITE_CHUNK;
    launch!(dev, entry::NONFINITE_MULTI_F32, cfg((nblocks, 1, 1), BLOCK), out.slice_mut(), table_d.slice(), blocks_d.slice(), &chunk)?;
    Ok(out)
}

/// The host tables of `nonfinite_multi_f32` for buffers given as (device address, element
/// count): `table` holds (address, n) per non-empty buffer (empty ones are left out), `blocks`
/// a (table index, chunk index) pair per block, one per `FINITE_CHUNK` elements (the grid is
/// `blocks.len() / 2` blocks).
pub fn nonfinite_tables(buffers: &[(u64, u32)]) -> (Vec<u64>, Vec<u32>) {
    let mut table: Vec<u64> = Vec::with_capacity(buffers.len() * 2);
    let mut blocks: Vec<u32> = Vec::new();
    for &(ptr, n) in buffers {
        if n == 0 {
            continue;
        }
        let t = (table.len() / 2) as u32;
        table.extend([ptr, n as u64]);
        for c in 0..n.div_ceil(FINITE_CHUNK) {
            blocks.extend([t, c]);
        }
    }
    (table, blocks)
}
