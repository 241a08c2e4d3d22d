//! The `xlsr` command line.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xlsr",
    version,
    about = "Fine-tune wav2vec2/XLSR speech models with CTC on any GPU"
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
    /// Train a tiny network on built-in synthetic data and show the loss falling
    Demo {
        /// Training steps
        #[arg(long, default_value_t = 200)]
        steps: usize,
    },
}

fn main() {
    // One line per error, whatever RUST_BACKTRACE says.
    if let Err(e) = run() {
        eprintln!("xlsr: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Devices => {
            let list = xlsr::gpu::adapters();
            if list.is_empty() {
                anyhow::bail!(xlsr::Error::NoAdapter(String::new()));
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
            }
            let gpu = xlsr::Gpu::new()?;
            println!("selected: {} ({:?})", gpu.info.name, gpu.info.backend);
        }
        Cmd::Bench { quick, filter } => {
            let gpu = xlsr::Gpu::new()?;
            let quick = quick
                || (gpu.info.device_type == wgpu::DeviceType::Cpu
                    && std::env::var("XLSR_BENCH_FULL").is_err());
            xlsr::bench::run(&gpu, quick, filter.as_deref())?;
        }
        Cmd::Prepare(args) => xlsr::data::prepare::run_cli(&args)?,
        Cmd::Transcribe {
            model,
            logits,
            files,
        } => transcribe(&model, logits.as_deref(), &files)?,
        Cmd::Demo { steps } => {
            let gpu = xlsr::Gpu::new()?;
            xlsr::demo::run(&gpu, steps.max(1))?;
        }
    }
    Ok(())
}

fn transcribe(
    model: &std::path::Path,
    logits: Option<&std::path::Path>,
    files: &[std::path::PathBuf],
) -> Result<()> {
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
