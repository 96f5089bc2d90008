//! `ftlab plugins list|info|install|new`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
use ftlab_core::methods::check::{check_method, CheckOptions};
use ftlab_registry::{Registry, RegistryError};
use ftlab_sdk::Role;
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// List method libraries on the search path (next to the ftlab binary, $FTLAB_PLUGIN_PATH,
    /// ~/.local/share/ftlab/plugins) with their methods, or why a library was refused.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Describe a method: role, library, description, hyperparameters with types and defaults.
    Info {
        /// Method name.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check the properties every method must have, on the embedded model and task: the training
    /// loss falls; base parameters it does not train stay bit-identical; an adapter's export,
    /// imported into a fresh run, gives the same logits; a mergeable adapter's merged logits
    /// equal its hooked ones (adapters run under the default objective, `pbft`). Exit code 1
    /// when one fails.
    Check {
        /// Method name.
        name: String,
        /// Epochs of training (batches of 8 of 32 examples).
        #[arg(long, default_value_t = 10)]
        epochs: usize,
        /// Constant learning rate (prompt tuning wants ~0.3).
        #[arg(long, default_value_t = 1e-2)]
        lr: f64,
        /// The embedded task to train on: `synthetic-nli`, or `text` (the embedded corpus) for an
        /// objective that models documents, such as `lm`.
        #[arg(long, default_value = "synthetic-nli")]
        task: String,
        /// The method's settings as JSON (default: its defaults), e.g. `--config '{"rank": 4}'`.
        #[arg(long, default_value = "{}", value_parser = parse_json)]
        config: serde_json::Value,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Open libraries in this process and print one JSON verdict per library (what a host runs
    /// in a child process before trusting a library; see ftlab_registry::probe).
    #[command(hide = true)]
    Probe {
        /// The library files.
        paths: Vec<PathBuf>,
    },
    /// Verify a method library and copy it into the user's plugin folder.
    Install {
        /// The library file (e.g. target/release/libmy_method.so).
        path: PathBuf,
    },
    /// Scaffold a method library crate that builds against this ftlab's SDK and libtorch.
    New {
        /// Method (and crate) name.
        name: String,
        /// Whether the example method is an objective or an adapter.
        #[arg(long, value_enum, default_value_t = RoleArg::Adapter)]
        role: RoleArg,
        /// Folder to create the crate in (default: the current folder).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The ftlab-sdk dependency as a Cargo.toml value (default: a path to the SDK this ftlab
        /// was built from).
        #[arg(long)]
        sdk: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Objective,
    Adapter,
}

#[derive(Serialize)]
struct Row {
    name: Option<String>,
    role: Option<Role>,
    version: Option<String>,
    library: PathBuf,
    status: String,
}

pub fn run(command: PluginsCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginsCommand::List { json } => list(json),
        PluginsCommand::Info { name, json } => info(&name, json),
        PluginsCommand::Probe { paths } => {
            ftlab_registry::probe::print_verdicts(&paths).map_err(crate::StdoutError)?;
            Ok(ExitCode::SUCCESS)
        }
        PluginsCommand::Check { name, epochs, lr, task, config, json } => {
            check(&name, CheckOptions { epochs, lr, task, config, ..CheckOptions::default() }, json)
        }
        PluginsCommand::Install { path } => install(&path),
        PluginsCommand::New { name, role, dir, sdk } => new(&name, role, &dir, sdk),
    }
}

fn rows(registry: &Registry) -> Vec<Row> {
    let mut rows = Vec::new();
    for library in registry.libraries() {
        match &library.status {
            Ok(methods) => rows.extend(methods.iter().map(|m| Row {
                name: Some(m.name.clone()),
                role: Some(m.role),
                version: Some(m.version.clone()),
                library: library.path.clone(),
                status: "ok".into(),
            })),
            Err(e) => rows.push(Row {
                name: None,
                role: None,
                version: None,
                library: library.path.clone(),
                status: format!("refused: {e}"),
            }),
        }
    }
    rows
}

fn list(json: bool) -> anyhow::Result<ExitCode> {
    let rows = rows(&Registry::discover());
    if json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{:<20} {:<10} {:<8} {:<8} library", "name", "role", "version", "status");
    for r in &rows {
        let role = r.role.map(role_name).unwrap_or("-");
        let (status, reason) = match r.status.strip_prefix("refused: ") {
            Some(reason) => ("refused", format!("\n    {reason}")),
            None => ("ok", String::new()),
        };
        let name = r.name.as_deref().unwrap_or("-");
        let version = r.version.as_deref().unwrap_or("-");
        outln!("{name:<20} {role:<10} {version:<8} {status:<8} {}{reason}", r.library.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_json(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

fn check(name: &str, options: CheckOptions, json: bool) -> anyhow::Result<ExitCode> {
    // An adapter is checked under the run's default objective.
    let objective = crate::config::load(None, &[])?.method;
    let checks = check_method(&Registry::discover(), name, &objective, &options)?;
    let failed = checks.iter().any(|c| c.passed == Some(false));
    if json {
        outln!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            let verdict = match c.passed {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "n/a",
            };
            outln!("{verdict:<5} {:<46} {}", c.property, c.detail);
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Objective => "objective",
        Role::Adapter => "adapter",
    }
}

fn info(name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let registry = Registry::discover();
    let Some(method) = registry.methods().find(|m| m.name == name) else {
        let known: Vec<&str> = registry.methods().map(|m| m.name.as_str()).collect();
        bail!("no method `{name}`; available: {}", known.join(", "));
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(method)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{} ({}, version {})", method.name, role_name(method.role), method.version);
    outln!("library: {}", method.library.display());
    outln!();
    outln!("{}", method.description);
    outln!();
    outln!("hyperparameters:");
    let properties = method.config_schema.get("properties").and_then(|p| p.as_object());
    match properties {
        Some(props) if !props.is_empty() => {
            for (key, schema) in props {
                let ty = schema.get("type").map(|t| t.to_string().replace('"', "")).unwrap_or_else(|| "any".into());
                let default = method.config_defaults.get(key).map(|d| d.to_string()).unwrap_or_else(|| "-".into());
                let doc = schema.get("description").and_then(|d| d.as_str()).unwrap_or("");
                outln!("  {key:<20} {ty:<10} default {default:<10} {doc}");
            }
        }
        _ => outln!("  (none)"),
    }
    Ok(ExitCode::SUCCESS)
}

fn install(path: &Path) -> anyhow::Result<ExitCode> {
    let mut candidate = Registry::default();
    let library = candidate.add(path);
    let methods = match &library.status {
        Ok(methods) => methods.clone(),
        Err(e) => bail!("not installed: {e}"),
    };
    // Refuse names that another installed or built-in library already declares.
    let existing = Registry::discover();
    let file_name = path.file_name().context("the path has no file name")?;
    for m in &methods {
        if let Some(other) = existing.methods().find(|o| o.name == m.name && o.library.file_name() != Some(file_name)) {
            bail!(
                "not installed: {}",
                RegistryError::Duplicate { path: path.into(), name: m.name.clone(), first: other.library.clone() }
            );
        }
    }
    let dir = ftlab_registry::user_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let target = dir.join(file_name);
    // Copy beside, then rename: a concurrent listing never sees half a library.
    let partial = target.with_extension("partial");
    std::fs::copy(path, &partial).with_context(|| format!("copying {} to {}", path.display(), partial.display()))?;
    std::fs::rename(&partial, &target).with_context(|| format!("moving into {}", target.display()))?;
    let names: Vec<&str> = methods.iter().map(|m| m.name.as_str()).collect();
    outln!("installed {} ({}) into {}", path.display(), names.join(", "), target.display());
    Ok(ExitCode::SUCCESS)
}

fn new(name: &str, role: RoleArg, dir: &Path, sdk: Option<String>) -> anyhow::Result<ExitCode> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        bail!("`{name}` is not a valid method name: use lowercase letters, digits and `_`, starting with a letter");
    }
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    let sdk = sdk.unwrap_or_else(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk");
        let path = path.canonicalize().unwrap_or(path);
        format!("{{ path = \"{}\" }}", path.display())
    });
    let ftlab = std::env::current_exe().context("locating the ftlab binary")?;
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{ftlab}}", &ftlab.display().to_string())
            .replace("{{sdk}}", &sdk)
            .replace("{{libtorch}}", ftlab_sdk::abi::LIBTORCH_DIR)
    };
    let source = match role {
        RoleArg::Adapter => ftlab_sdk::template::ADAPTER,
        RoleArg::Objective => ftlab_sdk::template::OBJECTIVE,
    };
    for (file, text) in [
        ("Cargo.toml", fill(ftlab_sdk::template::CARGO_TOML)),
        (".cargo/config.toml", fill(ftlab_sdk::template::CARGO_CONFIG)),
        ("src/lib.rs", fill(source)),
        ("tests/check.rs", fill(ftlab_sdk::template::CHECK_TEST)),
    ] {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().expect("has a parent"))
            .with_context(|| format!("creating {}", root.display()))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    outln!("created {}: `cargo test` there runs `ftlab plugins check {name}` on it; build it with", root.display());
    outln!("`cargo build --release`, then");
    outln!("  ftlab plugins install {}/target/release/lib{name}.{}", root.display(), std::env::consts::DLL_EXTENSION);
    Ok(ExitCode::SUCCESS)
}
