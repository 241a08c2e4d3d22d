//! `cargo bench`: the kernel benchmarks. Shapes shrink on CPU adapters unless XLSR_BENCH_FULL=1;
//! a trailing argument filters cases by name.

fn main() -> anyhow::Result<()> {
    let gpu = xlsr::Gpu::new()?;
    let quick = gpu.info().device_type == wgpu::DeviceType::Cpu
        && std::env::var("XLSR_BENCH_FULL").is_err();
    let filter = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    xlsr::bench::run(&gpu, quick, filter.as_deref(), &mut std::io::stdout())?;
    Ok(())
}
