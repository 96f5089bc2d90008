//! `ftlab results`: tables, plots and exports over the records of many runs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use ftlab_core::results::plot::{self, PlotKind, PlotSpec};
use ftlab_core::results::store::{self, Format};
use ftlab_core::results::table::{self, Agg, TableFormat, TableSpec};

/// Tables, plots and exports over the `record.json` of every run under the given folders.
#[derive(Debug, Subcommand)]
pub enum ResultsCommand {
    /// A paper table: mean ± std over the runs of each cell, the best cell per column in bold,
    /// the number of runs per cell, and failed runs flagged in their cell and listed below.
    ///
    /// Example: `ftlab results table runs --rows method,adapter --cols shots --metric acc_in,acc_ood`.
    /// Any column of `ftlab results export` can be a row, column or (numeric) metric. The
    /// standard deviation is the sample one (n − 1); a cell with one run shows no std.
    Table(TableArgs),
    /// Figures as PNG and SVG: `scatter` (in- vs out-of-domain accuracy per method, as in the
    /// llmft paper), `shots` (accuracy vs shots, mean line and ±std band), `cost` (training
    /// time and peak memory per method).
    Plot(PlotArgs),
    /// Every run as one row with every column (name, status, error, model, task, method,
    /// adapter, shots, data_seed, seed, lr, epochs, accuracies, timings, memory, …), to
    /// parquet and/or CSV for pandas, polars or a spreadsheet.
    Export(ExportArgs),
}

/// Output format of `results table`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Markdown,
    Latex,
    Csv,
}

/// An aggregation of `results table`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum AggArg {
    Mean,
    Std,
    Max,
}

/// Arguments of `ftlab results table`.
#[derive(Debug, Args)]
pub struct TableArgs {
    /// Folders holding run folders (searched at any depth for record.json).
    #[arg(default_value = "runs")]
    dirs: Vec<PathBuf>,
    /// Columns whose values make the rows.
    #[arg(long, value_delimiter = ',', default_value = "method,adapter")]
    rows: Vec<String>,
    /// Columns whose values make the columns (`--cols ''`: none, one column per metric).
    #[arg(long, value_delimiter = ',', default_value = "shots")]
    cols: Vec<String>,
    /// Numeric columns to aggregate, e.g. acc_in,acc_ood,best_acc_in,time_train.
    #[arg(long, value_delimiter = ',', default_value = "acc_in,acc_ood")]
    metric: Vec<String>,
    /// Aggregations over the runs of a cell.
    #[arg(long, value_delimiter = ',', default_value = "mean,std")]
    agg: Vec<AggArg>,
    /// Output format: markdown (bold **best**), latex (\textbf{best}, booktabs) or csv (plain
    /// numbers, one column per aggregate plus `n` and `failed`).
    #[arg(long, value_enum, default_value = "markdown")]
    format: FormatArg,
}

/// Arguments of `ftlab results plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Folders holding run folders.
    #[arg(default_value = "runs")]
    dirs: Vec<PathBuf>,
    /// Which figure.
    #[arg(long, value_enum, default_value = "scatter")]
    kind: KindArg,
    /// Output path without extension: writes STEM.png and STEM.svg.
    #[arg(long)]
    out: PathBuf,
    /// Width in pixels.
    #[arg(long, default_value_t = 800)]
    width: u32,
    /// Height in pixels.
    #[arg(long, default_value_t = 600)]
    height: u32,
    /// The y axis of `--kind shots`.
    #[arg(long, default_value = "acc_in")]
    metric: String,
}

/// The figure of `results plot`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum KindArg {
    Scatter,
    Shots,
    Cost,
}

/// Arguments of `ftlab results export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Folders holding run folders.
    #[arg(default_value = "runs")]
    dirs: Vec<PathBuf>,
    /// Write a parquet file.
    #[arg(long, required_unless_present = "csv")]
    parquet: Option<PathBuf>,
    /// Write a CSV file.
    #[arg(long)]
    csv: Option<PathBuf>,
}

/// Runs one `ftlab results` command.
pub fn run(command: ResultsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ResultsCommand::Table(args) => table(args),
        ResultsCommand::Plot(args) => plot(args),
        ResultsCommand::Export(args) => export(args),
    }
}

/// The readable runs under `dirs`, and how many records could not be read (each named on
/// stderr with the reason).
fn load(dirs: &[PathBuf]) -> anyhow::Result<(Vec<store::ResultRow>, usize)> {
    let runs = store::load(dirs)?;
    for bad in &runs.unreadable {
        eprintln!("skipped an unreadable record: {}", bad.error);
    }
    Ok((runs.rows, runs.unreadable.len()))
}

fn table(args: TableArgs) -> anyhow::Result<ExitCode> {
    let (runs, unreadable) = load(&args.dirs)?;
    let aggs = args
        .agg
        .iter()
        .map(|a| match a {
            AggArg::Mean => Agg::Mean,
            AggArg::Std => Agg::Std,
            AggArg::Max => Agg::Max,
        })
        .collect();
    let names = |list: Vec<String>| list.into_iter().filter(|n| !n.trim().is_empty()).collect();
    let spec = TableSpec { rows: names(args.rows), cols: names(args.cols), metrics: names(args.metric), aggs };
    let built = table::build(&runs, &spec)?;
    let format = match args.format {
        FormatArg::Markdown => TableFormat::Markdown,
        FormatArg::Latex => TableFormat::Latex,
        FormatArg::Csv => TableFormat::Csv,
    };
    out!("{}", built.render(format));
    if unreadable > 0 {
        let note = format!("{unreadable} unreadable record(s) are not in this table (named on stderr)");
        match format {
            TableFormat::Markdown => outln!("\n{note}"),
            TableFormat::Latex => outln!("% {note}"),
            TableFormat::Csv => {}
        }
    }
    if matches!(format, TableFormat::Csv) && !built.failed.is_empty() {
        // CSV carries failures as counts; name them where a person reads.
        eprintln!("{} failed run(s):", built.failed.len());
        for (name, status, error) in &built.failed {
            eprintln!("  {name} ({status}): {}", error.replace('\n', " "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn plot(args: PlotArgs) -> anyhow::Result<ExitCode> {
    let (runs, _) = load(&args.dirs)?;
    let kind = match args.kind {
        KindArg::Scatter => PlotKind::Scatter,
        KindArg::Shots => PlotKind::Shots,
        KindArg::Cost => PlotKind::Cost,
    };
    anyhow::ensure!(args.width >= 100 && args.height >= 100, "--width and --height must be at least 100 pixels");
    let spec = PlotSpec { kind, size: (args.width, args.height), metric: args.metric };
    for path in plot::plot(&runs, &spec, &args.out)? {
        outln!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let (runs, _) = load(&args.dirs)?;
    let frame = store::to_frame(&runs)?;
    for (path, format) in [(&args.parquet, Format::Parquet), (&args.csv, Format::Csv)] {
        if let Some(path) = path {
            store::export(&frame, path, format)?;
            outln!("{} ({} runs)", path.display(), frame.height());
        }
    }
    Ok(ExitCode::SUCCESS)
}
