//! End-to-end tests of `ftlab data list|show|sample`: what a user types, what they get back,
//! and the errors bad data produces (naming the file, row and column; exit 1; no panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn ftlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftlab"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", "/nonexistent-ftlab-test-cache")
        .output()
        .expect("the ftlab binary runs")
}

fn succeeds(args: &[&str]) -> String {
    let out = ftlab(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ftlab {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&succeeds(args)).unwrap()
}

/// Runs ftlab expecting failure; returns stderr, checked for a clean error (no panic).
fn fails(args: &[&str]) -> String {
    let out = ftlab(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "ftlab {args:?} should fail with exit 1; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "ftlab {args:?} panicked: {stderr}");
    stderr
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn list_shows_every_task_with_its_eval_sets() {
    let tasks = json(&["data", "list", "--json"]);
    let find = |name: &str| tasks.as_array().unwrap().iter().find(|t| t["name"] == name).cloned().unwrap();
    assert_eq!(find("mnli")["eval_split"], "validation_matched");
    assert_eq!(find("mnli")["ood"], serde_json::json!(["hans", "mnli-mm"]));
    assert_eq!(find("qqp")["ood"], serde_json::json!(["paws-qqp"]));
    assert_eq!(find("hans")["train_split"], Value::Null);
    let text = succeeds(&["data", "list"]);
    assert!(text.contains("synthetic-nli") && text.contains("cola-ood"), "{text}");
}

#[test]
fn show_reports_sizes_balance_and_token_lengths() {
    let report = json(&["data", "show", "paws-qqp", "--json"]);
    let split = &report["splits"][0];
    assert_eq!(split["rows"], 677);
    assert_eq!(split["labels"][0]["count"], 486);
    assert_eq!(split["labels"][1]["count"], 191);
    let tokens = &split["tokens"];
    assert!(tokens["p50"].as_u64() <= tokens["p90"].as_u64() && tokens["p99"].as_u64() <= tokens["max"].as_u64());
    let subsets = report["eval_subsets"].as_array().unwrap();
    assert_eq!(subsets[0], serde_json::json!(["paws-qqp-not_duplicate", 486]));

    let report = json(&["data", "show", "synthetic-nli", "--json"]);
    let rows: Vec<u64> = report["splits"].as_array().unwrap().iter().map(|s| s["rows"].as_u64().unwrap()).collect();
    assert_eq!(rows, [2000, 500]);
    let text = succeeds(&["data", "show", "cola-ood"]);
    assert!(text.contains("acceptable 354 (68.6%)") && text.contains("unacceptable 162 (31.4%)"), "{text}");
}

#[test]
fn sample_prints_numpy_indices_and_the_prompts_a_run_uses() {
    let report = json(&["data", "sample", "synthetic-nli", "--k", "4", "--data-seed", "0", "--json"]);
    // np.random.seed(0); np.random.choice(2000, 4, replace=False)
    let positions: Vec<u64> =
        report["train"].as_array().unwrap().iter().map(|r| r["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, [405, 1190, 1132, 731]);
    let first = &report["train"][0];
    assert!(first["query"].as_str().unwrap().ends_with(" ?"), "{first}");
    assert_eq!(first["label_word"], if positions[0] % 2 == 0 { " Yes" } else { " No" });
    let icl = report["icl_positions"].as_array().unwrap();
    assert_eq!(icl.len(), 4);
    // llmft's separator: a backslash and an `n`, twice (what its bash scripts delivered).
    let context = report["icl_context"].as_str().unwrap();
    assert_eq!(context.matches("\\n\\n").count(), 4);
    assert_eq!(context.matches(" ? Yes\\n\\n").count(), 2, "balanced: {context}");
    let readable =
        json(&["data", "sample", "synthetic-nli", "--k", "4", "--data-seed", "0", "--compat", "clean", "--json"]);
    assert_eq!((report["compat"].as_str(), readable["compat"].as_str()), (Some("llmft"), Some("clean")));
    let context = readable["icl_context"].as_str().unwrap();
    assert_eq!(context.matches(" ? Yes\n\n").count(), 2, "real newlines: {context}");

    let text = succeeds(&["data", "sample", "synthetic-nli", "--k", "3", "--data-seed", "1", "--style", "gpt3"]);
    assert!(text.contains("question:") && text.contains("answer:"), "{text}");
    assert!(text.contains("no in-context sample") && text.contains("divisible"), "{text}");
    let err = fails(&["data", "sample", "hans", "--k", "2", "--data-seed", "0"]);
    assert!(err.contains("eval-only"), "{err}");
}

#[test]
fn users_files_load_through_a_column_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "mine.csv",
        "s1,s2,gold\nA cat sleeps.,An animal rests.,entailment\nA dog runs.,Nothing moves.,contradiction\nA man eats.,A man sleeps.,2\n",
    );
    let columns = "premise=s1,hypothesis=s2,label=gold";
    let report = json(&["data", "show", "mnli", "--file", file.to_str().unwrap(), "--columns", columns, "--json"]);
    assert_eq!(report["splits"][0]["rows"], 3);
    assert_eq!(report["splits"][0]["labels"][1]["count"], 2);
    let sample = json(&[
        "data",
        "sample",
        "mnli",
        "--file",
        file.to_str().unwrap(),
        "--columns",
        columns,
        "--k",
        "2",
        "--data-seed",
        "0",
        "--json",
    ]);
    assert_eq!(sample["train"].as_array().unwrap().len(), 2);
    assert_eq!(sample["train"][0]["query"].as_str().unwrap().matches(" ?").count(), 1);
}

#[test]
fn bad_files_are_errors_naming_file_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let show = |path: &Path, columns: &str| {
        fails(&["data", "show", "rte", "--file", path.to_str().unwrap(), "--columns", columns])
    };
    let missing = write(dir.path(), "missing.tsv", "premise\thypothesis\nA\tB\n");
    let err = show(&missing, "premise=premise");
    assert!(err.contains("missing.tsv: column `label`: no such column"), "{err}");
    // A label none of the task's leaves its row out, counted; a file of nothing else is an error.
    let unknown = write(dir.path(), "unknown.tsv", "premise\thypothesis\tlabel\nA\tB\t0\nC\tD\tmaybe\n");
    let shown = succeeds(&["data", "show", "rte", "--file", unknown.to_str().unwrap(), "--columns", "label=label"]);
    assert!(shown.contains("1  rows left out: label `maybe` is none of the task's"), "{shown}");
    let unknown = write(dir.path(), "unknown.tsv", "premise\thypothesis\tlabel\nA\tB\tperhaps\nC\tD\tmaybe\n");
    let err = show(&unknown, "label=label");
    assert!(err.contains("unknown.tsv: row 1, column `label`: unknown label `perhaps`"), "{err}");
    let empty = write(dir.path(), "empty.tsv", "");
    assert!(show(&empty, "label=label").contains("empty.tsv: the file is empty"));
    let ragged = write(dir.path(), "ragged.tsv", "premise\thypothesis\tlabel\nA\tB\t0\nC\tD\n");
    let err = show(&ragged, "label=label");
    assert!(err.contains("ragged.tsv: row 2: line 3 has 2 fields but the header has 3"), "{err}");
    let err = fails(&["data", "show", "rte", "--file", ragged.to_str().unwrap(), "--columns", "premise=a,question=b"]);
    assert!(err.contains("unknown key `question`"), "{err}");
    let latin1: [(&str, &[u8], &str); 3] = [
        ("latin1.csv", b"premise,hypothesis,label\nA,B,0\ncaf\xe9,D,1\n", "line 3, byte 4"),
        ("latin1.tsv", b"premise\thypothesis\tlabel\nA\tB\t0\ncaf\xe9\tD\t1\n", "line 3, byte 4"),
        (
            "latin1.jsonl",
            b"{\"premise\":\"A\",\"hypothesis\":\"B\",\"label\":0}\n{\"premise\":\"caf\xe9\"}\n",
            "line 2, byte 16",
        ),
    ];
    for (name, bytes, at) in latin1 {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = show(&path, "label=label");
        assert!(err.contains(&format!("{name}: {at}: not UTF-8")), "{err}");
    }
}

#[test]
fn hub_tasks_offline_and_uncached_say_what_to_fetch() {
    let err = fails(&["data", "show", "rte"]);
    assert!(err.contains("nyu-mll/glue") && err.contains("rte/train-00000-of-00001.parquet"), "{err}");
    assert!(err.contains("/nonexistent-ftlab-test-cache") && err.contains("HF_HUB_OFFLINE"), "{err}");
    let err = fails(&["data", "show", "no-such-task"]);
    assert!(err.contains("unknown task `no-such-task`") && err.contains("mnli"), "{err}");
}

/// A row of megabytes is counted as over the window without tokenizing it whole, and the other
/// rows are measured as usual.
#[test]
fn huge_rows_are_counted_not_tokenized_whole() {
    let dir = tempfile::tempdir().unwrap();
    let huge = "The doctor saw the lawyer near the library. ".repeat(100_000);
    let text = format!(
        "premise\thypothesis\tlabel\n{huge}\tThe judge slept.\tentailment\nA man walks.\tA person moves.\tentailment\n"
    );
    let file = write(dir.path(), "huge.tsv", &text);
    let report = json(&["data", "show", "rte", "--file", file.to_str().unwrap(), "--json"]);
    let split = &report["splits"][0];
    assert_eq!((split["rows"].as_u64(), split["over_window"].as_u64()), (Some(2), Some(1)), "{report}");
    assert!(split["tokens"]["max"].as_u64().unwrap() < 30, "{report}");
}

/// GLUE's TSV files are read as GLUE and llmft read them (`quoting=QUOTE_NONE`): a field that
/// begins with `"` or holds an odd number of quotes is text, and every line is one row.
#[test]
fn glue_tsv_quotes_are_text() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/glue/rte_dev.tsv");
    let columns = "premise=sentence1,hypothesis=sentence2,label=label,id=index";
    let report = json(&["data", "show", "rte", "--file", file.to_str().unwrap(), "--columns", columns, "--json"]);
    assert_eq!(report["splits"][0]["rows"], 5, "{report}");
    let sample = json(&[
        "data",
        "sample",
        "rte",
        "--file",
        file.to_str().unwrap(),
        "--columns",
        columns,
        "--k",
        "5",
        "--data-seed",
        "0",
        "--json",
    ]);
    let text = sample.to_string();
    for quoted in [
        r#"\"Dana Reeve, the widow"#,
        r#"\"I have never seen anything like it,\" said the mayor"#,
        r#"read \"\"closed\"\" and the shop's 12\" pizza"#,
        r#"A man said: \""#,
    ] {
        assert!(text.contains(quoted), "{quoted} not in {text}");
    }
}

/// A user's MNLI file in GLUE's own format goes through the task's semantics, as the hub rows
/// do: neutral dropped, contradiction → 1; GLUE's `-` (no gold label) is left out and counted.
#[test]
fn a_glue_mnli_file_is_binarized_like_the_hub_split() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/glue/mnli_dev_matched.tsv");
    let columns = "premise=sentence1,hypothesis=sentence2,label=gold_label,id=index";
    let args = ["data", "show", "mnli", "--file", file.to_str().unwrap(), "--columns", columns];
    let report = json(&[&args[..], &["--json"]].concat());
    let split = &report["splits"][0];
    assert_eq!(split["rows"], 6, "8 rows, one neutral and one `-` left out: {report}");
    let labels: Vec<(&str, u64)> = split["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["label"].as_str().unwrap(), l["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(labels, [("entailment", 3), ("contradiction", 3)], "{report}");
    assert_eq!(split["unknown_labels"]["-"], 1, "{report}");
    assert!(succeeds(&args).contains("label `-` is none of the task's"));
}

/// `ftlab data episodes`: a deterministic JSONL corpus of few-shot episodes in the synthetic
/// task's in-context strings; with `--first-item-prior 1` every Yes/No document's first item
/// says Yes or True whatever its example.
#[test]
fn episodes_are_a_deterministic_text_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str| {
        let path = dir.path().join(name);
        let args = ["data", "episodes", path.to_str().unwrap(), "--documents", "40", "--demonstrations", "2"];
        let out = ftlab(&[&args[..], &["--reserved", "0", "--first-item-prior", "1"]].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read_to_string(path).unwrap()
    };
    let (a, b) = (write("a.jsonl"), write("b.jsonl"));
    assert_eq!(a, b, "same seed, same corpus");
    let rows: Vec<Value> = a.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 40);
    for row in &rows {
        let text = row["text"].as_str().unwrap();
        let items: Vec<&str> = text.split("\\n\\n").collect();
        assert_eq!(items.len(), 3, "{text}");
        assert!(items[0].ends_with(" ? Yes") || items[0].ends_with(" ? True"), "{text}");
    }
    let bad = ftlab(&["data", "episodes", dir.path().join("c.jsonl").to_str().unwrap(), "--reserved", "2"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("reserved"));
}
