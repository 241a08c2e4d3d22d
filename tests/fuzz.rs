//! Seeded random mutations of the files a user hands `xlsr`: the model's `config.json`, the
//! `model.safetensors` header, `vocab.json`, Common Voice TSV rows and WAV headers. Thousands
//! of cases; none may panic, and every error names its file. (No GPU: the readers are called
//! directly, as `transcribe`, `eval`, `train` and `prepare` call them.)

mod common;
use common::{fixture, temp_dir, Rng};
use std::path::Path;
use xlsr::data::{audio, corpus, Vocab};
use xlsr::model::{Checkpoint, Config};

fn pick<'a, T>(rng: &mut Rng, v: &'a [T]) -> &'a T {
    &v[rng.below(v.len())]
}

/// Truncates `s` to at most `n` bytes, at a character boundary.
fn cut(s: &mut String, mut n: usize) {
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    s.truncate(n);
}

/// Runs `f`, failing the test with `what` if it panics.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => panic!("panicked on {what}"),
    }
}

/// JSON values a careless edit might leave.
fn odd_value(rng: &mut Rng) -> serde_json::Value {
    use serde_json::json;
    let pool = [
        json!(0),
        json!(-1),
        json!(1),
        json!(2),
        json!(3),
        json!(0.5),
        json!(1.0),
        json!(-0.5),
        json!(1e30),
        json!(1e-30),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(4_294_967_296u64),
        json!(""),
        json!("gelu"),
        json!("layer"),
        json!("x"),
        json!(null),
        json!(true),
        json!([]),
        json!([0]),
        json!([0, 0, 0]),
        json!([1, 1, 1]),
        json!([5, 2, 2]),
        json!([10, 3, 3, 3]),
        json!({}),
        json!([-1, 2, 2]),
    ];
    pick(rng, &pool).clone()
}

#[test]
fn config_json_mutations() {
    let text = std::fs::read_to_string(fixture("w2v2_large/config.json")).unwrap();
    let base: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<String> = base.as_object().unwrap().keys().cloned().collect();
    let mut rng = Rng::new(12);
    let (mut ok, mut refused) = (0, 0);
    for case in 0..3000 {
        let mut v = base.clone();
        let obj = v.as_object_mut().unwrap();
        for _ in 0..1 + rng.below(3) {
            let k = pick(&mut rng, &keys).clone();
            if rng.uniform() < 0.1 {
                obj.remove(&k);
            } else if rng.uniform() < 0.2 {
                // One entry of a list.
                if let Some(a) = obj.get_mut(&k).and_then(|x| x.as_array_mut()) {
                    if !a.is_empty() {
                        let i = rng.below(a.len());
                        a[i] = odd_value(&mut rng);
                    }
                }
            } else {
                obj.insert(k, odd_value(&mut rng));
            }
        }
        let mut s = v.to_string();
        if case % 10 == 0 {
            // Truncated or garbled text.
            let n = rng.below(s.len());
            cut(&mut s, n);
        }
        match no_panic(&format!("config case {case}: {s}"), || {
            Config::from_json(&s)
        }) {
            Ok(c) => {
                ok += 1;
                // A config that loads gives frame counts without dividing by zero.
                no_panic(&format!("frames of case {case}"), || {
                    let _ = (c.frames(16000), c.min_samples(), c.frames(0));
                });
            }
            Err(e) => {
                refused += 1;
                let e = e.to_string();
                assert!(e.contains("config.json"), "case {case}: {e}");
            }
        }
    }
    assert!(ok > 100 && refused > 1000, "{ok} loaded, {refused} refused");
}

#[test]
fn safetensors_header_mutations() {
    let bytes = std::fs::read(fixture("w2v2_large/model.safetensors")).unwrap();
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let dir = temp_dir("st");
    let path = dir.join("model.safetensors");
    let mut rng = Rng::new(7);
    const NOISE: &[u8] = b"0123456789-.,:[]{}\" eE\x00\xff";
    for case in 0..600 {
        let mut b = bytes.clone();
        match case % 4 {
            // Digits and punctuation inside the JSON header (shapes, offsets, dtypes).
            0 | 1 => {
                for _ in 0..1 + rng.below(3) {
                    let i = 8 + rng.below(header - 8);
                    b[i] = *pick(&mut rng, NOISE);
                }
            }
            // The length prefix.
            2 => {
                let i = rng.below(8);
                b[i] = (rng.uniform() * 256.0) as u8;
            }
            // Truncated anywhere.
            _ => b.truncate(rng.below(b.len())),
        }
        std::fs::write(&path, &b).unwrap();
        let res = no_panic(&format!("safetensors case {case}"), || {
            let mut ck = Checkpoint::open(&dir)?;
            for name in ck.leftover() {
                let shape = ck.shape(&name).unwrap_or(&[]).to_vec();
                ck.take(&name, &shape)?;
            }
            Ok::<_, xlsr::Error>(())
        });
        if let Err(e) = res {
            let e = e.to_string();
            assert!(e.contains("model.safetensors"), "case {case}: {e}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn vocab_json_mutations() {
    let dir = temp_dir("vocab");
    let mut rng = Rng::new(5);
    let tokens = [
        "a", "b", "|", "[UNK]", "[PAD]", "<s>", "</s>", "ñ", "", " ", "ab",
    ];
    for case in 0..2000 {
        let mut obj = serde_json::Map::new();
        for _ in 0..rng.below(12) {
            let t = pick(&mut rng, &tokens).to_string();
            let id = if rng.uniform() < 0.7 {
                serde_json::json!(rng.below(14))
            } else {
                odd_value(&mut rng)
            };
            obj.insert(t, id);
        }
        let mut text = serde_json::Value::Object(obj).to_string();
        if case % 7 == 0 {
            let n = rng.below(text.len());
            cut(&mut text, n);
        }
        if case % 11 == 0 {
            text = "[1, 2]".into();
        }
        std::fs::write(dir.join("vocab.json"), &text).unwrap();
        if case % 3 == 0 {
            let cfg = r#"{"unk_token": "[UNK]", "pad_token": "<pad>", "bos_token": null}"#;
            std::fs::write(dir.join("tokenizer_config.json"), cfg).unwrap();
        } else {
            let _ = std::fs::remove_file(dir.join("tokenizer_config.json"));
        }
        let what = format!("vocab case {case}: {text}");
        match no_panic(&what, || Vocab::load(&dir)) {
            Ok(v) => no_panic(&what, || {
                let head = rng.below(16);
                if let Err(e) = v.check_head(&dir.join("vocab.json"), head) {
                    assert!(e.to_string().contains("vocab.json"), "{what}: {e}");
                }
                let ids = v.encode("hola ñ <s> ab|x");
                let _ = v.decode_ctc(&ids);
                let _ = v.decode(&[0, 1, 99, u32::MAX], false);
            }),
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains("vocab.json") || e.contains("tokenizer_config.json"),
                    "{what}: {e}"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tsv_row_mutations() {
    let dir = temp_dir("tsv");
    let mut rng = Rng::new(9);
    let pieces = [
        "\t",
        "\t",
        "\"",
        "\"\"",
        "..",
        "../",
        "/",
        "/etc/x.mp3",
        "a.mp3",
        "sub/b.mp3",
        " ",
        "hola",
        "ñ",
        "\r",
        "\u{feff}",
        "\\",
        "C:\\x.mp3",
        ".",
        "",
    ];
    for case in 0..1000 {
        let mut tsv = String::from("client_id\tpath\tsentence\tup_votes\n");
        let rows = rng.below(8);
        for _ in 0..rows {
            let mut line = String::new();
            for _ in 0..rng.below(10) {
                line += *pick(&mut rng, &pieces[..]);
            }
            tsv += &line;
            tsv.push('\n');
        }
        std::fs::write(dir.join("train.tsv"), &tsv).unwrap();
        let what = format!("tsv case {case}: {tsv:?}");
        match no_panic(&what, || corpus::read_common_voice(&dir, "train")) {
            Ok(t) => {
                assert!(t.rows.len() + t.malformed.len() <= rows, "{what}");
                for r in &t.rows {
                    // Every row read names a file inside clips/.
                    assert!(r.path.starts_with(dir.join("clips")), "{what}: {r:?}");
                    assert!(corpus::inside(Path::new(&r.id)), "{what}: {r:?}");
                }
                for m in &t.malformed {
                    assert!(m.file.ends_with("train.tsv") && m.line >= 2, "{what}");
                }
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn wav_header_mutations() {
    let bytes = std::fs::read(fixture("w2v2_large/clip.wav")).unwrap();
    let dir = temp_dir("wav");
    let mut rng = Rng::new(3);
    // A header saying 1 Hz once resampled 8000 samples into half a gigabyte per file.
    let mut slow = bytes.clone();
    slow[24..28].copy_from_slice(&1u32.to_le_bytes());
    slow[28..32].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(dir.join("slow.wav"), &slow).unwrap();
    let e = audio::load(&dir.join("slow.wav")).unwrap_err().to_string();
    assert!(
        e.contains("slow.wav") && e.contains("sample rate 1 Hz"),
        "{e}"
    );
    let (mut ok, mut refused) = (0, 0);
    for case in 0..1500 {
        let mut b = bytes.clone();
        match case % 3 {
            // Random bytes in the 44-byte header (format, channels, rate, sizes).
            0 | 1 => {
                for _ in 0..1 + rng.below(3) {
                    let i = rng.below(44);
                    b[i] = (rng.uniform() * 256.0) as u8;
                }
            }
            _ => b.truncate(rng.below(200)),
        }
        let path = dir.join(format!("c{}.wav", case % 8));
        std::fs::write(&path, &b).unwrap();
        match no_panic(&format!("wav case {case}"), || audio::load(&path)) {
            Ok(x) => {
                ok += 1;
                assert!(x.iter().all(|v| v.is_finite()), "wav case {case}");
            }
            Err(e) => {
                refused += 1;
                let e = e.to_string();
                assert!(
                    e.contains(&path.display().to_string()),
                    "wav case {case}: {e}"
                );
            }
        }
    }
    assert!(ok > 0 && refused > 0, "{ok} decoded, {refused} refused");
    let _ = std::fs::remove_dir_all(dir);
}
