//! Evaluation metrics as `jiwer` 3.x/4.x computes them (WER, CER), greedy CTC decoding's argmax,
//! and `metrics.jsonl`, the run's log history.
//!
//! jiwer's default transforms, reproduced exactly:
//! - WER: `RemoveMultipleSpaces` (every run of two or more whitespace characters becomes one
//!   space; a single tab or no-break space stays as it is), `Strip`, then split on the space
//!   character, dropping empty words.
//! - CER: `Strip`, then Unicode code points (spaces count).
//!
//! "Whitespace" is Python's `str.isspace`, which `\s` and `str.strip()` use. Both rates are
//! corpus-level: total edits over total reference tokens. When the references hold no token at
//! all, jiwer returns the number of insertions, and so do we.

use crate::error::{shape_err, Error, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Python's `str.isspace`: Unicode White_Space plus the ASCII separators U+001C..U+001F.
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` with no arguments.
fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// The words jiwer's `wer_default` transform makes of one sentence.
pub fn wer_tokens(s: &str) -> Vec<String> {
    // RemoveMultipleSpaces: re.sub(r"\s\s+", " ", s).
    let mut collapsed = String::with_capacity(s.len());
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let mut j = i;
        while j < chars.len() && py_isspace(chars[j]) {
            j += 1;
        }
        match j - i {
            0 => {
                collapsed.push(chars[i]);
                i += 1;
            }
            1 => {
                collapsed.push(chars[i]);
                i = j;
            }
            _ => {
                collapsed.push(' ');
                i = j;
            }
        }
    }
    // Strip, then ReduceToListOfListOfWords: split on " " and drop empty strings.
    py_strip(&collapsed)
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// The characters jiwer's `cer_default` transform makes of one sentence.
pub fn cer_tokens(s: &str) -> Vec<char> {
    py_strip(s).chars().collect()
}

/// Edit distance (substitutions, insertions, deletions all cost 1) between two sequences.
pub fn levenshtein<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    // One row of the classic table: row[j] = distance(a[..i], b[..j]).
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            let next = (diag + (x != y) as usize)
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Summed edit counts over a corpus; the rate is `edits / ref_tokens`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    /// Total edit distance.
    pub edits: u64,
    /// Total reference tokens (words or characters).
    pub ref_tokens: u64,
}

impl ErrorCounts {
    /// The error rate, with jiwer's convention for empty references (the edit count).
    pub fn rate(&self) -> f64 {
        if self.ref_tokens == 0 {
            self.edits as f64
        } else {
            self.edits as f64 / self.ref_tokens as f64
        }
    }

    /// Adds another corpus' counts (to accumulate across evaluation batches).
    pub fn add(&mut self, other: ErrorCounts) {
        self.edits += other.edits;
        self.ref_tokens += other.ref_tokens;
    }
}

fn check_lengths<R: AsRef<str>, H: AsRef<str>>(
    op: &'static str,
    refs: &[R],
    hyps: &[H],
) -> Result<()> {
    if refs.len() != hyps.len() {
        return shape_err(
            op,
            format!("{} references but {} hypotheses", refs.len(), hyps.len()),
        );
    }
    Ok(())
}

/// Word edit counts of hypotheses against references (pairwise, summed).
pub fn word_errors<R: AsRef<str>, H: AsRef<str>>(refs: &[R], hyps: &[H]) -> Result<ErrorCounts> {
    check_lengths("wer", refs, hyps)?;
    let mut c = ErrorCounts::default();
    for (r, h) in refs.iter().zip(hyps) {
        let (r, h) = (wer_tokens(r.as_ref()), wer_tokens(h.as_ref()));
        c.edits += levenshtein(&r, &h) as u64;
        c.ref_tokens += r.len() as u64;
    }
    Ok(c)
}

/// Character edit counts of hypotheses against references (pairwise, summed).
pub fn char_errors<R: AsRef<str>, H: AsRef<str>>(refs: &[R], hyps: &[H]) -> Result<ErrorCounts> {
    check_lengths("cer", refs, hyps)?;
    let mut c = ErrorCounts::default();
    for (r, h) in refs.iter().zip(hyps) {
        let (r, h) = (cer_tokens(r.as_ref()), cer_tokens(h.as_ref()));
        c.edits += levenshtein(&r, &h) as u64;
        c.ref_tokens += r.len() as u64;
    }
    Ok(c)
}

/// `jiwer.wer(refs, hyps)`: corpus word error rate.
pub fn wer<R: AsRef<str>, H: AsRef<str>>(refs: &[R], hyps: &[H]) -> Result<f64> {
    Ok(word_errors(refs, hyps)?.rate())
}

/// `jiwer.cer(refs, hyps)`: corpus character error rate.
pub fn cer<R: AsRef<str>, H: AsRef<str>>(refs: &[R], hyps: &[H]) -> Result<f64> {
    Ok(char_errors(refs, hyps)?.rate())
}

/// The most likely token of each of the first `frames` frames of row-major `[T, vocab]` logits
/// (`torch.argmax(logits, -1)`: the first maximum wins, NaN counts as the maximum). Padding
/// frames past `frames` are ignored; collapsing repeats and blanks is the vocabulary's job.
pub fn greedy_decode(logits: &[f32], frames: usize, vocab: usize) -> Result<Vec<u32>> {
    if vocab == 0 || logits.len() < frames * vocab {
        return shape_err(
            "greedy_decode",
            format!(
                "{} logits for {frames} frames of vocabulary {vocab}",
                logits.len()
            ),
        );
    }
    Ok(logits
        .chunks_exact(vocab)
        .take(frames)
        .map(|row| {
            let mut best = 0;
            for (k, &x) in row.iter().enumerate().skip(1) {
                if row[best].is_nan() {
                    break;
                }
                if x > row[best] || x.is_nan() {
                    best = k;
                }
            }
            best as u32
        })
        .collect())
}

/// `RUN_DIR/metrics.jsonl`: one JSON object per logged step, with the key names of HF's
/// `trainer.state.log_history` (`step`, `epoch`, `loss`, `learning_rate`, `grad_norm`;
/// evaluation rows `eval_loss`, `eval_wer`, `eval_cer`). Each row is written and flushed at
/// once, so a killed run loses nothing already logged.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

/// One row of the log: a JSON object.
pub type LogRow = serde_json::Map<String, serde_json::Value>;

impl MetricsLog {
    /// Opens `run_dir/metrics.jsonl` for appending (a resumed run continues the same file).
    pub fn open(run_dir: &Path) -> Result<MetricsLog> {
        let path = run_dir.join("metrics.jsonl");
        crate::files::check_regular(&path).map_err(|e| Error::File {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::File {
                path: path.display().to_string(),
                msg: format!("cannot open for appending: {e}"),
            })?;
        Ok(MetricsLog { path, file })
    }

    /// Drops the rows logged after `step` (what a killed run logged past the checkpoint a
    /// resumed run restarts from), so that no step appears twice. A missing log is fine.
    pub fn truncate_after(run_dir: &Path, step: u64) -> Result<()> {
        let path = run_dir.join("metrics.jsonl");
        if !path.exists() {
            return Ok(());
        }
        let text = Self::text(&path)?;
        let rows = Self::parse(&path, &text)?;
        // The kept rows as they were written, byte for byte (parsing and printing a float
        // again may change its last digit); a torn last line is not among `rows`.
        let lines = text.lines().filter(|l| !l.trim().is_empty());
        let mut kept = String::new();
        for (line, r) in lines.zip(&rows) {
            if r.get("step")
                .and_then(|s| s.as_u64())
                .is_none_or(|s| s <= step)
            {
                kept += line;
                kept.push('\n');
            }
        }
        crate::files::write_atomic(&path, kept.as_bytes())
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one row and flushes it.
    pub fn write(&mut self, row: &LogRow) -> Result<()> {
        // One write call per line: a reader never sees half a row from us.
        let mut line = serde_json::to_string(row).map_err(|e| Error::File {
            path: self.path.display().to_string(),
            msg: e.to_string(),
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::File {
                path: self.path.display().to_string(),
                msg: format!("cannot write: {e}"),
            })
    }

    /// Logs a training row (HF: `loss`, `grad_norm`, `learning_rate`, `epoch`, `step`).
    pub fn train(
        &mut self,
        step: u64,
        epoch: f64,
        loss: f64,
        learning_rate: f64,
        grad_norm: f64,
    ) -> Result<()> {
        self.write(&row(&[
            ("loss", loss.into()),
            ("grad_norm", grad_norm.into()),
            ("learning_rate", learning_rate.into()),
            ("epoch", epoch.into()),
            ("step", step.into()),
        ]))
    }

    /// Logs an evaluation row (HF: `eval_loss`, `eval_wer`, `eval_cer`, `epoch`, `step`).
    pub fn eval(&mut self, step: u64, epoch: f64, loss: f64, wer: f64, cer: f64) -> Result<()> {
        self.write(&row(&[
            ("eval_loss", loss.into()),
            ("eval_wer", wer.into()),
            ("eval_cer", cer.into()),
            ("epoch", epoch.into()),
            ("step", step.into()),
        ]))
    }

    /// Reads every row of a log (e.g. to redraw the plot after `--resume`); a torn last line
    /// from a killed run is ignored.
    pub fn read(path: &Path) -> Result<Vec<LogRow>> {
        Self::parse(path, &Self::text(path)?)
    }

    /// The text of the log at `path` (not a FIFO, which would block).
    fn text(path: &Path) -> Result<String> {
        crate::files::read_to_string(path).map_err(|e| Error::File {
            path: path.display().to_string(),
            msg: e.to_string(),
        })
    }

    /// The rows of a log's `text`, read from `path`.
    fn parse(path: &Path, text: &str) -> Result<Vec<LogRow>> {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut rows = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_str::<LogRow>(line) {
                Ok(r) => rows.push(r),
                Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
                Err(e) => {
                    return Err(Error::File {
                        path: path.display().to_string(),
                        msg: format!("line {}: {e}", i + 1),
                    })
                }
            }
        }
        Ok(rows)
    }

    /// The `(step, value)` pairs of one key over the rows that have it (for plotting).
    pub fn series(rows: &[LogRow], key: &str) -> Vec<(u64, f64)> {
        rows.iter()
            .filter_map(|r| Some((r.get("step")?.as_u64()?, r.get(key)?.as_f64()?)))
            .collect()
    }
}

fn row(kv: &[(&str, serde_json::Value)]) -> LogRow {
    kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}
