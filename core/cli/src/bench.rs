//! `ftlab bench`: each benchmark against its baseline, measured in one invocation by
//! `ftlab_core::bench`; this module names the methods measured and prints the ratios.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::Context;
use clap::{Args, Subcommand};
use ftlab_core::bench::memory::{MethodCost, MethodsRecord, TrainingCost};
use ftlab_core::bench::{self, reference::Reference, Shape, Throughput};
use ftlab_core::methods::hooks::AdapterHooks;
use ftlab_core::methods::{load_adapters, HostState, MethodSpec};
use ftlab_core::DeviceSpec;
use serde::Serialize;
use serde_json::json;

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
    /// Peak memory of training an OPT shape (random weights, pbft objective) with every
    /// parameter trainable, with BitFit and with LoRA, each in a fresh process so each peak is
    /// its own. Target: BitFit and LoRA at most 0.5× full fine-tuning.
    Memory(MemoryBench),
    /// The method-comparison table: for full fine-tuning (the default objective, pbft), every
    /// other installed objective that trains on labelled batches alone, and every installed
    /// adapter (under pbft), each in a fresh process on an OPT shape (random weights): training
    /// tokens/s, peak memory, trainable parameters, optimizer-state bytes and exported adapter
    /// size, with ratios to full fine-tuning. Targets: PEFT-style adapters ≤ 0.5× full's peak
    /// memory and ≥ 1.2× its tokens/s.
    Methods(MethodsBench),
    /// In-context learning with a shared context: the `icl` method scoring queries after a
    /// 16-shot context whose keys/values are computed once, vs re-encoding the context with
    /// every query. Target: ≥ 8× faster.
    Icl(IclBench),
    /// A pbft training run (k examples of the embedded task, batch 16) as ftlab runs it —
    /// dynamic padding, LM head only at the answer position — vs the llmft protocol: every
    /// sequence padded to 256 and logits at every position. Target: ≥ 3× faster.
    Protocol(ProtocolBench),
    /// Context distillation's costs: a training epoch against a pbft epoch on the same inputs
    /// (target ≤ 1.2×), and the teacher's precomputation with a shared context's keys/values
    /// kept against re-encoding the context per input (target ≥ 5× faster).
    Distill(DistillBench),
}

/// The OPT shape and batch every benchmark measures.
#[derive(Debug, Args)]
pub struct ShapeArgs {
    /// A config.json to take the shape from (default: facebook/opt-125m's).
    #[arg(long)]
    config: Option<PathBuf>,
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

impl ShapeArgs {
    fn shape(&self) -> Shape {
        Shape { config: self.config.clone(), batch: self.batch, seq: self.seq, threads: self.threads }
    }
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
pub struct MemoryBench {
    #[command(flatten)]
    shape: ShapeArgs,
    /// Optimizer steps per configuration.
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// Checkpoint the decoder layers' activations (`train.gradient_checkpointing`): recompute
    /// them in the backward pass instead of keeping them.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Measure one configuration in this process (`full`, `bitfit` or `lora`); used by the
    /// parent invocation.
    #[arg(long, hide = true)]
    child: Option<String>,
}

#[derive(Debug, Args)]
pub struct MethodsBench {
    #[command(flatten)]
    shape: ShapeArgs,
    /// Optimizer steps per method (the first is a warm-up, untimed).
    #[arg(long, default_value_t = 4)]
    steps: usize,
    /// Measure every method this many times, in interleaved rounds, and keep its fastest
    /// tokens/s and smallest peak memory (the least disturbed by other work on the machine).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the measurements to DIR/bench-methods.json, for `ftlab results plot --kind
    /// methods DIR`.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Checkpoint the decoder layers' activations (`train.gradient_checkpointing`): recompute
    /// them in the backward pass instead of keeping them.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Measure one method in this process; used by the parent invocation.
    #[arg(long, hide = true)]
    child: Option<String>,
}

#[derive(Debug, Args)]
pub struct IclBench {
    #[command(flatten)]
    shape: ShapeArgs,
    /// Demonstrations in the context (balanced, from the embedded task).
    #[arg(long, default_value_t = 16)]
    shots: usize,
    /// Queries scored (the in-domain eval set's first rows).
    #[arg(long, default_value_t = 100)]
    queries: usize,
}

#[derive(Debug, Args)]
pub struct ProtocolBench {
    #[command(flatten)]
    shape: ShapeArgs,
    /// Training examples k.
    #[arg(long, default_value_t = 16)]
    shots: usize,
    /// Epochs timed for each protocol (the paper runs 40; the ratio is per epoch).
    #[arg(long, default_value_t = 2)]
    epochs: usize,
}

#[derive(Debug, Args)]
pub struct DistillBench {
    #[command(flatten)]
    shape: ShapeArgs,
    /// Labelled examples both objectives train on (context_distill with `inputs = "labelled"`).
    #[arg(long, default_value_t = 32)]
    shots: usize,
    /// Epochs timed per objective (the median is reported), after one untimed warm-up epoch.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Demonstrations in the context the teacher reads.
    #[arg(long, default_value_t = 16)]
    k: usize,
    /// Unlabelled inputs whose teacher distributions are precomputed.
    #[arg(long, default_value_t = 64)]
    inputs: usize,
}

pub fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Model(args) => model(args),
        BenchCommand::Hooks(args) => hooks(args),
        BenchCommand::Memory(args) => memory(args),
        BenchCommand::Methods(args) => methods(args),
        BenchCommand::Icl(args) => icl(args),
        BenchCommand::Protocol(args) => protocol(args),
        BenchCommand::Distill(args) => distill(args),
    }?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
struct ModelReport {
    batch: i64,
    seq: i64,
    threads: i32,
    matmul_gflops: f64,
    forward: Throughput,
    train_step: Throughput,
    reference: Option<Reference>,
}

fn model(args: ModelBench) -> anyhow::Result<()> {
    let shape = args.shape.shape();
    let (config_text, config) = shape.load()?;
    let device = args.device.resolve()?;
    let model = bench::random_model(&config, device)?;
    eprintln!("measuring ftlab: {} × {} tokens, {} threads …", shape.batch, shape.seq, shape.threads);
    let matmul_gflops = bench::matmul_gflops(2048, 768, 3072, 10, device);
    let forward = bench::forward_throughput(&model, shape.batch, shape.seq, args.repeats)?;
    let train_step = bench::train_step_throughput(&model, shape.batch, shape.seq, args.repeats)?;
    drop(model);
    let reference = match &args.python {
        Some(python) => {
            eprintln!("measuring PyTorch + transformers with {python} …");
            Some(bench::reference::measure(python, &config_text, &shape, args.repeats)?)
        }
        None => None,
    };
    let report = ModelReport {
        batch: shape.batch,
        seq: shape.seq,
        threads: shape.threads,
        matmul_gflops,
        forward,
        train_step,
        reference,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_model(&report)?;
    }
    Ok(())
}

fn print_model(r: &ModelReport) -> anyhow::Result<()> {
    outln!(
        "OPT shape, batch {} × {} tokens, fp32, {} threads; matmul 2048×768×3072: {:.1} GFLOP/s",
        r.batch,
        r.seq,
        r.threads,
        r.matmul_gflops
    );
    outln!();
    outln!("| step | ftlab tok/s | transformers tok/s | ftlab / transformers | ftlab GFLOP/s | % of matmul rate |");
    outln!("|---|---|---|---|---|---|");
    for (name, ours, theirs) in [
        ("forward", r.forward, r.reference.as_ref().map(|x| x.forward_tokens_per_s)),
        ("train step", r.train_step, r.reference.as_ref().map(|x| x.train_tokens_per_s)),
    ] {
        let (theirs_text, ratio) = match theirs {
            Some(t) => (format!("{t:.1}"), format!("{:.3}", ours.tokens_per_s / t)),
            None => ("-".into(), "-".into()),
        };
        outln!(
            "| {name} | {:.1} | {theirs_text} | {ratio} | {:.1} | {:.0}% |",
            ours.tokens_per_s,
            ours.gflops,
            100.0 * ours.gflops / r.matmul_gflops
        );
    }
    if let Some(x) = &r.reference {
        outln!();
        outln!("reference: transformers {}, torch {}, attention {}", x.transformers, x.torch, x.attention);
    }
    Ok(())
}

fn hooks(args: HooksBench) -> anyhow::Result<()> {
    let shape = args.shape.shape();
    let (_, config) = shape.load()?;
    let model = bench::random_model(&config, tch::Device::Cpu)?;
    let registry = ftlab_registry::Registry::discover();
    let task = ftlab_sdk::TaskInfo { name: "bench".into(), label_words: vec![], label_token_ids: vec![] };
    let mut state = HostState::new(task, 0);
    let adapters = load_adapters(&model, &registry, &[MethodSpec::named("probe_noop")], &mut state)
        .context("loading the probe_noop fixture (build it with `cargo build --release --workspace`)")?;
    let calls = config.num_hidden_layers * 7 + 1;
    eprintln!(
        "measuring: {} × {} tokens, {} threads, {calls} hook calls per forward …",
        shape.batch, shape.seq, shape.threads
    );
    let hooks = AdapterHooks { adapters: &adapters };
    let (plain, hooked) = bench::hook_overhead(&model, &hooks, shape.batch, shape.seq, args.repeats)?;
    let overhead = 100.0 * (hooked / plain - 1.0);
    if args.json {
        let report = json!({"plain_seconds": plain, "hooked_seconds": hooked, "overhead_percent": overhead, "hook_calls": calls});
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!("forward, no method:               {plain:.3} s");
        outln!("forward, no-op hook at all {calls} sites: {hooked:.3} s");
        outln!("ABI overhead:                     {overhead:+.2}% (target < 2%)");
    }
    Ok(())
}

/// The training configurations `bench memory` compares: `full` trains every parameter.
const MEMORY_CONFIGURATIONS: [&str; 3] = ["full", "bitfit", "lora"];

fn memory(args: MemoryBench) -> anyhow::Result<()> {
    let shape = args.shape.shape();
    if let Some(configuration) = &args.child {
        return print_child_cost(&shape, configuration, args.steps, args.gradient_checkpointing);
    }
    let mut peaks = Vec::new();
    for configuration in MEMORY_CONFIGURATIONS {
        let cost = cost_in_child("memory", configuration, &args.shape, args.steps, args.gradient_checkpointing)?;
        peaks.push((configuration, cost.peak_rss_bytes as f64));
    }
    let full = peaks[0].1;
    outln!("| training | peak RSS | × full |");
    outln!("|---|---|---|");
    for (name, peak) in &peaks {
        outln!("| {name} | {:.2} GB | {:.2} |", peak / 1e9, peak / full);
    }
    outln!(
        "(batch {} × {} tokens, {} steps{}, target: bitfit and lora ≤ 0.50 × full)",
        shape.batch,
        shape.seq,
        args.steps,
        if args.gradient_checkpointing { ", activations checkpointed" } else { "" }
    );
    Ok(())
}

/// A configuration of `bench memory` and `bench methods`: `full` (the run's default objective,
/// pbft, every parameter training), another objective's name (every parameter), or an
/// adapter's (under the default objective).
fn configuration(name: &str) -> anyhow::Result<(MethodSpec, Vec<MethodSpec>)> {
    let default = crate::config::load(None, &[])?.method;
    let registry = ftlab_registry::Registry::discover();
    let role = registry.methods().find(|m| m.name == name).map(|m| m.role);
    Ok(match role {
        Some(ftlab_sdk::Role::Adapter) => (default, vec![MethodSpec::named(name)]),
        Some(ftlab_sdk::Role::Objective) => (MethodSpec::named(name), vec![]),
        None => (default, vec![]),
    })
}

/// The child side: measures `configuration` in this process and prints its cost as JSON.
fn print_child_cost(shape: &Shape, name: &str, steps: usize, checkpoint: bool) -> anyhow::Result<()> {
    let (objective, adapters) = configuration(name)?;
    let cost = bench::memory::training_cost(shape, &objective, &adapters, steps, checkpoint)?;
    outln!("{}", serde_json::to_string(&cost)?);
    Ok(())
}

/// Measures `configuration` in a fresh `ftlab bench SUBCOMMAND --child` process (so its peak
/// memory is its own).
fn cost_in_child(
    subcommand: &str,
    configuration: &str,
    shape: &ShapeArgs,
    steps: usize,
    checkpoint: bool,
) -> anyhow::Result<TrainingCost> {
    eprintln!("measuring {configuration} …");
    let exe = std::env::current_exe().context("locating the ftlab binary")?;
    let mut child = Command::new(&exe);
    child.args(["bench", subcommand, "--child", configuration, "--steps", &steps.to_string()]);
    if checkpoint {
        child.arg("--gradient-checkpointing");
    }
    child.args(["--batch", &shape.batch.to_string(), "--seq", &shape.seq.to_string()]);
    child.args(["--threads", &shape.threads.to_string()]);
    if let Some(config) = &shape.config {
        child.arg("--config").arg(config);
    }
    Ok(bench::memory::in_child(child, configuration)?)
}

fn methods(args: MethodsBench) -> anyhow::Result<()> {
    let shape = args.shape.shape();
    if let Some(configuration) = &args.child {
        return print_child_cost(&shape, configuration, args.steps, args.gradient_checkpointing);
    }
    // Every other installed objective trains in full beside the default one, every adapter under
    // it, after `prepare` on the batch as its training set (CPT's context). An objective that
    // cannot train on it (ICL trains nothing; context distillation needs unlabelled inputs, its
    // costs are `bench distill`'s; the LM objective needs documents) is reported as not measured.
    let default = crate::config::load(None, &[])?.method.name;
    let registry = ftlab_registry::Registry::discover();
    let of = |role: ftlab_sdk::Role| {
        let mut names: Vec<String> =
            registry.methods().filter(|m| m.role == role && m.name != default).map(|m| m.name.clone()).collect();
        names.sort();
        names
    };
    let objectives = of(ftlab_sdk::Role::Objective);
    let names: Vec<String> = std::iter::once("full".to_string())
        .chain(objectives.iter().cloned())
        .chain(of(ftlab_sdk::Role::Adapter))
        .collect();
    // Round after round over every configuration, so that a disturbance spreads over all.
    let mut runs: Vec<(String, Vec<TrainingCost>)> = names.iter().map(|n| (n.clone(), Vec::new())).collect();
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            eprintln!("round {round} of {}", args.rounds);
        }
        // A configuration that failed once is not tried again.
        for (name, costs) in runs.iter_mut().filter(|(_, costs)| round == 1 || !costs.is_empty()) {
            match cost_in_child("methods", name, &args.shape, args.steps, args.gradient_checkpointing) {
                Ok(cost) => costs.push(cost),
                Err(e) => eprintln!("{name}: not measured: {e:#}"),
            }
        }
    }
    let rows: Vec<MethodCost> = runs
        .into_iter()
        .filter_map(|(method, runs)| Some(MethodCost { method, cost: TrainingCost::best(&runs)?, runs }))
        .collect();
    let record = MethodsRecord {
        batch: shape.batch,
        seq: shape.seq,
        steps: args.steps,
        gradient_checkpointing: args.gradient_checkpointing,
        rounds: args.rounds as usize,
        rows,
    };
    if let Some(dir) = &args.out {
        eprintln!("wrote {}", record.write(dir)?.display());
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&record)?);
        return Ok(());
    }
    let full = &record.rows.iter().find(|r| r.method == "full").context("full fine-tuning was not measured")?.cost;
    outln!("| method | tokens/s | × full | peak RSS | × full | trainable | optimizer state | × full | adapter file |");
    outln!("|---|---|---|---|---|---|---|---|---|");
    for MethodCost { method: name, cost: c, .. } in &record.rows {
        let label = if name == "full" {
            format!("full ({default})")
        } else if objectives.contains(name) {
            format!("{name} (full)")
        } else {
            format!("{default} + {name}")
        };
        outln!(
            "| {label} | {:.0} | {:.2} | {:.2} GB | {:.2} | {} | {:.1} MB | {:.3} | {} |",
            c.tokens_per_s,
            c.tokens_per_s / full.tokens_per_s,
            c.peak_rss_bytes as f64 / 1e9,
            c.peak_rss_bytes as f64 / full.peak_rss_bytes as f64,
            c.trainable_parameters,
            c.optimizer_state_bytes as f64 / 1e6,
            c.optimizer_state_bytes as f64 / full.optimizer_state_bytes as f64,
            if c.adapter_bytes > 0 { format!("{:.1} KB", c.adapter_bytes as f64 / 1e3) } else { "-".into() },
        );
    }
    outln!(
        "(batch {} × {} tokens, {} steps{}, best of {} rounds; targets: PEFT-style adapters ≤ 0.50 × full's peak and \
         ≥ 1.2 × its tokens/s)",
        shape.batch,
        shape.seq,
        args.steps,
        if args.gradient_checkpointing { ", activations checkpointed" } else { "" },
        args.rounds
    );
    Ok(())
}

fn icl(args: IclBench) -> anyhow::Result<()> {
    let icl = |cache: bool| MethodSpec { name: "icl".into(), config: json!({ "cache_context": cache }) };
    let times = bench::icl::scoring_times(&args.shape.shape(), &[icl(true), icl(false)], args.shots, args.queries)?;
    let [cached, reencoded] = times.seconds[..] else { unreachable!("two configurations measured") };
    outln!("{} queries after a {}-shot context of {} tokens:", times.queries, args.shots, times.context_tokens);
    outln!("context keys/values computed once: {cached:.1} s");
    outln!("context re-encoded per query:      {reencoded:.1} s");
    outln!("speed-up: {:.1}× (target ≥ 8×)", reencoded / cached);
    Ok(())
}

fn protocol(args: ProtocolBench) -> anyhow::Result<()> {
    let [ftlab, llmft] = bench::protocol::epoch_seconds(&args.shape.shape(), args.shots, args.epochs)?;
    outln!("pbft, {} examples, {} epochs, batch 16:", args.shots, args.epochs);
    outln!("ftlab (dynamic padding, LM head at the answer): {ftlab:.1} s");
    outln!("llmft protocol (pad to 256, logits everywhere):  {llmft:.1} s");
    outln!("speed-up: {:.1}× (target ≥ 3×)", llmft / ftlab);
    Ok(())
}

fn distill(args: DistillBench) -> anyhow::Result<()> {
    let distill = |options: serde_json::Value| MethodSpec { name: "context_distill".into(), config: options };
    let train = [MethodSpec::named("pbft"), distill(json!({ "inputs": "labelled", "k": args.k }))];
    let teacher = |cache: bool| distill(json!({ "resample": false, "k": args.k, "cache_context": cache }));
    let shape = args.shape.shape();
    let c =
        bench::distill::costs(&shape, &train, &[teacher(true), teacher(false)], args.shots, args.epochs, args.inputs)?;
    let ([pbft, distilled], [kept, reencoded]) = (c.epoch_seconds, c.prepare_seconds);
    let (_, config) = shape.load()?;
    outln!("OPT shape {} layers × {}, {} threads", config.num_hidden_layers, config.hidden_size, shape.threads);
    outln!("training epoch ({} labelled inputs, batch {}):", args.shots, c.batch_size);
    outln!("  pbft:                               {pbft:.2} s");
    outln!("  context_distill (teacher cached):   {distilled:.2} s");
    outln!("  ratio: {:.2}× (target ≤ 1.2×)", distilled / pbft);
    outln!("teacher precomputation ({} inputs, one {}-shot context):", c.unlabelled, args.k);
    outln!("  context keys/values kept:           {kept:.2} s");
    outln!("  context re-encoded per input:       {reencoded:.2} s");
    outln!("  speed-up: {:.1}× (target ≥ 5×)", reencoded / kept);
    Ok(())
}
