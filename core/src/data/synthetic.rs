//! The embedded synthetic NLI task: templated premises and hypotheses whose labels follow from
//! rules, so a tiny model can learn it in seconds, with an out-of-domain split built like HANS
//! (McCoy et al., 2019, <https://arxiv.org/abs/1902.01007>).
//!
//! Sentences are about people doing things to people: `The doctor saw the lawyer.` The rule:
//! the hypothesis is entailed (label 0) when its subject–verb–object event is asserted by the
//! premise. In-domain, every entailed pair has full word overlap and every non-entailed pair
//! introduces a new word (a different person or verb) — as in MNLI, the lexical-overlap
//! heuristic and the rule agree there. The out-of-domain split has three heuristics
//! (lexical overlap, subsequence, constituent) with two subcases where the heuristic is right
//! (entailment) and two where the label contradicts it (non-entailment: every hypothesis word
//! is in the premise, yet the event is not asserted). Subcase names follow HANS's.
//!
//! Everything is a pure function of [`SyntheticConfig`]; each split draws from its own MT19937
//! stream (seed, seed + 1, seed + 2), so resizing one split leaves the others unchanged. The
//! words are in the embedded tokenizer's corpus, so each is one token of `tiny-opt`.

use serde::Serialize;

pub mod episodes;

use super::dataset::{Dataset, Example};
use super::numpy::{LegacyRandomState, NumpyShuffle};

/// Label names of the synthetic task (HANS's label 1 is "non-entailment").
pub const LABEL_NAMES: [&str; 2] = ["entailment", "non-entailment"];

/// People (subjects and objects).
pub const NOUNS: [&str; 12] = [
    "doctor",
    "lawyer",
    "artist",
    "student",
    "teacher",
    "senator",
    "judge",
    "scientist",
    "actor",
    "banker",
    "manager",
    "author",
];
/// Transitive verbs: past tense and past participle.
pub const VERBS: [(&str, &str); 8] = [
    ("saw", "seen"),
    ("met", "met"),
    ("called", "called"),
    ("thanked", "thanked"),
    ("helped", "helped"),
    ("advised", "advised"),
    ("paid", "paid"),
    ("visited", "visited"),
];
/// Places for prepositional phrases.
pub const PLACES: [&str; 5] = ["library", "park", "office", "museum", "station"];

/// Sizes and seed of the synthetic task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SyntheticConfig {
    /// Seed of the generator (the split streams are seed, seed + 1, seed + 2).
    pub seed: u32,
    /// Training pool size.
    pub train: usize,
    /// In-domain validation size.
    pub validation: usize,
    /// Out-of-domain examples per subcase (12 subcases).
    pub ood_per_subcase: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self { seed: 0, train: 2000, validation: 500, ood_per_subcase: 100 }
    }
}

/// The words of one generated pair: three distinct people, two distinct verbs, a place.
struct Cast {
    a: &'static str,
    b: &'static str,
    c: &'static str,
    verb: (&'static str, &'static str),
    other_verb: (&'static str, &'static str),
    place: &'static str,
}

impl Cast {
    fn draw(rng: &mut LegacyRandomState) -> Self {
        let people = distinct(rng, NOUNS.len(), 3);
        let verbs = distinct(rng, VERBS.len(), 2);
        let place = PLACES[rng.interval(PLACES.len() as u32 - 1) as usize];
        Self {
            a: NOUNS[people[0]],
            b: NOUNS[people[1]],
            c: NOUNS[people[2]],
            verb: VERBS[verbs[0]],
            other_verb: VERBS[verbs[1]],
            place,
        }
    }
}

/// `count` distinct indices below `n`.
fn distinct(rng: &mut LegacyRandomState, n: usize, count: usize) -> Vec<usize> {
    rng.choice_without_replacement(n, count).unwrap_or_default()
}

/// `The x <verb> the y.`
fn clause(x: &str, verb: &str, y: &str) -> String {
    format!("the {x} {verb} the {y}")
}

fn sentence(text: String) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => format!("{}{}.", first.to_uppercase(), chars.as_str()),
        None => text,
    }
}

/// An in-domain pair of the given label, from one of its templates.
fn in_domain_pair(rng: &mut LegacyRandomState, label: usize) -> (String, String) {
    let w = Cast::draw(rng);
    let (v, _) = w.verb;
    let simple = clause(w.a, v, w.b);
    let template = rng.interval(3);
    let (premise, hypothesis) = match (label, template) {
        // Entailment: copy, a dropped object PP, a dropped conjunct subject.
        (0, 0 | 3) => (simple.clone(), simple),
        (0, 1) => (format!("{simple} near the {}", w.place), simple),
        (0, _) => (format!("the {} and {}", w.a, clause(w.c, v, w.b)), simple),
        // Non-entailment: a new subject, a new verb, a new object (with or without a PP).
        (_, 0) => (simple, clause(w.c, v, w.b)),
        (_, 1) => (simple, clause(w.a, w.other_verb.0, w.b)),
        (_, 2) => (format!("{simple} near the {}", w.place), clause(w.a, v, w.c)),
        (_, _) => (simple, clause(w.a, v, w.c)),
    };
    (sentence(premise), sentence(hypothesis))
}

/// The out-of-domain subcases: (heuristic, subcase, label).
pub const OOD_SUBCASES: [(&str, &str, usize); 12] = [
    ("lexical_overlap", "le_passive", 0),
    ("lexical_overlap", "le_conjunction", 0),
    ("lexical_overlap", "ln_subject/object_swap", 1),
    ("lexical_overlap", "ln_passive", 1),
    ("subsequence", "se_PP_on_obj", 0),
    ("subsequence", "se_conjunction", 0),
    ("subsequence", "sn_PP_on_subject", 1),
    ("subsequence", "sn_relative_clause_on_subject", 1),
    ("constituent", "ce_adverb", 0),
    ("constituent", "ce_embedded_under_verb", 0),
    ("constituent", "cn_adverb", 1),
    ("constituent", "cn_embedded_under_verb", 1),
];

/// An out-of-domain pair of `subcase`.
fn ood_pair(rng: &mut LegacyRandomState, subcase: &str) -> (String, String) {
    let w = Cast::draw(rng);
    let (v, _) = w.verb;
    let simple = clause(w.a, v, w.b);
    // Passives take a verb whose participle is its past form (all but `saw`, and the two
    // verbs differ), so every hypothesis word is in the premise.
    let (pv, participle) = if w.verb.0 == w.verb.1 { w.verb } else { w.other_verb };
    let passive = format!("the {} was {participle} by the {}", w.b, w.a);
    let (premise, hypothesis) = match subcase {
        "le_passive" => (passive, clause(w.a, pv, w.b)),
        "le_conjunction" => (format!("{simple} and the {}", w.c), clause(w.a, v, w.c)),
        "ln_subject/object_swap" => (simple, clause(w.b, v, w.a)),
        "ln_passive" => (passive, clause(w.b, pv, w.a)),
        "se_PP_on_obj" => (format!("{simple} near the {}", w.place), simple),
        "se_conjunction" => (format!("the {} and {}", w.c, simple), simple),
        "sn_PP_on_subject" => (format!("the {} near {}", w.c, simple), simple),
        "sn_relative_clause_on_subject" => {
            (format!("the {} who {} the {} {v} the {}", w.c, w.other_verb.0, w.a, w.b), simple)
        }
        "ce_adverb" => (format!("certainly {simple}"), simple),
        "ce_embedded_under_verb" => (format!("the {} knew that {simple}", w.c), simple),
        "cn_adverb" => (format!("perhaps {simple}"), simple),
        _ => (format!("the {} hoped that {simple}", w.c), simple),
    };
    (sentence(premise), sentence(hypothesis))
}

/// The `train` or `validation` split: labels alternate 0, 1, 0, … (exactly balanced).
pub fn in_domain(config: &SyntheticConfig, split: &str) -> Dataset {
    let (size, stream) = if split == "train" { (config.train, 0) } else { (config.validation, 1) };
    let mut rng = LegacyRandomState::seed(config.seed.wrapping_add(stream));
    let examples = (0..size)
        .map(|i| {
            let label = i % 2;
            let (premise, hypothesis) = in_domain_pair(&mut rng, label);
            Example::new(i as i64, premise, Some(hypothesis), label)
        })
        .collect();
    Dataset::new(format!("synthetic-nli/{split}"), &LABEL_NAMES, examples)
}

/// The HANS-like split: `ood_per_subcase` examples of each subcase, subcase by subcase, with
/// `heuristic` and `subcase` attributes.
pub fn out_of_domain(config: &SyntheticConfig) -> Dataset {
    let mut rng = LegacyRandomState::seed(config.seed.wrapping_add(2));
    let mut examples = vec![];
    for (heuristic, subcase, label) in OOD_SUBCASES {
        for _ in 0..config.ood_per_subcase {
            let (premise, hypothesis) = ood_pair(&mut rng, subcase);
            let mut example = Example::new(examples.len() as i64, premise, Some(hypothesis), label);
            example.attributes.insert("heuristic".into(), heuristic.into());
            example.attributes.insert("subcase".into(), subcase.into());
            examples.push(example);
        }
    }
    Dataset::new("synthetic-hans/validation", &LABEL_NAMES, examples)
}

#[cfg(test)]
mod tests;
