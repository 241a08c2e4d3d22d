//! Broadcasting add/sub/mul/div/max, scale, fill, and the sum-over-broadcast-dims backward.

use super::reduce::ReduceParams;
use super::{check_f32, dims8, dummy, row_chunks, strides, MAX_DIMS};
use crate::engine::error::{shape_err, Result};
use crate::engine::params::kernel_params;
use crate::engine::{grid, Kernel};
use crate::engine::{DType, Tensor};

const BINARY: Kernel = Kernel::new("elementwise", "binary", 2, 1);
const SCALE: Kernel = Kernel::new("elementwise", "scale", 2, 1);
const FILL: Kernel = Kernel::new("elementwise", "fill", 2, 1);

kernel_params! {
    /// `elementwise.wgsl`'s uniforms.
    pub struct ElementwiseParams in ["elementwise"] {
        /// Elements in this chunk.
        n: u32,
        /// A [`BinOp`].
        op: u32,
        /// Dims of the output.
        ndim: u32,
        /// Bit 0: a is laid out like out (chunked with it); bit 1: the same for b.
        flags: u32,
        /// Global index of this chunk's first element.
        base: u32,
        /// Scale (`scale`) or value (`fill`).
        alpha: f32,
        /// Offset (`scale`).
        beta: f32,
        /// Padding.
        _pad: u32,
        /// The output's extents.
        shape: [[u32; 4]; 2],
        /// a's strides in out's index space (0 on broadcast dims).
        sa: [[u32; 4]; 2],
        /// The same for b.
        sb: [[u32; 4]; 2],
    }
}

/// A binary elementwise operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// a + b
    Add = 0,
    /// a - b
    Sub = 1,
    /// a * b
    Mul = 2,
    /// a / b
    Div = 3,
    /// max(a, b)
    Max = 4,
}

/// The NumPy broadcast of two shapes, or an error naming both.
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return shape_err(op, format!("shapes {a:?} and {b:?} do not broadcast")),
        };
    }
    if n > MAX_DIMS {
        return shape_err(op, format!("{n} dims; at most {MAX_DIMS} supported"));
    }
    Ok(out)
}

/// Strides of `shape` seen from the broadcast `out` shape (0 on broadcast dims).
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let st = strides(shape);
    let off = out.len() - shape.len();
    (0..out.len())
        .map(|d| {
            if d < off || shape[d - off] == 1 {
                0
            } else {
                st[d - off]
            }
        })
        .collect()
}

/// out = a (op) b with broadcasting.
pub fn binary(op: BinOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let name = match op {
        BinOp::Add => "add",
        BinOp::Sub => "sub",
        BinOp::Mul => "mul",
        BinOp::Div => "div",
        BinOp::Max => "max",
    };
    check_f32(name, &[a, b])?;
    let shape = broadcast_shape(name, a.shape(), b.shape())?;
    let gpu = a.gpu();
    let out = Tensor::uninit(gpu, &shape, DType::F32)?;
    let n = out.numel();
    let a_full = a.numel() == n;
    let b_full = b.numel() == n;
    let flags = a_full as u32 | (b_full as u32) << 1;
    let sa = dims8(&broadcast_strides(a.shape(), &shape));
    let sb = dims8(&broadcast_strides(b.shape(), &shape));
    for (start, len) in row_chunks(gpu, name, n, 1)? {
        let params = ElementwiseParams {
            n: len as u32,
            op: op as u32,
            ndim: shape.len() as u32,
            flags,
            base: start as u32,
            shape: dims8(&shape),
            sa,
            sb,
            ..Default::default()
        };
        let ba = if a_full {
            a.bind_range(start, len)
        } else {
            a.bind()
        };
        let bb = if b_full {
            b.bind_range(start, len)
        } else {
            b.bind()
        };
        gpu.dispatch(
            &BINARY,
            &params,
            &[ba, bb, out.bind_range(start, len)],
            grid(len as u64, 256),
        )?;
    }
    Ok(out)
}

/// a + b (broadcasting).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinOp::Add, a, b)
}

/// a - b (broadcasting).
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinOp::Sub, a, b)
}

/// a * b (broadcasting).
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinOp::Mul, a, b)
}

/// alpha * x + beta.
pub fn scale(x: &Tensor, alpha: f32, beta: f32) -> Result<Tensor> {
    check_f32("scale", &[x])?;
    let gpu = x.gpu();
    let out = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    for (s, len) in row_chunks(gpu, "scale", x.numel(), 1)? {
        let params = ElementwiseParams {
            n: len as u32,
            alpha,
            beta,
            ..Default::default()
        };
        let xr = x.bind_range(s, len);
        gpu.dispatch(
            &SCALE,
            &params,
            &[xr, xr, out.bind_range(s, len)],
            grid(len as u64, 256),
        )?;
    }
    Ok(out)
}

/// A tensor filled with one value.
pub fn fill(gpu: &crate::engine::Gpu, shape: &[usize], value: f32) -> Result<Tensor> {
    let out = Tensor::uninit(gpu, shape, DType::F32)?;
    let d = dummy(gpu)?;
    for (s, len) in row_chunks(gpu, "fill", out.numel(), 1)? {
        let params = ElementwiseParams {
            n: len as u32,
            alpha: value,
            ..Default::default()
        };
        gpu.dispatch(
            &FILL,
            &params,
            &[d.bind(), d.bind(), out.bind_range(s, len)],
            grid(len as u64, 256),
        )?;
    }
    Ok(out)
}

/// Sums `grad` (of a broadcast result) down to `shape`: the backward of broadcasting.
pub fn reduce_to(grad: &Tensor, shape: &[usize]) -> Result<Tensor> {
    check_f32("reduce_to", &[grad])?;
    if grad.shape() == shape {
        return Ok(grad.clone());
    }
    let gs = grad.shape().to_vec();
    if broadcast_shape("reduce_to", shape, &gs)? != gs {
        return shape_err(
            "reduce_to",
            format!("{gs:?} is not a broadcast of {shape:?}"),
        );
    }
    let off = gs.len() - shape.len();
    let full: Vec<usize> = (0..gs.len())
        .map(|d| if d < off { 1 } else { shape[d - off] })
        .collect();
    // Summed over leading dims only (a bias-like [H] of a [B, T, H] product): a column sum,
    // which sum_axis splits over many workgroups where the kernel below would give each
    // output one thread walking all B T rows.
    let lead = full.iter().take_while(|&&f| f == 1).count();
    if lead > 0 && full[lead..] == gs[lead..] {
        let rows: usize = gs[..lead].iter().product();
        let cols: usize = gs[lead..].iter().product();
        return super::reduce::sum_axis(&grad.reshape(&[rows, cols])?, 0, 1.0)?.reshape(shape);
    }
    let gst = strides(&gs);
    let (mut rshape, mut rstride) = (vec![], vec![]);
    for d in 0..gs.len() {
        if full[d] == 1 && gs[d] != 1 {
            rshape.push(gs[d]);
            rstride.push(gst[d]);
        }
    }
    let kstride: Vec<usize> = (0..gs.len())
        .map(|d| if full[d] == 1 { 0 } else { gst[d] })
        .collect();
    let gpu = grad.gpu();
    let out = Tensor::uninit(gpu, shape, DType::F32)?;
    let n = out.numel();
    let params = ReduceParams {
        n: n as u32,
        ndim: gs.len() as u32,
        rn: rshape.len() as u32,
        kshape: dims8(&full),
        kstride: dims8(&kstride),
        rshape: dims8(&rshape),
        rstride: dims8(&rstride),
        ..Default::default()
    };
    let d = dummy(gpu)?;
    gpu.dispatch(
        &super::reduce::REDUCE_TO,
        &params,
        &[grad.bind(), d.bind(), d.bind(), out.bind()],
        grid(n as u64, 256),
    )?;
    Ok(out)
}
