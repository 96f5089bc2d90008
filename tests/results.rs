//! `ftlab sweep` and `ftlab results` end to end on the embedded model and task: a small grid
//! run by two concurrent sweeps into one folder, resumed, tabulated (numbers checked against
//! the records), plotted and exported; and a failing cell listed, flagged and rerun.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn ftlab(args: &[&str]) -> Output {
    command(args).output().unwrap()
}

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ftlab"));
    command.args(args).env("HF_HUB_OFFLINE", "1");
    command
}

fn ok(output: &Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A grid file of the embedded task: one epoch, 16 eval rows per set, no checkpoints.
fn grid(dir: &Path, axes: &str) -> PathBuf {
    let path = dir.join("grid.toml");
    let text = format!(
        "model = \"tiny-opt\"\ntask = \"synthetic-nli\"\nout = \"{}\"\n[train]\nepochs = 1\nlr = 1e-3\n\
         checkpoint = false\n[eval]\nmax_examples = 16\n[grid]\n{axes}",
        dir.join("runs").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn records(out: &Path) -> Vec<serde_json::Value> {
    let mut records = Vec::new();
    for entry in std::fs::read_dir(out).unwrap() {
        let path = entry.unwrap().path().join("record.json");
        if path.is_file() {
            records.push(serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap());
        }
    }
    records
}

fn adapter(record: &serde_json::Value) -> String {
    let names: Vec<&str> =
        record["config"]["adapters"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    if names.is_empty() {
        "full".into()
    } else {
        names.join("+")
    }
}

/// The CSV as header → value maps, one per row.
fn csv_rows(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines.map(|l| header.iter().map(|h| h.to_string()).zip(l.split(',').map(str::to_string)).collect()).collect()
}

fn dry_run(file: &Path) -> Vec<serde_json::Value> {
    serde_json::from_str(&ok(&ftlab(&["sweep", file.to_str().unwrap(), "--dry-run", "--json"]))).unwrap()
}

#[test]
fn a_grid_sweeps_concurrently_resumes_tabulates_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let file = grid(dir.path(), "adapter = [\"full\", \"lora\"]\nshots = [8, 16]\ndata_seed = [0, 1]\n");
    let out = dir.path().join("runs");
    let cells = dry_run(&file);
    assert_eq!(cells.len(), 8);
    assert!(cells.iter().all(|c| c["will_run"] == true && c["state"] == "pending"));

    // Two sweeps at once into one folder: together they run every cell exactly once.
    let sweeps: Vec<_> = (0..2)
        .map(|_| {
            command(&["sweep", file.to_str().unwrap(), "--json"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()
        })
        .map(Result::unwrap)
        .collect();
    let mut completed_by: BTreeMap<String, usize> = BTreeMap::new();
    for sweep in sweeps {
        let output = sweep.wait_with_output().unwrap();
        let reports: Vec<serde_json::Value> = serde_json::from_str(&ok(&output)).unwrap();
        assert_eq!(reports.len(), 8, "each sweep accounts for every cell");
        for r in reports.iter().filter(|r| r["outcome"] == "completed") {
            *completed_by.entry(r["name"].as_str().unwrap().to_string()).or_default() += 1;
        }
        assert!(reports.iter().all(|r| r["outcome"] != "failed"), "{reports:?}");
    }
    assert_eq!(completed_by.len(), 8, "{completed_by:?}");
    assert!(completed_by.values().all(|&n| n == 1), "a cell ran twice: {completed_by:?}");
    let runs = records(&out);
    assert_eq!(runs.len(), 8);
    for record in &runs {
        assert_eq!(record["status"], "completed");
        let metrics =
            std::fs::read_to_string(out.join(record["name"].as_str().unwrap()).join("metrics.jsonl")).unwrap();
        let epochs: Vec<u64> = metrics
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"].as_u64().unwrap())
            .collect();
        assert_eq!(epochs, [0, 1], "one run's epochs, not two runs interleaved");
    }

    // Resume: nothing left to run.
    assert!(dry_run(&file).iter().all(|c| c["will_run"] == false && c["state"] == "completed"));
    let again = ftlab(&["sweep", file.to_str().unwrap(), "--json"]);
    let reports: Vec<serde_json::Value> = serde_json::from_str(&ok(&again)).unwrap();
    assert!(reports.iter().all(|r| r["outcome"] == "skipped"), "{reports:?}");

    // The table's numbers are the mean and sample std over data seeds of the records.
    let table = ok(&ftlab(&[
        "results",
        "table",
        out.to_str().unwrap(),
        "--rows",
        "adapter",
        "--cols",
        "shots",
        "--metric",
        "acc_in,acc_ood",
        "--agg",
        "mean,std",
        "--format",
        "csv",
    ]));
    let rows = csv_rows(&table);
    assert_eq!(rows.iter().map(|r| r["adapter"].as_str()).collect::<Vec<_>>(), ["full", "lora"]);
    let expected_columns = ["mean", "std", "n", "failed"].len() * 2 * 2 + 1;
    assert_eq!(rows[0].len(), expected_columns, "{:?}", rows[0].keys());
    for row in &rows {
        for shots in [8, 16] {
            for metric in ["acc_in", "acc_ood"] {
                let values: Vec<f64> = runs
                    .iter()
                    .filter(|r| adapter(r) == row["adapter"] && r["config"]["shots"] == shots)
                    .map(|r| r["last"][metric].as_f64().unwrap())
                    .collect();
                assert_eq!(values.len(), 2);
                let mean = values.iter().sum::<f64>() / 2.0;
                let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 1.0).sqrt();
                let cell = |agg: &str| row[&format!("shots={shots} {metric} {agg}")].clone();
                assert!((cell("mean").parse::<f64>().unwrap() - mean).abs() < 1e-12, "{row:?}");
                assert!((cell("std").parse::<f64>().unwrap() - std).abs() < 1e-12, "{row:?}");
                assert_eq!((cell("n"), cell("failed")), ("2".to_string(), "0".to_string()));
            }
        }
    }
    let markdown =
        ok(&ftlab(&["results", "table", out.to_str().unwrap(), "--rows", "method,adapter", "--cols", "shots"]));
    assert!(markdown.contains("| method | adapter | shots=8 acc_in |") && markdown.contains("(n=2)"), "{markdown}");
    assert!(markdown.contains("**"), "the best cell of each column is bold: {markdown}");

    // Plots: a PNG of the requested size and an SVG, for each kind.
    for kind in ["scatter", "shots", "cost", "frontier"] {
        let stem = dir.path().join(format!("plots/{kind}"));
        ok(&ftlab(&[
            "results",
            "plot",
            out.to_str().unwrap(),
            "--kind",
            kind,
            "--out",
            stem.to_str().unwrap(),
            "--width",
            "640",
            "--height",
            "480",
        ]));
        let png = std::fs::read(stem.with_extension("png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{kind}");
        assert_eq!(&png[12..16], b"IHDR");
        let size = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
        assert_eq!((size(16), size(20)), (640, 480), "{kind}");
        let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("640"), "{kind}");
        if kind == "frontier" {
            // One point per method and shot count, and the front through the best.
            assert!(svg.contains("Pareto front") && svg.contains("pbft (lora), k=16"), "{svg}");
        }
    }
    let zero =
        ok(&ftlab(&["results", "table", out.to_str().unwrap(), "--rows", "method,adapter", "--zero-shot", "pbft"]));
    assert!(zero.lines().nth(2).is_some_and(|l| l.starts_with("| zero-shot | - |")), "{zero}");

    // Export: one row per run.
    let csv = dir.path().join("all.csv");
    let parquet = dir.path().join("all.parquet");
    ok(&ftlab(&[
        "results",
        "export",
        out.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--parquet",
        parquet.to_str().unwrap(),
    ]));
    let exported = csv_rows(&std::fs::read_to_string(&csv).unwrap());
    assert_eq!(exported.len(), 8);
    assert!(exported.iter().all(|r| r["status"] == "completed" && r.contains_key("peak_rss_bytes")));
    assert_eq!(&std::fs::read(&parquet).unwrap()[..4], b"PAR1");
}

#[test]
fn a_failed_cell_is_listed_flagged_in_tables_and_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let file = grid(dir.path(), "adapter = [\"full\", \"no_such_adapter\"]\nshots = [8]\n");
    let out = dir.path().join("runs");
    let sweep = ftlab(&["sweep", file.to_str().unwrap()]);
    assert_eq!(sweep.status.code(), Some(1), "a failed cell fails the sweep");
    let stderr = String::from_utf8_lossy(&sweep.stderr);
    let bad = "pbft+no_such_adapter_synthetic-nli_tiny-opt_k8_d0_s0";
    assert!(stderr.contains(&format!("failed: {bad}")) && stderr.contains("no_such_adapter"), "{stderr}");

    let table = ok(&ftlab(&["results", "table", out.to_str().unwrap(), "--rows", "adapter", "--format", "csv"]));
    let rows = csv_rows(&table);
    let failed = rows.iter().find(|r| r["adapter"] == "no_such_adapter").expect("the failed run has its row");
    assert_eq!((failed["shots=8 acc_in n"].as_str(), failed["shots=8 acc_in failed"].as_str()), ("0", "1"));
    let full = rows.iter().find(|r| r["adapter"] == "full").unwrap();
    assert_eq!((full["shots=8 acc_in n"].as_str(), full["shots=8 acc_in failed"].as_str()), ("1", "0"));
    let markdown = ok(&ftlab(&["results", "table", out.to_str().unwrap(), "--rows", "adapter"]));
    assert!(markdown.contains("(n=0, 1 failed)") && markdown.contains(bad), "{markdown}");

    // The next sweep reruns the failed cell only.
    let cells = dry_run(&file);
    let state = |name: &str| cells.iter().find(|c| c["name"] == name).unwrap()["state"].clone();
    assert_eq!(state(bad), "failed");
    assert_eq!(state("pbft_synthetic-nli_tiny-opt_k8_d0_s0"), "completed");
    assert_eq!(cells.iter().filter(|c| c["will_run"] == true).count(), 1);

    // A record cut short (a full disk) is named and counted, and the rest still tabulates; the
    // sweep reruns its cell.
    std::fs::write(out.join(bad).join("record.json"), "{ \"name\": \"cut").unwrap();
    let broken = ftlab(&["results", "table", out.to_str().unwrap(), "--rows", "adapter"]);
    let markdown = ok(&broken);
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(stderr.contains(&format!("{bad}/record.json")) && stderr.contains("line 1"), "{stderr}");
    assert!(markdown.contains("| full |") && markdown.contains("1 unreadable record(s)"), "{markdown}");
    let cells = dry_run(&file);
    let state = |name: &str| cells.iter().find(|c| c["name"] == name).unwrap()["state"].clone();
    assert_eq!(state(bad), "failed");
}

/// `exclude` in `[grid]` drops the combinations it names (ICL trains no adapter), and an entry
/// naming no axis value is refused with the file named.
#[test]
fn a_grid_excludes_the_combinations_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let exclude = "exclude = [{ method = \"icl\", adapter = \"lora\" }]\n";
    let file = grid(dir.path(), &format!("method = [\"icl\", \"pbft\"]\nadapter = [\"full\", \"lora\"]\n{exclude}"));
    let cells: Vec<String> = dry_run(&file).iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(cells.len(), 3, "{cells:?}");
    assert!(!cells.iter().any(|c| c.starts_with("icl+lora")), "{cells:?}");
    let file = grid(dir.path(), "method = [\"icl\", \"pbft\"]\nexclude = [{ method = \"lm\" }]\n");
    let out = ftlab(&["sweep", file.to_str().unwrap(), "--dry-run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("grid.toml") && stderr.contains("method=lm"), "{stderr}");
}

/// `--devices cpu --jobs 2` splits the cores between two workers (shown by --dry-run) and each
/// cell records the device and threads it ran with; a GPU this machine lacks is refused.
#[test]
fn a_sweep_pins_its_workers_to_devices() {
    let dir = tempfile::tempdir().unwrap();
    let file = grid(dir.path(), "data_seed = [0, 1]\nshots = [8]\n");
    let path = file.to_str().unwrap();
    let dry = ftlab(&["sweep", path, "--devices", "cpu", "--jobs", "2", "--dry-run"]);
    let cores = std::thread::available_parallelism().unwrap().get();
    let threads = (cores / 2).max(1);
    let expected = format!("workers: cpu ({threads} threads), cpu ({threads} threads)");
    assert!(String::from_utf8_lossy(&dry.stderr).contains(&expected), "{}", String::from_utf8_lossy(&dry.stderr));
    ok(&ftlab(&["sweep", path, "--devices", "cpu", "--jobs", "2"]));
    for record in records(&dir.path().join("runs")) {
        assert_eq!(record["platform"]["device"], "cpu");
        assert_eq!(record["platform"]["threads"], threads as u64, "{}", record["name"]);
    }
    let gpu = ftlab(&["sweep", path, "--devices", "cuda:0", "--dry-run"]);
    let stderr = String::from_utf8_lossy(&gpu.stderr);
    assert!(!gpu.status.success() && stderr.contains("CUDA device"), "{stderr}");
}

/// A grid's `[slurm]` table and per-cell `"slurm.KEY"` overrides become the `#SBATCH` lines of
/// one job array per set of resources (`--dry-run` needs no cluster); `--slurm` flags win.
#[test]
fn slurm_resources_group_cells_into_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let axes = "shots = [8, 16]\ndata_seed = [0, 1]\n[grid.when.\"shots=16\"]\n\"slurm.mem\" = \"2G\"\n";
    let file = grid(dir.path(), axes);
    let text =
        std::fs::read_to_string(&file).unwrap().replace("[grid]", "[slurm]\nmem = \"1G\"\ngres = \"gpu:1\"\n[grid]");
    std::fs::write(&file, text).unwrap();
    let path = file.to_str().unwrap();
    let scripts = ok(&ftlab(&["sweep", path, "--backend", "slurm", "--dry-run", "--slurm", "gres=gpu:2"]));
    let arrays: Vec<&str> = scripts.split("#!/bin/bash").skip(1).collect();
    assert_eq!(arrays.len(), 2, "{scripts}");
    for (mem, cells) in [("1G", "k8_"), ("2G", "k16_")] {
        let array = arrays.iter().find(|a| a.contains(&format!("#SBATCH --mem={mem}\n"))).unwrap();
        assert!(array.contains("#SBATCH --array=0-1\n") && array.contains("#SBATCH --gres=gpu:2\n"), "{array}");
        assert_eq!(array.matches(cells).count(), 2, "{array}");
    }
    let bad = ftlab(&["sweep", path, "--backend", "slurm", "--dry-run", "--slurm", "partitio=gpu"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("partitio"));
}

/// `ftlab bench methods --out DIR` writes its measurements as a record (here on the tiny fixture
/// shape, so that it takes seconds) of every installed method it can train on the batch,
/// and `ftlab results plot --kind methods DIR` draws them;
/// without a record the plot says how to make one.
#[test]
fn the_methods_benchmark_is_a_record_results_plot() {
    let dir = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/opt-pre-ln/config.json");
    let (config, out) = (config.to_str().unwrap(), dir.path().to_str().unwrap());
    let bench =
        ftlab(&["bench", "methods", "--config", config, "--batch", "2", "--seq", "8", "--steps", "2", "--out", out]);
    assert!(bench.status.success(), "{}", String::from_utf8_lossy(&bench.stderr));
    let text = std::fs::read_to_string(dir.path().join("bench-methods.json")).unwrap();
    let record: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cost = |method: &str| {
        let rows = record["rows"].as_array().unwrap();
        rows.iter().find(|r| r["method"] == method).unwrap_or_else(|| panic!("no {method} in {text}"))["cost"].clone()
    };
    let trainable = |method: &str| cost(method)["trainable_parameters"].as_i64().unwrap();
    assert!(trainable("lora") > 0 && trainable("lora") * 10 < trainable("full"), "{text}");
    assert_eq!(cost("full")["optimizer_state_bytes"].as_i64().unwrap(), 2 * 4 * trainable("full"));
    // Every configuration is measured once per round (two); its row is the faster and leaner.
    let full = record["rows"].as_array().unwrap().iter().find(|r| r["method"] == "full").unwrap();
    let runs = full["runs"].as_array().unwrap();
    let of = |key: &str| runs.iter().map(|r| r[key].as_f64().unwrap()).collect::<Vec<_>>();
    assert_eq!((runs.len(), record["rounds"].as_u64()), (2, Some(2)), "{text}");
    assert_eq!(cost("full")["tokens_per_s"].as_f64().unwrap(), of("tokens_per_s").into_iter().fold(0.0, f64::max));
    assert_eq!(
        cost("full")["peak_rss_bytes"].as_f64().unwrap(),
        of("peak_rss_bytes").into_iter().fold(f64::MAX, f64::min)
    );
    // Other installed objectives train in full beside pbft; CPT trains one 32-wide offset per
    // token of its context (the batch's two rows as demonstrations, `</s>` and separators).
    assert_eq!(trainable("otr"), trainable("full"), "{text}");
    assert!(trainable("cpt") >= 32 * 2 * 8 && trainable("cpt") % 32 == 0, "{text}");

    let stem = dir.path().join("methods");
    let plot = ftlab(&["results", "plot", out, "--kind", "methods", "--out", stem.to_str().unwrap()]);
    assert!(plot.status.success(), "{}", String::from_utf8_lossy(&plot.stderr));
    let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
    for label in ["training tokens/s", "peak memory", "optimizer state", "lora", "full"] {
        assert!(svg.contains(label), "the figure shows `{label}`");
    }
    assert!(stem.with_extension("png").metadata().unwrap().len() > 1000);
    let empty = tempfile::tempdir().unwrap();
    let missing = ftlab(&["results", "plot", empty.path().to_str().unwrap(), "--kind", "methods", "--out", out]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && stderr.contains("ftlab bench methods --out"), "{stderr}");
}
