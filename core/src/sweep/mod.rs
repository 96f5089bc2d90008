//! `ftlab sweep`: every cell of an experiment [`grid`], run locally and resumably.
//!
//! Each cell runs as a child `ftlab run --config OUT/NAME/cell.toml` process, `jobs` at a time.
//! Child processes rather than threads because a run's record must stay its own: peak memory
//! is measured per process, libtorch's random generator and thread pool are process-wide, and
//! a crash (an abort inside libtorch, the OOM killer) then takes down one cell, not the sweep.
//! The child's output goes to `OUT/NAME/sweep.log`; `cell.toml` reruns the cell by hand.
//!
//! Resuming is the default: a cell whose `record.json` says `completed` is skipped, an
//! interrupted or failed cell with a checkpoint continues from it (`ftlab run --resume`, to the
//! same result), and every other cell runs from the start. [`slurm`] runs the same cells as Slurm
//! job arrays, [`devices`] pins local workers to GPUs. Before running a cell
//! a sweep claims it ([`lock`]), so two sweeps over one results folder split the cells between
//! them: a cell claimed by another sweep is put back and waited for at the end, then skipped if
//! that sweep completed it. A child that dies without writing a record gets a `failed` record
//! written for it, so results tables flag it rather than miss it.

pub mod devices;
pub mod grid;
pub mod lock;
pub mod slurm;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use serde::Serialize;

pub use grid::{Grid, GridCell};

use self::lock::CellLock;
use crate::error::{Error, Result};
use crate::run::record::{write_atomically, RunDir};
use crate::run::{RunRecord, RunStatus};

/// What a cell's run folder holds before a sweep runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CellState {
    /// A completed record: the sweep skips the cell.
    Completed,
    /// A failed record: the sweep runs the cell again.
    Failed,
    /// No record (never run, or interrupted): the sweep runs the cell.
    Pending,
}

/// Reads the state of `cell` from its `record.json`; a record that cannot be read (cut short by
/// a full disk) counts as failed, so the cell runs again.
pub fn state(cell: &GridCell) -> Result<CellState> {
    let path = RunDir { path: cell.dir() }.record();
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(CellState::Pending) };
    match serde_json::from_str::<RunRecord>(&text) {
        Ok(record) if record.status == RunStatus::Completed => Ok(CellState::Completed),
        Ok(_) => Ok(CellState::Failed),
        Err(e) => {
            tracing::warn!("{}: unreadable record ({e}): the cell runs again", path.display());
            Ok(CellState::Failed)
        }
    }
}

/// How a cell ended in this sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Already completed (before this sweep, or by a concurrent one).
    Skipped,
    /// Ran and completed.
    Completed,
    /// Ran and failed.
    Failed,
}

/// One cell's result in this sweep.
#[derive(Debug, Clone, Serialize)]
pub struct CellReport {
    /// The run folder's name.
    pub name: String,
    /// The run folder.
    pub dir: PathBuf,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it failed.
    pub error: Option<String>,
}

/// How to run a sweep.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// One worker per slot, cells run at once (child processes) each with the slot's threads.
    pub slots: Vec<devices::Slot>,
    /// Run each cell on its slot's device (`--devices`), instead of the cell's own `device`.
    pub pin_devices: bool,
    /// The `ftlab` executable the cells run with.
    pub exe: PathBuf,
}

impl SweepOptions {
    /// `jobs` cells at once on the cells' own devices, sharing the machine's cores.
    pub fn local(jobs: usize, exe: PathBuf) -> Self {
        let slots = devices::slots(&["cpu".into()], jobs, 1, devices::machine_cores())
            .expect("the CPU takes any number of jobs");
        Self { slots, pin_devices: false, exe }
    }
}

/// Runs every cell of `grid` that is not completed; `progress` is told after each cell.
pub fn run(grid: &Grid, options: &SweepOptions, progress: &(dyn Fn(&CellReport) + Sync)) -> Result<Vec<CellReport>> {
    let queue: Mutex<VecDeque<&GridCell>> = Mutex::new(grid.cells.iter().collect());
    let claimed_elsewhere: Mutex<Vec<&GridCell>> = Mutex::new(Vec::new());
    let reports: Mutex<Vec<CellReport>> = Mutex::new(Vec::new());
    let worker = |slot: &devices::Slot| -> Result<()> {
        // First every free cell; then, waiting on each claim, the cells other sweeps held.
        loop {
            let next = queue.lock().map_err(poisoned)?.pop_front();
            let (cell, claim) = if let Some(cell) = next {
                match CellLock::try_claim(&cell.dir())? {
                    Some(claim) => (cell, claim),
                    None => {
                        claimed_elsewhere.lock().map_err(poisoned)?.push(cell);
                        continue;
                    }
                }
            } else if let Some(cell) = claimed_elsewhere.lock().map_err(poisoned)?.pop() {
                (cell, CellLock::claim(&cell.dir())?)
            } else {
                return Ok(());
            };
            let device = options.pin_devices.then_some(slot.device.as_str());
            let report = run_claimed(cell, &options.exe, device, slot.threads)?;
            drop(claim);
            progress(&report);
            reports.lock().map_err(poisoned)?.push(report);
        }
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = options.slots.iter().map(|slot| scope.spawn(move || worker(slot))).collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|_| Err(Error::Results("a sweep worker panicked".into()))))
    })?;
    let mut reports = reports.into_inner().map_err(poisoned)?;
    // Report in grid order, whatever order the workers finished in.
    let order = |r: &CellReport| grid.cells.iter().position(|c| c.dir() == r.dir);
    reports.sort_by_key(order);
    Ok(reports)
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> Error {
    Error::Results("a sweep worker panicked".into())
}

/// Runs one cell this sweep has claimed, unless it is already completed: on `device` when the
/// sweep pins one, with `threads` libtorch threads (the machine's cores shared among the jobs,
/// so parallel cells do not oversubscribe the CPU).
fn run_claimed(cell: &GridCell, exe: &Path, device: Option<&str>, threads: usize) -> Result<CellReport> {
    let dir = RunDir::create(&cell.dir())?;
    let report = |outcome, error| CellReport { name: cell.name(), dir: dir.path.clone(), outcome, error };
    let previous = state(cell)?;
    if previous == CellState::Completed {
        return Ok(report(Outcome::Skipped, None));
    }
    let mut config = cell.config.clone();
    if let Some(device) = device {
        config.device = device.parse()?;
    }
    let config_path = write_cell_config(&dir.path, &config)?;
    let log_path = dir.path.join("sweep.log");
    let log = std::fs::File::create(&log_path).map_err(Error::io(&log_path))?;
    let mut command = Command::new(exe);
    command.arg("run").arg("--config").arg(&config_path).stdin(Stdio::null());
    command.stdout(log.try_clone().map_err(Error::io(&log_path))?).stderr(log);
    // A run killed or failed after a checkpoint (a preempted Slurm task, a killed sweep)
    // continues from it, to the same result; a failed one without a checkpoint starts over.
    if dir.checkpoint().join("progress.json").is_file() {
        command.arg("--resume");
    } else if previous == CellState::Failed {
        command.arg("--force");
    }
    // The cell's settings are final: the environment must not layer over them a second time.
    for (key, _) in std::env::vars() {
        if key.starts_with("FTLAB_") && key != "FTLAB_LOG" && key != "FTLAB_PLUGIN_PATH" {
            command.env_remove(key);
        }
    }
    // A pinned worker's share of the cores is the plan; otherwise the user's setting wins.
    if device.is_some() || std::env::var_os("OMP_NUM_THREADS").is_none() {
        command.env("OMP_NUM_THREADS", threads.to_string());
    }
    end_with_sweep(&mut command);
    let status = command.status().map_err(Error::io(exe))?;
    let record_path = dir.record();
    // A record that cannot be read (cut short) is no record: the cell is failed below.
    let record: Option<RunRecord> =
        std::fs::read_to_string(&record_path).ok().and_then(|text| serde_json::from_str(&text).ok());
    Ok(match record {
        Some(r) if r.status == RunStatus::Completed => report(Outcome::Completed, None),
        Some(r) => report(Outcome::Failed, r.error.or_else(|| Some(format!("status {}", r.status)))),
        None => {
            let error = format!("`ftlab run` ended ({status}) without a record; its output: {}", log_path.display());
            let tail = log_tail(&log_path);
            dir.write_json(&record_path, &failed_record(cell, &format!("{error}\n{tail}")))?;
            report(Outcome::Failed, Some(error))
        }
    })
}

/// Writes a cell's settings to `DIR/cell.toml` (what `ftlab run --config` and `ftlab sweep-cell`
/// read); returns the path.
pub(crate) fn write_cell_config(dir: &Path, config: &crate::run::RunConfig) -> Result<PathBuf> {
    let path = dir.join("cell.toml");
    let text = toml::to_string(config)
        .map_err(|e| Error::RunConfig(format!("{}: cannot write the cell's settings: {e}", path.display())))?;
    write_atomically(&path, text.as_bytes())?;
    Ok(path)
}

/// Runs the cell in `dir` from its `cell.toml`, as a local sweep would (a Slurm array task's
/// job): claimed first, skipped when completed or claimed by another sweep, resumed from its
/// checkpoint if it has one; `SLURM_CPUS_PER_TASK` (else the machine's cores) threads.
pub fn run_cell(dir: &Path, exe: &Path) -> Result<CellReport> {
    let path = dir.join("cell.toml");
    let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
    let mut config: crate::run::RunConfig =
        toml::from_str(&text).map_err(|e| Error::RunConfig(format!("{}: {e}", path.display())))?;
    // The folder is the cell's wherever the task runs: its parent holds the run folders.
    config.out = dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let cell = GridCell { axes: Vec::new(), config, slurm: toml::Table::new() };
    let Some(claim) = CellLock::try_claim(dir)? else {
        let report = CellReport { name: cell.name(), dir: dir.into(), outcome: Outcome::Skipped, error: None };
        tracing::info!("{}: claimed by another sweep, skipped", dir.display());
        return Ok(report);
    };
    let slurm_cpus = std::env::var("SLURM_CPUS_PER_TASK").ok().and_then(|v| v.parse().ok());
    let threads = slurm_cpus.unwrap_or_else(devices::machine_cores);
    let report = run_claimed(&cell, exe, None, threads);
    drop(claim);
    report
}

/// Ends a cell's process when its sweep dies (Linux), so a killed sweep, whose claims the OS
/// releases at once, leaves no cell running unclaimed for another sweep to start again.
fn end_with_sweep(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec the closure only calls prctl, which is async-signal-safe
        // and changes nothing but the child's own death signal.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

/// The last lines of a child's log, for a record it could not write itself.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// The record of a cell whose run died before writing one (crash, kill, bad settings).
fn failed_record(cell: &GridCell, error: &str) -> RunRecord {
    RunRecord { error: Some(error.into()), ..RunRecord::new(&cell.config, RunStatus::Failed) }
}
