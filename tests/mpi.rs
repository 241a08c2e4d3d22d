//! Data-parallel training over MPI (`--features mpi`; Open MPI's `mpirun` on the PATH): two
//! ranks with batch 2 train as one process with batch 4 (same losses, same weights, dropout,
//! SpecAugment and LayerDrop on) and share the evaluation, one process resumes their run, and
//! a rank that fails, is killed or hangs stops the other instead of leaving it waiting. Both
//! ranks share lavapipe here.
#![cfg(feature = "mpi")]

mod common;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// `train` arguments: 5 steps of batch `batch` (x 2 accumulated), everything random on.
fn train_args(model: &Path, prep: &Path, out: &Path, batch: usize) -> Vec<String> {
    let mut v: Vec<String> = vec!["train".into()];
    for (k, p) in [("--model", model), ("--data", prep), ("--out", out)] {
        v.push(k.into());
        v.push(p.display().to_string());
    }
    let rest = format!(
        "--batch-size {batch} --grad-accum 2 --max-steps 5 --warmup-steps 2 --logging-steps 1 \
         --eval-steps 0 --save-steps 3 --learning-rate 1e-3 --seed 7 --hidden-dropout 0.1 \
         --attention-dropout 0.1 --feat-proj-dropout 0.1 --mask-time-prob 0.3 --layerdrop 0.3"
    );
    v.extend(rest.split_whitespace().map(String::from));
    v
}

/// Starts `mpirun` with `args` (as root in CI containers, hence `--allow-run-as-root`).
fn spawn_mpirun(args: &[String]) -> Child {
    Command::new("mpirun")
        .env("XLSR_TUNE", "0")
        .args(["--allow-run-as-root", "--oversubscribe"])
        .args(args)
        .env("XDG_RUNTIME_DIR", "/tmp")
        // Containers often forbid the cross-process memory copy Open MPI tries first.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mpirun (Open MPI) on the PATH")
}

/// Waits for `child`, killing it after `limit` (a hang fails the test).
fn wait(mut child: Child, limit: Duration) -> Output {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("mpirun still running after {limit:?}: a rank hangs");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    child.wait_with_output().unwrap()
}

/// Runs `mpirun` with `args`, killing it after `limit`.
fn mpirun(args: &[String], limit: Duration) -> Output {
    wait(spawn_mpirun(args), limit)
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    let rows = xlsr::metrics::MetricsLog::read(&run.join("metrics.jsonl")).unwrap();
    xlsr::metrics::MetricsLog::series(&rows, "loss")
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let v = bytemuck::pod_collect_to_vec::<u8, f32>(t.data());
            (name, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn two_ranks_train_as_one_process_with_twice_the_batch() {
    let (dir, prep, model) = common::tiny_run("mpi", 7);
    let bin = env!("CARGO_BIN_EXE_xlsr");

    let one = dir.join("one");
    let a: Vec<String> = train_args(&model, &prep, &one, 4);
    let refs: Vec<&dyn AsRef<std::ffi::OsStr>> = a.iter().map(|s| s as _).collect();
    common::xlsr_ok(&refs);

    let two = dir.join("two");
    let mut a = vec!["-np".to_string(), "2".into(), bin.into()];
    a.extend(train_args(&model, &prep, &two, 2));
    let out = mpirun(&a, Duration::from_secs(600));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("x 2 ranks"), "{text}");

    // 7 clips in batches of 4: the last batch of each epoch has 3, shared 1 + 2.
    let (l1, l2) = (losses(&one), losses(&two));
    assert_eq!(l1.len(), 5);
    assert_eq!(l1.len(), l2.len());
    for ((s1, a), (s2, b)) in l1.iter().zip(&l2) {
        assert_eq!(s1, s2);
        assert!((a - b).abs() <= 1e-5 * a.abs(), "step {s1}: {a} vs {b}");
    }
    let (w1, w2) = (weights(&one.join("final")), weights(&two.join("final")));
    assert_eq!(w1.len(), w2.len());
    let mut worst = 0f32;
    for ((n1, a), (n2, b)) in w1.iter().zip(&w2) {
        assert_eq!(n1, n2);
        assert_eq!(a.len(), b.len(), "{n1}");
        worst = worst.max(common::max_abs_err(a, b) as f32);
    }
    eprintln!("largest weight difference after 5 steps: {worst:e}");
    assert!(worst <= 1e-6, "{worst}");
    // The final evaluation, shared by the ranks (a batch of 2 each in turn), is what one
    // process finds with batches of 2.
    let rows = xlsr::metrics::MetricsLog::read(&two.join("metrics.jsonl")).unwrap();
    let shared = |k: &str| xlsr::metrics::MetricsLog::series(&rows, k)[0].1;
    let (m, p) = (two.join("final"), prep.clone());
    let a: [&dyn AsRef<std::ffi::OsStr>; 9] = [
        &"eval",
        &"--model",
        &m,
        &"--data",
        &p,
        &"--batch-size",
        &"2",
        &"--split",
        &"test",
    ];
    let mut a = a.to_vec();
    a.push(&"--json");
    let json: serde_json::Value = serde_json::from_str(common::xlsr_ok(&a).trim()).unwrap();
    assert_eq!(shared("eval_wer"), json["wer"].as_f64().unwrap());
    assert_eq!(shared("eval_cer"), json["cer"].as_f64().unwrap());
    let (e1, e2) = (shared("eval_loss"), json["ctc_loss"].as_f64().unwrap());
    assert!((e1 - e2).abs() <= 1e-6 * e2.abs(), "{e1} vs {e2}");
    // Rank 0 alone wrote the checkpoint; one process with batch 4 resumes from it (a
    // different number of ranks, the same batches) and ends where the two ranks did.
    assert!(two.join("checkpoint-3/model.safetensors").is_file());
    let three = dir.join("three");
    std::fs::create_dir_all(three.join("checkpoint-3")).unwrap();
    for f in std::fs::read_dir(two.join("checkpoint-3")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, three.join("checkpoint-3").join(f.file_name().unwrap())).unwrap();
    }
    std::fs::copy(two.join("metrics.jsonl"), three.join("metrics.jsonl")).unwrap();
    let mut a = train_args(&model, &prep, &three, 4);
    a.extend(["--resume".to_string(), "--override".into()]);
    let refs: Vec<&dyn AsRef<std::ffi::OsStr>> = a.iter().map(|s| s as _).collect();
    common::xlsr_ok(&refs);
    let l3 = losses(&three);
    assert_eq!(l3.len(), l2.len(), "logged steps of the resumed run");
    for ((s1, a), (s2, b)) in l2.iter().zip(&l3) {
        assert_eq!(s1, s2);
        assert!(
            (a - b).abs() <= 1e-5 * a.abs(),
            "resumed, step {s1}: {a} vs {b}"
        );
    }
    let w3 = weights(&three.join("final"));
    assert_eq!(w2.len(), w3.len());
    let worst = w2.iter().zip(&w3).fold(0f64, |m, ((_, a), (_, b))| {
        assert_eq!(a.len(), b.len());
        m.max(common::max_abs_err(a, b))
    });
    assert!(worst <= 1e-6, "resumed: {worst}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The exchange overlapped with the backward pass (ranges of 1 KiB, each sent as soon as its
/// parameters' gradients are final: at a checkpointed layer's end, or after the last node
/// that uses them) trains exactly as the exchange of whole buckets after the backward: the
/// same losses and the same final weights, bit for bit, with and without checkpointing.
#[test]
fn the_overlapped_exchange_equals_the_exchange_at_the_end() {
    let (dir, prep, model) = common::tiny_run("mpi-overlap", 7);
    let bin = env!("CARGO_BIN_EXE_xlsr");
    let run = |name: &str, kb: &str, checkpointing: &str| {
        let out_dir = dir.join(name);
        let mut a = vec!["-np".to_string(), "2".into(), "-x".into()];
        a.push(format!("XLSR_EXCHANGE_KB={kb}"));
        a.push(bin.into());
        a.extend(train_args(&model, &prep, &out_dir, 2));
        a.extend(["--gradient-checkpointing".to_string(), checkpointing.into()]);
        let out = mpirun(&a, Duration::from_secs(600));
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        (out_dir, text)
    };
    let (small, said) = run("small", "1", "true");
    let (whole, said_whole) = run("whole", "1000000", "true");
    let (plain, said_plain) = run("plain", "1", "false");
    let during = |text: &str| -> (usize, usize) {
        let line = text
            .lines()
            .find(|l| l.contains("gradient exchange:"))
            .unwrap_or_else(|| panic!("no exchange line in {text}"));
        let nums: Vec<usize> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect();
        (nums[0], nums[1])
    };
    let (ranges, early) = during(&said);
    eprintln!("{ranges} ranges of 1 KiB, {early} of them sent during the backward pass");
    assert!(
        ranges > 4 && early > 0,
        "{ranges} ranges, {early} early: {said}"
    );
    let (whole_ranges, _) = during(&said_whole);
    assert!(whole_ranges < ranges, "{whole_ranges} vs {ranges}");
    let (_, early_plain) = during(&said_plain);
    eprintln!("without checkpointing, {early_plain} sent during the backward pass");
    assert!(early_plain > 0, "{said_plain}");
    assert_eq!(losses(&small), losses(&whole));
    assert_eq!(weights(&small.join("final")), weights(&whole.join("final")));
    assert_eq!(losses(&plain), losses(&whole));
    assert_eq!(weights(&plain.join("final")), weights(&whole.join("final")));
    let _ = std::fs::remove_dir_all(dir);
}

/// Rank 1 cannot open its adapter: it stops both ranks with an error naming it, quickly,
/// and nothing is written.
#[test]
fn a_failing_rank_stops_the_others() {
    let (dir, prep, model) = common::tiny_run("mpi-fail", 4);
    let bin = env!("CARGO_BIN_EXE_xlsr").to_string();
    let run = dir.join("run");
    let train = train_args(&model, &prep, &run, 2);
    // Open MPI's MPMD form: one rank as usual, one with an adapter that does not exist.
    let mut a = vec!["-np".to_string(), "1".into(), bin.clone()];
    a.extend(train.iter().cloned());
    a.extend([":", "-np", "1", "-x", "XLSR_ADAPTER=no-such-adapter"].map(String::from));
    a.push(bin);
    a.extend(train);
    let t0 = Instant::now();
    let out = mpirun(&a, Duration::from_secs(120));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("rank 1 of 2") && err.contains("no-such-adapter"),
        "{err}"
    );
    eprintln!("stopped after {:.1} s", t0.elapsed().as_secs_f64());
    assert!(!run.join("final").exists() && !run.join("checkpoint-3").exists());
    let _ = std::fs::remove_dir_all(dir);
}

/// A rank killed mid-run (SIGKILL, as the out-of-memory killer does): the launcher stops the
/// other, and the run folder holds no half-written checkpoint.
#[test]
fn a_killed_rank_stops_the_others() {
    let (out, run) = signal_rank_1("mpi-kill", "-KILL", &[]);
    assert!(!out.status.success());
    // Checkpoints are written to a temporary name and renamed: none is half there.
    for e in std::fs::read_dir(&run).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("checkpoint-") {
            assert!(p.join("model.safetensors").is_file(), "{name} incomplete");
            assert!(p.join("trainer_state.json").is_file(), "{name} incomplete");
        }
    }
    let _ = std::fs::remove_dir_all(run.parent().unwrap());
}

/// A rank that hangs without dying (stopped with SIGSTOP): with `XLSR_MPI_TIMEOUT`, the
/// others give up waiting for it, say so, and the launcher stops the job.
#[test]
fn a_hung_rank_times_the_others_out() {
    let (out, run) = signal_rank_1("mpi-hang", "-STOP", &["-x", "XLSR_MPI_TIMEOUT=3"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rank 0 of 2") && err.contains("XLSR_MPI_TIMEOUT"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(run.parent().unwrap());
}

/// Starts a long 2-rank run (with mpirun options `extra`), sends rank 1 `signal` once two
/// steps are logged, and waits (60 s at most) for the launcher to end; returns its output
/// and the run folder.
fn signal_rank_1(tag: &str, signal: &str, extra: &[&str]) -> (Output, PathBuf) {
    let (dir, prep, model) = common::tiny_run(tag, 7);
    let run = dir.join("run");
    let mut a: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    a.extend([
        "-np".to_string(),
        "2".into(),
        env!("CARGO_BIN_EXE_xlsr").into(),
    ]);
    let mut train = train_args(&model, &prep, &run, 2);
    // Long enough to be interrupted while training.
    let at = train.iter().position(|x| x == "--max-steps").unwrap();
    train[at + 1] = "1000".into();
    a.extend(train);
    let child = spawn_mpirun(&a);
    // Rank 1: the xlsr process whose environment says so, once a few steps are logged.
    let t0 = Instant::now();
    let victim = loop {
        assert!(t0.elapsed() < Duration::from_secs(120), "no step logged");
        std::thread::sleep(Duration::from_millis(500));
        let logged = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
        if logged.lines().count() < 2 {
            continue;
        }
        if let Some(pid) = rank_pid(1, &run) {
            break pid;
        }
    };
    let sent = Command::new("kill")
        .args([signal, &victim.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let t1 = Instant::now();
    let out = std::panic::catch_unwind(|| wait(child, Duration::from_secs(60)));
    // Whatever happened, leave no stopped process behind.
    let _ = Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
    let out = out.unwrap_or_else(|e| std::panic::resume_unwind(e));
    eprintln!(
        "{tag}: stopped {:.1} s after kill {signal}",
        t1.elapsed().as_secs_f64()
    );
    (out, run)
}

/// The pid of the `xlsr` process that is MPI rank `rank` of the run writing to `run` (Linux:
/// read from /proc).
fn rank_pid(rank: usize, run: &Path) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    for e in std::fs::read_dir("/proc").ok()? {
        let p = e.ok()?.path();
        let Some(pid) = p.file_name()?.to_str()?.parse::<u32>().ok() else {
            continue;
        };
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        let env = std::fs::read(p.join("environ")).unwrap_or_default();
        let args = std::fs::read(p.join("cmdline")).unwrap_or_default();
        let ours = args
            .split(|&b| b == 0)
            .any(|a| a == run.as_os_str().as_encoded_bytes());
        if comm.trim() == "xlsr" && ours && env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}
