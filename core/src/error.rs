//! The error types of the ftlab runtime library: [`Error`], and [`PickleError`] for the details
//! of an unreadable `pytorch_model.bin`. This module imports nothing from the rest of the crate.
//!
//! Every variant names what a user has to look at — a file, a key, a shape — so a CLI error
//! message is enough to fix the input without reading the source. The binary wraps these in
//! `anyhow` for context; library code never panics on user input.

use std::path::PathBuf;

use zip::result::ZipError;

/// Errors raised by the ftlab runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A JSON file (config, index, tokenizer) is malformed or misses a field, or a value could
    /// not be written as JSON.
    #[error("{path}: JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What serde said, with line and column.
        source: serde_json::Error,
    },
    /// A model config has a value ftlab cannot use.
    #[error("{path}: key `{key}`: {message}")]
    Config {
        /// The `config.json` (or `<embedded>`).
        path: PathBuf,
        /// The offending key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A checkpoint is missing a tensor the model needs.
    #[error("{path}: missing tensor `{key}` (the model needs it; is this an OPT checkpoint?)")]
    MissingTensor {
        /// The checkpoint file or folder.
        path: PathBuf,
        /// The parameter name, as in the HF checkpoint.
        key: String,
    },
    /// A checkpoint holds a tensor the model does not have.
    #[error("{path}: unexpected tensor `{key}`: the config describes no such parameter")]
    UnexpectedTensor {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor name in the file.
        key: String,
    },
    /// A tensor's shape differs from what the config implies.
    #[error("{path}: tensor `{key}` has shape {found:?}, the config implies {expected:?}")]
    Shape {
        /// The file the tensor came from.
        path: PathBuf,
        /// The tensor name.
        key: String,
        /// The shape the model expects.
        expected: Vec<i64>,
        /// The shape found.
        found: Vec<i64>,
    },
    /// A model folder holds no weights file ftlab knows.
    #[error("{path}: no weights found: expected model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json")]
    NoWeights {
        /// The model folder.
        path: PathBuf,
    },
    /// A hub model is not in the local cache and the hub cannot be reached.
    #[error("model `{repo}` is not in the Hugging Face cache at {cache}, and it was not downloaded: {why}.\nFetch these files on a connected machine (e.g. `huggingface-cli download {repo} {files}`) into that cache, or pass a local folder that holds them.")]
    NotCached {
        /// The hub id.
        repo: String,
        /// The hub cache folder searched.
        cache: PathBuf,
        /// Why no download was tried or why it failed.
        why: String,
        /// The files needed, space separated.
        files: String,
    },
    /// Reading a `pytorch_model.bin` failed.
    #[error(transparent)]
    Pickle(#[from] PickleError),
    /// The tokenizer files are missing or malformed.
    #[error("{path}: tokenizer: {message}")]
    Tokenizer {
        /// The tokenizer file or folder.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A model name is neither `tiny-opt`, an existing folder, nor a hub id.
    #[error("model `{0}`: no such folder (a model is `tiny-opt`, a folder, or a hub id like facebook/opt-125m)")]
    UnknownModel(String),
    /// Inputs to the model are inconsistent (shapes, dtypes, ids out of range).
    #[error("invalid model input: {0}")]
    Input(String),
    /// A device or dtype name is not one ftlab knows, or the device is unavailable.
    #[error("{0}")]
    Device(String),
    /// A Slurm client command (sbatch, squeue, scancel) could not run or failed.
    #[error("slurm: {0}")]
    Slurm(String),
    /// A forward hook (a method plugin) failed.
    #[error("hook at {site} failed: {message}")]
    Hook {
        /// The hook site, e.g. `model.decoder.layers.3.self_attn.q_proj`.
        site: String,
        /// The hook's own message.
        message: String,
    },
    /// A run's configuration is invalid (unknown key, bad value, missing experiment file).
    #[error("run configuration: {0}")]
    RunConfig(String),
    /// A method failed (panicked, errored, or refused its hyperparameters); the message names
    /// the method and the call.
    #[error(transparent)]
    Method(#[from] ftlab_sdk::abi::PluginError),
    /// An adapter folder cannot be used: no method reads its format, or its method refused it.
    #[error("{path}: {message}")]
    AdapterFiles {
        /// The folder's `adapter_config.json`.
        path: PathBuf,
        /// What is wrong, from the method that reads it.
        message: String,
    },
    /// A method declared a hook site this ftlab does not have.
    #[error("method `{method}` declared hook site code {code}, which this ftlab does not have")]
    UnknownSite {
        /// The method's name.
        method: String,
        /// The site code it sent.
        code: u8,
    },
    /// A method replied with something the host cannot use (a malformed message, a missing
    /// `loss` or `scores`).
    #[error("method `{method}`: {message}")]
    MethodReply {
        /// The method's name.
        method: String,
        /// What was wrong with the reply.
        message: String,
    },
    /// A method's `predict` returned scores of the wrong shape.
    #[error("scores of shape {found:?}: expected [{rows}, V] (next-token logits) or [{rows}, C] (class scores)")]
    ScoresShape {
        /// The shape returned.
        found: Vec<i64>,
        /// Rows in the batch.
        rows: i64,
    },
    /// Training diverged: the loss is not a finite number.
    #[error("the loss became {value} at step {step} (lower train.lr?)")]
    NonFiniteLoss {
        /// The loss value (NaN or ±inf).
        value: f64,
        /// The optimizer step it happened at (1-based).
        step: usize,
    },
    /// The run was asked to stop (SIGTERM: a Slurm time limit, preemption or `scancel`) and
    /// stopped after a whole optimizer step.
    #[error("terminated by SIGTERM after step {step} (epoch {epoch}){saved}")]
    Terminated {
        /// Optimizer steps taken.
        step: usize,
        /// The 1-based epoch it stopped in.
        epoch: usize,
        /// What was kept: `; --resume continues from the checkpoint written then`, or nothing.
        saved: String,
    },
    /// A model's weights hold NaN or infinite values and the run is strict.
    #[error("model `{model}`: NaN or infinite values in {parameters} (a damaged or diverged checkpoint)")]
    NonFiniteWeights {
        /// The model.
        model: String,
        /// The parameters, comma separated.
        parameters: String,
    },
    /// Evaluation produced NaN or infinite scores: the model (or a method) diverged.
    #[error("eval set `{set}`: {rows} row(s) scored NaN or infinity after {step} optimizer step(s){}", parameter.as_ref().map(|p| format!("; `{p}` holds non-finite values")).unwrap_or_default())]
    NonFiniteScores {
        /// The eval set.
        set: String,
        /// Rows with non-finite scores.
        rows: usize,
        /// Optimizer steps taken.
        step: usize,
        /// The first parameter (base or trainable) with non-finite values, if any.
        parameter: Option<String>,
    },
    /// The optimizer could not update the parameters (libtorch's fused AdamW failed).
    #[error("AdamW step {step}: {message}")]
    Optimizer {
        /// The step.
        step: usize,
        /// libtorch's message.
        message: String,
    },
    /// A run's checkpoint lacks a tensor it should hold (another run's, or a damaged one).
    #[error("{path}: checkpoint has no `{key}`")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// The missing tensor.
        key: String,
    },
    /// A method library or method could not be found or loaded.
    #[error(transparent)]
    Registry(#[from] ftlab_registry::RegistryError),
    /// libtorch reported an error (out of memory, unsupported op on a device, ...).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A data file (TSV, CSV, JSONL, parquet) is unreadable or does not fit the task: a missing
    /// column, an unknown label, an empty value, a ragged row, no rows at all.
    #[error("{}{}: {message}", path.display(), location(*row, column.as_deref()))]
    Data {
        /// The file.
        path: PathBuf,
        /// The data row, counted from 1 after any header; `None` when the whole file is at fault.
        row: Option<usize>,
        /// The column, as named in the file (or `column_N` in a header-less file).
        column: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A hub dataset file is not in the local cache and was not downloaded.
    #[error("dataset `{repo}` (revision `{revision}`) is not in the Hugging Face cache at {cache}, and it was not downloaded: {why}.\nFetch it on a connected machine (e.g. `huggingface-cli download --repo-type dataset {repo} {files} --revision {revision}`) into that cache, or pass the data as a local file with --file and --columns.")]
    DatasetNotCached {
        /// The hub dataset id, e.g. `nyu-mll/glue`.
        repo: String,
        /// The branch or ref the files live on.
        revision: String,
        /// The hub cache folder searched.
        cache: PathBuf,
        /// Why no download was tried or why it failed.
        why: String,
        /// The files needed, space separated, relative to the repository.
        files: String,
    },
    /// A task or eval set name is not registered.
    #[error("unknown task `{name}`; known tasks: {known}")]
    UnknownTask {
        /// The name given.
        name: String,
        /// The registered names, comma separated.
        known: String,
    },
    /// A pattern, verbalizer or prompt setting cannot be used (unknown placeholder, a label
    /// word that is several tokens, a prompt that cannot fit the window).
    #[error("prompt: {0}")]
    Prompt(String),
    /// A sampling request cannot be met (more shots than examples, unbalanced k).
    #[error("sampling: {0}")]
    Sampling(String),
    /// A data option is malformed (a `--columns` mapping, a file format, a task setting).
    #[error("{0}")]
    DataOption(String),
    /// A benchmark's measurement failed (its child process, or the reference script).
    #[error("measuring {what}: {message}")]
    Measurement {
        /// What was being measured.
        what: String,
        /// What went wrong (the child's stderr).
        message: String,
    },
    /// Run records cannot be tabulated, plotted or exported as asked (an unknown column, no
    /// runs to show, a file that cannot be written).
    #[error("results: {0}")]
    Results(String),
}

/// The `: row N, column `c`` part of a data error message (empty when neither is known).
fn location(row: Option<usize>, column: Option<&str>) -> String {
    match (row, column) {
        (Some(row), Some(column)) => format!(": row {row}, column `{column}`"),
        (Some(row), None) => format!(": row {row}"),
        (None, Some(column)) => format!(": column `{column}`"),
        (None, None) => String::new(),
    }
}

/// Result type of the ftlab runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// Wraps a JSON error with the file it came from.
    pub fn json(path: impl Into<PathBuf>) -> impl FnOnce(serde_json::Error) -> Error {
        let path = path.into();
        move |source| Error::Json { path, source }
    }
}

/// Why a checkpoint could not be read. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    /// The file could not be opened or read.
    #[error("{}: I/O error: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// Not a zip archive (e.g. the legacy pre-1.6 torch.save format).
    #[error("{} is not a torch.save zip archive (the legacy pre-1.6 format is not supported; re-save with torch>=1.6): {source}", .path.display())]
    NotZip { path: PathBuf, source: ZipError },
    /// An entry of the archive is missing or unreadable (bad CRC, unsupported compression).
    #[error("{}: cannot read zip entry {entry}: {source}", .path.display())]
    Zip { path: PathBuf, entry: String, source: ZipError },
    /// The archive has no `<archive>/data.pkl` entry.
    #[error("{}: no `<archive>/data.pkl` entry; not a torch.save checkpoint", .path.display())]
    MissingPickle { path: PathBuf },
    /// The archive's `byteorder` entry is not `little`.
    #[error("{}: byteorder is {found:?}; only little-endian checkpoints are supported", .path.display())]
    ByteOrder { path: PathBuf, found: String },
    /// `data.pkl` uses a pickle opcode this reader does not implement.
    #[error("{}: data.pkl: unsupported pickle opcode {name} (0x{code:02x}) at byte {offset}", .path.display())]
    UnsupportedOpcode { path: PathBuf, name: &'static str, code: u8, offset: usize },
    /// `data.pkl` names a class or function outside the supported list.
    #[error("{}: data.pkl: unsupported global {module}.{name} at byte {offset}", .path.display())]
    UnsupportedGlobal { path: PathBuf, module: String, name: String, offset: usize },
    /// A torch storage class or dtype this reader does not map to a tch kind.
    #[error("{}: data.pkl: unsupported storage dtype torch.{dtype} at byte {offset}", .path.display())]
    UnsupportedDtype { path: PathBuf, dtype: String, offset: usize },
    /// `data.pkl` is truncated or not shaped like a torch state dict.
    #[error("{}: data.pkl: malformed pickle at byte {offset}: {reason}", .path.display())]
    Malformed { path: PathBuf, offset: usize, reason: String },
    /// The unpickled object is not a dict with string keys.
    #[error("{}: the pickled object is {found}, not a state dict", .path.display())]
    NotAStateDict { path: PathBuf, found: String },
    /// A state-dict value is not a tensor.
    #[error("{}: entry {key:?} is {found}, not a tensor", .path.display())]
    NotATensor { path: PathBuf, key: String, found: &'static str },
    /// A storage holds fewer bytes than declared, or a tensor's view reaches outside it.
    #[error("{}: entry {key:?}: storage too small: {detail}", .path.display())]
    StorageTooSmall { path: PathBuf, key: String, detail: String },
    /// libtorch refused to build a tensor.
    #[error("{}: entry {key:?}: libtorch error: {source}", .path.display())]
    Torch { path: PathBuf, key: String, source: tch::TchError },
}
