//! What a run prints: the progress bar, messages above it, the profile.

use super::state::{self, TrainerState};
use super::step::{first_non_finite, StepReport};
use super::MAX_SKIPPED_IN_A_ROW;
use crate::error::{Error, Result};
use crate::model::Wav2Vec2ForCtc;
use crate::optim::GradScaler;
use std::path::{Path, PathBuf};

/// Watches the steps' reports: counts skipped steps and says so above the progress bar (rank
/// 0), and stops a run whose steps keep being skipped or whose update broke a weight.
pub(super) struct Watch {
    out: PathBuf,
    learning_rate: f32,
    bar: indicatif::ProgressBar,
    root: bool,
    skipped_in_a_row: u64,
}

impl Watch {
    pub(super) fn new(
        out: &Path,
        learning_rate: f32,
        bar: &indicatif::ProgressBar,
        root: bool,
    ) -> Watch {
        Watch {
            out: out.to_path_buf(),
            learning_rate,
            bar: bar.clone(),
            root,
            skipped_in_a_row: 0,
        }
    }

    /// Takes the report of step `step` (1-based): says what there is to say, or returns the
    /// error that stops the run before anything broken is saved (the bar left as it is).
    pub(super) fn check(
        &mut self,
        r: &StepReport,
        step: u64,
        st: &mut TrainerState,
        scaler: Option<&GradScaler>,
        model: &Wav2Vec2ForCtc,
    ) -> Result<()> {
        let mut verdict = || -> Result<Option<String>> {
            if !r.skipped {
                self.skipped_in_a_row = 0;
                // An update that overflows the weights cannot be undone: stop before it is saved.
                // (Huge but finite weights also overflow the check; the search finds none then.)
                let broken = match r.weights_finite {
                    true => None,
                    false => first_non_finite(model)?,
                };
                return match broken {
                    None => Ok(None),
                    Some(name) => Err(Error::Usage(format!(
                        "step {step}: the update made {name} non-finite (NaN or inf); stopping \
                         before it is saved. Lower --learning-rate (now {:e}){}",
                        self.learning_rate,
                        last_saved(&self.out)
                    ))),
                };
            }
            st.skipped_steps += 1;
            self.skipped_in_a_row += 1;
            if self.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW {
                return Err(Error::Usage(format!(
                    "steps {}..{step}: {MAX_SKIPPED_IN_A_ROW} optimiser steps in a row were skipped \
                     (loss or gradient norm not finite); stopping. Lower --learning-rate (now {:e}) \
                     or --max-grad-norm, or check the data and the model for NaN{}",
                    step + 1 - self.skipped_in_a_row,
                    self.learning_rate,
                    last_saved(&self.out)
                )));
            }
            let why = match scaler {
                // Expected now and then under fp16: GradScaler's way of finding the scale.
                Some(g) => format!("overflowed in fp16; loss scale lowered to {}", g.scale),
                None => "is not finite".to_string(),
            };
            Ok(Some(format!(
                "step {step}: loss or gradient norm ({}) {why}; step skipped ({} so far)",
                r.grad_norm, st.skipped_steps
            )))
        };
        match verdict() {
            Ok(Some(msg)) if self.root => say(&self.bar, msg),
            Ok(_) => {}
            Err(e) => {
                self.bar.abandon();
                return Err(e);
            }
        }
        Ok(())
    }
}

/// "; the last checkpoint, NAME, is intact" (or nothing when there is none).
pub(super) fn last_saved(run_dir: &Path) -> String {
    match state::list(run_dir).pop() {
        Some((_, p)) => format!("; the last checkpoint, {}, is intact", p.display()),
        None => String::new(),
    }
}

pub(super) fn print_profile(kernels: &[(&'static str, f64, u64)]) {
    let total: f64 = kernels.iter().map(|k| k.1).sum();
    let mut k = kernels.to_vec();
    k.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("GPU time by kernel ({:.1} ms in all):", total / 1e6);
    for (name, ns, n) in k.iter().take(12) {
        println!(
            "    {name:<28} {:>9.1} ms {:>5.1}% ({n} launches)",
            ns / 1e6,
            100.0 * ns / total.max(1.0)
        );
    }
}

/// Prints above the progress bar, or plainly when there is no terminal to draw it on.
pub(super) fn say(bar: &indicatif::ProgressBar, msg: String) {
    if bar.is_hidden() {
        println!("{msg}");
    } else {
        bar.println(msg);
    }
}

pub(super) fn progress_bar(total: u64, at: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(at);
    bar
}
