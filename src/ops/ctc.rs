//! CTC loss on the GPU: log-softmax, alpha/beta recursions and the gradient w.r.t. the logits.
//! Semantics follow `torch.nn.functional.ctc_loss` (reductions `sum`, `mean`, `none`;
//! `zero_infinity`), with inputs batch-first: logits [B, T, V].

use super::{check_f32, elementwise, reduce, softmax};
use crate::data::Targets;
use crate::engine::error::{shape_err, Error, Result};
use crate::engine::params::kernel_params;
use crate::engine::{grid, Kernel};
use crate::engine::{DType, Tensor};

const fn k(entry: &'static str) -> Kernel {
    Kernel::new("ctc", entry, 5, 3)
}
const ALPHA_BETA: Kernel = k("ctc_alpha_beta");
const GRAD: Kernel = k("ctc_grad");
/// Longest extended label sequence a workgroup holds (2 * 1023 + 1).
const MAX_S: usize = 2047;

kernel_params! {
    /// `ctc.wgsl`'s uniforms.
    pub struct CtcParams in ["ctc"] {
        /// Utterances.
        batch: u32,
        /// Frames.
        t_max: u32,
        /// Vocabulary size.
        vocab: u32,
        /// Extended label sequence length: 2 * longest target + 1.
        s_max: u32,
        /// Padded target length.
        l_max: u32,
        /// The blank id.
        blank: u32,
        /// 1: infinite losses (and their gradients) become zero.
        zero_inf: u32,
        /// Padding.
        _p0: u32,
    }
}

/// How per-utterance losses are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// Sum over the batch.
    Sum,
    /// Each loss divided by its target length (at least 1), then averaged over the batch.
    Mean,
    /// Per-utterance losses, shape `[B]`.
    None,
}

/// Forward result, holding what the backward pass needs.
pub struct Ctc {
    /// The reduced loss (scalar, or `[B]` for `Reduction::None`).
    pub loss: Tensor,
    /// Per-utterance negative log-likelihoods `[B]` (inf, or 0 with zero_infinity, if impossible).
    pub nll: Tensor,
    /// Utterances whose target cannot be aligned to their frames.
    pub infeasible: Vec<usize>,
    lp: Tensor,
    alpha: Tensor,
    beta: Tensor,
    targets: Tensor,
    lens: Tensor,
    weights: Tensor,
    params: CtcParams,
    reduction: Reduction,
}

/// How the loss is taken: torch's `blank`, `reduction` and `zero_infinity`.
#[derive(Clone, Copy, Debug)]
pub struct CtcOptions {
    /// The blank id.
    pub blank: usize,
    /// How per-utterance losses are combined.
    pub reduction: Reduction,
    /// Impossible alignments give a loss (and gradient) of 0 instead of inf.
    pub zero_infinity: bool,
}

/// Computes the CTC loss of `logits` [B, T, V] (log-softmax applied inside) against `targets`
/// (one row per utterance) over each utterance's first `input_lengths[b]` frames. Bad ids or
/// lengths are reported before any kernel runs.
pub fn ctc_loss(
    logits: &Tensor,
    targets: &Targets,
    input_lengths: &[usize],
    opts: CtcOptions,
) -> Result<Ctc> {
    const OP: &str = "ctc_loss";
    let CtcOptions {
        blank,
        reduction,
        zero_infinity,
    } = opts;
    check_f32(OP, &[logits])?;
    let [b, t, v] = logits.shape() else {
        return shape_err(
            OP,
            format!(
                "logits must be [batch, frames, vocab], got {:?}",
                logits.shape()
            ),
        );
    };
    let (b, t, v) = (*b, *t, *v);
    let l_max = targets.width;
    if targets.len() != b || input_lengths.len() != b || targets.ids.len() != b * l_max {
        return shape_err(
            OP,
            format!(
                "batch {b} but {} target rows ({} ids of width {l_max}) and {} input lengths",
                targets.len(),
                targets.ids.len(),
                input_lengths.len()
            ),
        );
    }
    if blank >= v {
        return shape_err(
            OP,
            format!("blank id {blank} outside the vocabulary of {v}"),
        );
    }
    if 2 * l_max + 1 > MAX_S {
        return shape_err(
            OP,
            format!(
                "targets padded to {l_max} labels; at most {} supported",
                (MAX_S - 1) / 2
            ),
        );
    }
    let mut lens = Vec::with_capacity(2 * b);
    let mut infeasible = Vec::new();
    for (i, (&il, &tl)) in input_lengths.iter().zip(&targets.lengths).enumerate() {
        if il > t {
            return shape_err(
                OP,
                format!("utterance {i}: input length {il} exceeds the {t} frames of logits"),
            );
        }
        if tl > l_max {
            return shape_err(
                OP,
                format!("utterance {i}: target length {tl} exceeds the padded length {l_max}"),
            );
        }
        let row = targets.row(i);
        for &id in row {
            if id as usize >= v {
                return shape_err(
                    OP,
                    format!("utterance {i}: target id {id} outside the vocabulary of {v}"),
                );
            }
            if id as usize == blank {
                return shape_err(
                    OP,
                    format!("utterance {i}: target contains the blank id {blank}"),
                );
            }
        }
        // A path needs one frame per label plus a blank between each repeated pair.
        if il < crate::data::ctc_min_frames(row) {
            infeasible.push(i);
        }
        lens.extend([il as u32, tl as u32]);
    }
    let gpu = logits.gpu();
    // The kernel reads ids past a row's length as 0 whatever the caller padded with.
    let ids: Vec<u32> = (0..b * l_max)
        .map(|j| {
            let (i, pos) = (j / l_max.max(1), j % l_max.max(1));
            if pos < targets.lengths[i] {
                targets.ids[j]
            } else {
                0
            }
        })
        .collect();
    let targets_t = Tensor::from_u32(gpu, &ids, &[b, l_max])?;
    let lens_t = Tensor::from_u32(gpu, &lens, &[b, 2])?;
    let s_max = 2 * l_max + 1;
    let lp = softmax::forward(logits, None, true)?;
    let alpha = Tensor::uninit(gpu, &[b, t, s_max], DType::F32)?;
    let beta = Tensor::uninit(gpu, &[b, t, s_max], DType::F32)?;
    let nll = Tensor::uninit(gpu, &[b], DType::F32)?;
    let params = CtcParams {
        batch: b as u32,
        t_max: t as u32,
        vocab: v as u32,
        s_max: s_max as u32,
        l_max: l_max as u32,
        blank: blank as u32,
        zero_inf: zero_infinity as u32,
        ..Default::default()
    };
    let unused = Tensor::uninit(gpu, &[1], DType::F32)?;
    gpu.dispatch(
        &ALPHA_BETA,
        &params,
        &[
            lp.bind(),
            targets_t.bind(),
            lens_t.bind(),
            unused.bind(),
            unused.bind(),
            alpha.bind(),
            beta.bind(),
            nll.bind(),
        ],
        [b as u32, 1, 1],
    )?;
    let w_loss: Vec<f32> = (0..b)
        .map(|i| match reduction {
            Reduction::Mean => 1.0 / (targets.lengths[i].max(1) as f32 * b as f32),
            _ => 1.0,
        })
        .collect();
    // Impossible utterances get no gradient: their loss is inf, or 0 with zero_infinity.
    let mut weights = w_loss.clone();
    for &i in &infeasible {
        weights[i] = 0.0;
    }
    let loss = match reduction {
        Reduction::None => nll.clone(),
        _ => reduce::sum_all(&elementwise::mul(
            &nll,
            &Tensor::from_slice(gpu, &w_loss, &[b])?,
        )?)?,
    };
    Ok(Ctc {
        loss,
        nll,
        infeasible,
        lp,
        alpha,
        beta,
        targets: targets_t,
        lens: lens_t,
        weights: Tensor::from_slice(gpu, &weights, &[b])?,
        params,
        reduction,
    })
}

/// Gradient of the loss w.r.t. the logits, given the upstream gradient of `Ctc::loss`.
pub fn ctc_backward(ctc: &Ctc, dloss: &Tensor) -> Result<Tensor> {
    let want: &[usize] = if ctc.reduction == Reduction::None {
        ctc.nll.shape()
    } else {
        &[]
    };
    if dloss.shape() != want && dloss.numel() != want.iter().product::<usize>() {
        return Err(Error::Shape {
            op: "ctc_backward",
            msg: format!("upstream gradient {:?}, loss is {want:?}", dloss.shape()),
        });
    }
    let gpu = ctc.lp.gpu();
    let w = elementwise::mul(
        &ctc.weights,
        &dloss.reshape(if ctc.reduction == Reduction::None {
            ctc.nll.shape()
        } else {
            &[]
        })?,
    )?;
    let grad = Tensor::uninit(gpu, ctc.lp.shape(), DType::F32)?;
    let n = grad.numel();
    gpu.dispatch(
        &GRAD,
        &ctc.params,
        &[
            ctc.lp.bind(),
            ctc.targets.bind(),
            ctc.lens.bind(),
            ctc.nll.bind(),
            w.bind(),
            ctc.alpha.bind(),
            ctc.beta.bind(),
            grad.bind(),
        ],
        grid(n as u64, 256),
    )?;
    Ok(grad)
}
