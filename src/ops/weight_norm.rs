//! Weight normalisation over all dims but the last (wav2vec2's positional conv), forward and
//! backward.

use super::{check_f32, dummy};
use crate::engine::error::{shape_err, Error, Result};
use crate::engine::params::kernel_params;
use crate::engine::Kernel;
use crate::engine::{DType, Tensor};

const fn k(entry: &'static str) -> Kernel {
    Kernel::new("weight_norm", entry, 4, 2)
}
const FWD: Kernel = k("weight_norm_fwd");
const BWD: Kernel = k("weight_norm_bwd");

kernel_params! {
    /// `weight_norm.wgsl`'s uniforms.
    pub struct WeightNormParams in ["weight_norm"] {
        /// Elements per norm (all dims but the last).
        rows: u32,
        /// Norms (the last dim: kernel taps).
        k: u32,
        /// Padding.
        _p0: u32,
        /// Padding.
        _p1: u32,
    }
}

fn check(g: &Tensor, v: &Tensor) -> Result<(usize, usize)> {
    check_f32("weight_norm", &[g, v])?;
    let kk = v.shape().last().copied().unwrap_or(0);
    if v.shape().len() < 2 || g.numel() != kk || kk == 0 {
        return shape_err(
            "weight_norm",
            format!(
                "expects v [..., K] and g with K elements, got v {:?} and g {:?}",
                v.shape(),
                g.shape()
            ),
        );
    }
    let limit = (v.gpu().max_binding() / 4) as usize;
    if v.numel() > limit {
        return Err(Error::Limit {
            op: "weight_norm",
            msg: format!("v {:?} exceeds one storage binding", v.shape()),
        });
    }
    Ok((v.numel() / kk, kk))
}

fn params(rows: usize, kk: usize) -> WeightNormParams {
    WeightNormParams {
        rows: rows as u32,
        k: kk as u32,
        ..Default::default()
    }
}

/// w = g * v / ||v||, the norm per last-dim index. Returns (w, norms `[K]`).
pub fn forward(g: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
    let (rows, kk) = check(g, v)?;
    let gpu = v.gpu();
    let w = Tensor::uninit(gpu, v.shape(), DType::F32)?;
    let norms = Tensor::uninit(gpu, &[kk], DType::F32)?;
    let d = dummy(gpu)?;
    gpu.dispatch(
        &FWD,
        &params(rows, kk),
        &[
            g.bind(),
            v.bind(),
            d.bind(),
            d.bind(),
            w.bind(),
            norms.bind(),
        ],
        [kk as u32, 1, 1],
    )?;
    Ok((w, norms))
}

/// Gradients of the magnitude `g` and the direction `v`.
#[derive(Debug)]
pub struct WeightNormGrads {
    /// dL/dg (g's shape).
    pub g: Tensor,
    /// dL/dv (v's shape).
    pub v: Tensor,
}

/// Gradients of g and v from dw and the forward's norms.
pub fn backward(g: &Tensor, v: &Tensor, norms: &Tensor, dw: &Tensor) -> Result<WeightNormGrads> {
    let (rows, kk) = check(g, v)?;
    if dw.shape() != v.shape() {
        return shape_err(
            "weight_norm_backward",
            format!("dw {:?} but v {:?}", dw.shape(), v.shape()),
        );
    }
    let gpu = v.gpu();
    let dv = Tensor::uninit(gpu, v.shape(), DType::F32)?;
    let dg = Tensor::uninit(gpu, g.shape(), DType::F32)?;
    gpu.dispatch(
        &BWD,
        &params(rows, kk),
        &[
            g.bind(),
            v.bind(),
            norms.bind(),
            dw.bind(),
            dv.bind(),
            dg.bind(),
        ],
        [kk as u32, 1, 1],
    )?;
    Ok(WeightNormGrads { g: dg, v: dv })
}
