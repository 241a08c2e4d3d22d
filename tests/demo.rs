//! `xlsr demo` end to end, shortened: prepare the built-in corpus, train a small wav2vec2 from
//! scratch, and see the training loss fall.

mod common;

#[test]
fn demo_loss_falls() {
    let out = std::env::temp_dir().join(format!("xlsr-demo-{}", std::process::id()));
    let args = xlsr::demo::DemoArgs {
        steps: 30,
        clips: 8,
        out: out.clone(),
        data: None,
        eval_steps: 30,
    };
    let s = xlsr::demo::run(&common::gpu(), &args).unwrap();
    let first = s.losses.first().unwrap().1;
    let last = s.losses.last().unwrap().1;
    assert!(last < 0.8 * first, "loss {first} -> {last}");
    assert!(s.final_dir.join("model.safetensors").is_file());
    let _ = std::fs::remove_dir_all(out);
}
