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
    /// Its words with their start and end in seconds (transformers' `output_word_offsets`
    /// times the feature encoder's stride over the sampling rate).
    pub words: Vec<TimedWord>,
    /// The LM head's output, [frames, vocab] row-major.
    pub logits: Vec<f32>,
    /// Frames.
    pub frames: usize,
}

/// A word of a transcript and when it is spoken.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TimedWord {
    /// The word.
    pub word: String,
    /// Start, seconds from the start of the file.
    pub start: f64,
    /// End, seconds.
    pub end: f64,
}

/// A loaded model and its tokenizer, ready to transcribe.
pub struct Transcriber {
    /// The model.
    pub model: Wav2Vec2ForCtc,
    /// The tokenizer from the model folder's `vocab.json`.
    pub vocab: Vocab,
}

/// `target_lang` of a folder's `tokenizer_config.json`, if any.
fn tokenizer_target_lang(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("target_lang")?.as_str().map(String::from)
}

impl Transcriber {
    /// Loads `dir`: a model folder with `config.json`, weights and `vocab.json`.
    pub fn load(gpu: &Gpu, dir: &Path) -> Result<Transcriber> {
        Self::load_lang(gpu, dir, None)
    }

    /// [`Transcriber::load`] of an MMS model with the adapter, head and vocabulary of `lang`
    /// (`None`: the tokenizer config's `target_lang`, as transformers' default).
    pub fn load_lang(gpu: &Gpu, dir: &Path, lang: Option<&str>) -> Result<Transcriber> {
        let vocab = Vocab::load_lang(dir, lang)?;
        // The language asked for must have an adapter; the tokenizer's default one is used
        // when the folder has its adapter file.
        let target_lang = match lang {
            Some(l) => Some(l.to_string()),
            None => tokenizer_target_lang(dir)
                .filter(|l| dir.join(format!("adapter.{l}.safetensors")).is_file()),
        };
        let opts = crate::model::LoadOptions {
            target_lang,
            ..Default::default()
        };
        let (model, report) = Wav2Vec2ForCtc::load_with(gpu, dir, &opts, |_| {})?;
        if report.initialised.iter().any(|n| n.starts_with("lm_head")) {
            // load() makes a random head for a pretraining checkpoint; decoding with it is
            // noise. Only `xlsr train` may create a head.
            return file_err(
                dir,
                "has no CTC head (lm_head.weight): a pretraining checkpoint, not a fine-tuned \
                 model. Fine-tune it first with `xlsr train` (which creates the head)",
            );
        }
        vocab.check_head(&dir.join("vocab.json"), model.config.vocab_size)?;
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
                    self.model.config.min_samples()
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
        // Seconds per output frame: the feature encoder's total stride over the rate.
        let stride: usize = self.model.config.conv_stride.iter().product();
        let seconds = |frame: usize| (frame * stride) as f64 / audio::SAMPLE_RATE as f64;
        let words = self
            .vocab
            .word_offsets(&ids)
            .into_iter()
            .map(|w| TimedWord {
                word: w.word,
                start: seconds(w.start),
                end: seconds(w.end),
            })
            .collect();
        Ok(Transcript {
            file: file.to_path_buf(),
            text: self.vocab.decode_ctc(&ids),
            words,
            logits,
            frames,
        })
    }
}

/// Checks the `--logits` output path before anything runs: it must not be one of the inputs
/// (`transcribe --logits a.wav b.wav`, a forgotten output argument, once overwrote `a.wav`),
/// nor any existing audio file, nor a folder.
pub fn check_logits_path(out: &Path, inputs: &[PathBuf]) -> Result<()> {
    let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if inputs.iter().any(|i| same(i, out)) {
        return file_err(
            out,
            "--logits names one of the input files; give the output file first \
             (`--logits out.safetensors a.wav ...`)",
        );
    }
    if out.is_dir() {
        return file_err(out, "--logits must be a file, not a folder");
    }
    if out.is_file() && is_audio(out) {
        return file_err(
            out,
            "--logits would overwrite an existing audio file; name a .safetensors file",
        );
    }
    Ok(())
}

/// Whether `path` looks like audio: its extension, or its first bytes (RIFF/WAVE, ID3 or an
/// MPEG frame sync, fLaC, OggS).
fn is_audio(path: &Path) -> bool {
    const EXT: [&str; 9] = [
        "wav", "wave", "mp3", "flac", "ogg", "oga", "opus", "m4a", "aac",
    ];
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if EXT.contains(&ext.as_str()) {
        return true;
    }
    let mut head = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    n == 4
        && (matches!(&head, b"RIFF" | b"fLaC" | b"OggS")
            || &head[..3] == b"ID3"
            || (head[0] == 0xFF && head[1] & 0xE0 == 0xE0))
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
