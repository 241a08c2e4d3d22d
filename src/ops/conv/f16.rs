//! A frozen convolution under `--fp16`: one f16 GEMM (tensor cores where the GPU has them)
//! over the input unfolded to f16 columns, as torch's autocast runs the feature encoder's
//! convs in f16.

use super::{check_bias, geometry, Conv1d};
use crate::engine::error::Result;
use crate::engine::params::kernel_params;
use crate::engine::{grid, DType, Kernel, Tensor};
use crate::ops::{cast, check_f32, copy, matmul};

const IM2COL: Kernel = Kernel::new("im2col", "im2col_f16", 1, 1);

kernel_params! {
    /// `im2col.wgsl`'s uniforms.
    pub struct Im2colParams in ["im2col"] {
        /// Elements of the columns (B Lout Cin K, even).
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

/// y = conv1d(x, w) + bias as [`super::forward`] computes it, from x and w rounded to f16 and
/// multiplied with f32 accumulation, for a conv whose gradients nobody needs: x unfolded to
/// columns [B, Lout, Cin K] (`im2col.wgsl`), one GEMM against w viewed as [Cout, Cin K], the
/// result [B, Lout, Cout] transposed to [B, Cout, Lout]. `None` where that does not apply:
/// channel groups, Cin K not a multiple of 8 (the tensor cores' row alignment; the 1-channel
/// first conv), or x or the columns past one binding.
pub fn forward_f16(
    c: &Conv1d,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    check_f32("conv1d", &[x, w])?;
    let g = geometry(c, x, w)?;
    check_bias(bias, &g)?;
    let gpu = x.gpu();
    let ck = g.cin * g.k;
    let n = g.batch * g.lout * ck;
    let max = gpu.max_binding() as usize;
    if c.groups != 1 || !ck.is_multiple_of(8) || x.numel() * 4 > max || n * 2 > max {
        return Ok(None);
    }
    let cols = Tensor::uninit(gpu, &[g.batch, g.lout, ck], DType::F16)?;
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
    gpu.dispatch(&IM2COL, &prm, &[xr, cols.bind()], grid(n as u64 / 2, 256))?;
    let w16 = cast::to_f16(&w.reshape(&[g.cout, ck])?)?;
    let yt = matmul::matmul(&cols, &w16, false, true, bias)?;
    Ok(Some(copy::transpose(&yt, 1, 2)?))
}
