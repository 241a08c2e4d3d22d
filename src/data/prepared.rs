//! A prep folder opened for training: [`Prepared`] reads back what `xlsr prepare` wrote.

use super::audio::SAMPLE_RATE;
use super::prepare::{Index, Options, Summary, Utterance, VERSION};
use super::{ctc_min_frames, wav2vec2_frames, DataError, Vocab};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Which prepared set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The training set (train + dev by default).
    Train,
    /// The evaluation set (test).
    Test,
}

/// What [`Prepared::relabel`] changed.
#[derive(Clone, Debug, Default)]
pub struct Relabelled {
    /// Pieces of text the new vocabulary lacks (now its unknown token), and how often.
    pub unknown: BTreeMap<String, usize>,
    /// Clips left out because their new labels need more CTC frames than their audio gives.
    pub dropped: Vec<String>,
}

/// A prep folder opened for training: the vocabulary, the utterances of each set, and the
/// cached audio, read on demand.
pub struct Prepared {
    /// The prep folder.
    pub dir: PathBuf,
    /// The tokenizer.
    pub vocab: Vocab,
    /// Training utterances.
    pub train: Vec<Utterance>,
    /// Evaluation utterances.
    pub test: Vec<Utterance>,
    /// The options the folder was prepared with.
    pub options: Options,
    /// What `prepare` kept and skipped.
    pub summary: Summary,
    /// The fingerprint of the corpus listings it was prepared from (see `prepare::run`).
    pub(super) listing_key: Option<u64>,
    audio: Mutex<File>,
    audio_samples: u64,
}

impl Prepared {
    /// Opens a folder written by [`run`](super::prepare::run).
    pub fn open(dir: &Path) -> Result<Prepared, DataError> {
        let path = dir.join("index.json");
        let text = crate::files::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        let mut index: Index = serde_json::from_str(&text)
            .map_err(|e| DataError::format(&path, format!("invalid index: {e}")))?;
        if index.version != VERSION || index.sample_rate != SAMPLE_RATE {
            return Err(DataError::format(
                &path,
                format!(
                    "prep folder version {} ({} Hz); run `xlsr prepare` again",
                    index.version, index.sample_rate
                ),
            ));
        }
        index.options.out = dir.to_path_buf();
        let vocab = Vocab::load(dir)?;
        let audio_path = dir.join("audio.f32");
        crate::files::check_regular(&audio_path).map_err(|e| DataError::io(&audio_path, e))?;
        if !audio_path.exists() {
            let msg = "missing: the prep folder is incomplete; run `xlsr prepare --force`";
            return Err(DataError::format(&audio_path, msg));
        }
        let file = File::open(&audio_path).map_err(|e| DataError::io(&audio_path, e))?;
        let bytes = file
            .metadata()
            .map_err(|e| DataError::io(&audio_path, e))?
            .len();
        let audio_samples = bytes / 4;
        let end = index
            .train
            .iter()
            .chain(&index.test)
            .map(|u| u.offset + u.samples as u64)
            .max()
            .unwrap_or(0);
        // `prepare` writes exactly the indexed clips: any other size is another cache.
        if bytes != end * 4 {
            return Err(DataError::format(
                &audio_path,
                format!(
                    "holds {} bytes but the index's clips take {} ({end} samples): the cache \
                     is damaged or not this index's; run `xlsr prepare --force`",
                    bytes,
                    end * 4
                ),
            ));
        }
        Ok(Prepared {
            dir: dir.to_path_buf(),
            vocab,
            train: index.train,
            test: index.test,
            options: index.options,
            summary: index.summary,
            listing_key: index.listing_key,
            audio: Mutex::new(file),
            audio_samples,
        })
    }

    /// Encodes every transcript again with `vocab` (a fine-tuned model's, to continue with its
    /// head), which becomes this corpus's tokenizer for the run; the folder on disk is not
    /// changed. Clips whose new labels are too long for their audio are left out.
    pub fn relabel(&mut self, vocab: &Vocab) -> Relabelled {
        let mut r = Relabelled::default();
        for set in [&mut self.train, &mut self.test] {
            set.retain_mut(|u| {
                let l = vocab.labels(&u.text);
                for piece in l.unknown {
                    *r.unknown.entry(piece).or_default() += 1;
                }
                if ctc_min_frames(&l.ids) > wav2vec2_frames(u.samples) {
                    r.dropped.push(u.id.clone());
                    return false;
                }
                u.labels = l.ids;
                true
            });
        }
        self.vocab = vocab.clone();
        r
    }

    /// The utterances of a set.
    pub fn split(&self, split: Split) -> &[Utterance] {
        match split {
            Split::Train => &self.train,
            Split::Test => &self.test,
        }
    }

    /// Sample counts of a set, for [`super::Batcher::new`].
    pub fn lengths(&self, split: Split) -> Vec<usize> {
        self.split(split).iter().map(|u| u.samples).collect()
    }

    /// The cached 16 kHz samples of `utt` (raw, not normalised).
    pub fn audio(&self, utt: &Utterance) -> Result<Vec<f32>, DataError> {
        let path = self.dir.join("audio.f32");
        if utt.offset + utt.samples as u64 > self.audio_samples {
            return Err(DataError::format(
                &path,
                format!("{} lies past the end", utt.id),
            ));
        }
        let mut bytes = vec![0u8; utt.samples * 4];
        {
            let mut f = self.audio.lock().unwrap_or_else(|p| p.into_inner());
            f.seek(SeekFrom::Start(utt.offset * 4))
                .and_then(|_| f.read_exact(&mut bytes))
                .map_err(|e| DataError::io(&path, e))?;
        }
        let x: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        // `prepare` writes finite samples only; anything else is a damaged cache.
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(DataError::format(
                &path,
                format!(
                    "sample {i} of {} is {}: the cache is damaged; run `xlsr prepare --force`",
                    utt.id, x[i]
                ),
            ));
        }
        Ok(x)
    }
}
