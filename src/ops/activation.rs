//! Pointwise activations (GELU exact and tanh, ReLU, SiLU), forward and backward.

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

fn run(kernel: Kernel, x: &Tensor, dy: Option<&Tensor>) -> Result<Tensor> {
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
    match act {
        Act::Gelu => run(k("gelu_fwd"), x, None),
        Act::Relu => run(k("relu_fwd"), x, None),
        Act::GeluTanh => run(k("gelu_tanh_fwd"), x, None),
        Act::Silu => run(k("silu_fwd"), x, None),
    }
}

/// dx = dy * act'(x).
pub fn backward(act: Act, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    match act {
        Act::Gelu => run(k("gelu_bwd"), x, Some(dy)),
        Act::Relu => run(k("relu_bwd"), x, Some(dy)),
        Act::GeluTanh => run(k("gelu_tanh_bwd"), x, Some(dy)),
        Act::Silu => run(k("silu_bwd"), x, Some(dy)),
    }
}
