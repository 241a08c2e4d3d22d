//! The library's error type: engine failures, plus files, data, training state and usage.

use crate::engine;
use thiserror::Error;

/// Everything that can go wrong above the engine.
#[derive(Debug, Error)]
pub enum Error {
    /// A failure inside the engine (device, shapes, limits, memory); out-of-memory errors
    /// carry advice on which options lower the footprint.
    #[error("{0}{hint}", hint = engine_hint(.0))]
    Engine(engine::Error),
    /// A file (config, checkpoint, audio) is missing, unreadable or not what it should be.
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    /// Saved training state (optimiser, schedule) that does not fit the model or run.
    #[error("training state: {0}")]
    State(String),
    /// Corpus, audio or vocabulary problem (names the file).
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// A model configuration the code cannot run (names the setting).
    #[error("model config: {0}")]
    Config(String),
    /// A command-line option out of range (names the flag).
    #[error("{0}")]
    Usage(String),
    /// Autograd misuse (backward from a non-scalar, a value without a tape...).
    #[error("autograd: {0}")]
    Autograd(String),
    /// The model's outputs are NaN or infinite though its weights are finite; the command
    /// that loaded the model names its folder ([`Error::in_model`]).
    #[error(
        "the model's logits are not finite (NaN or inf) though its weights are: a degenerate \
         weight, such as a weight-norm direction (weight_v) of zeros"
    )]
    NonFiniteLogits,
    /// Training stopped on a signal (Ctrl-C, SIGTERM) after saving what it had.
    #[error("interrupted by {} at step {step}: {saved}", crate::train::interrupt::name(*.signal))]
    Interrupted {
        signal: i32,
        step: u64,
        saved: String,
    },
}

// Not `#[from]`: that would make the engine error this one's source too, and the command
// line, which prints an error with its sources, would print it twice.
impl From<engine::Error> for Error {
    fn from(e: engine::Error) -> Error {
        Error::Engine(e)
    }
}

/// What to do about an engine error, where the library knows better than the engine.
fn engine_hint(e: &engine::Error) -> String {
    if !matches!(e, engine::Error::OutOfMemory { .. }) {
        return String::new();
    }
    let mut hint = String::from(
        "; in training, lower the batch size or the longest clip (--batch-size, \
         --max-batch-seconds, prepare --max-seconds), or turn on --gradient-checkpointing",
    );
    if let Ok(v) = std::env::var("XLSR_MEMORY_LIMIT_GB") {
        hint += &format!("; or raise XLSR_MEMORY_LIMIT_GB={v}, the limit this process was given");
    }
    hint
}

impl Error {
    /// The error with the model folder `dir` named, where the fault is the model's.
    pub fn in_model(self, dir: &std::path::Path) -> Error {
        match self {
            Error::NonFiniteLogits => Error::File {
                path: dir.display().to_string(),
                msg: self.to_string(),
            },
            e => e,
        }
    }

    /// The process exit status this error asks for: 128 + the signal for an interrupted
    /// run (as a shell reports a process a signal ended), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Interrupted { signal, .. } => 128 + signal,
            _ => 1,
        }
    }

    /// Whether the device ran out of memory (the caller may retry with less).
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Error::Engine(engine::Error::OutOfMemory { .. }))
    }
}

/// Library result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for a file error.
pub(crate) fn file_err<T>(path: impl AsRef<std::path::Path>, msg: impl Into<String>) -> Result<T> {
    Err(Error::File {
        path: path.as_ref().display().to_string(),
        msg: msg.into(),
    })
}

/// Shorthand for a shape error raised above the engine (a model input, a metric's operands).
pub(crate) fn shape_err<T>(op: &'static str, msg: impl Into<String>) -> Result<T> {
    Err(engine::Error::Shape {
        op,
        msg: msg.into(),
    }
    .into())
}
