//! Reading and writing Hugging Face checkpoint folders: `model.safetensors` or sharded
//! (`model.safetensors.index.json`), f32 / f16 / bf16 tensors, old and new weight-norm names.

use crate::error::{file_err, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One tensor's place in a loaded file.
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    range: (usize, usize),
}

/// The tensors of a checkpoint folder, by canonical name, converted to f32 on demand.
pub struct Checkpoint {
    files: Vec<(PathBuf, Vec<u8>)>,
    entries: BTreeMap<String, Entry>,
}

/// Maps the names different writers use onto ours: `wav2vec2.` prefix (absent in a bare
/// `Wav2Vec2Model`), weight norm as `weight_g`/`weight_v` (newer torch writes
/// `parametrizations.weight.original0/1`), and fairseq-era `gamma`/`beta` LayerNorm names.
pub fn canonical_name(name: &str) -> String {
    let mut n = name
        .replace("parametrizations.weight.original0", "weight_g")
        .replace("parametrizations.weight.original1", "weight_v");
    if n.contains("layer_norm.") {
        if let Some(s) = n.strip_suffix(".gamma") {
            n = format!("{s}.weight");
        } else if let Some(s) = n.strip_suffix(".beta") {
            n = format!("{s}.bias");
        }
    }
    const TOP: [&str; 5] = [
        "feature_extractor.",
        "feature_projection.",
        "encoder.",
        "masked_spec_embed",
        "adapter.",
    ];
    if TOP.iter().any(|t| n.starts_with(t)) {
        n = format!("wav2vec2.{n}");
    }
    n
}

/// The error for a `--model` that is no folder: missing, or a file.
pub(crate) fn not_a_folder<T>(dir: &Path) -> Result<T> {
    file_err(
        dir,
        if dir.exists() {
            "is a file; --model takes the model's folder"
        } else {
            "model folder does not exist"
        },
    )
}

/// Outputs of the checkpoint's CTC head (`lm_head.weight`'s rows), from the safetensors
/// headers alone; `None` for a checkpoint without a head (pretraining) or without weights.
pub fn head_rows(dir: &Path) -> Result<Option<usize>> {
    head_rows_in(dir, None)
}

/// [`head_rows`] of an MMS language: its `adapter.LANG.safetensors` (`None` if there is none).
pub fn head_rows_in(dir: &Path, lang: Option<&str>) -> Result<Option<usize>> {
    if let Some(lang) = lang {
        let path = dir.join(format!("adapter.{lang}.safetensors"));
        if !path.is_file() {
            return Ok(None);
        }
        return Ok(rows_of(&read_header(&path)?));
    }
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let paths = if single.is_file() {
        vec![single]
    } else if index.is_file() {
        shard_files(&index)?
    } else {
        return Ok(None);
    };
    for path in paths {
        if let Some(rows) = rows_of(&read_header(&path)?) {
            return Ok(Some(rows));
        }
    }
    Ok(None)
}

/// Rows of `lm_head.weight` in a safetensors header.
fn rows_of(header: &serde_json::Value) -> Option<usize> {
    let shape = header.get("lm_head.weight")?.get("shape")?.as_array()?;
    shape.first()?.as_u64().map(|n| n as usize)
}

/// The JSON header of a safetensors file, without reading its tensors.
pub(crate) fn read_header(path: &Path) -> Result<serde_json::Value> {
    use std::io::Read;
    let bad = |msg: String| file_err(path, msg);
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return bad(format!("cannot read: {e}")),
    };
    let mut len = [0u8; 8];
    if let Err(e) = f.read_exact(&mut len) {
        return bad(format!("not a valid safetensors file: {e}"));
    }
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return bad(format!(
            "not a valid safetensors file: header of {len} bytes"
        ));
    }
    let mut header = vec![0u8; len as usize];
    if let Err(e) = f.read_exact(&mut header) {
        return bad(format!("not a valid safetensors file: {e}"));
    }
    match serde_json::from_slice(&header) {
        Ok(v) => Ok(v),
        Err(e) => bad(format!("not a valid safetensors file: {e}")),
    }
}

impl Checkpoint {
    /// Opens the weights of a model folder (single file or sharded).
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shard_files(&index)?
        } else if dir.join("pytorch_model.bin").is_file() {
            return file_err(
                dir,
                "has only pytorch_model.bin; xlsr reads safetensors. Convert it once with \
                 `Wav2Vec2ForCTC.from_pretrained(dir).save_pretrained(dir)` (transformers writes \
                 model.safetensors), or download the hub's safetensors revision",
            );
        } else if !dir.is_dir() {
            return not_a_folder(dir);
        } else {
            return file_err(
                dir,
                "no model weights (model.safetensors or model.safetensors.index.json)",
            );
        };
        let mut ck = Checkpoint {
            files: Vec::new(),
            entries: BTreeMap::new(),
        };
        // Shards must agree with their index: a tensor in two shards, or elsewhere than the
        // index says, would otherwise be taken from whichever file came last.
        let mut found: HashMap<String, PathBuf> = HashMap::new();
        for path in paths {
            for name in ck.add_file(path.clone())? {
                if let Some(first) = found.insert(name.clone(), path.clone()) {
                    return file_err(
                        &path,
                        format!(
                            "tensor {name} is also in {}: which one is meant?",
                            first.display()
                        ),
                    );
                }
            }
        }
        if index.is_file() && !dir.join("model.safetensors").is_file() {
            for (name, shard) in weight_map(&index)? {
                let at = found.get(&name);
                if at != Some(&shard) {
                    return file_err(
                        &index,
                        format!(
                            "weight_map puts {name} in {}, but {}",
                            shard.display(),
                            match at {
                                Some(p) => format!("it is in {}", p.display()),
                                None => format!("{} does not hold it", shard.display()),
                            }
                        ),
                    );
                }
            }
        }
        Ok(ck)
    }

    /// Reads one safetensors file's tensors in; returns their canonical names. A name already
    /// present is replaced.
    fn add_file(&mut self, path: PathBuf) -> Result<Vec<String>> {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => return file_err(&path, format!("cannot read: {e}")),
        };
        let (header, meta) = match SafeTensors::read_metadata(&bytes) {
            Ok(m) => m,
            Err(e) => return file_err(&path, format!("not a valid safetensors file: {e}")),
        };
        let base = 8 + header;
        let file = self.files.len();
        let mut names = Vec::new();
        for (name, info) in meta.tensors() {
            let (a, b) = info.data_offsets;
            if base + b > bytes.len() {
                return file_err(
                    &path,
                    format!("tensor {name} runs past the end of the file (truncated?)"),
                );
            }
            let name = canonical_name(&name);
            names.push(name.clone());
            self.entries.insert(
                name,
                Entry {
                    file,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: (base + a, base + b),
                },
            );
        }
        self.files.push((path, bytes));
        Ok(names)
    }

    /// Puts the tensors of another file over these (an MMS language adapter over the base
    /// model's); returns the names it brought.
    pub fn overlay(&mut self, path: &Path) -> Result<Vec<String>> {
        self.add_file(path.to_path_buf())
    }

    /// The file(s) the tensors came from, for messages: one path, or the folder's shards.
    pub fn source(&self) -> String {
        match self.files.as_slice() {
            [(p, _)] => p.display().to_string(),
            [(p, _), ..] => format!("{} (and {} more shards)", p.display(), self.files.len() - 1),
            [] => "model.safetensors".into(),
        }
    }

    /// Whether the checkpoint has `name` (canonical).
    pub fn has(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Shape of `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Removes `name` and returns its values as f32, checking the shape.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Option<Vec<f32>>> {
        let Some(e) = self.entries.remove(name) else {
            return Ok(None);
        };
        let path = &self.files[e.file].0;
        if e.shape != shape {
            return file_err(
                path,
                format!(
                    "tensor {name} has shape {:?}, but the config needs {shape:?}",
                    e.shape
                ),
            );
        }
        let raw = &self.files[e.file].1[e.range.0..e.range.1];
        let n: usize = shape.iter().product();
        let values: Vec<f32> = match e.dtype {
            Dtype::F32 => bytemuck::pod_collect_to_vec(raw),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return file_err(
                    path,
                    format!("tensor {name} is {other:?}; only F32, F16 and BF16 weights are read"),
                )
            }
        };
        if values.len() != n {
            return file_err(
                path,
                format!("tensor {name}: {} values for shape {shape:?}", values.len()),
            );
        }
        if let Some(i) = values.iter().position(|x| !x.is_finite()) {
            return file_err(
                path,
                format!(
                    "tensor {name} holds a non-finite value ({} at index {i}): the weights are \
                     corrupt (a diverged run?)",
                    values[i]
                ),
            );
        }
        Ok(Some(values))
    }

    /// Drops `name` (a tensor the caller will not use); whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        self.entries.remove(name).is_some()
    }

    /// Names not taken (ignored tensors, e.g. a pretraining checkpoint's quantizer).
    pub fn leftover(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }
}

/// The shard files a `model.safetensors.index.json` names, sorted, each once.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = weight_map(index)?.into_values().collect();
    files.sort();
    files.dedup();
    for f in &files {
        if !f.is_file() {
            return file_err(f, "shard listed in model.safetensors.index.json is missing");
        }
    }
    Ok(files)
}

/// An index's `weight_map`: canonical tensor name -> the shard file that holds it.
fn weight_map(index: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let text = match std::fs::read_to_string(index) {
        Ok(t) => t,
        Err(e) => return file_err(index, format!("cannot read: {e}")),
    };
    let v: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => return file_err(index, format!("not valid JSON: {e}")),
    };
    let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
        return file_err(index, "has no weight_map");
    };
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut out = BTreeMap::new();
    for (name, f) in map {
        let Some(f) = f.as_str() else {
            return file_err(index, format!("weight_map value {f} is not a file name"));
        };
        // Shards live in the model folder: no `..`, no absolute path.
        if !crate::data::corpus::inside(Path::new(f)) {
            return file_err(
                index,
                format!("shard {f:?} is outside the model folder (absolute, or with ..)"),
            );
        }
        out.insert(canonical_name(name), dir.join(f));
    }
    Ok(out)
}

/// Writes named f32 tensors as one safetensors file, through a temporary name and a rename so
/// that a crash or a full disk never leaves a half-written file under `path`.
pub fn save(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
    save_with(path, tensors, &[])
}

/// [`save`] with more `__metadata__` entries besides `format: pt`.
pub fn save_with(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    meta: &[(&str, &str)],
) -> Result<()> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, v)| {
            TensorView::new(Dtype::F32, s.clone(), bytemuck::cast_slice(v))
                .map(|t| (n.clone(), t))
                .map_err(|e| crate::Error::File {
                    path: path.display().to_string(),
                    msg: format!("tensor {n}: {e}"),
                })
        })
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = [("format", "pt")]
        .iter()
        .chain(meta)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let bytes = match safetensors::serialize(views, Some(meta)) {
        Ok(b) => b,
        Err(e) => return file_err(path, format!("cannot serialise: {e}")),
    };
    crate::files::write_atomic(path, &bytes)
}
