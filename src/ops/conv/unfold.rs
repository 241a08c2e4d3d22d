//! A convolution nobody differentiates (the frozen feature encoder, every conv in evaluation)
//! as one GEMM over its input unfolded to columns: in f16 under `--fp16` (tensor cores where
//! the GPU has them), as torch's autocast runs the feature encoder's convs in f16, and in f32
//! otherwise, where the GEMM's vec4 loads, split-K and tuning serve the conv too.

use super::{check_bias, geometry, Conv1d};
use crate::engine::error::Result;
use crate::engine::params::kernel_params;
use crate::engine::{grid, DType, Kernel, Tensor};
use crate::ops::{cast, check_f32, copy, matmul};

const IM2COL_F16: Kernel = Kernel::new("im2col", "im2col_f16", 1, 1);
const IM2COL_F32: Kernel = Kernel::new("im2col", "im2col_f32", 1, 1);

kernel_params! {
    /// `im2col.wgsl`'s uniforms.
    pub struct Im2colParams in ["im2col"] {
        /// Elements of the columns (B Lout Cin K; even, as Cin K is a multiple of 8).
        n: u32,
        /// Input channels.
        cin: u32,
        /// Input length.
        lin: u32,
        /// Output length.
        lout: u32,
        /// Kernel taps.
        k: u32,
        /// Step between output frames.
        stride: u32,
        /// Zeros added at both ends.
        pad: u32,
        /// Element shift of x within its (aligned-down) binding.
        off_x: u32,
    }
}

/// y = conv1d(x, w) + bias as [`super::forward`] computes it, as one GEMM: x unfolded to
/// columns [B, Lout, Cin K] (`im2col.wgsl`), times w viewed as [Cout, Cin K], the result
/// [B, Lout, Cout] transposed to [B, Cout, Lout]. With `half`, x and w are rounded to f16 and
/// multiplied with f32 accumulation. `None` where that does not apply: channel groups, Cin K
/// not a multiple of 8 (the tensor cores' and vec4 loads' row alignment; the 1-channel first
/// conv), or x or the columns past one binding.
pub fn forward_unfolded(
    c: &Conv1d,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    half: bool,
) -> Result<Option<Tensor>> {
    check_f32("conv1d", &[x, w])?;
    let g = geometry(c, x, w)?;
    check_bias(bias, &g)?;
    let gpu = x.gpu();
    let ck = g.cin * g.k;
    let n = g.batch * g.lout * ck;
    let (dtype, kernel, per_thread) = match half {
        true => (DType::F16, &IM2COL_F16, 2),
        false => (DType::F32, &IM2COL_F32, 1),
    };
    let max = gpu.max_binding() as usize;
    if c.groups != 1 || !ck.is_multiple_of(8) || x.numel() * 4 > max || n * dtype.size() > max {
        return Ok(None);
    }
    let cols = Tensor::uninit(gpu, &[g.batch, g.lout, ck], dtype)?;
    let (xr, off_x) = x.bind_shifted(0, x.numel());
    let prm = Im2colParams {
        n: n as u32,
        cin: g.cin as u32,
        lin: g.lin as u32,
        lout: g.lout as u32,
        k: g.k as u32,
        stride: c.stride as u32,
        pad: c.padding as u32,
        off_x,
    };
    let threads = (n / per_thread) as u64;
    gpu.dispatch(kernel, &prm, &[xr, cols.bind()], grid(threads, 256))?;
    let w = w.reshape(&[g.cout, ck])?;
    let w = if half { cast::to_f16(&w)? } else { w };
    let yt = matmul::matmul(&cols, &w, false, true, bias)?;
    Ok(Some(copy::transpose(&yt, 1, 2)?))
}
