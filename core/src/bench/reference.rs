//! The baseline of `bench model`: the same forward and training step in PyTorch + transformers,
//! run by a Python interpreter the user names, with the same shape, threads and repeats.

use std::process::Command;

use serde::{Deserialize, Serialize};

use super::Shape;
use crate::error::{Error, Result};

/// The reference script, embedded so the binary can run it from anywhere.
const SCRIPT: &str = include_str!("../../benches/opt_reference.py");

/// What the reference measured, and with which versions.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Reference {
    /// transformers' version.
    pub transformers: String,
    /// torch's version.
    pub torch: String,
    /// The attention implementation transformers chose (e.g. `sdpa`).
    pub attention: String,
    /// Forward tokens/s.
    pub forward_tokens_per_s: f64,
    /// Training-step tokens/s.
    pub train_tokens_per_s: f64,
}

/// Runs the reference with `python` (torch and transformers importable) on the shape described
/// by `config` (a `config.json`'s text).
pub fn measure(python: &str, config: &str, shape: &Shape, repeats: usize) -> Result<Reference> {
    let failed = |message: String| Error::Measurement { what: format!("the reference with {python}"), message };
    let script = std::env::temp_dir().join(format!("ftlab-opt-reference-{}.py", std::process::id()));
    std::fs::write(&script, SCRIPT).map_err(Error::io(&script))?;
    let output = Command::new(python)
        .arg(&script)
        .args(["--config", config])
        .args(["--batch", &shape.batch.to_string(), "--seq", &shape.seq.to_string()])
        .args(["--repeats", &repeats.to_string(), "--threads", &shape.threads.to_string()])
        .output();
    let _ = std::fs::remove_file(&script);
    let output = output.map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        return Err(failed(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).map_err(|e| failed(format!("reading its JSON output `{last}`: {e}")))
}
