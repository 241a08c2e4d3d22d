//! `xlsr train` options: HF `TrainingArguments` names in kebab case, with the seed notebook's
//! values as defaults. A JSON config (`--config train.json`) uses the same names; options
//! given on the command line win.

use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Everything `xlsr train` takes.
#[derive(Args, Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TrainArgs {
    /// Model folder: a pretraining checkpoint (a new CTC head is made for the corpus's
    /// vocabulary) or a fine-tuned one
    #[arg(long)]
    pub model: PathBuf,
    /// Corpus: a folder written by `xlsr prepare`, or a Common Voice folder (prepared into
    /// RUN_DIR/prepared first)
    #[arg(long)]
    pub data: PathBuf,
    /// Run folder: checkpoints, final model, metrics.jsonl, training.svg
    #[arg(long)]
    pub out: PathBuf,
    /// Utterances per batch
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Batches whose gradients are summed per optimiser step
    #[arg(long, default_value_t = 2)]
    pub grad_accum: usize,
    /// Peak learning rate
    #[arg(long, default_value_t = 3e-4)]
    pub learning_rate: f32,
    /// Linear warm-up steps, then linear decay to 0
    #[arg(long, default_value_t = 500)]
    pub warmup_steps: u64,
    /// Passes over the training set
    #[arg(long, default_value_t = 30.0)]
    pub epochs: f64,
    /// Total optimiser steps (overrides --epochs)
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Evaluate every N steps (0: only at the end)
    #[arg(long, default_value_t = 400)]
    pub eval_steps: u64,
    /// Save a checkpoint every N steps (0: only the final model)
    #[arg(long, default_value_t = 400)]
    pub save_steps: u64,
    /// Checkpoints kept (older ones are deleted)
    #[arg(long, default_value_t = 2)]
    pub save_total_limit: usize,
    /// Log the training loss every N steps
    #[arg(long, default_value_t = 25)]
    pub logging_steps: u64,
    /// Seed of batching, dropout, SpecAugment, LayerDrop and new weights
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// fp16 mixed precision: f16 matmul inputs with f32 accumulation and master weights,
    /// dynamic loss scaling (needs SHADER_F16; otherwise f32 with a note)
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false)]
    pub fp16: bool,
    /// AdamW weight decay (not on biases and norms)
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping)
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f32,
    /// Model override: attention-probability dropout
    #[arg(long, default_value_t = 0.1)]
    pub attention_dropout: f32,
    /// Model override: dropout on hidden states
    #[arg(long, default_value_t = 0.1)]
    pub hidden_dropout: f32,
    /// Model override: dropout after the feature projection
    #[arg(long, default_value_t = 0.0)]
    pub feat_proj_dropout: f32,
    /// Model override: SpecAugment time-mask probability
    #[arg(long, default_value_t = 0.05)]
    pub mask_time_prob: f32,
    /// Model override: LayerDrop probability
    #[arg(long, default_value_t = 0.1)]
    pub layerdrop: f32,
    /// Keep the conv feature encoder frozen
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = true, action = clap::ArgAction::Set)]
    pub freeze_feature_encoder: bool,
    /// Recompute each encoder layer in the backward pass instead of keeping its activations
    /// (default: on for models of 12 or more layers, as the notebook does for XLSR-53)
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub gradient_checkpointing: Option<bool>,
    /// Cap on padded audio seconds per batch (batch size x longest clip)
    #[arg(long)]
    pub max_batch_seconds: Option<f32>,
    /// Train on the first N training utterances only (all by default)
    #[arg(long)]
    pub max_train_samples: Option<usize>,
    /// Evaluate on the first N utterances of the evaluation split only (all by default)
    #[arg(long)]
    pub max_eval_samples: Option<usize>,
    /// Split evaluated during training: test (held out) or train (to watch it fit)
    #[arg(long, default_value = "test")]
    pub eval_split: String,
    /// Continue from the newest checkpoint in --out
    #[arg(long)]
    pub resume: bool,
    /// Replace the earlier run in --out (its checkpoints, final model, metrics.jsonl and
    /// training.svg); without it (or --resume) a used run folder is refused
    #[arg(long, conflicts_with = "resume")]
    #[serde(default)]
    pub overwrite: bool,
    /// With --resume: use the command line's options where they differ from the checkpoint's
    /// (by default the checkpoint's are kept, and the differences are listed)
    #[arg(long = "override", requires = "resume")]
    #[serde(default)]
    pub r#override: bool,
    /// Read options from this JSON file (same names; the command line wins)
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

impl TrainArgs {
    /// Whether gradient checkpointing is on for a model of `layers` encoder layers: as asked,
    /// or by default for 12 layers and more (the notebook turns it on for XLSR-53).
    pub fn checkpointing(&self, layers: usize) -> bool {
        self.gradient_checkpointing.unwrap_or(layers >= 12)
    }

    /// `xlsr train --model MODEL --data DATA --out OUT` with every other option at its default
    /// (the notebook's values).
    pub fn new(
        model: &std::path::Path,
        data: &std::path::Path,
        out: &std::path::Path,
    ) -> TrainArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: TrainArgs,
        }
        let argv = [
            "train".as_ref(),
            "--model".as_ref(),
            model.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ];
        <Cli as clap::Parser>::parse_from(argv).args
    }
}

impl TrainArgs {
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

/// Turns a JSON config object into `--name value` arguments, to be parsed before the command
/// line's own so that those win.
pub fn config_args(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not valid JSON: {e}", path.display()))?;
    let Some(obj) = v.as_object() else {
        anyhow::bail!("{}: expected a JSON object of options", path.display());
    };
    let mut out = Vec::new();
    for (k, v) in obj {
        let name = k.replace('_', "-");
        if name == "config" {
            continue;
        }
        match v {
            serde_json::Value::Null => {}
            serde_json::Value::Bool(b) => {
                if matches!(name.as_str(), "resume" | "overwrite" | "override") {
                    if *b {
                        out.push(format!("--{name}"));
                    }
                } else {
                    out.push(format!("--{name}={b}"));
                }
            }
            serde_json::Value::String(s) => out.push(format!("--{name}={s}")),
            serde_json::Value::Number(n) => out.push(format!("--{name}={n}")),
            other => anyhow::bail!(
                "{}: option {k} has unsupported value {other}",
                path.display()
            ),
        }
    }
    Ok(out)
}
