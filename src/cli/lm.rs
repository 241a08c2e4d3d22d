//! `xlsr lm build`: an n-gram language model for `--lm` from text.

use anyhow::{Context, Result};
use std::io::BufRead;
use std::path::PathBuf;

/// Command-line arguments of `xlsr lm`.
#[derive(clap::Args, Debug)]
pub struct LmArgs {
    #[command(subcommand)]
    pub cmd: LmCmd,
}

/// The `xlsr lm` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum LmCmd {
    /// Estimate an n-gram model (interpolated modified Kneser-Ney, as KenLM's lmplz) from text
    /// files, one sentence per line, normalised as `xlsr prepare` does; writes ARPA
    Build(BuildArgs),
}

/// Arguments of `xlsr lm build`.
#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Text files, one sentence per line (repeatable)
    #[arg(long, required = true, num_args = 1..)]
    pub text: Vec<PathBuf>,
    /// Order of the model, 2 to 9 (5 in the Hugging Face n-gram recipe)
    #[arg(long, default_value_t = 5)]
    pub order: usize,
    /// The ARPA file to write (gzipped when it ends in .gz)
    #[arg(long)]
    pub out: PathBuf,
    /// Drop n-grams of order 3 and above seen only once (lmplz's --prune 0 0 1): a smaller
    /// model, usually as good
    #[arg(long)]
    pub prune_singletons: bool,
    /// Characters to delete from sentences (as `xlsr prepare`)
    #[arg(long, default_value = crate::data::text::DEFAULT_CHARS_TO_REMOVE)]
    pub chars_to_remove: String,
    /// Lowercase I as ı and İ as i (as `xlsr prepare`)
    #[arg(long)]
    pub turkish_lowercase: bool,
    /// Memory for counting and sorting, in MB (as lmplz's -S); what does not fit goes to
    /// temporary files
    #[arg(long, default_value_t = 1024)]
    pub memory: usize,
    /// Folder for the temporary files (default: the output's folder)
    #[arg(long)]
    pub temp_dir: Option<PathBuf>,
}

/// Runs `xlsr lm`.
pub fn run(args: &LmArgs) -> Result<()> {
    let LmCmd::Build(b) = &args.cmd;
    if b.order == 1 {
        // lmplz writes no back-offs at order 1, and pyctcdecode (so `--lm`) counts only 1-gram
        // lines with one as known words: every word would be unknown to the decoder.
        anyhow::bail!(
            "--order 1: a unigram model's words carry no back-off, and `--lm` (as pyctcdecode) \
             only knows words that do; use 2 to 9"
        );
    }
    if !(2..=9).contains(&b.order) {
        anyhow::bail!("--order {}: expected 2 to 9", b.order);
    }
    if b.memory == 0 {
        anyhow::bail!("--memory 0: expected at least 1 (MB)");
    }
    check_paths(b)?;
    let norm = crate::data::text::TextNorm {
        chars_to_remove: b.chars_to_remove.clone(),
        turkish: b.turkish_lowercase,
    };
    // Two passes over the text, which is never held in memory: the vocabulary, then the
    // n-gram counts (packed by the vocabulary's size).
    let mut words = std::collections::HashSet::new();
    let sentences = each_sentence(&b.text, &norm, |s| {
        words.extend(s.split_whitespace().map(String::from));
        Ok(())
    })?;
    if sentences == 0 {
        anyhow::bail!("no sentences in {:?} after normalisation", b.text);
    }
    let temp = match &b.temp_dir {
        Some(d) => d.clone(),
        None => match b.out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    };
    let mut kn = crate::decode::KneserNey::new(b.order, words, b.memory << 20, &temp)?;
    each_sentence(&b.text, &norm, |s| Ok(kn.add_sentence(s)?))?;
    let built = kn.write_arpa(&b.out, b.prune_singletons)?;
    let spilled = match built.spilled {
        0 => String::new(),
        n => format!(" (counts sorted through {n} temporary files)"),
    };
    println!(
        "{sentences} sentences; n-grams per order {:?}; wrote {}{spilled}",
        built.ngrams,
        b.out.display()
    );
    Ok(())
}

/// The text must be regular files (it is read twice: a pipe would be empty the second time,
/// and a FIFO without a writer blocks), and `--out` neither one of them nor an existing file
/// other than an ARPA model (it is replaced).
fn check_paths(b: &BuildArgs) -> Result<()> {
    for t in &b.text {
        let meta = std::fs::metadata(t).with_context(|| format!("{}: cannot read", t.display()))?;
        if !meta.is_file() {
            anyhow::bail!(
                "{}: not a regular file (the text is read twice, so a pipe or device cannot be \
                 used; save it to a file)",
                t.display()
            );
        }
    }
    let canonical: Vec<_> = b
        .text
        .iter()
        .filter_map(|t| std::fs::canonicalize(t).ok())
        .collect();
    if let Some(i) = (1..canonical.len()).find(|&i| canonical[..i].contains(&canonical[i])) {
        anyhow::bail!(
            "{}: given twice as --text (its counts would be doubled)",
            b.text[i].display()
        );
    }
    if b.out.is_dir() {
        anyhow::bail!(
            "{}: --out is a folder; give the ARPA file's name",
            b.out.display()
        );
    }
    let folder = b.out.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = folder.filter(|d| !d.is_dir()) {
        anyhow::bail!("{}: --out's folder does not exist", dir.display());
    }
    let Ok(out) = std::fs::canonicalize(&b.out) else {
        return Ok(()); // not there yet
    };
    if canonical.contains(&out) {
        anyhow::bail!("{}: --out is one of the --text files", b.out.display());
    }
    if !out.is_file() || !is_arpa(&out) {
        anyhow::bail!(
            "{}: --out exists and is not an ARPA model; it would be replaced, so remove it or \
             choose another name",
            b.out.display()
        );
    }
    Ok(())
}

/// Whether `path` (plain or gzipped) has an ARPA `\data\` line near its start.
fn is_arpa(path: &std::path::Path) -> bool {
    use std::io::Read;
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut file = std::io::BufReader::new(file);
    let gz = file.fill_buf().is_ok_and(|b| b.starts_with(&[0x1f, 0x8b]));
    let mut head = Vec::new();
    let read = match gz {
        true => flate2::bufread::MultiGzDecoder::new(file)
            .take(1 << 16)
            .read_to_end(&mut head),
        false => file.take(1 << 16).read_to_end(&mut head),
    };
    read.is_ok()
        && head
            .split(|&c| c == b'\n')
            .any(|l| l.trim_ascii() == b"\\data\\")
}

/// Calls `f` on each non-empty normalised line of `files`; returns how many.
fn each_sentence(
    files: &[PathBuf],
    norm: &crate::data::text::TextNorm,
    mut f: impl FnMut(&str) -> Result<()>,
) -> Result<usize> {
    let mut sentences = 0;
    for path in files {
        let file = std::fs::File::open(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let at = || format!("{}: line {}", path.display(), i + 1);
            let line = line.with_context(|| format!("{}: cannot read (not UTF-8 text?)", at()))?;
            if line.contains('\0') {
                anyhow::bail!("{}: a NUL byte (not text?)", at());
            }
            let text = norm.apply(&line);
            if !text.is_empty() {
                f(&text)?;
                sentences += 1;
            }
        }
    }
    Ok(sentences)
}
