//! End-to-end tests of the `ftlab` binary: what a user types, what they get back, and the
//! errors bad input produces (a message naming the file or key, a non-zero exit, no panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tch::{Kind, Tensor};

fn ftlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftlab"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("the ftlab binary runs")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name)
}

/// Runs ftlab expecting failure; returns stderr, checked for a clean error (no panic).
fn fails(args: &[&str]) -> String {
    let out = ftlab(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "ftlab {args:?} should fail with exit 1; stderr: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "ftlab {args:?} panicked: {stderr}");
    stderr
}

/// A copy of a fixture model folder that a test may damage.
fn model_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

#[test]
fn model_info_reports_parameters_and_memory() {
    let out = ftlab(&["model", "info", "tiny-opt", "--json"]);
    assert!(out.status.success());
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = info["num_parameters"].as_i64().unwrap();
    // 4 layers of width 64 (ffn 256), 1024-token vocab, 1026 positions, final layer norm.
    let layer = 4 * (64 * 64 + 64) + (64 * 256 + 256) + (256 * 64 + 64) + 2 * 2 * 64;
    assert_eq!(n, 4 * layer + 1024 * 64 + 1026 * 64 + 2 * 64);
    assert_eq!(info["weight_bytes"]["fp32"].as_i64(), Some(4 * n));
    assert_eq!(info["weight_bytes"]["bf16"].as_i64(), Some(2 * n));

    let out = ftlab(&["model", "info", fixture("opt-post-ln").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("post-LN, project_in/out"), "{text}");
}

/// `model forward --input` reproduces HF's logits from outside the library.
#[test]
fn model_forward_writes_logits_matching_transformers() {
    let reference = Tensor::read_safetensors(fixture("opt-post-ln").join("parity.safetensors")).unwrap();
    let get = |name: &str| reference.iter().find(|(n, _)| n == name).unwrap().1.shallow_clone();
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    Tensor::write_safetensors(
        &[("input_ids", get("input_ids_left")), ("attention_mask", get("attention_mask_left"))],
        &input,
    )
    .unwrap();
    let model = fixture("opt-post-ln");
    let out = ftlab(&[
        "model",
        "forward",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        output.to_str().unwrap(),
        "--weights",
        "bin",
        "--device",
        "cpu",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written = Tensor::read_safetensors(&output).unwrap();
    let logits = &written.iter().find(|(n, _)| n == "logits").unwrap().1;
    assert_eq!(logits.kind(), Kind::Float);
    let mask = get("attention_mask_left").to_kind(Kind::Bool).unsqueeze(-1).expand_as(logits);
    let expected = get("logits_left").masked_select(&mask);
    let err = (logits.masked_select(&mask) - &expected).abs().max().double_value(&[])
        / expected.abs().max().double_value(&[]);
    assert!(err < 1e-4, "relative error {err:e}");
}

#[test]
fn model_forward_on_text_tokenizes_with_bos() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.safetensors");
    let out = ftlab(&[
        "model",
        "forward",
        "tiny-opt",
        "--text",
        "The cat sat",
        "--text",
        "A dog",
        "--out",
        output.to_str().unwrap(),
        "--dtype",
        "bf16",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written = Tensor::read_safetensors(&output).unwrap();
    let ids = &written.iter().find(|(n, _)| n == "input_ids").unwrap().1;
    let logits = &written.iter().find(|(n, _)| n == "logits").unwrap().1;
    assert_eq!(ids.int64_value(&[0, 0]), 2, "</s> first");
    assert_eq!(logits.size(), [2, ids.size()[1], 1024]);
    assert!(bool::try_from(logits.isfinite().all()).unwrap());
}

/// `model save` writes a folder that loads back to the same model: equal logits, equal ids.
#[test]
fn model_save_round_trips_the_embedded_model() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("tiny");
    let out = ftlab(&["model", "save", "tiny-opt", folder.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let forward = |model: &str, name: &str| {
        let output = dir.path().join(name);
        let text = ["model", "forward", model, "--text", "The cat sat on the mat.", "--text", "No"];
        let out = ftlab(&[&text[..], &["--out", output.to_str().unwrap()]].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Tensor::read_safetensors(&output).unwrap()
    };
    let (embedded, saved) = (forward("tiny-opt", "a.safetensors"), forward(folder.to_str().unwrap(), "b.safetensors"));
    assert_eq!(embedded.len(), saved.len());
    for (name, a) in &embedded {
        let b = &saved.iter().find(|(n, _)| n == name).unwrap().1;
        assert!(a.equal(b), "`{name}` differs after save and load");
    }
}

/// A folder as `save_pretrained` writes it (no tokenizer files) runs on token ids; text needs
/// `--tokenizer`, and without one the error names the folder, the files and the flag.
#[test]
fn a_model_folder_without_a_tokenizer_runs_on_ids_and_borrows_one_for_text() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("weights-only");
    assert!(ftlab(&["model", "save", "tiny-opt", folder.to_str().unwrap()]).status.success());
    std::fs::remove_file(folder.join("tokenizer.json")).unwrap();
    let folder = folder.to_str().unwrap();
    let run = |args: &[&str], name: &str| {
        let output = dir.path().join(name);
        let out = ftlab(&[args, &["--out", output.to_str().unwrap()]].concat());
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Tensor::read_safetensors(&output).unwrap().into_iter().find(|(n, _)| n == "logits").unwrap().1
    };
    let text = ["model", "forward", "tiny-opt", "--text", "The cat sat on the mat."];
    let embedded = run(&text, "a.safetensors");
    // Token ids from a file, through the folder that has no tokenizer and through the original.
    let ids = Tensor::from_slice(&[2i64, 100, 200, 300, 50, 7]).view([1, -1]);
    let input = dir.path().join("ids.safetensors");
    Tensor::write_safetensors(&[("input_ids", &ids)], &input).unwrap();
    let by_ids = run(&["model", "forward", folder, "--input", input.to_str().unwrap()], "b.safetensors");
    let by_ids_embedded = run(&["model", "forward", "tiny-opt", "--input", input.to_str().unwrap()], "c.safetensors");
    assert!(by_ids.equal(&by_ids_embedded), "the folder's weights are the embedded model's");
    let borrowed = run(
        &["model", "forward", folder, "--tokenizer", "tiny-opt", "--text", "The cat sat on the mat."],
        "d.safetensors",
    );
    assert!(borrowed.equal(&embedded), "--tokenizer supplies the embedded tokenizer");
    let out = dir.path().join("e.safetensors");
    let err = fails(&["model", "forward", folder, "--text", "hi", "--out", out.to_str().unwrap()]);
    assert!(err.contains("weights-only") && err.contains("tokenizer.json") && err.contains("--tokenizer"), "{err}");
}

#[test]
fn bad_model_folders_name_the_file_and_key() {
    let dir = model_copy("opt-pre-ln");
    let path = dir.path().to_str().unwrap().to_string();
    let forward = |extra: &[&str]| {
        let out = dir.path().join("o.safetensors");
        let mut args = vec!["model", "forward", &path, "--text", "hi", "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        fails(&args)
    };

    // Corrupt weights: named file.
    std::fs::write(dir.path().join("model.safetensors"), b"not safetensors").unwrap();
    let err = forward(&[]);
    assert!(err.contains("model.safetensors"), "{err}");
    let err = {
        std::fs::write(dir.path().join("pytorch_model.bin"), b"PK garbage").unwrap();
        forward(&["--weights", "bin"])
    };
    assert!(err.contains("pytorch_model.bin"), "{err}");
    std::fs::copy(fixture("opt-pre-ln/model.safetensors"), dir.path().join("model.safetensors")).unwrap();

    // A config that disagrees with the weights: the tensor and both shapes are named.
    let config = std::fs::read_to_string(fixture("opt-pre-ln/config.json")).unwrap();
    std::fs::write(dir.path().join("config.json"), config.replace("\"ffn_dim\": 64", "\"ffn_dim\": 48")).unwrap();
    let err = forward(&[]);
    assert!(
        err.contains("model.safetensors")
            && err.contains("has shape")
            && err.contains("layers.0.fc1.bias")
            && err.contains("[48]"),
        "{err}"
    );

    // Unknown model type: the key is named.
    std::fs::write(dir.path().join("config.json"), config.replace("\"opt\"", "\"llama\"")).unwrap();
    let err = forward(&[]);
    assert!(err.contains("config.json") && err.contains("model_type") && err.contains("llama"), "{err}");

    // Missing config and missing tokenizer files.
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = forward(&[]);
    assert!(err.contains("config.json"), "{err}");
    std::fs::write(dir.path().join("config.json"), &config).unwrap();
    std::fs::remove_file(dir.path().join("merges.txt")).unwrap();
    let err = forward(&[]);
    assert!(err.contains("merges.txt"), "{err}");
}

#[test]
fn inconsistent_inputs_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    let ids = Tensor::from_slice(&[2i64, 10, 11, 12]).view([1, 4]);
    let mask = Tensor::from_slice(&[1i64, 1, 1]).view([1, 3]);
    Tensor::write_safetensors(&[("input_ids", ids.shallow_clone()), ("attention_mask", mask)], &input).unwrap();
    let err =
        fails(&["model", "forward", "tiny-opt", "--input", input.to_str().unwrap(), "--out", output.to_str().unwrap()]);
    assert!(err.contains("attention_mask") && err.contains("in.safetensors"), "{err}");

    Tensor::write_safetensors(&[("input_ids", ids + 5000)], &input).unwrap();
    let err =
        fails(&["model", "forward", "tiny-opt", "--input", input.to_str().unwrap(), "--out", output.to_str().unwrap()]);
    assert!(err.contains("token ids must be in [0, 1024)"), "{err}");

    Tensor::write_safetensors(&[("ids", Tensor::from_slice(&[1i64]))], &input).unwrap();
    let err =
        fails(&["model", "forward", "tiny-opt", "--input", input.to_str().unwrap(), "--out", output.to_str().unwrap()]);
    assert!(err.contains("no `input_ids`") && err.contains("ids"), "{err}");
    assert!(!output.exists(), "nothing is written on error");
}

#[test]
fn uncached_hub_model_offline_says_what_to_fetch() {
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ftlab"))
        .args(["model", "info", "facebook/opt-125m"])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", cache.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("facebook/opt-125m")
            && stderr.contains("config.json")
            && stderr.contains(&cache.path().display().to_string()),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2_and_help_explains() {
    let out = ftlab(&["model", "forward", "tiny-opt"]);
    assert_eq!(out.status.code(), Some(2));
    let out = ftlab(&["model", "forward", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && help.contains("--dtype") && help.contains("safetensors"), "{help}");
}

/// Output that cannot be written (a full disk) is an error with the reason, not a panic; a
/// reader that goes away early (`| head`) ends the command quietly.
#[test]
fn unwritable_output_is_an_error_and_a_closed_pipe_ends_quietly() {
    if Path::new("/dev/full").exists() {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ftlab")).args(["data", "list"]).stdout(full).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("writing to standard output") && !stderr.contains("panicked"), "{stderr}");
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_ftlab"))
        .args(["data", "list"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before the first line
    let out = child.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// An error is said once: the library's messages already name their cause.
#[test]
fn errors_are_printed_once() {
    let stderr = fails(&["run", "--config", "/no/such/experiment.toml"]);
    assert_eq!(stderr.matches("no such experiment file").count(), 1, "{stderr}");
    let stderr = fails(&["model", "info", "/no/such/model"]);
    assert_eq!(stderr.matches("no such folder").count(), 1, "{stderr}");
}

/// `FTLAB_` variables that name no setting (`FTLAB_HOME`) are not configuration.
#[test]
fn stray_ftlab_variables_are_not_settings() {
    let dir = tempfile::tempdir().unwrap();
    let grid = dir.path().join("grid.toml");
    std::fs::write(&grid, "[grid]\nshots = [4, 8]\n").unwrap();
    let dry_run = |vars: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ftlab"));
        command.args(["sweep", grid.to_str().unwrap(), "--dry-run", "--json"]).envs(vars.iter().copied());
        command.output().unwrap()
    };
    let out = dry_run(&[("FTLAB_HOME", "/x")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = dry_run(&[("FTLAB_TRAIN__LRR", "1")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && stderr.contains("FTLAB_TRAIN__LRR"), "{stderr}");
}
