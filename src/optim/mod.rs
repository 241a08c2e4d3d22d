//! AdamW as HF's Trainer runs it: `torch.optim.AdamW` (decoupled weight decay, bias
//! correction), weight decay only on the parameters `Trainer.get_decay_parameter_names` picks,
//! and `clip_grad_norm_` folded into the update kernel.
//!
//! Everything stays on the GPU: the global gradient norm is reduced there and the update
//! kernel reads it to compute the clip factor (and leaves everything as it was when it is not
//! finite). The host needs the norm only to log it and to count the step: [`AdamW::record_step`]
//! records the update without reading anything and [`AdamW::finish_step`] takes the norm
//! whenever it comes back (a step later in training, `train::TrainStep::run_deferred`);
//! [`AdamW::clip_and_step`] does both with one read.
//!
//! The trainable parameters live in flat buffers (`flat`): one update dispatch per bucket
//! (per binding-sized window of it) covers hundreds of parameters, each with its own scalars
//! from a segment table. A parameter that cannot be packed (frozen when the optimiser was
//! made) is updated by its own dispatches of the same kernel.

mod flat;
mod scaler;
mod state;

pub use scaler::GradScaler;

use crate::autograd::Param;
use crate::engine::params::kernel_params;
use crate::engine::{grid, BufRef, Kernel, Tensor};
use crate::error::{shape_err, Result};
use crate::ops::{dummy, reduce::global_norm_scaled, row_chunks};
use flat::{Flat, Placement};
use std::rc::Rc;

const ADAMW: Kernel = Kernel::new("adamw", "adamw", 3, 3);

kernel_params! {
    /// `adamw.wgsl`'s uniforms.
    pub struct AdamwParams in ["adamw"] {
        /// Elements in this window.
        n: u32,
        /// Flat index of the window's first element.
        base: u32,
        /// First segment of this window in the table.
        seg_lo: u32,
        /// One past its last segment.
        seg_hi: u32,
        /// 1: `norm` holds the global grad norm; do nothing if it is not finite.
        has_norm: u32,
        /// Above 0: scale gradients by min(1, max_norm / (norm + 1e-6)).
        max_norm: f32,
        /// Lerp weight of m towards the gradient.
        one_minus_b1: f32,
        /// Decay rate of v.
        b2: f32,
        /// 1 - b2.
        one_minus_b2: f32,
        /// Added to the denominator.
        eps: f32,
        /// Undoes loss scaling (1 without it); `norm` is already unscaled.
        inv_scale: f32,
        /// Padding.
        _p0: u32,
    }
}

/// One row of `adamw.wgsl`'s segment table: a parameter's range and its scalars this step.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Segment {
    start: u32,
    len: u32,
    /// 1 - lr * weight_decay.
    decay: f32,
    /// lr / (1 - beta1^t).
    step_size: f32,
    /// sqrt(1 - beta2^t).
    bc2_sqrt: f32,
    _pad: [u32; 3],
}

/// AdamW hyper-parameters (defaults: HF `TrainingArguments`' adam_beta1/2, adam_epsilon,
/// weight_decay).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Decay rates of the first and second moment estimates.
    pub betas: (f64, f64),
    /// Added to the denominator for numerical stability.
    pub eps: f64,
    /// Decoupled weight decay, applied to [`decays`] parameters only.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Whether HF's Trainer applies weight decay to a parameter, from its name: not to biases and
/// not to norms. These are `get_decay_parameter_names`' patterns (`bias`, `layernorm`,
/// `rmsnorm`, a `norm` component, a component ending in `_norm`) on the lower-cased name; for
/// wav2vec2 they also cover its one layer-type rule, since every LayerNorm is named `*layer_norm`.
pub fn decays(name: &str) -> bool {
    let name = name.to_lowercase();
    let norm_part = name
        .split('.')
        .any(|part| part == "norm" || part.ends_with("_norm"));
    !(name.contains("bias") || name.contains("layernorm") || name.contains("rmsnorm") || norm_part)
}

/// Per-parameter moments, created on the parameter's first update (as torch does lazily).
#[derive(Clone)]
struct State {
    m: Tensor,
    v: Tensor,
    /// Updates this parameter has had: it lags the optimiser's count for parameters that had
    /// no gradient on some steps (LayerDrop), and drives their bias correction, as in torch.
    step: u64,
}

struct Slot {
    param: Rc<Param>,
    decay: bool,
    state: Option<State>,
    /// Where the parameter lives in the flat buffers (`None`: updated on its own).
    at: Option<Placement>,
}

/// A range of a flat gradient buffer and the parameters whose gradients fill it.
pub type GradientRange = (Tensor, Vec<Rc<Param>>);

/// One saved tensor: name, shape, row-major values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// What [`AdamW::clip_and_step`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    /// The global L2 norm of the gradients before clipping (what HF logs as `grad_norm`).
    pub grad_norm: f32,
    /// True when the norm was not finite: no parameter or moment was changed.
    pub skipped: bool,
}

/// An update recorded on the GPU whose gradient norm the host has not read yet.
pub struct PendingStep {
    norm: Option<Tensor>,
    updated: Vec<(usize, State)>,
    lr: f32,
}

impl PendingStep {
    /// The global gradient norm on the device (`None` when no parameter had a gradient).
    pub fn grad_norm(&self) -> Option<&Tensor> {
        self.norm.as_ref()
    }
}

/// The AdamW optimiser over a fixed list of parameters.
pub struct AdamW {
    /// Learning rate of the last update.
    pub lr: f32,
    /// Decay rates of the first and second moments.
    pub betas: (f64, f64),
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay (on [`decays`] parameters).
    pub weight_decay: f64,
    /// Optimiser steps taken (skipped steps not counted).
    pub step: u64,
    slots: Vec<Slot>,
    /// The flat buffers of the packed parameters.
    flat: Option<Flat>,
    /// A one-element tensor that is 0 when the step may be taken and NaN otherwise (e.g.
    /// `0 * loss`): it joins the gradient norm, so a non-finite loss skips the step exactly as
    /// a non-finite gradient does, without a read-back. Cleared by [`AdamW::zero_grad`].
    guard: std::cell::RefCell<Option<Tensor>>,
}

impl AdamW {
    /// An optimiser over `params`; frozen ones and ones without a gradient are skipped at each
    /// step, so the list can be the whole model. The parameters trainable now move into the
    /// optimiser's flat buffers (their values become views there, see `flat`).
    pub fn new(params: &[Rc<Param>], cfg: AdamWConfig) -> Result<AdamW> {
        let (flat, placements) = match Flat::adopt(params)? {
            Some((flat, at)) => (Some(flat), at),
            None => (None, vec![None; params.len()]),
        };
        Ok(AdamW {
            lr: 0.0,
            betas: cfg.betas,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
            step: 0,
            slots: params
                .iter()
                .zip(placements)
                .map(|(p, at)| Slot {
                    param: p.clone(),
                    decay: decays(&p.name),
                    state: None,
                    at,
                })
                .collect(),
            flat,
            guard: Default::default(),
        })
    }

    /// The trainable weights as few tensors (the flat buffers, whose padding is zero, and the
    /// parameters updated on their own): for a cheap check that all are finite.
    pub fn weights(&self) -> Vec<Tensor> {
        self.flat_then_own(|b| &b.values, |p| Some(p.value()))
    }

    /// The gradients the next step reads, as few tensors (the flat buffers' whole gradient
    /// buffers, then the gradients of parameters updated on their own): what data-parallel
    /// ranks sum.
    pub fn gradients(&self) -> Vec<Tensor> {
        self.flat_then_own(|b| &b.grads, Param::grad)
    }

    /// The flat gradient buffers cut into ranges of whole parameters of about `elems`
    /// elements (a parameter larger than that is a range of its own), each with its
    /// parameters, in buffer order; then the gradients of the trainable parameters updated on
    /// their own: the pieces data-parallel ranks sum, a range as soon as it is final.
    pub fn gradient_ranges(&self, elems: usize) -> Result<(Vec<GradientRange>, Vec<Tensor>)> {
        let mut ranges = Vec::new();
        if let Some(flat) = &self.flat {
            for (bi, b) in flat.buckets.iter().enumerate() {
                let mut placed: Vec<(usize, &Rc<Param>)> = self
                    .slots
                    .iter()
                    .filter_map(|s| {
                        s.at.filter(|at| at.bucket == bi)
                            .map(|at| (at.start, &s.param))
                    })
                    .collect();
                placed.sort_by_key(|(start, _)| *start);
                let mut from = 0;
                let mut params: Vec<Rc<Param>> = Vec::new();
                for (k, (_, p)) in placed.iter().enumerate() {
                    params.push((*p).clone());
                    // A range ends where the next parameter starts (so alignment padding goes
                    // with the range before it), or at the bucket's end.
                    let end = placed.get(k + 1).map_or(b.grads.numel(), |n| n.0);
                    if end - from >= elems || k + 1 == placed.len() {
                        let view = b.grads.view(from, &[end - from])?;
                        ranges.push((view, std::mem::take(&mut params)));
                        from = end;
                    }
                }
            }
        }
        let own = self
            .slots
            .iter()
            .filter(|s| s.at.is_none() && !s.param.is_frozen())
            .filter_map(|s| s.param.grad())
            .collect();
        Ok((ranges, own))
    }

    /// One tensor per flat bucket (`bucket` picks which), then `own` of each trainable
    /// parameter updated on its own.
    fn flat_then_own(
        &self,
        bucket: impl Fn(&flat::Bucket) -> &Tensor,
        own: impl Fn(&Param) -> Option<Tensor>,
    ) -> Vec<Tensor> {
        let flat = self
            .flat
            .iter()
            .flat_map(|f| &f.buckets)
            .map(|b| bucket(b).clone());
        let own = self
            .slots
            .iter()
            .filter(|s| s.at.is_none() && !s.param.is_frozen())
            .filter_map(|s| own(&s.param));
        flat.chain(own).collect()
    }

    /// Sets the guard of the next step (see the field's doc).
    pub fn set_guard(&self, guard: Option<Tensor>) {
        *self.guard.borrow_mut() = guard;
    }

    /// The gradients the next step would use: trainable parameters that have one.
    fn grads(&self) -> Vec<(usize, Tensor)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.param.is_frozen())
            .filter_map(|(i, s)| s.param.grad().map(|g| (i, g)))
            .collect()
    }

    /// The global L2 norm of all gradients the next step would use, on the GPU (`None` when
    /// there are none).
    pub fn grad_norm(&self) -> Result<Option<Tensor>> {
        self.grad_norm_scaled(1.0)
    }

    /// `alpha` times [`AdamW::grad_norm`].
    fn grad_norm_scaled(&self, alpha: f32) -> Result<Option<Tensor>> {
        let grads = self.grads();
        let Some((_, g0)) = grads.first() else {
            return Ok(None);
        };
        // Packed gradients are summed bucket by bucket: the slots of parameters without a
        // gradient, and the padding, hold zeros.
        let mut buckets = vec![false; self.flat.as_ref().map_or(0, |f| f.buckets.len())];
        let mut refs: Vec<&Tensor> = Vec::new();
        for (i, g) in &grads {
            match self.slots[*i].at {
                Some(at) => buckets[at.bucket] = true,
                None => refs.push(g),
            }
        }
        if let Some(flat) = &self.flat {
            let used = flat.buckets.iter().zip(&buckets).filter(|(_, u)| **u);
            refs.extend(used.map(|(b, _)| &b.grads));
        }
        let guard = self.guard.borrow();
        refs.extend(guard.as_ref());
        Ok(Some(global_norm_scaled(g0.gpu(), &refs, alpha)?))
    }

    /// Records one update of every trainable parameter with a gradient, and returns the
    /// states they will have once it has run (not yet stored: the caller commits them).
    fn record(
        &self,
        lr: f32,
        grad_norm: Option<&Tensor>,
        max_norm: f32,
        inv_scale: f32,
    ) -> Result<Vec<(usize, State)>> {
        if let Some(n) = grad_norm {
            n.expect_f32("adamw")?;
            if n.numel() != 1 {
                return shape_err(
                    "adamw",
                    format!("grad norm of shape {:?}, expected one element", n.shape()),
                );
            }
        }
        let (b1, b2) = self.betas;
        let mut out = Vec::new();
        let mut segments: Vec<Segment> = Vec::new();
        // Per bucket, the table rows of its parameters (sorted by start below).
        let nb = self.flat.as_ref().map_or(0, |f| f.buckets.len());
        let mut in_bucket: Vec<Vec<Segment>> = vec![Vec::new(); nb];
        // Parameters updated on their own: (slot, gradient, state, table row).
        let mut own = Vec::new();
        for (i, g) in self.grads() {
            let slot = &self.slots[i];
            let x = match (&self.flat, slot.at) {
                (Some(flat), Some(at)) => flat.sync_value(&slot.param, at)?,
                _ => slot.param.value(),
            };
            x.expect_f32("adamw")?;
            g.expect_f32("adamw")?;
            if g.shape() != x.shape() {
                return shape_err(
                    "adamw",
                    format!(
                        "{}: gradient {:?} for parameter {:?}",
                        slot.param.name,
                        g.shape(),
                        x.shape()
                    ),
                );
            }
            let gpu = x.gpu();
            let state = match (&slot.state, &self.flat, slot.at) {
                (Some(s), _, _) => s.clone(),
                (None, Some(flat), Some(at)) => {
                    let b = &flat.buckets[at.bucket];
                    State {
                        m: b.m.view(at.start, x.shape())?,
                        v: b.v.view(at.start, x.shape())?,
                        step: 0,
                    }
                }
                (None, _, _) => State {
                    m: Tensor::zeros(gpu, x.shape())?,
                    v: Tensor::zeros(gpu, x.shape())?,
                    step: 0,
                },
            };
            let t = state.step + 1;
            // The scalars torch computes in Python floats (f64), rounded once to f32.
            let wd = if slot.decay { self.weight_decay } else { 0.0 };
            let lr64 = lr as f64;
            let row = Segment {
                start: slot.at.map_or(0, |at| at.start as u32),
                len: x.numel() as u32,
                decay: (1.0 - lr64 * wd) as f32,
                step_size: (lr64 / (1.0 - b1.powi(t as i32))) as f32,
                bc2_sqrt: (1.0 - b2.powi(t as i32)).sqrt() as f32,
                _pad: [0; 3],
            };
            match slot.at {
                Some(at) => in_bucket[at.bucket].push(row),
                None => own.push((x, g, state.clone(), row)),
            }
            out.push((i, State { step: t, ..state }));
        }
        // The table: each bucket's rows sorted by start, then one row per own parameter.
        let mut bucket_rows = Vec::new();
        for mut rows in in_bucket {
            rows.sort_by_key(|r| r.start);
            bucket_rows.push((segments.len(), segments.len() + rows.len()));
            segments.extend(rows);
        }
        segments.extend(own.iter().map(|o| o.3));
        let Some(first) = out.first().map(|(i, _)| self.slots[*i].param.value()) else {
            return Ok(out);
        };
        let gpu = first.gpu();
        let words: &[u32] = bytemuck::cast_slice(&segments);
        let table = Tensor::from_u32(gpu, words, &[words.len()])?;
        let d = dummy(gpu)?;
        let norm = grad_norm.unwrap_or(&d);
        let update =
            |grad: BufRef, x: BufRef, m: BufRef, v: BufRef, base, n, rows: (usize, usize)| {
                let params = AdamwParams {
                    n: n as u32,
                    base: base as u32,
                    seg_lo: rows.0 as u32,
                    seg_hi: rows.1 as u32,
                    has_norm: grad_norm.is_some() as u32,
                    max_norm: if max_norm > 0.0 { max_norm } else { 0.0 },
                    one_minus_b1: (1.0 - b1) as f32,
                    b2: b2 as f32,
                    one_minus_b2: (1.0 - b2) as f32,
                    eps: self.eps as f32,
                    inv_scale,
                    ..Default::default()
                };
                gpu.dispatch(
                    &ADAMW,
                    &params,
                    &[grad, norm.bind(), table.bind(), x, m, v],
                    grid(n as u64, 256),
                )
            };
        if let Some(flat) = &self.flat {
            for (b, rows) in flat.buckets.iter().zip(bucket_rows) {
                if rows.0 == rows.1 {
                    continue;
                }
                for (s, len) in row_chunks(gpu, "adamw", b.values.numel(), 1)? {
                    let r = |t| Tensor::bind_range(t, s, len);
                    update(r(&b.grads), r(&b.values), r(&b.m), r(&b.v), s, len, rows)?;
                }
            }
        }
        for (k, (x, g, state, _)) in own.iter().enumerate() {
            let row = segments.len() - own.len() + k;
            for (s, len) in row_chunks(gpu, "adamw", x.numel(), 1)? {
                let r = |t| Tensor::bind_range(t, s, len);
                update(r(g), r(x), r(&state.m), r(&state.v), s, len, (row, row + 1))?;
            }
        }
        Ok(out)
    }

    fn commit(&mut self, lr: f32, updated: Vec<(usize, State)>) {
        for (i, s) in updated {
            self.slots[i].state = Some(s);
        }
        self.lr = lr;
        self.step += 1;
    }

    /// One AdamW update at learning rate `lr` of every trainable parameter that has a gradient,
    /// in place. With `grad_norm` (the global norm, e.g. from [`AdamW::grad_norm`]) gradients are
    /// first scaled by `min(1, max_norm / (norm + 1e-6))` as `clip_grad_norm_` does, on the GPU.
    ///
    /// Assumes finite gradients: if the norm is not finite the kernels leave everything as it
    /// was but the step is still counted. Use [`AdamW::clip_and_step`] to detect and skip such
    /// steps.
    pub fn step(&mut self, lr: f32, grad_norm: Option<&Tensor>, max_norm: f32) -> Result<()> {
        let updated = self.record(lr, grad_norm, max_norm, 1.0)?;
        self.commit(lr, updated);
        Ok(())
    }

    /// HF Trainer's optimiser step: the global gradient norm, clipping to `max_norm` (none when
    /// `max_norm <= 0`, as HF's `max_grad_norm = 0`) and the AdamW update, all recorded on the
    /// GPU; then one read-back of the norm. A non-finite norm (some gradient is inf or NaN)
    /// leaves parameters and moments untouched and the step uncounted: `skipped` is set for the
    /// caller to count.
    pub fn clip_and_step(&mut self, lr: f32, max_norm: f32) -> Result<StepOutcome> {
        self.clip_and_step_scaled(lr, max_norm, 1.0)
    }

    /// [`AdamW::clip_and_step`] on gradients of a loss multiplied by `1 / inv_scale` (loss
    /// scaling): the norm, the clipping and the update all see the gradients times
    /// `inv_scale`, as after GradScaler's `unscale_`, without a separate pass over them.
    pub fn clip_and_step_scaled(
        &mut self,
        lr: f32,
        max_norm: f32,
        inv_scale: f32,
    ) -> Result<StepOutcome> {
        let pending = self.record_step(lr, max_norm, inv_scale)?;
        let norm = match pending.grad_norm() {
            Some(n) => n.item()?,
            None => 0.0,
        };
        Ok(self.finish_step(pending, norm))
    }

    /// The GPU half of [`AdamW::clip_and_step_scaled`]: the global norm and the update, recorded
    /// (the kernels check the norm themselves, so nothing waits for it). The caller reads
    /// [`PendingStep::grad_norm`], perhaps with other values in one wait, and passes it to
    /// [`AdamW::finish_step`].
    pub fn record_step(&mut self, lr: f32, max_norm: f32, inv_scale: f32) -> Result<PendingStep> {
        let Some(norm) = self.grad_norm_scaled(inv_scale)? else {
            return Ok(PendingStep {
                norm: None,
                updated: Vec::new(),
                lr,
            });
        };
        let updated = self.record(lr, Some(&norm), max_norm, inv_scale)?;
        Ok(PendingStep {
            norm: Some(norm),
            updated,
            lr,
        })
    }

    /// The host half: counts the step and keeps its moments if `grad_norm` (the value of
    /// [`PendingStep::grad_norm`]) is finite; otherwise the kernels changed nothing and the
    /// step is skipped.
    pub fn finish_step(&mut self, pending: PendingStep, grad_norm: f32) -> StepOutcome {
        if pending.norm.is_none() {
            return StepOutcome {
                grad_norm: 0.0,
                skipped: false,
            };
        }
        if !grad_norm.is_finite() {
            return StepOutcome {
                grad_norm,
                skipped: true,
            };
        }
        self.commit(pending.lr, pending.updated);
        StepOutcome {
            grad_norm,
            skipped: false,
        }
    }

    /// Clears the gradients of all parameters (HF calls `model.zero_grad()` after each step).
    pub fn zero_grad(&self) -> Result<()> {
        self.set_guard(None);
        if let Some(flat) = &self.flat {
            let touched = self
                .slots
                .iter()
                .any(|s| s.at.is_some() && s.param.grad().is_some());
            if touched {
                flat.zero_grads(flat.buckets[0].grads.gpu())?;
            }
        }
        for s in &self.slots {
            match s.at {
                Some(_) => s.param.forget_grad(),
                None => s.param.zero_grad()?,
            }
        }
        Ok(())
    }
}
