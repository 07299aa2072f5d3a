//! What the CUDA side of this machine offers, for `hyperseg-engine info`: the driver, each
//! GPU (name, memory, compute capability), cuBLAS, cuDNN and NVTX, or why each is absent.
//! Never panics and never opens a device (no context is created).

use super::error::{catch_panic, driver_message};
use crate::error::Result;

fn present(check: unsafe fn() -> bool) -> bool {
    // SAFETY: the checks only try to dlopen the library.
    std::panic::catch_unwind(|| unsafe { check() }).unwrap_or(false)
}

/// One GPU as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    pub total_memory: usize,
    pub compute_capability: (i32, i32),
}

/// The CUDA stack of this machine; each `Err` says why that part is unavailable.
#[derive(Clone, Debug)]
pub struct CudaInfo {
    /// The driver's CUDA version, e.g. `(13, 0)`.
    pub driver_version: std::result::Result<(i32, i32), String>,
    /// The GPUs found.
    pub gpus: std::result::Result<Vec<GpuInfo>, String>,
    /// cuBLAS `(major, minor, patch)`.
    pub cublas_version: std::result::Result<(i32, i32, i32), String>,
    /// Whether cuBLASLt loads.
    pub cublaslt_present: bool,
    /// cuDNN `(major, minor, patch)`.
    pub cudnn_version: std::result::Result<(usize, usize, usize), String>,
    /// The NVTX library that loads (profiling ranges), if any.
    pub nvtx_library: Option<String>,
}

fn driver_part() -> std::result::Result<((i32, i32), Vec<GpuInfo>), String> {
    use cudarc::driver::{result, sys};
    if !present(sys::is_culib_present) {
        return Err("no CUDA driver found (libcuda.so.1)".into());
    }
    result::init().map_err(|e| format!("the CUDA driver could not start: {}", driver_message(&e)))?;
    let mut v = 0;
    // SAFETY: an out-pointer.
    unsafe { sys::cuDriverGetVersion(&mut v) }.result().map_err(|e| driver_message(&e))?;
    let count = result::device::get_count().map_err(|e| driver_message(&e))?;
    let mut gpus = Vec::new();
    for ordinal in 0..count.max(0) {
        let dev = result::device::get(ordinal).map_err(|e| driver_message(&e))?;
        let name = result::device::get_name(dev).map_err(|e| driver_message(&e))?;
        // SAFETY: a valid device handle.
        let total_memory = unsafe { result::device::total_mem(dev) }.map_err(|e| driver_message(&e))?;
        let attr = |a| unsafe { result::device::get_attribute(dev, a) }.map_err(|e| driver_message(&e));
        let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        gpus.push(GpuInfo { ordinal: ordinal as usize, name, total_memory, compute_capability: (major, minor) });
    }
    Ok(((v / 1000, (v % 1000) / 10), gpus))
}

fn cublas_part() -> std::result::Result<(i32, i32, i32), String> {
    use cudarc::cublas::sys;
    if !present(sys::is_culib_present) {
        return Err("cuBLAS not found (libcublas.so.13)".into());
    }
    let get = |p| {
        let mut v = 0;
        // SAFETY: an out-pointer.
        unsafe { sys::cublasGetProperty(p, &mut v) }.result().map(|_| v).map_err(|e| format!("{e:?}"))
    };
    Ok((
        get(sys::libraryPropertyType::MAJOR_VERSION)?,
        get(sys::libraryPropertyType::MINOR_VERSION)?,
        get(sys::libraryPropertyType::PATCH_LEVEL)?,
    ))
}

fn cudnn_part() -> std::result::Result<(usize, usize, usize), String> {
    if !present(cudarc::cudnn::sys::is_culib_present) {
        return Err("cuDNN not found (libcudnn.so.9)".into());
    }
    let v = super::cudnn::version();
    // cuDNN 9 encodes major*10000 + minor*100 + patch (cuDNN 8: major*1000 + minor*100 + patch).
    Ok(if v >= 90000 { (v / 10000, (v % 10000) / 100, v % 100) } else { (v / 1000, (v % 1000) / 100, v % 100) })
}

/// Runs one probe, a panic inside the bindings becoming its error.
fn guard<T>(f: fn() -> std::result::Result<T, String>) -> std::result::Result<T, String> {
    catch_panic("probing CUDA", || Ok(f())).unwrap_or_else(|e| Err(e.to_string()))
}

/// Probes the CUDA stack.
pub fn probe() -> CudaInfo {
    let driver = guard(driver_part);
    CudaInfo {
        driver_version: driver.as_ref().map(|d| d.0).map_err(Clone::clone),
        gpus: driver.map(|d| d.1),
        cublas_version: guard(cublas_part),
        cublaslt_present: present(cudarc::cublaslt::sys::is_culib_present),
        cudnn_version: guard(cudnn_part),
        nvtx_library: super::nvtx::library(),
    }
}

fn gib(bytes: usize) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The probe as lines of text, one fact per line.
pub fn describe() -> Vec<String> {
    let i = probe();
    let mut out = Vec::new();
    match &i.driver_version {
        Ok((a, b)) => out.push(format!("CUDA driver: supports CUDA {a}.{b}")),
        Err(e) => out.push(format!("CUDA driver: unavailable ({e})")),
    }
    match &i.gpus {
        Ok(g) if g.is_empty() => out.push("GPUs: none found".into()),
        Ok(g) => {
            for d in g {
                out.push(format!(
                    "GPU {}: {}, {}, compute capability {}.{}",
                    d.ordinal,
                    d.name,
                    gib(d.total_memory),
                    d.compute_capability.0,
                    d.compute_capability.1
                ));
            }
        }
        Err(_) => out.push("GPUs: none (no driver)".into()),
    }
    match &i.cublas_version {
        Ok((a, b, c)) => out.push(format!("cuBLAS: {a}.{b}.{c}{}", if i.cublaslt_present { " (with cuBLASLt)" } else { "" })),
        Err(e) => out.push(format!("cuBLAS: unavailable ({e})")),
    }
    match &i.cudnn_version {
        Ok((a, b, c)) => out.push(format!("cuDNN: {a}.{b}.{c}")),
        Err(e) => out.push(format!("cuDNN: unavailable ({e})")),
    }
    out.push(format!(
        "NVTX: {}",
        match &i.nvtx_library {
            Some(l) => format!("{l} (set HYPERSEG_NVTX=1 for profiling ranges)"),
            None => "not found (libnvToolsExt.so.1 or CUDA 13's libnvtx3interop.so.1; HYPERSEG_NVTX_LIB names one); profiling ranges off"
                .to_string(),
        }
    ));
    out
}

/// Whether a usable CUDA device 0 could be opened now, as [`super::CudaDevice::new`] would say.
pub fn check_usable() -> Result<()> {
    super::device::check_libraries()?;
    catch_panic("probing CUDA", || {
        let n = super::device::device_count()?;
        if n == 0 {
            return Err(crate::error::Error::CudaUnavailable("the CUDA driver reports no GPU; use --device cpu".into()));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn describe_never_panics_and_names_every_part() {
        let lines = super::describe();
        let text = lines.join("\n");
        for part in ["CUDA driver", "cuBLAS", "cuDNN", "NVTX"] {
            assert!(text.contains(part), "{text}");
        }
    }
}
