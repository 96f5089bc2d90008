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

    /// `record.json`: the final record; its presence marks a finished run.
    pub fn record(&self) -> PathBuf {
        self.path.join("record.json")
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

/// Writes `bytes` to a temp file beside `path`, syncs it, and renames it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    let mut file = std::fs::File::create(&partial).map_err(Error::io(&partial))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(Error::io(&partial))?;
    std::fs::rename(&partial, path).map_err(Error::io(path))
}

/// The project's git revision at build time, for run records.
pub const GIT_REVISION: &str = env!("BUILT_GIT_REVISION");
