//! Kernel launchers: forward and backward of every op, on plain tensors.
//!
//! Each function validates shapes (returning an error that names the op and the shapes),
//! allocates its output from the pool, splits work that exceeds the device's binding limit into
//! chunks, and records dispatches. None of them reads anything back.

pub mod activation;
pub mod attention;
pub mod cast;
pub mod conv;
pub mod copy;
pub mod ctc;
pub mod dropout;
pub mod elementwise;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod softmax;
pub mod tune;
pub mod weight_norm;

use crate::engine::error::{Error, Result};

/// Gradients of a layer's input, weight and bias, by name (each `None` where it was not asked
/// for or the layer has none).
#[derive(Debug)]
pub struct LayerGrads {
    /// dL/dinput (matmul's A, a norm's or conv's x).
    pub input: Option<Tensor>,
    /// dL/dweight (matmul's B, a norm's gamma, a conv's kernel).
    pub weight: Option<Tensor>,
    /// dL/dbias (a norm's beta).
    pub bias: Option<Tensor>,
}
use crate::engine::Gpu;
use crate::engine::{DType, Tensor};

/// Most dims a broadcasting or strided kernel handles.
pub const MAX_DIMS: usize = 8;

/// Splits `rows` rows of `row_elems` f32 each into chunks that fit one binding and start at
/// aligned offsets. Returns (first row, row count) pairs.
pub(crate) fn row_chunks(
    gpu: &Gpu,
    op: &'static str,
    rows: usize,
    row_elems: usize,
) -> Result<Vec<(usize, usize)>> {
    let limit = (gpu.max_binding() / 4) as usize;
    let align = (gpu.offset_align() / 4) as usize;
    if rows * row_elems <= limit || row_elems == 0 {
        return Ok(vec![(0, rows)]);
    }
    // Rows per chunk must keep chunk starts aligned: a multiple of align / gcd(row, align).
    let step = align / gcd(row_elems, align);
    let per = (limit / row_elems) / step * step;
    if per == 0 {
        return Err(Error::Limit {
            op,
            msg: format!(
                "one row of {row_elems} elements (x{step} for alignment) exceeds the binding limit of {limit} elements"
            ),
        });
    }
    Ok((0..rows)
        .step_by(per)
        .map(|s| (s, per.min(rows - s)))
        .collect())
}

/// f32 elements one binding holds from any start: the binding limit less the alignment a
/// shifted binding ([`Tensor::bind_shifted`]) may add in front.
pub(crate) fn binding_room(gpu: &Gpu) -> usize {
    ((gpu.max_binding() - gpu.offset_align()) / 4) as usize
}

/// Splits `rows` rows into chunks where each operand's part (`row_sizes[i]` elements per row)
/// fits one binding even when bound from the aligned offset at or below its start (see
/// [`Tensor::bind_shifted`]). For kernels that take element offsets, so no row alignment is
/// needed: wav2vec2's first conv output, batch 16 x 512 x 16000, splits anywhere.
pub(crate) fn shifted_chunks(
    gpu: &Gpu,
    op: &'static str,
    rows: usize,
    row_sizes: &[usize],
) -> Result<Vec<(usize, usize)>> {
    let limit = (gpu.max_binding() / 4) as usize;
    let widest = row_sizes.iter().copied().max().unwrap_or(0);
    if rows * widest <= limit || widest == 0 {
        return Ok(vec![(0, rows)]);
    }
    let per = binding_room(gpu) / widest;
    if per == 0 {
        return Err(Error::Limit {
            op,
            msg: format!(
                "one item of {widest} elements exceeds the binding limit of {limit} elements"
            ),
        });
    }
    Ok((0..rows)
        .step_by(per)
        .map(|s| (s, per.min(rows - s)))
        .collect())
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A placeholder for bindings a kernel entry does not use.
pub(crate) fn dummy(gpu: &Gpu) -> Result<Tensor> {
    Tensor::uninit(gpu, &[64], crate::engine::DType::F32)
}

/// Packs dims into the shaders' `array<vec4<u32>, 2>` layout (zeros past the last).
pub(crate) fn dims8(v: &[usize]) -> [[u32; 4]; 2] {
    let mut out = [[0u32; 4]; 2];
    for (o, &x) in out.as_flattened_mut().iter_mut().zip(v) {
        *o = x as u32;
    }
    out
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// Checks that tensors share a device and are f32.
pub(crate) fn check_f32(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    for t in ts {
        t.expect_f32(op)?;
    }
    Ok(())
}

/// Checks that tensors have the dtype `want`.
pub(crate) fn check_dtype(op: &'static str, ts: &[&Tensor], want: DType) -> Result<()> {
    for t in ts {
        if t.dtype() != want {
            return Err(Error::DType {
                op,
                found: t.dtype(),
                expected: want,
            });
        }
    }
    Ok(())
}
