//! The backward of matmul: dA and dB as GEMMs, and a linear layer's weight and bias
//! gradients in one pass of the tiled kernel, added straight into the optimiser's slots
//! where they have them.

use super::{
    binding_elems, dims, gemm, matmul, Algo, MatmulParams, ADD_INTO_C, ADD_INTO_SUMS, ROW_SUMS,
};
use crate::engine::error::{shape_err, Result};
use crate::engine::{DType, Tensor};
use crate::ops::{dummy, reduce, LayerGrads};

/// Aᵀ B and the row sums of Aᵀ in one pass, for A [K, M] and B [K, N]: a linear layer's
/// weight gradient dYᵀX with its bias gradient (the column sums of dY) riding on it. `None`
/// where the tiled f32 kernel cannot take it in one binding (the caller sums separately);
/// `splits` forces the split-K slices as in [`matmul_with`](super::matmul_with).
pub fn matmul_tn_row_sums(
    a: &Tensor,
    b: &Tensor,
    splits: Option<usize>,
) -> Result<Option<(Tensor, Tensor)>> {
    let gpu = a.gpu();
    let (m, n) = (a.dim(-1), b.dim(-1));
    let c = Tensor::uninit(gpu, &[m, n], DType::F32)?;
    let sums = Tensor::uninit(gpu, &[m], DType::F32)?;
    let done = matmul_tn_row_sums_into(a, b, &c, &sums, false, splits)?;
    Ok(done.then_some((c, sums)))
}

/// [`matmul_tn_row_sums`] into `c` `[M, N]` and `sums` `[M]`, overwriting them or, with
/// `accumulate`, adding into them (a weight and bias gradient straight into the optimiser's
/// gradient slots). Returns false, touching nothing, where the tiled f32 kernel cannot take
/// the operands in one binding.
pub fn matmul_tn_row_sums_into(
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    sums: &Tensor,
    accumulate: bool,
    splits: Option<usize>,
) -> Result<bool> {
    let gpu = a.gpu();
    let two_d = a.shape().len() == 2 && b.shape().len() == 2;
    if !two_d
        || a.dtype() != DType::F32
        || b.dtype() != DType::F32
        || Algo::default_for_run() != Algo::Tiled
    {
        return Ok(false);
    }
    let (k, m, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
    if b.shape()[0] != k {
        return shape_err(
            "matmul",
            format!("{:?}ᵀ times {:?}: inner dims differ", a.shape(), b.shape()),
        );
    }
    let limit = binding_elems(gpu);
    if a.numel().max(b.numel()).max(m * n + m) > limit {
        return Ok(false);
    }
    if c.shape() != [m, n] || sums.numel() != m {
        return shape_err(
            "matmul",
            format!(
                "{:?}ᵀ times {:?} into {:?} with row sums {:?}",
                a.shape(),
                b.shape(),
                c.shape(),
                sums.shape()
            ),
        );
    }
    let prm = MatmulParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        trans_a: 1,
        has_bias: ROW_SUMS
            | if accumulate {
                ADD_INTO_C | ADD_INTO_SUMS
            } else {
                0
            },
        k_slice: k as u32,
        splits: 1,
        // Each split-K slice's partial row sums follow its partial C in the workspace.
        slice_stride: (m * n + m) as u32,
        ..Default::default()
    };
    let dm = dummy(gpu)?;
    let bufs = [a.bind(), b.bind(), dm.bind(), c.bind(), sums.bind()];
    gemm(gpu, false, prm, 1, bufs, splits, true)?;
    Ok(true)
}

/// The backward of a linear layer, C = A Bᵀ + bias with A [..., M, K] and a shared weight B
/// [N, K], all f32, whose weight and bias gradients are added straight into `dw` and `db` (the
/// optimiser's gradient slots) by the weight gradient's pass. Returns dA, or `None`, having
/// done nothing, where the layer is not of that form or the tiled kernel cannot take it (the
/// caller falls back to [`matmul_backward`]).
pub fn linear_backward_into(
    a: &Tensor,
    b: &Tensor,
    dc: &Tensor,
    dw: &Tensor,
    db: &Tensor,
) -> Result<Option<Tensor>> {
    let d = dims(a, b, false, true)?;
    if !d.b_shared || dw.shape() != b.shape() || db.numel() != d.n {
        return Ok(None);
    }
    let rows = d.batch * d.m;
    let (dc2, a2) = (dc.reshape(&[rows, d.n])?, a.reshape(&[rows, d.k])?);
    if !matmul_tn_row_sums_into(&dc2, &a2, dw, &db.reshape(&[d.n])?, true, None)? {
        return Ok(None);
    }
    Ok(Some(matmul(dc, b, false, false, None)?.reshape(a.shape())?))
}

/// Gradients of C = op(A) op(B) + bias given dC: dA as `input`, dB as `weight`, dbias. With f16 A and B, dC is
/// cast to f16 for the two products (that is where loss scaling keeps small gradients
/// representable) and dbias is summed from the f32 dC; dA and dB come out f32. In f32 a
/// linear layer's dbias comes out of the weight gradient's pass ([`matmul_tn_row_sums`]).
pub fn matmul_backward(
    a: &Tensor,
    b: &Tensor,
    ta: bool,
    tb: bool,
    has_bias: bool,
    dc: &Tensor,
) -> Result<LayerGrads> {
    let d = dims(a, b, ta, tb)?;
    let dc32 = dc;
    let dc16;
    let dc = if a.dtype() == DType::F16 {
        dc16 = crate::ops::cast::to_f16(dc)?;
        &dc16
    } else {
        dc
    };
    let da = if !ta {
        matmul(dc, b, false, !tb, None)?
    } else if d.b_shared && a.shape().len() > 2 {
        // dA_b = op(B) dC_b^T: computed transposed against the shared B, then swapped back.
        let r = a.shape().len();
        crate::ops::copy::transpose(&matmul(dc, b, false, !tb, None)?, r - 2, r - 1)?
    } else {
        matmul(b, dc, tb, true, None)?
    };
    // The bias gradient, when the weight gradient's pass computed it.
    let mut summed = None;
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
                let fused = match has_bias {
                    true => matmul_tn_row_sums(&dc2, &a2, None)?,
                    false => None,
                };
                match fused {
                    Some((dw, sums)) => {
                        summed = Some(sums);
                        dw
                    }
                    None => matmul(&dc2, &a2, true, false, None)?,
                }
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
    } else if summed.is_some() {
        summed
    } else if rows * d.n <= binding_elems(dc32.gpu()) {
        Some(reduce::sum_axis(&dc32.reshape(&[1, rows, d.n])?, 1, 1.0)?.reshape(&[d.n])?)
    } else {
        // Column sums past one binding: 1ᵀ·dC, which the matmul splits over the rows.
        let ones = crate::ops::elementwise::fill(dc32.gpu(), &[rows, 1], 1.0)?;
        Some(matmul(&ones, &dc32.reshape(&[rows, d.n])?, true, false, None)?.reshape(&[d.n])?)
    };
    Ok(LayerGrads {
        input: Some(da.reshape(a.shape())?),
        weight: Some(db.reshape(b.shape())?),
        bias: dbias,
    })
}
