//! The `xlsr` command line (see `xlsr::cli`).

fn main() {
    // One line per error, whatever RUST_BACKTRACE says.
    if let Err(e) = xlsr::cli::run() {
        eprintln!("xlsr: {e:#}");
        std::process::exit(1);
    }
}
