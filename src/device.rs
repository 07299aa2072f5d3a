//! Devices a tensor can live on, and how to choose one.

use crate::backend::cuda::CudaDevice;
use crate::error::Result;

/// Where a tensor's storage lives. Cloning is cheap (a CUDA device is a shared handle).
#[derive(Clone)]
pub enum Device {
    /// Host memory, computed by the CPU reference backend (rayon across cores).
    Cpu,
    /// One NVIDIA GPU.
    Cuda(CudaDevice),
}

impl Device {
    /// The CUDA device with this ordinal, or a clear error saying why it cannot be used.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        Ok(Device::Cuda(CudaDevice::new(ordinal)?))
    }

    /// The first CUDA device when one is usable, else the CPU; the string says which and why.
    pub fn best_available() -> (Device, String) {
        match CudaDevice::new(0) {
            Ok(d) => {
                let name = d.name();
                (Device::Cuda(d), format!("using CUDA device 0 ({name})"))
            }
            Err(e) => (Device::Cpu, format!("using the CPU ({e})")),
        }
    }

    /// True for the CPU.
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    /// True for a CUDA device.
    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// Whether two devices are the same one.
    pub fn same(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Cuda(a), Device::Cuda(b)) => a.same_device(b),
            _ => false,
        }
    }

    /// Waits until all queued work on the device has finished (a no-op on the CPU).
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(d) => d.synchronize(),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(d) => write!(f, "cuda:{}", d.ordinal()),
        }
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        self.same(other)
    }
}
