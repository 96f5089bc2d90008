//! The embedded synthetic NLI task (see [`crate::data::synthetic`]): `synthetic-nli` to train
//! and evaluate in domain, `synthetic-hans` its HANS-like out-of-domain set, scored per
//! heuristic, heuristic × label and subcase. The default task of runs: no download.

use crate::data::dataset::{Dataset, Subset};
use crate::data::prompt::PromptFamily;
use crate::data::synthetic::{self, LABEL_NAMES};
use crate::data::task::{per_label_subsets, DataOptions, FileRows, TaskDef};
use crate::error::Result;

use super::hans::heuristic_subsets;

fn load_in_domain(split: &str, options: &DataOptions) -> Result<Dataset> {
    Ok(synthetic::in_domain(&options.synthetic, split))
}

fn load_ood(_split: &str, options: &DataOptions) -> Result<Dataset> {
    Ok(synthetic::out_of_domain(&options.synthetic))
}

fn ood_subsets(name: &str, data: &Dataset, _options: &DataOptions) -> Vec<Subset> {
    heuristic_subsets(name, data, true)
}

inventory::submit! {
    TaskDef {
        name: "synthetic-nli",
        about: "embedded templated NLI whose labels follow rules (learnable by tiny-opt; no download)",
        source: "generated (seeded)",
        label_names: &LABEL_NAMES,
        splits: &["train", "validation"],
        train_split: Some("train"),
        eval_split: "validation",
        ood: &["synthetic-hans"],
        metrics: &[],
        prompt: PromptFamily::Nli,
        load: load_in_domain,
        subsets: per_label_subsets,
        file: FileRows::AS_READ,
    }
}

inventory::submit! {
    TaskDef {
        name: "synthetic-hans",
        about: "HANS-like out-of-domain set of synthetic-nli (3 heuristics × 4 subcases; eval only)",
        source: "generated (seeded)",
        label_names: &LABEL_NAMES,
        splits: &["validation"],
        train_split: None,
        eval_split: "validation",
        ood: &[],
        metrics: &[],
        prompt: PromptFamily::Nli,
        load: load_ood,
        subsets: ood_subsets,
        file: FileRows::AS_READ,
    }
}
