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
    let _ = std::fs::remove_dir_all(out);
}
