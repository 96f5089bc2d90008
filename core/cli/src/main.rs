//! `ftlab`: the command-line front of the ftlab runtime, one module per command group. It
//! parses, layers the configuration (`config`), dispatches and reports; the work happens in the
//! `ftlab_core` library.

/// `print!` that returns a failed write (a full disk, a closed pipe) as an error instead of
/// panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*).map_err(crate::StdoutError)?
    }};
}

/// `println!` that returns a failed write as an error instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(crate::StdoutError)?
    }};
}

mod bench;
mod config;
mod data;
mod model;
mod plugins;
mod results;
mod run;
mod sweep;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away (`| head`).
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = Cli::parse();
    init_logging(args.verbose, args.color);
    // Libraries are opened first in a child (`ftlab plugins probe`), so one that crashes when
    // loaded is refused instead of ending this process.
    if let Ok(exe) = std::env::current_exe() {
        ftlab_registry::probe::probe_in_child(exe, &["plugins", "probe"]);
    }
    match run(args) {
        Ok(code) => code,
        // The reader went away (`| head` where SIGPIPE is ignored): nothing is wrong.
        Err(e) if e.downcast_ref::<StdoutError>().is_some_and(|s| s.0.kind() == std::io::ErrorKind::BrokenPipe) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// Writing to standard output failed.
#[derive(Debug)]
struct StdoutError(std::io::Error);

impl std::fmt::Display for StdoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "writing to standard output: {}", self.0)
    }
}

impl std::error::Error for StdoutError {}

/// The error and its causes, each cause only where the message does not already say it (the
/// library's errors print their source themselves).
fn report(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1).map(|c| c.to_string()) {
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

/// ftlab — efficient supervised fine-tuning of LLMs as an alternative to in-context learning.
#[derive(Debug, Parser)]
#[command(name = "ftlab", version, about, long_about = None)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). `FTLAB_LOG` takes a tracing filter too.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Colour in logs: `auto` (only when stderr is a terminal), `always` or `never`.
    #[arg(long, value_enum, default_value_t = Color::Auto, global = true)]
    color: Color,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect and run OPT models (the embedded `tiny-opt`, a folder, or a hub id).
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Measure throughput against reference implementations.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Train (or prompt) with a method and evaluate in- and out-of-domain.
    Run(Box<run::RunArgs>),
    /// List, describe, install and scaffold method plugins.
    #[command(subcommand)]
    Plugins(plugins::PluginsCommand),
    /// List tasks, inspect their data, and show the exact few-shot rows and prompts of a run.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Tables, plots and exports over the records of many runs.
    #[command(subcommand)]
    Results(results::ResultsCommand),
    /// Run an experiment grid's cells, skipping finished ones (resumable, parallel).
    ///
    /// A grid file is a run config plus a `[grid]` table of axes (`method`, `adapter` with `full`
    /// for none, `model`, `shots`, `data_seed`, any dotted key) and optional
    /// `[grid.when."axis=value"]` settings; see experiments/grids/. Each cell runs as its own
    /// `ftlab run` process, its output in OUT/NAME/sweep.log and its settings in OUT/NAME/cell.toml.
    /// Cells whose record says `completed` are skipped; failed and interrupted cells resume from
    /// their last checkpoint (or start over without one), new cells start. Several sweeps may
    /// share one output folder (on one machine or a shared filesystem): each claims a cell with a
    /// lock in its run folder first. Failed cells are listed at the end, and the exit code is 1
    /// if any failed. `--backend slurm` submits the cells as Slurm job arrays instead (resources
    /// from the grid's `[slurm]` table); `--status` and `--cancel` follow them.
    Sweep(sweep::SweepArgs),
    /// Run one cell folder as a sweep would (the command of a Slurm array task).
    #[command(hide = true)]
    SweepCell(sweep::CellArgs),
}

/// Runs the parsed command.
fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Model(command) => model::run(command),
        Command::Bench(command) => bench::run(command),
        Command::Data(command) => data::run(command),
        Command::Plugins(command) => plugins::run(command),
        Command::Run(args) => run::run(*args),
        Command::Results(command) => results::run(command),
        Command::Sweep(args) => sweep::run(args),
        Command::SweepCell(args) => sweep::run_cell(args),
    }
}

/// When logs are coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

/// Logs go to stderr, filtered by `FTLAB_LOG` (tracing's syntax) or by `-v`; coloured only on a
/// terminal unless `--color` says otherwise.
fn init_logging(verbose: u8, color: Color) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FTLAB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let colour = match color {
        Color::Auto => std::io::stderr().is_terminal(),
        Color::Always => true,
        Color::Never => false,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .init();
}
