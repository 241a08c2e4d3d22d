//! `xlsr demo` end to end, shortened: prepare the built-in corpus, train a small wav2vec2 from
//! scratch, and see the training loss fall.

mod common;

#[test]
fn demo_loss_falls() {
    demo_case(false);
}

/// The same in fp16 with dynamic loss scaling (where the adapter has f16).
#[test]
fn demo_loss_falls_in_fp16() {
    if common::gpu().has_f16() {
        demo_case(true);
    } else {
        eprintln!("adapter has no SHADER_F16: fp16 demo not run");
    }
}

fn demo_case(fp16: bool) {
    let out = std::env::temp_dir().join(format!("xlsr-demo-{fp16}-{}", std::process::id()));
    let args = xlsr::demo::Options {
        steps: 30,
        clips: 8,
        out: out.clone(),
        data: None,
        eval_steps: 30,
        fp16,
    };
    let s = xlsr::demo::run(&common::gpu(), &args).unwrap();
    let first = s.losses.first().unwrap().1;
    let last = s.losses.last().unwrap().1;
    assert!(last < 0.8 * first, "fp16 {fp16}: loss {first} -> {last}");
    assert!(s.final_dir.join("model.safetensors").is_file());
    if !fp16 {
        // A rerun replaces the demo's own last run (README's first command, run twice).
        let again = xlsr::demo::Options {
            steps: 1,
            clips: 1,
            eval_steps: 1,
            ..args
        };
        assert_eq!(xlsr::demo::run(&common::gpu(), &again).unwrap().steps, 1);
    }
    let _ = std::fs::remove_dir_all(out);
}

/// The demo replaces only its own earlier run: a folder with other files (a final/ of
/// someone's, metrics) is refused before anything is written, and so are zero steps or clips,
/// by the demo's own flags.
#[test]
fn demo_never_replaces_what_is_not_its_own() {
    let out = common::temp_dir("demo-foreign");
    std::fs::create_dir_all(out.join("final")).unwrap();
    std::fs::write(out.join("final/notes.txt"), "precious").unwrap();
    std::fs::write(out.join("metrics.jsonl"), "m").unwrap();
    let args = xlsr::demo::Options {
        steps: 1,
        clips: 1,
        out: out.clone(),
        ..Default::default()
    };
    let e = xlsr::demo::run(&common::gpu(), &args)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an earlier demo's"), "{e}");
    assert_eq!(
        std::fs::read_to_string(out.join("final/notes.txt")).unwrap(),
        "precious"
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
    for (steps, clips) in [(0, 1), (1, 0)] {
        let zero = xlsr::demo::Options {
            steps,
            clips,
            ..args.clone()
        };
        let e = xlsr::demo::run(&common::gpu(), &zero)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("--steps {steps} --clips {clips}")),
            "{e}"
        );
    }
    // A file, not a folder: said so (before, the OS spoke of `FILE/prepared`).
    let file = out.join("metrics.jsonl");
    let e = xlsr::demo::run(&common::gpu(), &xlsr::demo::Options { out: file, ..args })
        .unwrap_err()
        .to_string();
    assert!(e.contains("metrics.jsonl: --out names a file"), "{e}");
    let _ = std::fs::remove_dir_all(out);
}
