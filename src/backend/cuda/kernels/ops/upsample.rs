//! Launch wrappers of `kernels/upsample.ptx`: bilinear upsampling (align_corners = false), forward and
//! backward.

use super::*;

/// Bilinear upsampling (align_corners = false). Kernel `upsample_bilinear_f32`, one thread per
/// output, 1-D grid; scale = in / out as f32, computed here exactly as `Lerp::new` does.
pub fn upsample_bilinear(x: &CudaStorage, d: Nchw, out_h: usize, out_w: usize) -> Result<CudaStorage> {
    let _r = nvtx::range("upsample_bilinear");
    check_len("upsample_bilinear", "input", x.len(), d.len())?;
    count("upsample_bilinear", x.len())?;
    let dev = x.device().clone();
    let total = count("upsample_bilinear", d.n * d.c * out_h * out_w)?;
    let mut y = dev.alloc(total as usize)?;
    if total == 0 {
        return Ok(y);
    }
    if d.h == 0 || d.w == 0 {
        return Err(Error::bad_shape("upsample_bilinear", format!("cannot upsample an empty {}x{} map", d.h, d.w)));
    }
    let (h, w, oh, ow) = (d.h as u32, d.w as u32, out_h as u32, out_w as u32);
    let scale_h = d.h as f32 / out_h as f32;
    let scale_w = d.w as f32 / out_w as f32;
    launch!(dev, entry::UPSAMPLE_BILINEAR_F32, grid_1d(total), y.slice_mut(), x.slice(), &total, &h, &w, &oh, &ow, &scale_h, &scale_w)?;
    Ok(y)
}

/// Gradient of [`upsample_bilinear`], `dy` being `[n, c, out_h, out_w]`: a deterministic
/// gather in two separable passes of `upsample_bwd_axis_f32` (1-D grids): along x into a
/// `[n*c, out_h, w]` temporary, then along y into dx.
pub fn upsample_bilinear_backward(dy: &CudaStorage, d: Nchw, out_h: usize, out_w: usize) -> Result<CudaStorage> {
    let _r = nvtx::range("upsample_bilinear_backward");
    check_len("upsample_bilinear_backward", "dy", dy.len(), d.n * d.c * out_h * out_w)?;
    count("upsample_bilinear_backward", dy.len())?;
    let dev = dy.device().clone();
    let planes = d.n * d.c;
    let total_dx = count("upsample_bilinear_backward", d.len())?;
    if total_dx == 0 || out_h * out_w == 0 {
        return dev.zeros(d.len());
    }
    let total_tmp = count("upsample_bilinear_backward", planes * out_h * d.w)?;
    let mut tmp = dev.alloc(total_tmp as usize)?;
    let mut dx = dev.alloc(d.len())?;
    let [p1, p2] = upsample_bwd_passes(d, out_h, out_w);
    // Pass 1, along x: src [planes*out_h, out_w] -> tmp [planes*out_h, w].
    launch!(
        dev,
        entry::UPSAMPLE_BWD_AXIS_F32,
        grid_1d(total_tmp),
        tmp.slice_mut(),
        dy.slice(),
        &total_tmp,
        &p1.in_len,
        &p1.out_len,
        &p1.inner,
        &p1.scale,
        &p1.ratio
    )?;
    // Pass 2, along y: tmp [planes, out_h, w] -> dx [planes, h, w].
    launch!(
        dev,
        entry::UPSAMPLE_BWD_AXIS_F32,
        grid_1d(total_dx),
        dx.slice_mut(),
        tmp.slice(),
        &total_dx,
        &p2.in_len,
        &p2.out_len,
        &p2.inner,
        &p2.scale,
        &p2.ratio
    )?;
    Ok(dx)
}

/// The arguments after `total` of one `upsample_bwd_axis_f32` pass: `src` viewed as
/// `[A, out_len, inner]`, `dst` as `[A, in_len, inner]`, `scale = in_len / out_len` and
/// `ratio = out_len / in_len` in f32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpsampleBwdPass {
    pub in_len: u32,
    pub out_len: u32,
    pub inner: u32,
    pub scale: f32,
    pub ratio: f32,
}

/// The two passes of [`upsample_bilinear_backward`]: along x (`dy` `[planes*out_h, out_w]` ->
/// tmp `[planes*out_h, w]`, inner 1), then along y (tmp `[planes, out_h, w]` -> dx
/// `[planes, h, w]`, inner `w`).
pub fn upsample_bwd_passes(d: Nchw, out_h: usize, out_w: usize) -> [UpsampleBwdPass; 2] {
    let (h, w, oh, ow) = (d.h as u32, d.w as u32, out_h as u32, out_w as u32);
    [
        UpsampleBwdPass { in_len: w, out_len: ow, inner: 1, scale: d.w as f32 / out_w as f32, ratio: out_w as f32 / d.w as f32 },
        UpsampleBwdPass { in_len: h, out_len: oh, inner: w, scale: d.h as f32 / out_h as f32, ratio: out_h as f32 / d.h as f32 },
    ]
}
