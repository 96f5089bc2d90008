//! The results store: run folders → one row per run → a polars `DataFrame` (and parquet/CSV).
//!
//! A "store" is nothing but folders of run folders: each run owns its `record.json`, written
//! atomically when it ends, so many runs (and sweeps on many machines) can write into one
//! results folder at once without coordination, and a reader never sees half a record. Reading
//! walks the given folders for `record.json` files; a record that does not parse (cut short by a
//! full disk, edited by hand) is set aside with its path and reason, which every command reports
//! beside its output, so one bad file neither blocks a table nor silently loses a run.
//!
//! [`COLUMNS`] is the one list of the flattened columns: the `DataFrame`, the CSV/parquet
//! export, and the names `results table --rows/--cols/--metric` accept all come from it.

use std::path::{Path, PathBuf};

use polars::prelude::{Column, DataFrame, NamedFrom, ParquetWriter, SerWriter, Series};

use crate::error::{Error, Result};
use crate::run::record::write_atomically;
use crate::run::{Headline, RunRecord, RunStatus};

/// One run, flattened to the values tables and plots group and aggregate.
#[derive(Debug, Clone)]
pub struct ResultRow {
    /// The run folder.
    pub dir: PathBuf,
    /// The record itself.
    pub record: RunRecord,
}

impl ResultRow {
    /// Whether the run finished (`completed`); anything else is counted as failed in tables.
    pub fn completed(&self) -> bool {
        self.record.status == RunStatus::Completed
    }

    /// The adapters' names joined by `+`, or `full` for full fine-tuning (no adapter).
    pub fn adapter(&self) -> String {
        let names: Vec<&str> = self.record.config.adapters.iter().map(|a| a.name.as_str()).collect();
        if names.is_empty() {
            "full".into()
        } else {
            names.join("+")
        }
    }

    /// The value of column `name`: one of [`COLUMNS`], or `acc@NAME`, the accuracy after
    /// training on the eval set or subset `NAME` (`synthetic-hans-ln_passive`, or `ln_passive`
    /// within any set: the per-subcase figures of a HANS-like set), or `zero_shot_acc@NAME`, the
    /// same before training.
    pub fn get(&self, name: &str) -> Result<Value> {
        let subset = |headline: &Option<Headline>, subset: &str| {
            Value::Float(headline.as_ref().and_then(|h| subset_accuracy(&h.report, subset)))
        };
        if let Some(name) = name.strip_prefix("acc@") {
            return Ok(subset(&self.record.last, name));
        }
        if let Some(name) = name.strip_prefix("zero_shot_acc@") {
            return Ok(subset(&self.record.zero_shot, name));
        }
        Ok((column(name)?.get)(self))
    }

    /// Whether `name` is a column [`ResultRow::get`] reads.
    pub fn has_column(name: &str) -> bool {
        name.starts_with("acc@") || name.starts_with("zero_shot_acc@") || column(name).is_ok()
    }
}

/// A cell of the flattened table.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text (names, status, error); `None` when absent.
    Text(Option<String>),
    /// A count or setting; `None` when absent.
    Int(Option<i64>),
    /// A measurement; `None` when absent (a failed run, a task without out-of-domain sets).
    Float(Option<f64>),
}

impl Value {
    /// The value as a number, for aggregation (`None` for text and absent values).
    pub fn number(&self) -> Option<f64> {
        match self {
            Value::Int(v) => v.map(|v| v as f64),
            Value::Float(v) => *v,
            Value::Text(_) => None,
        }
    }

    /// The value as a table label (`-` when absent).
    pub fn label(&self) -> String {
        match self {
            Value::Text(v) => v.clone().unwrap_or_else(|| "-".into()),
            Value::Int(v) => v.map_or("-".into(), |v| v.to_string()),
            Value::Float(v) => v.map_or("-".into(), |v| v.to_string()),
        }
    }
}

/// One flattened column: its name, what it holds, and how a row yields it.
pub struct ColumnDef {
    /// The column's name in the `DataFrame` and on the command line.
    pub name: &'static str,
    /// What it holds (for `--help` and errors).
    pub about: &'static str,
    get: fn(&ResultRow) -> Value,
}

/// The verbalizer accuracy of the set or subset `name` in a headline's report.
fn subset_accuracy(report: &serde_json::Value, name: &str) -> Option<f64> {
    let accuracy = |scores: &serde_json::Value| scores["verbalizer"]["accuracy"].as_f64();
    for set in report.as_array()? {
        let set_name = set["name"].as_str().unwrap_or_default();
        if set_name == name {
            return accuracy(&set["scores"]);
        }
        for pair in set["subsets"].as_array().into_iter().flatten() {
            let subset = pair[0].as_str().unwrap_or_default();
            if subset == name || subset.strip_prefix(set_name).and_then(|r| r.strip_prefix('-')) == Some(name) {
                return accuracy(&pair[1]);
            }
        }
    }
    None
}

/// A language-modelling score (`loss` or `perplexity`) of a headline's in-domain held-out text.
fn language(headline: Option<&Headline>, score: &str) -> Value {
    let report = headline.and_then(|h| h.report.as_array());
    let set = report.and_then(|sets| sets.iter().find(|s| s["in_domain"] == true));
    Value::Float(set.and_then(|s| s["language"][score].as_f64()))
}

fn text(s: &str) -> Value {
    Value::Text(Some(s.to_string()))
}

fn acc(headline: Option<&Headline>, ood: bool) -> Value {
    Value::Float(headline.and_then(|h| if ood { h.acc_ood } else { Some(h.acc_in) }))
}

/// Timings are only measurements for runs that finished.
fn seconds(row: &ResultRow, pick: fn(&crate::run::Timings) -> f64) -> Value {
    Value::Float(row.completed().then(|| pick(&row.record.timings)))
}

/// Every column of the flattened table, in `DataFrame` order.
pub const COLUMNS: &[ColumnDef] = &[
    ColumnDef { name: "name", about: "run folder name", get: |r| text(&r.record.name) },
    ColumnDef { name: "dir", about: "run folder path", get: |r| text(&r.dir.display().to_string()) },
    ColumnDef { name: "status", about: "completed or failed", get: |r| text(&r.record.status.to_string()) },
    ColumnDef { name: "error", about: "why a run failed", get: |r| Value::Text(r.record.error.clone()) },
    ColumnDef { name: "model", about: "model id", get: |r| text(&r.record.config.model) },
    ColumnDef { name: "task", about: "task name", get: |r| text(&r.record.config.task) },
    ColumnDef { name: "method", about: "objective method", get: |r| text(&r.record.config.method.name) },
    ColumnDef { name: "adapter", about: "adapters joined by +, or full", get: |r| text(&r.adapter()) },
    ColumnDef {
        name: "shots",
        about: "few-shot training-set size k",
        get: |r| Value::Int(Some(r.record.config.shots as i64)),
    },
    ColumnDef {
        name: "data_seed",
        about: "seed of the few-shot draw",
        get: |r| Value::Int(Some(i64::from(r.record.config.data_seed))),
    },
    ColumnDef {
        name: "seed",
        about: "seed of init and batch order",
        get: |r| Value::Int(Some(r.record.config.seed as i64)),
    },
    ColumnDef { name: "lr", about: "peak learning rate", get: |r| Value::Float(Some(r.record.config.train.lr)) },
    ColumnDef {
        name: "epochs",
        about: "training epochs",
        get: |r| Value::Int(Some(r.record.config.train.epochs as i64)),
    },
    ColumnDef {
        name: "acc_in",
        about: "in-domain accuracy after training",
        get: |r| acc(r.record.last.as_ref(), false),
    },
    ColumnDef {
        name: "acc_ood",
        about: "mean out-of-domain accuracy after training",
        get: |r| acc(r.record.last.as_ref(), true),
    },
    ColumnDef {
        name: "best_epoch",
        about: "epoch of the best in-domain accuracy",
        get: |r| Value::Int(r.record.best.as_ref().map(|b| b.0 as i64)),
    },
    ColumnDef {
        name: "best_acc_in",
        about: "best in-domain accuracy over epochs",
        get: |r| acc(r.record.best.as_ref().map(|b| &b.1), false),
    },
    ColumnDef {
        name: "best_acc_ood",
        about: "out-of-domain accuracy at the best epoch",
        get: |r| acc(r.record.best.as_ref().map(|b| &b.1), true),
    },
    ColumnDef {
        name: "zero_shot_acc_in",
        about: "in-domain accuracy before training",
        get: |r| acc(r.record.zero_shot.as_ref(), false),
    },
    ColumnDef {
        name: "zero_shot_acc_ood",
        about: "out-of-domain accuracy before training",
        get: |r| acc(r.record.zero_shot.as_ref(), true),
    },
    ColumnDef {
        name: "icl_acc_in",
        about: "in-domain accuracy of the ICL reference",
        get: |r| acc(r.record.icl_reference.as_ref(), false),
    },
    ColumnDef {
        name: "icl_acc_ood",
        about: "out-of-domain accuracy of the ICL reference",
        get: |r| acc(r.record.icl_reference.as_ref(), true),
    },
    ColumnDef {
        name: "loss_in",
        about: "held-out token loss (nats) after training, of a text-task (`lm`) run",
        get: |r| language(r.record.last.as_ref(), "loss"),
    },
    ColumnDef {
        name: "perplexity_in",
        about: "held-out perplexity after training, of a text-task (`lm`) run",
        get: |r| language(r.record.last.as_ref(), "perplexity"),
    },
    ColumnDef { name: "time_load", about: "seconds loading", get: |r| seconds(r, |t| t.load) },
    ColumnDef { name: "time_prepare", about: "seconds in methods' prepare", get: |r| seconds(r, |t| t.prepare) },
    ColumnDef { name: "time_train", about: "seconds training", get: |r| seconds(r, |t| t.train) },
    ColumnDef { name: "time_eval", about: "seconds evaluating", get: |r| seconds(r, |t| t.eval) },
    ColumnDef { name: "time_total", about: "seconds in all", get: |r| seconds(r, |t| t.total) },
    ColumnDef {
        name: "cost_seconds",
        about: "what learning from the examples cost: prepare + training seconds, or for a run that trains nothing (ICL) prepare + its inference over the eval sets",
        get: |r| seconds(r, if r.record.trainable_parameters == 0 { |t| t.prepare + t.eval } else { |t| t.prepare + t.train }),
    },
    ColumnDef {
        name: "peak_rss_bytes",
        about: "peak resident memory of the run's process",
        get: |r| Value::Int(r.record.peak_rss_bytes.map(|b| b as i64)),
    },
    ColumnDef {
        name: "cpu_capability",
        about: "libtorch's CPU kernel set (DEFAULT, AVX2, AVX512)",
        get: |r| Value::Text(r.record.platform.as_ref().map(|p| p.cpu_capability.clone())),
    },
    ColumnDef {
        name: "threads",
        about: "libtorch's intra-op threads",
        get: |r| Value::Int(r.record.platform.as_ref().map(|p| p.threads as i64)),
    },
    ColumnDef {
        name: "cpu_model",
        about: "the host CPU's model name",
        get: |r| Value::Text(r.record.platform.as_ref().map(|p| p.cpu_model.clone()).filter(|m| !m.is_empty())),
    },
    ColumnDef {
        name: "device",
        about: "the device the run computed on (cpu, cuda:0)",
        get: |r| Value::Text(r.record.platform.as_ref().map(|p| p.device.clone())),
    },
    ColumnDef {
        name: "libtorch",
        about: "the libtorch version linked",
        get: |r| Value::Text(r.record.platform.as_ref().map(|p| p.libtorch.clone()).filter(|v| !v.is_empty())),
    },
    ColumnDef {
        name: "plugins",
        about: "the method libraries that ran: name@version#SHA-256 (first 12), joined by +",
        get: |r| {
            let methods = r.record.methods.iter().map(|m| format!("{}@{}#{:.12}", m.name, m.version, m.sha256));
            Value::Text(Some(methods.collect::<Vec<_>>().join("+")).filter(|s| !s.is_empty()))
        },
    },
    ColumnDef {
        name: "prompt_style",
        about: "pattern style (minimal, gpt3, eval-harness)",
        get: |r| Value::Text(Some(r.record.config.prompt.style.name().into())),
    },
    ColumnDef {
        name: "prompt_compat",
        about: "prompt conventions (llmft: byte-identical to llmft's runs; clean: real newlines)",
        get: |r| Value::Text(Some(r.record.config.prompt.compat.name().into())),
    },
    ColumnDef {
        name: "data_version",
        about: "the data read: hub commits (first 12 characters) or the user's files' SHA-256 (first 12)",
        get: |r| {
            let data = r.record.data.as_ref();
            let hub = data.into_iter().flat_map(|d| &d.hub_files).map(|f| format!("{}@{:.12}", f.repo, f.commit));
            let files = data.into_iter().flat_map(|d| &d.files).map(|f| format!("sha256:{:.12}", f.sha256));
            let mut all: Vec<String> = hub.chain(files).collect();
            all.dedup();
            Value::Text((!all.is_empty()).then(|| all.join(",")))
        },
    },
    ColumnDef { name: "dtype", about: "compute dtype", get: |r| Value::Text(Some(r.record.config.dtype.to_string())) },
    ColumnDef {
        name: "autocast",
        about: "mixed precision (none, bf16, fp16)",
        get: |r| Value::Text(Some(format!("{:?}", r.record.config.train.autocast).to_lowercase())),
    },
    ColumnDef {
        name: "ftlab_version",
        about: "ftlab's version",
        get: |r| Value::Text(Some(r.record.ftlab_version.clone())),
    },
    ColumnDef {
        name: "git_revision",
        about: "the ftlab git revision that ran, `+dirty` with uncommitted changes",
        get: |r| {
            let dirty = if r.record.git_dirty { "+dirty" } else { "" };
            Value::Text(Some(format!("{}{dirty}", r.record.git_revision)))
        },
    },
    ColumnDef {
        name: "trainable_parameters",
        about: "trainable scalars",
        get: |r| Value::Int(r.completed().then_some(r.record.trainable_parameters)),
    },
];

/// The column called `name`, or an error listing the valid names.
pub fn column(name: &str) -> Result<&'static ColumnDef> {
    COLUMNS.iter().find(|c| c.name == name).ok_or_else(|| {
        let known: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
        Error::Results(format!(
            "unknown column `{name}`; columns: {}, and acc@SET or acc@SUBSET (e.g. acc@ln_passive)",
            known.join(", ")
        ))
    })
}

/// The `record.json` files under `dirs` (each a run folder or a folder holding run folders, at
/// any depth), sorted and without duplicates.
pub fn find_records(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for dir in dirs {
        if !dir.is_dir() {
            return Err(Error::Io {
                path: dir.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such results folder"),
            });
        }
        walk(dir, &mut found)?;
    }
    let mut canonical: Vec<PathBuf> = found.iter().map(|p| p.canonicalize().unwrap_or_else(|_| p.clone())).collect();
    canonical.sort();
    canonical.dedup();
    Ok(canonical)
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    let record = dir.join("record.json");
    if record.is_file() {
        found.push(record);
    }
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let path = entry.map_err(Error::io(dir))?.path();
        // A run's checkpoint and adapter folders hold no records; skip their large files.
        let inside_run =
            path.file_name().is_some_and(|n| n == "checkpoint" || n.to_string_lossy().starts_with("adapter"));
        if path.is_dir() && !inside_run {
            walk(&path, found)?;
        }
    }
    Ok(())
}

/// A `record.json` that could not be read.
#[derive(Debug)]
pub struct Unreadable {
    /// The file.
    pub path: PathBuf,
    /// Why, naming the line and column where JSON stopped making sense.
    pub error: Error,
}

/// The runs under some folders: one row per readable record, in path order, and the records
/// that could not be read.
#[derive(Debug, Default)]
pub struct Runs {
    /// The readable runs.
    pub rows: Vec<ResultRow>,
    /// The records set aside.
    pub unreadable: Vec<Unreadable>,
}

/// Reads every run under `dirs`.
pub fn load(dirs: &[PathBuf]) -> Result<Runs> {
    let mut runs = Runs::default();
    for path in find_records(dirs)? {
        let read = std::fs::read_to_string(&path)
            .map_err(Error::io(&path))
            .and_then(|text| serde_json::from_str::<RunRecord>(&text).map_err(Error::json(&path)));
        match read {
            Ok(record) => {
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                runs.rows.push(ResultRow { dir, record });
            }
            Err(error) => runs.unreadable.push(Unreadable { path, error }),
        }
    }
    Ok(runs)
}

/// The rows as a polars `DataFrame` with every column of [`COLUMNS`].
pub fn to_frame(rows: &[ResultRow]) -> Result<DataFrame> {
    let columns: Vec<Column> = COLUMNS
        .iter()
        .map(|def| {
            let values: Vec<Value> = rows.iter().map(|r| (def.get)(r)).collect();
            let name = def.name.into();
            let series = match values.first() {
                Some(Value::Int(_)) => {
                    Series::new(name, values.iter().map(Value::number).map(|v| v.map(|v| v as i64)).collect::<Vec<_>>())
                }
                Some(Value::Float(_)) => Series::new(name, values.iter().map(Value::number).collect::<Vec<_>>()),
                _ => Series::new(
                    name,
                    values.iter().map(|v| if let Value::Text(t) = v { t.clone() } else { None }).collect::<Vec<_>>(),
                ),
            };
            Column::from(series)
        })
        .collect();
    DataFrame::new(rows.len(), columns).map_err(|e| Error::Results(format!("building the table: {e}")))
}

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Apache Parquet (typed columns, for pandas/polars).
    Parquet,
    /// Comma-separated values with a header.
    Csv,
}

/// Writes `frame` to `path` as `format`, atomically (a reader never sees half a file).
pub fn export(frame: &DataFrame, path: &Path, format: Format) -> Result<()> {
    let mut frame = frame.clone();
    let mut bytes: Vec<u8> = Vec::new();
    let written = match format {
        Format::Parquet => ParquetWriter::new(&mut bytes).finish(&mut frame).map(|_| ()),
        Format::Csv => polars::prelude::CsvWriter::new(&mut bytes).finish(&mut frame),
    };
    written.map_err(|e| Error::Results(format!("{}: {e}", path.display())))?;
    write_atomically(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::testing::row;
    use crate::run::RunConfig;

    #[test]
    fn subset_accuracies_are_read_by_full_or_short_name() {
        let report = serde_json::json!([
            {"name": "synthetic-nli", "scores": {"verbalizer": {"accuracy": 0.9}}, "subsets": []},
            {"name": "synthetic-hans", "scores": {"verbalizer": {"accuracy": 0.6}}, "subsets": [
                ["synthetic-hans-ln_passive", {"verbalizer": {"accuracy": 0.25}}],
                ["synthetic-hans-ln_subject/object_swap", {"verbalizer": {"accuracy": 0.5}}],
            ]},
        ]);
        assert_eq!(subset_accuracy(&report, "synthetic-nli"), Some(0.9));
        assert_eq!(subset_accuracy(&report, "synthetic-hans-ln_passive"), Some(0.25));
        assert_eq!(subset_accuracy(&report, "ln_subject/object_swap"), Some(0.5));
        assert_eq!(subset_accuracy(&report, "passive"), None);
        let mut run = row("an_objective", "full", 16, 0, Some((0.7, 0.5)));
        run.record.last.as_mut().unwrap().report = report.clone();
        assert_eq!(run.get("acc@ln_passive").unwrap().number(), Some(0.25));
        assert_eq!(run.get("zero_shot_acc@ln_passive").unwrap().number(), None);
        let mut before = run.record.last.clone().unwrap();
        before.report[1]["subsets"][0][1]["verbalizer"]["accuracy"] = serde_json::json!(0.75);
        run.record.zero_shot = Some(before);
        assert_eq!(run.get("zero_shot_acc@ln_passive").unwrap().number(), Some(0.75));
        assert!(ResultRow::has_column("zero_shot_acc@ln_passive") && !ResultRow::has_column("acc_passive"));
    }

    #[test]
    fn rows_flatten_into_every_column() {
        let rows = vec![row("pbft", "lora", 16, 0, Some((0.7, 0.5))), row("pbft", "full", 16, 1, None)];
        assert_eq!(rows[0].get("adapter").unwrap(), Value::Text(Some("lora".into())));
        assert_eq!(rows[1].get("adapter").unwrap(), Value::Text(Some("full".into())));
        assert_eq!(rows[0].get("acc_ood").unwrap().number(), Some(0.5));
        assert_eq!(rows[1].get("acc_in").unwrap().number(), None, "a failed run has no accuracy");
        assert_eq!(rows[1].get("time_train").unwrap().number(), None, "nor a training time");
        let err = rows[0].get("accuracy").unwrap_err().to_string();
        assert!(err.contains("accuracy") && err.contains("acc_in"), "{err}");

        let frame = to_frame(&rows).unwrap();
        assert_eq!(frame.shape(), (2, COLUMNS.len()));
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("runs.csv");
        export(&frame, &csv, Format::Csv).unwrap();
        let text = std::fs::read_to_string(&csv).unwrap();
        assert!(text.starts_with("name,dir,status,error,model"), "{text}");
        assert!(text.contains("deliberate failure"));
    }

    #[test]
    fn records_are_found_at_any_depth_and_bad_ones_are_set_aside_naming_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("a/b/run");
        std::fs::create_dir_all(run.join("checkpoint")).unwrap();
        std::fs::write(run.join("record.json"), "{}").unwrap();
        std::fs::write(run.join("checkpoint/record.json"), "{}").unwrap();
        let found = find_records(&[dir.path().to_path_buf(), run.clone()]).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        let good = dir.path().join("good");
        std::fs::create_dir_all(&good).unwrap();
        let record = RunRecord::new(&RunConfig::default(), RunStatus::Completed);
        std::fs::write(good.join("record.json"), serde_json::to_string(&record).unwrap()).unwrap();
        let runs = load(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(runs.rows.len(), 1);
        assert_eq!(runs.unreadable.len(), 1);
        let err = runs.unreadable[0].error.to_string();
        assert!(err.contains("a/b/run/record.json") && err.contains("line 1"), "{err}");
    }
}
