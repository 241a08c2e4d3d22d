//! What a run prints: the progress bar, messages above it, the profile.

use super::state;
use std::path::Path;

/// "; the last checkpoint, NAME, is intact" (or nothing when there is none).
pub(super) fn last_saved(run_dir: &Path) -> String {
    match state::list(run_dir).pop() {
        Some((_, p)) => format!("; the last checkpoint, {}, is intact", p.display()),
        None => String::new(),
    }
}

pub(super) fn print_profile(kernels: &[(&'static str, f64, u64)]) {
    let total: f64 = kernels.iter().map(|k| k.1).sum();
    let mut k = kernels.to_vec();
    k.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("GPU time by kernel ({:.1} ms in all):", total / 1e6);
    for (name, ns, n) in k.iter().take(12) {
        println!(
            "    {name:<28} {:>9.1} ms {:>5.1}% ({n} launches)",
            ns / 1e6,
            100.0 * ns / total.max(1.0)
        );
    }
}

/// Prints above the progress bar, or plainly when there is no terminal to draw it on.
pub(super) fn say(bar: &indicatif::ProgressBar, msg: String) {
    if bar.is_hidden() {
        println!("{msg}");
    } else {
        bar.println(msg);
    }
}

pub(super) fn progress_bar(total: u64, at: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(at);
    bar
}
