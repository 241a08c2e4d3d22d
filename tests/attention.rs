//! The fused attention kernels (`ops::attention`, `Var::attention`) against the plain autograd
//! path q kᵀ → scale → softmax(mask) → dropout → @ v, forward and backward, on sequence lengths
//! that are not multiples of the tiles (1, 7, 50, 133, 200), head dims 8, 16 and 64 (and 10
//! and 36, in every build of the kernels: tiled (by default the forward) or the row kernels,
//! four lanes per row or a thread per row), B = 2, H = 3,
//! with and without a key padding mask (batch 1 keeps only a few keys) and dropout 0 and 0.1.
//! Tolerances: output |err| <= 1e-5 + 1e-4 |ref|; each gradient |err| <= 1e-4 max|ref grad|
//! (that max floored at 1e-2 of the largest of dq, dk, dv: dq and dk are zero in exact arithmetic at
//! T = 1 and both paths round differently around zero).
//! Dropout must draw the same mask as `ops::dropout` over [B, H, T, T], so with p = 0.1 the two
//! paths agree only if every kept/dropped element matches.
//! `cargo test --release --test attention -- --nocapture` prints the worst errors seen;
//! `-- --ignored --nocapture` times fused against plain at B = 1, H = 16, T = 250, D = 64.

mod common;
use common::*;
use std::sync::Mutex;
use std::time::Instant;
use xlsr::ops::attention::{Attention, Tiled};
use xlsr::{Tape, Tensor, Var};

fn att(heads: usize, scale: f32, dropout: f32, seed: u64) -> Attention {
    Attention {
        heads,
        scale,
        dropout,
        seed,
        tokens_first: false,
        drop_row: 0,
    }
}

const B: usize = 2;
const H: usize = 3;
const TS: [usize; 4] = [1, 7, 50, 133];
const DS: [usize; 3] = [8, 16, 64];

/// Held by tests that switch the kernels' build (`ops::attention::set_tiled` is global)
/// and by those that compare runs bit for bit, so that a switch never lands between them.
static FWD_BUILD: Mutex<()> = Mutex::new(());

fn one_build() -> std::sync::MutexGuard<'static, ()> {
    FWD_BUILD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Worst (output error / tol scale, gradient error / max|grad|) seen over all cases.
static WORST: Mutex<(f64, f64)> = Mutex::new((0.0, 0.0));

struct Case {
    t: usize,
    d: usize,
    masked: bool,
    p: f32,
    seed: u64,
    /// Multiplies q, to make the softmax sharp (exercises the online max rescaling).
    q_gain: f64,
}

/// [B, T] additive mask: batch 0 sees every key, batch 1 only its first min(3, T).
fn padding_mask(t: usize) -> Tensor {
    keys_mask(t, 3)
}

/// [B, T] additive mask: batch 0 sees every key, batch 1 only its first min(kept, T).
fn keys_mask(t: usize, kept: usize) -> Tensor {
    let mut m = vec![0f32; B * t];
    for x in &mut m[t + t.min(kept)..] {
        *x = f32::MIN;
    }
    Tensor::from_slice(&gpu(), &m, &[B, t]).unwrap()
}

/// Output and (dq, dk, dv) of one path, from upstream gradient `r`.
fn run(
    c: &Case,
    qkv: &[Vec<f64>; 3],
    r: &[f64],
    mask: Option<&Tensor>,
    fused: bool,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let shape = [B, H, c.t, c.d];
    let tape = Tape::new();
    let vars: Vec<Var> = qkv
        .iter()
        .map(|x| tape.input(upload(x, &shape), true))
        .collect();
    let (q, k, v) = (&vars[0], &vars[1], &vars[2]);
    let scale = (c.d as f32).powf(-0.5);
    let out = if fused {
        q.attention(k, v, mask, &att(H, scale, c.p, c.seed))
            .unwrap()
    } else {
        q.matmul(k, false, true, None)
            .unwrap()
            .scale(scale, 0.0)
            .unwrap()
            .softmax(mask)
            .unwrap()
            .dropout(c.p, c.seed)
            .unwrap()
            .matmul(v, false, false, None)
            .unwrap()
    };
    assert_eq!(out.shape(), shape);
    let loss = out
        .mul(&Var::constant(upload(r, &shape)))
        .unwrap()
        .sum()
        .unwrap();
    let grads = tape.backward(&loss, &[q, k, v]).unwrap();
    (
        out.value.to_vec().unwrap(),
        grads
            .into_iter()
            .map(|g| g.unwrap().to_vec().unwrap())
            .collect(),
    )
}

fn inputs(c: &Case) -> ([Vec<f64>; 3], Vec<f64>) {
    let n = B * H * c.t * c.d;
    let mut rng = Rng::new(c.seed ^ (c.t * 1000 + c.d) as u64);
    let q: Vec<f64> = rng.vec(n).iter().map(|x| x * c.q_gain).collect();
    ([q, rng.vec(n), rng.vec(n)], rng.vec(n))
}

/// Compares fused with plain; returns the fused output.
fn compare(c: &Case) -> Vec<f32> {
    compare_masked(c, c.masked.then(|| padding_mask(c.t)))
}

/// `compare` under a given key mask.
fn compare_masked(c: &Case, mask: Option<Tensor>) -> Vec<f32> {
    let (qkv, r) = inputs(c);
    let (o, g) = run(c, &qkv, &r, mask.as_ref(), true);
    let (o_ref, g_ref) = run(c, &qkv, &r, mask.as_ref(), false);
    let what = format!(
        "T={} D={} mask={} p={} gain={}",
        c.t, c.d, c.masked, c.p, c.q_gain
    );
    let want: Vec<f64> = o_ref.iter().map(|&x| x as f64).collect();
    assert_close(&format!("{what}: output"), &o, &want, 1e-5, 1e-4);
    let out_err = o
        .iter()
        .zip(&want)
        .map(|(&a, &b)| (a as f64 - b).abs() / (1e-5 + 1e-4 * b.abs()))
        .fold(0.0, f64::max);
    let max_abs = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
    // A gradient that is zero in exact arithmetic (dq, dk at T = 1) is measured against the others.
    let floor = 1e-2 * g_ref.iter().map(|v| max_abs(v)).fold(0.0, f64::max);
    let mut grad_err: f64 = 0.0;
    for (name, (got, want)) in ["dq", "dk", "dv"].iter().zip(g.iter().zip(&g_ref)) {
        let scale = max_abs(want).max(floor);
        let want: Vec<f64> = want.iter().map(|&x| x as f64).collect();
        assert_close(&format!("{what}: {name}"), got, &want, 1e-4 * scale, 0.0);
        let e = got
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a as f64 - b).abs())
            .fold(0.0, f64::max);
        grad_err = grad_err.max(e / scale);
    }
    let mut w = WORST.lock().unwrap();
    w.0 = w.0.max(out_err);
    w.1 = w.1.max(grad_err);
    eprintln!(
        "{what}: output err {out_err:.3} x tol, grad err {grad_err:.2e} x max|grad| \
         (worst so far {:.3}, {:.2e})",
        w.0, w.1
    );
    o
}

fn sweep(masked: bool, p: f32) {
    for t in TS {
        for d in DS {
            compare(&Case {
                t,
                d,
                masked,
                p,
                seed: 0x5eed_0000_0000_0007 + t as u64,
                q_gain: 2.0,
            });
        }
    }
}

#[test]
fn fused_matches_plain() {
    sweep(false, 0.0);
}

#[test]
fn fused_matches_plain_with_padding_mask() {
    sweep(true, 0.0);
}

#[test]
fn fused_matches_plain_with_dropout() {
    sweep(false, 0.1);
}

#[test]
fn fused_matches_plain_with_mask_and_dropout() {
    sweep(true, 0.1);
}

#[test]
fn fused_matches_plain_with_sharp_scores() {
    // Scores of several tens: the running max jumps between key tiles, so a wrong rescale of
    // the accumulator would show.
    for (t, d) in [(50, 16), (133, 64)] {
        compare(&Case {
            t,
            d,
            masked: true,
            p: 0.1,
            seed: 3,
            q_gain: 30.0,
        });
    }
}

#[test]
fn both_builds_match_plain_and_each_other() {
    let _one = one_build();
    // Four lanes per row (adapters with subgroups) and a thread per row, at head dims that
    // leave some lanes fewer vec4s (10: three vec4s, the last partial, so one lane holds
    // none; 36: nine) and at 64, with mask, dropout and sharp scores.
    if !gpu().has_subgroups() {
        eprintln!("adapter has no subgroup operations: only the thread-per-row build exists");
    }
    for (t, d) in [(7, 10), (133, 36), (50, 64)] {
        let c = Case {
            t,
            d,
            masked: true,
            p: 0.1,
            seed: 11,
            q_gain: 8.0,
        };
        // The row kernels (not the tiled ones, the default).
        let tiled = xlsr::ops::attention::set_tiled(Tiled::None);
        let before = xlsr::ops::attention::set_rows_only(true);
        let rows = compare(&c);
        xlsr::ops::attention::set_rows_only(false);
        let lanes = compare(&c);
        xlsr::ops::attention::set_rows_only(before);
        xlsr::ops::attention::set_tiled(tiled);
        let want: Vec<f64> = rows.iter().map(|&x| x as f64).collect();
        assert_close(
            &format!("T={t} D={d}: lanes vs rows"),
            &lanes,
            &want,
            1e-6,
            1e-5,
        );
    }
}

/// A batch item whose every key is masked (all padding): its rows come out uniform in the
/// forward (softmax.wgsl's answer), and the backward must use those uniform weights too. Its
/// logsumexp is f32::MIN + ln T, which rounds to f32::MIN, so exp(s - L) alone would give
/// every key a weight of 1 instead of 1/T. Every build: tiled, four lanes, a thread per row.
#[test]
fn a_batch_item_with_every_key_masked_matches_plain() {
    let _one = one_build();
    let c = Case {
        t: 50,
        d: 16,
        masked: true,
        p: 0.1,
        seed: 31,
        q_gain: 2.0,
    };
    let builds = [
        (Tiled::All, false),
        (Tiled::None, false),
        (Tiled::None, true),
    ];
    for (tiled, rows_only) in builds {
        let tiled_before = xlsr::ops::attention::set_tiled(tiled);
        let rows_before = xlsr::ops::attention::set_rows_only(rows_only);
        eprintln!("build: tiled {tiled:?}, rows only {rows_only}");
        compare_masked(&c, Some(keys_mask(c.t, 0)));
        xlsr::ops::attention::set_rows_only(rows_before);
        xlsr::ops::attention::set_tiled(tiled_before);
    }
}

#[test]
fn dropout_changes_the_output_and_seed_matters() {
    let _one = one_build();
    let c = |p: f32, seed: u64| Case {
        t: 50,
        d: 16,
        masked: false,
        p,
        seed,
        q_gain: 2.0,
    };
    let (qkv, _) = inputs(&c(0.0, 1));
    let shape = [B, H, 50, 16];
    let out = |p: f32, seed: u64| {
        let [q, k, v] = qkv.each_ref().map(|x| upload(x, &shape));
        let f = xlsr::ops::attention::forward(&q, &k, &v, None, &att(H, 0.25, p, seed)).unwrap();
        f.out.to_vec().unwrap()
    };
    let diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    let plain = out(0.0, 1);
    let a = out(0.1, 1);
    let b = out(0.1, 2);
    assert!(diff(&plain, &a) > 1e-2, "dropout had no effect");
    assert!(diff(&a, &b) > 1e-2, "the seed had no effect");
    assert_eq!(a, out(0.1, 1), "same seed, different result");
}

#[test]
fn three_dim_input_is_batch_times_heads() {
    let _one = one_build();
    // [B*H, T, D] gives the same as [B, H, T, D], the mask still indexed by bh / H.
    let (t, d) = (7, 8);
    let c = Case {
        t,
        d,
        masked: true,
        p: 0.1,
        seed: 9,
        q_gain: 2.0,
    };
    let (qkv, _) = inputs(&c);
    let mask = padding_mask(t);
    let go = |shape: &[usize]| {
        let [q, k, v] = qkv.each_ref().map(|x| upload(x, shape));
        let f =
            xlsr::ops::attention::forward(&q, &k, &v, Some(&mask), &att(H, 0.3, 0.1, 9)).unwrap();
        assert_eq!(f.out.shape(), shape);
        assert_eq!(f.lse.shape(), &[B * H, t]);
        f.out.to_vec().unwrap()
    };
    assert_eq!(go(&[B, H, t, d]), go(&[B * H, t, d]));
}

/// The tiled kernels (`attn_fwd_tiled`: 32 query rows against key tiles of 64;
/// `attn_bwd_kv_tiled` and `attn_bwd_q_tiled`: 32 keys or queries against tiles of 32) against
/// the plain path, forward and backward: tiles cut short (T = 1, 7, 133, 200), rows past T in
/// the last tile, head dims with a partial vec4 (10) and at 64, mask, dropout, sharp scores;
/// and within the kernel tolerance of the row kernels.
#[test]
fn tiled_kernels_match_plain_and_the_row_kernels() {
    for (t, d, masked, p, q_gain) in [
        (1, 8, true, 0.1, 2.0),
        (7, 10, true, 0.1, 8.0),
        (133, 36, true, 0.1, 8.0),
        (50, 64, false, 0.0, 2.0),
        (133, 64, true, 0.1, 30.0),
        (200, 16, true, 0.0, 2.0),
    ] {
        let c = Case {
            t,
            d,
            masked,
            p,
            seed: 21,
            q_gain,
        };
        let g = gpu();
        let _one = one_build();
        let before = xlsr::ops::attention::set_tiled(Tiled::All);
        let profiled = g.profile_start().unwrap();
        let tiled = compare(&c);
        let kernels = g.profile_stop().unwrap();
        xlsr::ops::attention::set_tiled(Tiled::None);
        let rows = compare(&c);
        xlsr::ops::attention::set_tiled(before);
        if profiled {
            for name in ["attn_fwd_tiled", "attn_bwd_kv_tiled", "attn_bwd_q_tiled"] {
                assert!(
                    kernels.iter().any(|k| k.0 == name),
                    "{name} did not run: {kernels:?}"
                );
            }
        }
        let want: Vec<f64> = rows.iter().map(|&x| x as f64).collect();
        assert_close(
            &format!("T={t} D={d}: tiled vs row kernels"),
            &tiled,
            &want,
            1e-5,
            1e-4,
        );
    }
}

/// The tiled kernels in every layout (heads first, tokens first, q, k, v packed and their
/// gradients too), f32 and f16 inputs, and chunked over a 2 KiB binding limit: the same bit
/// for bit across layouts and chunks, as the row kernels are, and within the kernel
/// tolerance of the row kernels.
#[test]
fn tiled_kernels_in_every_layout_and_chunked() {
    use xlsr::ops::attention::{set_tiled, Tiled};
    let small = xlsr::Gpu::new().unwrap();
    small.set_max_binding(2048);
    let g = gpu();
    let halves: &[bool] = if g.has_f16() {
        &[false, true]
    } else {
        &[false]
    };
    for &half in halves {
        let _one = one_build();
        let before = set_tiled(Tiled::None);
        let rows = fused_ops(&g, half, Layout::HeadsFirst);
        set_tiled(Tiled::All);
        let tiled = [Layout::HeadsFirst, Layout::TokensFirst, Layout::Packed]
            .map(|l| fused_ops(&g, half, l));
        let chunked = fused_ops(&small, half, Layout::HeadsFirst);
        set_tiled(before);
        let names = ["output", "logsumexp", "dq", "dk", "dv"];
        for (what, other) in [
            ("tokens first", &tiled[1]),
            ("packed", &tiled[2]),
            ("chunked", &chunked),
        ] {
            for (i, name) in names.iter().enumerate() {
                assert_eq!(other[i], tiled[0][i], "half {half}, {what}: {name}");
            }
        }
        for (i, name) in names.iter().enumerate() {
            let want: Vec<f64> = rows[i].iter().map(|&x| x as f64).collect();
            assert_close(
                &format!("half {half}: tiled vs rows, {name}"),
                &tiled[0][i],
                &want,
                1e-5,
                1e-4,
            );
        }
    }
}

/// [B, H, T, D] <-> [B, T, H, D] on the host: `dims` is the input's (B, X, Y, D), and the
/// result is [B, Y, X, D].
fn swap_heads_tokens<T: Copy>(x: &[T], (b, h, t, d): (usize, usize, usize, usize)) -> Vec<T> {
    let mut out = Vec::with_capacity(x.len());
    for bi in 0..b {
        for ti in 0..t {
            for hi in 0..h {
                let at = ((bi * h + hi) * t + ti) * d;
                out.extend_from_slice(&x[at..at + d]);
            }
        }
    }
    out
}

/// Where q, k and v sit: [B, H, T, D], [B, T, H, D], or packed in one [B, T, 3, H, D].
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    HeadsFirst,
    TokensFirst,
    Packed,
}

/// The fused kernels' forward and backward on `g` at T = 50, D = 8 with a key mask and
/// dropout 0.1: [output, logsumexp, dq, dk, dv], in [B, H, T, D] order whatever the layout.
fn fused_ops(g: &xlsr::Gpu, half: bool, layout: Layout) -> Vec<Vec<f32>> {
    use xlsr::ops::{attention, cast};
    let (t, d) = (50, 8);
    let c = Case {
        t,
        d,
        masked: true,
        p: 0.1,
        seed: 4,
        q_gain: 1.0,
    };
    let (qkv, r) = inputs(&c);
    let tokens_first = layout != Layout::HeadsFirst;
    let shape = if tokens_first {
        [B, t, H, d]
    } else {
        [B, H, t, d]
    };
    let put = |x: &[f64]| {
        let x = to_f32(x);
        let x = if tokens_first {
            swap_heads_tokens(&x, (B, H, t, d))
        } else {
            x
        };
        Tensor::from_slice(g, &x, &shape).unwrap()
    };
    let half_if = |x: Tensor| {
        if half {
            cast::to_f16(&x).unwrap()
        } else {
            x
        }
    };
    let [q, k, v] = qkv.each_ref().map(|x| half_if(put(x)));
    let mut m = vec![0f32; B * t];
    m[t + 3..].fill(f32::MIN);
    let mask = Tensor::from_slice(g, &m, &[B, t]).unwrap();
    let a = Attention {
        tokens_first,
        ..att(H, 0.3, 0.1, 4)
    };
    let back = |x: Vec<f32>| {
        if tokens_first {
            swap_heads_tokens(&x, (B, t, H, d))
        } else {
            x
        }
    };
    if layout == Layout::Packed {
        // Each token's q, k, v rows side by side, as one GEMM over [Wq; Wk; Wv] makes them.
        let parts = qkv
            .each_ref()
            .map(|x| swap_heads_tokens(&to_f32(x), (B, H, t, d)));
        let row = H * d;
        let packed: Vec<f32> = (0..B * t)
            .flat_map(|i| {
                parts
                    .iter()
                    .flat_map(move |p| p[i * row..(i + 1) * row].to_vec())
            })
            .collect();
        let x = half_if(Tensor::from_slice(g, &packed, &[B, t, 3, H, d]).unwrap());
        let f = attention::forward_qkv(attention::Qkv::Packed(&x), Some(&mask), &a).unwrap();
        let dx = attention::backward_packed(&x, Some(&mask), &a, &f, &put(&r)).unwrap();
        let dx = dx.to_vec().unwrap();
        let part = |j: usize| {
            back(
                (0..B * t)
                    .flat_map(|i| dx[(3 * i + j) * row..(3 * i + j + 1) * row].to_vec())
                    .collect(),
            )
        };
        return vec![
            back(f.out.to_vec().unwrap()),
            f.lse.to_vec().unwrap(),
            part(0),
            part(1),
            part(2),
        ];
    }
    let f = attention::forward(&q, &k, &v, Some(&mask), &a).unwrap();
    let dd = attention::backward(&q, &k, &v, Some(&mask), &a, &f, &put(&r)).unwrap();
    vec![
        back(f.out.to_vec().unwrap()),
        f.lse.to_vec().unwrap(),
        back(dd.q.to_vec().unwrap()),
        back(dd.k.to_vec().unwrap()),
        back(dd.v.to_vec().unwrap()),
    ]
}

/// (batch, head) rows that do not fit one binding together run in chunks, each bound from an
/// unaligned offset (rows of 50 x 8 floats, a 2 KiB binding limit: one row per dispatch):
/// output, logsumexp and gradients equal the unchunked run exactly, with a key mask and
/// dropout (whose indices must stay global), for f32 and f16 inputs. `tokens_first` (q, k,
/// v, O and gradients in the projections' [B, T, H, D] layout) gives the same bit for bit,
/// chunked too (whole batches per chunk, an 8 KiB limit), and so does q, k, v packed in one
/// [B, T, 3, H, D] tensor with the gradients packed alike (a 16 KiB limit: one batch).
#[test]
fn rows_past_the_binding_limit_run_in_chunks() {
    let _one = one_build();
    let small = xlsr::Gpu::new().unwrap();
    small.set_max_binding(2048);
    let batches = xlsr::Gpu::new().unwrap();
    batches.set_max_binding(8192);
    let packed_batches = xlsr::Gpu::new().unwrap();
    packed_batches.set_max_binding(16384);
    for half in [false, true] {
        if half && !small.has_f16() {
            eprintln!("adapter has no SHADER_F16: f16 chunked attention case not run");
            continue;
        }
        use Layout::*;
        let want = fused_ops(&gpu(), half, HeadsFirst);
        for (g, layout, case) in [
            (&small, HeadsFirst, "chunked"),
            (&gpu(), TokensFirst, "tokens first"),
            (&batches, TokensFirst, "tokens first, chunked"),
            (&gpu(), Packed, "packed"),
            (&packed_batches, Packed, "packed, chunked"),
        ] {
            assert_eq!(fused_ops(g, half, layout), want, "f16 {half}, {case}");
        }
    }
}

#[test]
fn head_dim_over_64_is_an_error() {
    let x = Tensor::zeros(&gpu(), &[1, 2, 5, 65]).unwrap();
    let e = xlsr::ops::attention::forward(&x, &x, &x, None, &att(2, 1.0, 0.0, 0)).unwrap_err();
    assert!(matches!(e, xlsr::engine::Error::Limit { .. }), "{e}");
    assert!(e.to_string().contains("head dim 65"), "{e}");
    let y = Tensor::zeros(&gpu(), &[1, 2, 5, 64]).unwrap();
    assert!(xlsr::ops::attention::forward(&y, &y, &y, None, &att(2, 1.0, 0.0, 0)).is_ok());
}

#[test]
fn bad_shapes_are_errors() {
    let g = gpu();
    let x = Tensor::zeros(&g, &[2, 3, 5, 8]).unwrap();
    let y = Tensor::zeros(&g, &[2, 3, 6, 8]).unwrap();
    let f = |q: &Tensor, k: &Tensor, m: Option<&Tensor>, heads: usize, p: f32| {
        xlsr::ops::attention::forward(q, k, k, m, &att(heads, 1.0, p, 0)).is_err()
    };
    assert!(f(&x, &y, None, 3, 0.0), "k of another length");
    assert!(f(&x, &x, None, 4, 0.0), "heads not dividing B*H");
    assert!(f(&x, &x, None, 3, 1.0), "dropout 1");
    let m = Tensor::zeros(&g, &[3, 5]).unwrap();
    assert!(f(&x, &x, Some(&m), 3, 0.0), "mask of the wrong batch");
    let m = Tensor::zeros(&g, &[2, 5]).unwrap();
    assert!(!f(&x, &x, Some(&m), 3, 0.0));
}

/// Timing: fused forward+backward against the plain path at one long clip's size.
#[test]
#[ignore]
fn time_fused_vs_plain() {
    let (b, h, t, d) = (1, 16, 250, 64);
    let n = b * h * t * d;
    let mut rng = Rng::new(1);
    let shape = [b, h, t, d];
    let host: Vec<Vec<f64>> = (0..4).map(|_| rng.vec(n)).collect();
    let scale = (d as f32).powf(-0.5);
    let step = |fused: bool| {
        let tape = Tape::new();
        let vars: Vec<Var> = host[..3]
            .iter()
            .map(|x| tape.input(upload(x, &shape), true))
            .collect();
        let r = upload(&host[3], &shape);
        r.to_vec().unwrap();
        let start = Instant::now();
        let (q, k, v) = (&vars[0], &vars[1], &vars[2]);
        let out = if fused {
            q.attention(k, v, None, &att(h, scale, 0.1, 7)).unwrap()
        } else {
            q.matmul(k, false, true, None)
                .unwrap()
                .scale(scale, 0.0)
                .unwrap()
                .softmax(None)
                .unwrap()
                .dropout(0.1, 7)
                .unwrap()
                .matmul(v, false, false, None)
                .unwrap()
        };
        out.value.to_vec().unwrap();
        let fwd = start.elapsed().as_secs_f64();
        let grads = tape.backward_with(&out, Some(r), &[q, k, v]).unwrap();
        for g in grads {
            g.unwrap().to_vec().unwrap();
        }
        (fwd, start.elapsed().as_secs_f64())
    };
    for fused in [false, true] {
        step(fused); // compile and warm the pool
    }
    if gpu().profile_start().unwrap() {
        step(true);
        for (name, ns, n) in gpu().profile_stop().unwrap() {
            println!("  {name}: {:.1} ms over {n} launches", ns / 1e6);
        }
    }
    for fused in [false, true, false, true] {
        let runs: Vec<(f64, f64)> = (0..3).map(|_| step(fused)).collect();
        let best = |f: fn(&(f64, f64)) -> f64| runs.iter().map(f).fold(f64::MAX, f64::min);
        println!(
            "{}: forward {:.1} ms, forward+backward {:.1} ms (best of 3)",
            if fused { "fused" } else { "plain" },
            1e3 * best(|r| r.0),
            1e3 * best(|r| r.1)
        );
    }
}
