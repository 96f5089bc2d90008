//! Vetting a library in a short-lived child process before the host loads it.
//!
//! Opening a shared library runs its constructors in the opening process: a library that aborts,
//! calls a missing symbol or carries a forged root module would take the host down with it. A
//! host that can re-run itself as a prober (the `ftlab` binary: `ftlab plugins probe PATH…`)
//! calls [`probe_in_child`] once at start; from then on every registry of the process opens each
//! library first in a child, which prints one [`Verdict`] line per library. A child that dies
//! refuses the library it was opening, with the reason, and the rest are probed again in a new
//! child. The host opens a library itself only when a method of it is used, after its probe
//! passed. Verdicts are cached by the library's path, size and modification time and the host's
//! versions, so only new or rebuilt libraries cost a child.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::{MethodDescriptor, RegistryError};

/// The command that probes libraries: `program args… PATH…`.
#[derive(Debug, Clone)]
struct Prober {
    program: PathBuf,
    args: Vec<String>,
}

static PROBER: OnceLock<Prober> = OnceLock::new();

/// Makes every registry in this process vet libraries with `program args… PATH…`, which must
/// print [`verdict`]'s line for each path in order (see [`print_verdicts`]).
pub fn probe_in_child(program: PathBuf, args: &[&str]) {
    let _ = PROBER.set(Prober { program, args: args.iter().map(|a| a.to_string()).collect() });
}

/// Whether libraries are vetted in a child process.
pub(crate) fn enabled() -> bool {
    PROBER.get().is_some()
}

/// What opening a library found: its methods, or why it cannot be used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Verdict {
    /// It opened, passed every check and declares these methods.
    Methods(Vec<MethodDescriptor>),
    /// It was refused; the message names the file and the reason.
    Refused(String),
}

/// Opens `path` in this process and checks it (the child's side).
pub fn verdict(path: &Path) -> Verdict {
    match crate::open(path) {
        Ok((_, methods)) => Verdict::Methods(methods),
        Err(e) => Verdict::Refused(e.to_string()),
    }
}

/// The child's work: one JSON [`Verdict`] line per path, flushed before the next library is
/// opened, so the parent knows which library a crash came from.
pub fn print_verdicts(paths: &[PathBuf]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for path in paths {
        let line = serde_json::to_string(&verdict(path)).map_err(std::io::Error::other)?;
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}

/// The verdicts for `paths` (canonical), from the cache or from child processes.
pub(crate) fn probe(paths: &[PathBuf]) -> Vec<Result<Vec<MethodDescriptor>, RegistryError>> {
    let Some(prober) = PROBER.get() else { return Vec::new() };
    let mut cache = Cache::load();
    let keys: Vec<Option<String>> = paths.iter().map(|p| cache_key(p)).collect();
    let mut verdicts: Vec<Option<Verdict>> =
        keys.iter().map(|k| k.as_ref().and_then(|k| cache.entries.get(k).cloned())).collect();
    let mut pending: Vec<usize> = (0..paths.len()).filter(|&i| verdicts[i].is_none()).collect();
    while !pending.is_empty() {
        let batch: Vec<&PathBuf> = pending.iter().map(|&i| &paths[i]).collect();
        let (found, crash) = run_child(prober, &batch);
        let done = found.len();
        for (&i, verdict) in pending.iter().zip(found) {
            verdicts[i] = Some(verdict);
        }
        if let Some(why) = crash {
            // The library being opened when the child died is the culprit.
            if let Some(&i) = pending.get(done) {
                verdicts[i] = Some(Verdict::Refused(format!("{}: probing it {why}", paths[i].display())));
            }
            pending.drain(..(done + 1).min(pending.len()));
        } else {
            pending.clear();
        }
    }
    let mut changed = false;
    for (key, verdict) in keys.iter().zip(&verdicts) {
        if let (Some(key), Some(verdict)) = (key, verdict) {
            changed |= cache.entries.insert(key.clone(), verdict.clone()).is_none();
        }
    }
    if changed {
        cache.save();
    }
    (paths.iter().zip(verdicts))
        .map(|(path, verdict)| match verdict {
            Some(Verdict::Methods(methods)) => Ok(methods),
            Some(Verdict::Refused(message)) => Err(RegistryError::Refused { path: path.clone(), message }),
            None => Err(RegistryError::Refused { path: path.clone(), message: "not probed".into() }),
        })
        .collect()
}

/// Runs one child over `paths`: the verdicts it printed, and how it died if it did not finish.
fn run_child(prober: &Prober, paths: &[&PathBuf]) -> (Vec<Verdict>, Option<String>) {
    let child = Command::new(&prober.program)
        .args(&prober.args)
        .args(paths)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return (Vec::new(), Some(format!("could not start {}: {e}", prober.program.display()))),
    };
    let mut verdicts = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            match serde_json::from_str(&line) {
                Ok(verdict) => verdicts.push(verdict),
                Err(_) => break,
            }
        }
    }
    let output = child.wait_with_output();
    if verdicts.len() == paths.len() {
        return (verdicts, None);
    }
    let why = match output {
        Ok(output) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().trim().to_string();
            let how = death(&output.status);
            if last.is_empty() {
                how
            } else {
                format!("{how}: {last}")
            }
        }
        Err(e) => format!("failed: {e}"),
    };
    (verdicts, Some(why))
}

/// How a child ended, in words.
fn death(status: &std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let name = match signal {
                6 => " (SIGABRT)",
                11 => " (SIGSEGV)",
                7 => " (SIGBUS)",
                4 => " (SIGILL)",
                _ => "",
            };
            return format!("crashed the process with signal {signal}{name}");
        }
    }
    match status.code() {
        Some(code) => format!("ended the process with exit code {code}"),
        None => "ended the process abnormally".into(),
    }
}

/// `path|size|mtime|host versions`: a verdict stays valid while none of these change.
fn cache_key(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    let host = ftlab_sdk::abi::this_abi();
    let versions = format!("{}/{}/{}", host.sdk_version, host.tch_version, host.libtorch_version);
    Some(format!("{}|{}|{modified}|{versions}", path.display(), meta.len()))
}

/// Verdicts kept between runs in `$XDG_CACHE_HOME/ftlab/plugin-probes.json`.
#[derive(Default, Serialize, Deserialize)]
struct Cache {
    entries: BTreeMap<String, Verdict>,
}

impl Cache {
    fn path() -> PathBuf {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        var("XDG_CACHE_HOME")
            .unwrap_or_else(|| var("HOME").unwrap_or_else(|| PathBuf::from(".")).join(".cache"))
            .join("ftlab/plugin-probes.json")
    }

    fn load() -> Self {
        std::fs::read_to_string(Self::path()).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
    }

    /// Writes the cache (a temp file renamed over it); a cache that cannot be written only
    /// costs probing again.
    fn save(&mut self) {
        // Entries for files that are gone or changed are dead weight.
        self.entries.retain(|key, _| key.split('|').next().and_then(|p| cache_key(Path::new(p))).as_ref() == Some(key));
        let path = Self::path();
        let Ok(text) = serde_json::to_string(self) else { return };
        let Some(folder) = path.parent() else { return };
        let partial = path.with_extension(format!("partial-{}", std::process::id()));
        let written = std::fs::create_dir_all(folder)
            .and_then(|()| std::fs::write(&partial, text))
            .and_then(|()| std::fs::rename(&partial, &path));
        if written.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
    }
}
