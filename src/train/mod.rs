//! Fine-tuning: the seed notebook's `Trainer` run, natively. Length-grouped batches, gradient
//! accumulation, AdamW with linear warm-up and decay, global-norm clipping, SpecAugment,
//! dropout and LayerDrop (all derived from `--seed` and the step, so a resumed run repeats an
//! uninterrupted one exactly), periodic evaluation, checkpoints and the final HF model folder.

pub mod eval;
mod exchange;
pub mod interrupt;
pub mod options;
mod report;
mod setup;
pub mod state;
pub mod step;

pub use eval::{evaluate, evaluate_shared, EvalOptions, EvalResult};
pub use options::TrainOptions;
pub use setup::open_data;
pub use state::TrainerState;
pub use step::{Deferred, MicroBatch, Share, StepOptions, StepOutcome, StepReport, TrainStep};

use crate::data::audio::SAMPLE_RATE;
use crate::data::{collate, Batcher, Prepared, Split};
use crate::dist::Dist;
use crate::error::{file_err, Error, Result};
use crate::metrics::MetricsLog;
use crate::model::Wav2Vec2ForCtc;
use crate::optim::{AdamW, AdamWConfig};
use crate::rng::Rng;
use crate::{Gpu, Tensor};
use report::{print_profile, progress_bar, say};
use setup::{model_vocab, report_relabel, resumed_args};
use std::path::PathBuf;
use std::time::Instant;

/// What a finished run reports.
#[derive(Debug)]
pub struct RunSummary {
    /// The final model folder.
    pub final_dir: PathBuf,
    /// Optimiser steps taken in total.
    pub steps: u64,
    /// Steps skipped for non-finite gradients.
    pub skipped_steps: u64,
    /// Logged training losses (step, loss).
    pub losses: Vec<(u64, f64)>,
    /// The last evaluation, if the test split is not empty.
    pub eval: Option<EvalResult>,
}

/// A seed for one (step, micro-batch) derived from the run's seed.
fn derive(seed: u64, step: u64, micro: u64) -> u64 {
    Rng::new(seed ^ step.wrapping_mul(0x9E37_79B9) ^ micro.wrapping_mul(0xC2B2_AE35)).next_u64()
}

/// Runs `xlsr train` in this process alone.
pub fn run(gpu: &Gpu, args: &TrainOptions) -> Result<RunSummary> {
    run_dist(gpu, args, &Dist::single())
}

/// Runs `xlsr train` as one of `dist`'s data-parallel ranks: each takes its share of every
/// batch of `--batch-size` times the ranks, the gradients and losses are summed, and rank 0
/// alone prints, evaluates and writes (checkpoints, metrics, the final model).
pub fn run_dist(gpu: &Gpu, args: &TrainOptions, dist: &Dist) -> Result<RunSummary> {
    args.validate()?;
    let root = dist.is_root();
    // Only rank 0 speaks (the others would repeat it).
    macro_rules! note {
        ($($t:tt)*) => { if root { println!($($t)*) } };
    }
    let fp16 = args.fp16 && gpu.has_f16();
    if args.fp16 && !fp16 && root {
        eprintln!(
            "note: --fp16 needs f16 shader support (SHADER_F16), which {} lacks; training in f32",
            gpu.info().name
        );
    }
    // The folder is locked before anything in it is read (another process may be writing it).
    crate::data::corpus::out_entries(&args.out)?;
    std::fs::create_dir_all(&args.out).or_else(|e| file_err(&args.out, e.to_string()))?;
    let _lock = match root {
        true => state::lock_run_dir(&args.out)?,
        false => None,
    };
    state::check_run_dir(&args.out, args.resume, args.overwrite)?;
    let resume_from = if args.resume {
        let last = state::resume_point(&args.out)?;
        if last.is_none() && root {
            eprintln!(
                "note: --resume but no checkpoint in {}; starting fresh",
                args.out.display()
            );
        }
        last
    } else {
        None
    };
    // --resume continues the run as it was set up: the checkpoint's options, unless --override.
    let resumed;
    let args = match &resume_from {
        Some(dir) => {
            resumed = resumed_args(args, dir);
            resumed.validate()?;
            &resumed
        }
        None => args,
    };
    // Rank 0 prepares a Common Voice folder; the others open what it wrote.
    let mut data = if root {
        let data = open_data(&args.data, &args.out);
        dist.barrier();
        data?
    } else {
        dist.barrier();
        match args.data.join("index.json").is_file() {
            true => Prepared::open(&args.data)?,
            false => Prepared::open(&args.out.join("prepared"))?,
        }
    };
    if data.train.is_empty() {
        return file_err(
            &args.data,
            format!(
                "no usable training clips ({} skipped; see the warnings above or `xlsr prepare`)",
                eval::skipped_in(&data, Split::Train)
            ),
        );
    }
    let eval_split = match args.eval_split.as_str() {
        "test" => Split::Test,
        "train" => Split::Train,
        other => {
            return Err(Error::Usage(format!(
                "--eval-split {other}: expected test or train"
            )))
        }
    };
    if data.split(eval_split).is_empty() && root {
        eprintln!(
            "warning: the {} split of {} has no usable clips: no evaluation will run (WER/CER)",
            args.eval_split,
            args.data.display()
        );
    }

    // A checkpoint that cannot be read (a corrupt newest one) names the previous one.
    let resume_hint = |e: Error| -> Error {
        let Some(dir) = &resume_from else { return e };
        Error::File {
            path: dir.display().to_string(),
            msg: format!(
                "cannot resume from this checkpoint: {e}{}",
                state::previous_hint(&args.out, dir)
            ),
        }
    };
    let model_dir = resume_from.clone().unwrap_or(args.model.clone());
    // A fine-tuned model goes on with its head and vocabulary (a resumed run with its own),
    // unless --new-head asks for a fresh head on the corpus's vocabulary.
    // MMS: a language's adapter and head replace the folder's; a language without an
    // adapter gets new ones (a resumed run has its adapter in its weights already).
    let lang = args
        .target_lang
        .as_deref()
        .filter(|_| resume_from.is_none());
    let new_adapter =
        lang.is_some_and(|l| !model_dir.join(format!("adapter.{l}.safetensors")).is_file());
    let new_head = (args.new_head || new_adapter) && resume_from.is_none();
    let head = crate::model::checkpoint::head_rows_in(&model_dir, lang.filter(|_| !new_adapter))
        .map_err(resume_hint)?;
    let outputs = match head.filter(|_| !new_head) {
        Some(rows) => {
            let vocab =
                model_vocab(&model_dir, rows, lang, resume_from.is_some()).map_err(resume_hint)?;
            if !vocab.same_tokens(&data.vocab) || vocab.head_size() != data.vocab.head_size() {
                let r = data.relabel(&vocab);
                if root {
                    report_relabel(&model_dir, &vocab, &r);
                }
            }
            rows
        }
        None => data.vocab.head_size(),
    };
    if data.train.is_empty() {
        return file_err(
            &args.data,
            "no training clips left after encoding them with the model's vocabulary",
        );
    }
    let vocab = data.vocab.clone();
    let load = crate::model::LoadOptions {
        vocab: Some((outputs, vocab.pad as usize)),
        new_head,
        target_lang: lang.filter(|_| !new_adapter).map(String::from),
        fresh_adapters: new_adapter,
        seed: args.seed,
    };
    let (mut model, report) = Wav2Vec2ForCtc::load_with(gpu, &model_dir, &load, |c| {
        c.attention_dropout = args.attention_dropout;
        c.hidden_dropout = args.hidden_dropout;
        c.feat_proj_dropout = args.feat_proj_dropout;
        c.mask_time_prob = args.mask_time_prob;
        c.layerdrop = args.layerdrop;
        c.ctc_loss_reduction = "mean".into();
        c.ctc_zero_infinity = true;
    })
    .map_err(resume_hint)?;
    model.target_lang = args.target_lang.clone();
    if model.target_lang.is_some() && model.config.adapter_attn_dim.is_none() {
        return Err(Error::Usage(format!(
            "--target-lang: {} has no adapter layers (adapter_attn_dim in config.json)",
            model_dir.display()
        )));
    }
    if new_adapter {
        note!(
            "--target-lang {}: the model has no adapter for it; new adapter layers and a new \
             head for the corpus's vocabulary ({outputs} tokens)",
            lang.unwrap_or_default()
        );
    } else if new_head && head.is_some() {
        note!(
            "--new-head: the checkpoint's CTC head ({} outputs) is replaced by a new one for the \
             corpus's vocabulary ({} tokens)",
            head.unwrap_or(0),
            outputs
        );
    }
    if let Some(w) = report.unused_warning(&model_dir).filter(|_| root) {
        eprintln!("{w}");
    }
    if !report.initialised.is_empty() {
        note!(
            "new parameters (not in the checkpoint): {}",
            report.initialised.join(", ")
        );
    }
    model.freeze_feature_encoder(args.freeze_feature_encoder);
    if args.adapter_only {
        model.train_adapters_only();
    }
    let trainable: usize = model
        .params
        .iter()
        .filter(|p| !p.is_frozen())
        .map(|p| p.value().numel())
        .sum();
    note!(
        "model: {:.1}M parameters ({:.1}M trainable), {} layers, vocabulary {}; device {}",
        model.num_params() as f64 / 1e6,
        trainable as f64 / 1e6,
        model.layers.len(),
        outputs,
        gpu.info().name
    );

    let mut opt = AdamW::new(
        &model.params,
        AdamWConfig {
            weight_decay: args.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    let mut lengths = data.lengths(Split::Train);
    lengths.truncate(args.max_train_samples.unwrap_or(usize::MAX).max(1));
    // The ranks draw the batches one process with all their clips would, and share them.
    let ranks = dist.size();
    let batcher = Batcher::new(
        lengths.clone(),
        args.batch_size * ranks,
        args.seed,
        args.max_batch_seconds.map(|s| s * ranks as f32),
    );
    let per_epoch = batcher.epoch(0).len().div_ceil(args.grad_accum).max(1) as u64;
    let total = args
        .max_steps
        .unwrap_or((args.epochs * per_epoch as f64).ceil() as u64);
    let checkpoint = args.checkpointing(model.layers.len());
    let mut st = match &resume_from {
        Some(dir) => {
            let s = state::load(dir, &mut opt).map_err(resume_hint)?;
            note!("resumed from {} at step {}", dir.display(), s.global_step);
            let batches = batcher.epoch(s.epoch).len();
            if let Some(w) = s.position_warning(batches).filter(|_| root) {
                eprintln!("warning: {}: {w}", dir.display());
            }
            s
        }
        None => TrainerState {
            seed: args.seed,
            run_id: state::new_run_id(args.seed),
            ..TrainerState::default()
        },
    };
    st.args = serde_json::to_value(args.absolute()).ok();
    // A resumed run at its end, or whose final/ is at or past it, trains nothing.
    let at_end =
        st.global_step >= total || state::final_step(&args.out).is_some_and(|f| total <= f);
    if resume_from.is_some() && at_end {
        return setup::finished(args, &model, &vocab, &st, total, root);
    }
    // --overwrite deletes the earlier run only now that this one's model and data loaded.
    if root && args.overwrite && resume_from.is_none() {
        state::clear_run_dir(&args.out)?;
    }
    dist.barrier();
    // A killed run may have logged past its last checkpoint: those rows are logged again.
    if root {
        MetricsLog::truncate_after(&args.out, st.global_step)?;
    }
    st.max_steps = total;
    // A resumed fp16 run continues with its saved loss scale.
    let mut step = TrainStep::new(
        &model,
        opt,
        st.grad_scaler.take(),
        StepOptions {
            grad_accum: args.grad_accum,
            max_grad_norm: args.max_grad_norm,
            checkpoint,
            fp16,
            ..StepOptions::default()
        },
    )?;
    st.grad_scaler = step.scaler.clone();
    step.dist = Some(dist);
    note!(
        "training: {} clips ({:.1} min), {} steps ({per_epoch} per epoch), batch {} x {} accumulated{}{}",
        lengths.len(),
        lengths.iter().sum::<usize>() as f64 / SAMPLE_RATE as f64 / 60.0,
        total,
        args.batch_size,
        args.grad_accum,
        match ranks {
            1 => String::new(),
            n => format!(" x {n} ranks"),
        },
        match (checkpoint, fp16) {
            (true, true) => ", gradient checkpointing, fp16",
            (true, false) => ", gradient checkpointing",
            (false, true) => ", fp16",
            (false, false) => "",
        }
    );

    let mut log = match root {
        true => Some(MetricsLog::open(&args.out)?),
        false => None,
    };
    let bar = match root {
        true => progress_bar(total, st.global_step),
        false => indicatif::ProgressBar::hidden(),
    };
    // What the others would say, rank 0 says.
    let say = |bar: &indicatif::ProgressBar, msg: String| {
        if root {
            say(bar, msg)
        }
    };
    let mut epoch_batches = batcher.epoch(st.epoch);
    let (mut loss_sum, mut since_log) = match st.unlogged_loss {
        Some((bits, n)) => (Some(Tensor::scalar(gpu, f32::from_bits(bits))?), n),
        None => (None, 0u64),
    };
    let mut last_loss = f64::NAN;
    let mut eval_result = None;
    let t0 = Instant::now();
    let audio_at_start = st.audio_seconds;

    // XLSR_PROFILE=N: GPU time per kernel and the engine's counters over steps 2..2+N,
    // printed once.
    let profile: Option<u64> = std::env::var("XLSR_PROFILE")
        .ok()
        .and_then(|v| v.parse().ok());
    let profile_from = st.global_step + 1;
    let mut watch = report::Watch::new(&args.out, args.learning_rate, &bar, root);
    let at_start = st.global_step;
    let mut grad_norm = f32::NAN;
    // A signal from here on lets the step finish and saves it (see `interrupt`).
    let armed = interrupt::arm();
    while st.global_step < total {
        if profile.is_some() && st.global_step == profile_from {
            gpu.profile_start()?;
            gpu.reset_counters();
        }
        if let Some(n) = profile.filter(|&n| st.global_step == profile_from + n) {
            let counters = gpu.counters();
            print_profile(&gpu.profile_stop()?);
            note!("engine work over those {n} steps (profiling puts each dispatch in a pass of its own): {counters}");
        }
        // This step's micro-batches; the epoch's last, partial accumulation still makes a step.
        let mut batches = Vec::with_capacity(args.grad_accum);
        while batches.len() < args.grad_accum {
            if st.batch_in_epoch >= epoch_batches.len() {
                if !batches.is_empty() {
                    break;
                }
                st.epoch += 1;
                st.batch_in_epoch = 0;
                epoch_batches = batcher.epoch(st.epoch);
                continue;
            }
            let idx = &epoch_batches[st.batch_in_epoch];
            st.batch_in_epoch += 1;
            let seed = derive(st.seed, st.global_step, batches.len() as u64);
            batches.push(match ranks {
                1 => (collate(&data, Split::Train, idx)?, seed, None),
                _ => exchange::share_of(&data, idx, &lengths, dist, seed)?,
            });
        }
        let micro: Vec<MicroBatch> = batches
            .iter()
            .map(|(batch, seed, share)| MicroBatch {
                batch,
                seed: *seed,
                share: share.clone(),
            })
            .collect();
        let lr = crate::schedule::linear_warmup(
            st.global_step,
            args.warmup_steps,
            total,
            args.learning_rate,
        );
        // This step's update is read while the next one is recorded (no wait), or below at
        // the steps that log, evaluate, save or end.
        let recorded = step.run_deferred(&micro, lr)?;
        if let (Some(x), 0) = (step.exchanged.take(), st.global_step - at_start) {
            say(
                &bar,
                format!(
                    "gradient exchange: {} ranges, {} of them sent during the backward pass",
                    x.ranges, x.during_backward
                ),
            );
        }
        if let Some(r) = recorded.previous {
            watch.check(&r, st.global_step, &mut st, step.scaler.as_ref(), &model)?;
        }
        st.audio_seconds += recorded.audio_seconds;
        loss_sum = Some(match loss_sum.take() {
            Some(s) => crate::ops::elementwise::add(&s, &recorded.loss)?,
            None => recorded.loss,
        });
        st.global_step += 1;
        since_log += 1;
        let done = st.global_step == total;
        let log_now = st.global_step % args.logging_steps.max(1) == 0 || done;
        // A stop asked for (agreed among the ranks) skips the step's evaluation.
        let stop = interrupt::requested(dist).filter(|_| !done);
        let eval_now = ((args.eval_steps > 0 && st.global_step % args.eval_steps == 0) || done)
            && stop.is_none();
        // The last step too (as HF's Trainer): a resumed finished run then finds its end.
        let save_now =
            root && args.save_steps > 0 && (st.global_step % args.save_steps == 0 || done);
        if log_now || eval_now || save_now {
            if let Some(r) = step.finish()? {
                grad_norm = r.grad_norm;
                watch.check(&r, st.global_step, &mut st, step.scaler.as_ref(), &model)?;
            }
        }
        st.grad_scaler = step.scaler.clone();
        let epoch = st.epoch as f64 + st.batch_in_epoch as f64 / epoch_batches.len().max(1) as f64;
        // If the log, the plot or the evaluation fails, the steps since the last checkpoint
        // are saved before the error is returned.
        let logged = (|| -> Result<()> {
            if log_now {
                if let Some(s) = loss_sum.take() {
                    last_loss = s.item()? as f64 / since_log as f64;
                }
                since_log = 0;
                if let Some(log) = log.as_mut() {
                    log.train(
                        st.global_step,
                        epoch,
                        last_loss,
                        lr as f64,
                        grad_norm as f64,
                    )?;
                }
            }
            let rate = (st.audio_seconds - audio_at_start) / t0.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(st.global_step);
            bar.set_message(format!(
                "loss {last_loss:.3}  lr {lr:.2e}  {rate:.1} audio-s/s  epoch {epoch:.2}"
            ));
            if eval_now && !data.split(eval_split).is_empty() {
                let opts = EvalOptions {
                    split: eval_split,
                    batch_size: args.batch_size,
                    limit: args.max_eval_samples,
                    lm: None,
                };
                let (step, log) = (st.global_step, log.as_mut());
                let r =
                    eval::during_training(&model, &vocab, &data, &opts, dist, log, step, epoch)?;
                say(
                    &bar,
                    format!(
                        "step {step}: eval loss {:.3}, WER {:.3}, CER {:.3} on {} utterances",
                        r.ctc_loss, r.wer, r.cer, r.utterances
                    ),
                );
                for (reference, prediction) in r.pairs.iter().take(3) {
                    say(
                        &bar,
                        format!("    ref:  {reference}\n    pred: {prediction}"),
                    );
                }
                eval_result = Some(r);
            }
            Ok(())
        })();
        if let Err(e) = logged {
            st.unlogged_loss = unlogged(&loss_sum, since_log).unwrap_or(None);
            if root {
                let limit = args.save_total_limit;
                if let Ok(dir) = state::save(&args.out, &model, &vocab, &step.opt, &st, limit) {
                    eprintln!("xlsr: the model so far is in {}", dir.display());
                }
            }
            return Err(e);
        }
        if save_now || stop.is_some() {
            st.unlogged_loss = unlogged(&loss_sum, since_log)?;
        }
        if save_now {
            let dir = state::save(
                &args.out,
                &model,
                &vocab,
                &step.opt,
                &st,
                args.save_total_limit,
            )?;
            say(&bar, format!("saved {}", dir.display()));
        }
        if let Some(signal) = stop {
            bar.abandon();
            let (model, vocab) = (&model, &vocab);
            let stop = interrupt::stop(
                signal, save_now, &mut step, &mut st, &mut watch, model, vocab, args, root,
            );
            return Err(stop);
        }
    }
    drop(armed);
    bar.finish();

    let final_dir = args.out.join("final");
    if !root {
        return Ok(RunSummary {
            final_dir,
            steps: st.global_step,
            skipped_steps: st.skipped_steps,
            losses: Vec::new(),
            eval: None,
        });
    }
    state::save_final(&args.out, &model, &vocab, &st)?;
    println!(
        "done: {} steps ({} skipped) in {:.1} min, peak device memory {:.2} GB; model in {}",
        st.global_step,
        st.skipped_steps,
        t0.elapsed().as_secs_f64() / 60.0,
        gpu.peak_bytes() as f64 / 1e9,
        final_dir.display()
    );
    if st.skipped_steps * 2 > st.global_step {
        eprintln!(
            "warning: {} of {} steps were skipped for a non-finite loss or gradient: the model \
             barely trained; lower --learning-rate (now {:e}) or check the data",
            st.skipped_steps, st.global_step, args.learning_rate
        );
    }
    let rows = match &log {
        Some(log) => MetricsLog::read(log.path())?,
        None => Vec::new(),
    };
    Ok(RunSummary {
        final_dir,
        steps: st.global_step,
        skipped_steps: st.skipped_steps,
        losses: MetricsLog::series(&rows, "loss"),
        eval: eval_result,
    })
}

/// The losses summed since the last logged step, as a checkpoint keeps them (a read-back,
/// made only at the steps that save).
fn unlogged(loss_sum: &Option<Tensor>, steps: u64) -> Result<Option<(u32, u64)>> {
    let sum = loss_sum.as_ref().map(|s| s.item()).transpose()?;
    Ok(sum.map(|v| (v.to_bits(), steps)))
}

/// Training stops after this many optimiser steps in a row were skipped for a non-finite loss
/// or gradient norm (fp16's loss scale would have fallen by 2^25 by then).
pub const MAX_SKIPPED_IN_A_ROW: u64 = 25;
