//! `xlsr train` end to end on the committed Spanish corpus with tiny models: a resumed run
//! repeats an uninterrupted one exactly (with the checkpoint's options, unless --override),
//! options come from a JSON config with the command line winning, `xlsr eval --json` prints the
//! metrics, a used run folder is refused and checkpoint rotation keeps the current run's newest,
//! bad options and diverging runs stop with errors naming the flag, an empty eval split is an
//! error, and bad input fails cleanly without touching earlier checkpoints. (The overfitting
//! proof is in tests/overfit.rs.)

mod common;
use clap::Parser;
use common::temp_dir;
use std::path::{Path, PathBuf};
use xlsr::cli::TrainArgs;
use xlsr::data::prepare::{self, Options, Source};
use xlsr::data::Prepared;
use xlsr::model::Wav2Vec2ForCtc;
use xlsr::train::{self, TrainOptions};

/// A tiny random model for the prepared vocabulary.

#[derive(Parser)]
#[command(args_override_self = true)]
struct Cli {
    #[command(flatten)]
    args: TrainArgs,
}

fn args(model: &Path, prep: &Path, out: &Path, extra: &[&str]) -> TrainOptions {
    let mut v: Vec<String> = vec!["train".into()];
    for (k, p) in [("--model", model), ("--data", prep), ("--out", out)] {
        v.push(k.into());
        v.push(p.display().to_string());
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    Cli::parse_from(v).args.into()
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    let rows = xlsr::metrics::MetricsLog::read(&run.join("metrics.jsonl")).unwrap();
    xlsr::metrics::MetricsLog::series(&rows, "loss")
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let _ = std::fs::remove_dir_all(resume_case("resume", &[]));
}

/// The same under fp16: the loss scaler's state is part of the checkpoint.
#[test]
fn resumed_fp16_run_equals_uninterrupted_run() {
    if !common::gpu().has_f16() {
        eprintln!("adapter has no SHADER_F16: fp16 resume not tested");
        return;
    }
    let dir = resume_case("resume16", &["--fp16"]);
    let state = std::fs::read_to_string(dir.join("cut/checkpoint-3/trainer_state.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert!(
        v["grad_scaler"]["scale"].as_f64().unwrap() > 0.0,
        "no loss scale in {state}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn resume_case(name: &str, extra: &[&str]) -> PathBuf {
    let (dir, prep, model) = common::tiny_run(name, 6);
    // Dropout, LayerDrop and SpecAugment on, so their seeding is part of what must repeat.
    let common = [
        "--batch-size",
        "2",
        "--grad-accum",
        "2",
        "--max-steps",
        "6",
        "--warmup-steps",
        "2",
        "--logging-steps",
        "1",
        "--eval-steps",
        "0",
        "--save-steps",
        "3",
        "--save-total-limit",
        "2",
        "--learning-rate",
        "1e-3",
        "--layerdrop",
        "0.3",
        "--mask-time-prob",
        "0.2",
        "--freeze-feature-encoder",
        "false",
    ];
    let common = [&common[..], extra].concat();
    let full = dir.join("full");
    let a = train::run(&common::gpu(), &args(&model, &prep, &full, &common)).unwrap();
    assert_eq!(a.steps, 6);
    // "Killed" during step 5: a run folder holding checkpoint-3 and the log up to step 4 (the
    // resumed run logs step 4 again, and must drop the killed run's row for it).
    let cut = dir.join("cut");
    std::fs::create_dir_all(&cut).unwrap();
    copy_dir(&full.join("checkpoint-3"), &cut.join("checkpoint-3"));
    let log: Vec<String> = std::fs::read_to_string(full.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .take(4)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(cut.join("metrics.jsonl"), log.concat()).unwrap();
    // Options changed on the resuming command line (learning rate, --model) are listed and
    // not used: the run continues as the checkpoint was set up.
    let mut resumed = common.to_vec();
    resumed.push("--resume");
    let other = dir.join("elsewhere");
    let mut changed = resumed.clone();
    changed.extend(["--learning-rate", "5e-2"]);
    let cut2 = dir.join("cut2");
    copy_dir(&full.join("checkpoint-3"), &cut2.join("checkpoint-3"));
    std::fs::copy(cut.join("metrics.jsonl"), cut2.join("metrics.jsonl")).unwrap();
    let b = train::run(&common::gpu(), &args(&other, &prep, &cut, &changed)).unwrap();
    assert_eq!(b.steps, 6);
    let (la, lb) = (losses(&full), losses(&cut));
    assert_eq!(la.len(), 6);
    assert_eq!(la, lb, "resumed losses differ");
    // Same final weights, bit for bit.
    let wa = std::fs::read(full.join("final/model.safetensors")).unwrap();
    let wb = std::fs::read(cut.join("final/model.safetensors")).unwrap();
    assert!(wa == wb, "final weights differ");
    // With --override the command line's learning rate is used: another run.
    changed.push("--override");
    train::run(&common::gpu(), &args(&model, &prep, &cut2, &changed)).unwrap();
    assert_eq!(losses(&cut2)[..3], la[..3]);
    assert_ne!(losses(&cut2)[4..], la[4..], "--override had no effect");
    // save_total_limit 2: the two newest checkpoints are kept (the last step's is one).
    assert!(full.join("checkpoint-3").is_dir() && full.join("checkpoint-6").is_dir());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn json_config_with_command_line_overrides() {
    let dir = temp_dir("config");
    let cfg = dir.join("train.json");
    std::fs::write(
        &cfg,
        r#"{"batch-size": 4, "learning_rate": 1e-4, "fp16": true, "max-steps": 9, "freeze-feature-encoder": false}"#,
    )
    .unwrap();
    let mut v = vec!["train".to_string()];
    v.extend(xlsr::cli::config_args(&cfg).unwrap());
    v.extend(
        [
            "--model",
            "m",
            "--data",
            "d",
            "--out",
            "o",
            "--batch-size",
            "8",
        ]
        .map(String::from),
    );
    let a = Cli::parse_from(v).args;
    assert_eq!(a.batch_size, 8, "command line wins");
    assert_eq!(a.learning_rate, 1e-4);
    assert!(a.fp16);
    assert_eq!(a.max_steps, Some(9));
    assert!(!a.freeze_feature_encoder);
    assert_eq!(a.grad_accum, 2, "notebook default");
    assert_eq!(a.warmup_steps, 500);
    std::fs::write(&cfg, r#"{"batch-size": [1, 2]}"#).unwrap();
    assert!(xlsr::cli::config_args(&cfg).is_err());
    // A flag is true or false (`"new_head": true` once failed as `--new-head=true`).
    std::fs::write(&cfg, r#"{"new_head": true, "adapter_only": false}"#).unwrap();
    let mut v = vec!["train".to_string()];
    v.extend(xlsr::cli::config_args(&cfg).unwrap());
    v.extend(["--model", "m", "--data", "d", "--out", "o"].map(String::from));
    let a = Cli::parse_from(v).args;
    assert!(a.new_head && !a.adapter_only);
    // Mistakes in the file name the file: an unknown key, a value clap refuses.
    std::fs::write(&cfg, r#"{"bogus_key": 1}"#).unwrap();
    let e = xlsr::cli::config_args(&cfg).unwrap_err().to_string();
    assert!(e.contains("train.json: bogus_key is not an option"), "{e}");
    std::fs::write(&cfg, r#"{"batch_size": "two"}"#).unwrap();
    let e = common::xlsr_err(&[
        &"train",
        &"--config",
        &cfg,
        &"--model",
        &"m",
        &"--data",
        &"d",
        &"--out",
        &"o",
    ]);
    assert!(
        e.contains("train.json: invalid value 'two' for '--batch-size"),
        "{e}"
    );
    // --model, --data and --out may come from the file (the command line was refused before
    // the file was read): this run gets as far as the missing corpus.
    let data = dir.join("no-corpus");
    let json = serde_json::json!({"model": dir.join("m"), "data": data, "out": dir.join("o")});
    std::fs::write(&cfg, json.to_string()).unwrap();
    let e = common::xlsr_err(&[&"train", &"--config", &cfg]);
    assert!(e.contains(&format!("{}: neither", data.display())), "{e}");
    // One file, which names no other (its `config` key was skipped without a word).
    let e = common::xlsr_err(&[&"train", &"--config", &cfg, &"--config", &cfg]);
    assert!(e.contains("--config given 2 times"), "{e}");
    std::fs::write(&cfg, r#"{"config": "other.json"}"#).unwrap();
    let e = xlsr::cli::config_args(&cfg).unwrap_err().to_string();
    assert!(e.contains("cannot name another"), "{e}");
}

#[test]
fn bad_input_fails_cleanly() {
    let (dir, prep, model) = common::tiny_run("bad", 2);
    let g = common::gpu();

    // A checkpoint whose head has another vocabulary.
    let other = dir.join("other");
    let m = Wav2Vec2ForCtc::random(&g, xlsr::demo::small_config(50, 49), 0).unwrap();
    m.save(&other).unwrap();
    let e = train::run(
        &g,
        &args(&other, &prep, &dir.join("r1"), &["--max-steps", "1"]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("vocabulary"), "{e}");
    // --out a file.
    let file = dir.join("file");
    std::fs::write(&file, "mine").unwrap();
    let e = train::run(&g, &args(&model, &prep, &file, &["--max-steps", "1"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("file: --out names a file"), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");

    // A corpus with no usable clips is not prepared at all (nothing written; an earlier
    // cache in that folder would stay as it was), and one without training clips is no
    // training corpus.
    let empty = dir.join("empty_manifest.tsv");
    std::fs::write(&empty, "missing.mp3\thola\n").unwrap();
    let mut opts = Options::new(
        Source::Manifests {
            train: vec![empty.clone()],
            test: vec![],
        },
        dir.join("emptyprep"),
    );
    opts.progress = false;
    let e = prepare::run(&opts).unwrap_err().to_string();
    assert!(e.contains("no usable clips"), "{e}");
    assert!(!dir.join("emptyprep/index.json").exists());
    assert!(!dir.join("emptyprep/audio.f32").exists());
    let test_only = dir.join("test_manifest.tsv");
    let clip = xlsr::demo::corpus_dir().join("clips/common_voice_es_100001.mp3");
    std::fs::write(&test_only, format!("{}\thola\n", clip.display())).unwrap();
    if let Source::Manifests { test, .. } = &mut opts.source {
        test.push(test_only);
    }
    prepare::run(&opts).unwrap();
    let e = train::run(
        &g,
        &args(&model, &dir.join("emptyprep"), &dir.join("r2"), &[]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no usable training clips"), "{e}");

    // A checkpoint that cannot be written leaves the earlier one intact.
    let run = dir.join("r3");
    let base = saving_every_step("2");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join(".checkpoint-2.tmp"),
        "a file where the temporary folder goes",
    )
    .unwrap();
    // (--resume: the folder is not empty; with no checkpoint in it the run starts fresh.)
    let e = train::run(
        &g,
        &args(
            &model,
            &prep,
            &run,
            &[&base[..], &["--max-steps", "3", "--resume"]].concat(),
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("checkpoint-2") && e.contains("intact"), "{e}");
    let ck1 = run.join("checkpoint-1");
    assert!(ck1.join("model.safetensors").is_file() && ck1.join("trainer_state.json").is_file());
    assert!(!run.join("checkpoint-2").exists());
    Wav2Vec2ForCtc::load(&g, &ck1, None, 0).unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Rewrites a model folder's tokenizer files with `edit` applied to (vocab.json,
/// tokenizer_config.json).
fn edit_tokenizer(dir: &Path, edit: impl FnOnce(&mut serde_json::Value, &mut serde_json::Value)) {
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap()
    };
    let (mut vocab, mut config) = (read("vocab.json"), read("tokenizer_config.json"));
    edit(&mut vocab, &mut config);
    std::fs::write(dir.join("vocab.json"), vocab.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
}

/// Fine-tuning a model that is already fine-tuned, as transformers does: with its head and
/// vocabulary (added `<s>`/`</s>` past the head, as a transformers 5 folder has them; an
/// uppercase vocabulary gets uppercased labels; characters it lacks become its unknown token),
/// or with `--new-head` a fresh head on the corpus's vocabulary; `prepare --vocab` encodes with
/// a given vocabulary.
#[test]
fn continuing_from_fine_tuned_checkpoints() {
    let (dir, prep, model) = common::tiny_run("finetuned", 2);
    let g = common::gpu();
    let corpus = Prepared::open(&prep).unwrap();
    let head = corpus.vocab.len();
    let one_step = ["--max-steps", "1", "--eval-steps", "0", "--batch-size", "2"];
    let copy = |name: &str| {
        let d = dir.join(name);
        copy_dir(&model, &d);
        d
    };

    // transformers 5's save_pretrained: <s> and </s> as added tokens past the head.
    let added = copy("added");
    edit_tokenizer(&added, |_, cfg| {
        cfg["bos_token"] = "<s>".into();
        cfg["eos_token"] = "</s>".into();
        cfg["added_tokens_decoder"] = serde_json::json!({
            head.to_string(): {"content": "<s>", "special": true},
            (head + 1).to_string(): {"content": "</s>", "special": true},
        });
    });
    let v = xlsr::data::Vocab::load(&added).unwrap();
    assert_eq!((v.len(), v.head_size()), (head + 2, head));
    let s = train::run(&g, &args(&added, &prep, &dir.join("r_added"), &one_step)).unwrap();
    let out = xlsr::data::Vocab::load(&s.final_dir).unwrap();
    assert!(out.same_tokens(&v) && out.head_size() == head);
    let (m, _) = Wav2Vec2ForCtc::load(&g, &s.final_dir, None, 0).unwrap();
    assert_eq!(m.config.vocab_size, head);

    // An uppercase vocabulary (do_lower_case false), as wav2vec2-base-960h's: the corpus's
    // lowercase text is uppercased, giving the very ids the lowercase vocabulary gave.
    let upper = copy("upper");
    edit_tokenizer(&upper, |vocab, _| {
        let map = vocab.as_object().unwrap().clone();
        *vocab = map
            .into_iter()
            .map(|(t, id)| {
                let t = if t.chars().count() == 1 {
                    t.to_uppercase()
                } else {
                    t
                };
                (t, id)
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
    });
    let uv = xlsr::data::Vocab::load(&upper).unwrap();
    let mut relabelled = Prepared::open(&prep).unwrap();
    let r = relabelled.relabel(&uv);
    assert!(r.unknown.is_empty() && r.dropped.is_empty(), "{r:?}");
    for (a, b) in relabelled.train.iter().zip(&corpus.train) {
        assert_eq!(a.labels, b.labels, "{}", a.text);
    }
    train::run(&g, &args(&upper, &prep, &dir.join("r_upper"), &one_step)).unwrap();

    // A vocabulary without 'a': every 'a' becomes its unknown token and is counted.
    let lacking = copy("lacking");
    edit_tokenizer(&lacking, |vocab, _| {
        let id = vocab["a"].clone();
        vocab.as_object_mut().unwrap().remove("a");
        vocab["#"] = id;
    });
    let lv = xlsr::data::Vocab::load(&lacking).unwrap();
    let mut relabelled = Prepared::open(&prep).unwrap();
    let r = relabelled.relabel(&lv);
    let want = corpus
        .train
        .iter()
        .chain(&corpus.test)
        .map(|u| u.text.matches('a').count())
        .sum::<usize>();
    assert!(want > 0);
    assert_eq!(r.unknown.get("a"), Some(&want), "{r:?}");
    let l = &relabelled.train[0];
    assert_eq!(
        l.labels.iter().filter(|&&i| i == lv.unk).count(),
        l.text.matches('a').count()
    );

    // A checkpoint whose config.json blank is not its vocab.json's pad token is ambiguous:
    // refused, naming both (training on once retrained the blank silently).
    let pad = copy("padmismatch");
    let cfg_path = pad.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["pad_token_id"] = 0.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = train::run(&g, &args(&pad, &prep, &dir.join("r_pad"), &one_step))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pad_token_id is 0") && e.contains("--new-head"),
        "{e}"
    );

    // --new-head: a checkpoint whose head has another vocabulary gets a fresh head.
    let other = dir.join("other");
    let m = Wav2Vec2ForCtc::random(&g, xlsr::demo::small_config(50, 49), 0).unwrap();
    m.save(&other).unwrap();
    let e = train::run(&g, &args(&other, &prep, &dir.join("r_other"), &one_step))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--new-head") && e.contains("vocab.json"), "{e}");
    let with_new = [&one_step[..], &["--new-head"]].concat();
    let s = train::run(&g, &args(&other, &prep, &dir.join("r_new"), &with_new)).unwrap();
    let (m, _) = Wav2Vec2ForCtc::load(&g, &s.final_dir, None, 0).unwrap();
    assert_eq!(m.config.vocab_size, head);
    assert!(xlsr::data::Vocab::load(&s.final_dir)
        .unwrap()
        .same_tokens(&corpus.vocab));

    // prepare --vocab: the corpus encoded with a given vocabulary, unknowns counted.
    let mut opts = Options::new(corpus.options.source.clone(), dir.join("prep_lacking"));
    opts.progress = false;
    opts.vocab = Some(lacking.join("vocab.json"));
    let summary = prepare::run(&opts).unwrap();
    assert_eq!(summary.unknown.get("a"), Some(&want));
    assert!(summary.to_string().contains("became the unknown token"));
    let p = Prepared::open(&dir.join("prep_lacking")).unwrap();
    assert!(p.vocab.same_tokens(&lv));
    assert_eq!(p.train[0].labels, relabelled.train[0].labels);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn eval_cli_prints_json() {
    let (dir, prep, model) = common::tiny_run("evalcli", 3);
    let out = common::xlsr_ok(&[&"eval", &"--json", &"--model", &model, &"--data", &prep]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for k in ["wer", "cer", "ctc_loss", "utterances", "skipped"] {
        assert!(v.get(k).is_some(), "missing {k} in {v}");
    }
    assert_eq!(v["utterances"], 3);
    assert_eq!(v["decoding"], "greedy");
    // An untrained model gets nearly everything wrong.
    assert!(v["cer"].as_f64().unwrap() > 0.5);

    // --lm decodes with beam search and says so; --tune searches alpha and beta.
    let arpa = dir.join("words.arpa");
    std::fs::write(
        &arpa,
        "\\data\\\nngram 1=5\n\n\\1-grams:\n-1.0\t</s>\n-99\t<s>\t-0.3\n-2.0\t<unk>\t-0.3\n\
         -0.5\thola\t-0.3\n-0.7\tperro\t-0.3\n\n\\end\\\n",
    )
    .unwrap();
    let stdout = common::xlsr_ok(&[
        &"eval",
        &"--json",
        &"--tune",
        &"--beam-width",
        &"8",
        &"--model",
        &model,
        &"--data",
        &prep,
        &"--lm",
        &arpa,
    ]);
    assert!(stdout.contains("best: --alpha "), "{stdout}");
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let decoding = v["decoding"].as_str().unwrap();
    assert!(
        decoding.contains("beam search with") && decoding.contains("beam width 8"),
        "{v}"
    );
    let grid = v["tuned"].as_array().unwrap();
    assert_eq!(grid.len(), 9 * 7);
    let best = grid
        .iter()
        .map(|g| g["wer"].as_f64().unwrap())
        .fold(f64::MAX, f64::min);
    assert_eq!(v["wer"].as_f64().unwrap(), best);
    let _ = std::fs::remove_dir_all(dir);
}

/// `--fp16` on an adapter without f16 (simulated with XLSR_NO_F16=1): a note, then f32.
#[test]
fn fp16_without_shader_f16_trains_in_f32_with_a_note() {
    let (dir, prep, model) = common::tiny_run("nof16", 2);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xlsr"))
        .env("XLSR_TUNE", "0")
        .env("XDG_RUNTIME_DIR", "/tmp")
        .env("XLSR_NO_F16", "1")
        .args(["train", "--fp16", "--max-steps", "2", "--save-steps", "1"])
        .args(["--eval-steps", "0", "--batch-size", "2", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&prep)
        .arg("--out")
        .arg(dir.join("run"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("SHADER_F16"), "no note in: {stderr}");
    let state = std::fs::read_to_string(dir.join("run/checkpoint-1/trainer_state.json")).unwrap();
    assert!(!state.contains("grad_scaler"), "{state}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The entries of a run folder but its lock file.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".lock")
        .collect();
    v.sort();
    v
}

/// Re-running into a used `--out` is refused unless `--resume` or `--overwrite`; rotation
/// (`--save-total-limit`) runs over several saves and keeps the current run's newest
/// checkpoints; `--overwrite` replaces the earlier run's files.
#[test]
fn used_run_folder_is_refused_and_rotation_keeps_the_newest() {
    let (dir, prep, model) = common::tiny_run("reuse", 2);
    let g = common::gpu();
    let run = dir.join("run");
    let opts = |steps: &str, limit: &str| -> Vec<String> {
        [
            "--max-steps",
            steps,
            "--save-steps",
            "1",
            "--save-total-limit",
            limit,
            "--eval-steps",
            "0",
            "--logging-steps",
            "1",
            "--batch-size",
            "1",
            "--grad-accum",
            "1",
        ]
        .map(String::from)
        .to_vec()
    };
    let run_with = |extra: &[String]| {
        let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
        train::run(&g, &args(&model, &prep, &run, &refs))
    };

    // 6 steps, a save after each (the last one too, then final/), keep 2.
    let first = run_with(&opts("6", "2")).unwrap();
    assert_eq!(first.steps, 6);
    let kept = [
        "checkpoint-5",
        "checkpoint-6",
        "final",
        "metrics.jsonl",
        "training.svg",
    ];
    assert_eq!(
        names_in(&run),
        kept,
        "rotation keeps the two newest checkpoints"
    );
    let id = |ck: &str| train::state::run_id_of(&run.join(ck)).unwrap();
    assert!(!id("checkpoint-5").is_empty());
    assert_eq!(id("checkpoint-5"), id("checkpoint-6"));
    let final_before = std::fs::read(run.join("final/model.safetensors")).unwrap();
    let log_before = std::fs::read(run.join("metrics.jsonl")).unwrap();

    // Again without --resume or --overwrite: refused, nothing touched.
    let e = run_with(&opts("3", "2")).unwrap_err().to_string();
    assert!(
        e.contains("not empty") && e.contains("--resume") && e.contains("--overwrite"),
        "{e}"
    );
    assert_eq!(names_in(&run), kept);
    assert!(std::fs::read(run.join("final/model.safetensors")).unwrap() == final_before);
    assert!(std::fs::read(run.join("metrics.jsonl")).unwrap() == log_before);

    // --overwrite with an input that fails: refused before the earlier run is touched (the
    // folder was once emptied before the model was even opened).
    let mut o = opts("3", "3");
    o.push("--overwrite".into());
    let e = train::run(
        &g,
        &args(&dir.join("no-model"), &prep, &run, &{
            let refs: Vec<&str> = o.iter().map(String::as_str).collect();
            refs
        }),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no-model"), "{e}");
    assert_eq!(names_in(&run), kept);
    assert!(std::fs::read(run.join("metrics.jsonl")).unwrap() == log_before);

    // --overwrite: the earlier run's files go, the new run's checkpoints stay (rotation once
    // deleted the new checkpoints because the old run's had higher steps).
    let second = run_with(&o).unwrap();
    assert_eq!(second.steps, 3);
    assert_eq!(
        names_in(&run),
        [
            "checkpoint-1",
            "checkpoint-2",
            "checkpoint-3",
            "final",
            "metrics.jsonl",
            "training.svg"
        ]
    );
    assert_ne!(id("checkpoint-1"), "");
    let steps: Vec<u64> = losses(&run).iter().map(|l| l.0).collect();
    assert_eq!(steps, [1, 2, 3], "metrics.jsonl holds only the new run");
    // --resume and --overwrite together make no sense.
    let mut both = opts("3", "2");
    both.extend(["--resume".into(), "--overwrite".into()]);
    let mut v: Vec<String> = vec!["train".into(), "--model".into(), "m".into()];
    v.extend(["--data", "d", "--out", "o"].map(String::from));
    v.extend(both);
    assert!(Cli::try_parse_from(v).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

/// Every numeric option is checked before anything runs; the error names the flag.
#[test]
fn bad_numbers_are_refused_naming_the_flag() {
    let cases: [(&str, &str); 24] = [
        ("target-lang", "x/y"),
        ("target-lang", ".."),
        ("learning-rate", "nan"),
        ("learning-rate", "inf"),
        ("learning-rate", "-1e-4"),
        ("weight-decay", "nan"),
        ("weight-decay", "-0.1"),
        ("max-grad-norm", "nan"),
        ("epochs", "0"),
        ("epochs", "inf"),
        ("max-steps", "0"),
        ("max-train-samples", "0"),
        ("max-eval-samples", "0"),
        ("save-total-limit", "0"),
        ("logging-steps", "0"),
        ("batch-size", "0"),
        ("grad-accum", "0"),
        ("max-batch-seconds", "0"),
        ("max-batch-seconds", "nan"),
        ("attention-dropout", "1"),
        ("hidden-dropout", "-0.1"),
        ("feat-proj-dropout", "nan"),
        ("mask-time-prob", "1.5"),
        ("layerdrop", "1"),
    ];
    let dir = temp_dir("flags");
    let out = dir.join("never");
    for (flag, value) in cases {
        let a = args(
            Path::new("m"),
            Path::new("d"),
            &out,
            &[&format!("--{flag}={value}")],
        );
        let e = a.validate().unwrap_err().to_string();
        assert!(e.starts_with(&format!("--{flag} ")), "{flag} {value}: {e}");
        // train::run checks before it touches anything.
        let e = train::run(&common::gpu(), &a).unwrap_err().to_string();
        assert!(e.contains(&format!("--{flag}")), "{flag} {value}: {e}");
        assert!(!out.exists());
    }
    assert!(args(Path::new("m"), Path::new("d"), &out, &[])
        .validate()
        .is_ok());
    let _ = std::fs::remove_dir_all(dir);
}

/// A diverging run stops with a clear error instead of skipping every step to the end and
/// exiting 0: a learning rate that makes every loss non-finite stops after
/// MAX_SKIPPED_IN_A_ROW skipped steps (the losses are logged as NaN, JSON null, not 0.0); one
/// that overflows the weights stops at once, naming a tensor. Neither saves a model.
#[test]
fn diverging_run_stops_with_a_clear_error() {
    let (dir, prep, model) = common::tiny_run("diverge", 2);
    let g = common::gpu();
    let base = [
        "--max-steps",
        "60",
        "--save-steps",
        "0",
        "--eval-steps",
        "0",
        "--logging-steps",
        "1",
        "--batch-size",
        "2",
        "--grad-accum",
        "1",
        "--warmup-steps",
        "0",
        "--freeze-feature-encoder",
        "false",
    ];
    // A run at learning rate `lr` in folder `name`, which must fail: its folder and error.
    let failing = |name: &str, lr: &str| {
        let run = dir.join(name);
        let flags = [&base[..], &["--learning-rate", lr]].concat();
        let e = train::run(&g, &args(&model, &prep, &run, &flags)).unwrap_err();
        (run, e.to_string())
    };
    let (run, e) = failing("huge", "1e30");
    let n = train::MAX_SKIPPED_IN_A_ROW;
    assert!(e.contains(&format!("{n} optimiser steps in a row")), "{e}");
    assert!(e.contains("--learning-rate"), "{e}");
    assert!(!run.join("final").exists());
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows.len() as u64 >= n && (rows.len() as u64) < 60, "{log}");
    // Every logged loss after the first (diverged) update is NaN, none is a fake 0.
    for r in &rows[1..] {
        assert!(r["loss"].is_null(), "{r}");
    }

    let (run, e) = failing("overflow", "1e38");
    assert!(
        e.contains("step 1:") && e.contains("non-finite") && e.contains(".weight"),
        "{e}"
    );
    assert!(!run.join("final").exists());
    let _ = std::fs::remove_dir_all(dir);
}

/// Zero utterances is no score: `xlsr eval` of an empty split (or `--limit 0`) fails instead
/// of printing a perfect WER of 0.
#[test]
fn eval_of_an_empty_split_is_an_error() {
    let (dir, prep, model) = common::tiny_run("evalempty", 2);
    // A prep folder whose test split is empty.
    let m = dir.join("train_manifest.tsv");
    let mut opts = Options::new(
        Source::Manifests {
            train: vec![m],
            test: vec![],
        },
        dir.join("notest"),
    );
    opts.progress = false;
    prepare::run(&opts).unwrap();
    let eval = |data: &Path, extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xlsr"))
            .env("XLSR_TUNE", "0")
            .env("XDG_RUNTIME_DIR", "/tmp")
            .args(["eval", "--json", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(data)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = eval(&dir.join("notest"), &[]);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("no utterances") && stderr.contains("test"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = eval(&prep, &["--limit", "0"]);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("no utterances"), "{stderr}");
    let (ok, stdout, stderr) = eval(&prep, &["--batch-size", "0"]);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("--batch-size 0"), "{stderr}");
    // A model whose logits are NaN (finite weights: a zero weight-norm direction) gets no
    // score: it once printed WER 1.0 and a null loss.
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for f in std::fs::read_dir(&model).unwrap().flatten() {
        std::fs::copy(f.path(), broken.join(f.file_name())).unwrap();
    }
    let bytes = std::fs::read(model.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let zeros: Vec<Vec<u8>> = st
        .tensors()
        .iter()
        .map(|(_, t)| vec![0u8; t.data().len()])
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .zip(&zeros)
        .map(|((n, t), z)| {
            let data = if n.ends_with("pos_conv_embed.conv.weight_v") {
                &z[..]
            } else {
                t.data()
            };
            (
                n,
                safetensors::tensor::TensorView::new(t.dtype(), t.shape().to_vec(), data).unwrap(),
            )
        })
        .collect();
    std::fs::write(
        broken.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xlsr"))
        .env("XLSR_TUNE", "0")
        .env("XDG_RUNTIME_DIR", "/tmp")
        .args(["eval", "--model"])
        .arg(&broken)
        .arg("--data")
        .arg(&prep)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(&format!(
                "{}: the model's logits are not finite",
                broken.display()
            )),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Resuming names what is wrong: a corrupt newest checkpoint points to the previous one, and
/// a trainer_state.json whose step disagrees with its folder name is refused.
#[test]
fn resume_problems_are_named() {
    let (dir, prep, model) = common::tiny_run("resumebad", 2);
    let g = common::gpu();
    let run = dir.join("run");
    let opts = [&saving_every_step("3")[..], &["--save-total-limit", "3"]].concat();
    train::run(&g, &args(&model, &prep, &run, &opts)).unwrap();
    // As if killed in its last step: checkpoint-2 is the newest.
    std::fs::remove_dir_all(run.join("checkpoint-3")).unwrap();
    std::fs::remove_dir_all(run.join("final")).unwrap();
    let mut resume = opts.to_vec();
    resume.push("--resume");
    // A truncated model in the newest checkpoint.
    let weights = run.join("checkpoint-2/model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let e = train::run(&g, &args(&model, &prep, &run, &resume))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("checkpoint-2") && e.contains("checkpoint-1") && e.contains("may be intact"),
        "{e}"
    );
    // Moved aside as the error says; then a state whose step is not its folder's.
    std::fs::rename(run.join("checkpoint-2"), dir.join("broken")).unwrap();
    let state = run.join("checkpoint-1/trainer_state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["global_step"] = 7.into();
    std::fs::write(&state, v.to_string()).unwrap();
    let e = train::run(&g, &args(&model, &prep, &run, &resume))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("global_step 7") && e.contains("checkpoint-1"),
        "{e}"
    );
    std::fs::write(&state, text).unwrap();
    // A data position past its epoch's end (the corpus changed, or an edit) is not silently
    // taken as the next epoch.
    let st: train::state::TrainerState =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert!(st.position_warning(st.batch_in_epoch).is_none());
    let far = train::state::TrainerState {
        batch_in_epoch: 1_000_000_000,
        ..st
    };
    let w = far.position_warning(2).unwrap();
    assert!(
        w.contains("1000000000 of epoch") && w.contains("has 2 batches"),
        "{w}"
    );
    let metrics = std::fs::read(run.join("metrics.jsonl")).unwrap();
    // Damaged optimiser moments are refused by file and tensor (they once loaded, and the
    // NaN update that followed was blamed on the learning rate), and so is another dtype.
    let opt_path = run.join("checkpoint-1/optimizer.safetensors");
    let opt_bytes = std::fs::read(&opt_path).unwrap();
    for (change, want) in [
        ("nan", "value NaN"),
        ("negative", "value -1"),
        ("i32", "saved as I32"),
    ] {
        std::fs::write(&opt_path, edit_exp_avg_sq(&opt_bytes, change)).unwrap();
        let e = train::run(&g, &args(&model, &prep, &run, &resume))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("optimizer.safetensors") && e.contains("exp_avg_sq") && e.contains(want),
            "{change}: {e}"
        );
    }
    std::fs::write(&opt_path, &opt_bytes).unwrap();
    // A newest checkpoint without its trainer_state.json is damaged: named, with the previous
    // one, instead of a silent fall-back (or, with no other, a fresh run over the metrics).
    std::fs::create_dir(run.join("checkpoint-9")).unwrap();
    std::fs::copy(
        run.join("checkpoint-1/model.safetensors"),
        run.join("checkpoint-9/model.safetensors"),
    )
    .unwrap();
    let e = train::run(&g, &args(&model, &prep, &run, &resume))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("checkpoint-9/trainer_state.json")
            && e.contains("checkpoint-1")
            && e.contains("may be intact"),
        "{e}"
    );
    std::fs::remove_dir_all(run.join("checkpoint-9")).unwrap();
    assert!(std::fs::read(run.join("metrics.jsonl")).unwrap() == metrics);
    // What a kill during rotation leaves (a checkpoint renamed for deletion) is swept away,
    // and does not block deleting a checkpoint of the same name again.
    let leftover = run.join(".checkpoint-1.deleting.tmp");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("model.safetensors"), "half").unwrap();
    let done = train::run(&g, &args(&model, &prep, &run, &resume)).unwrap();
    assert_eq!(done.steps, 3);
    assert!(!leftover.exists());
    assert!(
        !names_in(&run).iter().any(|n| n.ends_with(".tmp")),
        "{:?}",
        names_in(&run)
    );
    // With every checkpoint gone but the run's other files there, --resume has nothing to
    // continue and refuses, rather than train afresh over final/ and metrics.jsonl.
    for ck in names_in(&run)
        .iter()
        .filter(|n| n.starts_with("checkpoint-"))
    {
        std::fs::remove_dir_all(run.join(ck)).unwrap();
    }
    let metrics = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let e = train::run(&g, &args(&model, &prep, &run, &resume))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no checkpoint") && e.contains("--overwrite"),
        "{e}"
    );
    assert!(std::fs::read(run.join("metrics.jsonl")).unwrap() == metrics);
    let _ = std::fs::remove_dir_all(dir);
}

/// `bytes` (an optimizer.safetensors) with its first `exp_avg_sq` tensor made NaN, negative,
/// or stored as I32.
fn edit_exp_avg_sq(bytes: &[u8], change: &str) -> Vec<u8> {
    use safetensors::{tensor::TensorView, Dtype, SafeTensors};
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    owned.sort_by(|a, b| a.0.cmp(&b.0));
    let t = owned
        .iter_mut()
        .find(|t| t.0.ends_with(".exp_avg_sq"))
        .unwrap();
    let n = t.3.len() / 4;
    match change {
        "nan" => t.3 = bytemuck::cast_slice(&vec![f32::NAN; n]).to_vec(),
        "negative" => t.3 = bytemuck::cast_slice(&vec![-1f32; n]).to_vec(),
        _ => t.1 = Dtype::I32,
    }
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// Flags for `steps` steps of batch 2 that save a checkpoint after each and never evaluate.
fn saving_every_step(steps: &str) -> [&str; 8] {
    [
        "--max-steps",
        steps,
        "--save-steps",
        "1",
        "--eval-steps",
        "0",
        "--batch-size",
        "2",
    ]
}

/// An evaluation that fails (here a damaged cache: NaN samples in a test clip) names the
/// cause, and the steps trained before it are saved as a checkpoint instead of lost (the final
/// evaluation comes before `final/` is written).
#[test]
fn failed_evaluation_keeps_the_trained_steps() {
    let (dir, prep, model) = common::tiny_run("evalfail", 2);
    let data = xlsr::data::Prepared::open(&prep).unwrap();
    let u = &data.test[0];
    let cache = prep.join("audio.f32");
    let mut bytes = std::fs::read(&cache).unwrap();
    let at = (u.offset as usize + u.samples / 2) * 4;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&cache, bytes).unwrap();
    let run = dir.join("run");
    let opts = [
        "--max-steps",
        "2",
        "--save-steps",
        "0",
        "--eval-steps",
        "0",
        "--eval-split",
        "test",
    ];
    let e = train::run(&common::gpu(), &args(&model, &prep, &run, &opts))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("audio.f32") && e.contains(&u.id) && e.contains("cache is damaged"),
        "{e}"
    );
    assert!(run.join("checkpoint-2/model.safetensors").is_file());
    assert!(run.join("checkpoint-2/trainer_state.json").is_file());
    assert!(!run.join("final").exists());
    let _ = std::fs::remove_dir_all(dir);
}
