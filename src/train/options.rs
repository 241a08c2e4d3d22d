//! The options of a training run: HF `TrainingArguments` in kebab case, with the seed
//! notebook's values as defaults. Saved with every checkpoint, so `--resume` can say which
//! differ; `xlsr train` fills them from the command line (`cli::TrainArgs`).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything a training run takes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TrainOptions {
    /// Model folder: a pretraining checkpoint (a new CTC head is made for the corpus's
    /// vocabulary) or a fine-tuned one.
    pub model: PathBuf,
    /// Corpus: a folder written by `xlsr prepare`, or a Common Voice folder (prepared into
    /// RUN_DIR/prepared first).
    pub data: PathBuf,
    /// Run folder: checkpoints, final model, metrics.jsonl, training.svg.
    pub out: PathBuf,
    /// Utterances per batch.
    pub batch_size: usize,
    /// Batches whose gradients are summed per optimiser step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub learning_rate: f32,
    /// Linear warm-up steps, then linear decay to 0.
    pub warmup_steps: u64,
    /// Passes over the training set.
    pub epochs: f64,
    /// Total optimiser steps (overrides --epochs).
    pub max_steps: Option<u64>,
    /// Evaluate every N steps (0: only at the end).
    pub eval_steps: u64,
    /// Save a checkpoint every N steps (0: only the final model).
    pub save_steps: u64,
    /// Checkpoints kept (older ones are deleted).
    pub save_total_limit: usize,
    /// Log the training loss every N steps.
    pub logging_steps: u64,
    /// Seed of batching, dropout, SpecAugment, LayerDrop and new weights.
    pub seed: u64,
    /// fp16 mixed precision: f16 matmul inputs with f32 accumulation and master weights,
    /// dynamic loss scaling (needs SHADER_F16; otherwise f32 with a note).
    pub fp16: bool,
    /// AdamW weight decay (not on biases and norms).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_grad_norm: f32,
    /// Model override: attention-probability dropout.
    pub attention_dropout: f32,
    /// Model override: dropout on hidden states.
    pub hidden_dropout: f32,
    /// Model override: dropout after the feature projection.
    pub feat_proj_dropout: f32,
    /// Model override: SpecAugment time-mask probability.
    pub mask_time_prob: f32,
    /// Model override: LayerDrop probability.
    pub layerdrop: f32,
    /// Keep the conv feature encoder frozen.
    pub freeze_feature_encoder: bool,
    /// With a fine-tuned model: a fresh CTC head for the corpus's vocabulary instead of
    /// continuing with the model's head and vocabulary.
    #[serde(default)]
    pub new_head: bool,
    /// MMS: the language whose adapter, head and vocabulary to train (a new adapter and head
    /// for a language the model has none for); its `adapter.LANG.safetensors` is written
    /// with every checkpoint.
    #[serde(default)]
    pub target_lang: Option<String>,
    /// MMS: train only the adapter layers and the head, the rest frozen.
    #[serde(default)]
    pub adapter_only: bool,
    /// Recompute each encoder layer in the backward pass instead of keeping its activations
    /// (default: on for models of 12 or more layers, as the notebook does for XLSR-53).
    pub gradient_checkpointing: Option<bool>,
    /// Cap on padded audio seconds per batch (batch size x longest clip).
    pub max_batch_seconds: Option<f32>,
    /// Train on the first N training utterances only (all by default).
    pub max_train_samples: Option<usize>,
    /// Evaluate on the first N utterances of the evaluation split only (all by default).
    pub max_eval_samples: Option<usize>,
    /// Split evaluated during training: test (held out) or train (to watch it fit).
    pub eval_split: String,
    /// Continue from the newest checkpoint in --out.
    pub resume: bool,
    /// Replace the earlier run in --out (its checkpoints, final model, metrics.jsonl and
    /// training.svg); without it (or --resume) a used run folder is refused.
    #[serde(default)]
    pub overwrite: bool,
    /// With --resume: use the command line's options where they differ from the checkpoint's
    /// (by default the checkpoint's are kept, and the differences are listed).
    #[serde(default)]
    pub r#override: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            model: PathBuf::new(),
            data: PathBuf::new(),
            out: PathBuf::new(),
            batch_size: 16,
            grad_accum: 2,
            learning_rate: 3e-4,
            warmup_steps: 500,
            epochs: 30.0,
            max_steps: None,
            eval_steps: 400,
            save_steps: 400,
            save_total_limit: 2,
            logging_steps: 25,
            seed: 42,
            fp16: false,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            attention_dropout: 0.1,
            hidden_dropout: 0.1,
            feat_proj_dropout: 0.0,
            mask_time_prob: 0.05,
            layerdrop: 0.1,
            freeze_feature_encoder: true,
            new_head: false,
            target_lang: None,
            adapter_only: false,
            gradient_checkpointing: None,
            max_batch_seconds: None,
            max_train_samples: None,
            max_eval_samples: None,
            eval_split: "test".into(),
            resume: false,
            overwrite: false,
            r#override: false,
        }
    }
}

impl TrainOptions {
    /// A run of `model` on `data` into `out` with every other option at its default (the
    /// notebook's values).
    pub fn new(model: &Path, data: &Path, out: &Path) -> TrainOptions {
        TrainOptions {
            model: model.to_path_buf(),
            data: data.to_path_buf(),
            out: out.to_path_buf(),
            ..TrainOptions::default()
        }
    }

    /// Whether gradient checkpointing is on for a model of `layers` encoder layers: as asked,
    /// or by default for 12 layers and more (the notebook turns it on for XLSR-53).
    pub fn checkpointing(&self, layers: usize) -> bool {
        self.gradient_checkpointing.unwrap_or(layers >= 12)
    }

    /// These options with `--model` and `--data` made absolute, as a checkpoint keeps them: a
    /// run resumed from another folder must not find another corpus under a relative name.
    pub fn absolute(&self) -> TrainOptions {
        let abs = |p: &PathBuf| {
            std::fs::canonicalize(p)
                .or_else(|_| std::path::absolute(p))
                .unwrap_or(p.clone())
        };
        TrainOptions {
            model: abs(&self.model),
            data: abs(&self.data),
            ..self.clone()
        }
    }

    /// Checks every numeric option (finite, in range) before anything runs; the error names
    /// the flag.
    pub fn validate(&self) -> crate::error::Result<()> {
        let bad = |flag: &str, v: String, want: &str| -> crate::error::Result<()> {
            Err(crate::error::Error::Usage(format!("--{flag} {v}: {want}")))
        };
        let count = |flag: &str, v: u64| {
            if v == 0 {
                bad(flag, v.to_string(), "must be at least 1")
            } else {
                Ok(())
            }
        };
        count("batch-size", self.batch_size as u64)?;
        count("grad-accum", self.grad_accum as u64)?;
        // The language names a file (adapter.LANG.safetensors) written after training: a
        // path-like one would fail only then, with the run's result lost.
        if let Some(lang) = &self.target_lang {
            let ok = !lang.is_empty()
                && lang
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return bad(
                    "target-lang",
                    format!("{lang:?}"),
                    "a language code is letters, digits, - and _ (as MMS's eng, cmn-script_simplified)",
                );
            }
        }
        count("logging-steps", self.logging_steps)?;
        if let Some(n) = self.max_steps {
            if n == 0 {
                return bad(
                    "max-steps",
                    "0".into(),
                    "must be at least 1 (0 would save an untrained model)",
                );
            }
        }
        if let Some(n) = self.max_train_samples {
            count("max-train-samples", n as u64)?;
        }
        if let Some(n) = self.max_eval_samples {
            count("max-eval-samples", n as u64)?;
        }
        if self.save_total_limit == 0 {
            return bad(
                "save-total-limit",
                "0".into(),
                "must be at least 1 (use --save-steps 0 to save only the final model)",
            );
        }
        let non_negative = |flag: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                bad(flag, v.to_string(), "must be a finite number >= 0")
            }
        };
        non_negative("learning-rate", self.learning_rate as f64)?;
        non_negative("weight-decay", self.weight_decay)?;
        non_negative("max-grad-norm", self.max_grad_norm as f64)?;
        if !(self.epochs.is_finite() && self.epochs > 0.0) {
            return bad(
                "epochs",
                self.epochs.to_string(),
                "must be a finite number > 0",
            );
        }
        if let Some(s) = self.max_batch_seconds {
            if !(s.is_finite() && s > 0.0) {
                return bad(
                    "max-batch-seconds",
                    s.to_string(),
                    "must be a finite number > 0",
                );
            }
        }
        for (flag, p) in [
            ("attention-dropout", self.attention_dropout),
            ("hidden-dropout", self.hidden_dropout),
            ("feat-proj-dropout", self.feat_proj_dropout),
            ("mask-time-prob", self.mask_time_prob),
            ("layerdrop", self.layerdrop),
        ] {
            if !(0.0..1.0).contains(&p) {
                return bad(flag, p.to_string(), "must be a probability in [0, 1)");
            }
        }
        if !matches!(self.eval_split.as_str(), "test" | "train") {
            return bad(
                "eval-split",
                self.eval_split.clone(),
                "expected test or train",
            );
        }
        Ok(())
    }
}
