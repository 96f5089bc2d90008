//! Records the project's git revision (and whether tracked files had uncommitted changes) at
//! build time, so every run record says which code made it.

use std::process::Command;

fn main() {
    let git = |args: &[&str]| {
        let out = Command::new("git").args(args).output().ok().filter(|o| o.status.success())?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let revision = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BUILT_GIT_REVISION={revision}");
    // Uncommitted changes to tracked files: the revision alone does not say what ran.
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    println!("cargo:rustc-env=BUILT_GIT_DIRTY={dirty}");
    // `logs/HEAD` changes on every commit and checkout.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/logs/HEAD");
        println!("cargo:rerun-if-changed={dir}/index");
    }
    // The crate's own sources: an edit makes the build dirty.
    println!("cargo:rerun-if-changed=src");
}
