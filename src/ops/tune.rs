//! Picking among builds that compute the same thing (see [`crate::engine::tuning`]): with
//! tuning measuring, the first launch of a shape class runs every candidate into scratch
//! outputs, checks each against the default build's, times them, and keeps the fastest.

use crate::engine::error::Result;
use crate::engine::{Choice, Gpu, Tensor, TuneMode};
use std::time::Instant;

/// Timed launches per candidate (after one untimed launch, which also compiles it).
const REPS: usize = 5;
/// A candidate must beat the default by this fraction to be picked (timing noise).
const MARGIN: f64 = 0.03;
/// Largest difference from the default build's output, relative to its largest magnitude,
/// that still counts as the same result (other summation orders differ by far less; a
/// broken build by far more).
pub const AGREE: f32 = 1e-3;

/// The next power of two at or above `x` (shape classes bucket sizes this way, so that the
/// varying frame counts of length-grouped batches share a few classes).
pub fn bucket(x: usize) -> usize {
    x.max(1).next_power_of_two()
}

/// Which of `candidates` (the default first) to run for shape class `key`. `run(c)` launches
/// candidate `c` into scratch outputs and returns them; it is called only while measuring.
pub fn pick(
    gpu: &Gpu,
    key: impl FnOnce() -> String,
    candidates: &[&'static str],
    mut run: impl FnMut(&'static str) -> Result<Vec<Tensor>>,
) -> Result<&'static str> {
    let mode = gpu.tuning();
    if mode == TuneMode::Off || candidates.len() < 2 {
        return Ok(candidates[0]);
    }
    let key = key();
    if let Some(kept) = gpu.tuned(&key) {
        // A kept choice this shape can no longer take (another setting) falls back.
        return Ok(candidates
            .iter()
            .find(|c| **c == kept.pick)
            .copied()
            .unwrap_or(candidates[0]));
    }
    if mode != TuneMode::Measure || gpu.is_accounting_only() {
        return Ok(candidates[0]);
    }
    let mut choice = Choice::default();
    let mut reference: Option<Vec<Vec<f32>>> = None;
    let mut best: Option<(&'static str, f64)> = None;
    for &c in candidates {
        let out = run(c)?
            .iter()
            .map(|t| t.to_vec())
            .collect::<Result<Vec<_>>>()?;
        match &reference {
            None => reference = Some(out),
            Some(r) if !agrees(r, &out) => {
                choice.rejected.push(c.to_string());
                continue;
            }
            Some(_) => {}
        }
        let ms = time(gpu, || run(c).map(drop))?;
        choice.times_ms.insert(c.to_string(), ms);
        let better = match best {
            None => true,
            Some((_, b)) => ms < b * (1.0 - MARGIN),
        };
        if better {
            best = Some((c, ms));
        }
    }
    let pick = best.map_or(candidates[0], |(c, _)| c);
    choice.pick = pick.to_string();
    gpu.keep_tuned(key, choice);
    Ok(pick)
}

/// Whether every output is within [`AGREE`] of the reference's, relative to its largest
/// magnitude, and finite where it is.
fn agrees(reference: &[Vec<f32>], out: &[Vec<f32>]) -> bool {
    reference.len() == out.len()
        && reference.iter().zip(out).all(|(r, o)| {
            let scale = r.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
            r.len() == o.len()
                && r.iter().zip(o).all(|(x, y)| {
                    (x - y).abs() <= AGREE * scale || (!x.is_finite() && x.to_bits() == y.to_bits())
                })
        })
}

/// Milliseconds per launch of `launch`, warm: the mean of [`REPS`] launches,
/// by GPU timestamps where the adapter has them (and no one else is profiling), else by the
/// wall clock around synchronised launches.
fn time(gpu: &Gpu, mut launch: impl FnMut() -> Result<()>) -> Result<f64> {
    if !gpu.is_profiling() && gpu.profile_start()? {
        for _ in 0..REPS {
            launch()?;
        }
        let ns: f64 = gpu.profile_stop()?.iter().map(|(_, ns, _)| ns).sum();
        return Ok(ns / 1e6 / REPS as f64);
    }
    gpu.sync()?;
    let t0 = Instant::now();
    for _ in 0..REPS {
        launch()?;
    }
    gpu.sync()?;
    Ok(t0.elapsed().as_secs_f64() * 1e3 / REPS as f64)
}
