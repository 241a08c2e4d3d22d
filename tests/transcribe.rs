//! `xlsr transcribe` on the tiny fixture model: the logits of a 16-bit WAV equal transformers'
//! (Wav2Vec2FeatureExtractor normalisation, no attention mask) within 1e-4, the text is our
//! greedy CTC decoding of transformers' logits and equals transformers' own transcript
//! (`processor.decode` of the greedy ids, `clip.hf.txt`), `--logits` writes them, and bad files are
//! reported by name without stopping the others; `--logits` never overwrites audio.

mod common;
use common::*;
use safetensors::SafeTensors;
use std::path::Path;
use std::process::Command;
use xlsr::transcribe::Transcriber;

fn reference_logits() -> Vec<f32> {
    let bytes = std::fs::read(fixture("w2v2_large.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    bytemuck::pod_collect_to_vec(st.tensor("clip_logits").unwrap().data())
}

#[test]
fn logits_and_text_match_transformers() {
    let t = Transcriber::load(&gpu(), &fixture("w2v2_large")).unwrap();
    let r = t.transcribe(&fixture("w2v2_large/clip.wav")).unwrap();
    let want = reference_logits();
    assert_eq!(r.logits.len(), want.len());
    let err = max_abs_err(&r.logits, &want);
    assert!(err < 1e-4, "logits differ by {err}");
    let ids = xlsr::metrics::greedy_decode(&want, r.frames, 12).unwrap();
    assert_eq!(r.text, t.vocab.decode_ctc(&ids));
    assert!(!r.text.is_empty());
    // transformers' transcript of its own logits (greedy ids through `processor.decode`).
    let hf = std::fs::read_to_string(fixture("w2v2_large/clip.hf.txt")).unwrap();
    assert_eq!(r.text, hf.trim_end_matches('\n'));
}

#[test]
fn cli_prints_text_writes_logits_and_names_bad_files() {
    let out_file =
        std::env::temp_dir().join(format!("xlsr-logits-{}.safetensors", std::process::id()));
    let clip = fixture("w2v2_large/clip.wav");
    let out = Command::new(env!("CARGO_BIN_EXE_xlsr"))
        .env("XLSR_TUNE", "0")
        .env("XDG_RUNTIME_DIR", "/tmp")
        .args(["transcribe", "--model"])
        .arg(fixture("w2v2_large"))
        .arg("--logits")
        .arg(&out_file)
        .arg(&clip)
        .arg("/nonexistent/clip.mp3")
        .output()
        .unwrap();
    assert!(!out.status.success(), "a missing file must fail the run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.starts_with(&format!("{}\t", clip.display())),
        "{stdout}"
    );
    assert!(stderr.contains("/nonexistent/clip.mp3"), "{stderr}");
    let bytes = std::fs::read(&out_file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("clip.wav").unwrap();
    assert_eq!(t.shape(), &[399, 12]);
    let got: Vec<f32> = bytemuck::pod_collect_to_vec(t.data());
    let err = max_abs_err(&got, &reference_logits());
    assert!(err < 1e-4);

    let out = Command::new(env!("CARGO_BIN_EXE_xlsr"))
        .env("XLSR_TUNE", "0")
        .env("XDG_RUNTIME_DIR", "/tmp")
        .args(["transcribe", "--model", "/nonexistent/model"])
        .arg(&clip)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/model"), "{stderr}");
}

/// `transcribe --logits a.wav b.wav` (a forgotten output argument) once overwrote `a.wav` with
/// safetensors data: an output that is an input, or any existing audio file, is refused
/// before anything is written.
#[test]
fn logits_output_never_overwrites_audio() {
    let dir = std::env::temp_dir().join(format!("xlsr-logits-guard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("a.wav");
    std::fs::copy(fixture("w2v2_large/clip.wav"), &a).unwrap();
    let before = std::fs::read(&a).unwrap();
    // An audio file without an audio extension is recognised by its first bytes.
    let b = dir.join("b.out");
    std::fs::copy(fixture("w2v2_large/clip.wav"), &b).unwrap();
    let run = |logits: &Path, files: &[&Path]| {
        let out = Command::new(env!("CARGO_BIN_EXE_xlsr"))
            .env("XLSR_TUNE", "0")
            .env("XDG_RUNTIME_DIR", "/tmp")
            .args(["transcribe", "--model"])
            .arg(fixture("w2v2_large"))
            .arg("--logits")
            .arg(logits)
            .args(files)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&a, &[&fixture("w2v2_large/clip.wav"), &a]);
    assert!(!ok && err.contains("one of the input files"), "{err}");
    // The same file through another spelling of its path.
    let (ok, err) = run(&dir.join(".").join("a.wav"), &[&a]);
    assert!(!ok && err.contains("one of the input files"), "{err}");
    let (ok, err) = run(&a, &[&fixture("w2v2_large/clip.wav")]);
    assert!(!ok && err.contains("audio file"), "{err}");
    let (ok, err) = run(&b, &[&fixture("w2v2_large/clip.wav")]);
    assert!(!ok && err.contains("audio file"), "{err}");
    assert!(std::fs::read(&a).unwrap() == before, "a.wav was modified");
    assert!(std::fs::read(&b).unwrap() == before, "b.out was modified");
    // A fresh output file is written (through a temporary name that does not stay behind).
    let out = dir.join("l.safetensors");
    let (ok, err) = run(&out, &[&a]);
    assert!(ok, "{err}");
    assert!(SafeTensors::deserialize(&std::fs::read(&out).unwrap()).is_ok());
    assert!(!dir.join("l.safetensors.tmp").exists());
    // An earlier run's logits may be replaced; a model's weights or a text file may not
    // (`--logits model/model.safetensors` once destroyed the model it was reading).
    let (ok, err) = run(&out, &[&a]);
    assert!(ok, "{err}");
    let weights = dir.join("model.safetensors");
    std::fs::copy(fixture("w2v2_large/model.safetensors"), &weights).unwrap();
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, "keep me").unwrap();
    // 2-D f32 tensors alone do not make a file logits: only xlsr's tag does.
    let head = dir.join("head.safetensors");
    let w = [0.5f32; 12];
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![3, 4],
        bytemuck::cast_slice(&w),
    )
    .unwrap();
    std::fs::write(
        &head,
        safetensors::serialize([("lm_head.weight", view)], None).unwrap(),
    )
    .unwrap();
    for victim in [&weights, &notes, &head] {
        let before = std::fs::read(victim).unwrap();
        let (ok, err) = run(victim, &[&a]);
        assert!(!ok && err.contains("not an earlier run's logits"), "{err}");
        assert!(std::fs::read(victim).unwrap() == before);
    }
    // When every input fails, the earlier logits are not replaced by an empty file.
    let before = std::fs::read(&out).unwrap();
    let (ok, err) = run(&out, &[&dir.join("missing.wav")]);
    assert!(!ok, "{err}");
    assert!(std::fs::read(&out).unwrap() == before);
    let _ = std::fs::remove_dir_all(dir);
}

/// Messages that once misled: a clip too short names the real minimum (the encoder's
/// receptive field, not the first kernel), a folder is "a folder" (not "unsupported feature"),
/// a bad XLSR_MEMORY_LIMIT_GB is refused, and running out of memory under it says so.
#[test]
fn cli_messages_name_the_real_cause() {
    let t = Transcriber::load(&gpu(), &fixture("w2v2_large")).unwrap();
    let c = &t.model.config;
    let min = c.min_samples();
    assert_eq!((c.frames(min), c.frames(min - 1)), (1, 0));
    let dir = std::env::temp_dir().join(format!("xlsr-msg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let short = dir.join("short.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&short, spec).unwrap();
    for i in 0..(min - 1) {
        w.write_sample((i as i16).wrapping_mul(97)).unwrap();
    }
    w.finalize().unwrap();
    let e = t.transcribe(&short).err().unwrap().to_string();
    assert!(e.contains(&format!("needs at least {min}")), "{e}");
    let e = t.transcribe(&dir).err().unwrap().to_string();
    assert!(e.contains("is a folder"), "{e}");
    // Standard input and pipes are said to be unsupported (a pipe was called empty).
    let e = t.transcribe(Path::new("-")).err().unwrap().to_string();
    assert!(e.contains("standard input is not supported"), "{e}");
    let e = t
        .transcribe(Path::new("/dev/null"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a regular file"), "{e}");
    // A float WAV holding NaN or infinity is the file's fault, not the model's (its NaN logits
    // were once blamed on a degenerate weight).
    for (bad, name) in [(f32::NAN, "nan"), (f32::INFINITY, "inf")] {
        let path = dir.join(format!("{name}.wav"));
        let mut x: Vec<f32> = (0..16000).map(|i| 0.01 * (i % 7) as f32).collect();
        x[8000] = bad;
        common::write_float_wav(&path, &x);
        let e = t.transcribe(&path).err().unwrap().to_string();
        assert!(
            e.contains(&format!("{name}.wav"))
                && e.contains(&format!("sample 8000 (0.500 s) is {bad}")),
            "{e}"
        );
    }

    let cli = |limit: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_xlsr"))
            .env("XLSR_TUNE", "0")
            .env("XDG_RUNTIME_DIR", "/tmp")
            .env("XLSR_MEMORY_LIMIT_GB", limit)
            .args(["transcribe", "--model"])
            .arg(fixture("w2v2_large"))
            .arg(fixture("w2v2_large/clip.wav"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = cli("abc");
    assert!(!ok && err.contains("XLSR_MEMORY_LIMIT_GB=abc"), "{err}");
    let (ok, err) = cli("0.000001");
    assert!(
        !ok && err.contains("out of GPU memory") && err.contains("XLSR_MEMORY_LIMIT_GB=0.000001"),
        "{err}"
    );
    // Once: the engine error was also the library error's source, and printed again.
    assert_eq!(err.matches("out of GPU memory").count(), 1, "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Word timestamps: the words of the greedy ids (`Vocab::word_offsets`, checked against
/// transformers' `output_word_offsets` in `tests/data.rs`) at the fixture's 20 samples per
/// frame (conv strides 5, 2, 2) over 16 kHz; `--timestamps` prints them under the file's line
/// and `--json` as one object per file.
#[test]
fn word_timestamps() {
    let t = Transcriber::load(&gpu(), &fixture("w2v2_large")).unwrap();
    let clip = fixture("w2v2_large/clip.wav");
    let r = t.transcribe(&clip).unwrap();
    let ids = xlsr::metrics::greedy_decode(&r.logits, r.frames, 12).unwrap();
    let offsets = t.vocab.word_offsets(&ids);
    assert!(!offsets.is_empty());
    assert_eq!(r.words.len(), offsets.len());
    for (w, o) in r.words.iter().zip(&offsets) {
        assert_eq!(w.word, o.word);
        assert_eq!(w.start, o.start as f64 * 20.0 / 16000.0);
        assert_eq!(w.end, o.end as f64 * 20.0 / 16000.0);
        assert!(w.start < w.end && w.end <= r.frames as f64 * 20.0 / 16000.0);
    }
    let model = fixture("w2v2_large");
    let run = |flag: &str| xlsr_ok(&[&"transcribe", &flag, &"--model", &model, &clip]);
    let text = run("--timestamps");
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        format!("{}\t{}", clip.display(), r.text)
    );
    for w in &r.words {
        let want = format!("\t{}\t{:.2}\t{:.2}", w.word, w.start, w.end);
        assert_eq!(lines.next().unwrap(), want);
    }
    assert!(lines.next().is_none());
    let json: serde_json::Value = serde_json::from_str(run("--json").trim()).unwrap();
    assert_eq!(json["text"], r.text.as_str());
    assert_eq!(json["file"], clip.display().to_string().as_str());
    let words = json["words"].as_array().unwrap();
    assert_eq!(words.len(), r.words.len());
    assert_eq!(words[0]["word"], r.words[0].word.as_str());
    assert_eq!(words[0]["start"].as_f64().unwrap(), r.words[0].start);
    assert_eq!(words[0]["end"].as_f64().unwrap(), r.words[0].end);
}

/// Long audio in windows (`--chunk-seconds`, `--stride-seconds`) as transformers' ASR pipeline
/// cuts it (`chunk_length_s`, `stride_length_s`, tools/make_chunk_reference.py): the same
/// frame ids and text for the 0.5 s clip in 0.1 s windows with 0.02 s of context and in 0.2 s
/// windows with the default context; a clip shorter than a window gives the unchunked text.
#[test]
fn long_audio_in_windows_equals_the_pipeline() {
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("chunked.json")).unwrap()).unwrap();
    let mut t = Transcriber::load(&gpu(), &fixture("w2v2_large")).unwrap();
    let clip = fixture(fx["clip"].as_str().unwrap());
    let whole = t.transcribe(&clip).unwrap();
    assert_eq!(whole.text, fx["whole"].as_str().unwrap());
    let v = t.model.config.vocab_size;
    for case in fx["cases"].as_array().unwrap() {
        t.chunking = xlsr::transcribe::Chunking {
            chunk_seconds: case["chunk_seconds"].as_f64().unwrap(),
            stride_seconds: case["stride_seconds"].as_f64(),
        };
        let r = t.transcribe(&clip).unwrap();
        let ids: Vec<u64> = r
            .logits
            .chunks(v)
            .map(|row| {
                (0..v)
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                    .unwrap() as u64
            })
            .collect();
        let want: Vec<u64> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(ids, want, "{case}");
        assert_eq!(r.frames, want.len());
        assert_eq!(r.text, case["text"].as_str().unwrap());
    }
    // Bad windows are refused, naming the flags.
    t.chunking = xlsr::transcribe::Chunking {
        chunk_seconds: 0.1,
        stride_seconds: Some(0.05),
    };
    let e = t.transcribe(&clip).err().unwrap().to_string();
    assert!(e.contains("--chunk-seconds"), "{e}");
    // The command line says so once, before any file (not once per file).
    let e = common::xlsr_err(&[
        &"transcribe",
        &"--model",
        &fixture("w2v2_large"),
        &"--chunk-seconds",
        &"0.1",
        &"--stride-seconds",
        &"0.05",
        &clip,
        &clip,
    ]);
    assert!(
        e.matches("--chunk-seconds").count() == 1 && !e.contains("could not be transcribed"),
        "{e}"
    );
    // A window shorter than one frame of the encoder (it gave an empty transcript).
    let min = t.model.config.min_samples();
    let short = format!("{}", (min - 20) as f64 / 16000.0);
    let e = common::xlsr_err(&[
        &"transcribe",
        &"--model",
        &fixture("w2v2_large"),
        &"--chunk-seconds",
        &short,
        &"--stride-seconds",
        &"0",
        &clip,
    ]);
    assert!(e.contains(&format!("at least {min} samples")), "{e}");
}

/// A long file transcribed in windows needs no more device memory than a short one: 4 s and
/// 1 s of audio in 0.25 s windows peak alike, while 4 s in one piece needs more.
#[test]
fn windows_bound_the_memory() {
    let dir = temp_dir("long-audio");
    let peak = |seconds: usize, chunk: f64| -> u64 {
        let path = dir.join(format!("noise-{seconds}.wav"));
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        let mut rng = xlsr::rng::Rng::new(3);
        for _ in 0..seconds * 16000 {
            w.write_sample((rng.normal() * 3000.0) as i16).unwrap();
        }
        w.finalize().unwrap();
        let g = xlsr::Gpu::new().unwrap();
        let mut t = Transcriber::load(&g, &fixture("w2v2_large")).unwrap();
        t.chunking.chunk_seconds = chunk;
        let r = t.transcribe(&path).unwrap();
        assert_eq!(r.frames, seconds * 16000 / 20 - 1);
        g.peak_bytes()
    };
    let (short, long, whole) = (peak(1, 0.25), peak(4, 0.25), peak(4, 20.0));
    println!("peak device bytes: 1 s {short}, 4 s {long} in 0.25 s windows, 4 s whole {whole}");
    assert!(long <= short + short / 10, "{long} vs {short}");
    assert!(whole > 2 * long, "{whole} vs {long}");
    let _ = std::fs::remove_dir_all(dir);
}
