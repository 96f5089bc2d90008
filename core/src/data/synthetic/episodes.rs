//! Few-shot *episodes* for pretraining the embedded model to learn in context: documents made of
//! demonstrations in the synthetic task's exact in-context strings (llmft's minimal pattern and
//! its literal `\n\n` separator), then one more item, trained on with plain next-token loss
//! (`ftlab data episodes` writes them; `scripts/pretrain-embedded` trains on them with the `lm`
//! plugin).
//!
//! Each item is `{premise} {hypothesis} ? {word}`, the word naming the label under the
//! document's verbalizer: the reserved pair ` dog`/` river` (used nowhere else, so the NLI
//! feature can be learnt without teaching any real word a meaning), or a natural pair (` Yes`/
//! ` No` three times in four, ` True`/` False` otherwise). Items come from three families that
//! share the feature "the hypothesis's event is asserted by the premise": the task's own
//! templates, copy-or-substitute clauses, and "is this person in the premise". Documents may
//! start with a prefix of neutral words, so what is learnt does not depend on position.
//!
//! What makes in-context learning the only way to the label of a natural-pair query: with
//! `first_item_prior` set, the first item of a natural-pair document carries a label word drawn
//! independently of its example, so before any demonstration the model can only guess (it
//! learns the prior); after a demonstration the words follow the feature. (Drawing only the
//! zero-shot documents' words would not do: a document's first demonstration looks exactly like
//! a zero-shot item, and the model follows the majority.) The model thus learns to recognise the
//! task from the demonstrations (Min et al., 2022, and Pan et al., 2023, call this task
//! recognition), and its zero-shot accuracy is the majority baseline — as for real OPT models on
//! MNLI-style prompts. With `reversed`, natural pairs swap their meaning per document,
//! so the mapping itself must be read from the demonstrations (task learning).

use serde::{Deserialize, Serialize};

use super::{clause, in_domain_pair, sentence, Cast, NOUNS, PLACES, VERBS};
use crate::data::numpy::{LegacyRandomState, NumpyShuffle};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// The reserved verbalizer: entailment, non-entailment.
pub const RESERVED: [&str; 2] = ["dog", "river"];
/// The natural verbalizers, entailment word first; Yes/No is drawn three times in four.
pub const NATURAL: [[&str; 2]; 4] = [["Yes", "No"], ["Yes", "No"], ["Yes", "No"], ["True", "False"]];
/// Between items, as llmft joins in-context demonstrations (the four characters `\n\n`).
const SEPARATOR: &str = "\\n\\n";

/// The mix of one corpus of episodes (a pretraining stage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EpisodeConfig {
    /// Seed of the MT19937 stream everything is drawn from.
    pub seed: u32,
    /// Documents to write.
    pub documents: usize,
    /// Demonstrations before the last item, drawn uniformly from this range (inclusive);
    /// labels balanced (k/2 of each, shuffled).
    pub demonstrations: (usize, usize),
    /// Share of documents with no demonstrations at all (before drawing from the range).
    pub without_demonstrations: f64,
    /// Share of documents using the reserved verbalizer ` dog`/` river`.
    pub reserved: f64,
    /// Share of natural-pair documents whose pair is reversed (` No` for entailment).
    pub reversed: f64,
    /// The first item of a natural-pair document (its first demonstration, or its only item)
    /// carries the pair's first word (` Yes`/` True`) with this probability, else its second,
    /// independently of the example; the items after it follow the feature. `None`: every item
    /// follows the feature.
    pub first_item_prior: Option<f64>,
    /// Share of documents that start with a prefix of neutral words.
    pub prefix: f64,
    /// The prefix has 1 to this many words.
    pub max_prefix_words: usize,
    /// Share of last items in the in-context query form (`? ` then ` word`, as ftlab's ICL
    /// scoring appends the label word to the query prompt); else the demonstration form.
    pub query_form: f64,
    /// Weights of the item families: the task's templates, copy-or-substitute, person-in-premise.
    pub families: [f64; 3],
}

impl Default for EpisodeConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            documents: 1000,
            demonstrations: (0, 8),
            without_demonstrations: 0.0,
            reserved: 1.0,
            reversed: 0.0,
            first_item_prior: None,
            prefix: 0.0,
            max_prefix_words: 120,
            query_form: 0.5,
            families: [0.5, 0.3, 0.2],
        }
    }
}

impl EpisodeConfig {
    fn check(&self) -> Result<()> {
        let share = |name: &str, p: f64| match (0.0..=1.0).contains(&p) {
            true => Ok(()),
            false => Err(Error::DataOption(format!("episodes: `{name}` must be within 0..=1, not {p}"))),
        };
        share("reserved", self.reserved)?;
        share("reversed", self.reversed)?;
        share("without_demonstrations", self.without_demonstrations)?;
        share("prefix", self.prefix)?;
        share("query_form", self.query_form)?;
        share("first_item_prior", self.first_item_prior.unwrap_or(0.0))?;
        if self.demonstrations.0 > self.demonstrations.1 {
            return Err(Error::DataOption("episodes: the demonstration range is empty (min > max)".into()));
        }
        if self.families.iter().any(|w| *w < 0.0) || self.families.iter().sum::<f64>() <= 0.0 {
            return Err(Error::DataOption("episodes: family weights must be non-negative with a positive sum".into()));
        }
        if self.prefix > 0.0 && self.max_prefix_words == 0 {
            return Err(Error::DataOption("episodes: a prefix needs max_prefix_words ≥ 1".into()));
        }
        Ok(())
    }
}

/// Draws episodes; a pure function of the config and the tokenizer (which decides the neutral
/// prefix words).
pub struct Episodes {
    config: EpisodeConfig,
    rng: LegacyRandomState,
    neutral: Vec<String>,
}

impl Episodes {
    /// Neutral words are the tokenizer's space-prefixed alphabetic tokens of two or more
    /// letters that no item uses (whole words like `cook`, and fragments like `Fal`, `advis`
    /// that resemble label and task words, which makes a prefix a harder distractor).
    pub fn new(config: EpisodeConfig, tokenizer: &Tokenizer) -> Result<Self> {
        config.check()?;
        let taken: Vec<&str> = NOUNS
            .iter()
            .copied()
            .chain(VERBS.iter().map(|(past, _)| *past))
            .chain(PLACES)
            .chain(["the", "The", "and", "near"])
            .chain(RESERVED)
            .chain(NATURAL.iter().flatten().copied())
            .collect();
        let neutral: Vec<String> = tokenizer
            .tokens_of_vocabulary()
            .into_iter()
            .filter_map(|t| t.strip_prefix('Ġ').map(str::to_string))
            .filter(|w| w.len() >= 2 && w.chars().all(|c| c.is_ascii_alphabetic()) && !taken.contains(&w.as_str()))
            .collect();
        if config.prefix > 0.0 && neutral.is_empty() {
            return Err(Error::DataOption(
                "episodes: the tokenizer has no neutral one-token words for prefixes".into(),
            ));
        }
        Ok(Self { rng: LegacyRandomState::seed(config.seed), config, neutral })
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_sample() < p
    }

    /// An index drawn with these (unnormalised) weights.
    fn weighted(&mut self, weights: &[f64]) -> usize {
        let mut x = self.rng.random_sample() * weights.iter().sum::<f64>();
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    /// The next document's text.
    pub fn document(&mut self) -> String {
        let mut text = String::new();
        if self.config.prefix > 0.0 && self.chance(self.config.prefix) {
            let words = 1 + self.rng.interval(self.config.max_prefix_words as u32 - 1) as usize;
            let drawn: Vec<&str> = (0..words)
                .map(|_| self.neutral[self.rng.interval(self.neutral.len() as u32 - 1) as usize].as_str())
                .collect();
            text.push_str(&drawn.join(" "));
            text.push_str(SEPARATOR);
        }
        let families = self.config.families;
        let family = self.weighted(&families);
        let reserved = self.chance(self.config.reserved);
        let canonical = match reserved {
            true => RESERVED,
            false => NATURAL[self.rng.interval(NATURAL.len() as u32 - 1) as usize],
        };
        let mut words = canonical;
        if !reserved && self.config.reversed > 0.0 && self.chance(self.config.reversed) {
            words.reverse();
        }
        let (low, high) = self.config.demonstrations;
        let k = match self.config.without_demonstrations > 0.0 && self.chance(self.config.without_demonstrations) {
            true => 0,
            false => low + self.rng.interval((high - low) as u32) as usize,
        };
        let mut labels: Vec<usize> = (0..k).map(|i| i % 2).collect();
        let order = self.rng.permutation(k);
        labels = order.into_iter().map(|i| labels[i]).collect();
        let last = self.rng.interval(1) as usize;
        labels.push(last);
        for (i, &label) in labels.iter().enumerate() {
            let (premise, hypothesis) = self.item(family, label);
            let mut word = words[label];
            if i == 0 && !reserved {
                if let Some(first) = self.config.first_item_prior {
                    // The unreversed pair's first word with probability `first`.
                    word = if self.chance(first) { canonical[0] } else { canonical[1] };
                }
            }
            if i < k {
                text.push_str(&format!("{premise} {hypothesis} ? {word}{SEPARATOR}"));
                continue;
            }
            let space = if self.chance(self.config.query_form) { "  " } else { " " };
            text.push_str(&format!("{premise} {hypothesis} ?{space}{word}"));
        }
        text
    }

    /// A premise/hypothesis pair of `family` with `label` (0: the event is asserted).
    fn item(&mut self, family: usize, label: usize) -> (String, String) {
        match family {
            0 => in_domain_pair(&mut self.rng, label),
            1 => copy_or_substitute(&mut self.rng, label),
            _ => person_in_premise(&mut self.rng, label),
        }
    }
}

/// Writes `config.documents` episodes drawn with the embedded tokenizer's neutral words to
/// `path` as JSONL rows `{"text": …}` (what the `text` task reads), or with `label_response` as
/// `{"prompt": …, "response": " word"}`, the last item's label word split off so that the `lm`
/// plugin's loss reads only it (the lever that takes a plateaued model to the feature: the
/// gradient is no longer dominated by the predictable template tokens); returns the rows written.
pub fn write_embedded(config: EpisodeConfig, label_response: bool, path: &std::path::Path) -> Result<usize> {
    use std::io::Write;
    let tokenizer = crate::model::tiny::tokenizer()?;
    let documents = config.documents;
    let mut episodes = Episodes::new(config, &tokenizer)?;
    let file = std::fs::File::create(path).map_err(Error::io(path))?;
    let mut out = std::io::BufWriter::new(file);
    for _ in 0..documents {
        let document = episodes.document();
        let row = match label_response {
            true => {
                let (prompt, response) = split_label(&document);
                serde_json::json!({ "prompt": prompt, "response": response })
            }
            false => serde_json::json!({ "text": document }),
        };
        writeln!(out, "{row}").map_err(Error::io(path))?;
    }
    out.flush().map_err(Error::io(path))?;
    Ok(documents)
}

/// A document split before its last label word: the prompt, and the word with its space (the
/// tokenizer reads ` word` as one token whether or not it is split off, and the query form's
/// extra space stays in the prompt, as in-context scoring has it).
fn split_label(document: &str) -> (&str, &str) {
    let at = document.rfind(' ').expect("an item always ends in ` word`");
    document.split_at(at)
}

/// The premise is a clause (plain, with a place, or after a conjoined subject); the hypothesis
/// is its simple clause (label 0) or that clause with its subject, verb or object replaced.
fn copy_or_substitute(rng: &mut LegacyRandomState, label: usize) -> (String, String) {
    let w = Cast::draw(rng);
    let (verb, other) = (w.verb.0, w.other_verb.0);
    let simple = clause(w.a, verb, w.b);
    let premise = match rng.interval(2) {
        0 => simple.clone(),
        1 => format!("{simple} near the {}", w.place),
        _ => format!("the {} and {simple}", w.c),
    };
    let hypothesis = match label {
        0 => simple,
        _ => {
            let others: Vec<&str> = NOUNS.iter().copied().filter(|n| ![w.a, w.b, w.c].contains(n)).collect();
            let d = others[rng.interval(others.len() as u32 - 1) as usize];
            match rng.interval(2) {
                0 => clause(d, verb, w.b),
                1 => clause(w.a, other, w.b),
                _ => clause(w.a, verb, d),
            }
        }
    };
    (sentence(premise), sentence(hypothesis))
}

/// The premise is a simple clause (with a place half the time); the hypothesis names one
/// person, who is in the premise for label 0 and is not for label 1.
fn person_in_premise(rng: &mut LegacyRandomState, label: usize) -> (String, String) {
    let w = Cast::draw(rng);
    let mut premise = clause(w.a, w.verb.0, w.b);
    if rng.interval(1) == 0 {
        premise.push_str(&format!(" near the {}", w.place));
    }
    let person = match label {
        0 => [w.a, w.b][rng.interval(1) as usize],
        _ => w.c,
    };
    (sentence(premise), sentence(format!("the {person}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn episodes(config: EpisodeConfig) -> Episodes {
        let tokenizer = crate::model::tiny::tokenizer().unwrap();
        Episodes::new(config, &tokenizer).unwrap()
    }

    #[test]
    fn documents_are_deterministic_and_in_the_icl_format() {
        let config = EpisodeConfig { demonstrations: (2, 2), reserved: 0.0, ..Default::default() };
        let (mut a, mut b) = (episodes(config.clone()), episodes(config));
        for _ in 0..50 {
            let doc = a.document();
            assert_eq!(doc, b.document());
            let items: Vec<&str> = doc.split(SEPARATOR).collect();
            assert_eq!(items.len(), 3, "{doc}");
            // Balanced demonstrations under a natural pair (never reversed by default).
            let words: Vec<&str> = items[..2].iter().map(|i| i.rsplit(' ').next().unwrap()).collect();
            let mut sorted = words.clone();
            sorted.sort();
            assert!(sorted == ["No", "Yes"] || sorted == ["False", "True"], "{doc}");
            assert!(items.iter().all(|i| i.contains(" ? ")), "{doc}");
        }
    }

    #[test]
    fn zero_shot_words_ignore_the_example_and_prefixes_are_neutral() {
        let config = EpisodeConfig {
            demonstrations: (0, 0),
            reserved: 0.0,
            first_item_prior: Some(1.0),
            prefix: 1.0,
            max_prefix_words: 5,
            ..Default::default()
        };
        let mut e = episodes(config);
        assert!(e.neutral.len() > 80, "{} neutral words", e.neutral.len());
        for _ in 0..100 {
            let doc = e.document();
            let word = doc.rsplit(' ').next().unwrap();
            assert!(word == "Yes" || word == "True", "{doc}");
            let (prefix, _) = doc.split_once(SEPARATOR).unwrap();
            assert!((1..=5).contains(&prefix.split(' ').count()), "{doc}");
            assert!(prefix.split(' ').all(|w| !NOUNS.contains(&w) && w != "Yes"), "{doc}");
        }
    }

    #[test]
    fn label_words_follow_the_feature() {
        // Reserved words, families checked by construction: an entailed item's hypothesis
        // words all occur in its premise.
        let mut e = episodes(EpisodeConfig { demonstrations: (4, 4), ..Default::default() });
        let mut counts = [0usize; 2];
        for _ in 0..100 {
            for item in e.document().split(SEPARATOR) {
                let (pair, word) = item.rsplit_once(" ? ").unwrap();
                let word = word.trim();
                let label = RESERVED.iter().position(|w| *w == word).unwrap();
                counts[label] += 1;
                let lower = pair.to_lowercase();
                let (premise, hypothesis) = lower.split_once(". ").unwrap();
                let inside = hypothesis.trim_end_matches('.').split(' ').all(|w| premise.split(' ').any(|p| p == w));
                assert!(label == 1 || inside, "{item}");
            }
        }
        assert!(counts[0] > 200 && counts[1] > 200, "{counts:?}");
    }

    #[test]
    fn a_label_response_is_the_last_word_and_tokenizes_as_in_the_document() {
        let tokenizer = crate::model::tiny::tokenizer().unwrap();
        let mut e = episodes(EpisodeConfig { demonstrations: (0, 2), query_form: 0.5, ..Default::default() });
        let mut query_forms = 0;
        for _ in 0..40 {
            let doc = e.document();
            let (prompt, response) = split_label(&doc);
            assert!(response == " dog" || response == " river", "{doc}");
            query_forms += prompt.ends_with("? ") as usize;
            let mut ids = tokenizer.encode(prompt).unwrap();
            ids.extend(tokenizer.encode_plain(response).unwrap());
            assert_eq!(ids, tokenizer.encode(&doc).unwrap(), "{doc}");
        }
        assert!(query_forms > 5 && query_forms < 35, "{query_forms} query forms of 40");
    }
}
