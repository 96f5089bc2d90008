//! A run's settings layered at the edge: `defaults.toml` ← the experiment file ← `FTLAB_*`
//! environment (`FTLAB_TRAIN__LR=1e-4`) ← flags and `--set key=value`, extracted into one
//! [`RunConfig`] and validated before the core sees it. Sweeps layer each grid cell the same way.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use ftlab_core::run::RunConfig;
use ftlab_core::{Error, Result};

/// The methods a bare `ftlab run` uses; the library's defaults name none.
const DEFAULTS: &str = include_str!("defaults.toml");

/// Environment variables that share the `FTLAB_` prefix but are not run settings.
const NOT_SETTINGS: [&str; 2] = ["LOG", "PLUGIN_PATH"];

/// A setting by its dotted key (`train.lr`) and value, as flags and `--set` give them.
pub type Override = (String, toml::Value);

/// Layers the defaults ← `file` ← environment ← `overrides`, then validates.
pub fn load(file: Option<&Path>, overrides: &[Override]) -> Result<RunConfig> {
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
/// without its `[grid]` table); the layering of every grid cell.
pub fn resolve(text: &str, overrides: &[Override]) -> Result<RunConfig> {
    finish(defaults().merge(Toml::string(text)), overrides)
}

fn defaults() -> Figment {
    Figment::from(Serialized::defaults(RunConfig::default())).merge(Toml::string(DEFAULTS))
}

/// The layers after the file: environment, then overrides; then extraction and validation.
fn finish(mut figment: Figment, overrides: &[Override]) -> Result<RunConfig> {
    figment = figment.merge(Env::prefixed("FTLAB_").ignore(&NOT_SETTINGS).split("__"));
    for (key, value) in overrides {
        figment = figment.merge(Serialized::global(key.as_str(), value));
    }
    let config: RunConfig = figment.extract().map_err(|e| Error::RunConfig(e.to_string()))?;
    config.validate()?;
    Ok(config)
}

/// Parses `key=value` (`--set train.lr=1e-4`); the value is read as TOML (numbers, booleans,
/// arrays, inline tables) and as a plain string otherwise.
pub fn parse_set(assignment: &str) -> Result<Override> {
    let (key, value) = assignment
        .split_once('=')
        .ok_or_else(|| Error::RunConfig(format!("`--set {assignment}`: expected key=value, e.g. train.lr=1e-4")))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(Error::RunConfig(format!("`--set {assignment}`: empty key")));
    }
    let parsed = format!("v = {value}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v"));
    Ok((key.to_string(), parsed.unwrap_or_else(|| toml::Value::String(value.to_string()))))
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
