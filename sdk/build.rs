//! Records which libtorch this SDK is compiled against, so the registry can refuse a plugin
//! built against another one (host and plugins must share one libtorch in one process).
//!
//! `LIBTORCH` is set by the workspace's `.cargo/config.toml` (and by the `.cargo/config.toml`
//! that `ftlab plugins new` writes into a scaffolded plugin). Its version comes from the
//! `build-version` file of a libtorch zip or the `version.py` of a PyPI torch folder.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let dir = std::env::var("LIBTORCH").unwrap_or_default();
    let root = Path::new(&dir);
    let version = std::fs::read_to_string(root.join("build-version"))
        .ok()
        .map(|v| v.trim().to_string())
        .or_else(|| {
            let text = std::fs::read_to_string(root.join("version.py")).ok()?;
            let line = text.lines().find(|l| l.starts_with("__version__"))?;
            Some(line.split(['\'', '"']).nth(1)?.to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rerun-if-changed={}", root.join("version.py").display());
    println!("cargo:rustc-env=BUILT_LIBTORCH_VERSION={version}");
    println!("cargo:rustc-env=BUILT_LIBTORCH_DIR={dir}");
}
