//! The tensor-core kernels (cooperative matrices): which adapters and launches they take, on
//! any adapter, and their results where the adapter has them: NVIDIA and AMD GPUs (16x16x16
//! f16 -> f32), Apple's (8x8x8), and lavapipe in Mesa 26 (8x8x8 on 8 lanes), which
//! `tools/coop_lavapipe.sh` runs this file on and CI with it; Debian 12's lavapipe has none,
//! and there the result tests say so and pass.
//!
//! Tolerances: the GEMMs are within 1e-4 + 1e-4 |ref| of an f64 product of the f16-rounded
//! operands; the attention kernels are within 1.5e-3 of the f32-arithmetic builds' output and
//! gradients, relative to their largest magnitude (P~ and dS are rounded to f16 before their
//! products, an error of up to 2^-11 an element; dO goes in as two f16 parts), the forward's
//! logsumexp within 1e-5 + 1e-5 |ref|.

mod common;
use common::*;
use xlsr::ops::cast::to_f16;
use xlsr::Tensor;

/// Held by the tests that profile (the GPU's profiler is one for the process).
static PROFILER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The tensor-core GEMMs (`matmul_coop.wgsl`, and `matmul_coop128.wgsl` staged through
/// workgroup memory, with 4 subgroups or 8) equal an f64 product of the f16-rounded operands:
/// every transpose, tiles shifted inward (direct) or cut (staged) at M and N edges, K tails
/// below the K step (F, or 2F staged), batched and shared B, with bias; the profiler confirms that a cooperative kernel ran. Only where
/// the adapter offers 16x16x16 or 8x8x8 f16 -> f32 cooperative matrices at a fixed subgroup
/// size: NVIDIA and AMD GPUs, Apple's, and lavapipe in Mesa 26 (8x8x8 on 8 lanes, which
/// `tools/coop_lavapipe.sh` runs this test on); Debian 12's lavapipe has none.
#[test]
fn coop_matmul_matches_rounded_f64() {
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
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
        assert_coop_compiled(&g, k.name());
    }
    set_coop_kernel(before);
}

/// A tensor-core build the driver rejects is left out and the work runs on another build, so
/// results alone would pass without it: fail if any of them did not compile.
fn assert_coop_compiled(g: &xlsr::Gpu, what: &str) {
    let failed: Vec<String> = g
        .failed_kernels()
        .into_iter()
        .filter(|f| f.contains("coop"))
        .collect();
    assert!(failed.is_empty(), "{what}: did not compile: {failed:?}");
}

fn coop_cases(g: &xlsr::Gpu, kernel: xlsr::ops::matmul::CoopKernel) {
    use xlsr::ops::matmul::{coop_fits, matmul_with, Algo};
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
    for (i, &(batch, m, n, k, ta, tb, shared)) in cases.iter().enumerate() {
        let with_bias = i % 2 == 0;
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
        let bias_t = upload(&bias, &[n]);
        let bias = with_bias.then_some(&bias[..]);
        let want = reference_matmul(&a, &b, bias, (batch, m, n, k), (ta, tb, shared));
        // Whole, and with K in 3 slices (partial products in a workspace, then `splitk_sum`;
        // at K = 16 two of the slices are empty).
        for splits in [1, 3] {
            let profiled = g.profile_start().unwrap();
            let bias = with_bias.then_some(&bias_t);
            let c = matmul_with(Algo::Tiled, &a16, &b16, ta, tb, bias, Some(splits)).unwrap();
            let got = c.to_vec().unwrap();
            let kernels = g.profile_stop().unwrap();
            if profiled {
                let ran = |name: &str| kernels.iter().any(|k| k.0 == name);
                assert!(
                    ran("matmul_coop"),
                    "the cooperative kernel did not run: {kernels:?}"
                );
                assert_eq!(ran("splitk_sum"), splits > 1, "split K: {kernels:?}");
            }
            let name = format!(
                "{} b{batch} m{m} n{n} k{k} ta{ta} tb{tb} bias {with_bias} splits {splits}",
                kernel.name()
            );
            assert_close(&name, &got, &want, 1e-4, 1e-4);
        }
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

/// Largest |got - want| over the largest |want|, floored at 1e-3 (at T = 1 dQ is 0: P is 1
/// whatever the score; what is left there is the two sides' summation orders).
fn rel(got: &[f32], want: &[f32]) -> f64 {
    // An infinity in the reference would make the scale infinite and every error nothing.
    assert!(want.iter().all(|x| x.is_finite()), "reference not finite");
    let scale = want
        .iter()
        .fold(0f64, |m, &x| m.max(x.abs() as f64))
        .max(1e-3);
    max_abs_err(got, want) / scale
}

/// The attention kernels on tensor cores (`attn_fwd_coop`: F query rows a subgroup, keys 4F at
/// a time; `attn_bwd_kv_coop`, `attn_bwd_q_coop`: F rows against 2F at a time) against the
/// f32-arithmetic builds on the same f16 q, k, v: tiles cut short (T = 1, 37, 70, 133, 200),
/// rows past T, head dims that are not a multiple of the fragment (10, 36), key mask (one
/// batch item keeping 3 keys, or none: its rows come out uniform), dropout, sharp scores; the
/// profiler confirms that they ran.
#[test]
fn coop_attention_matches_the_other_builds() {
    use xlsr::ops::attention::{backward, forward, set_coop_attention, Attention};
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let g = gpu();
    if !g.has_coop() || !g.has_f16() {
        eprintln!(
            "{} offers no f16 cooperative matrices: tensor-core attention test not run",
            g.info().name
        );
        return;
    }
    let mut rng = Rng::new(31);
    // batch, heads, T, D, keys batch item 1 keeps (None: no mask), dropout, softmax scale
    let cases = [
        (2, 3, 37, 64, Some(3), 0.1, 0.125),
        (1, 2, 133, 10, None, 0.0, 0.3),
        (2, 2, 70, 36, Some(3), 0.1, 0.17),
        (1, 1, 1, 16, None, 0.0, 0.25),
        (1, 2, 200, 64, None, 0.1, 1.0),
        (2, 2, 37, 16, Some(0), 0.1, 0.25),
    ];
    let mut worst = [0f64; 5];
    for (b, h, t, d, kept, dropout, scale) in cases {
        let n = b * h * t * d;
        let shape = [b, h, t, d];
        let [q, k, v] = [(); 3].map(|_| to_f16(&upload(&rng.vec(n), &shape)).unwrap());
        let r = upload(&rng.vec(n), &shape);
        let mut mask = vec![0f32; b * t];
        if let Some(kept) = kept {
            mask[t + t.min(kept)..].fill(f32::MIN);
        }
        let mask = Tensor::from_slice(&g, &mask, &[b, t]).unwrap();
        let mask = kept.map(|_| &mask);
        let a = Attention {
            heads: h,
            scale,
            dropout,
            seed: 5,
            tokens_first: false,
            drop_row: 0,
        };
        let run = |coop: bool| {
            let before = set_coop_attention(coop);
            let profiled = g.profile_start().unwrap();
            let f = forward(&q, &k, &v, mask, &a).unwrap();
            let (out, lse) = (f.out.to_vec().unwrap(), f.lse.to_vec().unwrap());
            let kernels = g.profile_stop().unwrap();
            set_coop_attention(before);
            if profiled {
                assert_eq!(
                    kernels.iter().any(|k| k.0 == "attn_fwd_coop"),
                    coop,
                    "tensor-core forward ran: {kernels:?}"
                );
            }
            let before = set_coop_attention(coop);
            let profiled = g.profile_start().unwrap();
            let grads = backward(&q, &k, &v, mask, &a, &f, &r).unwrap();
            let [dq, dk, dv] = [grads.q, grads.k, grads.v].map(|x| x.to_vec().unwrap());
            let kernels = g.profile_stop().unwrap();
            set_coop_attention(before);
            if profiled {
                for name in ["attn_bwd_kv_coop", "attn_bwd_q_coop"] {
                    assert_eq!(
                        kernels.iter().any(|k| k.0 == name),
                        coop,
                        "{name} ran: {kernels:?}"
                    );
                }
            }
            [out, lse, dq, dk, dv]
        };
        let (got, want) = (run(true), run(false));
        let what = format!("b{b} h{h} t{t} d{d} kept {kept:?} dropout {dropout} scale {scale}");
        let lse: Vec<f64> = want[1].iter().map(|&x| x as f64).collect();
        assert_close(&format!("{what}: logsumexp"), &got[1], &lse, 1e-5, 1e-5);
        for (i, (name, tol)) in [
            ("out", 1.5e-3),
            ("", 0.0),
            ("dq", 1.5e-3),
            ("dk", 1.5e-3),
            ("dv", 1.5e-3),
        ]
        .into_iter()
        .enumerate()
        {
            if i == 1 {
                continue;
            }
            let e = rel(&got[i], &want[i]);
            worst[i] = worst[i].max(e);
            assert!(
                e <= tol,
                "{what}: {name} differs by {e:.2e} of its largest value"
            );
        }
    }
    assert_coop_compiled(&g, "tensor-core attention");
    eprintln!(
        "tensor-core attention vs f32 arithmetic, worst relative to max: out {:.1e}, dq {:.1e}, dk {:.1e}, dv {:.1e}",
        worst[0], worst[2], worst[3], worst[4]
    );
}

/// The same in the model's layout: q, k, v packed in one [B, T, 3, H, D] tensor (tokens
/// first), the output [B, T, H, D] and the gradient packed alike.
#[test]
fn coop_attention_in_the_packed_layout() {
    use xlsr::ops::attention::{backward_packed, forward_qkv, set_coop_attention, Attention, Qkv};
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let g = gpu();
    if !g.has_coop() || !g.has_f16() {
        eprintln!("no f16 cooperative matrices: tensor-core attention test not run");
        return;
    }
    let (b, h, t, d) = (2, 4, 90, 16);
    let mut rng = Rng::new(32);
    let qkv = to_f16(&upload(&rng.vec(b * t * 3 * h * d), &[b, t, 3, h, d])).unwrap();
    let r = upload(&rng.vec(b * t * h * d), &[b, t, h, d]);
    let mut mask = vec![0f32; b * t];
    mask[t + 40..].fill(f32::MIN);
    let mask = Tensor::from_slice(&g, &mask, &[b, t]).unwrap();
    let a = Attention {
        heads: h,
        scale: 0.25,
        dropout: 0.1,
        seed: 8,
        tokens_first: true,
        drop_row: 0,
    };
    let run = |coop: bool| {
        let before = set_coop_attention(coop);
        let profiled = g.profile_start().unwrap();
        let f = forward_qkv(Qkv::Packed(&qkv), Some(&mask), &a).unwrap();
        let dqkv = backward_packed(&qkv, Some(&mask), &a, &f, &r).unwrap();
        let out = [f.out, f.lse, dqkv].map(|x| x.to_vec().unwrap());
        let kernels = g.profile_stop().unwrap();
        set_coop_attention(before);
        if profiled {
            for name in ["attn_fwd_coop", "attn_bwd_kv_coop", "attn_bwd_q_coop"] {
                assert_eq!(
                    kernels.iter().any(|k| k.0 == name),
                    coop,
                    "packed: {name} ran: {kernels:?}"
                );
            }
        }
        out
    };
    let (got, want) = (run(true), run(false));
    assert_coop_compiled(&g, "packed tensor-core attention");
    let lse: Vec<f64> = want[1].iter().map(|&x| x as f64).collect();
    assert_close("packed: logsumexp", &got[1], &lse, 1e-5, 1e-5);
    for (i, name) in [(0, "out"), (2, "dqkv")] {
        let e = rel(&got[i], &want[i]);
        assert!(
            e <= 1.5e-3,
            "packed: {name} differs by {e:.2e} of its largest value"
        );
    }
}

/// A kernel the adapter cannot build (here an entry point its file lacks) is
/// `compiles() == false`, remembered, and leaves the device usable. The tensor-core kernels
/// ask this before they are picked, so a driver that rejects one of them falls back to the
/// other builds instead of failing the run.
#[test]
fn a_kernel_that_does_not_compile_is_left_out_and_the_device_goes_on() {
    use xlsr::engine::Kernel;
    use xlsr::ops::matmul::{matmul, MatmulParams};
    let g = gpu();
    let bad = Kernel::new("matmul", "no_such_entry", 3, 2);
    assert!(!g.compiles::<MatmulParams>(&bad));
    assert!(g
        .failed_kernels()
        .contains(&"matmul::no_such_entry".to_string()));
    let before = g.pipeline_count();
    assert!(!g.compiles::<MatmulParams>(&bad), "a failure is remembered");
    assert_eq!(g.pipeline_count(), before);
    let good = Kernel::new("matmul", "matmul_naive", 3, 2);
    assert!(g.compiles::<MatmulParams>(&good));
    // The failed build left no error behind: kernels run and read back as before.
    let a = upload(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let b = upload(&[5.0, 6.0, 7.0, 8.0], &[2, 2]);
    assert_eq!(
        matmul(&a, &b, false, false, None)
            .unwrap()
            .to_vec()
            .unwrap(),
        vec![19.0, 22.0, 43.0, 50.0]
    );
}
