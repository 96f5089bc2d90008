//! From a table's columns to [`Example`]s: which column holds which text, the label, the id,
//! and how label cells (ids or names) become label ids.
//!
//! A mapping is written as users type it on the command line,
//! `premise=sentence1,hypothesis=sentence2,label=gold_label`: keys are the task's fields
//! (`premise`/`hypothesis`, `sentence`, or llmft's `text1`/`text2`), `label`, and optionally `id`.
//! Every failure names the file, the data row (from 1) and the column.

use std::collections::BTreeMap;
use std::path::Path;

use polars::prelude::{DataFrame, DataType};

use crate::data::dataset::Example;
use crate::error::{Error, Result};

/// Which columns of a table hold the example's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnMap {
    /// The first text (premise, first question, sentence).
    pub text1: String,
    /// The second text, for pair tasks.
    pub text2: Option<String>,
    /// The label.
    pub label: String,
    /// The row id; row numbers (from 0) when absent.
    pub id: Option<String>,
    /// Extra columns kept as attributes (HANS's `heuristic`, `subcase`).
    pub attributes: Vec<String>,
}

impl ColumnMap {
    /// A mapping for a pair task with no id or extra columns.
    pub fn pair(text1: &str, text2: &str, label: &str) -> Self {
        Self { text1: text1.into(), text2: Some(text2.into()), label: label.into(), id: None, attributes: vec![] }
    }

    /// A mapping for a single-sentence task.
    pub fn single(text: &str, label: &str) -> Self {
        Self { text1: text.into(), text2: None, label: label.into(), id: None, attributes: vec![] }
    }

    /// Sets the id column.
    pub fn with_id(mut self, id: &str) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Parses `key=column,...` for a task whose text fields are `fields` (one or two names, e.g.
    /// `["premise", "hypothesis"]`). `text1`/`text2` are accepted as aliases of the fields.
    /// Unspecified keys default to the field's own name (`label` to `label`).
    pub fn parse(spec: &str, fields: &[&str]) -> Result<Self> {
        let bad = |message: String| Error::DataOption(format!("--columns `{spec}`: {message}"));
        let mut given: BTreeMap<String, String> = BTreeMap::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, column) = part.split_once('=').ok_or_else(|| bad(format!("`{part}` is not key=column")))?;
            let key = match key.trim() {
                "text1" => fields[0],
                "text2" if fields.len() > 1 => fields[1],
                k if fields.contains(&k) || k == "label" || k == "id" => k,
                k => {
                    return Err(bad(format!("unknown key `{k}`; this task takes {}, label and id", fields.join(", "))))
                }
            };
            given.insert(key.to_string(), column.trim().to_string());
        }
        let column = |key: &str| given.get(key).cloned().unwrap_or_else(|| key.to_string());
        Ok(Self {
            text1: column(fields[0]),
            text2: fields.get(1).map(|f| column(f)),
            label: column("label"),
            id: given.get("id").cloned(),
            attributes: vec![],
        })
    }

    fn required(&self, labelled: bool) -> Vec<&str> {
        let mut columns = vec![self.text1.as_str()];
        columns.extend(self.text2.as_deref());
        if labelled {
            columns.push(&self.label);
        }
        columns.extend(self.id.as_deref());
        columns.extend(self.attributes.iter().map(String::as_str));
        columns
    }
}

/// How label cells become label ids: an integer in range is an id; otherwise the cell must be
/// one of the label names (case-insensitive) or an extra alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMap {
    names: Vec<String>,
    aliases: BTreeMap<String, usize>,
}

impl LabelMap {
    /// Label ids are positions in `names`.
    pub fn new(names: &[&str]) -> Self {
        Self { names: names.iter().map(|n| n.to_string()).collect(), aliases: BTreeMap::new() }
    }

    /// Also accepts `alias` for label `id` (e.g. `non-entailment` for HANS's label 1).
    pub fn with_alias(mut self, alias: &str, id: usize) -> Self {
        self.aliases.insert(alias.to_lowercase(), id);
        self
    }

    /// The label id of a cell, if it names one.
    pub fn id_of(&self, cell: &str) -> Option<usize> {
        let cell = cell.trim();
        if let Ok(id) = cell.parse::<usize>() {
            return (id < self.names.len()).then_some(id);
        }
        let lower = cell.to_lowercase();
        self.names.iter().position(|n| n.to_lowercase() == lower).or_else(|| self.aliases.get(&lower).copied())
    }

    fn describe(&self) -> String {
        let ids = self.names.iter().enumerate().map(|(i, n)| format!("{i} or `{n}`"));
        ids.chain(self.aliases.iter().map(|(a, i)| format!("`{a}` ({i})"))).collect::<Vec<_>>().join(", ")
    }
}

/// The cells of one column as text (numbers formatted), `None` for nulls.
fn column_text(frame: &DataFrame, path: &Path, name: &str) -> Result<Vec<Option<String>>> {
    let column = frame.column(name).map_err(|_| Error::Data {
        path: path.into(),
        row: None,
        column: Some(name.into()),
        message: format!(
            "no such column; the file has {}",
            frame.get_column_names().iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
        ),
    })?;
    let polars_error = |e: polars::error::PolarsError| Error::Data {
        path: path.into(),
        row: None,
        column: Some(name.into()),
        message: format!("cannot be read as text: {e}"),
    };
    let text = column.cast(&DataType::String).map_err(polars_error)?;
    let cells = text.str().map_err(polars_error)?;
    Ok(cells.iter().map(|cell| cell.map(str::to_string)).collect())
}

/// Turns a table into examples with `columns` and `labels`. Every required cell must be
/// present and non-empty, every label known, and the table non-empty.
pub fn examples_from_frame(
    frame: &DataFrame,
    path: &Path,
    columns: &ColumnMap,
    labels: &LabelMap,
) -> Result<Vec<Example>> {
    rows(frame, path, columns, Some(labels))
}

/// Like [`examples_from_frame`] for a user's file: rows whose label is none of `labels` (GLUE's
/// `-` for no gold label) are left out and counted by label, as the task's own data would
/// never hold them. A file where every row is left out is an error naming the first.
pub fn examples_from_file(
    frame: &DataFrame,
    path: &Path,
    columns: &ColumnMap,
    labels: &LabelMap,
) -> Result<(Vec<Example>, BTreeMap<String, usize>)> {
    let mut unknown = BTreeMap::new();
    let examples = rows_with(frame, path, columns, Some(labels), Some(&mut unknown))?;
    if examples.is_empty() && !unknown.is_empty() {
        return rows(frame, path, columns, Some(labels)).map(|e| (e, unknown));
    }
    Ok((examples, unknown))
}

/// Turns a table into unlabelled inputs (e.g. for context distillation): as
/// [`examples_from_frame`] without a label column; each example's label is 0 and is never read.
pub fn inputs_from_frame(frame: &DataFrame, path: &Path, columns: &ColumnMap) -> Result<Vec<Example>> {
    rows(frame, path, columns, None)
}

fn rows(frame: &DataFrame, path: &Path, columns: &ColumnMap, labels: Option<&LabelMap>) -> Result<Vec<Example>> {
    rows_with(frame, path, columns, labels, None)
}

/// The rows as examples; with `unknown`, a row whose label is not in `labels` is left out and
/// counted there instead of being an error.
fn rows_with(
    frame: &DataFrame,
    path: &Path,
    columns: &ColumnMap,
    labels: Option<&LabelMap>,
    mut unknown: Option<&mut BTreeMap<String, usize>>,
) -> Result<Vec<Example>> {
    if frame.height() == 0 {
        return Err(Error::Data { path: path.into(), row: None, column: None, message: "the file has no rows".into() });
    }
    let mut cells = BTreeMap::new();
    for name in columns.required(labels.is_some()) {
        cells.insert(name, column_text(frame, path, name)?);
    }
    let cell = |name: &str, row: usize| -> Result<String> {
        match cells[name][row].as_deref() {
            Some(value) if !value.trim().is_empty() => Ok(value.to_string()),
            _ => Err(Error::Data {
                path: path.into(),
                row: Some(row + 1),
                column: Some(name.into()),
                message: "empty value (a missing field, or a row with fewer fields than the header?)".into(),
            }),
        }
    };
    let mut examples = Vec::with_capacity(frame.height());
    for row in 0..frame.height() {
        let label = match labels {
            None => 0,
            Some(labels) => {
                let label_cell = cell(&columns.label, row)?;
                match (labels.id_of(&label_cell), unknown.as_deref_mut()) {
                    (Some(id), _) => id,
                    (None, Some(unknown)) => {
                        *unknown.entry(label_cell.trim().to_string()).or_default() += 1;
                        continue;
                    }
                    (None, None) => {
                        return Err(Error::Data {
                            path: path.into(),
                            row: Some(row + 1),
                            column: Some(columns.label.clone()),
                            message: format!("unknown label `{label_cell}`; expected {}", labels.describe()),
                        })
                    }
                }
            }
        };
        examples.push(example_at(path, columns, row, label, &cell)?);
    }
    Ok(examples)
}

/// The example of `row`, its label already read.
fn example_at(
    path: &Path,
    columns: &ColumnMap,
    row: usize,
    label: usize,
    cell: &dyn Fn(&str, usize) -> Result<String>,
) -> Result<Example> {
    let id = match &columns.id {
        None => row as i64,
        Some(id) => cell(id, row)?.trim().parse::<i64>().map_err(|_| Error::Data {
            path: path.into(),
            row: Some(row + 1),
            column: Some(id.clone()),
            message: "the id is not an integer".into(),
        })?,
    };
    let text2 = columns.text2.as_deref().map(|c| cell(c, row)).transpose()?;
    let mut example = Example::new(id, cell(&columns.text1, row)?, text2, label);
    for attribute in &columns.attributes {
        example.attributes.insert(attribute.clone(), cell(attribute, row)?);
    }
    Ok(example)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mappings_with_defaults_and_aliases() {
        let map =
            ColumnMap::parse("premise=sentence1, hypothesis=sentence2,label=gold", &["premise", "hypothesis"]).unwrap();
        assert_eq!(map, ColumnMap::pair("sentence1", "sentence2", "gold"));
        let map = ColumnMap::parse("text1=s,id=pairID", &["sentence"]).unwrap();
        assert_eq!(map, ColumnMap::single("s", "label").with_id("pairID"));
        let err = ColumnMap::parse("question=q", &["sentence"]).unwrap_err().to_string();
        assert!(err.contains("unknown key `question`"), "{err}");
    }

    #[test]
    fn labels_are_ids_or_names() {
        let labels = LabelMap::new(&["entailment", "contradiction"]).with_alias("non-entailment", 1);
        assert_eq!(labels.id_of("1"), Some(1));
        assert_eq!(labels.id_of("Entailment"), Some(0));
        assert_eq!(labels.id_of("non-entailment"), Some(1));
        assert_eq!(labels.id_of("2"), None);
        assert_eq!(labels.id_of("neutral"), None);
    }
}
