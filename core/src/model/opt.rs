//! OPT decoder-only transformer (Zhang et al., 2022, <https://arxiv.org/abs/2205.01068>),
//! matching Hugging Face's `OPTForCausalLM` with eager attention to float rounding.
//!
//! Leaf modules come first, the model last. Every field is named after its HF parameter path
//! segment and created under that segment, so a checkpoint key such as
//! `model.decoder.layers.3.self_attn.q_proj.weight` is exactly a variable name of the store and
//! loading is a copy loop with shape checks (see [`super::checkpoint`]). The OPT specifics that
//! parity depends on are listed in shared/DESIGN.md §3.

use tch::nn;
use tch::{Kind, Tensor};

use super::cache::KvCache;
use super::config::{Activation, OptConfig};
use super::hooks::{ForwardHooks, Site};
use crate::error::{Error, Result};

/// OPT's learned position table is offset by 2: HF reserves the first rows, and padding tokens
/// get position -1 + 2 = 1.
const POSITION_OFFSET: i64 = 2;
const LAYER_NORM_EPS: f64 = 1e-5;

/// The per-call state every module needs: which hooks run, whether dropout is on.
#[derive(Clone, Copy)]
struct Pass<'a> {
    hooks: Option<&'a dyn ForwardHooks>,
    train: bool,
}

impl Pass<'_> {
    /// Applies a linear layer, then the hook at its site.
    fn linear(&self, layer: i64, site: Site, module: &nn::Linear, x: &Tensor) -> Result<Tensor> {
        let y = x.apply(module);
        match self.hooks {
            None => Ok(y),
            Some(h) => h.linear(layer, site, x, y).map_err(|message| Error::Hook { site: site.path(layer), message }),
        }
    }
}

fn linear(vs: nn::Path, inputs: i64, outputs: i64, bias: bool, std: f64) -> nn::Linear {
    let config = nn::LinearConfig {
        ws_init: nn::Init::Randn { mean: 0.0, stdev: std },
        bs_init: Some(nn::Init::Const(0.0)),
        bias,
    };
    nn::linear(vs, inputs, outputs, config)
}

fn layer_norm(vs: nn::Path, dim: i64, config: &OptConfig) -> nn::LayerNorm {
    let ln = nn::LayerNormConfig {
        eps: LAYER_NORM_EPS,
        elementwise_affine: config.layer_norm_elementwise_affine,
        ..Default::default()
    };
    nn::layer_norm(vs, vec![dim], ln)
}

/// Multi-head self-attention with OPT's query scaling.
#[derive(Debug)]
pub struct OptAttention {
    /// Query projection.
    pub q_proj: nn::Linear,
    /// Key projection.
    pub k_proj: nn::Linear,
    /// Value projection.
    pub v_proj: nn::Linear,
    /// Output projection.
    pub out_proj: nn::Linear,
    num_heads: i64,
    head_dim: i64,
    dropout: f64,
}

impl OptAttention {
    /// Creates the four projections under `vs` (`…self_attn`).
    pub fn new(vs: nn::Path, c: &OptConfig) -> Self {
        let d = c.hidden_size;
        let proj = |name: &str| linear(&vs / name, d, d, c.enable_bias, c.init_std);
        Self {
            q_proj: proj("q_proj"),
            k_proj: proj("k_proj"),
            v_proj: proj("v_proj"),
            out_proj: proj("out_proj"),
            num_heads: c.num_attention_heads,
            head_dim: c.head_dim(),
            dropout: c.attention_dropout,
        }
    }

    /// `x` `[B, T, D]`, additive `mask` `[B, 1, T, P + T]`; returns the output and the layer's
    /// keys/values including the past ones, `[B, H, P + T, head_dim]`.
    fn forward(
        &self,
        layer: i64,
        x: &Tensor,
        mask: &Tensor,
        past: Option<&(Tensor, Tensor)>,
        pass: &Pass,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let (b, t, d) = x.size3()?;
        let heads = |y: Tensor| y.view([b, t, self.num_heads, self.head_dim]).transpose(1, 2); // (B, H, T, hd)
                                                                                               // HF scales the query after q_proj (bias included) rather than the scores.
        let scaling = (self.head_dim as f64).powf(-0.5);
        let q = heads(pass.linear(layer, Site::QProj, &self.q_proj, x)? * scaling);
        let mut k = heads(pass.linear(layer, Site::KProj, &self.k_proj, x)?);
        let mut v = heads(pass.linear(layer, Site::VProj, &self.v_proj, x)?);
        if let Some((pk, pv)) = past {
            k = Tensor::cat(&[pk, &k], 2);
            v = Tensor::cat(&[pv, &v], 2);
        }
        let p = if pass.train { self.dropout } else { 0.0 };
        // The query is already scaled, hence scale 1.
        let y = Tensor::f_scaled_dot_product_attention(&q, &k, &v, Some(mask), p, false, 1.0, false)?;
        let y = y.transpose(1, 2).reshape([b, t, d]); // (B, T, D)
        let y = pass.linear(layer, Site::OutProj, &self.out_proj, &y)?;
        Ok((y, (k, v)))
    }
}

/// One decoder layer: attention and MLP, each with a residual, layer norm before (pre-LN) or
/// after (post-LN, opt-350m).
#[derive(Debug)]
pub struct OptDecoderLayer {
    /// Self-attention.
    pub self_attn: OptAttention,
    /// Layer norm around the attention block.
    pub self_attn_layer_norm: nn::LayerNorm,
    /// MLP up projection.
    pub fc1: nn::Linear,
    /// MLP down projection.
    pub fc2: nn::Linear,
    /// Layer norm around the MLP block (HF's name, although it is not the model's final one).
    pub final_layer_norm: nn::LayerNorm,
    index: i64,
    pre_ln: bool,
    activation: Activation,
    dropout: f64,
    activation_dropout: f64,
}

impl OptDecoderLayer {
    /// Creates layer `index` under `vs` (`model.decoder.layers.{index}`).
    pub fn new(vs: nn::Path, index: i64, c: &OptConfig) -> Self {
        let (d, f) = (c.hidden_size, c.ffn_dim);
        Self {
            self_attn: OptAttention::new(&vs / "self_attn", c),
            self_attn_layer_norm: layer_norm(&vs / "self_attn_layer_norm", d, c),
            fc1: linear(&vs / "fc1", d, f, c.enable_bias, c.init_std),
            fc2: linear(&vs / "fc2", f, d, c.enable_bias, c.init_std),
            final_layer_norm: layer_norm(&vs / "final_layer_norm", d, c),
            index,
            pre_ln: c.do_layer_norm_before,
            activation: c.activation_function,
            dropout: c.dropout,
            activation_dropout: c.activation_dropout,
        }
    }

    /// The layer as a block of its own for [`ftlab_torch_ext::checkpoint`]: hidden states (and
    /// past keys and values, when given as the two extras) in, hidden states out, with an owned
    /// mask and hooks; `None` when the hooks cannot be owned.
    fn block<'a>(&'a self, mask: &Tensor, pass: &Pass<'a>) -> Option<ftlab_torch_ext::Block<'a>> {
        let hooks = match pass.hooks {
            Some(hooks) => Some(hooks.boxed()?),
            None => None,
        };
        let (mask, train) = (mask.shallow_clone(), pass.train);
        Some(Box::new(move |x: &Tensor, past: &[Tensor]| {
            let pass = Pass { hooks: hooks.as_deref(), train };
            let past = match past {
                [k, v] => Some((k.shallow_clone(), v.shallow_clone())),
                _ => None,
            };
            self.forward(x, &mask, past.as_ref(), &pass).map(|(y, _)| y).map_err(|e| e.to_string())
        }))
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        past: Option<&(Tensor, Tensor)>,
        pass: &Pass,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let i = self.index;
        let h = if self.pre_ln { x.apply(&self.self_attn_layer_norm) } else { x.shallow_clone() };
        let (h, kv) = self.self_attn.forward(i, &h, mask, past, pass)?;
        let mut x = x + h.dropout(self.dropout, pass.train);
        if !self.pre_ln {
            x = x.apply(&self.self_attn_layer_norm);
        }

        let h = if self.pre_ln { x.apply(&self.final_layer_norm) } else { x.shallow_clone() };
        let h = pass.linear(i, Site::Fc1, &self.fc1, &h)?;
        let h = match self.activation {
            Activation::Relu => h.relu(),
            Activation::Gelu => h.gelu("none"),
        };
        let h = match pass.hooks {
            None => h,
            Some(hooks) => {
                hooks.activation(i, h).map_err(|message| Error::Hook { site: Site::Activation.path(i), message })?
            }
        };
        let h = h.dropout(self.activation_dropout, pass.train);
        let h = pass.linear(i, Site::Fc2, &self.fc2, &h)?;
        let mut x = x + h.dropout(self.dropout, pass.train);
        if !self.pre_ln {
            x = x.apply(&self.final_layer_norm);
        }
        Ok((x, kv))
    }
}

/// Which positions get LM-head logits. The head is a third of opt-125m's forward FLOPs and its
/// `[B, T, V]` output the largest tensor of a step, so callers ask only for what they score.
#[derive(Debug, Default)]
pub enum LogitsAt {
    /// No logits (e.g. a classification head reads the hidden states).
    None,
    /// Every position: `[B, T, V]`.
    #[default]
    All,
    /// The last non-pad token of each row (left or right padding): `[B, V]`.
    LastToken,
    /// Given positions per row, int64 `[B, N]`: `[B, N, V]`.
    Positions(Tensor),
}

/// Inputs of one forward pass.
#[derive(Default)]
pub struct ForwardInput<'a> {
    /// Token ids, int64 `[B, T]`.
    pub input_ids: Option<&'a Tensor>,
    /// 1 for real tokens, 0 for padding, `[B, P + T]` where P is the cached prefix length.
    /// `None` means all ones.
    pub attention_mask: Option<&'a Tensor>,
    /// Keys/values of a prefix already run (its batch size must match, see [`KvCache::expand`]).
    pub past: Option<&'a KvCache>,
    /// Vectors read before the tokens, `[P', E]` (every row) or `[B, P', E]`: a method's own
    /// embeddings, e.g. a learned context. The mask then covers them, `[B, P + P' + T]`, and
    /// hidden states, logit positions and `last_token` count them first.
    pub prefix: Option<&'a Tensor>,
    /// Return the keys/values of prefix + these tokens.
    pub use_cache: bool,
    /// Which positions get logits.
    pub logits: LogitsAt,
    /// Training mode: dropout on.
    pub train: bool,
    /// Methods acting at the hook sites.
    pub hooks: Option<&'a dyn ForwardHooks>,
    /// Activation checkpointing (off unless [`Checkpointing::on`]).
    pub checkpoint: Checkpointing,
}

/// Whether a forward pass checkpoints its decoder layers' activations (HF's
/// `gradient_checkpointing_enable`): each layer keeps only its input for the backward pass and
/// runs again there, hooks included, with the same dropout masks — the memory of every layer's
/// activations for one more forward pass. It applies when no keys/values are cached or kept,
/// and hooks that cannot [`ForwardHooks::boxed`] themselves turn it off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpointing(bool);

impl Checkpointing {
    /// Checkpointing on.
    ///
    /// # Safety
    /// Back-propagating the outputs of a pass with it runs the layers and hooks again: do it
    /// (or drop the outputs) while the model and what the hooks borrow are alive.
    pub unsafe fn on() -> Self {
        Self(true)
    }
}

/// What a forward pass returns.
#[derive(Debug)]
pub struct ForwardOutput {
    /// Final hidden states `[B, T, word_embed_proj_dim]` (after the final layer norm and
    /// `project_out`): what the LM head reads.
    pub hidden: Tensor,
    /// Logits at the requested positions (see [`LogitsAt`]).
    pub logits: Option<Tensor>,
    /// Keys/values of prefix + input, when asked for.
    pub cache: Option<KvCache>,
    /// Index of the last non-pad token in each row, int64 `[B]`.
    pub last_token: Tensor,
}

/// A forward input that fits the model: ids `[B, T]`, batch size B, cached prefix length P,
/// the prefix vectors `[B, P', E]` and the int64 attention mask `[B, P + P' + T]`.
struct Checked<'i> {
    ids: &'i Tensor,
    b: i64,
    past: i64,
    prefix: Option<Tensor>,
    mask: Tensor,
}

/// The OPT decoder with its tied LM head (`OPTForCausalLM`).
#[derive(Debug)]
pub struct OptForCausalLM {
    /// Token embeddings `[vocab_size, word_embed_proj_dim]`, tied to the LM head.
    pub embed_tokens: nn::Embedding,
    /// Learned positions `[max_position_embeddings + 2, hidden_size]`.
    pub embed_positions: nn::Embedding,
    /// `word_embed_proj_dim → hidden_size`, only when they differ (opt-350m).
    pub project_in: Option<nn::Linear>,
    /// `hidden_size → word_embed_proj_dim`, only when they differ.
    pub project_out: Option<nn::Linear>,
    /// The decoder layers.
    pub layers: Vec<OptDecoderLayer>,
    /// Final layer norm (pre-LN models).
    pub final_layer_norm: Option<nn::LayerNorm>,
    /// The configuration the model was built from.
    pub config: OptConfig,
    /// Where the decoder layers run when the model is spread over devices
    /// ([`super::Model::spread`]); `None`: everything on one device.
    pub spread: Option<Spread>,
    /// How many times hidden states moved to another device of the plan, over every forward
    /// pass: only at the plan's boundaries.
    pub hops: std::sync::atomic::AtomicUsize,
}

/// A model's layers spread over devices: the plan and the devices its indices name.
#[derive(Debug, Clone)]
pub struct Spread {
    /// The devices, in the order the plan indexes them (the first holds embeddings and head).
    pub devices: Vec<tch::Device>,
    /// Which device each part is on.
    pub placement: super::placement::Placement,
}

impl OptForCausalLM {
    /// Creates the model's variables under `vs` (normally a store's root), randomly initialised
    /// as HF does (normal with `init_std`, zero biases, unit layer norms).
    pub fn new(vs: &nn::Path, config: &OptConfig) -> Self {
        let c = config;
        let decoder = vs / "model" / "decoder";
        let embedding = |name: &str, rows: i64, dim: i64| {
            let ec =
                nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: c.init_std }, ..Default::default() };
            nn::embedding(&decoder / name, rows, dim, ec)
        };
        let projection =
            |name: &str, i: i64, o: i64| c.has_projections().then(|| linear(&decoder / name, i, o, false, c.init_std));
        let layers_vs = &decoder / "layers";
        Self {
            embed_tokens: embedding("embed_tokens", c.vocab_size, c.word_embed_proj_dim),
            embed_positions: embedding("embed_positions", c.max_position_embeddings + POSITION_OFFSET, c.hidden_size),
            project_in: projection("project_in", c.word_embed_proj_dim, c.hidden_size),
            project_out: projection("project_out", c.hidden_size, c.word_embed_proj_dim),
            layers: (0..c.num_hidden_layers).map(|i| OptDecoderLayer::new(&layers_vs / i, i, c)).collect(),
            final_layer_norm: c.final_layer_norm.then(|| layer_norm(&decoder / "final_layer_norm", c.hidden_size, c)),
            config: c.clone(),
            spread: None,
            hops: Default::default(),
        }
    }

    /// Runs the model. Errors on inconsistent shapes, and when a hook fails.
    pub fn forward(&self, input: ForwardInput) -> Result<ForwardOutput> {
        let Checked { ids, b, past: p, prefix, mask } = self.check(&input)?;
        let pass = Pass { hooks: input.hooks, train: input.train };
        // A prompt is read once and its keys/values shared by every row, as kept ones are.
        let prompt = match (input.past, pass.hooks) {
            (None, Some(hooks)) => {
                hooks.prompt().map_err(|message| Error::Hook { site: Site::Prompt.path(0), message })?
            }
            _ => None,
        };
        let prompt = prompt.map(|prompt| self.prompt_cache(&prompt, &pass)).transpose()?.map(|c| c.expand(b));
        let (past, p, mask) = match &prompt {
            None => (input.past, p, mask),
            Some(cache) => {
                let ones = Tensor::ones([b, cache.len()], (Kind::Int64, mask.device()));
                (Some(cache), cache.len(), Tensor::cat(&[ones, mask], 1))
            }
        };
        let (h, mask) = self.embed(ids, prefix, mask, p, &pass)?;
        let t = h.size()[1]; // a hook may have prepended vectors
        let attn_mask = additive_mask(&mask, p, t, h.kind());
        let checkpointed = input.checkpoint.0 && input.past.is_none() && !input.use_cache;
        let (mut h, cache, mut at) = self.layers(h, attn_mask, past, input.use_cache, checkpointed, &pass)?;
        if let Some(spread) = &self.spread {
            if let Some(device) = self.hop(spread, &mut at, spread.placement.embeddings) {
                h = h.to_device(device);
            }
        }
        if let Some(ln) = &self.final_layer_norm {
            h = h.apply(ln);
        }
        if let Some(proj) = &self.project_out {
            h = h.apply(proj);
        }
        let current = mask.narrow(1, p, t);
        let last_token = (&current * Tensor::arange(t, (Kind::Int64, h.device()))).argmax(1, false); // (B,)
        let logits = self.logits_at(&h, &last_token, &input.logits, b)?;
        let cache = input.use_cache.then_some(cache);
        Ok(ForwardOutput { hidden: h, logits, cache, last_token })
    }

    /// Runs the decoder layers on their devices: the last layer's hidden states, the keys and
    /// values of every layer when `keep` (past ones included), and the plan device they end on.
    /// Checkpointed layers get the past keys/values as inputs of their own, so that gradients
    /// reach whatever computed them (a prompt).
    fn layers(
        &self,
        mut h: Tensor,
        mut attn_mask: Tensor,
        past: Option<&KvCache>,
        keep: bool,
        checkpointed: bool,
        pass: &Pass,
    ) -> Result<(Tensor, KvCache, Option<usize>)> {
        let mut cache = Vec::with_capacity(if keep { self.layers.len() } else { 0 });
        let mut at = self.spread.as_ref().map(|s| s.placement.embeddings);
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(spread) = &self.spread {
                if let Some(device) = self.hop(spread, &mut at, spread.placement.layers[i]) {
                    h = h.to_device(device);
                    attn_mask = attn_mask.to_device(device);
                }
            }
            let past = past.map(|c| &c.layers[i]);
            if let Some(block) = checkpointed.then(|| layer.block(&attn_mask, pass)).flatten() {
                // Its output must require grad for the backward pass to reach the layer's own
                // parameters, also when nothing before it trains.
                let x = if h.requires_grad() { h } else { h.detach().set_requires_grad(true) };
                let past: Vec<Tensor> = past.map_or(Vec::new(), |(k, v)| vec![k.shallow_clone(), v.shallow_clone()]);
                // SAFETY: whoever turned checkpointing on keeps the model and hooks alive.
                h = unsafe { ftlab_torch_ext::checkpoint(&x, &past, block) }
                    .map_err(|e| Error::Torch(tch::TchError::Torch(e.0)))?;
                continue;
            }
            let (next, kv) = layer.forward(&h, &attn_mask, past, pass)?;
            h = next;
            if keep {
                cache.push(kv);
            }
        }
        Ok((h, KvCache { layers: cache }, at))
    }

    /// The keys/values of a prompt `[m, word_embed_proj_dim]` read alone, at batch 1 and
    /// positions 0..m, through the layers and their hooks (with autograd, as the pass has it):
    /// what every row's tokens attend to after it.
    fn prompt_cache(&self, prompt: &Tensor, pass: &Pass) -> Result<KvCache> {
        let width = self.config.word_embed_proj_dim;
        let m = match prompt.size()[..] {
            [m, e] if m > 0 && e == width => m,
            ref shape => {
                let message = format!("a prompt must be [m, {width}] with m > 0, got {shape:?}");
                return Err(Error::Hook { site: Site::Prompt.path(0), message });
            }
        };
        let ws = &self.embed_tokens.ws;
        let embeds = prompt.to_device(ws.device()).to_kind(ws.kind()).unsqueeze(0);
        let mask = Tensor::ones([1, m], (Kind::Int64, ws.device()));
        let h = self.position(embeds, &mask, 0)?;
        let attn_mask = additive_mask(&mask, 0, m, h.kind());
        Ok(self.layers(h, attn_mask, None, true, false, pass)?.1)
    }

    /// The device to move hidden states to before a part on plan device `to`, when it is not
    /// the plan device they are `at` (counted in [`Self::hops`]).
    fn hop(&self, spread: &Spread, at: &mut Option<usize>, to: usize) -> Option<tch::Device> {
        if *at == Some(to) {
            return None;
        }
        *at = Some(to);
        self.hops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(spread.devices[to])
    }

    /// The input's ids, batch size, cached prefix length and attention mask (all ones when not
    /// given), after checking that they fit each other and the model.
    fn check<'i>(&self, input: &ForwardInput<'i>) -> Result<Checked<'i>> {
        let ids = input.input_ids.ok_or_else(|| Error::Input("input_ids is required".into()))?;
        let (b, t) =
            ids.size2().map_err(|_| Error::Input(format!("input_ids must be [batch, seq], got {:?}", ids.size())))?;
        if ids.kind() != Kind::Int64 {
            return Err(Error::Input(format!("input_ids must be int64, got {:?}", ids.kind())));
        }
        let p = input.past.map_or(0, KvCache::len);
        if let Some(past) = input.past {
            if past.batch_size() != b || past.layers.len() != self.layers.len() {
                return Err(Error::Input(format!(
                    "past key/values hold batch {} and {} layers; the input has batch {b} and the model {} layers",
                    past.batch_size(),
                    past.layers.len(),
                    self.layers.len()
                )));
            }
        }
        let width = self.config.word_embed_proj_dim;
        let prefix = match input.prefix {
            None => None,
            Some(v) => match v.size()[..] {
                [n, e] if e == width => Some(v.unsqueeze(0).expand([b, n, e], false)),
                [pb, _, e] if pb == b && e == width => Some(v.shallow_clone()),
                ref shape => {
                    return Err(Error::Input(format!(
                        "prefix must be [P, {width}] or [{b}, P, {width}], got {shape:?}"
                    )))
                }
            },
        };
        let n = prefix.as_ref().map_or(0, |v| v.size()[1]);
        let mask = match input.attention_mask {
            Some(m) if m.size() != [b, p + n + t] => {
                return Err(Error::Input(format!(
                    "attention_mask has shape {:?}; expected [{b}, {}] (cached {p} + prefix {n} + input {t})",
                    m.size(),
                    p + n + t
                )))
            }
            Some(m) => m.to_kind(Kind::Int64),
            None => Tensor::ones([b, p + n + t], (Kind::Int64, ids.device())),
        };
        let (max_id, min_id) = (ids.max().int64_value(&[]), ids.min().int64_value(&[]));
        if min_id < 0 || max_id >= self.config.vocab_size {
            return Err(Error::Input(format!(
                "token ids must be in [0, {}), got range [{min_id}, {max_id}]",
                self.config.vocab_size
            )));
        }
        Ok(Checked { ids, b, past: p, prefix, mask })
    }

    /// The prefix's vectors and the token embeddings (through the embeddings hook, which may
    /// prepend vectors and extend the mask) plus learned positions: the first layer's input
    /// `[B, T, D]` and the mask it keeps.
    fn embed(
        &self,
        ids: &Tensor,
        prefix: Option<Tensor>,
        mask: Tensor,
        p: i64,
        pass: &Pass,
    ) -> Result<(Tensor, Tensor)> {
        let embeds = ids.apply(&self.embed_tokens); // (B, T, E)
        let embeds = match prefix {
            Some(prefix) => Tensor::cat(&[prefix.to_kind(embeds.kind()), embeds], 1),
            None => embeds,
        };
        let (embeds, mask) = match pass.hooks {
            None => (embeds, mask),
            Some(h) => h
                .embeddings(embeds, mask)
                .map_err(|message| Error::Hook { site: "model.decoder.embed_tokens".into(), message })?,
        };
        Ok((self.position(embeds, &mask, p)?, mask))
    }

    /// Vectors `[B, T, E]` read after `p` cached positions, under `mask` `[B, p + T]`, as the
    /// first layer's input `[B, T, D]`: through `project_in`, plus their learned positions.
    fn position(&self, embeds: Tensor, mask: &Tensor, p: i64) -> Result<Tensor> {
        let t = embeds.size()[1];
        if p + t > self.config.max_position_embeddings {
            return Err(Error::Input(format!(
                "sequence of {} tokens exceeds max_position_embeddings {}",
                p + t,
                self.config.max_position_embeddings
            )));
        }
        // positions = cumsum(mask) * mask - 1, so left padding still starts real tokens at 0.
        let positions = (mask.cumsum(1, Kind::Int64) * mask - 1).narrow(1, p, t) + POSITION_OFFSET;
        Ok(match &self.project_in {
            Some(proj) => embeds.apply(proj),
            None => embeds,
        } + positions.apply(&self.embed_positions))
    }

    /// The LM head at the positions `at` asks for, from the final hidden states `h`.
    fn logits_at(&self, h: &Tensor, last_token: &Tensor, at: &LogitsAt, b: i64) -> Result<Option<Tensor>> {
        let width = h.size()[2];
        Ok(match at {
            LogitsAt::None => None,
            LogitsAt::All => Some(self.lm_head(h)),
            LogitsAt::LastToken => {
                let index = last_token.view([b, 1, 1]).expand([b, 1, width], false);
                Some(self.lm_head(&h.gather(1, &index, false).squeeze_dim(1)))
            }
            LogitsAt::Positions(pos) => {
                let n = pos.size().get(1).copied().unwrap_or(0);
                if pos.size() != [b, n] {
                    return Err(Error::Input(format!("logit positions must be [{b}, N], got {:?}", pos.size())));
                }
                let index = pos.view([b, n, 1]).expand([b, n, width], false);
                Some(self.lm_head(&h.gather(1, &index, false)))
            }
        })
    }

    /// The tied LM head: `hidden @ embed_tokens.weight.T`.
    pub fn lm_head(&self, hidden: &Tensor) -> Tensor {
        hidden.matmul(&self.embed_tokens.ws.tr())
    }
}

/// The causal + padding mask as an additive bias `[B, 1, T, P + T]` in `kind`: 0 where query i
/// (absolute position P + i) may attend key j (j ≤ P + i and key j is not padding), the kind's
/// most negative value elsewhere. A finite minimum, as HF uses, keeps rows that see no key at
/// all (queries at left padding) finite instead of NaN.
fn additive_mask(mask: &Tensor, p: i64, t: i64, kind: Kind) -> Tensor {
    let device = mask.device();
    let s = p + t;
    let query = Tensor::arange_start(p, s, (Kind::Int64, device)).view([t, 1]);
    let key = Tensor::arange(s, (Kind::Int64, device)).view([1, s]);
    let causal = key.le_tensor(&query); // (T, S)
    let allowed = causal.unsqueeze(0) * mask.to_kind(Kind::Bool).unsqueeze(1); // (B, T, S)
    let min = match kind {
        Kind::Half => -65504.0,
        Kind::BFloat16 => -3.3895313892515355e38,
        _ => f32::MIN as f64,
    };
    Tensor::zeros(allowed.size(), (kind, device)).masked_fill(&allowed.logical_not(), min).unsqueeze(1)
}
