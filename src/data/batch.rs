//! Batches: length-grouped ordering as HF's `group_by_length` (`LengthGroupedSampler`), and
//! dynamic padding as the notebook's `DataCollatorCTCWithPadding` with the feature extractor's
//! per-clip normalisation.

use super::audio::{normalize, SAMPLE_RATE};
use super::prepared::{Prepared, Split};
use super::DataError;
use crate::rng::Rng;

/// Makes each epoch's batches of utterance indices.
#[derive(Clone, Debug)]
pub struct Batcher {
    lengths: Vec<usize>,
    batch_size: usize,
    seed: u64,
    max_batch_samples: Option<usize>,
}

impl Batcher {
    /// `lengths`: samples per utterance (e.g. [`Prepared::lengths`]); at most `batch_size`
    /// utterances per batch and, with `max_batch_seconds`, at most that much padded audio
    /// (batch size × longest clip) per batch; an utterance longer than the cap gets a batch
    /// of its own.
    pub fn new(
        lengths: Vec<usize>,
        batch_size: usize,
        seed: u64,
        max_batch_seconds: Option<f32>,
    ) -> Batcher {
        Batcher {
            lengths,
            batch_size: batch_size.max(1),
            seed,
            max_batch_samples: max_batch_seconds.map(|s| (s * SAMPLE_RATE as f32) as usize),
        }
    }

    /// The batches of epoch `epoch`: every index exactly once, in HF's length-grouped order
    /// shuffled from `(seed, epoch)`, the longest batch first.
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        let seed = self.seed ^ Rng::new(epoch).next_u64();
        let order = length_grouped_indices(&self.lengths, self.batch_size, seed);
        let mut batches = Vec::new();
        let mut batch: Vec<usize> = Vec::new();
        let mut longest = 0;
        for i in order {
            let len = self.lengths[i];
            let full = batch.len() == self.batch_size
                || self
                    .max_batch_samples
                    .is_some_and(|cap| (batch.len() + 1) * longest.max(len) > cap);
            if !batch.is_empty() && full {
                batches.push(std::mem::take(&mut batch));
                longest = 0;
            }
            batch.push(i);
            longest = longest.max(len);
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        batches
    }
}

/// Mega-batch size HF uses: `min(n / (4 * batch_size), 50)` batches (at least one).
pub fn megabatch_size(n: usize, batch_size: usize) -> usize {
    (n / (4 * batch_size.max(1))).clamp(1, 50) * batch_size.max(1)
}

/// HF's `get_length_grouped_indices`: a random permutation (drawn from `seed`), then
/// [`group_by_length`].
pub fn length_grouped_indices(lengths: &[usize], batch_size: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Fisher-Yates.
    for i in (1..order.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    group_by_length(&order, lengths, batch_size)
}

/// The deterministic part of HF's `get_length_grouped_indices`: cut the permutation `order`
/// into mega-batches of [`megabatch_size`], sort each by length (longest first, stable), then
/// swap the first element of the mega-batch holding the longest utterance (the first such)
/// with the very first element, so an out-of-memory shows at once.
pub fn group_by_length(order: &[usize], lengths: &[usize], batch_size: usize) -> Vec<usize> {
    let mb = megabatch_size(lengths.len(), batch_size);
    let mut megabatches: Vec<Vec<usize>> = order.chunks(mb).map(<[usize]>::to_vec).collect();
    for m in &mut megabatches {
        m.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
    }
    // First maximum, as torch.argmax.
    let mut max_idx = 0;
    for (k, m) in megabatches.iter().enumerate() {
        if lengths[m[0]] > lengths[megabatches[max_idx][0]] {
            max_idx = k;
        }
    }
    if max_idx != 0 {
        let first = megabatches[0][0];
        megabatches[0][0] = megabatches[max_idx][0];
        megabatches[max_idx][0] = first;
    }
    megabatches.concat()
}

/// One utterance going into a batch.
#[derive(Clone, Debug)]
pub struct Example {
    /// Clip id.
    pub id: String,
    /// Raw 16 kHz samples (normalised by [`pad`]).
    pub audio: Vec<f32>,
    /// Label ids.
    pub labels: Vec<u32>,
}

/// A padded batch, row-major.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[batch, max_samples]`: each clip normalised to zero mean and unit variance over its
    /// own samples, then zero-padded (as `Wav2Vec2FeatureExtractor`).
    pub audio: Vec<f32>,
    /// Longest clip in samples (the padded width).
    pub max_samples: usize,
    /// Valid samples per row.
    pub audio_lengths: Vec<usize>,
    /// The label ids, ready for CTC.
    pub targets: Targets,
    /// Clip ids.
    pub ids: Vec<String>,
}

impl Batch {
    /// Number of utterances.
    pub fn len(&self) -> usize {
        self.audio_lengths.len()
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.audio_lengths.is_empty()
    }

    /// Zero-pads every row to `width` samples (no narrower than now): a share of a larger
    /// batch padded as the whole batch is, so that it computes what its rows of the whole
    /// batch would (group-norm models normalise over the padding too).
    pub fn pad_to(&mut self, width: usize) {
        if width <= self.max_samples {
            return;
        }
        let mut audio = vec![0.0; self.len() * width];
        for (row, src) in self.audio.chunks(self.max_samples.max(1)).enumerate() {
            audio[row * width..row * width + src.len()].copy_from_slice(src);
        }
        self.audio = audio;
        self.max_samples = width;
    }

    /// `[batch, max_samples]` attention mask: 1 over each clip's samples, 0 over padding.
    pub fn attention_mask(&self) -> Vec<f32> {
        let mut mask = vec![0.0; self.audio.len()];
        for (row, &n) in self.audio_lengths.iter().enumerate() {
            mask[row * self.max_samples..row * self.max_samples + n].fill(1.0);
        }
        mask
    }
}

/// CTC targets: each row's label ids, zero-padded to the longest row, with the lengths that
/// say where each row ends (the loss never reads the padding).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Targets {
    /// `[rows, width]` label ids.
    pub ids: Vec<u32>,
    /// Longest row (the padded width).
    pub width: usize,
    /// Valid labels per row.
    pub lengths: Vec<usize>,
}

impl Targets {
    /// Pads label rows into one target block.
    pub fn from_rows<R: AsRef<[u32]>>(rows: &[R]) -> Targets {
        let width = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
        let mut ids = vec![0; rows.len() * width];
        for (row, r) in rows.iter().enumerate() {
            ids[row * width..][..r.as_ref().len()].copy_from_slice(r.as_ref());
        }
        Targets {
            ids,
            width,
            lengths: rows.iter().map(|r| r.as_ref().len()).collect(),
        }
    }

    /// Row `i`'s labels.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.ids[i * self.width..][..self.lengths[i]]
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }
}

/// Normalises each clip over its own samples and pads clips and labels to the longest.
pub fn pad(examples: Vec<Example>) -> Batch {
    let max_samples = examples.iter().map(|e| e.audio.len()).max().unwrap_or(0);
    let b = examples.len();
    let rows: Vec<&[u32]> = examples.iter().map(|e| e.labels.as_slice()).collect();
    let mut batch = Batch {
        audio: vec![0.0; b * max_samples],
        max_samples,
        audio_lengths: Vec::with_capacity(b),
        targets: Targets::from_rows(&rows),
        ids: Vec::with_capacity(b),
    };
    for (row, mut e) in examples.into_iter().enumerate() {
        normalize(&mut e.audio);
        batch.audio[row * max_samples..][..e.audio.len()].copy_from_slice(&e.audio);
        batch.audio_lengths.push(e.audio.len());
        batch.ids.push(e.id);
    }
    batch
}

/// Reads the utterances `indices` of a prepared set from the cache and pads them.
pub fn collate(prepared: &Prepared, split: Split, indices: &[usize]) -> Result<Batch, DataError> {
    let utts = prepared.split(split);
    let mut examples = Vec::with_capacity(indices.len());
    for &i in indices {
        let u = utts.get(i).ok_or_else(|| {
            DataError::format(
                prepared.dir.join("index.json"),
                format!("utterance {i} out of range ({} in {split:?})", utts.len()),
            )
        })?;
        examples.push(Example {
            id: u.id.clone(),
            audio: prepared.audio(u)?,
            labels: u.labels.clone(),
        });
    }
    Ok(pad(examples))
}
