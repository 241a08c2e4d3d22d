//! SpecAugment span masks with the semantics of HF's `_compute_mask_indices`: per utterance,
//! `int(mask_prob * len / mask_length + eps)` spans (eps one uniform draw per batch, at least
//! `min_masks`), starts drawn without replacement from the valid frames, spans may overlap.

use crate::rng::Rng;

/// A [batch, seq_len] mask (1.0 = masked) for utterances of `lengths[b]` valid positions.
/// Returns `None` when no span fits (HF raises for `mask_length > seq_len`; a training run
/// should rather go on without masking that batch).
pub fn compute_mask_indices(
    rng: &mut Rng,
    seq_len: usize,
    lengths: &[usize],
    mask_prob: f32,
    mask_length: usize,
    min_masks: usize,
) -> Option<Vec<f32>> {
    if mask_length == 0 || mask_length > seq_len || mask_prob <= 0.0 {
        return None;
    }
    let eps = rng.uniform();
    let num_spans = |len: usize| -> usize {
        let mut n = (mask_prob as f64 * len as f64 / mask_length as f64 + eps) as usize;
        n = n.max(min_masks);
        if n * mask_length > seq_len {
            n = seq_len / mask_length;
        }
        n.min((len + 1).saturating_sub(mask_length))
    };
    let mut mask = vec![0f32; lengths.len() * seq_len];
    for (b, &len) in lengths.iter().enumerate() {
        let len = len.min(seq_len);
        let starts = (len + 1).saturating_sub(mask_length);
        let n = num_spans(len);
        // Distinct starts: a partial Fisher-Yates shuffle of 0..starts.
        let mut pool: Vec<usize> = (0..starts).collect();
        for i in 0..n {
            let j = i + rng.below(starts - i);
            pool.swap(i, j);
            let s = pool[i];
            for t in s..(s + mask_length).min(seq_len) {
                mask[b * seq_len + t] = 1.0;
            }
        }
    }
    Some(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_stay_in_valid_frames_and_match_the_expected_rate() {
        let mut rng = Rng::new(1);
        let lengths = [500, 320, 37, 9];
        let (mut masked, mut total) = (0.0, 0.0);
        for _ in 0..200 {
            let m = compute_mask_indices(&mut rng, 500, &lengths, 0.05, 10, 2).unwrap();
            for (b, &len) in lengths.iter().enumerate() {
                let row = &m[b * 500..(b + 1) * 500];
                assert!(row[len..].iter().all(|&v| v == 0.0), "padding masked");
                if len < 10 {
                    assert!(row.iter().all(|&v| v == 0.0), "no span fits {len} frames");
                } else {
                    // At least min_masks = 2 spans: at least 10 frames masked.
                    assert!(row.iter().sum::<f32>() >= 10.0);
                }
            }
            masked += m[..500].iter().sum::<f32>() as f64;
            total += 500.0;
        }
        // 0.05 * 500 / 10 + eps -> 2 or 3 spans, overlaps shrink it: a bit under 5%.
        let rate = masked / total;
        assert!((0.035..=0.06).contains(&rate), "masked rate {rate}");
    }

    #[test]
    fn reproducible_from_the_seed_and_none_when_too_short() {
        let a = compute_mask_indices(&mut Rng::new(7), 100, &[100, 80], 0.2, 5, 0);
        let b = compute_mask_indices(&mut Rng::new(7), 100, &[100, 80], 0.2, 5, 0);
        assert_eq!(a, b);
        assert!(compute_mask_indices(&mut Rng::new(7), 8, &[8], 0.5, 10, 2).is_none());
        assert!(compute_mask_indices(&mut Rng::new(7), 80, &[80], 0.0, 10, 2).is_none());
    }
}
