//! Prompts byte-identical to llmft's: `fixtures/llmft/prompts.json` holds the strings llmft's own
//! code built (`make_llmft_prompt_fixtures.py`: its run scripts' patterns, its
//! `create_few_shot_context`, its `eval.py` query and `ft.py` prompt) for every style it defines,
//! with contexts of 4 and 16 demonstrations drawn by llmft's sampling. The default
//! (`compat = "llmft"`) prompt must render each byte for byte, and encode `context + query` as
//! the one string llmft tokenizes. The encodings are checked with a byte-level BPE trained on the
//! fixture's own text, whose merges (` She`, `nThe`) cross the context/query boundary as OPT's
//! do; the embedded tokenizer's small vocabulary rarely would.

use std::path::Path;

use ftlab_core::data::dataset::Example;
use ftlab_core::data::{sampling, task, Dataset, PatternStyle, Prompt, PromptSpec};
use ftlab_core::model::tiny;
use ftlab_core::tokenizer::Tokenizer;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct Fixture {
    data_seed: u32,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    task: String,
    style: String,
    rows: Vec<Row>,
    queries: Vec<usize>,
    icl_queries: Vec<String>,
    ft_prompts: Option<Vec<String>>,
    contexts: BTreeMap<String, Context>,
}

#[derive(Deserialize)]
struct Row {
    text1: String,
    text2: Option<String>,
    label: usize,
}

#[derive(Deserialize)]
struct Context {
    context: String,
    inputs: Vec<String>,
}

fn fixture() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llmft/prompts.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn every_llmft_style_renders_byte_for_byte() {
    let fixture = fixture();
    let tokenizer = tiny::tokenizer().unwrap();
    let texts: Vec<&str> = (fixture.cases.iter())
        .flat_map(|c| c.contexts.values().flat_map(|k| k.inputs.iter().map(String::as_str)))
        .collect();
    let bpe = Tokenizer::train(&texts, 4096).unwrap();
    let (mut checked, mut merged) = (0, 0);
    for case in &fixture.cases {
        let name = format!("{} {}", case.task, case.style);
        let task = task::find(&case.task).unwrap();
        let style = PatternStyle::from_name(&case.style).unwrap();
        let spec = PromptSpec { style, ..PromptSpec::default() };
        let prompt = Prompt::new(task.prompt, task.label_names.len(), &spec, &tokenizer).unwrap();
        let examples = (case.rows.iter().enumerate())
            .map(|(i, r)| Example::new(i as i64, r.text1.clone(), r.text2.clone(), r.label))
            .collect();
        let pool = Dataset::new(name.clone(), task.label_names, examples);
        for (i, &q) in case.queries.iter().enumerate() {
            let query = &pool.examples[q];
            assert_eq!(prompt.icl_query(query), case.icl_queries[i], "{name}: in-context query {q}");
            if let Some(ft) = &case.ft_prompts {
                assert_eq!(prompt.query(query), ft[i], "{name}: fine-tuning prompt {q}");
            }
        }
        for (k, expected) in &case.contexts {
            let demos = sampling::balanced_demonstrations(&pool, k.parse().unwrap(), fixture.data_seed).unwrap();
            let context = prompt.context(demos.iter().map(|&p| &pool.examples[p]));
            assert_eq!(context, expected.context, "{name}: {k}-shot context");
            let context_ids = bpe.encode(&context).unwrap();
            for (i, &q) in case.queries.iter().enumerate() {
                let input = &expected.inputs[i];
                assert_eq!(
                    format!("{context}{}", prompt.icl_query(&pool.examples[q])),
                    *input,
                    "{name}: {k}-shot input"
                );
                let ids = prompt.encode_icl(&bpe, &context, &pool.examples[q]).unwrap();
                assert_eq!(ids, bpe.encode(input).unwrap(), "{name}: one string, one encoding");
                merged += usize::from(!ids.starts_with(&context_ids));
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 7 * 2 * 4, "every case, both context sizes, every query");
    // The cases where encoding context and query apart would give other ids than llmft's.
    assert!(merged > 0, "no input merged across the context boundary");
    eprintln!("{merged} of {checked} inputs merge a token across the context/query boundary");
}
