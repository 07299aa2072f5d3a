//! Launch wrappers of `kernels/adam.ptx`: one Adam step per buffer, or every parameter in one
//! multi-tensor launch.

use super::*;

/// One Adam step on one parameter buffer. Kernel `adam_f32`, 1-D grid.
pub fn adam_step(p: &mut CudaStorage, grad: &CudaStorage, m: &mut CudaStorage, v: &mut CudaStorage, h: &AdamStep) -> Result<()> {
    let _r = nvtx::range("adam_step");
    check_len("adam", "grad", grad.len(), p.len())?;
    check_len("adam", "m", m.len(), p.len())?;
    check_len("adam", "v", v.len(), p.len())?;
    same_device("adam", p, grad)?;
    same_device("adam", p, m)?;
    same_device("adam", p, v)?;
    let n = count("adam", p.len())?;
    if n == 0 {
        return Ok(());
    }
    let dev = p.device().clone();
    // Its bias corrections are launch parameters: a captured graph would freeze them.
    dev.refuse_capture("the single-buffer Adam update")?;
    launch!(
        dev,
        entry::ADAM_F32,
        grid_1d(n),
        p.slice_mut(),
        grad.slice(),
        m.slice_mut(),
        v.slice_mut(),
        &n,
        &h.lr,
        &h.beta1,
        &h.beta2,
        &h.eps,
        &h.weight_decay,
        &h.bias_correction1,
        &h.bias_correction2
    )
}

/// The `blocks` table of `adam_multi_f32` for tensors of `lens` elements: one (tensor, chunk
/// index) pair per [`ADAM_CHUNK`]-element chunk of each tensor, tensors in order (none for an
/// empty tensor). Its length / 2 is the launch's grid.
pub fn adam_blocks(lens: &[u32]) -> Vec<u32> {
    let mut blocks = Vec::new();
    for (t, n) in lens.iter().enumerate() {
        for c in 0..n.div_ceil(ADAM_CHUNK) {
            blocks.extend([t as u32, c]);
        }
    }
    blocks
}

/// One parameter buffer of a multi-tensor Adam step.
pub struct AdamGroup<'a> {
    pub p: &'a mut CudaStorage,
    pub grad: &'a CudaStorage,
    pub m: &'a mut CudaStorage,
    pub v: &'a mut CudaStorage,
}

/// One Adam step on many parameter buffers in a single launch (same hyper-parameters).
/// Kernel `adam_multi_f32`: `[lr, bc1, bc2]` uploaded as [`FeedKind::AdamScalars`], a table of
/// (p, g, m, v, n) per tensor and a (tensor, chunk) pair
/// per block, uploaded here; grid (number of 16384-element chunks over all tensors), block 256.
pub fn adam_step_multi(groups: &mut [AdamGroup<'_>], h: &AdamStep) -> Result<()> {
    let _r = nvtx::range("adam_step_multi");
    let Some(first) = groups.first() else {
        return Ok(());
    };
    let dev = first.p.device().clone();
    let mut table: Vec<u64> = Vec::with_capacity(groups.len() * 5);
    let mut lens: Vec<u32> = Vec::with_capacity(groups.len());
    for gr in groups.iter() {
        let n = gr.p.len();
        check_len("adam", "grad", gr.grad.len(), n)?;
        check_len("adam", "m", gr.m.len(), n)?;
        check_len("adam", "v", gr.v.len(), n)?;
        for o in [&*gr.p, gr.grad, &*gr.m, &*gr.v] {
            if !o.device().same_device(&dev) {
                return Err(Error::DeviceMismatch {
                    op: "adam",
                    lhs: format!("cuda:{}", dev.ordinal()),
                    rhs: format!("cuda:{}", o.device().ordinal()),
                });
            }
        }
        let n32 = count("adam", n)?;
        table.extend([gr.p.raw_ptr(), gr.grad.raw_ptr(), gr.m.raw_ptr(), gr.v.raw_ptr(), n as u64]);
        lens.push(n32);
    }
    let blocks = adam_blocks(&lens);
    let nblocks = count("adam", blocks.len() / 2)?;
    if nblocks == 0 {
        return Ok(());
    }
    if nblocks > i32::MAX as u32 {
        return Err(Error::bad_shape("adam", "too many blocks"));
    }
    // The table and the blocks name the same buffers at every step of a captured graph; the
    // scalars that change (learning rate, bias corrections) are read from device memory.
    let table_d = upload_u64(&dev, &table, FeedKind::Constant)?;
    let blocks_d = upload_u32(&dev, &blocks, FeedKind::Constant)?;
    let scalars = [h.lr, h.bias_correction1, h.bias_correction2].map(f32::to_bits);
    let scalars_d = upload_u32(&dev, &scalars, FeedKind::AdamScalars)?;
    let chunk = ADAM_CHUNK;
    launch!(
        dev,
        entry::ADAM_MULTI_F32,
        cfg((nblocks, 1, 1), BLOCK),
        table_d.slice(),
        blocks_d.slice(),
        &chunk,
        scalars_d.slice(),
        &h.beta1,
        &h.beta2,
        &h.eps,
        &h.weight_decay
    )
}
