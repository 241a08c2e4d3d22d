//! CTC loss and gradient against the CPU f64 log-space reference (`tests/common/ctc.rs`) and
//! central finite differences of it: repeats, empty targets, barely feasible and impossible targets, both reductions, with
//! and without zero_infinity, 1500-frame inputs, and bad input.
//! Tolerances: loss |err| <= 1e-4 + 1e-4 |ref|, gradient |err| <= 2e-4 + 2e-3 |ref|.

mod common;
use common::*;
use xlsr::data::Targets;
use xlsr::ops::ctc::{ctc_loss, CtcOptions, Reduction};

fn opts(blank: usize, reduction: Reduction, zero_infinity: bool) -> CtcOptions {
    CtcOptions {
        blank,
        reduction,
        zero_infinity,
    }
}

/// -log p(target | logits[..t_len]) from the CPU reference.
fn cpu_nll(logits: &[f64], t_len: usize, v: usize, target: &[usize], blank: usize) -> f64 {
    ctc_reference(logits, t_len, v, target, blank).0
}

struct Case {
    name: &'static str,
    t: usize,
    v: usize,
    targets: Vec<Vec<usize>>,
    input_lengths: Vec<usize>,
    blank: usize,
}

fn run(case: &Case, reduction: Reduction, zero_inf: bool, seed: u64) {
    let b = case.targets.len();
    let rows: Vec<Vec<u32>> = case
        .targets
        .iter()
        .map(|r| r.iter().map(|&c| c as u32).collect())
        .collect();
    let padded = Targets::from_rows(&rows);
    let il = case.input_lengths.clone();
    let (t, v, blank) = (case.t, case.v, case.blank);
    let targets = case.targets.clone();
    let lens = case.input_lengths.clone();
    let cpu = move |x: &[Vec<f64>]| -> Vec<f64> {
        let nll: Vec<f64> = (0..b)
            .map(|i| {
                let n = cpu_nll(&x[0][i * t * v..], lens[i], v, &targets[i], blank);
                if zero_inf && n.is_infinite() {
                    0.0
                } else {
                    n
                }
            })
            .collect();
        match reduction {
            Reduction::None => nll,
            Reduction::Sum => vec![nll.iter().sum()],
            Reduction::Mean => vec![
                nll.iter()
                    .zip(&targets)
                    .map(|(n, tg)| n / tg.len().max(1) as f64)
                    .sum::<f64>()
                    / b as f64,
            ],
        }
    };
    let mut rng = Rng::new(seed);
    let logits: Vec<f64> = rng.vec(b * t * v).iter().map(|x| 3.0 * x).collect();
    let want = cpu(std::slice::from_ref(&logits));
    let mut check = Check::new(case.name, vec![(logits, vec![b, t, v])]);
    check.fwd_tol = (1e-4, 1e-4);
    check.h = 1e-5;
    if want.iter().any(|x| x.is_infinite()) {
        // No gradient check through an infinite loss: the forward must be inf, and no NaN.
        let tape = xlsr::Tape::new();
        let x = tape.input(upload(&check.inputs[0].0, &check.inputs[0].1), true);
        let (loss, bad) = x
            .ctc_loss(&padded, &il, opts(blank, reduction, zero_inf))
            .unwrap();
        assert!(!bad.is_empty());
        let got = loss.value.to_vec().unwrap();
        assert_eq!(got.len(), want.len(), "{}: losses", case.name);
        for (g, &w) in got.iter().zip(&want) {
            let ok = if w.is_infinite() {
                *g as f64 == w
            } else {
                (*g as f64 - w).abs() <= 1e-4 + 1e-4 * w.abs()
            };
            assert!(ok, "{}: got {g} want {w}", case.name);
        }
        return;
    }
    check.run(
        move |v| {
            v[0].ctc_loss(&padded, &il, opts(blank, reduction, zero_inf))
                .unwrap()
                .0
        },
        cpu,
    );
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "repeats and padding",
            t: 12,
            v: 6,
            targets: vec![vec![1, 1, 2], vec![3, 4], vec![2, 2, 2, 5]],
            input_lengths: vec![12, 9, 10],
            blank: 0,
        },
        Case {
            name: "empty target",
            t: 7,
            v: 5,
            targets: vec![vec![], vec![1, 2]],
            input_lengths: vec![7, 7],
            blank: 0,
        },
        Case {
            name: "barely feasible",
            t: 6,
            v: 4,
            targets: vec![vec![1, 1, 2, 2]],
            input_lengths: vec![6],
            blank: 3,
        },
        Case {
            name: "blank last, vocab 30",
            t: 20,
            v: 30,
            targets: vec![vec![5, 17, 17, 28, 3], vec![0, 1, 2]],
            input_lengths: vec![20, 15],
            blank: 29,
        },
    ]
}

#[test]
fn ctc_matches_reference() {
    for (i, case) in cases().iter().enumerate() {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            run(case, reduction, true, 100 + i as u64);
        }
        run(case, Reduction::Mean, false, 200 + i as u64);
    }
}

#[test]
fn impossible_targets() {
    // Utterance 1 needs 3 labels + 1 blank between the repeat = 4 frames but has 3.
    let case = Case {
        name: "impossible",
        t: 6,
        v: 5,
        targets: vec![vec![1, 2], vec![3, 3, 1]],
        input_lengths: vec![6, 3],
        blank: 0,
    };
    run(&case, Reduction::Mean, true, 7); // zero_infinity: loss and gradient of utt 1 are 0
    run(&case, Reduction::None, false, 8); // without: utt 1's loss is inf
}

#[test]
fn long_inputs_stay_finite() {
    // 30 s of audio (1500 frames), 100-label targets, vocab 40, large logits.
    let g = gpu();
    let (b, t, v, l) = (2, 1500, 40, 100);
    let mut rng = Rng::new(3);
    let logits: Vec<f32> = rng
        .vec(b * t * v)
        .iter()
        .map(|x| (x * 1e4) as f32)
        .collect();
    let ids: Vec<u32> = (0..b * l).map(|i| 1 + (i % 39) as u32).collect();
    let targets = Targets {
        ids: ids.clone(),
        width: l,
        lengths: vec![100, 60],
    };
    let x = xlsr::Tensor::from_slice(&g, &logits, &[b, t, v]).unwrap();
    let ctc = ctc_loss(&x, &targets, &[1500, 1200], opts(0, Reduction::Mean, true)).unwrap();
    let one = xlsr::Tensor::scalar(&g, 1.0).unwrap();
    let grad = xlsr::ops::ctc::ctc_backward(&ctc, &one)
        .unwrap()
        .to_vec()
        .unwrap();
    // Against an f64 log-space reference: an underflow to "impossible" would become a loss of
    // 0 under zero_infinity, and finite. Per utterance (reduction none), then the mean.
    let lens = [(100usize, 1500usize), (60, 1200)];
    let want: Vec<f64> = lens
        .iter()
        .enumerate()
        .map(|(i, &(tl, il))| {
            let x: Vec<f64> = logits[i * t * v..(i + 1) * t * v]
                .iter()
                .map(|&x| x as f64)
                .collect();
            let tg: Vec<usize> = ids[i * l..i * l + tl].iter().map(|&c| c as usize).collect();
            cpu_nll(&x, il, v, &tg, 0)
        })
        .collect();
    let none = ctc_loss(&x, &targets, &[1500, 1200], opts(0, Reduction::None, true))
        .unwrap()
        .loss
        .to_vec()
        .unwrap();
    for (i, (&got, &want)) in none.iter().zip(&want).enumerate() {
        assert!(want > 1e5 && want.is_finite(), "reference {want}");
        assert!(
            (got as f64 - want).abs() <= 1e-5 * want,
            "utterance {i}: {got} vs {want}"
        );
    }
    let mean = (want[0] / 100.0 + want[1] / 60.0) / 2.0;
    let got = ctc.loss.item().unwrap() as f64;
    assert!((got - mean).abs() <= 1e-5 * mean, "mean: {got} vs {mean}");
    // The gradient is finite, 0 on padding frames and not 0 everywhere. (Its per-frame sums
    // are not checked here: with a log-likelihood near -1e7, alpha + beta + nll loses most
    // digits in f32, so the alignment posterior is only roughly normalised; the smooth case
    // below checks them.)
    assert!(grad.iter().all(|x| x.is_finite()));
    for (i, &(_, il)) in lens.iter().enumerate() {
        let rows = &grad[i * t * v..(i + 1) * t * v];
        assert!(rows[il * v..].iter().all(|&x| x == 0.0), "utt {i}: padding");
        assert!(
            rows[..il * v].iter().any(|&x| x != 0.0),
            "utt {i}: no gradient"
        );
    }
    // Smooth logits: compare against the reference at T = 1500.
    let soft: Vec<f64> = rng.vec(t * v).iter().map(|x| 0.5 * x).collect();
    let x = upload(&soft, &[1, t, v]);
    let tg: Vec<usize> = (0..l).map(|i| 1 + i % 39).collect();
    let row: Vec<u32> = tg.iter().map(|&c| c as u32).collect();
    let ctc = ctc_loss(
        &x,
        &Targets::from_rows(&[row]),
        &[t],
        opts(0, Reduction::Sum, false),
    )
    .unwrap();
    let want = cpu_nll(&soft, t, v, &tg, 0);
    let got = ctc.loss.item().unwrap() as f64;
    assert!((got - want).abs() < 1e-4 * want, "T=1500: {got} vs {want}");
    // Its gradient (softmax minus the alignment posterior) sums to 0 over each frame: within
    // 1e-2, as alpha + beta + nll (about 5e3 here) keeps only that much in f32 (the sums drift
    // to about 4e-3 near the start; a lost or doubled path term would be far off).
    let grad = xlsr::ops::ctc::ctc_backward(&ctc, &one)
        .unwrap()
        .to_vec()
        .unwrap();
    for (f, row) in grad.chunks(v).enumerate() {
        let sum: f64 = row.iter().map(|&x| x as f64).sum();
        assert!(sum.abs() < 1e-2, "T=1500 frame {f}: gradient sums to {sum}");
    }
    assert!(grad.iter().any(|&x| x.abs() > 1e-3));
}

#[test]
fn bad_input_is_rejected_before_any_kernel() {
    let g = gpu();
    let x = xlsr::Tensor::zeros(&g, &[2, 10, 5]).unwrap();
    let err = |ids: &[u32], lengths: &[usize], il: &[usize]| {
        let targets = Targets {
            ids: ids.to_vec(),
            width: 2,
            lengths: lengths.to_vec(),
        };
        ctc_loss(&x, &targets, il, opts(0, Reduction::Mean, true))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(err(&[1, 7, 1, 2], &[2, 2], &[10, 10]).contains("target id 7 outside the vocabulary"));
    assert!(err(&[1, 0, 1, 2], &[2, 2], &[10, 10]).contains("blank"));
    assert!(err(&[1, 2, 1, 2], &[3, 2], &[10, 10]).contains("exceeds the padded length"));
    assert!(err(&[1, 2, 1, 2], &[2, 2], &[11, 10]).contains("exceeds the 10 frames"));
    assert!(err(&[1, 2, 1], &[2, 1], &[10, 10]).contains("target rows"));
    assert!(err(&[1, 2, 1, 2], &[2, 2], &[10]).contains("input lengths"));
}
