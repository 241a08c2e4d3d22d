//! Building the model: from a Hugging Face folder (every weight-norm naming, base and large
//! layouts, a new CTC head on a pretraining checkpoint), from a seed, and saving it back.

use super::checkpoint;
use super::{
    Adapter, Checkpoint, Config, ConvLayer, ConvNorm, EncoderLayer, Linear, Norm, Wav2Vec2ForCtc,
};
use crate::autograd::Param;
use crate::engine::{Gpu, Tensor};
use crate::error::{file_err, Error, Result};
use crate::rng::Rng;
use std::path::Path;
use std::rc::Rc;

/// What loading a checkpoint did besides reading tensors.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Checkpoint tensors the model does not use (quantizer, projection heads...).
    pub ignored: Vec<String>,
    /// Of those, the ones the caller asked to replace (a new head, new adapters).
    pub replaced: Vec<String>,
    /// Model tensors the checkpoint lacked and that were initialised as HF does (a new CTC
    /// head on a pretraining checkpoint).
    pub initialised: Vec<String>,
}

impl LoadReport {
    /// A warning naming the checkpoint tensors the model left unused, but for those only a
    /// pretraining checkpoint has (quantizer, contrastive projections) and those the caller
    /// replaced (a new head or adapters); `None` when there are none. Such leftovers mean
    /// config.json describes another model than the weights (`conv_bias`,
    /// `num_hidden_layers`, `feat_extract_norm`...), as transformers' "Some weights of the
    /// model checkpoint were not used" says.
    pub fn unused_warning(&self, dir: &Path) -> Option<String> {
        let pretraining = ["quantizer.", "project_q.", "project_hid."];
        let unused: Vec<&str> = self
            .ignored
            .iter()
            .filter(|n| !pretraining.iter().any(|p| n.starts_with(p)))
            .filter(|n| !self.replaced.contains(n))
            .map(String::as_str)
            .collect();
        if unused.is_empty() {
            return None;
        }
        let shown = unused
            .iter()
            .take(6)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        Some(format!(
            "warning: {}: {} checkpoint tensor{} not used by the model its config.json \
             describes ({shown}{}); check conv_bias, num_hidden_layers, feat_extract_norm and \
             do_stable_layer_norm against the weights",
            dir.display(),
            unused.len(),
            if unused.len() == 1 { " is" } else { "s are" },
            if unused.len() > 6 { ", ..." } else { "" }
        ))
    }
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
                    path: ck.source(),
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

/// How [`Wav2Vec2ForCtc::load_with`] sets a model up beyond what its folder says.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// CTC head size and blank id: of the new head a pretraining checkpoint gets, or what the
    /// saved head must have.
    pub vocab: Option<(usize, usize)>,
    /// Leave the checkpoint's head out (reported as ignored) and make a new one for `vocab`.
    pub new_head: bool,
    /// MMS: the language whose adapter layers and head (`adapter.LANG.safetensors` in the
    /// folder) replace the folder's, as transformers' `from_pretrained(.., target_lang=LANG)`.
    pub target_lang: Option<String>,
    /// MMS: new adapter layers (initialised as transformers' `init_adapter_layers`) instead
    /// of the folder's, for a language that has none yet.
    pub fresh_adapters: bool,
    /// Seed of new weights.
    pub seed: u64,
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
        let opts = LoadOptions {
            vocab,
            seed,
            ..LoadOptions::default()
        };
        Self::load_with(gpu, dir, &opts, |_| {})
    }

    /// [`Wav2Vec2ForCtc::load`] with config overrides applied before the model is built (the
    /// notebook's `from_pretrained(..., mask_time_prob=0.05, layerdrop=0.1, ...)`) and the
    /// choices of [`LoadOptions`].
    pub fn load_with(
        gpu: &Gpu,
        dir: &Path,
        opts: &LoadOptions,
        edit: impl FnOnce(&mut Config),
    ) -> Result<(Wav2Vec2ForCtc, LoadReport)> {
        let (vocab, new_head, seed) = (opts.vocab, opts.new_head, opts.seed);
        let cfg_path = dir.join("config.json");
        if !cfg_path.is_file() {
            if !dir.is_dir() {
                return checkpoint::not_a_folder(dir);
            }
            if cfg_path.exists() {
                return file_err(cfg_path, "is not a file");
            }
            return file_err(dir, "no config.json: not a Hugging Face model folder");
        }
        let mut config = Config::load(&cfg_path)?;
        edit(&mut config);
        let mut ck = Checkpoint::open(dir)?;
        if let Some(lang) = &opts.target_lang {
            overlay_adapter(&mut ck, &config, dir, lang)?;
        }
        let mut dropped = Vec::new();
        if new_head && vocab.is_some() {
            for name in ["lm_head.weight", "lm_head.bias"] {
                if ck.remove(name) {
                    dropped.push(name.to_string());
                }
            }
        }
        if opts.fresh_adapters {
            for name in adapter_names(&config) {
                if !name.starts_with("lm_head.") && ck.remove(&name) {
                    dropped.push(name);
                }
            }
        }
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
        } else if let Some(&[rows, _]) = ck.shape("lm_head.weight") {
            // The head decides the outputs (an MMS language's head has its own size).
            config.vocab_size = rows;
        }
        let fresh = opts.fresh_adapters;
        let optional = move |n: &str| {
            n.starts_with("lm_head.") && !has_head
                || n == "wav2vec2.masked_spec_embed"
                || fresh && n.contains(".adapter_layer.")
        };
        let (mut model, mut report) = Self::build(gpu, config, Some(&mut ck), seed, &optional)?;
        model.target_lang = opts.target_lang.clone();
        report.ignored = ck.leftover();
        report.ignored.extend(dropped.iter().cloned());
        report.replaced = dropped;
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
                adapter: match c.adapter_attn_dim {
                    // transformers builds adapters in the pre-LN ("stable") layers only; their
                    // LayerNorm has torch's default eps.
                    Some(a) if c.do_stable_layer_norm => Some(Adapter {
                        norm: b.norm(&format!("{p}.adapter_layer.norm"), h, 1e-5)?,
                        linear_1: b.linear(&format!("{p}.adapter_layer.linear_1"), h, a, std)?,
                        linear_2: b.linear(&format!("{p}.adapter_layer.linear_2"), a, h, std)?,
                    }),
                    _ => None,
                },
            });
        }
        let lm_head = b.linear("lm_head", h, c.vocab_size, std)?;
        let params = pack_order(b.params, &layers);
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
            params,
            target_lang: None,
        };
        Ok((model, b.report))
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
        crate::files::write_atomic(&dir.join("config.json"), self.config.to_json().as_bytes())
    }

    /// Writes `adapter.LANG.safetensors` into `dir`: the adapter layers and the head, what
    /// transformers' `load_adapter(LANG)` reads.
    pub fn save_adapter(&self, dir: &Path, lang: &str) -> Result<()> {
        let names = adapter_names(&self.config);
        let mut tensors = Vec::new();
        for p in self.params.iter().filter(|p| names.contains(&p.name)) {
            let v = p.value();
            tensors.push((p.name.clone(), v.shape().to_vec(), v.to_vec()?));
        }
        checkpoint::save(&dir.join(format!("adapter.{lang}.safetensors")), &tensors)
    }
}

/// `params` with each layer's q, k and v weights, then their biases, next to each other and
/// marked to stay so ([`Param::pack_with_next`]): packed so by the optimiser, the three
/// projections run as one GEMM over the joined weights. Parameters are created (and randomly
/// initialised) in checkpoint order; only the list is reordered.
fn pack_order(params: Vec<Rc<Param>>, layers: &[EncoderLayer]) -> Vec<Rc<Param>> {
    let groups: Vec<[&Rc<Param>; 6]> = layers
        .iter()
        .map(|l| {
            let (q, k, v) = (&l.q, &l.k, &l.v);
            [&q.weight, &k.weight, &v.weight, &q.bias, &k.bias, &v.bias]
        })
        .collect();
    let in_group = |p: &Rc<Param>| groups.iter().flatten().any(|g| Rc::ptr_eq(g, p));
    let mut out = Vec::with_capacity(params.len());
    for p in params {
        if let Some(g) = groups.iter().find(|g| Rc::ptr_eq(g[0], &p)) {
            for (i, member) in g.iter().enumerate() {
                if i % 3 != 2 {
                    member.pack_with_next();
                }
                out.push((*member).clone());
            }
        } else if !in_group(&p) {
            out.push(p);
        }
    }
    out
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

/// The names `transformers`' `_get_adapters` gives an MMS model's adapter weights.
pub fn adapter_names(config: &Config) -> Vec<String> {
    let mut names = Vec::new();
    if config.adapter_attn_dim.is_some() && config.do_stable_layer_norm {
        for i in 0..config.num_hidden_layers {
            for part in ["norm", "linear_1", "linear_2"] {
                for t in ["weight", "bias"] {
                    names.push(format!(
                        "wav2vec2.encoder.layers.{i}.adapter_layer.{part}.{t}"
                    ));
                }
            }
        }
    }
    names.extend(["lm_head.weight".to_string(), "lm_head.bias".to_string()]);
    names
}

/// The languages with an `adapter.LANG.safetensors` in `dir`, sorted.
pub fn adapter_languages(dir: &Path) -> Vec<String> {
    let mut langs: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            Some(
                name.strip_prefix("adapter.")?
                    .strip_suffix(".safetensors")?
                    .to_string(),
            )
        })
        .collect();
    langs.sort();
    langs
}

/// Puts `adapter.LANG.safetensors` over the folder's weights: it must hold exactly the
/// adapter layers and the head, as transformers' `load_adapter` requires.
fn overlay_adapter(ck: &mut Checkpoint, config: &Config, dir: &Path, lang: &str) -> Result<()> {
    if config.adapter_attn_dim.is_none() {
        return file_err(
            dir.join("config.json"),
            format!("--target-lang {lang}: this model has no adapter layers (adapter_attn_dim)"),
        );
    }
    let path = dir.join(format!("adapter.{lang}.safetensors"));
    if !path.is_file() {
        let langs = adapter_languages(dir);
        return file_err(
            &path,
            format!(
                "no adapter for language {lang:?} in this folder ({})",
                if langs.is_empty() {
                    "it has no adapter.LANG.safetensors files".to_string()
                } else {
                    format!("it has adapters for {}", langs.join(", "))
                }
            ),
        );
    }
    let names = ck.overlay(&path)?;
    let want = adapter_names(config);
    if let Some(n) = names.iter().find(|n| !want.contains(n)) {
        return file_err(
            &path,
            format!("has {n}, which is no adapter or head weight"),
        );
    }
    if let Some(n) = want.iter().find(|n| !names.contains(n)) {
        return file_err(&path, format!("lacks {n}"));
    }
    Ok(())
}
