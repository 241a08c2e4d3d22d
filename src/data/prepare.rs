//! `xlsr prepare`: read a corpus, normalise its text, build the vocabulary, decode every clip
//! once (in parallel) into a flat 16 kHz f32 cache, and [`Prepared`] to read it back.
//!
//! The prep folder holds `vocab.json`, `tokenizer_config.json`, `preprocessor_config.json`,
//! `audio.f32` (every kept clip's raw 16 kHz samples back to back, little-endian f32, not
//! normalised) and `index.json` (per split: id, sentence, normalised text, label ids, offset and
//! length in `audio.f32`; plus what was skipped and why).

use super::audio::{self, SAMPLE_RATE};
use super::corpus::{self, Row};
use super::prepared::Prepared;
use super::text::TextNorm;
use super::vocab::Vocab;
use super::{ctc_min_frames, wav2vec2_frames, DataError};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Version of the prep folder layout; `Prepared::open` refuses others.
pub(super) const VERSION: u32 = 1;

pub use super::corpus::Source;

/// Settings of `xlsr prepare`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Options {
    /// The corpus.
    pub source: Source,
    /// The prep folder to write.
    #[serde(skip)]
    pub out: PathBuf,
    /// Clips longer than this many seconds are skipped.
    pub max_seconds: f32,
    /// Characters removed from sentences.
    pub chars_to_remove: String,
    /// Turkish-aware lowercasing.
    pub turkish_lowercase: bool,
    /// Encode with this vocabulary (a model or prep folder, or a vocab.json) instead of
    /// building one from the corpus.
    #[serde(default)]
    pub vocab: Option<PathBuf>,
    /// Show a progress bar (on a terminal).
    #[serde(skip)]
    pub progress: bool,
    /// Decode again even if `out` was prepared with the same settings.
    #[serde(skip)]
    pub force: bool,
}

impl Options {
    /// Defaults: 10 s clips at most, the notebook's character set, plain lowercasing.
    pub fn new(source: Source, out: impl Into<PathBuf>) -> Options {
        let text = TextNorm::default();
        Options {
            source,
            out: out.into(),
            max_seconds: 10.0,
            chars_to_remove: text.chars_to_remove,
            turkish_lowercase: text.turkish,
            vocab: None,
            progress: true,
            force: false,
        }
    }

    /// Same corpus and settings (the output folder and progress bar aside).
    fn same_settings(&self, other: &Options) -> bool {
        self.source == other.source
            && self.max_seconds == other.max_seconds
            && self.chars_to_remove == other.chars_to_remove
            && self.turkish_lowercase == other.turkish_lowercase
            && self.vocab == other.vocab
    }

    /// A fingerprint of the files that list the corpus ([`Source::listing_files`]): their
    /// paths and bytes. A cache made from other listings is not reused.
    fn listing_key(&self) -> u64 {
        let files = self.source.listing_files();
        let contents: Vec<Vec<u8>> = files
            .iter()
            .map(|f| std::fs::read(f).unwrap_or_default())
            .collect();
        let paths = files.iter().map(|f| f.as_os_str().as_encoded_bytes());
        crate::rng::fnv1a(paths.chain(contents.iter().map(Vec::as_slice)))
    }

    fn text_norm(&self) -> TextNorm {
        TextNorm {
            chars_to_remove: self.chars_to_remove.clone(),
            turkish: self.turkish_lowercase,
        }
    }
}

/// Why an utterance was left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Skip {
    /// The TSV row had the wrong number of fields, or a clip path that leaves `clips/`.
    MalformedRow,
    /// Nothing left of the sentence after normalisation.
    EmptySentence,
    /// The clip file does not exist.
    MissingClip,
    /// The clip file is empty or decodes to no samples.
    EmptyClip,
    /// The clip could not be decoded (corrupt, truncated, unknown format).
    BadAudio,
    /// Longer than `max_seconds`.
    TooLong,
    /// Too short for its transcript: wav2vec2 emits fewer frames than CTC needs.
    LabelTooLong,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skip::MalformedRow => "malformed row",
            Skip::EmptySentence => "empty sentence after normalisation",
            Skip::MissingClip => "missing clip",
            Skip::EmptyClip => "empty clip",
            Skip::BadAudio => "corrupt or undecodable audio",
            Skip::TooLong => "longer than the maximum duration",
            Skip::LabelTooLong => "transcript too long for the audio",
        })
    }
}

/// One skipped utterance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Skipped {
    /// The file named in the warning: the clip, or the TSV for a malformed row.
    pub file: PathBuf,
    /// Split or manifest.
    pub split: String,
    /// Why.
    pub reason: Skip,
    /// Details (decoder message, duration, line number...).
    pub detail: String,
}

/// One kept utterance of a prepared split.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Utterance {
    /// Clip name as the corpus lists it.
    pub id: String,
    /// Split or manifest it came from (`train`, `dev`...).
    pub split: String,
    /// The transcript as written.
    pub sentence: String,
    /// The normalised transcript the labels encode.
    pub text: String,
    /// Label ids.
    pub labels: Vec<u32>,
    /// First sample in `audio.f32`.
    pub offset: u64,
    /// Number of 16 kHz samples.
    pub samples: usize,
}

impl Utterance {
    /// Duration in seconds.
    pub fn seconds(&self) -> f32 {
        self.samples as f32 / SAMPLE_RATE as f32
    }
}

/// What `prepare` did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// Kept utterances per set (`train`, `test`).
    pub kept: BTreeMap<String, usize>,
    /// Kept audio in seconds per set.
    pub kept_seconds: BTreeMap<String, f64>,
    /// Every skipped utterance.
    pub skipped: Vec<Skipped>,
    /// Seconds of audio decoded, kept or not.
    pub decoded_seconds: f64,
    /// Wall seconds spent decoding; 0 when the cache was reused.
    pub decode_wall_seconds: f64,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// With a given vocabulary: pieces of text it lacks (now the unknown token), and how often.
    #[serde(default)]
    pub unknown: BTreeMap<String, usize>,
    /// True when an existing prep folder with the same settings was reused.
    #[serde(default)]
    pub reused: bool,
}

impl Summary {
    /// Skipped counts by reason.
    pub fn skipped_by_reason(&self) -> BTreeMap<Skip, usize> {
        let mut m = BTreeMap::new();
        for s in &self.skipped {
            *m.entry(s.reason).or_insert(0) += 1;
        }
        m
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (set, n) in &self.kept {
            let secs = self.kept_seconds.get(set).copied().unwrap_or(0.0);
            // `+ 0.0` turns the -0.0 of an empty sum into 0.0.
            writeln!(f, "kept {set}: {n} clips, {:.1} min", secs / 60.0 + 0.0)?;
        }
        writeln!(f, "skipped: {}", self.skipped.len())?;
        for (reason, n) in self.skipped_by_reason() {
            writeln!(f, "  {reason}: {n}")?;
        }
        write!(f, "vocabulary: {} tokens", self.vocab_size)?;
        if !self.unknown.is_empty() {
            let n: usize = self.unknown.values().sum();
            write!(
                f,
                "\n{n} characters not in the vocabulary became the unknown token: {}",
                super::vocab::unknown_summary(&self.unknown)
            )?;
        }
        if self.reused {
            write!(f, "\nreused the existing cache: nothing decoded")?;
        } else if self.decode_wall_seconds > 0.0 {
            write!(
                f,
                "\ndecoded {:.1} s of audio in {:.2} s ({:.0} audio seconds per second)",
                self.decoded_seconds,
                self.decode_wall_seconds,
                self.decoded_seconds / self.decode_wall_seconds
            )?;
        }
        Ok(())
    }
}

/// The on-disk index.
#[derive(Serialize, Deserialize)]
pub(super) struct Index {
    pub(super) version: u32,
    pub(super) sample_rate: u32,
    pub(super) options: Options,
    /// [`Options::listing_key`] when the folder was prepared (absent in older folders).
    #[serde(default)]
    pub(super) listing_key: Option<u64>,
    pub(super) summary: Summary,
    pub(super) train: Vec<Utterance>,
    pub(super) test: Vec<Utterance>,
}

/// Runs `xlsr prepare`: writes the vocabulary files, `audio.f32` and `index.json` into
/// `opts.out`. Bad rows and clips are skipped with a warning on stderr and counted; only an
/// unreadable corpus or an unwritable prep folder is an error. A prep folder already made with
/// the same settings from the same TSV files or manifests is reused without decoding anything
/// (unless `opts.force`; the clips themselves are not compared).
pub fn run(opts: &Options) -> Result<Summary, DataError> {
    if !(opts.max_seconds.is_finite() && opts.max_seconds > 0.0) {
        return Err(DataError::format(
            &opts.out,
            format!(
                "--max-seconds {}: must be a finite number of seconds > 0",
                opts.max_seconds
            ),
        ));
    }
    corpus::check_prep_out(&opts.out)?;
    let listing_key = opts.listing_key();
    let earlier = Prepared::open(&opts.out).ok().filter(|_| !opts.force);
    if let Some(p) = earlier.filter(|p| p.options.same_settings(opts)) {
        if p.listing_key == Some(listing_key) {
            let mut summary = p.summary;
            summary.reused = true;
            let _ = std::fs::remove_file(opts.out.join("audio.f32.tmp")); // a killed run's
            return Ok(summary);
        }
        if p.listing_key.is_some() {
            eprintln!(
                "note: the corpus's TSV files (or manifests) changed since {} was prepared: \
                 preparing it again",
                opts.out.display()
            );
        }
    }
    let norm = opts.text_norm();
    let mut skipped = Vec::new();
    let (train_rows, test_rows) = read_source(&opts.source, &mut skipped)?;

    // Normalise; the vocabulary covers train and test as in the notebook.
    let mut sets: Vec<(&str, Vec<(Row, String)>)> = Vec::new();
    for (set, rows) in [("train", train_rows), ("test", test_rows)] {
        let mut kept = Vec::new();
        for row in rows {
            let text = norm.apply(&row.sentence);
            if text.is_empty() {
                skip(
                    &mut skipped,
                    &row.path,
                    &row.split,
                    Skip::EmptySentence,
                    format!("{:?}", row.sentence),
                );
            } else {
                kept.push((row, text));
            }
        }
        sets.push((set, kept));
    }
    let vocab = match &opts.vocab {
        Some(path) => Vocab::load_any(path)?,
        None => Vocab::build(
            sets.iter()
                .flat_map(|(_, rows)| rows.iter().map(|(_, t)| t.as_str())),
        ),
    };
    let mut unknown: BTreeMap<String, usize> = BTreeMap::new();
    std::fs::create_dir_all(&opts.out).map_err(|e| DataError::io(&opts.out, e))?;

    // The audio goes to a temporary file and replaces an earlier cache only at the end, once
    // clips were kept: a corpus that turns out unusable leaves the earlier one as it was.
    let audio_path = opts.out.join("audio.f32.tmp");
    if !opts.out.join("index.json").exists() {
        // A cache without its index is of no use, and its room may be needed.
        let _ = std::fs::remove_file(opts.out.join("audio.f32"));
    }
    let file = File::create(&audio_path).map_err(|e| DataError::io(&audio_path, e))?;
    let mut writer = BufWriter::new(file);
    // A failed write (a full disk) leaves no partial cache behind.
    let write_failed = |e: std::io::Error| {
        let _ = std::fs::remove_file(&audio_path);
        DataError::io(&audio_path, e)
    };
    let mut offset = 0u64;
    let max_samples = (opts.max_seconds as f64 * SAMPLE_RATE as f64) as usize;
    let total: usize = sets.iter().map(|(_, r)| r.len()).sum();
    let bar = if opts.progress {
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "decoding {bar:40} {pos}/{len} clips [{elapsed_precise}<{eta_precise}, {per_sec}]",
            )
            .expect("valid template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let start = Instant::now();
    let mut decoded_samples = 0usize;
    let mut out_sets: BTreeMap<&str, Vec<Utterance>> = BTreeMap::new();
    for (set, rows) in &sets {
        let kept = out_sets.entry(set).or_default();
        // Chunks bound memory to a few hundred clips; rayon decodes each chunk in parallel
        // and the cache is written in corpus order.
        for chunk in rows.chunks(256) {
            let decoded: Vec<Result<Vec<f32>, DataError>> = chunk
                .par_iter()
                .map(|(row, _)| {
                    // A decoder bug on a hostile file must cost one clip, not the run.
                    let r =
                        std::panic::catch_unwind(|| audio::load(&row.path)).unwrap_or_else(|_| {
                            Err(DataError::audio(&row.path, "the decoder panicked"))
                        });
                    bar.inc(1);
                    r
                })
                .collect();
            for ((row, text), result) in chunk.iter().zip(decoded) {
                let samples = match result {
                    Ok(s) => s,
                    Err(e) => {
                        let reason = match &e {
                            DataError::Io { err, .. }
                                if err.kind() == std::io::ErrorKind::NotFound =>
                            {
                                Skip::MissingClip
                            }
                            DataError::EmptyAudio { .. } => Skip::EmptyClip,
                            _ => Skip::BadAudio,
                        };
                        skip_quiet(
                            &bar,
                            &mut skipped,
                            &row.path,
                            &row.split,
                            reason,
                            e.to_string(),
                        );
                        continue;
                    }
                };
                decoded_samples += samples.len();
                let labels = match opts.vocab {
                    // A given vocabulary may lack characters, or differ in case.
                    Some(_) => {
                        let l = vocab.labels(text);
                        for u in l.unknown {
                            *unknown.entry(u).or_default() += 1;
                        }
                        l.ids
                    }
                    None => vocab.encode(text),
                };
                let secs = samples.len() as f64 / SAMPLE_RATE as f64;
                let problem = if samples.is_empty() {
                    Some((Skip::EmptyClip, "no samples".to_string()))
                } else if samples.len() > max_samples {
                    Some((
                        Skip::TooLong,
                        format!("{secs:.2} s > {} s", opts.max_seconds),
                    ))
                } else if wav2vec2_frames(samples.len()) < ctc_min_frames(&labels) {
                    let detail = format!(
                        "{secs:.2} s gives {} frames, {} labels need {}",
                        wav2vec2_frames(samples.len()),
                        labels.len(),
                        ctc_min_frames(&labels)
                    );
                    Some((Skip::LabelTooLong, detail))
                } else {
                    None
                };
                if let Some((reason, detail)) = problem {
                    skip_quiet(&bar, &mut skipped, &row.path, &row.split, reason, detail);
                    continue;
                }
                let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
                writer.write_all(&bytes).map_err(write_failed)?;
                kept.push(Utterance {
                    id: row.id.clone(),
                    split: row.split.clone(),
                    sentence: row.sentence.clone(),
                    text: text.clone(),
                    labels,
                    offset,
                    samples: samples.len(),
                });
                offset += samples.len() as u64;
            }
        }
    }
    bar.finish_and_clear();
    writer.flush().map_err(write_failed)?;
    writer.get_ref().sync_all().map_err(write_failed)?;
    drop(writer);
    let wall = start.elapsed().as_secs_f64();

    let train = out_sets.remove("train").unwrap_or_default();
    let test = out_sets.remove("test").unwrap_or_default();
    if train.is_empty() && test.is_empty() {
        let _ = std::fs::remove_file(&audio_path);
        return Err(DataError::format(
            &opts.out,
            format!(
                "no usable clips ({} skipped; see the warnings above): nothing written",
                skipped.len()
            ),
        ));
    }
    let secs = |u: &[Utterance]| u.iter().map(|u| u.seconds() as f64).sum::<f64>();
    let summary = Summary {
        kept: [("train".into(), train.len()), ("test".into(), test.len())].into(),
        kept_seconds: [("train".into(), secs(&train)), ("test".into(), secs(&test))].into(),
        skipped,
        decoded_seconds: decoded_samples as f64 / SAMPLE_RATE as f64,
        decode_wall_seconds: wall,
        vocab_size: vocab.len(),
        unknown,
        reused: false,
    };
    let index = Index {
        version: VERSION,
        sample_rate: SAMPLE_RATE,
        options: opts.clone(),
        listing_key: Some(listing_key),
        summary: summary.clone(),
        train,
        test,
    };
    // The index is written last (through a rename), so an interrupted run never looks finished.
    let index_path = opts.out.join("index.json");
    let finish = || -> Result<(), DataError> {
        if index_path.exists() {
            std::fs::remove_file(&index_path).map_err(|e| DataError::io(&index_path, e))?;
        }
        vocab.save(&opts.out)?;
        let cache = opts.out.join("audio.f32");
        std::fs::rename(&audio_path, &cache).map_err(|e| DataError::io(&cache, e))?;
        let text = serde_json::to_string(&index).expect("index serialises");
        crate::files::write_atomic_io(&index_path, text.as_bytes())
            .map_err(|e| DataError::io(&index_path, e))
    };
    // A full disk here leaves no cache-sized temporary file behind.
    finish().inspect_err(|_| drop(std::fs::remove_file(&audio_path)))?;
    Ok(summary)
}

/// Reads the corpus rows of the training and evaluation sets; malformed rows go to `skipped`.
fn read_source(
    source: &Source,
    skipped: &mut Vec<Skipped>,
) -> Result<(Vec<Row>, Vec<Row>), DataError> {
    let mut tables = |names: Vec<(String, Option<&Path>)>| -> Result<Vec<Row>, DataError> {
        let mut rows = Vec::new();
        for (name, manifest) in names {
            let table = match (source, manifest) {
                (Source::CommonVoice { dir, .. }, None) => corpus::read_common_voice(dir, &name)?,
                (_, Some(m)) => corpus::read_manifest(m)?,
                _ => unreachable!("manifest sources always name their file"),
            };
            for m in table.malformed {
                let detail = format!("line {}: {}", m.line, m.reason);
                skip(skipped, &m.file, &name, Skip::MalformedRow, detail);
            }
            rows.extend(table.rows);
        }
        Ok(rows)
    };
    match source {
        Source::CommonVoice {
            dir,
            train_splits,
            test_splits,
        } => {
            if !dir.is_dir() {
                let what = if dir.exists() {
                    "not a folder"
                } else {
                    "no such folder"
                };
                let msg = format!("{what}: expected a Common Voice release (train.tsv, dev.tsv, test.tsv, clips/)");
                return Err(DataError::format(dir, msg));
            }
            let names = |v: &[String]| v.iter().map(|s| (s.clone(), None)).collect();
            Ok((tables(names(train_splits))?, tables(names(test_splits))?))
        }
        Source::Manifests { train, test } => {
            fn names(v: &[PathBuf]) -> Vec<(String, Option<&Path>)> {
                v.iter()
                    .map(|p| (p.display().to_string(), Some(p.as_path())))
                    .collect()
            }
            let (train, test) = (names(train), names(test));
            Ok((tables(train)?, tables(test)?))
        }
    }
}

fn skip(skipped: &mut Vec<Skipped>, file: &Path, split: &str, reason: Skip, detail: String) {
    eprintln!(
        "warning: skipping {} ({split}): {reason}: {detail}",
        file.display()
    );
    skipped.push(Skipped {
        file: file.to_path_buf(),
        split: split.to_string(),
        reason,
        detail,
    });
}

/// `skip` without tearing the progress bar.
fn skip_quiet(
    bar: &ProgressBar,
    skipped: &mut Vec<Skipped>,
    file: &Path,
    split: &str,
    reason: Skip,
    detail: String,
) {
    bar.suspend(|| skip(skipped, file, split, reason, detail));
}
