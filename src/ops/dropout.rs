//! Inverted dropout whose mask is a hash of (seed, index): backward recomputes it.

use super::{check_f32, f, row_chunks};
use crate::engine::error::{shape_err, Result};
use crate::engine::{grid, Kernel};
use crate::engine::{DType, Tensor};

const DROPOUT: Kernel = Kernel {
    file: "dropout",
    entry: "dropout",
    reads: 1,
    writes: 1,
};

/// Zeroes each element with probability `p` and scales the rest by 1/(1-p). Calling it again
/// with the same seed on the upstream gradient is its backward.
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    check_f32("dropout", &[x])?;
    if !(0.0..1.0).contains(&p) {
        return shape_err("dropout", format!("probability {p} not in [0, 1)"));
    }
    if p == 0.0 {
        return Ok(x.clone());
    }
    let gpu = x.gpu();
    let out = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    for (s, len) in row_chunks(gpu, "dropout", x.numel(), 1)? {
        let params = [
            len as u32,
            s as u32,
            seed as u32,
            (seed >> 32) as u32,
            f(p),
            0,
            0,
            0,
        ];
        gpu.dispatch(
            &DROPOUT,
            &params,
            &[x.bind_range(s, len), out.bind_range(s, len)],
            grid(len as u64, 256),
        )?;
    }
    Ok(out)
}
