//! fp16 mixed precision: the f32 <-> f16 casts, the f16-input matmul, the whole model in fp16
//! against f32, and GradScaler's dynamic loss scaling.
//!
//! Tolerances: casts are bit-exact against the `half` crate; the f16 matmul (f32 accumulation)
//! is within 1e-5 + 1e-5 |ref| of an f64 product of the f16-rounded inputs; the fp16 model's
//! logits, loss and per-tensor gradients are within 1e-2 of the f32 model's, relative to the
//! tensor's largest magnitude (gradients floored as in tests/model.rs).
//!
//! Every test here needs an adapter with SHADER_F16 (lavapipe has it); on one without, they
//! say so and pass; tests/train.rs `fp16_without_shader_f16_trains_in_f32_with_a_note` checks
//! the fallback message.

mod common;
use common::*;
use half::f16;
use xlsr::autograd::autocast;
use xlsr::data::Targets;
use xlsr::model::{Forward, Wav2Vec2ForCtc};
use xlsr::ops::cast::{to_f16, to_f32};
use xlsr::optim::{AdamW, AdamWConfig, GradScaler};
use xlsr::{Tape, Tensor, Var};

fn has_f16() -> bool {
    let ok = gpu().has_f16();
    if !ok {
        eprintln!("adapter has no SHADER_F16: fp16 test not run");
    }
    ok
}

fn round16(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| f16::from_f64(x).to_f64()).collect()
}

#[test]
fn casts_round_like_ieee_and_overflow_to_inf() {
    if !has_f16() {
        return;
    }
    let g = gpu();
    let mut rng = Rng::new(3);
    // Odd length (a half-filled last word), every magnitude class: normal, subnormal,
    // underflow to zero, the rounding edge of the largest finite value, overflow, inf, NaN.
    let mut xs: Vec<f32> = rng.vec(1001).iter().map(|&v| (v * 8.0) as f32).collect();
    xs.extend([
        1e-5, -3e-7, 1e-9, 65504.0, 65519.0, 65520.0, -70000.0, 1e30, -0.0,
    ]);
    xs.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
    let t = Tensor::from_slice(&g, &xs, &[xs.len()]).unwrap();
    let h = to_f16(&t).unwrap();
    assert_eq!(h.dtype(), xlsr::engine::DType::F16);
    let back = to_f32(&h).unwrap().to_vec().unwrap();
    for (i, (&x, &y)) in xs.iter().zip(&back).enumerate() {
        let want = if x.is_nan() {
            f32::INFINITY // NaN is reported as inf: non-finite either way
        } else {
            f16::from_f32(x).to_f32()
        };
        assert_eq!(
            y.to_bits(),
            want.to_bits(),
            "element {i}: {x} -> {y}, want {want}"
        );
    }
}

/// C = op(A) op(B) + bias in f64 for [batch, m, k] x [k, n] (or batched B).
fn reference_matmul(
    a: &[f64],
    b: &[f64],
    bias: Option<&[f64]>,
    (batch, m, n, k): (usize, usize, usize, usize),
    (ta, tb, b_shared): (bool, bool, bool),
) -> Vec<f64> {
    let mut c = vec![0.0; batch * m * n];
    for z in 0..batch {
        let (ao, bo) = (z * m * k, if b_shared { 0 } else { z * k * n });
        for i in 0..m {
            for j in 0..n {
                let mut s = bias.map_or(0.0, |v| v[j]);
                for p in 0..k {
                    let av = if ta {
                        a[ao + p * m + i]
                    } else {
                        a[ao + i * k + p]
                    };
                    let bv = if tb {
                        b[bo + j * k + p]
                    } else {
                        b[bo + p * n + j]
                    };
                    s += av * bv;
                }
                c[z * m * n + i * n + j] = s;
            }
        }
    }
    c
}

/// The tensor-core GEMMs (`matmul_coop.wgsl`, and `matmul_coop128.wgsl` staged through
/// workgroup memory, with 4 subgroups or 8) equal an f64 product of the f16-rounded operands: every transpose, tiles
/// shifted inward (direct) or cut (staged) at M and N edges, K tails below 16 (32), batched
/// and shared B, with bias; the profiler confirms that a cooperative kernel ran. Only where
/// the adapter offers 16x16x16 or 8x8x8 f16 -> f32 cooperative matrices at a fixed subgroup
/// size: NVIDIA and AMD GPUs, Apple's, and lavapipe from Mesa 25.1 on (8x8x8 on 8 lanes, which
/// `tools/coop_lavapipe.sh` runs this test on); Debian 12's lavapipe has none.
#[test]
fn coop_matmul_matches_rounded_f64() {
    let g = gpu();
    if !g.has_coop() {
        eprintln!(
            "{} offers no 16x16x16 or 8x8x8 f16 -> f32 cooperative matrices at a fixed subgroup size: tensor-core GEMM test not run",
            g.info().name
        );
        return;
    }
    use xlsr::ops::matmul::{set_coop_kernel, CoopKernel};
    let shape = g.coop_shape().unwrap();
    eprintln!("cooperative GEMMs in {shape:?}");
    let before = set_coop_kernel(CoopKernel::Direct);
    for k in CoopKernel::ALL {
        if !k.fits(shape) {
            eprintln!("{} has no build for {shape:?}", k.name());
            continue;
        }
        set_coop_kernel(k);
        coop_cases(&g, k);
    }
    set_coop_kernel(before);
}

fn coop_cases(g: &xlsr::Gpu, kernel: xlsr::ops::matmul::CoopKernel) {
    use xlsr::ops::matmul::{coop_fits, matmul};
    let cases = [
        // batch, m, n, k, ta, tb, B shared
        (1, 130, 72, 1000, false, false, true), // edge tiles overlap in M, K tail 8
        (1, 64, 64, 16, false, true, true),
        (2, 96, 136, 40, true, false, false),
        (1, 200, 256, 1993, true, false, true), // a weight gradient: odd K, tail 9
        (3, 72, 80, 48, true, true, false),
        (2, 100, 64, 24, false, false, false),
    ];
    let mut rng = Rng::new(12);
    for &(batch, m, n, k, ta, tb, shared) in &cases {
        let sb = if shared { 0 } else { k * n };
        assert!(
            coop_fits([m, n, k], ta, tb, [0; 3], [m * k, sb, m * n], false),
            "case {m}x{n}x{k} should fit the cooperative kernel"
        );
        let a = round16(&rng.vec(batch * m * k));
        let b = round16(&rng.vec(if shared { k * n } else { batch * k * n }));
        let bias = rng.vec(n);
        let (ashape, bshape) = matmul_shapes((batch, m, n, k), (ta, tb, shared));
        let (a16, b16) = (
            to_f16(&upload(&a, &ashape)).unwrap(),
            to_f16(&upload(&b, &bshape)).unwrap(),
        );
        let profiled = g.profile_start().unwrap();
        let c = matmul(&a16, &b16, ta, tb, Some(&upload(&bias, &[n]))).unwrap();
        let got = c.to_vec().unwrap();
        let kernels = g.profile_stop().unwrap();
        if profiled {
            assert!(
                kernels.iter().any(|k| k.0 == "matmul_coop"),
                "the cooperative kernel did not run: {kernels:?}"
            );
        }
        let want = reference_matmul(&a, &b, Some(&bias), (batch, m, n, k), (ta, tb, shared));
        let name = format!("{} b{batch} m{m} n{n} k{k} ta{ta} tb{tb}", kernel.name());
        assert_close(&name, &got, &want, 1e-4, 1e-4);
    }
}

/// Which adapters the cooperative kernels run on, in which shape, on any adapter.
#[test]
fn coop_shape_rules() {
    use wgpu::CooperativeScalarType::{F16, F32};
    use xlsr::engine::{coop_shape, CoopShape};
    use xlsr::ops::matmul::CoopKernel;
    let prop = |f: u32, ab, cr| wgpu::CooperativeMatrixProperties {
        m_size: f,
        n_size: f,
        k_size: f,
        ab_type: ab,
        cr_type: cr,
        saturating_accumulation: false,
    };
    let info = |min: u32, max: u32| wgpu::AdapterInfo {
        subgroup_min_size: min,
        subgroup_max_size: max,
        ..gpu().info().clone()
    };
    let shape = |frag, lanes| Some(CoopShape { frag, lanes });
    // NVIDIA: 16x16x16 (and others) on 32 lanes.
    let nvidia = [prop(16, F16, F16), prop(16, F16, F32), prop(8, F16, F32)];
    assert_eq!(coop_shape(&info(32, 32), &nvidia), shape(16, 32));
    // Apple's simdgroup matrices and lavapipe: 8x8x8 on 32 or 8 lanes.
    let eights = [prop(8, F16, F16), prop(8, F16, F32)];
    assert_eq!(coop_shape(&info(32, 32), &eights), shape(8, 32));
    assert_eq!(coop_shape(&info(8, 8), &eights), shape(8, 8));
    // No f32 accumulation, no matrices, or a subgroup size that varies: none.
    assert_eq!(coop_shape(&info(32, 32), &[prop(16, F16, F16)]), None);
    assert_eq!(coop_shape(&info(32, 32), &[]), None);
    assert_eq!(coop_shape(&info(8, 32), &nvidia), None);
    assert_eq!(coop_shape(&info(32, 32), &[prop(16, F32, F32)]), None);
    // The staged builds need 1, 2 or 4 chunks of a slab a thread; the direct one fits all.
    let fits = |k: CoopKernel, frag, lanes| k.fits(CoopShape { frag, lanes });
    let staged = |frag, lanes| fits(CoopKernel::Staged, frag, lanes);
    assert!(staged(16, 32) && staged(8, 32) && staged(8, 8) && staged(16, 64));
    assert!(!staged(16, 8) && !staged(8, 64) && !staged(16, 16));
    let wide = |frag, lanes| fits(CoopKernel::Wide, frag, lanes);
    assert!(wide(16, 32) && wide(8, 8) && wide(16, 16) && wide(16, 64));
    assert!(!wide(8, 32) && !wide(8, 64));
    assert!(fits(CoopKernel::Direct, 8, 64));
}

/// Which GEMMs the cooperative kernel takes, on any adapter.
#[test]
fn coop_selection_rules() {
    use xlsr::ops::matmul::coop_fits;
    let z = [0usize; 3];
    // (m, n, k), A transposed, B transposed, offsets, batch strides, accumulate: fits?
    let cases = [
        // The model's GEMMs: x W (rows arbitrary), dY Wᵀ, Xᵀ dY (K = rows arbitrary).
        ([1993, 1024, 1024], false, false, z, z, false, true),
        ([1993, 1024, 4096], false, true, z, z, false, true),
        ([1024, 4096, 1993], true, false, z, z, false, true),
        // Too small for one 64x64 tile, or accumulating into C (split over bindings).
        ([63, 1024, 1024], false, false, z, z, false, false),
        ([1024, 40, 1024], false, false, z, z, false, false),
        ([1024, 1024, 1024], false, false, z, z, true, false),
        // Unaligned fragment rows: leading dimension, offset or batch stride not a multiple of 8.
        ([128, 128, 1020], false, false, z, z, false, false),
        ([1020, 128, 128], true, false, z, z, false, false),
        ([128, 128, 1020], false, true, z, z, false, false),
        ([128, 132, 128], false, false, z, z, false, false),
        ([128, 128, 128], false, false, [4, 0, 0], z, false, false),
        ([128, 128, 128], false, false, z, [0, 12, 0], false, false),
    ];
    for (dims, ta, tb, offs, strides, acc, fits) in cases {
        assert_eq!(
            coop_fits(dims, ta, tb, offs, strides, acc),
            fits,
            "{dims:?} ta {ta} tb {tb} offsets {offs:?} strides {strides:?} accumulate {acc}"
        );
    }
}

/// The f16 matmul and its backward equal exact products of the f16-rounded operands (dC
/// rounded too, as backward casts it), so the only error left is f32 accumulation.
#[test]
fn f16_matmul_and_backward_match_rounded_f64() {
    if !has_f16() {
        return;
    }
    let cases = [
        // batch, m, n, k, ta, tb, B shared
        (1, 70, 33, 129, false, true, true), // a linear layer, sizes off the 64 tile
        (3, 17, 65, 40, false, true, false), // attention scores q kᵀ
        (2, 50, 16, 50, false, false, false), // probabilities @ v
        (2, 9, 12, 7, true, false, false),
    ];
    let mut rng = Rng::new(11);
    for (ci, &(batch, m, n, k, ta, tb, shared)) in cases.iter().enumerate() {
        let a = rng.vec(batch * m * k);
        let b = rng.vec(if shared { k * n } else { batch * k * n });
        let bias = rng.vec(n);
        let r = rng.vec(batch * m * n);
        let (ashape, bshape) = matmul_shapes((batch, m, n, k), (ta, tb, shared));
        let tape = Tape::new();
        let av = tape.input(upload(&a, &ashape), true);
        let bv = tape.input(upload(&b, &bshape), true);
        let biasv = tape.input(upload(&bias, &[n]), true);
        let c = autocast(true, || av.matmul(&bv, ta, tb, Some(&biasv))).unwrap();
        let loss = c
            .mul(&Var::constant(upload(&r, &[batch, m, n])))
            .unwrap()
            .sum()
            .unwrap();
        let grads = tape.backward(&loss, &[&av, &bv, &biasv]).unwrap();

        let dims = (batch, m, n, k);
        let (a16, b16, r16) = (round16(&a), round16(&b), round16(&r));
        let want = reference_matmul(&a16, &b16, Some(&bias), dims, (ta, tb, shared));
        let what = format!("case {ci}");
        assert_close(&what, &c.value.to_vec().unwrap(), &want, 1e-5, 1e-5);

        // dA[i,p] = sum_j dC[i,j] op(B)[p,j]; dB[p,j] = sum_i op(A)[i,p] dC[i,j].
        let mut da = vec![0.0; a.len()];
        let mut db = vec![0.0; b.len()];
        let mut dbias = vec![0.0; n];
        for z in 0..batch {
            let (ao, bo) = (z * m * k, if shared { 0 } else { z * k * n });
            for i in 0..m {
                for j in 0..n {
                    let g = r16[z * m * n + i * n + j];
                    dbias[j] += r[z * m * n + i * n + j];
                    for p in 0..k {
                        let ai = if ta { ao + p * m + i } else { ao + i * k + p };
                        let bi = if tb { bo + j * k + p } else { bo + p * n + j };
                        da[ai] += g * b16[bi];
                        db[bi] += a16[ai] * g;
                    }
                }
            }
        }
        let got = |i: usize| grads[i].as_ref().unwrap().to_vec().unwrap();
        assert_close(&format!("{what} dA"), &got(0), &da, 1e-5, 1e-5);
        assert_close(&format!("{what} dB"), &got(1), &db, 1e-5, 1e-5);
        assert_close(&format!("{what} dbias"), &got(2), &dbias, 1e-5, 1e-5);
    }
}

/// A padded batch of three clips and labels, made up (any audio will do for a comparison).
fn batch(g: &xlsr::Gpu) -> (Tensor, Vec<usize>, Vec<Vec<u32>>) {
    let lengths = vec![1600, 1213, 877];
    let mut rng = Rng::new(5);
    let mut audio = vec![0f32; 3 * 1600];
    for (b, &n) in lengths.iter().enumerate() {
        for (i, v) in rng.vec(n).into_iter().enumerate() {
            audio[b * 1600 + i] = v as f32;
        }
    }
    let audio = Tensor::from_slice(g, &audio, &[3, 1600]).unwrap();
    let labels = vec![vec![3, 4, 5, 6], vec![7, 8, 9], vec![1, 2]];
    (audio, lengths, labels)
}

/// Logits, loss and gradients of one forward/backward, in f32 or fp16 with a loss scale.
fn run_model(model: &Wav2Vec2ForCtc, fp16: bool, scale: f32) -> (Vec<f32>, f32, Vec<Vec<f32>>) {
    let g = gpu();
    let (audio, lengths, labels) = batch(&g);
    for p in &model.params {
        p.zero_grad().unwrap();
    }
    let tape = Tape::new();
    let opts = Forward {
        fp16,
        ..Forward::default()
    };
    let out = model.forward(&tape, &audio, Some(&lengths), &opts).unwrap();
    let (loss, _) = model
        .ctc_loss(&out.logits, &out.frames, &Targets::from_rows(&labels))
        .unwrap();
    tape.backward(&loss.scale(scale, 0.0).unwrap(), &[])
        .unwrap();
    let grads = model
        .params
        .iter()
        .map(|p| {
            p.grad()
                .map(|t| t.to_vec().unwrap().iter().map(|v| v / scale).collect())
                .unwrap_or_default()
        })
        .collect();
    (
        out.logits.value.to_vec().unwrap(),
        loss.value.item().unwrap(),
        grads,
    )
}

fn max_abs(v: &[f32]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs() as f64))
}

fn rel_err(got: &[f32], want: &[f32], floor: f64) -> f64 {
    let err = got
        .iter()
        .zip(want)
        .fold(0.0, |m: f64, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    err / max_abs(want).max(floor)
}

/// The fp16 model against the f32 one on both fixture layouts (base: GroupNorm, post-LN;
/// large: LayerNorm convs, pre-LN), with the feature encoder trainable so every kind of
/// parameter gets a gradient, under the default loss scale 2^16.
#[test]
fn fp16_model_stays_within_1e_2_of_f32() {
    if !has_f16() {
        return;
    }
    let g = gpu();
    for name in ["w2v2_base", "w2v2_large"] {
        let (model, _) = Wav2Vec2ForCtc::load(&g, &fixture(name), None, 0).unwrap();
        let (l32, loss32, g32) = run_model(&model, false, 1.0);
        let (l16, loss16, g16) = run_model(&model, true, GradScaler::default().scale);
        let logits_err = rel_err(&l16, &l32, 0.0);
        let loss_err = ((loss16 - loss32) / loss32).abs() as f64;
        let floor = 1e-4 * g32.iter().map(|v| max_abs(v)).fold(0.0, f64::max);
        let mut worst = (0.0, String::new());
        let mut reached = 0;
        for (p, (a, b)) in model.params.iter().zip(g16.iter().zip(&g32)) {
            assert_eq!(a.len(), b.len(), "{name} {}: gradient presence", p.name);
            if b.is_empty() {
                continue;
            }
            reached += 1;
            let e = rel_err(a, b, floor);
            if e > worst.0 {
                worst = (e, p.name.clone());
            }
        }
        println!(
            "{name}: fp16 vs f32 logits {logits_err:.2e}, loss {loss_err:.2e}, worst gradient {:.2e} ({}), {reached} tensors",
            worst.0, worst.1
        );
        assert!(reached > 20, "{name}: only {reached} gradients");
        assert!(logits_err <= 1e-2, "{name}: logits {logits_err:.2e}");
        assert!(loss_err <= 1e-2, "{name}: loss {loss_err:.2e}");
        assert!(
            worst.0 <= 1e-2,
            "{name}: gradient {} {:.2e}",
            worst.1,
            worst.0
        );
        // And fp16 really ran: f16 rounding leaves a trace in the logits.
        assert!(logits_err > 0.0, "{name}: fp16 logits identical to f32");
    }
}

/// A forced overflow on one step: that step is skipped (parameters, moments and the step
/// count untouched), the scale halves, and the steps around it train normally.
#[test]
fn grad_scaler_skips_exactly_the_overflowing_step_and_halves_the_scale() {
    if !has_f16() {
        return;
    }
    let g = gpu();
    let (model, _) = Wav2Vec2ForCtc::load(&g, &fixture("w2v2_large"), None, 0).unwrap();
    let (audio, lengths, labels) = batch(&g);
    let mut opt = AdamW::new(&model.params, AdamWConfig::default()).unwrap();
    let mut scaler = GradScaler {
        growth_interval: 3,
        ..GradScaler::default()
    };
    let s0 = scaler.scale;
    let snapshot = |m: &Wav2Vec2ForCtc| -> Vec<Vec<f32>> {
        m.params
            .iter()
            .map(|p| p.value().to_vec().unwrap())
            .collect()
    };
    let mut scales = vec![];
    let mut skipped = vec![];
    for step in 0..6 {
        let before = snapshot(&model);
        let tape = Tape::new();
        let opts = Forward {
            fp16: true,
            ..Forward::default()
        };
        let out = model.forward(&tape, &audio, Some(&lengths), &opts).unwrap();
        let (loss, _) = model
            .ctc_loss(&out.logits, &out.frames, &Targets::from_rows(&labels))
            .unwrap();
        // Step 2 multiplies the loss far past f16's range: its f16 gradients overflow.
        let force = if step == 2 { 1e30 } else { 1.0 };
        tape.backward(&loss.scale(scaler.scale * force, 0.0).unwrap(), &[])
            .unwrap();
        let outcome = scaler.step(&mut opt, 1e-3, 1.0).unwrap();
        opt.zero_grad().unwrap();
        let after = snapshot(&model);
        if outcome.skipped {
            assert_eq!(
                before, after,
                "step {step}: a skipped step changed parameters"
            );
        } else {
            assert_ne!(before, after, "step {step}: parameters did not move");
        }
        scales.push(scaler.scale);
        skipped.push(outcome.skipped);
    }
    assert_eq!(skipped, [false, false, true, false, false, false]);
    assert_eq!(opt.step, 5, "skipped steps are not optimiser steps");
    // Halved by the overflow, then doubled after growth_interval (3) good steps.
    assert_eq!(scales, [s0, s0, s0 / 2.0, s0 / 2.0, s0 / 2.0, s0]);
}

#[test]
fn grad_scaler_update_follows_torch() {
    let mut s = GradScaler::default();
    assert_eq!((s.scale, s.growth_interval), (65536.0, 2000));
    for _ in 0..1999 {
        s.update(false);
    }
    assert_eq!((s.scale, s.growth_tracker), (65536.0, 1999));
    s.update(false);
    assert_eq!((s.scale, s.growth_tracker), (131072.0, 0));
    s.update(false);
    s.update(true);
    assert_eq!((s.scale, s.growth_tracker), (65536.0, 0));
    // The scale never grows to infinity.
    s.scale = f32::MAX;
    s.growth_interval = 1;
    s.update(false);
    assert_eq!(s.scale, f32::MAX);
}

/// The f16 build of the fused attention kernels equals the f32 build run on the same values
/// rounded to f16 (both compute in f32), forward and backward, with mask and dropout.
#[test]
fn f16_attention_equals_f32_attention_on_rounded_inputs() {
    if !has_f16() {
        return;
    }
    let g = gpu();
    let (b, h, t, d) = (2, 3, 37, 64);
    let mut rng = Rng::new(21);
    let n = b * h * t * d;
    let (q, k, v, r) = (rng.vec(n), rng.vec(n), rng.vec(n), rng.vec(n));
    let mut mask = vec![0f32; b * t];
    mask[t + 20..].fill(f32::MIN);
    let mask = Tensor::from_slice(&g, &mask, &[b, t]).unwrap();
    let shape = [b, h, t, d];
    let run = |q: &[f64], k: &[f64], v: &[f64], half: bool| {
        let tape = Tape::new();
        let vars: Vec<Var> = [q, k, v]
            .iter()
            .map(|x| tape.input(upload(x, &shape), true))
            .collect();
        let o = autocast(half, || {
            let a = xlsr::ops::attention::Attention {
                heads: h,
                scale: 0.125,
                dropout: 0.1,
                seed: 9,
                tokens_first: false,
                drop_row: 0,
            };
            vars[0].attention(&vars[1], &vars[2], Some(&mask), &a)
        })
        .unwrap();
        let loss = o
            .mul(&Var::constant(upload(&r, &shape)))
            .unwrap()
            .sum()
            .unwrap();
        let grads = tape
            .backward(&loss, &[&vars[0], &vars[1], &vars[2]])
            .unwrap();
        let mut out = vec![o.value.to_vec().unwrap()];
        out.extend(grads.iter().map(|g| g.as_ref().unwrap().to_vec().unwrap()));
        out
    };
    let got = run(&q, &k, &v, true);
    let want = run(&round16(&q), &round16(&k), &round16(&v), false);
    for (i, name) in ["out", "dq", "dk", "dv"].iter().enumerate() {
        let w: Vec<f64> = want[i].iter().map(|&x| x as f64).collect();
        assert_close(name, &got[i], &w, 1e-6, 1e-5);
    }
    // And the rounding mattered: unrounded f32 inputs give a different output.
    let exact = run(&q, &k, &v, false);
    assert_ne!(exact[0], got[0]);
}

/// `act` under autocast: the same forward as in f32, and the gradient of `act` taken at the
/// f16-rounded input (what it keeps for backward).
#[test]
fn act_under_autocast_keeps_a_rounded_input_for_backward() {
    if !has_f16() {
        return;
    }
    let mut rng = Rng::new(33);
    let n = 1001;
    let (x, r) = (
        rng.vec(n).iter().map(|v| v * 4.0).collect::<Vec<_>>(),
        rng.vec(n),
    );
    let run = |x: &[f64], half: bool| {
        let tape = Tape::new();
        let xv = tape.input(upload(x, &[n]), true);
        let act = xlsr::ops::activation::Act::Gelu;
        let y = autocast(half, || xv.act(act)).unwrap();
        let loss = y
            .mul(&Var::constant(upload(&r, &[n])))
            .unwrap()
            .sum()
            .unwrap();
        let g = tape.backward(&loss, &[&xv]).unwrap();
        (
            y.value.to_vec().unwrap(),
            g[0].as_ref().unwrap().to_vec().unwrap(),
        )
    };
    let (y16, g16) = run(&x, true);
    let (y32, _) = run(&x, false);
    let (_, g_rounded) = run(&round16(&x), false);
    assert_eq!(y16, y32, "forward must be the f32 one");
    assert_eq!(
        g16, g_rounded,
        "gradient must be taken at the rounded input"
    );
}
