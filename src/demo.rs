//! `xlsr demo`: the whole pipeline on the built-in corpus. Prepares the committed Spanish
//! espeak-ng clips (`data/demo-es`, Common Voice layout), builds a small wav2vec2 (layer-norm
//! convs, pre-LN encoder) with random weights, fine-tunes it with CTC from scratch, and shows
//! the loss and the character error rate falling. A few minutes on a CPU Vulkan driver.

use crate::data::prepare::{self, Source};
use crate::data::Prepared;
use crate::error::Result;
use crate::model::{Config, Wav2Vec2ForCtc};
use crate::train::{self, RunSummary, TrainOptions};
use crate::Gpu;
use std::path::{Path, PathBuf};

/// Options of the demo run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Optimiser steps.
    pub steps: u64,
    /// Training clips used (the corpus's first N).
    pub clips: usize,
    /// Run folder (prepared corpus, checkpoints, metrics.jsonl, training.svg, final model).
    pub out: PathBuf,
    /// Corpus (default: the built-in Spanish corpus).
    pub data: Option<PathBuf>,
    /// Evaluate (on the training clips, to watch them being learnt) every N steps.
    pub eval_steps: u64,
    /// fp16 mixed precision with loss scaling (where the adapter has f16).
    pub fp16: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            steps: 250,
            clips: 12,
            out: PathBuf::from("demo-run"),
            data: None,
            eval_steps: 50,
            fp16: false,
        }
    }
}

/// The built-in corpus.
pub fn corpus_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/demo-es"))
}

/// A small wav2vec2 for `vocab` tokens: the standard conv strides (one frame per 20 ms), thin
/// convs and a 2-layer, 128-wide pre-LN encoder. About 0.5M parameters.
pub fn small_config(vocab: usize, pad: usize) -> Config {
    Config {
        vocab_size: vocab,
        pad_token_id: Some(pad),
        hidden_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 256,
        conv_dim: vec![32; 7],
        conv_bias: true,
        feat_extract_norm: "layer".into(),
        do_stable_layer_norm: true,
        num_conv_pos_embeddings: 16,
        num_conv_pos_embedding_groups: 4,
        hidden_dropout: 0.0,
        activation_dropout: 0.0,
        attention_dropout: 0.0,
        final_dropout: 0.0,
        layerdrop: 0.0,
        mask_time_prob: 0.0,
        ctc_loss_reduction: "mean".into(),
        ctc_zero_infinity: true,
        ..Config::default()
    }
}

/// Training options for a small model learning from scratch and watched on its training clips:
/// batch 4, peak lr 3e-3 after a 10% warm-up, no dropout, LayerDrop or masking, the feature
/// encoder trained too, no checkpoints.
pub fn from_scratch_args(init: &Path, prep: &Path, out: &Path, steps: u64) -> TrainOptions {
    TrainOptions {
        batch_size: 4,
        grad_accum: 1,
        learning_rate: 3e-3,
        warmup_steps: steps / 10,
        max_steps: Some(steps),
        save_steps: 0,
        logging_steps: 10,
        seed: 0,
        attention_dropout: 0.0,
        hidden_dropout: 0.0,
        mask_time_prob: 0.0,
        layerdrop: 0.0,
        freeze_feature_encoder: false,
        eval_split: "train".into(),
        ..TrainOptions::new(init, prep, out)
    }
}

/// The demo replaces its own earlier run in `out` (it keeps `prepared/` and `init/`), and
/// nothing else: a folder holding other files is refused before anything is written.
fn check_out(out: &Path) -> Result<()> {
    let names = crate::data::corpus::out_entries(out)?;
    // What a demo killed before its training leaves counts as a demo's too.
    let before_training =
        |n: &String| matches!(n.as_str(), "prepared" | "init" | ".init.tmp" | ".lock");
    let demo = out.join("init/config.json").is_file() || names.iter().all(before_training);
    if demo {
        return Ok(());
    }
    crate::error::file_err(
        out,
        format!(
            "--out holds files that are not an earlier demo's ({}); the demo replaces its own \
             last run there, so choose a new folder",
            names.iter().take(4).cloned().collect::<Vec<_>>().join(", ")
        ),
    )
}

/// Runs the demo; returns the training run's summary.
pub fn run(gpu: &Gpu, opts: &Options) -> Result<RunSummary> {
    if opts.steps == 0 || opts.clips == 0 {
        return Err(crate::Error::Usage(format!(
            "--steps {} --clips {}: both must be at least 1",
            opts.steps, opts.clips
        )));
    }
    check_out(&opts.out)?;
    let corpus = opts.data.clone().unwrap_or_else(corpus_dir);
    let prep = opts.out.join("prepared");
    prepare::run(&prepare::Options::new(Source::common_voice(&corpus), &prep))?;
    let data = Prepared::open(&prep)?;
    let init = opts.out.join("init");
    let model = Wav2Vec2ForCtc::random(
        gpu,
        small_config(data.vocab.len(), data.vocab.pad as usize),
        0,
    )?;
    // Through a temporary folder: a kill midway never leaves an init/ that looks whole.
    let tmp = opts.out.join(".init.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    train::state::save_model(&tmp, &model, &data.vocab)?;
    drop(model);
    if init.exists() {
        std::fs::remove_dir_all(&init).or_else(|e| crate::error::file_err(&init, e.to_string()))?;
    }
    std::fs::rename(&tmp, &init).or_else(|e| crate::error::file_err(&init, e.to_string()))?;
    let targs = TrainOptions {
        eval_steps: opts.eval_steps,
        max_train_samples: Some(opts.clips),
        max_eval_samples: Some(opts.clips),
        fp16: opts.fp16,
        // The demo owns its folder (prepared/ and init/ stay): a rerun replaces its last run.
        overwrite: true,
        ..from_scratch_args(&init, &prep, &opts.out, opts.steps)
    };
    let summary = train::run(gpu, &targs)?;
    // The held-out clips: a few minutes on a dozen clips memorises them, it does not generalise.
    let (model, _) = Wav2Vec2ForCtc::load(gpu, &summary.final_dir, None, 0)?;
    let test = train::EvalOptions {
        split: crate::data::Split::Test,
        batch_size: 8,
        limit: None,
        lm: None,
    };
    let held_out = train::evaluate(&model, &data.vocab, &data, &test)?;
    println!(
        "held-out test clips: CER {:.3}, WER {:.3} on {} utterances (expected high: {} training clips)",
        held_out.cer,
        held_out.wer,
        held_out.utterances,
        opts.clips.min(data.train.len())
    );
    println!(
        "training loss {:.3} -> {:.3}; see {} (metrics.jsonl, training.svg, final/)",
        summary.losses.first().map_or(f64::NAN, |l| l.1),
        summary.losses.last().map_or(f64::NAN, |l| l.1),
        opts.out.display()
    );
    Ok(summary)
}
