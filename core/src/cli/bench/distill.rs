//! `ftlab bench distill`: what context distillation costs. Its training epoch against a pbft
//! epoch on the same inputs (the teacher's targets are cached, so a step differs only by the KL
//! against them), and the teacher's precomputation with a shared context whose keys/values are
//! kept against re-encoding the context with every input.

use std::time::Instant;

use clap::Args;
use ftlab_core::methods::{MethodRun, MethodSpec};
use ftlab_core::run::data::RunData;
use ftlab_core::run::optim::AdamW;
use ftlab_core::run::{train, RunConfig};
use serde_json::json;

use super::{random_model, ShapeArgs};

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

pub fn distill(args: DistillBench) -> anyhow::Result<std::process::ExitCode> {
    let (_, shape) = args.shape.load()?;
    let mut config = RunConfig { shots: args.shots, ..Default::default() };
    config.train.unlabelled = args.inputs;
    let registry = ftlab_registry::Registry::discover();

    // 1. Seconds per training epoch, each objective on its own copy of the same model; epochs
    // alternate between the two so drift in the machine's speed affects both alike.
    let objectives = [
        MethodSpec::named("pbft"),
        MethodSpec { name: "context_distill".into(), config: json!({ "inputs": "labelled", "k": args.k }) },
    ];
    let models = [random_model(&shape, tch::Device::Cpu)?, random_model(&shape, tch::Device::Cpu)?];
    let data = RunData::load(&config, &models[0].tokenizer)?;
    let mut runs = Vec::new();
    for (spec, model) in objectives.iter().zip(&models) {
        let mut run = MethodRun::new(model, &registry, spec, &[], data.task_info(), 0)?;
        run.prepare(data.prepare_data(&model.tokenizer, model.device()))?;
        let optimizer = AdamW::new(run.trainable(), &config.train);
        runs.push((run, optimizer));
    }
    let mut seconds: [Vec<f64>; 2] = Default::default();
    for epoch in 0..=args.epochs.max(1) {
        for (i, (run, optimizer)) in runs.iter_mut().enumerate() {
            let start = Instant::now();
            train::train_epoch(&config, run, &data, &models[i].tokenizer, optimizer, epoch, usize::MAX)?;
            if epoch > 0 {
                // Epoch 0 warms up allocations and kernels.
                seconds[i].push(start.elapsed().as_secs_f64());
            }
        }
    }
    drop(runs);
    let epoch_seconds = seconds.map(|mut s| {
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    });

    // 2. Seconds of the teacher's precomputation over the unlabelled inputs, one shared context.
    let model = &models[0];
    let mut prepare_seconds = Vec::new();
    for cache_context in [true, false] {
        let options = json!({ "resample": false, "k": args.k, "cache_context": cache_context });
        let spec = MethodSpec { name: "context_distill".into(), config: options };
        let mut run = MethodRun::new(model, &registry, &spec, &[], data.task_info(), 0)?;
        let start = Instant::now();
        run.prepare(data.prepare_data(&model.tokenizer, model.device()))?;
        prepare_seconds.push(start.elapsed().as_secs_f64());
    }

    let batch = config.train.batch_size;
    println!("OPT shape {} layers × {}, {} threads", shape.num_hidden_layers, shape.hidden_size, args.shape.threads);
    println!("training epoch ({} labelled inputs, batch {batch}):", args.shots);
    println!("  pbft:                               {:.2} s", epoch_seconds[0]);
    println!("  context_distill (teacher cached):   {:.2} s", epoch_seconds[1]);
    println!("  ratio: {:.2}× (target ≤ 1.2×)", epoch_seconds[1] / epoch_seconds[0]);
    println!("teacher precomputation ({} inputs, one {}-shot context):", data.unlabelled.len(), args.k);
    println!("  context keys/values kept:           {:.2} s", prepare_seconds[0]);
    println!("  context re-encoded per input:       {:.2} s", prepare_seconds[1]);
    println!("  speed-up: {:.1}× (target ≥ 5×)", prepare_seconds[1] / prepare_seconds[0]);
    Ok(std::process::ExitCode::SUCCESS)
}
