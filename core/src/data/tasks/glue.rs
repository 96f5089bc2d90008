//! GLUE (Wang et al., 2019, <https://arxiv.org/abs/1804.07461>) as the hub serves it: the
//! parquet files of the dataset repository `nyu-mll/glue`, one folder per config, one file per
//! split (`mnli/train-00000-of-00001.parquet`). Every split carries GLUE's `idx`, kept as the
//! example id. Not a task itself: the GLUE task files load through it.

use crate::data::dataset::Dataset;
use crate::data::source::{self, columns, files, ColumnMap, HubFile, LabelMap};
use crate::data::task::DataOptions;
use crate::error::Result;

/// The hub dataset repository.
pub const REPO: &str = "nyu-mll/glue";

/// The parquet file of `config`'s `split`.
pub fn file(config: &str, split: &str) -> HubFile {
    HubFile::new(REPO, "main", &format!("{config}/{split}-00000-of-00001.parquet"))
}

/// Loads `config`'s `split` with `columns`, labels named `label_names` (GLUE's ids).
pub fn load(
    config: &str,
    split: &str,
    columns: &ColumnMap,
    label_names: &[&str],
    options: &DataOptions,
) -> Result<Dataset> {
    let (path, frame, snapshot) = source::hub_table(&options.hub, &file(config, split))?;
    let examples = columns::examples_from_frame(&frame, &path, columns, &LabelMap::new(label_names))?;
    Ok(Dataset { hub_files: vec![snapshot], ..Dataset::new(format!("{config}/{split}"), label_names, examples) })
}

/// Rows of `config`'s `split`, read from the parquet footer.
pub fn rows(config: &str, split: &str, options: &DataOptions) -> Result<usize> {
    files::parquet_rows(&file(config, split).resolve(&options.hub)?)
}
