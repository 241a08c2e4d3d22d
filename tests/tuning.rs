//! The kernel tuner (`engine::tuning`, `ops::tune`): off unless asked, each shape class timed
//! once, its scratch runs leave the real outputs alone, a kept choice is the one launched, and
//! tuning files round-trip while stale or broken ones are told apart. Each test opens its own
//! device, since the tuning table belongs to one.

mod common;
use common::*;
use xlsr::engine::{Choice, Loaded, TuneMode};
use xlsr::ops::matmul::{matmul, matmul_tn_row_sums_into};
use xlsr::{Gpu, Tensor};

fn own_gpu() -> Gpu {
    Gpu::new().expect("a GPU adapter (lavapipe in CI)")
}

fn random(gpu: &Gpu, rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_slice(gpu, &to_f32(&rng.vec(n)), shape).unwrap()
}

/// |got - want| <= 1e-5 (1 + max |want|) + 1e-4 |want|: the kernel tests' tolerance, its
/// absolute part scaled by the output's size (other builds sum in other orders, and a
/// gradient slot's sums cancel to far below their terms).
fn assert_near(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = 1.0 + want.iter().fold(0f32, |m, w| m.max(w.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * scale + 1e-4 * w.abs(),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn measuring_times_each_shape_class_once() {
    let gpu = own_gpu();
    assert_eq!(gpu.tuning(), TuneMode::Off, "a new device tunes nothing");
    let mut rng = Rng::new(7);
    let (a, b) = (
        random(&gpu, &mut rng, &[300, 600]),
        random(&gpu, &mut rng, &[600, 136]),
    );
    let bias = random(&gpu, &mut rng, &[136]);
    let want = matmul(&a, &b, false, false, Some(&bias))
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(gpu.tuned_measured(), 0);

    gpu.set_tuning(TuneMode::Measure);
    let got = matmul(&a, &b, false, false, Some(&bias))
        .unwrap()
        .to_vec()
        .unwrap();
    assert_near("tuned matmul", &got, &want);
    let choices = gpu.tuned_choices();
    let key = "gemm f32 nn b1 m512 n256 k1024";
    let c = choices
        .get(key)
        .unwrap_or_else(|| panic!("{key} in {choices:?}"));
    // The output has 3 x 2 tiles and K is long enough, so the default splits K; all four
    // builds were timed (the tiled kernel walking K 8 or 16 at a time, split; unsplit; 64).
    let timed: Vec<&str> = c.times_ms.keys().map(|s| s.as_str()).collect();
    assert_eq!(
        timed,
        ["tiled", "tiled-k16", "tiled-unsplit", "tiled64"],
        "{c:?}"
    );
    assert!(c.times_ms.values().all(|ms| *ms > 0.0), "{c:?}");
    assert!(c.rejected.is_empty(), "{c:?}");
    assert!(c.times_ms.contains_key(&c.pick));
    assert_eq!(gpu.tuned_measured(), 1);

    // Again, and at another size of the same class: nothing more is measured.
    let got = matmul(&a, &b, false, false, Some(&bias))
        .unwrap()
        .to_vec()
        .unwrap();
    assert_near("tuned matmul again", &got, &want);
    let a2 = random(&gpu, &mut rng, &[400, 600]);
    matmul(&a2, &b, false, false, None).unwrap();
    assert_eq!(gpu.tuned_measured(), 1);
    // A transposed B is another class.
    let bt = random(&gpu, &mut rng, &[136, 600]);
    matmul(&a, &bt, false, true, None).unwrap();
    assert_eq!(gpu.tuned_measured(), 2);
    assert!(gpu
        .tuned_choices()
        .contains_key("gemm f32 nt b1 m512 n256 k1024"));

    // Accounting-only runs launch nothing, so they measure nothing.
    gpu.set_accounting_only(true);
    let (x, w) = (
        Tensor::zeros(&gpu, &[64, 300]).unwrap(),
        Tensor::zeros(&gpu, &[300, 64]).unwrap(),
    );
    matmul(&x, &w, false, false, None).unwrap();
    gpu.set_accounting_only(false);
    assert_eq!(gpu.tuned_measured(), 2);
}

/// A weight and bias gradient added into the optimiser's slots: the candidates run into
/// scratch outputs, so the slots get the product once, whichever build is picked.
#[test]
fn measuring_leaves_accumulated_gradients_alone() {
    let gpu = own_gpu();
    let mut rng = Rng::new(11);
    let (dy, x) = (
        random(&gpu, &mut rng, &[700, 136]),
        random(&gpu, &mut rng, &[700, 200]),
    );
    let (dw0, db0) = (rng.vec(136 * 200), rng.vec(136));
    let run = |gpu: &Gpu| {
        let dw = Tensor::from_slice(gpu, &to_f32(&dw0), &[136, 200]).unwrap();
        let db = Tensor::from_slice(gpu, &to_f32(&db0), &[136]).unwrap();
        assert!(matmul_tn_row_sums_into(&dy, &x, &dw, &db, true, None).unwrap());
        (dw.to_vec().unwrap(), db.to_vec().unwrap())
    };
    let (want_w, want_b) = run(&gpu);
    gpu.set_tuning(TuneMode::Measure);
    let (got_w, got_b) = run(&gpu);
    assert_eq!(gpu.tuned_measured(), 1, "{:?}", gpu.tuned_choices());
    let (key, c) = gpu.tuned_choices().into_iter().next().unwrap();
    assert_eq!(key, "gemm f32 tn b1 m256 n256 k1024 +sums +c");
    // No 64x64 build: it has no row sums.
    assert!(!c.times_ms.contains_key("tiled64"), "{c:?}");
    assert_near("dW", &got_w, &want_w);
    assert_near("db", &got_b, &want_b);
}

#[test]
fn a_kept_choice_is_the_build_launched() {
    let gpu = own_gpu();
    let mut rng = Rng::new(3);
    let (a, b) = (
        random(&gpu, &mut rng, &[300, 600]),
        random(&gpu, &mut rng, &[600, 136]),
    );
    let want = matmul(&a, &b, false, false, None)
        .unwrap()
        .to_vec()
        .unwrap();
    let key = "gemm f32 nn b1 m512 n256 k1024".to_string();
    let launched = |gpu: &Gpu| {
        gpu.reset_counters();
        let got = matmul(&a, &b, false, false, None)
            .unwrap()
            .to_vec()
            .unwrap();
        assert_near("matmul", &got, &want);
        let mut names: Vec<&str> = gpu.launches().into_iter().map(|(k, _)| k).collect();
        names.sort();
        names
    };
    let keep = |pick: &str| {
        gpu.clear_tuned();
        let choice = Choice {
            pick: pick.into(),
            ..Default::default()
        };
        gpu.keep_tuned(key.clone(), choice);
    };
    keep("tiled64");
    assert_eq!(
        launched(&gpu),
        ["matmul_nn", "splitk_sum"],
        "tuning off: the default"
    );
    gpu.set_tuning(TuneMode::Use);
    assert_eq!(launched(&gpu), ["matmul_tiled64"]);
    keep("tiled-unsplit");
    assert_eq!(launched(&gpu), ["matmul_nn"]);
    keep("tiled-k16");
    assert_eq!(launched(&gpu), ["matmul_nn", "splitk_sum"]);
    // A choice this shape cannot take (no cooperative matrices here, or another setting).
    keep("coop");
    assert_eq!(launched(&gpu), ["matmul_nn", "splitk_sum"]);
    assert_eq!(
        gpu.tuned_measured(),
        1,
        "the choice kept by hand, nothing measured"
    );
}

#[test]
fn tuning_files_round_trip_and_stale_or_broken_ones_are_told_apart() {
    let gpu = own_gpu();
    let dir = temp_dir("tuning");
    let path = dir.join("sub/tuning.json");
    assert_eq!(gpu.load_tuning(&path).unwrap(), Loaded::Missing);
    let mut times = std::collections::BTreeMap::new();
    times.insert("tiled".to_string(), 1.5);
    times.insert("tiled64".to_string(), 1.0);
    let choice = Choice {
        pick: "tiled64".into(),
        times_ms: times,
        rejected: vec!["coop".into()],
    };
    gpu.keep_tuned("gemm f32 nn b1 m512 n256 k1024".into(), choice.clone());
    gpu.save_tuning(&path).unwrap();
    assert!(
        !dir.join("sub/tuning.json.tmp").exists(),
        "written through a rename"
    );

    gpu.clear_tuned();
    assert!(gpu.tuned_choices().is_empty());
    assert_eq!(gpu.load_tuning(&path).unwrap(), Loaded::Choices(1));
    let back = gpu.tuned_choices();
    assert_eq!(back.get("gemm f32 nn b1 m512 n256 k1024"), Some(&choice));

    // Another build of the kernels (or adapter, or driver): ignored, and said why.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["adapter"], gpu.info().name.as_str());
    json["build"] = "0123456789abcdef".into();
    std::fs::write(&path, json.to_string()).unwrap();
    gpu.clear_tuned();
    match gpu.load_tuning(&path).unwrap() {
        Loaded::Stale(why) => assert!(why.contains("kernel build"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(gpu.tuned_choices().is_empty());

    // Not a tuning file: an error that names it.
    std::fs::write(&path, "{\"adapter\": 3").unwrap();
    let err = gpu.load_tuning(&path).unwrap_err().to_string();
    assert!(err.contains("tuning.json"), "{err}");

    // One file per adapter and driver, under XLSR_TUNING_DIR or the user's cache.
    let own = gpu.tuning_path().unwrap();
    let name = own.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.starts_with("tuning-") && name.ends_with(".json"),
        "{name}"
    );
}

/// The implicit GEMM's tiles and attention's builds (tiled, four lanes or a thread per row)
/// are picked the same way: each launch kind gets its class, every build is
/// timed, and the outputs equal the untuned ones.
#[test]
fn convolutions_and_attention_are_tuned_too() {
    use xlsr::ops::attention::{backward, forward, Attention};
    use xlsr::ops::conv::{self, Conv1d};
    let gpu = own_gpu();
    let mut rng = Rng::new(5);
    let c = Conv1d {
        stride: 2,
        padding: 1,
        groups: 1,
    };
    let x = random(&gpu, &mut rng, &[2, 24, 301]);
    let w = random(&gpu, &mut rng, &[40, 24, 3]);
    let lout = c.out_len(301, 3);
    let dy = random(&gpu, &mut rng, &[2, 40, lout]);
    let (b, h, t, d) = (2, 3, 37, 16);
    let [q, k, v, d_o] = [0; 4].map(|_| random(&gpu, &mut rng, &[b, h, t, d]));
    let a = Attention {
        heads: h,
        scale: 0.25,
        dropout: 0.1,
        seed: 9,
        tokens_first: false,
        drop_row: 0,
    };
    let outputs = || {
        let y = conv::forward(&c, &x, &w, None).unwrap();
        let g = conv::backward(&c, &x, &w, false, &dy, true).unwrap();
        let fwd = forward(&q, &k, &v, None, &a).unwrap();
        let ag = backward(&q, &k, &v, None, &a, &fwd, &d_o).unwrap();
        [y, g.input.unwrap(), fwd.out, ag.q, ag.k, ag.v].map(|t| t.to_vec().unwrap())
    };
    let want = outputs();
    gpu.set_tuning(TuneMode::Measure);
    let got = outputs();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_near(&format!("output {i}"), g, w);
    }
    let choices = gpu.tuned_choices();
    let timed = |key: &str| {
        let c = choices
            .get(key)
            .unwrap_or_else(|| panic!("{key} in {choices:#?}"));
        c.times_ms.keys().cloned().collect::<Vec<_>>()
    };
    assert_eq!(
        timed("conv fwd cin24 cout40 k3 s2 g1 b2 l256"),
        ["tile128", "tile64"]
    );
    assert_eq!(
        timed("conv dx cin24 cout40 k3 s2 g1 b2 l256"),
        ["tile128", "tile64"]
    );
    // Each kernel also has its tiled build where 32 KiB of workgroup memory are offered.
    let tiled = gpu.limits().max_compute_workgroup_storage_size >= 32 * 1024;
    let lanes = gpu.has_subgroups() && gpu.info().subgroup_min_size >= 4;
    let want: Vec<&str> = [(lanes, "lanes"), (true, "rows"), (tiled, "tiled")]
        .into_iter()
        .filter_map(|(has, b)| has.then_some(b))
        .collect();
    for kernel in ["attn_fwd", "attn_bwd_kv", "attn_bwd_q"] {
        let key = format!("{kernel} f32 d16 t64 bh8 dropout");
        if want.len() > 1 {
            assert_eq!(timed(&key), want, "{kernel}");
        }
    }
}

/// The command line's side: `xlsr bench --tune` measures the classes its cases launch and
/// writes this adapter's file, a later command takes the choices from it (and says so),
/// `XLSR_TUNE=0` runs the defaults, and `--retune` measures the same classes again.
#[test]
fn bench_tune_writes_the_file_that_later_commands_read() {
    let dir = std::env::temp_dir().join(format!("xlsr-tuning-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bench = |extra: &[&str], tune_env: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_xlsr"));
        cmd.env("XDG_RUNTIME_DIR", "/tmp")
            .env("XLSR_TUNING_DIR", &dir)
            .env_remove("XLSR_TUNE")
            .args(["bench", "--quick", "--filter", "matmul tiled 1000"])
            .args(extra);
        if let Some(v) = tune_env {
            cmd.env("XLSR_TUNE", v);
        }
        let out = cmd.output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "{stdout}\n{stderr}");
        (stdout, stderr)
    };
    let tuned = |stdout: &str| -> usize {
        let line = stdout
            .lines()
            .find(|l| l.starts_with("tuned "))
            .unwrap_or_else(|| panic!("no `tuned N shape classes` line in:\n{stdout}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };

    let (stdout, _) = bench(&["--tune"], None);
    let n = tuned(&stdout);
    assert!(n >= 1, "{stdout}");
    assert!(
        stdout.contains("| gemm f32 "),
        "each class measured is listed:\n{stdout}"
    );
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one file for the one adapter: {files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("\"choices\""), "{text}");

    let (_, stderr) = bench(&[], None);
    assert!(
        stderr.contains(&format!("kernel choices for {n} shape classes from")),
        "{stderr}"
    );
    let (_, stderr) = bench(&[], Some("0"));
    assert!(
        !stderr.contains("kernel choices"),
        "XLSR_TUNE=0 reads no file:\n{stderr}"
    );

    // Every class is known now: --tune alone measures none, --retune all of them again.
    let (stdout, _) = bench(&["--tune"], None);
    assert_eq!(tuned(&stdout), 0, "{stdout}");
    let (stdout, _) = bench(&["--retune"], None);
    assert_eq!(tuned(&stdout), n, "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
