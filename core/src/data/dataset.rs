//! Labelled examples and the datasets that hold them: what every loader produces and every
//! sampler, prompt renderer and metric consumes.
//!
//! A [`Dataset`] is one split of one task after the task's filtering (e.g. MNLI train with
//! neutral dropped), in source order; positions in `examples` are what few-shot sampling draws,
//! exactly as llmft draws positions of a filtered Hugging Face dataset.

use std::collections::BTreeMap;

use serde::Serialize;

use super::source::HubSnapshot;

/// One labelled example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Example {
    /// The row's id in its source: GLUE's `idx`, PAWS's `id`, else the row number (from 0).
    pub id: i64,
    /// The first text: premise, first question, or the only sentence.
    pub text1: String,
    /// The second text: hypothesis or second question; `None` for single-sentence tasks.
    pub text2: Option<String>,
    /// Label id: an index into the dataset's label names.
    pub label: usize,
    /// Extra columns some eval sets are scored by, e.g. HANS's `heuristic` and `subcase`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

impl Example {
    /// An example with no extra attributes.
    pub fn new(id: i64, text1: impl Into<String>, text2: Option<String>, label: usize) -> Self {
        Self { id, text1: text1.into(), text2, label, attributes: BTreeMap::new() }
    }

    /// The value of an extra attribute, if the source had it.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }
}

/// One split of a task, after the task's filtering.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dataset {
    /// `task/split`, e.g. `mnli/validation_matched`, for messages and reports.
    pub name: String,
    /// Label names, indexed by label id.
    pub label_names: Vec<String>,
    /// The examples, in source order.
    pub examples: Vec<Example>,
    /// Rows of a user's file left out because their label is none of the task's (GLUE marks
    /// examples without a gold label `-`): each such label and its count.
    pub unknown_labels: BTreeMap<String, usize>,
    /// The hub files the rows were read from, at the commits read (empty for a user's file,
    /// which the record names by its SHA-256, and for embedded data).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hub_files: Vec<HubSnapshot>,
}

impl Dataset {
    /// A dataset named `name` with the given label names and examples.
    pub fn new(name: impl Into<String>, label_names: &[&str], examples: Vec<Example>) -> Self {
        let label_names = label_names.iter().map(|s| s.to_string()).collect();
        Self { name: name.into(), label_names, examples, unknown_labels: BTreeMap::new(), hub_files: Vec::new() }
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Examples per label id.
    pub fn label_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.label_names.len()];
        for example in &self.examples {
            if let Some(count) = counts.get_mut(example.label) {
                *count += 1;
            }
        }
        counts
    }

    /// Keeps the examples `relabel` maps to a new label id, dropping those it maps to `None`,
    /// under new label names (task filters such as MNLI's binarization).
    pub fn relabelled(self, label_names: &[&str], relabel: impl Fn(usize) -> Option<usize>) -> Self {
        let examples = self
            .examples
            .into_iter()
            .filter_map(|mut example| {
                example.label = relabel(example.label)?;
                Some(example)
            })
            .collect();
        Self {
            unknown_labels: self.unknown_labels,
            hub_files: self.hub_files,
            ..Self::new(self.name, label_names, examples)
        }
    }

    /// The examples at `positions`, in that order, as a new dataset named `name`.
    pub fn select(&self, name: impl Into<String>, positions: &[usize]) -> Self {
        let examples = positions.iter().filter_map(|&p| self.examples.get(p).cloned()).collect();
        self.with_examples(name.into(), examples)
    }

    /// The examples for which `keep` holds, as a new dataset named `name`.
    pub fn filtered(&self, name: impl Into<String>, keep: impl Fn(&Example) -> bool) -> Self {
        let examples = self.examples.iter().filter(|e| keep(e)).cloned().collect();
        self.with_examples(name.into(), examples)
    }

    /// A subset of these rows: the labels, dropped-label counts and source files carry over.
    fn with_examples(&self, name: String, examples: Vec<Example>) -> Self {
        Self {
            name,
            label_names: self.label_names.clone(),
            examples,
            unknown_labels: self.unknown_labels.clone(),
            hub_files: self.hub_files.clone(),
        }
    }
}

/// A named part of an eval set that is scored on its own (e.g. HANS lexical-overlap
/// non-entailment), as positions into the eval set's examples.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subset {
    /// e.g. `hans-lexical_overlap-contradiction`.
    pub name: String,
    /// Positions into the eval set's examples.
    pub positions: Vec<usize>,
}

impl Subset {
    /// Positions of the examples of `dataset` for which `keep` holds.
    pub fn of(dataset: &Dataset, name: impl Into<String>, keep: impl Fn(&Example) -> bool) -> Self {
        let positions = dataset.examples.iter().enumerate().filter(|(_, e)| keep(e)).map(|(p, _)| p).collect();
        Self { name: name.into(), positions }
    }

    /// One subset per label, named `{prefix}-{label name}` (llmft scores OOD sets this way).
    pub fn per_label(dataset: &Dataset, prefix: &str) -> Vec<Self> {
        (0..dataset.label_names.len())
            .map(|label| Self::of(dataset, format!("{prefix}-{}", dataset.label_names[label]), |e| e.label == label))
            .collect()
    }
}

/// A dataset to evaluate on, with the subsets scored beside the whole.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalSet {
    /// The eval set's name, e.g. `mnli` (in-domain) or `hans` (out-of-domain).
    pub name: String,
    /// Whether it is the task's own distribution.
    pub in_domain: bool,
    /// Its examples.
    pub data: Dataset,
    /// Parts scored separately.
    pub subsets: Vec<Subset>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Dataset {
        let examples =
            (0..6).map(|i| Example::new(i, format!("p{i}"), Some(format!("h{i}")), (i % 3) as usize)).collect();
        Dataset::new("toy/train", &["entailment", "neutral", "contradiction"], examples)
    }

    #[test]
    fn binarizing_drops_and_relabels() {
        let binary = toy().relabelled(&["entailment", "contradiction"], |l| match l {
            0 => Some(0),
            2 => Some(1),
            _ => None,
        });
        assert_eq!(binary.examples.iter().map(|e| e.id).collect::<Vec<_>>(), [0, 2, 3, 5]);
        assert_eq!(binary.label_counts(), [2, 2]);
    }

    #[test]
    fn subsets_per_label_hold_positions() {
        let subsets = Subset::per_label(&toy(), "toy");
        assert_eq!(subsets[1].name, "toy-neutral");
        assert_eq!(subsets[1].positions, [1, 4]);
        assert_eq!(toy().select("s", &[5, 0]).examples[0].id, 5);
    }
}
