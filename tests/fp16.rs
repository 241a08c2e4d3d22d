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

/// Largest |got - want| over max|want| (at least `floor`); infinite where got holds a NaN or
/// an infinity (fp16 overflow) that the finite f32 reference does not.
fn rel_err(got: &[f32], want: &[f32], floor: f64) -> f64 {
    assert!(
        want.iter().all(|x| x.is_finite()),
        "the f32 reference is not finite"
    );
    max_abs_err(got, want) / max_abs(want).max(floor)
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
    // The f32-arithmetic builds (the tensor-core forward rounds P~ to f16: tests/coop.rs),
    // restored at the end so the other tests of this binary keep the default.
    let coop_before = xlsr::ops::attention::set_coop_attention(false);
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
    xlsr::ops::attention::set_coop_attention(coop_before);
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

/// A conv nobody needs gradients of (the frozen feature encoder): x unfolded to columns and
/// one GEMM, f16 under autocast (tensor cores where the adapter has them; shapes with
/// Cout >= 64 take them), f32 with `XLSR_UNFOLD=1`; equal to an f64 conv of the (f16-rounded)
/// x and w within the f16 matmul's tolerance, and f32 within 1e-5. Channel groups, or Cin K
/// not a multiple of 8, keep the implicit-GEMM conv.
#[test]
fn frozen_conv_is_one_gemm_over_the_unfolded_input() {
    use xlsr::ops::conv::{forward_unfolded, Conv1d};
    let mut rng = Rng::new(41);
    // batch, cin, lin, cout, k, stride, pad, bias
    let cases = [
        (2, 16, 101, 72, 3, 2, 0, true), // the encoder's k3 s2, odd frame counts
        (3, 8, 50, 24, 2, 2, 1, false),  // k2 s2, padding
        (1, 32, 80, 64, 3, 1, 2, true),
    ];
    let precisions: &[bool] = if has_f16() { &[true, false] } else { &[false] };
    for &half in precisions {
        for (b, cin, lin, cout, k, stride, pad, with_bias) in cases {
            let x = round16(&rng.vec(b * cin * lin));
            let w = round16(&rng.vec(cout * cin * k));
            let bias = rng.vec(cout);
            let geo = Conv1d {
                stride,
                padding: pad,
                groups: 1,
            };
            let bias_t = upload(&bias, &[cout]);
            let y = forward_unfolded(
                &geo,
                &upload(&x, &[b, cin, lin]),
                &upload(&w, &[cout, cin, k]),
                with_bias.then_some(&bias_t),
                half,
            )
            .unwrap()
            .expect("Cin K is a multiple of 8: the unfolded GEMM applies");
            let bias_ref = with_bias.then_some(&bias[..]);
            let want = cpu_conv(&x, &w, bias_ref, b, cin, lin, cout, k, geo);
            let lout = (lin + 2 * pad - k) / stride + 1;
            assert_eq!(y.shape(), [b, cout, lout]);
            let name =
                format!("conv b{b} cin{cin} lin{lin} cout{cout} k{k} s{stride} p{pad} f16 {half}");
            let tol = if half { 1e-4 } else { 1e-5 };
            assert_close(&name, &y.to_vec().unwrap(), &want, tol, tol);
        }
    }
    if !has_f16() {
        return;
    }
    // Groups, or a row of Cin K = 10 (the 1-channel first conv): not this path.
    let x = upload(&rng.vec(2 * 16 * 40), &[2, 16, 40]);
    let grouped = Conv1d {
        stride: 1,
        padding: 0,
        groups: 2,
    };
    let w = upload(&rng.vec(16 * 8 * 3), &[16, 8, 3]);
    assert!(forward_unfolded(&grouped, &x, &w, None, true)
        .unwrap()
        .is_none());
    let one = Conv1d {
        stride: 5,
        padding: 0,
        groups: 1,
    };
    let (x1, w1) = (
        upload(&rng.vec(400), &[1, 1, 400]),
        upload(&rng.vec(80), &[8, 1, 10]),
    );
    assert!(forward_unfolded(&one, &x1, &w1, None, true)
        .unwrap()
        .is_none());
}

/// With the feature encoder frozen, `--fp16` runs its convs (all but the 1-channel first) in
/// f16: the conv features differ from f32 (f16 rounding) by at most 1e-2 of their largest
/// value, and so do the logits; the loss within 1e-2.
#[test]
fn fp16_frozen_encoder_stays_within_1e_2_of_f32() {
    if !has_f16() {
        return;
    }
    let g = gpu();
    let (model, _) = Wav2Vec2ForCtc::load(&g, &fixture("w2v2_large"), None, 0).unwrap();
    model.freeze_feature_encoder(true);
    let (audio, lengths, labels) = batch(&g);
    let run = |fp16: bool| {
        let tape = Tape::new();
        let opts = Forward {
            fp16,
            keep_hidden: true,
            ..Forward::default()
        };
        let out = model.forward(&tape, &audio, Some(&lengths), &opts).unwrap();
        let (loss, _) = model
            .ctc_loss(&out.logits, &out.frames, &Targets::from_rows(&labels))
            .unwrap();
        let conv = out.hidden.iter().find(|h| h.0 == "conv_features").unwrap();
        (
            conv.1.to_vec().unwrap(),
            out.logits.value.to_vec().unwrap(),
            loss.value.item().unwrap(),
        )
    };
    let (c32, l32, loss32) = run(false);
    let (c16, l16, loss16) = run(true);
    let (conv_err, logits_err) = (rel_err(&c16, &c32, 0.0), rel_err(&l16, &l32, 0.0));
    let loss_err = ((loss16 - loss32) / loss32).abs() as f64;
    println!("frozen encoder, fp16 vs f32: conv features {conv_err:.2e}, logits {logits_err:.2e}, loss {loss_err:.2e}");
    assert!(conv_err > 0.0, "the convs did not run in f16");
    assert!(conv_err <= 1e-2, "conv features {conv_err:.2e}");
    assert!(logits_err <= 1e-2, "logits {logits_err:.2e}");
    assert!(loss_err <= 1e-2, "loss {loss_err:.2e}");
}

/// The frozen encoder run clip by clip (the first convs of a large batch) casts each conv
/// weight to f16 once, not once per clip, and gives the same features as the whole batch.
#[test]
fn fp16_frozen_encoder_casts_each_weight_once_over_clip_groups() {
    if !has_f16() {
        return;
    }
    let run = |group_bytes: usize| {
        // A device of its own: its launch counts are this run's alone.
        let g = xlsr::Gpu::new().unwrap();
        let (model, _) = Wav2Vec2ForCtc::load(&g, &fixture("w2v2_large"), None, 0).unwrap();
        model.freeze_feature_encoder(true);
        let (audio, lengths, _) = batch(&g);
        let opts = Forward {
            fp16: true,
            keep_hidden: true,
            encoder_group_bytes: group_bytes,
            ..Forward::default()
        };
        let out = model
            .forward(&Tape::new(), &audio, Some(&lengths), &opts)
            .unwrap();
        let conv = out.hidden.iter().find(|h| h.0 == "conv_features").unwrap();
        let casts = g
            .launches()
            .iter()
            .find(|k| k.0 == "to_f16")
            .map_or(0, |k| k.1);
        (conv.1.to_vec().unwrap(), casts)
    };
    // One byte a group: every conv runs clip by clip (3 groups); then the batch at once.
    let (per_clip, casts_per_clip) = run(1);
    let (whole, casts_whole) = run(1 << 30);
    assert_eq!(per_clip, whole, "conv features, clip by clip vs the batch");
    assert!(casts_whole > 0, "no conv ran as an f16 GEMM");
    assert_eq!(
        casts_per_clip, casts_whole,
        "f16 casts, clip by clip vs the batch"
    );
}
