//! Kernel benchmarks at wav2vec2-large shapes, shared by `cargo bench` and `xlsr bench`.
//!
//! Each case records its kernels `iters` times; time is the GPU's own (timestamp queries around
//! every dispatch) where the adapter has them, else wall-clock around a synchronised batch.

use crate::error::Result;
use crate::ops::{self, activation::Act, attention::Tiled, matmul::Algo, norm::Norm};
use crate::{Gpu, Tensor};
use std::time::Instant;

mod allreduce;
mod conv;
mod step;
pub use allreduce::{allreduce, AllreduceReport};
pub use step::{model_step, ModelStep, StepReport};

/// One measured case.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Measurement {
    /// Case name.
    pub name: String,
    /// Mean milliseconds per iteration.
    pub ms: f64,
    /// Work per iteration: floating-point operations (`is_flops`) or bytes moved.
    pub work: f64,
    /// Whether `work` counts FLOPs (else bytes).
    pub is_flops: bool,
    /// Whether the time came from GPU timestamps.
    pub gpu_timed: bool,
}

impl Measurement {
    /// GFLOP/s or GB/s.
    pub fn rate(&self) -> f64 {
        self.work / (self.ms * 1e-3) / 1e9
    }
}

/// `n` values uniform in [-0.5, 0.5).
pub(crate) fn host_rand(n: usize, seed: u32) -> Vec<f32> {
    crate::rng::Rng::new(seed as u64).uniform_vec(n, -0.5, 0.5)
}

fn rand(gpu: &Gpu, shape: &[usize], seed: u32) -> crate::engine::Result<Tensor> {
    Tensor::from_slice(gpu, &host_rand(shape.iter().product(), seed), shape)
}

/// Times `f` (which records kernels): one warm-up run, then `iters` runs.
pub fn measure(
    gpu: &Gpu,
    name: &str,
    iters: usize,
    work: f64,
    is_flops: bool,
    mut f: impl FnMut() -> crate::engine::Result<()>,
) -> Result<Measurement> {
    f()?;
    gpu.sync()?;
    let timed = gpu.profile_start()?;
    let t0 = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    gpu.sync()?;
    let wall = t0.elapsed().as_secs_f64() * 1e3 / iters as f64;
    let kernels = gpu.profile_stop()?;
    let ms = if timed {
        kernels.iter().map(|k| k.1).sum::<f64>() / 1e6 / iters as f64
    } else {
        wall
    };
    Ok(Measurement {
        name: name.to_string(),
        ms,
        work,
        is_flops,
        gpu_timed: timed,
    })
}

/// Runs the benchmark suite and writes one line per case to `log`. `quick` shrinks the shapes
/// for CPU adapters; `filter` keeps cases whose name contains it.
pub fn run(
    gpu: &Gpu,
    quick: bool,
    filter: Option<&str>,
    log: &mut dyn std::io::Write,
) -> Result<Report> {
    macro_rules! say {
        ($($t:tt)*) => { let _ = writeln!(log, $($t)*); };
    }
    say!("{}", adapter_line(gpu));
    let keep = |n: &str| filter.is_none_or(|f| n.contains(f));
    let mut out = Vec::new();
    let mut report = |m: Measurement, log: &mut dyn std::io::Write| {
        let _ = writeln!(
            log,
            "{:<48} {:>10.3} ms {:>10.1} {}",
            m.name,
            m.ms,
            m.rate(),
            if m.is_flops { "GFLOP/s" } else { "GB/s" }
        );
        out.push(m);
    };
    let it = if quick { 3 } else { 10 };

    // Feed-forward matmul of wav2vec2-large: 4000 frames (16 clips x 250) x 1024 -> 4096.
    let (m, k, n) = if quick {
        (1000, 1024, 1024)
    } else {
        (4000, 1024, 4096)
    };
    let a = rand(gpu, &[m, k], 1)?;
    let w = rand(gpu, &[k, n], 2)?;
    let bias = rand(gpu, &[n], 3)?;
    let flops = 2.0 * (m * k * n) as f64;
    for (algo, label) in [
        (Algo::Tiled, "tiled"),
        (Algo::Tiled64, "tiled64"),
        (Algo::Naive, "naive"),
    ] {
        let name = format!("matmul {label} {m}x{k}x{n} +bias");
        if keep(&name) {
            report(
                measure(
                    gpu,
                    &name,
                    if algo == Algo::Naive { 1 } else { it },
                    flops,
                    true,
                    || {
                        ops::matmul::matmul_with(algo, &a, &w, false, false, Some(&bias), None)
                            .map(|_| ())
                    },
                )?,
                log,
            );
        }
    }
    if gpu.has_f16() {
        let (a16, w16) = (ops::cast::to_f16(&a)?, ops::cast::to_f16(&w)?);
        let name = format!("matmul tiled f16 inputs {m}x{k}x{n} +bias");
        if keep(&name) {
            report(
                measure(gpu, &name, it, flops, true, || {
                    ops::matmul::matmul(&a16, &w16, false, false, Some(&bias)).map(|_| ())
                })?,
                log,
            );
        }
        let name = format!("cast to f16 {m}x{k}");
        if keep(&name) {
            let bytes = (m * k * 6) as f64;
            report(
                measure(gpu, &name, it, bytes, false, || {
                    ops::cast::to_f16(&a).map(|_| ())
                })?,
                log,
            );
        }
    }
    // The square GEMM that `tools/compare_torch.py` sets against cuBLAS.
    let s = if quick { 256 } else { 4096 };
    let sq_flops = 2.0 * (s * s * s) as f64;
    let (sa, sb) = (rand(gpu, &[s, s], 20)?, rand(gpu, &[s, s], 21)?);
    let name = format!("gemm f32 {s}x{s}x{s}");
    if keep(&name) {
        report(
            measure(gpu, &name, it, sq_flops, true, || {
                ops::matmul::matmul(&sa, &sb, false, false, None).map(|_| ())
            })?,
            log,
        );
    }
    let name = format!("gemm f32 previous kernel (tiled64) {s}x{s}x{s}");
    if keep(&name) {
        report(
            measure(gpu, &name, it, sq_flops, true, || {
                ops::matmul::matmul_with(Algo::Tiled64, &sa, &sb, false, false, None, None)
                    .map(|_| ())
            })?,
            log,
        );
    }
    let name = format!("gemm f16 inputs {s}x{s}x{s}");
    if gpu.has_f16() && keep(&name) {
        let (a16, b16) = (ops::cast::to_f16(&sa)?, ops::cast::to_f16(&sb)?);
        report(
            measure(gpu, &name, it, sq_flops, true, || {
                ops::matmul::matmul(&a16, &b16, false, false, None).map(|_| ())
            })?,
            log,
        );
    }
    // Each tensor-core build at that shape, to compare (the tuner picks per shape class).
    if let Some(shape) = gpu.coop_shape() {
        let (a16, b16) = (ops::cast::to_f16(&sa)?, ops::cast::to_f16(&sb)?);
        for kernel in ops::matmul::CoopKernel::ALL {
            let name = format!("tensor-core gemm {} {s}x{s}x{s}", kernel.name());
            if !kernel.fits(shape) || !keep(&name) {
                continue;
            }
            let before = ops::matmul::set_coop_kernel(kernel);
            let r = measure(gpu, &name, it, sq_flops, true, || {
                ops::matmul::matmul(&a16, &b16, false, false, None).map(|_| ())
            });
            ops::matmul::set_coop_kernel(before);
            report(r?, log);
        }
    }
    let name = format!("matmul backward {m}x{k}x{n} (dA, dW, dbias)");
    if keep(&name) {
        let dc = rand(gpu, &[m, n], 4)?;
        report(
            measure(gpu, &name, it, 2.0 * flops, true, || {
                ops::matmul::matmul_backward(&a, &w, false, false, true, &dc).map(|_| ())
            })?,
            log,
        );
    }

    // Self-attention of one clip: 16 heads x 250 frames, head dim 64.
    let (h, t, dh) = (16, 250, 64);
    let q = rand(gpu, &[h, t, dh], 5)?;
    let kk = rand(gpu, &[h, t, dh], 6)?;
    let name = format!("attention scores QK^T {h}x{t}x{t} (d {dh})");
    if keep(&name) {
        report(
            measure(gpu, &name, it, 2.0 * (h * t * t * dh) as f64, true, || {
                ops::matmul::matmul(&q, &kk, false, true, None).map(|_| ())
            })?,
            log,
        );
    }
    // The fused kernels: scores never leave the workgroup (4 QK^T-sized products backward).
    let v = rand(gpu, &[h, t, dh], 19)?;
    let kmask = Tensor::zeros(gpu, &[1, t])?;
    let qk = 2.0 * (h * t * t * dh) as f64;
    let att = ops::attention::Attention {
        heads: h,
        scale: 0.125,
        dropout: 0.1,
        seed: 1,
        tokens_first: false,
        drop_row: 0,
    };
    let name = format!("attention fused fwd {h}x{t} (d {dh}, dropout 0.1)");
    if keep(&name) {
        report(
            measure(gpu, &name, it, 2.0 * qk, true, || {
                ops::attention::forward(&q, &kk, &v, Some(&kmask), &att).map(|_| ())
            })?,
            log,
        );
    }
    // The forward over f16 q, k, v (what --fp16 runs): on tensor cores where the adapter has
    // them, and on the f32-arithmetic build beside it.
    if gpu.has_f16() {
        let (q16, k16, v16) = (
            ops::cast::to_f16(&q)?,
            ops::cast::to_f16(&kk)?,
            ops::cast::to_f16(&v)?,
        );
        for coop in [true, false] {
            let name = match coop {
                true => format!("attention fused fwd f16 inputs {h}x{t} (d {dh}, dropout 0.1)"),
                false => format!(
                    "attention fused fwd f16 inputs, no tensor cores {h}x{t} (d {dh}, dropout 0.1)"
                ),
            };
            if (!coop && !gpu.has_coop()) || !keep(&name) {
                continue;
            }
            let before = ops::attention::set_coop_attention(coop);
            let m = measure(gpu, &name, it, 2.0 * qk, true, || {
                ops::attention::forward(&q16, &k16, &v16, Some(&kmask), &att).map(|_| ())
            });
            ops::attention::set_coop_attention(before);
            report(m?, log);
        }
    }
    let name = format!("attention fused bwd {h}x{t} (d {dh}, dropout 0.1)");
    if keep(&name) {
        let fwd = ops::attention::forward(&q, &kk, &v, Some(&kmask), &att)?;
        report(
            measure(gpu, &name, it, 6.0 * qk, true, || {
                ops::attention::backward(&q, &kk, &v, Some(&kmask), &att, &fwd, &fwd.out)
                    .map(|_| ())
            })?,
            log,
        );
    }
    // A batch of clips through the fused kernels, forward and backward together (by default
    // the tiled forward and the row kernels' backward); then all tiled, all on the row
    // kernels (four lanes per row where the adapter has subgroups), and a thread per row.
    let (ab, at) = if quick { (2, 50) } else { (8, 250) };
    let cases = [
        (
            format!("attention fused fwd+bwd B{ab} H{h} T{at} D{dh} dropout 0.1"),
            false,
            None,
        ),
        (
            format!("attention tiled fwd and bwd B{ab} H{h} T{at} D{dh} dropout 0.1"),
            false,
            Some(Tiled::All),
        ),
        (
            format!("attention row kernels fwd+bwd B{ab} H{h} T{at} D{dh} dropout 0.1"),
            false,
            Some(Tiled::None),
        ),
        (
            format!("attention a thread per row fwd+bwd B{ab} H{h} T{at} D{dh} dropout 0.1"),
            true,
            Some(Tiled::None),
        ),
    ];
    for (name, rows_only, tiled) in cases {
        if !keep(&name) || (rows_only && !gpu.has_subgroups()) {
            continue;
        }
        let (q, k, v) = (
            rand(gpu, &[ab * h, at, dh], 22)?,
            rand(gpu, &[ab * h, at, dh], 23)?,
            rand(gpu, &[ab * h, at, dh], 24)?,
        );
        let mask = Tensor::zeros(gpu, &[ab, at])?;
        let flops = 12.0 * (ab * h * at * at * dh) as f64;
        let rows_before = ops::attention::set_rows_only(rows_only);
        let tiled_before = tiled.map(ops::attention::set_tiled);
        let m = measure(gpu, &name, it, flops, true, || {
            let fwd = ops::attention::forward(&q, &k, &v, Some(&mask), &att)?;
            ops::attention::backward(&q, &k, &v, Some(&mask), &att, &fwd, &fwd.out).map(|_| ())
        });
        ops::attention::set_rows_only(rows_before);
        if let Some(t) = tiled_before {
            ops::attention::set_tiled(t);
        }
        report(m?, log);
    }
    let scores = rand(gpu, &[h, t, t], 7)?;
    let mask = Tensor::zeros(gpu, &[1, t])?;
    let bytes = (h * t * t * 4) as f64;
    let name = format!("softmax fwd {h}x{t}x{t} masked");
    if keep(&name) {
        report(
            measure(gpu, &name, it, 2.0 * bytes, false, || {
                ops::softmax::forward(&scores, Some(&mask), false).map(|_| ())
            })?,
            log,
        );
    }
    let name = format!("softmax bwd {h}x{t}x{t}");
    if keep(&name) {
        report(
            measure(gpu, &name, it, 3.0 * bytes, false, || {
                ops::softmax::backward(&scores, &scores, false).map(|_| ())
            })?,
            log,
        );
    }

    // Pointwise and normalisation at the encoder's activation size.
    let rows = if quick { 1000 } else { 4000 };
    let x = rand(gpu, &[rows, 1024], 8)?;
    let g = rand(gpu, &[1024], 9)?;
    let xb = (rows * 1024 * 4) as f64;
    let name = format!("layer_norm fwd {rows}x1024");
    if keep(&name) {
        report(
            measure(gpu, &name, it, 2.0 * xb, false, || {
                ops::norm::forward(Norm::Layer, &x, Some(&g), Some(&g), 1e-5).map(|_| ())
            })?,
            log,
        );
    }
    let name = format!("layer_norm bwd {rows}x1024");
    if keep(&name) {
        let (_, stats) = ops::norm::forward(Norm::Layer, &x, Some(&g), Some(&g), 1e-5)?;
        report(
            measure(gpu, &name, it, 5.0 * xb, false, || {
                ops::norm::backward(Norm::Layer, &x, Some(&g), &stats, &x).map(|_| ())
            })?,
            log,
        );
    }
    let ff = rand(gpu, &[rows, 4096], 10)?;
    let fb = (rows * 4096 * 4) as f64;
    let name = format!("gelu fwd {rows}x4096");
    if keep(&name) {
        report(
            measure(gpu, &name, it, 2.0 * fb, false, || {
                ops::activation::forward(Act::Gelu, &ff).map(|_| ())
            })?,
            log,
        );
    }
    let name = format!("gelu bwd {rows}x4096");
    if keep(&name) {
        report(
            measure(gpu, &name, it, 3.0 * fb, false, || {
                ops::activation::backward(Act::Gelu, &ff, &ff).map(|_| ())
            })?,
            log,
        );
    }
    let name = format!("dropout {rows}x4096");
    if keep(&name) {
        report(
            measure(gpu, &name, it, 2.0 * fb, false, || {
                ops::dropout::dropout(&ff, 0.1, 1).map(|_| ())
            })?,
            log,
        );
    }
    let name = format!("add {rows}x4096");
    if keep(&name) {
        report(
            measure(gpu, &name, it, 3.0 * fb, false, || {
                ops::elementwise::add(&ff, &ff).map(|_| ())
            })?,
            log,
        );
    }
    let name = format!("global L2 norm {} M floats", rows * 4096 / 1_000_000);
    if keep(&name) {
        report(
            measure(gpu, &name, it, fb, false, || {
                ops::reduce::global_norm(gpu, &[&ff, &x]).map(|_| ())
            })?,
            log,
        );
    }

    conv::cases(gpu, quick, it, &keep, &mut report, log)?;

    // CTC loss + gradient: batch 16, 500 frames, 100-label targets, vocab 40.
    let (b, t, v, l) = if quick {
        (4, 100, 40, 20)
    } else {
        (16, 500, 40, 100)
    };
    let name = format!("ctc loss+grad B{b} T{t} L{l} V{v}");
    if keep(&name) {
        let logits = rand(gpu, &[b, t, v], 18)?;
        let rows: Vec<Vec<u32>> = (0..b)
            .map(|r| {
                (0..l)
                    .map(|i| 1 + ((r * l + i) * 7 % (v - 1)) as u32)
                    .collect()
            })
            .collect();
        let targets = crate::data::Targets::from_rows(&rows);
        let frames = vec![t; b];
        let opts = ops::ctc::CtcOptions {
            blank: 0,
            reduction: ops::ctc::Reduction::Mean,
            zero_infinity: true,
        };
        let one = Tensor::scalar(gpu, 1.0)?;
        let bytes = (2 * b * t * v * 4) as f64;
        let m = measure(gpu, &name, it, bytes, false, || {
            let ctc = ops::ctc::ctc_loss(&logits, &targets, &frames, opts)?;
            ops::ctc::ctc_backward(&ctc, &one).map(|_| ())
        })?;
        report(m, log);
    }

    let mut step = None;
    if keep("model") {
        let m = if quick {
            ModelStep {
                layers: Some(2),
                seconds: 1.0,
                ..ModelStep::default()
            }
        } else {
            ModelStep::default()
        };
        step = Some(model_step(gpu, &m, log)?);
    }

    let tiled = out.iter().find(|m| m.name.starts_with("matmul tiled "));
    let naive = out.iter().find(|m| m.name.starts_with("matmul naive"));
    if let (Some(t), Some(n)) = (tiled, naive) {
        say!(
            "tiled matmul is {:.1}x faster than naive ({:.1} vs {:.1} GFLOP/s)",
            n.ms / t.ms,
            t.rate(),
            n.rate()
        );
    }
    Ok(Report::new(gpu, out, step))
}

/// The adapter a benchmark runs on, how it is timed, and whether the driver's bounds checks
/// are off: the first line of every benchmark's log.
pub fn adapter_line(gpu: &Gpu) -> String {
    format!(
        "adapter: {} ({:?}, {:?}), timing: {}{}",
        gpu.info().name,
        gpu.info().backend,
        gpu.info().device_type,
        if gpu.has_timestamps() {
            "GPU timestamps"
        } else {
            "wall clock"
        },
        if gpu.robust_buffers() {
            ""
        } else {
            ", robust buffer access off"
        }
    )
}

/// Everything one `xlsr bench` run measured (`--json` prints it).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// Adapter name.
    pub adapter: String,
    /// wgpu backend.
    pub backend: String,
    /// Driver name and version.
    pub driver: String,
    /// Whether the driver bounds-checked buffer accesses (`XLSR_ROBUSTNESS=0` turns it off).
    pub robust_buffers: bool,
    /// Kernel cases.
    pub results: Vec<Measurement>,
    /// The training-step case, when it ran.
    pub model_step: Option<StepReport>,
}

impl Report {
    /// The report of a run on `gpu`.
    pub fn new(gpu: &Gpu, results: Vec<Measurement>, model_step: Option<StepReport>) -> Report {
        Report {
            adapter: gpu.info().name.clone(),
            backend: format!("{:?}", gpu.info().backend),
            driver: format!("{} {}", gpu.info().driver, gpu.info().driver_info),
            robust_buffers: gpu.robust_buffers(),
            results,
            model_step,
        }
    }
}
