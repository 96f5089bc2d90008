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
    if args.dry_run {
        return dry_run(&grid, args.json);
    }
    let exe = std::env::current_exe().context("locating the ftlab executable for the cells")?;
    let bar = progress_bar(grid.cells.len() as u64, "sweep");
    let progress = |report: &CellReport| {
        if report.outcome == Outcome::Failed {
            bar.println(format!("failed: {}", report.name));
        }
        bar.set_message(report.name.clone());
        bar.inc(1);
    };
    let options = SweepOptions { jobs: usize::from(args.jobs), exe };
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
