//! Inverted dropout whose mask is a hash of (seed, index): backward recomputes it.

use super::{check_f32, dummy, row_chunks};
use crate::engine::error::{shape_err, Result};
use crate::engine::params::kernel_params;
use crate::engine::{grid, Kernel};
use crate::engine::{DType, Tensor};

const DROPOUT: Kernel = Kernel::new("dropout", "dropout", 2, 1);

kernel_params! {
    /// `dropout.wgsl`'s uniforms.
    pub struct DropoutParams in ["dropout"] {
        /// Elements in this chunk.
        n: u32,
        /// Global index of this chunk's first element (the mask is a function of it).
        base: u32,
        /// Low word of the seed.
        seed_lo: u32,
        /// High word of the seed.
        seed_hi: u32,
        /// Drop probability.
        p: f32,
        /// 1: add the residual.
        residual: u32,
        /// Padding.
        _p1: u32,
        /// Padding.
        _p2: u32,
    }
}

/// Zeroes each element with probability `p` and scales the rest by 1/(1-p). Calling it again
/// with the same seed on the upstream gradient is its backward.
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    dropout_at(x, p, seed, 0)
}

/// [`dropout`] of a tensor that is part of a larger one starting at element `first` of it:
/// the mask is that of the larger tensor's elements (a data-parallel rank's share of a batch
/// draws the mask the whole batch would).
pub fn dropout_at(x: &Tensor, p: f32, seed: u64, first: usize) -> Result<Tensor> {
    launch(x, None, p, seed, first)
}

/// `res + dropout_at(x, ..)` in one pass: the residual connection after a dropped branch.
pub fn dropout_add_at(x: &Tensor, res: &Tensor, p: f32, seed: u64, first: usize) -> Result<Tensor> {
    if x.shape() != res.shape() {
        return shape_err(
            "dropout_add",
            format!(
                "branch {:?} and residual {:?} differ",
                x.shape(),
                res.shape()
            ),
        );
    }
    launch(x, Some(res), p, seed, first)
}

fn launch(x: &Tensor, res: Option<&Tensor>, p: f32, seed: u64, first: usize) -> Result<Tensor> {
    check_f32("dropout", &[x])?;
    check_f32("dropout", res.as_slice())?;
    if !(0.0..1.0).contains(&p) {
        return shape_err("dropout", format!("probability {p} not in [0, 1)"));
    }
    if p == 0.0 && res.is_none() {
        return Ok(x.clone());
    }
    let gpu = x.gpu();
    let out = Tensor::uninit(gpu, x.shape(), DType::F32)?;
    let none = dummy(gpu)?;
    for (s, len) in row_chunks(gpu, "dropout", x.numel(), 1)? {
        let params = DropoutParams {
            n: len as u32,
            base: (first + s) as u32,
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            p,
            residual: res.is_some() as u32,
            ..Default::default()
        };
        let r = match res {
            Some(r) => r.bind_range(s, len),
            None => none.bind(),
        };
        gpu.dispatch(
            &DROPOUT,
            &params,
            &[x.bind_range(s, len), r, out.bind_range(s, len)],
            grid(len as u64, 256),
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    /// common.wgsl's `pcg`.
    fn pcg(v: u32) -> u32 {
        let state = v.wrapping_mul(747796405).wrapping_add(2891336453);
        let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
        (word >> 22) ^ word
    }

    /// The mask is the hash the kernels have always drawn, so a seed keeps its mask across
    /// shader refactors (checkpointed runs replay the same dropout).
    #[test]
    fn mask_is_the_documented_hash() {
        let gpu = crate::engine::Gpu::new().expect("a GPU adapter (lavapipe in CI)");
        let (n, p, seed) = (5000, 0.3f32, 0x0123_4567_89ab_cdefu64);
        let x = crate::engine::Tensor::from_slice(&gpu, &vec![1.0; n], &[n]).unwrap();
        let y = super::dropout(&x, p, seed).unwrap().to_vec().unwrap();
        for (i, &v) in y.iter().enumerate() {
            let h = pcg(pcg(i as u32 ^ seed as u32).wrapping_add((seed >> 32) as u32));
            let keep = (h >> 8) as f32 * (1.0 / 16777216.0) >= p;
            assert_eq!(v != 0.0, keep, "element {i}");
        }
    }
}
