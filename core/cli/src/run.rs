//! `ftlab run`: one run from an experiment file, `FTLAB_*` variables and flags.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::Setting;
use ftlab_core::run::{self, Headline, RunOptions, RunRecord, RunStatus};
use ftlab_registry::Registry;

/// Train (or prompt) with a method and evaluate in- and out-of-domain.
///
/// Settings are layered: defaults ← `--config FILE` (TOML) ← `FTLAB_*` environment variables
/// (`FTLAB_TRAIN__LR=1e-4`) ← these flags and `--set key=value`. With no config the run uses the
/// embedded tiny model and synthetic NLI task. The run folder (`OUT/NAME/`) receives the
/// resolved config, per-epoch metrics (`metrics.jsonl`), checkpoints and `record.json`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The objective method (`ftlab plugins list`), e.g. pbft, vanilla_ft, icl, context_distill.
    #[arg(long)]
    plugin: Option<String>,
    /// An adapter method, repeatable (e.g. `--adapter lora`); none means full fine-tuning.
    #[arg(long = "adapter")]
    adapters: Vec<String>,
    /// Experiment file (TOML) with any of the settings.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model: `tiny-opt` (embedded, pretrained), `tiny-opt-random`, a folder, or a hub id such as facebook/opt-125m.
    #[arg(long)]
    model: Option<String>,
    /// Tokenizer (a folder or hub id) for a model folder that has none, e.g. one written by
    /// `save_pretrained`.
    #[arg(long)]
    tokenizer: Option<String>,
    /// Task (`ftlab data list`).
    #[arg(long)]
    task: Option<String>,
    /// A file of the task's rows instead of its own data: .tsv, .csv, .jsonl or .parquet (the
    /// `text` task also reads .txt, one document per blank-line-separated block).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Which columns of `--file` hold the texts and label, e.g.
    /// `premise=sentence1,hypothesis=sentence2,label=gold_label` or `text=body`.
    #[arg(long)]
    columns: Option<String>,
    /// Few-shot training-set size k (for the `text` task: at most this many documents train).
    #[arg(long)]
    shots: Option<usize>,
    /// Seed of the few-shot draw and demonstrations.
    #[arg(long)]
    data_seed: Option<u32>,
    /// Seed of initialisation, dropout and batch order.
    #[arg(long)]
    seed: Option<u64>,
    /// Folder for run folders (default `runs`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// `auto`, `cpu`, `cuda:N`, or several (`cuda:0,cuda:1`) to spread the model's decoder
    /// layers over them (balanced by bytes, as transformers' `device_map="auto"`), for models
    /// whose weights exceed one GPU.
    #[arg(long)]
    device: Option<String>,
    /// Any setting by its dotted key, repeatable: `--set train.lr=3e-5 --set eval.max_examples=500`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Continue an interrupted or failed run from its last checkpoint. Only `eval.*`, `out`,
    /// `train.checkpoint`, `train.eval_every_epoch` and `train.gradient_checkpointing` may
    /// differ from the run's settings (and `train.epochs`/`train.max_steps` under a constant
    /// schedule); other changes are refused.
    #[arg(long)]
    resume: bool,
    /// Run again even if the run folder holds a finished run (moved aside to `NAME.N/` when its
    /// settings differ).
    #[arg(long)]
    force: bool,
    /// Stop after this many epochs (continue later with --resume), e.g. for time-limited jobs.
    #[arg(long)]
    epochs_budget: Option<usize>,
    /// Refuse a model whose weights hold NaN or infinite values (without it, the record warns).
    #[arg(long)]
    strict: bool,
    /// Print the record as JSON on stdout.
    #[arg(long)]
    json: bool,
}

impl RunArgs {
    /// Flags as dotted-key overrides, then `--set` in order.
    fn overrides(&self) -> anyhow::Result<Vec<Setting>> {
        let mut o: Vec<Setting> = Vec::new();
        let mut put = |flag: &str, key: &str, value: toml::Value| o.push(Setting::flag(flag, key, value));
        if let Some(v) = &self.plugin {
            put("--plugin", "method.name", v.clone().into());
        }
        if !self.adapters.is_empty() {
            let table =
                |name: &String| toml::Value::Table(toml::Table::from_iter([("name".to_string(), name.clone().into())]));
            let tables = self.adapters.iter().map(table).collect();
            put("--adapter", "adapters", toml::Value::Array(tables));
        }
        if let Some(v) = &self.model {
            put("--model", "model", v.clone().into());
        }
        if let Some(v) = &self.tokenizer {
            put("--tokenizer", "tokenizer", v.clone().into());
        }
        if let Some(v) = &self.task {
            put("--task", "task", v.clone().into());
        }
        if let Some(v) = &self.file {
            put("--file", "file", v.display().to_string().into());
        }
        if let Some(v) = &self.columns {
            put("--columns", "columns", v.clone().into());
        }
        if let Some(v) = self.shots {
            put("--shots", "shots", (v as i64).into());
        }
        if let Some(v) = self.data_seed {
            put("--data-seed", "data_seed", i64::from(v).into());
        }
        if let Some(v) = self.seed {
            put("--seed", "seed", (v as i64).into());
        }
        if let Some(v) = &self.device {
            put("--device", "device", v.clone().into());
        }
        if let Some(v) = &self.out {
            put("--out", "out", v.display().to_string().into());
        }
        for assignment in &self.sets {
            o.push(crate::config::parse_set(assignment)?);
        }
        Ok(o)
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = crate::config::load(args.config.as_deref(), &args.overrides()?)?;
    let options =
        RunOptions { resume: args.resume, force: args.force, epochs_budget: args.epochs_budget, strict: args.strict };
    eprintln!("run {} → {}", config.run_name(), config.out.join(config.run_name()).display());
    // SIGTERM (a Slurm time limit, preemption, scancel) stops after the current step with a
    // checkpoint that --resume continues from.
    ftlab_core::run::stop::on_sigterm();
    let record = run::run(&config, &options, &Registry::discover())?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        print_summary(&record)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One row per eval set: the majority baseline, the model before training (zero-shot), the ICL
/// reference when scored, and the model after training — accuracy over the verbalizer (for a
/// text set, next-token accuracy, then a row of perplexities).
fn print_summary(record: &RunRecord) -> anyhow::Result<()> {
    if record.status == RunStatus::Paused {
        outln!("paused after the epoch budget; continue with --resume");
        return Ok(());
    }
    let Some(last) = &record.last else { return Ok(()) };
    outln!("{} ({} trainable parameters)", record.name, record.trainable_parameters);
    let mut columns: Vec<(String, &Headline)> = Vec::new();
    if let Some(zero) = &record.zero_shot {
        columns.push(("before training".into(), zero));
    }
    if let Some(icl) = &record.icl_reference {
        columns.push((format!("ICL ({} shots)", record.config.eval.icl_shots), icl));
    }
    columns.push(("after training".into(), last));
    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    outln!("| eval set | examples | majority | {} |", names.join(" | "));
    outln!("|---|---|---|{}", "---|".repeat(columns.len()));
    let sets = |h: &Headline| h.report.as_array().cloned().unwrap_or_default();
    for (i, set) in sets(last).iter().enumerate() {
        let accuracy = |h: &Headline| sets(h).get(i).and_then(|s| s["scores"]["verbalizer"]["accuracy"].as_f64());
        let cells: Vec<String> =
            columns.iter().map(|(_, h)| accuracy(h).map_or("-".into(), |a| format!("{a:.3}"))).collect();
        let ood = if set["in_domain"].as_bool() == Some(true) { "" } else { " (OOD)" };
        outln!(
            "| {}{ood} | {} | {:.3} | {} |",
            set["name"].as_str().unwrap_or("?"),
            set["scores"]["examples"],
            set["scores"]["majority"]["accuracy"].as_f64().unwrap_or(f64::NAN),
            cells.join(" | ")
        );
        // A text set's row above is next-token accuracy; its perplexity follows.
        if set.get("language").is_some_and(|l| !l.is_null()) {
            let perplexity = |h: &Headline| sets(h).get(i).and_then(|s| s["language"]["perplexity"].as_f64());
            let cells: Vec<String> =
                columns.iter().map(|(_, h)| perplexity(h).map_or("-".into(), |p| format!("{p:.3}"))).collect();
            outln!(
                "| {} perplexity | {} tokens | - | {} |",
                set["name"].as_str().unwrap_or("?"),
                set["language"]["tokens"],
                cells.join(" | ")
            );
        }
    }
    if let Some((epoch, best)) = &record.best {
        outln!("best in-domain accuracy {:.3} after epoch {epoch}", best.acc_in);
    }
    let t = &record.timings;
    outln!("time: load {:.1}s, prepare {:.1}s, train {:.1}s, eval {:.1}s", t.load, t.prepare, t.train, t.eval);
    if let Some(train) = &record.train_resources {
        let peak = match (train.cuda_peak_bytes, train.peak_rss_bytes) {
            (Some(cuda), _) => format!("CUDA peak {:.2} GB", cuda as f64 / 1e9),
            (None, Some(rss)) => format!("peak RSS {:.2} GB", rss as f64 / 1e9),
            (None, None) => "peak memory unknown".into(),
        };
        outln!("training: {:.0} tokens/s, {peak}", train.tokens_per_s);
    }
    if let Some(p) = &record.platform {
        outln!("on {} ({} CPU kernels, {} threads)", p.device, p.cpu_capability, p.threads);
    }
    Ok(())
}
