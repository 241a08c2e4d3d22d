//! `xlsr`: fine-tune wav2vec2 / XLSR speech models with CTC on any GPU through wgpu.
//!
//! Layers, bottom up: [`gpu`] (device, pooled buffers, cached pipelines, batched dispatch),
//! [`tensor`], [`ops`] (kernel launchers, forward and backward), [`autograd`] (the tape),
//! and [`bench`] (kernel benchmarks shared by `cargo bench` and `xlsr bench`). [`data`] turns a
//! Common Voice release into padded training batches.

pub mod autograd;
pub mod bench;
pub mod data;
pub mod demo;
pub mod error;
pub mod gpu;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod rng;
pub mod schedule;
pub mod tensor;
pub mod train;
pub mod transcribe;

pub use autograd::{Param, Tape, Var};
pub use error::{Error, Result};
pub use gpu::Gpu;
pub use tensor::{DType, Tensor};
