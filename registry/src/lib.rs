//! # ftlab-registry: find, verify and load method libraries
//!
//! Method libraries are `cdylib`s built against `ftlab-sdk`. The registry looks for them next
//! to the running binary (so a workspace build finds the built-in methods in `target/<profile>`),
//! in `$FTLAB_PLUGIN_PATH`, and in the user's data folder (`$XDG_DATA_HOME/ftlab/plugins`, by
//! default `~/.local/share/ftlab/plugins`). Each library is verified before any method in it is
//! used: abi_stable's layout and version checks, then the SDK, tch and libtorch versions it
//! records against the host's, then unique method names. A library that fails is kept in the
//! listing with its reason and skipped; listing never fails.
//!
//! A host that can re-run itself as a prober has each library opened first in a child process
//! ([`probe`]), so a library that crashes when loaded is refused instead of taking the host
//! down, and a library is loaded into the host only when one of its methods is used.
//!
//! abi_stable's `RootModule::load_from_*` caches one module per interface type, so libraries
//! are opened with `lib_header_from_path(..)?.init_root_module()` instead, which loads any
//! number of them. Libraries are never unloaded (their code may back live tensors' deleters).

pub mod probe;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use abi_stable::library::{lib_header_from_path, LibraryError};
use abi_stable::std_types::RStr;
use ftlab_sdk::abi::{this_abi, AbiInfo, HostRef, MethodBox, MethodInfo, MethodLibraryRef, PluginError};
use ftlab_sdk::Role;
use serde::{Deserialize, Serialize};

/// Why a library or method cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The dynamic loader refused the file (not a shared library, or missing symbols — e.g.
    /// built against another libtorch).
    #[error("{path}: cannot be loaded: {message}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        message: String,
    },
    /// A shared library without an ftlab root module.
    #[error("{path}: not an ftlab method library (it exports no ftlab root module)")]
    NotAPlugin {
        /// The file.
        path: PathBuf,
    },
    /// abi_stable's checks failed: another abi_stable, SDK major version or type layout.
    #[error("{path}: incompatible with this ftlab: {message}")]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// abi_stable's explanation.
        message: String,
    },
    /// The library was built against another SDK, tch or libtorch.
    #[error(
        "{path}: built against {what} {library}, but this ftlab uses {host}; rebuild the library against this SDK"
    )]
    VersionMismatch {
        /// The file.
        path: PathBuf,
        /// `ftlab-sdk`, `tch` or `libtorch`.
        what: &'static str,
        /// The library's version.
        library: String,
        /// The host's version.
        host: String,
    },
    /// Another library already declares a method of this name.
    #[error("{path}: method `{name}` is already declared by {first}")]
    Duplicate {
        /// The later library.
        path: PathBuf,
        /// The method name.
        name: String,
        /// The library that declared it first.
        first: PathBuf,
    },
    /// The library's probe refused it (see [`probe`]): a check failed, or opening it crashed the
    /// probing process.
    #[error("{message}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// Why, naming the file.
        message: String,
    },
    /// A call into the library failed (it panicked, or returned an error).
    #[error("{0}")]
    Plugin(#[from] PluginError),
    /// No usable library reads adapters of this format.
    #[error("no adapter method reads `peft_type` `{export_type}`; the installed methods read: {available}")]
    NoExportType {
        /// The adapter's `peft_type`.
        export_type: String,
        /// The installed formats and the methods that read them.
        available: String,
    },
    /// No usable library declares this method.
    #[error("no method `{name}` ({role:?}); available: {available}")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The role asked for.
        role: Role,
        /// Available methods of that role.
        available: String,
    },
}

/// A method a usable library declares.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodDescriptor {
    /// Unique name.
    pub name: String,
    /// Objective or adapter.
    pub role: Role,
    /// Library version.
    pub version: String,
    /// Description with the paper link.
    pub description: String,
    /// JSON schema of the hyperparameters.
    pub config_schema: serde_json::Value,
    /// Default hyperparameters.
    pub config_defaults: serde_json::Value,
    /// The format tag of the adapter files it exports and imports (PEFT's `peft_type`), if any.
    pub export_type: Option<String>,
    /// The library file.
    pub library: PathBuf,
}

/// One library file found on the search path.
#[derive(Clone)]
pub struct Library {
    /// The file.
    pub path: PathBuf,
    /// Its methods, or why it was refused.
    pub status: Result<Vec<MethodDescriptor>, RegistryError>,
    /// The opened library, once the host has opened it.
    module: OnceLock<MethodLibraryRef>,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library").field("path", &self.path).field("status", &self.status).finish_non_exhaustive()
    }
}

/// The libraries on a search path, verified, and the methods they offer.
#[derive(Debug, Default)]
pub struct Registry {
    libraries: Vec<Library>,
}

impl Registry {
    /// Scans the default search path (see the crate docs).
    pub fn discover() -> Self {
        Self::from_dirs(&search_path())
    }

    /// Scans `dirs` in order (files in each sorted by name); earlier declarations win.
    pub fn from_dirs(dirs: &[PathBuf]) -> Self {
        let mut files: Vec<PathBuf> = Vec::new();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            let mut found: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_library(p)).collect();
            found.sort();
            for file in found {
                let canonical = file.canonicalize().unwrap_or(file);
                if !files.contains(&canonical) {
                    files.push(canonical);
                }
            }
        }
        let mut registry = Self::default();
        registry.add_all(&files);
        registry
    }

    /// Verifies one library file, keeping it (usable or refused) in the listing.
    pub fn add(&mut self, path: &Path) -> &Library {
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        self.add_all(std::slice::from_ref(&canonical));
        self.libraries.iter().find(|l| l.path == canonical).expect("just added")
    }

    /// Verifies `paths` (canonical): in a child process when [`probe`] is enabled, else by
    /// opening each here.
    fn add_all(&mut self, paths: &[PathBuf]) {
        let new: Vec<PathBuf> =
            paths.iter().filter(|p| !self.libraries.iter().any(|l| &l.path == *p)).cloned().collect();
        let opened: Vec<(Result<Vec<MethodDescriptor>, RegistryError>, Option<MethodLibraryRef>)> = if probe::enabled()
        {
            probe::probe(&new).into_iter().map(|status| (status, None)).collect()
        } else {
            new.iter()
                .map(|path| match open(path) {
                    Ok((module, methods)) => (Ok(methods), Some(module)),
                    Err(e) => (Err(e), None),
                })
                .collect()
        };
        for (path, (status, module)) in new.into_iter().zip(opened) {
            let status = status.and_then(|methods| match self.duplicate(&path, &methods) {
                Some(e) => Err(e),
                None => Ok(methods),
            });
            let cell = OnceLock::new();
            if let (Ok(_), Some(module)) = (&status, module) {
                let _ = cell.set(module);
            }
            self.libraries.push(Library { path, status, module: cell });
        }
    }

    fn duplicate(&self, path: &Path, methods: &[MethodDescriptor]) -> Option<RegistryError> {
        let mut seen: BTreeMap<&str, &Path> = BTreeMap::new();
        for m in self.methods() {
            seen.insert(&m.name, &m.library);
        }
        for m in methods {
            if let Some(first) = seen.insert(&m.name, path) {
                return Some(RegistryError::Duplicate { path: path.into(), name: m.name.clone(), first: first.into() });
            }
        }
        None
    }

    /// Every library found, usable or not.
    pub fn libraries(&self) -> &[Library] {
        &self.libraries
    }

    /// Every method of every usable library.
    pub fn methods(&self) -> impl Iterator<Item = &MethodDescriptor> {
        self.libraries.iter().filter_map(|l| l.status.as_ref().ok()).flatten()
    }

    /// The method `name` of role `role`.
    pub fn find(&self, name: &str, role: Role) -> Result<&MethodDescriptor, RegistryError> {
        self.methods().find(|m| m.name == name && m.role == role).ok_or_else(|| RegistryError::Unknown {
            name: name.into(),
            role,
            available: self
                .methods()
                .filter(|m| m.role == role)
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The adapter whose exports carry the format tag `export_type` (PEFT's `peft_type`).
    pub fn find_export_type(&self, export_type: &str) -> Result<&MethodDescriptor, RegistryError> {
        let tagged = || self.methods().filter(|m| m.export_type.is_some());
        tagged().find(|m| m.export_type.as_deref() == Some(export_type)).ok_or_else(|| RegistryError::NoExportType {
            export_type: export_type.into(),
            available: tagged()
                .map(|m| format!("{} ({})", m.export_type.as_deref().unwrap_or_default(), m.name))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Creates method `name` (of `role`) from JSON hyperparameters, lending it the host.
    pub fn create(&self, name: &str, role: Role, config: &str, host: HostRef<'_>) -> Result<MethodBox, RegistryError> {
        let module = self.module(self.find(name, role)?)?;
        Ok(module.create()(RStr::from_str(name), RStr::from_str(config), host).into_result()?)
    }

    /// The hyperparameters (JSON) of adapter `name` that reproduce an exported adapter with
    /// `adapter_config` (the text of its `adapter_config.json`).
    pub fn config_from_export(&self, name: &str, adapter_config: &str) -> Result<serde_json::Value, RegistryError> {
        let module = self.module(self.find(name, Role::Adapter)?)?;
        let config = module.config_from_export()(RStr::from_str(name), RStr::from_str(adapter_config)).into_result()?;
        serde_json::from_str(&config).map_err(|e| {
            RegistryError::Plugin(PluginError {
                kind: ftlab_sdk::abi::ErrorKind::Failed,
                method: name.into(),
                call: "config_from_export".into(),
                message: format!("returned invalid JSON: {e}").into(),
            })
        })
    }

    /// The opened library of `descriptor`, opened here the first time a method of it is used
    /// (its probe passed, so opening it is safe).
    fn module(&self, descriptor: &MethodDescriptor) -> Result<MethodLibraryRef, RegistryError> {
        let library = (self.libraries.iter().find(|l| l.path == descriptor.library))
            .expect("a descriptor comes from a listed library");
        if let Some(module) = library.module.get() {
            return Ok(*module);
        }
        let (module, _) = open(&library.path)?;
        Ok(*library.module.get_or_init(|| module))
    }
}

/// Opens a library and checks everything before trusting its method list.
fn open(path: &Path) -> Result<(MethodLibraryRef, Vec<MethodDescriptor>), RegistryError> {
    let header = lib_header_from_path(path).map_err(|e| match e {
        LibraryError::GetSymbolError { .. } => RegistryError::NotAPlugin { path: path.into() },
        LibraryError::OpenError { .. } => RegistryError::Open { path: path.into(), message: e.to_string() },
        other => RegistryError::Incompatible { path: path.into(), message: other.to_string() },
    })?;
    let module = header
        .init_root_module::<MethodLibraryRef>()
        .map_err(|e| RegistryError::Incompatible { path: path.into(), message: e.to_string() })?;
    check_versions(path, &module.abi_info()(), &this_abi())?;
    let mut methods: Vec<MethodDescriptor> =
        module.methods()().into_result()?.into_iter().map(|m| descriptor(m, path)).collect();
    methods.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((module, methods))
}

fn check_versions(path: &Path, library: &AbiInfo, host: &AbiInfo) -> Result<(), RegistryError> {
    for (what, l, h) in [
        ("ftlab-sdk", &library.sdk_version, &host.sdk_version),
        ("tch", &library.tch_version, &host.tch_version),
        ("libtorch", &library.libtorch_version, &host.libtorch_version),
    ] {
        if l != h {
            return Err(RegistryError::VersionMismatch {
                path: path.into(),
                what,
                library: l.to_string(),
                host: h.to_string(),
            });
        }
    }
    Ok(())
}

fn descriptor(m: MethodInfo, path: &Path) -> MethodDescriptor {
    let json = |s: &str| serde_json::from_str(s).unwrap_or(serde_json::Value::Null);
    MethodDescriptor {
        name: m.name.into_string(),
        role: m.role,
        version: m.version.into_string(),
        description: m.description.into_string(),
        config_schema: json(&m.config_schema),
        config_defaults: json(&m.config_defaults),
        export_type: Some(m.export_type.into_string()).filter(|t| !t.is_empty()),
        library: path.into(),
    }
}

fn is_library(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    path.is_file() && ext == std::env::consts::DLL_EXTENSION
}

/// The default search path: next to the running binary, `$FTLAB_PLUGIN_PATH`, the user folder.
pub fn search_path() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf)) {
        dirs.push(dir);
    }
    if let Some(paths) = std::env::var_os("FTLAB_PLUGIN_PATH") {
        dirs.extend(std::env::split_paths(&paths).filter(|p| !p.as_os_str().is_empty()));
    }
    dirs.push(user_dir());
    dirs
}

/// Where `ftlab plugins install` copies libraries: `$XDG_DATA_HOME/ftlab/plugins`, by default
/// `~/.local/share/ftlab/plugins`.
pub fn user_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("XDG_DATA_HOME")
        .unwrap_or_else(|| var("HOME").unwrap_or_else(|| PathBuf::from(".")).join(".local/share"))
        .join("ftlab/plugins")
}
