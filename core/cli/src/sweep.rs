//! `ftlab sweep`: run an experiment grid's cells, skipping finished ones.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use ftlab_core::run::train::progress_bar;
use ftlab_core::sweep::{self, CellReport, CellState, Outcome, SweepOptions};

/// Arguments of `ftlab sweep` (its help text is on the command in `cli/mod.rs`).
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The grid file (TOML).
    file: PathBuf,
    /// Cells run at once; libtorch's threads are shared among them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    jobs: u16,
    /// Pin each of the --jobs workers to a device: `cuda:0,cuda:1`, `all` (every GPU) or `cpu`
    /// (the cores split among the jobs). GPUs are dealt round-robin; none runs two cells at once
    /// unless --per-device says so. Default: each cell's own `device` setting.
    #[arg(long)]
    devices: Option<String>,
    /// Cells one GPU may run at once (with --devices).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    per_device: u16,
    /// List the cells and what a sweep would do with each, without running anything.
    #[arg(long)]
    dry_run: bool,
    /// Folder for the run folders (overrides the grid's `out`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Any setting for every cell by its dotted key, repeatable: `--set eval.max_examples=100`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Print the cells (with --dry-run) or their outcomes as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Where cells run: `local` child processes, or `slurm` job arrays (one task per unfinished
    /// cell, submitted with sbatch; rerun to submit what is neither completed nor queued).
    #[arg(long, value_enum, default_value = "local")]
    backend: Backend,
    /// A Slurm resource over the grid's `[slurm]` table, repeatable: `--slurm partition=gpu
    /// --slurm time=02:00:00 --slurm gres=gpu:1 --slurm parallel=8`.
    #[arg(long = "slurm", value_name = "KEY=VALUE")]
    slurm: Vec<String>,
    /// Show every cell's state (pending, running, completed, failed, cancelled, timed out,
    /// preempted, not submitted) from the records and squeue/sacct, with job id and log.
    #[arg(long, conflicts_with_all = ["dry_run", "cancel"])]
    status: bool,
    /// Cancel the sweep's queued and running Slurm jobs.
    #[arg(long)]
    cancel: bool,
}

/// Where `ftlab sweep` runs cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    /// Child processes on this machine.
    Local,
    /// Slurm job arrays.
    Slurm,
}

/// Arguments of the hidden `ftlab sweep-cell` (a Slurm array task's command).
#[derive(Debug, Args)]
pub struct CellArgs {
    /// The cell's run folder (with its `cell.toml`).
    dir: PathBuf,
}

/// Runs one cell folder as a local sweep would: claim, `ftlab run`, record.
pub fn run_cell(args: CellArgs) -> anyhow::Result<ExitCode> {
    // Slurm signals every process of the job: outlive the SIGTERM so the run (which checkpoints
    // on it) is waited for rather than orphaned when the step ends.
    ftlab_core::run::stop::on_sigterm();
    let exe = std::env::current_exe().context("locating the ftlab executable")?;
    let report = sweep::run_cell(&args.dir, &exe)?;
    eprintln!("{}: {:?}", report.name, report.outcome);
    Ok(if report.outcome == Outcome::Failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Runs (or, with `--dry-run`, lists) the grid's cells; exit code 1 if any cell failed.
pub fn run(args: SweepArgs) -> anyhow::Result<ExitCode> {
    let mut overrides = Vec::new();
    if let Some(out) = &args.out {
        overrides.push(("out".to_string(), toml::Value::String(out.display().to_string())));
    }
    for assignment in &args.sets {
        let setting = crate::config::parse_set(assignment)?;
        overrides.push((setting.key, setting.value));
    }
    let grid = sweep::grid::load(&args.file, &overrides, &crate::config::resolve)?;
    let exe = std::env::current_exe().context("locating the ftlab executable for the cells")?;
    if args.status {
        return status(&grid, args.json);
    }
    if args.backend == Backend::Slurm || args.cancel {
        return slurm(&grid, &args, &exe);
    }
    let options = match &args.devices {
        None => SweepOptions::local(usize::from(args.jobs), exe),
        Some(spec) => {
            let gpus = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
            let devices = sweep::devices::parse(spec, gpus)?;
            let (jobs, per_device) = (usize::from(args.jobs), usize::from(args.per_device));
            let slots = sweep::devices::slots(&devices, jobs, per_device, sweep::devices::machine_cores())?;
            SweepOptions { slots, pin_devices: true, exe }
        }
    };
    if options.pin_devices {
        let workers: Vec<String> =
            options.slots.iter().map(|s| format!("{} ({} threads)", s.device, s.threads)).collect();
        eprintln!("workers: {}", workers.join(", "));
    }
    if args.dry_run {
        return dry_run(&grid, args.json);
    }
    let bar = progress_bar(grid.cells.len() as u64, "sweep");
    let progress = |report: &CellReport| {
        if report.outcome == Outcome::Failed {
            bar.println(format!("failed: {}", report.name));
        }
        bar.set_message(report.name.clone());
        bar.inc(1);
    };
    let reports = sweep::run(&grid, &options, &progress)?;
    bar.finish_and_clear();
    let count = |o: Outcome| reports.iter().filter(|r| r.outcome == o).count();
    let failed: Vec<&CellReport> = reports.iter().filter(|r| r.outcome == Outcome::Failed).collect();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&reports)?);
    }
    eprintln!(
        "{} cells: {} completed now, {} skipped (already completed), {} failed",
        reports.len(),
        count(Outcome::Completed),
        count(Outcome::Skipped),
        failed.len()
    );
    for report in &failed {
        eprintln!("failed: {} ({})", report.name, report.dir.display());
        eprintln!("  {}", report.error.as_deref().unwrap_or("no error recorded").replace('\n', "\n  "));
    }
    Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Lists each cell, its state and what a sweep would do.
fn dry_run(grid: &sweep::Grid, json: bool) -> anyhow::Result<ExitCode> {
    let mut listed = Vec::new();
    for cell in &grid.cells {
        let state = sweep::state(cell)?;
        listed.push(serde_json::json!({
            "name": cell.name(),
            "dir": cell.dir(),
            "axes": cell.axes,
            "state": state,
            "will_run": state != CellState::Completed,
        }));
    }
    let to_run = listed.iter().filter(|c| c["will_run"] == true).count();
    if json {
        outln!("{}", serde_json::to_string_pretty(&listed)?);
    } else {
        for cell in &listed {
            let action = if cell["will_run"] == true { "run " } else { "skip" };
            outln!("{action} {:<9} {}", cell["state"].as_str().unwrap_or("?"), cell["name"].as_str().unwrap_or("?"));
        }
    }
    eprintln!("{} cells, {to_run} to run", listed.len());
    Ok(ExitCode::SUCCESS)
}

/// `--status`: one line per cell (or JSON).
fn status(grid: &sweep::Grid, json: bool) -> anyhow::Result<ExitCode> {
    let cells = sweep::slurm::status(grid)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&cells)?);
        return Ok(ExitCode::SUCCESS);
    }
    for cell in &cells {
        let state = serde_json::to_value(cell.state)?;
        let job = cell.job_id.as_deref().unwrap_or("-");
        outln!("{:<14} {job:<12} {}  {}", state.as_str().unwrap_or("?"), cell.name, cell.log.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `--backend slurm` (submit, or print the scripts with --dry-run) and `--cancel`.
fn slurm(grid: &sweep::Grid, args: &SweepArgs, exe: &std::path::Path) -> anyhow::Result<ExitCode> {
    if args.cancel {
        let ids = sweep::slurm::cancel(grid)?;
        eprintln!("cancelled {} job(s): {}", ids.len(), ids.join(" "));
        return Ok(ExitCode::SUCCESS);
    }
    let mut overrides = toml::Table::new();
    for assignment in &args.slurm {
        let setting = crate::config::parse_set(assignment)?;
        overrides.insert(setting.key, setting.value);
    }
    let batches = sweep::slurm::submit(grid, &overrides, exe, args.dry_run)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&batches)?);
    } else if args.dry_run {
        for batch in &batches {
            outln!("# {}\n{}", batch.path.display(), batch.script);
        }
    }
    let cells: usize = batches.iter().map(|b| b.cells.len()).sum();
    let ids: Vec<&str> = batches.iter().filter_map(|b| b.job_id.as_deref()).collect();
    match args.dry_run {
        true => eprintln!("{cells} cell(s) would be submitted in {} array(s)", batches.len()),
        false => eprintln!("submitted {cells} cell(s) in {} array(s): {}", batches.len(), ids.join(" ")),
    }
    Ok(ExitCode::SUCCESS)
}
