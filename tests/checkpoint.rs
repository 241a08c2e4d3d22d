//! Checkpoint folders as people have them: f16 / bf16 weights, sharded files, pretraining
//! checkpoints without a CTC head, bare `Wav2Vec2Model` names, a folded positional-conv weight,
//! and the errors for missing, mis-shaped or non-finite tensors, bad config values, shard
//! indexes that leave the folder, and a model transcribe cannot use (no CTC head, a vocab.json
//! that does not fit it). Each case rewrites the tiny large-layout fixture into a temporary
//! folder.

mod common;
use common::*;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use xlsr::model::{Forward, Wav2Vec2ForCtc};
use xlsr::Tape;

type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/w2v2_large")
}

fn read_tensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, t)| (n, (t.dtype(), t.shape().to_vec(), t.data().to_vec())))
        .collect()
}

fn write_tensors(path: &Path, t: &Tensors) {
    let views: Vec<(String, TensorView)> = t
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// A temporary copy of the fixture model, with its tensors and config edited.
fn variant(
    name: &str,
    edit: impl FnOnce(&mut Tensors),
    edit_config: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xlsr-ckpt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut t = read_tensors(&fixture_dir().join("model.safetensors"));
    edit(&mut t);
    write_tensors(&dir.join("model.safetensors"), &t);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("config.json")).unwrap())
            .unwrap();
    edit_config(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir
}

fn f32_of(t: &(Dtype, Vec<usize>, Vec<u8>)) -> Vec<f32> {
    assert_eq!(t.0, Dtype::F32);
    bytemuck::pod_collect_to_vec(&t.2)
}

fn reference() -> Wav2Vec2ForCtc {
    Wav2Vec2ForCtc::load(&gpu(), &fixture_dir(), None, 0)
        .unwrap()
        .0
}

fn params(m: &Wav2Vec2ForCtc) -> BTreeMap<String, Vec<f32>> {
    m.params
        .iter()
        .map(|p| (p.name.clone(), p.value().to_vec().unwrap()))
        .collect()
}

fn logits(m: &Wav2Vec2ForCtc) -> Vec<f32> {
    let mut rng = Rng::new(3);
    let x = upload(&rng.vec(1200), &[1, 1200]);
    let tape = Tape::new();
    tape.no_grad(|| m.forward(&tape, &x, None, &Forward::default()))
        .unwrap()
        .logits
        .value
        .to_vec()
        .unwrap()
}

fn err_of(dir: &Path, vocab: Option<(usize, usize)>) -> String {
    match Wav2Vec2ForCtc::load(&gpu(), dir, vocab, 0) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn half_precision_weights_load_as_their_f32_values() {
    let want = params(&reference());
    for (tag, dtype) in [("f16", Dtype::F16), ("bf16", Dtype::BF16)] {
        let dir = variant(
            tag,
            |t| {
                for v in t.values_mut() {
                    let x = f32_of(v);
                    let bytes: Vec<u8> = if dtype == Dtype::F16 {
                        x.iter()
                            .flat_map(|&f| half::f16::from_f32(f).to_le_bytes())
                            .collect()
                    } else {
                        x.iter()
                            .flat_map(|&f| half::bf16::from_f32(f).to_le_bytes())
                            .collect()
                    };
                    *v = (dtype, v.1.clone(), bytes);
                }
            },
            |_| {},
        );
        let got = params(&Wav2Vec2ForCtc::load(&gpu(), &dir, None, 0).unwrap().0);
        for (name, w) in &want {
            let rounded: Vec<f32> = w
                .iter()
                .map(|&f| {
                    if dtype == Dtype::F16 {
                        half::f16::from_f32(f).to_f32()
                    } else {
                        half::bf16::from_f32(f).to_f32()
                    }
                })
                .collect();
            assert_eq!(got[name], rounded, "{tag} {name}");
        }
    }
}

#[test]
fn sharded_checkpoint_loads() {
    let dir = variant("sharded", |_| {}, |_| {});
    let t = read_tensors(&dir.join("model.safetensors"));
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let (mut a, mut b) = (Tensors::new(), Tensors::new());
    let mut map = serde_json::Map::new();
    for (i, (n, v)) in t.into_iter().enumerate() {
        let file = if i % 2 == 0 {
            "model-00001-of-00002.safetensors"
        } else {
            "model-00002-of-00002.safetensors"
        };
        map.insert(n.clone(), file.into());
        if i % 2 == 0 {
            a.insert(n, v)
        } else {
            b.insert(n, v)
        };
    }
    write_tensors(&dir.join("model-00001-of-00002.safetensors"), &a);
    write_tensors(&dir.join("model-00002-of-00002.safetensors"), &b);
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let got = params(&Wav2Vec2ForCtc::load(&gpu(), &dir, None, 0).unwrap().0);
    assert_eq!(got, params(&reference()));

    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = err_of(&dir, None);
    assert!(
        e.contains("model-00002-of-00002.safetensors") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn pretraining_checkpoint_gets_a_new_head() {
    let dir = variant(
        "pretraining",
        |t| {
            t.remove("lm_head.weight");
            t.remove("lm_head.bias");
            // A Wav2Vec2ForPreTraining checkpoint also carries these; they are not used.
            let f = |n: usize| (Dtype::F32, vec![n], vec![0u8; 4 * n]);
            t.insert("quantizer.codevectors".into(), f(6));
            t.insert("project_q.weight".into(), f(4));
            t.insert("project_hid.weight".into(), f(4));
        },
        |c| c["architectures"] = serde_json::json!(["Wav2Vec2ForPreTraining"]),
    );
    let (m, report) = Wav2Vec2ForCtc::load(&gpu(), &dir, Some((20, 19)), 7).unwrap();
    assert_eq!(report.initialised, ["lm_head.weight", "lm_head.bias"]);
    assert_eq!(
        report.ignored,
        [
            "project_hid.weight",
            "project_q.weight",
            "quantizer.codevectors"
        ]
    );
    assert_eq!(m.config.vocab_size, 20);
    assert_eq!(m.config.blank(), 19);
    assert_eq!(m.lm_head.weight.value().shape(), &[20, 32]);
    let w = m.lm_head.weight.value().to_vec().unwrap();
    let std = (w.iter().map(|v| (v * v) as f64).sum::<f64>() / w.len() as f64).sqrt();
    assert!((std - 0.02).abs() < 0.004, "head init std {std}");
    assert!(m
        .lm_head
        .bias
        .value()
        .to_vec()
        .unwrap()
        .iter()
        .all(|&v| v == 0.0));
    // The rest is the checkpoint's.
    let want = params(&reference());
    for (n, v) in params(&m) {
        if !n.starts_with("lm_head") {
            assert_eq!(v, want[&n], "{n}");
        }
    }
    // Without a vocabulary size a pretraining checkpoint still loads (config's vocab_size).
    let (m, _) = Wav2Vec2ForCtc::load(&gpu(), &dir, None, 7).unwrap();
    assert_eq!(m.lm_head.weight.value().shape(), &[12, 32]);
}

#[test]
fn bare_model_names_and_folded_weight_norm_load() {
    let dir = variant(
        "bare",
        |t| {
            let old = std::mem::take(t);
            for (n, v) in old {
                let n = n.strip_prefix("wav2vec2.").unwrap_or(&n).to_string();
                t.insert(n, v);
            }
            // Fold weight norm: weight = g * v / ||v|| (norm over dims 0, 1 per tap).
            let g = f32_of(
                &t.remove("encoder.pos_conv_embed.conv.parametrizations.weight.original0")
                    .unwrap(),
            );
            let vt = t
                .remove("encoder.pos_conv_embed.conv.parametrizations.weight.original1")
                .unwrap();
            let v = f32_of(&vt);
            let k = g.len();
            let mut sq = vec![0.0f64; k];
            for (i, &x) in v.iter().enumerate() {
                sq[i % k] += x as f64 * x as f64;
            }
            let w: Vec<f32> = v
                .iter()
                .enumerate()
                .map(|(i, &x)| (g[i % k] as f64 * x as f64 / sq[i % k].sqrt()) as f32)
                .collect();
            t.insert(
                "encoder.pos_conv_embed.conv.weight".into(),
                (Dtype::F32, vt.1, bytemuck::cast_slice(&w).to_vec()),
            );
        },
        |_| {},
    );
    let (m, report) = Wav2Vec2ForCtc::load(&gpu(), &dir, None, 0).unwrap();
    assert!(
        report.ignored.is_empty() && report.initialised.is_empty(),
        "{report:?}"
    );
    let (a, b) = (logits(&m), logits(&reference()));
    let err = max_abs_err(&a, &b);
    assert!(err < 1e-5, "folded weight norm changes logits by {err}");
}

#[test]
fn save_then_load_round_trips() {
    let m = reference();
    let dir = std::env::temp_dir().join(format!("xlsr-ckpt-save-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    m.save(&dir).unwrap();
    assert!(!dir.join("model.safetensors.tmp").exists());
    let (back, report) = Wav2Vec2ForCtc::load(&gpu(), &dir, None, 0).unwrap();
    assert!(report.ignored.is_empty() && report.initialised.is_empty());
    assert_eq!(params(&back), params(&m));
    assert_eq!(back.config.hidden_act, "gelu_new");
    assert!(back.config.do_stable_layer_norm);
}

#[test]
fn bad_checkpoints_name_the_tensor_or_file() {
    let q = "wav2vec2.encoder.layers.1.attention.q_proj.weight";
    let dir = variant(
        "missing",
        |t| {
            t.remove(q);
        },
        |_| {},
    );
    let e = err_of(&dir, None);
    assert!(e.contains(q) && e.contains("[32, 32]"), "{e}");

    let dir = variant(
        "shape",
        |t| {
            t.insert(q.into(), (Dtype::F32, vec![32, 31], vec![0; 32 * 31 * 4]));
        },
        |_| {},
    );
    let e = err_of(&dir, None);
    assert!(
        e.contains(q) && e.contains("[32, 31]") && e.contains("[32, 32]"),
        "{e}"
    );

    let dir = variant("bert", |_| {}, |c| c["model_type"] = "bert".into());
    let e = err_of(&dir, None);
    assert!(e.contains("config.json") && e.contains("bert"), "{e}");

    let dir = variant("headsize", |_| {}, |_| {});
    let e = err_of(&dir, Some((30, 29)));
    assert!(
        e.contains("has 12 outputs") && e.contains("30") && !e.contains("Some("),
        "{e}"
    );

    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = err_of(&dir, None);
    assert!(
        e.contains("config.json") && e.contains(&dir.display().to_string()),
        "{e}"
    );

    let dir = variant("noweights", |_| {}, |_| {});
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = err_of(&dir, None);
    assert!(e.contains("model.safetensors"), "{e}");

    let dir = variant("truncated", |_| {}, |_| {});
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = err_of(&dir, None);
    assert!(e.contains("model.safetensors"), "{e}");

    let e = err_of(Path::new("/nonexistent/model"), None);
    assert!(
        e.contains("/nonexistent/model") && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn padded_batch_equals_single_utterances() {
    // The layer-norm layout (XLSR) normalises per frame, so padding changes nothing.
    let m = reference();
    let mut rng = Rng::new(11);
    let lens = [1500usize, 1100, 640];
    let clips: Vec<Vec<f64>> = lens.iter().map(|&n| rng.vec(n)).collect();
    let mut padded = vec![0.0; 3 * 1500];
    for (i, c) in clips.iter().enumerate() {
        padded[i * 1500..i * 1500 + c.len()].copy_from_slice(c);
    }
    let tape = Tape::new();
    let out = tape
        .no_grad(|| {
            m.forward(
                &tape,
                &upload(&padded, &[3, 1500]),
                Some(&lens),
                &Forward::default(),
            )
        })
        .unwrap();
    let all = out.logits.value.to_vec().unwrap();
    let (t, v) = (out.logits.shape()[1], out.logits.shape()[2]);
    for (i, c) in clips.iter().enumerate() {
        let one = tape
            .no_grad(|| m.forward(&tape, &upload(c, &[1, c.len()]), None, &Forward::default()))
            .unwrap();
        let f = out.frames[i];
        assert_eq!(one.logits.shape()[1], f);
        let single = one.logits.value.to_vec().unwrap();
        let batch = &all[i * t * v..i * t * v + f * v];
        let err = max_abs_err(&single, batch);
        assert!(err < 1e-5, "utterance {i}: padded vs alone differ by {err}");
    }
}

/// Every config.json field the model uses is checked at load: an error naming config.json and
/// the field, never a panic (a conv stride of 0 once divided by zero).
#[test]
fn bad_config_values_name_the_field() {
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, &str, Edit); 16] = [
        // A value of the wrong type names its field (serde's message alone did not).
        ("hs_string", "hidden_size: invalid type: string", |c| {
            c["hidden_size"] = "32".into()
        }),
        ("pad_neg", "pad_token_id: invalid value", |c| {
            c["pad_token_id"] = (-1).into()
        }),
        // Strides whose product wraps to 0 (or is absurd) are the config's fault, not
        // --chunk-seconds'.
        ("stride_ovf", "conv_stride", |c| {
            c["conv_stride"] = serde_json::json!([4294967296u64, 4294967296u64, 1, 1, 1, 1, 1])
        }),
        ("kernel_huge", "conv_kernel", |c| {
            c["conv_kernel"][0] = 100_000_000.into()
        }),
        ("stride0", "conv_stride", |c| c["conv_stride"][1] = 0.into()),
        ("kernel0", "conv_kernel", |c| c["conv_kernel"][0] = 0.into()),
        ("dim0", "conv_dim", |c| c["conv_dim"][2] = 0.into()),
        ("eps0", "layer_norm_eps", |c| {
            c["layer_norm_eps"] = 0.0.into()
        }),
        ("epsneg", "layer_norm_eps", |c| {
            c["layer_norm_eps"] = (-1e-5).into()
        }),
        ("lengths", "conv_stride", |c| {
            c["conv_stride"] = serde_json::json!([5, 2])
        }),
        ("heads", "num_attention_heads", |c| {
            c["num_attention_heads"] = 5.into()
        }),
        ("groups", "num_conv_pos_embedding_groups", |c| {
            c["num_conv_pos_embedding_groups"] = 0.into()
        }),
        ("drop", "hidden_dropout", |c| {
            c["hidden_dropout"] = 1.5.into()
        }),
        ("layerdrop", "layerdrop", |c| c["layerdrop"] = 1.0.into()),
        ("masklen", "mask_time_length", |c| {
            c["mask_time_length"] = 0.into()
        }),
        ("reduction", "ctc_loss_reduction", |c| {
            c["ctc_loss_reduction"] = "max".into()
        }),
    ];
    for (name, field, edit) in cases {
        let dir = variant(&format!("cfg-{name}"), |_| {}, edit);
        let e = err_of(&dir, None);
        assert!(
            e.contains("config.json") && e.contains(field),
            "{name}: {e}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A weight that is NaN or inf (a diverged run's checkpoint) is refused at load, naming the
/// tensor; `xlsr eval` once reported `ctc_loss 0.0` for such a model.
#[test]
fn non_finite_weights_are_refused_by_name() {
    let name = "wav2vec2.encoder.layers.0.feed_forward.output_dense.weight";
    for (tag, bad) in [("nan", f32::NAN), ("inf", f32::INFINITY)] {
        let dir = variant(
            &format!("nonfinite-{tag}"),
            |t| {
                let e = t.get_mut(name).unwrap();
                e.2[4..8].copy_from_slice(&bad.to_le_bytes());
            },
            |_| {},
        );
        let e = err_of(&dir, None);
        assert!(
            e.contains(name) && e.contains("non-finite") && e.contains("model.safetensors"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// transcribe/eval need a fine-tuned model: no `lm_head.weight` (a pretraining checkpoint) is
/// refused rather than decoded with a random head, and vocab.json must fit the head (size,
/// duplicate ids).
#[test]
fn transcriber_needs_a_ctc_head_and_its_vocabulary() {
    use xlsr::transcribe::Transcriber;
    let vocab = std::fs::read_to_string(fixture_dir().join("vocab.json")).unwrap();
    let with_vocab = |dir: &Path, text: &str| std::fs::write(dir.join("vocab.json"), text).unwrap();
    let load_err = |dir: &Path| match Transcriber::load(&gpu(), dir) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    };

    let dir = variant(
        "nohead",
        |t| {
            t.remove("lm_head.weight");
            t.remove("lm_head.bias");
        },
        |_| {},
    );
    with_vocab(&dir, &vocab);
    let e = load_err(&dir);
    assert!(
        e.contains("lm_head.weight") && e.contains("xlsr train"),
        "{e}"
    );
    // `train` may still start from it (it creates the head, and says so).
    let (_, report) = Wav2Vec2ForCtc::load(&gpu(), &dir, Some((12, 11)), 0).unwrap();
    assert!(report.initialised.contains(&"lm_head.weight".to_string()));
    let _ = std::fs::remove_dir_all(dir);

    let dir = variant("vocab", |_| {}, |_| {});
    with_vocab(&dir, &vocab);
    assert!(Transcriber::load(&gpu(), &dir).is_ok());
    let tokens: Vec<String> = (0..30).map(|i| format!("\"t{i}\": {i}")).collect();
    for (what, text, want) in [
        ("too many", format!("{{{}}}", tokens.join(",")), "29"),
        (
            "too few",
            format!(
                "{{{}, \"|\": 6, \"[UNK]\": 7, \"[PAD]\": 8}}",
                tokens[..6].join(",")
            ),
            "no token for id 11",
        ),
        (
            "duplicate",
            vocab.replace("\"b\": 1", "\"b\": 0"),
            "share id 0",
        ),
    ] {
        with_vocab(&dir, &text);
        let e = load_err(&dir);
        assert!(e.contains("vocab.json") && e.contains(want), "{what}: {e}");
    }
    let _ = std::fs::remove_dir_all(dir);
    // The head's blank (config.json's pad_token_id) must be the tokenizer's pad token, or
    // greedy decoding would keep the blank as a letter and eval's CTC refuse every target.
    let dir = variant("padmismatch", |_| {}, |c| c["pad_token_id"] = 0.into());
    with_vocab(&dir, &vocab);
    let e = load_err(&dir);
    assert!(
        e.contains("pad_token_id is 0") && e.contains("id 11"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(dir);
    // A FIFO named vocab.json (or config.json) is refused, not read: the read blocked forever.
    let dir = variant("fifo", |_| {}, |_| {});
    let made = std::process::Command::new("mkfifo")
        .arg(dir.join("vocab.json"))
        .status()
        .is_ok_and(|s| s.success());
    if made {
        let (send, recv) = std::sync::mpsc::channel();
        let d = dir.clone();
        std::thread::spawn(move || {
            let _ = send.send(Transcriber::load(&gpu(), &d).err().map(|e| e.to_string()));
        });
        let e = recv
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("loading a folder with a FIFO for vocab.json hung");
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("not a regular file")),
            "{e:?}"
        );
        let _ = std::fs::remove_file(dir.join("vocab.json"));
    } else {
        eprintln!("no mkfifo here: the FIFO case is not run");
    }
    let _ = std::fs::remove_dir_all(dir);
    // Finite weights that still make NaN logits (a zero weight-norm direction) are an error,
    // not a transcript of one confident letter.
    let dir = variant(
        "nanlogits",
        |t| {
            let name = "wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original1";
            t.get_mut(name).unwrap().2.iter_mut().for_each(|b| *b = 0);
        },
        |_| {},
    );
    with_vocab(&dir, &vocab);
    let t = Transcriber::load(&gpu(), &dir).unwrap();
    let e = match t.transcribe(&fixture_dir().join("clip.wav")) {
        Ok(r) => panic!("transcribed NaN logits as {:?}", r.text),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("not finite") && e.contains("weight_v"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Shards must agree with their index: a tensor in two shards (the last file read once won
/// silently) or in another shard than the index says is an error naming both.
#[test]
fn shards_must_agree_with_their_index() {
    let dir = variant("shards", |_| {}, |_| {});
    let t = read_tensors(&dir.join("model.safetensors"));
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let names: Vec<String> = t.keys().cloned().collect();
    let (first, second): (Vec<_>, Vec<_>) = names.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let shard = |part: &[(usize, &String)], extra: Option<&str>| -> Tensors {
        part.iter()
            .map(|(_, n)| *n)
            .chain(extra.map(|e| names.iter().find(|n| *n == e).unwrap()))
            .map(|n| (n.clone(), t[n].clone()))
            .collect()
    };
    let index = |moved: Option<&str>| {
        let map: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let file = if (i % 2 == 0) != (moved == Some(n.as_str())) {
                    "a.safetensors"
                } else {
                    "b.safetensors"
                };
                (n.clone(), file.into())
            })
            .collect();
        let json = serde_json::json!({"metadata": {}, "weight_map": map});
        std::fs::write(dir.join("model.safetensors.index.json"), json.to_string()).unwrap();
    };
    write_tensors(&dir.join("a.safetensors"), &shard(&first, None));
    write_tensors(&dir.join("b.safetensors"), &shard(&second, None));
    index(None);
    assert!(Wav2Vec2ForCtc::load(&gpu(), &dir, None, 0).is_ok());
    let name = second[0].1.as_str();
    index(Some(name));
    let e = err_of(&dir, None);
    assert!(
        e.contains("weight_map puts") && e.contains(name) && e.contains("b.safetensors"),
        "{e}"
    );
    index(None);
    write_tensors(&dir.join("a.safetensors"), &shard(&first, Some(name)));
    let e = err_of(&dir, None);
    assert!(e.contains(name) && e.contains("is also in"), "{e}");
    // A tensor neither shard nor the index has is named with the files it was looked for
    // in, not a bare model.safetensors.
    let gone = first[0].1.as_str();
    write_tensors(&dir.join("a.safetensors"), &shard(&first[1..], None));
    let path = dir.join("model.safetensors.index.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["weight_map"].as_object_mut().unwrap().remove(gone);
    std::fs::write(&path, json.to_string()).unwrap();
    let e = err_of(&dir, None);
    assert!(
        e.contains(gone) && e.contains(&dir.join("a.safetensors").display().to_string()),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Checkpoint tensors the config leaves unused are named in a warning (a config that
/// disagrees with its weights, such as conv_bias false over saved conv biases, once ran other
/// arithmetic silently); a pretraining checkpoint's quantizer is expected and not named.
#[test]
fn unused_tensors_are_named() {
    let dir = variant(
        "unused",
        |t| {
            let b = t["wav2vec2.encoder.layer_norm.bias"].clone();
            t.insert(
                "wav2vec2.encoder.layers.7.final_layer_norm.bias".into(),
                b.clone(),
            );
            t.insert("quantizer.weight_proj.bias".into(), b);
        },
        |_| {},
    );
    let (_, report) = Wav2Vec2ForCtc::load(&gpu(), &dir, None, 0).unwrap();
    let w = report.unused_warning(&dir).unwrap();
    assert!(
        w.contains("layers.7.final_layer_norm.bias") && w.contains("1 checkpoint tensor is"),
        "{w}"
    );
    assert!(!w.contains("quantizer"), "{w}");
    let (_, report) = Wav2Vec2ForCtc::load(&gpu(), &fixture_dir(), None, 0).unwrap();
    assert_eq!(report.unused_warning(&fixture_dir()), None);
    let _ = std::fs::remove_dir_all(dir);
}

/// A sharded checkpoint's index may only name files inside the model folder.
#[test]
fn shard_index_stays_in_the_model_folder() {
    let dir = variant("escape", |_| {}, |_| {});
    let outside = dir.with_extension("outside.safetensors");
    std::fs::rename(dir.join("model.safetensors"), &outside).unwrap();
    let t = read_tensors(&outside);
    let name = outside.file_name().unwrap().to_string_lossy().into_owned();
    for target in [format!("../{name}"), outside.display().to_string()] {
        let map: serde_json::Map<String, serde_json::Value> = t
            .keys()
            .map(|k| (k.clone(), target.clone().into()))
            .collect();
        let index = serde_json::json!({"metadata": {}, "weight_map": map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        let e = err_of(&dir, None);
        assert!(
            e.contains("model.safetensors.index.json") && e.contains("outside the model folder"),
            "{target}: {e}"
        );
    }
    let _ = std::fs::remove_file(outside);
    let _ = std::fs::remove_dir_all(dir);
}
