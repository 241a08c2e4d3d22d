//! `xlsr demo`.

use crate::demo::Options;
use std::path::PathBuf;

/// Command-line arguments of `xlsr demo` (defaults from [`Options::default`]).
#[derive(clap::Args, Clone, Debug)]
pub struct DemoArgs {
    /// Optimiser steps
    #[arg(long, default_value_t = Options::default().steps)]
    pub steps: u64,
    /// Training clips used (the corpus's first N)
    #[arg(long, default_value_t = Options::default().clips)]
    pub clips: usize,
    /// Run folder (prepared corpus, checkpoints, metrics.jsonl, training.svg, final model)
    #[arg(long, default_value_os_t = Options::default().out)]
    pub out: PathBuf,
    /// Corpus (default: the built-in Spanish corpus)
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Evaluate (on the training clips, to watch them being learnt) every N steps
    #[arg(long, default_value_t = Options::default().eval_steps)]
    pub eval_steps: u64,
    /// fp16 mixed precision with loss scaling (where the adapter has f16)
    #[arg(long)]
    pub fp16: bool,
}

impl From<DemoArgs> for Options {
    fn from(a: DemoArgs) -> Options {
        Options {
            steps: a.steps,
            clips: a.clips,
            out: a.out,
            data: a.data,
            eval_steps: a.eval_steps,
            fp16: a.fp16,
        }
    }
}
