//! The model's hyper-parameters, read from a Hugging Face `config.json` (`Wav2Vec2Config`).

use crate::error::{file_err, Result};
use crate::ops::activation::Act;
use serde::Deserialize;
use std::path::Path;

/// The `Wav2Vec2Config` fields the model uses, with HF's defaults. Unknown fields are ignored
/// here but kept in `raw`, so an exported `config.json` carries them through.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct Config {
    pub model_type: String,
    pub architectures: Option<Vec<String>>,
    pub vocab_size: usize,
    pub pad_token_id: Option<usize>,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub hidden_dropout: f32,
    pub activation_dropout: f32,
    pub attention_dropout: f32,
    pub feat_proj_dropout: f32,
    pub final_dropout: f32,
    pub layerdrop: f32,
    pub initializer_range: f32,
    pub layer_norm_eps: f32,
    pub feat_extract_norm: String,
    pub feat_extract_activation: String,
    pub conv_dim: Vec<usize>,
    pub conv_stride: Vec<usize>,
    pub conv_kernel: Vec<usize>,
    pub conv_bias: bool,
    pub num_conv_pos_embeddings: usize,
    pub num_conv_pos_embedding_groups: usize,
    pub do_stable_layer_norm: bool,
    pub apply_spec_augment: bool,
    pub mask_time_prob: f32,
    pub mask_time_length: usize,
    pub mask_time_min_masks: usize,
    pub mask_feature_prob: f32,
    pub mask_feature_length: usize,
    pub mask_feature_min_masks: usize,
    pub ctc_loss_reduction: String,
    pub ctc_zero_infinity: bool,
    pub add_adapter: bool,
    pub adapter_attn_dim: Option<usize>,
    /// The whole JSON object as read.
    #[serde(skip)]
    pub raw: serde_json::Map<String, serde_json::Value>,
}

impl Default for Config {
    fn default() -> Self {
        // HF Wav2Vec2Config's defaults (the wav2vec2-base shape).
        Config {
            model_type: "wav2vec2".into(),
            architectures: None,
            vocab_size: 32,
            pad_token_id: Some(0),
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout: 0.1,
            activation_dropout: 0.1,
            attention_dropout: 0.1,
            feat_proj_dropout: 0.0,
            final_dropout: 0.1,
            layerdrop: 0.1,
            initializer_range: 0.02,
            layer_norm_eps: 1e-5,
            feat_extract_norm: "group".into(),
            feat_extract_activation: "gelu".into(),
            conv_dim: vec![512; 7],
            conv_stride: vec![5, 2, 2, 2, 2, 2, 2],
            conv_kernel: vec![10, 3, 3, 3, 3, 2, 2],
            conv_bias: false,
            num_conv_pos_embeddings: 128,
            num_conv_pos_embedding_groups: 16,
            do_stable_layer_norm: false,
            apply_spec_augment: true,
            mask_time_prob: 0.05,
            mask_time_length: 10,
            mask_time_min_masks: 2,
            mask_feature_prob: 0.0,
            mask_feature_length: 10,
            mask_feature_min_masks: 0,
            ctc_loss_reduction: "sum".into(),
            ctc_zero_infinity: false,
            add_adapter: false,
            adapter_attn_dim: None,
            raw: Default::default(),
        }
    }
}

/// How the feature encoder's convolutions are normalised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvNorm {
    /// GroupNorm (one group per channel) after the first conv only: wav2vec2-base.
    Group,
    /// LayerNorm over channels after every conv: large / XLSR.
    Layer,
}

/// The key whose value holds 1-based `line`, `column` of JSON `text`: the last `"key":`
/// before that point (a config is flat, so that is the field a type error is about).
fn field_at(text: &str, line: usize, column: usize) -> Option<String> {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    let end = (start + column).min(text.len());
    let before = text.get(..end)?;
    let mut rest = before;
    while let Some(colon) = rest.rfind(':') {
        let key = rest[..colon].trim_end();
        if let Some(k) = key.strip_suffix('"') {
            if let Some(open) = k.rfind('"') {
                return Some(k[open + 1..].to_string());
            }
        }
        rest = &rest[..colon];
    }
    None
}

impl Config {
    /// Reads and validates `config.json`.
    pub fn load(path: &Path) -> Result<Config> {
        // A FIFO or device under the name would block the read forever.
        if path.exists() && !path.is_file() {
            return file_err(path, "is not a regular file");
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return file_err(path, format!("cannot read model config: {e}")),
        };
        Config::from_json(&text).or_else(|e| match e {
            crate::Error::File { msg, .. } => file_err(path, msg),
            e => Err(e),
        })
    }

    /// Parses and validates a config from JSON text.
    pub fn from_json(text: &str) -> Result<Config> {
        let value: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return file_err("config.json", format!("not valid JSON: {e}")),
        };
        let Some(raw) = value.as_object().cloned() else {
            return file_err("config.json", "not a JSON object");
        };
        // Parsed from the text, not the value, so that an error knows where it is, and so
        // which field it is in.
        let mut c: Config = match serde_json::from_str(text) {
            Ok(c) => c,
            Err(e) => {
                let field = field_at(text, e.line(), e.column())
                    .map_or(String::new(), |f| format!("{f}: "));
                return file_err("config.json", format!("not a wav2vec2 config: {field}{e}"));
            }
        };
        c.raw = raw;
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<()> {
        let bad = |msg: String| file_err("config.json", msg);
        if self.model_type != "wav2vec2" {
            return bad(format!(
                "model_type is {:?}, but xlsr runs wav2vec2 models (wav2vec2-base/large, XLSR-53, XLS-R)",
                self.model_type
            ));
        }
        if self.add_adapter {
            return bad(
                "add_adapter (a conv adapter after the encoder) is not supported; MMS attention \
                 adapters (adapter_attn_dim) are"
                    .into(),
            );
        }
        if self.adapter_attn_dim == Some(0) {
            return bad("adapter_attn_dim is 0".into());
        }
        let n = self.conv_dim.len();
        if n == 0 || self.conv_stride.len() != n || self.conv_kernel.len() != n {
            return bad(format!(
                "conv_dim, conv_stride and conv_kernel must have the same non-zero length, got {}, {}, {}",
                n,
                self.conv_stride.len(),
                self.conv_kernel.len()
            ));
        }
        for (field, list) in [
            ("conv_dim", &self.conv_dim),
            ("conv_stride", &self.conv_stride),
            ("conv_kernel", &self.conv_kernel),
        ] {
            if let Some(i) = list.iter().position(|&x| x == 0) {
                return bad(format!("{field}[{i}] is 0; every entry must be at least 1"));
            }
        }
        // A frame is `product(conv_stride)` samples (320 in wav2vec2) and needs
        // `min_samples()` (400); past 2^24 (17 minutes of audio) the config is corrupt, and
        // the products would overflow further on.
        const MAX_SPAN: usize = 1 << 24;
        let stride = self
            .conv_stride
            .iter()
            .try_fold(1usize, |a, &s| a.checked_mul(s));
        if stride.is_none_or(|s| s > MAX_SPAN) {
            return bad(format!(
                "conv_stride {:?}: a frame would span more than {MAX_SPAN} samples (wav2vec2: 320)",
                self.conv_stride
            ));
        }
        if self.min_samples() > MAX_SPAN {
            return bad(format!(
                "conv_kernel {:?}: a frame would need more than {MAX_SPAN} samples (wav2vec2: 400)",
                self.conv_kernel
            ));
        }
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_conv_pos_embeddings", self.num_conv_pos_embeddings),
        ] {
            if v == 0 {
                return bad(format!("{field} is 0; it must be at least 1"));
            }
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return bad(format!(
                "layer_norm_eps is {}; it must be a finite number > 0",
                self.layer_norm_eps
            ));
        }
        if !(self.initializer_range.is_finite() && self.initializer_range >= 0.0) {
            return bad(format!(
                "initializer_range is {}; it must be a finite number >= 0",
                self.initializer_range
            ));
        }
        for (field, p) in [
            ("hidden_dropout", self.hidden_dropout),
            ("activation_dropout", self.activation_dropout),
            ("attention_dropout", self.attention_dropout),
            ("feat_proj_dropout", self.feat_proj_dropout),
            ("final_dropout", self.final_dropout),
            ("layerdrop", self.layerdrop),
            ("mask_time_prob", self.mask_time_prob),
            ("mask_feature_prob", self.mask_feature_prob),
        ] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!(
                    "{field} is {p}; it must be a probability in [0, 1)"
                ));
            }
        }
        for (field, prob, len) in [
            (
                "mask_time_length",
                self.mask_time_prob,
                self.mask_time_length,
            ),
            (
                "mask_feature_length",
                self.mask_feature_prob,
                self.mask_feature_length,
            ),
        ] {
            if prob > 0.0 && len == 0 {
                return bad(format!("{field} is 0; masking needs spans of at least 1"));
            }
        }
        if !matches!(self.ctc_loss_reduction.as_str(), "mean" | "sum" | "none") {
            return bad(format!(
                "ctc_loss_reduction is {:?}; expected \"mean\", \"sum\" or \"none\"",
                self.ctc_loss_reduction
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return bad(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_conv_pos_embedding_groups == 0
            || !self
                .hidden_size
                .is_multiple_of(self.num_conv_pos_embedding_groups)
        {
            return bad(format!(
                "hidden_size {} is not divisible by num_conv_pos_embedding_groups {}",
                self.hidden_size, self.num_conv_pos_embedding_groups
            ));
        }
        self.conv_norm()?;
        for name in [&self.hidden_act, &self.feat_extract_activation] {
            if Act::from_hf(name).is_none() {
                return bad(format!(
                    "activation {name:?} is not supported (gelu, relu, gelu_new, swish)"
                ));
            }
        }
        if self.pad_token_id.unwrap_or(0) >= self.vocab_size {
            return bad(format!(
                "pad_token_id {:?} is outside the vocabulary of {}",
                self.pad_token_id, self.vocab_size
            ));
        }
        Ok(())
    }

    /// The feature encoder's normalisation.
    pub fn conv_norm(&self) -> Result<ConvNorm> {
        match self.feat_extract_norm.as_str() {
            "group" => Ok(ConvNorm::Group),
            "layer" => Ok(ConvNorm::Layer),
            other => file_err(
                "config.json",
                format!("feat_extract_norm is {other:?}, expected \"group\" or \"layer\""),
            ),
        }
    }

    /// Activation of the feed-forward blocks.
    pub fn hidden_act(&self) -> Act {
        Act::from_hf(&self.hidden_act).unwrap_or(Act::Gelu)
    }

    /// Activation of the conv feature encoder and positional conv.
    pub fn conv_act(&self) -> Act {
        Act::from_hf(&self.feat_extract_activation).unwrap_or(Act::Gelu)
    }

    /// The CTC blank: the pad token.
    pub fn blank(&self) -> usize {
        self.pad_token_id.unwrap_or(0)
    }

    /// The fewest audio samples that make one frame (400 for wav2vec2's encoder).
    pub fn min_samples(&self) -> usize {
        self.conv_kernel
            .iter()
            .zip(&self.conv_stride)
            .rev()
            .fold(1usize, |n, (&k, &s)| {
                (n - 1).saturating_mul(s).saturating_add(k)
            })
    }

    /// Frames the feature encoder makes from `samples` audio samples.
    pub fn frames(&self, samples: usize) -> usize {
        crate::data::conv_frames(
            samples,
            self.conv_kernel
                .iter()
                .copied()
                .zip(self.conv_stride.iter().copied()),
        )
    }

    /// The XLSR-53 shape (`facebook/wav2vec2-large-xlsr-53`) with a vocabulary of `vocab` tokens.
    pub fn xlsr53(vocab: usize) -> Config {
        let mut c = Config {
            vocab_size: vocab,
            pad_token_id: Some(vocab.saturating_sub(1)),
            hidden_size: 1024,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            intermediate_size: 4096,
            feat_extract_norm: "layer".into(),
            conv_bias: true,
            do_stable_layer_norm: true,
            mask_time_prob: 0.075,
            ..Config::default()
        };
        c.raw = serde_json::to_value(c.to_json_fields())
            .ok()
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        c
    }

    /// facebook/mms-1b-all's shape (48 pre-LN layers, 1280 wide, attention adapters of 16)
    /// with a CTC head of `vocab` tokens: for counting an adapter-only step.
    pub fn mms_1b(vocab: usize) -> Config {
        let mut c = Config::xlsr53(vocab);
        c.hidden_size = 1280;
        c.num_hidden_layers = 48;
        c.intermediate_size = 5120;
        c.adapter_attn_dim = Some(16);
        c.mask_time_prob = 0.05;
        c.raw = serde_json::to_value(c.to_json_fields())
            .ok()
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        c
    }

    /// The fields this struct knows, as JSON (merged over `raw` when saving).
    pub fn to_json_fields(&self) -> serde_json::Value {
        serde_json::json!({
            "model_type": self.model_type,
            "architectures": ["Wav2Vec2ForCTC"],
            "vocab_size": self.vocab_size,
            "pad_token_id": self.pad_token_id,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act,
            "hidden_dropout": self.hidden_dropout,
            "activation_dropout": self.activation_dropout,
            "attention_dropout": self.attention_dropout,
            "feat_proj_dropout": self.feat_proj_dropout,
            "final_dropout": self.final_dropout,
            "layerdrop": self.layerdrop,
            "initializer_range": self.initializer_range,
            "layer_norm_eps": self.layer_norm_eps,
            "feat_extract_norm": self.feat_extract_norm,
            "feat_extract_activation": self.feat_extract_activation,
            "conv_dim": self.conv_dim,
            "conv_stride": self.conv_stride,
            "conv_kernel": self.conv_kernel,
            "conv_bias": self.conv_bias,
            "num_feat_extract_layers": self.conv_dim.len(),
            "num_conv_pos_embeddings": self.num_conv_pos_embeddings,
            "num_conv_pos_embedding_groups": self.num_conv_pos_embedding_groups,
            "do_stable_layer_norm": self.do_stable_layer_norm,
            "apply_spec_augment": self.apply_spec_augment,
            "mask_time_prob": self.mask_time_prob,
            "mask_time_length": self.mask_time_length,
            "mask_time_min_masks": self.mask_time_min_masks,
            "mask_feature_prob": self.mask_feature_prob,
            "mask_feature_length": self.mask_feature_length,
            "mask_feature_min_masks": self.mask_feature_min_masks,
            "ctc_loss_reduction": self.ctc_loss_reduction,
            "ctc_zero_infinity": self.ctc_zero_infinity,
            "add_adapter": false,
            "adapter_attn_dim": self.adapter_attn_dim,
        })
    }

    /// `config.json` text: the original object with this struct's fields written over it.
    pub fn to_json(&self) -> String {
        let mut out = self.raw.clone();
        if let serde_json::Value::Object(fields) = self.to_json_fields() {
            out.extend(fields);
        }
        serde_json::to_string_pretty(&serde_json::Value::Object(out)).unwrap_or_default()
    }
}
