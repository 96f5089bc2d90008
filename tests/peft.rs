//! Adapters in HF PEFT's format (LoRA with every option PEFT writes for OPT, (IA)³), checked
//! against PyPI `peft` both ways on the tiny pre-LN `opt-pre-ln` and post-LN + projection
//! `opt-post-ln` models (fixtures from `fixtures/make_peft_fixtures.py`):
//! - an adapter PEFT made loads, merges, and gives PEFT's logits (library and CLI);
//! - an adapter ftlab exports (from known weights, or after loading PEFT's) is what PEFT's
//!   `save_pretrained` wrote for the same weights: tensor names, values and config values;
//! - settings ftlab does not implement are refused, naming the key.

use std::path::{Path, PathBuf};
use std::process::Command;

use ftlab_core::methods::export::{adapter_spec, merge_adapter_dir, AdapterFiles, CONFIG_FILE, WEIGHTS_FILE};
use ftlab_core::methods::hooks::AdapterHooks;
use ftlab_core::methods::host::HostState;
use ftlab_core::methods::{load_adapters, MethodRun, MethodSpec};
use ftlab_core::model::{ForwardInput, LoadOptions, LogitsAt, Model, Site};
use ftlab_sdk::TaskInfo;
use tch::{Kind, Tensor};

mod common;

/// Parity bound with PEFT: max |ours - PEFT| / max |PEFT| at real tokens. PEFT's logits were
/// computed on another machine's kernels, so ours differ in summation order only: ~1e-7 on
/// every kernel set and thread count (`scripts/test-numerics`). 1e-4 leaves three orders of
/// magnitude for that, while a wrong scaling or target moves the logits by more than 5e-2.
const TOLERANCE: f64 = 1e-4;

/// The plugins whose adapters PEFT writes.
const PEFT_PLUGINS: &[&str] = &["lora", "ia3", "prompt_tuning"];

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
    merge_adapter_dir(&model, &common::registry(PEFT_PLUGINS), dir).unwrap();
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

/// rsLoRA (`use_rslora`: scaling alpha/√r, here 8/2 instead of 8/4) as PEFT computes it, on
/// both model shapes.
#[test]
fn peft_rslora_adapter_matches_peft() {
    for (base, name) in [("opt-pre-ln", "rslora"), ("opt-post-ln", "rslora-post-ln")] {
        check_merged_against_peft_on(&load(base), &fixture(&format!("peft/{name}")), name);
    }
}

/// `lora_bias`: B's bias, scaled with the update, as PEFT computes it, on both model shapes.
#[test]
fn peft_lora_bias_adapter_matches_peft() {
    for (base, name) in [("opt-pre-ln", "lora-bias"), ("opt-post-ln", "lora-bias-post-ln")] {
        check_merged_against_peft_on(&load(base), &fixture(&format!("peft/{name}")), name);
    }
}

/// On the post-LN model with projections (opt-350m's shape) and the pre-LN one: only layer 1
/// adapted (`layers_to_transform`), `v_proj` at rank 2 (`rank_pattern`) and `fc1` at alpha 3
/// (`alpha_pattern`), as PEFT computes it; and exported back with the same settings.
#[test]
fn peft_layer_and_pattern_options_match_peft() {
    check_merged_against_peft_on(&load("opt-pre-ln"), &fixture("peft/patterns-pre-ln"), "patterns-pre-ln");
    check_merged_against_peft_on(&load("opt-post-ln"), &fixture("peft/patterns"), "patterns");
    let files = AdapterFiles::load(&fixture("peft/patterns")).unwrap();
    let config = common::registry(&["lora"]).config_from_export("lora", &files.config.to_string()).unwrap();
    assert_eq!(config["layers"], serde_json::json!([1]));
    assert_eq!(
        (config["rank_pattern"]["v_proj"].as_i64(), config["alpha_pattern"]["fc1"].as_f64()),
        (Some(2), Some(3.0))
    );
}

/// PEFT's `bias = "all"` / `"lora_only"` and `modules_to_save`, on both model shapes: the base
/// tensors PEFT trained and saved with the adapter replace the base's (PEFT's logits), and
/// ftlab's export of the loaded adapter is PEFT's file again (names — `base_layer.` for an
/// adapted linear's bias — values, `bias` and `modules_to_save`).
#[test]
fn peft_base_biases_and_saved_modules_round_trip() {
    for (base, shape) in [("opt-pre-ln", ""), ("opt-post-ln", "-post-ln")] {
        for option in ["bias-all", "bias-lora-only", "modules-to-save"] {
            let name = format!("{option}{shape}");
            check_merged_against_peft_on(&load(base), &fixture(&format!("peft/{name}")), &name);
            let peft = exports_as_peft(base, &name);
            assert!(peft.tensors.iter().any(|(n, _)| !n.contains("lora_")), "{name}: PEFT saved base tensors");
        }
    }
}

/// (IA)³ as PEFT computes it, on both model shapes: PEFT's adapter (keys, values and `fc2`'s
/// input rescaled) merged gives PEFT's logits, and ftlab's export of it is PEFT's file again.
#[test]
fn peft_ia3_adapter_matches_peft_both_ways() {
    for (base, name) in [("opt-pre-ln", "ia3"), ("opt-post-ln", "ia3-post-ln")] {
        check_merged_against_peft_on(&load(base), &fixture(&format!("peft/{name}")), name);
        let peft = exports_as_peft(base, name);
        assert_eq!(peft.tensors.len(), 2 * 3, "{name}: one vector per layer and target");
    }
}

/// Prompt tuning as PEFT runs it: PEFT's soft prompt (random, and initialised from a text), read
/// once by the model and shared by both rows, gives PEFT's logits at every token (PEFT's come
/// after the virtual tokens'); the plugin's own text initialisation is PEFT's, and its export is
/// PEFT's file.
#[test]
fn peft_prompt_tuning_matches_peft_both_ways() {
    let registry = common::registry(PEFT_PLUGINS);
    for name in ["prompt-tuning", "prompt-text"] {
        let model = load("opt-pre-ln");
        let dir = fixture(&format!("peft/{name}"));
        let files = AdapterFiles::load(&dir).unwrap();
        let spec = adapter_spec(&registry, &files, &dir).unwrap();
        let task = TaskInfo { name: String::new(), label_words: vec![], label_token_ids: vec![] };
        let mut adapters = load_adapters(&model, &registry, &[spec], &mut HostState::new(task, 0)).unwrap();
        if name == "prompt-text" {
            // Built from the same config, before PEFT's file is read: the same initial prompt.
            let ours = adapters[0].export().unwrap().unwrap();
            assert_same_as_peft(ours, "opt-pre-ln", name);
        }
        adapters[0].import(files).unwrap();
        let [ids, mask, expected] = reference(name);
        let virtual_tokens = expected.size()[1] - ids.size()[1];
        let hooks = AdapterHooks { adapters: &adapters };
        let input = ForwardInput {
            input_ids: Some(&ids),
            attention_mask: Some(&mask),
            logits: LogitsAt::All,
            hooks: Some(&hooks as _),
            ..Default::default()
        };
        let ours = tch::no_grad(|| model.net.forward(input)).unwrap().logits.unwrap();
        assert_eq!(ours.size(), ids.size().into_iter().chain([expected.size()[2]]).collect::<Vec<_>>(), "{name}");
        let expected = expected.narrow(1, virtual_tokens, ids.size()[1]);
        let err = relative_error(&ours, &expected, &mask);
        eprintln!("numerics: peft.relative_error {err:e} <{TOLERANCE:e}");
        assert!(err < TOLERANCE, "{name}: logits vs PEFT's: relative error {err}");
    }
}

/// The fixture model `base`.
fn load(base: &str) -> Model {
    Model::load(fixture(base).to_str().unwrap(), LoadOptions::default()).unwrap()
}

/// Loads PEFT's adapter `peft/<name>` into its plugin on `base` and exports it again: the export
/// is PEFT's file (see [`assert_same_as_peft`]), so `PeftModel.from_pretrained` reads it as
/// PEFT's own. Returns PEFT's files.
fn exports_as_peft(base: &str, name: &str) -> AdapterFiles {
    let dir = fixture(&format!("peft/{name}"));
    let (model, registry) = (load(base), common::registry(PEFT_PLUGINS));
    let spec = adapter_spec(&registry, &AdapterFiles::load(&dir).unwrap(), &dir).unwrap();
    let task = TaskInfo { name: String::new(), label_words: vec![], label_token_ids: vec![] };
    let mut adapters = load_adapters(&model, &registry, &[spec], &mut HostState::new(task, 0)).unwrap();
    adapters[0].import(AdapterFiles::load(&dir).unwrap()).unwrap();
    assert_same_as_peft(adapters[0].export().unwrap().unwrap(), base, name)
}

/// Checks that `ours` (an export on `base`) is PEFT's `peft/<name>`: every config key ftlab
/// writes holds PEFT's value (module lists in any order; PEFT records the path it was given
/// where ours names the run's model) and every tensor is PEFT's, name and value. Returns PEFT's.
fn assert_same_as_peft(ours: AdapterFiles, base: &str, name: &str) -> AdapterFiles {
    let peft = AdapterFiles::load(&fixture(&format!("peft/{name}"))).unwrap();
    let sorted = |v: &serde_json::Value| {
        let mut items: Vec<String> = v.as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect();
        items.sort();
        items
    };
    for (key, value) in ours.config.as_object().unwrap() {
        match key.as_str() {
            "target_modules" | "feedforward_modules" => {
                assert_eq!(sorted(value), sorted(&peft.config[key]), "{name}: {key}")
            }
            "base_model_name_or_path" | "tokenizer_name_or_path" if value.is_string() => {
                assert!(value.as_str().unwrap().ends_with(base), "{name}: {key} = {value}")
            }
            _ => assert_eq!(value, &peft.config[key], "{name}: adapter_config.json key `{key}`: ours vs PEFT's"),
        }
    }
    let by_name = |t: &[(String, Tensor)]| {
        let mut t: Vec<(String, Tensor)> = t.iter().map(|(n, v)| (n.clone(), v.shallow_clone())).collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let (ours, theirs) = (by_name(&ours.tensors), by_name(&peft.tensors));
    let names = |t: &[(String, Tensor)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&ours), names(&theirs), "{name}: tensor names");
    for ((n, a), (_, b)) in ours.iter().zip(&theirs) {
        assert!(a.equal(b), "{name}: `{n}` differs from PEFT's");
    }
    peft
}

/// OPT ties `embed_tokens` and `lm_head`: a saved copy of either cannot be represented.
#[test]
fn tied_modules_cannot_be_saved_apart() {
    for module in ["lm_head", "embed_tokens"] {
        let dir = edited_copy(|c| c["modules_to_save"] = serde_json::json!([module]));
        let err = merge_adapter_dir(&base_model(), &common::registry(&["lora"]), dir.path()).unwrap_err().to_string();
        assert!(err.contains("modules_to_save") && err.contains(module) && err.contains("tie"), "{err}");
    }
}

/// `ftlab model forward --adapter` runs a PEFT adapter through its plugin: LoRA, and a soft
/// prompt, which is no weight update (its logits cover the input's tokens; PEFT's cover the
/// virtual tokens before them too).
#[test]
fn cli_model_forward_applies_a_peft_adapter() {
    for name in ["from-peft", "prompt-tuning"] {
        let out = tempfile::tempdir().unwrap();
        let logits_file = out.path().join("logits.safetensors");
        let input = fixture(&format!("peft/{name}.logits.safetensors"));
        let status = Command::new(env!("CARGO_BIN_EXE_ftlab"))
            .args(["model", "forward", fixture("opt-pre-ln").to_str().unwrap(), "--device", "cpu"])
            .args(["--input", input.to_str().unwrap(), "--out", logits_file.to_str().unwrap()])
            .args(["--adapter", fixture(&format!("peft/{name}")).to_str().unwrap()])
            .output()
            .unwrap();
        assert!(status.status.success(), "{name}: {}", String::from_utf8_lossy(&status.stderr));
        let ours = Tensor::read_safetensors(&logits_file).unwrap();
        let ours = &ours.iter().find(|(n, _)| n == "logits").unwrap().1;
        let [ids, mask, expected] = reference(name);
        let (t, virtual_tokens) = (ids.size()[1], expected.size()[1] - ids.size()[1]);
        let expected = expected.narrow(1, virtual_tokens, t);
        assert_eq!(ours.size(), expected.size(), "{name}");
        let err = relative_error(ours, &expected, &mask);
        eprintln!("numerics: peft.relative_error {err:e} <{TOLERANCE:e}");
        assert!(err < TOLERANCE, "{name}: CLI logits vs PEFT's: relative error {err}");
    }
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
/// PEFT's own. Merged back, the export gives PEFT's logits. On both model shapes (`known`,
/// `known-post-ln`).
#[test]
fn exported_adapter_is_what_peft_saves() {
    for (base, name) in [("opt-pre-ln", "known"), ("opt-post-ln", "known-post-ln")] {
        let load = || Model::load(fixture(base).to_str().unwrap(), LoadOptions::default()).unwrap();
        exported_adapter_is_what_peft_saves_on(&load(), base, name);
        let out = tempfile::tempdir().unwrap();
        let folders = known_adapter(&load()).export_adapters(out.path()).unwrap();
        check_merged_against_peft_on(&load(), &folders[0], name);
    }
}

fn exported_adapter_is_what_peft_saves_on(model: &Model, base: &str, name: &str) {
    let out = tempfile::tempdir().unwrap();
    let folders = known_adapter(model).export_adapters(out.path()).unwrap();
    let ours = AdapterFiles::load(&folders[0]).unwrap();
    for key in ["peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "task_type"] {
        assert!(ours.config.get(key).is_some(), "the export should state `{key}`");
    }
    assert_eq!(ours.tensors.len(), 2 * 3 * 2);
    assert_same_as_peft(ours, base, name);
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
    let cases: [(&str, serde_json::Value, &str); 7] = [
        ("bias", serde_json::json!("some"), "lora_only"),
        ("use_dora", serde_json::json!(true), "use_dora"),
        ("use_rslora", serde_json::json!("yes"), "use_rslora"),
        ("rank_pattern", serde_json::json!({".*q_proj": 8}), "regular expression"),
        ("target_modules", serde_json::json!(".*proj"), "pattern"),
        ("target_modules", serde_json::json!(["q_proj", "lm_head"]), "lm_head"),
        ("peft_type", serde_json::json!("BOFT"), "LORA (lora)"),
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
    let model = Model::embedded_random(LoadOptions::default()).unwrap();
    let before = model.vs.variables()["model.decoder.layers.0.self_attn.q_proj.weight"].copy();
    let err = merge_adapter_dir(&model, &common::registry(&["lora"]), &fixture("peft/from-peft")).unwrap_err();
    let err = err.to_string();
    assert!(err.contains("q_proj.lora_A.weight") && err.contains("[4, 32]") && err.contains("[4, 64]"), "{err}");
    assert!(model.vs.variables()["model.decoder.layers.0.self_attn.q_proj.weight"].equal(&before));
}

/// The CPT fixture's demonstrations and queries (`peft/cpt.json`) as the runtime hands them to
/// the `cpt` plugin on `opt-pre-ln`.
struct CptCase {
    record: serde_json::Value,
    model: Model,
    word_ids: Vec<i64>,
}

impl CptCase {
    fn new() -> Self {
        let path = fixture("peft/cpt.json");
        let record = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let model = load("opt-pre-ln");
        let mut case = Self { record, model, word_ids: vec![] };
        case.word_ids =
            case.strings("words").iter().map(|w| case.model.tokenizer.encode_plain(w).unwrap()[0]).collect();
        case
    }

    fn strings(&self, key: &str) -> Vec<String> {
        serde_json::from_value(self.record[key].clone()).unwrap()
    }

    fn indices(&self, key: &str) -> Vec<i64> {
        serde_json::from_value(self.record[key].clone()).unwrap()
    }

    /// A `cpt` run with `settings` over the demonstrations at `keep`, prepared, in evaluation mode.
    fn run(&self, settings: serde_json::Value, keep: &[usize]) -> MethodRun<'_> {
        let words = self.strings("words");
        let task = TaskInfo { name: "cpt".into(), label_words: words.clone(), label_token_ids: self.word_ids.clone() };
        let config = MethodSpec { name: "cpt".into(), config: settings };
        let mut run = MethodRun::new(&self.model, &common::registry(&["cpt"]), &config, &[], task, 0).unwrap();
        run.set_train(false).unwrap();
        let (texts, labels) = (self.strings("demonstrations"), self.indices("labels"));
        let texts: Vec<&String> = keep.iter().map(|&i| &texts[i]).collect();
        let labels: Vec<i64> = keep.iter().map(|&i| labels[i]).collect();
        let demonstrations: Vec<String> =
            texts.iter().zip(&labels).map(|(t, &l)| format!("{t}{}", words[l as usize])).collect();
        let mut data = ftlab_sdk::Tensors::new();
        data.json = serde_json::json!({
            "demonstrations": demonstrations,
            "demonstration_prompts": texts,
            "labels_of_demonstrations": labels,
            "separator": self.record["separator"],
        });
        run.prepare(data).unwrap();
        run
    }

    /// A training batch of `queries` (fine-tuning and in-context prompts alike) with answers `gold`.
    fn batch(&self, queries: &[String], gold: &[i64]) -> ftlab_sdk::Tensors {
        let gold: Vec<i64> = gold.iter().map(|&l| self.word_ids[l as usize]).collect();
        let mut batch = ftlab_sdk::Tensors::new()
            .with("input_ids", Tensor::zeros([queries.len() as i64, 1], (Kind::Int64, tch::Device::Cpu)))
            .with("label_token_ids", Tensor::from_slice(&gold));
        batch.json = serde_json::json!({ "prompts": queries, "icl_prompts": queries });
        batch
    }
}

/// Context-aware prompt tuning as PEFT's CPT computes it (`peft/cpt.*`, from
/// `fixtures/make_cpt_fixture.py`): on the same demonstrations and queries, the `cpt` plugin's
/// loss and its offsets' gradient are PEFT's (so are its layout's ids and token types, or the
/// gradient's rows would not line up), and after one AdamW step and the projection its offsets
/// are PEFT's. PEFT's were computed on another machine's kernels: the bounds leave two orders of
/// magnitude for summation order (a wrong weight, mask or radius moves them by over 1e-2).
#[test]
fn cpt_takes_peft_s_step() {
    use ftlab_core::run::config::TrainConfig;
    use ftlab_core::run::optim::AdamW;

    let case = CptCase::new();
    let reference = Tensor::read_safetensors(fixture("peft/cpt.safetensors")).unwrap();
    let get = |key: &str| reference.iter().find(|(n, _)| n == key).unwrap().1.shallow_clone();
    let mut run = case.run(case.record["settings"].clone(), &[0, 1, 2]);
    let (queries, model) = (case.strings("queries"), &case.model);
    let batch = || case.batch(&queries, &case.indices("query_labels"));
    // Before any step the offsets are zero: prediction (the context's keys/values kept, then the
    // queries) is the plain model on PEFT's context ids followed by each query.
    let predicted = run.predict(batch()).unwrap();
    for (row, query) in queries.iter().enumerate() {
        let ids = [Vec::<i64>::try_from(get("cpt_token_ids")).unwrap(), model.tokenizer.encode_plain(query).unwrap()];
        let ids = Tensor::from_slice(&ids.concat()).view([1, -1]);
        let input = ForwardInput { input_ids: Some(&ids), logits: LogitsAt::LastToken, ..Default::default() };
        let plain = tch::no_grad(|| model.net.forward(input)).unwrap().logits.unwrap();
        let diff = (predicted.get(row as i64) - plain.get(0)).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "query {row}: prediction differs from the plain model on context + query by {diff}");
    }
    let (loss, _) = run.loss(batch()).unwrap();
    let expected = get("loss").double_value(&[]);
    assert!((loss.double_value(&[]) - expected).abs() < 1e-5 * expected, "loss {loss} vs PEFT's {expected}");
    loss.backward();
    let params = run.trainable();
    assert_eq!(params.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["cpt.delta_embedding"], "only offsets");
    let delta = params[0].1.shallow_clone();
    let (grad, peft_grad) = (delta.grad(), get("grad"));
    assert_eq!(grad.size(), peft_grad.size(), "one offset per context token");
    let scale = peft_grad.abs().max().double_value(&[]);
    let diff = (&grad - &peft_grad).abs().max().double_value(&[]) / scale;
    eprintln!(
        "cpt: loss {} vs PEFT's {expected}; gradient within {diff:e} of its largest entry",
        loss.double_value(&[])
    );
    assert!(diff < 1e-4, "offset gradient differs from PEFT's by {diff} of its largest entry");
    let train = TrainConfig { lr: case.record["lr"].as_f64().unwrap(), weight_decay: 0.0, ..Default::default() };
    let mut optimizer = AdamW::new(params, &train).unwrap();
    optimizer.step(train.lr).unwrap();
    let _ = run.loss(batch()).unwrap(); // each forward pass projects first, as PEFT's does
    let diff = (&delta - get("delta")).abs().max().double_value(&[]);
    eprintln!("cpt: offsets after one step within {diff:e} of PEFT's");
    assert!(diff < 1e-5, "offsets after one step differ from PEFT's by {diff}");
    let moved = delta.abs().sum_dim_intlist([1].as_slice(), false, Kind::Float).gt(0.0).sum(Kind::Int64);
    assert_eq!(moved.int64_value(&[]), 26, "every template and input token moves, no label or separator");
}

/// With `leave_one_out`, a training query that is one of the demonstrations reads the context as
/// if its own demonstration (and the separator after it) were not there, and its label is no
/// target: the loss equals that of the context without it (weights all 1).
#[test]
fn cpt_hides_a_query_s_own_demonstration() {
    let case = CptCase::new();
    let settings = |leave_one_out: bool| serde_json::json!({ "leave_one_out": leave_one_out });
    let (texts, labels) = (case.strings("demonstrations"), case.indices("labels"));
    for own in 0..3 {
        let batch = || case.batch(&texts[own..=own], &labels[own..=own]);
        let others: Vec<usize> = (0..3).filter(|&i| i != own).collect();
        let (hidden, _) = case.run(settings(true), &[0, 1, 2]).loss(batch()).unwrap();
        let (removed, _) = case.run(settings(false), &others).loss(batch()).unwrap();
        let (seen, _) = case.run(settings(false), &[0, 1, 2]).loss(batch()).unwrap();
        let (hidden, removed, seen) = (hidden.double_value(&[]), removed.double_value(&[]), seen.double_value(&[]));
        assert!((hidden - removed).abs() < 1e-5 * removed, "demonstration {own}: hidden {hidden} vs removed {removed}");
        assert!((hidden - seen).abs() > 1e-3, "demonstration {own}: hiding changes nothing ({hidden} vs {seen})");
    }
}
