//! Where task data comes from: hub parquet files through the HF cache ([`hub`]), files a user
//! points to with a column mapping ([`LocalSource`]), and files shipped inside the binary
//! (the llmft copies of PAWS-QQP and CoLA-OOD). All of them become [`Dataset`]s through the
//! same table → examples path ([`columns`]), so every source reports bad rows the same way.

pub mod columns;
pub mod files;
pub mod hub;

use std::path::{Path, PathBuf};

use polars::prelude::DataFrame;

pub use columns::{ColumnMap, LabelMap};
pub use files::{FileFormat, Header};
pub use hub::{HubFile, HubSnapshot};

use crate::data::dataset::Dataset;
use crate::error::Result;
use crate::hub::Hub;

/// A user's file standing in for a task's data (`--file F --columns ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSource {
    /// The file (.tsv, .csv, .jsonl or .parquet).
    pub path: PathBuf,
    /// Which columns hold the texts, the label and the id.
    pub columns: ColumnMap,
    /// Whether a delimited file has a header line.
    pub header: Header,
}

impl LocalSource {
    /// `path` with a header, its columns mapped by `--columns` `spec` for a task whose text
    /// fields are `fields`.
    pub fn mapped(path: &Path, spec: &str, fields: &[&str]) -> Result<Self> {
        Ok(Self { path: path.into(), columns: ColumnMap::parse(spec, fields)?, header: Header::Present })
    }

    /// Reads the file as the examples of a task with `label_names`, named `name`; rows whose
    /// label is none of them are left out and counted in the dataset's `unknown_labels`.
    pub fn load(&self, name: &str, label_names: &[&str]) -> Result<Dataset> {
        let frame = files::read_table(&self.path, FileFormat::from_path(&self.path)?, &self.header)?;
        let labels = LabelMap::new(label_names);
        let (examples, unknown_labels) = columns::examples_from_file(&frame, &self.path, &self.columns, &labels)?;
        Ok(Dataset { unknown_labels, ..Dataset::new(name, label_names, examples) })
    }

    /// Reads the file's texts as unlabelled inputs (no label column needed).
    pub fn load_inputs(&self, name: &str, label_names: &[&str]) -> Result<Dataset> {
        let frame = files::read_table(&self.path, FileFormat::from_path(&self.path)?, &self.header)?;
        Ok(Dataset::new(name, label_names, columns::inputs_from_frame(&frame, &self.path, &self.columns)?))
    }
}

/// Reads a hub parquet file (resolved through `hub`) into a table.
pub fn hub_table(hub: &Hub, file: &HubFile) -> Result<(PathBuf, DataFrame, HubSnapshot)> {
    let path = file.resolve(hub)?;
    let frame = files::read_table(&path, FileFormat::Parquet, &Header::Present)?;
    let snapshot = file.snapshot(&path);
    Ok((path, frame, snapshot))
}

/// Parses a file shipped in the binary; `name` stands for its path in messages.
pub fn embedded_table(name: &Path, bytes: &[u8], format: FileFormat, header: &Header) -> Result<DataFrame> {
    files::parse_table(bytes, name, format, header)
}

#[cfg(test)]
mod tests;
