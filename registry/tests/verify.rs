//! Verification of real method libraries built into `target/<profile>` by
//! `cargo test --workspace` (the fixtures in tests/plugins/): a good library, one declaring
//! another SDK version, a duplicate method name, a shared library that is not a plugin, and a
//! file that is not a library at all. Listing must report each and never fail.

use std::path::{Path, PathBuf};

use ftlab_registry::{Registry, RegistryError};
use ftlab_sdk::Role;

/// `target/<profile>`, where cargo puts the workspace's cdylibs.
fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

fn fixture(name: &str) -> PathBuf {
    let path = build_dir().join(format!("libftlab_fixture_{name}.{}", std::env::consts::DLL_EXTENSION));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo test --workspace` (it builds the fixture libraries)",
        path.display()
    );
    path
}

fn copy_into(dir: &Path, from: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(from, &to).unwrap();
    to
}

#[test]
fn a_good_library_lists_its_methods() {
    let mut registry = Registry::default();
    let library = registry.add(&fixture("faulty"));
    let names: Vec<&str> = library.status.as_ref().unwrap().iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "fault_panic_at_new",
            "fault_panic_in_hook",
            "fault_panic_in_loss",
            "fault_panic_in_sites",
            "fault_panic_in_training_inputs",
            "fault_torch_error",
            "fault_twin"
        ]
    );
    let loss = registry.find("fault_panic_in_loss", Role::Objective).unwrap();
    assert_eq!(loss.description, "Panics in `loss`.");
    // The role is part of the lookup.
    let err = registry.find("fault_panic_in_loss", Role::Adapter).unwrap_err().to_string();
    assert!(err.contains("fault_panic_in_loss") && err.contains("fault_twin"), "{err}");
}

#[test]
fn another_sdk_version_is_refused_with_both_versions() {
    let mut registry = Registry::default();
    let err = registry.add(&fixture("other_sdk")).status.clone().unwrap_err();
    assert!(matches!(err, RegistryError::VersionMismatch { what: "ftlab-sdk", .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("0.0.1") && text.contains(env!("CARGO_PKG_VERSION")) && text.contains("other_sdk"), "{text}");
}

#[test]
fn duplicate_names_refuse_the_later_library_and_many_libraries_load() {
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    copy_into(first.path(), &fixture("twin"), "libtwin.so");
    copy_into(second.path(), &fixture("faulty"), "libfaulty.so");
    let registry = Registry::from_dirs(&[first.path().into(), second.path().into()]);
    let statuses: Vec<_> = registry.libraries().iter().map(|l| l.status.as_ref().map(Vec::len)).collect();
    assert_eq!(statuses.len(), 2);
    assert_eq!(statuses[0].as_ref().ok(), Some(&1), "the twin library, found first, loads");
    let err = registry.libraries()[1].status.as_ref().unwrap_err();
    assert!(matches!(err, RegistryError::Duplicate { name, .. } if name == "fault_twin"), "{err}");
    assert!(err.to_string().contains("libtwin.so"), "{err}");
}

#[test]
fn files_that_are_not_plugins_are_listed_as_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("libgarbage.so"), b"\x7fELF but not really").unwrap();
    let gomp = Path::new(ftlab_sdk::abi::LIBTORCH_DIR).join("lib/libgomp.so.1");
    copy_into(dir.path(), &gomp, "libgomp_copy.so");
    std::fs::write(dir.path().join("README.txt"), b"ignored: not a library name").unwrap();
    copy_into(dir.path(), &fixture("faulty"), "libzz_faulty.so");

    let registry = Registry::from_dirs(&[dir.path().into()]);
    let libraries = registry.libraries();
    assert_eq!(libraries.len(), 3, "{libraries:?}");
    assert!(matches!(libraries[0].status, Err(RegistryError::Open { .. })), "{:?}", libraries[0]);
    assert!(matches!(libraries[1].status, Err(RegistryError::NotAPlugin { .. })), "{:?}", libraries[1]);
    assert!(libraries[1].status.as_ref().unwrap_err().to_string().contains("libgomp_copy.so"));
    assert_eq!(libraries[2].status.as_ref().map(Vec::len).ok(), Some(7), "a good library after bad ones still loads");
}
