//! LoRA adapters in HF PEFT's format, checked against PyPI `peft` both ways (fixtures from
//! `fixtures/make_peft_fixtures.py` on the tiny `opt-pre-ln` model):
//! - an adapter PEFT made loads, merges, and gives PEFT's logits (library and CLI);
//! - an adapter ftlab exports from known weights is what PEFT's `save_pretrained` wrote for the
//!   same weights (`peft/known`): tensor names, values and config values — and its logits
//!   equal PEFT's;
//! - settings ftlab does not implement are refused, naming the key.

use std::path::{Path, PathBuf};
use std::process::Command;

use ftlab_core::methods::export::{merge_adapter_dir, AdapterFiles, CONFIG_FILE, WEIGHTS_FILE};
use ftlab_core::methods::{MethodRun, MethodSpec};
use ftlab_core::model::{ForwardInput, LoadOptions, Model, Site};
use ftlab_sdk::TaskInfo;
use tch::{Kind, Tensor};

mod common;

/// Parity bound with PEFT: max |ours - PEFT| / max |PEFT| at real tokens. PEFT's logits were
/// computed on another machine's kernels, so ours differ in summation order only: ~1e-7 on
/// every kernel set and thread count (`scripts/test-numerics`). 1e-4 leaves three orders of
/// magnitude for that, while a wrong scaling or target moves the logits by more than 5e-2.
const TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name)
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

/// Merges the adapter in `dir` into the base model through its plugin (found by `peft_type`),
/// and compares with PEFT's logits `peft/<name>.logits.safetensors`.
fn check_merged_against_peft(dir: &Path, name: &str) {
    check_merged_against_peft_on(&base_model(), dir, name)
}

/// [`check_merged_against_peft`] on another base model.
fn check_merged_against_peft_on(model: &Model, dir: &Path, name: &str) {
    let [ids, mask, expected] = reference(name);
    let base = logits(&model, &ids, &mask);
    assert!(relative_error(&base, &expected, &mask) > 0.05, "{name}: the adapter should change the logits");
    merge_adapter_dir(&model, &common::registry(&["lora"]), dir).unwrap();
    let err = relative_error(&logits(&model, &ids, &mask), &expected, &mask);
    eprintln!("numerics: peft.relative_error {err:e} <{TOLERANCE:e}");
    assert!(err < TOLERANCE, "{name}: merged logits vs PEFT's: relative error {err}");
}

#[test]
fn peft_made_adapter_loads_and_merged_matches_peft() {
    let files = AdapterFiles::load(&fixture("peft/from-peft")).unwrap();
    assert_eq!(files.tensors.len(), 2 * 2 * 2);
    let shape = |name: &str| files.tensors.iter().find(|(n, _)| n == name).unwrap().1.size();
    assert_eq!(shape("base_model.model.model.decoder.layers.1.self_attn.v_proj.lora_A.weight"), [4, 32]);
    assert_eq!(shape("base_model.model.model.decoder.layers.1.self_attn.v_proj.lora_B.weight"), [32, 4]);
    check_merged_against_peft(&fixture("peft/from-peft"), "from-peft");
}

/// rsLoRA (`use_rslora`: scaling alpha/√r, here 8/2 instead of 8/4) as PEFT computes it.
#[test]
fn peft_rslora_adapter_matches_peft() {
    check_merged_against_peft(&fixture("peft/rslora"), "rslora");
}

/// `lora_bias`: B's bias, scaled with the update, as PEFT computes it.
#[test]
fn peft_lora_bias_adapter_matches_peft() {
    check_merged_against_peft(&fixture("peft/lora-bias"), "lora-bias");
}

/// On the post-LN model with projections (opt-350m's shape): only layer 1 adapted
/// (`layers_to_transform`), `v_proj` at rank 2 (`rank_pattern`) and `fc1` at alpha 3
/// (`alpha_pattern`), as PEFT computes it; and exported back with the same settings.
#[test]
fn peft_layer_and_pattern_options_match_peft() {
    let model = Model::load(fixture("opt-post-ln").to_str().unwrap(), LoadOptions::default()).unwrap();
    check_merged_against_peft_on(&model, &fixture("peft/patterns"), "patterns");
    let files = AdapterFiles::load(&fixture("peft/patterns")).unwrap();
    let config = common::registry(&["lora"]).config_from_export("lora", &files.config.to_string()).unwrap();
    assert_eq!(config["layers"], serde_json::json!([1]));
    assert_eq!(
        (config["rank_pattern"]["v_proj"].as_i64(), config["alpha_pattern"]["fc1"].as_f64()),
        (Some(2), Some(3.0))
    );
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

/// A `lora` run on opt-pre-ln holding the adapter of `peft/known` (the Python script sets the
/// same values in PEFT): r = 2, alpha = 3 (scale 1.5) on k_proj, out_proj and fc1 (width 32,
/// ffn 64, 2 layers), with exactly representable values.
fn known_adapter(model: &Model) -> MethodRun<'_> {
    let targets = ["k_proj", "out_proj", "fc1"];
    let lora = MethodSpec {
        name: "lora".into(),
        config: serde_json::json!({"r": 2, "alpha": 3.0, "dropout": 0.05, "targets": targets}),
    };
    let task =
        TaskInfo { name: "any".into(), label_words: vec![" a".into(), " b".into()], label_token_ids: vec![10, 11] };
    let registry = common::registry(&["lora", "pbft"]);
    let run = MethodRun::new(model, &registry, &MethodSpec::named("pbft"), &[lora], task, 0).unwrap();
    let params = run.state.stores["lora"].variables();
    let mut salt = 0usize;
    for layer in 0..2 {
        for site in [Site::KProj, Site::OutProj, Site::Fc1] {
            for factor in ["A", "B"] {
                salt += 1;
                let mut param = params[&format!("{}.lora_{factor}.weight", site.path(layer))].shallow_clone();
                let n = param.numel();
                let values: Vec<f32> = (0..n).map(|i| ((i * 7 + salt * 13) % 17) as f32 / 40.0 - 0.2).collect();
                tch::no_grad(|| param.copy_(&Tensor::from_slice(&values).view(param.size().as_slice())));
            }
        }
    }
    run
}

/// The `lora` plugin's export of `known_adapter` is what PEFT's `save_pretrained` wrote for the
/// same weights (`peft/known`, made by the Python script): the same tensor names and values, and
/// every config key ftlab writes holds PEFT's value — so `PeftModel.from_pretrained` reads it as
/// PEFT's own. Merged back, the export gives PEFT's logits.
#[test]
fn exported_adapter_is_what_peft_saves() {
    let reference = fixture("peft/known");
    let out = tempfile::tempdir().unwrap();
    let model = base_model();
    let folders = known_adapter(&model).export_adapters(out.path()).unwrap();
    let (ours, peft) = (AdapterFiles::load(&folders[0]).unwrap(), AdapterFiles::load(&reference).unwrap());
    let sorted = |v: &serde_json::Value| {
        let mut names: Vec<String> = v.as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect();
        names.sort();
        names
    };
    for (key, value) in ours.config.as_object().unwrap() {
        match key.as_str() {
            "target_modules" => assert_eq!(sorted(value), sorted(&peft.config[key]), "target_modules"),
            // PEFT records the path it was given; ours names the run's model.
            "base_model_name_or_path" => assert!(value.as_str().unwrap().ends_with("opt-pre-ln"), "{value}"),
            _ => assert_eq!(value, &peft.config[key], "adapter_config.json key `{key}`: ours vs PEFT's"),
        }
    }
    for key in ["peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "task_type"] {
        assert!(ours.config.get(key).is_some(), "the export should state `{key}`");
    }
    let (mut ours, mut theirs) = (ours.tensors, peft.tensors);
    ours.sort_by(|a, b| a.0.cmp(&b.0));
    theirs.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(ours.len(), 2 * 3 * 2);
    assert_eq!(ours.len(), theirs.len());
    for ((name, ours), (their_name, theirs)) in ours.iter().zip(&theirs) {
        assert_eq!(name, their_name);
        assert!(ours.equal(theirs), "{name} differs from PEFT's");
    }
    check_merged_against_peft(&folders[0], "known");
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

/// `peft/from-peft` merged into `model`, with its config edited by `edit`: the error, if any.
fn merge_edited(model: &Model, edit: impl FnOnce(&mut serde_json::Value)) -> Option<String> {
    let dir = edited_copy(edit);
    merge_adapter_dir(model, &common::registry(&["lora"]), dir.path()).err().map(|e| e.to_string())
}

#[test]
fn import_refuses_what_ftlab_does_not_implement() {
    let model = base_model();
    let cases: [(&str, serde_json::Value, &str); 6] = [
        ("use_dora", serde_json::json!(true), "use_dora"),
        ("use_rslora", serde_json::json!("yes"), "use_rslora"),
        ("rank_pattern", serde_json::json!({".*q_proj": 8}), "regular expression"),
        ("target_modules", serde_json::json!(".*proj"), "pattern"),
        ("target_modules", serde_json::json!(["q_proj", "lm_head"]), "lm_head"),
        ("peft_type", serde_json::json!("IA3"), "LORA (lora)"),
    ];
    for (key, value, expected) in cases {
        let err = merge_edited(&model, |c| c[key] = value.clone()).expect("refused");
        assert!(err.contains(key) && err.contains(expected) && err.contains(CONFIG_FILE), "{key} = {value}: {err}");
    }
    // Weights of a module the config does not target.
    let err = merge_edited(&model, |c| c["target_modules"] = serde_json::json!(["q_proj"])).unwrap();
    assert!(err.contains("unexpected tensor") && err.contains("v_proj.lora_A.weight"), "{err}");
    // A rank that does not match the weights.
    let err = merge_edited(&model, |c| c["r"] = serde_json::json!(8)).unwrap();
    assert!(err.contains("shape") && err.contains("[4, 32]"), "{err}");
    // An adapter for another model shape cannot merge, and the model is left unchanged.
    let model = Model::embedded(LoadOptions::default()).unwrap();
    let before = model.vs.variables()["model.decoder.layers.0.self_attn.q_proj.weight"].copy();
    let err = merge_adapter_dir(&model, &common::registry(&["lora"]), &fixture("peft/from-peft")).unwrap_err();
    let err = err.to_string();
    assert!(err.contains("q_proj.lora_A.weight") && err.contains("[4, 32]") && err.contains("[4, 64]"), "{err}");
    assert!(model.vs.variables()["model.decoder.layers.0.self_attn.q_proj.weight"].equal(&before));
}
