//! `xlsr`: fine-tune wav2vec2 / XLSR speech models with CTC on any GPU through wgpu.
//!
//! Layers, bottom up: [`engine`] (device, pooled buffers, cached pipelines, batched dispatch,
//! tensors), [`ops`] (kernel launchers, forward and backward), [`autograd`] (the tape),
//! [`model`] (wav2vec2 for CTC), [`train`] (one [`train::TrainStep`], the run, evaluation,
//! checkpoints). Beside them: [`data`] (a Common Voice release into padded batches),
//! [`mod@bench`] (kernel and training-step benchmarks) and [`cli`] (the command line, the only
//! module that knows about flags).

pub mod autograd;
pub mod bench;
pub mod cli;
pub mod data;
pub mod decode;
pub mod demo;
pub mod dist;
pub mod engine;
pub mod error;
pub mod files;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod rng;
pub mod schedule;
pub mod train;
pub mod transcribe;

pub use autograd::{Param, Tape, Var};
pub use engine::{DType, Gpu, Tensor};
pub use error::{Error, Result};
