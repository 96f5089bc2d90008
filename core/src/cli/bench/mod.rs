//! `ftlab bench`: throughput against PyTorch + transformers, measured in one invocation.

mod distill;

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
const REFERENCE_SCRIPT: &str = include_str!("../../../benches/opt_reference.py");

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
    Distill(distill::DistillBench),
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
pub struct MemoryBench {
    #[command(flatten)]
    shape: ShapeArgs,
    /// Optimizer steps per configuration.
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// Measure one configuration in this process (`full`, `bitfit` or `lora`); used by the
    /// parent invocation.
    #[arg(long, hide = true)]
    child: Option<String>,
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
        BenchCommand::Memory(args) => memory(args),
        BenchCommand::Icl(args) => icl(args),
        BenchCommand::Protocol(args) => protocol(args),
        BenchCommand::Distill(args) => distill::distill(args),
    }
}

impl ShapeArgs {
    /// The shape's `config.json` (text and parsed: the given file or opt-125m's), with libtorch
    /// set to the requested threads.
    fn load(&self) -> anyhow::Result<(String, OptConfig)> {
        let text = match &self.config {
            Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            None => OPT_125M_CONFIG.to_string(),
        };
        let config = OptConfig::from_json(&text, self.config.as_deref().unwrap_or("<opt-125m>".as_ref()))?;
        tch::set_num_threads(self.threads);
        Ok((text, config))
    }
}

/// A model of `config` with random weights (seed 0) on `device`; the embedded tokenizer only
/// supplies ids below the model's vocabulary.
fn random_model(config: &OptConfig, device: tch::Device) -> anyhow::Result<Model> {
    Ok(Model::random(config, tiny::tokenizer()?, 0, LoadOptions { device, ..Default::default() })?)
}

fn hooks(args: HooksBench) -> anyhow::Result<ExitCode> {
    let (_, config) = args.shape.load()?;
    let model = random_model(&config, tch::Device::Cpu)?;
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

fn memory(args: MemoryBench) -> anyhow::Result<ExitCode> {
    if let Some(adapter) = &args.child {
        let peak = memory_child(&args, adapter)?;
        println!("{}", serde_json::json!({ "peak_rss_bytes": peak }));
        return Ok(ExitCode::SUCCESS);
    }
    let exe = std::env::current_exe().context("locating the ftlab binary")?;
    let mut peaks = Vec::new();
    for adapter in ["full", "bitfit", "lora"] {
        eprintln!("measuring {adapter} …");
        let mut command = Command::new(&exe);
        command.args(["bench", "memory", "--child", adapter, "--steps", &args.steps.to_string()]);
        command.args(["--batch", &args.shape.batch.to_string(), "--seq", &args.shape.seq.to_string()]);
        command.args(["--threads", &args.shape.threads.to_string()]);
        if let Some(config) = &args.shape.config {
            command.arg("--config").arg(config);
        }
        let output = command.output().context("running a measurement process")?;
        if !output.status.success() {
            bail!("measuring {adapter} failed:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        let reply: serde_json::Value = serde_json::from_slice(&output.stdout).context("reading a measurement")?;
        peaks.push((adapter, reply["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN)));
    }
    let full = peaks[0].1;
    println!("| training | peak RSS | × full |");
    println!("|---|---|---|");
    for (name, peak) in &peaks {
        println!("| {name} | {:.2} GB | {:.2} |", peak / 1e9, peak / full);
    }
    println!(
        "(batch {} × {} tokens, {} steps, target: bitfit and lora ≤ 0.50 × full)",
        args.shape.batch, args.shape.seq, args.steps
    );
    Ok(ExitCode::SUCCESS)
}

/// Trains `steps` pbft steps on random tokens with `adapter` (`full`: none) and returns the
/// process's peak resident memory.
fn memory_child(args: &MemoryBench, adapter: &str) -> anyhow::Result<u64> {
    let (_, config) = args.shape.load()?;
    let model = random_model(&config, tch::Device::Cpu)?;
    let registry = ftlab_registry::Registry::discover();
    let words = [" Yes", " No"];
    let ids: Vec<i64> =
        words.iter().map(|w| model.tokenizer.encode_plain(w).map(|ids| ids[0])).collect::<Result<_, _>>()?;
    let task = ftlab_sdk::TaskInfo {
        name: "bench".into(),
        label_words: words.map(String::from).to_vec(),
        label_token_ids: ids.clone(),
    };
    let adapters: Vec<MethodSpec> = if adapter == "full" { vec![] } else { vec![MethodSpec::named(adapter)] };
    let mut run =
        ftlab_core::methods::MethodRun::new(&model, &registry, &MethodSpec::named("pbft"), &adapters, task, 0)?;
    run.set_train(true)?;
    let mut optimizer = ftlab_core::run::optim::AdamW::new(run.trainable(), &Default::default());
    let (b, t) = (args.shape.batch, args.shape.seq);
    let input_ids = tch::Tensor::randint_low(4, config.vocab_size, [b, t], (tch::Kind::Int64, tch::Device::Cpu));
    let labels = tch::Tensor::randint(2, [b], (tch::Kind::Int64, tch::Device::Cpu));
    let gold = tch::Tensor::from_slice(&ids).index_select(0, &labels);
    for _ in 0..args.steps {
        let batch = ftlab_sdk::Tensors::new()
            .with("input_ids", input_ids.shallow_clone())
            .with("attention_mask", input_ids.ones_like())
            .with("labels", labels.shallow_clone())
            .with("label_token_ids", gold.shallow_clone())
            .with("verbalizer_ids", tch::Tensor::from_slice(&ids));
        optimizer.zero_grad();
        let (loss, _) = run.loss(batch)?;
        loss.backward();
        optimizer.step(1e-5)?;
    }
    ftlab_core::eval::resources::peak_rss_bytes().context("this OS reports no peak RSS")
}

fn icl(args: IclBench) -> anyhow::Result<ExitCode> {
    use ftlab_core::data::batch::{self as batches, BatchOrder};
    let (_, config) = args.shape.load()?;
    let model = random_model(&config, tch::Device::Cpu)?;
    let registry = ftlab_registry::Registry::discover();
    let run_config = ftlab_core::run::RunConfig { shots: args.shots, ..Default::default() };
    let data = ftlab_core::run::data::RunData::load(&run_config, &model.tokenizer)?;
    let context_tokens = model.tokenizer.encode(data.context.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?)?.len();
    let set = &data.eval[0].data;
    let positions: Vec<usize> = (0..args.queries.min(set.len())).collect();
    let queries = set.select("queries", &positions);
    let encoded: Vec<_> = queries
        .examples
        .iter()
        .enumerate()
        .map(|(position, e)| {
            let ids = data.prompt.encode(&model.tokenizer, "", e)?;
            Ok(ftlab_core::data::batch::EncodedExample { position, ids, label: e.label })
        })
        .collect::<anyhow::Result<_>>()?;
    let device = model.device();
    let mut seconds = Vec::new();
    for cache in [true, false] {
        let spec = MethodSpec { name: "icl".into(), config: serde_json::json!({ "cache_context": cache }) };
        let mut run = ftlab_core::methods::MethodRun::new(&model, &registry, &spec, &[], data.task_info(), 0)?;
        run.set_train(false)?;
        let start = std::time::Instant::now();
        run.prepare(data.prepare_data(&model.tokenizer, device))?;
        for b in batches::batches(&model.tokenizer, &encoded, &data.prompt.word_ids, 16, BatchOrder::ByLength, device) {
            let _scores = run.predict(data.method_batch(&b, &queries, false))?;
        }
        seconds.push(start.elapsed().as_secs_f64());
    }
    println!("{} queries after a {}-shot context of {context_tokens} tokens:", encoded.len(), args.shots);
    println!("context keys/values computed once: {:.1} s", seconds[0]);
    println!("context re-encoded per query:      {:.1} s", seconds[1]);
    println!("speed-up: {:.1}× (target ≥ 8×)", seconds[1] / seconds[0]);
    Ok(ExitCode::SUCCESS)
}

fn protocol(args: ProtocolBench) -> anyhow::Result<ExitCode> {
    use ftlab_core::data::batch::{self as batches, BatchOrder};
    use ftlab_core::model::{ForwardInput, LogitsAt};
    let (_, config) = args.shape.load()?;
    let run_config = ftlab_core::run::RunConfig { shots: args.shots, ..Default::default() };
    let mut seconds = Vec::new();
    for padded in [false, true] {
        let model = random_model(&config, tch::Device::Cpu)?;
        let data = ftlab_core::run::data::RunData::load(&run_config, &model.tokenizer)?;
        let params: Vec<(String, tch::Tensor)> = model.vs.variables().into_iter().collect();
        let mut optimizer = ftlab_core::run::optim::AdamW::new(params, &run_config.train);
        let mut examples = data.encoded.clone();
        if padded {
            // llmft pads every sequence to max_length; padding sits on the right.
            for e in &mut examples {
                e.ids.resize(run_config.train.max_length, model.tokenizer.pad_id());
            }
        }
        let start = std::time::Instant::now();
        for epoch in 0..args.epochs {
            let order = BatchOrder::Shuffled { seed: epoch as u64 };
            for mut b in batches::batches(&model.tokenizer, &examples, &data.prompt.word_ids, 16, order, model.device())
            {
                if padded {
                    // The padded rows' real tokens are the unpadded encodings' lengths.
                    let lengths: Vec<i64> = b.positions.iter().map(|&p| data.encoded[p].ids.len() as i64).collect();
                    let t = b.input_ids.size()[1];
                    let arange = tch::Tensor::arange(t, (tch::Kind::Int64, model.device())).unsqueeze(0);
                    b.attention_mask =
                        arange.lt_tensor(&tch::Tensor::from_slice(&lengths).unsqueeze(1)).to_kind(tch::Kind::Int64);
                }
                let logits = if padded { LogitsAt::All } else { LogitsAt::LastToken };
                let input = ForwardInput {
                    input_ids: Some(&b.input_ids),
                    attention_mask: Some(&b.attention_mask),
                    logits,
                    train: true,
                    ..Default::default()
                };
                let out = model.net.forward(input)?;
                let logits = out.logits.context("no logits")?;
                let last = if padded {
                    let v = logits.size()[2];
                    logits.gather(1, &out.last_token.view([-1, 1, 1]).expand([-1, 1, v], false), false).squeeze_dim(1)
                } else {
                    logits
                };
                let loss = last.cross_entropy_for_logits(&b.label_token_ids);
                optimizer.zero_grad();
                loss.backward();
                optimizer.clip_grad_norm(1.0);
                optimizer.step(1e-5)?;
            }
        }
        seconds.push(start.elapsed().as_secs_f64());
    }
    println!("pbft, {} examples, {} epochs, batch 16:", args.shots, args.epochs);
    println!("ftlab (dynamic padding, LM head at the answer): {:.1} s", seconds[0]);
    println!("llmft protocol (pad to 256, logits everywhere):  {:.1} s", seconds[1]);
    println!("speed-up: {:.1}× (target ≥ 3×)", seconds[1] / seconds[0]);
    Ok(ExitCode::SUCCESS)
}

fn model(args: ModelBench) -> anyhow::Result<ExitCode> {
    let (config_text, config) = args.shape.load()?;
    let device = args.device.resolve()?;
    let model = random_model(&config, device)?;
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
