//! The engine's promises: chunked dispatch past the binding limit, pipeline caching, buffer
//! pooling, clear errors, and the autograd's bookkeeping.

mod common;
use common::*;
use xlsr::engine::Error as EngineError;
use xlsr::ops::{self, conv::Conv1d, norm::Norm};
use xlsr::{DType, Error, Gpu, Param, Tape, Tensor, Var};

fn on(g: &Gpu, v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(g, &to_f32(v), shape).unwrap()
}

fn same(what: &str, a: &Tensor, b: &Tensor, tol: f64) {
    let want: Vec<f64> = b.to_vec().unwrap().iter().map(|&x| x as f64).collect();
    assert_close(what, &a.to_vec().unwrap(), &want, tol, tol);
}

/// Every chunk-capable op gives the same result with a 64 KiB binding limit as without.
#[test]
fn chunked_dispatch_matches_unchunked() {
    let big = gpu();
    let small = Gpu::new().unwrap();
    small.set_max_binding(64 * 1024);
    assert_eq!(small.max_binding(), 64 * 1024);
    let mut rng = Rng::new(5);
    let (rows, cols) = (300, 129); // 38700 floats = 151 KiB: three chunks, unaligned rows
    let x = rng.vec(rows * cols);
    let y = rng.vec(rows * cols);
    let w = rng.vec(cols * 70);
    let cw = rng.vec(4 * 3 * 5);
    let bias = rng.vec(70);
    let gam = rng.vec(cols);
    let run = |g: &Gpu| -> Vec<Tensor> {
        let (x, y) = (
            on(g, &x, &[3, rows / 3, cols]),
            on(g, &y, &[3, rows / 3, cols]),
        );
        let (w, b, gam) = (
            on(g, &w, &[cols, 70]),
            on(g, &bias, &[70]),
            on(g, &gam, &[cols]),
        );
        let (ln, stats) =
            ops::norm::forward(Norm::Layer, &x, Some(&gam), Some(&gam), 1e-5).unwrap();
        let nd = ops::norm::backward(Norm::Layer, &x, Some(&gam), &stats, &y).unwrap();
        let sm = ops::softmax::forward(&x, None, true).unwrap();
        let conv_w = on(g, &cw, &[4, 3, 5]);
        let cx = x.reshape(&[100, 3, cols]).unwrap();
        let geo = Conv1d {
            stride: 2,
            padding: 1,
            groups: 1,
        };
        let cy = ops::conv::forward(&geo, &cx, &conv_w, None).unwrap();
        let cd = ops::conv::backward(&geo, &cx, &conv_w, false, &cy, true).unwrap();
        let yt = y.reshape(&[3, cols, rows / 3]).unwrap();
        vec![
            ops::elementwise::add(&x, &y).unwrap(),
            ops::elementwise::mul(&x, &gam).unwrap(),
            ops::activation::forward(ops::activation::Act::Gelu, &x).unwrap(),
            ops::dropout::dropout(&x, 0.2, 9).unwrap(),
            ops::matmul::matmul(&x, &w, false, false, Some(&b)).unwrap(),
            ops::matmul::matmul(&x, &yt, false, false, None).unwrap(),
            ln,
            nd.input.unwrap(),
            nd.weight.unwrap(),
            sm,
            cy,
            cd.input.unwrap(),
            cd.weight.unwrap(),
            ops::reduce::sum_all(&x).unwrap(),
            ops::reduce::sum_axis(&x, 2, 1.0).unwrap(),
        ]
    };
    let (a, b) = (run(&small), run(&big));
    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
        same(&format!("output {i}"), a, b, 1e-4);
    }
}

/// A tensor larger than lavapipe's 128 MiB binding limit works end to end: every element of
/// the result is checked (the data does not repeat, so a chunk read at a wrong offset shows),
/// and where the adapter has timestamps, the kernels are seen to run in several chunks.
#[test]
fn tensors_beyond_the_binding_limit() {
    let g = Gpu::new().unwrap();
    let n = (g.max_binding() / 4) as usize + 5_000_000;
    assert!(n * 4 > g.max_binding() as usize);
    // A multiplicative hash of the index: no period shorter than the tensor.
    let data: Vec<f32> = (0..n as u64)
        .map(|i| ((i * 2_654_435_761) % 1_000_003) as f32 * 1e-6 - 0.5)
        .collect();
    let x = Tensor::from_slice(&g, &data, &[n]).unwrap();
    let profiling = g.profile_start().unwrap();
    let y = ops::activation::forward(
        ops::activation::Act::Relu,
        &ops::elementwise::add(&x, &x).unwrap(),
    )
    .unwrap();
    let s = ops::reduce::sum_all(&y).unwrap().item().unwrap() as f64;
    let launches = g.profile_stop().unwrap();
    let want: f64 = data.iter().map(|&v| (2.0 * v as f64).max(0.0)).sum();
    assert!((s - want).abs() < 1e-4 * want, "{s} vs {want}");
    let v = y.to_vec().unwrap();
    assert_eq!(v.len(), n);
    for (i, (&got, &d)) in v.iter().zip(&data).enumerate() {
        assert_eq!(got, (2.0 * d).max(0.0), "element {i}");
    }
    if profiling {
        // add and relu, one call each, each ran in more than one dispatch.
        for kernel in ["binary", "relu_fwd"] {
            let n = launches.iter().find(|k| k.0 == kernel).map_or(0, |k| k.2);
            assert!(
                n >= 2,
                "{kernel}: {n} dispatches, not chunked: {launches:?}"
            );
        }
    } else {
        eprintln!("adapter has no timestamps: the chunked dispatches were not counted");
    }
}

#[test]
fn pipelines_are_compiled_once_and_buffers_reused() {
    let g = Gpu::new().unwrap();
    let x = Tensor::from_slice(&g, &[1.0; 1000], &[1000]).unwrap();
    let _ = ops::elementwise::add(&x, &x).unwrap();
    g.sync().unwrap();
    let compiled = g.pipeline_count();
    let live = g.live_bytes();
    for _ in 0..50 {
        let y = ops::elementwise::add(&x, &x).unwrap();
        drop(y);
    }
    g.sync().unwrap();
    assert_eq!(
        g.pipeline_count(),
        compiled,
        "no new pipelines for repeated ops"
    );
    assert_eq!(g.live_bytes(), live, "dropped tensors return their buffers");
    let peak = g.peak_bytes();
    assert!(
        peak <= live + 8192 + 4096,
        "pool reuses buffers: peak {peak} live {live}"
    );
}

#[test]
fn bad_input_gives_errors_naming_op_and_shapes() {
    let g = gpu();
    let a = Tensor::zeros(&g, &[3, 4]).unwrap();
    let b = Tensor::zeros(&g, &[5, 6]).unwrap();
    let e = ops::matmul::matmul(&a, &b, false, false, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("matmul") && e.contains("[3, 4]") && e.contains("[5, 6]"),
        "{e}"
    );
    let e = ops::elementwise::add(&a, &b).unwrap_err().to_string();
    assert!(
        e.contains("add") && e.contains("[3, 4]") && e.contains("[5, 6]"),
        "{e}"
    );
    let h = Tensor::uninit(&g, &[3, 4], DType::F16).unwrap();
    assert!(matches!(
        ops::elementwise::add(&a, &h),
        Err(EngineError::DType { op: "add", .. })
    ));
    let w = Tensor::zeros(&g, &[2, 3, 9]).unwrap();
    let x = Tensor::zeros(&g, &[1, 3, 5]).unwrap();
    let e = ops::conv::forward(
        &Conv1d {
            stride: 1,
            padding: 0,
            groups: 1,
        },
        &x,
        &w,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("conv1d") && e.contains("shorter than kernel"),
        "{e}"
    );
    assert!(matches!(
        Tensor::uninit(&g, &[1 << 40], DType::F32),
        Err(EngineError::Limit { .. })
    ));
    let small = Gpu::new().unwrap();
    small.set_max_binding(1024);
    let wide = Tensor::zeros(&small, &[2, 4096]).unwrap();
    let e = ops::norm::forward(Norm::Layer, &wide, None, None, 1e-5).unwrap_err();
    assert!(
        matches!(
            e,
            EngineError::Limit {
                op: "layer_norm",
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        Tensor::from_slice(&g, &[1.0; 5], &[2, 3]),
        Err(EngineError::Shape { .. })
    ));
}

#[test]
fn autograd_accumulates_freezes_and_no_grad() {
    let g = gpu();
    let w = Param::new("w", Tensor::from_slice(&g, &[1.0, 2.0, 3.0], &[3]).unwrap());
    let frozen = Param::new("f", Tensor::from_slice(&g, &[1.0, 1.0, 1.0], &[3]).unwrap());
    frozen.set_frozen(true);
    let x = Tensor::from_slice(&g, &[0.5, -1.0, 2.0], &[3]).unwrap();
    for _ in 0..2 {
        let tape = Tape::new();
        let (wv, fv) = (tape.param(&w), tape.param(&frozen));
        let loss = Var::constant(x.clone())
            .mul(&wv)
            .unwrap()
            .mul(&fv)
            .unwrap()
            .sum()
            .unwrap();
        tape.backward(&loss, &[]).unwrap();
    }
    // d/dw sum(x * w * f) = x * f, accumulated over two passes.
    assert_eq!(w.grad().unwrap().to_vec().unwrap(), vec![1.0, -2.0, 4.0]);
    assert!(frozen.grad().is_none());
    w.zero_grad().unwrap();
    assert!(w.grad().is_none());
    let tape = Tape::new();
    let out = tape.no_grad(|| tape.param(&w).mul(&Var::constant(x.clone())).unwrap());
    assert!(!out.requires_grad());
    let tape = Tape::new();
    let v = tape.param(&w).scale(2.0, 0.0).unwrap();
    assert!(matches!(tape.backward(&v, &[]), Err(Error::Autograd(_))));
}

/// wav2vec2's first conv on five 5-second clips: its 164 MB output exceeds lavapipe's 128 MiB
/// binding limit, so the batch is split at unaligned offsets; sampled outputs match the CPU.
#[test]
fn feature_encoder_conv_beyond_the_binding_limit() {
    let g = gpu();
    let (b, len, ch, k, stride) = (5, 80_000, 512, 10, 5);
    let mut rng = Rng::new(8);
    let x = rng.vec(b * len);
    let w = rng.vec(ch * k);
    let geo = Conv1d {
        stride,
        padding: 0,
        groups: 1,
    };
    let lout = geo.out_len(len, k);
    let y = ops::conv::forward(
        &geo,
        &on(&g, &x, &[b, 1, len]),
        &on(&g, &w, &[ch, 1, k]),
        None,
    )
    .unwrap();
    assert!(y.bytes() > 128 << 20);
    let v = y.to_vec().unwrap();
    for idx in (0..v.len()).step_by(7919) {
        let (bi, o, t) = (idx / (ch * lout), (idx / lout) % ch, idx % lout);
        let want: f64 = (0..k)
            .map(|j| w[o * k + j] as f32 as f64 * x[bi * len + t * stride + j] as f32 as f64)
            .sum();
        assert!(
            (v[idx] as f64 - want).abs() < 1e-5,
            "y[{bi},{o},{t}] = {} vs {want}",
            v[idx]
        );
    }
}

/// One clip too long for a binding: conv1d (stride, padding, groups, bias; forward, input,
/// weight and bias gradients) and the channel LayerNorm go by time windows, copies bind only
/// the span they touch, and the results equal the unlimited device's. 4 KiB bindings; one
/// clip of x is 6 x 700 floats (16 KiB).
#[test]
fn clips_past_the_binding_limit_go_by_time_windows() {
    let small = Gpu::new().unwrap();
    small.set_max_binding(4096);
    let mut rng = Rng::new(12);
    let (b, cin, len, cout, k) = (2, 6, 700, 4, 5);
    let x = rng.vec(b * cin * len);
    let w = rng.vec(cout * (cin / 2) * k);
    let bias = rng.vec(cout);
    let gam = rng.vec(cin);
    let geo = Conv1d {
        stride: 2,
        padding: 3,
        groups: 2,
    };
    let lout = geo.out_len(len, k);
    let dy = rng.vec(b * cout * lout);
    let dn = rng.vec(b * cin * len);
    let run = |g: &Gpu| -> Vec<Vec<f32>> {
        let xt = on(g, &x, &[b, cin, len]);
        let wt = on(g, &w, &[cout, cin / 2, k]);
        let y = ops::conv::forward(&geo, &xt, &wt, Some(&on(g, &bias, &[cout]))).unwrap();
        let cd =
            ops::conv::backward(&geo, &xt, &wt, true, &on(g, &dy, &[b, cout, lout]), true).unwrap();
        let gt = on(g, &gam, &[cin]);
        let (n, stats) =
            ops::norm::forward(Norm::Channel, &xt, Some(&gt), Some(&gt), 1e-5).unwrap();
        let nd = ops::norm::backward(
            Norm::Channel,
            &xt,
            Some(&gt),
            &stats,
            &on(g, &dn, &[b, cin, len]),
        )
        .unwrap();
        let t = ops::copy::transpose(&xt, 1, 2).unwrap();
        [
            y,
            cd.input.unwrap(),
            cd.weight.unwrap(),
            cd.bias.unwrap(),
            n,
            nd.input.unwrap(),
            nd.weight.unwrap(),
            nd.bias.unwrap(),
            t,
        ]
        .map(|t| t.to_vec().unwrap())
        .to_vec()
    };
    let names = [
        "y",
        "dx",
        "dw",
        "db",
        "norm",
        "norm dx",
        "dgamma",
        "dbeta",
        "transpose",
    ];
    for ((name, s), w) in names.iter().zip(run(&small)).zip(run(&gpu())) {
        let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        assert_close(name, &s, &w64, 1e-5, 1e-5);
    }
}

/// Past the memory budget an allocation fails with the bytes asked and in use and what to
/// lower, instead of a driver crash; pooled buffers are given back first.
#[test]
fn out_of_memory_is_a_clear_error() {
    let g = Gpu::new().unwrap();
    let a = Tensor::zeros(&g, &[1 << 20]).unwrap(); // 4 MiB
    drop(a); // pooled
    g.set_memory_limit(6 << 20);
    // The pooled 4 MiB buffer is freed to make room for a different size.
    let b = Tensor::zeros(&g, &[(1 << 20) + 5000]).unwrap();
    let e = Tensor::zeros(&g, &[1 << 20]).unwrap_err();
    assert!(matches!(e, EngineError::OutOfMemory { .. }), "{e}");
    // The library's error adds what to lower; the engine knows no options.
    let e = Error::from(e).to_string();
    assert!(
        e.contains("out of GPU memory") && e.contains("--batch-size"),
        "{e}"
    );
    assert!(e.contains(&format!("{}", 4u64 << 20)), "{e}");
    drop(b);
    Tensor::zeros(&g, &[1 << 20]).unwrap();
}

/// `xlsr bench` refuses what it would ignore or could not run, by flag, before building
/// anything: a step flag without `--batch` (the whole suite ran instead), sizes that asked the
/// host for 640 GB (an abort) or built 5,000 layers (hours), zero steps, a filter that matches
/// no benchmark.
#[test]
fn bench_flags_are_checked() {
    for (args, want) in [
        (&["--steps", "0"][..], "--steps 0"),
        (&["--allreduce", "NaN"], "--allreduce NaN"),
        (&["--allreduce", "1e12"], "at most 65536"),
        (&["--seconds", "1", "--layers", "1"], "give --batch N too"),
        (
            &["--count-only"],
            "--count-only is a flag of the training-step",
        ),
        (&["--batch", "1", "--seconds", "inf"], "--seconds inf"),
        (
            &["--batch", "1", "--seconds", "1e7"],
            "at most 3600 s of audio",
        ),
        (
            &["--batch", "100000000", "--seconds", "1"],
            "at most 3600 s",
        ),
        (&["--batch", "0"], "--batch 0"),
        (&["--batch", "1", "--seconds", "0.02"], "--seconds 0.02"),
        (
            &["--batch", "1", "--layers", "5000"],
            "--layers 5000: expected 1 to 96",
        ),
        (
            &["--quick", "--filter", "nosuchname"],
            "no benchmark's name contains it",
        ),
    ] {
        let mut argv: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"bench"];
        argv.extend(args.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
        let e = common::xlsr_err(&argv);
        assert!(e.contains(want), "{args:?}: {e}");
        assert_eq!(e.matches("xlsr:").count(), 1, "{e}");
    }
}
