//! The Adam (and decoupled-weight-decay AdamW) update on the host: the CPU reference for
//! `kernels/adam.ptx`.

use rayon::prelude::*;

use crate::backend::AdamStep;

/// `m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
///  p -= lr * ((m / bc1) / (sqrt(v / bc2) + eps) + wd * p)` (the kernel's order of operations).
pub fn step(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamStep) {
    p.par_iter_mut().zip(g).zip(m.par_iter_mut().zip(v.par_iter_mut())).for_each(|((p, &g), (m, v))| {
        *m = h.beta1 * *m + (1.0 - h.beta1) * g;
        *v = h.beta2 * *v + (1.0 - h.beta2) * g * g;
        let mhat = *m / h.bias_correction1;
        let vhat = *v / h.bias_correction2;
        *p -= h.lr * (mhat / (vhat.sqrt() + h.eps) + h.weight_decay * *p);
    });
}
