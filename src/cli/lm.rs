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
    /// Order of the model (5 in the Hugging Face n-gram recipe)
    #[arg(long, default_value_t = 5)]
    pub order: usize,
    /// The ARPA file to write
    #[arg(long)]
    pub out: PathBuf,
    /// Characters to delete from sentences (as `xlsr prepare`)
    #[arg(long, default_value = crate::data::text::DEFAULT_CHARS_TO_REMOVE)]
    pub chars_to_remove: String,
    /// Lowercase I as ı and İ as i (as `xlsr prepare`)
    #[arg(long)]
    pub turkish_lowercase: bool,
}

/// Runs `xlsr lm`.
pub fn run(args: &LmArgs) -> Result<()> {
    let LmCmd::Build(b) = &args.cmd;
    if !(1..=9).contains(&b.order) {
        anyhow::bail!("--order {}: expected 1 to 9", b.order);
    }
    let norm = crate::data::text::TextNorm {
        chars_to_remove: b.chars_to_remove.clone(),
        turkish: b.turkish_lowercase,
    };
    let mut kn = crate::decode::KneserNey::new(b.order);
    let mut sentences = 0usize;
    for path in &b.text {
        let file = std::fs::File::open(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        for line in std::io::BufReader::new(file).lines() {
            let line = line.with_context(|| format!("{}: cannot read", path.display()))?;
            let text = norm.apply(&line);
            if !text.is_empty() {
                kn.add_sentence(&text);
                sentences += 1;
            }
        }
    }
    if sentences == 0 {
        anyhow::bail!("no sentences in {:?} after normalisation", b.text);
    }
    let built = kn.write_arpa(&b.out)?;
    println!(
        "{sentences} sentences; n-grams per order {:?}; wrote {}",
        built.ngrams,
        b.out.display()
    );
    Ok(())
}
