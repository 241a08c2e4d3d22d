//! `xlsr bench`: the kernel benchmarks, or the training-step benchmark alone.

use anyhow::Result;

/// Command-line arguments of `xlsr bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Shrink the shapes (for slow CPU adapters)
    #[arg(long)]
    pub quick: bool,
    /// Only run benchmarks whose name contains this
    #[arg(long)]
    pub filter: Option<String>,
    /// Training-step benchmark only (XLSR-53 shape): clips per batch
    #[arg(long)]
    pub batch: Option<usize>,
    /// Training-step benchmark: seconds per clip [default: 4]
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Training-step benchmark: encoder layers (24 in XLSR-53)
    #[arg(long)]
    pub layers: Option<usize>,
    /// Training-step benchmark: gradient checkpointing
    #[arg(long)]
    pub checkpointing: bool,
    /// Training-step benchmark: fp16 mixed precision with loss scaling
    #[arg(long)]
    pub fp16: bool,
    /// Training-step benchmark: attention as separate matmul, softmax and dropout kernels
    /// that keep the [B, H, T, T] probabilities, instead of the fused kernels (to compare;
    /// under --fp16 its matmuls run on f16 inputs, on tensor cores where the GPU has them)
    #[arg(long)]
    pub unfused_attention: bool,
    /// Training-step benchmark: an mms-1b-all-sized model (48 layers, 1280 wide) training only
    /// its attention adapters and head, as the MMS adapter recipe does
    #[arg(long)]
    pub adapter_only: bool,
    /// Training-step benchmark: count device memory and the engine's work (dispatches,
    /// bind groups, submits, waits) without running kernels, for shapes too slow to run,
    /// e.g. batch 16 x 5 s on a CPU adapter
    #[arg(long, alias = "memory-only")]
    pub count_only: bool,
    /// Training-step benchmark: timed steps after the warm-up (the median is reported)
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Time summing this many MB of f32 gradients over the MPI ranks (1262 for XLSR-53's
    /// 315M parameters) as data-parallel training does: under `mpirun -np N` with the `mpi`
    /// feature; the read-back, MPI_Allreduce and write-back, median of --steps
    #[arg(long)]
    pub allreduce: Option<f64>,
    /// Print every result as one JSON object on stdout (the table goes to stderr)
    #[arg(long)]
    pub json: bool,
    /// Time the builds of each kernel shape class the benchmark launches (GEMM tiles,
    /// split-K, cooperative matrices staged or not, conv tiles, attention lanes), on first
    /// launch, keep the fastest in this adapter's tuning file, which train, eval, transcribe
    /// and bench then use (XLSR_TUNE=0: defaults); `--retune` forgets the old choices first
    #[arg(long)]
    pub tune: bool,
    /// `--tune`, measuring every class again (the old choices forgotten)
    #[arg(long)]
    pub retune: bool,
}

/// Most encoder layers a step benchmark builds (mms-1b has 48).
const MAX_LAYERS: usize = 96;
/// Most audio a step benchmark holds (batch x seconds), which it makes on the host first.
const MAX_AUDIO_SECONDS: f64 = 3600.0;

/// Refuses flags the chosen benchmark would ignore, and sizes it could not run: checked
/// before anything is built (a huge `--seconds` once asked the host for 640 GB and aborted).
fn check(args: &BenchArgs) -> Result<()> {
    use anyhow::bail;
    if args.steps == 0 {
        bail!("--steps 0: expected at least 1");
    }
    if let Some(mb) = args.allreduce {
        // 65,536 MB: 16 G f32 gradients, 4x mms-1b-all's.
        if !(mb.is_finite() && mb > 0.0 && mb <= 65536.0) {
            bail!("--allreduce {mb}: expected a number of MB > 0 and at most 65536");
        }
        return Ok(());
    }
    let step_flags = [
        ("--seconds", args.seconds.is_some()),
        ("--layers", args.layers.is_some()),
        ("--checkpointing", args.checkpointing),
        ("--fp16", args.fp16),
        ("--unfused-attention", args.unfused_attention),
        ("--adapter-only", args.adapter_only),
        ("--count-only", args.count_only),
    ];
    let Some(batch) = args.batch else {
        if let Some((flag, _)) = step_flags.iter().find(|(_, set)| *set) {
            bail!("{flag} is a flag of the training-step benchmark: give --batch N too");
        }
        return Ok(());
    };
    let seconds = args.seconds.unwrap_or(4.0);
    // XLSR-53's feature encoder (and mms-1b's) needs 400 samples for one frame.
    let min = crate::model::Config::xlsr53(40).min_samples() as f64 / 16000.0;
    if !(seconds.is_finite() && seconds >= min) {
        bail!("--seconds {seconds}: expected a finite number >= {min} (one frame of the feature encoder)");
    }
    if batch == 0 || batch as f64 * seconds > MAX_AUDIO_SECONDS {
        bail!(
            "--batch {batch} --seconds {seconds}: expected a batch of 1 or more clips and at \
             most {MAX_AUDIO_SECONDS} s of audio in all"
        );
    }
    if let Some(l) = args.layers.filter(|l| !(1..=MAX_LAYERS).contains(l)) {
        bail!("--layers {l}: expected 1 to {MAX_LAYERS}");
    }
    Ok(())
}

/// Runs the benchmarks: with `--batch`, the training-step benchmark alone.
pub fn run(args: &BenchArgs) -> Result<()> {
    check(args)?;
    if let Some(mb) = args.allreduce {
        let dist = crate::dist::Dist::init()?;
        let gpu = crate::Gpu::nth(dist.local_rank())?;
        let r = crate::bench::allreduce(&gpu, &dist, (mb * 1e6) as u64, args.steps.max(1))?;
        if dist.is_root() {
            eprintln!(
                "gradient all-reduce, {:.0} MB over {} ranks on {}: read back {:.1} ms, \
                 MPI_Allreduce {:.1} ms, write {:.1} ms, {:.1} ms per step",
                r.bytes as f64 / 1e6,
                r.ranks,
                gpu.info().name,
                r.read_ms,
                r.reduce_ms,
                r.write_ms,
                r.total_ms
            );
            if args.json {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        return Ok(());
    }
    let gpu = super::open_gpu(0)?;
    let tune = args.tune || args.retune;
    if args.retune {
        gpu.clear_tuned();
    }
    let before = gpu.tuned_choices();
    if tune {
        gpu.set_tuning(crate::engine::TuneMode::Measure);
    }
    let mut log = bench_log(args.json);
    let report = match args.batch {
        Some(batch) => {
            let m = crate::bench::ModelStep {
                batch,
                seconds: args.seconds.unwrap_or(4.0),
                layers: args.layers,
                checkpoint: args.checkpointing,
                fp16: args.fp16,
                unfused_attention: args.unfused_attention,
                adapter_only: args.adapter_only,
                count_only: args.count_only,
                steps: args.steps,
            };
            let _ = writeln!(log, "{}", crate::bench::adapter_line(&gpu));
            let step = crate::bench::model_step(&gpu, &m, &mut log)?;
            crate::bench::Report::new(&gpu, Vec::new(), Some(step))
        }
        None => {
            let quick = args.quick
                || (gpu.info().device_type == wgpu::DeviceType::Cpu
                    && !std::env::var("XLSR_BENCH_FULL").is_ok_and(|v| v == "1"));
            let report = crate::bench::run(&gpu, quick, args.filter.as_deref(), &mut log)?;
            let nothing_ran = report.results.is_empty() && report.model_step.is_none();
            if let Some(f) = args.filter.as_ref().filter(|_| nothing_ran) {
                anyhow::bail!("--filter {f:?}: no benchmark's name contains it");
            }
            report
        }
    };
    if tune {
        save_tuning(&gpu, &before, &mut log)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// Writes the tuning file and lists the shape classes measured in this run.
fn save_tuning(
    gpu: &crate::Gpu,
    before: &std::collections::BTreeMap<String, crate::engine::Choice>,
    log: &mut dyn std::io::Write,
) -> Result<()> {
    let path = gpu.tuning_path().ok_or_else(|| {
        anyhow::anyhow!("no place for the tuning file: set XLSR_TUNING_DIR or HOME")
    })?;
    gpu.save_tuning(&path)?;
    let all = gpu.tuned_choices();
    let new: Vec<_> = all
        .iter()
        .filter(|(k, _)| !before.contains_key(*k))
        .collect();
    writeln!(
        log,
        "\ntuned {} shape classes ({} in {}):",
        new.len(),
        all.len(),
        path.display()
    )?;
    writeln!(log, "| shape class | pick | ms per launch of each build |")?;
    writeln!(log, "| --- | --- | --- |")?;
    for (key, c) in new {
        let times: Vec<String> = c
            .times_ms
            .iter()
            .map(|(b, ms)| format!("{b} {ms:.3}"))
            .chain(
                c.rejected
                    .iter()
                    .map(|b| format!("{b} REJECTED (output differs)")),
            )
            .collect();
        writeln!(log, "| {key} | {} | {} |", c.pick, times.join(", "))?;
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
