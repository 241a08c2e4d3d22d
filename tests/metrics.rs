//! WER and CER against jiwer (fixture written by tools/make_train_reference.py with jiwer 4.0):
//! Spanish and Turkish text with accents and decomposed characters, empty and blank hypotheses,
//! an empty reference, insertions, deletions, substitutions, runs of spaces, a lone tab, newline
//! and no-break space; per pair and corpus-level, to 1e-9. Also greedy argmax decoding,
//! `metrics.jsonl` and the SVG plot. No GPU needed.

mod common;
use common::temp_dir;
use xlsr::metrics::{
    cer, cer_tokens, char_errors, greedy_decode, levenshtein, py_isspace, wer, wer_tokens,
    word_errors, MetricsLog,
};
use xlsr::plot::training_plot;

fn fixture() -> serde_json::Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/metrics.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn pairs(j: &serde_json::Value) -> Vec<(String, String, f64, f64)> {
    j["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["reference"].as_str().unwrap().to_string(),
                p["hypothesis"].as_str().unwrap().to_string(),
                p["wer"].as_f64().unwrap(),
                p["cer"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn wer_and_cer_match_jiwer_per_pair() {
    let j = fixture();
    let ps = pairs(&j);
    assert!(ps.len() >= 30);
    for (r, h, w, c) in &ps {
        let gw = wer(&[r], &[h]).unwrap();
        let gc = cer(&[r], &[h]).unwrap();
        assert!(
            (gw - w).abs() <= 1e-9,
            "wer({r:?}, {h:?}) = {gw}, jiwer {w}"
        );
        assert!(
            (gc - c).abs() <= 1e-9,
            "cer({r:?}, {h:?}) = {gc}, jiwer {c}"
        );
    }
}

#[test]
fn wer_and_cer_match_jiwer_on_corpora() {
    let j = fixture();
    let ps = pairs(&j);
    for case in j["corpus"].as_array().unwrap() {
        let idx: Vec<usize> = case["indices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as usize)
            .collect();
        let refs: Vec<&str> = idx.iter().map(|&i| ps[i].0.as_str()).collect();
        let hyps: Vec<&str> = idx.iter().map(|&i| ps[i].1.as_str()).collect();
        let name = case["name"].as_str().unwrap();
        let (w, c) = (case["wer"].as_f64().unwrap(), case["cer"].as_f64().unwrap());
        let (gw, gc) = (wer(&refs, &hyps).unwrap(), cer(&refs, &hyps).unwrap());
        println!("{name}: wer {gw} (jiwer {w}), cer {gc} (jiwer {c})");
        assert!((gw - w).abs() <= 1e-9, "{name}: wer {gw} vs {w}");
        assert!((gc - c).abs() <= 1e-9, "{name}: cer {gc} vs {c}");
        // Corpus rates are pooled counts, not a mean of per-pair rates.
        let mut counts = word_errors(&refs[..1], &hyps[..1]).unwrap();
        counts.add(word_errors(&refs[1..], &hyps[1..]).unwrap());
        assert_eq!(counts, word_errors(&refs, &hyps).unwrap());
    }
}

#[test]
fn whitespace_is_pythons() {
    let j = fixture();
    let want: Vec<u32> = j["isspace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap() as u32)
        .collect();
    let got: Vec<u32> = (0..=0x10FFFFu32)
        .filter(|&c| char::from_u32(c).is_some_and(py_isspace))
        .collect();
    assert_eq!(got, want);
    // A lone tab stays inside a word; two whitespace characters become a word break.
    assert_eq!(wer_tokens(" a\tb  c\u{a0}\u{a0}d "), vec!["a\tb", "c", "d"]);
    assert_eq!(cer_tokens("  ab c\n"), vec!['a', 'b', ' ', 'c']);
}

#[test]
fn edge_cases_and_bad_input() {
    assert_eq!(levenshtein::<u8>(&[], &[]), 0);
    assert_eq!(levenshtein(b"kitten", b"sitting"), 3);
    assert_eq!(levenshtein(b"abc", b""), 3);
    // Nothing at all: jiwer says 0.
    let none: [&str; 0] = [];
    assert_eq!(wer(&none, &none).unwrap(), 0.0);
    assert_eq!(char_errors(&none, &none).unwrap().ref_tokens, 0);
    assert!(wer(&["a"], &["a", "b"]).is_err());
    assert!(cer(&["a", "b"], &["a"]).is_err());
}

#[test]
fn greedy_decode_takes_the_first_maximum_of_valid_frames() {
    let logits = [
        0.1,
        0.7,
        0.2, // frame 0 -> 1
        3.0,
        3.0,
        -1.0, // tie -> first
        -5.0,
        -6.0,
        -4.0, // -> 2
        f32::NAN,
        9.0,
        1.0, // NaN counts as the maximum, as in torch.argmax
        0.0,
        1.0,
        f32::NAN, // -> 2
        9.0,
        0.0,
        0.0, // padding frame, ignored
    ];
    assert_eq!(greedy_decode(&logits, 5, 3).unwrap(), vec![1, 0, 2, 0, 2]);
    assert_eq!(greedy_decode(&logits, 0, 3).unwrap(), Vec::<u32>::new());
    assert!(greedy_decode(&logits, 7, 3).is_err());
    assert!(greedy_decode(&logits, 1, 0).is_err());
}

#[test]
fn metrics_log_appends_hf_named_rows() {
    let dir = temp_dir("metrics-log");
    {
        let mut log = MetricsLog::open(&dir).unwrap();
        log.train(10, 0.5, 3.25, 1.5e-4, 0.75).unwrap();
        // Visible on disk before the log is closed (flushed each write).
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 1);
        log.eval(20, 1.0, 2.5, 0.8, 0.3).unwrap();
    }
    // A resumed run appends to the same file.
    let mut log = MetricsLog::open(&dir).unwrap();
    log.train(30, 1.5, f64::NAN, 1e-4, 0.5).unwrap();
    let rows = MetricsLog::read(log.path()).unwrap();
    assert_eq!(rows.len(), 3);
    let keys = |i: usize| {
        let mut k: Vec<&str> = rows[i].keys().map(String::as_str).collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(0),
        ["epoch", "grad_norm", "learning_rate", "loss", "step"]
    );
    assert_eq!(
        keys(1),
        ["epoch", "eval_cer", "eval_loss", "eval_wer", "step"]
    );
    assert_eq!(rows[0]["learning_rate"].as_f64(), Some(1.5e-4));
    assert_eq!(rows[1]["eval_wer"].as_f64(), Some(0.8));
    assert!(rows[2]["loss"].is_null(), "NaN loss is written as null");
    assert_eq!(MetricsLog::series(&rows, "loss"), vec![(10, 3.25)]);
    assert_eq!(MetricsLog::series(&rows, "eval_cer"), vec![(20, 0.3)]);

    // A line torn by a kill mid-write is skipped; garbage in the middle is an error.
    let path = dir.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"step\": 40, \"lo");
    std::fs::write(&path, &text).unwrap();
    assert_eq!(MetricsLog::read(&path).unwrap().len(), 3);
    std::fs::write(&path, "{\"step\": 1}\nnot json\n{\"step\": 2}\n").unwrap();
    assert!(MetricsLog::read(&path).is_err());
    assert!(MetricsLog::open(&dir.join("missing/dir")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The `points="..."` lists of the SVG's polylines.
fn polylines(svg: &str) -> Vec<Vec<(f64, f64)>> {
    svg.split("<polyline")
        .skip(1)
        .map(|s| {
            let p = s.split("points=\"").nth(1).unwrap();
            p[..p.find('"').unwrap()]
                .split_whitespace()
                .map(|xy| {
                    let (x, y) = xy.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect()
        })
        .collect()
}

#[test]
fn plot_writes_an_svg_with_one_line_per_series() {
    let dir = temp_dir("plot");
    let path = dir.join("training.svg");
    let train: Vec<(u64, f64)> = (1..=50).map(|s| (s * 10, 5.0 / s as f64)).collect();
    let wer = [
        (100, 0.9),
        (200, 0.6),
        (300, f64::NAN),
        (400, 0.4),
        (500, 0.35),
    ];
    let cer = [(100, 0.5), (200, 0.3), (300, 0.2), (400, 0.15), (500, 0.12)];
    training_plot(&path, &train, &wer, &cer).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for label in ["training loss", "evaluation", "WER", "CER", "step"] {
        assert!(svg.contains(label), "no {label:?} in the plot");
    }
    // Data lines have one vertex per finite point (legend swatches have two).
    let lens: Vec<usize> = polylines(&svg).iter().map(Vec::len).collect();
    for n in [50, 4, 5] {
        assert!(lens.contains(&n), "no line of {n} points among {lens:?}");
    }
    // The loss falls, so its line goes down the image (SVG y grows downwards).
    let loss = polylines(&svg).into_iter().find(|l| l.len() == 50).unwrap();
    assert!(loss.last().unwrap().1 > loss[0].1);
    // Replaced in place, no temporary left; empty series still give a chart.
    training_plot(&path, &[], &[], &[]).unwrap();
    assert!(std::fs::read_to_string(&path).unwrap().contains("</svg>"));
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(left.len(), 1);
    assert!(training_plot(&dir.join("missing/x.svg"), &train, &wer, &cer).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
