//! Softmax and log-softmax over the last dim with an optional additive mask.

use super::{check_f32, dummy, row_chunks};
use crate::engine::error::{shape_err, Result};
use crate::engine::params::kernel_params;
use crate::engine::{grid, Kernel};
use crate::engine::{DType, Tensor};

const FWD: Kernel = Kernel::new("softmax", "softmax_fwd", 2, 1);
const BWD: Kernel = Kernel::new("softmax", "softmax_bwd", 2, 1);

kernel_params! {
    /// `softmax.wgsl`'s uniforms.
    pub struct SoftmaxParams in ["softmax"] {
        /// Rows in this chunk.
        rows: u32,
        /// Row length.
        cols: u32,
        /// 1: add the mask.
        has_mask: u32,
        /// Consecutive rows sharing one mask row.
        mask_group: u32,
        /// Global index of this chunk's first row (for its mask row).
        row_base: u32,
        /// 1: log-softmax.
        log: u32,
        /// Padding.
        _p0: u32,
        /// Padding.
        _p1: u32,
    }
}

/// softmax(x + mask) (or its log) over the last dim. `mask` is [R, cols] where the rows of
/// `x` come in R consecutive groups of equal size sharing one mask row (e.g. attention scores
/// [B, H, Tq, Tk] with a [B, Tk] key-padding mask).
pub fn forward(x: &Tensor, mask: Option<&Tensor>, log: bool) -> Result<Tensor> {
    let op = if log { "log_softmax" } else { "softmax" };
    check_f32(op, &[x])?;
    if x.shape().is_empty() {
        return shape_err(op, "input must have at least one dim");
    }
    let cols = x.dim(-1);
    let rows = x.numel() / cols.max(1);
    let mut group = 1;
    if let Some(m) = mask {
        check_f32(op, &[m])?;
        let mrows = m.numel() / cols.max(1);
        if m.dim(-1) != cols || mrows == 0 || !rows.is_multiple_of(mrows) {
            return shape_err(
                op,
                format!("mask {:?} does not fit scores {:?}", m.shape(), x.shape()),
            );
        }
        group = rows / mrows;
    }
    let gpu = x.gpu();
    let y = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    let d = dummy(gpu)?;
    for (r0, nr) in row_chunks(gpu, op, rows, cols)? {
        let params = SoftmaxParams {
            rows: nr as u32,
            cols: cols as u32,
            has_mask: mask.is_some() as u32,
            mask_group: group as u32,
            row_base: r0 as u32,
            log: log as u32,
            ..Default::default()
        };
        let mr = mask.map_or(d.bind(), |m| m.bind());
        gpu.dispatch(
            &FWD,
            &params,
            &[
                x.bind_range(r0 * cols, nr * cols),
                mr,
                y.bind_range(r0 * cols, nr * cols),
            ],
            grid(nr as u64, 1),
        )?;
    }
    Ok(y)
}

/// dx from the forward output `y` and upstream `dy`.
pub fn backward(y: &Tensor, dy: &Tensor, log: bool) -> Result<Tensor> {
    let op = if log {
        "log_softmax_backward"
    } else {
        "softmax_backward"
    };
    check_f32(op, &[y, dy])?;
    if y.shape() != dy.shape() {
        return shape_err(op, format!("y {:?} but dy {:?}", y.shape(), dy.shape()));
    }
    let cols = y.dim(-1);
    let rows = y.numel() / cols.max(1);
    let gpu = y.gpu();
    let dx = Tensor::uninit(gpu, y.shape(), DType::F32)?;
    for (r0, nr) in row_chunks(gpu, op, rows, cols)? {
        let params = SoftmaxParams {
            rows: nr as u32,
            cols: cols as u32,
            has_mask: 0,
            mask_group: 1,
            row_base: r0 as u32,
            log: log as u32,
            ..Default::default()
        };
        let (yr, dyr) = (
            y.bind_range(r0 * cols, nr * cols),
            dy.bind_range(r0 * cols, nr * cols),
        );
        gpu.dispatch(
            &BWD,
            &params,
            &[yr, dyr, dx.bind_range(r0 * cols, nr * cols)],
            grid(nr as u64, 1),
        )?;
    }
    Ok(dx)
}
