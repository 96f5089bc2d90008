//! MultiNLI (Williams et al., 2018, <https://arxiv.org/abs/1704.05426>) from GLUE.
//!
//! - `mnli`: binarized as in the paper and llmft — neutral dropped, contradiction → 1, so
//!   0 = entailment, 1 = contradiction. 261,802 training rows; in-domain eval on
//!   validation_matched (6,692 rows); out of domain HANS and the mismatched validation set.
//! - `mnli-original`: GLUE's three classes (entailment, neutral, contradiction).
//! - `mnli-mm`: validation_mismatched, binarized (eval only).

use crate::data::dataset::Dataset;
use crate::data::prompt::PromptFamily;
use crate::data::source::ColumnMap;
use crate::data::task::{per_label_subsets, DataOptions, FileRows, TaskDef};
use crate::error::Result;

use super::glue;

/// GLUE's MNLI labels.
const THREE_CLASSES: [&str; 3] = ["entailment", "neutral", "contradiction"];
/// The paper's binary labels.
const BINARY: [&str; 2] = ["entailment", "contradiction"];

fn columns() -> ColumnMap {
    ColumnMap::pair("premise", "hypothesis", "label").with_id("idx")
}

/// Drops neutral (1) and maps contradiction (2) to 1.
pub fn binarize(data: Dataset) -> Dataset {
    data.relabelled(&BINARY, |label| match label {
        0 => Some(0),
        2 => Some(1),
        _ => None,
    })
}

/// [`binarize`], for rows from a user's file.
fn binarize_rows(data: Dataset, _options: &DataOptions) -> Result<Dataset> {
    Ok(binarize(data))
}

fn load_binary(split: &str, options: &DataOptions) -> Result<Dataset> {
    Ok(binarize(glue::load("mnli", split, &columns(), &THREE_CLASSES, options)?))
}

fn load_original(split: &str, options: &DataOptions) -> Result<Dataset> {
    glue::load("mnli", split, &columns(), &THREE_CLASSES, options)
}

const SPLITS: &[&str] = &["train", "validation_matched", "validation_mismatched"];

inventory::submit! {
    TaskDef {
        name: "mnli",
        about: "MultiNLI, binarized (neutral dropped, contradiction → 1), as in the paper",
        source: "hub nyu-mll/glue, mnli/*.parquet",
        label_names: &BINARY,
        splits: SPLITS,
        train_split: Some("train"),
        eval_split: "validation_matched",
        ood: &["hans", "mnli-mm"],
        metrics: &[],
        prompt: PromptFamily::Nli,
        load: load_binary,
        subsets: per_label_subsets,
        file: FileRows { labels: Some(&THREE_CLASSES), process: Some(binarize_rows), ..FileRows::AS_READ },
    }
}

inventory::submit! {
    TaskDef {
        name: "mnli-original",
        about: "MultiNLI with GLUE's three classes (entailment, neutral, contradiction)",
        source: "hub nyu-mll/glue, mnli/*.parquet",
        label_names: &THREE_CLASSES,
        splits: SPLITS,
        train_split: Some("train"),
        eval_split: "validation_matched",
        ood: &[],
        metrics: &[],
        prompt: PromptFamily::Nli3,
        load: load_original,
        subsets: per_label_subsets,
        file: FileRows::AS_READ,
    }
}

inventory::submit! {
    TaskDef {
        name: "mnli-mm",
        about: "MultiNLI validation_mismatched, binarized (out-of-domain eval set)",
        source: "hub nyu-mll/glue, mnli/validation_mismatched-00000-of-00001.parquet",
        label_names: &BINARY,
        splits: &["validation_mismatched"],
        train_split: None,
        eval_split: "validation_mismatched",
        ood: &[],
        metrics: &[],
        prompt: PromptFamily::Nli,
        load: load_binary,
        subsets: per_label_subsets,
        file: FileRows { labels: Some(&THREE_CLASSES), process: Some(binarize_rows), ..FileRows::AS_READ },
    }
}
