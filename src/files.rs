//! File-system rules every reader and writer shares: reads refuse what is not a regular file
//! (a FIFO would block them forever), and writes go to a temporary name, are synced and
//! renamed into place, so a crash or a full disk never leaves half a file under the real name.

use crate::error::{file_err, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An error for a path that exists but is not a regular file (a folder, FIFO or device), so
/// the open that would follow cannot block. A missing path passes: the open says so.
pub fn check_regular(path: &Path) -> std::io::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "is not a regular file",
        )),
        _ => Ok(()),
    }
}

/// `std::fs::read`, refusing what is not a regular file.
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    check_regular(path)?;
    std::fs::read(path)
}

/// `std::fs::read_to_string`, refusing what is not a regular file.
pub fn read_to_string(path: &Path) -> std::io::Result<String> {
    check_regular(path)?;
    std::fs::read_to_string(path)
}

/// Writes `bytes` to `path` via `path` + `.tmp` + fsync + rename (the whole name gets the
/// suffix, so `a.wav` never stands in for another file's temporary `a.tmp`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_io(path, bytes).or_else(|e| file_err(path, format!("cannot write: {e}")))
}

/// [`write_atomic`] with the I/O error as it came.
pub fn write_atomic_io(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temporary(path);
    let res = (|| -> std::io::Result<()> {
        // A leftover under the name, even a FIFO (whose open would block), goes first.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    sync_parent(path);
    res
}

/// The temporary name of `path` while it is written: `NAME.tmp`.
pub fn temporary(path: &Path) -> PathBuf {
    with_suffix(path, ".tmp")
}

/// `path` with `suffix` after its name; a name too long to take it (255 bytes is the usual
/// limit) is shortened first, so that every name that can be written has a temporary one.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut cut = name.len().min(240);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    path.with_file_name(format!("{}{suffix}", &name[..cut]))
}

/// Syncs the folder holding `path`, so that a rename into it survives a power cut (best
/// effort: not every platform can open a folder).
pub fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(dir) = std::fs::File::open(parent) {
        let _ = dir.sync_all();
    }
}
