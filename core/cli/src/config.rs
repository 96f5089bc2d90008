//! A run's settings layered at the edge: `defaults.toml` ← the experiment file ← `FTLAB_*`
//! environment (`FTLAB_TRAIN__LR=1e-4`) ← flags and `--set key=value`, extracted into one
//! [`RunConfig`] and validated before the core sees it. Sweeps layer each grid cell the same way.
//!
//! Every layer is named by where it came from (the file, `FTLAB_TRAIN__LR`, `--set train.lr=…`,
//! `--shots`), so an error points at what the user wrote.

use std::path::Path;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use ftlab_core::run::RunConfig;
use ftlab_core::{Error, Result};

/// The methods a bare `ftlab run` uses; the library's defaults name none.
const DEFAULTS: &str = include_str!("defaults.toml");

/// One setting by its dotted key (`train.lr`), with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// The dotted key.
    pub key: String,
    /// The value, as TOML.
    pub value: toml::Value,
    /// The flag, variable or file that gave it, as the user wrote it.
    pub origin: String,
}

impl Setting {
    /// A setting from a flag such as `--shots`.
    pub fn flag(flag: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        Self { key: key.into(), value: value.into(), origin: flag.into() }
    }
}

impl Provider for Setting {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.origin.clone())
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Serialized::global(&self.key, &self.value).data()
    }
}

/// Layers the defaults ← `file` ← environment ← `overrides`, then validates.
pub fn load(file: Option<&Path>, overrides: &[Setting]) -> Result<RunConfig> {
    let mut figment = defaults();
    if let Some(path) = file {
        if !path.is_file() {
            let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "no such experiment file");
            return Err(Error::Io { path: path.into(), source: missing });
        }
        figment = figment.merge(Toml::file(path));
    }
    finish(figment, overrides)
}

/// Like [`load`], with the experiment file's settings given as TOML text (a grid's settings
/// without its `[grid]` table) and dotted-key layers over them; the layering of every grid cell.
pub fn resolve(text: &str, layers: &[(String, toml::Value)]) -> Result<RunConfig> {
    let origin = |key: &str| format!("the grid cell's `{key}`");
    let layers: Vec<Setting> = layers
        .iter()
        .map(|(key, value)| Setting { key: key.clone(), value: value.clone(), origin: origin(key) })
        .collect();
    finish(defaults().merge(Toml::string(text)), &layers)
}

fn defaults() -> Figment {
    Figment::from(Serialized::defaults(RunConfig::default())).merge(Toml::string(DEFAULTS))
}

/// The layers after the file: environment, then overrides; then extraction and validation.
fn finish(mut figment: Figment, overrides: &[Setting]) -> Result<RunConfig> {
    for setting in env_settings(std::env::vars()).iter().chain(overrides) {
        figment = figment.merge(setting.clone());
    }
    let config: RunConfig = figment.extract().map_err(|e| Error::RunConfig(e.to_string()))?;
    config.validate()?;
    Ok(config)
}

/// The `FTLAB_*` variables that name a setting: `FTLAB_<KEY>` or `FTLAB_<SECTION>__<KEY>` where
/// the first part is a run setting (`FTLAB_SHOTS`, `FTLAB_TRAIN__LR` → `train.lr`). Other
/// `FTLAB_` variables (`FTLAB_LOG`, `FTLAB_PLUGIN_PATH`, a stray `FTLAB_HOME`) are not settings
/// and are skipped; a wrong key inside a section (`FTLAB_TRAIN__LRR`) is an error naming it.
fn env_settings(vars: impl IntoIterator<Item = (String, String)>) -> Vec<Setting> {
    let sections = match toml::Value::try_from(RunConfig::default()) {
        Ok(toml::Value::Table(table)) => table.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let mut settings = Vec::new();
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix("FTLAB_") else { continue };
        let key = rest.to_lowercase().replace("__", ".");
        if !sections.iter().any(|s| key.split('.').next() == Some(s.as_str())) {
            tracing::debug!("{name} is not a run setting: skipped");
            continue;
        }
        settings.push(Setting { key, value: toml_or_string(&value), origin: name });
    }
    settings
}

/// Parses `key=value` (`--set train.lr=1e-4`); the value is read as TOML (numbers, booleans,
/// arrays, inline tables) and as a plain string otherwise.
pub fn parse_set(assignment: &str) -> Result<Setting> {
    let (key, value) = assignment
        .split_once('=')
        .ok_or_else(|| Error::RunConfig(format!("`--set {assignment}`: expected key=value, e.g. train.lr=1e-4")))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(Error::RunConfig(format!("`--set {assignment}`: empty key")));
    }
    Ok(Setting { key: key.into(), value: toml_or_string(value), origin: format!("--set {assignment}") })
}

/// `value` read as a TOML value, else as a plain string.
fn toml_or_string(value: &str) -> toml::Value {
    let parsed = format!("v = {value}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v"));
    parsed.unwrap_or_else(|| toml::Value::String(value.to_string()))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use ftlab_core::run::config::TrainConfig;
    use ftlab_core::sweep::grid::{self, Grid};

    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn experiments() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments")
    }

    #[test]
    fn layers_file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "exp.toml",
            "shots = 16\n[train]\nlr = 3e-5\nepochs = 2\n[method]\nname = \"vanilla_ft\"\n",
        );
        let overrides = vec![parse_set("train.epochs=5").unwrap(), parse_set("task=rte").unwrap()];
        let c = load(Some(&file), &overrides).unwrap();
        assert_eq!((c.shots, c.train.lr, c.train.epochs, c.task.as_str()), (16, 3e-5, 5, "rte"));
        assert_eq!(c.method.name, "vanilla_ft");
        assert_eq!(c.train.batch_size, TrainConfig::default().batch_size);
    }

    #[test]
    fn the_defaults_name_the_methods() {
        let c = load(None, &[]).unwrap();
        assert_eq!((c.method.name.as_str(), c.eval.icl_method.name.as_str()), ("pbft", "icl"));
        let c = load(None, &[parse_set("method.config.k=4").unwrap()]).unwrap();
        assert_eq!((c.method.name.as_str(), &c.method.config), ("pbft", &serde_json::json!({"k": 4})));
    }

    #[test]
    fn environment_variables_that_name_no_setting_are_skipped() {
        let vars = [("FTLAB_HOME", "/x"), ("FTLAB_LOG", "debug"), ("FTLAB_TRAIN__LR", "1e-4"), ("FTLAB_SHOTS", "4")];
        let settings = env_settings(vars.map(|(k, v)| (k.to_string(), v.to_string())));
        let keys: Vec<&str> = settings.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["train.lr", "shots"]);
        assert_eq!(settings[0].value, toml::Value::Float(1e-4));
        assert_eq!(settings[0].origin, "FTLAB_TRAIN__LR");
    }

    #[test]
    fn errors_name_the_flag_or_variable_that_set_the_value() {
        let err = load(None, &[parse_set("train.epochs=-1").unwrap()]).unwrap_err().to_string();
        assert!(err.contains("--set train.epochs=-1") && !err.contains(".rs:"), "{err}");
        let err = load(None, &[Setting::flag("--shots", "shots", "many")]).unwrap_err().to_string();
        assert!(err.contains("--shots"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_valid_ones() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "exp.toml", "[train]\nlearning_rate = 1e-4\n");
        let err = load(Some(&file), &[]).unwrap_err().to_string();
        assert!(err.contains("learning_rate") && err.contains("lr") && err.contains("exp.toml"), "{err}");
        let err = load(None, &[parse_set("shotz=4").unwrap()]).unwrap_err().to_string();
        assert!(err.contains("shotz") && err.contains("shots"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let err = load(None, &[parse_set("train.warmup_ratio=1.5").unwrap()]).unwrap_err().to_string();
        assert!(err.contains("train.warmup_ratio"), "{err}");
        let err = load(Some(Path::new("/no/such.toml")), &[]).unwrap_err().to_string();
        assert!(err.contains("/no/such.toml"), "{err}");
    }

    #[test]
    fn method_tables_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "exp.toml",
            "[[adapters]]\nname = \"lora\"\nconfig = { r = 4, targets = [\"q_proj\"] }\n",
        );
        let c = load(Some(&file), &[]).unwrap();
        assert_eq!(c.adapters[0].config, serde_json::json!({"r": 4, "targets": ["q_proj"]}));
        assert_eq!(c.run_name(), "pbft+lora_synthetic-nli_tiny-opt_k128_d0_s0");
    }

    #[test]
    fn every_shipped_experiment_file_loads() {
        let mut seen = 0;
        for entry in std::fs::read_dir(experiments()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                load(Some(&path), &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 2);
    }

    fn grid(text: &str) -> Result<Grid> {
        let dir = tempfile::tempdir().unwrap();
        grid::load(&write(dir.path(), "grid.toml", text), &[], &resolve)
    }

    #[test]
    fn grid_axes_expand_to_the_product_with_when_settings() {
        let g = grid(
            "shots = 8\n[train]\nlr = 1e-3\n[grid]\nadapter = [\"full\", \"lora\"]\ndata_seed = [0, 1, 2]\n\
             [grid.when.\"adapter=lora\"]\n\"train.lr\" = 1e-4\n",
        )
        .unwrap();
        assert_eq!(g.cells.len(), 6);
        let lora: Vec<_> = g.cells.iter().filter(|c| !c.config.adapters.is_empty()).collect();
        assert_eq!(lora.len(), 3);
        assert!(lora.iter().all(|c| c.config.train.lr == 1e-4 && c.config.adapters[0].name == "lora"));
        assert_eq!(g.cells[0].config.train.lr, 1e-3);
        assert_eq!(g.cells[0].axes, ["adapter=full", "data_seed=0"]);
        assert_eq!(g.cells[1].name(), "pbft_synthetic-nli_tiny-opt_k8_d1_s0");
    }

    #[test]
    fn grid_cells_that_share_a_run_name_are_an_error() {
        let err = grid("[grid]\n\"train.lr\" = [1e-4, 1e-3]\n").unwrap_err().to_string();
        assert!(err.contains("would both run as") && err.contains("train.lr=0.0001"), "{err}");
    }

    #[test]
    fn bad_grids_name_the_problem() {
        assert!(grid("shots = 8\n").unwrap_err().to_string().contains("no [grid]"));
        assert!(grid("[grid]\nshots = []\n").unwrap_err().to_string().contains("non-empty array"));
        let err = grid("[grid]\nshots = [8]\n[grid.when.\"shots=9\"]\nseed = 1\n").unwrap_err().to_string();
        assert!(err.contains("shots=9"), "{err}");
        let err = grid("[grid]\nshots = [8, 0]\n").unwrap_err().to_string();
        assert!(err.contains("shots=0") && err.contains("at least 1"), "{err}");
    }

    #[test]
    fn every_shipped_grid_loads() {
        let mut seen = 0;
        for entry in std::fs::read_dir(experiments().join("grids")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let g = grid::load(&path, &[], &resolve).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(!g.cells.is_empty());
                seen += 1;
            }
        }
        assert!(seen >= 2);
    }
}
