//! Corpus readers: Common Voice release folders and plain `path<TAB>sentence` manifests.
//!
//! Common Voice TSVs are read as HF `datasets` reads them (`csv.QUOTE_NONE`): split on tabs,
//! quotes are ordinary characters. A row whose column count is wrong but that parses as a
//! CSV-quoted row (`"..."` fields, `""` for a quote, possibly spanning lines) is read that way,
//! which covers sentences with tabs written by a quoting writer. Anything else is malformed:
//! reported and skipped.

use super::DataError;
use std::path::{Path, PathBuf};

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
    Ok(parse_rows(&file, &text, header.len(), 1, |fields| Row {
        id: fields[path_col].clone(),
        path: clips.join(&fields[path_col]),
        sentence: fields[sentence_col].clone(),
        split: split.to_string(),
    }))
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
    Ok(parse_rows(file, &text, 2, skip, |fields| Row {
        id: fields[0].clone(),
        path: base.join(&fields[0]),
        sentence: fields[1].clone(),
        split: split.clone(),
    }))
}

fn read_text(file: &Path) -> Result<String, DataError> {
    let bytes = std::fs::read(file).map_err(|e| DataError::io(file, e))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| DataError::format(file, format!("not UTF-8 text: {e}")))?;
    // A UTF-8 byte order mark would otherwise stick to the first column name.
    Ok(text.strip_prefix('\u{feff}').unwrap_or(&text).to_string())
}

/// Parses the lines after the first `skip` into rows of `ncols` fields.
fn parse_rows(
    file: &Path,
    text: &str,
    ncols: usize,
    skip: usize,
    make: impl Fn(&[String]) -> Row,
) -> Table {
    let lines: Vec<&str> = text.lines().collect();
    let mut table = Table::default();
    let mut i = skip;
    while i < lines.len() {
        let line = lines[i];
        if line.trim().is_empty() {
            i += 1;
            continue;
        }
        let literal: Vec<String> = line.split('\t').map(String::from).collect();
        if literal.len() == ncols {
            table.rows.push(make(&literal));
            i += 1;
            continue;
        }
        if let Some((fields, used)) = parse_quoted(&lines[i..], ncols) {
            table.rows.push(make(&fields));
            i += used;
            continue;
        }
        table.malformed.push(Malformed {
            file: file.to_path_buf(),
            line: i + 1,
            reason: format!("{} columns, expected {ncols}", literal.len()),
        });
        i += 1;
    }
    table
}

/// Reads one CSV-quoted record (tab-delimited, `"` quotes, `""` escapes) starting at
/// `lines[0]`, continuing onto following lines while a quoted field is open (at most 8).
/// Returns the fields and the number of lines used, if it has exactly `ncols` fields.
fn parse_quoted(lines: &[&str], ncols: usize) -> Option<(Vec<String>, usize)> {
    if !lines[0].contains('"') {
        return None;
    }
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut used = 1;
    let mut chars: Vec<char> = lines[0].chars().collect();
    let mut k = 0;
    let mut at_start = true;
    loop {
        if k == chars.len() {
            fields.push(std::mem::take(&mut field));
            break;
        }
        let c = chars[k];
        if at_start && c == '"' {
            // Quoted field: up to the closing quote, which may be lines further down.
            k += 1;
            loop {
                if k == chars.len() {
                    if used == lines.len() || used >= 8 {
                        return None;
                    }
                    field.push('\n');
                    chars.extend(lines[used].chars());
                    used += 1;
                    continue;
                }
                if chars[k] == '"' {
                    if chars.get(k + 1) == Some(&'"') {
                        field.push('"');
                        k += 2;
                        continue;
                    }
                    k += 1;
                    break;
                }
                field.push(chars[k]);
                k += 1;
            }
            at_start = false;
            continue;
        }
        if c == '\t' {
            fields.push(std::mem::take(&mut field));
            at_start = true;
        } else {
            field.push(c);
            at_start = false;
        }
        k += 1;
    }
    (fields.len() == ncols).then_some((fields, used))
}
