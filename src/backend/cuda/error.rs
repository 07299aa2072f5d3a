//! Turning cudarc's error types (driver, cuBLAS, cuDNN) into the engine's
//! [`Error::Cuda`], with a context naming the call that failed.
//!
//! Use [`CudaResultExt::ctx`] on any cudarc `Result`:
//! `stream.synchronize().ctx("synchronize")?`. Out-of-memory from the driver is turned into
//! [`Error::OutOfMemory`] by the allocator, which knows the
//! numbers; everywhere else it reads as a plain CUDA error.

use cudarc::cublas::result::CublasError;
use cudarc::cudnn::result::CudnnError;
use cudarc::driver::{sys, DriverError};

use crate::error::Error;

/// Builds an [`Error::Cuda`] from a context and a message.
pub fn cuda_error(context: impl Into<String>, msg: impl Into<String>) -> Error {
    Error::Cuda { context: context.into(), msg: msg.into() }
}

/// A readable message for a driver error: its name and description when the driver can give
/// them (it always can once loaded), else the raw code.
pub fn driver_message(e: &DriverError) -> String {
    let name = e.error_name().ok().map(|s| s.to_string_lossy().into_owned());
    let text = e.error_string().ok().map(|s| s.to_string_lossy().into_owned());
    match (name, text) {
        (Some(n), Some(t)) => format!("{n}: {t}"),
        (Some(n), None) => n,
        _ => format!("{:?}", e.0),
    }
}

/// True when a driver error is an out-of-memory condition.
pub fn is_driver_oom(e: &DriverError) -> bool {
    e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY
}

/// Something cudarc returns as an error, turned into [`Error::Cuda`].
pub trait IntoCudaError {
    /// The engine error, with `context` naming the failing call.
    fn into_cuda_error(self, context: &str) -> Error;
}

impl IntoCudaError for DriverError {
    fn into_cuda_error(self, context: &str) -> Error {
        cuda_error(context, driver_message(&self))
    }
}

impl IntoCudaError for CublasError {
    fn into_cuda_error(self, context: &str) -> Error {
        cuda_error(context, format!("cuBLAS {:?}", self.0))
    }
}

impl IntoCudaError for CudnnError {
    fn into_cuda_error(self, context: &str) -> Error {
        cuda_error(context, format!("cuDNN {:?}", self.0))
    }
}

/// `.ctx("what")` on a cudarc `Result`: maps its error into [`Error::Cuda`].
pub trait CudaResultExt<T> {
    /// Maps the error, naming the call that failed.
    fn ctx(self, context: &str) -> crate::error::Result<T>;
}

impl<T, E: IntoCudaError> CudaResultExt<T> for Result<T, E> {
    fn ctx(self, context: &str) -> crate::error::Result<T> {
        self.map_err(|e| e.into_cuda_error(context))
    }
}

/// Runs `f`, turning a panic inside cudarc (a library or symbol that cannot be loaded) into
/// [`Error::CudaUnavailable`]. A last resort: callers check library presence first.
pub fn catch_panic<T>(what: &str, f: impl FnOnce() -> crate::error::Result<T>) -> crate::error::Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::CudaUnavailable(format!("{what} failed inside the CUDA bindings: {msg}; use --device cpu")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_panic_turns_a_panic_into_an_error() {
        let r: crate::error::Result<()> = catch_panic("loading", || panic!("no lib"));
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("no lib") && msg.contains("--device cpu"), "{msg}");
    }

    #[test]
    fn cublas_and_cudnn_errors_name_the_status() {
        let e = CublasError(cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_INVALID_VALUE).into_cuda_error("gemm");
        assert!(e.to_string().contains("gemm") && e.to_string().contains("INVALID_VALUE"));
        let e = CudnnError(cudarc::cudnn::sys::cudnnStatus_t::CUDNN_STATUS_BAD_PARAM).into_cuda_error("conv");
        assert!(e.to_string().contains("BAD_PARAM"));
    }
}
