//! `xlsr train`: the command line of a training run. Defaults come from
//! [`TrainOptions::default`]; a JSON config (`--config train.json`) uses the same names, and
//! options given on the command line win.

use crate::train::TrainOptions;
use std::path::PathBuf;

/// Command-line arguments of `xlsr train`.
#[derive(clap::Args, Clone, Debug)]
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
    #[arg(long, default_value_t = TrainOptions::default().batch_size)]
    pub batch_size: usize,
    /// Batches whose gradients are summed per optimiser step
    #[arg(long, default_value_t = TrainOptions::default().grad_accum)]
    pub grad_accum: usize,
    /// Peak learning rate (1e-3 with --adapter-only, as the MMS recipe)
    #[arg(long, default_value_t = TrainOptions::default().learning_rate,
          default_value_if("adapter_only", "true", "1e-3"))]
    pub learning_rate: f32,
    /// Linear warm-up steps, then linear decay to 0 (100 with --adapter-only)
    #[arg(long, default_value_t = TrainOptions::default().warmup_steps,
          default_value_if("adapter_only", "true", "100"))]
    pub warmup_steps: u64,
    /// Passes over the training set
    #[arg(long, default_value_t = TrainOptions::default().epochs)]
    pub epochs: f64,
    /// Total optimiser steps (overrides --epochs)
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Evaluate every N steps (0: only at the end)
    #[arg(long, default_value_t = TrainOptions::default().eval_steps)]
    pub eval_steps: u64,
    /// Save a checkpoint every N steps (0: only the final model)
    #[arg(long, default_value_t = TrainOptions::default().save_steps)]
    pub save_steps: u64,
    /// Checkpoints kept (older ones are deleted)
    #[arg(long, default_value_t = TrainOptions::default().save_total_limit)]
    pub save_total_limit: usize,
    /// Log the training loss every N steps
    #[arg(long, default_value_t = TrainOptions::default().logging_steps)]
    pub logging_steps: u64,
    /// Seed of batching, dropout, SpecAugment, LayerDrop and new weights
    #[arg(long, default_value_t = TrainOptions::default().seed)]
    pub seed: u64,
    /// fp16 mixed precision: f16 matmul inputs with f32 accumulation and master weights,
    /// dynamic loss scaling (needs SHADER_F16; otherwise f32 with a note)
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = TrainOptions::default().fp16)]
    pub fp16: bool,
    /// AdamW weight decay (not on biases and norms)
    #[arg(long, default_value_t = TrainOptions::default().weight_decay)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping)
    #[arg(long, default_value_t = TrainOptions::default().max_grad_norm)]
    pub max_grad_norm: f32,
    /// Model override: attention-probability dropout (0 with --adapter-only)
    #[arg(long, default_value_t = TrainOptions::default().attention_dropout,
          default_value_if("adapter_only", "true", "0"))]
    pub attention_dropout: f32,
    /// Model override: dropout on hidden states (0 with --adapter-only)
    #[arg(long, default_value_t = TrainOptions::default().hidden_dropout,
          default_value_if("adapter_only", "true", "0"))]
    pub hidden_dropout: f32,
    /// Model override: dropout after the feature projection
    #[arg(long, default_value_t = TrainOptions::default().feat_proj_dropout)]
    pub feat_proj_dropout: f32,
    /// Model override: SpecAugment time-mask probability
    #[arg(long, default_value_t = TrainOptions::default().mask_time_prob)]
    pub mask_time_prob: f32,
    /// Model override: LayerDrop probability (0 with --adapter-only)
    #[arg(long, default_value_t = TrainOptions::default().layerdrop,
          default_value_if("adapter_only", "true", "0"))]
    pub layerdrop: f32,
    /// Keep the conv feature encoder frozen
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = TrainOptions::default().freeze_feature_encoder, action = clap::ArgAction::Set)]
    pub freeze_feature_encoder: bool,
    /// With a fine-tuned --model: train a fresh CTC head on the corpus's vocabulary instead of
    /// continuing with the model's head and vocabulary (the corpus is then encoded with it)
    #[arg(long)]
    pub new_head: bool,
    /// MMS model (adapter_attn_dim): the language whose adapter, head and vocabulary to train
    /// (from adapter.LANG.safetensors; a new adapter and head when the model has none for it)
    #[arg(long)]
    pub target_lang: Option<String>,
    /// MMS: train only the adapter layers and the head, with the HF recipe's defaults
    /// (learning rate 1e-3, 100 warm-up steps, attention and hidden dropout and LayerDrop 0)
    #[arg(long, requires = "target_lang")]
    pub adapter_only: bool,
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
    #[arg(long, default_value_t = TrainOptions::default().eval_split)]
    pub eval_split: String,
    /// Continue from the newest checkpoint in --out
    #[arg(long)]
    pub resume: bool,
    /// Replace the earlier run in --out (its checkpoints, final model, metrics.jsonl and
    /// training.svg); without it (or --resume) a used run folder is refused
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// With --resume: use the command line's options where they differ from the checkpoint's
    /// (by default the checkpoint's are kept, and the differences are listed)
    #[arg(long = "override", requires = "resume")]
    pub r#override: bool,
    /// Read options from this JSON file (same names; the command line wins)
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl From<TrainArgs> for TrainOptions {
    fn from(a: TrainArgs) -> TrainOptions {
        TrainOptions {
            model: a.model,
            data: a.data,
            out: a.out,
            batch_size: a.batch_size,
            grad_accum: a.grad_accum,
            learning_rate: a.learning_rate,
            warmup_steps: a.warmup_steps,
            epochs: a.epochs,
            max_steps: a.max_steps,
            eval_steps: a.eval_steps,
            save_steps: a.save_steps,
            save_total_limit: a.save_total_limit,
            logging_steps: a.logging_steps,
            seed: a.seed,
            fp16: a.fp16,
            weight_decay: a.weight_decay,
            max_grad_norm: a.max_grad_norm,
            attention_dropout: a.attention_dropout,
            hidden_dropout: a.hidden_dropout,
            feat_proj_dropout: a.feat_proj_dropout,
            mask_time_prob: a.mask_time_prob,
            layerdrop: a.layerdrop,
            freeze_feature_encoder: a.freeze_feature_encoder,
            new_head: a.new_head,
            target_lang: a.target_lang,
            adapter_only: a.adapter_only,
            gradient_checkpointing: a.gradient_checkpointing,
            max_batch_seconds: a.max_batch_seconds,
            max_train_samples: a.max_train_samples,
            max_eval_samples: a.max_eval_samples,
            eval_split: a.eval_split,
            resume: a.resume,
            overwrite: a.overwrite,
            r#override: a.r#override,
        }
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
    // The options `xlsr train` has, to name an unknown key as the file's, and to tell flags
    // (`"new_head": true` is `--new-head`) from options that take a value.
    let cmd = <TrainArgs as clap::Args>::augment_args(clap::Command::new("train"));
    let mut out = Vec::new();
    for (k, v) in obj {
        let name = k.replace('_', "-");
        if name == "config" {
            anyhow::bail!(
                "{}: a config file cannot name another (config)",
                path.display()
            );
        }
        let Some(arg) = cmd.get_arguments().find(|a| a.get_long() == Some(&*name)) else {
            anyhow::bail!(
                "{}: {k} is not an option of xlsr train (see xlsr train --help; _ for -)",
                path.display()
            );
        };
        match v {
            serde_json::Value::Null => {}
            serde_json::Value::Bool(b) if !arg.get_action().takes_values() => {
                if *b {
                    out.push(format!("--{name}"));
                }
            }
            serde_json::Value::Bool(b) => out.push(format!("--{name}={b}")),
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
