//! The data pipeline: text normalisation (with Turkish), vocabulary building, the tokenizer
//! against Hugging Face fixtures (tools/make_tokenizer_reference.py), audio decoding of the
//! committed corpus, resampling quality, corpus parsing, `prepare` on the committed corpus with
//! its broken rows, length-grouped batching and padding (against transformers fixtures from
//! tools/make_batch_reference.py). No GPU, Python or network needed.

mod common;
use common::{max_abs_err, temp_dir};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use xlsr::data::audio::{self, SAMPLE_RATE};
use xlsr::data::batch::{self, length_grouped_indices, megabatch_size, Batcher, Example};
use xlsr::data::corpus;
use xlsr::data::prepare::{self, Options, Skip, Source};
use xlsr::data::text::TextNorm;
use xlsr::data::{ctc_min_frames, wav2vec2_frames, DataError, Vocab};
use xlsr::data::{Prepared, Split};

const CORPUS: &str = "data/demo-es";

fn fixture() -> Value {
    let text = std::fs::read_to_string("tests/fixtures/tokenizer.json").unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Text and vocabulary

#[test]
fn text_normalisation_matches_notebook() {
    let fx = fixture();
    let norm = TextNorm::default();
    let sentences = fx["sentences"].as_array().unwrap();
    let expected = fx["normalised"].as_array().unwrap();
    for (s, e) in sentences.iter().zip(expected) {
        // The notebook keeps whitespace runs; we collapse and trim them.
        let e = e.as_str().unwrap().split_whitespace().collect::<Vec<_>>();
        assert_eq!(norm.apply(s.as_str().unwrap()), e.join(" "), "{s}");
    }
    assert_eq!(
        norm.apply("¿Qué? ¡NO!  -- dijo: \"sí\"."),
        "¿qué ¡no dijo sí"
    );
    assert_eq!(norm.apply(" ... ?! "), "");
    let custom = TextNorm {
        chars_to_remove: "¿¡".into(),
        turkish: false,
    };
    assert_eq!(custom.apply("¿Qué?"), "qué?");
}

#[test]
fn turkish_lowercase() {
    let plain = TextNorm::default();
    let turkish = TextNorm {
        turkish: true,
        ..TextNorm::default()
    };
    let s = "İSTANBUL'DA IŞIK, Iğdır ve İzmir.";
    assert_eq!(turkish.apply(s), "istanbul'da ışık ığdır ve izmir");
    // Plain Unicode lowercasing, as Python's str.lower: I -> i, İ -> i + combining dot.
    assert_eq!(
        plain.apply(s),
        "i\u{307}stanbul'da işik iğdır ve i\u{307}zmir"
    );
}

#[test]
fn vocab_build_order() {
    let v = Vocab::build(["ba a", "c"]);
    let tokens: Vec<&str> = (0..v.len() as u32).map(|i| v.token(i).unwrap()).collect();
    assert_eq!(tokens, ["|", "a", "b", "c", "[UNK]", "[PAD]"]);
    assert_eq!((v.pad, v.unk), (5, 4));
    // No space anywhere: `|` is still there, before the special tokens.
    let v = Vocab::build(["ab"]);
    let tokens: Vec<&str> = (0..v.len() as u32).map(|i| v.token(i).unwrap()).collect();
    assert_eq!(tokens, ["a", "b", "|", "[UNK]", "[PAD]"]);

    // The notebook's vocabulary of the fixture sentences.
    let fx = fixture();
    let norm = TextNorm::default();
    let texts: Vec<String> = fx["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| norm.apply(s.as_str().unwrap()))
        .collect();
    let v = Vocab::build(texts.iter().map(String::as_str));
    let want = fx["cases"][0]["vocab"].as_object().unwrap();
    assert_eq!(v.len(), want.len());
    for (tok, id) in want {
        assert_eq!(v.id(tok), Some(id.as_u64().unwrap() as u32), "{tok}");
    }
}

#[test]
fn tokenizer_matches_hf_fixtures() {
    let fx = fixture();
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let dir = temp_dir(&format!("tok-{name}"));
        match case["files"].as_object() {
            // A folder as save_pretrained wrote it.
            Some(files) => {
                for (file, content) in files {
                    std::fs::write(dir.join(file), content.to_string()).unwrap();
                }
            }
            None => {
                std::fs::write(dir.join("vocab.json"), case["vocab"].to_string()).unwrap();
                std::fs::write(
                    dir.join("tokenizer_config.json"),
                    case["tokenizer_config"].to_string(),
                )
                .unwrap();
            }
        }
        let v = Vocab::load(&dir).unwrap();
        assert_eq!(v.len() as u64, case["len"].as_u64().unwrap(), "{name} len");
        if let Some(head) = case["head"].as_u64() {
            // The head a model fine-tuned with it has: added <s> and </s> lie past it.
            assert_eq!(v.head_size() as u64, head, "{name} head");
            v.check_head(&dir.join("vocab.json"), head as usize)
                .unwrap();
            // Saved and loaded again, it is the same tokenizer with the same head.
            let again = temp_dir(&format!("tok-{name}-again"));
            v.save(&again).unwrap();
            let w = Vocab::load(&again).unwrap();
            assert!(
                w.same_tokens(&v) && w.head_size() == v.head_size(),
                "{name} round trip"
            );
            std::fs::remove_dir_all(again).unwrap();
        }
        assert_eq!(v.pad as u64, case["pad_id"].as_u64().unwrap(), "{name} pad");
        assert_eq!(v.unk as u64, case["unk_id"].as_u64().unwrap(), "{name} unk");
        for e in case["encode"].as_array().unwrap() {
            let text = e[0].as_str().unwrap();
            assert_eq!(v.encode(text), ids(&e[1]), "{name}: encode {text:?}");
        }
        for d in case["decode"].as_array().unwrap() {
            let ids = ids(&d[0]);
            assert_eq!(
                v.decode_ctc(&ids),
                d[1].as_str().unwrap(),
                "{name}: {ids:?}"
            );
            assert_eq!(
                v.decode(&ids, false),
                d[2].as_str().unwrap(),
                "{name}: {ids:?}"
            );
            // Word offsets (`output_word_offsets=True`): word, first frame, end frame.
            let want: Vec<(String, usize, usize)> = d[3]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| {
                    let n = |i: usize| w[i].as_u64().unwrap() as usize;
                    (w[0].as_str().unwrap().to_string(), n(1), n(2))
                })
                .collect();
            let got: Vec<(String, usize, usize)> = v
                .word_offsets(&ids)
                .into_iter()
                .map(|w| (w.word, w.start, w.end))
                .collect();
            assert_eq!(got, want, "{name}: word offsets of {ids:?}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Training labels follow the model's tokenizer: an uppercase vocabulary (wav2vec2-base-960h)
/// gets the normalised (lowercase) corpus text uppercased; special tokens past the CTC head
/// (`<s>`, `</s>` of a fine-tuned folder) and characters the vocabulary lacks become the
/// unknown token and are reported.
#[test]
fn labels_follow_the_models_tokenizer() {
    let fx = fixture();
    let load = |name: &str| {
        let case = fx["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        let dir = temp_dir(&format!("labels-{name}"));
        let files = match case["files"].as_object() {
            Some(f) => f.clone(),
            None => [
                ("vocab.json".to_string(), case["vocab"].clone()),
                (
                    "tokenizer_config.json".to_string(),
                    case["tokenizer_config"].clone(),
                ),
            ]
            .into_iter()
            .collect(),
        };
        for (file, content) in files {
            std::fs::write(dir.join(file), content.to_string()).unwrap();
        }
        let v = Vocab::load(&dir).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        v
    };
    let upper = load("base960h");
    let l = upper.labels("it's a test");
    assert_eq!(l.ids, upper.encode("IT'S A TEST"));
    assert!(l.unknown.is_empty(), "{:?}", l.unknown);
    let l = upper.labels("ça va");
    assert_eq!(l.unknown, vec!["Ç".to_string()]);
    assert_eq!(l.ids[0], upper.unk);

    let saved = load("saved");
    assert!(saved.len() > saved.head_size());
    let l = saved.labels("<s> hola </s>");
    assert!(l.ids.iter().all(|&i| (i as usize) < saved.head_size()));
    assert_eq!(l.unknown, vec!["<s>".to_string(), "</s>".to_string()]);
    assert_eq!(l.ids.first(), Some(&saved.unk));
    assert_eq!(saved.labels("hola").ids, saved.encode("hola"));
    // A lowercase vocabulary leaves lowercase text alone.
    let notebook = load("notebook");
    assert_eq!(notebook.labels("hola que").ids, notebook.encode("hola que"));
}

#[test]
fn vocab_save_load_round_trip() {
    let v = Vocab::build(["hola que tal", "ñandú"]);
    let dir = temp_dir("vocab-save");
    v.save(&dir).unwrap();
    // The config is the one the HF fixtures were made with, so HF reads it the same way.
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg, fixture()["cases"][0]["tokenizer_config"]);
    let pre: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("preprocessor_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(pre["sampling_rate"], 16000);
    assert_eq!(pre["do_normalize"], true);
    let w = Vocab::load(&dir).unwrap();
    assert_eq!((w.len(), w.pad, w.unk), (v.len(), v.pad, v.unk));
    let ids = v.encode("hola ñandú");
    assert_eq!(w.encode("hola ñandú"), ids);
    assert_eq!(w.decode(&ids, false), "hola ñandú");
    // Loading needs vocab.json; a broken one is a clear error naming the file.
    std::fs::write(dir.join("vocab.json"), "{\"a\": \"x\"}").unwrap();
    let err = Vocab::load(&dir).unwrap_err().to_string();
    assert!(err.contains("vocab.json"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(Vocab::load(&dir).is_err());
}

#[test]
fn frame_counts() {
    // 1 s of 16 kHz audio gives 49 wav2vec2 frames; below 400 samples none.
    assert_eq!(wav2vec2_frames(16000), 49);
    assert_eq!(wav2vec2_frames(400), 1);
    assert_eq!(wav2vec2_frames(399), 0);
    assert_eq!(ctc_min_frames(&[1, 1, 2, 2, 2, 3]), 9);
    assert_eq!(ctc_min_frames(&[]), 0);
}

// ---------------------------------------------------------------------------------------------
// Audio

fn clip(name: &str) -> PathBuf {
    Path::new(CORPUS).join("clips").join(name)
}

#[test]
fn decode_committed_mp3() {
    let path = clip("common_voice_es_100000.mp3");
    let (native, rate) = audio::decode(&path).unwrap();
    assert_eq!(rate, 48000);
    let x = audio::load(&path).unwrap();
    assert_eq!(x.len(), (native.len() as f64 / 3.0).round() as usize);
    let secs = x.len() as f32 / SAMPLE_RATE as f32;
    assert!((0.8..5.0).contains(&secs), "{secs} s");
    let rms = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
    let peak = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(rms > 0.01 && peak <= 1.01, "rms {rms} peak {peak}");

    // Against an independent decoder: lame's 16-bit decode of the same file
    // (tools/make_audio_fixtures.sh). Both skip the encoder delay and padding (gapless), so
    // the lengths match and every sample agrees to within 16-bit rounding.
    let lame: Vec<f32> = hound::WavReader::open(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/audio/common_voice_es_100000.lame.wav"),
    )
    .unwrap()
    .into_samples::<i16>()
    .map(|s| s.unwrap() as f32 / 32768.0)
    .collect();
    assert_eq!(native.len(), lame.len());
    let err = max_abs_err(&lame, &native);
    assert!(err < 1e-4, "symphonia vs lame: max |err| {err}");
    assert!(native.iter().fold(0f32, |m, v| m.max(v.abs())) > 0.1);

    // The broken clips fail with an error naming the file, never a panic.
    for (name, what) in [
        ("common_voice_es_100033.mp3", "No such file"),
        ("common_voice_es_100034.mp3", "truncated"),
        ("common_voice_es_100035.mp3", "format"),
        ("common_voice_es_100036.mp3", "0 bytes"),
    ] {
        let err = audio::load(&clip(name)).unwrap_err().to_string();
        assert!(err.contains(name) && err.contains(what), "{err}");
    }
}

/// Best least-squares fit of `a sin(wt) + b cos(wt)` to `x`; returns (amplitude, residual rms).
fn fit_tone(x: &[f32], freq: f64, rate: f64) -> (f64, f64) {
    let w = 2.0 * std::f64::consts::PI * freq / rate;
    let (mut ss, mut sc, mut cc, mut xs, mut xc) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, &v) in x.iter().enumerate() {
        let (s, c) = (w * i as f64).sin_cos();
        ss += s * s;
        sc += s * c;
        cc += c * c;
        xs += v as f64 * s;
        xc += v as f64 * c;
    }
    let det = ss * cc - sc * sc;
    let a = (xs * cc - xc * sc) / det;
    let b = (xc * ss - xs * sc) / det;
    let res = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let (s, c) = (w * i as f64).sin_cos();
            (v as f64 - a * s - b * c).powi(2)
        })
        .sum::<f64>();
    ((a * a + b * b).sqrt(), (res / x.len() as f64).sqrt())
}

#[test]
fn resampler_keeps_frequency_and_timing() {
    for rate in [48000u32, 44100, 22050, 8000] {
        let n = rate as usize; // one second
        for freq in [100.0, 440.0, 1000.0, 3000.0, 3900.0] {
            if freq > 0.45 * rate as f64 {
                continue;
            }
            let w = 2.0 * std::f64::consts::PI * freq;
            let x: Vec<f32> = (0..n)
                .map(|i| (0.5 * (w * i as f64 / rate as f64).sin()) as f32)
                .collect();
            let y = audio::resample(&x, rate, SAMPLE_RATE).unwrap();
            assert_eq!(y.len(), 16000, "{rate} Hz");
            assert!(y.iter().all(|v| v.is_finite()), "{rate} Hz: not finite");
            // Away from the edges (where the tone starts abruptly) the output is the same
            // sine sampled at 16 kHz: same frequency, amplitude and phase, no delay.
            let mut max_err = 0f64;
            for (i, &v) in y.iter().enumerate().take(15200).skip(800) {
                let want = 0.5 * (w * i as f64 / 16000.0).sin();
                max_err = max_err.max((v as f64 - want).abs());
            }
            assert!(
                max_err < 2e-3,
                "{rate} Hz, {freq} Hz tone: max error {max_err}"
            );
        }
    }
}

#[test]
fn resampler_sweep_is_clean() {
    // A linear sweep 50 Hz -> 7 kHz over 2 s at 48 kHz and 44.1 kHz: compare with the sweep
    // computed at 16 kHz (instantaneous frequency kept, no delay, little noise).
    for rate in [48000u32, 44100] {
        let secs = 2.0;
        let (f0, f1) = (50.0, 7000.0);
        let phase =
            |t: f64| 2.0 * std::f64::consts::PI * (f0 * t + (f1 - f0) * t * t / (2.0 * secs));
        let n = (secs * rate as f64) as usize;
        let x: Vec<f32> = (0..n)
            .map(|i| (0.5 * phase(i as f64 / rate as f64).sin()) as f32)
            .collect();
        let y = audio::resample(&x, rate, SAMPLE_RATE).unwrap();
        assert_eq!(y.len(), 32000);
        let (mut err2, mut sig2) = (0.0, 0.0);
        for (i, &v) in y.iter().enumerate().take(31000).skip(1000) {
            let want = 0.5 * phase(i as f64 / 16000.0).sin();
            err2 += (v as f64 - want).powi(2);
            sig2 += want * want;
        }
        let snr_db = 10.0 * (sig2 / err2).log10();
        assert!(snr_db > 50.0, "{rate} Hz sweep: SNR {snr_db:.1} dB");
    }
}

#[test]
fn resampler_suppresses_aliases() {
    // Tones above the new Nyquist frequency (8 kHz) must not fold back into the band.
    for (rate, freq) in [
        (48000u32, 9000.0),
        (48000, 12000.0),
        (44100, 10000.0),
        (44100, 15000.0),
    ] {
        let w = 2.0 * std::f64::consts::PI * freq / rate as f64;
        let x: Vec<f32> = (0..rate as usize)
            .map(|i| (0.5 * (w * i as f64).sin()) as f32)
            .collect();
        let y = audio::resample(&x, rate, SAMPLE_RATE).unwrap();
        let alias = 16000.0 - freq; // where it would fold to
        let (amp, _) = fit_tone(&y[800..15200], alias, 16000.0);
        let rms = (y[800..15200].iter().map(|v| (v * v) as f64).sum::<f64>() / 14400.0).sqrt();
        assert!(
            amp < 5e-4 && rms < 5e-4,
            "{rate} Hz, {freq} Hz tone: alias amplitude {amp}, rms {rms} (input amplitude 0.5)"
        );
    }
}

#[test]
fn wav_stereo_and_formats() {
    let dir = temp_dir("wav");
    let n = 4410;
    let tone = |i: usize| (2.0 * std::f32::consts::PI * 441.0 * i as f32 / 44100.0).sin() * 0.5;
    // 16-bit stereo at 44.1 kHz: left tone, right silent -> mono tone at half amplitude.
    let path = dir.join("stereo.wav");
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 44100,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for i in 0..n {
        w.write_sample((tone(i) * 32767.0) as i16).unwrap();
        w.write_sample(0i16).unwrap();
    }
    w.finalize().unwrap();
    let (mono, rate) = audio::decode(&path).unwrap();
    assert_eq!((mono.len(), rate), (n, 44100));
    for (i, &v) in mono.iter().enumerate() {
        assert!((v - tone(i) / 2.0).abs() < 1e-4, "sample {i}");
    }
    assert_eq!(audio::load(&path).unwrap().len(), 1600);
    // 32-bit float mono at 16 kHz passes through untouched.
    let path = dir.join("float.wav");
    let ramp: Vec<f32> = (0..1000).map(|i| i as f32 / 1000.0).collect();
    common::write_float_wav(&path, &ramp);
    let x = audio::load(&path).unwrap();
    assert_eq!(x.len(), 1000);
    assert_eq!(x[500], 0.5);
    // A .wav that is not a WAV: an error naming it.
    let path = dir.join("bad.wav");
    std::fs::write(&path, b"RIFF garbage that is not a wave file at all").unwrap();
    assert!(matches!(audio::load(&path), Err(DataError::Audio { .. })));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn flac_and_ogg_vorbis() {
    // tools/make_audio_fixtures.sh: 0.5 s tones at amplitude 0.5.
    for (file, rate, freq, tol) in [
        ("tone440-44k-stereo.flac", 44100, 440.0, 1e-3),
        ("tone1k-48k.ogg", 48000, 1000.0, 2e-2),
    ] {
        let path = Path::new("tests/fixtures/audio").join(file);
        let (native, r) = audio::decode(&path).unwrap();
        assert_eq!((native.len(), r), (rate as usize / 2, rate), "{file}");
        let x = audio::load(&path).unwrap();
        assert_eq!(x.len(), 8000, "{file}");
        let (amp, residual) = fit_tone(&x[400..7600], freq, 16000.0);
        assert!(
            (amp - 0.5).abs() < tol && residual < tol,
            "{file}: amplitude {amp}, residual {residual}"
        );
    }
}

#[test]
fn normalize_as_feature_extractor() {
    let mut x: Vec<f32> = (0..10).map(|i| i as f32).collect();
    audio::normalize(&mut x);
    // numpy: (x - 4.5) / sqrt(8.25 + 1e-7)
    for (i, &v) in x.iter().enumerate() {
        let want = (i as f64 - 4.5) / (8.25f64 + 1e-7).sqrt();
        assert!((v as f64 - want).abs() < 1e-6);
    }
    let mut flat = vec![0.25f32; 8];
    audio::normalize(&mut flat);
    assert!(flat.iter().all(|&v| v == 0.0));
    audio::normalize(&mut []);
}

// ---------------------------------------------------------------------------------------------
// Corpus files

#[test]
fn common_voice_tsv_parsing() {
    let dir = temp_dir("cv-parse");
    // Read with quoting off (as Common Voice writes its TSVs): an older CV column order,
    // quotes inside sentences, CRLF endings, and malformed rows: a quoted field holding a tab,
    // extra and missing fields, a "quoted" sentence over two lines, and an opening quote with a
    // stray tab, which a quoting reader once joined with the next row up to that row's quote
    // (silently dropping it and polluting the vocabulary).
    let tsv = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent\r\n\
               c1\ta.mp3\tElla dijo \"hola\".\t2\t0\t\t\t\r\n\
               c2\tb.mp3\t\"Vamos\", gritó.\t2\t0\t\t\t\r\n\
               c3\tc.mp3\t\"con\ttab y \"\"comillas\"\"\"\t2\t0\t\t\t\r\n\
               c4\td.mp3\tdos\tcolumnas de más\t2\t0\t\t\t\r\n\
               c5\te.mp3\tcorta\r\n\
               \r\n\
               c6\tf.mp3\t\"dos\nlíneas\"\t2\t0\t\t\t\r\n\
               c7\tg.mp3\t\"Hola\tmundo\t2\t0\t\t\t\n\
               c8\th.mp3\tdijo \"sí\" y\t2\t0\t\t\t\n";
    std::fs::write(dir.join("train.tsv"), tsv).unwrap();
    let t = corpus::read_common_voice(&dir, "train").unwrap();
    let got: Vec<(&str, &str)> = t
        .rows
        .iter()
        .map(|r| (r.id.as_str(), r.sentence.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("a.mp3", "Ella dijo \"hola\"."),
            ("b.mp3", "\"Vamos\", gritó."),
            ("h.mp3", "dijo \"sí\" y"),
        ]
    );
    assert_eq!(t.rows[0].path, dir.join("clips").join("a.mp3"));
    assert_eq!(t.rows[0].split, "train");
    let bad: Vec<(usize, String)> = t
        .malformed
        .iter()
        .map(|m| (m.line, m.reason.clone()))
        .collect();
    assert_eq!(
        bad.iter().map(|b| b.0).collect::<Vec<_>>(),
        [4, 5, 6, 8, 9, 10],
        "{bad:?}"
    );
    assert_eq!(bad[0].1, "9 fields, expected 8");

    // Missing split file, missing column: clear errors naming the file.
    let err = corpus::read_common_voice(&dir, "dev")
        .unwrap_err()
        .to_string();
    assert!(err.contains("dev.tsv"), "{err}");
    std::fs::write(dir.join("test.tsv"), "client_id\tpath\ttext\n").unwrap();
    let err = corpus::read_common_voice(&dir, "test")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("test.tsv") && err.contains("sentence"),
        "{err}"
    );
    // Bytes that are not UTF-8 are found by line; an empty path is called empty.
    std::fs::write(
        dir.join("dev.tsv"),
        b"client_id\tpath\tsentence\nc1\ta.mp3\thola\nc2\tb.mp3\tca\xf1a\nc3\t\tvac\xc3\xado\n",
    )
    .unwrap();
    let err = corpus::read_common_voice(&dir, "dev")
        .unwrap_err()
        .to_string();
    assert!(err.contains("dev.tsv") && err.contains("line 3"), "{err}");
    std::fs::write(
        dir.join("dev.tsv"),
        "client_id\tpath\tsentence\nc3\t\tvacío\n",
    )
    .unwrap();
    let t = corpus::read_common_voice(&dir, "dev").unwrap();
    assert_eq!(t.malformed.len(), 1);
    assert_eq!(t.malformed[0].reason, "empty path");
    std::fs::write(dir.join("m.tsv"), "a.wav\tuno\n \tdos\n").unwrap();
    let t = corpus::read_manifest(&dir.join("m.tsv")).unwrap();
    assert_eq!(t.rows.len(), 1);
    assert_eq!(
        (t.malformed[0].line, t.malformed[0].reason.as_str()),
        (2, "empty path")
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A Common Voice `path` names a file in `clips/`: `..` and absolute paths are malformed rows
/// (counted as skipped, with a warning naming the TSV and the line), never read.
#[test]
fn common_voice_paths_stay_in_clips() {
    let dir = temp_dir("cv-escape");
    std::fs::create_dir_all(dir.join("clips/sub")).unwrap();
    let header = "client_id\tpath\tsentence\n";
    let tsv = format!(
        "{header}c1\t../secret.mp3\thola\n\
         c2\t/etc/passwd\thola\n\
         c3\tsub/../../secret.mp3\thola\n\
         c4\tsub/ok.mp3\thola\n\
         c5\t\thola\n"
    );
    std::fs::write(dir.join("train.tsv"), tsv).unwrap();
    std::fs::write(dir.join("dev.tsv"), header).unwrap();
    std::fs::write(dir.join("test.tsv"), header).unwrap();
    let t = corpus::read_common_voice(&dir, "train").unwrap();
    let ids: Vec<&str> = t.rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["sub/ok.mp3"]);
    let lines: Vec<usize> = t.malformed.iter().map(|m| m.line).collect();
    assert_eq!(lines, [2, 3, 4, 6]);
    assert!(
        t.malformed[0].reason.contains("leaves clips/"),
        "{:?}",
        t.malformed
    );

    // The one row inside clips/ is a real clip, so the corpus is usable.
    std::fs::copy(
        Path::new(CORPUS).join("clips/common_voice_es_100001.mp3"),
        dir.join("clips/sub/ok.mp3"),
    )
    .unwrap();
    let mut opts = Options::new(Source::common_voice(&dir), dir.join("prep"));
    opts.progress = false;
    let s = prepare::run(&opts).unwrap();
    assert_eq!(s.kept["train"], 1);
    assert_eq!(s.skipped_by_reason()[&Skip::MalformedRow], 4);
    let first = s
        .skipped
        .iter()
        .find(|k| k.reason == Skip::MalformedRow)
        .unwrap();
    assert!(first.file.ends_with("train.tsv"), "{first:?}");
    assert!(first.detail.starts_with("line 2:"), "{first:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn manifest_parsing() {
    let dir = temp_dir("manifest");
    std::fs::write(
        dir.join("m.tsv"),
        "path\tsentence\nwav/a.wav\thola\n/abs/b.flac\tqué tal\nsolo-una-columna\n",
    )
    .unwrap();
    let t = corpus::read_manifest(&dir.join("m.tsv")).unwrap();
    assert_eq!(t.rows.len(), 2);
    assert_eq!(t.rows[0].path, dir.join("wav/a.wav"));
    assert_eq!(t.rows[1].path, PathBuf::from("/abs/b.flac"));
    assert_eq!(t.rows[1].sentence, "qué tal");
    assert_eq!(t.malformed.len(), 1);
    std::fs::remove_dir_all(dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// prepare on the committed corpus

fn prepare_demo(name: &str) -> (PathBuf, prepare::Summary) {
    let out = temp_dir(name);
    let mut opts = Options::new(Source::common_voice(CORPUS), &out);
    opts.progress = false;
    let summary = prepare::run(&opts).unwrap();
    (out, summary)
}

#[test]
fn prepare_demo_corpus() {
    let (out, summary) = prepare_demo("prepare");
    assert_eq!(summary.kept["train"], 27);
    assert_eq!(summary.kept["test"], 6);
    let by_reason = summary.skipped_by_reason();
    let want: BTreeMap<Skip, usize> = [
        (Skip::MalformedRow, 1),
        (Skip::EmptySentence, 1),
        (Skip::MissingClip, 1),
        (Skip::EmptyClip, 1),
        (Skip::BadAudio, 2),
        (Skip::TooLong, 1),
        (Skip::LabelTooLong, 1),
    ]
    .into();
    assert_eq!(by_reason, want);
    let named: Vec<(Skip, String)> = summary
        .skipped
        .iter()
        .map(|s| {
            (
                s.reason,
                s.file.file_name().unwrap().to_string_lossy().into_owned(),
            )
        })
        .collect();
    for (reason, file) in [
        (Skip::MalformedRow, "train.tsv"),
        (Skip::EmptySentence, "common_voice_es_100037.mp3"),
        (Skip::MissingClip, "common_voice_es_100033.mp3"),
        (Skip::BadAudio, "common_voice_es_100034.mp3"),
        (Skip::BadAudio, "common_voice_es_100035.mp3"),
        (Skip::EmptyClip, "common_voice_es_100036.mp3"),
        (Skip::TooLong, "common_voice_es_100039.mp3"),
        (Skip::LabelTooLong, "common_voice_es_100040.mp3"),
    ] {
        assert!(
            named.contains(&(reason, file.to_string())),
            "{reason}: {file}"
        );
    }

    let p = Prepared::open(&out).unwrap();
    assert_eq!(p.vocab.len(), summary.vocab_size);
    assert_eq!(p.vocab.token(p.vocab.pad), Some("[PAD]"));
    assert_eq!((p.train.len(), p.test.len()), (27, 6));
    // train = train.tsv then dev.tsv.
    assert_eq!(p.train[0].split, "train");
    assert_eq!(p.train.last().unwrap().split, "dev");
    assert_eq!(p.train[0].text, "hola ¿cómo estás");
    for u in p.train.iter().chain(&p.test) {
        let x = p.audio(u).unwrap();
        assert_eq!(x.len(), u.samples);
        assert!(u.seconds() > 0.5 && u.seconds() <= 10.0);
        assert_eq!(p.vocab.decode(&u.labels, false), u.text);
        assert!(wav2vec2_frames(u.samples) >= ctc_min_frames(&u.labels));
    }
    // The cache holds what decoding gives.
    let direct = audio::load(&clip(&p.test[2].id)).unwrap();
    assert_eq!(p.audio(&p.test[2]).unwrap(), direct);

    // Same settings again: reused, nothing decoded.
    let mut opts = Options::new(Source::common_voice(CORPUS), &out);
    opts.progress = false;
    let again = prepare::run(&opts).unwrap();
    assert!(again.reused);
    assert_eq!(again.kept, summary.kept);
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn prepare_errors() {
    let out = temp_dir("prepare-errors");
    let mut opts = Options::new(Source::common_voice(out.join("nope")), out.join("prep"));
    opts.progress = false;
    let err = prepare::run(&opts).unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");
    // A folder without train.tsv.
    let mut opts = Options::new(Source::common_voice(&out), out.join("prep"));
    opts.progress = false;
    let err = prepare::run(&opts).unwrap_err().to_string();
    assert!(err.contains("train.tsv"), "{err}");
    assert!(Prepared::open(&out.join("prep")).is_err());
    // --max-seconds must be a positive number.
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let mut opts = Options::new(Source::common_voice(CORPUS), out.join("prep"));
        opts.progress = false;
        opts.max_seconds = bad;
        let err = prepare::run(&opts).unwrap_err().to_string();
        assert!(err.contains("--max-seconds"), "{bad}: {err}");
    }
    assert!(!out.join("prep").exists());
    // --out over a folder that is no prepared corpus (a model's: its vocab.json would be
    // replaced) is refused before anything is written.
    let model = out.join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("vocab.json"), "{\"a\": 0}").unwrap();
    std::fs::write(model.join("config.json"), "{}").unwrap();
    let mut opts = Options::new(Source::common_voice(CORPUS), &model);
    opts.progress = false;
    let err = prepare::run(&opts).unwrap_err().to_string();
    assert!(
        err.contains("no prepared corpus") && err.contains("vocab.json"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(model.join("vocab.json")).unwrap(),
        "{\"a\": 0}"
    );
    assert_eq!(std::fs::read_dir(&model).unwrap().count(), 2);
    let mut opts = Options::new(Source::common_voice(CORPUS), model.join("config.json"));
    opts.progress = false;
    let err = prepare::run(&opts).unwrap_err().to_string();
    assert!(err.contains("config.json: --out names a file"), "{err}");
    // A corpus with no usable clip replaces nothing: the earlier cache in --out stays whole.
    let prep = out.join("prep");
    let clip = std::fs::canonicalize(Path::new(CORPUS).join("clips/common_voice_es_100001.mp3"));
    let good = out.join("good.tsv");
    std::fs::write(&good, format!("{}\tuno\n", clip.unwrap().display())).unwrap();
    let bad = out.join("bad.tsv");
    std::fs::write(&bad, "missing.mp3\thola\n").unwrap();
    let manifest = |train: &Path| Source::Manifests {
        train: vec![train.to_path_buf()],
        test: vec![],
    };
    let mut opts = Options::new(manifest(&good), &prep);
    opts.progress = false;
    prepare::run(&opts).unwrap();
    let before = std::fs::read(prep.join("audio.f32")).unwrap();
    opts.source = manifest(&bad);
    let err = prepare::run(&opts).unwrap_err().to_string();
    assert!(err.contains("no usable clips"), "{err}");
    assert_eq!(Prepared::open(&prep).unwrap().train.len(), 1);
    assert!(std::fs::read(prep.join("audio.f32")).unwrap() == before);
    // Same settings, same manifest: reused. The manifest edited (a second clip): prepared again
    // (the cache was once reused, and the new clip never trained on).
    opts.source = manifest(&good);
    assert!(prepare::run(&opts).unwrap().reused);
    let two = std::fs::canonicalize(Path::new(CORPUS).join("clips/common_voice_es_100002.mp3"));
    let mut text = std::fs::read_to_string(&good).unwrap();
    text += &format!(
        "{}	dos
",
        two.unwrap().display()
    );
    std::fs::write(&good, text).unwrap();
    let summary = prepare::run(&opts).unwrap();
    assert!(!summary.reused);
    assert_eq!(Prepared::open(&prep).unwrap().train.len(), 2);
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn prepare_from_manifest() {
    let out = temp_dir("prepare-manifest");
    let clips = std::fs::canonicalize(Path::new(CORPUS).join("clips")).unwrap();
    let m = out.join("train.tsv");
    std::fs::write(
        &m,
        format!(
            "{}/common_voice_es_100001.mp3\tEl perro come pan.\nmissing.wav\thola\n",
            clips.display()
        ),
    )
    .unwrap();
    let mut opts = Options::new(
        Source::Manifests {
            train: vec![m.clone()],
            test: vec![],
        },
        out.join("prep"),
    );
    opts.progress = false;
    opts.max_seconds = 5.0;
    let s = prepare::run(&opts).unwrap();
    assert_eq!((s.kept["train"], s.kept["test"]), (1, 0));
    assert_eq!(s.skipped_by_reason()[&Skip::MissingClip], 1);
    std::fs::remove_dir_all(out).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Batching and padding

fn lengths(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = xlsr::rng::Rng::new(seed);
    (0..n)
        .map(|_| 16000 + (rng.next_u64() % 144000) as usize)
        .collect()
}

#[test]
fn length_grouping_as_hf() {
    let lens = lengths(1000, 1);
    let bs = 4;
    let mb = megabatch_size(lens.len(), bs);
    assert_eq!(mb, 50 * bs);
    assert_eq!(megabatch_size(10, 4), 4);
    assert_eq!(megabatch_size(100, 4), 24);

    let order = length_grouped_indices(&lens, bs, 7);
    assert_eq!(order, length_grouped_indices(&lens, bs, 7), "reproducible");
    assert_ne!(order, length_grouped_indices(&lens, bs, 8), "seeded");
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..lens.len()).collect::<Vec<_>>(), "a permutation");
    // The longest clip comes first; each mega-batch is sorted longest first (only the first
    // elements of the first mega-batch and the longest one's were swapped).
    let longest = *lens.iter().max().unwrap();
    assert_eq!(lens[order[0]], longest);
    let mut unsorted_heads = 0;
    for m in order.chunks(mb) {
        assert!(m[1..].windows(2).all(|w| lens[w[0]] >= lens[w[1]]));
        unsorted_heads += usize::from(lens[m[0]] < lens[m[1]]);
    }
    assert!(unsorted_heads <= 1);
}

#[test]
fn grouping_and_padding_match_hf_fixtures() {
    let text = std::fs::read_to_string("tests/fixtures/batching.json").unwrap();
    let fx: Value = serde_json::from_str(&text).unwrap();
    let usizes = |v: &Value| -> Vec<usize> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect()
    };
    // Same permutation as torch drew -> same order as transformers' get_length_grouped_indices.
    for case in fx["grouping"].as_array().unwrap() {
        let lengths = usizes(&case["lengths"]);
        let bs = case["batch_size"].as_u64().unwrap() as usize;
        let got = batch::group_by_length(&usizes(&case["permutation"]), &lengths, bs);
        assert_eq!(got, usizes(&case["grouped"]), "n {} bs {bs}", lengths.len());
    }
    // Wav2Vec2FeatureExtractor: per-clip normalisation over valid samples, zero padding.
    let pad = &fx["padding"];
    let f32s = |v: &Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let examples: Vec<Example> = pad["clips"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, c)| Example {
            id: i.to_string(),
            audio: f32s(c),
            labels: vec![],
        })
        .collect();
    let b = batch::pad(examples);
    let want: Vec<f32> = pad["input_values"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(f32s)
        .collect();
    let mask: Vec<f32> = pad["attention_mask"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(f32s)
        .collect();
    assert_eq!(b.audio.len(), want.len());
    let err = max_abs_err(&b.audio, &want);
    assert!(err < 1e-5, "max error {err}");
    assert_eq!(b.attention_mask(), mask);
}

#[test]
fn batcher_epochs() {
    let lens = lengths(203, 2);
    let b = Batcher::new(lens.clone(), 8, 42, None);
    let e0 = b.epoch(0);
    assert_eq!(e0, b.epoch(0));
    assert_ne!(e0, b.epoch(1));
    for e in [0, 1, 5] {
        let batches = b.epoch(e);
        let all: Vec<usize> = batches.concat();
        assert_eq!(all.len(), 203);
        assert_eq!(
            all.iter().collect::<HashSet<_>>().len(),
            203,
            "each index once"
        );
        assert!(batches.iter().all(|x| !x.is_empty() && x.len() <= 8));
        assert_eq!(batches.len(), 26);
    }
    // Capped by padded seconds: batch size x longest clip <= 30 s (one clip alone may exceed).
    let capped = Batcher::new(lens.clone(), 8, 42, Some(30.0));
    let batches = capped.epoch(3);
    assert_eq!(batches.concat().len(), 203);
    for x in &batches {
        let longest = x.iter().map(|&i| lens[i]).max().unwrap();
        assert!(x.len() == 1 || x.len() * longest <= 30 * 16000, "{x:?}");
        assert!(x.len() <= 8);
    }
    assert!(batches.len() > 26);
    assert!(Batcher::new(vec![], 8, 0, None).epoch(0).is_empty());
    assert_eq!(Batcher::new(vec![5], 8, 0, Some(0.0)).epoch(0), [vec![0]]);
}

#[test]
fn padding_and_masks() {
    let ex = |id: &str, n: usize, labels: &[u32]| Example {
        id: id.into(),
        audio: (0..n).map(|i| (i % 7) as f32 * 0.1 + 1.0).collect(),
        labels: labels.to_vec(),
    };
    let b = batch::pad(vec![
        ex("a", 500, &[1, 2, 3]),
        ex("b", 800, &[4]),
        ex("c", 10, &[]),
    ]);
    assert_eq!(b.len(), 3);
    assert_eq!((b.max_samples, b.targets.width), (800, 3));
    assert_eq!(b.audio.len(), 3 * 800);
    assert_eq!(b.audio_lengths, [500, 800, 10]);
    assert_eq!(b.targets.lengths, [3, 1, 0]);
    assert_eq!(b.targets.ids, [1, 2, 3, 4, 0, 0, 0, 0, 0]);
    assert_eq!(b.targets.row(1), [4]);
    assert_eq!(b.ids, ["a", "b", "c"]);
    for (row, &n) in b.audio_lengths.iter().enumerate() {
        let r = &b.audio[row * 800..(row + 1) * 800];
        let mean = r[..n].iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = r[..n]
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        assert!(
            mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3,
            "row {row}: {mean} {var}"
        );
        assert!(r[n..].iter().all(|&v| v == 0.0), "row {row} padding");
    }
    let mask = b.attention_mask();
    assert_eq!(mask.iter().filter(|&&m| m == 1.0).count(), 1310);
    assert_eq!(mask[799], 0.0);
    assert_eq!(mask[800 + 799], 1.0);
    let frames: Vec<usize> = b
        .audio_lengths
        .iter()
        .map(|&n| wav2vec2_frames(n))
        .collect();
    assert_eq!(frames, [1, 2, 0]);
}

#[test]
fn collate_from_prepared() {
    let (out, _) = prepare_demo("collate");
    let p = Prepared::open(&out).unwrap();
    let batcher = Batcher::new(p.lengths(Split::Train), 4, 0, None);
    let batches = batcher.epoch(0);
    assert_eq!(batches.len(), 7);
    let b = batch::collate(&p, Split::Train, &batches[0]).unwrap();
    assert_eq!(b.len(), 4);
    // The first batch holds the longest clip; rows keep the batcher's order.
    let longest = p.train.iter().map(|u| u.samples).max().unwrap();
    assert_eq!(b.max_samples, longest);
    for (row, &i) in batches[0].iter().enumerate() {
        let u = &p.train[i];
        assert_eq!(b.ids[row], u.id);
        assert_eq!(b.audio_lengths[row], u.samples);
        assert_eq!(b.targets.row(row), u.labels);
    }
    assert!(batch::collate(&p, Split::Test, &[99]).is_err());
    std::fs::remove_dir_all(out).unwrap();
}
