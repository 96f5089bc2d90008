//! RTE (the GLUE version, <https://gluebenchmark.com>): GLUE's labels, 0 = entailment,
//! 1 = not_entailment. In-domain eval on the validation split (277 rows).

use crate::data::dataset::Dataset;
use crate::data::prompt::PromptFamily;
use crate::data::source::ColumnMap;
use crate::data::task::{per_label_subsets, DataOptions, FileRows, TaskDef};
use crate::error::Result;

use super::glue;

const LABELS: [&str; 2] = ["entailment", "not_entailment"];

fn load(split: &str, options: &DataOptions) -> Result<Dataset> {
    glue::load("rte", split, &ColumnMap::pair("sentence1", "sentence2", "label").with_id("idx"), &LABELS, options)
}

inventory::submit! {
    TaskDef {
        name: "rte",
        about: "Recognizing Textual Entailment (GLUE labels, 0 = entailment)",
        source: "hub nyu-mll/glue, rte/*.parquet",
        label_names: &LABELS,
        splits: &["train", "validation"],
        train_split: Some("train"),
        eval_split: "validation",
        ood: &[],
        metrics: &[],
        prompt: PromptFamily::Nli,
        load,
        subsets: per_label_subsets,
        file: FileRows::AS_READ,
    }
}
