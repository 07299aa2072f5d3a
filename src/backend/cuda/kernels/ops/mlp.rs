//! Launch wrappers of `kernels/mlp.ptx`: softmax cross-entropy with its gradient, and the MLP's fused
//! bias + ReLU (forward in place, backward with the bias gradient).

use super::*;

/// The loss normalisation `inv` of `softmax_xent_f32` and `sum_final_f64`: 1 / the sum in f64 of
/// the labels' class weights (1 each without weights), 0 if that sum is not positive; the
/// same value `cpu::loss::softmax_cross_entropy` computes.
pub fn softmax_xent_inv(labels: &[u32], class_weights: Option<&[f32]>) -> f64 {
    let wt = |y: u32| class_weights.map_or(1.0, |w| w[y as usize]);
    let norm: f64 = labels.iter().map(|&y| wt(y) as f64).sum();
    if norm > 0.0 {
        1.0 / norm
    } else {
        0.0
    }
}

/// Softmax cross-entropy with its gradient, fused: kernel `softmax_xent_f32` (grid
/// G = min(ceil(rows/256), 1024), block 256, one thread per row) writes the gradient and per-block
/// f64 loss sums; `sum_final_f64` (grid 1, block 256, scale = 1 / sum of weights) gives the
/// loss. Returns `(loss [1], dlogits [rows, classes])`.
pub fn softmax_cross_entropy(
    logits: &CudaStorage,
    labels: &[u32],
    classes: usize,
    class_weights: Option<&[f32]>,
) -> Result<(CudaStorage, CudaStorage)> {
    let _r = nvtx::range("softmax_cross_entropy");
    crate::backend::check_softmax_xent(logits.len(), labels, classes, class_weights)?;
    count("softmax_cross_entropy", logits.len())?;
    let dev = logits.device().clone();
    let rows = labels.len();
    let mut grad = dev.alloc(logits.len())?;
    if rows == 0 {
        return Ok((dev.zeros(1)?, grad));
    }
    let inv = softmax_xent_inv(labels, class_weights);
    if class_weights.is_some() {
        // The normalisation (a launch parameter) changes with the labels.
        dev.refuse_capture("a class-weighted loss")?;
    }
    let ones = vec![1.0f32; classes];
    let weights = upload_u32(&dev, bytemuck::cast_slice(class_weights.unwrap_or(&ones)), FeedKind::Constant)?;
    let labels_d = upload_u32(&dev, labels, FeedKind::Labels)?;
    let (rows32, k) = (rows as u32, classes as u32);
    let g = sum_blocks(rows32);
    let mut partial = scratch_f64(&dev, g as usize)?;
    launch!(
        dev,
        entry::SOFTMAX_XENT_F32,
        cfg((g, 1, 1), BLOCK),
        grad.slice_mut(),
        partial.slice_mut(),
        logits.slice(),
        labels_d.slice(),
        weights.slice(),
        &rows32,
        &k,
        &inv
    )?;
    let mut loss = dev.alloc(1)?;
    launch!(dev, entry::SUM_FINAL_F64, cfg((1, 1, 1), BLOCK), loss.slice_mut(), partial.slice(), &g, &inv)?;
    Ok((loss, grad))
}

/// `y = max(y + b[col], 0)` in place on `y [rows, cols]`. Kernel `bias_relu_fwd_f32`, 1-D grid.
pub fn bias_relu_forward(y: &mut CudaStorage, b: &CudaStorage, rows: usize, cols: usize) -> Result<()> {
    let _r = nvtx::range("bias_relu_forward");
    check_len("bias_relu_forward", "input", y.len(), rows * cols)?;
    check_len("bias_relu_forward", "bias", b.len(), cols)?;
    same_device("bias_relu_forward", y, b)?;
    let n = count("bias_relu_forward", y.len())?;
    if n == 0 {
        return Ok(());
    }
    let cols = cols as u32;
    let dev = y.device().clone();
    launch!(dev, entry::BIAS_RELU_FWD_F32, grid_1d(n), y.slice_mut(), b.slice(), &n, &cols)
}

/// Backward of [`bias_relu_forward`] given its output `y` and the incoming gradient `dy`:
/// returns (dz = dy * (y > 0), db = column sums of dz). Kernels `bias_relu_bwd_partial_f32`
/// (grid (ceil(cols/256), chunks), block 256) and `reduce_cols_final_f64`.
pub fn bias_relu_backward(y: &CudaStorage, dy: &CudaStorage, rows: usize, cols: usize) -> Result<(CudaStorage, CudaStorage)> {
    let _r = nvtx::range("bias_relu_backward");
    check_len("bias_relu_backward", "output", y.len(), rows * cols)?;
    check_len("bias_relu_backward", "dy", dy.len(), rows * cols)?;
    same_device("bias_relu_backward", y, dy)?;
    count("bias_relu_backward", y.len())?;
    let dev = y.device().clone();
    let mut dz = dev.alloc(y.len())?;
    if cols == 0 {
        return Ok((dz, dev.alloc(0)?));
    }
    if rows == 0 {
        return Ok((dz, dev.zeros(cols)?));
    }
    let mut db = dev.alloc(cols)?;
    let (rows, cols) = (rows as u32, cols as u32);
    let (chunks, rpc) = row_chunks(rows, cols);
    let mut partial = scratch_f64(&dev, chunks as usize * cols as usize)?;
    let colblocks = cols.div_ceil(BLOCK);
    launch!(
        dev,
        entry::BIAS_RELU_BWD_PARTIAL_F32,
        cfg((colblocks, chunks, 1), BLOCK),
        dz.slice_mut(),
        partial.slice_mut(),
        dy.slice(),
        y.slice(),
        &rows,
        &cols,
        &rpc
    )?;
    launch!(dev, entry::REDUCE_COLS_FINAL_F64, grid_1d(cols), db.slice_mut(), partial.slice(), &cols, &chunks)?;
    Ok((dz, db))
}
