//! Helpers shared by the end-to-end tests that load the workspace's plugins in-process.

#![allow(dead_code)] // each test binary uses its own subset

use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use ftlab_registry::Registry;

/// One test at a time, on one libtorch thread unless `OMP_NUM_THREADS` says otherwise
/// (`scripts/test-numerics` runs the tests on 1 and 2): tests share libtorch's global RNG (model
/// init, dropout), and the tiny model's ops are far too small to split across threads (two
/// threads on a busy 2-core machine run ~8× slower).
pub fn serial() -> MutexGuard<'static, ()> {
    let threads = std::env::var("OMP_NUM_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(1);
    tch::set_num_threads(threads);
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `target/<profile>`: where cargo builds the workspace's plugin libraries, beside `ftlab`
/// (this test binary runs from `target/<profile>/deps/`).
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

/// The workspace's root folder (the tests belong to `core/` and `core/cli/`).
pub fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().find(|d| d.join("plugins").is_dir()).expect("the workspace root")
}

/// Every built-in method (`plugins/`).
pub const BUILT_IN: [&str; 14] = [
    "pbft",
    "vanilla_ft",
    "otr",
    "cpt",
    "icl",
    "context_distill",
    "lm",
    "bitfit",
    "lora",
    "ia3",
    "prompt_tuning",
    "dept",
    "hft",
    "lift",
];

/// The workspace's plugins, refusing any of `plugins` whose library is missing or older than
/// any file of its source folder (`cargo test` rebuilds only their test harnesses: run
/// `cargo build --workspace`).
pub fn registry(plugins: &[&str]) -> Registry {
    let dir = build_dir();
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    for name in plugins {
        let lib = dir.join(format!("{DLL_PREFIX}ftlab_method_{name}{DLL_SUFFIX}"));
        let source = workspace().join("plugins").join(name);
        let newest = newest_file(&source).and_then(|f| modified(&f));
        assert!(
            modified(&lib).is_some_and(|built| Some(built) >= newest),
            "{} is missing or older than its source: run `cargo build --workspace` first",
            lib.display()
        );
    }
    Registry::from_dirs(&[dir])
}

/// The most recently modified file below `dir` (its `Cargo.toml` and `src/`).
fn newest_file(dir: &Path) -> Option<PathBuf> {
    let mut files = vec![dir.join("Cargo.toml")];
    let mut folders = vec![dir.join("src")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.into_iter().max_by_key(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
}

/// Prints `numerics: NAME VALUE BOUND` on stderr: `scripts/test-numerics` collects these lines to
/// show how close each asserted value comes to its bound under every CPU kernel set and thread
/// count (the test itself asserts).
pub fn numerics(name: &str, value: f64, bound: &str) {
    eprintln!("numerics: {name} {value:.6} {bound}");
}

/// The lines of a run folder's `metrics.jsonl`, parsed.
pub fn metrics_lines(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// [`metrics_lines`] without the evaluation reports, which hold wall-clock timings: what two
/// runs that should agree must agree on.
pub fn metrics_without_timings(run: &Path) -> Vec<serde_json::Value> {
    let mut lines = metrics_lines(run);
    for line in &mut lines {
        line["eval"]["report"] = serde_json::Value::Null;
    }
    lines
}
