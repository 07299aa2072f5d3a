//! Launch wrappers of `kernels/pool.ptx`: 2x2 max pooling, forward and backward.

use super::*;

/// 2x2 max pooling, stride 2, floor mode. Kernel `max_pool2x2_f32`, one thread per output,
/// 1-D grid.
pub fn max_pool2x2(x: &CudaStorage, d: Nchw) -> Result<CudaStorage> {
    let _r = nvtx::range("max_pool2x2");
    check_len("max_pool2x2", "input", x.len(), d.len())?;
    count("max_pool2x2", x.len())?;
    let (oh, ow) = (d.h / 2, d.w / 2);
    let dev = x.device().clone();
    let total = count("max_pool2x2", d.n * d.c * oh * ow)?;
    let mut y = dev.alloc(total as usize)?;
    if total == 0 {
        return Ok(y);
    }
    let (h, w, oh, ow) = (d.h as u32, d.w as u32, oh as u32, ow as u32);
    launch!(dev, entry::MAX_POOL2X2_F32, grid_1d(total), y.slice_mut(), x.slice(), &total, &h, &w, &oh, &ow)?;
    Ok(y)
}

/// Gradient of 2x2 max pooling (first maximum in row-major order). Kernel
/// `max_pool2x2_backward_f32`, one thread per window, 1-D grid; dx is zero-filled first only
/// when h or w is odd (otherwise the windows cover it).
pub fn max_pool2x2_backward(x: &CudaStorage, dy: &CudaStorage, d: Nchw) -> Result<CudaStorage> {
    let _r = nvtx::range("max_pool2x2_backward");
    check_len("max_pool2x2_backward", "input", x.len(), d.len())?;
    check_len("max_pool2x2_backward", "dy", dy.len(), d.n * d.c * (d.h / 2) * (d.w / 2))?;
    same_device("max_pool2x2_backward", x, dy)?;
    count("max_pool2x2_backward", x.len())?;
    let (oh, ow) = (d.h / 2, d.w / 2);
    let dev = x.device().clone();
    let total = count("max_pool2x2_backward", d.n * d.c * oh * ow)?;
    let mut dx = if total == 0 || d.h % 2 == 1 || d.w % 2 == 1 { dev.zeros(x.len())? } else { dev.alloc(x.len())? };
    if total == 0 {
        return Ok(dx);
    }
    let (h, w, oh, ow) = (d.h as u32, d.w as u32, oh as u32, ow as u32);
    launch!(dev, entry::MAX_POOL2X2_BACKWARD_F32, grid_1d(total), dx.slice_mut(), x.slice(), dy.slice(), &total, &h, &w, &oh, &ow)?;
    Ok(dx)
}
