//! Adam (Kingma & Ba) with bias correction and optional decoupled weight decay (AdamW). The
//! moments live on each parameter's device; on CUDA one multi-tensor launch updates every
//! parameter, on the CPU one rayon loop per parameter.
//! Its state (step count and moments) can be saved and restored for checkpoints.

use crate::backend::AdamStep;
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::tensor::Tensor;

/// Adam's hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled weight decay (AdamW); 0 for plain Adam.
    pub weight_decay: f32,
}

impl Default for AdamConfig {
    /// The paper's setting: lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay.
    fn default() -> Self {
        AdamConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// Adam's state on the host, in parameter order: what a checkpoint stores.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamState {
    /// Steps taken so far.
    pub step: u64,
    /// First moments.
    pub m: Vec<Vec<f32>>,
    /// Second moments.
    pub v: Vec<Vec<f32>>,
}

/// The Adam optimiser over a fixed list of variables.
pub struct Adam {
    config: AdamConfig,
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: u64,
}

impl Adam {
    /// An optimiser for `params`, which must all be variables.
    pub fn new(params: Vec<Tensor>, config: AdamConfig) -> Result<Adam> {
        if let Some(p) = params.iter().find(|p| !p.is_variable()) {
            return Err(Error::InvalidValue { name: "Adam parameter", msg: format!("{p:?} is not a variable") });
        }
        let zeros = |p: &Tensor| Tensor::zeros(p.shape().clone(), p.device());
        let m = params.iter().map(zeros).collect::<Result<_>>()?;
        let v = params.iter().map(zeros).collect::<Result<_>>()?;
        Ok(Adam { config, params, m, v, step: 0 })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// Changes the learning rate (schedules).
    pub fn set_lr(&mut self, lr: f32) {
        self.config.lr = lr;
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The variables being optimised.
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// The hyper-parameters the next update will use (the step count plus one), as the
    /// kernels take them.
    pub fn next_update(&self) -> AdamStep {
        let c = &self.config;
        let t = (self.step + 1) as i32;
        AdamStep {
            lr: c.lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            bias_correction1: 1.0 - c.beta1.powi(t),
            bias_correction2: 1.0 - c.beta2.powi(t),
        }
    }

    /// Counts one update made elsewhere (by a replayed CUDA graph, see
    /// [`crate::train::StepGraph`]) and returns its hyper-parameters, exactly as [`Adam::step`]
    /// would have used them.
    pub(crate) fn advance(&mut self) -> AdamStep {
        let h = self.next_update();
        self.step += 1;
        h
    }

    /// Sets the step count back (a capture that failed counted an update that never ran).
    pub(crate) fn rewind(&mut self, steps: u64) {
        self.step = steps;
    }

    /// The device addresses of every parameter and moment buffer, in order (empty on the CPU):
    /// a captured graph checks that they have not moved.
    pub(crate) fn device_addresses(&self) -> Vec<Option<u64>> {
        self.params.iter().chain(&self.m).chain(&self.v).map(|t| t.storage().device_address()).collect()
    }

    /// One update of every parameter that has a gradient.
    pub fn step(&mut self) -> Result<()> {
        let h = self.advance();
        // Every parameter with a gradient, updated together (one launch on CUDA).
        let active: Vec<(usize, Tensor)> = self.params.iter().enumerate().filter_map(|(i, p)| p.grad().map(|g| (i, g))).collect();
        let mut ps: Vec<_> = active.iter().map(|(i, _)| self.params[*i].storage_mut()).collect();
        let gs: Vec<_> = active.iter().map(|(_, g)| g.storage()).collect();
        let mut ms: Vec<_> = active.iter().map(|(i, _)| self.m[*i].storage_mut()).collect();
        let mut vs: Vec<_> = active.iter().map(|(i, _)| self.v[*i].storage_mut()).collect();
        let mut items: Vec<_> = ps
            .iter_mut()
            .zip(&gs)
            .zip(ms.iter_mut().zip(vs.iter_mut()))
            .map(|((p, g), (m, v))| (&mut **p, &**g, &mut **m, &mut **v))
            .collect();
        Storage::adam_step_all(&mut items, &h)
    }

    /// Forgets every parameter's gradient.
    pub fn zero_grad(&self) {
        self.params.iter().for_each(Tensor::zero_grad);
    }

    /// The state, copied to the host.
    pub fn state(&self) -> Result<AdamState> {
        Ok(AdamState {
            step: self.step,
            m: self.m.iter().map(Tensor::to_vec).collect::<Result<_>>()?,
            v: self.v.iter().map(Tensor::to_vec).collect::<Result<_>>()?,
        })
    }

    /// Restores a state saved by [`Adam::state`] for the same parameters.
    pub fn load_state(&mut self, s: &AdamState) -> Result<()> {
        if s.m.len() != self.params.len() || s.v.len() != self.params.len() {
            return Err(Error::InvalidValue {
                name: "optimizer state",
                msg: format!("has {} tensors, the model has {} parameters", s.m.len(), self.params.len()),
            });
        }
        for ((m, v), (sm, sv)) in self.m.iter().zip(&self.v).zip(s.m.iter().zip(&s.v)) {
            m.copy_from_host(sm)?;
            v.copy_from_host(sv)?;
        }
        self.step = s.step;
        Ok(())
    }
}
