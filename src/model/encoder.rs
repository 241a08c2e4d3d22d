//! One transformer encoder layer: its weights, and its forward pass as a self-contained step
//! (everything owned) that gradient checkpointing can run again inside the backward pass;
//! the dropout sites of a pass and their seeds.

use super::{Adapter, Config, Linear, Norm};
use crate::autograd::{autocast, Param, Tape, Var};
use crate::engine::Tensor;
use crate::error::Result;
use crate::ops::activation::{Act, DropoutAt};
use crate::ops::attention::{fused_fits, Attended, Attention, MAX_HEAD_DIM};
use crate::rng::Rng;
use std::cell::RefCell;
use std::rc::Rc;

/// One transformer encoder layer.
#[derive(Clone)]
pub struct EncoderLayer {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub out: Linear,
    /// `layer_norm`: after attention (post-LN) or before it (stable).
    pub attn_norm: Norm,
    pub ff_in: Linear,
    pub ff_out: Linear,
    /// `final_layer_norm`: after the feed-forward (post-LN) or before it (stable).
    pub ff_norm: Norm,
    /// MMS: the attention adapter added after the layer (`adapter_attn_dim`, stable layers).
    pub adapter: Option<Adapter>,
}

impl EncoderLayer {
    /// q, k and v's weights [3H, H] and biases [3H] as one var each, when the weights lie
    /// back to back in one buffer (the optimiser packs them so): the three projections are
    /// then one GEMM. The biases are joined without a copy when they lie so too.
    fn joined_qkv(&self, tape: &Rc<Tape>) -> Result<Option<(Var, Var)>> {
        let (q, k, v) = (&self.q, &self.k, &self.v);
        let weights = [q.weight.value(), k.weight.value(), v.weight.value()];
        if Tensor::join(&weights.iter().collect::<Vec<_>>()).is_none() {
            return Ok(None);
        }
        let join = |ps: [&Rc<Param>; 3]| Var::join(&ps.map(|p| tape.param(p)).each_ref());
        let w = join([&q.weight, &k.weight, &v.weight])?;
        let b = join([&q.bias, &k.bias, &v.bias])?;
        Ok(Some((w, b)))
    }
}

/// Dropout sites of one pass: each call takes the next seed, whether or not it drops, so the
/// masks depend only on the pass's seed and the site's position.
/// Every site's tensor has the batch first; `row` is the batch's first row in a larger one.
pub(super) struct Dropout {
    seeds: Rng,
    train: bool,
    row: usize,
}

impl Dropout {
    pub(super) fn new(seed: u64, train: bool, row: usize) -> Dropout {
        Dropout {
            seeds: Rng::new(seed),
            train,
            row,
        }
    }

    pub(super) fn apply(&mut self, x: &Var, p: f32) -> Result<Var> {
        let (p, s) = self.next(p);
        if p > 0.0 {
            x.dropout_at(p, s, self.first(x))
        } else {
            Ok(x.clone())
        }
    }

    /// `self.apply(&x.act(act)?, p)` in one pass.
    fn act(&mut self, x: &Var, act: Act, p: f32) -> Result<Var> {
        let (p, seed) = self.next(p);
        let first = self.first(x);
        x.act_dropout(act, DropoutAt { p, seed, first })
    }

    /// `res + self.apply(x, p)`, in one pass when it drops anything.
    fn residual(&mut self, res: &Var, x: &Var, p: f32) -> Result<Var> {
        let (p, s) = self.next(p);
        if p > 0.0 {
            x.dropout_add_at(res, p, s, self.first(x))
        } else {
            res.add(x)
        }
    }

    /// The index of `x`'s first element in the whole batch's tensor (a rank's share draws
    /// the whole batch's mask).
    fn first(&self, x: &Var) -> usize {
        self.row * (x.value.numel() / x.shape()[0].max(1))
    }

    /// The next site's probability (0 outside training) and seed, for a kernel that applies
    /// dropout itself (fused attention).
    fn next(&mut self, p: f32) -> (f32, u64) {
        let s = self.seeds.next_u64();
        (if self.train { p } else { 0.0 }, s)
    }
}

/// Whether ops on `x` are being recorded for a backward pass.
pub(super) fn tape_records(tape: &Rc<Tape>, x: &Var) -> bool {
    tape.is_recording() && x.requires_grad()
}

/// Whether a checkpointed layer keeps its attention's forward result for the recomputation
/// (about 8 MB a layer at XLSR-53 8 x 5 s; `XLSR_KEEP_ATTENTION=0` recomputes it, to compare).
pub(super) fn keep_attention() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("XLSR_KEEP_ATTENTION").map_or(true, |v| v != "0"))
}

/// One encoder layer's forward with everything it needs owned, so gradient checkpointing can
/// run it again inside the backward pass.
pub(super) struct LayerStep {
    pub(super) config: Rc<Config>,
    pub(super) layer: EncoderLayer,
    pub(super) mask: Option<Tensor>,
    pub(super) train: bool,
    pub(super) seed: u64,
    pub(super) batch_offset: usize,
    pub(super) half: bool,
    pub(super) fused: bool,
    /// Checkpointed: the first run (not recorded) keeps the fused attention's output and
    /// logsumexp here, and the recomputation inside the backward pass takes them instead of
    /// running the attention kernel again (the same inputs and seed give the same result).
    pub(super) keep_attention: bool,
    pub(super) kept: RefCell<Option<Attended>>,
}

impl LayerStep {
    pub(super) fn forward(&self, tape: &Rc<Tape>, x: &Var) -> Result<Var> {
        autocast(self.half, || self.forward_in_precision(tape, x))
    }

    fn forward_in_precision(&self, tape: &Rc<Tape>, x: &Var) -> Result<Var> {
        let (c, l) = (&*self.config, &self.layer);
        let mut drop = Dropout::new(self.seed, self.train, self.batch_offset);
        if c.do_stable_layer_norm {
            let a = self.attention(tape, &l.attn_norm.layer(tape, x)?, &mut drop)?;
            let x = drop.residual(x, &a, c.hidden_dropout)?;
            let f = self.feed_forward(tape, &l.ff_norm.layer(tape, &x)?, &mut drop)?;
            let x = drop.residual(&x, &f, c.hidden_dropout)?;
            match &l.adapter {
                Some(a) => x.add(&a.forward(tape, &x)?),
                None => Ok(x),
            }
        } else {
            let a = self.attention(tape, x, &mut drop)?;
            let x = l
                .attn_norm
                .layer(tape, &drop.residual(x, &a, c.hidden_dropout)?)?;
            let f = self.feed_forward(tape, &x, &mut drop)?;
            l.ff_norm
                .layer(tape, &drop.residual(&x, &f, c.hidden_dropout)?)
        }
    }

    fn attention(&self, tape: &Rc<Tape>, x: &Var, drop: &mut Dropout) -> Result<Var> {
        let (c, l) = (&*self.config, &self.layer);
        let (b, t, h) = (x.shape()[0], x.shape()[1], c.hidden_size);
        let nh = c.num_attention_heads;
        let hd = h / nh;
        let split = |y: Var| y.reshape(&[b, t, nh, hd]);
        // One f16 copy of the input serves the three projections (and is what they keep).
        let x = if self.half { x.to_f16()? } else { x.clone() };
        let scale = (hd as f32).powf(-0.5);
        let fused = self.fused && hd <= MAX_HEAD_DIM && fused_fits(x.value.gpu());
        let joined = if fused { l.joined_qkv(tape)? } else { None };
        if let Some((w, bias)) = joined {
            // One GEMM makes [B, T, 3, H, D], which the fused kernels read as it is and whose
            // gradient they write the same way, for one GEMM back.
            let qkv = x.matmul(&w, false, true, Some(&bias))?;
            let a = self.fused_attention(drop, nh, scale);
            let (o, fwd) = qkv.reshape(&[b, t, 3, nh, hd])?.attention_packed_from(
                self.mask.as_ref(),
                &a,
                self.kept.take(),
            )?;
            self.keep(tape, fwd);
            return l.out.forward(tape, &o.reshape(&[b, t, h])?);
        }
        let q = split(l.q.forward(tape, &x)?)?;
        let k = split(l.k.forward(tape, &x)?)?;
        let v = split(l.v.forward(tape, &x)?)?;
        let o = if fused {
            // Reads and writes the projections' [B, T, H, D] layout (no permutes) and never
            // materialises the [B, H, T, T] scores; the same dropout mask as below.
            let a = self.fused_attention(drop, nh, scale);
            let (o, fwd) = q.attention_from(&k, &v, self.mask.as_ref(), &a, self.kept.take())?;
            self.keep(tape, fwd);
            o
        } else {
            let heads = |y: Var| y.permute(&[0, 2, 1, 3]);
            let (q, k, v) = (heads(q)?, heads(k)?, heads(v)?);
            let scores = q.matmul(&k, false, true, None)?.scale(scale, 0.0)?;
            let p = scores.softmax(self.mask.as_ref())?;
            let p = drop.apply(&p, c.attention_dropout)?;
            p.matmul(&v, false, false, None)?.permute(&[0, 2, 1, 3])?
        };
        l.out.forward(tape, &o.reshape(&[b, t, h])?)
    }

    /// Keeps the attention's forward result for the recomputation, in a checkpointed layer's
    /// first (unrecorded) run.
    fn keep(&self, tape: &Rc<Tape>, fwd: Attended) {
        if self.keep_attention && !tape.is_recording() {
            self.kept.replace(Some(fwd));
        }
    }

    /// The fused kernels' settings, drawing the attention dropout's seed.
    fn fused_attention(&self, drop: &mut Dropout, heads: usize, scale: f32) -> Attention {
        let (p, seed) = drop.next(self.config.attention_dropout);
        Attention {
            heads,
            scale,
            dropout: p,
            seed,
            tokens_first: true,
            drop_row: drop.row,
        }
    }

    fn feed_forward(&self, tape: &Rc<Tape>, x: &Var, drop: &mut Dropout) -> Result<Var> {
        let (c, l) = (&*self.config, &self.layer);
        let y = l.ff_in.forward(tape, x)?;
        let y = drop.act(&y, c.hidden_act(), c.activation_dropout)?;
        // Its output dropout is the caller's, fused into the residual add.
        l.ff_out.forward(tape, &y)
    }
}
