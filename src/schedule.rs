//! Learning-rate schedules.

/// The learning rate for optimiser step `step` (0-based: the first update uses step 0) under
/// HF's `get_linear_schedule_with_warmup`: a linear ramp from 0 over `warmup` steps, then a
/// linear decay to 0 at `total`, and 0 after.
///
/// As with HF's Trainer (which steps the scheduler after the optimiser), the very first update
/// runs at learning rate 0 when there is a warm-up.
pub fn linear_warmup(step: u64, warmup: u64, total: u64, base_lr: f32) -> f32 {
    // f64 like Python's floats, so the factor is the one LambdaLR computes.
    let factor = if step < warmup {
        step as f64 / warmup.max(1) as f64
    } else {
        (total as f64 - step as f64).max(0.0) / (total.saturating_sub(warmup)).max(1) as f64
    };
    (base_lr as f64 * factor) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramps_then_decays() {
        assert_eq!(linear_warmup(0, 10, 110, 1.0), 0.0);
        assert_eq!(linear_warmup(5, 10, 110, 1.0), 0.5);
        assert_eq!(linear_warmup(10, 10, 110, 1.0), 1.0);
        assert_eq!(linear_warmup(60, 10, 110, 1.0), 0.5);
        assert_eq!(linear_warmup(110, 10, 110, 1.0), 0.0);
        assert_eq!(linear_warmup(500, 10, 110, 1.0), 0.0);
        assert_eq!(linear_warmup(0, 0, 4, 2.0), 2.0);
    }
}
