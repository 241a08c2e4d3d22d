//! One optimiser step, as HF `Trainer.training_step` plus its optimiser step: forward and
//! backward over each micro-batch (SpecAugment, dropout and LayerDrop drawn from the
//! micro-batch's seed), loss scaling under fp16, then clipping and AdamW. `xlsr train`,
//! `xlsr bench`, the demo and the tests all step through this one type.

use super::exchange::Exchange;
use crate::autograd::with_ready_listener;
use crate::data::Batch;
use crate::error::{Error, Result};
use crate::model::spec_augment::compute_mask_indices;
use crate::model::{Forward, Wav2Vec2ForCtc};
use crate::ops::{elementwise, reduce};
use crate::optim::{AdamW, GradScaler};
use crate::rng::Rng;
use crate::{Tape, Tensor, Var};
use std::rc::Rc;

/// How a step runs, apart from the data and the learning rate.
#[derive(Clone, Debug)]
pub struct StepOptions {
    /// Micro-batches whose gradients make one step (each loss is divided by this).
    pub grad_accum: usize,
    /// Clip the global gradient norm to this (none when <= 0, as HF's `max_grad_norm = 0`).
    pub max_grad_norm: f32,
    /// Gradient checkpointing (recompute each encoder layer in backward).
    pub checkpoint: bool,
    /// Mixed precision: f16 matmul inputs, and loss scaling by a [`GradScaler`].
    pub fp16: bool,
    /// Attention as matmul, softmax and dropout kernels instead of the fused ones (see
    /// [`Forward::unfused_attention`]): the step benchmark compares the two.
    pub unfused_attention: bool,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions {
            grad_accum: 1,
            max_grad_norm: 1.0,
            checkpoint: false,
            fp16: false,
            unfused_attention: false,
        }
    }
}

/// One micro-batch and the seed of its random draws.
pub struct MicroBatch<'a> {
    /// The padded clips and their CTC targets.
    pub batch: &'a Batch,
    /// Seed of the SpecAugment masks, dropout and LayerDrop.
    pub seed: u64,
    /// This rank's part of a batch shared among data-parallel ranks (`None`: all of it).
    pub share: Option<Share>,
}

/// A data-parallel rank's part of a batch: rows `first..first + len` of the whole batch
/// (padded to its width), whose random draws are those rows' draws of the whole batch.
#[derive(Clone, Debug)]
pub struct Share {
    /// Row of the whole batch where this part starts.
    pub first: usize,
    /// Samples of every clip of the whole batch.
    pub lengths: Vec<usize>,
    /// The weight of this part's mean loss in the whole batch's: its clips over the batch's
    /// (0 for a rank with no clips, which steps on a copy of one so that its gradients exist,
    /// all zero).
    pub weight: f32,
}

/// What a step's update found, known once its values have come back to the host.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// True when the loss or the gradient norm was not finite: nothing was updated.
    pub skipped: bool,
    /// False when an update left some trainable weight non-finite (it cannot be undone; see
    /// [`first_non_finite`] for which).
    pub weights_finite: bool,
}

/// What a step did.
#[derive(Debug)]
pub struct StepOutcome {
    /// The step's loss on the device (summed over the micro-batches, each divided by
    /// `grad_accum`; NaN when a loss or logit was not finite). Read it only when logging.
    pub loss: Tensor,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// True when the loss or the gradient norm was not finite: nothing was updated.
    pub skipped: bool,
    /// False when an update left some trainable weight non-finite (it cannot be undone; see
    /// [`first_non_finite`] for which).
    pub weights_finite: bool,
    /// Seconds of audio in the step's micro-batches.
    pub audio_seconds: f64,
}

/// A step recorded by [`TrainStep::run_deferred`], whose report comes later.
#[derive(Debug)]
pub struct Deferred {
    /// The step's loss on the device (see [`StepOutcome::loss`]).
    pub loss: Tensor,
    /// Seconds of audio in the step's micro-batches.
    pub audio_seconds: f64,
    /// The report of the step before, collected while this one was recorded (`None` when
    /// [`TrainStep::finish`] had collected it already).
    pub previous: Option<StepReport>,
}

/// An update on the GPU whose gradient norm and weights check the host has not read yet.
struct Pending {
    step: crate::optim::PendingStep,
    /// The norm (if any parameter had a gradient), then the weights check (if any weight is
    /// trainable).
    read: crate::engine::LateRead,
    has_norm: bool,
    has_check: bool,
}

/// A forward pass waiting for its backward: the tape and the (unscaled) loss.
pub struct Forwarded {
    tape: Rc<Tape>,
    /// The micro-batch's loss, divided by `grad_accum`.
    pub loss: Var,
    /// 0, or NaN when a logit is not finite (CTC with zero_infinity would hide it).
    finite_check: Tensor,
}

/// The model, its optimiser and loss scaler, stepping together.
pub struct TrainStep<'m> {
    /// The model being trained.
    pub model: &'m Wav2Vec2ForCtc,
    /// Its optimiser.
    pub opt: AdamW,
    /// The fp16 loss scaler (`None` in f32).
    pub scaler: Option<GradScaler>,
    /// How steps run.
    pub options: StepOptions,
    /// The data-parallel ranks whose gradients and losses are summed (`None`: this process
    /// alone).
    pub dist: Option<&'m crate::dist::Dist>,
    /// The last update, until its values are read.
    pending: Option<Pending>,
    /// How the last step's gradient exchange among ranks went.
    pub exchanged: Option<super::exchange::ExchangeReport>,
}

impl<'m> TrainStep<'m> {
    /// A step over `model` with `opt`; under fp16 a [`GradScaler`] is made unless `scaler`
    /// brings one (a resumed run's).
    pub fn new(
        model: &'m Wav2Vec2ForCtc,
        opt: AdamW,
        scaler: Option<GradScaler>,
        options: StepOptions,
    ) -> Result<TrainStep<'m>> {
        if options.fp16 && !model.gpu.has_f16() {
            return Err(Error::Usage(format!(
                "--fp16: {} has no f16 shader support (SHADER_F16)",
                model.gpu.info().name
            )));
        }
        let scaler = options.fp16.then(|| scaler.unwrap_or_default());
        Ok(TrainStep {
            model,
            opt,
            scaler,
            options,
            dist: None,
            pending: None,
            exchanged: None,
        })
    }

    /// Forward and backward over the micro-batches, then clipping and the AdamW update at
    /// learning rate `lr`, and the host waits for what the update found. Gradients are zeroed
    /// afterwards.
    pub fn run(&mut self, micro: &[MicroBatch], lr: f32) -> Result<StepOutcome> {
        let d = self.run_deferred(micro, lr)?;
        let r = self.finish()?.expect("the step just recorded is pending");
        Ok(StepOutcome {
            loss: d.loss,
            grad_norm: r.grad_norm,
            skipped: r.skipped,
            weights_finite: r.weights_finite,
            audio_seconds: d.audio_seconds,
        })
    }

    /// [`TrainStep::run`] without waiting: the update's gradient norm and weights check are
    /// read while the next step is recorded, when the GPU has long finished them (or by
    /// [`TrainStep::finish`]). The step before is settled before this one needs it: under
    /// fp16 before the first backward (the loss scale), else before the update (the moments'
    /// step counts).
    pub fn run_deferred(&mut self, micro: &[MicroBatch], lr: f32) -> Result<Deferred> {
        let mut loss: Option<Tensor> = None;
        let mut audio_seconds = 0.0;
        let mut previous = None;
        // Several ranks: the last micro-batch's backward sends gradients as they are final.
        let ranks = self.dist.filter(|d| d.size() > 1);
        let exchange = ranks.map(|_| Exchange::new(&self.opt)).transpose()?;
        for (i, mb) in micro.iter().enumerate() {
            let f = self
                .forward(mb)
                .map_err(|e| explain_device_error(e, mb.batch))?;
            if self.scaler.is_some() && previous.is_none() {
                previous = self.finish()?;
            }
            let l = match exchange.as_ref().filter(|_| i + 1 == micro.len()) {
                Some(x) => with_ready_listener(Exchange::listener(x), || self.backward(f)),
                None => self.backward(f),
            }
            .map_err(|e| explain_device_error(e, mb.batch))?;
            loss = Some(match loss.take() {
                Some(s) => elementwise::add(&s, &l)?,
                None => l,
            });
            // A rank's share knows the whole batch: every rank counts all of its audio.
            let lengths = mb
                .share
                .as_ref()
                .map_or(&mb.batch.audio_lengths, |s| &s.lengths);
            audio_seconds +=
                lengths.iter().sum::<usize>() as f64 / crate::data::audio::SAMPLE_RATE as f64;
        }
        let loss = match loss {
            Some(l) => l,
            None => Tensor::scalar(&self.model.gpu, 0.0)?,
        };
        if let (Some(d), Some(x)) = (ranks, exchange) {
            // Every rank steps on the sums: the same gradients, loss, norm and skip decision.
            self.exchanged = Some(x.borrow_mut().finish(d, std::slice::from_ref(&loss))?);
        }
        if previous.is_none() {
            previous = self.finish()?;
        }
        self.record_update(&loss, lr)?;
        Ok(Deferred {
            loss,
            audio_seconds,
            previous,
        })
    }

    /// The forward pass of one micro-batch, recorded for backward.
    pub fn forward(&self, mb: &MicroBatch) -> Result<Forwarded> {
        let (model, b) = (self.model, mb.batch);
        let gpu = &model.gpu;
        let (mask_time, mask_features) = self.spec_augment(mb);
        let audio = Tensor::from_slice(gpu, &b.audio, &[b.len(), b.max_samples])?;
        let tape = Tape::new();
        let opts = Forward {
            train: true,
            seed: mb.seed,
            mask_time,
            mask_features,
            checkpoint: self.options.checkpoint,
            fp16: self.options.fp16,
            unfused_attention: self.options.unfused_attention,
            batch_offset: mb.share.as_ref().map_or(0, |s| s.first),
            ..Forward::default()
        };
        let out = model.forward(&tape, &audio, Some(&b.audio_lengths), &opts)?;
        let (loss, _) = model.ctc_loss(&out.logits, &out.frames, &b.targets)?;
        let weight = mb.share.as_ref().map_or(1.0, |s| s.weight);
        let loss = loss.scale(weight / self.options.grad_accum.max(1) as f32, 0.0)?;
        // CTC with zero_infinity turns non-finite logits into a loss of 0: 0 * |logits| (0, or
        // NaN when a logit is not finite) added to the loss makes it say NaN.
        let finite_check = reduce::global_norm_scaled(gpu, &[&out.logits.value], 0.0)?;
        Ok(Forwarded {
            tape,
            loss,
            finite_check,
        })
    }

    /// Backward from a forward pass (on the loss times the loss scale under fp16; the update
    /// unscales). Returns the micro-batch's loss, NaN when it or a logit was not finite.
    pub fn backward(&self, f: Forwarded) -> Result<Tensor> {
        let scale = self.scaler.as_ref().map_or(1.0, |s| s.scale);
        f.tape.backward(&f.loss.scale(scale, 0.0)?, &[])?;
        Ok(elementwise::add(&f.loss.value, &f.finite_check)?)
    }

    /// Clipping and the AdamW update at learning rate `lr`, and the host waits for what it
    /// found; a non-finite `loss` skips the step as a non-finite gradient norm does.
    pub fn update(&mut self, loss: &Tensor, lr: f32) -> Result<StepReport> {
        self.finish()?;
        self.record_update(loss, lr)?;
        Ok(self.finish()?.expect("the update just recorded is pending"))
    }

    /// Records clipping and the AdamW update at learning rate `lr` (the kernels check the norm
    /// themselves: nothing waits), and asks for the gradient norm and a check of the updated
    /// weights, which [`TrainStep::finish`] collects.
    fn record_update(&mut self, loss: &Tensor, lr: f32) -> Result<()> {
        debug_assert!(self.pending.is_none(), "the step before is settled first");
        // 0 * loss joins the gradient norm the update kernels check.
        self.opt
            .set_guard(Some(elementwise::scale(loss, 0.0, 0.0)?));
        let inv_scale = self.scaler.as_ref().map_or(1.0, |s| 1.0 / s.scale);
        let step = self
            .opt
            .record_step(lr, self.options.max_grad_norm, inv_scale)?;
        let check = weights_check(&self.opt)?;
        let reads: Vec<&Tensor> = step.grad_norm().into_iter().chain(&check).collect();
        let read = self.model.gpu.read_later(&reads)?;
        self.pending = Some(Pending {
            has_norm: step.grad_norm().is_some(),
            has_check: check.is_some(),
            step,
            read,
        });
        self.opt.zero_grad()
    }

    /// Collects what the last recorded update found (waiting only if the GPU is not done with
    /// it), counts the step or its skip, and moves the loss scale. `None` when no update is
    /// pending.
    pub fn finish(&mut self) -> Result<Option<StepReport>> {
        let Some(p) = self.pending.take() else {
            return Ok(None);
        };
        let mut values = p.read.get()?.into_iter();
        let norm = match p.has_norm {
            true => values.next().unwrap_or(f32::NAN),
            false => 0.0,
        };
        let weights_finite = !p.has_check || values.next().is_some_and(f32::is_finite);
        let outcome = self.opt.finish_step(p.step, norm);
        if let Some(scaler) = self.scaler.as_mut() {
            scaler.update(outcome.skipped);
        }
        Ok(Some(StepReport {
            grad_norm: outcome.grad_norm,
            skipped: outcome.skipped,
            weights_finite,
        }))
    }

    /// SpecAugment's time and feature masks for a micro-batch, drawn from its seed as the
    /// model's config says (HF's `_compute_mask_indices`).
    fn spec_augment(&self, mb: &MicroBatch) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
        let c = &self.model.config;
        let mut rng = Rng::new(mb.seed);
        // A rank's share draws the whole batch's masks and keeps its rows.
        let (lengths, first) = match &mb.share {
            Some(s) => (s.lengths.as_slice(), s.first),
            None => (mb.batch.audio_lengths.as_slice(), 0),
        };
        let (b, rows) = (lengths.len(), first..first + mb.batch.len());
        let frames = self.model.frames(lengths);
        let width = c.frames(mb.batch.max_samples);
        let mask_time = (c.apply_spec_augment && c.mask_time_prob > 0.0)
            .then(|| {
                compute_mask_indices(
                    &mut rng,
                    width,
                    &frames,
                    c.mask_time_prob,
                    c.mask_time_length,
                    c.mask_time_min_masks,
                )
            })
            .flatten()
            .map(|m| m[rows.start * width..rows.end * width].to_vec());
        let mask_features = (c.apply_spec_augment && c.mask_feature_prob > 0.0)
            .then(|| {
                compute_mask_indices(
                    &mut rng,
                    c.hidden_size,
                    &vec![c.hidden_size; b],
                    c.mask_feature_prob,
                    c.mask_feature_length,
                    c.mask_feature_min_masks,
                )
            })
            .flatten()
            .map(|m| m[rows.start * c.hidden_size..rows.end * c.hidden_size].to_vec());
        (mask_time, mask_features)
    }
}

/// A device error in a forward pass, with the batch that caused it and what to lower.
fn explain_device_error(e: Error, b: &Batch) -> Error {
    match e {
        Error::Engine(crate::engine::Error::Gpu(msg)) => crate::engine::Error::Gpu(format!(
            "{msg}\n(batch of {} clips, longest {:.1} s: lower --batch-size, set \
             --max-batch-seconds, or prepare with a smaller --max-seconds)",
            b.len(),
            b.max_samples as f64 / crate::data::audio::SAMPLE_RATE as f64
        ))
        .into(),
        e => e,
    }
}

/// 0 * the global norm of the trainable weights: 0, or NaN when one is not finite (`None`
/// when nothing is trainable).
fn weights_check(opt: &AdamW) -> Result<Option<Tensor>> {
    let values = opt.weights();
    let refs: Vec<&Tensor> = values.iter().collect();
    let Some(first) = refs.first() else {
        return Ok(None);
    };
    Ok(Some(reduce::global_norm_scaled(first.gpu(), &refs, 0.0)?))
}

fn trainable(model: &Wav2Vec2ForCtc) -> impl Iterator<Item = &std::rc::Rc<crate::Param>> {
    model.params.iter().filter(|p| !p.is_frozen())
}

/// The first trainable parameter holding a non-finite value, if any (reads every weight
/// back: for the error message after [`StepOutcome::weights_finite`] said there may be one;
/// the sum of squares also overflows for huge but finite weights, |x| > 1e19).
pub fn first_non_finite(model: &Wav2Vec2ForCtc) -> Result<Option<String>> {
    for p in trainable(model) {
        if p.value().to_vec()?.iter().any(|x| !x.is_finite()) {
            return Ok(Some(p.name.clone()));
        }
    }
    Ok(None)
}
