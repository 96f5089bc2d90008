//! Experiment grids: one TOML file with a base run configuration and a `[grid]` table of axes,
//! expanded into the Cartesian product of the axes' values — one [`RunConfig`] per cell.
//!
//! ```toml
//! # Any run settings (as in `ftlab run --config`): the base of every cell.
//! model = "tiny-opt"
//! [train]
//! epochs = 4
//!
//! [grid]
//! method = ["pbft", "vanilla_ft"]   # the objective (`method.name`)
//! adapter = ["full", "lora"]        # `full` = no adapter; `lora+bitfit` = both, in order
//! shots = [16, 32]
//! data_seed = [0, 1, 2]
//! # Any other setting by its dotted key, e.g. "train.lr" = [1e-4, 1e-3]; the values must then
//! # show in the run name (model, task, method, adapters, shots, data_seed, seed).
//!
//! # Settings for the cells where an axis takes a value (the paper's lr for adapters).
//! [grid.when."adapter=lora"]
//! "train.lr" = 1e-4
//! ```
//!
//! A `[slurm]` table holds the resources `ftlab sweep --backend slurm` asks for (see
//! [`super::slurm`]); `"slurm.mem" = "64G"` in a `when` table changes them for those cells.
//!
//! `exclude = [{ method = "icl", adapter = "lora" }]` inside `[grid]` drops the cells that match
//! every pair of an entry (as a GitHub Actions matrix's `exclude`), e.g. combinations that mean
//! nothing.
//!
//! The caller layers each cell into a run configuration ([`Resolve`]: `ftlab` layers a cell
//! exactly as it layers a run, defaults ← the file's settings ← `FTLAB_*` environment ← the
//! layers given: the cell's axis values, its `when` settings, then the sweep's own
//! `--set`/`--out` overrides). Two cells with the same run folder name are an
//! error, since the second would overwrite (or be skipped as) the first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::run::RunConfig;

/// How the caller turns a cell's settings into a validated run configuration: the grid file's
/// settings as TOML text, then dotted-key layers over them.
pub type Resolve<'a> = &'a dyn Fn(&str, &[(String, toml::Value)]) -> Result<RunConfig>;

/// The table of conditional settings inside `[grid]`.
const WHEN: &str = "when";

/// The list of axis-value combinations left out, inside `[grid]`.
const EXCLUDE: &str = "exclude";

/// The table of Slurm resources at the top of a grid file (and `slurm.*` keys in `when`).
const SLURM: &str = "slurm";

/// One cell of a grid.
#[derive(Debug, Clone, PartialEq)]
pub struct GridCell {
    /// The axis values of this cell, as `axis=value`, in axis order.
    pub axes: Vec<String>,
    /// The resolved run configuration.
    pub config: RunConfig,
    /// Its Slurm resources: the file's `[slurm]` table with the cell's `when` overrides
    /// (`"slurm.mem" = "64G"`); read only by `--backend slurm`.
    pub slurm: toml::Table,
}

impl GridCell {
    /// The run folder's name.
    pub fn name(&self) -> String {
        self.config.run_name()
    }

    /// The run folder.
    pub fn dir(&self) -> PathBuf {
        self.config.out.join(self.name())
    }
}

/// A grid file, expanded.
#[derive(Debug, Clone)]
pub struct Grid {
    /// The file.
    pub path: PathBuf,
    /// Every cell, in Cartesian-product order (axes sorted by name, the last varying fastest).
    pub cells: Vec<GridCell>,
}

/// `value` as written after `axis=` in a `when` key: strings bare, anything else as TOML.
fn label(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The override(s) that set axis `axis` to `value`.
fn axis_override(path: &Path, axis: &str, value: &toml::Value) -> Result<(String, toml::Value)> {
    let bad = |what: &str| Error::RunConfig(format!("{}: grid axis `{axis}`: {what}", path.display()));
    match axis {
        "method" => {
            let name = value.as_str().ok_or_else(|| bad("values must be method names"))?;
            Ok(("method.name".into(), name.into()))
        }
        "adapter" => {
            let names = value.as_str().ok_or_else(|| bad("values must be adapter names, `full` or `a+b`"))?;
            let tables = names
                .split('+')
                .filter(|n| *n != "full")
                .map(|n| toml::Value::Table(toml::Table::from_iter([("name".to_string(), n.trim().into())])))
                .collect();
            Ok(("adapters".into(), toml::Value::Array(tables)))
        }
        _ => Ok((axis.to_string(), value.clone())),
    }
}

/// Reads and expands the grid at `path`; `overrides` (e.g. `--set`, `--out`) apply to every cell
/// last; `resolve` layers each cell.
pub fn load(path: &Path, overrides: &[(String, toml::Value)], resolve: Resolve) -> Result<Grid> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    let mut base: toml::Table =
        text.parse().map_err(|e| Error::RunConfig(format!("{}: invalid TOML: {e}", path.display())))?;
    let grid = match base.remove("grid") {
        Some(toml::Value::Table(grid)) => grid,
        Some(_) => return Err(Error::RunConfig(format!("{}: `grid` must be a table of axes", path.display()))),
        None => {
            return Err(Error::RunConfig(format!(
                "{}: no [grid] table (a plain run file runs with `ftlab run --config`)",
                path.display()
            )))
        }
    };
    let slurm = match base.remove(SLURM) {
        None => toml::Table::new(),
        Some(toml::Value::Table(table)) => table,
        Some(_) => return Err(Error::RunConfig(format!("{}: `slurm` must be a table of resources", path.display()))),
    };
    let (axes, when, excluded) = split_axes(path, grid)?;
    let base = toml::to_string(&base).map_err(|e| Error::RunConfig(format!("{}: {e}", path.display())))?;
    let mut cells = Vec::new();
    let mut names: HashMap<String, Vec<String>> = HashMap::new();
    for choice in product(&axes) {
        let mut layers = Vec::new();
        let mut labels = Vec::new();
        for (axis, value) in axes.iter().map(|(a, _)| a).zip(&choice) {
            layers.push(axis_override(path, axis, value)?);
            labels.push(format!("{axis}={}", label(value)));
        }
        if excluded.iter().any(|entry| entry.iter().all(|pair| labels.contains(pair))) {
            continue;
        }
        let mut resources = slurm.clone();
        for condition in &labels {
            for (key, value) in when.get(condition).into_iter().flatten() {
                match key.strip_prefix("slurm.") {
                    Some(resource) => drop(resources.insert(resource.to_string(), value.clone())),
                    None => layers.push((key.clone(), value.clone())),
                }
            }
        }
        layers.extend_from_slice(overrides);
        let config = resolve(&base, &layers).map_err(|e| {
            let why = if let Error::RunConfig(message) = e { message } else { e.to_string() };
            Error::RunConfig(format!("{}: cell {}: {why}", path.display(), labels.join(", ")))
        })?;
        let cell = GridCell { axes: labels, config, slurm: resources };
        if let Some(other) = names.insert(cell.name(), cell.axes.clone()) {
            return Err(Error::RunConfig(format!(
                "{}: cells [{}] and [{}] would both run as `{}`; vary only settings that show in the run name \
                 (model, task, method, adapter, shots, data_seed, seed), or sweep the rest into separate --out folders",
                path.display(),
                other.join(", "),
                cell.axes.join(", "),
                cell.name()
            )));
        }
        cells.push(cell);
    }
    Ok(Grid { path: path.into(), cells })
}

type Axes = Vec<(String, Vec<toml::Value>)>;
type When = HashMap<String, toml::Table>;
/// Per `exclude` entry, its `axis=value` pairs.
type Excluded = Vec<Vec<String>>;

/// Separates the axes (non-empty arrays) from the `when` table and the `exclude` list, checking
/// that every `when` condition and excluded pair names an axis and one of its values.
fn split_axes(path: &Path, grid: toml::Table) -> Result<(Axes, When, Excluded)> {
    let bad = |what: String| Err(Error::RunConfig(format!("{}: [grid]: {what}", path.display())));
    let mut axes = Vec::new();
    let mut when = HashMap::new();
    let mut excluded = Vec::new();
    for (key, value) in grid {
        match value {
            toml::Value::Array(entries) if key == EXCLUDE => {
                for entry in entries {
                    let toml::Value::Table(pairs) = entry else {
                        return bad(
                            "`exclude` must be a list of tables such as { method = \"icl\", adapter = \"lora\" }"
                                .into(),
                        );
                    };
                    excluded.push(pairs.iter().map(|(axis, value)| format!("{axis}={}", label(value))).collect());
                }
            }
            toml::Value::Table(table) if key == WHEN => {
                for (condition, settings) in table {
                    let toml::Value::Table(settings) = settings else {
                        return bad(format!("`when.\"{condition}\"` must be a table of settings"));
                    };
                    when.insert(condition, settings);
                }
            }
            toml::Value::Array(values) if !values.is_empty() => axes.push((key, values)),
            _ => return bad(format!("axis `{key}` must be a non-empty array of values")),
        }
    }
    if axes.is_empty() {
        return bad("no axes".into());
    }
    let known = |condition: &String| {
        condition.split_once('=').is_some_and(|(axis, value)| {
            axes.iter().any(|(a, values)| a == axis && values.iter().any(|v| label(v) == value))
        })
    };
    for condition in when.keys() {
        if !known(condition) {
            return bad(format!("`when.\"{condition}\"`: no axis takes that value (write \"axis=value\")"));
        }
    }
    for pair in excluded.iter().flatten() {
        if !known(pair) {
            return bad(format!("`exclude`: no axis takes `{pair}`"));
        }
    }
    Ok((axes, when, excluded))
}

/// The Cartesian product of the axes' values, the last axis varying fastest.
fn product(axes: &Axes) -> Vec<Vec<toml::Value>> {
    axes.iter().fold(vec![Vec::new()], |acc, (_, values)| {
        acc.iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut next = prefix.clone();
                    next.push(v.clone());
                    next
                })
            })
            .collect()
    })
}
