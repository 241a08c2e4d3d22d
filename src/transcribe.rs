//! `xlsr transcribe`: audio files in, greedy CTC transcripts out (and optionally the raw logits).

use crate::data::{audio, Vocab};
use crate::error::{file_err, Result};
use crate::model::{Forward, Wav2Vec2ForCtc};
use crate::{Gpu, Tape, Tensor};
use std::path::{Path, PathBuf};

/// One transcribed file.
pub struct Transcript {
    /// The input file.
    pub file: PathBuf,
    /// Greedy CTC decoding of the logits.
    pub text: String,
    /// The LM head's output, [frames, vocab] row-major.
    pub logits: Vec<f32>,
    /// Frames.
    pub frames: usize,
}

/// A loaded model and its tokenizer, ready to transcribe.
pub struct Transcriber {
    /// The model.
    pub model: Wav2Vec2ForCtc,
    /// The tokenizer from the model folder's `vocab.json`.
    pub vocab: Vocab,
}

impl Transcriber {
    /// Loads `dir`: a model folder with `config.json`, weights and `vocab.json`.
    pub fn load(gpu: &Gpu, dir: &Path) -> Result<Transcriber> {
        let (model, _) = Wav2Vec2ForCtc::load(gpu, dir, None, 0)?;
        let vocab = Vocab::load(dir)?;
        // The tokenizer may count special tokens (<s>, </s>) the head never predicts; the
        // blank must be one of the head's outputs.
        if vocab.pad as usize >= model.config.vocab_size {
            return file_err(
                dir.join("vocab.json"),
                format!(
                    "pad token id {} is outside the model's {} CTC outputs: not this model's vocabulary",
                    vocab.pad, model.config.vocab_size
                ),
            );
        }
        Ok(Transcriber { model, vocab })
    }

    /// Decodes, resamples and normalises `file` as `Wav2Vec2FeatureExtractor` does, runs the
    /// model and decodes greedily.
    pub fn transcribe(&self, file: &Path) -> Result<Transcript> {
        let mut x = audio::load(file)?;
        let frames = self.model.config.frames(x.len());
        if frames == 0 {
            return file_err(
                file,
                format!(
                    "{} samples at 16 kHz is too short for the model (needs at least {})",
                    x.len(),
                    self.model.config.conv_kernel[0]
                ),
            );
        }
        audio::normalize(&mut x);
        let gpu = &self.model.gpu;
        let input = Tensor::from_slice(gpu, &x, &[1, x.len()])?;
        let tape = Tape::new();
        let out = tape.no_grad(|| self.model.forward(&tape, &input, None, &Forward::default()))?;
        let logits = out.logits.value.to_vec()?;
        let v = self.model.config.vocab_size;
        let ids = crate::metrics::greedy_decode(&logits, frames, v)?;
        Ok(Transcript {
            file: file.to_path_buf(),
            text: self.vocab.decode_ctc(&ids),
            logits,
            frames,
        })
    }
}

/// Writes each transcript's logits as one f32 tensor [frames, vocab] named by the input's file
/// name (the path as given when two inputs share a name).
pub fn save_logits(path: &Path, transcripts: &[Transcript], vocab: usize) -> Result<()> {
    let name_of = |t: &Transcript| -> String {
        let name = t
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let shared = transcripts
            .iter()
            .filter(|o| o.file.file_name() == t.file.file_name())
            .count()
            > 1;
        if shared {
            t.file.display().to_string()
        } else {
            name
        }
    };
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = transcripts
        .iter()
        .map(|t| {
            (
                name_of(t),
                vec![t.frames, vocab],
                t.logits[..t.frames * vocab].to_vec(),
            )
        })
        .collect();
    crate::model::checkpoint::save(path, &tensors)
}
