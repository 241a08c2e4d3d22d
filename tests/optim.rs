//! AdamW, gradient clipping and the learning-rate schedule against PyTorch (fixtures written by
//! tools/make_train_reference.py): five steps of torch.optim.AdamW with weight decay 0.01 on the
//! parameters HF's Trainer decays, clip_grad_norm_(1.0) and get_linear_schedule_with_warmup's
//! learning rates, one parameter without gradient on two steps (LayerDrop). Tolerance: every
//! parameter, moment and grad norm within 1e-6 relative (+ 1e-7 absolute for values near 0).

mod common;
use common::*;
use safetensors::{Dtype, SafeTensors};
use std::rc::Rc;
use xlsr::optim::{decays, AdamW, AdamWConfig};
use xlsr::schedule::linear_warmup;
use xlsr::{Param, Tape, Tensor, Var};

const NAMES: [&str; 5] = [
    "lm_head.weight",
    "lm_head.bias",
    "wav2vec2.encoder.layer_norm.weight",
    "wav2vec2.masked_spec_embed",
    "wav2vec2.encoder.layers.1.feed_forward.output_dense.weight",
];
const STEPS: usize = 5;
const MAX_NORM: f32 = 1.0;
const ATOL: f64 = 1e-7;
const RTOL: f64 = 1e-6;

struct Fixture(Vec<u8>);

impl Fixture {
    fn load() -> Fixture {
        Fixture(
            std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/adamw.safetensors"
            ))
            .unwrap(),
        )
    }
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.0).unwrap()
    }
    fn get(&self, name: &str) -> Option<(Vec<f32>, Vec<usize>)> {
        let st = self.st();
        let t = st.tensor(name).ok()?;
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        Some((bytemuck::pod_collect_to_vec(t.data()), t.shape().to_vec()))
    }
    fn f32s(&self, name: &str) -> Vec<f32> {
        self.get(name)
            .unwrap_or_else(|| panic!("fixture has no {name}"))
            .0
    }
    fn lrs(&self) -> Vec<f64> {
        let st = self.st();
        let t = st.tensor("lr").unwrap();
        assert_eq!(t.dtype(), Dtype::F64);
        bytemuck::pod_collect_to_vec(t.data())
    }
    /// The parameters at their initial values.
    fn params(&self) -> Vec<Rc<Param>> {
        NAMES
            .iter()
            .map(|n| {
                let (v, s) = self.get(&format!("init.{n}")).unwrap();
                Param::new(*n, Tensor::from_slice(&gpu(), &v, &s).unwrap())
            })
            .collect()
    }
    /// Sets each parameter's gradient to step `k`'s (none where the fixture has none), through
    /// the tape: d/dp sum(p * G) = G exactly.
    fn set_grads(&self, params: &[Rc<Param>], k: usize) {
        let tape = Tape::new();
        let mut loss: Option<Var> = None;
        for p in params {
            p.zero_grad().unwrap();
            let Some((g, s)) = self.get(&format!("grad.{k}.{}", p.name)) else {
                continue;
            };
            let g = Var::constant(Tensor::from_slice(&gpu(), &g, &s).unwrap());
            let term = tape.param(p).mul(&g).unwrap().sum().unwrap();
            loss = Some(match loss {
                Some(l) => l.add(&term).unwrap(),
                None => term,
            });
        }
        tape.backward(&loss.unwrap(), &[]).unwrap();
    }
}

fn config() -> AdamWConfig {
    AdamWConfig {
        weight_decay: 0.01,
        ..AdamWConfig::default()
    }
}

/// Largest |got - want| / (ATOL / RTOL + |want|), i.e. the error in units of the relative
/// tolerance with an absolute floor; <= RTOL passes.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            let (g, w) = (g as f64, w as f64);
            if !g.is_finite() {
                return f64::INFINITY;
            }
            (g - w).abs() / (ATOL / RTOL + w.abs())
        })
        .fold(0.0, f64::max)
}

fn check(what: &str, got: &[f32], want: &[f32]) -> f64 {
    let e = rel_err(got, want);
    assert!(e <= RTOL, "{what}: relative error {e:.3e} > {RTOL:e}");
    e
}

/// Runs fixture steps `range` on `opt`, checking parameters after each; returns the worst error.
/// Even steps go through `clip_and_step`, odd ones through `grad_norm` + `step`.
fn run_steps(
    fx: &Fixture,
    opt: &mut AdamW,
    params: &[Rc<Param>],
    range: std::ops::Range<usize>,
) -> f64 {
    let lrs = fx.lrs();
    let norms = fx.f32s("grad_norm");
    let mut worst: f64 = 0.0;
    for k in range {
        fx.set_grads(params, k);
        let lr = linear_warmup(k as u64, 2, 6, 0.05);
        assert_eq!(lr, lrs[k] as f32, "schedule at step {k}");
        let norm = if k % 2 == 0 {
            let out = opt.clip_and_step(lr, MAX_NORM).unwrap();
            assert!(!out.skipped);
            out.grad_norm
        } else {
            let n = opt.grad_norm().unwrap().unwrap();
            opt.step(lr, Some(&n), MAX_NORM).unwrap();
            n.item().unwrap()
        };
        worst = worst.max(check(&format!("grad norm {k}"), &[norm], &[norms[k]]));
        for p in params {
            let want = fx.f32s(&format!("param.{k}.{}", p.name));
            let got = p.value().to_vec().unwrap();
            worst = worst.max(check(&format!("step {k} {}", p.name), &got, &want));
        }
    }
    worst
}

#[test]
fn adamw_with_clipping_and_schedule_matches_torch() {
    let fx = Fixture::load();
    let mut params = fx.params();
    // A frozen parameter on the list must come through untouched.
    let frozen = Param::new(
        "wav2vec2.feature_extractor.conv_layers.0.conv.weight",
        Tensor::from_slice(&gpu(), &[0.5, -0.25, 2.0], &[3]).unwrap(),
    );
    frozen.set_frozen(true);
    params.push(frozen.clone());
    let mut opt = AdamW::new(&params, config()).unwrap();
    let worst = run_steps(&fx, &mut opt, &params[..NAMES.len()], 0..STEPS);
    assert_eq!(opt.step, STEPS as u64);
    assert_eq!(frozen.value().to_vec().unwrap(), vec![0.5, -0.25, 2.0]);

    let state = opt.state_tensors().unwrap();
    let get = |k: &str| {
        state
            .iter()
            .find(|(n, _, _)| n == k)
            .unwrap_or_else(|| panic!("state has no {k}"))
            .clone()
    };
    let mut worst_state: f64 = 0.0;
    for n in NAMES {
        for key in ["exp_avg", "exp_avg_sq"] {
            let (_, shape, got) = get(&format!("{n}.{key}"));
            let (want, wshape) = fx.get(&format!("{key}.{n}")).unwrap();
            assert_eq!(shape, wshape);
            worst_state = worst_state.max(check(&format!("{key} {n}"), &got, &want));
        }
        // Per-parameter step counts, as torch keeps them (the LayerDrop'd one lags by 2).
        assert_eq!(
            get(&format!("{n}.step")).2,
            fx.f32s(&format!("step.{n}")),
            "{n}"
        );
    }
    assert_eq!(get("step").2, vec![STEPS as f32]);
    assert!(!state.iter().any(|(n, _, _)| n.contains("conv_layers")));
    println!("worst relative error: parameters and norms {worst:.2e}, moments {worst_state:.2e}");
}

/// Parameters from the fixture, with an optimiser that packs them into flat buffers or (when
/// they are frozen as it is made) updates each on its own.
fn packed_or_own(fx: &Fixture, packed: bool) -> (Vec<Rc<Param>>, AdamW) {
    let params = fx.params();
    for p in &params {
        p.set_frozen(!packed);
    }
    let opt = AdamW::new(&params, config()).unwrap();
    for p in &params {
        p.set_frozen(false);
    }
    assert_eq!(params[0].has_grad_home(), packed);
    assert_eq!(params[0].value().same_storage(&params[4].value()), packed);
    (params, opt)
}

/// Every parameter and moment of two runs, side by side.
fn values_and_moments(params: &[Rc<Param>], opt: &AdamW) -> Vec<(String, Vec<f32>)> {
    let mut out: Vec<(String, Vec<f32>)> = params
        .iter()
        .map(|p| (p.name.clone(), p.value().to_vec().unwrap()))
        .collect();
    out.extend(
        opt.state_tensors()
            .unwrap()
            .into_iter()
            .map(|(n, _, v)| (n, v)),
    );
    out
}

/// The packed update (parameters, gradients and moments in flat buffers, one dispatch for
/// all) equals the per-parameter one, over the fixture's five steps with its LayerDrop'd
/// parameter: bit for bit without clipping. With clipping the global norm is summed in
/// another order: the norms agree within two f32 ulps (2.5e-7), and through the clip factor
/// (squared in the second moment) every tensor within 5e-7 of its largest magnitude.
#[test]
fn packed_update_equals_the_per_tensor_one() {
    let fx = Fixture::load();
    for max_norm in [0.0, MAX_NORM] {
        let (packed, mut opt_packed) = packed_or_own(&fx, true);
        let (own, mut opt_own) = packed_or_own(&fx, false);
        for k in 0..STEPS {
            let lr = linear_warmup(k as u64, 2, 6, 0.05);
            fx.set_grads(&packed, k);
            let a = opt_packed.clip_and_step(lr, max_norm).unwrap();
            fx.set_grads(&own, k);
            let b = opt_own.clip_and_step(lr, max_norm).unwrap();
            assert!(
                (a.grad_norm - b.grad_norm).abs() <= 2.5e-7 * b.grad_norm,
                "{a:?} {b:?}"
            );
        }
        let mut worst: f64 = 0.0;
        let a = values_and_moments(&packed, &opt_packed);
        let b = values_and_moments(&own, &opt_own);
        assert_eq!(a.len(), b.len(), "tensors");
        for ((name, a), (nb, b)) in a.iter().zip(&b) {
            assert_eq!(name, nb);
            assert_eq!(a.len(), b.len(), "{name}");
            if max_norm == 0.0 {
                assert_eq!(a, b, "{name}: the packed update differs without clipping");
                continue;
            }
            let scale = b.iter().fold(0f64, |m, &y| m.max((y as f64).abs()));
            let d = max_abs_err(a, b) / scale.max(1e-30);
            assert!(d <= 5e-7, "{name}: differs by {d:.2e} of its scale");
            worst = worst.max(d);
        }
        println!("max_norm {max_norm}: packed vs per-parameter, worst {worst:.2e} of the scale");
    }
}

#[test]
fn saved_state_resumes_exactly() {
    let fx = Fixture::load();
    let params = fx.params();
    let mut opt = AdamW::new(&params, config()).unwrap();
    run_steps(&fx, &mut opt, &params, 0..3);
    let saved = opt.state_tensors().unwrap();

    // A fresh model and optimiser from the saved values, as --resume builds them.
    let resumed: Vec<Rc<Param>> = params
        .iter()
        .map(|p| {
            let v = p.value();
            Param::new(
                p.name.clone(),
                Tensor::from_slice(&gpu(), &v.to_vec().unwrap(), v.shape()).unwrap(),
            )
        })
        .collect();
    let mut opt2 = AdamW::new(&resumed, config()).unwrap();
    opt2.load_state(&saved).unwrap();
    assert_eq!(opt2.step, 3);
    run_steps(&fx, &mut opt, &params, 3..STEPS);
    run_steps(&fx, &mut opt2, &resumed, 3..STEPS);
    for (a, b) in params.iter().zip(&resumed) {
        assert_eq!(
            a.value().to_vec().unwrap(),
            b.value().to_vec().unwrap(),
            "{}: resumed run differs from the uninterrupted one",
            a.name
        );
    }
}

#[test]
fn bad_saved_state_is_rejected_and_leaves_the_optimiser_alone() {
    let fx = Fixture::load();
    let params = fx.params();
    let mut opt = AdamW::new(&params, config()).unwrap();
    run_steps(&fx, &mut opt, &params, 0..2);
    let good = opt.state_tensors().unwrap();

    let mut wrong_shape = good.clone();
    let i = wrong_shape
        .iter()
        .position(|(n, _, _)| n == "lm_head.bias.exp_avg")
        .unwrap();
    wrong_shape[i].1 = vec![1, 5];
    let mut unknown = good.clone();
    unknown.push(("lm_head.extra.exp_avg".into(), vec![1], vec![0.0]));
    let mut partial = good.clone();
    partial.retain(|(n, _, _)| n != "lm_head.weight.exp_avg_sq");
    let mut bad_step = good.clone();
    let i = bad_step
        .iter()
        .position(|(n, _, _)| n == "lm_head.bias.step")
        .unwrap();
    bad_step[i].2 = vec![1.5];
    for (what, state) in [
        ("wrong shape", wrong_shape),
        ("unknown name", unknown),
        ("partial", partial),
        ("fractional step", bad_step),
    ] {
        let err = opt.load_state(&state).expect_err(what);
        assert!(
            err.to_string().starts_with("training state:"),
            "{what}: {err}"
        );
    }
    // Nothing was half-loaded: the run goes on exactly as if nothing happened.
    assert_eq!(opt.state_tensors().unwrap(), good);
    run_steps(&fx, &mut opt, &params, 2..STEPS);
}

#[test]
fn non_finite_gradients_skip_the_step() {
    let fx = Fixture::load();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let params = fx.params();
        let mut opt = AdamW::new(&params, config()).unwrap();
        let before: Vec<Vec<f32>> = params.iter().map(|p| p.value().to_vec().unwrap()).collect();
        // Step 2's gradients (lr > 0) with one poisoned element.
        fx.set_grads(&params, 2);
        let g = params[1].grad().unwrap();
        let mut v = g.to_vec().unwrap();
        v[3] = bad;
        params[1].zero_grad().unwrap();
        let tape = Tape::new();
        let c = Var::constant(Tensor::from_slice(&gpu(), &v, g.shape()).unwrap());
        let loss = tape.param(&params[1]).mul(&c).unwrap().sum().unwrap();
        tape.backward(&loss, &[]).unwrap();
        assert!(!params[1].grad().unwrap().to_vec().unwrap()[3].is_finite());

        let out = opt.clip_and_step(0.05, MAX_NORM).unwrap();
        assert!(out.skipped, "{bad}: step not skipped");
        assert!(!out.grad_norm.is_finite());
        assert_eq!(opt.step, 0);
        for (p, b) in params.iter().zip(&before) {
            assert_eq!(&p.value().to_vec().unwrap(), b, "{bad}: {} changed", p.name);
        }
        assert_eq!(
            opt.state_tensors().unwrap().len(),
            1,
            "{bad}: moments created"
        );
        // The skipped step left no trace: the run continues exactly like the reference.
        run_steps(&fx, &mut opt, &params, 0..3);
    }
}

#[test]
fn max_norm_zero_turns_clipping_off() {
    let fx = Fixture::load();
    // Step 0's norm is 46.8, so clipping would change the update; lr 0.05 so there is one.
    let run = |f: &dyn Fn(&mut AdamW)| -> Vec<Vec<f32>> {
        let params = fx.params();
        let mut opt = AdamW::new(&params, config()).unwrap();
        fx.set_grads(&params, 0);
        f(&mut opt);
        assert_eq!(opt.step, 1);
        params.iter().map(|p| p.value().to_vec().unwrap()).collect()
    };
    let unclipped = run(&|o| o.step(0.05, None, 0.0).unwrap());
    let off = run(&|o| {
        let out = o.clip_and_step(0.05, 0.0).unwrap();
        assert!((out.grad_norm - fx.f32s("grad_norm")[0]).abs() < 1e-4);
    });
    let clipped = run(&|o| {
        o.clip_and_step(0.05, 1.0).unwrap();
    });
    assert_eq!(off, unclipped);
    assert_ne!(off, clipped);
}

fn train_json() -> serde_json::Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/train.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn weight_decay_follows_trainer_get_decay_parameter_names() {
    let j = train_json();
    let mut n = 0;
    for (model, rows) in j["decay"].as_object().unwrap() {
        for row in rows.as_array().unwrap() {
            let name = row[0].as_str().unwrap();
            let want = row[1].as_bool().unwrap();
            assert_eq!(decays(name), want, "{model}: {name}");
            n += 1;
        }
    }
    assert!(n > 80, "{n} names");
    for (name, want) in [
        ("model.norm.weight", false),
        ("x.rmsnorm.weight", false),
        ("x.LayerNorm.weight", false),
        ("x.normal.weight", true),
        ("x.norm_out.weight", true),
    ] {
        assert_eq!(decays(name), want, "{name}");
    }
}

#[test]
fn schedule_matches_get_linear_schedule_with_warmup() {
    let j = train_json();
    let mut n = 0;
    for case in j["schedule"].as_array().unwrap() {
        let warmup = case["warmup"].as_u64().unwrap();
        let total = case["total"].as_u64().unwrap();
        let base = case["base_lr"].as_f64().unwrap() as f32;
        let steps = case["steps"].as_array().unwrap();
        let lrs = case["lrs"].as_array().unwrap();
        for (s, lr) in steps.iter().zip(lrs) {
            let (s, want) = (s.as_u64().unwrap(), lr.as_f64().unwrap());
            let got = linear_warmup(s, warmup, total, base) as f64;
            assert!(
                (got - want).abs() <= 1e-7 * want.abs(),
                "warmup {warmup} total {total} step {s}: {got} vs {want}"
            );
            n += 1;
        }
    }
    assert!(n > 50, "{n} values");
}

/// A pre-LN residual block (x + W2·gelu(W1·LN(x) + b1) + b2, then LayerNorm), its gradients
/// accumulated over two micro-batches, once into plain gradients and once into the
/// optimiser's flat slots, where the weight-gradient GEMM, the LayerNorm parameter sums and
/// LayerNorm's dx (with the skip path's gradient) add in their own passes instead of
/// separate additions: the same numbers bit for bit, with no `accumulate` pass and fewer
/// additions.
#[test]
fn gradients_added_in_place_equal_separate_additions() {
    // A device of its own: its launch counts are this test's alone.
    let g = xlsr::Gpu::new().unwrap();
    let upload = |v: &[f64], s: &[usize]| Tensor::from_slice(&g, &to_f32(v), s).unwrap();
    let mut rng = Rng::new(5);
    let (rows, h, f) = (70, 96, 160);
    let weights: Vec<(&str, Vec<usize>)> = vec![
        ("ln.weight", vec![h]),
        ("ln.bias", vec![h]),
        ("fc1.weight", vec![f, h]),
        ("fc1.bias", vec![f]),
        ("fc2.weight", vec![h, f]),
        ("fc2.bias", vec![h]),
        ("final_ln.weight", vec![h]),
        ("final_ln.bias", vec![h]),
    ];
    let values: Vec<Vec<f64>> = weights
        .iter()
        .map(|(_, s)| rng.vec(s.iter().product()))
        .collect();
    let inputs: Vec<Vec<f64>> = (0..2).map(|_| rng.vec(2 * rows * h)).collect();
    let make = || -> Vec<Rc<Param>> {
        weights
            .iter()
            .zip(&values)
            .map(|((n, s), v)| Param::new(*n, upload(v, s)))
            .collect()
    };
    let launches = |name: &str| {
        let n = g
            .launches()
            .iter()
            .find(|(k, _)| *k == name)
            .map_or(0, |l| l.1);
        g.reset_counters();
        n
    };
    let run = |params: &[Rc<Param>]| -> Vec<Vec<f32>> {
        for x in &inputs {
            let tape = Tape::new();
            let p: Vec<Var> = params.iter().map(|p| tape.param(p)).collect();
            let x = tape.input(upload(x, &[2, rows, h]), true);
            let y = x
                .layer_norm(Some(&p[0]), Some(&p[1]), 1e-5)
                .unwrap()
                .matmul(&p[2], false, true, Some(&p[3]))
                .unwrap()
                .gelu()
                .unwrap()
                .matmul(&p[4], false, true, Some(&p[5]))
                .unwrap()
                .add(&x)
                .unwrap()
                .layer_norm(Some(&p[6]), Some(&p[7]), 1e-5)
                .unwrap();
            let loss = y.mul(&y).unwrap().sum().unwrap();
            tape.backward(&loss, &[&x]).unwrap();
        }
        params
            .iter()
            .map(|p| p.grad().expect("a gradient").to_vec().unwrap())
            .collect()
    };
    g.reset_counters();
    let plain = run(&make());
    let plain_adds = launches("binary");
    let homed = make();
    let _opt = AdamW::new(&homed, config()).unwrap();
    assert!(homed.iter().all(|p| p.has_grad_home()));
    g.reset_counters();
    let in_place = run(&homed);
    assert_eq!(
        launches("accumulate"),
        0,
        "every gradient went into its slot in place"
    );
    let in_place_adds = launches("binary");
    g.reset_counters();
    // The skip path's gradient of x joins LayerNorm's dx in its pass, once per micro-batch.
    assert!(
        in_place_adds + 2 <= plain_adds,
        "{in_place_adds} vs {plain_adds} additions"
    );
    for ((name, _), (a, b)) in weights.iter().zip(plain.iter().zip(&in_place)) {
        assert_eq!(a, b, "{name}");
    }
}
