//! LayerNorm over the last dim and wav2vec2-base's GroupNorm (one group per channel).

use super::{check_f32, dummy, f, reduce, row_chunks};
use crate::error::{shape_err, Result};
use crate::gpu::{grid, Kernel};
use crate::tensor::{DType, Tensor};

const fn k(entry: &'static str) -> Kernel {
    Kernel {
        file: "norm",
        entry,
        reads: 4,
        writes: 2,
    }
}
const FWD: Kernel = k("norm_fwd");
const BWD: Kernel = k("norm_bwd");
const PGRAD_COLS: Kernel = k("norm_param_grad_cols");
const PGRAD_ROWS: Kernel = k("norm_param_grad_rows");

/// Which normalisation (decides how gamma/beta are indexed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// Normalise the last dim; gamma/beta per last-dim element.
    Layer,
    /// Input [B, C, T]: normalise each (b, c) row over T; gamma/beta per channel.
    Group,
}

/// Saved forward state for the backward pass: (mean, rstd) per row.
#[derive(Debug)]
pub struct NormStats(pub Tensor);

fn layout(norm: Norm, x: &Tensor, gamma: Option<&Tensor>) -> Result<(usize, usize, usize)> {
    let op = "layer_norm";
    if x.shape().is_empty() {
        return shape_err(op, "input must have at least one dim");
    }
    let cols = x.dim(-1);
    let rows = x.numel() / cols.max(1);
    let channels = match norm {
        Norm::Layer => cols,
        Norm::Group => {
            if x.shape().len() != 3 {
                return shape_err(
                    "group_norm",
                    format!("expects [batch, channels, time], got {:?}", x.shape()),
                );
            }
            x.dim(1)
        }
    };
    if let Some(g) = gamma {
        if g.numel() != channels {
            return shape_err(
                op,
                format!(
                    "weight {:?} does not match {channels} features of input {:?}",
                    g.shape(),
                    x.shape()
                ),
            );
        }
    }
    Ok((rows, cols, channels))
}

#[allow(clippy::too_many_arguments)] // one argument per uniform field
fn params(
    norm: Norm,
    rows: usize,
    cols: usize,
    channels: usize,
    row_base: usize,
    affine: bool,
    accum: bool,
    eps: f32,
) -> Vec<u32> {
    vec![
        rows as u32,
        cols as u32,
        (norm == Norm::Group) as u32,
        channels as u32,
        row_base as u32,
        affine as u32,
        accum as u32,
        0,
        f(eps),
        0,
        0,
        0,
    ]
}

/// y = (x - mean) / sqrt(var + eps) * gamma + beta, statistics over the last dim.
pub fn forward(
    norm: Norm,
    x: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f32,
) -> Result<(Tensor, NormStats)> {
    check_f32("layer_norm", &[x])?;
    let (rows, cols, channels) = layout(norm, x, gamma)?;
    let gpu = x.gpu();
    let y = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    let stats = Tensor::uninit(gpu, &[rows, 2], DType::F32)?;
    let d = dummy(gpu)?;
    let (g, b) = (
        gamma.map_or(d.bind(), |t| t.bind()),
        beta.map_or(d.bind(), |t| t.bind()),
    );
    for (r0, nr) in row_chunks(gpu, "layer_norm", rows, cols)? {
        gpu.dispatch(
            &FWD,
            &params(norm, nr, cols, channels, r0, gamma.is_some(), false, eps),
            &[
                x.bind_range(r0 * cols, nr * cols),
                g,
                b,
                d.bind(),
                y.bind_range(r0 * cols, nr * cols),
                stats.bind_range(2 * r0, 2 * nr),
            ],
            grid(nr as u64, 1),
        )?;
    }
    Ok((y, NormStats(stats)))
}

/// Gradients (dx, dgamma, dbeta) of [`forward`].
pub fn backward(
    norm: Norm,
    x: &Tensor,
    gamma: Option<&Tensor>,
    stats: &NormStats,
    dy: &Tensor,
) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
    check_f32("layer_norm_backward", &[x, dy])?;
    if dy.shape() != x.shape() {
        return shape_err(
            "layer_norm_backward",
            format!("x {:?} but dy {:?}", x.shape(), dy.shape()),
        );
    }
    let (rows, cols, channels) = layout(norm, x, gamma)?;
    let gpu = x.gpu();
    let d = dummy(gpu)?;
    let unused_out = dummy(gpu)?;
    let dx = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    let chunks = row_chunks(gpu, "layer_norm_backward", rows, cols)?;
    let g = gamma.map_or(d.bind(), |t| t.bind());
    for &(r0, nr) in &chunks {
        let (xr, dyr) = (
            x.bind_range(r0 * cols, nr * cols),
            dy.bind_range(r0 * cols, nr * cols),
        );
        gpu.dispatch(
            &BWD,
            &params(norm, nr, cols, channels, r0, gamma.is_some(), false, 0.0),
            &[
                xr,
                g,
                dyr,
                stats.0.bind_range(2 * r0, 2 * nr),
                dx.bind_range(r0 * cols, nr * cols),
                unused_out.bind(),
            ],
            grid(nr as u64, 1),
        )?;
    }
    if gamma.is_none() {
        return Ok((dx, None, None));
    }
    let (dg, db) = match norm {
        Norm::Layer => {
            let dg = Tensor::uninit(gpu, &[cols], DType::F32)?;
            let db = Tensor::uninit(gpu, &[cols], DType::F32)?;
            for (i, &(r0, nr)) in chunks.iter().enumerate() {
                gpu.dispatch(
                    &PGRAD_COLS,
                    &params(norm, nr, cols, channels, r0, true, i > 0, 0.0),
                    &[
                        x.bind_range(r0 * cols, nr * cols),
                        d.bind(),
                        dy.bind_range(r0 * cols, nr * cols),
                        stats.0.bind_range(2 * r0, 2 * nr),
                        dg.bind(),
                        db.bind(),
                    ],
                    grid(cols as u64, 256),
                )?;
            }
            (dg, db)
        }
        Norm::Group => {
            let sg = Tensor::uninit(gpu, &[rows], DType::F32)?;
            let sb = Tensor::uninit(gpu, &[rows], DType::F32)?;
            for &(r0, nr) in &chunks {
                gpu.dispatch(
                    &PGRAD_ROWS,
                    &params(norm, nr, cols, channels, r0, true, false, 0.0),
                    &[
                        x.bind_range(r0 * cols, nr * cols),
                        d.bind(),
                        dy.bind_range(r0 * cols, nr * cols),
                        stats.0.bind_range(2 * r0, 2 * nr),
                        sg.bind_range(r0, nr),
                        sb.bind_range(r0, nr),
                    ],
                    grid(nr as u64, 1),
                )?;
            }
            let batch = rows / channels;
            let sum = |t: &Tensor| {
                reduce::sum_axis(&t.reshape(&[1, batch, channels])?, 1, 1.0)?.reshape(&[channels])
            };
            (sum(&sg)?, sum(&sb)?)
        }
    };
    Ok((dx, Some(dg), Some(db)))
}
