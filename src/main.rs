//! The `xlsr` command line.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "xlsr",
    version,
    about = "Fine-tune wav2vec2/XLSR speech models with CTC on any GPU",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List GPU adapters (pick one with XLSR_ADAPTER=<name substring>)
    Devices,
    /// Benchmark the kernels at wav2vec2-large shapes
    Bench {
        /// Shrink the shapes (for slow CPU adapters)
        #[arg(long)]
        quick: bool,
        /// Only run benchmarks whose name contains this
        #[arg(long)]
        filter: Option<String>,
        /// Training-step benchmark only (XLSR-53 shape): clips per batch
        #[arg(long)]
        batch: Option<usize>,
        /// Training-step benchmark: seconds per clip
        #[arg(long, default_value_t = 4.0)]
        seconds: f64,
        /// Training-step benchmark: encoder layers (24 in XLSR-53)
        #[arg(long)]
        layers: Option<usize>,
        /// Training-step benchmark: gradient checkpointing
        #[arg(long)]
        checkpointing: bool,
        /// Training-step benchmark: fp16 mixed precision with loss scaling
        #[arg(long)]
        fp16: bool,
        /// Training-step benchmark: count device memory and the engine's work (dispatches,
        /// bind groups, submits, waits) without running kernels, for shapes too slow to run,
        /// e.g. batch 16 x 5 s on a CPU adapter
        #[arg(long, alias = "memory-only")]
        count_only: bool,
        /// Training-step benchmark: timed steps after the warm-up (the median is reported)
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Print every result as one JSON object on stdout (the table goes to stderr)
        #[arg(long)]
        json: bool,
    },
    /// Decode a Common Voice folder into a 16 kHz audio cache and build the vocabulary
    Prepare(xlsr::data::prepare::Args),
    /// Transcribe audio files with a model folder (greedy CTC decoding): prints FILE<TAB>TEXT
    Transcribe {
        /// Model folder: config.json, model.safetensors, vocab.json
        #[arg(long)]
        model: std::path::PathBuf,
        /// Also write each file's raw logits [frames, vocab] to this safetensors file
        #[arg(long)]
        logits: Option<std::path::PathBuf>,
        /// Audio files (WAV, MP3, FLAC, OGG Vorbis; any rate, mono or stereo)
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
    /// Fine-tune a model with CTC on a corpus (the seed notebook's defaults)
    Train(Box<xlsr::train::TrainArgs>),
    /// Evaluate a model folder on a corpus split: WER, CER, CTC loss
    Eval {
        /// Model folder: config.json, model.safetensors, vocab.json
        #[arg(long)]
        model: PathBuf,
        /// Corpus: a prep folder (`xlsr prepare`) or a Common Voice folder
        #[arg(long)]
        data: PathBuf,
        /// Which split: test (the evaluation set) or train
        #[arg(long, default_value = "test")]
        split: String,
        /// Utterances per batch
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        /// Evaluate at most this many utterances
        #[arg(long)]
        limit: Option<usize>,
        /// Print one JSON object (wer, cer, ctc_loss, utterances, skipped)
        #[arg(long)]
        json: bool,
    },
    /// Train a small model from scratch on the built-in Spanish corpus; shows loss and CER falling
    Demo(xlsr::demo::DemoArgs),
}

fn main() {
    // One line per error, whatever RUST_BACKTRACE says.
    if let Err(e) = run() {
        eprintln!("xlsr: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut cli = Cli::parse();
    if let Ok(v) = std::env::var("XLSR_MEMORY_LIMIT_GB") {
        if !v.parse::<f64>().is_ok_and(|gb| gb.is_finite() && gb > 0.0) {
            anyhow::bail!("XLSR_MEMORY_LIMIT_GB={v}: expected a number of gigabytes > 0 (e.g. 12)");
        }
    }
    // `--config train.json`: its options go first, so the command line's own win.
    if let Cmd::Train(args) = &cli.cmd {
        if let Some(path) = &args.config {
            let argv: Vec<String> = std::env::args().collect();
            let at = argv.iter().position(|a| a == "train").unwrap_or(1);
            let mut full = argv[..=at].to_vec();
            full.extend(xlsr::train::args::config_args(path)?);
            full.extend(argv[at + 1..].iter().cloned());
            cli = Cli::parse_from(full);
        }
    }
    match cli.cmd {
        Cmd::Devices => {
            let list = xlsr::engine::adapters();
            if list.is_empty() {
                anyhow::bail!(xlsr::engine::Error::NoAdapter(String::new()));
            }
            for (i, a) in list.iter().enumerate() {
                let l = &a.limits;
                println!(
                    "{i}: {} [{:?}, {:?}] driver {} {}",
                    a.info.name,
                    a.info.backend,
                    a.info.device_type,
                    a.info.driver,
                    a.info.driver_info
                );
                println!(
                    "   max buffer {} MiB, max storage binding {} MiB, workgroup memory {} KiB, invocations/workgroup {}, timestamps {}, f16 {}",
                    l.max_buffer_size >> 20,
                    l.max_storage_buffer_binding_size >> 20,
                    l.max_compute_workgroup_storage_size >> 10,
                    l.max_compute_invocations_per_workgroup,
                    a.features.contains(wgpu::Features::TIMESTAMP_QUERY),
                    a.features.contains(wgpu::Features::SHADER_F16),
                );
                let coop: Vec<String> = a
                    .coop
                    .iter()
                    .map(|c| {
                        format!(
                            "{}x{}x{} {:?}->{:?}",
                            c.m_size, c.n_size, c.k_size, c.ab_type, c.cr_type
                        )
                    })
                    .collect();
                println!(
                    "   subgroup size {}..{}, cooperative matrices: {}{}",
                    a.info.subgroup_min_size,
                    a.info.subgroup_max_size,
                    if coop.is_empty() {
                        "none".to_string()
                    } else {
                        coop.join(", ")
                    },
                    if xlsr::engine::coop_usable(&a.info, &a.coop) {
                        " (f16 GEMMs use 16x16x16 F16->F32)"
                    } else {
                        ""
                    }
                );
            }
            let gpu = xlsr::Gpu::new()?;
            println!(
                "selected: {} ({:?}), tensor-core GEMM {}",
                gpu.info().name,
                gpu.info().backend,
                if gpu.has_coop() { "on" } else { "off" }
            );
        }
        Cmd::Bench {
            batch: Some(batch),
            seconds,
            layers,
            checkpointing,
            fp16,
            count_only,
            steps,
            json,
            ..
        } => {
            let gpu = xlsr::Gpu::new()?;
            let m = xlsr::bench::ModelStep {
                batch,
                seconds,
                layers,
                checkpoint: checkpointing,
                fp16,
                count_only,
                steps,
            };
            let step = xlsr::bench::model_step(&gpu, &m, &mut bench_log(json))?;
            if json {
                let report = xlsr::bench::Report {
                    adapter: gpu.info().name.clone(),
                    backend: format!("{:?}", gpu.info().backend),
                    driver: format!("{} {}", gpu.info().driver, gpu.info().driver_info),
                    results: Vec::new(),
                    model_step: Some(step),
                };
                println!("{}", serde_json::to_string(&report)?);
            }
        }
        Cmd::Bench {
            quick,
            filter,
            json,
            ..
        } => {
            let gpu = xlsr::Gpu::new()?;
            let quick = quick
                || (gpu.info().device_type == wgpu::DeviceType::Cpu
                    && std::env::var("XLSR_BENCH_FULL").is_err());
            let report = xlsr::bench::run(&gpu, quick, filter.as_deref(), &mut bench_log(json))?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            }
        }
        Cmd::Prepare(args) => xlsr::data::prepare::run_cli(&args)?,
        Cmd::Transcribe {
            model,
            logits,
            files,
        } => transcribe(&model, logits.as_deref(), &files)?,
        Cmd::Demo(args) => {
            let gpu = xlsr::Gpu::new()?;
            xlsr::demo::run(&gpu, &args)?;
        }
        Cmd::Train(args) => {
            let gpu = xlsr::Gpu::new()?;
            xlsr::train::run(&gpu, &args)?;
        }
        Cmd::Eval {
            model,
            data,
            split,
            batch_size,
            limit,
            json,
        } => eval(&model, &data, &split, batch_size, limit, json)?,
    }
    Ok(())
}

/// Where `xlsr bench` writes its table: stdout, or stderr when stdout carries the JSON.
fn bench_log(json: bool) -> Box<dyn std::io::Write> {
    if json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    }
}

fn transcribe(
    model: &std::path::Path,
    logits: Option<&std::path::Path>,
    files: &[std::path::PathBuf],
) -> Result<()> {
    if let Some(path) = logits {
        xlsr::transcribe::check_logits_path(path, files)?;
    }
    let gpu = xlsr::Gpu::new()?;
    let t = xlsr::transcribe::Transcriber::load(&gpu, model)?;
    let mut done = Vec::new();
    let mut failed = 0;
    for f in files {
        match t.transcribe(f) {
            Ok(r) => {
                println!("{}\t{}", f.display(), r.text);
                done.push(r);
            }
            Err(e) => {
                eprintln!("xlsr: {e}");
                failed += 1;
            }
        }
    }
    if let Some(path) = logits {
        xlsr::transcribe::save_logits(path, &done, t.model.config.vocab_size)?;
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} files could not be transcribed", files.len());
    }
    Ok(())
}

fn eval(
    model: &std::path::Path,
    data: &std::path::Path,
    split: &str,
    batch_size: usize,
    limit: Option<usize>,
    json: bool,
) -> Result<()> {
    use xlsr::data::Split;
    let split = match split {
        "test" => Split::Test,
        "train" => Split::Train,
        other => anyhow::bail!("--split {other}: expected test or train"),
    };
    if batch_size == 0 {
        anyhow::bail!("--batch-size 0: must be at least 1");
    }
    let gpu = xlsr::Gpu::new()?;
    let t = xlsr::transcribe::Transcriber::load(&gpu, model)?;
    // A Common Voice folder is prepared (once) into a cache under the temp dir.
    let cache = std::env::temp_dir().join(format!(
        "xlsr-prepared-{:016x}",
        data.display()
            .to_string()
            .bytes()
            .fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64)
                .wrapping_mul(0x100000001b3))
    ));
    let prepared = xlsr::train::open_data(data, &cache)?;
    let r = xlsr::train::evaluate(&t.model, &t.vocab, &prepared, split, batch_size, limit)?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        for (reference, prediction) in r.pairs.iter().take(5) {
            println!("ref:  {reference}\npred: {prediction}");
        }
        println!(
            "WER {:.4}  CER {:.4}  CTC loss {:.4}  ({} utterances, {} clips skipped)",
            r.wer, r.cer, r.ctc_loss, r.utterances, r.skipped
        );
    }
    Ok(())
}
