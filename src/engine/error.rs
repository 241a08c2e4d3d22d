//! The engine's error type: every failure names the op and the shapes involved.

use super::dtype::DType;
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
        found: DType,
        expected: DType,
    },
    /// A dispatch or buffer exceeds what the device allows.
    #[error("{op}: {msg}")]
    Limit { op: &'static str, msg: String },
    /// The device could not allocate a buffer.
    #[error("out of GPU memory: asked for {asked} bytes with {in_use} bytes in use")]
    OutOfMemory { asked: u64, in_use: u64 },
    /// The GPU ran out of memory or rejected a command.
    #[error("GPU error: {0}")]
    Gpu(String),
    /// A tuning file could not be read or written (see [`crate::engine::tuning`]).
    #[error("tuning file {0}")]
    Tuning(String),
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
