//! `ftlab sweep GRID --backend slurm`: a grid's unfinished cells as Slurm job arrays, one array
//! task per cell, each running exactly what a local sweep runs for it (`ftlab sweep-cell DIR`:
//! the same claim in the cell folder, the same `ftlab run` child, the same record rules), so a
//! local and a Slurm sweep into one folder never run a cell twice and never lose one.
//!
//! - Resources come from the grid file's `[slurm]` table ([`Resources`]), `--slurm KEY=VALUE`
//!   flags over it, and per cell from `"slurm.KEY"` settings in `[grid.when."axis=value"]`;
//!   cells with equal resources share one array (`sbatch --array=0-N%parallel`).
//! - Each submitted cell folder gets `slurm.json` (job id, array task, batch script, Slurm's log)
//!   beside its `cell.toml`; the batch script is kept under `OUT/.slurm/`.
//! - [`status`] combines the records with `squeue` (and `sacct` where accounting runs);
//!   resubmitting skips cells that are completed, pending or running.
//! - A cell killed by Slurm (time limit, preemption, `scancel`) resumes from its last epoch
//!   checkpoint when it runs again (a requeued task, or a later submission), to the same result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::{state, CellState, Grid, GridCell};
use crate::error::{Error, Result};
use crate::run::record::{write_atomically, RunDir};

/// The Slurm resources of a cell (`[slurm]` in a grid file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// `--qos`.
    pub qos: Option<String>,
    /// `--time` limit per cell, e.g. `02:00:00`.
    pub time: Option<String>,
    /// `--mem` per cell, e.g. `32G`.
    pub mem: Option<String>,
    /// `--cpus-per-task`; the cell's libtorch threads.
    pub cpus_per_task: Option<u32>,
    /// `--gres`, e.g. `gpu:1`.
    pub gres: Option<String>,
    /// `--constraint`.
    pub constraint: Option<String>,
    /// Array tasks running at once (`--array=…%N`); none: as many as Slurm allows.
    pub parallel: Option<usize>,
    /// `--requeue`: Slurm may requeue a preempted task, which then resumes from its checkpoint.
    pub requeue: bool,
    /// Extra `#SBATCH` options, verbatim (e.g. `--mail-type=END`).
    pub extra: Vec<String>,
}

impl Resources {
    /// The resources of `table`, named in errors as `origin`.
    pub fn from_table(table: &toml::Table, origin: &str) -> Result<Self> {
        toml::Value::Table(table.clone()).try_into().map_err(|e| Error::RunConfig(format!("{origin}: [slurm]: {e}")))
    }

    /// The `#SBATCH` lines these resources ask for.
    fn directives(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut put = |flag: &str, value: &Option<String>| {
            if let Some(v) = value {
                lines.push(format!("#SBATCH --{flag}={v}"));
            }
        };
        put("partition", &self.partition);
        put("account", &self.account);
        put("qos", &self.qos);
        put("time", &self.time);
        put("mem", &self.mem);
        put("cpus-per-task", &self.cpus_per_task.map(|c| c.to_string()));
        put("gres", &self.gres);
        put("constraint", &self.constraint);
        lines.push(if self.requeue { "#SBATCH --requeue" } else { "#SBATCH --no-requeue" }.into());
        lines.extend(self.extra.iter().map(|e| format!("#SBATCH {e}")));
        lines
    }
}

/// What `slurm.json` in a cell folder says: the cell's latest submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    /// `ARRAY_TASK` as Slurm names the task, e.g. `4012_3`.
    pub job_id: String,
    /// The array's job id.
    pub array_job_id: String,
    /// The task's index in the array.
    pub task: usize,
    /// The batch script.
    pub script: PathBuf,
    /// Slurm's own output file of the task (the run's output is `sweep.log` in the cell folder).
    pub slurm_log: PathBuf,
}

/// A cell's state as `--status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlurmState {
    /// Never submitted, and no record.
    NotSubmitted,
    /// Queued.
    Pending,
    /// Running (or completing).
    Running,
    /// A completed record.
    Completed,
    /// Ended without a completed record.
    Failed,
    /// Cancelled (`scancel`).
    Cancelled,
    /// Killed at its time limit.
    TimedOut,
    /// Preempted.
    Preempted,
}

impl SlurmState {
    /// Whether Slurm still holds the cell (a new submission must not run it again).
    pub fn queued(self) -> bool {
        matches!(self, Self::Pending | Self::Running)
    }

    /// The state of a job as `squeue`/`sacct` print it (`CANCELLED by 0` → cancelled).
    fn of_slurm(name: &str) -> Self {
        match name.split_whitespace().next().unwrap_or_default() {
            "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "CONFIGURING" | "RESV_DEL_HOLD"
            | "SPECIAL_EXIT" => Self::Pending,
            "RUNNING" | "COMPLETING" | "SUSPENDED" | "STAGE_OUT" | "SIGNALING" | "RESIZING" => Self::Running,
            "CANCELLED" => Self::Cancelled,
            "TIMEOUT" | "DEADLINE" => Self::TimedOut,
            "PREEMPTED" => Self::Preempted,
            _ => Self::Failed,
        }
    }
}

/// One cell in `--status`.
#[derive(Debug, Clone, Serialize)]
pub struct CellStatus {
    /// The run folder's name.
    pub name: String,
    /// The run folder.
    pub dir: PathBuf,
    /// Its state.
    pub state: SlurmState,
    /// Slurm's job id of its latest submission.
    pub job_id: Option<String>,
    /// The run's output (`sweep.log` in the cell folder).
    pub log: PathBuf,
}

/// The `slurm.json` of a cell folder.
fn submission_file(dir: &Path) -> PathBuf {
    dir.join("slurm.json")
}

fn submission(dir: &Path) -> Option<Submission> {
    serde_json::from_str(&std::fs::read_to_string(submission_file(dir)).ok()?).ok()
}

/// Runs a Slurm client command, its stdout on success or an error naming it.
fn slurm(program: &str, args: &[String]) -> Result<String> {
    let output = Command::new(program).args(args).output().map_err(|e| {
        Error::Slurm(format!("`{program}` could not be started ({e}): is this a Slurm login node (SLURM_CONF set)?"))
    })?;
    if !output.status.success() {
        return Err(Error::Slurm(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Slurm's view of the tasks of `arrays`: task id (`4012_3`) → state, from `squeue` (jobs it
/// still lists) and `sacct` (when accounting runs), the queue winning.
fn slurm_states(arrays: &[String]) -> BTreeMap<String, SlurmState> {
    let mut states = BTreeMap::new();
    if arrays.is_empty() {
        return states;
    }
    let ids = arrays.join(",");
    // Accounting first, so the live queue overrides what it says.
    let sacct = ["-n", "-P", "-X", "-j", &ids, "--format=JobID,State"].map(String::from);
    let squeue = ["-h", "-r", "-t", "all", "-j", &ids, "-o", "%i|%T"].map(String::from);
    for (program, args) in [("sacct", &sacct[..]), ("squeue", &squeue[..])] {
        let Ok(text) = slurm(program, args) else { continue };
        for line in text.lines() {
            if let Some((id, state)) = line.trim().split_once('|') {
                states.insert(id.trim().to_string(), SlurmState::of_slurm(state));
            }
        }
    }
    states
}

/// Every cell's state: the record, else Slurm's word on its latest submission.
pub fn status(grid: &Grid) -> Result<Vec<CellStatus>> {
    let submissions: Vec<Option<Submission>> = grid.cells.iter().map(|c| submission(&c.dir())).collect();
    let mut arrays: Vec<String> = submissions.iter().flatten().map(|s| s.array_job_id.clone()).collect();
    arrays.sort();
    arrays.dedup();
    let slurm = slurm_states(&arrays);
    let mut cells = Vec::with_capacity(grid.cells.len());
    for (cell, submitted) in grid.cells.iter().zip(submissions) {
        let record = state(cell)?;
        // A task Slurm never split off its array (cancelled while pending) is listed as the
        // array's own job id.
        let queued =
            submitted.as_ref().and_then(|s| slurm.get(&s.job_id).or_else(|| slurm.get(&s.array_job_id))).copied();
        let state = match (record, queued, &submitted) {
            (CellState::Completed, _, _) => SlurmState::Completed,
            (_, Some(q), _) if q.queued() => q,
            // Slurm says the task ended, but the run did not complete (or wrote nothing).
            (_, Some(SlurmState::Completed), _) => SlurmState::Failed,
            (_, Some(ended), _) => ended,
            (CellState::Failed, None, _) => SlurmState::Failed,
            // Submitted, but Slurm has forgotten the task and no record says how it ended.
            (CellState::Pending, None, Some(_)) => SlurmState::Failed,
            (CellState::Pending, None, None) => SlurmState::NotSubmitted,
        };
        let dir = cell.dir();
        cells.push(CellStatus {
            name: cell.name(),
            log: dir.join("sweep.log"),
            dir,
            state,
            job_id: submitted.map(|s| s.job_id),
        });
    }
    Ok(cells)
}

/// A job array to submit: its cells, script and where it is written.
#[derive(Debug, Clone, Serialize)]
pub struct Batch {
    /// The cells' run folders, by array index.
    pub cells: Vec<PathBuf>,
    /// The batch script's text.
    pub script: String,
    /// Where the script is written.
    pub path: PathBuf,
    /// The array's job id once submitted.
    pub job_id: Option<String>,
}

/// The batch script of one array: the cells by array index, each task running `exe sweep-cell`
/// on its cell in the submission's working directory.
pub fn batch_script(name: &str, resources: &Resources, cells: &[PathBuf], exe: &Path, logs: &Path) -> Result<String> {
    let cwd = std::env::current_dir().map_err(Error::io("."))?;
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    let parallel = resources.parallel.map(|n| format!("%{n}")).unwrap_or_default();
    let mut lines = vec![
        "#!/bin/bash".to_string(),
        format!("#SBATCH --job-name={name}"),
        format!("#SBATCH --array=0-{}{parallel}", cells.len().saturating_sub(1)),
        format!("#SBATCH --output={}", logs.join("%A_%a.out").display()),
        format!("#SBATCH --chdir={}", cwd.display()),
    ];
    lines.extend(resources.directives());
    lines.push("# One cell per array task: the same claim, `ftlab run` and record as a local sweep.".into());
    lines.push("cells=(".into());
    lines.extend(cells.iter().map(|c| format!("  {}", quote(c))));
    lines.push(")".into());
    lines.push(format!("exec {} sweep-cell \"${{cells[$SLURM_ARRAY_TASK_ID]}}\"", quote(exe)));
    Ok(lines.join("\n") + "\n")
}

/// Submits every cell of `grid` that is not completed and not already queued or running, one
/// array per distinct set of resources (`overrides` over each cell's `[slurm]` table); with
/// `dry_run` only writes nothing and returns the scripts.
pub fn submit(grid: &Grid, overrides: &toml::Table, exe: &Path, dry_run: bool) -> Result<Vec<Batch>> {
    let statuses = status(grid)?;
    let origin = grid.path.display().to_string();
    let mut groups: BTreeMap<String, (Resources, Vec<&GridCell>)> = BTreeMap::new();
    for (cell, status) in grid.cells.iter().zip(&statuses) {
        if status.state == SlurmState::Completed || status.state.queued() {
            continue;
        }
        let mut table = cell.slurm.clone();
        table.extend(overrides.clone());
        let resources = Resources::from_table(&table, &origin)?;
        let key = toml::to_string(&table).unwrap_or_default();
        groups.entry(key).or_insert_with(|| (resources, Vec::new())).1.push(cell);
    }
    let stem = grid.path.file_stem().map_or("grid".into(), |s| s.to_string_lossy().into_owned());
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let mut batches = Vec::new();
    for (i, (resources, cells)) in groups.into_values().enumerate() {
        let logs = cells[0].config.out.join(".slurm");
        let dirs: Vec<PathBuf> = cells.iter().map(|c| absolute(&c.dir())).collect::<Result<_>>()?;
        let script = batch_script(&format!("ftlab-{stem}"), &resources, &dirs, exe, &absolute(&logs)?)?;
        let path = logs.join(format!("{stem}-{stamp}-{i}.sh"));
        let mut batch = Batch { cells: dirs, script, path, job_id: None };
        if !dry_run {
            prepare(&cells)?;
            std::fs::create_dir_all(&logs).map_err(Error::io(&logs))?;
            write_atomically(&batch.path, batch.script.as_bytes())?;
            let out = slurm("sbatch", &["--parsable".into(), batch.path.display().to_string()])?;
            let array = out.trim().split(';').next().unwrap_or_default().to_string();
            for (task, dir) in batch.cells.iter().enumerate() {
                let submitted = Submission {
                    job_id: format!("{array}_{task}"),
                    array_job_id: array.clone(),
                    task,
                    script: absolute(&batch.path)?,
                    slurm_log: absolute(&logs.join(format!("{array}_{task}.out")))?,
                };
                let text = serde_json::to_string_pretty(&submitted).map_err(Error::json(submission_file(dir)))?;
                write_atomically(&submission_file(dir), text.as_bytes())?;
            }
            batch.job_id = Some(array);
        }
        batches.push(batch);
    }
    Ok(batches)
}

/// Cancels the queued and running cells of `grid`; returns the job ids cancelled.
pub fn cancel(grid: &Grid) -> Result<Vec<String>> {
    let ids: Vec<String> = status(grid)?.into_iter().filter(|s| s.state.queued()).filter_map(|s| s.job_id).collect();
    if !ids.is_empty() {
        slurm("scancel", &ids)?;
    }
    Ok(ids)
}

/// Creates each cell's folder with its `cell.toml`, as a local sweep does before running it.
fn prepare(cells: &[&GridCell]) -> Result<()> {
    for cell in cells {
        let dir = RunDir::create(&cell.dir())?;
        super::write_cell_config(&dir.path, &cell.config)?;
    }
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.into());
    }
    Ok(std::env::current_dir().map_err(Error::io("."))?.join(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_become_sbatch_lines_and_unknown_keys_are_named() {
        let table: toml::Table = "partition = \"gpu\"\ngres = \"gpu:1\"\ntime = \"01:00:00\"\nparallel = 4\n\
            requeue = true\nextra = [\"--mail-type=END\"]"
            .parse()
            .unwrap();
        let resources = Resources::from_table(&table, "grid.toml").unwrap();
        let cells = [PathBuf::from("/r/a"), PathBuf::from("/r/b'c")];
        let script =
            batch_script("ftlab-g", &resources, &cells, Path::new("/bin/ftlab"), Path::new("/r/.slurm")).unwrap();
        for line in [
            "#SBATCH --array=0-1%4",
            "#SBATCH --partition=gpu",
            "#SBATCH --gres=gpu:1",
            "#SBATCH --time=01:00:00",
            "#SBATCH --requeue",
            "#SBATCH --mail-type=END",
            "#SBATCH --output=/r/.slurm/%A_%a.out",
            "  '/r/b'\\''c'",
            "exec '/bin/ftlab' sweep-cell \"${cells[$SLURM_ARRAY_TASK_ID]}\"",
        ] {
            assert!(script.lines().any(|l| l == line), "{line} not in\n{script}");
        }
        let bad: toml::Table = "partitio = \"gpu\"".parse().unwrap();
        let err = Resources::from_table(&bad, "grid.toml").unwrap_err().to_string();
        assert!(err.contains("grid.toml") && err.contains("partitio"), "{err}");
    }

    #[test]
    fn slurm_states_map_to_cell_states() {
        assert_eq!(SlurmState::of_slurm("CANCELLED by 0"), SlurmState::Cancelled);
        assert_eq!(SlurmState::of_slurm("TIMEOUT"), SlurmState::TimedOut);
        assert_eq!(SlurmState::of_slurm("PREEMPTED"), SlurmState::Preempted);
        assert!(SlurmState::of_slurm("REQUEUED").queued() && SlurmState::of_slurm("COMPLETING").queued());
        assert_eq!(SlurmState::of_slurm("NODE_FAIL"), SlurmState::Failed);
    }
}
