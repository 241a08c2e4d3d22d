//! Batched matmul with transpose flags and a fused bias, and its backward.

use super::{check_dtype, check_f32, dummy, reduce, shifted_chunks};
use crate::error::{shape_err, Result};
use crate::gpu::Kernel;
use crate::tensor::{DType, Tensor};

const TILED: Kernel = Kernel {
    file: "matmul",
    entry: "matmul_tiled",
    reads: 3,
    writes: 1,
};
const NAIVE: Kernel = Kernel {
    file: "matmul",
    entry: "matmul_naive",
    reads: 3,
    writes: 1,
};

/// The same kernels reading f16 A and B (see `matmul.wgsl` and [`crate::gpu::F16_SUFFIX`]).
const TILED_F16: Kernel = Kernel {
    file: "matmul_f16",
    ..TILED
};
const NAIVE_F16: Kernel = Kernel {
    file: "matmul_f16",
    ..NAIVE
};

/// f32 elements one storage binding holds.
fn binding_elems(gpu: &crate::Gpu) -> usize {
    (gpu.max_binding() / 4) as usize
}

/// Which matmul kernel to run (the naive one exists as the benchmark's baseline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
    /// Register-blocked, workgroup-tiled.
    Tiled,
    /// One thread per output.
    Naive,
}

/// Shape bookkeeping for C = op(A) op(B).
struct Dims {
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    b_shared: bool,
}

fn dims(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Dims> {
    let (ar, br) = (a.shape().len(), b.shape().len());
    if ar < 2 || br < 2 {
        return shape_err(
            "matmul",
            format!(
                "operands must be at least 2-D, got {:?} and {:?}",
                a.shape(),
                b.shape()
            ),
        );
    }
    let (m, ka) = if ta {
        (a.dim(-1), a.dim(-2))
    } else {
        (a.dim(-2), a.dim(-1))
    };
    let (kb, n) = if tb {
        (b.dim(-1), b.dim(-2))
    } else {
        (b.dim(-2), b.dim(-1))
    };
    let batch: usize = a.shape()[..ar - 2].iter().product();
    let b_shared = br == 2;
    if ka != kb || (!b_shared && (a.shape()[..ar - 2] != b.shape()[..br - 2])) {
        return shape_err(
            "matmul",
            format!(
                "cannot multiply {:?}{} by {:?}{}",
                a.shape(),
                if ta { "^T" } else { "" },
                b.shape(),
                if tb { "^T" } else { "" }
            ),
        );
    }
    Ok(Dims {
        batch,
        m,
        n,
        k: ka,
        b_shared,
    })
}

/// C = op(A) op(B) (+ bias over the last dim). A is [..., M, K] (or [..., K, M] with `ta`),
/// B is [K, N] shared by the batch or [..., K, N] batched like A (or transposed with `tb`).
/// A and B are both f32 or both f16 (mixed precision: f32 accumulation); bias and C are f32.
pub fn matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool, bias: Option<&Tensor>) -> Result<Tensor> {
    matmul_with(Algo::Tiled, a, b, ta, tb, bias)
}

/// [`matmul`] with a chosen kernel.
pub fn matmul_with(
    algo: Algo,
    a: &Tensor,
    b: &Tensor,
    ta: bool,
    tb: bool,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let half = a.dtype() == DType::F16;
    if half {
        check_dtype("matmul", &[a, b], DType::F16)?;
    } else {
        check_f32("matmul", &[a, b])?;
    }
    let d = dims(a, b, ta, tb)?;
    if let Some(bias) = bias {
        check_f32("matmul", &[bias])?;
        if bias.numel() != d.n {
            return shape_err(
                "matmul",
                format!("bias {:?} does not match N = {}", bias.shape(), d.n),
            );
        }
    }
    let gpu = a.gpu();
    let mut shape = a.shape()[..a.shape().len() - 2].to_vec();
    shape.extend([d.m, d.n]);
    let c = Tensor::uninit(gpu, &shape, DType::F32)?;
    let dm = dummy(gpu)?;
    let biasr = bias.map_or(dm.bind(), |t| t.bind());
    let kernel = match (algo, half) {
        (Algo::Tiled, false) => TILED,
        (Algo::Naive, false) => NAIVE,
        (Algo::Tiled, true) => TILED_F16,
        (Algo::Naive, true) => NAIVE_F16,
    };
    let groups = |m: usize, batch: usize| -> [u32; 3] {
        if algo == Algo::Tiled {
            [d.n.div_ceil(64) as u32, m.div_ceil(64) as u32, batch as u32]
        } else {
            [d.n.div_ceil(16) as u32, m.div_ceil(16) as u32, batch as u32]
        }
    };
    let params = |m: usize, sa: usize, sb: usize, sc: usize, offs: [u32; 3]| -> Vec<u32> {
        vec![
            m as u32,
            d.n as u32,
            d.k as u32,
            ta as u32,
            tb as u32,
            bias.is_some() as u32,
            sa as u32,
            sb as u32,
            sc as u32,
            offs[0],
            offs[1],
            offs[2],
        ]
    };
    if d.b_shared && !ta {
        // Weights shared by the batch: fold the batch into M and split rows to fit bindings.
        let rows = d.batch * d.m;
        for (r0, nr) in shifted_chunks(gpu, "matmul", rows, &[d.k, d.n])? {
            let (ar, oa) = a.bind_shifted(r0 * d.k, nr * d.k);
            let (cr, oc) = c.bind_shifted(r0 * d.n, nr * d.n);
            gpu.dispatch(
                &kernel,
                &params(nr, 0, 0, 0, [oa, 0, oc]),
                &[ar, b.bind(), biasr, cr],
                groups(nr, 1),
            )?;
        }
    } else if d.batch == 1 && ta && !tb && d.k * d.m.max(d.n) > binding_elems(gpu) {
        // A weight gradient Aᵀ·dC over more rows (frames) than one binding holds: split the
        // contraction, each slice adding its partial product into C (split-K).
        let (limit, align) = (binding_elems(gpu), (gpu.offset_align() / 4) as usize);
        let per = limit.saturating_sub(align) / d.m.max(d.n);
        if per == 0 || d.m * d.n > limit {
            return shape_err(
                "matmul",
                format!("{} x {} output exceeds one binding", d.m, d.n),
            );
        }
        for k0 in (0..d.k).step_by(per) {
            let kc = per.min(d.k - k0);
            let (ar, oa) = a.bind_shifted(k0 * d.m, kc * d.m);
            let (br, ob) = b.bind_shifted(k0 * d.n, kc * d.n);
            let mut prm = params(d.m, 0, 0, 0, [oa, ob, 0]);
            prm[2] = kc as u32;
            // Flags: bit 0 bias (first slice only), bit 1 accumulate into C.
            prm[5] = if k0 == 0 { bias.is_some() as u32 } else { 2 };
            gpu.dispatch(&kernel, &prm, &[ar, br, biasr, c.bind()], groups(d.m, 1))?;
        }
    } else {
        let (sa, sb, sc) = (d.m * d.k, if d.b_shared { 0 } else { d.k * d.n }, d.m * d.n);
        for (b0, nb) in shifted_chunks(gpu, "matmul", d.batch, &[sa, sb, sc])? {
            let (br, ob) = if d.b_shared {
                (b.bind(), 0)
            } else {
                b.bind_shifted(b0 * sb, nb * sb)
            };
            let (ar, oa) = a.bind_shifted(b0 * sa, nb * sa);
            let (cr, oc) = c.bind_shifted(b0 * sc, nb * sc);
            gpu.dispatch(
                &kernel,
                &params(d.m, sa, sb, sc, [oa, ob, oc]),
                &[ar, br, biasr, cr],
                groups(d.m, nb),
            )?;
        }
    }
    Ok(c)
}

/// Gradients of C = op(A) op(B) + bias given dC: (dA, dB, dbias). With f16 A and B, dC is
/// cast to f16 for the two products (that is where loss scaling keeps small gradients
/// representable) and dbias is summed from the f32 dC; dA and dB come out f32.
pub fn matmul_backward(
    a: &Tensor,
    b: &Tensor,
    ta: bool,
    tb: bool,
    has_bias: bool,
    dc: &Tensor,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let d = dims(a, b, ta, tb)?;
    let dc32 = dc;
    let dc16;
    let dc = if a.dtype() == DType::F16 {
        dc16 = super::cast::to_f16(dc)?;
        &dc16
    } else {
        dc
    };
    let da = if !ta {
        matmul(dc, b, false, !tb, None)?
    } else if d.b_shared && a.shape().len() > 2 {
        // dA_b = op(B) dC_b^T: computed transposed against the shared B, then swapped back.
        let r = a.shape().len();
        super::copy::transpose(&matmul(dc, b, false, !tb, None)?, r - 2, r - 1)?
    } else {
        matmul(b, dc, tb, true, None)?
    };
    let db = if d.b_shared {
        // Shared weights: sum over the batch by folding it into the contraction.
        let rows = d.batch * d.m;
        let dc2 = dc.reshape(&[rows, d.n])?;
        if ta {
            // A is [..., K, M]: its batch cannot be folded; sum per-batch products.
            let per = if tb {
                matmul(dc, a, true, true, None)?
            } else {
                matmul(a, dc, false, false, None)?
            };
            let s = per.shape().to_vec();
            reduce::sum_axis(
                &per.reshape(&[1, d.batch, s[s.len() - 2] * s[s.len() - 1]])?,
                1,
                1.0,
            )?
            .reshape(b.shape())?
        } else {
            let a2 = a.reshape(&[rows, d.k])?;
            if tb {
                matmul(&dc2, &a2, true, false, None)?
            } else {
                matmul(&a2, &dc2, true, false, None)?
            }
        }
    } else if tb {
        matmul(dc, a, true, ta, None)?
    } else {
        matmul(a, dc, !ta, false, None)?
    };
    let rows = d.batch * d.m;
    let dbias = if !has_bias {
        None
    } else if rows * d.n <= binding_elems(dc32.gpu()) {
        Some(reduce::sum_axis(&dc32.reshape(&[1, rows, d.n])?, 1, 1.0)?.reshape(&[d.n])?)
    } else {
        // Column sums past one binding: 1ᵀ·dC, which the matmul splits over the rows.
        let ones = super::elementwise::fill(dc32.gpu(), &[rows, 1], 1.0)?;
        Some(matmul(&ones, &dc32.reshape(&[rows, d.n])?, true, false, None)?.reshape(&[d.n])?)
    };
    Ok((da.reshape(a.shape())?, db.reshape(b.shape())?, dbias))
}
