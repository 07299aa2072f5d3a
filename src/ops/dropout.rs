//! Dropout with a seeded, backend-independent mask (see [`crate::backend::hash_u32`]).

use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl Tensor {
    /// Zeroes each element with probability `p` and scales the rest by `1 / (1 - p)`; the mask
    /// is a pure function of `seed` and the element index. `p = 0` returns `self`.
    pub fn dropout(&self, p: f32, seed: u32) -> Result<Tensor> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidValue { name: "dropout probability", msg: format!("{p} is not in [0, 1)") });
        }
        if p == 0.0 {
            return Ok(self.clone());
        }
        let st = self.storage();
        let mask = Tensor::from_storage(st.dropout_mask(self.elem_count(), 1.0 - p, seed)?, self.shape().clone())?;
        let out = st.binary(&mask.storage(), crate::backend::BinaryOp::Mul)?;
        drop(st);
        Tensor::from_op(out, self.shape().clone(), "dropout", &[self], move |g, _| Ok(vec![Some(g.mul(&mask)?)]))
    }
}
