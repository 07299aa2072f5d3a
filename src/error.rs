//! The library's one error type: every fallible call in the engine returns [`Result`].
//!
//! Each variant names the value or file at fault so that the CLI can print it as one sentence.

use std::path::PathBuf;

/// Everything that can go wrong inside the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two operands of `op` have shapes that do not fit together.
    #[error("shape mismatch in {op}: {lhs:?} vs {rhs:?}")]
    ShapeMismatch { op: &'static str, lhs: Vec<usize>, rhs: Vec<usize> },
    /// An operand of `op` has the wrong rank or size; `msg` says which.
    #[error("bad shape in {op}: {msg}")]
    BadShape { op: &'static str, msg: String },
    /// Operands of `op` live on different devices; tensors never move silently.
    #[error("device mismatch in {op}: {lhs} vs {rhs}; move one with Tensor::to_device")]
    DeviceMismatch { op: &'static str, lhs: String, rhs: String },
    /// The operation is not implemented for this dtype.
    #[error("{op} does not support dtype {dtype}")]
    UnsupportedDType { op: &'static str, dtype: &'static str },
    /// `backward` was called on a tensor that is not part of a graph.
    #[error("backward called on a tensor with no graph: it was made in no-grad mode or from no variable")]
    NoGraph,
    /// `backward` was called on a tensor that is not a scalar.
    #[error("backward needs a scalar loss, got shape {0:?}")]
    NonScalarLoss(Vec<usize>),
    /// A value given to the engine is out of its range.
    #[error("invalid value for {name}: {msg}")]
    InvalidValue { name: &'static str, msg: String },
    /// The CUDA device cannot be used; the message says why and what to do.
    #[error("{0}")]
    CudaUnavailable(String),
    /// An error reported by the CUDA driver, cuBLAS, cuDNN or a kernel launch.
    #[error("CUDA error in {context}: {msg}")]
    Cuda { context: String, msg: String },
    /// The device allocator would exceed its cap.
    #[error("out of device memory: a request of {requested} bytes would exceed the cap of {cap} bytes ({in_use} in use); lower the batch size, the sampled pixels or the tile size, or raise --mem-limit")]
    OutOfMemory { requested: usize, cap: usize, in_use: usize },
    /// Training produced a loss or gradient that is not finite.
    #[error("training diverged: the loss or a gradient became {value} at step {step} (epoch {epoch}); the last good checkpoint is kept; lower the learning rate or check the data")]
    Diverged { step: u64, epoch: usize, value: f32 },
    /// The training step cannot be captured or replayed as a CUDA graph; `msg` says what
    /// stopped it (the trainer then runs the step eagerly).
    #[error("the training step cannot run as a CUDA graph: {msg}")]
    GraphCapture { msg: String },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its contents are not what the engine expects.
    #[error("{path}: {msg}")]
    BadFile { path: PathBuf, msg: String },
}

/// Shorthand used throughout the engine.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A file whose contents are wrong, with a message naming what is wrong.
    pub fn bad_file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::BadFile { path: path.into(), msg: msg.into() }
    }

    pub(crate) fn bad_shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::BadShape { op, msg: msg.into() }
    }
}
