//! Wav2Vec2ForCTC on the engine: the conv feature encoder, feature projection, positional conv
//! embedding, transformer encoder (post-LN "base" or pre-LN "stable" order) and the CTC head,
//! loaded from (and saved as) a Hugging Face model folder.
//!
//! The forward pass follows `transformers`' `modeling_wav2vec2.py` op for op, so a padded batch
//! is handled exactly as HF does: hidden states of padded frames are zeroed before the
//! positional conv, and attention never looks at padded keys.

pub mod checkpoint;
pub mod config;
pub mod spec_augment;

pub use checkpoint::Checkpoint;
pub use config::{Config, ConvNorm};

use crate::autograd::{Param, Tape, Var};
use crate::engine::Gpu;
use crate::engine::Tensor;
use crate::error::{file_err, shape_err, Error, Result};
use crate::ops::attention::MAX_HEAD_DIM;
use crate::ops::conv::Conv1d;
use crate::ops::ctc::Reduction;
use crate::rng::Rng;
use std::path::Path;
use std::rc::Rc;

/// A linear layer `y = x W^T + b` with W [out, in], as `nn.Linear` stores it.
#[derive(Clone)]
pub struct Linear {
    pub weight: Rc<Param>,
    pub bias: Rc<Param>,
}

impl Linear {
    /// x Wᵀ + b, in f16 with f32 accumulation when `half`.
    fn forward(&self, tape: &Rc<Tape>, x: &Var, half: bool) -> Result<Var> {
        let (w, b) = (tape.param(&self.weight), tape.param(&self.bias));
        if half {
            x.matmul_f16(&w, false, true, Some(&b))
        } else {
            x.matmul(&w, false, true, Some(&b))
        }
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
}

/// What loading a checkpoint did besides reading tensors.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Checkpoint tensors the model does not use (quantizer, projection heads...).
    pub ignored: Vec<String>,
    /// Model tensors the checkpoint lacked and that were initialised as HF does (a new CTC
    /// head on a pretraining checkpoint).
    pub initialised: Vec<String>,
}

/// How a parameter missing from the checkpoint (or every one, for a fresh model) starts.
enum Init {
    Normal(f64),
    Uniform(f64, f64),
    Const(f32),
}

struct Builder<'a> {
    gpu: &'a Gpu,
    ckpt: Option<&'a mut Checkpoint>,
    rng: Rng,
    params: Vec<Rc<Param>>,
    report: LoadReport,
    /// Names that may be initialised when the checkpoint lacks them.
    optional: &'a dyn Fn(&str) -> bool,
}

impl Builder<'_> {
    fn init(&mut self, init: Init, n: usize) -> Vec<f32> {
        match init {
            Init::Normal(std) => self.rng.normal_vec(n, std),
            Init::Uniform(lo, hi) => self.rng.uniform_vec(n, lo, hi),
            Init::Const(c) => vec![c; n],
        }
    }

    fn values(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Vec<f32>> {
        let n = shape.iter().product();
        if let Some(ck) = self.ckpt.as_deref_mut() {
            if let Some(v) = ck.take(name, shape)? {
                return Ok(v);
            }
            if !(self.optional)(name) {
                return Err(Error::File {
                    path: "model.safetensors".into(),
                    msg: format!("checkpoint has no tensor {name} (expected shape {shape:?})"),
                });
            }
            self.report.initialised.push(name.to_string());
        }
        Ok(self.init(init, n))
    }

    fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Rc<Param>> {
        let v = self.values(name, shape, init)?;
        let p = Param::new(name, Tensor::from_slice(self.gpu, &v, shape)?);
        self.params.push(p.clone());
        Ok(p)
    }

    fn linear(&mut self, prefix: &str, cin: usize, cout: usize, std: f64) -> Result<Linear> {
        Ok(Linear {
            weight: self.param(&format!("{prefix}.weight"), &[cout, cin], Init::Normal(std))?,
            bias: self.param(&format!("{prefix}.bias"), &[cout], Init::Const(0.0))?,
        })
    }

    fn norm(&mut self, prefix: &str, n: usize, eps: f32) -> Result<Norm> {
        Ok(Norm {
            weight: self.param(&format!("{prefix}.weight"), &[n], Init::Const(1.0))?,
            bias: self.param(&format!("{prefix}.bias"), &[n], Init::Const(0.0))?,
            eps,
        })
    }
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
    /// Loads a Hugging Face model folder: `config.json` and `model.safetensors` (or shards).
    /// A pretraining checkpoint (no `lm_head`) gets a new head for `vocab_size` tokens (or the
    /// config's); `pad_token_id` then sets the blank, as the notebook's `from_pretrained` does.
    pub fn load(
        gpu: &Gpu,
        dir: &Path,
        vocab: Option<(usize, usize)>,
        seed: u64,
    ) -> Result<(Wav2Vec2ForCtc, LoadReport)> {
        Self::load_with(gpu, dir, vocab, seed, |_| {})
    }

    /// [`Wav2Vec2ForCtc::load`] with config overrides applied before the model is built (the
    /// notebook's `from_pretrained(..., mask_time_prob=0.05, layerdrop=0.1, ...)`).
    pub fn load_with(
        gpu: &Gpu,
        dir: &Path,
        vocab: Option<(usize, usize)>,
        seed: u64,
        edit: impl FnOnce(&mut Config),
    ) -> Result<(Wav2Vec2ForCtc, LoadReport)> {
        let cfg_path = dir.join("config.json");
        if !cfg_path.is_file() {
            if !dir.is_dir() {
                return file_err(dir, "model folder does not exist");
            }
            return file_err(dir, "no config.json: not a Hugging Face model folder");
        }
        let mut config = Config::load(&cfg_path)?;
        edit(&mut config);
        let mut ck = Checkpoint::open(dir)?;
        let has_head = ck.has("lm_head.weight");
        if let Some((size, pad)) = vocab {
            if has_head && ck.shape("lm_head.weight") != Some(&[size, config.hidden_size]) {
                return file_err(
                    dir,
                    format!(
                        "the checkpoint's CTC head has {} outputs but the vocabulary has {size} tokens; \
                         start from a pretraining checkpoint or the matching vocab.json",
                        ck.shape("lm_head.weight")
                            .and_then(|s| s.first())
                            .map_or("?".into(), |n| n.to_string())
                    ),
                );
            }
            config.vocab_size = size;
            config.pad_token_id = Some(pad);
        }
        let optional = move |n: &str| {
            n.starts_with("lm_head.") && !has_head || n == "wav2vec2.masked_spec_embed"
        };
        let (model, mut report) = Self::build(gpu, config, Some(&mut ck), seed, &optional)?;
        report.ignored = ck.leftover();
        Ok((model, report))
    }

    /// A model with fresh weights, initialised as HF's `_init_weights` does.
    pub fn random(gpu: &Gpu, config: Config, seed: u64) -> Result<Wav2Vec2ForCtc> {
        Ok(Self::build(gpu, config, None, seed, &|_| true)?.0)
    }

    fn build(
        gpu: &Gpu,
        config: Config,
        ckpt: Option<&mut Checkpoint>,
        seed: u64,
        optional: &dyn Fn(&str) -> bool,
    ) -> Result<(Wav2Vec2ForCtc, LoadReport)> {
        let c = &config;
        let mut b = Builder {
            gpu,
            ckpt,
            rng: Rng::new(seed),
            params: Vec::new(),
            report: LoadReport::default(),
            optional,
        };
        let norm_kind = c.conv_norm()?;
        let mut convs = Vec::new();
        for (i, ((&cout, &k), &stride)) in c
            .conv_dim
            .iter()
            .zip(&c.conv_kernel)
            .zip(&c.conv_stride)
            .enumerate()
        {
            let cin = if i == 0 { 1 } else { c.conv_dim[i - 1] };
            let prefix = format!("wav2vec2.feature_extractor.conv_layers.{i}");
            let fan_in = (cin * k) as f64;
            let weight = b.param(
                &format!("{prefix}.conv.weight"),
                &[cout, cin, k],
                Init::Normal((2.0 / fan_in).sqrt()),
            )?;
            let bias = if c.conv_bias {
                let bound = (1.0 / fan_in).sqrt();
                Some(b.param(
                    &format!("{prefix}.conv.bias"),
                    &[cout],
                    Init::Uniform(-bound, bound),
                )?)
            } else {
                None
            };
            // nn.LayerNorm / nn.GroupNorm defaults: eps 1e-5, not the config's layer_norm_eps.
            let norm = match norm_kind {
                ConvNorm::Layer => Some(b.norm(&format!("{prefix}.layer_norm"), cout, 1e-5)?),
                ConvNorm::Group if i == 0 => {
                    Some(b.norm(&format!("{prefix}.layer_norm"), cout, 1e-5)?)
                }
                ConvNorm::Group => None,
            };
            convs.push(ConvLayer {
                weight,
                bias,
                norm,
                stride,
            });
        }
        let h = c.hidden_size;
        let feat = *c.conv_dim.last().unwrap_or(&0);
        let proj_norm = b.norm(
            "wav2vec2.feature_projection.layer_norm",
            feat,
            c.layer_norm_eps,
        )?;
        let bound = (1.0 / feat as f64).sqrt();
        let proj = Linear {
            weight: b.param(
                "wav2vec2.feature_projection.projection.weight",
                &[h, feat],
                Init::Uniform(-bound, bound),
            )?,
            bias: b.param(
                "wav2vec2.feature_projection.projection.bias",
                &[h],
                Init::Uniform(-bound, bound),
            )?,
        };
        let masked_spec_embed = if c.mask_time_prob > 0.0 || c.mask_feature_prob > 0.0 {
            Some(b.param("wav2vec2.masked_spec_embed", &[h], Init::Uniform(0.0, 1.0))?)
        } else {
            None
        };
        let (pos_g, pos_v) = pos_conv_params(&mut b, c)?;
        let pos_bias = b.param(
            "wav2vec2.encoder.pos_conv_embed.conv.bias",
            &[h],
            Init::Const(0.0),
        )?;
        let std = c.initializer_range as f64;
        let enc_norm = b.norm("wav2vec2.encoder.layer_norm", h, c.layer_norm_eps)?;
        let mut layers = Vec::new();
        for i in 0..c.num_hidden_layers {
            let p = format!("wav2vec2.encoder.layers.{i}");
            layers.push(EncoderLayer {
                q: b.linear(&format!("{p}.attention.q_proj"), h, h, std)?,
                k: b.linear(&format!("{p}.attention.k_proj"), h, h, std)?,
                v: b.linear(&format!("{p}.attention.v_proj"), h, h, std)?,
                out: b.linear(&format!("{p}.attention.out_proj"), h, h, std)?,
                attn_norm: b.norm(&format!("{p}.layer_norm"), h, c.layer_norm_eps)?,
                ff_in: b.linear(
                    &format!("{p}.feed_forward.intermediate_dense"),
                    h,
                    c.intermediate_size,
                    std,
                )?,
                ff_out: b.linear(
                    &format!("{p}.feed_forward.output_dense"),
                    c.intermediate_size,
                    h,
                    std,
                )?,
                ff_norm: b.norm(&format!("{p}.final_layer_norm"), h, c.layer_norm_eps)?,
            });
        }
        let lm_head = b.linear("lm_head", h, c.vocab_size, std)?;
        let model = Wav2Vec2ForCtc {
            config,
            gpu: gpu.clone(),
            convs,
            proj_norm,
            proj,
            masked_spec_embed,
            pos_g,
            pos_v,
            pos_bias,
            enc_norm,
            layers,
            lm_head,
            params: b.params,
        };
        Ok((model, b.report))
    }

    /// Freezes (or unfreezes) the conv feature encoder, as `freeze_feature_encoder()` does.
    pub fn freeze_feature_encoder(&self, frozen: bool) {
        for p in &self.params {
            if p.name.starts_with("wav2vec2.feature_extractor.") {
                p.set_frozen(frozen);
            }
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
        let mut dropout = Dropout::new(opts.seed ^ 0x5eed_d20f_0000_0000, opts.train);
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
        let x = if frozen && batch > 1 {
            // Nothing is kept for backward, so one clip at a time: the first conv's output
            // ([B, 512, S/5], the largest tensor of a step) never exists for the whole batch.
            // Every op is per clip, so the result is the same.
            let clips = (0..batch)
                .map(|b| self.feature_encoder(tape, &x.slice(0, b, 1)?))
                .collect::<Result<Vec<Var>>>()?;
            Var::concat(&clips.iter().collect::<Vec<_>>(), 0)?
        } else {
            self.feature_encoder(tape, &x)?
        };
        keep("conv_features", &x);
        let t = x.shape()[2];

        // Feature projection: [B, T, C] -> [B, T, H].
        let x = self.proj_norm.layer(tape, &x.transpose(1, 2)?)?;
        let x = self.proj.forward(tape, &x, opts.fp16)?;
        let mut x = drop(&x, c.feat_proj_dropout)?;
        keep("projected", &x);

        let h = c.hidden_size;
        if let Some(m) = &opts.mask_time {
            let embed = self.masked_spec_embed.as_ref().ok_or_else(|| {
                Error::Autograd("time masking needs masked_spec_embed (mask_time_prob > 0)".into())
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
            let step = LayerStep {
                config: shared.clone(),
                layer: layer.clone(),
                mask: attn_mask.clone(),
                train: opts.train,
                seed: layer_rng.next_u64(),
                half: opts.fp16,
                fused: !opts.unfused_attention,
            };
            x = if opts.checkpoint && tape_records(tape, &x) {
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
        let logits = self.lm_head.forward(tape, &x, opts.fp16)?;
        Ok(Output {
            logits,
            frames,
            hidden,
        })
    }

    /// CTC loss of `logits` against `labels` (token ids, no padding) with the config's
    /// reduction and zero_infinity, blank = pad token, as `Wav2Vec2ForCTC` computes it.
    /// Returns the loss and the utterances without a valid alignment.
    pub fn ctc_loss(
        &self,
        logits: &Var,
        frames: &[usize],
        labels: &[Vec<u32>],
    ) -> Result<(Var, Vec<usize>)> {
        let reduction = match self.config.ctc_loss_reduction.as_str() {
            "mean" => Reduction::Mean,
            "sum" => Reduction::Sum,
            "none" => Reduction::None,
            other => {
                return Err(Error::Autograd(format!(
                    "ctc_loss_reduction {other:?} is not one of mean, sum, none"
                )))
            }
        };
        let width = labels.iter().map(Vec::len).max().unwrap_or(0);
        let mut targets = vec![0i64; labels.len() * width];
        for (b, l) in labels.iter().enumerate() {
            for (j, &id) in l.iter().enumerate() {
                targets[b * width + j] = id as i64;
            }
        }
        let tl: Vec<i64> = labels.iter().map(|l| l.len() as i64).collect();
        let il: Vec<i64> = frames.iter().map(|&f| f as i64).collect();
        logits.ctc_loss(
            &targets,
            &tl,
            &il,
            self.config.blank(),
            reduction,
            self.config.ctc_zero_infinity,
        )
    }

    /// Writes `config.json` and `model.safetensors` (HF layout) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return file_err(dir, format!("cannot create: {e}"));
        }
        let mut tensors = Vec::new();
        for p in &self.params {
            let v = p.value();
            tensors.push((p.name.clone(), v.shape().to_vec(), v.to_vec()?));
        }
        checkpoint::save(&dir.join("model.safetensors"), &tensors)?;
        checkpoint::write_atomic(&dir.join("config.json"), self.config.to_json().as_bytes())
    }

    /// The conv stack: audio [B, 1, S] -> features [B, C, T].
    fn feature_encoder(&self, tape: &Rc<Tape>, audio: &Var) -> Result<Var> {
        let c = &self.config;
        let mut x = audio.clone();
        for conv in &self.convs {
            let geo = Conv1d {
                stride: conv.stride,
                padding: 0,
                groups: 1,
            };
            let bias = conv.bias.as_ref().map(|b| tape.param(b));
            x = x.conv1d(&tape.param(&conv.weight), bias.as_ref(), geo)?;
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

/// The positional conv's weight-norm pair (g [1, 1, K], v [H, H/groups, K]). A checkpoint
/// may also hold a plain `weight` (weight norm folded in): then v = weight and g = ||weight||.
fn pos_conv_params(b: &mut Builder, c: &Config) -> Result<(Rc<Param>, Rc<Param>)> {
    let (h, k, groups) = (
        c.hidden_size,
        c.num_conv_pos_embeddings,
        c.num_conv_pos_embedding_groups,
    );
    let vshape = [h, h / groups, k];
    let pre = "wav2vec2.encoder.pos_conv_embed.conv";
    let plain = format!("{pre}.weight");
    let from_ckpt = b
        .ckpt
        .as_deref()
        .map(|ck| !ck.has(&format!("{pre}.weight_v")) && ck.has(&plain))
        .unwrap_or(false);
    let v = if from_ckpt {
        b.ckpt
            .as_deref_mut()
            .and_then(|ck| ck.take(&plain, &vshape).transpose())
            .transpose()?
            .unwrap_or_default()
    } else {
        let std = 2.0 * (1.0 / (k * h) as f64).sqrt();
        b.values(&format!("{pre}.weight_v"), &vshape, Init::Normal(std))?
    };
    let norms: Vec<f32> = (0..k)
        .map(|j| {
            v.iter()
                .skip(j)
                .step_by(k)
                .map(|x| (*x as f64).powi(2))
                .sum::<f64>()
                .sqrt() as f32
        })
        .collect();
    let g = if from_ckpt || b.ckpt.is_none() {
        norms
    } else {
        b.values(&format!("{pre}.weight_g"), &[1, 1, k], Init::Const(1.0))?
    };
    let gp = Param::new(
        format!("{pre}.weight_g"),
        Tensor::from_slice(b.gpu, &g, &[1, 1, k])?,
    );
    let vp = Param::new(
        format!("{pre}.weight_v"),
        Tensor::from_slice(b.gpu, &v, &vshape)?,
    );
    b.params.push(gp.clone());
    b.params.push(vp.clone());
    Ok((gp, vp))
}

/// Dropout sites of one pass: each call takes the next seed, whether or not it drops, so the
/// masks depend only on the pass's seed and the site's position.
struct Dropout {
    seeds: Rng,
    train: bool,
}

impl Dropout {
    fn new(seed: u64, train: bool) -> Dropout {
        Dropout {
            seeds: Rng::new(seed),
            train,
        }
    }

    fn apply(&mut self, x: &Var, p: f32) -> Result<Var> {
        let (p, s) = self.next(p);
        if p > 0.0 {
            x.dropout(p, s)
        } else {
            Ok(x.clone())
        }
    }

    /// The next site's probability (0 outside training) and seed, for a kernel that applies
    /// dropout itself (fused attention).
    fn next(&mut self, p: f32) -> (f32, u64) {
        let s = self.seeds.next_u64();
        (if self.train { p } else { 0.0 }, s)
    }
}

/// Whether ops on `x` are being recorded for a backward pass.
fn tape_records(tape: &Rc<Tape>, x: &Var) -> bool {
    tape.is_recording() && x.requires_grad()
}

/// One encoder layer's forward with everything it needs owned, so gradient checkpointing can
/// run it again inside the backward pass.
struct LayerStep {
    config: Rc<Config>,
    layer: EncoderLayer,
    mask: Option<Tensor>,
    train: bool,
    seed: u64,
    half: bool,
    fused: bool,
}

impl LayerStep {
    fn forward(&self, tape: &Rc<Tape>, x: &Var) -> Result<Var> {
        let (c, l) = (&*self.config, &self.layer);
        let mut drop = Dropout::new(self.seed, self.train);
        if c.do_stable_layer_norm {
            let a = self.attention(tape, &l.attn_norm.layer(tape, x)?, &mut drop)?;
            let x = x.add(&drop.apply(&a, c.hidden_dropout)?)?;
            let f = self.feed_forward(tape, &l.ff_norm.layer(tape, &x)?, &mut drop)?;
            x.add(&f)
        } else {
            let a = self.attention(tape, x, &mut drop)?;
            let x = l
                .attn_norm
                .layer(tape, &x.add(&drop.apply(&a, c.hidden_dropout)?)?)?;
            let f = self.feed_forward(tape, &x, &mut drop)?;
            l.ff_norm.layer(tape, &x.add(&f)?)
        }
    }

    fn attention(&self, tape: &Rc<Tape>, x: &Var, drop: &mut Dropout) -> Result<Var> {
        let (c, l) = (&*self.config, &self.layer);
        let (b, t, h) = (x.shape()[0], x.shape()[1], c.hidden_size);
        let nh = c.num_attention_heads;
        let hd = h / nh;
        let heads = |y: Var| -> Result<Var> { y.reshape(&[b, t, nh, hd])?.permute(&[0, 2, 1, 3]) };
        let half = self.half;
        let mm = |a: &Var, b: &Var, tb: bool| {
            if half {
                a.matmul_f16(b, false, tb, None)
            } else {
                a.matmul(b, false, tb, None)
            }
        };
        // One f16 copy of the input serves the three projections (and is what they keep).
        let x = if half { x.to_f16()? } else { x.clone() };
        let q = heads(l.q.forward(tape, &x, half)?)?;
        let k = heads(l.k.forward(tape, &x, half)?)?;
        let v = heads(l.v.forward(tape, &x, half)?)?;
        let scale = (hd as f32).powf(-0.5);
        let o = if self.fused && hd <= MAX_HEAD_DIM {
            // Never materialises the [B, H, T, T] scores; the same dropout mask as below.
            let (p, seed) = drop.next(c.attention_dropout);
            let mask = self.mask.as_ref();
            if half {
                q.attention_f16(&k, &v, mask, nh, scale, p, seed)?
            } else {
                q.attention(&k, &v, mask, nh, scale, p, seed)?
            }
        } else {
            let scores = mm(&q, &k, true)?.scale(scale, 0.0)?;
            let p = scores.softmax(self.mask.as_ref())?;
            let p = drop.apply(&p, c.attention_dropout)?;
            mm(&p, &v, false)?
        };
        let o = o.permute(&[0, 2, 1, 3])?.reshape(&[b, t, h])?;
        l.out.forward(tape, &o, half)
    }

    fn feed_forward(&self, tape: &Rc<Tape>, x: &Var, drop: &mut Dropout) -> Result<Var> {
        let (c, l) = (&*self.config, &self.layer);
        let y = l.ff_in.forward(tape, x, self.half)?;
        let y = if self.half {
            y.act_f16(c.hidden_act())?
        } else {
            y.act(c.hidden_act())?
        };
        let y = drop.apply(&y, c.activation_dropout)?;
        let y = l.ff_out.forward(tape, &y, self.half)?;
        drop.apply(&y, c.hidden_dropout)
    }
}
