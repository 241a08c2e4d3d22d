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
    /// Train a tiny network on built-in synthetic data and show the loss falling
    Demo {
        /// Training steps
        #[arg(long, default_value_t = 200)]
        steps: usize,
    },
}

fn main() -> Result<()> {
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
        Cmd::Demo { steps } => {
            let gpu = xlsr::Gpu::new()?;
            xlsr::demo::run(&gpu, steps.max(1))?;
        }
    }
    Ok(())
}
