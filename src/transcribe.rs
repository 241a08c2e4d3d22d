//! `xlsr transcribe`: audio files in, CTC transcripts out (greedy, or beam search with a
//! language model), with word times and optionally the raw logits.

use crate::data::{audio, Vocab};
use crate::error::{file_err, Error, Result};
use crate::model::{Forward, Wav2Vec2ForCtc};
use crate::{Gpu, Tape, Tensor};
use std::path::{Path, PathBuf};

/// One transcribed file.
pub struct Transcript {
    /// The input file.
    pub file: PathBuf,
    /// The decoded logits: greedy, or the best beam with `lm`.
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

/// How long audio is cut into windows, as transformers' ASR pipeline does with
/// `chunk_length_s` and `stride_length_s`: windows of `chunk_seconds` overlapping by
/// `stride_seconds` of context on each side, whose logits over the context are dropped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Chunking {
    /// Window length in seconds.
    pub chunk_seconds: f64,
    /// Context on each side in seconds (`None`: a sixth of the window, as transformers).
    pub stride_seconds: Option<f64>,
}

impl Default for Chunking {
    fn default() -> Self {
        Chunking {
            chunk_seconds: 20.0,
            stride_seconds: None,
        }
    }
}

/// One window of a long input: its samples and the frames to keep of its logits.
struct Window {
    start: usize,
    len: usize,
    /// Frames dropped at the start and at the end (the context of the neighbours).
    drop: (usize, usize),
    /// The frame count the stride is measured against (`total_n` in transformers).
    total: usize,
}

impl Chunking {
    /// Checks the window and stride for a model of `align` samples per frame, once, before
    /// any file (each file used to fail on them in turn).
    /// A window must also hold `min` samples, one frame of the feature encoder (shorter ones
    /// gave empty transcripts).
    pub fn check(&self, align: usize, min: usize) -> Result<()> {
        self.windows(0, align)?;
        let chunk = to_samples(self.chunk_seconds, align);
        if chunk < min {
            return Err(Error::Usage(format!(
                "--chunk-seconds {}: a window must hold at least {min} samples ({} s), one \
                 frame of the model's feature encoder",
                self.chunk_seconds,
                min as f64 / audio::SAMPLE_RATE as f64
            )));
        }
        Ok(())
    }

    /// The windows of `n` samples for a model of `align` samples per frame, exactly as the
    /// pipeline's `chunk_iter` and `rescale_stride` cut them (Python's round, half to even).
    fn windows(&self, n: usize, align: usize) -> Result<Vec<Window>> {
        let round = |seconds: f64| to_samples(seconds, align);
        let chunk = round(self.chunk_seconds);
        let stride = round(self.stride_seconds.unwrap_or(self.chunk_seconds / 6.0));
        let positive = self.chunk_seconds.is_finite() && self.chunk_seconds > 0.0;
        let stride_ok = self
            .stride_seconds
            .is_none_or(|s| s.is_finite() && s >= 0.0);
        if !positive || !stride_ok || chunk <= 2 * stride {
            return Err(Error::Usage(format!(
                "--chunk-seconds {} must be positive and longer than twice --stride-seconds {} \
                 (in whole frames of {align} samples: {chunk} and {stride} samples)",
                self.chunk_seconds,
                self.stride_seconds.unwrap_or(self.chunk_seconds / 6.0)
            )));
        }
        let mut out = Vec::new();
        for start in (0..n).step_by(chunk - 2 * stride) {
            let end = (start + chunk).min(n);
            let len = end - start;
            let left = if start == 0 { 0 } else { stride };
            let last = start + chunk >= n;
            let right = if last { 0 } else { stride };
            let total = (len as f64 / align as f64).round_ties_even() as usize;
            let frames = |s: usize| (s as f64 / len as f64 * total as f64).round_ties_even();
            if len > left {
                out.push(Window {
                    start,
                    len,
                    drop: (frames(left) as usize, frames(right) as usize),
                    total,
                });
            }
            if last {
                break;
            }
        }
        Ok(out)
    }
}

/// `seconds` in samples, rounded to whole frames of `align` samples (Python's round).
fn to_samples(seconds: f64, align: usize) -> usize {
    ((seconds * audio::SAMPLE_RATE as f64 / align as f64).round_ties_even() as usize) * align
}

/// A loaded model and its tokenizer, ready to transcribe.
pub struct Transcriber {
    /// The model.
    pub model: Wav2Vec2ForCtc,
    /// The tokenizer from the model folder's `vocab.json`.
    pub vocab: Vocab,
    /// How audio longer than one window is cut.
    pub chunking: Chunking,
    /// Beam search with a language model instead of greedy decoding (`--lm`).
    pub lm: Option<crate::decode::LmDecoder>,
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
        if !dir.is_dir() {
            return crate::model::checkpoint::not_a_folder(dir);
        }
        if !dir.join("config.json").exists() {
            // A training run's folder holds models, not one.
            let has = |n: &str| dir.join(n).exists();
            if has("final") || has("metrics.jsonl") || has(".final.tmp") {
                let interrupted = match has("final") {
                    true => "",
                    false => {
                        " (it has no final/ yet: a run stopped while saving it finishes \
                               with `xlsr train --resume`)"
                    }
                };
                return file_err(
                    dir,
                    format!(
                        "a training run's folder, not a model's: give its final/ or one of its \
                         checkpoint-N folders{interrupted}"
                    ),
                );
            }
        }
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
        let (mut model, report) = Wav2Vec2ForCtc::load_with(gpu, dir, &opts, |_| {})?;
        if let Some(w) = report.unused_warning(dir) {
            eprintln!("{w}");
        }
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
                    "pad token {:?} has id {}, outside the model's {} CTC outputs: vocab.json \
                     lacks it (transformers then appends it) or is not this model's vocabulary",
                    vocab.pad_token(),
                    vocab.pad,
                    model.config.vocab_size
                ),
            );
        }
        // The head's blank is config.json's pad_token_id; greedy decoding drops vocab.json's
        // pad token. Two different ids would decode the blank as a letter. An MMS language
        // brings its own head and vocabulary under the one config.json all languages share:
        // its tokenizer's pad is its blank (transformers decodes with it too).
        if opts.target_lang.is_some() {
            model.config.pad_token_id = Some(vocab.pad as usize);
        } else if model.config.blank() != vocab.pad as usize {
            return file_err(
                dir.join("config.json"),
                format!(
                    "pad_token_id is {}, but vocab.json's pad token has id {}: the CTC blank \
                     must be the tokenizer's pad token",
                    model
                        .config
                        .pad_token_id
                        .map_or("null".to_string(), |p| p.to_string()),
                    vocab.pad
                ),
            );
        }
        Ok(Transcriber {
            model,
            vocab,
            chunking: Chunking::default(),
            lm: None,
        })
    }

    /// Decodes, resamples and normalises `file` as `Wav2Vec2FeatureExtractor` does, runs the
    /// model and decodes greedily. Audio longer than one window runs window by window (see
    /// [`Chunking`]), so device memory stays bounded whatever the file's length.
    pub fn transcribe(&self, file: &Path) -> Result<Transcript> {
        let x = audio::load(file)?;
        let align: usize = self.model.config.conv_stride.iter().product();
        let windows = self.chunking.windows(x.len(), align)?;
        let (logits, frames) = if windows.len() > 1 {
            self.logits_in_windows(&x, &windows)?
        } else {
            self.logits(file, x)?
        };
        let v = self.model.config.vocab_size;
        // Seconds per output frame: the feature encoder's total stride over the rate.
        let seconds = |frame: usize| (frame * align) as f64 / audio::SAMPLE_RATE as f64;
        let timed = |word: String, start: usize, end: usize| TimedWord {
            word,
            start: seconds(start),
            end: seconds(end),
        };
        let (text, words) = match &self.lm {
            Some(d) => {
                let best = d.best(&logits[..frames * v]);
                let words = best.words.into_iter();
                (best.text, words.map(|(w, (s, e))| timed(w, s, e)).collect())
            }
            None => {
                let ids = crate::metrics::greedy_decode(&logits, frames, v)?;
                let words = self.vocab.word_offsets(&ids).into_iter();
                let words = words.map(|w| timed(w.word, w.start, w.end)).collect();
                (self.vocab.decode_ctc(&ids), words)
            }
        };
        Ok(Transcript {
            file: file.to_path_buf(),
            text,
            words,
            logits,
            frames,
        })
    }

    /// The logits of each window with its context frames dropped, joined: [frames, vocab].
    fn logits_in_windows(&self, x: &[f32], windows: &[Window]) -> Result<(Vec<f32>, usize)> {
        let v = self.model.config.vocab_size;
        let mut out = Vec::new();
        for w in windows {
            let piece = x[w.start..w.start + w.len].to_vec();
            let frames = self.model.config.frames(piece.len());
            if frames == 0 {
                // A last sliver too short for the model: transformers' pipeline fails on it;
                // it only holds context the previous window saw.
                continue;
            }
            let (logits, frames) = self.run(piece)?;
            // As the pipeline's `items[:, left:total_n - right]`, clipped to the frames there are.
            let end = w.total.saturating_sub(w.drop.1).min(frames);
            if w.drop.0 < end {
                out.extend_from_slice(&logits[w.drop.0 * v..end * v]);
            }
        }
        let frames = out.len() / v;
        Ok((out, frames))
    }

    /// The logits of a whole input, [frames, vocab], or an error naming `file` when it is
    /// too short for the model.
    fn logits(&self, file: &Path, x: Vec<f32>) -> Result<(Vec<f32>, usize)> {
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
        self.run(x)
    }

    /// Normalises `x` (one window, as the feature extractor does each) and runs the model:
    /// ([frames, vocab] logits, frames).
    fn run(&self, mut x: Vec<f32>) -> Result<(Vec<f32>, usize)> {
        audio::normalize(&mut x);
        let frames = self.model.config.frames(x.len());
        let gpu = &self.model.gpu;
        let input = Tensor::from_slice(gpu, &x, &[1, x.len()])?;
        let tape = Tape::new();
        let out = tape.no_grad(|| self.model.forward(&tape, &input, None, &Forward::default()))?;
        let logits = out.logits.value.to_vec()?;
        crate::model::check_logits(&logits)?;
        Ok((logits, frames))
    }
}

/// Checks the `--logits` output path before anything runs: it must not be one of the inputs
/// (`transcribe --logits a.wav b.wav`, a forgotten output argument, once overwrote `a.wav`),
/// nor any existing audio file, nor a folder, nor any existing file but an earlier run's logits
/// (a model's own weights, a text file).
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
    if out.is_file() && !is_logits_file(out) {
        return file_err(
            out,
            "--logits would overwrite an existing file that is not an earlier run's logits \
             (which xlsr tags in their metadata); delete it first or name another file",
        );
    }
    Ok(())
}

/// The `__metadata__` entry that marks a file `--logits` wrote.
const LOGITS_TAG: (&str, &str) = ("content", "xlsr transcribe --logits");

/// Whether `path` is what `--logits` writes: a safetensors file tagged [`LOGITS_TAG`] (a
/// model's weights, or any other file, never is).
fn is_logits_file(path: &Path) -> bool {
    crate::model::checkpoint::read_header(path).is_ok_and(|h| {
        h.get("__metadata__")
            .and_then(|m| m.get(LOGITS_TAG.0))
            .and_then(|v| v.as_str())
            == Some(LOGITS_TAG.1)
    })
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
    crate::model::checkpoint::save_with(path, &tensors, &[LOGITS_TAG])
}
