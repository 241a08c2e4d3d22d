//! AdamW as HF's Trainer runs it: `torch.optim.AdamW` (decoupled weight decay, bias
//! correction), weight decay only on the parameters `Trainer.get_decay_parameter_names` picks,
//! and `clip_grad_norm_` folded into the update kernel.
//!
//! Everything stays on the GPU: the global gradient norm is reduced there and each parameter's
//! kernel reads it to compute its own clip factor. The only read-back is the norm itself, once
//! per optimiser step in [`AdamW::clip_and_step`], to log it and to tell whether the step was
//! skipped; it rides on the submission that runs the updates, so it costs no extra stall.

use crate::autograd::Param;
use crate::engine::params::kernel_params;
use crate::engine::Tensor;
use crate::engine::{grid, Kernel};
use crate::error::{shape_err, Error, Result};
use crate::ops::{dummy, reduce::global_norm_scaled, row_chunks};
use std::rc::Rc;

const ADAMW: Kernel = Kernel::new("adamw", "adamw", 2, 3);

kernel_params! {
    /// `adamw.wgsl`'s uniforms.
    pub struct AdamwParams in ["adamw"] {
        /// Elements in this chunk.
        n: u32,
        /// 1: `norm` holds the global grad norm; do nothing if it is not finite.
        has_norm: u32,
        /// Above 0: scale gradients by min(1, max_norm / (norm + 1e-6)).
        max_norm: f32,
        /// 1 - lr * weight_decay.
        decay: f32,
        /// Lerp weight of m towards the gradient.
        one_minus_b1: f32,
        /// Decay rate of v.
        b2: f32,
        /// 1 - b2.
        one_minus_b2: f32,
        /// lr / (1 - beta1^t).
        step_size: f32,
        /// sqrt(1 - beta2^t).
        bc2_sqrt: f32,
        /// Added to the denominator.
        eps: f32,
        /// Undoes loss scaling (1 without it); `norm` is already unscaled.
        inv_scale: f32,
        /// Padding.
        _p1: u32,
    }
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
}

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
    /// A one-element tensor that is 0 when the step may be taken and NaN otherwise (e.g.
    /// `0 * loss`): it joins the gradient norm, so a non-finite loss skips the step exactly as
    /// a non-finite gradient does, without a read-back. Cleared by [`AdamW::zero_grad`].
    guard: std::cell::RefCell<Option<Tensor>>,
}

impl AdamW {
    /// An optimiser over `params`; frozen ones and ones without a gradient are skipped at each
    /// step, so the list can be the whole model.
    pub fn new(params: &[Rc<Param>], cfg: AdamWConfig) -> AdamW {
        AdamW {
            lr: 0.0,
            betas: cfg.betas,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
            step: 0,
            slots: params
                .iter()
                .map(|p| Slot {
                    param: p.clone(),
                    decay: decays(&p.name),
                    state: None,
                })
                .collect(),
            guard: Default::default(),
        }
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
        let guard = self.guard.borrow();
        let mut refs: Vec<&Tensor> = grads.iter().map(|(_, g)| g).collect();
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
        for (i, g) in self.grads() {
            let slot = &self.slots[i];
            let x = slot.param.value();
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
            let state = match &slot.state {
                Some(s) => s.clone(),
                None => State {
                    m: Tensor::zeros(gpu, x.shape())?,
                    v: Tensor::zeros(gpu, x.shape())?,
                    step: 0,
                },
            };
            let t = state.step + 1;
            // The scalars torch computes in Python floats (f64), rounded once to f32.
            let wd = if slot.decay { self.weight_decay } else { 0.0 };
            let lr64 = lr as f64;
            let bc1 = 1.0 - b1.powi(t as i32);
            let bc2 = 1.0 - b2.powi(t as i32);
            let d = dummy(gpu)?;
            let norm = grad_norm.unwrap_or(&d);
            for (s, len) in row_chunks(gpu, "adamw", x.numel(), 1)? {
                let params = AdamwParams {
                    n: len as u32,
                    has_norm: grad_norm.is_some() as u32,
                    max_norm: if max_norm > 0.0 { max_norm } else { 0.0 },
                    decay: (1.0 - lr64 * wd) as f32,
                    one_minus_b1: (1.0 - b1) as f32,
                    b2: b2 as f32,
                    one_minus_b2: (1.0 - b2) as f32,
                    step_size: (lr64 / bc1) as f32,
                    bc2_sqrt: bc2.sqrt() as f32,
                    eps: self.eps as f32,
                    inv_scale,
                    ..Default::default()
                };
                gpu.dispatch(
                    &ADAMW,
                    &params,
                    &[
                        g.bind_range(s, len),
                        norm.bind(),
                        x.bind_range(s, len),
                        state.m.bind_range(s, len),
                        state.v.bind_range(s, len),
                    ],
                    grid(len as u64, 256),
                )?;
            }
            out.push((i, State { step: t, ..state }));
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
    pub fn zero_grad(&self) {
        self.set_guard(None);
        for s in &self.slots {
            s.param.zero_grad();
        }
    }

    /// The optimiser state for a checkpoint: for each parameter updated at least once,
    /// `NAME.exp_avg`, `NAME.exp_avg_sq` (its shape) and `NAME.step` (shape `[]`), plus the
    /// optimiser's own `step`. Reads the moments back from the GPU.
    pub fn state_tensors(&self) -> Result<Vec<NamedTensor>> {
        let mut out = vec![("step".to_string(), vec![], vec![self.step as f32])];
        for slot in &self.slots {
            if let Some(s) = &slot.state {
                let name = &slot.param.name;
                out.push((
                    format!("{name}.exp_avg"),
                    s.m.shape().to_vec(),
                    s.m.to_vec()?,
                ));
                out.push((
                    format!("{name}.exp_avg_sq"),
                    s.v.shape().to_vec(),
                    s.v.to_vec()?,
                ));
                out.push((format!("{name}.step"), vec![], vec![s.step as f32]));
            }
        }
        Ok(out)
    }

    /// Restores what [`AdamW::state_tensors`] saved. Every entry must belong to a parameter of
    /// this optimiser with the saved shape; parameters with no saved state start fresh.
    pub fn load_state(&mut self, tensors: &[NamedTensor]) -> Result<()> {
        let find = |key: &str| tensors.iter().find(|(n, _, _)| n == key);
        let scalar = |key: &str| -> Result<Option<u64>> {
            match find(key) {
                None => Ok(None),
                Some((_, _, v)) if v.len() == 1 && v[0] >= 0.0 && v[0].fract() == 0.0 => {
                    Ok(Some(v[0] as u64))
                }
                Some((_, s, v)) => Err(Error::State(format!(
                    "{key}: expected one whole number, got shape {s:?} values {v:?}"
                ))),
            }
        };
        // Check every entry first, so a bad file leaves the optimiser as it was.
        let mut known = vec!["step".to_string()];
        let mut states = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let name = &slot.param.name;
            let shape = slot.param.value().shape().to_vec();
            let keys = [
                format!("{name}.exp_avg"),
                format!("{name}.exp_avg_sq"),
                format!("{name}.step"),
            ];
            let found: Vec<_> = keys.iter().map(|k| find(k)).collect();
            let state = match (found[0], found[1], scalar(&keys[2])?) {
                (None, None, None) => None,
                (Some(m), Some(v), Some(step)) => {
                    for (key, s, data) in [m, v] {
                        let n: usize = s.iter().product();
                        if *s != shape || data.len() != n {
                            return Err(Error::State(format!(
                                "{key}: saved shape {s:?} ({} values), parameter has {shape:?}",
                                data.len()
                            )));
                        }
                    }
                    Some((m.2.clone(), v.2.clone(), step))
                }
                _ => {
                    return Err(Error::State(format!(
                        "{name}: exp_avg, exp_avg_sq and step must be saved together"
                    )))
                }
            };
            states.push(state);
            known.extend(keys);
        }
        if let Some((n, _, _)) = tensors.iter().find(|(n, _, _)| !known.contains(n)) {
            return Err(Error::State(format!(
                "saved optimiser state has {n}, which is no parameter of this model"
            )));
        }
        let step = scalar("step")?.unwrap_or(0);
        for (slot, state) in self.slots.iter_mut().zip(states) {
            slot.state = match state {
                None => None,
                Some((m, v, step)) => {
                    let x = slot.param.value();
                    Some(State {
                        m: Tensor::from_slice(x.gpu(), &m, x.shape())?,
                        v: Tensor::from_slice(x.gpu(), &v, x.shape())?,
                        step,
                    })
                }
            };
        }
        self.step = step;
        Ok(())
    }
}

/// Dynamic loss scaling for fp16 training, as `torch.amp.GradScaler` does it: the loss is
/// multiplied by `scale` before backward so small gradients survive f16; a step whose
/// gradients overflowed is skipped and the scale halved; after `growth_interval` good steps
/// in a row the scale doubles.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GradScaler {
    /// The current loss scale.
    pub scale: f32,
    /// Factor applied after `growth_interval` finite steps.
    pub growth_factor: f32,
    /// Factor applied after a step with inf/NaN gradients.
    pub backoff_factor: f32,
    /// Finite steps in a row before the scale grows.
    pub growth_interval: u64,
    /// Finite steps since the last growth or backoff.
    pub growth_tracker: u64,
}

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler {
            scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            growth_tracker: 0,
        }
    }
}

impl GradScaler {
    /// Runs one optimiser step on the scaled gradients (skipped if they are not finite) and
    /// updates the scale.
    pub fn step(&mut self, opt: &mut AdamW, lr: f32, max_norm: f32) -> Result<StepOutcome> {
        let outcome = opt.clip_and_step_scaled(lr, max_norm, 1.0 / self.scale)?;
        self.update(outcome.skipped);
        Ok(outcome)
    }

    /// torch's `_amp_update_scale_`: back off on overflow, grow after a run of good steps.
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= self.backoff_factor;
            self.growth_tracker = 0;
            return;
        }
        self.growth_tracker += 1;
        if self.growth_tracker == self.growth_interval {
            let grown = self.scale * self.growth_factor;
            if grown.is_finite() {
                self.scale = grown;
            }
            self.growth_tracker = 0;
        }
    }
}
