//! CoLA's out-of-domain dev set (Warstadt et al., 2019), in the form llmft ships it and
//! shared/data holds: a header-less TSV of `source, label, original_label, sentence` (516 rows,
//! 354 acceptable, 162 unacceptable; the last line has no newline). Embedded in the binary.

use std::path::Path;

use crate::data::dataset::Dataset;
use crate::data::prompt::PromptFamily;
use crate::data::source::{self, columns, ColumnMap, FileFormat, Header, LabelMap};
use crate::data::task::{per_label_subsets, DataOptions, FileRows, Metric, TaskDef};
use crate::error::Result;

use super::cola::LABELS;

/// The embedded file.
const DEV_TSV: &[u8] = include_bytes!("../../../assets/data/cola_ood/dev.tsv");
/// Its name in messages.
const DEV_NAME: &str = "<embedded>/cola_ood/dev.tsv";
/// Column names (llmft's: code, label, annotation, sentence).
const COLUMNS: [&str; 4] = ["source", "label", "original_label", "sentence"];

fn load(_split: &str, _options: &DataOptions) -> Result<Dataset> {
    let header = Header::Absent(COLUMNS.iter().map(|c| c.to_string()).collect());
    let path = Path::new(DEV_NAME);
    let frame = source::embedded_table(path, DEV_TSV, FileFormat::Tsv, &header)?;
    let examples =
        columns::examples_from_frame(&frame, path, &ColumnMap::single("sentence", "label"), &LabelMap::new(&LABELS))?;
    Ok(Dataset::new("cola-ood/dev", &LABELS, examples))
}

inventory::submit! {
    TaskDef {
        name: "cola-ood",
        about: "CoLA out-of-domain dev set (516 rows; eval only)",
        source: "embedded copy of llmft's data/cola_ood/dev.tsv",
        label_names: &LABELS,
        splits: &["dev"],
        train_split: None,
        eval_split: "dev",
        ood: &[],
        metrics: &[Metric::Matthews],
        prompt: PromptFamily::Acceptability,
        load,
        subsets: per_label_subsets,
        file: FileRows::AS_READ,
    }
}
