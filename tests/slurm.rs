//! `ftlab sweep --backend slurm` against a real single-node Slurm cluster (Debian's slurmctld,
//! slurmd and munge, started by `scripts/slurm-cluster` in a temporary folder and stopped after
//! each test): a grid runs to completion as a job array with one completed record per cell and
//! is not submitted twice; a cell cancelled mid-run shows as cancelled and, resubmitted, resumes
//! to the metrics of an uninterrupted run; a local and a Slurm sweep into one folder split the
//! cells. No stub: `scripts/setup` installs the packages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod common;

/// The cluster's ports are fixed: one cluster on the machine at a time.
static CLUSTER: Mutex<()> = Mutex::new(());

/// A running cluster in a temporary folder, stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Cluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("cluster");
        let out = Command::new("bash").arg(script()).args(["start", state.to_str().unwrap()]).output().unwrap();
        assert!(
            out.status.success(),
            "scripts/slurm-cluster start failed (run `bash scripts/setup` as root to install Slurm): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { conf: state.join("slurm.conf"), dir }
    }

    /// `ftlab ARGS` in the test folder, as a Slurm client.
    fn ftlab(&self, args: &[&str]) -> Output {
        self.command(env!("CARGO_BIN_EXE_ftlab"), args).output().unwrap()
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        command.args(args).current_dir(self.dir.path()).env("SLURM_CONF", &self.conf).env("HF_HUB_OFFLINE", "1");
        command
    }

    /// The grid `grid.toml` in the test folder: `epochs` epochs of the embedded task, 16 eval
    /// rows, two array tasks at a time.
    fn grid(&self, axes: &str, epochs: usize) -> PathBuf {
        let path = self.dir.path().join("grid.toml");
        let text = format!(
            "model = \"tiny-opt\"\ntask = \"synthetic-nli\"\nout = \"runs\"\n[train]\nepochs = {epochs}\nlr = 1e-3\n\
             [eval]\nmax_examples = 16\n[slurm]\ntime = \"00:10:00\"\nparallel = 2\n[grid]\n{axes}"
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `--status --json` of the grid: (name, state) per cell.
    fn states(&self) -> Vec<(String, String)> {
        let out = self.ftlab(&["sweep", "grid.toml", "--status", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let cells: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        cells.iter().map(|c| (c["name"].as_str().unwrap().into(), c["state"].as_str().unwrap().into())).collect()
    }

    /// Waits until `done` holds for the cells' states (up to five minutes).
    fn wait_for(&self, what: &str, done: impl Fn(&[(String, String)]) -> bool) -> Vec<(String, String)> {
        let start = Instant::now();
        loop {
            let states = self.states();
            if done(&states) {
                return states;
            }
            assert!(start.elapsed() < Duration::from_secs(300), "still waiting for {what}: {states:?}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Waits until Slurm runs and queues nothing (every array task has ended and written its
    /// output).
    fn wait_idle(&self) {
        let start = Instant::now();
        loop {
            let out = self.command("squeue", &["-h"]).output().unwrap();
            if out.status.success() && out.stdout.iter().all(u8::is_ascii_whitespace) {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(300), "{}", String::from_utf8_lossy(&out.stdout));
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn runs(&self) -> PathBuf {
        self.dir.path().join("runs")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let state = self.dir.path().join("cluster");
        let _ = Command::new("bash").arg(script()).args(["stop", state.to_str().unwrap()]).output();
    }
}

fn script() -> PathBuf {
    common::workspace().join("scripts/slurm-cluster")
}

fn all(state: &str) -> impl Fn(&[(String, String)]) -> bool + '_ {
    move |states| states.iter().all(|(_, s)| s == state)
}

fn record(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("record.json")).unwrap()).unwrap()
}

/// The epochs a run folder's metrics log holds.
fn epochs(dir: &Path) -> Vec<u64> {
    common::metrics_lines(dir).iter().map(|l| l["epoch"].as_u64().unwrap()).collect()
}

/// How many array tasks and local workers ran each cell to completion (`Completed` in Slurm's
/// task output, `completed` in the local sweep's report).
fn completions(runs: &Path) -> usize {
    let logs = std::fs::read_dir(runs.join(".slurm")).unwrap();
    let outputs = logs.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "out"));
    outputs.map(|p| std::fs::read_to_string(p).unwrap().matches(": Completed").count()).sum()
}

#[test]
fn a_grid_runs_as_a_job_array_once() {
    let _one = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start();
    cluster.grid("shots = [8, 16]\ndata_seed = [0, 1, 2]\n", 1);
    let dry = cluster.ftlab(&["sweep", "grid.toml", "--backend", "slurm", "--dry-run"]);
    let script = String::from_utf8_lossy(&dry.stdout);
    assert!(script.contains("#SBATCH --array=0-5%2") && script.contains("#SBATCH --time=00:10:00"), "{script}");
    assert!(!cluster.runs().join(".slurm").exists(), "a dry run submits and writes nothing");

    let submit = cluster.ftlab(&["sweep", "grid.toml", "--backend", "slurm"]);
    let stderr = String::from_utf8_lossy(&submit.stderr);
    assert!(submit.status.success() && stderr.contains("submitted 6 cell(s) in 1 array(s)"), "{stderr}");
    // At once again: every cell is queued or running, so nothing is submitted twice.
    let queued = cluster.ftlab(&["sweep", "grid.toml", "--backend", "slurm"]);
    assert!(String::from_utf8_lossy(&queued.stderr).contains("submitted 0 cell(s)"));
    // --cancel cancels what is queued or running; the next submission runs those cells again.
    let cancel = cluster.ftlab(&["sweep", "grid.toml", "--cancel"]);
    let stderr = String::from_utf8_lossy(&cancel.stderr);
    assert!(cancel.status.success() && stderr.contains("cancelled ") && !stderr.contains("cancelled 0 "), "{stderr}");
    cluster.wait_idle();
    let cancelled = cluster.states().iter().filter(|(_, s)| s == "cancelled").count();
    assert!(cancelled > 0, "{:?}", cluster.states());
    let resubmit = cluster.ftlab(&["sweep", "grid.toml", "--backend", "slurm"]);
    let stderr = String::from_utf8_lossy(&resubmit.stderr);
    assert!(stderr.contains(&format!("submitted {cancelled} cell(s)")), "{stderr}");
    let states = cluster.wait_for("every cell to complete", all("completed"));
    cluster.wait_idle();
    for (name, _) in &states {
        let dir = cluster.runs().join(name);
        assert_eq!(record(&dir)["status"], "completed");
        assert_eq!(epochs(&dir), [0, 1], "{name}: one run's epochs");
        let submitted: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("slurm.json")).unwrap()).unwrap();
        assert!(Path::new(submitted["script"].as_str().unwrap()).is_file(), "the batch script is kept");
        assert!(dir.join("sweep.log").is_file(), "the cell's log is beside its record");
    }
    assert_eq!(completions(&cluster.runs()), 6);

    // Nothing is left to submit.
    let again = cluster.ftlab(&["sweep", "grid.toml", "--backend", "slurm"]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success() && stderr.contains("submitted 0 cell(s)"), "{stderr}");
}

#[test]
fn a_cancelled_cell_resumes_to_the_uninterrupted_result() {
    let _one = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start();
    cluster.grid("shots = [128]\n", 30);
    let submit = cluster.ftlab(&["sweep", "grid.toml", "--backend", "slurm"]);
    assert!(submit.status.success(), "{}", String::from_utf8_lossy(&submit.stderr));
    let name = cluster.states()[0].0.clone();
    let dir = cluster.runs().join(&name);
    // Cancel once training has begun (the zero-shot line is written): mid-epoch, most likely.
    let start = Instant::now();
    while std::fs::read_to_string(dir.join("metrics.jsonl")).map_or(true, |m| m.is_empty()) {
        assert!(start.elapsed() < Duration::from_secs(300), "training never began: {:?}", cluster.states());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let submitted: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("slurm.json")).unwrap()).unwrap();
    let scancel = cluster.command("scancel", &[submitted["job_id"].as_str().unwrap()]).output().unwrap();
    assert!(scancel.status.success(), "{}", String::from_utf8_lossy(&scancel.stderr));
    cluster.wait_for("the cancellation", all("cancelled"));
    cluster.wait_idle();
    // scancel's SIGTERM came before its SIGKILL: the run checkpointed where it stopped.
    let stopped = record(&dir);
    assert!(stopped["error"].as_str().unwrap_or_default().contains("terminated by SIGTERM"), "{stopped}");
    assert!(dir.join("checkpoint/progress.json").is_file());

    // Resubmitted, it resumes from its checkpoint and ends where an uninterrupted run ends.
    let again = cluster.ftlab(&["sweep", "grid.toml", "--backend", "slurm"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("submitted 1 cell(s)"));
    cluster.wait_for("the resubmitted cell", all("completed"));
    let resumed = record(&dir);
    let reference = cluster.dir.path().join("reference");
    let run = cluster.ftlab(&[
        "run",
        "--config",
        dir.join("cell.toml").to_str().unwrap(),
        "--out",
        reference.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let uninterrupted = record(&reference.join(&name));
    for key in ["acc_in", "acc_ood"] {
        assert_eq!(resumed["last"][key], uninterrupted["last"][key], "{key}");
    }
    assert_eq!(resumed["last"]["report"], uninterrupted["last"]["report"]);
    let reference_lines = common::metrics_without_timings(&reference.join(&name));
    assert_eq!(common::metrics_without_timings(&dir), reference_lines, "the same loss and scores every epoch");
}

#[test]
fn a_local_and_a_slurm_sweep_split_the_cells() {
    let _one = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start();
    cluster.grid("shots = [8, 16]\ndata_seed = [0, 1, 2]\n", 2);
    let local = cluster
        .command(env!("CARGO_BIN_EXE_ftlab"), &["sweep", "grid.toml", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let submit = cluster.ftlab(&["sweep", "grid.toml", "--backend", "slurm"]);
    assert!(submit.status.success(), "{}", String::from_utf8_lossy(&submit.stderr));
    let output = local.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    cluster.wait_for("both sweeps", all("completed"));
    cluster.wait_idle();
    let reports: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    let local_runs = reports.iter().filter(|r| r["outcome"] == "completed").count();
    let slurm_runs = if cluster.runs().join(".slurm").is_dir() { completions(&cluster.runs()) } else { 0 };
    assert_eq!(local_runs + slurm_runs, 6, "local {local_runs} + slurm {slurm_runs}: every cell ran exactly once");
    for (name, _) in cluster.states() {
        assert_eq!(epochs(&cluster.runs().join(&name)), [0, 1, 2], "{name}");
    }
}
