//! Checks a method author runs from their crate's tests (the scaffold's `tests/check.rs`).

use std::path::PathBuf;
use std::process::Command;

/// Builds this crate's library and runs `ftlab plugins check NAME` (the binary in `$FTLAB`,
/// else `ftlab`) with it first on the plugin path, and panics with the report unless every
/// applicable check passes.
pub fn check(name: &str, ftlab: &str) {
    check_with(name, ftlab, &[]);
}

/// [`check`] with more arguments of `ftlab plugins check`, e.g. the method's settings and a
/// learning rate: `&["--config", r#"{"rank": 4}"#, "--lr", "0.3"]`.
pub fn check_with(name: &str, ftlab: &str, args: &[&str]) {
    let ftlab = std::env::var("FTLAB").unwrap_or_else(|_| ftlab.to_string());
    let library_dir = build_library();
    let mut plugin_path = vec![library_dir.clone()];
    plugin_path.extend(std::env::var_os("FTLAB_PLUGIN_PATH").iter().flat_map(std::env::split_paths));
    let joined = std::env::join_paths(plugin_path).expect("plugin folders join into a path");
    let out = Command::new(&ftlab)
        .args(["plugins", "check", name])
        .args(args)
        .env("FTLAB_PLUGIN_PATH", joined)
        .output()
        .unwrap_or_else(|e| panic!("running `{ftlab} plugins check {name}`: {e} (set FTLAB to the ftlab binary)"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "`ftlab plugins check {name}` (libraries in {}) failed:\n{stdout}{stderr}",
        library_dir.display()
    );
}

/// Builds this crate's library as `cargo test` built the test (`cargo test` compiles a
/// `cdylib` only into the test binary) and returns the folder it lands in: the test binary runs
/// from `target/<profile>/deps`.
fn build_library() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("the test binary's folder");
    let dir = deps.parent().unwrap_or(deps).to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR: run this from `cargo test`");
    let mut build = Command::new(&cargo);
    build.args(["build", "--quiet", "--lib"]).current_dir(&crate_dir);
    if dir.file_name().is_some_and(|p| p == "release") {
        build.arg("--release");
    }
    let status = build.status().unwrap_or_else(|e| panic!("running `{cargo} build` in {crate_dir}: {e}"));
    assert!(status.success(), "`cargo build` of the library in {crate_dir} failed");
    dir
}
