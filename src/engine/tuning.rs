//! Kernel choices measured on this adapter. Some ops have a few builds that compute the same
//! thing (tile sizes, split-K or not, cooperative matrices staged or not) and no rule picks the
//! fastest on every GPU. With tuning on, the first launch of each shape class times them all
//! (`ops::tune`) and keeps the fastest; a JSON file per adapter keeps the choices for later
//! runs. Off unless a caller turns it on (the command line does; tests do not), so a plain
//! [`Gpu`] always runs the default builds.

use super::error::{Error, Result};
use super::Gpu;
use crate::rng::fnv1a;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Whether ops consult (and fill) the tuning table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TuneMode {
    /// Default builds everywhere (what tests and library users get unless they ask).
    #[default]
    Off,
    /// Choices from the table where it has one, defaults elsewhere; nothing is timed.
    Use,
    /// As `Use`, and shape classes the table lacks are timed on first launch and added.
    Measure,
}

/// What was measured for one shape class.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Choice {
    /// The build to run.
    pub pick: String,
    /// Milliseconds per launch of each candidate, as measured (GPU timestamps where the
    /// adapter has them).
    pub times_ms: BTreeMap<String, f64>,
    /// Candidates whose output differed from the default build's (never picked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<String>,
}

/// The table behind [`Gpu::tuned`]: mode, choices by shape class, and how many were kept
/// since it was last cleared.
#[derive(Debug, Default)]
pub(super) struct Tuning {
    mode: TuneMode,
    choices: BTreeMap<String, Choice>,
    measured: u64,
}

/// What a tuning file holds. `build` identifies the kernels: choices measured for other
/// shaders are stale.
#[derive(serde::Serialize, serde::Deserialize)]
struct TuningFile {
    adapter: String,
    backend: String,
    driver: String,
    build: String,
    choices: BTreeMap<String, Choice>,
}

/// What [`Gpu::load_tuning`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    /// No file there.
    Missing,
    /// This many choices taken.
    Choices(usize),
    /// A file for another adapter, driver or build of the kernels: ignored (and replaced at
    /// the next save).
    Stale(String),
}

/// The kernels' identity: this version and every shader source.
fn build_id() -> String {
    let mut parts = vec![env!("CARGO_PKG_VERSION"), super::pipelines::PRELUDE];
    parts.extend(super::pipelines::SHADERS.iter().map(|(_, src)| *src));
    format!("{:016x}", fnv1a(parts.iter().map(|p| p.as_bytes())))
}

impl Gpu {
    /// Turns tuning off, on from the table only, or on with measuring (see [`TuneMode`]).
    pub fn set_tuning(&self, mode: TuneMode) {
        self.0.tuning.lock().unwrap().mode = mode;
    }

    /// The tuning mode.
    pub fn tuning(&self) -> TuneMode {
        self.0.tuning.lock().unwrap().mode
    }

    /// The choice kept for a shape class, if tuning is on and has one.
    pub fn tuned(&self, key: &str) -> Option<Choice> {
        let t = self.0.tuning.lock().unwrap();
        match t.mode {
            TuneMode::Off => None,
            _ => t.choices.get(key).cloned(),
        }
    }

    /// Keeps a choice for a shape class (what `ops::tune` measured).
    pub fn keep_tuned(&self, key: String, choice: Choice) {
        let mut t = self.0.tuning.lock().unwrap();
        t.measured += 1;
        t.choices.insert(key, choice);
    }

    /// Empties the table (to measure again).
    pub fn clear_tuned(&self) {
        let mut t = self.0.tuning.lock().unwrap();
        t.choices.clear();
        t.measured = 0;
    }

    /// Every choice in the table, by shape class.
    pub fn tuned_choices(&self) -> BTreeMap<String, Choice> {
        self.0.tuning.lock().unwrap().choices.clone()
    }

    /// Choices kept since the table was last cleared (not those loaded from a file).
    pub fn tuned_measured(&self) -> u64 {
        self.0.tuning.lock().unwrap().measured
    }

    /// The tuning file of this adapter: `$XLSR_TUNING_DIR`, else `$XDG_CACHE_HOME/xlsr`, else
    /// `~/.cache/xlsr`, one file per adapter and driver.
    pub fn tuning_path(&self) -> Option<PathBuf> {
        let dir = match std::env::var_os("XLSR_TUNING_DIR").filter(|d| !d.is_empty()) {
            Some(d) => PathBuf::from(d),
            None => match std::env::var_os("XDG_CACHE_HOME") {
                Some(d) => PathBuf::from(d).join("xlsr"),
                None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/xlsr"),
            },
        };
        let i = self.info();
        let name: String = i
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let backend = format!("{:?}", i.backend);
        let id = fnv1a([&i.name, &backend, &i.driver, &i.driver_info].map(|s| s.as_bytes()));
        Some(dir.join(format!("tuning-{}-{id:016x}.json", name.trim_matches('-'))))
    }

    /// Reads the choices of a tuning file into the table (over what it holds). A file that is
    /// not a tuning file is an error naming it; one for another adapter, driver or kernel build
    /// is ignored.
    pub fn load_tuning(&self, path: &Path) -> Result<Loaded> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Missing),
            Err(e) => return Err(tuning_err(path, e)),
        };
        let file: TuningFile = serde_json::from_str(&text).map_err(|e| tuning_err(path, e))?;
        let i = self.info();
        let ours = [&i.name, &format!("{:?}", i.backend), &i.driver, &build_id()];
        let theirs = [&file.adapter, &file.backend, &file.driver, &file.build];
        let what = ["adapter", "backend", "driver", "kernel build"];
        if let Some(at) = (0..4).find(|&at| ours[at] != theirs[at]) {
            return Ok(Loaded::Stale(format!(
                "measured for {} {:?}, this is {:?}",
                what[at], theirs[at], ours[at]
            )));
        }
        let n = file.choices.len();
        self.0.tuning.lock().unwrap().choices.extend(file.choices);
        Ok(Loaded::Choices(n))
    }

    /// Writes the table to `path` (through a temporary file and a rename, so a crash never
    /// leaves half a file).
    pub fn save_tuning(&self, path: &Path) -> Result<()> {
        let i = self.info();
        let file = TuningFile {
            adapter: i.name.clone(),
            backend: format!("{:?}", i.backend),
            driver: i.driver.clone(),
            build: build_id(),
            choices: self.tuned_choices(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| tuning_err(path, e))?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&file).map_err(|e| tuning_err(path, e))?;
        std::fs::write(&tmp, text + "\n").map_err(|e| tuning_err(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| tuning_err(path, e))
    }
}

fn tuning_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Tuning(format!("{}: {e}", path.display()))
}
