//! Dynamic loss scaling for fp16 training.

use super::{AdamW, StepOutcome};
use crate::error::Result;

/// Dynamic loss scaling for fp16 training, as `torch.amp.GradScaler` does it: the loss is
/// multiplied by `scale` before backward so small gradients survive f16; a step whose
/// gradients overflowed is skipped and the scale halved; after `growth_interval` good steps
/// in a row the scale doubles.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GradScaler {
    /// The current loss scale.
    pub scale: f32,
    /// Factor applied after `growth_interval` finite steps.
    pub growth_factor: f32,
    /// Factor applied after a step with inf/NaN gradients.
    pub backoff_factor: f32,
    /// Finite steps in a row before the scale grows.
    pub growth_interval: u64,
    /// Finite steps since the last growth or backoff.
    pub growth_tracker: u64,
}

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler {
            scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            growth_tracker: 0,
        }
    }
}

impl GradScaler {
    /// Runs one optimiser step on the scaled gradients (skipped if they are not finite) and
    /// updates the scale.
    pub fn step(&mut self, opt: &mut AdamW, lr: f32, max_norm: f32) -> Result<StepOutcome> {
        let outcome = opt.clip_and_step_scaled(lr, max_norm, 1.0 / self.scale)?;
        self.update(outcome.skipped);
        Ok(outcome)
    }

    /// torch's `_amp_update_scale_`: back off on overflow, grow after a run of good steps.
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= self.backoff_factor;
            self.growth_tracker = 0;
            return;
        }
        self.growth_tracker += 1;
        if self.growth_tracker == self.growth_interval {
            let grown = self.scale * self.growth_factor;
            if grown.is_finite() {
                self.scale = grown;
            }
            self.growth_tracker = 0;
        }
    }
}
