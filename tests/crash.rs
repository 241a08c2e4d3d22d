//! Interruptions and failing file systems lose nothing: Ctrl-C or SIGTERM saves the step, a
//! finished run is never trained again over its final model, two runs cannot share a folder,
//! a failed log write saves the steps first, a resumed log keeps its rows byte for byte, and
//! FIFOs, foreign or missing caches, killed builds' leftovers and long names are named or
//! cleaned up instead of hanging or misleading.

mod common;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use xlsr::data::prepare::{self, Options, Source};
use xlsr::data::Prepared;

/// `xlsr train` on `prep` with the tiny `model`, one clip a step, into `run`.
fn train_cmd(model: &Path, prep: &Path, run: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xlsr"));
    c.env("XLSR_TUNE", "0").env("XDG_RUNTIME_DIR", "/tmp");
    c.arg("train")
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(prep);
    c.arg("--out").arg(run);
    c.args([
        "--batch-size",
        "1",
        "--grad-accum",
        "1",
        "--eval-steps",
        "0",
    ]);
    c.args(["--logging-steps", "1"]).args(extra);
    c
}

/// Runs `c`, which must succeed; its stdout.
fn succeeds(c: &mut Command) -> String {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `c`, which must fail cleanly (no panic); its stderr.
fn fails(c: &mut Command) -> String {
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && !err.contains("panicked"), "{err}");
    err
}

/// Waits (at most 5 minutes) until a running train has logged `n` rows.
fn wait_for_rows(run: &Path, n: usize) {
    let start = Instant::now();
    while logged_rows(run) < n {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no steps logged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn logged_rows(run: &Path) -> usize {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.lines().count()
}

/// SIGTERM (what a scheduler sends before it kills) lets the step finish, saves it, exits
/// with 128 + 15 and says how to go on; `--resume` then finishes the run.
#[test]
fn sigterm_saves_the_step_and_resume_finishes() {
    let (dir, prep, model) = common::tiny_run("sigterm", 2);
    let run = dir.join("run");
    let child = train_cmd(&model, &prep, &run, &["--max-steps", "100000"])
        .args(["--save-steps", "100000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_rows(&run, 2);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(err.contains("interrupted by SIGTERM at step"), "{err}");
    assert!(
        err.contains("SIGTERM: stopping after this step"),
        "said at once: {err}"
    );
    let saved = xlsr::train::state::list(&run);
    let (step, ckpt) = saved.last().expect("a checkpoint").clone();
    assert!(
        err.contains(&ckpt.display().to_string()) && err.contains("--resume"),
        "{err}"
    );
    assert!(step >= 2);
    // The log holds no row past the saved step.
    assert_eq!(logged_rows(&run) as u64, step);
    let next = (step + 1).to_string();
    let flags = [
        "--resume",
        "--override",
        "--max-steps",
        &next,
        "--save-steps",
        "100000",
    ];
    succeeds(&mut train_cmd(&model, &prep, &run, &flags));
    assert!(run.join("final/model.safetensors").is_file());
    let _ = std::fs::remove_dir_all(dir);
}

/// A signal the parent ignores (`nohup`, a script's `cmd &`) stays ignored: catching it
/// stopped runs that were meant to survive a logout.
#[test]
fn an_ignored_signal_stays_ignored() {
    let (dir, prep, model) = common::tiny_run("ignored", 2);
    let run = dir.join("run");
    let train = train_cmd(
        &model,
        &prep,
        &run,
        &["--max-steps", "12", "--save-steps", "100"],
    );
    let mut line = format!("trap '' INT HUP; exec '{}'", env!("CARGO_BIN_EXE_xlsr"));
    for a in train.get_args() {
        line += &format!(" '{}'", a.to_string_lossy());
    }
    let child = Command::new("sh")
        .args(["-c", &line])
        .env("XLSR_TUNE", "0")
        .env("XDG_RUNTIME_DIR", "/tmp")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_rows(&run, 1);
    for sig in ["-INT", "-HUP"] {
        Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(run.join("final/model.safetensors").is_file());
    let _ = std::fs::remove_dir_all(dir);
}

/// The last step is saved as a checkpoint (as HF's Trainer does), so resuming a finished run
/// trains nothing: with a lower `--max-steps` it used to write an older checkpoint over
/// `final/`. Where a crash left no `final/`, resuming writes it from that checkpoint.
#[test]
fn a_finished_run_is_not_trained_again() {
    let (dir, prep, model) = common::tiny_run("finished", 2);
    let run = dir.join("run");
    succeeds(&mut train_cmd(
        &model,
        &prep,
        &run,
        &["--max-steps", "3", "--save-steps", "2"],
    ));
    assert!(run.join("checkpoint-2").is_dir() && run.join("checkpoint-3").is_dir());
    let final_model = std::fs::read(run.join("final/model.safetensors")).unwrap();
    let last = std::fs::read(run.join("checkpoint-3/model.safetensors")).unwrap();
    assert_eq!(final_model, last, "the last checkpoint is the final model");
    let rows = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    for max in ["2", "3"] {
        let flags = ["--resume", "--override", "--max-steps", max];
        let err = fails(&mut train_cmd(&model, &prep, &run, &flags));
        assert!(err.contains("nothing to train"), "{err}");
        assert!(err.contains("final/ holds the run's model"), "{err}");
    }
    assert_eq!(
        std::fs::read(run.join("final/model.safetensors")).unwrap(),
        final_model
    );
    assert_eq!(
        std::fs::read_to_string(run.join("metrics.jsonl")).unwrap(),
        rows
    );
    // final/ says its step: an older checkpoint (checkpoint-3 lost, or a `--save-steps 0`
    // run's interrupt checkpoint) never trains over it.
    let aside = dir.join("checkpoint-3");
    std::fs::rename(run.join("checkpoint-3"), &aside).unwrap();
    let flags = ["--resume", "--override", "--max-steps", "3"];
    let err = fails(&mut train_cmd(&model, &prep, &run, &flags));
    assert!(
        err.contains("final/ at step 3") && err.contains("nothing to train"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(run.join("final/model.safetensors")).unwrap(),
        final_model
    );
    std::fs::rename(&aside, run.join("checkpoint-3")).unwrap();
    std::fs::remove_dir_all(run.join("final")).unwrap();
    let out = succeeds(&mut train_cmd(&model, &prep, &run, &["--resume"]));
    assert!(out.contains("had finished at step 3"), "{out}");
    assert_eq!(
        std::fs::read(run.join("final/model.safetensors")).unwrap(),
        final_model
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A second process cannot train into a run folder in use: both used to write checkpoints of
/// the same names and lose each other's log rows.
#[test]
fn a_run_folder_in_use_is_refused() {
    let (dir, prep, model) = common::tiny_run("locked", 2);
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let held = xlsr::train::state::lock_run_dir(&run).unwrap();
    assert!(held.is_some(), "this file system has locks");
    let err = fails(&mut train_cmd(&model, &prep, &run, &["--max-steps", "1"]));
    assert!(err.contains("another xlsr process is training"), "{err}");
    assert!(!run.join("metrics.jsonl").exists());
    drop(held);
    // Free again, the lock file is no earlier run's.
    succeeds(&mut train_cmd(&model, &prep, &run, &["--max-steps", "1"]));
    let _ = std::fs::remove_dir_all(dir);
}

/// A log or plot that cannot be written (a full disk; here a folder in the plot's place)
/// stops the run with the steps saved, as a failed evaluation does.
#[test]
fn a_failed_plot_keeps_the_trained_steps() {
    let (dir, prep, model) = common::tiny_run("plotfail", 2);
    let run = dir.join("run");
    // The plot's temporary file cannot be made (a folder is there).
    std::fs::create_dir_all(run.join("training.svg.tmp")).unwrap();
    let flags = [
        "--max-steps",
        "4",
        "--save-steps",
        "0",
        "--eval-steps",
        "2",
        "--eval-split",
        "train",
    ];
    let err = fails(train_cmd(&model, &prep, &run, &flags).arg("--resume"));
    assert!(err.contains("training.svg"), "{err}");
    assert!(err.contains("the model so far is in"), "{err}");
    assert!(
        run.join("checkpoint-2/trainer_state.json").is_file(),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `--resume` drops the rows logged past its checkpoint and keeps the others as written:
/// parsing and printing them again changed floats in their last digit.
#[test]
fn a_resumed_log_keeps_its_rows_byte_for_byte() {
    let dir = common::temp_dir("logbytes");
    let rows =
        "{\"loss\":225.64096069335938,\"step\":1}\n{\"loss\":463.66827392578125,\"step\":2}\n\
                {\"loss\":1.5,\"step\":3}\n{\"loss\":2.";
    std::fs::write(dir.join("metrics.jsonl"), rows).unwrap();
    xlsr::metrics::MetricsLog::truncate_after(&dir, 2).unwrap();
    let kept = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(
        kept,
        "{\"loss\":225.64096069335938,\"step\":1}\n{\"loss\":463.66827392578125,\"step\":2}\n"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A FIFO where a run or prep folder has a file used to block the read forever.
#[test]
fn fifos_in_run_and_prep_folders_are_named() {
    let (dir, prep, _) = common::tiny_run("fifos", 2);
    let fifo = |path: &Path| {
        let _ = std::fs::remove_file(path);
        assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
    };
    for name in ["audio.f32", "index.json"] {
        let copy = dir.join(format!("prep-{name}"));
        std::fs::create_dir_all(&copy).unwrap();
        for f in std::fs::read_dir(&prep).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, copy.join(f.file_name().unwrap())).unwrap();
        }
        fifo(&copy.join(name));
        let e = Prepared::open(&copy).err().expect("refused").to_string();
        assert!(e.contains(name) && e.contains("not a regular file"), "{e}");
    }
    fifo(&dir.join("metrics.jsonl"));
    let e = xlsr::metrics::MetricsLog::open(&dir)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("metrics.jsonl") && e.contains("not a regular file"),
        "{e}"
    );
    let e = xlsr::metrics::MetricsLog::truncate_after(&dir, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a regular file"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The audio cache must have exactly the index's size: a larger one (another corpus's) used
/// to be trained on. A missing one is named, and `prepare --force` rebuilds the folder.
#[test]
fn a_foreign_or_missing_cache_is_named_and_rebuilt() {
    let (dir, prep, _) = common::tiny_run("foreign", 2);
    let cache = prep.join("audio.f32");
    let bytes = std::fs::read(&cache).unwrap();
    std::fs::write(&cache, [bytes.as_slice(), &[0u8; 64]].concat()).unwrap();
    let e = Prepared::open(&prep).err().expect("refused").to_string();
    assert!(
        e.contains("not this index's") && e.contains("prepare --force"),
        "{e}"
    );
    std::fs::remove_file(&cache).unwrap();
    let e = Prepared::open(&prep).err().expect("refused").to_string();
    assert!(
        e.contains("missing") && e.contains("prepare --force"),
        "{e}"
    );
    // A killed run's temporary cache is not left to take room.
    std::fs::write(prep.join("audio.f32.tmp"), [0u8; 16]).unwrap();
    let m = dir.join("train_manifest.tsv");
    let src = Source::Manifests {
        train: vec![m.clone()],
        test: vec![m],
    };
    let mut opts = Options::new(src, &prep);
    opts.force = true;
    opts.progress = false;
    prepare::run(&opts).unwrap();
    assert_eq!(std::fs::read(&cache).unwrap(), bytes);
    assert!(!prep.join("audio.f32.tmp").exists());
    let _ = std::fs::remove_dir_all(dir);
}

/// A file name that is not UTF-8 (Latin-1 archives) is an ordinary argument: it panicked.
#[test]
fn non_utf8_arguments_are_paths_like_any_other() {
    use std::os::unix::ffi::OsStrExt;
    let dir = common::temp_dir("latin1");
    let model = common::fixture("w2v2_large");
    let clip = dir.join(std::ffi::OsStr::from_bytes(b"clip-\xf1.wav"));
    std::fs::copy(model.join("clip.wav"), &clip).unwrap();
    let out = common::xlsr_ok(&[&"transcribe", &"--model", &model, &clip]);
    assert!(out.starts_with(&clip.display().to_string()), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `--model` given a run folder (or a missing one) says what to give instead of naming a
/// missing vocab.json.
#[test]
fn a_run_folder_as_model_is_named() {
    let dir = common::temp_dir("runasmodel");
    std::fs::create_dir_all(dir.join(".final.tmp")).unwrap();
    std::fs::write(dir.join("metrics.jsonl"), "").unwrap();
    let clip = common::fixture("w2v2_large/clip.wav");
    let e = common::xlsr_err(&[&"transcribe", &"--model", &dir, &clip]);
    assert!(
        e.contains("a training run's folder") && e.contains("--resume"),
        "{e}"
    );
    let e = common::xlsr_err(&[&"transcribe", &"--model", &dir.join("nothing"), &clip]);
    assert!(e.contains("model folder does not exist"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `lm build`: a killed build's scratch folder is deleted by the next build (it took tens of
/// MB each time), a missing output folder is named, and a name of 250 bytes (legal) works.
#[test]
fn lm_build_cleans_up_after_killed_builds() {
    let dir = common::temp_dir("lmscratch");
    let text = dir.join("text.txt");
    std::fs::write(
        &text,
        "la casa es roja\nel perro es negro\nla casa es grande\n",
    )
    .unwrap();
    // A build of this machine whose process is gone (pid 2^22 + 1 is above Linux's limit).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let dead = dir.join(format!(".xlsr-lm-4194305-1-{}", host.trim()));
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::write(dead.join("0.run"), [0u8; 1024]).unwrap();
    // Another machine's (a shared file system) stays.
    let other = dir.join(".xlsr-lm-4194305-1-elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    let long = dir.join(format!("{}.arpa", "a".repeat(245)));
    common::xlsr_ok(&[
        &"lm", &"build", &"--text", &text, &"--order", &"2", &"--out", &long,
    ]);
    assert!(long.is_file());
    assert!(!dead.exists() && other.exists());
    let e = common::xlsr_err(&[
        &"lm",
        &"build",
        &"--text",
        &text,
        &"--out",
        &dir.join("no/lm.arpa"),
    ]);
    assert!(e.contains("folder does not exist"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A checkpoint between two logging steps keeps the losses not yet logged, so the resumed
/// run logs the same mean at its next logging step (it logged the mean of fewer steps).
#[test]
fn a_run_resumed_between_logging_steps_logs_the_same_losses() {
    let (dir, prep, model) = common::tiny_run("unlogged", 2);
    let (full, cut) = (dir.join("full"), dir.join("cut"));
    let flags = [
        "--max-steps",
        "8",
        "--save-steps",
        "4",
        "--logging-steps",
        "3",
    ];
    succeeds(&mut train_cmd(&model, &prep, &full, &flags));
    // What a run stopped after step 4 leaves: checkpoint-4 and the rows up to step 3.
    let ckpt = cut.join("checkpoint-4");
    std::fs::create_dir_all(&ckpt).unwrap();
    for f in std::fs::read_dir(full.join("checkpoint-4")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, ckpt.join(f.file_name().unwrap())).unwrap();
    }
    let log = std::fs::read_to_string(full.join("metrics.jsonl")).unwrap();
    let first = log.lines().next().unwrap();
    assert!(first.contains("\"step\":3"), "{first}");
    std::fs::write(cut.join("metrics.jsonl"), format!("{first}\n")).unwrap();
    succeeds(&mut train_cmd(
        &model,
        &prep,
        &cut,
        &[&flags[..], &["--resume"]].concat(),
    ));
    assert_eq!(
        std::fs::read_to_string(cut.join("metrics.jsonl")).unwrap(),
        log
    );
    let _ = std::fs::remove_dir_all(dir);
}
