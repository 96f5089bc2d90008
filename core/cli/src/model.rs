//! `ftlab model info|forward`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ftlab_core::methods::hooks::AdapterHooks;
use ftlab_core::model::hooks::ForwardHooks;
use ftlab_core::model::{self, ForwardInput, LoadOptions, Model, OptConfig, WeightsFormat};
use ftlab_core::tokenizer::Padding;
use ftlab_core::{DeviceSpec, Dtype};
use ftlab_registry::Registry;
use serde::Serialize;
use tch::{Kind, Tensor};

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Print a model's configuration, parameter count and weight memory per dtype.
    Info {
        /// `tiny-opt` (embedded, pretrained), `tiny-opt-random`, a folder with config.json, or a hub id such as facebook/opt-125m.
        model: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run the model on text or on token ids and write the logits to a safetensors file.
    ///
    /// The output holds `logits` (float32 [B,T,V]), the `input_ids` used and the
    /// `attention_mask`; it is how parity with another implementation is checked.
    Forward(ForwardArgs),
    /// Write a model as an HF folder (config.json, model.safetensors, tokenizer.json).
    ///
    /// E.g. the embedded `tiny-opt` as a folder other tools read, a `.bin` checkpoint converted to
    /// safetensors in another dtype, or a model with an adapter merged in (`--adapter`).
    Save {
        /// The model (see `ftlab model info --help`).
        model: String,
        /// The folder to write.
        out: PathBuf,
        /// An adapter folder (PEFT's format, or an ftlab run's) to merge into the weights
        /// first; its method must be a weight update (LoRA, IA3, LIFT).
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[command(flatten)]
        load: LoadArgs,
    },
}

/// Where and how a model is loaded.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Device: auto (CUDA when usable), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Compute dtype: fp32, bf16 or fp16 (weights of any dtype are converted).
    #[arg(long, default_value = "fp32")]
    pub dtype: Dtype,
    /// Which weights file to read when a folder holds several: safetensors or bin.
    #[arg(long, value_parser = parse_format)]
    pub weights: Option<WeightsFormat>,
    /// The tokenizer of this model (a folder or hub id), for a model folder without tokenizer
    /// files (what `save_pretrained` writes); only text input needs one.
    #[arg(long)]
    pub tokenizer: Option<String>,
}

impl LoadArgs {
    pub fn options(&self) -> anyhow::Result<LoadOptions> {
        Ok(LoadOptions { device: self.device.resolve()?, dtype: self.dtype, weights_format: self.weights })
    }
}

fn parse_format(s: &str) -> Result<WeightsFormat, String> {
    WeightsFormat::from_name(s).ok_or_else(|| format!("unknown weights format `{s}`: use safetensors or bin"))
}

#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// The model (see `ftlab model info --help`).
    model: String,
    /// Text to run (repeat for a batch, right-padded); `</s>` is prepended as OPT's tokenizer does.
    #[arg(long, required_unless_present = "input", conflicts_with = "input")]
    text: Vec<String>,
    /// A safetensors file with `input_ids` (int64 [B,T]) and optionally `attention_mask`.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// An adapter folder (adapter_config.json + adapter_model.safetensors, from PEFT or from an
    /// ftlab run), run through the plugin its `peft_type` names (LoRA, IA3, a soft prompt, LIFT,
    /// …); logits cover the input's tokens (PEFT's also cover a soft prompt's virtual tokens).
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    load: LoadArgs,
}

pub fn run(command: ModelCommand) -> anyhow::Result<ExitCode> {
    match command {
        ModelCommand::Info { model, json } => info(&model, json),
        ModelCommand::Forward(args) => forward(args),
        ModelCommand::Save { model, out, adapter, load } => {
            let model = load_merged(&model, adapter.as_deref(), &load)?;
            model.save_pretrained(&out)?;
            eprintln!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Serialize)]
struct Info {
    model: String,
    layout: &'static str,
    num_parameters: i64,
    weight_bytes: std::collections::BTreeMap<String, i64>,
    config: OptConfig,
}

fn info(spec: &str, json: bool) -> anyhow::Result<ExitCode> {
    let config = model::source::config_of(spec)?;
    let layout = match (config.do_layer_norm_before, config.has_projections()) {
        (true, false) => "pre-LN, final layer norm",
        (true, true) => "pre-LN, final layer norm, project_in/out",
        (false, true) => "post-LN, project_in/out",
        (false, false) => "post-LN",
    };
    let n = config.num_parameters();
    let weight_bytes = Dtype::ALL.iter().map(|d| (d.to_string(), n * d.bytes() as i64)).collect();
    let info = Info { model: spec.into(), layout, num_parameters: n, weight_bytes, config };
    if json {
        outln!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(ExitCode::SUCCESS);
    }
    let c = &info.config;
    outln!("model                {}", info.model);
    outln!("layout               {}", info.layout);
    outln!("parameters           {} ({:.1}M, LM head tied)", n, n as f64 / 1e6);
    for dtype in Dtype::ALL {
        outln!("weights in {:<9} {}", dtype.to_string(), human_bytes(info.weight_bytes[&dtype.to_string()]));
    }
    outln!(
        "layers × hidden      {} × {} ({} heads of {})",
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.head_dim()
    );
    outln!("ffn_dim              {}", c.ffn_dim);
    outln!("word_embed_proj_dim  {}", c.word_embed_proj_dim);
    outln!("vocab_size           {}", c.vocab_size);
    outln!("max positions        {}", c.max_position_embeddings);
    Ok(ExitCode::SUCCESS)
}

fn human_bytes(bytes: i64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else {
        format!("{:.1} MB", b / 1e6)
    }
}

/// `spec` loaded as `load` says, with the PEFT adapter in `adapter` merged into its weights.
fn load_merged(spec: &str, adapter: Option<&Path>, load: &LoadArgs) -> anyhow::Result<Model> {
    let mut model = Model::load(spec, load.options()?).with_context(|| format!("loading model `{spec}`"))?;
    if let Some(tokenizer) = &load.tokenizer {
        let tokenizer =
            ftlab_core::model::load_tokenizer(tokenizer).with_context(|| format!("loading tokenizer `{tokenizer}`"))?;
        model.set_tokenizer(tokenizer)?;
    }
    if let Some(dir) = adapter {
        ftlab_core::methods::export::merge_adapter_dir(&model, &Registry::discover(), dir)
            .with_context(|| format!("merging adapter {} into `{spec}`", dir.display()))?;
    }
    Ok(model)
}

fn forward(args: ForwardArgs) -> anyhow::Result<ExitCode> {
    let model = load_merged(&args.model, None, &args.load)?;
    // The adapter runs hooked, as in training: soft prompts have no weights to merge into.
    let (_state, adapters) = match args.adapter.as_deref() {
        Some(dir) => {
            let (state, adapter) = ftlab_core::methods::export::load_adapter_dir(&model, &Registry::discover(), dir)
                .with_context(|| format!("loading adapter {} onto `{}`", dir.display(), args.model))?;
            (Some(state), vec![adapter])
        }
        None => (None, Vec::new()),
    };
    let hooks = AdapterHooks { adapters: &adapters };
    let device = model.device();
    let (ids, mask) = match &args.input {
        Some(path) => read_inputs(path)?,
        None => {
            let texts: Vec<&str> = args.text.iter().map(String::as_str).collect();
            let batch = model.tokenizer.encode_batch(&texts, Padding::Right, device)?;
            (batch.input_ids, batch.attention_mask)
        }
    };
    let (ids, mask) = (ids.to_device(device), mask.to_device(device));
    let hooks: Option<&dyn ForwardHooks> = if adapters.is_empty() { None } else { Some(&hooks) };
    let input = ForwardInput { input_ids: Some(&ids), attention_mask: Some(&mask), hooks, ..Default::default() };
    let out = tch::no_grad(|| model.net.forward(input)).context("running the model")?;
    let logits =
        out.logits.context("the forward pass returned no logits")?.to_kind(Kind::Float).to_device(tch::Device::Cpu);
    let tensors = [
        ("logits", logits),
        ("input_ids", ids.to_device(tch::Device::Cpu)),
        ("attention_mask", mask.to_device(tch::Device::Cpu)),
    ];
    Tensor::write_safetensors(&tensors, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote logits {:?} to {}", tensors[0].1.size(), args.out.display());
    Ok(ExitCode::SUCCESS)
}

/// Reads `input_ids` and `attention_mask` (all ones when absent) from a safetensors file.
fn read_inputs(path: &Path) -> anyhow::Result<(Tensor, Tensor)> {
    let tensors = Tensor::read_safetensors(path).with_context(|| format!("reading {}", path.display()))?;
    let find = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t.shallow_clone());
    let Some(ids) = find("input_ids") else {
        bail!(
            "{}: no `input_ids` tensor (found: {})",
            path.display(),
            tensors.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
        );
    };
    if ids.kind() != Kind::Int64 || ids.dim() != 2 {
        bail!("{}: `input_ids` must be int64 [B,T], got {:?} {:?}", path.display(), ids.kind(), ids.size());
    }
    let mask = find("attention_mask").unwrap_or_else(|| ids.ones_like());
    if mask.size() != ids.size() {
        bail!("{}: `attention_mask` has shape {:?} but `input_ids` {:?}", path.display(), mask.size(), ids.size());
    }
    Ok((ids, mask.to_kind(Kind::Int64)))
}
