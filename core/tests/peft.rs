//! LoRA adapters in HF PEFT's format, checked against PyPI `peft` both ways (fixtures from
//! `fixtures/make_peft_fixtures.py` on the tiny `opt-pre-ln` model):
//! - an adapter PEFT made loads, merges, and gives PEFT's logits (library and CLI);
//! - an adapter ftlab exports from known weights is what PEFT's `save_pretrained` wrote for the
//!   same weights (`peft/known`): tensor names, values and config values — and its logits
//!   equal PEFT's;
//! - settings ftlab does not implement are refused, naming the key.

use std::path::{Path, PathBuf};
use std::process::Command;

use ftlab_core::methods::peft::{LoraAdapter, LoraConfig, CONFIG_FILE, WEIGHTS_FILE};
use ftlab_core::model::{ForwardInput, LoadOptions, Model, Site};
use tch::{Kind, Tensor};

/// Parity bound with PEFT: max |ours - PEFT| / max |PEFT| at real tokens. PEFT's logits were
/// computed on another machine's kernels, so ours differ in summation order only: ~1e-7 on
/// every kernel set and thread count (`scripts/test-numerics`). 1e-4 leaves three orders of
/// magnitude for that, while a wrong scaling or target moves the logits by more than 5e-2.
const TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn base_model() -> Model {
    Model::load(fixture("opt-pre-ln").to_str().unwrap(), LoadOptions::default()).unwrap()
}

/// `input_ids`, `attention_mask` and PEFT's `logits` of `peft/<name>.logits.safetensors`.
fn reference(name: &str) -> [Tensor; 3] {
    let tensors = Tensor::read_safetensors(fixture("peft").join(format!("{name}.logits.safetensors"))).unwrap();
    let get = |key: &str| tensors.iter().find(|(n, _)| n == key).unwrap().1.shallow_clone();
    [get("input_ids"), get("attention_mask"), get("logits")]
}

fn relative_error(ours: &Tensor, reference: &Tensor, mask: &Tensor) -> f64 {
    let keep = mask.to_kind(Kind::Bool).unsqueeze(-1).expand_as(reference);
    let (ours, reference) = (ours.masked_select(&keep), reference.masked_select(&keep));
    (&ours - &reference).abs().max().double_value(&[]) / reference.abs().max().double_value(&[])
}

fn logits(model: &Model, ids: &Tensor, mask: &Tensor) -> Tensor {
    let input = ForwardInput { input_ids: Some(ids), attention_mask: Some(mask), ..Default::default() };
    tch::no_grad(|| model.net.forward(input)).unwrap().logits.unwrap()
}

/// Loads `peft/<name>`, merges it into the base model, and compares with PEFT's logits.
fn check_merged_against_peft(name: &str) {
    check_merged_against_peft_at(&fixture("peft").join(name), name);
}

/// Loads the adapter in `dir`, merges it into the base model, and compares with PEFT's logits
/// `peft/<name>.logits.safetensors`.
fn check_merged_against_peft_at(dir: &Path, name: &str) {
    let adapter = LoraAdapter::load(dir).unwrap();
    let model = base_model();
    let [ids, mask, expected] = reference(name);
    let base = logits(&model, &ids, &mask);
    assert!(relative_error(&base, &expected, &mask) > 0.05, "{name}: the adapter should change the logits");
    adapter.merge_into(&model).unwrap();
    let err = relative_error(&logits(&model, &ids, &mask), &expected, &mask);
    eprintln!("numerics: peft.relative_error {err:e} <{TOLERANCE:e}");
    assert!(err < TOLERANCE, "{name}: merged logits vs PEFT's: relative error {err}");
}

#[test]
fn peft_made_adapter_loads_and_merged_matches_peft() {
    let adapter = LoraAdapter::load(&fixture("peft/from-peft")).unwrap();
    assert_eq!((adapter.config.r, adapter.config.alpha, adapter.config.dropout), (4, 8.0, 0.0));
    let mut targets = adapter.config.targets.clone();
    targets.sort();
    assert_eq!(targets, [Site::QProj, Site::VProj]);
    assert_eq!(adapter.tensors.len(), 2 * 2 * 2);
    assert_eq!(adapter.tensors["model.decoder.layers.1.self_attn.v_proj.lora_A.weight"].size(), [4, 32]);
    assert_eq!(adapter.tensors["model.decoder.layers.1.self_attn.v_proj.lora_B.weight"].size(), [32, 4]);
    check_merged_against_peft("from-peft");
}

#[test]
fn cli_model_forward_applies_a_peft_adapter() {
    let out = tempfile::tempdir().unwrap();
    let logits_file = out.path().join("logits.safetensors");
    let input = fixture("peft/from-peft.logits.safetensors");
    let status = Command::new(env!("CARGO_BIN_EXE_ftlab"))
        .args(["model", "forward", fixture("opt-pre-ln").to_str().unwrap(), "--device", "cpu"])
        .args(["--input", input.to_str().unwrap(), "--out", logits_file.to_str().unwrap()])
        .args(["--adapter", fixture("peft/from-peft").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let ours = Tensor::read_safetensors(&logits_file).unwrap();
    let ours = &ours.iter().find(|(n, _)| n == "logits").unwrap().1;
    let [_, mask, expected] = reference("from-peft");
    let err = relative_error(ours, &expected, &mask);
    eprintln!("numerics: peft.relative_error {err:e} <{TOLERANCE:e}");
    assert!(err < TOLERANCE, "CLI logits vs PEFT's: relative error {err}");
}

/// The adapter `peft/known` holds (the Python script sets the same values in PEFT): r = 2, alpha = 3 (scale 1.5) on k_proj, out_proj and
/// fc1 of opt-pre-ln (width 32, ffn 64, 2 layers), with exactly representable values.
fn known_adapter() -> LoraAdapter {
    let config = LoraConfig { r: 2, alpha: 3.0, dropout: 0.05, targets: vec![Site::KProj, Site::OutProj, Site::Fc1] };
    let mut tensors = std::collections::BTreeMap::new();
    let mut salt = 0usize;
    for layer in 0..2 {
        for site in [Site::KProj, Site::OutProj, Site::Fc1] {
            let out = if site == Site::Fc1 { 64 } else { 32 };
            for (factor, shape) in [("A", [2i64, 32]), ("B", [out, 2])] {
                salt += 1;
                let n = (shape[0] * shape[1]) as usize;
                let values: Vec<f32> = (0..n).map(|i| ((i * 7 + salt * 13) % 17) as f32 / 40.0 - 0.2).collect();
                tensors.insert(
                    format!("{}.lora_{factor}.weight", site.path(layer)),
                    Tensor::from_slice(&values).view(shape),
                );
            }
        }
    }
    LoraAdapter { config, base_model: "core/tests/fixtures/opt-pre-ln".into(), tensors }
}

/// ftlab's export of `known_adapter` is what PEFT's `save_pretrained` wrote for the same
/// weights (`peft/known`, made by the Python script): the same tensor names and values, and every
/// config key ftlab writes holds PEFT's value — so `PeftModel.from_pretrained` reads it as PEFT's
/// own. Loaded back, the export gives PEFT's logits.
#[test]
fn exported_adapter_is_what_peft_saves() {
    let reference = fixture("peft/known");
    let out = tempfile::tempdir().unwrap();
    known_adapter().save(out.path()).unwrap();
    let json = |dir: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap()).unwrap()
    };
    let (ours, peft) = (json(out.path()), json(&reference));
    let sorted = |v: &serde_json::Value| {
        let mut names: Vec<String> = v.as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect();
        names.sort();
        names
    };
    for (key, value) in ours.as_object().unwrap() {
        if key == "target_modules" {
            assert_eq!(sorted(value), sorted(&peft[key]), "target_modules");
        } else {
            assert_eq!(value, &peft[key], "adapter_config.json key `{key}`: ours vs PEFT's");
        }
    }
    for key in ["peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "task_type"] {
        assert!(ours.get(key).is_some(), "ftlab's export should state `{key}`");
    }
    let weights = |dir: &Path| {
        let mut tensors = Tensor::read_safetensors(dir.join(WEIGHTS_FILE)).unwrap();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        tensors
    };
    let (ours, theirs) = (weights(out.path()), weights(&reference));
    assert_eq!(ours.len(), 2 * 3 * 2);
    assert_eq!(ours.len(), theirs.len());
    for ((name, ours), (their_name, theirs)) in ours.iter().zip(&theirs) {
        assert_eq!(name, their_name);
        assert!(ours.equal(theirs), "{name} differs from PEFT's");
    }
    check_merged_against_peft_at(out.path(), "known");
}

/// Writes `peft/from-peft` into a temporary folder with `edit` applied to its config.
fn edited_copy(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = fixture("peft/from-peft");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join(CONFIG_FILE)).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dir.path().join(CONFIG_FILE), config.to_string()).unwrap();
    std::fs::copy(source.join(WEIGHTS_FILE), dir.path().join(WEIGHTS_FILE)).unwrap();
    dir
}

#[test]
fn import_refuses_what_ftlab_does_not_implement() {
    let cases: [(&str, serde_json::Value, &str); 6] = [
        ("use_dora", serde_json::json!(true), "use_dora"),
        ("use_rslora", serde_json::json!(true), "use_rslora"),
        ("rank_pattern", serde_json::json!({"q_proj": 8}), "rank_pattern"),
        ("target_modules", serde_json::json!(".*proj"), "pattern"),
        ("target_modules", serde_json::json!(["q_proj", "lm_head"]), "lm_head"),
        ("peft_type", serde_json::json!("IA3"), "LORA"),
    ];
    for (key, value, expected) in cases {
        let dir = edited_copy(|c| c[key] = value.clone());
        let err = LoraAdapter::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(expected), "{key} = {value}: {err}");
    }
    // Weights of a module the config does not target.
    let dir = edited_copy(|c| c["target_modules"] = serde_json::json!(["q_proj"]));
    let err = LoraAdapter::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("unexpected tensor") && err.contains("v_proj.lora_A.weight"), "{err}");
    // A rank that does not match the weights.
    let dir = edited_copy(|c| c["r"] = serde_json::json!(8));
    let err = LoraAdapter::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("shape") && err.contains("[4, 32]"), "{err}");
    // An adapter for another model shape cannot merge, and the model is left unchanged.
    let adapter = LoraAdapter::load(&fixture("peft/from-peft")).unwrap();
    let model = Model::embedded(LoadOptions::default()).unwrap();
    let before = model.vs.variables()["model.decoder.layers.0.self_attn.q_proj.weight"].copy();
    let err = adapter.merge_into(&model).unwrap_err().to_string();
    assert!(err.contains("q_proj.weight") && err.contains("[64, 64]"), "{err}");
    assert!(model.vs.variables()["model.decoder.layers.0.self_attn.q_proj.weight"].equal(&before));
}
