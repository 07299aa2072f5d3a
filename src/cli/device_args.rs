//! The device and numeric options shared by the commands that compute.

use clap::{Args, ValueEnum};
use hyperseg_engine::{settings, Device, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    /// CUDA when a usable GPU is found, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Allow TF32 tensor cores for convolutions and GEMMs (faster, ~1e-3 relative error).
    #[arg(long)]
    pub tf32: bool,
    /// Round the operands of every GEMM (linear layers; not convolutions) to bf16 and accumulate in
    /// fp32: bf16 tensor cores on the GPU. Storage, weights and Adam state stay fp32.
    #[arg(long)]
    pub bf16_gemm: bool,
    /// bf16 mixed precision: --bf16-gemm, every convolution on bf16 operands (bf16 tensor cores,
    /// fp32 accumulation, the result rounded to bf16), and dense inference (validation, eval,
    /// predict) keeps its activations in bf16 (fp32 sums, one rounding per value written).
    /// Weights, the tensors between training's layers and Adam state stay fp32.
    #[arg(long)]
    pub bf16: bool,
    /// Bitwise-reproducible results: deterministic algorithms and reductions (slower).
    #[arg(long)]
    pub deterministic: bool,
    /// Cap on device memory, e.g. 12GiB or 8000000000 (default: the smaller of the card's memory and 12 GiB).
    #[arg(long, value_name = "BYTES")]
    pub mem_limit: Option<String>,
}

impl DeviceArgs {
    /// Applies the settings and opens the device, saying which one on stderr.
    pub fn open(&self) -> Result<Device> {
        settings::set_allow_tf32(self.tf32);
        settings::set_bf16_gemm(self.bf16_gemm || self.bf16);
        settings::set_bf16_conv(self.bf16);
        settings::set_bf16_activations(self.bf16);
        settings::set_deterministic(self.deterministic);
        let device = match self.device {
            DeviceChoice::Cpu => Device::Cpu,
            DeviceChoice::Cuda => Device::cuda(0)?,
            DeviceChoice::Auto => {
                let (d, why) = Device::best_available();
                eprintln!("{why}");
                d
            }
        };
        if (self.bf16 || self.bf16_gemm) && !device.is_cuda() {
            eprintln!("note: on the CPU, --bf16 and --bf16-gemm reproduce the GPU's bf16 rounding but are not faster than fp32");
        }
        if let (true, Device::Cuda(d)) = (self.bf16, &device) {
            hyperseg_engine::backend::cuda::cudnn::check_bf16_conv(d)?;
        }
        if let (Some(limit), Device::Cuda(d)) = (&self.mem_limit, &device) {
            let bytes =
                hyperseg_engine::backend::cuda::allocator::parse_bytes(limit).ok_or_else(|| hyperseg_engine::Error::InvalidValue {
                    name: "--mem-limit",
                    msg: format!("{limit:?} is not a size such as 12GiB or 8000000000"),
                })?;
            d.set_memory_cap(bytes);
        }
        Ok(device)
    }
}
