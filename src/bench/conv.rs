//! The feature encoder's convolutions, one clip: the first conv, a k3 s2 conv forward (the
//! implicit-GEMM kernel, and as the frozen encoder runs it: unfolded into one GEMM, f32 or
//! f16) and backward, the LayerNorm over its channels, and the positional conv.

use super::{measure, rand, Measurement};
use crate::error::Result;
use crate::ops::{self, conv::Conv1d, norm::Norm};
use crate::Gpu;

/// Times the conv cases whose names `keep` accepts (5 s of audio, or 1 s when quick).
pub(super) fn cases(
    gpu: &Gpu,
    quick: bool,
    it: usize,
    keep: &dyn Fn(&str) -> bool,
    report: &mut dyn FnMut(Measurement, &mut dyn std::io::Write),
    log: &mut dyn std::io::Write,
) -> Result<()> {
    let samples = if quick { 16_000 } else { 80_000 };
    let wav = rand(gpu, &[1, 1, samples], 11)?;
    let w0 = rand(gpu, &[512, 1, 10], 12)?;
    let c0 = Conv1d {
        stride: 5,
        padding: 0,
        groups: 1,
    };
    let l0 = c0.out_len(samples, 10);
    let name = format!("conv1d fwd 1->512 k10 s5 over {samples} samples");
    if keep(&name) {
        report(
            measure(gpu, &name, it, 2.0 * (512 * 10 * l0) as f64, true, || {
                ops::conv::forward(&c0, &wav, &w0, None).map(|_| ())
            })?,
            log,
        );
    }
    let h0 = rand(gpu, &[1, 512, l0], 13)?;
    let w1 = rand(gpu, &[512, 512, 3], 14)?;
    let c1 = Conv1d {
        stride: 2,
        padding: 0,
        groups: 1,
    };
    let l1 = c1.out_len(l0, 3);
    let f1 = 2.0 * (512 * 512 * 3 * l1) as f64;
    let name = format!("conv1d fwd 512->512 k3 s2 over {l0} frames");
    if keep(&name) {
        report(
            measure(gpu, &name, 1, f1, true, || {
                ops::conv::forward(&c1, &h0, &w1, None).map(|_| ())
            })?,
            log,
        );
    }
    // As the frozen encoder runs it: unfolded into one GEMM, f32 or f16.
    for half in [false, true] {
        let name = format!(
            "conv1d fwd {} gemm 512->512 k3 s2 over {l0} frames",
            if half { "f16" } else { "f32" }
        );
        if (half && !gpu.has_f16()) || !keep(&name) {
            continue;
        }
        report(
            measure(gpu, &name, 1, f1, true, || {
                ops::conv::forward_unfolded(&c1, &h0, &w1, None, half).map(|_| ())
            })?,
            log,
        );
    }
    let name = format!("conv1d bwd 512->512 k3 s2 over {l0} frames");
    if keep(&name) {
        let dy = rand(gpu, &[1, 512, l1], 15)?;
        report(
            measure(gpu, &name, 1, 2.0 * f1, true, || {
                ops::conv::backward(&c1, &h0, &w1, false, &dy, true).map(|_| ())
            })?,
            log,
        );
    }
    // The conv LayerNorm over the 512 channels of each frame of the first conv's output.
    let g = rand(gpu, &[512], 18)?;
    let bytes = (512 * l0 * 4) as f64;
    let name = format!("channel layer_norm fwd 512 ch over {l0} frames");
    if keep(&name) {
        report(
            measure(gpu, &name, it, 2.0 * bytes, false, || {
                ops::norm::forward(Norm::Channel, &h0, Some(&g), Some(&g), 1e-5).map(|_| ())
            })?,
            log,
        );
    }
    let name = format!("channel layer_norm bwd 512 ch over {l0} frames");
    if keep(&name) {
        let (_, stats) = ops::norm::forward(Norm::Channel, &h0, Some(&g), Some(&g), 1e-5)?;
        report(
            measure(gpu, &name, it, 5.0 * bytes, false, || {
                ops::norm::backward(Norm::Channel, &h0, Some(&g), &stats, &h0).map(|_| ())
            })?,
            log,
        );
    }
    let frames = if quick { 50 } else { 250 };
    let hp = rand(gpu, &[1, 1024, frames], 16)?;
    let wp = rand(gpu, &[1024, 64, 128], 17)?;
    let cp = Conv1d {
        stride: 1,
        padding: 64,
        groups: 16,
    };
    let lp = cp.out_len(frames, 128);
    let name = format!("conv1d fwd positional 1024 k128 g16 over {frames} frames");
    if keep(&name) {
        report(
            measure(
                gpu,
                &name,
                1,
                2.0 * (1024 * 64 * 128 * lp) as f64,
                true,
                || ops::conv::forward(&cp, &hp, &wp, None).map(|_| ()),
            )?,
            log,
        );
    }
    Ok(())
}
