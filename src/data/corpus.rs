//! Corpus readers: Common Voice release folders and plain `path<TAB>sentence` manifests.
//!
//! Both are read as Common Voice writes them and HF `datasets` reads them (`csv.QUOTE_NONE`):
//! one row per line, split on tabs, quotes are ordinary characters. A row whose field count is
//! wrong is malformed: reported (file and line) and skipped, never joined with the next line.
//! A Common Voice `path` must name a file inside `clips/` (no `..`, no absolute path).

use super::DataError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the utterances come from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Source {
    /// A Common Voice release folder: `<split>.tsv` files and `clips/`.
    CommonVoice {
        dir: PathBuf,
        /// Splits concatenated into the training set (default `train`, `dev`).
        train_splits: Vec<String>,
        /// Splits concatenated into the evaluation set (default `test`).
        test_splits: Vec<String>,
    },
    /// `path<TAB>sentence` manifests.
    Manifests {
        train: Vec<PathBuf>,
        test: Vec<PathBuf>,
    },
}

impl Source {
    /// A Common Voice folder with the notebook's splits: train+dev to train on, test to evaluate.
    pub fn common_voice(dir: impl Into<PathBuf>) -> Source {
        Source::CommonVoice {
            dir: dir.into(),
            train_splits: vec!["train".into(), "dev".into()],
            test_splits: vec!["test".into()],
        }
    }

    /// The files that list the utterances: the release's `<split>.tsv`, or the manifests.
    pub fn listing_files(&self) -> Vec<PathBuf> {
        match self {
            Source::CommonVoice {
                dir,
                train_splits,
                test_splits,
            } => train_splits
                .iter()
                .chain(test_splits)
                .map(|s| dir.join(format!("{s}.tsv")))
                .collect(),
            Source::Manifests { train, test } => train.iter().chain(test).cloned().collect(),
        }
    }
}

/// One utterance as listed in a corpus file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The clip's name as the TSV gives it (`path` column), used as its id.
    pub id: String,
    /// Where the clip should be on disk.
    pub path: PathBuf,
    /// The transcript as written, before normalisation.
    pub sentence: String,
    /// The split (`train`, `dev`, `test`...) or manifest it came from.
    pub split: String,
}

/// A row that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// The TSV file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub reason: String,
}

/// The rows of one corpus file, and those that could not be read.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Well-formed rows, in file order.
    pub rows: Vec<Row>,
    /// Malformed rows, skipped.
    pub malformed: Vec<Malformed>,
}

/// Reads `<dir>/<split>.tsv` of a Common Voice release; clips are in `<dir>/clips/`. Columns are
/// found by header name (`path`, `sentence`), so any CV version works.
pub fn read_common_voice(dir: &Path, split: &str) -> Result<Table, DataError> {
    let file = dir.join(format!("{split}.tsv"));
    let text = read_text(&file)?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split('\t').collect();
    let col = |name: &str| {
        header.iter().position(|h| h.trim() == name).ok_or_else(|| {
            DataError::format(
                &file,
                format!("no `{name}` column in the header {header:?}: not a Common Voice TSV"),
            )
        })
    };
    let (path_col, sentence_col) = (col("path")?, col("sentence")?);
    let clips = dir.join("clips");
    Ok(parse_rows(&file, &text, header.len(), 1, |fields| {
        let name = &fields[path_col];
        if name.trim().is_empty() {
            return Err("empty path".to_string());
        }
        if !inside(Path::new(name)) {
            return Err(format!(
                "path {name:?} leaves clips/ (absolute, or with ..)"
            ));
        }
        Ok(Row {
            id: name.clone(),
            path: clips.join(name),
            sentence: fields[sentence_col].clone(),
            split: split.to_string(),
        })
    }))
}

/// Whether a relative path stays inside the folder it is joined to: only plain names (and
/// `.`), no `..`, root or drive prefix. Also used for the shards a checkpoint index names.
pub fn inside(path: &Path) -> bool {
    use std::path::Component;
    !path.as_os_str().is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// The names in folder `dir`, sorted; none where it does not exist or cannot be read. The
/// commands that write into a folder look at it first (`prepare`, `demo`, `train --out`).
pub fn entry_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The names in `dir`, a folder `--out` names, sorted (none where it does not exist yet); an
/// error where it is a file, which the command would otherwise fail on with the OS's words
/// about some path inside it.
pub fn out_entries(dir: &Path) -> Result<Vec<String>, DataError> {
    if dir.exists() && !dir.is_dir() {
        return Err(DataError::format(
            dir,
            "--out names a file; it takes a folder",
        ));
    }
    Ok(entry_names(dir))
}

/// Reads a manifest: one `path<TAB>sentence` per line, an optional `path<TAB>sentence` header,
/// paths relative to the manifest's folder (or absolute).
pub fn read_manifest(file: &Path) -> Result<Table, DataError> {
    let text = read_text(file)?;
    let base = file.parent().unwrap_or(Path::new("."));
    let first = text.lines().next().unwrap_or("");
    let skip = usize::from(first.trim().eq_ignore_ascii_case("path\tsentence"));
    let split = file
        .file_stem()
        .map_or_else(|| "manifest".into(), |s| s.to_string_lossy().into_owned());
    Ok(parse_rows(file, &text, 2, skip, |fields| {
        if fields[0].trim().is_empty() {
            return Err("empty path".to_string());
        }
        Ok(Row {
            id: fields[0].clone(),
            path: base.join(&fields[0]),
            sentence: fields[1].clone(),
            split: split.clone(),
        })
    }))
}

fn read_text(file: &Path) -> Result<String, DataError> {
    let bytes = std::fs::read(file).map_err(|e| DataError::io(file, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
        DataError::format(file, format!("line {line}: not UTF-8 text ({e})"))
    })?;
    // A UTF-8 byte order mark would otherwise stick to the first column name.
    Ok(text.strip_prefix('\u{feff}').unwrap_or(&text).to_string())
}

/// Parses the lines after the first `skip` into rows of `ncols` fields, one row per line.
fn parse_rows(
    file: &Path,
    text: &str,
    ncols: usize,
    skip: usize,
    make: impl Fn(&[String]) -> Result<Row, String>,
) -> Table {
    let mut table = Table::default();
    for (i, line) in text.lines().enumerate().skip(skip) {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<String> = line.split('\t').map(String::from).collect();
        let row = if fields.len() == ncols {
            make(&fields)
        } else {
            Err(format!("{} fields, expected {ncols}", fields.len()))
        };
        match row {
            Ok(r) => table.rows.push(r),
            Err(reason) => table.malformed.push(Malformed {
                file: file.to_path_buf(),
                line: i + 1,
                reason,
            }),
        }
    }
    table
}

/// Refuses an `--out` folder that holds something other than a prepared corpus (a model
/// folder's vocab.json and tokenizer files would be replaced): it must be new, empty, or hold
/// an earlier `prepare`'s `audio.f32` or `index.json` (finished, interrupted or damaged).
pub(super) fn check_prep_out(out: &Path) -> Result<(), DataError> {
    let names = out_entries(out)?;
    if names.is_empty()
        || names
            .iter()
            .any(|n| matches!(n.as_str(), "audio.f32" | "audio.f32.tmp" | "index.json"))
    {
        return Ok(());
    }
    let shown: Vec<&str> = names.iter().map(String::as_str).take(4).collect();
    Err(DataError::format(
        out,
        format!(
            "--out holds files that are no prepared corpus ({}{}); prepare writes vocab.json, \
             tokenizer files, audio.f32 and index.json there, so choose a new or empty folder",
            shown.join(", "),
            if names.len() > 4 { ", ..." } else { "" }
        ),
    ))
}
