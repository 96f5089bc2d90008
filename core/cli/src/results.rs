//! `ftlab results`: tables, plots and exports over the records of many runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use ftlab_core::eval::predictions;
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
    /// time and peak memory per method), `frontier` (accuracy vs cost per method with ±std bars
    /// and the Pareto front).
    Plot(PlotArgs),
    /// Every run as one row with every column (name, status, error, model, task, method,
    /// adapter, shots, data_seed, seed, lr, epochs, accuracies, timings, memory, …), to
    /// parquet and/or CSV for pandas, polars or a spreadsheet.
    Export(ExportArgs),
    /// Accuracy per eval set and subset recomputed from one run's per-example predictions
    /// (`RUN/predictions/epoch-N/SET.parquet`, written for the best and the last evaluation):
    /// the starting point of error analysis, e.g. on HANS's heuristics.
    Predictions(PredictionsArgs),
}

/// Arguments of `ftlab results predictions`.
#[derive(Debug, Args)]
pub struct PredictionsArgs {
    /// The run folder.
    run: PathBuf,
    /// `last`, `best`, or an epoch number (0: before training).
    #[arg(long, default_value = "last")]
    epoch: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
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
    /// 95% bootstrap interval over seeds and, for accuracies, examples within each run.
    Ci95,
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
    /// Add a first row `zero-shot`: the before-training accuracy of this objective's runs without
    /// adapters (e.g. `--zero-shot pbft`: the untrained model scored by the same pattern).
    #[arg(long, value_name = "METHOD")]
    zero_shot: Option<String>,
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
    /// In-domain vs out-of-domain accuracy, one point per run.
    Scatter,
    /// Accuracy vs shots, mean ± std per method.
    Shots,
    /// Training time and peak memory per method, as bars.
    Cost,
    /// Accuracy (in- and out-of-domain) vs cost (time, memory) per method with ±std bars and the
    /// Pareto front: which way of learning from the examples is worth its cost.
    Frontier,
    /// `ftlab bench methods --out DIR`'s record: tokens/s, peak memory and optimizer state of
    /// every method, as multiples of full fine-tuning's.
    Methods,
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
        ResultsCommand::Predictions(args) => predictions(args),
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
            AggArg::Ci95 => Agg::Ci95,
        })
        .collect();
    let names = |list: Vec<String>| list.into_iter().filter(|n| !n.trim().is_empty()).collect();
    let spec = TableSpec {
        rows: names(args.rows),
        cols: names(args.cols),
        metrics: names(args.metric),
        aggs,
        zero_shot: args.zero_shot,
    };
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
    anyhow::ensure!(args.width >= 100 && args.height >= 100, "--width and --height must be at least 100 pixels");
    let kind = match args.kind {
        KindArg::Scatter => PlotKind::Scatter,
        KindArg::Shots => PlotKind::Shots,
        KindArg::Cost => PlotKind::Cost,
        KindArg::Frontier => PlotKind::Frontier,
        KindArg::Methods => return plot_methods(&args),
    };
    let (runs, _) = load(&args.dirs)?;
    let spec = PlotSpec { kind, size: (args.width, args.height), metric: args.metric };
    for path in plot::plot(&runs, &spec, &args.out)? {
        outln!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `--kind methods`: the one `bench-methods.json` in the folders.
fn plot_methods(args: &PlotArgs) -> anyhow::Result<ExitCode> {
    let records = ftlab_core::bench::memory::MethodsRecord::find(&args.dirs)?;
    let [(_, record)] = &records[..] else {
        let dirs: Vec<String> = args.dirs.iter().map(|d| d.display().to_string()).collect();
        anyhow::bail!(
            "--kind methods draws one bench-methods.json (`ftlab bench methods --out DIR` writes it); {} found in {}",
            records.len(),
            dirs.join(", ")
        );
    };
    for path in plot::methods(record, (args.width, args.height), &args.out)? {
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

fn predictions(args: PredictionsArgs) -> anyhow::Result<ExitCode> {
    let folder = args.run.join("predictions");
    let epochs = predictions::epochs(&folder)
        .with_context(|| format!("{}: no predictions (a run writes them when it evaluates)", folder.display()))?;
    let epoch = match args.epoch.as_str() {
        "last" => epochs.iter().max().copied(),
        "best" => {
            let record = args.run.join("record.json");
            let text = std::fs::read_to_string(&record).with_context(|| format!("reading {}", record.display()))?;
            let record: serde_json::Value = serde_json::from_str(&text)?;
            record["best"][0].as_u64().map(|e| e as usize)
        }
        n => Some(n.parse().with_context(|| format!("--epoch {n}: expected last, best or a number"))?),
    }
    .filter(|e| epochs.contains(e))
    .with_context(|| format!("no predictions for epoch `{}`; kept: {epochs:?}", args.epoch))?;
    let epoch_folder = predictions::epoch_folder(&folder, epoch);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&epoch_folder)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    let mut report = serde_json::Map::new();
    for file in &files {
        let set = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let rows = predictions::subset_accuracy(file)?;
        let value = rows.iter().map(|(name, n, acc)| serde_json::json!({"subset": name, "rows": n, "accuracy": acc}));
        report.insert(set, serde_json::Value::Array(value.collect()));
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&serde_json::json!({"epoch": epoch, "sets": report}))?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("epoch {epoch}");
    outln!("| eval set | subset | rows | accuracy |");
    outln!("|---|---|---|---|");
    for (set, rows) in &report {
        for row in rows.as_array().into_iter().flatten() {
            outln!(
                "| {set} | {} | {} | {:.3} |",
                row["subset"].as_str().unwrap_or(""),
                row["rows"],
                row["accuracy"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
