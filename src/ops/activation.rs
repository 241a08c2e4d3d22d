//! Pointwise activations (GELU exact and tanh, ReLU, SiLU), forward and backward, with the
//! dropout that follows one in the same pass when asked.

use super::{check_f32, dummy, row_chunks};
use crate::engine::error::{shape_err, Result};
use crate::engine::params::kernel_params;
use crate::engine::{grid, Kernel};
use crate::engine::{DType, Tensor};

const fn k(entry: &'static str) -> Kernel {
    Kernel::new("activation", entry, 2, 1)
}

kernel_params! {
    /// `activation.wgsl`'s uniforms.
    pub struct ActivationParams in ["activation"] {
        /// Elements in this chunk.
        n: u32,
        /// Global index of this chunk's first element (the dropout mask's).
        base: u32,
        /// Low word of the dropout seed.
        seed_lo: u32,
        /// High word of the dropout seed.
        seed_hi: u32,
        /// Drop probability (0: none).
        p: f32,
        /// Padding.
        _p0: u32,
        /// Padding.
        _p1: u32,
        /// Padding.
        _p2: u32,
    }
}

/// Which pointwise activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// GELU, exact (erf) form.
    Gelu,
    /// max(x, 0).
    Relu,
    /// GELU, tanh approximation (HF `gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// x * sigmoid(x) (HF `swish`, `silu`).
    Silu,
}

impl Act {
    /// The activation a HF config names (`hidden_act`, `feat_extract_activation`).
    pub fn from_hf(name: &str) -> Option<Act> {
        match name {
            "gelu" => Some(Act::Gelu),
            "relu" => Some(Act::Relu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Act::GeluTanh),
            "swish" | "silu" => Some(Act::Silu),
            _ => None,
        }
    }
}

/// Dropout of an activation's output, drawn as [`super::dropout::dropout_at`] draws it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DropoutAt {
    /// Drop probability (0: none).
    pub p: f32,
    /// Seed of the mask.
    pub seed: u64,
    /// Index of the tensor's first element in the whole batch's tensor.
    pub first: usize,
}

fn run(kernel: Kernel, x: &Tensor, dy: Option<&Tensor>, drop: DropoutAt) -> Result<Tensor> {
    check_f32(kernel.entry, &[x])?;
    if let Some(dy) = dy {
        check_f32(kernel.entry, &[dy])?;
        if dy.shape() != x.shape() {
            return shape_err(
                kernel.entry,
                format!("x {:?} but dy {:?}", x.shape(), dy.shape()),
            );
        }
    }
    let gpu = x.gpu();
    let out = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    let d = dummy(gpu)?;
    for (s, len) in row_chunks(gpu, kernel.entry, x.numel(), 1)? {
        let dyr = dy.map_or(d.bind(), |t| t.bind_range(s, len));
        gpu.dispatch(
            &kernel,
            &ActivationParams {
                n: len as u32,
                base: (drop.first + s) as u32,
                seed_lo: drop.seed as u32,
                seed_hi: (drop.seed >> 32) as u32,
                p: drop.p,
                ..Default::default()
            },
            &[x.bind_range(s, len), dyr, out.bind_range(s, len)],
            grid(len as u64, 256),
        )?;
    }
    Ok(out)
}

/// y = act(x).
pub fn forward(act: Act, x: &Tensor) -> Result<Tensor> {
    forward_dropout(act, x, DropoutAt::default())
}

/// dx = dy * act'(x).
pub fn backward(act: Act, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    backward_dropout(act, x, dy, DropoutAt::default())
}

/// y = dropout(act(x)) in one pass.
pub fn forward_dropout(act: Act, x: &Tensor, drop: DropoutAt) -> Result<Tensor> {
    let entry = match act {
        Act::Gelu => "gelu_fwd",
        Act::Relu => "relu_fwd",
        Act::GeluTanh => "gelu_tanh_fwd",
        Act::Silu => "silu_fwd",
    };
    run(k(entry), x, None, drop)
}

/// The gradient of [`forward_dropout`]: dx = dropout(dy) * act'(x), the same mask.
pub fn backward_dropout(act: Act, x: &Tensor, dy: &Tensor, drop: DropoutAt) -> Result<Tensor> {
    let entry = match act {
        Act::Gelu => "gelu_bwd",
        Act::Relu => "relu_bwd",
        Act::GeluTanh => "gelu_tanh_bwd",
        Act::Silu => "silu_bwd",
    };
    run(k(entry), x, Some(dy), drop)
}
