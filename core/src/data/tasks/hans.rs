//! HANS, Heuristic Analysis for NLI Systems (McCoy et al., 2019,
//! <https://arxiv.org/abs/1902.01007>): 30,000 pairs, 10,000 per syntactic heuristic
//! (lexical_overlap, subsequence, constituent), half entailed; in each heuristic's
//! non-entailed half the label contradicts the heuristic.
//!
//! Source: the hub's parquet export of `jhu-cogsci/hans` (ref `refs/convert/parquet`, file
//! `plain_text/validation/0000.parquet`; columns premise, hypothesis, label, heuristic,
//! subcase, …). By default only lexical_overlap is evaluated, per label, as the paper reports;
//! with [`HansScope::All`] all 30,000 rows, per heuristic, heuristic × label and subcase.
//! Example ids are row numbers in the full split (llmft adds them before filtering).

use crate::data::dataset::{Dataset, Subset};
use crate::data::prompt::PromptFamily;
use crate::data::source::{self, columns, ColumnMap, HubFile, LabelMap};
use crate::data::task::{DataOptions, FileRows, HansScope, TaskDef};
use crate::error::Result;

/// HANS's labels (label ids agree with binarized MNLI's: 0 = entailment).
const LABELS: [&str; 2] = ["entailment", "non-entailment"];
/// The heuristics, in HANS's order.
pub const HEURISTICS: [&str; 3] = ["lexical_overlap", "subsequence", "constituent"];

/// The parquet file of `split` (`validation` or `train`).
pub fn file(split: &str) -> HubFile {
    HubFile::new("jhu-cogsci/hans", "refs/convert/parquet", &format!("plain_text/{split}/0000.parquet"))
}

fn load(split: &str, options: &DataOptions) -> Result<Dataset> {
    let (path, frame, snapshot) = source::hub_table(&options.hub, &file(split))?;
    let mut map = ColumnMap::pair("premise", "hypothesis", "label");
    map.attributes = vec!["heuristic".into(), "subcase".into()];
    let examples = columns::examples_from_frame(&frame, &path, &map, &LabelMap::new(&LABELS))?;
    scoped(Dataset { hub_files: vec![snapshot], ..Dataset::new(format!("hans/{split}"), &LABELS, examples) }, options)
}

/// The heuristics `options.hans` scores (the paper's: lexical overlap only), of rows that
/// carry a `heuristic` (a user's file whose mapping names none is kept whole).
fn scoped(data: Dataset, options: &DataOptions) -> Result<Dataset> {
    let labelled = data.examples.iter().any(|e| e.attribute("heuristic").is_some());
    Ok(match options.hans {
        HansScope::LexicalOverlap if labelled => {
            data.filtered(data.name.clone(), |e| e.attribute("heuristic") == Some("lexical_overlap"))
        }
        _ => data,
    })
}

/// Subsets of a HANS-like set (examples with `heuristic` and `subcase` attributes): per
/// heuristic and label, plus per heuristic and per subcase when `all` is set.
pub fn heuristic_subsets(name: &str, data: &Dataset, all: bool) -> Vec<Subset> {
    let mut heuristics: Vec<String> = vec![];
    let mut subcases: Vec<String> = vec![];
    for example in &data.examples {
        for (value, seen) in
            [(example.attribute("heuristic"), &mut heuristics), (example.attribute("subcase"), &mut subcases)]
        {
            if let Some(value) = value.filter(|v| !seen.iter().any(|s| s == v)) {
                seen.push(value.to_string());
            }
        }
    }
    let mut subsets = vec![];
    for heuristic in &heuristics {
        let of_heuristic = |e: &crate::data::dataset::Example| e.attribute("heuristic") == Some(heuristic.as_str());
        if all {
            subsets.push(Subset::of(data, format!("{name}-{heuristic}"), of_heuristic));
        }
        for (label, label_name) in data.label_names.iter().enumerate() {
            let subset_name = format!("{name}-{heuristic}-{label_name}");
            subsets.push(Subset::of(data, subset_name, |e| of_heuristic(e) && e.label == label));
        }
    }
    if all {
        for subcase in &subcases {
            subsets.push(Subset::of(data, format!("{name}-{subcase}"), |e| {
                e.attribute("subcase") == Some(subcase.as_str())
            }));
        }
    }
    subsets
}

fn subsets(name: &str, data: &Dataset, options: &DataOptions) -> Vec<Subset> {
    heuristic_subsets(name, data, options.hans == HansScope::All)
}

inventory::submit! {
    TaskDef {
        name: "hans",
        about: "HANS (lexical_overlap by default, scored per label; all heuristics as an option)",
        source: "hub jhu-cogsci/hans@refs/convert/parquet, plain_text/*/0000.parquet",
        label_names: &LABELS,
        splits: &["validation", "train"],
        train_split: None,
        eval_split: "validation",
        ood: &[],
        metrics: &[],
        prompt: PromptFamily::Nli,
        load,
        subsets,
        file: FileRows { labels: None, process: Some(scoped), ..FileRows::AS_READ },
    }
}
