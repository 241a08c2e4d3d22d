//! The engine's error type: every failure names the op and the shapes involved.

use thiserror::Error;

/// Everything that can go wrong inside the engine.
#[derive(Debug, Error)]
pub enum Error {
    /// No GPU adapter (not even a CPU Vulkan driver) could be found.
    #[error(
        "no GPU adapter found{0}: install a Vulkan driver (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers`) or set XLSR_ADAPTER to one listed by `xlsr devices`"
    )]
    NoAdapter(String),
    /// The adapter refused to create a device.
    #[error("could not open GPU device on {adapter}: {reason}")]
    Device { adapter: String, reason: String },
    /// Operand shapes do not fit the op.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
    /// Operand dtype is not supported by the op.
    #[error("{op}: dtype {found:?} not supported (expected {expected:?})")]
    DType {
        op: &'static str,
        found: crate::tensor::DType,
        expected: crate::tensor::DType,
    },
    /// A dispatch or buffer exceeds what the device allows.
    #[error("{op}: {msg}")]
    Limit { op: &'static str, msg: String },
    /// The device could not allocate a buffer.
    #[error(
        "out of GPU memory: asked for {asked} bytes with {in_use} bytes in use; lower the batch \
         size or the longest clip (--batch-size, --max-batch-seconds, prepare --max-seconds), or \
         turn on --gradient-checkpointing{}",
        memory_limit_hint()
    )]
    OutOfMemory { asked: u64, in_use: u64 },
    /// The GPU ran out of memory or rejected a command.
    #[error("GPU error: {0}")]
    Gpu(String),
    /// A file (config, checkpoint, audio) is missing, unreadable or not what it should be.
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    /// Saved training state (optimiser, schedule) that does not fit the model or run.
    #[error("training state: {0}")]
    State(String),
    /// Corpus, audio or vocabulary problem (names the file).
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// A command-line option out of range (names the flag).
    #[error("{0}")]
    Usage(String),
    /// Autograd misuse (backward from a non-scalar, a value without a tape...).
    #[error("autograd: {0}")]
    Autograd(String),
}

/// The out-of-memory advice's last part when `XLSR_MEMORY_LIMIT_GB` set the limit.
fn memory_limit_hint() -> String {
    match std::env::var("XLSR_MEMORY_LIMIT_GB") {
        Ok(v) => format!("; or raise XLSR_MEMORY_LIMIT_GB={v}, the limit this process was given"),
        Err(_) => String::new(),
    }
}

/// Engine result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for a shape error.
pub(crate) fn shape_err<T>(op: &'static str, msg: impl Into<String>) -> Result<T> {
    Err(Error::Shape {
        op,
        msg: msg.into(),
    })
}

/// Shorthand for a file error.
pub(crate) fn file_err<T>(path: impl AsRef<std::path::Path>, msg: impl Into<String>) -> Result<T> {
    Err(Error::File {
        path: path.as_ref().display().to_string(),
        msg: msg.into(),
    })
}
