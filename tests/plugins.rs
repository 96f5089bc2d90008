//! Method plugins end to end: a crate scaffolded by `ftlab plugins new` is built with cargo,
//! found, loaded and trained on the embedded model; then every fault a plugin can have — a
//! panic at load, in a hook, in the loss, a libtorch error — comes back as an error naming the
//! method and the call, and the host keeps working.

use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ftlab_core::methods::{MethodRun, MethodSpec};
use ftlab_core::model::{ForwardInput, LoadOptions, Model};
use ftlab_core::tokenizer::Padding;
use ftlab_registry::Registry;
use ftlab_sdk::{TaskInfo, Tensors};
use tch::{Device, Tensor};

mod common;

use common::build_dir;

fn ftlab(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ftlab")).args(args).output().unwrap()
}

/// The scaffolded crates' sources (`ROOT/myce`, `ROOT/myscale`) and where cargo builds them.
fn scaffold_root() -> PathBuf {
    std::env::temp_dir().join(format!("ftlab-scaffold-{}", std::process::id())).join("src")
}

fn scaffold_target() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-target")
}

/// Scaffolds an objective (`myce`) and an adapter (`myscale`) with `ftlab plugins new` and builds
/// them with cargo, once per test binary; returns the folder holding the two libraries.
fn scaffolded() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Sources outside the workspace, as an author's would be (cargo reads the config of
        // every folder above a crate); the target folder persists so reruns are quick.
        let (root, target) = (scaffold_root(), scaffold_target());
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        for (name, role) in [("myce", "objective"), ("myscale", "adapter")] {
            let out = ftlab(&["plugins", "new", name, "--role", role, "--dir", root.to_str().unwrap()]);
            assert!(out.status.success(), "plugins new: {}", String::from_utf8_lossy(&out.stderr));
            let status = Command::new(env!("CARGO"))
                .args(["build", "--quiet"])
                .current_dir(root.join(name))
                .env("CARGO_TARGET_DIR", &target)
                .status()
                .unwrap();
            assert!(status.success(), "building the scaffolded {name} failed");
        }
        target.join("debug")
    })
}

fn registry() -> Registry {
    Registry::from_dirs(&[scaffolded().to_path_buf(), build_dir()])
}

fn task(model: &Model) -> TaskInfo {
    let words = [" Yes", " No"];
    let ids = words
        .iter()
        .map(|w| model.tokenizer.encode_plain(w).unwrap())
        .inspect(|ids| assert_eq!(ids.len(), 1))
        .map(|ids| ids[0]);
    TaskInfo {
        name: "toy".into(),
        label_words: words.iter().map(|w| w.to_string()).collect(),
        label_token_ids: ids.collect(),
    }
}

fn batch(model: &Model) -> Tensors {
    let texts = [
        "The cat sat on the mat. question: Is the cat on the mat? Yes or No? answer:",
        "A dog is running. question: Is the dog asleep? Yes or No? answer:",
    ];
    let b = model.tokenizer.encode_batch(&texts, Padding::Right, Device::Cpu).unwrap();
    Tensors::new()
        .with("input_ids", b.input_ids)
        .with("attention_mask", b.attention_mask)
        .with("labels", Tensor::from_slice(&[0i64, 1]))
}

fn spec(name: &str) -> MethodSpec {
    MethodSpec::named(name)
}

#[test]
fn scaffolded_plugins_load_and_train_on_the_embedded_model() {
    let model = Model::embedded_random(LoadOptions::default()).unwrap();
    let before: Vec<(String, Tensor)> = model.vs.variables().into_iter().map(|(n, t)| (n, t.copy())).collect();
    let registry = registry();
    let mut run = MethodRun::new(&model, &registry, &spec("myce"), &[spec("myscale")], task(&model), 0).unwrap();
    run.set_train(false).unwrap();

    // Only the adapter's vectors train: one [ffn_dim] per layer.
    let trainable = run.trainable();
    assert_eq!(trainable.len(), 4);
    assert!(trainable.iter().all(|(name, t)| name.starts_with("myscale.model.decoder.layers.") && t.size() == [256]));

    let mut losses = Vec::new();
    for _ in 0..20 {
        let (loss, _) = run.loss(batch(&model)).unwrap();
        losses.push(loss.double_value(&[]));
        loss.backward();
        tch::no_grad(|| {
            for (_, t) in &trainable {
                let mut t = t.shallow_clone();
                // Sign descent: the random tiny model's gradients are small but consistent.
                let _ = t.f_sub_(&(t.grad().sign() * 0.1)).unwrap();
                let _ = t.grad().zero_();
            }
        });
    }
    common::numerics("plugins.scaffold.loss_fraction", losses[19] / losses[0], "<0.5");
    assert!(losses[19] < 0.5 * losses[0], "loss should fall: {losses:?}");

    // The frozen base is bit-identical.
    for (name, old) in before {
        assert!(model.vs.variables()[&name].equal(&old), "{name} changed");
    }
    // Predictions (next-token logits) rank the trained label words first.
    let logits = run.predict(batch(&model)).unwrap();
    let words = Tensor::from_slice(&task(&model).label_token_ids);
    assert_eq!(Vec::<i64>::try_from(logits.index_select(1, &words).argmax(1, false)).unwrap(), vec![0, 1]);
}

#[test]
fn plugin_faults_become_errors_naming_method_and_call() {
    let model = Model::embedded_random(LoadOptions::default()).unwrap();
    let registry = registry();

    let err = MethodRun::new(&model, &registry, &spec("myce"), &[spec("fault_panic_at_new")], task(&model), 0)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("fault_panic_at_new") && err.contains("`new`") && err.contains("deliberate panic at load"),
        "{err}"
    );

    let mut run =
        MethodRun::new(&model, &registry, &spec("myce"), &[spec("fault_panic_in_hook")], task(&model), 0).unwrap();
    let err = run.loss(batch(&model)).unwrap_err().to_string();
    assert!(
        err.contains("fault_panic_in_hook")
            && err.contains("model.decoder.layers.0.self_attn.q_proj")
            && err.contains("deliberate panic in the hook"),
        "{err}"
    );

    let mut run =
        MethodRun::new(&model, &registry, &spec("myce"), &[spec("fault_torch_error")], task(&model), 0).unwrap();
    let err = run.loss(batch(&model)).unwrap_err().to_string();
    assert!(err.contains("fault_torch_error") && err.contains("fc1") && err.contains("panicked"), "{err}");

    let mut run = MethodRun::new(&model, &registry, &spec("fault_panic_in_loss"), &[], task(&model), 0).unwrap();
    let err = run.loss(batch(&model)).unwrap_err().to_string();
    assert!(
        err.contains("fault_panic_in_loss") && err.contains("`loss`") && err.contains("deliberate panic in loss"),
        "{err}"
    );

    // A panic while declaring sites or training inputs refuses the method, naming the call:
    // no silent "no hooks" or "labelled inputs" in its place.
    for (adapters, objective, call) in [
        (vec![spec("fault_panic_in_sites")], "myce", "sites"),
        (vec![], "fault_panic_in_training_inputs", "training_inputs"),
    ] {
        let err = MethodRun::new(&model, &registry, &spec(objective), &adapters, task(&model), 0).err().unwrap();
        let err = err.to_string();
        assert!(err.contains(&format!("`{call}`")) && err.contains(&format!("deliberate panic in {call}")), "{err}");
    }

    // Unknown hyperparameters are refused with the valid ones listed.
    let bad = MethodSpec { name: "myscale".into(), config: serde_json::json!({"layer": 2}) };
    let err = MethodRun::new(&model, &registry, &spec("myce"), &[bad], task(&model), 0).err().unwrap().to_string();
    assert!(err.contains("unknown hyperparameter `layer`") && err.contains("layers"), "{err}");

    // The host is still fine: the model runs.
    let b = batch(&model);
    let input = ForwardInput {
        input_ids: Some(b.input_ids().unwrap()),
        attention_mask: Some(b.attention_mask().unwrap()),
        ..Default::default()
    };
    assert!(model.net.forward(input).is_ok());
}

#[test]
fn cli_lists_refused_libraries_with_reasons_and_installs_verified_ones() {
    let out = ftlab(&["plugins", "list", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let status_of = |lib: &str| {
        rows.iter()
            .find(|r| r["library"].as_str().unwrap().contains(lib))
            .map(|r| r["status"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert!(status_of("libftlab_fixture_other_sdk").contains("ftlab-sdk 0.0.1"));
    assert!(status_of("libftlab_fixture_twin").contains("already declared"));
    assert_eq!(status_of("libftlab_fixture_faulty"), "ok");

    let home = tempfile::tempdir().unwrap();
    let lib = scaffolded().join(format!("libmyscale.{}", std::env::consts::DLL_EXTENSION));
    let install = Command::new(env!("CARGO_BIN_EXE_ftlab"))
        .args(["plugins", "install", lib.to_str().unwrap()])
        .env("XDG_DATA_HOME", home.path())
        .output()
        .unwrap();
    assert!(install.status.success(), "{}", String::from_utf8_lossy(&install.stderr));
    assert!(home.path().join("ftlab/plugins/libmyscale.so").is_file());
    let info = Command::new(env!("CARGO_BIN_EXE_ftlab"))
        .args(["plugins", "info", "myscale"])
        .env("XDG_DATA_HOME", home.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.status.success() && text.contains("adapter") && text.contains("layers") && text.contains("integer"),
        "{text}"
    );

    // Not a plugin: refused, nothing installed.
    let junk = home.path().join("libjunk.so");
    std::fs::write(&junk, b"junk").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ftlab"))
        .args(["plugins", "install", junk.to_str().unwrap()])
        .env("XDG_DATA_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!home.path().join("ftlab/plugins/libjunk.so").exists());
}

/// A scaffolded crate's own `cargo test` runs `ftlab plugins check` on it (its template's
/// `tests/check.rs`), and both scaffolds pass.
#[test]
fn scaffolded_crates_pass_their_own_check_test() {
    scaffolded();
    for name in ["myce", "myscale"] {
        let out = Command::new(env!("CARGO"))
            .args(["test", "--quiet", "--test", "check"])
            .current_dir(scaffold_root().join(name))
            .env("CARGO_TARGET_DIR", scaffold_target())
            .env("FTLAB", env!("CARGO_BIN_EXE_ftlab"))
            .output()
            .unwrap();
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && report.contains("1 passed"), "{name}: {report}");
    }
}

/// The scaffolded crates work with `ftlab run` as any method does, found via $FTLAB_PLUGIN_PATH.
#[test]
fn scaffolded_plugins_run_from_the_cli() {
    let out = tempfile::tempdir().unwrap();
    let result = Command::new(env!("CARGO_BIN_EXE_ftlab"))
        .args(["run", "--plugin", "myce", "--adapter", "myscale", "--shots", "16", "--json"])
        .args(["--set", "train.epochs=2", "--set", "eval.max_examples=20", "--out", out.path().to_str().unwrap()])
        .env("FTLAB_PLUGIN_PATH", scaffolded())
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let record: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(record["status"], "completed");
    let methods: Vec<&str> =
        record["methods"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(methods, ["myce", "myscale"]);
    assert!(record["methods"][1]["library"].as_str().unwrap().starts_with(scaffolded().to_str().unwrap()));
    // Only the adapter's four scaling vectors of 256 train.
    assert_eq!(record["trainable_parameters"], 4 * 256);
}

/// Shared libraries that crash whoever opens them — a constructor that aborts, one that calls a
/// missing symbol, a forged abi_stable header — are refused with the reason when probed in a
/// child process; every command goes on, and the verdicts are cached.
#[test]
fn libraries_that_crash_when_loaded_are_refused_and_the_host_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (plugins, cache, data) = (dir.path().join("plugins"), dir.path().join("cache"), dir.path().join("data"));
    std::fs::create_dir_all(&plugins).unwrap();
    let sources = [
        ("abort", "#include <stdlib.h>\n__attribute__((constructor)) static void boom(void) { abort(); }\n"),
        (
            "undefined",
            "extern void ftlab_no_such_function(void);\n\
             __attribute__((constructor)) static void call(void) { ftlab_no_such_function(); }\n",
        ),
        (
            "forged",
            "struct header { char magic[32]; unsigned int major, minor; void *junk[8]; };\n\
             const struct header _1as_0lib_1header_0root_bmodule_bloader = {\n\
             \"abi stable library for Rust     \", 0, 11, {(void *)0x10, (void *)0x10, (void *)0x10, (void *)0x10}};\n",
        ),
    ];
    for (name, source) in sources {
        let c = dir.path().join(format!("{name}.c"));
        std::fs::write(&c, source).unwrap();
        let library = plugins.join(format!("{DLL_PREFIX}{name}{DLL_SUFFIX}"));
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let status = Command::new(cc).args(["-shared", "-fPIC", "-o"]).arg(&library).arg(&c).status().unwrap();
        assert!(status.success(), "compiling {name}.c");
    }
    let ftlab = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ftlab"))
            .args(args)
            .env("FTLAB_PLUGIN_PATH", &plugins)
            .env("XDG_CACHE_HOME", &cache)
            .env("XDG_DATA_HOME", &data)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    for round in ["probed", "cached"] {
        let list = ftlab(&["plugins", "list", "--json"]);
        assert!(list.status.success(), "{round}: {}", String::from_utf8_lossy(&list.stderr));
        let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        let reason = |name: &str| {
            let row = rows.as_array().unwrap().iter().find(|r| r["library"].as_str().unwrap().contains(name));
            row.map(|r| r["status"].as_str().unwrap_or_default().to_string()).unwrap_or_default()
        };
        assert!(reason("abort").contains("SIGABRT"), "{round}: {rows}");
        assert!(reason("undefined").contains("ftlab_no_such_function"), "{round}: {rows}");
        assert!(reason("forged").contains("SIGSEGV") || reason("forged").contains("incompatible"), "{round}: {rows}");
    }
    assert!(cache.join("ftlab/plugin-probes.json").is_file());
    let out = dir.path().join("runs");
    let run =
        ftlab(&["run", "--plugin", "pbft", "--shots", "8", "--set", "train.epochs=1", "--out", out.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let library = plugins.join(format!("{DLL_PREFIX}abort{DLL_SUFFIX}"));
    let install = ftlab(&["plugins", "install", library.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&install.stderr);
    assert!(install.status.code() == Some(1) && stderr.contains("SIGABRT"), "{stderr}");
}

/// Every built-in method has the standard properties `ftlab plugins check` verifies (loss falls,
/// frozen parameters untouched, export → import and merge exact), and the command reports them.
#[test]
fn every_built_in_method_passes_the_standard_checks() {
    let _serial = common::serial();
    let built_in = common::BUILT_IN;
    let registry = common::registry(&built_in);
    let mut applicable = 0;
    for name in built_in {
        // A soft prompt learns at prompt tuning's usual rate.
        let lr = if name == "prompt_tuning" { 3e-1 } else { 1e-2 };
        // The language-model objective trains on documents (the embedded corpus).
        let task = if name == "lm" { "text" } else { "synthetic-nli" }.to_string();
        // CPT's default ball (radius 0.1·sqrt(width/2048), 0.018 on the embedded model) moves the
        // random model's loss by 0.5% in 10 epochs; a ten times wider one shows the descent.
        let config = match name {
            "cpt" => serde_json::json!({ "epsilon": 1.0, "format_epsilon": 1.0 }),
            // LIFT redraws its masks after every step: the checks then cover moved masks, moved
            // moments and the frozen updates of entries that left a mask.
            "lift" => serde_json::json!({ "refresh_every": 1 }),
            _ => serde_json::json!({}),
        };
        let options = ftlab_core::methods::check::CheckOptions { lr, task, config, ..Default::default() };
        let objective = MethodSpec::named("pbft");
        let checks = ftlab_core::methods::check::check_method(&registry, name, &objective, &options).unwrap();
        for check in &checks {
            eprintln!("{name}: {} — {:?}: {}", check.property, check.passed, check.detail);
            assert_ne!(check.passed, Some(false), "{name}: {} — {}", check.property, check.detail);
            applicable += usize::from(check.passed.is_some());
        }
    }
    assert!(applicable >= 20, "{applicable} checks applied");
    let out = ftlab(&["plugins", "check", "lora"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.matches("pass").count() == 4, "{stdout}");
}
