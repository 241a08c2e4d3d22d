//! MMS language adapters (issue 16) against transformers: a tiny random MMS-style folder made
//! by tools/make_mms_reference.py (attention adapters after every pre-LN layer, the English
//! adapter and head in model.safetensors, `adapter.{eng,spa,tur}.safetensors` with heads of
//! 10, 14 and 9 outputs, one nested vocab.json). Logits per language equal
//! `Wav2Vec2ForCTC.from_pretrained(dir, target_lang=LANG)`'s within 1e-4; adapter-only
//! training changes only the adapters and the head and writes `adapter.LANG.safetensors`,
//! which loads back to the same logits.

mod common;
use common::{fixture, gpu, max_abs_err, temp_dir};
use safetensors::SafeTensors;
use std::path::Path;
use xlsr::data::Vocab;
use xlsr::model::checkpoint::canonical_name;
use xlsr::model::{Forward, Wav2Vec2ForCtc};
use xlsr::transcribe::Transcriber;
use xlsr::{Tape, Tensor};

/// (audio [B, N], lengths, logits of each language) from tests/fixtures/mms.safetensors.
struct Ref(Vec<u8>);

impl Ref {
    fn open() -> Ref {
        Ref(std::fs::read(fixture("mms.safetensors")).unwrap())
    }
    fn f32s(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap();
        (bytemuck::pod_collect_to_vec(t.data()), t.shape().to_vec())
    }
    fn batch(&self) -> (Tensor, Vec<usize>) {
        let (audio, shape) = self.f32s("audio");
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let mask: Vec<i64> =
            bytemuck::pod_collect_to_vec(st.tensor("attention_mask").unwrap().data());
        let lengths = mask
            .chunks(shape[1])
            .map(|m| m.iter().filter(|&&v| v == 1).count())
            .collect();
        (Tensor::from_slice(&gpu(), &audio, &shape).unwrap(), lengths)
    }
}

fn logits(model: &Wav2Vec2ForCtc, r: &Ref) -> Vec<f32> {
    let (audio, lengths) = r.batch();
    let tape = Tape::new();
    let out = tape
        .no_grad(|| model.forward(&tape, &audio, Some(&lengths), &Forward::default()))
        .unwrap();
    out.logits.value.to_vec().unwrap()
}

#[test]
fn logits_per_language_equal_transformers() {
    let r = Ref::open();
    let dir = fixture("mms");
    for (lang, size) in [("eng", 10), ("spa", 14), ("tur", 9)] {
        let t = Transcriber::load_lang(&gpu(), &dir, Some(lang)).unwrap();
        assert_eq!(t.model.config.vocab_size, size, "{lang}");
        assert_eq!(t.vocab.len(), size, "{lang}");
        let (want, shape) = r.f32s(&format!("logits.{lang}"));
        assert_eq!(shape[2], size);
        let err = max_abs_err(&logits(&t.model, &r), &want);
        println!("{lang}: max |logit err| {err:.2e}");
        assert!(err <= 1e-4, "{lang}: max |err| {err:.2e}");
    }
    // No language named: the tokenizer's target_lang (eng), as transformers defaults.
    let t = Transcriber::load(&gpu(), &dir).unwrap();
    let (want, _) = r.f32s("logits.eng");
    assert!(max_abs_err(&logits(&t.model, &r), &want) <= 1e-4);
    assert_eq!(t.model.target_lang.as_deref(), Some("eng"));
}

#[test]
fn languages_without_adapters_are_named() {
    let dir = fixture("mms");
    let e = Transcriber::load_lang(&gpu(), &dir, Some("deu"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("\"deu\"") && e.contains("eng, spa, tur"), "{e}");
    // A model without adapter layers has no language to pick.
    let e = Transcriber::load_lang(&gpu(), &fixture("w2v2_large"), Some("spa"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("adapter"), "{e}");
    // A nested vocab.json without a language to pick says which it has.
    let d = temp_dir("mms-nolang");
    std::fs::copy(dir.join("vocab.json"), d.join("vocab.json")).unwrap();
    let e = Vocab::load(&d).unwrap_err().to_string();
    assert!(
        e.contains("--target-lang") && e.contains("eng, spa, tur"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(d);
}

/// The tensors of a safetensors file, by canonical name (torch's weight-norm names as ours).
fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (canonical_name(&n), bytemuck::pod_collect_to_vec(t.data())))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// `xlsr train --adapter-only --target-lang LANG` from the MMS folder: a new language gets new
/// adapters and a head for the corpus's vocabulary; an existing one goes on from its adapter
/// with its vocabulary. Only adapter layers and the head change; the run writes
/// `adapter.LANG.safetensors` (the adapter and head weights, as `load_adapter` reads them),
/// and the saved folder loads back with that language to the trained model's logits.
#[test]
fn adapter_only_training_writes_the_language_adapter() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: xlsr::cli::TrainArgs,
    }
    let dir = temp_dir("mms-train");
    let prep = common::demo_subset(&dir, 1);
    let base = fixture("mms");
    let r = Ref::open();
    let g = gpu();
    for (lang, new) in [("xyz", true), ("spa", false)] {
        let out = dir.join(format!("run-{lang}"));
        let cli = Cli::parse_from([
            "train",
            "--model",
            base.to_str().unwrap(),
            "--data",
            prep.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--target-lang",
            lang,
            "--adapter-only",
            "--max-steps",
            "2",
            "--eval-steps",
            "0",
            "--batch-size",
            "1",
            "--learning-rate",
            "1e-3",
            "--warmup-steps",
            "0",
        ]);
        let s = xlsr::train::run(&g, &cli.args.into()).unwrap();
        let adapter = s.final_dir.join(format!("adapter.{lang}.safetensors"));
        let written = tensors(&adapter);
        let names: Vec<&str> = written.iter().map(|(n, _)| n.as_str()).collect();
        // Two layers of norm, linear_1, linear_2 (weight and bias), and the head.
        assert_eq!(names.len(), 2 * 6 + 2, "{names:?}");
        assert!(names
            .iter()
            .all(|n| n.contains(".adapter_layer.") || n.starts_with("lm_head.")));
        // The head has the corpus's vocabulary (new language) or Spanish's.
        let vocab = Vocab::load(&s.final_dir).unwrap();
        let corpus = xlsr::data::Prepared::open(&prep).unwrap();
        let head = written.iter().find(|(n, _)| n == "lm_head.bias").unwrap();
        let size = if new { corpus.vocab.len() } else { 14 };
        assert_eq!((head.1.len(), vocab.len()), (size, size), "{lang}");
        // Everything but the adapters and the head is the base model's.
        let before = tensors(&base.join("model.safetensors"));
        let after = tensors(&s.final_dir.join("model.safetensors"));
        // The same tensors, and masked_spec_embed, which the base folder may lack (its
        // config masks nothing) and a trained model saves, as transformers does.
        let mut changed = Vec::new();
        let mut left: Vec<&String> = after.iter().map(|(n, _)| n).collect();
        for (n, a) in &before {
            let b = &after
                .iter()
                .find(|(m, _)| m == n)
                .unwrap_or_else(|| panic!("{lang}: {n} not saved"))
                .1;
            left.retain(|m| *m != n);
            if a != b {
                changed.push(n.clone());
            }
        }
        assert!(
            left.iter().all(|n| *n == "wav2vec2.masked_spec_embed"),
            "{lang}: saved besides the base model's tensors: {left:?}"
        );
        assert!(!changed.is_empty());
        assert!(
            changed
                .iter()
                .all(|n| n.contains(".adapter_layer.") || n.starts_with("lm_head.")),
            "{lang}: {changed:?}"
        );
        // The written adapter over the base folder gives the trained model's logits.
        let mix = dir.join(format!("mix-{lang}"));
        std::fs::create_dir_all(&mix).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(base.join(f), mix.join(f)).unwrap();
        }
        for f in ["vocab.json", "tokenizer_config.json"] {
            std::fs::copy(s.final_dir.join(f), mix.join(f)).unwrap();
        }
        std::fs::copy(&adapter, mix.join(adapter.file_name().unwrap())).unwrap();
        let trained = Transcriber::load(&g, &s.final_dir).unwrap();
        let mixed = Transcriber::load_lang(&g, &mix, Some(lang)).unwrap();
        let err = max_abs_err(&logits(&mixed.model, &r), &logits(&trained.model, &r));
        assert!(err <= 1e-5, "{lang}: {err:.2e}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `--adapter-only` brings the MMS recipe's defaults (learning rate 1e-3, 100 warm-up steps,
/// no dropout or LayerDrop); flags given on the command line still win.
#[test]
fn adapter_only_takes_the_recipes_defaults() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: xlsr::cli::TrainArgs,
    }
    let parse = |extra: &[&str]| -> xlsr::train::TrainOptions {
        let mut v = vec!["train", "--model", "m", "--data", "d", "--out", "o"];
        v.extend(extra);
        Cli::parse_from(v).args.into()
    };
    let plain = parse(&[]);
    let mms = parse(&["--target-lang", "tur", "--adapter-only"]);
    assert_eq!((plain.learning_rate, plain.warmup_steps), (3e-4, 500));
    assert_eq!((mms.learning_rate, mms.warmup_steps), (1e-3, 100));
    assert_eq!(
        (mms.attention_dropout, mms.hidden_dropout, mms.layerdrop),
        (0.0, 0.0, 0.0)
    );
    assert!(mms.adapter_only && mms.target_lang.as_deref() == Some("tur"));
    let own = parse(&[
        "--target-lang",
        "tur",
        "--adapter-only",
        "--learning-rate",
        "5e-4",
    ]);
    assert_eq!((own.learning_rate, own.warmup_steps), (5e-4, 100));
}
