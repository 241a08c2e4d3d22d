//! `cargo bench`: the kernel benchmarks. Shapes shrink on CPU adapters unless XLSR_BENCH_FULL=1;
//! a trailing argument filters cases by name. The CTC case is set against the CPU reference
//! the tests use (`tests/common/ctc.rs`), single-threaded in f64.

#[path = "../tests/common/ctc.rs"]
mod ctc;

use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let gpu = xlsr::Gpu::new()?;
    let quick = gpu.info().device_type == wgpu::DeviceType::Cpu
        && std::env::var("XLSR_BENCH_FULL").is_err();
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let report = xlsr::bench::run(&gpu, quick, filter.as_deref(), &mut std::io::stdout())?;
    if let Some(gpu_case) = report.results.iter().find(|m| m.name.starts_with("ctc ")) {
        // The GPU case's shape: batch, frames, vocabulary, labels per utterance.
        let (b, t, v, l) = if quick {
            (4, 100, 40, 20)
        } else {
            (16, 500, 40, 100)
        };
        let mut rng = xlsr::rng::Rng::new(18);
        let logits: Vec<f64> = (0..t * v).map(|_| rng.uniform() - 0.5).collect();
        let target: Vec<usize> = (0..l).map(|i| 1 + i * 7 % (v - 1)).collect();
        let t0 = Instant::now();
        for _ in 0..b {
            std::hint::black_box(ctc::ctc_reference(&logits, t, v, &target, 0));
        }
        let cpu_ms = t0.elapsed().as_secs_f64() * 1e3;
        println!(
            "{:<48} {cpu_ms:>10.3} ms   (GPU is {:.1}x the single-thread CPU)",
            "ctc loss+grad, CPU f64 reference",
            cpu_ms / gpu_case.ms
        );
    }
    Ok(())
}
