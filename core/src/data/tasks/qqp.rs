//! Quora Question Pairs from GLUE, subsampled as llmft does: `np.random.seed(123)` once, then
//! for each split in order (train, validation, test) `np.random.choice(len(split), 1000,
//! replace=False)` with the RNG stream carrying over, the rows kept in sampling order. So the
//! validation subsample depends on the training split's size, which is read from its parquet
//! footer. A user's file (`--file`, e.g. GLUE's `dev.tsv`) is subsampled as llmft subsamples the
//! validation split, after a draw over GLUE's training size, so GLUE's own dev file gives llmft's
//! 1,000 validation rows. Labels: 0 = not_duplicate, 1 = duplicate; macro-F1 is reported beside
//! accuracy.

use crate::data::dataset::Dataset;
use crate::data::numpy::LegacyRandomState;
use crate::data::prompt::PromptFamily;
use crate::data::sampling::SUBSAMPLE_SEED;
use crate::data::source::ColumnMap;
use crate::data::task::{per_label_subsets, DataOptions, FileRows, Metric, TaskDef};
use crate::error::{Error, Result};

use super::glue;

const LABELS: [&str; 2] = ["not_duplicate", "duplicate"];
/// Rows kept per split.
pub const SUBSAMPLE: usize = 1000;
/// llmft's split order (the order of GLUE's `DatasetDict`).
const SPLIT_ORDER: [&str; 2] = ["train", "validation"];

/// Rows of GLUE's QQP training split (`nyu-mll/glue` qqp/train): llmft's draw over it precedes
/// the validation subsample.
pub const GLUE_TRAIN_ROWS: usize = 363_846;

/// The subsampled positions of `split` given the sizes of the splits before it and its own.
pub fn subsample(split_sizes: &[usize]) -> Result<Vec<usize>> {
    let mut rng = LegacyRandomState::seed(SUBSAMPLE_SEED);
    let mut positions = vec![];
    for &size in split_sizes {
        positions = rng.choice_without_replacement(size, SUBSAMPLE).ok_or_else(|| {
            Error::Sampling(format!("a QQP split has {size} rows, fewer than the {SUBSAMPLE} llmft keeps"))
        })?;
    }
    Ok(positions)
}

fn load(split: &str, options: &DataOptions) -> Result<Dataset> {
    let before = SPLIT_ORDER.iter().take_while(|s| **s != split);
    let mut sizes = before.map(|s| glue::rows("qqp", s, options)).collect::<Result<Vec<_>>>()?;
    let columns = ColumnMap::pair("question1", "question2", "label").with_id("idx");
    let full = glue::load("qqp", split, &columns, &LABELS, options)?;
    sizes.push(full.len());
    Ok(full.select(full.name.clone(), &subsample(&sizes)?))
}

/// A user's file, subsampled as llmft subsamples QQP's validation split.
fn subsample_file(data: Dataset, _options: &DataOptions) -> Result<Dataset> {
    Ok(data.select(data.name.clone(), &subsample(&[GLUE_TRAIN_ROWS, data.len()])?))
}

inventory::submit! {
    TaskDef {
        name: "qqp",
        about: "Quora Question Pairs, every split subsampled to 1,000 rows (seed 123) as llmft does",
        source: "hub nyu-mll/glue, qqp/*.parquet",
        label_names: &LABELS,
        splits: &SPLIT_ORDER,
        train_split: Some("train"),
        eval_split: "validation",
        ood: &["paws-qqp"],
        metrics: &[Metric::MacroF1],
        prompt: PromptFamily::Paraphrase,
        load,
        subsets: per_label_subsets,
        file: FileRows { labels: None, process: Some(subsample_file), ..FileRows::AS_READ },
    }
}
