//! `context_distill` (plugins/context_distill) on the embedded model and synthetic task, loaded
//! through the registry: training brings the student's distribution towards the in-context
//! teacher on held-out inputs (the KL falls, the agreement rises), a shared context's kept
//! keys/values give the same teacher as re-encoding it per input, and `ftlab run --plugin
//! context_distill` completes and reports the zero-shot, ICL and distilled accuracies.

use std::process::Command;

use ftlab_core::data::batch::{self, BatchOrder, EncodedExample};
use ftlab_core::data::prompt::{Compat, Prompt, PromptFamily, PromptSpec};
use ftlab_core::data::synthetic::{self, SyntheticConfig};
use ftlab_core::data::Dataset;
use ftlab_core::methods::{MethodRun, MethodSpec};
use ftlab_core::model::{tiny, LoadOptions, Model, OptConfig};
use ftlab_core::run::config::TrainConfig;
use ftlab_core::run::data::{method_tensors, Queries};
use ftlab_core::run::optim::AdamW;
use ftlab_core::tokenizer::Tokenizer;
use ftlab_registry::Registry;
use ftlab_sdk::{TaskInfo, Tensors};
use serde_json::json;
use tch::Device;

mod common;

use common::serial;

fn registry() -> Registry {
    common::registry(&["context_distill"])
}

/// The embedded model and three disjoint slices of the synthetic task's training split: the
/// labelled pool contexts are drawn from, unlabelled inputs to distil on, held-out inputs.
struct Toy {
    model: Model,
    prompt: Prompt,
    labelled: Dataset,
    unlabelled: Dataset,
    held_out: Dataset,
}

impl Toy {
    /// The random model, with DESIGN.md's readable prompt: with llmft's, every teacher query ends
    /// in the same space token, after which the random model's two label words are near-ties
    /// whose argmax (the agreement measured here) no distillation can pin down.
    fn new() -> Self {
        Self::on(Model::embedded_random(LoadOptions::default()).unwrap(), Compat::Clean)
    }

    /// `model` with the prompt in `compat`'s conventions (the pretrained embedded model was
    /// pretrained on llmft's).
    fn on(model: Model, compat: Compat) -> Self {
        let spec = PromptSpec { compat, ..PromptSpec::default() };
        let prompt = Prompt::new(PromptFamily::Nli, 2, &spec, &model.tokenizer).unwrap();
        let all = synthetic::in_domain(&SyntheticConfig { train: 96, ..Default::default() }, "train");
        let slice = |name: &str, range: std::ops::Range<usize>| all.select(name, &range.collect::<Vec<_>>());
        let (labelled, unlabelled, held_out) =
            (slice("labelled", 0..16), slice("unlabelled", 16..64), slice("held-out", 64..96));
        Self { model, prompt, labelled, unlabelled, held_out }
    }

    fn task(&self) -> TaskInfo {
        TaskInfo {
            name: "synthetic-nli".into(),
            label_words: self.prompt.words.clone(),
            label_token_ids: self.prompt.word_ids.clone(),
        }
    }

    fn run(&self, config: serde_json::Value) -> MethodRun<'_> {
        let spec = MethodSpec { name: "context_distill".into(), config };
        MethodRun::new(&self.model, &registry(), &spec, &[], self.task(), 0).unwrap()
    }

    /// `data` in batches of 8 as the runtime hands them to a method; `hide_labels` marks the
    /// rows unlabelled (-1), as the runtime does for unlabelled inputs.
    fn batches(&self, data: &Dataset, hide_labels: bool) -> Vec<Tensors> {
        let encoded: Vec<EncodedExample> = (data.examples.iter().enumerate())
            .map(|(position, e)| {
                EncodedExample::query(position, self.prompt.encode(&self.model.tokenizer, e).unwrap(), e.label)
            })
            .collect();
        let order = BatchOrder::Shuffled { seed: 0 };
        (batch::batches(&self.model.tokenizer, &encoded, &self.prompt.word_ids, 8, order, Device::Cpu).into_iter())
            .map(|b| {
                let rows = b.positions.iter().map(|&p| &data.examples[p]).collect();
                method_tensors(&b, Queries::of(&self.prompt, rows), hide_labels)
            })
            .collect()
    }

    /// What the runtime hands `prepare` (see `ftlab_sdk::Batch`): the labelled set's tensors,
    /// its prompts and demonstrations, and the unlabelled inputs — here the unlabelled and the
    /// held-out ones, so the teacher's targets exist for both.
    fn prepare_data(&self) -> Tensors {
        let mut data = self.batches(&self.labelled, false).remove(0);
        let queries = |d: &Dataset| Queries::of(&self.prompt, d.examples.iter().collect());
        let demonstrations: Vec<String> = self.labelled.examples.iter().map(|e| self.prompt.demonstration(e)).collect();
        let (labelled, unlabelled, held_out) =
            (queries(&self.labelled), queries(&self.unlabelled), queries(&self.held_out));
        data.json = json!({
            "prompts": labelled.prompts,
            "icl_prompts": labelled.icl,
            "demonstrations": demonstrations,
            "demonstration_prompts": labelled.prompts,
            "labels_of_demonstrations": self.labelled.examples.iter().map(|e| e.label).collect::<Vec<_>>(),
            "separator": self.prompt.separator,
            "unlabelled": ([unlabelled.prompts, held_out.prompts].concat()),
            "unlabelled_icl": ([unlabelled.icl, held_out.icl].concat()),
        });
        data
    }
}

/// A metric the method logged, from a loss call's metrics.
fn metric(metrics: &[(String, f64)], name: &str) -> f64 {
    let key = format!("context_distill/{name}");
    metrics.iter().find(|(n, _)| *n == key).map(|(_, v)| *v).unwrap_or_else(|| panic!("no `{key}` in {metrics:?}"))
}

/// Mean KL and teacher agreement over `batches`, in evaluation mode, without a step.
fn measure(run: &mut MethodRun, batches: &[Tensors]) -> (f64, f64) {
    run.set_train(false).unwrap();
    let (mut kl, mut agreement) = (0.0, 0.0);
    for b in batches {
        let (_, metrics) = run.loss(copy(b)).unwrap();
        kl += metric(&metrics, "kl");
        agreement += metric(&metrics, "teacher_agreement");
    }
    (kl / batches.len() as f64, agreement / batches.len() as f64)
}

/// A second handle on a batch (`MethodRun::loss` takes ownership).
fn copy(batch: &Tensors) -> Tensors {
    Tensors {
        tensors: batch.tensors.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect(),
        json: batch.json.clone(),
    }
}

/// Distils with `config` by full fine-tuning (AdamW, 10 epochs) on the unlabelled inputs (labels
/// hidden), after scaling the tied token embedding — hence the logits — by `sharpen`; checks
/// that on the held-out inputs, never trained on, the KL falls and the agreement rises.
fn distils(config: serde_json::Value, sharpen: f64) {
    let (losses, before, after) = distil(&config, sharpen);
    common::numerics(&format!("context_distill.{config}.loss_fraction"), losses[9] / losses[0], "<0.5");
    common::numerics(&format!("context_distill.{config}.kl_fraction"), after.0 / before.0, "<0.2");
    common::numerics(&format!("context_distill.{config}.agreement"), after.1, ">=0.9");
    assert!(losses[9] < 0.5 * losses[0], "{config}: the training loss should fall: {losses:?}");
    assert!(after.0 < 0.2 * before.0, "{config}: held-out KL should fall: {before:?} → {after:?}");
    assert!(after.1 > before.1 && after.1 >= 0.9, "{config}: held-out agreement should rise: {before:?} → {after:?}");
}

/// Trains as [`distils`] describes; returns the epochs' training losses and the held-out
/// (KL, agreement) before and after.
fn distil(config: &serde_json::Value, sharpen: f64) -> (Vec<f64>, (f64, f64), (f64, f64)) {
    let _serial = serial();
    distil_on(Toy::new(), config, sharpen)
}

fn distil_on(toy: Toy, config: &serde_json::Value, sharpen: f64) -> (Vec<f64>, (f64, f64), (f64, f64)) {
    tch::no_grad(|| {
        let embedding = &toy.model.vs.variables()["model.decoder.embed_tokens.weight"];
        let _ = embedding.shallow_clone().f_mul_scalar_(sharpen).unwrap();
    });
    let mut run = toy.run(config.clone());
    run.prepare(toy.prepare_data()).unwrap();
    let (train, held_out) = (toy.batches(&toy.unlabelled, true), toy.batches(&toy.held_out, true));
    let before = measure(&mut run, &held_out);

    let mut optimizer = AdamW::new(run.trainable(), &TrainConfig { weight_decay: 0.0, ..Default::default() }).unwrap();
    run.set_train(true).unwrap();
    let mut losses = Vec::new();
    for _ in 0..10 {
        let mut total = 0.0;
        for b in &train {
            optimizer.zero_grad();
            let (loss, _) = run.loss(copy(b)).unwrap();
            loss.backward();
            optimizer.step(1e-3).unwrap();
            total += loss.double_value(&[]);
        }
        losses.push(total / train.len() as f64);
    }
    let after = measure(&mut run, &held_out);
    eprintln!("{config}: train loss {losses:?}; held-out (KL, agreement) {before:?} → {after:?}");
    (losses, before, after)
}

/// `target = "hard"`: the student learns the teacher's answers (sequence-level distillation of a
/// one-token answer) — its cross-entropy falls and, on held-out inputs, it answers as the
/// teacher does. (The soft KL is not its objective, so no bound on it.)
#[test]
fn hard_targets_teach_the_teachers_answers() {
    let config = json!({ "target": "hard" });
    let (losses, before, after) = distil(&config, 3.0);
    common::numerics("context_distill.hard.loss_fraction", losses[9] / losses[0], "<0.5");
    common::numerics("context_distill.hard.agreement", after.1, ">=0.9");
    assert!(losses[9] < 0.5 * losses[0], "the training loss should fall: {losses:?}");
    assert!(after.1 > before.1 && after.1 >= 0.9, "held-out agreement should rise: {before:?} → {after:?}");
}

/// `target = "generated"`: the student learns the teacher's greedy continuation of 4 tokens by
/// teacher forcing — its cross-entropy falls and, on held-out inputs, its answer (the first
/// token) agrees with the teacher's. On the pretrained embedded model in the prompt strings it
/// was pretrained on, whose teacher answers with a label word (the random one's greedy answer is
/// an arbitrary token), with one shared context: its answers depend on the context (8-shot ICL
/// over data seeds 0–9 ranges 0.79–0.98), so under a fresh context per input the held-out
/// answers are not a function of the input that a student could agree with.
#[test]
fn generated_targets_teach_the_teachers_continuation() {
    let _serial = serial();
    let config = json!({ "target": "generated", "max_new_tokens": 4, "resample": false });
    let toy = Toy::on(Model::embedded(LoadOptions::default()).unwrap(), Compat::Llmft);
    let (losses, before, after) = distil_on(toy, &config, 1.0);
    common::numerics("context_distill.generated.loss_fraction", losses[9] / losses[0], "<0.5");
    common::numerics("context_distill.generated.agreement", after.1, ">=0.9");
    assert!(losses[9] < 0.5 * losses[0], "the training loss should fall: {losses:?}");
    assert!(after.1 > before.1 && after.1 >= 0.9, "held-out agreement should rise: {before:?} → {after:?}");
}

/// The default setting: a fresh context per input, full-vocabulary KL. The random tiny model's
/// next-token distribution is nearly uniform, so which label word the teacher prefers is a
/// near-tie that the full-vocabulary KL barely weighs; tripling the logits (as pretraining
/// sharpens them) puts the context's effect on the label words above that noise.
#[test]
fn the_student_approaches_the_resampling_teacher_on_held_out_inputs() {
    distils(json!({}), 3.0);
}

/// One shared context and the KL over the label words, on the embedded model as it is.
#[test]
fn the_student_approaches_the_shared_context_teacher_on_held_out_inputs() {
    distils(json!({ "resample": false, "kl": "verbalizer" }), 1.0);
}

/// One shared context: kept keys/values vs the context re-encoded per input give the same
/// teacher, hence the same loss, for the full-vocabulary and the verbalizer KL.
#[test]
fn cached_and_uncached_shared_context_give_identical_losses() {
    let _serial = serial();
    let toy = Toy::new();
    let batch = &toy.batches(&toy.unlabelled, true)[0];
    for options in [json!({}), json!({ "kl": "verbalizer", "temperature": 2.0 })] {
        let mut results = Vec::new();
        for cache_context in [true, false] {
            let mut config = json!({ "resample": false, "cache_context": cache_context });
            config.as_object_mut().unwrap().extend(options.as_object().unwrap().clone());
            let mut run = toy.run(config);
            run.prepare(toy.prepare_data()).unwrap();
            run.set_train(false).unwrap();
            let (loss, metrics) = run.loss(copy(batch)).unwrap();
            results.push((loss.double_value(&[]), metric(&metrics, "teacher_agreement")));
        }
        let ((cached, a), (uncached, b)) = (results[0], results[1]);
        eprintln!("{options}: cached {cached:.8}, uncached {uncached:.8}");
        assert!((cached - uncached).abs() < 1e-5, "{options}: cached {cached} vs uncached {uncached}");
        assert_eq!(a, b);
        assert!(cached > 0.0, "the teacher's context should change its distribution");
    }
}

/// `teacher`: another model reads the contexts. The run's own weights saved as a folder teach
/// exactly as the default teacher does (so the second model is the one read), a larger model
/// teaches otherwise, and a model whose tokenizer encodes differently is refused.
#[test]
fn another_model_can_be_the_teacher() {
    let _serial = serial();
    let toy = Toy::new();
    let dir = tempfile::tempdir().unwrap();
    let folder = |name: &str, model: &Model| {
        let path = dir.path().join(name);
        model.save_pretrained(&path).unwrap();
        path.to_str().unwrap().to_string()
    };
    let own = folder("own", &toy.model);
    let config =
        OptConfig { num_hidden_layers: 6, hidden_size: 96, word_embed_proj_dim: 96, ..tiny::config().unwrap() };
    let larger =
        folder("larger", &Model::random(&config, tiny::tokenizer().unwrap(), 7, LoadOptions::default()).unwrap());
    let other_tokenizer = Tokenizer::train(&["a completely different corpus", "of a few words only"], 300).unwrap();
    let foreign = folder(
        "foreign",
        &Model::random(&tiny::config().unwrap(), other_tokenizer, 7, LoadOptions::default()).unwrap(),
    );

    let batch = &toy.batches(&toy.unlabelled, true)[0];
    let loss = |mut config: serde_json::Value, teacher: Option<&str>| {
        if let Some(teacher) = teacher {
            config["teacher"] = teacher.into();
        }
        let mut run = toy.run(config);
        run.prepare(toy.prepare_data())?;
        run.set_train(false).unwrap();
        Ok::<f64, ftlab_core::error::Error>(run.loss(copy(batch))?.0.double_value(&[]))
    };
    for config in [json!({}), json!({ "resample": false, "kl": "verbalizer" })] {
        let (default, saved) = (loss(config.clone(), None).unwrap(), loss(config.clone(), Some(&own)).unwrap());
        let bigger = loss(config.clone(), Some(&larger)).unwrap();
        eprintln!("{config}: default teacher {default:.8}, saved copy {saved:.8}, larger model {bigger:.8}");
        assert!((default - saved).abs() < 1e-6, "{config}: {default} vs {saved}");
        assert!((default - bigger).abs() > 1e-4, "{config}: the larger teacher should teach otherwise");
    }
    let err = loss(json!({}), Some(&foreign)).unwrap_err().to_string();
    assert!(err.contains("tokenizes differently"), "{err}");
}

/// λ·CE counts only labelled rows: with labels hidden the loss is the KL term alone.
#[test]
fn ce_applies_only_to_labelled_rows() {
    let _serial = serial();
    let toy = Toy::new();
    let mut run = toy.run(json!({ "inputs": "labelled", "ce_weight": 0.5 }));
    run.prepare(toy.prepare_data()).unwrap();
    run.set_train(false).unwrap();
    let labelled = &toy.batches(&toy.labelled, false)[0];
    let hidden = &toy.batches(&toy.labelled, true)[0];
    let (with_ce, metrics) = run.loss(copy(labelled)).unwrap();
    let (without, _) = run.loss(copy(hidden)).unwrap();
    let kl = metric(&metrics, "kl");
    assert!((without.double_value(&[]) - kl).abs() < 1e-5, "{} vs KL {kl}", without.double_value(&[]));
    assert!(with_ce.double_value(&[]) > kl + 1.0, "CE over ~1000 tokens adds ≈ 0.5·ln V");
}

#[test]
fn invalid_settings_are_refused_naming_the_field() {
    let _serial = serial();
    let toy = Toy::new();
    let spec = |config| MethodSpec { name: "context_distill".into(), config };
    for (config, field) in [
        (json!({ "k": 3 }), "`k`"),
        (json!({ "temperature": 0.0 }), "`temperature`"),
        (json!({ "kl": "logits" }), "logits"),
        (json!({ "target": "generated", "max_new_tokens": 0 }), "`max_new_tokens`"),
        (json!({ "target": "generated", "ce_weight": 0.5 }), "`ce_weight`"),
    ] {
        let err = MethodRun::new(&toy.model, &registry(), &spec(config.clone()), &[], toy.task(), 0)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(field), "{config}: {err}");
    }
    // More demonstrations per label than the labelled pool holds.
    let mut run = toy.run(json!({ "k": 18 }));
    let err = run.prepare(toy.prepare_data()).unwrap_err().to_string();
    assert!(err.contains("label 0 has 8 demonstrations"), "{err}");
}

/// Unlabelled inputs from a user's file: its first `train.unlabelled` rows, through a column
/// mapping, are what the student distils on; a mapping to a missing column names file and column.
#[test]
fn unlabelled_inputs_can_come_from_a_users_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inputs.tsv");
    let rows: Vec<String> =
        (0..7).map(|i| format!("The doctor saw {i} lawyers.\tThe doctor saw lawyers.\t{i}")).collect();
    std::fs::write(&file, format!("p\th\tid\n{}\n", rows.join("\n"))).unwrap();
    let run = |columns: &str| {
        let settings = [
            format!("train.unlabelled_file={}", file.display()),
            format!("train.unlabelled_columns={columns}"),
            "train.unlabelled=5".into(),
            "train.epochs=1".into(),
            "eval.max_examples=20".into(),
        ];
        let mut command = Command::new(env!("CARGO_BIN_EXE_ftlab"));
        command
            .args(["run", "--plugin", "context_distill", "--shots", "16", "--json", "--force", "--out"])
            .arg(dir.path());
        for setting in &settings {
            command.args(["--set", setting]);
        }
        command.env("HF_HUB_OFFLINE", "1").output().unwrap()
    };
    let result = run("premise=p,hypothesis=h");
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let record: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(record["data"]["unlabelled_inputs"], 5);
    // The record names the file by its content, as coreutils hashes it.
    let sha256sum = Command::new("sha256sum").arg(&file).output().unwrap();
    let expected = String::from_utf8_lossy(&sha256sum.stdout).split_whitespace().next().unwrap_or_default().to_string();
    assert_eq!(record["data"]["files"][0]["sha256"], expected.as_str(), "{}", record["data"]);
    let table = Command::new(env!("CARGO_BIN_EXE_ftlab"))
        .args(["results", "table", "--rows", "data_version", "--cols", ""])
        .arg(dir.path())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(&format!("sha256:{}", &expected[..12])), "{table}");
    let metrics = std::fs::read_to_string(dir.path().join(record["name"].as_str().unwrap()).join("metrics.jsonl"));
    let epoch: serde_json::Value = serde_json::from_str(metrics.unwrap().lines().nth(1).unwrap()).unwrap();
    assert!(epoch["tokens"].as_u64().unwrap() > 5 * 8, "five inputs of 8+ tokens trained on: {epoch}");

    let failed = run("premise=p,hypothesis=hypo");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("inputs.tsv") && stderr.contains("hypo"), "{stderr}");
}

/// Distillation through adapters: with LoRA, BitFit or prompt tuning only the adapter's weights
/// (the biases, the soft prompt) train, and the KL to the teacher still falls.
#[test]
fn distils_through_adapters() {
    // A soft prompt (1,280 values) learns at prompt tuning's usual rate: a context distilled into it.
    for (adapter, most, lr) in [("lora", 20_000, "1e-2"), ("bitfit", 10_000, "1e-2"), ("prompt_tuning", 2_000, "3e-1")]
    {
        let out = tempfile::tempdir().unwrap();
        let result = Command::new(env!("CARGO_BIN_EXE_ftlab"))
            .args(["run", "--plugin", "context_distill", "--adapter", adapter, "--shots", "16", "--json"])
            .args(["--set", "train.epochs=4", "--set", &format!("train.lr={lr}"), "--set", "train.unlabelled=64"])
            .args(["--set", "eval.max_examples=20", "--set", "eval.icl_reference=false", "--out"])
            .arg(out.path())
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        assert!(result.status.success(), "{adapter}: {}", String::from_utf8_lossy(&result.stderr));
        let record: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
        let trainable = record["trainable_parameters"].as_i64().unwrap();
        assert!(trainable > 0 && trainable < most, "{adapter}: {trainable} trainable parameters");
        // The record lists the exported adapter (LoRA and prompt tuning export; BitFit does not).
        let run = out.path().join(record["name"].as_str().unwrap());
        let exported = record["exported_adapters"].as_array().unwrap();
        assert_eq!(exported.len(), usize::from(adapter != "bitfit"), "{adapter}: {exported:?}");
        for entry in exported {
            let folder = run.join(entry["folder"].as_str().unwrap());
            let bytes: u64 = std::fs::read_dir(&folder).unwrap().map(|f| f.unwrap().metadata().unwrap().len()).sum();
            assert_eq!(entry["bytes"].as_u64(), Some(bytes), "{adapter}: {entry}");
            assert!(bytes > 0);
        }
        let metrics = std::fs::read_to_string(out.path().join(record["name"].as_str().unwrap()).join("metrics.jsonl"));
        let kl: Vec<f64> = (metrics.unwrap().lines().skip(1))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|m| {
                let metrics = m["method_metrics"].as_array().unwrap().clone();
                let kl = metrics.iter().find(|p| p[0] == "context_distill/kl").unwrap();
                kl[1].as_f64().unwrap()
            })
            .collect();
        common::numerics(&format!("context_distill.{adapter}.kl_fraction"), kl[3] / kl[0], "<0.8");
        assert!(kl[3] < 0.8 * kl[0], "{adapter}: the KL should fall: {kl:?}");
    }
}

/// The command users run: zero-shot, ICL reference and distilled student in one record.
#[test]
fn ftlab_run_distils_and_reports_the_three_accuracies() {
    let out = tempfile::tempdir().unwrap();
    let args = ["run", "--plugin", "context_distill", "--shots", "16", "--set", "train.epochs=2"];
    let result = Command::new(env!("CARGO_BIN_EXE_ftlab"))
        .args(args)
        .args(["--set", "eval.max_examples=40", "--out", out.path().to_str().unwrap(), "--json"])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let record: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(record["status"], "completed");
    for key in ["zero_shot", "icl_reference", "last"] {
        assert!(record[key]["acc_in"].is_number(), "no {key} accuracy in {record}");
    }
    assert!(record["timings"]["prepare"].as_f64().unwrap() > 0.0);
    let run = out.path().join(record["name"].as_str().unwrap());
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("context_distill/kl") && metrics.contains("context_distill/teacher_agreement"));
}
