//! Wav2Vec2ForCTC on the engine: the conv feature encoder, feature projection, positional conv
//! embedding, transformer encoder (post-LN "base" or pre-LN "stable" order) and the CTC head,
//! loaded from (and saved as) a Hugging Face model folder.
//!
//! The forward pass follows `transformers`' `modeling_wav2vec2.py` op for op, so a padded batch
//! is handled exactly as HF does: hidden states of padded frames are zeroed before the
//! positional conv, and attention never looks at padded keys.

pub mod checkpoint;
pub mod config;
mod encoder;
pub mod load;
pub mod spec_augment;

pub use checkpoint::Checkpoint;
pub use config::{Config, ConvNorm};
pub use encoder::EncoderLayer;
use encoder::{tape_records, Dropout, LayerStep};
pub use load::{LoadOptions, LoadReport};

use crate::autograd::{autocast, Param, Tape, Var};
use crate::data::Targets;
use crate::engine::Gpu;
use crate::engine::Tensor;
use crate::error::{shape_err, Error, Result};
use crate::ops::conv::Conv1d;
use crate::ops::ctc::{CtcOptions, Reduction};
use crate::rng::Rng;
use std::cell::RefCell;
use std::ops::Range;
use std::rc::Rc;

/// Refuses logits that are not finite: finite weights can still make NaN (a weight-norm
/// direction of zeros), and decoding it would print a confident letter and a WER.
pub fn check_logits(logits: &[f32]) -> Result<()> {
    if logits.iter().all(|l| l.is_finite()) {
        return Ok(());
    }
    Err(Error::NonFiniteLogits)
}

/// A linear layer `y = x W^T + b` with W [out, in], as `nn.Linear` stores it.
#[derive(Clone)]
pub struct Linear {
    pub weight: Rc<Param>,
    pub bias: Rc<Param>,
}

impl Linear {
    /// x Wᵀ + b (in f16 with f32 accumulation under [`autocast`]).
    fn forward(&self, tape: &Rc<Tape>, x: &Var) -> Result<Var> {
        x.matmul(
            &tape.param(&self.weight),
            false,
            true,
            Some(&tape.param(&self.bias)),
        )
    }
}

/// LayerNorm (or GroupNorm) affine parameters.
#[derive(Clone)]
pub struct Norm {
    pub weight: Rc<Param>,
    pub bias: Rc<Param>,
    pub eps: f32,
}

impl Norm {
    fn layer(&self, tape: &Rc<Tape>, x: &Var) -> Result<Var> {
        x.layer_norm(
            Some(&tape.param(&self.weight)),
            Some(&tape.param(&self.bias)),
            self.eps,
        )
    }
}

/// One conv of the feature encoder.
pub struct ConvLayer {
    pub weight: Rc<Param>,
    pub bias: Option<Rc<Param>>,
    pub norm: Option<Norm>,
    pub stride: usize,
}

/// `Wav2Vec2AttnAdapterLayer`: x + linear_2(relu(linear_1(norm(x)))), a small bottleneck that
/// MMS swaps per language.
#[derive(Clone)]
pub struct Adapter {
    pub norm: Norm,
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl Adapter {
    /// The adapter's parameters.
    pub fn params(&self) -> Vec<Rc<Param>> {
        let mut v = Vec::new();
        for (w, b) in [
            (&self.norm.weight, &self.norm.bias),
            (&self.linear_1.weight, &self.linear_1.bias),
            (&self.linear_2.weight, &self.linear_2.bias),
        ] {
            v.push(w.clone());
            v.push(b.clone());
        }
        v
    }

    /// Its output, which the layer adds to its own.
    fn forward(&self, tape: &Rc<Tape>, x: &Var) -> Result<Var> {
        let y = self
            .linear_1
            .forward(tape, &self.norm.layer(tape, x)?)?
            .relu()?;
        self.linear_2.forward(tape, &y)
    }
}

/// The whole Wav2Vec2ForCTC model.
pub struct Wav2Vec2ForCtc {
    pub config: Config,
    pub gpu: Gpu,
    pub convs: Vec<ConvLayer>,
    pub proj_norm: Norm,
    pub proj: Linear,
    pub masked_spec_embed: Option<Rc<Param>>,
    pub pos_g: Rc<Param>,
    pub pos_v: Rc<Param>,
    pub pos_bias: Rc<Param>,
    pub enc_norm: Norm,
    pub layers: Vec<EncoderLayer>,
    pub lm_head: Linear,
    /// Every parameter, in checkpoint-name order of creation.
    pub params: Vec<Rc<Param>>,
    /// MMS: the language of the adapter layers and head, whose `adapter.LANG.safetensors` a
    /// saved model folder gets.
    pub target_lang: Option<String>,
}

/// Options of one forward pass. The default is inference: no dropout, LayerDrop or masking.
#[derive(Clone, Debug, Default)]
pub struct Forward {
    /// Apply dropout and LayerDrop (training mode).
    pub train: bool,
    /// Seed of this pass's dropout masks and LayerDrop draws.
    pub seed: u64,
    /// SpecAugment time mask [B, frames], 1 where the frame is replaced by `masked_spec_embed`.
    pub mask_time: Option<Vec<f32>>,
    /// SpecAugment feature mask [B, hidden], 1 where the channel is zeroed.
    pub mask_features: Option<Vec<f32>>,
    /// Keep the intermediate activations in [`Output::hidden`].
    pub keep_hidden: bool,
    /// Gradient checkpointing: keep only each encoder layer's input for the backward pass and
    /// recompute the layer there (less memory, about one more forward pass of compute).
    pub checkpoint: bool,
    /// Mixed precision: the matmuls of the feature projection, the encoder layers and the LM
    /// head, and the fused attention, read f16 copies of their inputs (f32 arithmetic); the
    /// rest stays f32. Needs an adapter with f16 ([`crate::engine::Gpu::has_f16`]).
    pub fp16: bool,
    /// Attention as separate matmul, softmax and dropout kernels that keep the [B, H, T, T]
    /// probabilities for backward, instead of the fused kernel that recomputes them (the
    /// fused one needs head dim <= 64; larger heads always take this path).
    pub unfused_attention: bool,
    /// Bytes of a frozen conv output that one group of clips may make at once (0: the
    /// default, [`ENCODER_GROUP_BYTES`]); the first, largest convs run group by group.
    pub encoder_group_bytes: usize,
    /// Where this batch's first row sits in a larger batch (a data-parallel rank's share):
    /// dropout draws the masks of those rows of the larger batch, so the ranks together draw
    /// what one process with the whole batch would.
    pub batch_offset: usize,
}

/// Result of a forward pass.
pub struct Output {
    /// LM-head output [B, frames, vocab].
    pub logits: Var,
    /// Valid frames per utterance.
    pub frames: Vec<usize>,
    /// Named intermediate activations (with [`Forward::keep_hidden`]): `conv_features`
    /// [B, C, T], `projected`, `pos_embed`, `layer{i}` [B, T, H].
    pub hidden: Vec<(String, Tensor)>,
}

impl Wav2Vec2ForCtc {
    /// Freezes (or unfreezes) the conv feature encoder, as `freeze_feature_encoder()` does.
    pub fn freeze_feature_encoder(&self, frozen: bool) {
        for p in &self.params {
            if p.name.starts_with("wav2vec2.feature_extractor.") {
                p.set_frozen(frozen);
            }
        }
    }

    /// MMS adapter-only fine-tuning: everything frozen but the adapter layers and the head.
    pub fn train_adapters_only(&self) {
        for p in &self.params {
            let adapter = p.name.contains(".adapter_layer.") || p.name.starts_with("lm_head.");
            p.set_frozen(!adapter);
        }
    }

    /// Number of parameters (trainable or not).
    pub fn num_params(&self) -> usize {
        self.params.iter().map(|p| p.value().numel()).sum()
    }

    /// Valid frames for utterances of `samples` samples.
    pub fn frames(&self, samples: &[usize]) -> Vec<usize> {
        samples.iter().map(|&s| self.config.frames(s)).collect()
    }

    /// Runs the model on `audio` [B, S] (each row normalised, zero-padded past `lengths[b]`
    /// samples). With `lengths` = None every row is one full utterance and nothing is masked,
    /// as HF does without an attention mask.
    pub fn forward(
        &self,
        tape: &Rc<Tape>,
        audio: &Tensor,
        lengths: Option<&[usize]>,
        opts: &Forward,
    ) -> Result<Output> {
        let c = &self.config;
        let [batch, samples] = *audio.shape() else {
            return shape_err(
                "wav2vec2",
                format!("audio must be [batch, samples], got {:?}", audio.shape()),
            );
        };
        if let Some(l) = lengths {
            if l.len() != batch || l.iter().any(|&n| n > samples) {
                return shape_err(
                    "wav2vec2",
                    format!("lengths {l:?} do not fit audio {:?}", audio.shape()),
                );
            }
        }
        let t_all = c.frames(samples);
        if t_all == 0 {
            return shape_err(
                "wav2vec2",
                format!("{samples} samples are shorter than the feature encoder's receptive field"),
            );
        }
        let frames: Vec<usize> = match lengths {
            Some(l) => self.frames(l),
            None => vec![t_all; batch],
        };
        let mut dropout = Dropout::new(
            opts.seed ^ 0x5eed_d20f_0000_0000,
            opts.train,
            opts.batch_offset,
        );
        let mut drop = |x: &Var, p: f32| dropout.apply(x, p);
        let mut hidden = Vec::new();
        let mut keep = |name: &str, v: &Var| {
            if opts.keep_hidden {
                hidden.push((name.to_string(), v.value.clone()));
            }
        };

        // Feature encoder: [B, 1, S] -> [B, C, T].
        let x = tape.input(audio.reshape(&[batch, 1, samples])?, false);
        let frozen = self.convs.iter().all(|c| c.weight.is_frozen()) || !tape.is_recording();
        let convs = self.convs.len();
        let budget = match opts.encoder_group_bytes {
            0 => ENCODER_GROUP_BYTES,
            n => n,
        };
        let groups = clip_groups(batch, self.conv_bytes(0, samples), budget);
        let x = if frozen && groups.len() > 1 {
            // Nothing is kept for backward, so the first convs run a few clips at a time:
            // their outputs ([B, 512, S/5] first, the largest tensor of a step) never exist
            // for the whole batch. From the first conv whose output for the whole batch fits
            // the budget on, the batch runs together. Every op is per clip, so the result is
            // the same.
            let split = (0..convs)
                .find(|&i| batch * self.conv_bytes(i, samples) <= budget)
                .map_or(convs, |i| i + 1);
            // Under --fp16 each group would cast the same frozen weights to f16 again.
            let parts = crate::ops::cast::reusing_casts(|| {
                groups
                    .iter()
                    .map(|&(b0, n)| {
                        self.feature_encoder(tape, &x.slice(0, b0, n)?, 0..split, opts.fp16)
                    })
                    .collect::<Result<Vec<Var>>>()
            })?;
            let x = Var::concat(&parts.iter().collect::<Vec<_>>(), 0)?;
            self.feature_encoder(tape, &x, split..convs, opts.fp16)?
        } else {
            self.feature_encoder(tape, &x, 0..convs, opts.fp16)?
        };
        keep("conv_features", &x);
        let t = x.shape()[2];

        // Feature projection: [B, T, C] -> [B, T, H].
        let x = self.proj_norm.layer(tape, &x.transpose(1, 2)?)?;
        let x = autocast(opts.fp16, || self.proj.forward(tape, &x))?;
        let mut x = drop(&x, c.feat_proj_dropout)?;
        keep("projected", &x);

        let h = c.hidden_size;
        if let Some(m) = &opts.mask_time {
            let embed = self.masked_spec_embed.as_ref().ok_or_else(|| {
                Error::Config("time masking needs masked_spec_embed (mask_time_prob > 0)".into())
            })?;
            let m = Tensor::from_slice(&self.gpu, m, &[batch, t, 1])?;
            let keep_t = crate::ops::elementwise::scale(&m, -1.0, 1.0)?;
            let masked = Var::constant(m).mul(&tape.param(embed))?;
            x = x.mul(&Var::constant(keep_t))?.add(&masked)?;
        }
        if let Some(m) = &opts.mask_features {
            let keep_f: Vec<f32> = m.iter().map(|v| 1.0 - v).collect();
            x = x.mul(&Var::constant(Tensor::from_slice(
                &self.gpu,
                &keep_f,
                &[batch, 1, h],
            )?))?;
        }

        // Padded frames: zero hidden states, and an additive -inf key mask for attention.
        let mut attn_mask = None;
        if lengths.is_some() {
            let mut valid = vec![0f32; batch * t];
            let mut add = vec![f32::MIN; batch * t];
            for (b, &n) in frames.iter().enumerate() {
                valid[b * t..b * t + n.min(t)].fill(1.0);
                add[b * t..b * t + n.min(t)].fill(0.0);
            }
            x = x.mul(&Var::constant(Tensor::from_slice(
                &self.gpu,
                &valid,
                &[batch, t, 1],
            )?))?;
            attn_mask = Some(Tensor::from_slice(&self.gpu, &add, &[batch, t])?);
        }

        // Positional conv embedding (weight-normed grouped conv, "same" padding, trimmed).
        let k = c.num_conv_pos_embeddings;
        let w = tape
            .param(&self.pos_v)
            .weight_norm(&tape.param(&self.pos_g))?;
        let geo = Conv1d {
            stride: 1,
            padding: k / 2,
            groups: c.num_conv_pos_embedding_groups,
        };
        let mut pos = x
            .transpose(1, 2)?
            .conv1d(&w, Some(&tape.param(&self.pos_bias)), geo)?;
        if pos.shape()[2] != t {
            pos = pos.slice(2, 0, t)?;
        }
        let pos = pos.act(c.conv_act())?.transpose(1, 2)?;
        keep("pos_embed", &pos);
        let mut x = x.add(&pos)?;
        if !c.do_stable_layer_norm {
            x = self.enc_norm.layer(tape, &x)?;
        }
        x = drop(&x, c.hidden_dropout)?;

        let mut layer_rng = Rng::new(opts.seed ^ 0x1a7e_d20f);
        let shared = Rc::new(c.clone());
        for (i, layer) in self.layers.iter().enumerate() {
            // LayerDrop draws one number per layer whether or not it is used, so a run's
            // skips depend only on the seed.
            let skip = layer_rng.uniform() < c.layerdrop as f64;
            if opts.train && skip {
                keep(&format!("layer{i}"), &x);
                continue;
            }
            // Each layer draws its dropout masks from its own seed, so recomputing it inside
            // the backward pass (checkpointing) repeats them exactly.
            let ckpt = opts.checkpoint && tape_records(tape, &x);
            let step = LayerStep {
                config: shared.clone(),
                layer: layer.clone(),
                mask: attn_mask.clone(),
                train: opts.train,
                seed: layer_rng.next_u64(),
                batch_offset: opts.batch_offset,
                half: opts.fp16,
                fused: !opts.unfused_attention,
                keep_attention: ckpt && encoder::keep_attention(),
                kept: RefCell::new(None),
            };
            x = if ckpt {
                tape.checkpoint(&x, move |t, x| step.forward(t, x))?
            } else {
                step.forward(tape, &x)?
            };
            keep(&format!("layer{i}"), &x);
        }
        if c.do_stable_layer_norm {
            x = self.enc_norm.layer(tape, &x)?;
        }
        let x = drop(&x, c.final_dropout)?;
        let logits = autocast(opts.fp16, || self.lm_head.forward(tape, &x))?;
        Ok(Output {
            logits,
            frames,
            hidden,
        })
    }

    /// CTC loss of `logits` against `targets` with the config's
    /// reduction and zero_infinity, blank = pad token, as `Wav2Vec2ForCTC` computes it.
    /// Returns the loss and the utterances without a valid alignment.
    pub fn ctc_loss(
        &self,
        logits: &Var,
        frames: &[usize],
        targets: &Targets,
    ) -> Result<(Var, Vec<usize>)> {
        let reduction = match self.config.ctc_loss_reduction.as_str() {
            "mean" => Reduction::Mean,
            "sum" => Reduction::Sum,
            "none" => Reduction::None,
            other => {
                return Err(Error::Config(format!(
                    "ctc_loss_reduction {other:?} is not one of mean, sum, none"
                )))
            }
        };
        let opts = CtcOptions {
            blank: self.config.blank(),
            reduction,
            zero_infinity: self.config.ctc_zero_infinity,
        };
        logits.ctc_loss(targets, frames, opts)
    }

    /// Bytes of conv `layer`'s output for one clip of `samples` samples.
    fn conv_bytes(&self, layer: usize, samples: usize) -> usize {
        let c = &self.config;
        let geometry = c
            .conv_kernel
            .iter()
            .copied()
            .zip(c.conv_stride.iter().copied());
        c.conv_dim[layer] * crate::data::conv_frames(samples, geometry.take(layer + 1)) * 4
    }

    /// Convs `layers` of the feature encoder: audio [B, 1, S] -> features [B, C, T] for all.
    /// With `fp16` a frozen conv runs as an f16 GEMM (see [`Var::conv1d`]); norms and
    /// activations stay f32.
    fn feature_encoder(
        &self,
        tape: &Rc<Tape>,
        audio: &Var,
        layers: Range<usize>,
        fp16: bool,
    ) -> Result<Var> {
        let c = &self.config;
        let mut x = audio.clone();
        for conv in &self.convs[layers] {
            let geo = Conv1d {
                stride: conv.stride,
                padding: 0,
                groups: 1,
            };
            let bias = conv.bias.as_ref().map(|b| tape.param(b));
            let w = tape.param(&conv.weight);
            x = autocast(fp16, || x.conv1d(&w, bias.as_ref(), geo))?;
            if let Some(n) = &conv.norm {
                let (w, b) = (tape.param(&n.weight), tape.param(&n.bias));
                x = match c.conv_norm()? {
                    ConvNorm::Group => x.group_norm(Some(&w), Some(&b), n.eps)?,
                    ConvNorm::Layer => x.channel_norm(Some(&w), Some(&b), n.eps)?,
                };
            }
            x = x.act(c.conv_act())?;
        }
        Ok(x)
    }
}

/// How much of a frozen feature encoder conv's output one group of clips may make by
/// default ([`Forward::encoder_group_bytes`]). The pool keeps what the encoder used for the
/// rest of the run, so this is peak memory: at XLSR-53 batch 8 x 5 s, 32 MiB runs the first
/// four convs one clip at a time and the last three on the batch (the step's peak 5.65 GB);
/// 64 MiB saves 65 more dispatches for 0.16 GB more, all seven on the batch 96 for 0.9 GB.
pub const ENCODER_GROUP_BYTES: usize = 32 << 20;

/// Runs (first, count) of a batch's clips whose first conv outputs of `per_clip` bytes stay
/// within `budget` together (at least one clip each).
fn clip_groups(batch: usize, per_clip: usize, budget: usize) -> Vec<(usize, usize)> {
    let n = (budget / per_clip.max(1)).clamp(1, batch.max(1));
    (0..batch)
        .step_by(n)
        .map(|b| (b, n.min(batch - b)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::clip_groups;

    #[test]
    fn clip_groups_cover_the_batch_within_the_budget() {
        assert_eq!(clip_groups(8, 32, 256), vec![(0, 8)]);
        assert_eq!(
            clip_groups(8, 100, 256),
            vec![(0, 2), (2, 2), (4, 2), (6, 2)]
        );
        assert_eq!(clip_groups(5, 100, 256), vec![(0, 2), (2, 2), (4, 1)]);
        assert_eq!(clip_groups(3, 1000, 256), vec![(0, 1), (1, 1), (2, 1)]);
        assert_eq!(clip_groups(0, 1000, 256), vec![]);
    }
}
