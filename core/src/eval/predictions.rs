//! Per-example predictions as parquet, one file per eval set and kept epoch (best and last),
//! beside the run's record: `predictions/epoch-N/SET.parquet`. Columns: `id`, `gold`,
//! `predicted` (label names), `correct`, `score_<label>` per label word, and `subsets` (the
//! subsets a row belongs to, `;`-separated). From them any per-subset table can be recomputed —
//! the error analysis HANS needs.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use polars::prelude::{Column, DataFrame, NamedFrom, ParquetReader, ParquetWriter, SerReader, Series};

use super::harness::Prediction;
use crate::error::{Error, Result};
use crate::run::record::write_atomically;

/// The folder of the predictions of the evaluation after `epoch` epochs, in a run's
/// `predictions/` folder.
pub fn epoch_folder(predictions: &Path, epoch: usize) -> PathBuf {
    predictions.join(format!("epoch-{epoch}"))
}

/// The epochs whose predictions a run's `predictions/` folder holds, in folder order.
pub fn epochs(predictions: &Path) -> std::io::Result<Vec<usize>> {
    let epoch = |entry: std::fs::DirEntry| entry.file_name().to_str()?.strip_prefix("epoch-")?.parse().ok();
    Ok(std::fs::read_dir(predictions)?.filter_map(|e| epoch(e.ok()?)).collect())
}

/// The file of eval set `set` in an epoch's folder (a `/` in a set's name becomes `_`).
pub fn set_file(folder: &Path, set: &str) -> PathBuf {
    folder.join(format!("{}.parquet", set.replace(['/', '\\'], "_")))
}

/// Writes `predictions` of a set whose labels are `label_names` to `path` (atomically).
pub fn write(path: &Path, label_names: &[String], predictions: &[Prediction]) -> Result<()> {
    let name = |id: usize| label_names.get(id).cloned().unwrap_or_else(|| id.to_string());
    let mut columns = vec![
        Column::from(Series::new("id".into(), predictions.iter().map(|p| p.id).collect::<Vec<_>>())),
        Column::from(Series::new("gold".into(), predictions.iter().map(|p| name(p.gold)).collect::<Vec<_>>())),
        Column::from(Series::new(
            "predicted".into(),
            predictions.iter().map(|p| name(p.predicted)).collect::<Vec<_>>(),
        )),
        Column::from(Series::new(
            "correct".into(),
            predictions.iter().map(|p| p.gold == p.predicted).collect::<Vec<_>>(),
        )),
    ];
    for (i, label) in label_names.iter().enumerate() {
        let scores: Vec<Option<f32>> = predictions.iter().map(|p| p.scores.get(i).copied()).collect();
        columns.push(Column::from(Series::new(format!("score_{label}").into(), scores)));
    }
    let subsets: Vec<String> = predictions.iter().map(|p| p.subsets.join(";")).collect();
    columns.push(Column::from(Series::new("subsets".into(), subsets)));
    let mut frame = DataFrame::new(predictions.len(), columns).map_err(in_file(path))?;
    let mut bytes = Vec::new();
    ParquetWriter::new(&mut bytes).finish(&mut frame).map_err(in_file(path))?;
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder).map_err(Error::io(folder))?;
    }
    write_atomically(path, &bytes)
}

/// A polars error, named by the predictions file it concerns.
fn in_file(path: &Path) -> impl Fn(polars::error::PolarsError) -> Error + '_ {
    move |e| Error::Results(format!("{}: {e}", path.display()))
}

fn read(path: &Path) -> Result<DataFrame> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    ParquetReader::new(Cursor::new(bytes)).finish().map_err(in_file(path))
}

/// Whether each row of a predictions file was predicted correctly.
pub fn correct(path: &Path) -> Result<Vec<bool>> {
    correct_in(&read(path)?, path)
}

fn correct_in(frame: &DataFrame, path: &Path) -> Result<Vec<bool>> {
    let column = frame.column("correct").and_then(|c| c.bool().map(|b| b.iter().map(|v| v == Some(true)).collect()));
    column.map_err(in_file(path))
}

/// Accuracy per subset (and `all`) from a predictions file: `(name, rows, accuracy)`.
pub fn subset_accuracy(path: &Path) -> Result<Vec<(String, usize, f64)>> {
    let frame = read(path)?;
    let correct = correct_in(&frame, path)?;
    let subsets: Vec<String> = (frame.column("subsets"))
        .and_then(|c| c.str().map(|s| s.iter().map(|v| v.unwrap_or_default().to_string()).collect()))
        .map_err(in_file(path))?;
    let mut tally: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (hit, names) in correct.iter().zip(&subsets) {
        for name in std::iter::once("all").chain(names.split(';').filter(|n| !n.is_empty())) {
            let entry = tally.entry(name.to_string()).or_default();
            entry.0 += 1;
            entry.1 += usize::from(*hit);
        }
    }
    Ok(tally.into_iter().map(|(name, (rows, hits))| (name, rows, hits as f64 / rows as f64)).collect())
}
