//! OPT logits parity with HF transformers' `OPTForCausalLM` (eager attention, float32).
//!
//! Fixtures come from `fixtures/make_fixtures.py`: tiny random models in the two OPT
//! layouts (pre-LN with `model.decoder.` keys; post-LN with `project_in`/`project_out`,
//! `decoder.` keys and no `lm_head.weight`), saved as safetensors (single and sharded) and as
//! fp16 `pytorch_model.bin`, with HF's logits for right- and left-padded batches and for a
//! KV-cached continuation.

use std::path::{Path, PathBuf};

use ftlab_core::hub::Hub;
use ftlab_core::model::{
    checkpoint, ForwardInput, KvCache, LoadOptions, LogitsAt, Model, ModelFiles, OptConfig, OptForCausalLM,
    WeightsFormat,
};
use tch::{nn::VarStore, Device, Kind, Tensor};

/// Parity bound: max |ours - HF| / max |HF| over the compared entries. HF's logits were computed
/// on another machine's kernels (and the fp16 `.bin` fixture rounds the same weights), so ours
/// differ in summation order only: ~1e-7 on every kernel set and thread count
/// (`scripts/test-numerics`). 1e-4 leaves three orders of magnitude for that, while a real
/// mistake (the position offset, the query scaling, a missing layer norm) moves them by >1e-2.
const TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn reference(dir: &str) -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(fixture(dir).join("parity.safetensors")).unwrap()
}

fn get(tensors: &[(String, Tensor)], name: &str) -> Tensor {
    tensors.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("fixture has no {name}")).1.shallow_clone()
}

fn load(dir: &str, format: WeightsFormat) -> (VarStore, OptForCausalLM) {
    let files = ModelFiles::in_dir(&fixture(dir), Some(format)).unwrap();
    assert_eq!(files.weights.format, format);
    let config = OptConfig::from_file(&files.config).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let net = OptForCausalLM::new(&vs.root(), &config);
    checkpoint::load_into(&vs, &files.weights).unwrap();
    (vs, net)
}

/// Max relative error at the positions where `mask` is 1 (padding outputs are meaningless).
fn relative_error(ours: &Tensor, reference: &Tensor, mask: &Tensor) -> f64 {
    let keep = mask.to_kind(Kind::Bool).unsqueeze(-1).expand_as(reference);
    let (ours, reference) = (ours.masked_select(&keep), reference.masked_select(&keep));
    let diff = (&ours - &reference).abs().max().double_value(&[]);
    diff / reference.abs().max().double_value(&[])
}

fn logits(net: &OptForCausalLM, ids: &Tensor, mask: &Tensor) -> Tensor {
    let input = ForwardInput { input_ids: Some(ids), attention_mask: Some(mask), ..Default::default() };
    tch::no_grad(|| net.forward(input)).unwrap().logits.unwrap()
}

fn check_padding_sides(dir: &str, format: WeightsFormat) {
    let (_vs, net) = load(dir, format);
    let r = reference(dir);
    for side in ["right", "left"] {
        let (ids, mask) = (get(&r, &format!("input_ids_{side}")), get(&r, &format!("attention_mask_{side}")));
        let err = relative_error(&logits(&net, &ids, &mask), &get(&r, &format!("logits_{side}")), &mask);
        eprintln!("numerics: opt_parity.relative_error {err:e} <{TOLERANCE:e}");
        assert!(err < TOLERANCE, "{dir} {format:?} {side}-padded: relative error {err:e}");
    }
}

#[test]
fn pre_ln_safetensors_matches_transformers() {
    check_padding_sides("opt-pre-ln", WeightsFormat::Safetensors);
}

#[test]
fn pre_ln_fp16_pickle_matches_transformers() {
    check_padding_sides("opt-pre-ln", WeightsFormat::Pickle);
}

#[test]
fn post_ln_sharded_safetensors_matches_transformers() {
    check_padding_sides("opt-post-ln", WeightsFormat::Safetensors);
}

#[test]
fn post_ln_fp16_pickle_matches_transformers() {
    check_padding_sides("opt-post-ln", WeightsFormat::Pickle);
}

#[test]
fn hidden_states_match_transformers() {
    for dir in ["opt-pre-ln", "opt-post-ln"] {
        let (_vs, net) = load(dir, WeightsFormat::Safetensors);
        let r = reference(dir);
        let (ids, mask) = (get(&r, "input_ids_right"), get(&r, "attention_mask_right"));
        let input = ForwardInput {
            input_ids: Some(&ids),
            attention_mask: Some(&mask),
            logits: LogitsAt::None,
            ..Default::default()
        };
        let out = tch::no_grad(|| net.forward(input)).unwrap();
        assert!(out.logits.is_none());
        let err = relative_error(&out.hidden, &get(&r, "hidden_right"), &mask);
        eprintln!("numerics: opt_parity.relative_error {err:e} <{TOLERANCE:e}");
        assert!(err < TOLERANCE, "{dir}: hidden relative error {err:e}");
    }
}

/// A prefix run once with its keys/values cached, then the rest of the sequence on top,
/// equals HF's cached continuation and our own uncached forward.
#[test]
fn kv_cached_prefix_matches_full_sequence() {
    for dir in ["opt-pre-ln", "opt-post-ln"] {
        let (_vs, net) = load(dir, WeightsFormat::Safetensors);
        let r = reference(dir);
        let (ids, mask) = (get(&r, "input_ids_right"), get(&r, "attention_mask_right"));
        let p = get(&r, "kv_prefix_len").int64_value(&[0]);
        let t = ids.size()[1];
        let prefix = ForwardInput {
            input_ids: Some(&ids.narrow(1, 0, p)),
            attention_mask: Some(&mask.narrow(1, 0, p)),
            use_cache: true,
            logits: LogitsAt::None,
            ..Default::default()
        };
        let cache: KvCache = tch::no_grad(|| net.forward(prefix)).unwrap().cache.unwrap();
        assert_eq!(cache.len(), p);
        let rest = ForwardInput {
            input_ids: Some(&ids.narrow(1, p, t - p)),
            attention_mask: Some(&mask),
            past: Some(&cache),
            ..Default::default()
        };
        let cached = tch::no_grad(|| net.forward(rest)).unwrap().logits.unwrap();
        let rest_mask = mask.narrow(1, p, t - p);
        let err = relative_error(&cached, &get(&r, "logits_cached_right"), &rest_mask);
        eprintln!("numerics: opt_parity.relative_error {err:e} <{TOLERANCE:e}");
        assert!(err < TOLERANCE, "{dir}: cached vs HF cached, relative error {err:e}");
        let full = logits(&net, &ids, &mask).narrow(1, p, t - p);
        let err = relative_error(&cached, &full, &rest_mask);
        eprintln!("numerics: opt_parity.relative_error {err:e} <{TOLERANCE:e}");
        assert!(err < TOLERANCE, "{dir}: cached vs uncached, relative error {err:e}");
    }
}

/// Asking only for the last real token's logits gives exactly those rows of the full logits,
/// with either padding side.
#[test]
fn last_token_logits_select_the_last_real_position() {
    let (_vs, net) = load("opt-pre-ln", WeightsFormat::Safetensors);
    let r = reference("opt-pre-ln");
    for side in ["right", "left"] {
        let (ids, mask) = (get(&r, &format!("input_ids_{side}")), get(&r, &format!("attention_mask_{side}")));
        let input = ForwardInput {
            input_ids: Some(&ids),
            attention_mask: Some(&mask),
            logits: LogitsAt::LastToken,
            ..Default::default()
        };
        let out = tch::no_grad(|| net.forward(input)).unwrap();
        let expected_last: Vec<i64> = if side == "right" { vec![11, 6, 3] } else { vec![11, 11, 11] };
        assert_eq!(Vec::<i64>::try_from(&out.last_token).unwrap(), expected_last);
        let reference = get(&r, &format!("logits_{side}"));
        for (row, &pos) in expected_last.iter().enumerate() {
            let diff = (out.logits.as_ref().unwrap().get(row as i64) - reference.get(row as i64).get(pos))
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-4, "{side} row {row}: {diff}");
        }
    }
}

/// The whole loader — hub id → HF cache layout (refs + snapshots + blob symlinks) → model and
/// tokenizer — on a cache built in a temp dir the way huggingface_hub lays it out.
#[test]
fn loads_from_a_hub_cache_layout() {
    let cache = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = cache.path().join("models--tiny--opt-pre-ln");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    for file in ["config.json", "model.safetensors", "vocab.json", "merges.txt"] {
        let blob = repo.join("blobs").join(format!("blob-{file}"));
        std::fs::copy(fixture("opt-pre-ln").join(file), &blob).unwrap();
        std::os::unix::fs::symlink(&blob, snapshot.join(file)).unwrap();
    }
    let files =
        ModelFiles::from_hub_cache(&Hub { cache: cache.path().into(), offline: true }, "tiny/opt-pre-ln", "main", None)
            .unwrap();
    assert_eq!(files.revision.as_deref(), Some(commit));
    let model = Model::from_files("tiny/opt-pre-ln", &files, LoadOptions::default()).unwrap();
    let r = reference("opt-pre-ln");
    let (ids, mask) = (get(&r, "input_ids_right"), get(&r, "attention_mask_right"));
    let err = relative_error(&logits(&model.net, &ids, &mask), &get(&r, "logits_right"), &mask);
    eprintln!("numerics: opt_parity.relative_error {err:e} <{TOLERANCE:e}");
    assert!(err < TOLERANCE, "relative error {err:e}");
    assert_eq!(model.tokenizer.encode("Hello").unwrap(), vec![2, 43, 72, 309, 82]);

    // Offline and not cached: the error says what to fetch and where.
    let err = ModelFiles::from_hub_cache(
        &Hub { cache: cache.path().into(), offline: true },
        "facebook/opt-125m",
        "main",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("facebook/opt-125m")
            && err.contains("config.json")
            && err.contains(&cache.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn bf16_and_fp16_compute_stay_close_to_fp32() {
    let r = reference("opt-pre-ln");
    let (ids, mask) = (get(&r, "input_ids_right"), get(&r, "attention_mask_right"));
    let files = ModelFiles::in_dir(&fixture("opt-pre-ln"), None).unwrap();
    for (dtype, bound) in [(ftlab_core::Dtype::Bf16, 0.05), (ftlab_core::Dtype::F16, 0.01)] {
        let model = Model::from_files("opt-pre-ln", &files, LoadOptions { dtype, ..Default::default() }).unwrap();
        assert_eq!(model.net.embed_tokens.ws.kind(), dtype.kind());
        let ours = logits(&model.net, &ids, &mask).to_kind(Kind::Float);
        let err = relative_error(&ours, &get(&r, "logits_right"), &mask);
        eprintln!("numerics: opt_parity.{dtype}.relative_error {err:e} <{bound}");
        assert!(err < bound, "{dtype}: relative error {err:e}");
    }
}
