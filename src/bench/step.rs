//! The training-step benchmark: one XLSR-53 fine-tuning step through [`TrainStep`], timed,
//! counted and profiled.

use super::host_rand;
use crate::data::audio::SAMPLE_RATE;
use crate::error::Result;
use crate::model::{Config, Wav2Vec2ForCtc};
use crate::train::{MicroBatch, StepOptions, TrainStep};
use crate::Gpu;
use std::time::Instant;

/// What one training-step benchmark measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepReport {
    /// Encoder layers.
    pub layers: usize,
    /// Clips per batch.
    pub batch: usize,
    /// Seconds per clip.
    pub seconds: f64,
    /// Gradient checkpointing on.
    pub checkpointing: bool,
    /// fp16 mixed precision on.
    pub fp16: bool,
    /// Attention as separate kernels instead of the fused ones.
    pub unfused_attention: bool,
    /// Timed steps (after one warm-up step).
    pub steps: usize,
    /// Median wall-clock seconds of a whole step (forward, backward, AdamW, synchronised).
    pub step_s: f64,
    /// Median wall-clock seconds up to the loss on the host.
    pub forward_s: f64,
    /// Peak device bytes by the engine's accounting.
    pub peak_device_bytes: u64,
    /// Device bytes of the weights alone.
    pub weight_bytes: u64,
    /// Per-kernel GPU time of one extra profiled step: (entry, ms, launches), largest first.
    pub kernels: Vec<(String, f64, u64)>,
    /// Launches per kernel entry in the counted step, most first.
    pub launches: Vec<(String, u64)>,
    /// What the engine did in a steady-state step run as `xlsr train` runs one that logs
    /// nothing (dispatches, passes, bind groups, submits, waits, late reads, bytes moved, CPU
    /// recording time).
    #[serde(flatten)]
    pub counters: crate::engine::Counters,
}

/// Shape of the training-step benchmark.
#[derive(Clone, Debug)]
pub struct ModelStep {
    /// Clips per batch.
    pub batch: usize,
    /// Seconds per clip.
    pub seconds: f64,
    /// Encoder layers (XLSR-53 has 24).
    pub layers: Option<usize>,
    /// Gradient checkpointing.
    pub checkpoint: bool,
    /// fp16 mixed precision (f16 matmul inputs, loss scaling).
    pub fp16: bool,
    /// Attention as matmul, softmax and dropout kernels instead of the fused ones.
    pub unfused_attention: bool,
    /// MMS recipe instead: an mms-1b-all-sized model training only its attention adapters
    /// and head.
    pub adapter_only: bool,
    /// Count without computing ([`Gpu::set_accounting_only`]): the peak memory and the
    /// engine's counters at shapes too big or too slow to run here.
    pub count_only: bool,
    /// Timed steps after the warm-up (the median is reported).
    pub steps: usize,
}

impl Default for ModelStep {
    fn default() -> Self {
        ModelStep {
            batch: 1,
            seconds: 4.0,
            layers: None,
            checkpoint: false,
            fp16: false,
            unfused_attention: false,
            adapter_only: false,
            count_only: false,
            steps: 3,
        }
    }
}

/// One fine-tuning step (forward, backward, AdamW) of the XLSR-53 shape (feature encoder
/// frozen, dropout on, LayerDrop off so every step does the same work): the median wall time of
/// `m.steps` steps after a warm-up, the peak device memory by the engine's accounting (weights,
/// gradients, activations and pooled buffers) and, from one more profiled step, the kernels
/// that took the most GPU time.
pub fn model_step(gpu: &Gpu, m: &ModelStep, log: &mut dyn std::io::Write) -> Result<StepReport> {
    let mut cfg = if m.adapter_only {
        Config::mms_1b(40)
    } else {
        Config::xlsr53(40)
    };
    cfg.layerdrop = 0.0;
    if let Some(l) = m.layers {
        cfg.num_hidden_layers = l;
    }
    let secs = m.seconds;
    if m.count_only {
        gpu.set_accounting_only(true);
    }
    let model = Wav2Vec2ForCtc::random(gpu, cfg, 0)?;
    model.freeze_feature_encoder(true);
    if m.adapter_only {
        model.train_adapters_only();
    }
    let samples = (secs * SAMPLE_RATE as f64) as usize;
    let label: Vec<u32> = (0..(secs * 12.0) as u32).map(|i| 1 + i % 38).collect();
    let batch = crate::data::batch::pad(
        (0..m.batch)
            .map(|i| crate::data::batch::Example {
                id: format!("random-{i}"),
                audio: host_rand(samples, 9 + i as u32),
                labels: label.clone(),
            })
            .collect(),
    );
    gpu.sync()?;
    let weights = gpu.live_bytes();
    let opt = crate::optim::AdamW::new(&model.params, Default::default())?;
    let mut train = TrainStep::new(
        &model,
        opt,
        None,
        StepOptions {
            checkpoint: m.checkpoint,
            fp16: m.fp16,
            unfused_attention: m.unfused_attention,
            ..StepOptions::default()
        },
    )?;
    let mb = MicroBatch {
        share: None,
        batch: &batch,
        seed: 0,
    };
    // One step as `xlsr train` runs it between logging steps: recorded, the step before's
    // update read while it is (no wait), its own left for the next. The counters cover that.
    let counted = |train: &mut TrainStep| -> Result<crate::engine::Counters> {
        gpu.reset_counters();
        train.run_deferred(std::slice::from_ref(&mb), 1e-5)?;
        Ok(gpu.counters())
    };
    // A whole step timed: the loss read splits the wall time into forward and the rest.
    let timed = |train: &mut TrainStep| -> Result<(f64, f64)> {
        let t0 = Instant::now();
        let f = train.forward(&mb)?;
        f.loss.value.item()?;
        let fwd = t0.elapsed().as_secs_f64();
        let loss = train.backward(f)?;
        train.update(&loss, 1e-5)?;
        gpu.sync()?;
        Ok((fwd, t0.elapsed().as_secs_f64()))
    };
    timed(&mut train)?; // warm-up: pipelines, pool, optimiser moments
    let steps = if m.count_only { 1 } else { m.steps.max(1) };
    // By the last timed step the pool hands out the same buffers every step, as in a long run.
    let mut times = Vec::new();
    for _ in 0..steps {
        times.push(timed(&mut train)?);
    }
    let (counters, launches) = {
        // Until the pool and the bind-group cache have seen this way of stepping.
        for _ in 0..3 {
            counted(&mut train)?;
        }
        let c = counted(&mut train)?;
        (c, gpu.launches())
    };
    train.finish()?;
    times.sort_by(|a, b| a.1.total_cmp(&b.1));
    let (fwd, total) = times[times.len() / 2];
    let profiled = gpu.profile_start()?;
    timed(&mut train)?;
    let mut kernels = gpu.profile_stop()?;
    kernels.sort_by(|a, b| b.1.total_cmp(&a.1));
    let times = if m.count_only {
        "counted only (no kernels run)".to_string()
    } else {
        format!("step {total:.3} s (forward {fwd:.3} s), median of {steps} (wall)",)
    };
    let _ = writeln!(
        log,
        "{:<48} {times}, {} layers, batch {} x {secs} s, checkpointing {}, fp16 {}{}: peak {:.2} GB (weights {:.2} GB)",
        if m.adapter_only {
            "MMS-1B adapter-only step"
        } else {
            "wav2vec2 XLSR-53 step (frozen encoder)"
        },
        model.layers.len(),
        m.batch,
        m.checkpoint,
        m.fp16,
        if m.unfused_attention { ", unfused attention" } else { "" },
        gpu.peak_bytes() as f64 / 1e9,
        weights as f64 / 1e9
    );
    let _ = writeln!(log, "    per step: {counters}");
    let top: Vec<String> = launches
        .iter()
        .take(12)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(log, "    launches: {}", top.join(", "));
    if profiled {
        let total: f64 = kernels.iter().map(|x| x.1).sum();
        let _ = writeln!(
            log,
            "    GPU time of the profiled step: {:.1} ms in {} launches",
            total / 1e6,
            kernels.iter().map(|k| k.2).sum::<u64>()
        );
        for (name, ns, n) in kernels.iter().take(8) {
            let _ = writeln!(
                log,
                "    {:<32} {:>9.1} ms {:>5.1}% ({n} launches)",
                name,
                ns / 1e6,
                100.0 * ns / total
            );
        }
    }
    Ok(StepReport {
        layers: model.layers.len(),
        batch: m.batch,
        seconds: secs,
        checkpointing: m.checkpoint,
        fp16: m.fp16,
        unfused_attention: m.unfused_attention,
        steps,
        step_s: total,
        forward_s: fwd,
        peak_device_bytes: gpu.peak_bytes(),
        weight_bytes: weights,
        kernels: kernels
            .into_iter()
            .map(|(k, ns, n)| (k.to_string(), ns / 1e6, n))
            .collect(),
        launches: launches
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect(),
        counters,
    })
}
