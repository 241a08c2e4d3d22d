//! The `xlsr` command line (see `xlsr::cli`).

fn main() {
    // One line per error, whatever RUST_BACKTRACE says.
    if let Err(e) = xlsr::cli::run() {
        eprintln!("xlsr: {e:#}");
        let code = e
            .downcast_ref::<xlsr::Error>()
            .map_or(1, xlsr::Error::exit_code);
        std::process::exit(code);
    }
}
