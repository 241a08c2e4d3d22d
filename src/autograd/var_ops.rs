//! The differentiable ops on [`Var`]: each runs its forward kernel and records the backward
//! kernels that give its inputs' gradients.

use super::{is_autocast, GradInto, Var};
use crate::data::Targets;
use crate::engine::Tensor;
use crate::error::{Error, Result};
use crate::ops::attention::Attention;
use crate::ops::LayerGrads;
use crate::ops::{self, activation::Act, conv::Conv1d, elementwise::BinOp, norm::Norm};

impl Var {
    fn binary(&self, other: &Var, op: BinOp) -> Result<Var> {
        let y = ops::elementwise::binary(op, &self.value, &other.value)?;
        let (a, b) = (self.value.clone(), other.value.clone());
        // A constant operand (a mask, a padding multiplier) gets no gradient: computing it
        // would be a product and a reduction over the whole activation for nothing.
        let (need_a, need_b) = (self.requires_grad(), other.requires_grad());
        Ok(Var::record(&[self, other], y, move |g| {
            let (da, db) = match op {
                BinOp::Add => (Some(g.clone()), Some(g.clone())),
                BinOp::Sub => (
                    Some(g.clone()),
                    need_b
                        .then(|| ops::elementwise::scale(g, -1.0, 0.0))
                        .transpose()?,
                ),
                BinOp::Mul => (
                    need_a.then(|| ops::elementwise::mul(g, &b)).transpose()?,
                    need_b.then(|| ops::elementwise::mul(g, &a)).transpose()?,
                ),
                BinOp::Div => {
                    let da = ops::elementwise::binary(BinOp::Div, g, &b)?;
                    // d(a/b)/db = -a/b^2 = -(g*a/b)/b
                    let db = if need_b {
                        let t = ops::elementwise::mul(&da, &a)?;
                        let t = ops::elementwise::binary(BinOp::Div, &t, &b)?;
                        Some(ops::elementwise::scale(&t, -1.0, 0.0)?)
                    } else {
                        None
                    };
                    (Some(da), db)
                }
                BinOp::Max => return Err(Error::Autograd("max has no gradient".into())),
            };
            let reduce = |d: Option<Tensor>, need: bool, shape: &[usize]| match d {
                Some(d) if need => ops::elementwise::reduce_to(&d, shape).map(Some),
                _ => Ok(None),
            };
            Ok(vec![
                reduce(da, need_a, a.shape())?,
                reduce(db, need_b, b.shape())?,
            ])
        }))
    }

    /// self + other (broadcasting).
    pub fn add(&self, other: &Var) -> Result<Var> {
        self.binary(other, BinOp::Add)
    }

    /// self - other (broadcasting).
    pub fn sub(&self, other: &Var) -> Result<Var> {
        self.binary(other, BinOp::Sub)
    }

    /// self * other (broadcasting).
    pub fn mul(&self, other: &Var) -> Result<Var> {
        self.binary(other, BinOp::Mul)
    }

    /// self / other (broadcasting).
    pub fn div(&self, other: &Var) -> Result<Var> {
        self.binary(other, BinOp::Div)
    }

    /// alpha * self + beta.
    pub fn scale(&self, alpha: f32, beta: f32) -> Result<Var> {
        let y = ops::elementwise::scale(&self.value, alpha, beta)?;
        Ok(Var::record(&[self], y, move |g| {
            Ok(vec![Some(ops::elementwise::scale(g, alpha, 0.0)?)])
        }))
    }

    /// op(self) @ op(w) (+ bias); see [`ops::matmul::matmul`].
    /// Under [`autocast`](crate::autograd::autocast), A and B are cast to f16 and multiplied with f32 accumulation; the
    /// f16 copies are what backward keeps (half the bytes). The output and all gradients are
    /// f32.
    pub fn matmul(&self, w: &Var, ta: bool, tb: bool, bias: Option<&Var>) -> Result<Var> {
        let half = is_autocast();
        let (a, b) = if half {
            (
                ops::cast::to_f16(&self.value)?,
                ops::cast::to_f16(&w.value)?,
            )
        } else {
            (self.value.clone(), w.value.clone())
        };
        let y = ops::matmul::matmul(&a, &b, ta, tb, bias.map(|b| &b.value))?;
        // An f16 copy of a weight would sit beside the f32 weight until backward: keep the
        // f32 one (alive anyway) and cast it again there. Not in a checkpointed layer's
        // recomputation, whose backward comes next: there the copy lives for one layer.
        let recast = half && w.held_elsewhere() && !w.in_recompute();
        let b = if recast { w.value.clone() } else { b };
        let has_bias = bias.is_some();
        let mut inputs = vec![self, w];
        inputs.extend(bias);
        Ok(Var::record_into(&inputs, y, move |g, into| {
            // A linear layer whose weight and bias gradients have slots: added there by the
            // weight gradient's pass.
            if let [_, Some(GradInto::Slot(dw)), Some(GradInto::Slot(db))] = &*into {
                if !ta && tb && !half {
                    if let Some(da) = ops::matmul::linear_backward_into(&a, &b, g, dw, db)? {
                        (into[1], into[2]) = (None, None);
                        return Ok(vec![Some(da), None, None]);
                    }
                }
            }
            let b = if recast { ops::cast::to_f16(&b)? } else { b };
            let d = ops::matmul::matmul_backward(&a, &b, ta, tb, has_bias, g)?;
            Ok(in_input_order(d, true, has_bias))
        }))
    }

    /// An f16 copy, for several f16 matmuls of one input to share (their gradients come
    /// back f32 and pass through unchanged).
    pub fn to_f16(&self) -> Result<Var> {
        let y = ops::cast::to_f16(&self.value)?;
        Ok(Var::record(&[self], y, |g| {
            Ok(vec![Some(ops::cast::to_f32(g)?)])
        }))
    }

    /// Pointwise activation. Under [`autocast`](crate::autograd::autocast) backward keeps an f16 copy of the input (half
    /// the bytes; the derivative is taken at the f16-rounded input, as under PyTorch's autocast,
    /// where the input would be a matmul's f16 output).
    pub fn act(&self, act: Act) -> Result<Var> {
        self.act_dropout(act, ops::activation::DropoutAt::default())
    }

    /// dropout(act(self)) in one pass each way; the same values and gradients as
    /// `self.act(act)?.dropout_at(drop.p, drop.seed, drop.first)`.
    pub fn act_dropout(&self, act: Act, drop: ops::activation::DropoutAt) -> Result<Var> {
        let y = ops::activation::forward_dropout(act, &self.value, drop)?;
        // The f16 copy is only for backward: none where no gradient flows (evaluation).
        let half = is_autocast() && self.requires_grad();
        let x = if half {
            ops::cast::to_f16(&self.value)?
        } else {
            self.value.clone()
        };
        Ok(Var::record(&[self], y, move |g| {
            let x = if half { ops::cast::to_f32(&x)? } else { x };
            Ok(vec![Some(ops::activation::backward_dropout(
                act, &x, g, drop,
            )?)])
        }))
    }

    /// GELU (exact).
    pub fn gelu(&self) -> Result<Var> {
        self.act(Act::Gelu)
    }

    /// ReLU.
    pub fn relu(&self) -> Result<Var> {
        self.act(Act::Relu)
    }

    /// Inverted dropout with probability `p`, mask from `seed`.
    pub fn dropout(&self, p: f32, seed: u64) -> Result<Var> {
        self.dropout_at(p, seed, 0)
    }

    /// Dropout with the mask of a larger tensor from its element `first` on
    /// ([`ops::dropout::dropout_at`]).
    pub fn dropout_at(&self, p: f32, seed: u64, first: usize) -> Result<Var> {
        if p == 0.0 {
            return Ok(self.clone());
        }
        let y = ops::dropout::dropout_at(&self.value, p, seed, first)?;
        Ok(Var::record(&[self], y, move |g| {
            Ok(vec![Some(ops::dropout::dropout_at(g, p, seed, first)?)])
        }))
    }

    /// `res + self.dropout_at(..)` in one pass (the residual connection after a dropped
    /// branch); the same values and gradients as the two ops.
    pub fn dropout_add_at(&self, res: &Var, p: f32, seed: u64, first: usize) -> Result<Var> {
        if p == 0.0 {
            return res.add(self);
        }
        let y = ops::dropout::dropout_add_at(&self.value, &res.value, p, seed, first)?;
        Ok(Var::record(&[self, res], y, move |g| {
            Ok(vec![
                Some(ops::dropout::dropout_at(g, p, seed, first)?),
                Some(g.clone()),
            ])
        }))
    }

    fn norm(&self, norm: Norm, gamma: Option<&Var>, beta: Option<&Var>, eps: f32) -> Result<Var> {
        let (y, stats) = ops::norm::forward(
            norm,
            &self.value,
            gamma.map(|v| &v.value),
            beta.map(|v| &v.value),
            eps,
        )?;
        let x = self.value.clone();
        let gv = gamma.map(|v| v.value.clone());
        let mut inputs = vec![self];
        inputs.extend(gamma);
        inputs.extend(beta);
        let has_beta = beta.is_some();
        Ok(Var::record_into(&inputs, y, move |g, into| {
            // The skip path's gradient of x, added by the same pass.
            let earlier = match &into[0] {
                Some(GradInto::Sum(e)) => Some(e),
                _ => None,
            };
            // dgamma and dbeta into their slots when those lie back to back.
            let slots = match (into.get(1), into.get(2)) {
                (Some(Some(GradInto::Slot(sg))), Some(Some(GradInto::Slot(sb)))) => {
                    Tensor::join(&[sg, sb])
                }
                _ => None,
            };
            let (d, added) = ops::norm::backward_adding(
                norm,
                &x,
                gv.as_ref(),
                &stats,
                g,
                earlier,
                slots.as_ref(),
            )?;
            if added.earlier {
                into[0] = None;
            }
            if added.slots {
                (into[1], into[2]) = (None, None);
            }
            Ok(in_input_order(d, gv.is_some(), has_beta))
        }))
    }

    /// LayerNorm over the last dim.
    pub fn layer_norm(&self, gamma: Option<&Var>, beta: Option<&Var>, eps: f32) -> Result<Var> {
        if gamma.is_some() != beta.is_some() {
            return Err(Error::Autograd(
                "layer_norm takes both weight and bias or neither".into(),
            ));
        }
        self.norm(Norm::Layer, gamma, beta, eps)
    }

    /// LayerNorm over the channels of [B, C, T] (as transpose, LayerNorm, transpose back).
    pub fn channel_norm(&self, gamma: Option<&Var>, beta: Option<&Var>, eps: f32) -> Result<Var> {
        if gamma.is_some() != beta.is_some() {
            return Err(Error::Autograd(
                "layer_norm takes both weight and bias or neither".into(),
            ));
        }
        self.norm(Norm::Channel, gamma, beta, eps)
    }

    /// GroupNorm with one group per channel over [B, C, T].
    pub fn group_norm(&self, gamma: Option<&Var>, beta: Option<&Var>, eps: f32) -> Result<Var> {
        if gamma.is_some() != beta.is_some() {
            return Err(Error::Autograd(
                "group_norm takes both weight and bias or neither".into(),
            ));
        }
        self.norm(Norm::Group, gamma, beta, eps)
    }

    /// Conv1d of self [B, Cin, L] with w [Cout, Cin/groups, K].
    /// Under [`autocast`](crate::autograd::autocast), a conv whose input, weight and bias
    /// need no gradient (the frozen feature encoder, evaluation) is one f16 GEMM over the
    /// unfolded input ([`ops::conv::forward_unfolded`]) where that applies; in f32 too with
    /// `XLSR_UNFOLD=1`.
    pub fn conv1d(&self, w: &Var, bias: Option<&Var>, geo: Conv1d) -> Result<Var> {
        let bias_t = bias.map(|b| &b.value);
        let frozen =
            !self.requires_grad() && !w.requires_grad() && bias.is_none_or(|b| !b.requires_grad());
        let half = is_autocast();
        if frozen && unfold_frozen_convs(half) {
            if let Some(y) = ops::conv::forward_unfolded(&geo, &self.value, &w.value, bias_t, half)?
            {
                return Ok(Var::constant(y));
            }
        }
        let y = ops::conv::forward(&geo, &self.value, &w.value, bias_t)?;
        let (x, wv) = (self.value.clone(), w.value.clone());
        let has_bias = bias.is_some();
        let need_input = self.requires_grad();
        let mut inputs = vec![self, w];
        inputs.extend(bias);
        Ok(Var::record(&inputs, y, move |g| {
            let d = ops::conv::backward(&geo, &x, &wv, has_bias, g, need_input)?;
            Ok(in_input_order(d, true, has_bias))
        }))
    }

    fn softmax_impl(&self, mask: Option<&Tensor>, log: bool) -> Result<Var> {
        let y = ops::softmax::forward(&self.value, mask, log)?;
        let yc = y.clone();
        Ok(Var::record(&[self], y, move |g| {
            Ok(vec![Some(ops::softmax::backward(&yc, g, log)?)])
        }))
    }

    /// Weight normalisation `g * self / ||self||`, the norm over all dims but the last
    /// (torch's `weight_norm(dim=2)` on a conv weight [O, I, K]; `g` has K elements).
    pub fn weight_norm(&self, g: &Var) -> Result<Var> {
        let (w, norms) = ops::weight_norm::forward(&g.value, &self.value)?;
        let (gv, v) = (g.value.clone(), self.value.clone());
        Ok(Var::record(&[self, g], w, move |dw| {
            let d = ops::weight_norm::backward(&gv, &v, &norms, dw)?;
            Ok(vec![Some(d.v), Some(d.g)])
        }))
    }

    /// Fused attention dropout(softmax(self kᵀ·scale + mask)) @ v; see [`ops::attention::forward`].
    /// Under [`autocast`](crate::autograd::autocast) it reads f16 copies of q, k, v (what backward keeps); arithmetic,
    /// output and gradients stay f32.
    pub fn attention(&self, k: &Var, v: &Var, mask: Option<&Tensor>, a: &Attention) -> Result<Var> {
        Ok(self.attention_from(k, v, mask, a, None)?.0)
    }

    /// [`Var::attention`], given the forward's result where an earlier run of the same forward
    /// kept it (see [`Var::attention_packed_from`]). Returns the forward's result too.
    pub fn attention_from(
        &self,
        k: &Var,
        v: &Var,
        mask: Option<&Tensor>,
        a: &Attention,
        kept: Option<ops::attention::Attended>,
    ) -> Result<(Var, ops::attention::Attended)> {
        let half = is_autocast();
        let cast = |t: &Tensor| {
            if half {
                ops::cast::to_f16(t)
            } else {
                Ok(t.clone())
            }
        };
        let (q, kv, vv) = (cast(&self.value)?, cast(&k.value)?, cast(&v.value)?);
        let fwd = match kept {
            Some(f) => f,
            None => ops::attention::forward(&q, &kv, &vv, mask, a)?,
        };
        let (o, kept) = (fwd.out.clone(), fwd.clone());
        let (mask, a) = (mask.cloned(), *a);
        let y = Var::record(&[self, k, v], o, move |g| {
            let d = ops::attention::backward(&q, &kv, &vv, mask.as_ref(), &a, &fwd, g)?;
            Ok(vec![Some(d.q), Some(d.k), Some(d.v)])
        });
        Ok((y, kept))
    }

    /// [`Var::attention`] over q, k and v packed in one [B, T, 3, H, D] var (the output of one
    /// GEMM over the joined projection weights); the output is [B, T, H, D] and the gradient
    /// comes back packed the same way.
    pub fn attention_packed(&self, mask: Option<&Tensor>, a: &Attention) -> Result<Var> {
        Ok(self.attention_packed_from(mask, a, None)?.0)
    }

    /// [`Var::attention_packed`], given the forward's result where an earlier run of the same
    /// forward (the same qkv values, mask and dropout seed) kept it: then the kernel does not
    /// run again (a checkpointed layer's recomputation). Returns the forward's result too.
    pub fn attention_packed_from(
        &self,
        mask: Option<&Tensor>,
        a: &Attention,
        kept: Option<ops::attention::Attended>,
    ) -> Result<(Var, ops::attention::Attended)> {
        let qkv = if is_autocast() {
            ops::cast::to_f16(&self.value)?
        } else {
            self.value.clone()
        };
        let fwd = match kept {
            Some(f) => f,
            None => ops::attention::forward_qkv(ops::attention::Qkv::Packed(&qkv), mask, a)?,
        };
        let (o, kept) = (fwd.out.clone(), fwd.clone());
        let (mask, a) = (mask.cloned(), *a);
        let y = Var::record(&[self], o, move |g| {
            let d = ops::attention::backward_packed(&qkv, mask.as_ref(), &a, &fwd, g)?;
            Ok(vec![Some(d)])
        });
        Ok((y, kept))
    }

    /// softmax(self + mask) over the last dim.
    pub fn softmax(&self, mask: Option<&Tensor>) -> Result<Var> {
        self.softmax_impl(mask, false)
    }

    /// log_softmax(self + mask) over the last dim.
    pub fn log_softmax(&self, mask: Option<&Tensor>) -> Result<Var> {
        self.softmax_impl(mask, true)
    }

    /// Sum of all elements.
    pub fn sum(&self) -> Result<Var> {
        let y = ops::reduce::sum_all(&self.value)?;
        let shape = self.shape().to_vec();
        Ok(Var::record(&[self], y, move |g| {
            let gv = g.reshape(&[1])?;
            Ok(vec![Some(ops::elementwise::binary(
                BinOp::Mul,
                &ops::elementwise::fill(g.gpu(), &shape, 1.0)?,
                &gv,
            )?)])
        }))
    }

    /// Mean of all elements.
    pub fn mean(&self) -> Result<Var> {
        let n = self.value.numel().max(1) as f32;
        self.sum()?.scale(1.0 / n, 0.0)
    }

    /// alpha * sum over `axis` (removing it).
    pub fn sum_axis(&self, axis: usize, alpha: f32) -> Result<Var> {
        let y = ops::reduce::sum_axis(&self.value, axis, alpha)?;
        let len = self.shape().get(axis).copied().unwrap_or(0);
        Ok(Var::record(&[self], y, move |g| {
            Ok(vec![Some(ops::reduce::expand(g, axis, len, alpha)?)])
        }))
    }

    /// L2 norm of all elements.
    pub fn l2_norm(&self) -> Result<Var> {
        let y = ops::reduce::l2_norm(&self.value)?;
        let (x, n) = (self.value.clone(), y.clone());
        Ok(Var::record(&[self], y, move |g| {
            Ok(vec![Some(ops::reduce::l2_norm_backward(&x, &n, g)?)])
        }))
    }

    /// A view with another shape.
    pub fn reshape(&self, shape: &[usize]) -> Result<Var> {
        let y = self.value.reshape(shape)?;
        let orig = self.shape().to_vec();
        Ok(Var::record(&[self], y, move |g| {
            Ok(vec![Some(g.reshape(&orig)?)])
        }))
    }

    /// Reorders dims (a copy).
    pub fn permute(&self, perm: &[usize]) -> Result<Var> {
        let y = ops::copy::permute(&self.value, perm)?;
        let mut inv = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        Ok(Var::record(&[self], y, move |g| {
            Ok(vec![Some(ops::copy::permute(g, &inv)?)])
        }))
    }

    /// Swaps two dims (a copy).
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Var> {
        let mut perm: Vec<usize> = (0..self.shape().len()).collect();
        if d0 >= perm.len() || d1 >= perm.len() {
            return crate::error::shape_err(
                "transpose",
                format!("dims {d0}, {d1} out of range for {:?}", self.shape()),
            );
        }
        perm.swap(d0, d1);
        self.permute(&perm)
    }

    /// `len` entries from `start` along `dim` (a copy).
    pub fn slice(&self, dim: usize, start: usize, len: usize) -> Result<Var> {
        let y = ops::copy::slice(&self.value, dim, start, len)?;
        let full = self.shape().to_vec();
        Ok(Var::record(&[self], y, move |g| {
            Ok(vec![Some(ops::copy::pad_into(g, &full, dim, start)?)])
        }))
    }

    /// CTC loss of logits [B, T, V] (see [`ops::ctc::ctc_loss`]); also returns the utterances
    /// that have no valid alignment.
    pub fn ctc_loss(
        &self,
        targets: &Targets,
        input_lengths: &[usize],
        opts: ops::ctc::CtcOptions,
    ) -> Result<(Var, Vec<usize>)> {
        let ctc = ops::ctc::ctc_loss(&self.value, targets, input_lengths, opts)?;
        let infeasible = ctc.infeasible.clone();
        let loss = ctc.loss.clone();
        Ok((
            Var::record(&[self], loss, move |g| {
                Ok(vec![Some(ops::ctc::ctc_backward(&ctc, g)?)])
            }),
            infeasible,
        ))
    }

    /// Joins vars along dim 0: without a copy when their values lie back to back in one
    /// buffer ([`Tensor::join`]; the gradient is handed back as views), else as
    /// [`Var::concat`].
    pub fn join(xs: &[&Var]) -> Result<Var> {
        let vals: Vec<&Tensor> = xs.iter().map(|v| &v.value).collect();
        let Some(y) = Tensor::join(&vals) else {
            return Var::concat(xs, 0);
        };
        let lens: Vec<usize> = vals.iter().map(|t| t.shape()[0]).collect();
        let held = xs.iter().all(|x| x.held_elsewhere());
        let joined = Var::record(xs, y, move |g| {
            let mut at = 0;
            lens.iter()
                .map(|&l| {
                    at += l;
                    Ok(Some(ops::copy::rows(g, at - l, l)?))
                })
                .collect()
        });
        // A view of parameters: what keeps them keeps it (an f16 matmul recasts it in
        // backward instead of keeping an f16 copy).
        if held {
            joined.mark_held();
        }
        joined.mark_join_of(xs);
        Ok(joined)
    }

    /// Joins vars along `dim`.
    pub fn concat(xs: &[&Var], dim: usize) -> Result<Var> {
        let vals: Vec<&Tensor> = xs.iter().map(|v| &v.value).collect();
        let y = ops::copy::concat(&vals, dim)?;
        let lens: Vec<usize> = xs.iter().map(|v| v.shape()[dim]).collect();
        Ok(Var::record(xs, y, move |g| {
            let mut at = 0;
            lens.iter()
                .map(|&l| {
                    let s = ops::copy::slice(g, dim, at, l);
                    at += l;
                    Ok(Some(s?))
                })
                .collect()
        }))
    }
}

/// A layer's gradients in the order its inputs were recorded: input, then the weight and the
/// bias where the layer took them.
fn in_input_order(d: LayerGrads, weight: bool, bias: bool) -> Vec<Option<Tensor>> {
    let mut v = vec![d.input];
    if weight {
        v.push(d.weight);
    }
    if bias {
        v.push(d.bias);
    }
    v
}

/// Whether a conv nobody differentiates runs as one GEMM over its unfolded input: in f16 by
/// default (`XLSR_UNFOLD=0`: never, to compare). In f32 only with `XLSR_UNFOLD=1`: on
/// lavapipe the unfolded k3 s2 conv takes half the implicit-GEMM kernel's time, but the
/// unfold and the transpose back add 72 dispatches to the XLSR-53 step (1,356 -> 1,428 with
/// checkpointing, past issue 14's 1,400) and 0.08 GB, so a GPU must show it pays first.
fn unfold_frozen_convs(half: bool) -> bool {
    static MODE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    match MODE
        .get_or_init(|| std::env::var("XLSR_UNFOLD").ok())
        .as_deref()
    {
        Some("0") => false,
        Some("1") => true,
        _ => half,
    }
}
