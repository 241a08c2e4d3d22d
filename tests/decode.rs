//! CTC beam search with an n-gram language model (`xlsr::decode`) against pyctcdecode 0.5 with
//! kenlm (tools/make_decoder_reference.py): the same transcripts and word frames of six noisy
//! utterances with pyctcdecode's defaults, a stronger LM, a narrow beam and no LM; ARPA scores
//! as KenLM's.

mod common;
use common::fixture;
use safetensors::SafeTensors;
use xlsr::decode::{alphabet, best, decode, ArpaLm, BeamOptions, WordLm};

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("decoder/expected.json")).unwrap())
        .unwrap()
}

fn logits(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixture("decoder/logits.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    bytemuck::pod_collect_to_vec(st.tensor(name).unwrap().data())
}

/// The fixture's labels (as pyctcdecode's alphabet) and its trigram model.
fn fixture_decoder(fx: &serde_json::Value) -> (Vec<String>, WordLm) {
    let labels: Vec<String> = fx["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    let arpa = ArpaLm::load(&fixture("decoder/lm.arpa")).unwrap();
    (alphabet(&labels), WordLm::from_arpa(arpa))
}

#[test]
fn transcripts_equal_pyctcdecode() {
    let fx = expected();
    let (labels, lm) = fixture_decoder(&fx);
    for case in fx["cases"].as_array().unwrap() {
        let d = BeamOptions::default();
        let f = |k: &str, v: f64| case[k].as_f64().unwrap_or(v);
        let o = BeamOptions {
            alpha: f("alpha", d.alpha),
            beta: f("beta", d.beta),
            beam_width: f("beam_width", d.beam_width as f64) as usize,
            beam_prune_logp: f("beam_prune_logp", d.beam_prune_logp),
            ..d
        };
        let with_lm = case["lm"].as_bool().unwrap_or(true);
        for (utt, want) in case["texts"].as_object().unwrap() {
            let got = best(&logits(utt), &labels, with_lm.then_some(&lm), &o);
            assert_eq!(got.text, want.as_str().unwrap(), "{} {utt}", case["name"]);
            // Each word's frames, as pyctcdecode's text_frames.
            let words: Vec<(String, (usize, usize))> =
                serde_json::from_value(case["words"][utt].clone()).unwrap();
            assert_eq!(got.words, words, "{} {utt}", case["name"]);
        }
    }
}

/// Without a language model, beam search on peaked logits (each frame's best far ahead)
/// gives the greedy transcript.
#[test]
fn without_a_model_peaked_logits_decode_greedily() {
    let labels = alphabet(&["[PAD]", "|", "a", "b", "c"].map(String::from));
    let mut rng = xlsr::rng::Rng::new(5);
    for _ in 0..20 {
        let frames = 5 + (rng.next_u64() % 30) as usize;
        let best: Vec<usize> = (0..frames).map(|_| (rng.next_u64() % 5) as usize).collect();
        let mut logits = Vec::new();
        for &b in &best {
            for i in 0..5 {
                logits.push(rng.normal() as f32 + if i == b { 20.0 } else { 0.0 });
            }
        }
        // Greedy: collapse repeats, drop blanks, spaces between words.
        let mut greedy = String::new();
        let mut prev = None;
        for &b in &best {
            if prev != Some(b) && b != 0 {
                greedy.push_str(&labels[b]);
            }
            prev = Some(b);
        }
        let greedy = greedy.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(
            decode(&logits, &labels, None, &BeamOptions::default()),
            greedy
        );
    }
}

/// `transcribe --lm`: the transcript is the beam search of the model's logits; a model whose
/// words the vocabulary cannot spell gets a warning.
#[test]
fn transcriber_decodes_with_a_language_model() {
    use xlsr::decode::LmDecoder;
    use xlsr::transcribe::Transcriber;
    let dir = common::temp_dir("lm");
    let arpa = dir.join("abc.arpa");
    std::fs::write(
        &arpa,
        "\\data\\\nngram 1=6\n\n\\1-grams:\n-1.0\t</s>\n-99\t<s>\t-0.3\n-2.0\t<unk>\t-0.3\n\
         -0.5\tabc\t-0.3\n-0.7\tbad\t-0.3\n-0.9\tface\t-0.3\n\n\\end\\\n",
    )
    .unwrap();
    let mut t = Transcriber::load(&common::gpu(), &fixture("w2v2_large")).unwrap();
    let v = t.model.config.vocab_size;
    let (d, warning) = LmDecoder::load(&arpa, &t.vocab, v).unwrap();
    assert!(warning.is_none(), "{warning:?}");
    t.lm = Some(d);
    let r = t.transcribe(&fixture("w2v2_large/clip.wav")).unwrap();
    let direct = t.lm.as_ref().unwrap().best(&r.logits);
    assert_eq!(r.text, direct.text);
    // Word times are the best beam's word frames times the feature encoder's stride over 16 kHz.
    let stride: usize = t.model.config.conv_stride.iter().product();
    let sec = |frame: usize| (frame * stride) as f64 / 16000.0;
    let times: Vec<(String, f64, f64)> = direct
        .words
        .iter()
        .map(|(w, (s, e))| (w.clone(), sec(*s), sec(*e)))
        .collect();
    let got: Vec<(String, f64, f64)> = r
        .words
        .iter()
        .map(|w| (w.word.clone(), w.start, w.end))
        .collect();
    assert_eq!(got, times);
    // The command prints the same text and words.
    let model = fixture("w2v2_large");
    let clip = fixture("w2v2_large/clip.wav");
    let args: [&dyn AsRef<std::ffi::OsStr>; 7] = [
        &"transcribe",
        &"--lm",
        &arpa,
        &"--json",
        &"--model",
        &model,
        &clip,
    ];
    let json: serde_json::Value = serde_json::from_str(common::xlsr_ok(&args).trim()).unwrap();
    assert_eq!(json["text"], r.text.as_str());
    assert_eq!(json["words"], serde_json::to_value(&r.words).unwrap());
    // Spanish words cannot be spelled with a..i.
    let (_, warning) = LmDecoder::load(&fixture("decoder/lm.arpa"), &t.vocab, v).unwrap();
    assert!(warning.unwrap().contains("can be spelled"));
    // An order-1 model (no back-offs) is named as such: its words are unknown to the decoder.
    let unigrams = dir.join("order1.arpa");
    let words = ["<s>", "</s>", "<unk>", "abc", "bad", "cab"];
    let mut arpa = format!("\\data\\\nngram 1={}\n\n\\1-grams:\n", words.len());
    for w in words {
        arpa += &format!("-0.7\t{w}\n");
    }
    std::fs::write(&unigrams, arpa + "\n\\end\\\n").unwrap();
    let (_, warning) = LmDecoder::load(&unigrams, &t.vocab, v).unwrap();
    assert!(warning
        .unwrap()
        .contains("none of its 1-grams has a back-off (an order-1"));
    // A malformed file names its line.
    let bad = dir.join("bad.arpa");
    std::fs::write(
        &bad,
        "\\data\\\nngram 1=1\n\n\\1-grams:\nnot-a-number\tabc\n\\end\\\n",
    )
    .unwrap();
    let e = LmDecoder::load(&bad, &t.vocab, v)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("line 5"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A corrupt ARPA file is refused by line or count, never trusted: a header count of 10^14
/// once asked for 4.6 PB up front (an abort), NaN or positive log probabilities and counts
/// that disagree with the file decoded silently, as did an n-gram of a word no unigram lists.
#[test]
fn arpa_files_are_checked_not_trusted() {
    let dir = common::temp_dir("arpa-checks");
    let good = std::fs::read_to_string(fixture("decoder/lm.arpa")).unwrap();
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let cases = [
        (
            "count",
            good.replace("ngram 1=24", "ngram 1=100000000000000"),
            "announces 100000000000000 1-grams, the file lists 24",
        ),
        (
            "fewer",
            good.replace("ngram 2=36", "ngram 2=35"),
            "announces 35 2-grams",
        ),
        (
            "nan",
            good.replace("-1.469003\tagua", "NaN\tagua"),
            "log10 probability NaN",
        ),
        (
            "positive",
            good.replace("-1.469003\tagua", "0.5\tagua"),
            "log10 probability 0.5",
        ),
        (
            "backoff",
            good.replace("agua\t-0.397940", "agua\tinf"),
            "bad back-off",
        ),
        (
            "twice",
            good.replace(
                "-1.469003\tagua\t-0.397940",
                "-1.469003\tagua\t-0.397940\n-1.4\tagua\t-0.3",
            ),
            "1-gram listed twice",
        ),
        (
            "stranger",
            good.replace("bebe leche", "bebe cerveza"),
            "\"cerveza\" in this 2-gram is not a unigram",
        ),
    ];
    for (name, text, want) in cases {
        assert_ne!(text, good, "{name}: the edit did not apply");
        let e = ArpaLm::load(&write(&format!("{name}.arpa"), text))
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains(want)),
            "{name}: {e:?}"
        );
    }
    // -inf (never) is a probability some toolkits write; it loads.
    let never = good.replace("-1.469003\tagua", "-inf\tagua");
    assert!(ArpaLm::load(&write("never.arpa", never)).is_ok());
    // Decoding options that cannot be meant are refused by name before anything loads.
    let model = fixture("w2v2_large");
    let clip = fixture("w2v2_large/clip.wav");
    let lm = fixture("decoder/lm.arpa");
    for (flag, value, want) in [
        ("--alpha", "NaN", "--alpha NaN"),
        ("--beta", "-inf", "--beta -inf"),
        ("--beam-width", "0", "--beam-width 0"),
        ("--beam-width", "100000", "--beam-width 100000"),
    ] {
        let flag_value = format!("{flag}={value}");
        let args: [&dyn AsRef<std::ffi::OsStr>; 7] = [
            &"transcribe",
            &"--lm",
            &lm,
            &flag_value,
            &"--model",
            &model,
            &clip,
        ];
        let e = common::xlsr_err(&args);
        assert!(e.contains(want), "{flag} {value}: {e}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Times the six fixture utterances with the default LM settings:
/// `cargo test --release --test decode -- --ignored --nocapture` (compare with
/// pyctcdecode's `decode` on the same logits).
#[test]
#[ignore]
fn time_beam_search() {
    let fx = expected();
    let (labels, lm) = fixture_decoder(&fx);
    let utts: Vec<Vec<f32>> = (0..6).map(|i| logits(&format!("utt{i}"))).collect();
    // Best of five rounds (this machine's timings vary by half).
    let reps = 10;
    let mut ms = f64::MAX;
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            for x in &utts {
                std::hint::black_box(decode(x, &labels, Some(&lm), &BeamOptions::default()));
            }
        }
        ms = ms.min(t0.elapsed().as_secs_f64() * 1e3 / (reps * utts.len()) as f64);
    }
    println!("beam search with LM: best of 5: {ms:.3} ms per utterance");
}

/// `xlsr lm build`: interpolated modified Kneser-Ney, written as ARPA; read back, every
/// conditional distribution over the vocabulary (`</s>` and `<unk>` included) sums to one,
/// for contexts of every order, seen and unseen (KenLM reads the same file to the same sums,
/// checked by hand with its Python module), with and without pruning; `.gz` is gzipped.
#[test]
fn kneser_ney_distributions_sum_to_one() {
    let dir = common::temp_dir("kn");
    let text = dir.join("text.txt");
    std::fs::write(
        &text,
        "El perro come pan.\nEl gato come pescado\nla casa es grande\nel perro es grande\n\
         La niña come pan con queso\nel niño bebe agua\nel perro bebe agua\n\nel perro come\n",
    )
    .unwrap();
    // Plain, and gzipped with singletons of order 3 pruned (their mass in the back-offs).
    let mut trigrams = Vec::new();
    for (name, prune) in [("lm.arpa", false), ("lm.arpa.gz", true)] {
        let arpa = dir.join(name);
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
            &"lm", &"build", &"--order", &"3", &"--text", &text, &"--out", &arpa,
        ];
        if prune {
            args.push(&"--prune-singletons");
        }
        let out = common::xlsr_ok(&args);
        assert!(out.contains("8 sentences"));
        let gzipped = std::fs::read(&arpa).unwrap().starts_with(&[0x1f, 0x8b]);
        assert_eq!(gzipped, prune);
        let lm = ArpaLm::load(&arpa).unwrap();
        assert_eq!(lm.order, 3);
        let vocab = check_sums(&lm);
        trigrams.push(out);
        // pyctcdecode's known words: every unigram but </s> carries a back-off.
        assert_eq!(lm.listed_unigrams().len(), vocab.len());
    }
    // "n-grams per order [a, b, c]": pruning leaves fewer trigrams.
    let count = |out: &str| -> usize {
        let list = out.split(['[', ']']).nth(1).unwrap();
        list.split(", ").nth(2).unwrap().parse().unwrap()
    };
    assert!(count(&trigrams[1]) < count(&trigrams[0]), "{trigrams:?}");
    let arpa = dir.join("lm.arpa");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_xlsr"))
        .env("XLSR_TUNE", "0")
        .args(["lm", "build", "--order", "0", "--text"])
        .arg(&text)
        .arg("--out")
        .arg(&arpa)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--order 0"));
    // Building again over an earlier model replaces it; nothing else is replaced: the text
    // itself (it once became the model), any other file; nor read from a pipe (read twice,
    // it was empty the second time and gave an empty model), a NUL byte, --order 1.
    let again: [&dyn AsRef<std::ffi::OsStr>; 8] = [
        &"lm", &"build", &"--order", &"2", &"--text", &text, &"--out", &arpa,
    ];
    common::xlsr_ok(&again);
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, "mine").unwrap();
    let nul = dir.join("nul.txt");
    std::fs::write(&nul, "el perro\nla \0casa\n").unwrap();
    let dev_null = std::path::Path::new("/dev/null");
    for (order, input, out, want) in [
        ("2", &text, &text, "--out is one of the --text files"),
        ("2", &text, &notes, "--out exists and is not an ARPA model"),
        ("2", &dev_null.to_path_buf(), &arpa, "not a regular file"),
        ("2", &nul, &arpa, "nul.txt: line 2: a NUL byte"),
        ("1", &text, &arpa, "--order 1"),
        ("2", &text, &dir, "--out is a folder"),
    ] {
        let e = common::xlsr_err(&[
            &"lm", &"build", &"--order", &order, &"--text", input, &"--out", out,
        ]);
        assert!(e.contains(want), "{want}: {e}");
    }
    let e = common::xlsr_err(&[
        &"lm", &"build", &"--text", &text, &"--text", &text, &"--out", &arpa,
    ]);
    assert!(e.contains("given twice as --text"), "{e}");
    assert!(std::fs::read_to_string(&text)
        .unwrap()
        .starts_with("El perro come pan."));
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "mine");
    assert_eq!(ArpaLm::load(&arpa).unwrap().order, 2);
    let _ = std::fs::remove_dir_all(dir);
}

/// Counting and estimating through temporary files (a memory budget far below the counts)
/// writes the same ARPA file, byte for byte, as doing it all in memory, with and without
/// pruning; the temporary files are gone afterwards.
#[test]
fn kneser_ney_through_disk_equals_in_memory() {
    use xlsr::decode::KneserNey;
    let dir = common::temp_dir("kn-disk");
    // 3,000 sentences of 3 to 10 words over 300 words, most of them rare.
    let mut rng = xlsr::rng::Rng::new(5);
    let sentences: Vec<String> = (0..3000)
        .map(|_| {
            let n = 3 + rng.below(8);
            (0..n)
                .map(|_| {
                    let top = 1 + rng.below(300);
                    format!("w{}", rng.below(top))
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let words = || {
        sentences
            .iter()
            .flat_map(|s| s.split(' ').map(String::from))
    };
    for prune in [false, true] {
        let mut files = Vec::new();
        for memory in [1 << 30, 0] {
            let mut kn = KneserNey::new(4, words(), memory, &dir).unwrap();
            for s in &sentences {
                kn.add_sentence(s).unwrap();
            }
            let out = dir.join(format!("{prune}-{memory}.arpa"));
            let built = kn.write_arpa(&out, prune).unwrap();
            assert_eq!(built.spilled > 0, memory == 0, "{built:?}");
            files.push(std::fs::read(&out).unwrap());
        }
        assert!(files[0] == files[1], "prune {prune}: the files differ");
        let lm = ArpaLm::load(&dir.join(format!("{prune}-0.arpa"))).unwrap();
        let vocab: Vec<String> = lm
            .unigrams()
            .filter(|w| *w != "<s>")
            .map(String::from)
            .collect();
        let contexts: [&[&str]; 5] = [
            &["<s>"],
            &["w1"],
            &["<s>", "w0", "w1"],
            &["w0", "w1", "w2"],
            &["w2", "w0", "w0"],
        ];
        sums_to_one(&lm, &vocab, &contexts);
    }
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".arpa"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The model's words but `<s>` after checking that its distributions sum to one after
/// contexts of every order, seen and unseen.
fn check_sums(lm: &ArpaLm) -> Vec<String> {
    let vocab: Vec<String> = lm
        .unigrams()
        .filter(|w| *w != "<s>")
        .map(String::from)
        .collect();
    assert!(vocab.iter().any(|w| w == "niña") && vocab.iter().any(|w| w == "<unk>"));
    // Normalised as prepare does: lowercase, punctuation gone.
    assert!(!vocab.iter().any(|w| w == "El" || w == "pan."));
    let contexts: [&[&str]; 8] = [
        &[],
        &["<s>"],
        &["el"],
        &["zzz"],
        &["<s>", "el"],
        &["el", "perro"],
        &["perro", "come"],
        &["zzz", "perro"],
    ];
    sums_to_one(lm, &vocab, &contexts);
    vocab
}

/// Asserts that after each of `contexts` the probabilities of `vocab` sum to one.
fn sums_to_one(lm: &ArpaLm, vocab: &[String], contexts: &[&[&str]]) {
    for ctx in contexts {
        let mut state = if ctx.first() == Some(&"<s>") {
            lm.begin_sentence()
        } else {
            lm.null_context()
        };
        for w in ctx.iter().filter(|w| **w != "<s>") {
            state = lm.score(&state, w).1;
        }
        let total: f64 = vocab
            .iter()
            .map(|w| 10f64.powf(lm.score(&state, w).0 as f64))
            .sum();
        assert!((total - 1.0).abs() < 1e-4, "{ctx:?}: {total}");
    }
}
