//! Common Voice in, training batches out: audio decoding and resampling ([`audio`]), text
//! normalisation ([`text`]), the CTC vocabulary and tokenizer ([`vocab`]), corpus readers
//! ([`corpus`]), the decoded-audio cache written by `xlsr prepare` ([`prepare`]) and
//! length-grouped batching with dynamic padding ([`batch`]).
//!
//! A training loop reads a prep folder like this:
//!
//! ```no_run
//! use xlsr::data::{collate, Batcher, Prepared, Split};
//! # fn main() -> Result<(), xlsr::data::DataError> {
//! let data = Prepared::open("prep".as_ref())?;
//! let (vocab_size, blank) = (data.vocab.len(), data.vocab.pad);
//! let batcher = Batcher::new(data.lengths(Split::Train), 16, 42, Some(200.0));
//! for epoch in 0..30 {
//!     for indices in batcher.epoch(epoch) {
//!         let batch = collate(&data, Split::Train, &indices)?;
//!         // batch.audio [B, max_samples] and batch.audio_lengths go to the model,
//!         // batch.targets (ids [B, width] and lengths) to CTC.
//!     }
//! }
//! // Evaluation: greedy ids per frame -> text, against the normalised reference.
//! let hypothesis = data.vocab.decode_ctc(&[3, 3, blank, 4]);
//! let reference = &data.test[0].text;
//! # let _ = (vocab_size, hypothesis, reference);
//! # Ok(())
//! # }
//! ```

pub mod audio;
pub mod batch;
pub mod corpus;
pub mod prepare;
pub mod prepared;
pub mod text;
pub mod vocab;

pub use batch::{collate, Batch, Batcher, Targets};
pub use prepare::Utterance;
pub use prepared::{Prepared, Split};
pub use vocab::{Vocab, WordOffset};

use std::path::PathBuf;
use thiserror::Error;

/// Everything that can go wrong while reading a corpus, audio, a vocabulary or a prepared cache.
/// Each variant names the file.
#[derive(Debug, Error)]
pub enum DataError {
    /// A file or folder could not be read or written.
    // The io::Error is part of the message, not a `source`, so a CLI error chain does not
    // repeat it.
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// An audio file holds no audio: 0 bytes, or no samples decoded.
    #[error("{}: no audio ({what})", path.display())]
    EmptyAudio { path: PathBuf, what: &'static str },
    /// An audio file could not be decoded (unknown format, corrupt, truncated).
    #[error("{}: {msg}", path.display())]
    Audio { path: PathBuf, msg: String },
    /// A corpus, manifest, vocabulary or cache file has the wrong shape or content.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            err,
        }
    }
    pub(crate) fn audio(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        DataError::Audio {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        DataError::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// The feature encoder of every released wav2vec2 / XLSR checkpoint: seven convolutions as
/// (kernel, stride), about one frame per 320 samples (a model's `config.json` may differ).
pub const WAV2VEC2_CONVS: [(usize, usize); 7] =
    [(10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2)];

/// Output frames of unpadded convolutions (kernel, stride) over `samples`: the one formula
/// behind every frame count (the model's `Config::frames` and [`wav2vec2_frames`]).
pub fn conv_frames(samples: usize, convs: impl IntoIterator<Item = (usize, usize)>) -> usize {
    convs.into_iter().fold(samples, |len, (k, s)| {
        len.checked_sub(k).map_or(0, |v| v / s + 1)
    })
}

/// Number of wav2vec2 output frames for `samples` input samples ([`WAV2VEC2_CONVS`]).
pub fn wav2vec2_frames(samples: usize) -> usize {
    conv_frames(samples, WAV2VEC2_CONVS)
}

/// Frames CTC needs to emit `labels`: one per label plus a blank between each pair of equal
/// neighbours.
pub fn ctc_min_frames(labels: &[u32]) -> usize {
    labels.len() + labels.windows(2).filter(|w| w[0] == w[1]).count()
}
