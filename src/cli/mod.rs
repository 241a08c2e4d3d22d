//! The command line: every subcommand's arguments (clap) and what runs them. The library
//! below takes plain option structs; this is the only place that knows about flags.

mod bench;
mod demo;
mod devices;
mod env;
mod eval;
mod lm;
mod prepare;
mod train;

pub use bench::BenchArgs;
pub use demo::DemoArgs;
pub use eval::{EvalArgs, TranscribeArgs};
pub use lm::LmArgs;
pub use prepare::PrepareArgs;
pub use train::{config_args, TrainArgs};

use anyhow::Result;
use clap::{Parser, Subcommand};

/// `xlsr`: one subcommand per job.
#[derive(Parser)]
#[command(
    name = "xlsr",
    version,
    about = "Fine-tune wav2vec2/XLSR speech models with CTC on any GPU",
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Cmd {
    /// List GPU adapters (pick one with XLSR_ADAPTER=NAME, a part of its name)
    Devices,
    /// Benchmark the kernels at wav2vec2-large shapes
    Bench(BenchArgs),
    /// Decode a Common Voice folder into a 16 kHz audio cache and build the vocabulary
    Prepare(PrepareArgs),
    /// Transcribe audio files with a model folder (greedy CTC decoding): prints FILE, a tab, TEXT
    Transcribe(TranscribeArgs),
    /// Fine-tune a model with CTC on a corpus (the seed notebook's defaults)
    Train(Box<TrainArgs>),
    /// Evaluate a model folder on a corpus split: WER, CER, CTC loss
    Eval(EvalArgs),
    /// Train a small model from scratch on the built-in Spanish corpus; shows loss and CER falling
    Demo(DemoArgs),
    /// n-gram language models for `--lm`: `xlsr lm build --text FILE --order N --out LM.arpa`
    Lm(LmArgs),
}

/// Opens the `nth` adapter of the best kind (see [`crate::Gpu::nth`]) with the kernel choices
/// measured on it before (`xlsr bench --tune`), unless `XLSR_TUNE=0`: one note on stderr
/// says which file they came from, or why a file there was ignored.
pub(crate) fn open_gpu(nth: usize) -> crate::engine::Result<crate::Gpu> {
    use crate::engine::{Loaded, TuneMode};
    let gpu = crate::Gpu::nth(nth)?;
    if std::env::var("XLSR_TUNE").is_ok_and(|v| v == "0") {
        return Ok(gpu);
    }
    let Some(path) = gpu.tuning_path() else {
        return Ok(gpu);
    };
    match gpu.load_tuning(&path) {
        Ok(Loaded::Choices(n)) => {
            gpu.set_tuning(TuneMode::Use);
            if nth == 0 {
                eprintln!("kernel choices for {n} shape classes from {} (XLSR_TUNE=0: defaults)", path.display());
            }
        }
        Ok(Loaded::Stale(why)) => eprintln!(
            "ignoring {}: {why}; default kernels (`xlsr bench --batch B --seconds S --tune` measures again)",
            path.display()
        ),
        Ok(Loaded::Missing) => {}
        Err(e) => eprintln!("ignoring {e}; default kernels"),
    }
    Ok(gpu)
}

/// The command line, with `xlsr train --config FILE`'s options put first (so the command
/// line's own win; `--model`, `--data` and `--out` may come from the file too). An option of
/// the file that clap refuses is named with the file.
fn parse() -> Result<Cli> {
    use std::ffi::OsString;
    // As the OS gives them: a file name need not be UTF-8 (Latin-1 archives).
    let argv: Vec<OsString> = std::env::args_os().collect();
    let configs: Vec<OsString> = match argv.get(1).and_then(|a| a.to_str()) {
        Some("train") => argv
            .iter()
            .enumerate()
            .skip(2)
            .filter_map(
                |(i, a)| match a.to_string_lossy().strip_prefix("--config") {
                    Some("") => argv.get(i + 1).cloned(),
                    // (A config file's name that is not UTF-8 is not found, and said so.)
                    Some(rest) => rest.strip_prefix('=').map(OsString::from),
                    None => None,
                },
            )
            .collect(),
        _ => Vec::new(),
    };
    let path = match &configs[..] {
        [] => return Ok(Cli::parse_from(argv)),
        [one] => std::path::PathBuf::from(one),
        _ => anyhow::bail!("--config given {} times: give one file", configs.len()),
    };
    let from_file = train::config_args(&path)?;
    let path = path.display();
    let mut full = argv[..2].to_vec();
    full.extend(from_file.iter().map(OsString::from));
    full.extend(argv[2..].iter().cloned());
    Cli::try_parse_from(full).or_else(|e| {
        // The option clap names, if the file gave it: the file is the place to look.
        let bad = e
            .get(clap::error::ContextKind::InvalidArg)
            .map(|v| v.to_string());
        let flag = bad.as_deref().and_then(|b| b.split([' ', '=']).next());
        let from_the_file = |f: &str| from_file.iter().any(|a| a.split('=').next() == Some(f));
        if flag.is_some_and(from_the_file) {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or_default();
            anyhow::bail!("{path}: {}", first.trim_start_matches("error: "));
        }
        e.exit()
    })
}

/// Parses the command line and runs the subcommand.
pub fn run() -> Result<()> {
    let cli = parse()?;
    for w in env::check()? {
        eprintln!("{w}");
    }
    match cli.cmd {
        Cmd::Devices => devices::run()?,
        Cmd::Bench(args) => bench::run(&args)?,
        Cmd::Prepare(args) => prepare::run(&args)?,
        Cmd::Transcribe(args) => eval::transcribe(&args)?,
        Cmd::Demo(args) => {
            let gpu = open_gpu(0)?;
            crate::demo::run(&gpu, &args.into())?;
        }
        Cmd::Train(args) => {
            // Ctrl-C or SIGTERM in the training loop saves the step before stopping.
            crate::train::interrupt::catch_signals()?;
            let dist = crate::dist::Dist::init()?;
            let trained = open_gpu(dist.local_rank())
                .map_err(crate::error::Error::from)
                .and_then(|gpu| crate::train::run_dist(&gpu, &(*args).into(), &dist));
            if let Err(e) = trained {
                // An interruption stops every rank after the same step; other errors, one.
                let alone = !matches!(e, crate::Error::Interrupted { .. });
                if dist.size() > 1 && alone {
                    // The others would wait for this rank forever: stop them all.
                    let line = format!("xlsr: rank {} of {}: {e:#}", dist.rank(), dist.size());
                    crate::dist::say(&line);
                    dist.abort(1);
                }
                return Err(e.into());
            }
        }
        Cmd::Eval(args) => eval::eval(&args)?,
        Cmd::Lm(args) => lm::run(&args)?,
    }
    Ok(())
}
