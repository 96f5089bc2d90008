//! CoLA, the Corpus of Linguistic Acceptability (Warstadt et al., 2019,
//! <https://arxiv.org/abs/1805.12471>), from GLUE: 0 = unacceptable, 1 = acceptable; Matthews
//! correlation is reported beside accuracy. Out of domain: CoLA's out-of-domain dev set.

use crate::data::dataset::Dataset;
use crate::data::prompt::PromptFamily;
use crate::data::source::ColumnMap;
use crate::data::task::{per_label_subsets, DataOptions, FileRows, Metric, TaskDef};
use crate::error::Result;

use super::glue;

/// CoLA's labels (GLUE's names).
pub const LABELS: [&str; 2] = ["unacceptable", "acceptable"];

fn load(split: &str, options: &DataOptions) -> Result<Dataset> {
    glue::load("cola", split, &ColumnMap::single("sentence", "label").with_id("idx"), &LABELS, options)
}

inventory::submit! {
    TaskDef {
        name: "cola",
        about: "Corpus of Linguistic Acceptability (0 = unacceptable, 1 = acceptable)",
        source: "hub nyu-mll/glue, cola/*.parquet",
        label_names: &LABELS,
        splits: &["train", "validation"],
        train_split: Some("train"),
        eval_split: "validation",
        ood: &["cola-ood"],
        metrics: &[Metric::Matthews],
        prompt: PromptFamily::Acceptability,
        load,
        subsets: per_label_subsets,
        file: FileRows::AS_READ,
    }
}
