//! Tokenizer parity with HF's `GPT2TokenizerFast` configured as OPT's (`</s>` prepended):
//! `fixtures/tokenizer/expected.json` holds its ids, tokens and decoded text for strings with
//! leading spaces, runs of spaces, newlines, tabs, accents, CJK, emoji and digits.

use std::path::{Path, PathBuf};

use ftlab_core::tokenizer::{Padding, Tokenizer};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<i64>,
    tokens: Vec<String>,
    decoded: String,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("tokenizer/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn check(tokenizer: &Tokenizer) {
    let cases = cases();
    assert!(cases.len() >= 15);
    for case in cases {
        let ids = tokenizer.encode(&case.text).unwrap();
        assert_eq!(ids, case.ids, "ids of {:?}", case.text);
        assert_eq!(tokenizer.tokens(&ids), case.tokens, "tokens of {:?}", case.text);
        assert_eq!(tokenizer.decode(&ids).unwrap(), case.decoded, "decoding {:?}", case.text);
    }
}

#[test]
fn vocab_and_merges_match_gpt2_tokenizer_fast() {
    let tokenizer = Tokenizer::from_dir(&fixtures().join("tokenizer")).unwrap();
    assert_eq!((tokenizer.bos_id(), tokenizer.pad_id()), (2, 1));
    check(&tokenizer);
}

#[test]
fn tokenizer_json_matches_gpt2_tokenizer_fast() {
    check(&Tokenizer::from_dir(&fixtures().join("tokenizer-json")).unwrap());
}

#[test]
fn batches_pad_on_either_side() {
    let tokenizer = Tokenizer::from_dir(&fixtures().join("tokenizer")).unwrap();
    let texts = ["Hello", "hello world"];
    let right = tokenizer.encode_batch(&texts, Padding::Right, tch::Device::Cpu).unwrap();
    let left = tokenizer.encode_batch(&texts, Padding::Left, tch::Device::Cpu).unwrap();
    assert_eq!(Vec::<i64>::try_from(right.input_ids.get(0)).unwrap(), vec![2, 43, 72, 309, 82, 1]);
    assert_eq!(Vec::<i64>::try_from(left.input_ids.get(0)).unwrap(), vec![1, 2, 43, 72, 309, 82]);
    assert_eq!(Vec::<i64>::try_from(left.attention_mask.get(0)).unwrap(), vec![0, 1, 1, 1, 1, 1]);
    assert_eq!(Vec::<i64>::try_from(right.attention_mask.get(1)).unwrap(), vec![1; 6]);
}

#[test]
fn missing_files_name_the_folder_and_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures().join("tokenizer/vocab.json"), dir.path().join("vocab.json")).unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("merges.txt") && err.contains(&dir.path().display().to_string()), "{err}");
    std::fs::write(dir.path().join("merges.txt"), "#version: 0.2\nnot a merge line at all\n").unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("vocab.json"), "{err}");
}
