//! `ftlab data list|show|sample|episodes`: what tasks exist, what their data looks like after the
//! task's filtering, exactly which rows and prompts a few-shot run would use, and the synthetic
//! episodes the embedded model is pretrained on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use ftlab_core::data::source::LocalSource;
use ftlab_core::data::synthetic::episodes::{self, EpisodeConfig};
use ftlab_core::data::synthetic::SyntheticConfig;
use ftlab_core::data::{
    sampling, task, Compat, DataOptions, Dataset, HansScope, PatternStyle, Prompt, PromptSpec, TaskDef,
};
use ftlab_core::model;
use ftlab_core::tokenizer::Tokenizer;
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// List the registered tasks and eval sets.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Split sizes after the task's filtering, label balance and token-length percentiles.
    Show(ShowArgs),
    /// The exact rows (in sampling order) and rendered prompts of a few-shot run.
    Sample(SampleArgs),
    /// Write few-shot episodes of the synthetic task as a JSONL corpus (a `text` column) for
    /// `ftlab run --plugin lm --task text --file F`: the documents the embedded model is
    /// pretrained on to learn in context (scripts/pretrain-embedded runs the stages).
    Episodes(EpisodesArgs),
}

#[derive(Debug, Args)]
pub struct EpisodesArgs {
    /// The JSONL file to write.
    out: PathBuf,
    /// Documents to write.
    #[arg(long, default_value_t = 1000)]
    documents: usize,
    /// Seed of the generator.
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// Demonstrations before each document's last item: `K` or `MIN-MAX` (uniform).
    #[arg(long, default_value = "0-8", value_parser = parse_range)]
    demonstrations: (usize, usize),
    /// Share of documents with no demonstrations at all (the others draw from the range).
    #[arg(long, default_value_t = 0.0)]
    without_demonstrations: f64,
    /// Share of documents whose label words are the reserved ` dog`/` river` (else ` Yes`/` No`
    /// or ` True`/` False`).
    #[arg(long, default_value_t = 1.0)]
    reserved: f64,
    /// Share of Yes/No and True/False documents with the pair's meaning swapped.
    #[arg(long, default_value_t = 0.0)]
    reversed: f64,
    /// The first item of a Yes/No or True/False document carries the pair's first word with this
    /// probability, whatever its example: before a demonstration the label is unknowable.
    #[arg(long)]
    first_item_prior: Option<f64>,
    /// Share of documents starting with a prefix of neutral words (position invariance).
    #[arg(long, default_value_t = 0.0)]
    prefix: f64,
    /// Longest prefix, in words.
    #[arg(long, default_value_t = 120)]
    max_prefix_words: usize,
    /// Share of last items written as the in-context query (`?  word`) rather than as a demonstration.
    #[arg(long, default_value_t = 0.5)]
    query_form: f64,
    /// Weights of the item families: the task's templates, copy-or-substitute, person-in-premise.
    #[arg(long, default_value = "0.5,0.3,0.2", value_parser = parse_families)]
    families: [f64; 3],
    /// Write `prompt`/`response` rows, the response being the last label word, so that the `lm`
    /// plugin's loss reads only it (instead of `text` rows trained on every token).
    #[arg(long)]
    label_response: bool,
}

fn parse_range(text: &str) -> Result<(usize, usize), String> {
    let number = |s: &str| s.trim().parse::<usize>().map_err(|e| format!("`{s}`: {e}"));
    match text.split_once('-') {
        Some((low, high)) => Ok((number(low)?, number(high)?)),
        None => number(text).map(|k| (k, k)),
    }
}

fn parse_families(text: &str) -> Result<[f64; 3], String> {
    let weights: Vec<f64> = text
        .split(',')
        .map(|w| w.trim().parse::<f64>().map_err(|e| format!("`{w}`: {e}")))
        .collect::<Result<_, _>>()?;
    weights.try_into().map_err(|w: Vec<f64>| format!("three weights expected, got {}", w.len()))
}

/// Which data: a task, or a user's file read as that task's data.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// The task (see `ftlab data list`).
    task: String,
    /// A .tsv, .csv, .jsonl or .parquet file to use instead of the task's own data.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Column mapping for --file, e.g. `premise=sentence1,hypothesis=sentence2,label=gold`
    /// (keys: the task's fields, `label`, `id`; unset keys default to their own names).
    #[arg(long, requires = "file")]
    columns: Option<String>,
    /// Evaluate all three HANS heuristics (30,000 rows) instead of lexical_overlap only.
    #[arg(long)]
    hans_all: bool,
    /// Seed of the synthetic task's generator.
    #[arg(long, default_value_t = 0)]
    synthetic_seed: u32,
}

/// How prompts are rendered and tokenized.
#[derive(Debug, Args)]
pub struct PromptArgs {
    /// Pattern style: minimal, gpt3 or eval-harness.
    #[arg(long, default_value = "minimal", value_parser = parse_style)]
    style: PatternStyle,
    /// Conventions: `llmft` (the exact text llmft's published runs fed the model: literal `\n`
    /// two-character sequences, llmft's spaces) or `clean` (real newlines, as DESIGN.md writes the
    /// patterns).
    #[arg(long, default_value = "llmft", value_parser = parse_compat)]
    compat: Compat,
    /// Tokenizer of this model: `tiny-opt`, a model folder, or a hub id already in the HF cache.
    #[arg(long, default_value = "tiny-opt")]
    model: String,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    prompt: PromptArgs,
    /// Only this split (default: every split of the task).
    #[arg(long)]
    split: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct SampleArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    prompt: PromptArgs,
    /// Shots: the training-set size (and the number of in-context demonstrations).
    #[arg(long)]
    k: usize,
    /// Data seed (llmft uses 0–9).
    #[arg(long)]
    data_seed: u32,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_style(s: &str) -> Result<PatternStyle, String> {
    PatternStyle::from_name(s).ok_or_else(|| format!("unknown style `{s}`: use minimal, gpt3 or eval-harness"))
}

fn parse_compat(s: &str) -> Result<Compat, String> {
    Compat::from_name(s).ok_or_else(|| format!("unknown compat `{s}`: use llmft or clean"))
}

pub fn run(command: DataCommand) -> anyhow::Result<ExitCode> {
    match command {
        DataCommand::List { json } => list(json),
        DataCommand::Show(args) => show(args),
        DataCommand::Sample(args) => sample(args),
        DataCommand::Episodes(args) => episodes(args),
    }
}

fn episodes(args: EpisodesArgs) -> anyhow::Result<ExitCode> {
    let config = EpisodeConfig {
        seed: args.seed,
        documents: args.documents,
        demonstrations: args.demonstrations,
        without_demonstrations: args.without_demonstrations,
        reserved: args.reserved,
        reversed: args.reversed,
        first_item_prior: args.first_item_prior,
        prefix: args.prefix,
        max_prefix_words: args.max_prefix_words,
        query_form: args.query_form,
        families: args.families,
    };
    let rows = episodes::write_embedded(config, args.label_response, &args.out)?;
    eprintln!("wrote {rows} episodes to {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

impl SourceArgs {
    fn resolve(&self) -> anyhow::Result<(&'static TaskDef, DataOptions)> {
        let task = task::find(&self.task)?;
        let columns = self.columns.as_deref().unwrap_or_default();
        let local = self.file.as_deref().map(|f| LocalSource::mapped(f, columns, task.fields())).transpose()?;
        let options = DataOptions {
            hans: if self.hans_all { HansScope::All } else { HansScope::LexicalOverlap },
            synthetic: SyntheticConfig { seed: self.synthetic_seed, ..SyntheticConfig::default() },
            local,
            ..DataOptions::from_env()
        };
        Ok((task, options))
    }
}

impl PromptArgs {
    fn prompt(&self, task: &TaskDef) -> anyhow::Result<(Tokenizer, Prompt)> {
        let tokenizer = model::load_tokenizer(&self.model)?;
        let spec = PromptSpec { style: self.style, compat: self.compat, ..PromptSpec::default() };
        let prompt = Prompt::new(task.prompt, task.label_names.len(), &spec, &tokenizer)?;
        Ok((tokenizer, prompt))
    }
}

#[derive(Serialize)]
struct TaskRow {
    name: &'static str,
    about: &'static str,
    source: &'static str,
    labels: &'static [&'static str],
    splits: &'static [&'static str],
    train_split: Option<&'static str>,
    eval_split: &'static str,
    ood: &'static [&'static str],
}

fn list(json: bool) -> anyhow::Result<ExitCode> {
    let rows: Vec<TaskRow> = task::all()
        .into_iter()
        .map(|t| TaskRow {
            name: t.name,
            about: t.about,
            source: t.source,
            labels: t.label_names,
            splits: t.splits,
            train_split: t.train_split,
            eval_split: t.eval_split,
            ood: t.ood,
        })
        .collect();
    if json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{:<16} {:<10} {:<22} {:<16} about", "task", "role", "eval split", "out of domain");
    for row in rows {
        let role = if row.train_split.is_some() { "train+eval" } else { "eval only" };
        outln!("{:<16} {:<10} {:<22} {:<16} {}", row.name, role, row.eval_split, row.ood.join(","), row.about);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct LabelShare {
    label: String,
    count: usize,
    fraction: f64,
}

#[derive(Serialize)]
struct SplitSummary {
    split: String,
    rows: usize,
    labels: Vec<LabelShare>,
    /// Token lengths of the rendered queries (`</s>` included) that fit OPT's window:
    /// nearest-rank percentiles.
    tokens: Percentiles,
    /// Rows over OPT's window of [`WINDOW`] tokens (counted without tokenizing them whole).
    over_window: usize,
    /// Rows of a user's file left out because their label is none of the task's, by label.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    unknown_labels: BTreeMap<String, usize>,
}

/// OPT's context window: longer queries are counted, not measured.
const WINDOW: usize = 2048;

#[derive(Serialize)]
struct Percentiles {
    p50: usize,
    p90: usize,
    p95: usize,
    p99: usize,
    max: usize,
    mean: f64,
}

#[derive(Serialize)]
struct ShowReport {
    task: String,
    tokenizer: String,
    style: &'static str,
    /// The prompt conventions (`llmft` or `clean`).
    compat: &'static str,
    splits: Vec<SplitSummary>,
    eval_subsets: Vec<(String, usize)>,
}

fn percentiles(mut lengths: Vec<usize>) -> Percentiles {
    lengths.sort_unstable();
    let rank = |p: f64| {
        let n = lengths.len();
        if n == 0 {
            return 0;
        }
        lengths[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1]
    };
    let mean = if lengths.is_empty() { 0.0 } else { lengths.iter().sum::<usize>() as f64 / lengths.len() as f64 };
    Percentiles { p50: rank(50.0), p90: rank(90.0), p95: rank(95.0), p99: rank(99.0), max: rank(100.0), mean }
}

fn summarize(data: &Dataset, split: &str, prompt: &Prompt, tokenizer: &Tokenizer) -> anyhow::Result<SplitSummary> {
    let counts = data.label_counts();
    let labels = counts
        .iter()
        .zip(&data.label_names)
        .map(|(&count, label)| LabelShare {
            label: label.clone(),
            count,
            fraction: if data.is_empty() { 0.0 } else { count as f64 / data.len() as f64 },
        })
        .collect();
    let (mut lengths, mut over_window) = (Vec::with_capacity(data.len()), 0);
    for example in &data.examples {
        match prompt.encode_capped(tokenizer, example, WINDOW)? {
            Some(ids) => lengths.push(ids.len()),
            None => over_window += 1,
        }
    }
    let unknown_labels = data.unknown_labels.clone();
    Ok(SplitSummary {
        split: split.into(),
        rows: data.len(),
        labels,
        tokens: percentiles(lengths),
        over_window,
        unknown_labels,
    })
}

fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let (task, options) = args.source.resolve()?;
    let (tokenizer, prompt) = args.prompt.prompt(task)?;
    let splits: Vec<&str> = match (&args.split, &options.local) {
        (_, Some(_)) => vec!["file"],
        (Some(split), None) => vec![split.as_str()],
        (None, None) => task.splits.to_vec(),
    };
    let mut summaries = vec![];
    for split in &splits {
        let data = task.load_split(split, &options).with_context(|| format!("loading {}/{split}", task.name))?;
        summaries.push(summarize(&data, split, &prompt, &tokenizer)?);
    }
    let eval = task.eval_set(&options, true)?;
    let eval_subsets = eval.subsets.iter().map(|s| (s.name.clone(), s.positions.len())).collect();
    let report = ShowReport {
        task: task.name.into(),
        tokenizer: args.prompt.model.clone(),
        style: args.prompt.style.name(),
        compat: args.prompt.compat.name(),
        splits: summaries,
        eval_subsets,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "task {} (tokens: {} tokenizer, {} pattern, {} compat)",
        report.task,
        report.tokenizer,
        report.style,
        report.compat
    );
    outln!("{:<24} {:>8}  {:<44} tokens p50/p90/p95/p99/max", "split", "rows", "labels");
    for s in &report.splits {
        let labels: Vec<String> =
            s.labels.iter().map(|l| format!("{} {} ({:.1}%)", l.label, l.count, 100.0 * l.fraction)).collect();
        let t = &s.tokens;
        outln!(
            "{:<24} {:>8}  {:<44} {}/{}/{}/{}/{}",
            s.split,
            s.rows,
            labels.join(", "),
            t.p50,
            t.p90,
            t.p95,
            t.p99,
            t.max
        );
        if s.over_window > 0 {
            outln!("{:<24} {:>8}  rows over {WINDOW} tokens (not in the percentiles)", "", s.over_window);
        }
        for (label, count) in &s.unknown_labels {
            outln!("{:<24} {:>8}  rows left out: label `{label}` is none of the task's", "", count);
        }
    }
    outln!("eval subsets of {}:", task.eval_split);
    for (name, rows) in &report.eval_subsets {
        outln!("  {name:<48} {rows:>8}");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct SampledRow {
    position: usize,
    id: i64,
    label: String,
    query: String,
    label_word: String,
}

#[derive(Serialize)]
struct SampleReport {
    task: String,
    pool: String,
    pool_size: usize,
    k: usize,
    data_seed: u32,
    style: &'static str,
    /// The prompt conventions (`llmft` or `clean`).
    compat: &'static str,
    /// `np.random.seed(data_seed); np.random.choice(pool_size, k, replace=False)`, in order.
    train: Vec<SampledRow>,
    /// Class-balanced, shuffled demonstrations (positions in context order).
    icl_positions: Option<Vec<usize>>,
    /// The in-context prefix every test query follows.
    icl_context: Option<String>,
    /// Why there is no in-context sample (e.g. k not divisible by the label count).
    icl_note: Option<String>,
}

fn sample(args: SampleArgs) -> anyhow::Result<ExitCode> {
    let (task, options) = args.source.resolve()?;
    let (_, prompt) = args.prompt.prompt(task)?;
    let pool = task.train_pool(&options)?;
    let positions = sampling::few_shot_positions(pool.len(), args.k, args.data_seed)?;
    let train = positions
        .iter()
        .map(|&position| {
            let example = &pool.examples[position];
            SampledRow {
                position,
                id: example.id,
                label: pool.label_names[example.label].clone(),
                query: prompt.query(example),
                // Documents (the `text` task) have no label word.
                label_word: prompt.words.get(example.label).cloned().unwrap_or_default(),
            }
        })
        .collect();
    let (icl_positions, icl_context, icl_note) = match sampling::balanced_demonstrations(&pool, args.k, args.data_seed)
    {
        Ok(icl) => {
            let context = prompt.context(icl.iter().map(|&p| &pool.examples[p]));
            (Some(icl), Some(context), None)
        }
        Err(e) => (None, None, Some(e.to_string())),
    };
    let report = SampleReport {
        task: task.name.into(),
        pool: pool.name.clone(),
        pool_size: pool.len(),
        k: args.k,
        data_seed: args.data_seed,
        style: args.prompt.style.name(),
        compat: args.prompt.compat.name(),
        train,
        icl_positions,
        icl_context,
        icl_note,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_sample(&report)?;
    Ok(ExitCode::SUCCESS)
}

fn print_sample(report: &SampleReport) -> anyhow::Result<()> {
    outln!(
        "{} k={} data_seed={}: pool {} ({} rows), {} pattern, {} compat",
        report.task,
        report.k,
        report.data_seed,
        report.pool,
        report.pool_size,
        report.style,
        report.compat
    );
    outln!(
        "training set (np.random.choice order): positions {:?}",
        report.train.iter().map(|r| r.position).collect::<Vec<_>>()
    );
    for row in &report.train {
        outln!("--- position {} (id {}, {}):\n{}{}", row.position, row.id, row.label, row.query, row.label_word);
    }
    match (&report.icl_positions, &report.icl_context, &report.icl_note) {
        (Some(positions), Some(context), _) => {
            outln!("\nin-context demonstrations (balanced, shuffled): positions {positions:?}");
            outln!("--- context:\n{context}");
        }
        (_, _, Some(note)) => outln!("\nno in-context sample: {note}"),
        _ => {}
    }
    Ok(())
}
