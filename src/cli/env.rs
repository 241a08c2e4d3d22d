//! The `XLSR_*` environment variables, each with the values it may hold, checked once at start:
//! a value the program would not understand is an error naming the variable (it used to be
//! ignored, so a typo silently ran the default kernels), and an unknown name a warning.

/// What a variable may hold (an empty value always counts as unset).
enum Allowed {
    /// Anything (a name to match, or checked where it is read).
    Any,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// A whole number at least this large.
    AtLeast(u64),
    /// A number > 0 of this unit.
    Positive(&'static str),
    /// A folder, or a path where one can be made.
    Folder,
}

use Allowed::*;

const ON_OFF: Allowed = OneOf(&["0", "1"]);

/// Every variable the program, its tests and tools read (README, "Environment variables").
const VARS: &[(&str, Allowed)] = &[
    ("XLSR_ADAPTER", Any),
    ("XLSR_ATTN", OneOf(&["tiled", "lanes", "rows"])),
    ("XLSR_ATTN_COOP", ON_OFF),
    ("XLSR_BENCH_FULL", ON_OFF),
    ("XLSR_CONV_TILE", OneOf(&["64", "128"])),
    (
        "XLSR_COOP",
        OneOf(&["coop", "staged", "wide", "coop-staged", "coop-wide"]),
    ),
    ("XLSR_COOP_LANES", OneOf(&["8", "16", "32", "64"])),
    ("XLSR_EXCHANGE_KB", AtLeast(1)),
    ("XLSR_GEMM", OneOf(&["tiled", "tiled64", "naive"])),
    ("XLSR_GEMM_BK", OneOf(&["8", "16"])),
    ("XLSR_GEMM_V4", ON_OFF),
    ("XLSR_KEEP_ATTENTION", ON_OFF),
    ("XLSR_MEMORY_LIMIT_GB", Positive("gigabytes")),
    ("XLSR_MPI_TIMEOUT", Positive("seconds")),
    ("XLSR_NO_COOP", ON_OFF),
    ("XLSR_NO_F16", ON_OFF),
    ("XLSR_NO_SUBGROUPS", ON_OFF),
    ("XLSR_PROFILE", AtLeast(1)),
    ("XLSR_ROBUSTNESS", ON_OFF),
    ("XLSR_SPLIT_K", ON_OFF),
    ("XLSR_TUNE", ON_OFF),
    ("XLSR_TUNING_DIR", Folder),
    ("XLSR_UNFOLD", ON_OFF),
    // WebGPU's minimum: every kernel has a build that fits it, none one below.
    ("XLSR_WORKGROUP_BYTES", AtLeast(16384)),
    // Read by the tests and tools, not the program.
    ("XLSR_OVERFIT_STEPS", Any),
    ("XLSR_PYTHON", Any),
];

/// Checks every `XLSR_*` variable set: an error for a value the program would ignore, a
/// warning (returned) for each name it does not know.
pub fn check() -> anyhow::Result<Vec<String>> {
    check_vars(std::env::vars_os().filter_map(|(k, v)| {
        let k = k.into_string().ok()?;
        k.starts_with("XLSR_")
            .then(|| (k, v.to_string_lossy().into_owned()))
    }))
}

fn check_vars(vars: impl Iterator<Item = (String, String)>) -> anyhow::Result<Vec<String>> {
    let mut warnings = Vec::new();
    for (name, value) in vars.filter(|(_, v)| !v.is_empty()) {
        let Some((_, allowed)) = VARS.iter().find(|(n, _)| *n == name) else {
            warnings.push(format!(
                "warning: {name} is not a variable xlsr reads (see README, \"Environment \
                 variables\")"
            ));
            continue;
        };
        let expected = match allowed {
            Any => continue,
            OneOf(words) if words.contains(&value.as_str()) => continue,
            OneOf(words) => format!("one of {}", words.join(", ")),
            AtLeast(min) if value.parse::<u64>().is_ok_and(|n| n >= *min) => continue,
            AtLeast(min) => format!("a whole number >= {min}"),
            Positive(_) if value.parse::<f64>().is_ok_and(|s| s.is_finite() && s > 0.0) => continue,
            Positive(unit) => format!("a number of {unit} > 0"),
            Folder if !std::path::Path::new(&value).exists() => continue,
            Folder if std::path::Path::new(&value).is_dir() => continue,
            Folder => "a folder (this is a file)".into(),
        };
        anyhow::bail!("{name}={value}: expected {expected}");
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::check_vars;

    fn check(name: &str, value: &str) -> Result<Vec<String>, String> {
        check_vars([(name.to_string(), value.to_string())].into_iter()).map_err(|e| e.to_string())
    }

    #[test]
    fn values_the_program_would_ignore_are_refused_by_name() {
        for (name, value) in [
            ("XLSR_GEMM", "tiled64"),
            ("XLSR_COOP", "staged"),
            ("XLSR_ROBUSTNESS", "0"),
            ("XLSR_WORKGROUP_BYTES", "16384"),
            ("XLSR_MPI_TIMEOUT", "2.5"),
            ("XLSR_ADAPTER", "llvmpipe"),
            ("XLSR_GEMM", ""),
            ("XLSR_MEMORY_LIMIT_GB", ""),
            ("XLSR_BENCH_FULL", "0"),
            ("XLSR_TUNING_DIR", "/nonexistent/xlsr"),
        ] {
            assert_eq!(check(name, value), Ok(vec![]), "{name}={value}");
        }
        for (name, value, want) in [
            (
                "XLSR_GEMM",
                "bogus",
                "XLSR_GEMM=bogus: expected one of tiled, tiled64, naive",
            ),
            ("XLSR_ROBUSTNESS", "false", "expected one of 0, 1"),
            (
                "XLSR_WORKGROUP_BYTES",
                "16k",
                "expected a whole number >= 16384",
            ),
            ("XLSR_WORKGROUP_BYTES", "100", ">= 16384"),
            ("XLSR_PROFILE", "-1", "XLSR_PROFILE=-1"),
            ("XLSR_MPI_TIMEOUT", "NaN", "seconds > 0"),
            ("XLSR_TUNING_DIR", "/etc/hostname", "a folder"),
        ] {
            let e = check(name, value).unwrap_err();
            assert!(e.contains(want), "{name}={value}: {e}");
        }
        let w = check("XLSR_GEM", "tiled64").unwrap();
        assert!(
            w.len() == 1 && w[0].contains("XLSR_GEM is not a variable"),
            "{w:?}"
        );
    }
}
