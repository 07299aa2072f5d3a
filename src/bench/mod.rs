//! Benchmarks of the whole model, and the engine's half of the PyTorch parity check: the FLOP
//! count (`flops.rs`), timing (`timing.rs`), the run (`run.rs`) and its report (`report.rs`),
//! and the parity dump (`parity.rs`).
//!
//! - [`flops`]: the analytic FLOP count of a training step and of dense inference, from the
//!   configuration alone (convolutions and GEMMs, 2 FLOPs per multiply-accumulate; the
//!   elementwise work, batch norm, pooling, the gather and Adam are not counted).
//! - [`run_bench`]: times a training step (sparse forward, loss, backward, Adam) and dense
//!   inference of one image on a device, median of `iters` after `warmup`, the device
//!   synchronised before and after every timed iteration (wall clock: host overhead counts,
//!   as it does in training), with the peak device memory of the allocator.
//! - [`dump_parity`]: initial weights, inputs, step-0 logits and gradients and the losses of a
//!   few Adam steps, dense probabilities, and step 0 again in bf16 mixed precision, as
//!   safetensors files that `bench/pytorch_reference.py --parity DIR` replays in PyTorch.
//!
//! Inputs are synthetic and fixed by a seed: images uniform in [-120, 135) (0-255 pixels
//! minus the ImageNet means), one random disc of lesion per mask, pixels sampled as in
//! training. Never all zeros.

mod flops;
mod parity;
mod report;
mod run;
mod timing;

pub use flops::*;
pub use parity::*;
pub use report::*;
pub use run::*;
pub use timing::*;

/// Numeric precision of a benchmark run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// IEEE fp32 everywhere (TF32 tensor cores off).
    Fp32,
    /// fp32 storage, TF32 tensor cores allowed in cuBLAS and cuDNN.
    Tf32,
    /// GEMMs on bf16-rounded operands ([`settings::bf16_gemm`](crate::settings::bf16_gemm)) and convolutions on bf16
    /// operands ([`settings::bf16_conv`](crate::settings::bf16_conv)), fp32 accumulation; dense inference keeps its
    /// activations in bf16 ([`settings::bf16_activations`](crate::settings::bf16_activations)); training keeps fp32
    /// tensors between the layers.
    Bf16,
    /// [`Precision::Bf16`] with the convolutions in TF32 and dense inference on fp32 activations:
    /// only the GEMMs on bf16 operands (`--bf16-gemm`). Timed beside `Bf16`, it measures what the
    /// bf16 convolutions (and dense inference's bf16 activations) add.
    Bf16Gemm,
}

impl Precision {
    /// `fp32`, `tf32`, `bf16` or `bf16-gemm`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
            Precision::Bf16Gemm => "bf16-gemm",
        }
    }

    /// What the precision means for the engine, in words (for the report).
    pub fn detail(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32 storage and math",
            Precision::Tf32 => "fp32 storage, TF32 tensor cores in convolutions and GEMMs",
            Precision::Bf16 => {
                "bf16 convolutions and GEMMs (fp32 accumulation); bf16 activations in dense inference, fp32 between the layers in training"
            }
            Precision::Bf16Gemm => "bf16 GEMMs (fp32 accumulation), TF32 convolutions, fp32 activations",
        }
    }

    /// Whether TF32 tensor cores are allowed (every precision but fp32).
    pub fn tf32(self) -> bool {
        self != Precision::Fp32
    }

    /// Whether GEMMs run on bf16 operands (`bf16` and `bf16-gemm`).
    pub fn bf16_gemm(self) -> bool {
        matches!(self, Precision::Bf16 | Precision::Bf16Gemm)
    }

    /// Whether the convolutions and dense inference's activations are bf16 too (`bf16`: the
    /// CLI's `--bf16`).
    pub fn bf16_mixed(self) -> bool {
        self == Precision::Bf16
    }

    /// Sets the engine's numeric settings for this precision: TF32, bf16 GEMMs, bf16
    /// convolutions and bf16 dense activations.
    pub fn apply(self) {
        crate::settings::set_allow_tf32(self.tf32());
        crate::settings::set_bf16_gemm(self.bf16_gemm());
        crate::settings::set_bf16_conv(self.bf16_mixed());
        crate::settings::set_bf16_activations(self.bf16_mixed());
    }
}
