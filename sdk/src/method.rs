//! The trait a method author implements: hyperparameters, role, and the hooks it needs.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::abi::{Inputs, Role};
use crate::host::{ForwardRequest, Host, Logits};
use crate::message::Tensors;
use crate::{Error, Result};

/// A hook site of the OPT forward pass (shared/DESIGN.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    /// Attention query projection output (before OPT's `head_dim^-0.5` scaling).
    QProj,
    /// Attention key projection output.
    KProj,
    /// Attention value projection output.
    VProj,
    /// Attention output projection output.
    OutProj,
    /// MLP up-projection output.
    Fc1,
    /// MLP down-projection output.
    Fc2,
    /// Token embeddings and mask, before positions are added.
    Embeddings,
    /// MLP activation output.
    Activation,
    /// Vectors every row reads first (a soft prompt), read once per forward pass.
    Prompt,
}

impl Site {
    /// The six linear sites, in forward order.
    pub const LINEAR: [Site; 6] = [Site::QProj, Site::KProj, Site::VProj, Site::OutProj, Site::Fc1, Site::Fc2];

    /// Every site.
    pub const ALL: [Site; 9] = [
        Site::QProj,
        Site::KProj,
        Site::VProj,
        Site::OutProj,
        Site::Fc1,
        Site::Fc2,
        Site::Embeddings,
        Site::Activation,
        Site::Prompt,
    ];

    /// The HF module name (`q_proj`, …, `fc2`), `embed_tokens` or `activation_fn`, or `prompt`.
    pub fn name(self) -> &'static str {
        match self {
            Site::QProj => "q_proj",
            Site::KProj => "k_proj",
            Site::VProj => "v_proj",
            Site::OutProj => "out_proj",
            Site::Fc1 => "fc1",
            Site::Fc2 => "fc2",
            Site::Embeddings => "embed_tokens",
            Site::Activation => "activation_fn",
            Site::Prompt => "prompt",
        }
    }

    /// The HF module path of the site in `layer`, e.g. `model.decoder.layers.3.self_attn.q_proj`.
    pub fn path(self, layer: i64) -> String {
        match self {
            Site::QProj | Site::KProj | Site::VProj | Site::OutProj => {
                format!("model.decoder.layers.{layer}.self_attn.{}", self.name())
            }
            Site::Embeddings => "model.decoder.embed_tokens".into(),
            Site::Prompt => "prompt".into(),
            _ => format!("model.decoder.layers.{layer}.{}", self.name()),
        }
    }

    /// Parses a site name (`q_proj`, …).
    pub fn from_name(name: &str) -> Option<Site> {
        Site::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The code that crosses the ABI.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The site of an ABI code.
    pub fn from_code(code: u8) -> Option<Site> {
        Site::ALL.get(usize::from(code)).copied()
    }
}

/// A batch handed to `loss` and `predict`. Tensors: `input_ids` and `attention_mask` (int64
/// `[B, T]`, right-padded, `</s>` first), `labels` (int64 `[B]`, class indices),
/// `label_token_ids` (int64 `[B]`, each row's gold verbalizer token), `verbalizer_ids`
/// (int64 `[C]`) and `target_start` (int64 `[B]`: the first token a next-token loss reads — a
/// response's first token, 1 for a document of the `text` task, the row's length for a query). JSON: `prompts`, each row rendered as a fine-tuning query (no label word), and
/// `icl_prompts`, each row rendered as an in-context query, to follow a context. The two differ
/// where the prompt's compat says so (llmft's minimal in-context query ends in a space); encode
/// `context + icl_prompt` as one string, as llmft does.
///
/// The data handed to `prepare` has the same tensors for the whole training set, and JSON with
/// `prompts` and `icl_prompts`, `demonstrations` (each training example rendered as an
/// in-context demonstration, label word included), `demonstration_prompts` (their fine-tuning
/// queries, equal to `prompts`), `separator` (between demonstrations), `context` (the run's
/// in-context demonstrations, balanced and shuffled as the protocol prescribes, ending with the
/// separator) and `unlabelled` / `unlabelled_icl` (unlabelled task inputs as fine-tuning and
/// in-context queries, when the run has any).
pub type Batch = Tensors;

impl Tensors {
    /// Token ids, int64 `[B, T]`.
    pub fn input_ids(&self) -> Result<&Tensor> {
        self.get("input_ids")
    }

    /// 1 on tokens, 0 on padding, int64 `[B, T]`.
    pub fn attention_mask(&self) -> Result<&Tensor> {
        self.get("attention_mask")
    }

    /// Class indices, int64 `[B]`.
    pub fn labels(&self) -> Result<&Tensor> {
        self.get("labels")
    }

    /// Each row's gold verbalizer token id, int64 `[B]`.
    pub fn label_token_ids(&self) -> Result<&Tensor> {
        self.get("label_token_ids")
    }

    /// Each row's first target token for a next-token loss, int64 `[B]`.
    pub fn target_start(&self) -> Result<&Tensor> {
        self.get("target_start")
    }

    /// A string list from the JSON metadata (e.g. `prompts`).
    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        let value = self.json.get(key).ok_or_else(|| Error::msg(format!("no `{key}` in the batch metadata")))?;
        Ok(serde_json::from_value(value.clone())?)
    }

    /// The run's in-context demonstrations as one string ending with the separator (`context`
    /// of the data handed to `prepare`).
    pub fn context(&self) -> Result<String> {
        let context = self.json.get("context").and_then(serde_json::Value::as_str);
        Ok(context.ok_or_else(|| Error::msg("no `context` in the prepare data"))?.to_string())
    }

    /// The labelled pool of the data handed to `prepare`, checked: as many demonstrations,
    /// queries and labels, every label in `0..num_labels`.
    pub fn demonstrations(&self, num_labels: usize) -> Result<Demonstrations> {
        let (texts, prompts) = (self.strings("demonstrations")?, self.strings("demonstration_prompts")?);
        let labels = self.json.get("labels_of_demonstrations").cloned();
        let labels: Vec<i64> = serde_json::from_value(labels.ok_or("no `labels_of_demonstrations` in the data")?)?;
        if labels.len() != texts.len() || prompts.len() != texts.len() {
            return Err(Error::msg(format!(
                "{} demonstrations but {} labels_of_demonstrations and {} demonstration_prompts",
                texts.len(),
                labels.len(),
                prompts.len()
            )));
        }
        let labels = (labels.iter())
            .map(|&l| usize::try_from(l).ok().filter(|l| *l < num_labels))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::msg(format!("a demonstration's label is outside 0..{num_labels}: {labels:?}")))?;
        let separator = self.json.get("separator").and_then(|s| s.as_str()).ok_or("no `separator` in the data")?;
        Ok(Demonstrations { texts, prompts, labels, separator: separator.into(), num_labels })
    }
}

/// The labelled few-shot set as `prepare` receives it, for methods that build their own
/// contexts from it ([`Tensors::demonstrations`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demonstrations {
    /// Each example rendered as an in-context demonstration, label word included.
    pub texts: Vec<String>,
    /// Each one's fine-tuning query: an input equal to one reads that demonstration's answer.
    pub prompts: Vec<String>,
    /// Their labels, in `0..num_labels`.
    pub labels: Vec<usize>,
    /// What follows each demonstration in a context.
    pub separator: String,
    /// Labels of the task.
    pub num_labels: usize,
}

impl Demonstrations {
    /// The context of the demonstrations at `positions`, each followed by the separator, as the
    /// runtime renders an ICL context.
    pub fn render(&self, positions: &[usize]) -> String {
        positions.iter().map(|&p| format!("{}{}", self.texts[p], self.separator)).collect()
    }

    /// Positions of `prompt`'s own demonstration(s), so a labelled input never reads its own
    /// answer in its context.
    pub fn positions_of(&self, prompt: &str) -> Vec<usize> {
        (0..self.prompts.len()).filter(|&p| self.prompts[p] == prompt).collect()
    }
}

/// A training loss and metrics to log beside it.
#[derive(Debug)]
pub struct Loss {
    /// Scalar to minimise.
    pub loss: Tensor,
    /// Extra metrics for this step (name, value).
    pub metrics: Vec<(String, f64)>,
}

impl Loss {
    /// A loss with no extra metrics.
    pub fn new(loss: Tensor) -> Self {
        Self { loss, metrics: Vec::new() }
    }
}

/// How the optimizer moments of one of the method's parameters move when the method changes
/// what its entries mean (e.g. a sparse update moved to a new mask): entry i of the new moments
/// is old entry `from[i]`, or zero where `from[i]` is -1, as for an entry that starts training.
/// The step count goes on, so bias correction continues as for the parameter's other entries.
#[derive(Debug)]
pub struct MomentMove {
    /// The parameter, named as given to [`Host::parameter`].
    pub parameter: String,
    /// int64, one per entry of the (flattened) parameter.
    pub from: Tensor,
}

/// An adapter's trained state as files: what `adapter_config.json` holds and the tensors of
/// `adapter_model.safetensors`, named as that file names them (PEFT's names where PEFT has the
/// method).
#[derive(Debug)]
pub struct Export {
    /// The content of `adapter_config.json` (PEFT's fields, including `peft_type`).
    pub config: serde_json::Value,
    /// The weights file's tensors by name.
    pub tensors: Vec<(String, Tensor)>,
}

/// A fine-tuning method. Implement the hooks your method needs; every one defaults to
/// "no change". Register it with [`crate::export_library!`].
///
/// ```ignore
/// use ftlab_sdk::prelude::*;
///
/// /// Only biases train (Ben Zaken et al., 2022, https://arxiv.org/abs/2106.10199).
/// #[derive(Default, Serialize, Deserialize, JsonSchema)]
/// pub struct Config {}
///
/// pub struct BitFit;
///
/// impl Method for BitFit {
///     const NAME: &'static str = "bitfit";
///     const ROLE: Role = Role::Adapter;
///     const DESCRIPTION: &'static str = "Trains only the bias terms.";
///     type Config = Config;
///     fn new(_: Config, _: &mut Host) -> Result<Self> { Ok(BitFit) }
///     fn trains(&self, name: &str) -> Option<bool> { Some(name.ends_with(".bias")) }
/// }
///
/// ftlab_sdk::export_library!(BitFit);
/// ```
pub trait Method: Sized + 'static {
    /// Unique name users select the method by (`--plugin NAME` / `--adapter NAME`).
    const NAME: &'static str;
    /// Objective or adapter.
    const ROLE: Role;
    /// One paragraph for `ftlab plugins info`, with the paper link.
    const DESCRIPTION: &'static str;
    /// Hyperparameters: a struct whose `Default` gives the defaults and whose field docs
    /// describe them. Unknown keys in a user's config are rejected by the SDK.
    type Config: Serialize + DeserializeOwned + Default + JsonSchema;

    /// The format tag of this adapter's exports: PEFT's `peft_type` (`"LORA"`) where PEFT has
    /// the method, else a name of the method's own. `None` (default): nothing to export.
    /// `ftlab model forward --adapter DIR` finds the method by the tag in `DIR`'s config.
    const EXPORT_TYPE: Option<&'static str> = None;

    /// Builds the method; create parameters with [`Host::parameter`].
    fn new(config: Self::Config, host: &mut Host<'_>) -> Result<Self>;

    /// The hyperparameters that reproduce an exported adapter, from its `adapter_config.json`
    /// (with [`Self::EXPORT_TYPE`] as its `peft_type`). Refuse, naming the key, whatever the
    /// method cannot represent: never drop a setting silently.
    fn config_from_export(adapter_config: &serde_json::Value) -> Result<Self::Config> {
        let _ = adapter_config;
        Err(Error::unsupported("config_from_export"))
    }

    /// The trained state to save beside the run (adapters with an [`Self::EXPORT_TYPE`]).
    fn export(&self) -> Result<Option<Export>> {
        Ok(None)
    }

    /// Copies an export's tensors (named as in its weights file) into this instance's
    /// parameters, which [`Self::config_from_export`]'s hyperparameters shaped.
    fn import(&mut self, weights: &Tensors) -> Result<()> {
        let _ = weights;
        Err(Error::unsupported("import"))
    }

    /// The update to add to each base weight (by checkpoint key, e.g.
    /// `model.decoder.layers.0.self_attn.q_proj.weight`) so that the plain model computes what
    /// the hooked one does: merging, as PEFT's `merge_and_unload`.
    fn merged_deltas(&self) -> Result<Vec<(String, Tensor)>> {
        Err(Error::unsupported("merged_deltas"))
    }

    /// The hook sites this method acts on (adapters); the host calls only these. An error
    /// refuses the method, naming it (a method run without its hooks would hide the bug).
    fn sites(&self) -> Result<Vec<Site>> {
        Ok(Vec::new())
    }

    /// Whether the base parameter `name` (an HF checkpoint key) trains: `None` for no opinion.
    /// With no adapter in a run, every base parameter trains unless the objective says no.
    fn trains(&self, name: &str) -> Option<bool> {
        let _ = name;
        None
    }

    /// Token embeddings `[B, T, E]` and mask `[B, P + T]`; may prepend vectors (extend the mask).
    fn embeddings(&self, embeds: Tensor, mask: Tensor) -> Result<(Tensor, Tensor)> {
        Ok((embeds, mask))
    }

    /// Vectors every row reads before its tokens, `[m, E]` (a soft prompt; `None`: none this
    /// pass). The host reads them once per forward pass, at batch 1 and positions 0..m, and
    /// lets every row attend to their keys/values: PEFT's logits for a prompt prepended to each
    /// row, at m positions' cost per pass instead of m per row (one dropout mask serves every
    /// row, so training's expected loss is unchanged). The host's outputs (hidden states,
    /// logits, `last_token`) cover the tokens only, and a kept cache holds the prompt, so a
    /// pass that reads one is not given the prompt again.
    fn prompt(&self) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// The output of linear `site` in `layer`, given its input.
    fn linear(&self, layer: i64, site: Site, input: &Tensor, output: Tensor) -> Result<Tensor> {
        let _ = (layer, site, input);
        Ok(output)
    }

    /// The MLP activation in `layer`.
    fn activation(&self, layer: i64, activation: Tensor) -> Result<Tensor> {
        let _ = layer;
        Ok(activation)
    }

    /// Which inputs training batches hold (objectives): the labelled few-shot set (default) or
    /// unlabelled task inputs, e.g. for context distillation.
    fn training_inputs(&self) -> Inputs {
        Inputs::Labelled
    }

    /// Training epoch `epoch` (0-based) is about to begin — also when a resumed run re-enters
    /// it, so the answer must follow from `epoch` and the config alone. Return `true` when what
    /// [`Self::trains`] answers changed (e.g. a selection redrawn per epoch): the host re-reads
    /// it, gives the tensors that now train fresh optimizer state and drops the state of those
    /// now frozen (their trained values stay, and are checkpointed).
    fn epoch_begins(&mut self, host: &mut Host<'_>, epoch: usize) -> Result<bool> {
        let _ = (host, epoch);
        Ok(false)
    }

    /// Optimizer step `step` (1-based, counted over the whole run) was just taken: e.g. a mask
    /// redrawn every N steps. A method that moved what its own parameters' entries mean returns
    /// how their optimizer moments move ([`MomentMove`]); nothing else changes them.
    fn step_done(&mut self, host: &mut Host<'_>, step: usize) -> Result<Vec<MomentMove>> {
        let _ = (host, step);
        Ok(Vec::new())
    }

    /// What the method keeps outside its parameters (e.g. a mask's indices) that a run resumed
    /// from a checkpoint needs to continue exactly; saved with every checkpoint. Parameters are
    /// checkpointed by the host already.
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }

    /// Restores [`Self::state`], read back from a checkpoint.
    fn load_state(&mut self, state: &Tensors) -> Result<()> {
        match state.tensors.keys().next() {
            None => Ok(()),
            Some(name) => Err(Error::msg(format!("the checkpoint holds state `{name}` this method never saves"))),
        }
    }

    /// Training (`true`) or evaluation (`false`) from now on: e.g. dropout inside hooks.
    fn set_train(&mut self, train: bool) {
        let _ = train;
    }

    /// Work before training, given the training data (e.g. caching teacher distributions).
    fn prepare(&mut self, host: &mut Host<'_>, data: &Tensors) -> Result<()> {
        let _ = (host, data);
        Ok(())
    }

    /// The training loss of a batch (objectives).
    fn loss(&mut self, host: &mut Host<'_>, batch: &Batch) -> Result<Loss> {
        let _ = (host, batch);
        Err(Error::unsupported("loss"))
    }

    /// Scores of a batch (objectives): next-token logits `[B, V]` at each row's last real token,
    /// which the evaluation scores both over the verbalizer and over the whole vocabulary, or
    /// class scores `[B, num_labels]` (e.g. a classification head). The default returns the LM
    /// logits, as pattern-based methods and ICL predict.
    fn predict(&mut self, host: &mut Host<'_>, batch: &Batch) -> Result<Tensor> {
        last_token_logits(host, batch, false)
    }
}

/// LM logits `[B, V]` at each row's last real token, with or without autograd history.
pub fn last_token_logits(host: &mut Host<'_>, batch: &Batch, grad: bool) -> Result<Tensor> {
    let request = ForwardRequest { logits: Logits::Last, grad, ..Default::default() };
    let out = host.forward(batch.input_ids()?, batch.attention_mask()?, &request)?;
    out.logits.ok_or_else(|| Error::msg("the host returned no logits"))
}

/// LM logits `[B, T, V]` at every position, with or without autograd history.
pub fn all_logits(host: &mut Host<'_>, batch: &Batch, grad: bool) -> Result<Tensor> {
    let request = ForwardRequest { logits: Logits::All, grad, ..Default::default() };
    let out = host.forward(batch.input_ids()?, batch.attention_mask()?, &request)?;
    out.logits.ok_or_else(|| Error::msg("the host returned no logits"))
}

/// The mean cross-entropy of `logits` `[B, T, V]` against `targets` `[B, T]` over the positions
/// whose target is not -100, in float32.
pub fn token_cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    let vocab = logits.size()[2];
    let flat = logits.to_kind(Kind::Float).reshape([-1, vocab]);
    flat.cross_entropy_loss::<Tensor>(&targets.reshape([-1]), None, tch::Reduction::Mean, -100, 0.0)
}

/// LM logits of the task's verbalizer tokens at each row's last real token, `[B, num_labels]`,
/// with or without autograd history.
pub fn verbalizer_logits(host: &mut Host<'_>, batch: &Batch, grad: bool) -> Result<Tensor> {
    let label_ids = host.task()?.label_token_ids;
    let logits = last_token_logits(host, batch, grad)?;
    let index = Tensor::from_slice(&label_ids).to_device(logits.device()).to_kind(Kind::Int64);
    Ok(logits.index_select(1, &index))
}

/// The next-token targets of a batch for a language-modelling loss: `input_ids[:, 1:]`
/// (`[B, T-1]`, predicted by the logits at positions `0..T-1`) and which of them count (bool
/// `[B, T-1]`): real tokens at or after each row's `target_start`.
pub fn next_token_targets(input_ids: &Tensor, attention_mask: &Tensor, target_start: &Tensor) -> (Tensor, Tensor) {
    let width = input_ids.size()[1];
    let positions = Tensor::arange_start(1, width, (Kind::Int64, input_ids.device())).unsqueeze(0);
    let real = attention_mask.narrow(1, 1, width - 1).ne(0);
    let scored = positions.ge_tensor(&target_start.unsqueeze(1)).logical_and(&real);
    (input_ids.narrow(1, 1, width - 1), scored)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn prepare_data_gives_the_labelled_pool_and_refuses_an_inconsistent_one() {
        let mut data = Tensors::new();
        data.json = json!({
            "demonstrations": ["a? Yes", "b? No"],
            "demonstration_prompts": ["a?", "b?"],
            "labels_of_demonstrations": [0, 1],
            "separator": "\n\n",
            "context": "b? No\n\n",
        });
        let pool = data.demonstrations(2).unwrap();
        assert_eq!(pool.render(&[1, 0]), "b? No\n\na? Yes\n\n");
        assert_eq!(pool.positions_of("b?"), [1]);
        assert_eq!(data.context().unwrap(), "b? No\n\n");
        assert!(data.demonstrations(1).unwrap_err().message().contains("outside 0..1"));
        data.json["labels_of_demonstrations"] = json!([0]);
        assert!(data.demonstrations(2).unwrap_err().message().contains("but 1 labels_of_demonstrations"));
    }
}
