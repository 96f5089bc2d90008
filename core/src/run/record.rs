//! A run's folder: the resolved config, per-epoch metrics (JSONL), checkpoints, and the final
//! record. Every file that a reader may see mid-run is written atomically (temp file + rename),
//! so an interrupted or concurrent run never leaves a half-written record.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// The files of one run.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// The folder.
    pub path: PathBuf,
}

impl RunDir {
    /// Creates (or reopens) the folder.
    pub fn create(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(Error::io(path))?;
        Ok(Self { path: path.into() })
    }

    /// `config.json`: the resolved configuration.
    pub fn config(&self) -> PathBuf {
        self.path.join("config.json")
    }

    /// `metrics.jsonl`: one line per epoch.
    pub fn metrics(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }

    /// `predictions/`: per-example predictions of the kept evaluations (see
    /// [`crate::eval::predictions`]).
    pub fn predictions(&self) -> PathBuf {
        self.path.join("predictions")
    }

    /// `record.json`: the final record; its presence marks a finished run.
    pub fn record(&self) -> PathBuf {
        self.path.join("record.json")
    }

    /// The metrics lines of epochs up to `epochs_done` (the checkpoint's), after rewriting the
    /// file to hold only those: lines of later epochs (logged before a kill that came before
    /// their checkpoint) and a torn last line (a write cut short) are dropped, to be logged again
    /// by the resumed run. An unreadable line elsewhere is an error naming it.
    pub fn metrics_until(&self, epochs_done: usize) -> Result<Vec<serde_json::Value>> {
        let path = self.metrics();
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(Vec::new()) };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut kept = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let value: serde_json::Value = match serde_json::from_str(line) {
                Ok(value) => value,
                Err(_) if i + 1 == lines.len() => break,
                Err(e) => {
                    let message = format!("not a JSON line: {e}");
                    return Err(Error::Data { path, row: Some(i + 1), column: None, message });
                }
            };
            if value["epoch"].as_u64().is_some_and(|epoch| epoch as usize <= epochs_done) {
                kept.push(value);
            }
        }
        if kept.len() != lines.len() {
            let text: String = kept.iter().map(|v| format!("{v}\n")).collect();
            write_atomically(&path, text.as_bytes())?;
        }
        Ok(kept)
    }

    /// `checkpoint/`: the latest end-of-epoch state.
    pub fn checkpoint(&self) -> PathBuf {
        self.path.join("checkpoint")
    }

    /// Writes `value` as pretty JSON to `path` atomically.
    pub fn write_json(&self, path: &Path, value: &impl Serialize) -> Result<()> {
        let text = serde_json::to_string_pretty(value).map_err(Error::json(path))?;
        write_atomically(path, text.as_bytes())
    }

    /// Appends one JSON line to `metrics.jsonl` (whole lines only: one `write` per line).
    pub fn append_metrics(&self, value: &impl Serialize) -> Result<()> {
        let path = self.metrics();
        let mut line = serde_json::to_string(value).map_err(Error::json(&path))?;
        line.push('\n');
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(Error::io(&path))?;
        file.write_all(line.as_bytes()).map_err(Error::io(&path))
    }
}

/// Writes `bytes` to a temp file beside `path`, syncs it, and renames it over `path`. A failed
/// write removes its temp file; a successful one also removes those that killed writers left
/// (not those of live processes writing the same file, such as two sweeps preparing one cell).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    let written = std::fs::File::create(&partial)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
        .map_err(Error::io(&partial))
        .and_then(|()| std::fs::rename(&partial, path).map_err(Error::io(path)));
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
        return written;
    }
    let stem = path.with_extension("partial-");
    let (folder, stem) =
        (path.parent().unwrap_or(Path::new(".")), stem.file_name().unwrap_or_default().to_string_lossy());
    for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(stem.as_ref()) else { continue };
        // Another live process may be writing the same file (two sweeps preparing one cell):
        // only a dead writer's partial is a leftover.
        let writing = pid.parse::<u32>().is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !writing {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// The SHA-256 of the file at `path`, in hex: how a record names the exact libraries and data
/// files a run read.
pub fn sha256_of(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

/// The project's git revision at build time, for run records.
pub const GIT_REVISION: &str = env!("BUILT_GIT_REVISION");

/// Whether tracked files differed from [`GIT_REVISION`] at build time.
pub const GIT_DIRTY: bool = const_str_eq(env!("BUILT_GIT_DIRTY"), "true");

const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_leave_no_partial_files() {
        let dir = tempfile::tempdir().unwrap();
        // No process has the largest pid; pid 1 always runs.
        let stale = dir.path().join(format!("record.partial-{}", u32::MAX));
        std::fs::write(&stale, "left by a killed writer").unwrap();
        let live = dir.path().join("record.partial-1");
        std::fs::write(&live, "being written by another process").unwrap();
        write_atomically(&dir.path().join("record.json"), b"{}").unwrap();
        assert!(!stale.exists(), "a successful write removes stale partial files");
        assert!(live.exists(), "but not one a live writer is still writing");
        std::fs::remove_file(&live).unwrap();
        // A write that cannot land (the target is a folder) removes its own partial file.
        std::fs::create_dir(dir.path().join("blocked.json")).unwrap();
        assert!(write_atomically(&dir.path().join("blocked.json"), b"{}").is_err());
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert!(names.iter().all(|n| !n.contains("partial")), "{names:?}");
    }

    #[test]
    fn metrics_are_cut_back_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        let lines = ["{\"epoch\":0}", "{\"epoch\":1}", "{\"epoch\":2}", "{\"epoch\":3,\"st"];
        std::fs::write(run.metrics(), lines.join("\n")).unwrap();
        let kept = run.metrics_until(1).unwrap();
        assert_eq!(kept.len(), 2);
        assert_eq!(std::fs::read_to_string(run.metrics()).unwrap(), "{\"epoch\":0}\n{\"epoch\":1}\n");
        // A torn line that is not the last is damage to report, by its line.
        std::fs::write(run.metrics(), "{\"epoch\":0}\n{\"epo\n{\"epoch\":1}\n").unwrap();
        let err = run.metrics_until(1).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl: row 2"), "{err}");
    }
}
