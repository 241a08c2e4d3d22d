//! Every kernel, forward and backward, against a CPU f64 reference and central finite
//! differences of it, on shapes that are not multiples of the tile sizes, plus empty and
//! 1-sized dims. Tolerances: forward |err| <= 1e-5 + 1e-4 |ref|; gradients
//! |err| <= 2e-4 + 2e-3 |ref| unless a test states otherwise.

mod common;
use common::*;
use xlsr::ops::activation::Act;
use xlsr::ops::conv::Conv1d;
use xlsr::{Tape, Tensor, Var};

fn bcast_index(shape: &[usize], out: &[usize], mut i: usize) -> usize {
    let off = out.len() - shape.len();
    let mut idx = 0;
    let mut stride = 1;
    let mut coords = vec![0; out.len()];
    for d in (0..out.len()).rev() {
        coords[d] = i % out[d];
        i /= out[d];
    }
    for d in (0..shape.len()).rev() {
        let c = if shape[d] == 1 { 0 } else { coords[d + off] };
        idx += c * stride;
        stride *= shape[d];
    }
    idx
}

fn check_binary(a: &[usize], b: &[usize], out: &[usize], seed: u64) {
    let mut rng = Rng::new(seed);
    let na: usize = a.iter().product();
    let nb: usize = b.iter().product();
    let n: usize = out.iter().product();
    let av = rng.vec(na);
    // Keep divisors away from zero.
    let bv: Vec<f64> = rng
        .vec(nb)
        .iter()
        .map(|x| x.signum() * (0.5 + x.abs()))
        .collect();
    for (name, f) in [
        ("add", (|x: f64, y: f64| x + y) as fn(f64, f64) -> f64),
        ("sub", |x, y| x - y),
        ("mul", |x, y| x * y),
        ("div", |x, y| x / y),
    ] {
        let (a2, b2, o2) = (a.to_vec(), b.to_vec(), out.to_vec());
        Check::new(
            name,
            vec![(av.clone(), a.to_vec()), (bv.clone(), b.to_vec())],
        )
        .run(
            |v| match name {
                "add" => v[0].add(&v[1]).unwrap(),
                "sub" => v[0].sub(&v[1]).unwrap(),
                "mul" => v[0].mul(&v[1]).unwrap(),
                _ => v[0].div(&v[1]).unwrap(),
            },
            move |v| {
                (0..n)
                    .map(|i| {
                        f(
                            v[0][bcast_index(&a2, &o2, i)],
                            v[1][bcast_index(&b2, &o2, i)],
                        )
                    })
                    .collect()
            },
        );
    }
}

#[test]
fn binary_ops_broadcast() {
    check_binary(&[7, 13], &[7, 13], &[7, 13], 1);
    check_binary(&[3, 1, 5], &[4, 1], &[3, 4, 5], 2);
    check_binary(&[2, 3, 4], &[4], &[2, 3, 4], 3);
    check_binary(&[1], &[5, 1], &[5, 1], 4);
    check_binary(&[0, 3], &[3], &[0, 3], 5);
    // Enough rows that the column sum of the [8] operand runs in two passes.
    check_binary(&[3, 50, 8], &[8], &[3, 50, 8], 6);
}

#[test]
fn scale_and_fill() {
    let mut rng = Rng::new(6);
    let x = rng.vec(300);
    Check::new("scale", vec![(x, vec![300])]).run(
        |v| v[0].scale(-2.5, 0.75).unwrap(),
        |v| v[0].iter().map(|x| -2.5 * x + 0.75).collect(),
    );
    let t = xlsr::ops::elementwise::fill(&gpu(), &[3, 70], 1.5).unwrap();
    assert!(t.to_vec().unwrap().iter().all(|&x| x == 1.5));
}

/// One matmul case: C [batch, m, n] = op(A) op(B), A [batch, m, k] (or transposed), B [k, n]
/// shared or batched (or transposed).
#[derive(Clone, Copy)]
struct Gemm {
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    shared: bool,
}

impl Gemm {
    fn name(&self) -> String {
        let Gemm {
            batch,
            m,
            k,
            n,
            ta,
            tb,
            shared,
        } = *self;
        format!("b{batch} m{m} k{k} n{n} ta{ta} tb{tb} shared{shared}")
    }
}

fn cpu_matmul(a: &[f64], b: &[f64], g: Gemm, bias: Option<&[f64]>) -> Vec<f64> {
    let Gemm {
        batch,
        m,
        k,
        n,
        ta,
        tb,
        shared,
    } = g;
    let mut c = vec![0.0; batch * m * n];
    for bi in 0..batch {
        let ab = &a[bi * m * k..];
        let bb = if shared { b } else { &b[bi * k * n..] };
        for i in 0..m {
            for j in 0..n {
                let mut s = bias.map_or(0.0, |bs| bs[j]);
                for kk in 0..k {
                    let av = if ta { ab[kk * m + i] } else { ab[i * k + kk] };
                    let bv = if tb { bb[j * k + kk] } else { bb[kk * n + j] };
                    s += av * bv;
                }
                c[bi * m * n + i * n + j] = s;
            }
        }
    }
    c
}

fn check_matmul(g: Gemm, with_bias: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    let (ashape, bshape) = matmul_shapes((g.batch, g.m, g.n, g.k), (g.ta, g.tb, g.shared));
    let mut inputs = vec![
        (rng.vec(g.batch * g.m * g.k), ashape),
        (rng.vec(bshape.iter().product()), bshape),
    ];
    if with_bias {
        inputs.push((rng.vec(g.n), vec![g.n]));
    }
    let name = format!("matmul {} bias{with_bias}", g.name());
    Check::new(&name, inputs).run(
        |v| v[0].matmul(&v[1], g.ta, g.tb, v.get(2)).unwrap(),
        |v| cpu_matmul(&v[0], &v[1], g, v.get(2).map(|b| b.as_slice())),
    );
}

#[test]
fn matmul_all_layouts() {
    let gemm = |batch, m, k, n, ta, tb, shared| Gemm {
        batch,
        m,
        k,
        n,
        ta,
        tb,
        shared,
    };
    let mut seed = 10;
    for &(ta, tb) in &[(false, false), (false, true), (true, false), (true, true)] {
        for &shared in &[true, false] {
            seed += 1;
            check_matmul(gemm(2, 37, 29, 23, ta, tb, shared), seed % 2 == 0, seed);
        }
    }
    check_matmul(gemm(1, 65, 17, 67, false, false, true), true, 30);
    check_matmul(gemm(3, 1, 1, 1, false, true, false), true, 31);
    check_matmul(gemm(1, 5, 0, 4, false, false, true), true, 32);
    check_matmul(gemm(1, 0, 3, 4, false, false, true), false, 33);
}

/// The tiled kernel across its tile edges (128), K slabs (8) and every transpose, batched and
/// shared B, with and without bias, unsplit and with K forced into 3 and 7 slices (the split
/// path's workspace and `splitk_sum`), each against an f64 product.
#[test]
fn matmul_tile_edges_and_split_k() {
    use xlsr::ops::matmul::{matmul_with, Algo};
    let mut rng = Rng::new(50);
    let mut cases = 0;
    for &(batch, m, k, n, shared) in &[
        (1, 130, 300, 257, true),
        (2, 129, 61, 140, false),
        (3, 7, 203, 9, false),
    ] {
        for &(ta, tb) in &[(false, false), (false, true), (true, false), (true, true)] {
            let av = rng.vec(batch * m * k);
            let bn = if shared { k * n } else { batch * k * n };
            let bv = rng.vec(bn);
            let biasv = rng.vec(n);
            let (ashape, bshape) = matmul_shapes((batch, m, n, k), (ta, tb, shared));
            let (a, b, bias) = (
                upload(&av, &ashape),
                upload(&bv, &bshape),
                upload(&biasv, &[n]),
            );
            let g = Gemm {
                batch,
                m,
                k,
                n,
                ta,
                tb,
                shared,
            };
            let want = cpu_matmul(&av, &bv, g, Some(&biasv));
            for splits in [1, 3, 7] {
                let got = matmul_with(Algo::Tiled, &a, &b, ta, tb, Some(&bias), Some(splits))
                    .unwrap()
                    .to_vec()
                    .unwrap();
                let name = format!("b{batch} m{m} k{k} n{n} ta{ta} tb{tb} splits {splits}");
                assert_close(&name, &got, &want, 1e-5, 1e-4);
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 36);
    // The heuristic: big outputs are never split, small ones with long K are.
    use xlsr::ops::matmul::split_k;
    assert_eq!(split_k(512, 4096), 1);
    assert!(split_k(64, 2000) > 1);
    assert_eq!(split_k(8, 200), 1);
}

#[test]
fn naive_and_tiled_matmul_agree() {
    let mut rng = Rng::new(40);
    let (m, k, n) = (130, 70, 90);
    let a = upload(&rng.vec(m * k), &[m, k]);
    let b = upload(&rng.vec(k * n), &[k, n]);
    use xlsr::ops::matmul::{matmul_with, Algo};
    let t = matmul_with(Algo::Tiled, &a, &b, false, false, None, None)
        .unwrap()
        .to_vec()
        .unwrap();
    let nv = matmul_with(Algo::Naive, &a, &b, false, false, None, None)
        .unwrap()
        .to_vec()
        .unwrap();
    assert_close(
        "naive vs tiled",
        &t,
        &nv.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        1e-5,
        1e-4,
    );
}

fn cpu_gelu(x: f64) -> f64 {
    // erf via its Taylor/continued-fraction-free series is overkill; libm-quality erf from
    // the complementary error function's Chebyshev fit is 1.2e-7 accurate, so use an
    // independent high-precision series instead.
    0.5 * x * (1.0 + erf64(x / std::f64::consts::SQRT_2))
}

/// erf by its Maclaurin series (exact to f64 rounding for |x| < 3).
fn erf64(x: f64) -> f64 {
    let mut term = x;
    let mut sum = x;
    for n in 1..200 {
        term *= -x * x / n as f64;
        let add = term / (2 * n + 1) as f64;
        sum += add;
        if add.abs() < 1e-17 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn activations() {
    let mut rng = Rng::new(50);
    let x: Vec<f64> = rng.vec(1000).iter().map(|v| v * 4.0).collect();
    Check::new("gelu", vec![(x.clone(), vec![10, 100])]).run(
        |v| v[0].gelu().unwrap(),
        |v| v[0].iter().map(|&x| cpu_gelu(x)).collect(),
    );
    Check::new("relu", vec![(x.clone(), vec![1000])]).run(
        |v| v[0].relu().unwrap(),
        |v| v[0].iter().map(|&x| x.max(0.0)).collect(),
    );
    Check::new("gelu empty", vec![(vec![], vec![0, 4])]).run(|v| v[0].gelu().unwrap(), |_| vec![]);
    let c = (2.0 / std::f64::consts::PI).sqrt();
    Check::new("gelu_tanh", vec![(x.clone(), vec![1000])]).run(
        |v| v[0].act(Act::GeluTanh).unwrap(),
        |v| {
            v[0].iter()
                .map(|&x| 0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh()))
                .collect()
        },
    );
    Check::new("silu", vec![(x, vec![1000])]).run(
        |v| v[0].act(Act::Silu).unwrap(),
        |v| v[0].iter().map(|&x| x / (1.0 + (-x).exp())).collect(),
    );
}

#[test]
fn weight_norm_over_all_dims_but_last() {
    let mut rng = Rng::new(51);
    let (o, i, k) = (9, 5, 7);
    let v = rng.vec(o * i * k);
    let g: Vec<f64> = rng.vec(k).iter().map(|x| x + 1.5).collect();
    Check::new("weight_norm", vec![(v, vec![o, i, k]), (g, vec![1, 1, k])]).run(
        |x| x[0].weight_norm(&x[1]).unwrap(),
        |x| {
            let (v, g) = (&x[0], &x[1]);
            let norm: Vec<f64> = (0..k)
                .map(|kk| {
                    (0..o * i)
                        .map(|r| v[r * k + kk].powi(2))
                        .sum::<f64>()
                        .sqrt()
                })
                .collect();
            (0..o * i * k)
                .map(|j| g[j % k] * v[j] / norm[j % k])
                .collect()
        },
    );
}

#[test]
fn dropout_is_reproducible_and_unbiased() {
    let g = gpu();
    let n = 100_000;
    let x = Tensor::from_slice(&g, &vec![1.0; n], &[n]).unwrap();
    let p = 0.1;
    let y1 = xlsr::ops::dropout::dropout(&x, p, 1234)
        .unwrap()
        .to_vec()
        .unwrap();
    let y2 = xlsr::ops::dropout::dropout(&x, p, 1234)
        .unwrap()
        .to_vec()
        .unwrap();
    let y3 = xlsr::ops::dropout::dropout(&x, p, 1235)
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(y1, y2, "same seed, same mask");
    assert_ne!(y1, y3, "another seed, another mask");
    // Every element is dropped (0) or kept and scaled by exactly 1/(1-p), as torch's f32
    // dropout scales, and the dropped fraction lies within 5 standard deviations of p.
    let check_mask = |y: &[f32], p: f32| {
        let scale = 1.0 / (1.0 - p);
        for (i, &v) in y.iter().enumerate() {
            assert!(
                v == 0.0 || v == scale,
                "element {i}: {v}, expected 0 or {scale}"
            );
        }
        let n = y.len() as f64;
        let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64 / n;
        let bound = 5.0 * (p as f64 * (1.0 - p as f64) / n).sqrt();
        assert!(
            (dropped - p as f64).abs() <= bound,
            "dropped fraction {dropped}, p {p} +- {bound}"
        );
    };
    check_mask(&y1, p);
    check_mask(&y3, p);
    // Backward applies the same mask: compare with the mask read off the forward output.
    let mut rng = Rng::new(51);
    let xv = rng.vec(5000);
    let mask: Vec<f64> = {
        let ones = Tensor::from_slice(&g, &vec![1.0; 5000], &[5000]).unwrap();
        xlsr::ops::dropout::dropout(&ones, 0.3, 77)
            .unwrap()
            .to_vec()
            .unwrap()
            .iter()
            .map(|&m| m as f64)
            .collect()
    };
    check_mask(&mask.iter().map(|&m| m as f32).collect::<Vec<_>>(), 0.3);
    Check::new("dropout", vec![(xv.clone(), vec![5000])]).run(
        |v| v[0].dropout(0.3, 77).unwrap(),
        {
            let mask = mask.clone();
            move |v| v[0].iter().zip(&mask).map(|(x, m)| x * m).collect()
        },
    );
    // The residual form, res + dropout(x), with the mask of a larger tensor from element 0:
    // the same mask, and gradients for both inputs.
    let res = rng.vec(5000);
    Check::new("dropout_add", vec![(xv, vec![5000]), (res, vec![5000])]).run(
        |v| v[0].dropout_add_at(&v[1], 0.3, 77, 0).unwrap(),
        move |v| {
            let (x, r) = (&v[0], &v[1]);
            (0..x.len()).map(|i| r[i] + x[i] * mask[i]).collect()
        },
    );
}

/// Two random vectors of `n`, uploaded to the shared device and to one whose bindings hold
/// 4 KiB (so every kernel over them runs in chunks): `(x, y)` on each, and the host copies.
fn on_two_devices(seed: u64, n: usize) -> (Vec<(Tensor, Tensor)>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let (x, y) = (to_f32(&rng.vec(n)), to_f32(&rng.vec(n)));
    let small = xlsr::Gpu::new().unwrap();
    small.set_max_binding(4096);
    let pairs = [gpu(), small]
        .iter()
        .map(|g| {
            let up = |v: &[f32]| Tensor::from_slice(g, v, &[n]).unwrap();
            (up(&x), up(&y))
        })
        .collect();
    (pairs, x, y)
}

/// The fused residual equals the two ops it replaces bit for bit, at an offset into a
/// larger tensor (a data-parallel rank's share) and when chunked by the binding limit.
#[test]
fn dropout_add_equals_dropout_then_add() {
    let (pairs, x, r) = on_two_devices(52, 3000);
    for (xt, rt) in &pairs {
        let fused = xlsr::ops::dropout::dropout_add_at(xt, rt, 0.2, 9, 700).unwrap();
        let dropped = xlsr::ops::dropout::dropout_at(xt, 0.2, 9, 700).unwrap();
        let two = xlsr::ops::elementwise::binary(xlsr::ops::elementwise::BinOp::Add, rt, &dropped)
            .unwrap();
        assert_eq!(fused.to_vec().unwrap(), two.to_vec().unwrap());
    }
    let e = xlsr::ops::dropout::dropout_add_at(
        &Tensor::from_slice(&gpu(), &x[..4], &[4]).unwrap(),
        &Tensor::from_slice(&gpu(), &r[..6], &[6]).unwrap(),
        0.2,
        9,
        0,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("[4]") && e.to_string().contains("[6]"),
        "{e}"
    );
}

/// An activation with its dropout in one pass equals the activation then `dropout_at`, bit
/// for bit, forward and backward (the backward of the two: dropout's, then the activation's),
/// for every activation, at an offset into a larger tensor and chunked by the binding limit;
/// with p = 0 it is the plain activation.
#[test]
fn activation_with_dropout_equals_the_two_ops() {
    use xlsr::ops::activation::{self, Act, DropoutAt};
    use xlsr::ops::dropout::dropout_at;
    let n = 3000;
    let (pairs, _, _) = on_two_devices(53, n);
    for (xt, dyt) in &pairs {
        for act in [Act::Gelu, Act::GeluTanh, Act::Relu, Act::Silu] {
            let drop = DropoutAt {
                p: 0.3,
                seed: 11,
                first: 700,
            };
            let fused = activation::forward_dropout(act, xt, drop).unwrap();
            let plain = activation::forward(act, xt).unwrap();
            let two = dropout_at(&plain, 0.3, 11, 700).unwrap();
            assert_eq!(fused.to_vec().unwrap(), two.to_vec().unwrap(), "{act:?}");
            let back = activation::backward_dropout(act, xt, dyt, drop).unwrap();
            let dropped = dropout_at(dyt, 0.3, 11, 700).unwrap();
            let two = activation::backward(act, xt, &dropped).unwrap();
            assert_eq!(back.to_vec().unwrap(), two.to_vec().unwrap(), "{act:?}");
            let none = activation::forward_dropout(act, xt, DropoutAt::default()).unwrap();
            assert_eq!(none.to_vec().unwrap(), plain.to_vec().unwrap(), "{act:?}");
            let kept = dropped
                .to_vec()
                .unwrap()
                .iter()
                .filter(|v| **v != 0.0)
                .count();
            assert!((1800..2400).contains(&kept), "{act:?}: {kept} of {n} kept");
        }
    }
}

fn cpu_norm(
    x: &[f64],
    rows: usize,
    cols: usize,
    gamma: Option<&[f64]>,
    beta: Option<&[f64]>,
    chan: impl Fn(usize, usize) -> usize,
    eps: f64,
) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let mean = row.iter().sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
        for c in 0..cols {
            let mut v = (row[c] - mean) / (var + eps).sqrt();
            if let (Some(g), Some(b)) = (gamma, beta) {
                v = v * g[chan(r, c)] + b[chan(r, c)];
            }
            y[r * cols + c] = v;
        }
    }
    y
}

#[test]
fn layer_norm() {
    let mut rng = Rng::new(60);
    for &(rows, cols) in &[(5, 37), (70, 20), (3, 300), (4, 1), (0, 8)] {
        let x = rng.vec(rows * cols);
        let (g, b) = (rng.vec(cols), rng.vec(cols));
        let mut c = Check::new(
            "layer_norm",
            vec![
                (x.clone(), vec![rows, cols]),
                (g, vec![cols]),
                (b, vec![cols]),
            ],
        );
        c.h = 1e-5;
        c.run(
            |v| v[0].layer_norm(Some(&v[1]), Some(&v[2]), 1e-5).unwrap(),
            move |v| cpu_norm(&v[0], rows, cols, Some(&v[1]), Some(&v[2]), |_, c| c, 1e-5),
        );
        Check::new("layer_norm no affine", vec![(x, vec![rows, cols])]).run(
            |v| v[0].layer_norm(None, None, 1e-5).unwrap(),
            move |v| cpu_norm(&v[0], rows, cols, None, None, |_, c| c, 1e-5),
        );
    }
}

/// A check of a norm over the channels of [B, C, T]: random x, gamma and beta from `seed`.
fn channel_affine_check(name: &str, seed: u64, (b, ch, t): (usize, usize, usize)) -> Check<'_> {
    let mut rng = Rng::new(seed);
    let x = rng.vec(b * ch * t);
    let (g, be) = (rng.vec(ch), rng.vec(ch));
    Check::new(
        name,
        vec![(x, vec![b, ch, t]), (g, vec![ch]), (be, vec![ch])],
    )
}

#[test]
fn channel_layer_norm() {
    // LayerNorm over C of [B, C, T]: the reference transposes to [B*T, C] rows.
    let (b, ch, t) = (3, 7, 13);
    // [B, M, N] -> [B, N, M]: [B, C, T] to rows of C and back.
    let swap = |x: &[f64], (b, m, n): (usize, usize, usize)| -> Vec<f64> {
        let mut y = vec![0.0; x.len()];
        for bi in 0..b {
            for i in 0..m {
                for j in 0..n {
                    y[(bi * n + j) * m + i] = x[(bi * m + i) * n + j];
                }
            }
        }
        y
    };
    let mut c = channel_affine_check("channel_norm", 62, (b, ch, t));
    c.h = 1e-5;
    c.run(
        |v| v[0].channel_norm(Some(&v[1]), Some(&v[2]), 1e-5).unwrap(),
        move |v| {
            let y = cpu_norm(
                &swap(&v[0], (b, ch, t)),
                b * t,
                ch,
                Some(&v[1]),
                Some(&v[2]),
                |_, c| c,
                1e-5,
            );
            swap(&y, (b, t, ch))
        },
    );
    // Split by batch element when over the binding limit: same result.
    let (b, ch, t) = (5, 16, 40); // 2.5 KiB per batch element, 1 KiB binding limit
    let x = to_f32(&Rng::new(63).vec(b * ch * t));
    let norm = |g: &xlsr::Gpu| {
        let xt = xlsr::Tensor::from_slice(g, &x, &[b, ch, t]).unwrap();
        let (y, _) =
            xlsr::ops::norm::forward(xlsr::ops::norm::Norm::Channel, &xt, None, None, 1e-5)
                .unwrap();
        y.to_vec().unwrap()
    };
    let small = xlsr::Gpu::new().unwrap();
    small.set_max_binding(3 * 1024);
    assert_eq!(norm(&small), norm(&gpu()));
}

#[test]
fn group_norm_per_channel() {
    let (b, ch, t) = (2, 5, 17);
    channel_affine_check("group_norm", 61, (b, ch, t)).run(
        |v| v[0].group_norm(Some(&v[1]), Some(&v[2]), 1e-5).unwrap(),
        move |v| {
            cpu_norm(
                &v[0],
                b * ch,
                t,
                Some(&v[1]),
                Some(&v[2]),
                |r, _| r % ch,
                1e-5,
            )
        },
    );
}

#[test]
fn conv1d_configs() {
    // Each of the implicit GEMM's two builds (64x64 and 128x128 tiles) forced in turn.
    for tile in [64, 128] {
        let before = xlsr::ops::conv::set_tile(Some(tile));
        conv1d_cases(tile);
        xlsr::ops::conv::set_tile(before);
    }
}

fn conv1d_cases(tile: usize) {
    let mut rng = Rng::new(70);
    // (batch, cin, lin, cout, k, stride, pad, groups, bias): plain, grouped + padded, the
    // feature encoder's first layer, the positional conv's shape (even kernel, groups), one
    // output channel, and a long one.
    let cases = [
        (2, 3, 19, 4, 5, 2, 1, 1, true),
        (2, 4, 11, 6, 3, 1, 2, 2, false),
        (2, 1, 53, 8, 10, 5, 0, 1, true),
        (1, 8, 13, 8, 6, 1, 3, 4, true),
        (3, 2, 3, 1, 3, 1, 0, 1, true),
        // More frames than the bias gradient's workgroup has threads.
        (2, 2, 300, 3, 3, 1, 1, 1, true),
    ];
    for (b, cin, lin, cout, k, stride, pad, groups, bias) in cases {
        let geo = Conv1d {
            stride,
            padding: pad,
            groups,
        };
        let mut inputs = vec![
            (rng.vec(b * cin * lin), vec![b, cin, lin]),
            (
                rng.vec(cout * cin / groups * k),
                vec![cout, cin / groups, k],
            ),
        ];
        if bias {
            inputs.push((rng.vec(cout), vec![cout]));
        }
        Check::new(
            &format!(
                "conv1d {b}x{cin}x{lin} -> {cout} k{k} s{stride} p{pad} g{groups}, tile {tile}"
            ),
            inputs,
        )
        .run(
            |v| v[0].conv1d(&v[1], v.get(2), geo).unwrap(),
            move |v| {
                cpu_conv(
                    &v[0],
                    &v[1],
                    v.get(2).map(|x| x.as_slice()),
                    b,
                    cin,
                    lin,
                    cout,
                    k,
                    geo,
                )
            },
        );
    }
}

/// Held by the tests that switch the tiled GEMM's builds (global settings).
static GEMM_BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The tiled GEMM's v4 build (vec4 loads, taken where every operand row, shift and batch
/// stride is a multiple of 4) multiplies exactly as the scalar build does, bit for bit: every
/// transpose combination, batched and shared B, edge tiles, split-K, f16 inputs, and the
/// weight gradient with its row sums.
#[test]
fn matmul_vec4_loads_equal_scalar_loads() {
    let _one = GEMM_BUILD.lock().unwrap_or_else(|e| e.into_inner());
    tiled_builds_agree("v4 and scalar", xlsr::ops::matmul::set_v4);
}

/// The same for its k16 build (K walked 16 at a time, two fetches of each operand a thread)
/// against the default 8, with vec4 loads and without: K tails of 4 and 12 past a slab.
#[test]
fn matmul_k16_equals_k8() {
    use xlsr::ops::matmul::{set_k16, set_v4};
    let _one = GEMM_BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let g = gpu();
    if g.limits().max_compute_workgroup_storage_size < 32 << 10 {
        eprintln!(
            "{}: under 32 KiB of workgroup memory, no k16 build",
            g.info().name
        );
        return;
    }
    for v4 in [true, false] {
        let before = set_v4(v4);
        tiled_builds_agree(&format!("k16 and k8 (v4 {v4})"), set_k16);
        set_v4(before);
    }
}

/// Runs the tiled GEMM's cases with `set(true)` and `set(false)` and asserts they agree bit
/// for bit.
fn tiled_builds_agree(builds: &str, set: fn(bool) -> bool) {
    use xlsr::ops::matmul::{matmul_tn_row_sums, matmul_with, Algo};
    let g = gpu();
    let mut rng = Rng::new(90);
    let both = |f: &dyn Fn() -> Vec<Vec<f32>>| {
        let before = set(true);
        let on = f();
        set(false);
        let off = f();
        set(before);
        (on, off)
    };
    let halves: &[bool] = if g.has_f16() {
        &[false, true]
    } else {
        &[false]
    };
    for (batch, m, n, k, shared) in [
        (1, 132, 136, 260, true),
        (3, 20, 44, 36, false),
        (2, 4, 8, 1028, true),
    ] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let a_shape = if ta { [batch, k, m] } else { [batch, m, k] };
            let b_shape: Vec<usize> = match (shared, tb) {
                (true, false) => vec![k, n],
                (true, true) => vec![n, k],
                (false, false) => vec![batch, k, n],
                (false, true) => vec![batch, n, k],
            };
            let a = upload(&rng.vec(batch * m * k), &a_shape);
            let b = upload(&rng.vec(k * n * if shared { 1 } else { batch }), &b_shape);
            let bias = upload(&rng.vec(n), &[n]);
            for &half in halves {
                let (a, b) = if half {
                    (
                        xlsr::ops::cast::to_f16(&a).unwrap(),
                        xlsr::ops::cast::to_f16(&b).unwrap(),
                    )
                } else {
                    (a.clone(), b.clone())
                };
                for splits in [None, Some(3)] {
                    let (on, off) = both(&|| {
                        let c = matmul_with(Algo::Tiled, &a, &b, ta, tb, Some(&bias), splits);
                        vec![c.unwrap().to_vec().unwrap()]
                    });
                    let what =
                        format!("{batch}x{m}x{n}x{k} ta {ta} tb {tb} f16 {half} splits {splits:?}");
                    assert!(on == off, "{what}: {builds} builds differ");
                }
            }
        }
    }
    // The weight gradient's pass: C = Aᵀ B with A's row sums, split and not.
    let (a, b) = (
        upload(&rng.vec(300 * 132), &[300, 132]),
        upload(&rng.vec(300 * 68), &[300, 68]),
    );
    for splits in [Some(1), Some(2)] {
        let (on, off) = both(&|| {
            let (c, sums) = matmul_tn_row_sums(&a, &b, splits).unwrap().unwrap();
            vec![c.to_vec().unwrap(), sums.to_vec().unwrap()]
        });
        assert!(
            on == off,
            "row sums, splits {splits:?}: {builds} builds differ"
        );
    }
}

/// The two builds on shapes that cross 128-tiles in every mode (forward M = 136, N = 300;
/// input gradient M = 130, N = 600; weight gradient M = 136, N = 390, its reduction split in
/// two), each slab loop several steps deep: outputs and all three gradients agree to f32
/// rounding (the builds sum in different orders).
#[test]
fn conv1d_tiles_agree_past_one_tile() {
    let (b, cin, lin, cout, k) = (4, 130, 600, 136, 3);
    let geo = Conv1d {
        stride: 2,
        padding: 1,
        groups: 1,
    };
    let mut rng = Rng::new(71);
    let vals = [
        (rng.vec(b * cin * lin), vec![b, cin, lin]),
        (rng.vec(cout * cin * k), vec![cout, cin, k]),
        (rng.vec(cout), vec![cout]),
    ];
    let r = rng.vec(b * cout * geo.out_len(lin, k));
    let run = |tile: usize| -> Vec<Vec<f32>> {
        let before = xlsr::ops::conv::set_tile(Some(tile));
        let tape = xlsr::Tape::new();
        let v: Vec<Var> = vals
            .iter()
            .map(|(x, s)| tape.input(upload(x, s), true))
            .collect();
        let y = v[0].conv1d(&v[1], Some(&v[2]), geo).unwrap();
        let loss = y
            .mul(&Var::constant(upload(&r, y.shape())))
            .unwrap()
            .sum()
            .unwrap();
        let grads = tape.backward(&loss, &[&v[0], &v[1], &v[2]]).unwrap();
        xlsr::ops::conv::set_tile(before);
        let mut out = vec![y.value.to_vec().unwrap()];
        out.extend(grads.into_iter().map(|g| g.unwrap().to_vec().unwrap()));
        out
    };
    let (small, large) = (run(64), run(128));
    for (name, (a, b)) in ["y", "dx", "dw", "db"].iter().zip(small.iter().zip(&large)) {
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        let want: Vec<f64> = a.iter().map(|&x| x as f64).collect();
        assert_close(
            &format!("conv1d 128 vs 64 tiles: {name}"),
            b,
            &want,
            1e-5 * scale,
            0.0,
        );
    }
}

fn cpu_softmax(
    x: &[f64],
    mask: Option<&[f64]>,
    rows: usize,
    cols: usize,
    group: usize,
    log: bool,
) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for r in 0..rows {
        let l: Vec<f64> = (0..cols)
            .map(|c| x[r * cols + c] + mask.map_or(0.0, |m| m[(r / group) * cols + c]))
            .collect();
        let mx = l.iter().cloned().fold(f64::MIN, f64::max);
        let lse = mx + l.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
        for c in 0..cols {
            y[r * cols + c] = if log { l[c] - lse } else { (l[c] - lse).exp() };
        }
    }
    y
}

#[test]
fn softmax_with_mask() {
    let mut rng = Rng::new(80);
    let (b, h, tq, tk) = (2, 3, 4, 7);
    let rows = b * h * tq;
    let x: Vec<f64> = rng.vec(rows * tk).iter().map(|v| 3.0 * v).collect();
    // Second utterance is padded after 5 keys, with a large negative mask value.
    let mask: Vec<f64> = (0..b * tk)
        .map(|i| {
            if i / tk == 1 && i % tk >= 5 {
                -1e4
            } else {
                0.0
            }
        })
        .collect();
    for log in [false, true] {
        let mut c = Check::new(
            "softmax masked",
            vec![(x.clone(), vec![b, h, tq, tk]), (mask.clone(), vec![b, tk])],
        );
        c.diff = vec![true, false];
        c.run(
            |v| {
                if log {
                    v[0].log_softmax(Some(&v[1].value)).unwrap()
                } else {
                    v[0].softmax(Some(&v[1].value)).unwrap()
                }
            },
            move |v| cpu_softmax(&v[0], Some(&v[1]), rows, tk, h * tq, log),
        );
    }
    for log in [false, true] {
        let x = rng.vec(3 * 300);
        Check::new("softmax wide", vec![(x, vec![3, 300])]).run(
            |v| {
                if log {
                    v[0].log_softmax(None).unwrap()
                } else {
                    v[0].softmax(None).unwrap()
                }
            },
            move |v| cpu_softmax(&v[0], None, 3, 300, 1, log),
        );
    }
}

/// The model's mask adds f32::MIN: where it covers a whole row (an utterance of padding only)
/// every logit rounds to f32::MIN and the row comes out uniform, as in torch, not NaN (the
/// max once started above f32::MIN) nor all ones (exp(x - (m + ln T)), with m + ln T rounding
/// back to m); its gradient is finite.
#[test]
fn softmax_of_a_fully_masked_row_is_uniform() {
    let g = gpu();
    let (b, tq, tk) = (2, 3, 7);
    let x: Vec<f64> = Rng::new(81).vec(b * tq * tk);
    let mut mask = vec![0f32; b * tk];
    mask[tk..].fill(f32::MIN);
    let mask = Tensor::from_slice(&g, &mask, &[b, tk]).unwrap();
    for log in [false, true] {
        let tape = Tape::new();
        let v = tape.input(upload(&x, &[b, 1, tq, tk]), true);
        let y = if log {
            v.log_softmax(Some(&mask)).unwrap()
        } else {
            v.softmax(Some(&mask)).unwrap()
        };
        let got = y.value.to_vec().unwrap();
        let uniform = if log {
            -(tk as f64).ln()
        } else {
            1.0 / tk as f64
        };
        assert_close(
            &format!("log {log}: masked rows"),
            &got[tq * tk..],
            &vec![uniform; tq * tk],
            1e-6,
            1e-6,
        );
        let dy = Var::constant(upload(&Rng::new(82).vec(b * tq * tk), &[b, 1, tq, tk]));
        let loss = y.mul(&dy).unwrap().sum().unwrap();
        let dx = tape.backward(&loss, &[&v]).unwrap()[0].take().unwrap();
        let dx = dx.to_vec().unwrap();
        assert!(
            dx.iter().all(|v| v.is_finite()),
            "log {log}: gradient {dx:?}"
        );
    }
}

#[test]
fn reductions() {
    let mut rng = Rng::new(90);
    let x = rng.vec(3 * 5 * 7);
    Check::new("sum", vec![(x.clone(), vec![3, 5, 7])])
        .run(|v| v[0].sum().unwrap(), |v| vec![v[0].iter().sum()]);
    Check::new("mean", vec![(x.clone(), vec![3, 5, 7])]).run(
        |v| v[0].mean().unwrap(),
        |v| vec![v[0].iter().sum::<f64>() / 105.0],
    );
    Check::new("sum_axis", vec![(x.clone(), vec![3, 5, 7])]).run(
        |v| v[0].sum_axis(1, 0.5).unwrap(),
        |v| {
            (0..21)
                .map(|i| {
                    0.5 * (0..5)
                        .map(|j| v[0][(i / 7) * 35 + j * 7 + i % 7])
                        .sum::<f64>()
                })
                .collect()
        },
    );
    // A bias gradient's shape: few columns over many rows takes the two-pass path (partial
    // sums over parts of the axis, the last part short), with its gradient (expand).
    let (outer, len, inner) = (2, 1999, 24);
    assert!(xlsr::ops::reduce::axis_parts(outer * inner, len) > 1);
    let long = rng.vec(outer * len * inner);
    Check::new("sum_axis two-pass", vec![(long, vec![outer, len, inner])]).run(
        |v| v[0].sum_axis(1, 0.25).unwrap(),
        move |v| {
            (0..outer * inner)
                .map(|i| {
                    let (o, r) = (i / inner, i % inner);
                    0.25 * (0..len)
                        .map(|j| v[0][(o * len + j) * inner + r])
                        .sum::<f64>()
                })
                .collect()
        },
    );
    Check::new("l2_norm", vec![(x, vec![105])]).run(
        |v| v[0].l2_norm().unwrap(),
        |v| vec![v[0].iter().map(|a| a * a).sum::<f64>().sqrt()],
    );
    let big = rng.vec(300_001);
    let t = upload(&big, &[300_001]);
    let s = xlsr::ops::reduce::sum_all(&t).unwrap().item().unwrap() as f64;
    let want: f64 = big.iter().map(|&v| v as f32 as f64).sum();
    assert!((s - want).abs() < 1e-2, "sum of 300001: {s} vs {want}");
    let e = Tensor::zeros(&gpu(), &[0, 5]).unwrap();
    assert_eq!(xlsr::ops::reduce::sum_all(&e).unwrap().item().unwrap(), 0.0);
}

/// The global norm over many tensors (seven per `sum_squares` dispatch, so several
/// dispatches, partial batches, one or many workgroups a tensor), also with a 16 KiB binding
/// limit under which the 300,000-element tensor is summed on its own.
#[test]
fn global_norm_over_tensors() {
    let mut rng = Rng::new(91);
    let mut sizes = vec![17, 1, 1000, 3, 300_000, 1025, 4096];
    sizes.extend((0..13).map(|i| 1 + i * 97));
    let parts: Vec<Vec<f64>> = sizes.iter().map(|&n| rng.vec(n)).collect();
    let want = parts
        .iter()
        .flatten()
        .map(|&x| (x as f32 as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let small = xlsr::Gpu::new().unwrap();
    small.set_max_binding(16 * 1024);
    for g in [gpu(), small] {
        let ts: Vec<Tensor> = parts
            .iter()
            .map(|p| Tensor::from_slice(&g, &to_f32(p), &[p.len()]).unwrap())
            .collect();
        let refs: Vec<&Tensor> = ts.iter().collect();
        let got = xlsr::ops::reduce::global_norm(&g, &refs)
            .unwrap()
            .item()
            .unwrap() as f64;
        assert!((got - want).abs() < 1e-6 * want, "{got} vs {want}");
    }
}

/// A linear layer's weight gradient with its bias gradient in the same pass: Aᵀ B as the
/// plain GEMM computes it (bit for bit, split or not) and the row sums of Aᵀ, across tile
/// edges, K tails and forced split-K.
#[test]
fn weight_gradient_carries_the_bias_gradient() {
    use xlsr::ops::matmul::{matmul_tn_row_sums, matmul_tn_row_sums_into, matmul_with, Algo};
    let mut rng = Rng::new(71);
    let g = gpu();
    for (k, m, n) in [(37, 5, 9), (300, 130, 70), (1000, 257, 129), (1, 1, 1)] {
        let (av, bv) = (rng.vec(k * m), rng.vec(k * n));
        let a = Tensor::from_slice(&g, &to_f32(&av), &[k, m]).unwrap();
        let b = Tensor::from_slice(&g, &to_f32(&bv), &[k, n]).unwrap();
        for splits in [None, Some(1), Some(3)] {
            let (c, sums) = matmul_tn_row_sums(&a, &b, splits).unwrap().unwrap();
            let plain = matmul_with(Algo::Tiled, &a, &b, true, false, None, splits).unwrap();
            let what = format!("k {k} m {m} n {n} splits {splits:?}");
            assert_eq!(c.shape(), &[m, n], "{what}");
            assert_eq!(c.to_vec().unwrap(), plain.to_vec().unwrap(), "{what}");
            let want: Vec<f64> = (0..m)
                .map(|j| (0..k).map(|r| av[r * m + j]).sum())
                .collect();
            // f32 sums of up to 1,000 terms of about 0.5: rounding near 1e-5 where they cancel.
            assert_close(&what, &sums.to_vec().unwrap(), &want, 1e-4, 1e-5);
            // Added into what C and the sums hold (gradients into their slots): the same as
            // adding the results afterwards, bit for bit.
            let (c0, s0) = (to_f32(&rng.vec(m * n)), to_f32(&rng.vec(m)));
            let c_into = Tensor::from_slice(&g, &c0, &[m, n]).unwrap();
            let s_into = Tensor::from_slice(&g, &s0, &[m]).unwrap();
            assert!(matmul_tn_row_sums_into(&a, &b, &c_into, &s_into, true, splits).unwrap());
            let add = |x: &[f32], y: Vec<f32>| -> Vec<f32> {
                x.iter().zip(y).map(|(x, y)| x + y).collect()
            };
            assert_eq!(
                c_into.to_vec().unwrap(),
                add(&c0, c.to_vec().unwrap()),
                "{what}"
            );
            assert_eq!(
                s_into.to_vec().unwrap(),
                add(&s0, sums.to_vec().unwrap()),
                "{what}"
            );
        }
    }
}

/// The elements of a [2, 3, 4] tensor `x` in the index box `ranges`, its axes looped in
/// `order`, outermost first: what permuting, transposing or slicing it gives.
fn walk(x: &[f64], ranges: [std::ops::Range<usize>; 3], order: [usize; 3]) -> Vec<f64> {
    let mut out = vec![];
    let [a, b, c] = order;
    for p in ranges[a].clone() {
        for q in ranges[b].clone() {
            for r in ranges[c].clone() {
                let mut at = [0; 3];
                (at[a], at[b], at[c]) = (p, q, r);
                out.push(x[at[0] * 12 + at[1] * 4 + at[2]]);
            }
        }
    }
    out
}

#[test]
fn copies() {
    let mut rng = Rng::new(100);
    let x = rng.vec(2 * 3 * 4);
    Check::new("permute", vec![(x.clone(), vec![2, 3, 4])]).run(
        |v| v[0].permute(&[2, 0, 1]).unwrap(),
        |v| walk(&v[0], [0..2, 0..3, 0..4], [2, 0, 1]),
    );
    Check::new("transpose", vec![(x.clone(), vec![2, 3, 4])]).run(
        |v| v[0].transpose(1, 2).unwrap(),
        |v| walk(&v[0], [0..2, 0..3, 0..4], [0, 2, 1]),
    );
    Check::new("slice", vec![(x.clone(), vec![2, 3, 4])]).run(
        |v| v[0].slice(2, 1, 2).unwrap(),
        |v| walk(&v[0], [0..2, 0..3, 1..3], [0, 1, 2]),
    );
    let y = rng.vec(2 * 2 * 4);
    Check::new("concat", vec![(x, vec![2, 3, 4]), (y, vec![2, 2, 4])]).run(
        |v| Var::concat(&[&v[0], &v[1]], 1).unwrap(),
        |v| {
            let mut o = vec![];
            for i in 0..2 {
                o.extend_from_slice(&v[0][i * 12..(i + 1) * 12]);
                o.extend_from_slice(&v[1][i * 8..(i + 1) * 8]);
            }
            o
        },
    );
    Check::new("reshape", vec![(rng.vec(6), vec![2, 3])]).run(
        |v| v[0].reshape(&[3, 2]).unwrap().scale(2.0, 0.0).unwrap(),
        |v| v[0].iter().map(|x| 2.0 * x).collect(),
    );
}

/// A weight gradient whose contraction (frames) exceeds one binding is split over K, each
/// slice adding into C: same result as in one piece, f32 and f16 inputs, bias gradient too.
#[test]
fn matmul_weight_gradient_splits_k_past_the_binding_limit() {
    let (rows, k, n) = (300, 24, 40);
    let mut rng = Rng::new(71);
    let (a, w, dc) = (
        to_f32(&rng.vec(rows * k)),
        to_f32(&rng.vec(n * k)),
        to_f32(&rng.vec(rows * n)),
    );
    let grads = |g: &xlsr::Gpu, half: bool| {
        let up = |v: &[f32], s: &[usize]| {
            let t = xlsr::Tensor::from_slice(g, v, s).unwrap();
            if half {
                xlsr::ops::cast::to_f16(&t).unwrap()
            } else {
                t
            }
        };
        let dct = xlsr::Tensor::from_slice(g, &dc, &[rows, n]).unwrap();
        let d = xlsr::ops::matmul::matmul_backward(
            &up(&a, &[rows, k]),
            &up(&w, &[n, k]),
            false,
            true,
            true,
            &dct,
        )
        .unwrap();
        [d.input, d.weight, d.bias].map(|t| t.unwrap().to_vec().unwrap())
    };
    let small = xlsr::Gpu::new().unwrap();
    // 4 KiB bindings: 1024 floats, so 300 frames x 40 splits into 25-row slices.
    small.set_max_binding(4096);
    for half in [false, true] {
        if half && !small.has_f16() {
            eprintln!("adapter has no SHADER_F16: f16 chunked matmul case not run");
            continue;
        }
        let (split, whole) = (grads(&small, half), grads(&gpu(), half));
        for (i, (s, w)) in split.iter().zip(&whole).enumerate() {
            let w64: Vec<f64> = w.iter().map(|&x| x as f64).collect();
            assert_close(&format!("grad {i} (f16 {half})"), s, &w64, 1e-5, 1e-5);
        }
    }
}
