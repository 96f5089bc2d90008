//! Rendering against exact expected strings, label-word checks, and premise-side truncation.
//! Byte equality with llmft's own functions is `core/tests/llmft_prompts.rs`, on fixtures.

use super::*;
use crate::model::tiny;

fn pair() -> Example {
    Example::new(7, "A man sleeps.", Some("A person rests.".into()), 0)
}

/// A built-in prompt with DESIGN.md's readable conventions.
fn prompt(family: PromptFamily, labels: usize, style: PatternStyle) -> Prompt {
    let spec = PromptSpec { style, compat: Compat::Clean, ..PromptSpec::default() };
    Prompt::new(family, labels, &spec, &tiny::tokenizer().unwrap()).unwrap()
}

#[test]
fn llmft_compat_keeps_literal_newlines_and_llmft_spaces() {
    let llmft = |style| {
        Prompt::new(PromptFamily::Nli, 2, &PromptSpec { style, ..PromptSpec::default() }, &tiny::tokenizer().unwrap())
            .unwrap()
    };
    let minimal = llmft(PatternStyle::Minimal);
    assert_eq!(minimal.compat, Compat::Llmft, "llmft is the default");
    assert_eq!(minimal.query(&pair()), "A man sleeps. A person rests. ?");
    assert_eq!(minimal.icl_query(&pair()), "A man sleeps. A person rests. ? ");
    assert_eq!(minimal.context([&pair()]), "A man sleeps. A person rests. ? Yes\\n\\n");
    let harness = llmft(PatternStyle::EvalHarness);
    let query = "A man sleeps. \\nQuestion: A person rests. True or False? \\nAnswer:";
    assert_eq!((harness.query(&pair()), harness.icl_query(&pair())), (query.into(), query.into()));
    assert_eq!(
        harness.demonstration(&pair()),
        "A man sleeps. \\nQuestion: A person rests. True or False?\\nAnswer: True"
    );
    let gpt3 = llmft(PatternStyle::Gpt3);
    assert_eq!(gpt3.icl_query(&pair()), gpt3.query(&pair()));
    assert!(gpt3.demonstration(&pair()).starts_with(&gpt3.query(&pair())));
}

#[test]
fn nli_styles_render_as_design_md_writes_them() {
    let minimal = prompt(PromptFamily::Nli, 2, PatternStyle::Minimal);
    assert_eq!(minimal.query(&pair()), "A man sleeps. A person rests. ?");
    assert_eq!(minimal.demonstration(&pair()), "A man sleeps. A person rests. ? Yes");
    let gpt3 = prompt(PromptFamily::Nli, 2, PatternStyle::Gpt3);
    assert_eq!(gpt3.query(&pair()), "A man sleeps. question: A person rests. Yes or No? answer:");
    let contradiction = Example { label: 1, ..pair() };
    assert_eq!(gpt3.demonstration(&contradiction), "A man sleeps. question: A person rests. Yes or No? answer: No");
    let harness = prompt(PromptFamily::Nli, 2, PatternStyle::EvalHarness);
    assert_eq!(harness.query(&pair()), "A man sleeps.\nQuestion: A person rests. True or False?\nAnswer:");
    assert_eq!(harness.words, [" True", " False"]);
    let three = prompt(PromptFamily::Nli3, 3, PatternStyle::EvalHarness);
    assert_eq!(
        three.demonstration(&Example { label: 1, ..pair() }),
        "A man sleeps.\nQuestion: A person rests. True, False or Neither?\nAnswer: Neither"
    );
}

#[test]
fn paraphrase_and_acceptability_render_with_no_yes_words() {
    let questions = Example::new(0, "How do I cook?", Some("How can I cook?".into()), 1);
    let minimal = prompt(PromptFamily::Paraphrase, 2, PatternStyle::Minimal);
    assert_eq!(minimal.demonstration(&questions), "How do I cook? How can I cook? ? Yes");
    let harness = prompt(PromptFamily::Paraphrase, 2, PatternStyle::EvalHarness);
    assert_eq!(
        harness.query(&questions),
        "Question 1: How do I cook?\nQuestion 2: How can I cook?\nQuestion: Do both questions ask the same thing? Answer:"
    );
    let sentence = Example::new(0, "The cat sat.", None, 0);
    let cola = prompt(PromptFamily::Acceptability, 2, PatternStyle::Minimal);
    assert_eq!(cola.demonstration(&sentence), "The cat sat. ? No");
    let gpt3 = prompt(PromptFamily::Acceptability, 2, PatternStyle::Gpt3);
    assert_eq!(gpt3.query(&sentence), "grammatical: The cat sat. Yes or No? answer:");
}

#[test]
fn contexts_join_demonstrations_with_the_family_separator() {
    let other = Example::new(8, "A dog runs.", Some("A dog sleeps.".into()), 1);
    let minimal = prompt(PromptFamily::Nli, 2, PatternStyle::Minimal);
    let context = minimal.context([&pair(), &other]);
    assert_eq!(context, "A man sleeps. A person rests. ? Yes\n\nA dog runs. A dog sleeps. ? No\n\n");
    let query = Example::new(9, "P.", Some("H.".into()), 0);
    let tokenizer = tiny::tokenizer().unwrap();
    let ids = minimal.encode_icl(&tokenizer, &context, &query).unwrap();
    assert_eq!(tokenizer.decode(&ids).unwrap(), format!("{context}P. H. ?"));
    let cola = prompt(PromptFamily::Acceptability, 2, PatternStyle::Minimal);
    assert_eq!(cola.context([&Example::new(0, "Go.", None, 1)]), "Go. ? Yes ");
    assert_eq!(minimal.context([]), "");
}

#[test]
fn user_templates_prefixes_and_words_come_from_config() {
    let tokenizer = tiny::tokenizer().unwrap();
    let spec = PromptSpec {
        template: Some("Premise: {premise} Hypothesis: {text2}".into()),
        prefix: Some(" Label:".into()),
        words: Some(vec![" True".into(), " False".into()]),
        separator: Some(" | ".into()),
        compat: Compat::Clean,
        ..PromptSpec::default()
    };
    let custom = Prompt::new(PromptFamily::Nli, 2, &spec, &tokenizer).unwrap();
    assert_eq!(custom.context([&pair()]), "Premise: A man sleeps. Hypothesis: A person rests. Label: True | ");
    assert_eq!(
        custom.word_ids,
        [tokenizer.encode_plain(" True").unwrap()[0], tokenizer.encode_plain(" False").unwrap()[0]]
    );
}

#[test]
fn label_words_must_be_single_distinct_tokens_one_per_label() {
    let tokenizer = tiny::tokenizer().unwrap();
    let words =
        |w: &[&str]| PromptSpec { words: Some(w.iter().map(|s| s.to_string()).collect()), ..PromptSpec::default() };
    let err = Prompt::new(PromptFamily::Nli, 2, &words(&[" Yes", " Absolutely"]), &tokenizer).unwrap_err().to_string();
    assert!(err.contains("label word ` Absolutely` is") && err.contains("`Ġ"), "{err}");
    let err = Prompt::new(PromptFamily::Nli, 2, &words(&[" Yes"]), &tokenizer).unwrap_err().to_string();
    assert!(err.contains("1 label words") && err.contains("2 labels"), "{err}");
    let err = Prompt::new(PromptFamily::Nli, 2, &words(&[" Yes", " Yes"]), &tokenizer).unwrap_err().to_string();
    assert!(err.contains("not distinct"), "{err}");
    let spec = PromptSpec { template: Some("{sentence} ?".into()), ..PromptSpec::default() };
    assert!(Prompt::new(PromptFamily::Nli, 2, &spec, &tokenizer).unwrap_err().to_string().contains("{sentence}"));
}

#[test]
fn over_long_inputs_lose_premise_tokens_and_keep_the_pattern_end() {
    let tokenizer = tiny::tokenizer().unwrap();
    let minimal = prompt(PromptFamily::Nli, 2, PatternStyle::Minimal);
    let long =
        Example::new(0, "The doctor saw the lawyer near the library. ".repeat(20), Some("The judge slept.".into()), 0);
    let full = minimal.encode(&tokenizer, &long).unwrap();
    let fitted = minimal.encode_within(&tokenizer, &long, 40).unwrap().unwrap();
    assert!(fitted.ids.len() <= 40 && fitted.truncated_tokens >= full.len() - 40, "{fitted:?}");
    let text = tokenizer.decode(&fitted.ids).unwrap();
    assert!(text.starts_with("The doctor saw") && text.ends_with(" The judge slept. ?"), "{text}");
    let short = minimal.encode_within(&tokenizer, &pair(), 40).unwrap().unwrap();
    assert_eq!((short.truncated_tokens, short.ids.len()), (0, minimal.encode(&tokenizer, &pair()).unwrap().len()));
    assert_eq!(minimal.encode_within(&tokenizer, &long, 3).unwrap(), None, "cannot fit 3 tokens");
}

/// A text of megabytes is tokenized only as far as the limit can use, with the same result as
/// tokenizing it whole.
#[test]
fn huge_texts_are_cut_before_tokenizing() {
    let tokenizer = tiny::tokenizer().unwrap();
    let minimal = prompt(PromptFamily::Nli, 2, PatternStyle::Minimal);
    let sentence = "The doctor saw the lawyer near the library. ";
    let moderate = Example::new(0, sentence.repeat(400), Some("The judge slept.".into()), 0);
    let huge = Example::new(0, sentence.repeat(100_000), Some("The judge slept.".into()), 0);
    assert!(tokenizer.prefix_within(&huge.text1, 64).is_some_and(|p| p.len() < 100_000));
    let (a, b) = (minimal.encode_within(&tokenizer, &moderate, 64), minimal.encode_within(&tokenizer, &huge, 64));
    assert_eq!(a.unwrap().unwrap().ids, b.unwrap().unwrap().ids);
    assert_eq!(minimal.encode_capped(&tokenizer, &huge, 1000).unwrap(), None);
    let short = minimal.encode_capped(&tokenizer, &pair(), 1000).unwrap().unwrap();
    assert_eq!(short, minimal.encode(&tokenizer, &pair()).unwrap());
    let long_hypothesis = Example::new(0, "A.", Some(sentence.repeat(100_000)), 0);
    assert_eq!(minimal.encode_within(&tokenizer, &long_hypothesis, 64).unwrap(), None);
}
