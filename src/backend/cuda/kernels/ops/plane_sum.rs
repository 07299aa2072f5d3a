//! Launch wrappers of `kernels/hypercolumn_sum.ptx`: the factored dense path's fused first layer
//! (planes sampled, summed, biased, clamped), shared by its f32 and bf16 entries.

use super::*;

/// The factored dense first layer, fused: `out[p, j] = max(((z_0 + z_1) + ...) + bias[j], 0)`,
/// `z_i` being plane `i` (pixel-major `[n, h_i, w_i, cols]`) bilinearly sampled at point `p`
/// with the sparse gather's weights. `[points, cols]`. Kernel `upsample_sum_bias_relu_f32`
/// (kernels/hypercolumn_sum.ptx), one launch: grid (ceil(cols/B), min(P, 65535)), block B =
/// min(256, cols rounded up to 32); thread = (point, column), so the plane reads and the
/// stores are coalesced along the columns. The planes are passed as an uploaded table of
/// 24-byte records { ptr: u64, h: u32, w: u32, scale_h: f32, scale_w: f32 }.
/// CPU reference: `cpu::resample::plane_sum_forward` (bit-exact).
pub fn upsample_sum_bias_relu(
    planes: &[&CudaStorage],
    bias: &CudaStorage,
    points: &[SamplePoint],
    s: &PlaneSumSpec,
) -> Result<CudaStorage> {
    let _r = nvtx::range("upsample_sum_bias_relu");
    let planes: Vec<PlaneBuf> = planes.iter().map(|z| PlaneBuf { buffer: z, len: z.len(), ptr: z.raw_ptr() }).collect();
    plane_sum_launch("upsample_sum_bias_relu", entry::UPSAMPLE_SUM_BIAS_RELU_F32, &planes, bias, points, s, |dev, total| {
        let out = dev.alloc(total)?;
        let ptr = out.raw_ptr();
        Ok((out, ptr))
    })
}

/// One plane of the fused first layer: the buffer holding it (for its device), its element
/// count and its device address.
pub(crate) struct PlaneBuf<'a> {
    pub buffer: &'a CudaStorage,
    pub len: usize,
    pub ptr: u64,
}

/// The checks and the launch shared by the fused first layer's f32 and bf16 kernels (`kernel`,
/// with the parameter list of `kernels/hypercolumn_sum.ptx`): `alloc(dev, elements)` makes the
/// `[points, cols]` output and gives its device address.
pub(crate) fn plane_sum_launch<T>(
    op: &'static str,
    kernel: &'static str,
    planes: &[PlaneBuf<'_>],
    bias: &CudaStorage,
    points: &[SamplePoint],
    s: &PlaneSumSpec,
    alloc: impl FnOnce(&CudaDevice, usize) -> Result<(T, u64)>,
) -> Result<T> {
    let lens: Vec<usize> = planes.iter().map(|z| z.len).collect();
    crate::backend::check_plane_sum(&lens, bias.len(), points, s)?;
    let Some(first) = planes.first() else {
        return Err(Error::bad_shape(op, "no planes"));
    };
    for z in planes {
        same_device(op, first.buffer, z.buffer)?;
        count(op, z.len)?;
    }
    same_device(op, first.buffer, bias)?;
    let dev = first.buffer.device().clone();
    let total = count(op, points.len() * s.cols)?;
    let (out, out_ptr) = alloc(&dev, total as usize)?;
    if total == 0 {
        return Ok(out);
    }
    dev.refuse_capture("the factored dense first layer")?;
    let ptrs: Vec<u64> = planes.iter().map(|z| z.ptr).collect();
    let table_d = upload_u64(&dev, &plane_table(&ptrs, s), FeedKind::Constant)?;
    let pts = upload_u32(&dev, points_u32(points), FeedKind::Points)?;
    let (nt, np, cols) = (planes.len() as u32, points.len() as u32, s.cols as u32);
    // The table holds raw pointers to the planes: they are borrowed for this call and the
    // stream is in order, and table_d / pts (pool buffers) live until the launch is enqueued.
    launch!(
        dev,
        kernel as UPSAMPLE_SUM_BIAS_RELU_F32 | UPSAMPLE_SUM_BIAS_RELU_BF16,
        column_rows_cfg(cols, np),
        &out_ptr,
        table_d.slice(),
        &nt,
        bias.slice(),
        pts.slice(),
        &np,
        &cols
    )?;
    Ok(out)
}

/// The plane descriptors of `upsample_sum_bias_relu_{f32,bf16}` for the planes at device
/// addresses `ptrs`, 24 bytes (three u64) per plane: { ptr: u64, h: u32, w: u32, scale_h: f32,
/// scale_w: f32 } (little-endian, so the low word of each u64 is the first field).
pub fn plane_table(ptrs: &[u64], s: &PlaneSumSpec) -> Vec<u64> {
    let mut table = Vec::with_capacity(ptrs.len() * 3);
    for (&ptr, &(h, w)) in ptrs.iter().zip(&s.planes) {
        // As Lerp::new(y, h, in_h): h as f32 / in_h as f32.
        let scale_h = h as f32 / s.in_h as f32;
        let scale_w = w as f32 / s.in_w as f32;
        table.extend([ptr, (h as u32 as u64) | ((w as u32 as u64) << 32), (scale_h.to_bits() as u64) | ((scale_w.to_bits() as u64) << 32)]);
    }
    table
}
