//! Tests of the synthetic NLI generator: determinism, balance, the heuristic structure of each
//! split, and coverage by the embedded tokenizer.

use std::collections::BTreeSet;

use super::*;

fn words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

#[test]
fn splits_are_deterministic_sized_and_balanced() {
    let config = SyntheticConfig::default();
    let train = in_domain(&config, "train");
    assert_eq!(train, in_domain(&config, "train"));
    assert_eq!((train.len(), train.label_counts()), (2000, vec![1000, 1000]));
    let validation = in_domain(&config, "validation");
    assert_eq!(validation.label_counts(), [250, 250]);
    assert_ne!(train.examples[..10], validation.examples[..10], "separate streams");
    let ood = out_of_domain(&config);
    assert_eq!((ood.len(), ood.label_counts()), (1200, vec![600, 600]));
    // Resizing the training pool leaves the other splits unchanged.
    let bigger = SyntheticConfig { train: 3000, ..config };
    assert_eq!(in_domain(&bigger, "validation"), validation);
    assert_ne!(in_domain(&SyntheticConfig { seed: 1, ..config }, "train"), train);
}

#[test]
fn in_domain_overlap_agrees_with_the_label_and_ood_contradicts_it() {
    let config = SyntheticConfig::default();
    for example in in_domain(&config, "train").examples {
        let hypothesis = example.text2.as_deref().unwrap();
        let overlap = words(hypothesis).is_subset(&words(&example.text1));
        assert_eq!(overlap, example.label == 0, "{} / {hypothesis}", example.text1);
    }
    for example in out_of_domain(&config).examples {
        let hypothesis = example.text2.as_deref().unwrap();
        assert!(words(hypothesis).is_subset(&words(&example.text1)), "{} / {hypothesis}", example.text1);
        let subcase = example.attribute("subcase").unwrap();
        let expected = OOD_SUBCASES.iter().find(|(_, s, _)| *s == subcase).unwrap().2;
        assert_eq!(example.label, expected);
        if example.attribute("heuristic") == Some("subsequence") {
            let premise = example.text1.to_lowercase();
            let core = hypothesis.trim_end_matches('.').to_lowercase();
            assert!(premise.contains(&core), "{premise} / {core}");
        }
    }
}

#[test]
fn renders_readable_sentences() {
    let config = SyntheticConfig { ood_per_subcase: 1, ..SyntheticConfig::default() };
    let ood = out_of_domain(&config);
    let swap = ood.examples.iter().find(|e| e.attribute("subcase") == Some("ln_subject/object_swap")).unwrap();
    let (premise, hypothesis) = (&swap.text1, swap.text2.as_deref().unwrap());
    assert!(premise.starts_with("The ") && premise.ends_with('.'), "{premise}");
    let p: Vec<&str> = premise.trim_end_matches('.').split(' ').collect();
    let h: Vec<&str> = hypothesis.trim_end_matches('.').split(' ').collect();
    assert_eq!((h[1], h[2], h[4]), (p[4], p[2], p[1]), "subject and object swapped");
    let adverb = ood.examples.iter().find(|e| e.attribute("subcase") == Some("cn_adverb")).unwrap();
    assert!(adverb.text1.starts_with("Perhaps the "), "{}", adverb.text1);
}

#[test]
fn every_word_is_one_token_of_the_embedded_tokenizer() {
    let tokenizer = crate::model::tiny::tokenizer().unwrap();
    let function_words = ["the", "was", "by", "and", "near", "who", "that", "knew", "hoped", "The"];
    let mut all: Vec<&str> = NOUNS.iter().chain(PLACES.iter()).chain(function_words.iter()).copied().collect();
    all.extend(VERBS.iter().flat_map(|(past, participle)| [*past, *participle]));
    for word in all {
        let ids = tokenizer.encode_plain(&format!(" {word}")).unwrap();
        assert_eq!(ids.len(), 1, "` {word}` is {:?}", tokenizer.tokens(&ids));
    }
    for word in ["The", "Certainly", "Perhaps"] {
        assert_eq!(tokenizer.encode_plain(word).unwrap().len(), 1, "sentence-initial `{word}`");
    }
    for word in [" Yes", " No", " True", " False", " Maybe", " Neither"] {
        assert_eq!(tokenizer.encode_plain(word).unwrap().len(), 1, "label word `{word}`");
    }
}
