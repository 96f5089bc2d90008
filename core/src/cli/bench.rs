//! `ftlab bench`: throughput against PyTorch + transformers, measured in one invocation.

use std::process::{Command, ExitCode};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ftlab_core::bench::{self, Throughput};
use ftlab_core::methods::hooks::AdapterHooks;
use ftlab_core::methods::{load_adapters, HostState, MethodSpec};
use ftlab_core::model::config::OPT_125M_CONFIG;
use ftlab_core::model::{tiny, LoadOptions, Model, OptConfig};
use ftlab_core::DeviceSpec;
use serde::{Deserialize, Serialize};

/// The reference script, embedded so the binary can run it from anywhere.
const REFERENCE_SCRIPT: &str = include_str!("../../benches/opt_reference.py");

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Forward and training-step throughput of an OPT shape (random weights) in ftlab and, with
    /// `--python`, in PyTorch + transformers; prints tokens/s, their ratio, and the fraction of
    /// the machine's matmul rate each achieves. `scripts/bench-model` runs it with the
    /// reference packages installed.
    Model(ModelBench),
    /// The cost of crossing the plugin ABI: forward of an OPT shape with no method vs the
    /// `probe_noop` adapter hooking every site (built with the workspace's test fixtures:
    /// `cargo build --release --workspace`). Target: under 2% of forward time.
    Hooks(HooksBench),
}

/// The OPT shape and batch both benchmarks measure.
#[derive(Debug, Args)]
pub struct ShapeArgs {
    /// A config.json to take the shape from (default: facebook/opt-125m's).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Sequences per batch.
    #[arg(long, default_value_t = 16)]
    batch: i64,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    seq: i64,
    /// Intra-op threads.
    #[arg(long, default_value_t = 2)]
    threads: i32,
}

#[derive(Debug, Args)]
pub struct HooksBench {
    #[command(flatten)]
    shape: ShapeArgs,
    /// Timed forwards of each kind (median reported), alternating.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ModelBench {
    #[command(flatten)]
    shape: ShapeArgs,
    /// Timed steps per measurement (median reported), after one warm-up.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Python interpreter with torch and transformers importable; omit to measure ftlab only.
    #[arg(long)]
    python: Option<String>,
    /// Device for ftlab's side (the reference runs on CPU).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Deserialize, Serialize)]
struct Reference {
    transformers: String,
    torch: String,
    attention: String,
    forward_tokens_per_s: f64,
    train_tokens_per_s: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    batch: i64,
    seq: i64,
    threads: i32,
    matmul_gflops: f64,
    forward: Throughput,
    train_step: Throughput,
    reference: Option<Reference>,
}

pub fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Model(args) => model(args),
        BenchCommand::Hooks(args) => hooks(args),
    }
}

/// The benchmark shape: a config.json, or opt-125m's.
fn shape(path: Option<&std::path::Path>) -> anyhow::Result<(String, OptConfig)> {
    let text = match path {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        None => OPT_125M_CONFIG.to_string(),
    };
    let config = OptConfig::from_json(&text, path.unwrap_or("<opt-125m>".as_ref()))?;
    Ok((text, config))
}

fn hooks(args: HooksBench) -> anyhow::Result<ExitCode> {
    let (_, config) = shape(args.shape.config.as_deref())?;
    tch::set_num_threads(args.shape.threads);
    let model = Model::random(&config, tiny::tokenizer()?, 0, LoadOptions::default())?;
    let registry = ftlab_registry::Registry::discover();
    let task = ftlab_sdk::TaskInfo { name: "bench".into(), label_words: vec![], label_token_ids: vec![] };
    let mut state = HostState::new(task, 0);
    let adapters = load_adapters(&model, &registry, &[MethodSpec::named("probe_noop")], &mut state)
        .context("loading the probe_noop fixture (build it with `cargo build --release --workspace`)")?;
    let hooks = AdapterHooks { adapters: &adapters };
    let calls = config.num_hidden_layers * 7 + 1;
    eprintln!(
        "measuring: {} × {} tokens, {} threads, {calls} hook calls per forward …",
        args.shape.batch, args.shape.seq, args.shape.threads
    );
    let (plain, hooked) = bench::hook_overhead(&model, &hooks, args.shape.batch, args.shape.seq, args.repeats)?;
    let overhead = 100.0 * (hooked / plain - 1.0);
    if args.json {
        let report = serde_json::json!({"plain_seconds": plain, "hooked_seconds": hooked, "overhead_percent": overhead, "hook_calls": calls});
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("forward, no method:               {plain:.3} s");
        println!("forward, no-op hook at all {calls} sites: {hooked:.3} s");
        println!("ABI overhead:                     {overhead:+.2}% (target < 2%)");
    }
    Ok(ExitCode::SUCCESS)
}

fn model(args: ModelBench) -> anyhow::Result<ExitCode> {
    let (config_text, config) = shape(args.shape.config.as_deref())?;
    tch::set_num_threads(args.shape.threads);
    let device = args.device.resolve()?;
    let model = Model::random(&config, tiny::tokenizer()?, 0, LoadOptions { device, ..Default::default() })?;
    eprintln!("measuring ftlab: {} × {} tokens, {} threads …", args.shape.batch, args.shape.seq, args.shape.threads);
    let matmul_gflops = bench::matmul_gflops(2048, 768, 3072, 10, device);
    let forward = bench::forward_throughput(&model, args.shape.batch, args.shape.seq, args.repeats)?;
    let train_step = bench::train_step_throughput(&model, args.shape.batch, args.shape.seq, args.repeats)?;
    drop(model);
    let reference = match &args.python {
        Some(python) => Some(reference(python, &config_text, &args)?),
        None => None,
    };
    let report = Report {
        batch: args.shape.batch,
        seq: args.shape.seq,
        threads: args.shape.threads,
        matmul_gflops,
        forward,
        train_step,
        reference,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn reference(python: &str, config: &str, args: &ModelBench) -> anyhow::Result<Reference> {
    eprintln!("measuring PyTorch + transformers with {python} …");
    let script = std::env::temp_dir().join(format!("ftlab-opt-reference-{}.py", std::process::id()));
    std::fs::write(&script, REFERENCE_SCRIPT).with_context(|| format!("writing {}", script.display()))?;
    let output = Command::new(python)
        .arg(&script)
        .args(["--config", config])
        .args(["--batch", &args.shape.batch.to_string(), "--seq", &args.shape.seq.to_string()])
        .args(["--repeats", &args.repeats.to_string(), "--threads", &args.shape.threads.to_string()])
        .output()
        .with_context(|| format!("running {python}"));
    let _ = std::fs::remove_file(&script);
    let output = output?;
    if !output.status.success() {
        bail!("the reference benchmark failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("reading the reference's JSON output: {last}"))
}

fn print_table(r: &Report) {
    println!(
        "OPT shape, batch {} × {} tokens, fp32, {} threads; matmul 2048×768×3072: {:.1} GFLOP/s",
        r.batch, r.seq, r.threads, r.matmul_gflops
    );
    println!();
    println!("| step | ftlab tok/s | transformers tok/s | ftlab / transformers | ftlab GFLOP/s | % of matmul rate |");
    println!("|---|---|---|---|---|---|");
    for (name, ours, theirs) in [
        ("forward", r.forward, r.reference.as_ref().map(|x| x.forward_tokens_per_s)),
        ("train step", r.train_step, r.reference.as_ref().map(|x| x.train_tokens_per_s)),
    ] {
        let (theirs_text, ratio) = match theirs {
            Some(t) => (format!("{t:.1}"), format!("{:.3}", ours.tokens_per_s / t)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {name} | {:.1} | {theirs_text} | {ratio} | {:.1} | {:.0}% |",
            ours.tokens_per_s,
            ours.gflops,
            100.0 * ours.gflops / r.matmul_gflops
        );
    }
    if let Some(x) = &r.reference {
        println!();
        println!("reference: transformers {}, torch {}, attention {}", x.transformers, x.torch, x.attention);
    }
}
