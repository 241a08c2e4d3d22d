//! `xlsr prepare`.

use crate::data::prepare::{self, Options, Source};
use anyhow::Result;
use std::path::PathBuf;

/// Command-line arguments of `xlsr prepare`.
#[derive(clap::Args, Debug)]
pub struct PrepareArgs {
    /// Common Voice folder (train.tsv, dev.tsv, test.tsv, clips/)
    #[arg(long, required_unless_present = "train_manifest")]
    pub data: Option<PathBuf>,
    /// Instead of --data: `path<TAB>sentence` manifest(s) to train on (repeatable)
    #[arg(long, conflicts_with = "data")]
    pub train_manifest: Vec<PathBuf>,
    /// With --train-manifest: manifest(s) to evaluate on (repeatable)
    #[arg(long, requires = "train_manifest")]
    pub test_manifest: Vec<PathBuf>,
    /// Prep folder to write (vocabulary files, audio cache, index)
    #[arg(long)]
    pub out: PathBuf,
    /// Skip clips longer than this many seconds
    #[arg(long, default_value_t = 10.0)]
    pub max_seconds: f32,
    /// Lowercase I as ı and İ as i (Turkish, Azerbaijani)
    #[arg(long)]
    pub turkish_lowercase: bool,
    /// Characters to delete from sentences
    #[arg(long, default_value = crate::data::text::DEFAULT_CHARS_TO_REMOVE)]
    pub chars_to_remove: String,
    /// Common Voice splits to train on
    #[arg(long, value_delimiter = ',', default_value = "train,dev")]
    pub train_splits: Vec<String>,
    /// Common Voice splits to evaluate on
    #[arg(long, value_delimiter = ',', default_value = "test")]
    pub test_splits: Vec<String>,
    /// Encode the transcripts with this vocabulary (a model folder, a prep folder or a
    /// vocab.json) instead of building one from the corpus; characters it lacks become its
    /// unknown token and are counted
    #[arg(long)]
    pub vocab: Option<PathBuf>,
    /// Decode again even if PREP_DIR was made with the same settings from the same TSV files
    #[arg(long)]
    pub force: bool,
}

/// `xlsr prepare`: prepares the corpus and prints the summary.
pub fn run(args: &PrepareArgs) -> Result<()> {
    let source = match &args.data {
        Some(dir) => Source::CommonVoice {
            dir: dir.clone(),
            train_splits: args.train_splits.clone(),
            test_splits: args.test_splits.clone(),
        },
        None => Source::Manifests {
            train: args.train_manifest.clone(),
            test: args.test_manifest.clone(),
        },
    };
    let mut opts = Options::new(source, &args.out);
    opts.max_seconds = args.max_seconds;
    opts.turkish_lowercase = args.turkish_lowercase;
    opts.chars_to_remove = args.chars_to_remove.clone();
    opts.force = args.force;
    opts.vocab = args.vocab.clone();
    let summary = prepare::run(&opts)?;
    println!("{summary}");
    println!("wrote {}", args.out.display());
    Ok(())
}
