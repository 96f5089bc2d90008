//! The paper's methods (plugins/), loaded through the registry like any third-party plugin and
//! trained on the embedded model with the embedded synthetic NLI task: each objective learns
//! under each adapter, BitFit and LoRA train only what they should, LoRA merged equals LoRA
//! hooked (also through PEFT's format, and a PEFT-made adapter runs in the plugin as in PEFT),
//! and ICL with the cached context equals ICL without it.

use std::path::PathBuf;

use ftlab_core::data::batch::{self, BatchOrder, EncodedExample};
use ftlab_core::data::synthetic::SyntheticConfig;
use ftlab_core::data::task::DataOptions;
use ftlab_core::methods::export::{adapter_spec, merge_adapter_dir, AdapterFiles};
use ftlab_core::methods::hooks::AdapterHooks;
use ftlab_core::methods::{MethodRun, MethodSpec};
use ftlab_core::model::hooks::ForwardHooks;
use ftlab_core::model::{Checkpointing, ForwardInput, LoadOptions, LogitsAt, Model};
use ftlab_core::run::config::{Schedule, TrainConfig};
use ftlab_core::run::data::{method_tensors, Queries, RunData};
use ftlab_core::run::optim::AdamW;
use ftlab_core::run::{train, RunConfig};
use ftlab_core::tokenizer::Padding;
use ftlab_registry::Registry;
use ftlab_sdk::{TaskInfo, Tensors};
use serde_json::json;
use tch::{Device, Tensor};

mod common;

use common::serial;

fn registry() -> Registry {
    common::registry(&common::BUILT_IN)
}

/// One padded batch and its rendered queries.
struct Rows {
    batch: batch::Batch,
    queries: Queries,
}

impl Rows {
    /// The batch as the runtime hands it to a method (see `ftlab_sdk::Batch`).
    fn tensors(&self) -> Tensors {
        method_tensors(&self.batch, self.queries.clone(), false)
    }
}

/// The embedded model with a run's data: the whole pool of a synthetic task of `n` balanced
/// training examples, drawn as a run draws its k shots, in batches of 8, and the settings the
/// methods train with (constant learning rate, no weight decay, no clipping).
struct Toy {
    model: Model,
    config: RunConfig,
    run_data: RunData,
    batches: Vec<Rows>,
}

impl Toy {
    fn new(n: usize) -> Self {
        let model = Model::embedded_random(LoadOptions::default()).unwrap();
        let train = TrainConfig {
            batch_size: 8,
            weight_decay: 0.0,
            grad_clip: 0.0,
            schedule: Schedule::Constant,
            unlabelled: 0,
            ..Default::default()
        };
        let config = RunConfig { shots: n, train, ..Default::default() };
        let options =
            DataOptions { synthetic: SyntheticConfig { train: n, ..Default::default() }, ..DataOptions::from_env() };
        let run_data = RunData::load_from(&config, &model.tokenizer, &options).unwrap();
        let order = BatchOrder::Shuffled { seed: 0 };
        let word_ids = &run_data.prompt.word_ids;
        let batches = batch::batches(&model.tokenizer, &run_data.encoded, word_ids, 8, order, Device::Cpu)
            .into_iter()
            .map(|batch| {
                let rows = batch.positions.iter().map(|&p| &run_data.train.examples[p]).collect();
                Rows { queries: Queries::of(&run_data.prompt, rows), batch }
            })
            .collect();
        Self { model, config, run_data, batches }
    }

    fn task(&self) -> TaskInfo {
        TaskInfo {
            name: "synthetic-nli".into(),
            label_words: self.run_data.prompt.words.clone(),
            label_token_ids: self.run_data.prompt.word_ids.clone(),
        }
    }

    fn run(&self, objective: MethodSpec, adapters: &[MethodSpec]) -> MethodRun<'_> {
        MethodRun::new(&self.model, &registry(), &objective, adapters, self.task(), 0).unwrap()
    }

    /// Every base parameter, copied.
    fn snapshot(&self) -> Vec<(String, Tensor)> {
        self.model.vs.variables().into_iter().map(|(n, t)| (n, t.copy())).collect()
    }
}

fn spec(name: &str, config: serde_json::Value) -> MethodSpec {
    MethodSpec { name: name.into(), config }
}

/// `epochs` epochs of the run's own loop (`train_epoch`: its batch order, dropout seeds and
/// ftlab's AdamW) at a constant `lr`; returns each epoch's mean loss.
fn train(run: &mut MethodRun, toy: &Toy, epochs: usize, lr: f64) -> Vec<f64> {
    let mut config = toy.config.clone();
    config.train.lr = lr;
    config.train.epochs = epochs;
    let params = run.trainable();
    assert!(!params.is_empty(), "nothing trains");
    let mut optimizer = AdamW::new(params, &config.train).unwrap();
    let total = train::total_steps(&config, toy.run_data.encoded.len());
    let tokenizer = &toy.model.tokenizer;
    let losses = (0..epochs)
        .map(|epoch| train::train_epoch(&config, run, &toy.run_data, tokenizer, &mut optimizer, epoch, total))
        .map(|metrics| metrics.unwrap().train_loss)
        .collect();
    run.set_train(false).unwrap();
    losses
}

/// Accuracy of the objective's predictions on the toy batches.
fn accuracy(run: &mut MethodRun, toy: &Toy) -> f64 {
    let (mut right, mut total) = (0, 0);
    for rows in &toy.batches {
        let scores = run.predict(rows.tensors()).unwrap();
        // LM logits [B, V] (pbft, icl) or class scores [B, C] (vanilla_ft).
        let verbalizer = &rows.batch.verbalizer_ids;
        let scores = if scores.size()[1] == verbalizer.size()[0] { scores } else { scores.index_select(1, verbalizer) };
        let predicted = Vec::<i64>::try_from(scores.argmax(1, false)).unwrap();
        right += predicted.iter().zip(&rows.batch.label_ids).filter(|(p, l)| **p as usize == **l).count();
        total += predicted.len();
    }
    right as f64 / total as f64
}

/// Trains `objective` under `adapter` (none: full fine-tuning) for `epochs` over 32 examples:
/// the loss must fall by a tenth and the training-set accuracy end well above the majority
/// baseline (the set is balanced: 0.5).
///
/// pbft's full-vocabulary loss starts near ln V and its floor depends on what trains: with the
/// final layer norm and the tied embeddings frozen (LoRA), the logits of the random tiny model
/// cannot grow past ~1.3, so the loss stays above ~5.6 while the verbalizer accuracy reaches 1.
fn learns(objective: &str, adapter: Option<&str>, lr: f64, epochs: usize) {
    learns_as(objective, MethodSpec::named(objective), adapter, lr, epochs)
}

/// [`learns`] with the objective's settings: `label` names it in messages and numerics.
fn learns_as(label: &str, objective: MethodSpec, adapter: Option<&str>, lr: f64, epochs: usize) {
    let _serial = serial();
    let toy = Toy::new(32);
    let examples = &toy.run_data.train;
    let majority = examples.label_counts().into_iter().max().unwrap() as f64 / examples.len() as f64;
    let adapters: Vec<MethodSpec> = adapter.map(MethodSpec::named).into_iter().collect();
    let mut run = toy.run(objective, &adapters);
    let before = accuracy(&mut run, &toy);
    let losses = train(&mut run, &toy, epochs, lr);
    let after = accuracy(&mut run, &toy);
    let name = format!("{label} + {}", adapter.unwrap_or("full"));
    eprintln!("{name}: loss {:.3} → {:.3}, accuracy {before:.2} → {after:.2}", losses[0], losses[losses.len() - 1]);
    let fraction = losses[losses.len() - 1] / losses[0];
    common::numerics(&format!("methods.{label}+{}.loss_fraction", adapter.unwrap_or("full")), fraction, "<0.9");
    common::numerics(&format!("methods.{label}+{}.train_accuracy", adapter.unwrap_or("full")), after, ">=0.7");
    assert!(losses[losses.len() - 1] < 0.9 * losses[0], "{name}: loss should fall: {losses:?}");
    assert!(after >= majority + 0.2, "{name}: accuracy {after} vs majority {majority}");
}

#[test]
fn vanilla_ft_learns_with_full_fine_tuning() {
    learns("vanilla_ft", None, 1e-3, 30);
}

#[test]
fn vanilla_ft_learns_with_bitfit() {
    learns("vanilla_ft", Some("bitfit"), 3e-3, 60);
}

#[test]
fn vanilla_ft_learns_with_lora() {
    learns("vanilla_ft", Some("lora"), 1e-2, 30);
}

/// One-token rollout at its defaults (256 samples at τ = 1.2, β = -0.1) and in its exact form.
#[test]
fn otr_learns_with_full_fine_tuning() {
    learns("otr", None, 1e-3, 60);
}

#[test]
fn otr_learns_with_lora() {
    learns("otr", Some("lora"), 1e-2, 60);
}

#[test]
fn otr_exact_learns_with_full_fine_tuning() {
    learns_as("otr-exact", spec("otr", json!({ "estimator": "exact" })), None, 1e-3, 30);
}

#[test]
fn pbft_learns_with_full_fine_tuning() {
    learns("pbft", None, 1e-3, 30);
}

#[test]
fn pbft_learns_with_bitfit() {
    learns("pbft", Some("bitfit"), 1e-2, 100);
}

#[test]
fn pbft_learns_with_lora() {
    learns("pbft", Some("lora"), 1e-2, 30);
}

#[test]
fn pbft_learns_with_ia3() {
    learns("pbft", Some("ia3"), 1e-1, 100);
}

/// Prompt tuning trains only its soft prompt, and the loss falls. No accuracy bound: a soft
/// prompt can only steer behaviour the model already has, and the random embedded model has no
/// input-dependent behaviour to steer (its loss plateaus once the label words are balanced), as
/// Lester et al. find prompt tuning weak below billions of parameters.
#[test]
fn prompt_tuning_trains_only_the_prompt() {
    let _serial = serial();
    let toy = Toy::new(16);
    let before = toy.snapshot();
    let tuning = spec("prompt_tuning", json!({ "tokens": 8 }));
    let mut run = toy.run(MethodSpec::named("pbft"), std::slice::from_ref(&tuning));
    let trainable = run.trainable();
    assert_eq!(trainable.len(), 1);
    assert_eq!(trainable[0].1.size(), [8, 64]);
    let start = trainable[0].1.copy();
    let losses = train(&mut run, &toy, 20, 3e-1);
    common::numerics("methods.pbft+prompt_tuning.loss_fraction", losses[19] / losses[0], "<0.97");
    assert!(losses[19] < 0.97 * losses[0], "the loss should fall: {losses:?}");
    assert!(!run.trainable()[0].1.equal(&start), "the prompt should move");
    for (name, old) in &before {
        assert!(toy.model.vs.variables()[name].equal(old), "{name} changed under prompt tuning");
    }
}

/// A soft prompt is read once per pass and its keys/values shared by every row: the logits of
/// each row's tokens, and the prompt's gradient, are those of the prompt prepended to every row
/// (the model's per-row `prefix`, PEFT's prompt learning), also with activation checkpointing,
/// which hands the prompt's keys/values to each recomputed layer.
#[test]
fn a_prompt_read_once_gives_the_per_row_logits_and_gradients() {
    let _serial = serial();
    let toy = Toy::new(16);
    let run = toy.run(MethodSpec::named("pbft"), &[spec("prompt_tuning", json!({ "tokens": 5 }))]);
    let prompt = run.trainable()[0].1.shallow_clone();
    let hooks = AdapterHooks { adapters: &run.adapters };
    let (ids, mask) = (&toy.batches[0].batch.input_ids, &toy.batches[0].batch.attention_mask);
    let (b, t) = ids.size2().unwrap();
    let ones = Tensor::ones([b, 5], (tch::Kind::Int64, Device::Cpu));
    // Logits from position `skip` on, and the prompt's gradient of a loss reading all of them.
    let logits_and_grad = |input: ForwardInput, skip: i64| {
        let logits = toy.model.net.forward(input).unwrap().logits.unwrap();
        assert_eq!(logits.size()[1], skip + t, "logits cover the prompt only when it is a prefix");
        let logits = logits.narrow(1, skip, t);
        let mut grad = prompt.grad();
        if grad.defined() {
            let _ = grad.zero_();
        }
        (logits.log_softmax(-1, tch::Kind::Float).mean(tch::Kind::Float) * 1e3).backward();
        (logits.detach(), prompt.grad().copy())
    };
    let shared = |checkpoint| ForwardInput {
        input_ids: Some(ids),
        attention_mask: Some(mask),
        logits: LogitsAt::All,
        hooks: Some(&hooks as _),
        checkpoint,
        ..Default::default()
    };
    let (ours, ours_grad) = logits_and_grad(shared(Default::default()), 0);
    let full_mask = Tensor::cat(&[&ones, mask], 1);
    let per_row = ForwardInput {
        input_ids: Some(ids),
        attention_mask: Some(&full_mask),
        prefix: Some(&prompt),
        logits: LogitsAt::All,
        ..Default::default()
    };
    let (theirs, theirs_grad) = logits_and_grad(per_row, 5);
    let real = mask.unsqueeze(-1).to_kind(tch::Kind::Float);
    let err = (((&ours - &theirs) * &real).abs().max() / theirs.abs().max()).double_value(&[]);
    common::numerics("methods.shared_prompt.relative_logit_error", err, "<1e-5");
    assert!(err < 1e-5, "shared prompt vs per-row prompt: relative logit error {err}");
    let grad_err = ((&ours_grad - &theirs_grad).abs().max() / theirs_grad.abs().max()).double_value(&[]);
    common::numerics("methods.shared_prompt.relative_grad_error", grad_err, "<1e-4");
    assert!(grad_err < 1e-4, "the prompt's gradient: relative error {grad_err}");
    // SAFETY: back-propagated within this test, while the model and the run's adapters live.
    let (checkpointed, checkpointed_grad) = logits_and_grad(shared(unsafe { Checkpointing::on() }), 0);
    assert!(checkpointed.equal(&ours), "checkpointing changes no logit");
    // The prompt's positions feed many consumers, whose gradients arrive in another order.
    let grad_err = ((&checkpointed_grad - &ours_grad).abs().max() / ours_grad.abs().max()).double_value(&[]);
    common::numerics("methods.shared_prompt.checkpointed_relative_grad_error", grad_err, "<1e-5");
    assert!(grad_err < 1e-5, "checkpointing hands the prompt its whole gradient: relative error {grad_err}");
}

/// DePT reads its prompt first and offsets the input embeddings by `(alpha / √r)·(A·B)[t]` at
/// each input position t — counted after the prompt, and after kept keys/values, which hold the
/// prompt; only the prompt and the two factors train, and the loss falls.
#[test]
fn dept_offsets_input_embeddings_by_position() {
    let _serial = serial();
    let toy = Toy::new(16);
    let before = toy.snapshot();
    let config = json!({ "tokens": 3, "rank": 2, "alpha": 8, "max_length": 32 });
    let mut run = toy.run(MethodSpec::named("pbft"), &[spec("dept", config)]);
    let trainable = run.trainable();
    let shapes: Vec<(String, Vec<i64>)> = trainable.iter().map(|(n, t)| (n.clone(), t.size())).collect();
    let expected =
        [("lora_embedding_A", vec![32, 2]), ("lora_embedding_B", vec![2, 64]), ("prompt_embeddings", vec![3, 64])];
    assert_eq!(shapes, expected.map(|(n, s)| (format!("dept.{n}"), s)));
    let [a, b, prompt] = [0, 1, 2].map(|i| trainable[i].1.shallow_clone());
    tch::no_grad(|| b.shallow_clone().copy_(&Tensor::randn([2, 64], (tch::Kind::Float, Device::Cpu))));
    let offset = a.matmul(&b) * (8.0 / 2f64.sqrt()); // (32, 64)
    let hooks = AdapterHooks { adapters: &run.adapters };
    assert!(hooks.prompt().unwrap().unwrap().equal(&prompt), "the prompt, read first");
    let embeds = Tensor::randn([2, 5, 64], (tch::Kind::Float, Device::Cpu));
    // After the prompt's 3 positions: the offset at input positions 0..5.
    let (out, mask) = hooks.embeddings(embeds.copy(), Tensor::ones([2, 8], (tch::Kind::Int64, Device::Cpu))).unwrap();
    assert!(max_diff(&out, &(&embeds + offset.narrow(0, 0, 5))) < 1e-6, "offset at positions 0..5");
    assert_eq!(mask.size(), [2, 8]);
    // After 7 kept positions (the prompt's 3 and 4 tokens): positions 4..9.
    let (out, mask) = hooks.embeddings(embeds.copy(), Tensor::ones([2, 12], (tch::Kind::Int64, Device::Cpu))).unwrap();
    assert!(max_diff(&out, &(&embeds + offset.narrow(0, 4, 5))) < 1e-6, "offset continues after kept keys/values");
    assert_eq!(mask.size(), [2, 12]);
    let losses = train(&mut run, &toy, 10, 1e-1);
    assert!(losses[9] < 0.97 * losses[0], "the loss should fall: {losses:?}");
    for (name, old) in &before {
        assert!(toy.model.vs.variables()[name].equal(old), "{name} changed under dept");
    }
}

/// HFT trains, in every layer, exactly 2 attention projections, 1 MLP linear and 1 layer norm
/// (weight and bias each), a different draw per layer, per seed and (with `redraw`) per epoch; everything else stays
/// bit-identical and gets no optimizer state; and it learns the task.
#[test]
fn hft_trains_half_of_each_layer() {
    let _serial = serial();
    let toy = Toy::new(16);
    let before = toy.snapshot();
    let names = |run: &MethodRun| run.trainable().into_iter().map(|(n, _)| n).collect::<Vec<String>>();
    // Runs on one model set its trainability in turn: the run trained below comes last.
    let other = names(&toy.run(MethodSpec::named("pbft"), &[spec("hft", json!({ "seed": 1 }))]));
    // With `redraw`, epoch 0 trains the first draw and each later epoch another half.
    let mut redrawn = toy.run(MethodSpec::named("pbft"), &[spec("hft", json!({ "redraw": true }))]);
    let first = names(&redrawn);
    assert!(!redrawn.epoch_begins(0).unwrap(), "epoch 0 is the first draw");
    assert!(redrawn.epoch_begins(1).unwrap());
    let second = names(&redrawn);
    assert!(second != first && second.len() == first.len(), "{first:?} → {second:?}");
    assert!(!redrawn.epoch_begins(1).unwrap(), "asking again changes nothing");
    let mut run = toy.run(MethodSpec::named("pbft"), &[MethodSpec::named("hft")]);
    let trained = names(&run);
    assert_eq!(trained.len(), 4 * (2 + 1 + 1) * 2, "{trained:?}");
    assert_ne!(other, trained, "another seed draws other groups");
    for layer in 0..4 {
        let count = |groups: &[&str]| {
            groups.iter().filter(|g| trained.contains(&format!("model.decoder.layers.{layer}.{g}.weight"))).count()
        };
        assert_eq!(count(&["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"]), 2);
        assert_eq!(count(&["fc1", "fc2"]), 1);
        assert_eq!(count(&["self_attn_layer_norm", "final_layer_norm"]), 1);
    }
    train(&mut run, &toy, 5, 1e-3);
    for (name, old) in &before {
        let moved = !toy.model.vs.variables()[name].equal(old);
        assert_eq!(moved, trained.contains(name), "{name}: moved {moved}");
    }
}

#[test]
fn pbft_learns_with_hft() {
    learns("pbft", Some("hft"), 1e-3, 30);
}

/// (IA)³ trains only its vectors (all ones at first, so the model starts as the base one), and
/// merged into the weights (rows and bias scaled, or `fc2`'s columns) the plain model computes
/// what the hooked one does.
#[test]
fn ia3_freezes_the_base_and_merges_exactly() {
    let _serial = serial();
    let toy = Toy::new(16);
    let before = toy.snapshot();
    let mut run = toy.run(MethodSpec::named("pbft"), &[MethodSpec::named("ia3")]);
    let trainable = run.trainable();
    assert_eq!(trainable.len(), 4 * 3, "k_proj, v_proj and fc2 of 4 layers");
    let shape = |name: &str| trainable.iter().find(|(n, _)| n == name).map(|(_, t)| t.size()).unwrap();
    assert_eq!(shape("ia3.model.decoder.layers.0.self_attn.k_proj.ia3_l"), [64, 1]);
    assert_eq!(shape("ia3.model.decoder.layers.3.fc2.ia3_l"), [1, 256]);
    assert_eq!(max_diff(&logits(&run, &toy.batches[0], true), &logits(&run, &toy.batches[0], false)), 0.0);
    train(&mut run, &toy, 5, 3e-2);
    for (name, old) in &before {
        assert!(toy.model.vs.variables()[name].equal(old), "{name} changed under ia3");
    }
    let hooked = logits(&run, &toy.batches[0], true);
    assert!(max_diff(&hooked, &logits(&run, &toy.batches[0], false)) > 1e-3, "training should move the vectors");
    run.adapters[0].merge_into(&toy.model).unwrap();
    let diff = max_diff(&hooked, &logits(&run, &toy.batches[0], false));
    assert!(diff < 1e-5, "merged vs hooked (IA)³ logits differ by {diff}");
}

/// LIFT trains exactly its principal entries: one vector per linear of `(in + out)·lora_rank`
/// entries is all that trains and all the optimizer keeps state for; the base stays
/// bit-identical; merged, the update changes each weight only at the entries its export lists;
/// and merged equals hooked — also with the masks redrawn every 2 steps, when the export lists
/// the entries of earlier masks too.
#[test]
fn lift_trains_only_the_principal_entries() {
    let _serial = serial();
    let toy = Toy::new(16);
    let before = toy.snapshot();
    let lift = spec("lift", json!({ "lora_rank": 4, "refresh_every": 2 }));
    let mut run = toy.run(MethodSpec::named("pbft"), &[lift]);
    // The embedded model: 4 layers of width 64 with 256-wide MLPs.
    let per_layer = 4 * (64 + 64) * 4 + 2 * (64 + 256) * 4;
    let trainable = run.trainable();
    assert_eq!(trainable.len(), 4 * 6);
    assert_eq!(trainable.iter().map(|(_, t)| t.numel()).sum::<usize>(), 4 * per_layer);
    let optimizer = AdamW::new(trainable, &toy.config.train).unwrap();
    let moments: usize =
        optimizer.state().iter().filter(|(n, _)| !n.starts_with("param/")).map(|(_, t)| t.numel()).sum();
    assert_eq!(moments, 2 * 4 * per_layer, "optimizer state: two moments per trained entry");
    train(&mut run, &toy, 5, 1e-2);
    for (name, old) in &before {
        assert!(toy.model.vs.variables()[name].equal(old), "{name} changed under lift");
    }
    let hooked = logits(&run, &toy.batches[0], true);
    let files = run.adapters[0].export().unwrap().unwrap();
    run.adapters[0].merge_into(&toy.model).unwrap();
    assert!(max_diff(&hooked, &logits(&run, &toy.batches[0], false)) < 1e-5, "merged vs hooked LIFT logits");
    let listed: i64 =
        (files.tensors.iter()).filter(|(n, _)| n.ends_with(".lift_indices")).map(|(_, t)| t.numel() as i64).sum();
    assert!(listed > 4 * per_layer as i64, "the masks moved: {listed} entries trained");
    let mut moved = 0;
    for (name, old) in &before {
        let changed = toy.model.vs.variables()[name].ne_tensor(old).reshape([-1]);
        let listed = format!("base_model.model.{}.lift_indices", name.trim_end_matches(".weight"));
        let allowed = changed.zeros_like();
        if let Some((_, indices)) = files.tensors.iter().find(|(n, _)| *n == listed) {
            let _ = allowed.shallow_clone().index_fill_(0, indices, 1);
        }
        let outside = changed.logical_and(&allowed.logical_not()).sum(tch::Kind::Int64).int64_value(&[]);
        assert_eq!(outside, 0, "{name}: {outside} entries outside the mask changed");
        moved += changed.sum(tch::Kind::Int64).int64_value(&[]) as usize;
    }
    assert!(moved * 10 >= 4 * per_layer * 8, "{moved} of {} trained entries moved", 4 * per_layer);

    // Files that do not fit the config are refused, naming the tensor.
    let mut refused = |edit: fn(&mut [(String, Tensor)])| {
        let mut bad = run.adapters[0].export().unwrap().unwrap();
        edit(&mut bad.tensors);
        run.adapters[0].import(bad).unwrap_err().to_string()
    };
    let err = refused(|t| t[0].0 = "base_model.model.model.decoder.layers.0.fc1.lift_scale".into());
    assert!(err.contains("unexpected tensor") && err.contains("fc1.lift_scale"), "{err}");
    let err = refused(|t| {
        let at = t.iter().position(|(n, _)| n.ends_with("layers.1.fc2.lift_indices")).unwrap();
        t[at].1 = t[at].1.fill(1 << 20);
    });
    assert!(err.contains("layers.1.fc2: lift_indices") && err.contains("in 0..16384"), "{err}");
}

/// Over the full vocabulary pbft's loss has a floor near 5.8 with the embeddings and layer norms
/// frozen (see [`learns`]), which sparse updates approach only slowly: LIFT is checked on the
/// verbalizer's cross-entropy.
#[test]
fn pbft_learns_with_lift() {
    let pbft = spec("pbft", json!({ "restrict_to_verbalizer": true }));
    learns_as("pbft-verbalizer", pbft, Some("lift"), 1e-2, 30);
}

/// The non-default options: llmft's head, pbft over the verbalizer only, LoRA on the other
/// linears and with dropout; each trains a few steps and predicts.
#[test]
fn objective_options_run() {
    let _serial = serial();
    let toy = Toy::new(16);
    let lora = spec("lora", json!({"targets": ["k_proj", "out_proj", "fc1", "fc2"], "dropout": 0.1}));
    for (objective, width) in [
        (spec("vanilla_ft", json!({"head": "llmft"})), 2),
        (spec("pbft", json!({"restrict_to_verbalizer": true})), 1024),
    ] {
        let name = objective.config.to_string();
        let mut run = toy.run(objective, std::slice::from_ref(&lora));
        let losses = train(&mut run, &toy, 10, 1e-2);
        assert!(losses[9] < losses[0], "{name}: {losses:?}");
        assert_eq!(run.predict(toy.batches[0].tensors()).unwrap().size(), [8, width]);
    }
}

#[test]
fn bitfit_trains_only_biases() {
    let _serial = serial();
    let toy = Toy::new(16);
    let before = toy.snapshot();
    let mut run = toy.run(MethodSpec::named("pbft"), &[MethodSpec::named("bitfit")]);
    let trainable: Vec<String> = run.trainable().into_iter().map(|(n, _)| n).collect();
    assert!(trainable.iter().all(|n| n.ends_with(".bias")), "{trainable:?}");
    assert!(trainable.contains(&"model.decoder.layers.0.self_attn.q_proj.bias".to_string()));
    assert!(trainable.contains(&"model.decoder.final_layer_norm.bias".to_string()));
    train(&mut run, &toy, 3, 1e-2);
    let after = toy.model.vs.variables();
    let mut moved = 0;
    for (name, old) in &before {
        if name.ends_with(".bias") {
            moved += usize::from(!after[name].equal(old));
        } else {
            assert!(after[name].equal(old), "{name} changed under bitfit");
        }
    }
    // Not necessarily all: k_proj's bias adds a constant to each query's scores, which softmax
    // ignores, so its gradient is zero up to rounding.
    assert!(moved > trainable.len() / 2, "only {moved} of {} biases moved", trainable.len());
}

/// The model's logits `[B, T, V]` of a batch, through the run's adapters or without them.
fn logits(run: &MethodRun, rows: &Rows, adapters: bool) -> Tensor {
    let hooks = AdapterHooks { adapters: &run.adapters };
    let input = ForwardInput {
        input_ids: Some(&rows.batch.input_ids),
        attention_mask: Some(&rows.batch.attention_mask),
        logits: LogitsAt::All,
        hooks: adapters.then_some(&hooks as _),
        ..Default::default()
    };
    tch::no_grad(|| run.model.net.forward(input)).unwrap().logits.unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn lora_freezes_the_base_and_merges_exactly() {
    let _serial = serial();
    let toy = Toy::new(16);
    let before = toy.snapshot();
    let (alpha, r) = (16.0, 4);
    let lora = spec("lora", json!({"r": r, "alpha": alpha, "targets": ["q_proj", "v_proj", "fc1", "fc2"]}));
    let mut run = toy.run(MethodSpec::named("pbft"), std::slice::from_ref(&lora));

    // PEFT's names and shapes; B starts at zero, so the adapted model starts as the base one.
    let trainable = run.trainable();
    assert_eq!(trainable.len(), 4 * 4 * 2);
    let shape = |name: &str| trainable.iter().find(|(n, _)| n == name).map(|(_, t)| t.size()).unwrap();
    assert_eq!(shape("lora.model.decoder.layers.0.self_attn.q_proj.lora_A.weight"), [4, 64]);
    assert_eq!(shape("lora.model.decoder.layers.3.self_attn.v_proj.lora_B.weight"), [64, 4]);
    assert_eq!(shape("lora.model.decoder.layers.1.fc1.lora_B.weight"), [256, 4]);
    assert_eq!(shape("lora.model.decoder.layers.2.fc2.lora_A.weight"), [4, 256]);
    let a = &trainable[0].1;
    assert!(a.abs().max().double_value(&[]) <= 1.0 / (a.size()[1] as f64).sqrt(), "Kaiming-uniform bound");
    assert_eq!(max_diff(&logits(&run, &toy.batches[0], true), &logits(&run, &toy.batches[0], false)), 0.0);

    train(&mut run, &toy, 5, 1e-2);
    for (name, old) in &before {
        assert!(toy.model.vs.variables()[name].equal(old), "{name} changed under lora");
    }
    let hooked = logits(&run, &toy.batches[0], true);
    assert!(max_diff(&hooked, &logits(&run, &toy.batches[0], false)) > 1e-3, "training should move the adapter");

    // Merge W += alpha/r · B·A into the base and run it without hooks.
    let store = &run.state.stores["lora"].variables();
    tch::no_grad(|| {
        for (name, weight) in toy.model.vs.variables() {
            let module = name.trim_end_matches(".weight");
            if let (Some(a), Some(b)) =
                (store.get(&format!("{module}.lora_A.weight")), store.get(&format!("{module}.lora_B.weight")))
            {
                let _ = weight.shallow_clone().f_add_(&(b.matmul(a) * (alpha / r as f64))).unwrap();
            }
        }
    });
    let merged = logits(&run, &toy.batches[0], false);
    let diff = max_diff(&hooked, &merged);
    eprintln!("merged vs hooked LoRA logits: max difference {diff:e}");
    assert!(diff < 1e-5, "merged vs hooked logits differ by {diff}");

    // The same through PEFT's files: the run exports them, a fresh copy of the model merges
    // them (the plugin found by `peft_type`, its update from `merged_deltas`).
    let dir = tempfile::tempdir().unwrap();
    let folders = run.export_adapters(dir.path()).unwrap();
    assert_eq!(folders, [dir.path().join("adapter")]);
    let files = AdapterFiles::load(&folders[0]).unwrap();
    let config = (files.config["r"].as_i64(), files.config["lora_alpha"].as_f64(), files.tensors.len());
    assert_eq!(config, (Some(4), Some(16.0), 32));
    let fresh = Model::embedded_random(LoadOptions::default()).unwrap();
    merge_adapter_dir(&fresh, &registry(), &folders[0]).unwrap();
    let rows = &toy.batches[0];
    let input = ForwardInput {
        input_ids: Some(&rows.batch.input_ids),
        attention_mask: Some(&rows.batch.attention_mask),
        logits: LogitsAt::All,
        ..Default::default()
    };
    let diff = max_diff(&hooked, &tch::no_grad(|| fresh.net.forward(input)).unwrap().logits.unwrap());
    assert!(diff < 1e-5, "exported, reloaded and merged vs hooked logits differ by {diff}");
}

/// A PEFT-made adapter (core/tests/fixtures/make_peft_fixtures.py) loaded into a `lora` run
/// gives PEFT's logits through the plugin's hooks, and exports back to the same tensors.
#[test]
fn peft_adapter_runs_in_the_lora_plugin_as_in_peft() {
    let _serial = serial();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let model = Model::load(fixtures.join("opt-pre-ln").to_str().unwrap(), LoadOptions::default()).unwrap();
    let dir = fixtures.join("peft/from-peft");
    let files = AdapterFiles::load(&dir).unwrap();
    let lora = adapter_spec(&registry(), &files, &dir).unwrap();
    assert_eq!(lora.name, "lora");
    assert_eq!((lora.config["r"].as_i64(), lora.config["alpha"].as_f64()), (Some(4), Some(8.0)));
    let task =
        TaskInfo { name: "any".into(), label_words: vec![" a".into(), " b".into()], label_token_ids: vec![10, 11] };
    let mut run =
        MethodRun::new(&model, &registry(), &MethodSpec::named("pbft"), std::slice::from_ref(&lora), task, 0).unwrap();
    run.adapters[0].import(files).unwrap();

    let reference = Tensor::read_safetensors(fixtures.join("peft/from-peft.logits.safetensors")).unwrap();
    let get = |key: &str| reference.iter().find(|(n, _)| n == key).unwrap().1.shallow_clone();
    let (ids, mask, expected) = (get("input_ids"), get("attention_mask"), get("logits"));
    let hooks = AdapterHooks { adapters: &run.adapters };
    let input = ForwardInput {
        input_ids: Some(&ids),
        attention_mask: Some(&mask),
        logits: LogitsAt::All,
        hooks: Some(&hooks),
        ..Default::default()
    };
    let ours = tch::no_grad(|| model.net.forward(input)).unwrap().logits.unwrap();
    let keep = mask.to_kind(tch::Kind::Bool).unsqueeze(-1).expand_as(&expected);
    let (ours, expected) = (ours.masked_select(&keep), expected.masked_select(&keep));
    let err = max_diff(&ours, &expected) / expected.abs().max().double_value(&[]);
    assert!(err < 1e-4, "hooked LoRA vs PEFT logits: relative error {err}");

    let (exported, files) = (run.adapters[0].export().unwrap().unwrap(), AdapterFiles::load(&dir).unwrap());
    for key in ["peft_type", "r", "lora_alpha", "lora_dropout", "target_modules"] {
        assert_eq!(exported.config[key], files.config[key], "{key}");
    }
    assert_eq!(exported.tensors.len(), files.tensors.len());
    for (name, tensor) in &files.tensors {
        let ours = &exported.tensors.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}")).1;
        assert!(ours.equal(tensor), "{name}");
    }
}

/// `base_bias = "lora_only"` (PEFT's `bias`) trains exactly the adapted linears' biases beside A
/// and B, and they move; every other base tensor stays frozen.
#[test]
fn lora_trains_the_base_biases_it_saves() {
    let _serial = serial();
    let toy = Toy::new(16);
    let before = toy.snapshot();
    let lora = spec("lora", json!({"r": 2, "targets": ["q_proj", "fc1"], "base_bias": "lora_only"}));
    let mut run = toy.run(MethodSpec::named("pbft"), std::slice::from_ref(&lora));
    let base: Vec<String> = run.trainable().into_iter().map(|(n, _)| n).filter(|n| !n.starts_with("lora.")).collect();
    let expected: Vec<String> = (0..4)
        .flat_map(|l| {
            [format!("model.decoder.layers.{l}.fc1.bias"), format!("model.decoder.layers.{l}.self_attn.q_proj.bias")]
        })
        .collect();
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(base, sorted);
    train(&mut run, &toy, 3, 1e-2);
    for (name, old) in &before {
        let moved = !toy.model.vs.variables()[name].equal(old);
        assert_eq!(moved, expected.contains(name), "{name}: trained {moved}");
    }
}

#[test]
fn lora_refuses_unknown_targets_listing_the_valid_ones() {
    let _serial = serial();
    let toy = Toy::new(8);
    let bad = spec("lora", json!({"targets": ["q_proj", "o_proj"]}));
    let err = MethodRun::new(&toy.model, &registry(), &MethodSpec::named("pbft"), &[bad], toy.task(), 0).err().unwrap();
    let err = err.to_string();
    assert!(err.contains("o_proj") && err.contains("q_proj, k_proj, v_proj, out_proj, fc1, fc2"), "{err}");
}

/// What the runtime hands `prepare`: the training set and `context`.
fn prepare_data(toy: &Toy, context: &str) -> Tensors {
    let mut data = toy.batches[0].tensors();
    data.json = json!({ "prompts": [], "context": context, "separator": toy.run_data.prompt.separator });
    data
}

/// ICL reads `context + query` as llmft encodes it, one string (so BPE merges across the
/// boundary), and the cached context gives the same logits as the uncached path and as the model
/// run on that one encoding. The demonstrations are separated by a space, as llmft's CoLA runs
/// do, so that the embedded tokenizer merges it with each query's first word (` The`).
#[test]
fn icl_with_the_cached_context_equals_icl_without_it() {
    let _serial = serial();
    let toy = Toy::new(32);
    let separator = &toy.run_data.prompt.separator;
    let context = toy.run_data.context_of(8, 0).unwrap().replace(separator.as_str(), " ");
    let tokenizer = &toy.model.tokenizer;
    let context_ids = tokenizer.encode(&context).unwrap();
    let (mut reference, mut merged) = (Vec::new(), 0);
    for rows in &toy.batches {
        for &p in &rows.batch.positions {
            let ids = toy.run_data.prompt.encode_icl(tokenizer, &context, &toy.run_data.train.examples[p]).unwrap();
            merged += usize::from(!ids.starts_with(&context_ids));
            let input = Tensor::from_slice(&ids).view([1, -1]);
            let forward = ForwardInput { input_ids: Some(&input), logits: LogitsAt::LastToken, ..Default::default() };
            reference.push(tch::no_grad(|| toy.model.net.forward(forward)).unwrap().logits.unwrap());
        }
    }
    assert!(merged > 0, "a trailing space merges with a query's first word");
    let reference = Tensor::cat(&reference, 0);
    let mut scores = Vec::new();
    for cache_context in [true, false] {
        let mut run = toy.run(spec("icl", json!({ "cache_context": cache_context })), &[]);
        assert!(run.trainable().is_empty(), "icl trains nothing");
        let err = run.loss(toy.batches[0].tensors()).unwrap_err().to_string();
        assert!(err.contains("icl") && err.contains("loss"), "{err}");
        run.prepare(prepare_data(&toy, &context)).unwrap();
        assert_eq!(run.state.caches.len(), usize::from(cache_context));
        let batch: Vec<Tensor> = toy.batches.iter().map(|rows| run.predict(rows.tensors()).unwrap()).collect();
        scores.push(Tensor::cat(&batch, 0));
    }
    assert_eq!(scores[0].size(), [32, 1024], "next-token logits over the vocabulary");
    let diff = max_diff(&scores[0], &scores[1]);
    eprintln!("cached vs uncached ICL logits: max difference {diff:e}");
    assert!(diff < 1e-5, "cached vs uncached ICL logits differ by {diff}");
    let diff = max_diff(&scores[1], &reference);
    assert!(diff < 1e-5, "ICL logits differ from the model's on llmft's one-string encoding by {diff}");
    assert!(scores[0].abs().max().double_value(&[]) > 0.0);
}

/// The `lm` objective's loss is the mean next-token cross-entropy over exactly the target
/// tokens — a document's every token after `</s>`, a prompt/response row's response (or, with
/// `response_only = false`, its prompt too) — recomputed here in plain Rust from the model's
/// own logits; one-token rollout on documents reads the same tokens.
#[test]
fn lm_loss_is_next_token_cross_entropy_over_the_targets() {
    let _guard = serial();
    let model = Model::embedded_random(LoadOptions::default()).unwrap();
    let tokenizer = &model.tokenizer;
    let document = tokenizer.encode("The cat sat on the mat and the dog slept.").unwrap();
    let prompt = tokenizer.encode("The doctor met the lawyer. The doctor paid the lawyer. ?").unwrap();
    let response = [prompt.clone(), tokenizer.encode_plain(" No").unwrap()].concat();
    let rows = [
        EncodedExample { position: 0, target_start: 1, ids: document.clone(), label: 0 },
        EncodedExample { position: 1, target_start: prompt.len(), ids: response.clone(), label: 0 },
    ];
    let batch = batch::collate(tokenizer, &rows, &[0, 1], &[], Padding::Right, Device::Cpu);
    let tensors = || method_tensors(&batch, Queries { prompts: vec![], icl: vec![] }, false);
    let input = ForwardInput {
        input_ids: Some(&batch.input_ids),
        attention_mask: Some(&batch.attention_mask),
        logits: LogitsAt::All,
        ..Default::default()
    };
    let logits = tch::no_grad(|| model.net.forward(input)).unwrap().logits.unwrap();
    let log_probs = logits.log_softmax(-1, tch::Kind::Double);
    // -log p(ids[t] | ids[<t]) read off position t - 1.
    let nll = |row: usize, ids: &[i64], t: usize| -log_probs.double_value(&[row as i64, t as i64 - 1, ids[t]]);
    let mean = |terms: Vec<f64>| terms.iter().sum::<f64>() / terms.len() as f64;
    let doc_terms: Vec<f64> = (1..document.len()).map(|t| nll(0, &document, t)).collect();
    for (response_only, first) in [(true, prompt.len()), (false, 1)] {
        let mut run = MethodRun::new(
            &model,
            &common::registry(&["lm"]),
            &spec("lm", json!({ "response_only": response_only })),
            &[],
            TaskInfo { name: "text".into(), label_words: vec![], label_token_ids: vec![] },
            0,
        )
        .unwrap();
        run.set_train(false).unwrap();
        let (loss, metrics) = run.loss(tensors()).unwrap();
        let response_terms: Vec<f64> = (first..response.len()).map(|t| nll(1, &response, t)).collect();
        let expected = mean([doc_terms.clone(), response_terms].concat());
        let loss = loss.double_value(&[]);
        assert!((loss - expected).abs() < 1e-4, "response_only={response_only}: {loss} vs {expected}");
        assert_eq!(metrics[0].0, "perplexity");
        assert!((metrics[0].1 - loss.exp()).abs() < 1e-6 * loss.exp());
        // Predictions are the logits at every position (the run scores perplexity from them).
        assert_eq!(run.predict(tensors()).unwrap().size(), logits.size());
    }
    // One-token rollout reads the same targets (the default, responses only): its reported loss is
    // their cross-entropy, and in its exact form with every token rewarded (β = 1) at τ = 1 the
    // objective is the mean entropy of the model's next-token distributions there.
    let entropy = |row: i64, t: usize| -> f64 {
        let p = log_probs.get(row).get(t as i64 - 1);
        -(p.exp() * &p).sum(tch::Kind::Double).double_value(&[])
    };
    let rollout = json!({ "estimator": "exact", "temperature": 1.0, "beta": 1.0 });
    let text = TaskInfo { name: "text".into(), label_words: vec![], label_token_ids: vec![] };
    let mut run = MethodRun::new(&model, &common::registry(&["otr"]), &spec("otr", rollout), &[], text, 0).unwrap();
    run.set_train(false).unwrap();
    let (loss, metrics) = run.loss(tensors()).unwrap();
    let targets = |nll_or_entropy: &dyn Fn(i64, usize) -> f64| {
        let document = (1..document.len()).map(|t| nll_or_entropy(0, t));
        mean(document.chain((prompt.len()..response.len()).map(|t| nll_or_entropy(1, t))).collect())
    };
    let expected = targets(&|row, t| if row == 0 { nll(0, &document, t) } else { nll(1, &response, t) });
    assert!((loss.double_value(&[]) - expected).abs() < 1e-4, "otr: {} vs {expected}", loss.double_value(&[]));
    let rollout = metrics.iter().find(|(name, _)| name == "rollout").unwrap().1;
    let expected = targets(&entropy);
    assert!((rollout - expected).abs() < 1e-4, "otr's exact objective at β = 1: {rollout} vs entropy {expected}");
    // A classification task has no documents to model.
    let err = MethodRun::new(&model, &common::registry(&["lm"]), &MethodSpec::named("lm"), &[], Toy::new(8).task(), 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--task text"), "{err}");
}
