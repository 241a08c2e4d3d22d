//! Run checkpoints: `RUN_DIR/checkpoint-STEP/` holds the model in HF layout (config.json,
//! model.safetensors, vocabulary files) plus `optimizer.safetensors` and `trainer_state.json`
//! (step, data position, seed). Written under a temporary name and renamed, so a crash or a
//! full disk never leaves a broken checkpoint; older ones are deleted only after a new one is
//! complete.

use crate::data::Vocab;
use crate::error::{file_err, Error, Result};
use crate::model::{checkpoint, Wav2Vec2ForCtc};
use crate::optim::AdamW;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the run stands: enough to continue it exactly.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps taken (skipped ones included: they consumed their batches).
    pub global_step: u64,
    /// Epoch of the next batch.
    pub epoch: u64,
    /// Index of the next batch within that epoch's batch list.
    pub batch_in_epoch: usize,
    /// Steps skipped because the gradients were not finite.
    pub skipped_steps: u64,
    /// Total steps the run plans.
    pub max_steps: u64,
    /// The run's seed (batching, dropout, masking are derived from it and the step).
    pub seed: u64,
    /// Audio seconds trained on so far.
    pub audio_seconds: f64,
    /// Which run wrote the checkpoint (kept across `--resume`): rotation only deletes the
    /// current run's checkpoints. Empty in checkpoints written before it existed.
    #[serde(default)]
    pub run_id: String,
    /// The run's options (`TrainOptions` as JSON), so that `--resume` can say which differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<serde_json::Value>,
    /// The training losses summed since the last logged step (the f32's bits, exact and NaN
    /// included) and how many steps they are, so that a run resumed between two logging
    /// steps logs the same mean as an uninterrupted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlogged_loss: Option<(u32, u64)>,
    /// The fp16 loss scaler's state (absent in f32 runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_scaler: Option<crate::optim::GradScaler>,
}

impl TrainerState {
    /// A warning when the saved data position lies past the end of its epoch, whose batch
    /// list has `batches` entries: the corpus or the batching changed since the checkpoint
    /// (or the file was edited), so the run goes on with the next epoch, not where it was.
    pub fn position_warning(&self, batches: usize) -> Option<String> {
        (self.batch_in_epoch > batches).then(|| {
            format!(
                "trainer_state.json puts the next batch at {} of epoch {}, which has {batches} \
                 batches (the corpus or the batch settings changed?): continuing with epoch {}",
                self.batch_in_epoch,
                self.epoch,
                self.epoch + 1
            )
        })
    }
}

/// Writes `RUN_DIR/checkpoint-STEP` and keeps the newest `keep` checkpoints.
pub fn save(
    run_dir: &Path,
    model: &Wav2Vec2ForCtc,
    vocab: &Vocab,
    opt: &AdamW,
    state: &TrainerState,
    keep: usize,
) -> Result<PathBuf> {
    let name = format!("checkpoint-{}", state.global_step);
    let dir = run_dir.join(&name);
    let tmp = run_dir.join(format!(".{name}.tmp"));
    let res = (|| -> Result<()> {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).or_else(|e| file_err(&tmp, e.to_string()))?;
        }
        save_model(&tmp, model, vocab)?;
        checkpoint::save(&tmp.join("optimizer.safetensors"), &opt.state_tensors()?)?;
        write_state(&tmp, state)?;
        if dir.exists() {
            let _ = remove_safely(&dir);
        }
        std::fs::rename(&tmp, &dir).or_else(|e| file_err(&dir, format!("cannot rename: {e}")))?;
        crate::files::sync_parent(&dir); // the rename, through a power cut
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::File {
            path: dir.display().to_string(),
            msg: format!("checkpoint not saved (earlier checkpoints are intact): {e}"),
        });
    }
    sweep_leftovers(run_dir);
    // Rotation: the current run's checkpoints only, oldest (lowest step) first, never the one
    // just written.
    let mut ours: Vec<PathBuf> = list(run_dir)
        .into_iter()
        .filter(|(_, p)| *p != dir && run_id_of(p).as_deref() == Some(state.run_id.as_str()))
        .map(|(_, p)| p)
        .collect();
    while ours.len() + 1 > keep.max(1) {
        let old = ours.remove(0);
        if let Err(e) = remove_safely(&old) {
            eprintln!(
                "warning: {}: cannot delete this old checkpoint (--save-total-limit {keep}); \
                 it may remain as .{}.deleting.tmp: {e}",
                old.display(),
                old.file_name().unwrap_or_default().to_string_lossy()
            );
        }
    }
    Ok(dir)
}

/// Deletes a folder, first renaming it to `.NAME.deleting.tmp`: a crash midway leaves a
/// folder that nothing reads (and the next save sweeps), never a `checkpoint-N` or `final`
/// that looks whole but lacks files.
fn remove_safely(dir: &Path) -> std::io::Result<()> {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let doomed = dir.with_file_name(format!(".{name}.deleting.tmp"));
    // A leftover of an earlier kill would make the rename fail.
    let _ = std::fs::remove_dir_all(&doomed);
    std::fs::rename(dir, &doomed)?;
    std::fs::remove_dir_all(doomed)
}

/// Deletes what killed saves and deletions left in `run_dir`: `.checkpoint-N.tmp` (a save
/// that never finished; the run folder's lock says no other process is writing one) and
/// `.NAME.deleting.tmp`.
fn sweep_leftovers(run_dir: &Path) {
    for name in crate::data::corpus::entry_names(run_dir) {
        let unfinished = name.starts_with(".checkpoint-") && name.ends_with(".tmp");
        if unfinished || (name.starts_with('.') && name.ends_with(".deleting.tmp")) {
            let _ = std::fs::remove_dir_all(run_dir.join(name));
        }
    }
}

/// The lock file that keeps two processes out of one run folder.
const LOCK: &str = ".lock";

/// Locks `run_dir` for this process (until the returned file is dropped): two runs writing one
/// folder would mix their checkpoints and lose each other's log rows. A file system without
/// locks gets a warning.
pub fn lock_run_dir(run_dir: &Path) -> Result<Option<std::fs::File>> {
    let path = run_dir.join(LOCK);
    // Not a FIFO (the open would block) nor a link to some other file.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
        return file_err(
            &path,
            "not a regular file: remove it (it is the run folder's lock)",
        );
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .or_else(|e| file_err(&path, format!("cannot open the run folder's lock: {e}")))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => file_err(
            run_dir,
            "another xlsr process is training in this run folder (it holds its .lock); wait \
             for it to end, or choose another --out",
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            eprintln!(
                "warning: {}: cannot lock the run folder ({e}): nothing stops a second run \
                 from writing into it at the same time",
                run_dir.display()
            );
            Ok(None)
        }
    }
}

/// The `run_id` of a checkpoint (empty for one written before run ids existed), or `None` when
/// its `trainer_state.json` cannot be read.
pub fn run_id_of(checkpoint: &Path) -> Option<String> {
    let v = state_json(checkpoint)?;
    Some(
        v.get("run_id")
            .and_then(|r| r.as_str())
            .unwrap_or("")
            .to_string(),
    )
}

/// Writes `dir/trainer_state.json`.
fn write_state(dir: &Path, state: &TrainerState) -> Result<()> {
    let json = serde_json::to_string_pretty(state).unwrap_or_default();
    crate::files::write_atomic(&dir.join("trainer_state.json"), json.as_bytes())
}

/// `dir/trainer_state.json` as JSON (`None` when it cannot be read).
fn state_json(dir: &Path) -> Option<serde_json::Value> {
    let text = crate::files::read_to_string(&dir.join("trainer_state.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// A fresh run's id: time, process and seed, so two runs into one folder never share one.
pub fn new_run_id(seed: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = crate::rng::Rng::new(nanos ^ (std::process::id() as u64).rotate_left(32) ^ seed);
    format!("{:016x}", rng.next_u64())
}

/// What a run writes into its folder (besides `prepared/`, the corpus cache, which is reused).
fn is_run_file(name: &str) -> bool {
    name.starts_with("checkpoint-")
        || (name.starts_with(".checkpoint-") && name.ends_with(".tmp"))
        || (name.starts_with('.') && name.ends_with(".deleting.tmp"))
        || matches!(
            name,
            "final"
                | ".final.tmp"
                | ".final.old.tmp"
                | "metrics.jsonl"
                | "metrics.jsonl.tmp"
                | "training.svg"
                | "training.svg.tmp"
        )
}

/// What of an earlier run `run_dir` holds (`prepared/`, the corpus cache, is not that).
fn used_entries(run_dir: &Path) -> Vec<String> {
    let mut used = crate::data::corpus::entry_names(run_dir);
    used.retain(|n| n != "prepared" && n != LOCK);
    used
}

/// Checks that `run_dir` may be written by a new run: it must not exist, or hold nothing but
/// `prepared/`, unless `resume` (continue it) or `overwrite` (its earlier run is deleted by
/// [`clear_run_dir`] once the new one's model and data have loaded).
pub fn check_run_dir(run_dir: &Path, resume: bool, overwrite: bool) -> Result<()> {
    crate::data::corpus::out_entries(run_dir)?;
    let used = used_entries(run_dir);
    if used.is_empty() || resume || overwrite {
        return Ok(());
    }
    let shown = if used.len() > 4 {
        format!("{}, ... ({} entries)", used[..4].join(", "), used.len())
    } else {
        used.join(", ")
    };
    file_err(
        run_dir,
        format!(
            "the run folder is not empty ({shown}); pass --resume to continue the run in it, \
             --overwrite to replace it, or choose another --out"
        ),
    )
}

/// `--overwrite`: deletes the earlier run's files in `run_dir` (checkpoints, final model,
/// metrics.jsonl, training.svg), and nothing else. Folders go through `remove_safely`, so
/// a kill midway never leaves a checkpoint that looks whole.
pub fn clear_run_dir(run_dir: &Path) -> Result<()> {
    for name in used_entries(run_dir).iter().filter(|n| is_run_file(n)) {
        let path = run_dir.join(name);
        let res = if path.is_dir() {
            remove_safely(&path)
        } else {
            std::fs::remove_file(&path)
        };
        res.or_else(|e| file_err(&path, format!("--overwrite: cannot delete: {e}")))?;
    }
    Ok(())
}

/// Writes the model and tokenizer files (a folder `transformers` loads).
pub fn save_model(dir: &Path, model: &Wav2Vec2ForCtc, vocab: &Vocab) -> Result<()> {
    model.save(dir)?;
    if let Some(lang) = &model.target_lang {
        model.save_adapter(dir, lang)?;
    }
    vocab.save(dir)?;
    Ok(())
}

/// Writes the run's model as `run_dir/final` (through `.final.tmp`). An earlier final/ (a
/// resumed run's) steps aside before the new one takes its name and is deleted only after: a
/// crash in between leaves it as `.final.old.tmp`, never nothing.
/// Its `trainer_state.json` (as HF's `Trainer.save_state` writes one) says which step it is,
/// so that no resumed run replaces it with an older model.
pub fn save_final(
    run_dir: &Path,
    model: &Wav2Vec2ForCtc,
    vocab: &Vocab,
    state: &TrainerState,
) -> Result<PathBuf> {
    let final_dir = run_dir.join("final");
    let tmp = run_dir.join(".final.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let saved = save_model(&tmp, model, vocab).and_then(|_| write_state(&tmp, state));
    if let Err(e) = saved {
        let _ = std::fs::remove_dir_all(&tmp);
        let saved = match list(run_dir).pop() {
            Some((step, p)) => format!(
                "; the newest checkpoint, {} (step {step}), is intact: make room and run again \
                 with --resume",
                p.display()
            ),
            None => String::new(),
        };
        return file_err(&final_dir, format!("final model not saved: {e}{saved}"));
    }
    let old = run_dir.join(".final.old.tmp");
    let _ = std::fs::remove_dir_all(&old);
    if final_dir.exists() {
        std::fs::rename(&final_dir, &old).or_else(|e| file_err(&final_dir, e.to_string()))?;
    }
    std::fs::rename(&tmp, &final_dir).or_else(|e| file_err(&final_dir, e.to_string()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(final_dir)
}

/// The step of `run_dir/final` (`None` without one, or for one written before it said).
pub fn final_step(run_dir: &Path) -> Option<u64> {
    state_json(&run_dir.join("final"))?
        .get("global_step")?
        .as_u64()
}

/// Completed checkpoints in `run_dir`, oldest first.
pub fn list(run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v = numbered(run_dir);
    v.retain(|(_, p)| p.join("trainer_state.json").is_file());
    v
}

/// Every `checkpoint-N` folder of `run_dir`, complete or not, oldest first.
fn numbered(run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = crate::data::corpus::entry_names(run_dir)
        .into_iter()
        .filter_map(|name| {
            Some((
                name.strip_prefix("checkpoint-")?.parse().ok()?,
                run_dir.join(&name),
            ))
        })
        .filter(|(_, p)| p.is_dir())
        .collect();
    v.sort();
    v
}

/// How to get past checkpoint `dir` of `run_dir` when it cannot be resumed: the complete
/// one before it, if any, may be intact.
pub fn previous_hint(run_dir: &Path, dir: &Path) -> String {
    let prev = list(run_dir)
        .into_iter()
        .map(|(_, p)| p)
        .take_while(|p| p != dir)
        .last();
    match prev {
        Some(p) => format!(
            "; the previous one, {}, may be intact: move {} out of the run folder and \
             --resume again",
            p.display(),
            dir.display()
        ),
        None => String::new(),
    }
}

/// The checkpoint `--resume` continues from: the newest `checkpoint-N` of `run_dir`, `None`
/// where the folder holds no run yet. A newest one without `trainer_state.json` (damaged: a
/// finished checkpoint always has it, since it is renamed into place whole) or a folder with
/// an earlier run's files (final model, metrics) but no checkpoint is an error, rather than a
/// silent fall-back to an older checkpoint or a fresh run over that run's files.
pub fn resume_point(run_dir: &Path) -> Result<Option<PathBuf>> {
    let Some((_, newest)) = numbered(run_dir).pop() else {
        let earlier: Vec<String> = used_entries(run_dir)
            .into_iter()
            .filter(|n| is_run_file(n) && !n.ends_with(".tmp"))
            .collect();
        if !earlier.is_empty() {
            return file_err(
                run_dir,
                format!(
                    "--resume: no checkpoint to continue from, but an earlier run's files ({}); \
                     pass --overwrite instead to replace them, or choose another --out",
                    earlier.join(", ")
                ),
            );
        }
        return Ok(None);
    };
    let state = newest.join("trainer_state.json");
    if state.is_file() {
        return Ok(Some(newest));
    }
    let what = match state.exists() {
        true => "not a regular file",
        false => "missing",
    };
    file_err(
        state,
        format!(
            "{what}: this checkpoint is incomplete or damaged, so --resume cannot continue \
             from it{}",
            previous_hint(run_dir, &newest)
        ),
    )
}

/// Reads a checkpoint's trainer state and optimiser moments.
pub fn load(dir: &Path, opt: &mut AdamW) -> Result<TrainerState> {
    let path = dir.join("trainer_state.json");
    let text = crate::files::read_to_string(&path).or_else(|e| file_err(&path, e.to_string()))?;
    let state: TrainerState = serde_json::from_str(&text)
        .or_else(|e| file_err(&path, format!("not a trainer state: {e}")))?;
    let named = dir
        .file_name()
        .and_then(|n| n.to_str()?.strip_prefix("checkpoint-")?.parse::<u64>().ok());
    if named.is_some_and(|n| n != state.global_step) {
        return file_err(
            &path,
            format!(
                "global_step {} disagrees with the folder name {}: not this checkpoint's state",
                state.global_step,
                dir.file_name().unwrap_or_default().to_string_lossy()
            ),
        );
    }
    let path = dir.join("optimizer.safetensors");
    let bytes = crate::files::read(&path).or_else(|e| file_err(&path, e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .or_else(|e| file_err(&path, format!("not a safetensors file: {e}")))?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (n, t) in st.tensors() {
        if t.dtype() != safetensors::Dtype::F32 {
            return file_err(
                &path,
                format!("{n}: saved as {:?}, expected F32", t.dtype()),
            );
        }
        tensors.push((
            n,
            t.shape().to_vec(),
            bytemuck::pod_collect_to_vec(t.data()),
        ));
    }
    opt.load_state(&tensors)
        .or_else(|e| file_err(&path, e.to_string()))?;
    Ok(state)
}
