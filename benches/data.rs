//! Audio decoding throughput (MP3 48 kHz -> 16 kHz f32, as `xlsr prepare` does it), in audio
//! seconds decoded per wall second, on the committed demo corpus or a folder of clips:
//! `cargo bench --bench data [-- CLIPS_DIR]`.

fn main() {
    let dir = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "data/demo-es/clips".into());
    let mut files: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.filter_map(|e| Some(e.ok()?.path())).collect(),
        Err(e) => {
            eprintln!("{dir}: {e}");
            std::process::exit(1);
        }
    };
    files.sort();
    let r = xlsr::data::audio::bench_decode(&files, 10);
    println!("decode {dir}: {r}");
}
