//! `cpt`: context-aware prompt tuning (Blau et al., 2024, "Context-aware Prompt Tuning:
//! Advancing In-Context Learning with Adversarial Methods", <https://arxiv.org/abs/2410.17222>),
//! an objective, with HF PEFT's semantics (`CPTEmbedding`, `_cpt_forward`).
//!
//! In-context learning whose context is optimised: the training examples, laid out as
//! demonstrations (see [`context::Context`]), are embedded once, and a learned offset is added
//! to each token's embedding. Offsets of label words and separators stay zero; the others are
//! projected back onto an L2 ball after each step (before every forward pass, as PEFT does),
//! `epsilon` for the examples' words and `format_epsilon` for the pattern's, so the context
//! stays close to what the user wrote. The loss is the cross-entropy of the query's label and
//! of every demonstration's label (the model reads them all in one pass), weighted by
//! `loss_decay^k` for the demonstration k places before the query. Nothing else trains, and
//! prediction reads each query after the learned context, as ICL does.
//!
//! The training queries are the demonstrations themselves, so by default each query cannot see
//! its own demonstration (`leave_one_out`: its tokens and the separator after it are masked out
//! of that row, as if removed, and its label is no target there): otherwise its answer is in
//! its context. PEFT's example queries held-out examples instead; `leave_one_out = false` reads
//! all of them, as PEFT's forward does.

pub mod context;
pub mod loss;

use ftlab_sdk::context::pad_right;
use ftlab_sdk::prelude::*;

use context::Context;

/// Hyperparameters, set in an experiment file under `cpt`. Defaults are PEFT's `CPTConfig`'s;
/// its CPT example uses `epsilon = 0.2` and `loss_decay = 0.95`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// L2 radius of an input word's offset (`opt_projection_epsilon`), times
    /// `sqrt(width / 2048)`.
    pub epsilon: f64,
    /// L2 radius of a template word's offset (`opt_projection_format_epsilon`), likewise scaled.
    pub format_epsilon: f64,
    /// Weight factor of each step back from the query for the demonstrations' labels
    /// (`opt_loss_decay_factor`; 1 weighs all alike, PEFT's `opt_weighted_loss_type = "none"`).
    pub loss_decay: f64,
    /// The context holds the first this many training examples (the whole few-shot set up to
    /// this size). Default 8, the runs' in-context size (`eval.icl_shots`): the embedded model
    /// learnt in context from episodes of up to 8 demonstrations, and the context's length
    /// (and every step's cost) grows with each one.
    pub max_demonstrations: usize,
    /// Hide each training query's own demonstration (and the separator after it) from it, as if
    /// removed, and drop that demonstration's label from the row's targets: the training queries
    /// are the demonstrations, whose answers would otherwise be in their context.
    pub leave_one_out: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self { epsilon: 0.1, format_epsilon: 0.1, loss_decay: 1.0, max_demonstrations: 8, leave_one_out: true }
    }
}

/// The learned context, once `prepare` has read the demonstrations.
struct Learned {
    context: Context,
    /// Fine-tuning queries of the context's demonstrations, to find a query's own.
    prompts: Vec<String>,
    /// Their fixed token embeddings `[C, E]`.
    base: Tensor,
    /// The offsets `[C, E]`, trained.
    delta: Tensor,
    /// The demonstrations' label tokens, int64 `[count]`: their loss targets.
    labels: Tensor,
    /// 1 where an offset moves, 0 on labels and separators `[C, 1]`.
    moves: Tensor,
    /// Each token's radius `[C]`.
    radii: Tensor,
    pad: i64,
}

/// Context-aware prompt tuning.
pub struct Cpt {
    config: Config,
    learned: Option<Learned>,
}

const EMBED_TOKENS: &str = "model.decoder.embed_tokens.weight";

impl Learned {
    /// The context's embeddings with their offsets, projected first.
    fn embeddings(&self) -> Tensor {
        loss::project(&self.delta, &self.radii);
        &self.base + &self.delta * &self.moves
    }

    /// Each row's in-context query, encoded to follow the context, and the right-padded
    /// `[B, T]` ids and mask.
    fn queries(&self, host: &mut Host, batch: &Batch) -> Result<(Vec<Vec<i64>>, Tensor, Tensor)> {
        let rows = (batch.strings("icl_prompts")?.iter()).map(|q| host.encode(q, false)).collect::<Result<Vec<_>>>()?;
        let (ids, mask) = pad_right(&rows, self.pad, batch.input_ids()?.device());
        Ok((rows, ids, mask))
    }
}

impl Method for Cpt {
    const NAME: &'static str = "cpt";
    const ROLE: Role = Role::Objective;
    const DESCRIPTION: &'static str = "Context-aware prompt tuning: in-context learning whose demonstration \
        embeddings get learned offsets, projected to a small ball per token, trained on the query's and the \
        demonstrations' labels (https://arxiv.org/abs/2410.17222).";
    type Config = Config;

    fn new(config: Config, _: &mut Host) -> Result<Self> {
        let c = &config;
        for (key, value) in [("epsilon", c.epsilon), ("format_epsilon", c.format_epsilon), ("loss_decay", c.loss_decay)]
        {
            if !(value >= 0.0 && value.is_finite()) {
                return Err(Error::msg(format!("cpt: `{key}` must be a non-negative number, not {value}")));
            }
        }
        if c.max_demonstrations == 0 {
            return Err(Error::msg("cpt: `max_demonstrations` must be at least 1"));
        }
        Ok(Self { config, learned: None })
    }

    fn trains(&self, _: &str) -> Option<bool> {
        Some(false)
    }

    fn prepare(&mut self, host: &mut Host, data: &Tensors) -> Result<()> {
        if self.learned.is_some() {
            return Ok(());
        }
        let task = host.task()?;
        let demonstrations = data.demonstrations(task.label_token_ids.len())?;
        let count = demonstrations.texts.len().min(self.config.max_demonstrations);
        let texts =
            (demonstrations.texts[..count].iter()).map(|t| host.encode(t, false)).collect::<Result<Vec<_>>>()?;
        let labels: Vec<i64> = demonstrations.labels[..count].iter().map(|&l| task.label_token_ids[l]).collect();
        let separator = host.encode(&demonstrations.separator, false)?;
        let bos = host.encode("", true)?[0];
        let context = Context::new(bos, &texts, &labels, &separator)?;
        let model = host.model()?;
        if context.ids.len() as i64 >= model.max_position_embeddings {
            return Err(Error::msg(format!(
                "cpt: the context of {count} demonstrations is {} tokens, the model reads {}: lower \
                 max_demonstrations",
                context.ids.len(),
                model.max_position_embeddings
            )));
        }
        let table = host.parameter(EMBED_TOKENS, &model.parameters[EMBED_TOKENS], Init::Base)?;
        let device = table.device();
        let ids = Tensor::from_slice(&context.ids).to_device(device);
        let base = tch::no_grad(|| table.index_select(0, &ids).detach().copy());
        let delta = host.parameter("delta_embedding", &base.size(), Init::Zeros)?;
        let moves = Tensor::from_slice(&context.moves()).to_kind(base.kind()).to_device(device).unsqueeze(1);
        let radii = loss::radii(&context.roles, self.config.epsilon, self.config.format_epsilon, base.size()[1]);
        let radii = Tensor::from_slice(&radii).to_kind(Kind::Float).to_device(device);
        let labels = Tensor::from_slice(&labels).to_device(device);
        let prompts = demonstrations.prompts[..count].to_vec();
        self.learned = Some(Learned { context, prompts, base, delta, labels, moves, radii, pad: model.pad_token_id });
        Ok(())
    }

    fn loss(&mut self, host: &mut Host, batch: &Batch) -> Result<Loss> {
        let learned = self.learned.as_ref().ok_or_else(|| Error::msg("cpt trains only after `prepare`"))?;
        let prefix = learned.embeddings();
        let (rows, ids, tokens) = learned.queries(host, batch)?;
        let (c, count) = (learned.context.ids.len(), learned.context.spans.len());
        let prompts = batch.strings("prompts")?;
        let (mut mask, mut positions, mut weights, mut counted) = (vec![], vec![], vec![], vec![]);
        for (row, prompt) in rows.iter().zip(&prompts) {
            let own: Vec<usize> = match self.config.leave_one_out {
                true => (0..count).filter(|&i| learned.prompts[i] == *prompt).collect(),
                false => vec![],
            };
            let mut visible = vec![1i64; c];
            for &i in &own {
                visible[learned.context.block(i)].iter_mut().for_each(|v| *v = 0);
            }
            mask.push(Tensor::from_slice(&visible));
            // Demonstration i's label is read at the token before it; the query's after its last.
            positions.extend(learned.context.labels().map(|p| p as i64 - 1).chain([(c + row.len()) as i64 - 1]));
            weights.extend((0..=count).map(|i| loss::decay(i, count, self.config.loss_decay) as f32));
            counted.extend((0..=count).map(|i| !own.contains(&i)));
        }
        let device = ids.device();
        let b = rows.len() as i64;
        let mask = Tensor::cat(&[Tensor::stack(&mask, 0).to_device(device), tokens], 1);
        let positions = Tensor::from_slice(&positions).view([b, -1]).to_device(device);
        let request = ForwardRequest { logits: Logits::Positions, ..Default::default() };
        let out = host.forward_after(&prefix, &ids, &mask, Some(&positions), &request)?;
        let logits = out.logits.ok_or_else(|| Error::msg("the host returned no logits"))?;
        let targets = Tensor::cat(
            &[learned.labels.unsqueeze(0).expand([b, -1], false), batch.label_token_ids()?.view([b, 1])],
            1,
        );
        let weights = Tensor::from_slice(&weights).view([b, -1]).to_device(device);
        let counted = Tensor::from_slice(&counted).view([b, -1]).to_device(device);
        let loss = loss::weighted_loss(&logits, &targets, &weights, &counted);
        let query = logits.select(1, count as i64).to_kind(Kind::Float).detach();
        let query_loss = query.cross_entropy_for_logits(batch.label_token_ids()?).double_value(&[]);
        Ok(Loss { loss, metrics: vec![("query_loss".into(), query_loss)] })
    }

    /// The next-token logits `[B, V]` after the learned context and each row's query. The
    /// context runs once per batch: its keys/values serve every row. Its last token is a
    /// separator, whose offset is zero, so it runs as a plain token to close the cached prefix.
    fn predict(&mut self, host: &mut Host, batch: &Batch) -> Result<Tensor> {
        let learned = self.learned.as_ref().ok_or_else(|| Error::msg("cpt predicts only after `prepare`"))?;
        let c = learned.context.ids.len() as i64;
        let prefix = learned.embeddings().detach().narrow(0, 0, c - 1);
        let device = prefix.device();
        let last = Tensor::from_slice(&learned.context.ids[c as usize - 1..]).view([1, 1]).to_device(device);
        let keep = ForwardRequest { logits: Logits::None, grad: false, keep_cache: true, ..Default::default() };
        let out = host.forward_after(&prefix, &last, &Tensor::ones([1, c], (Kind::Int64, device)), None, &keep)?;
        let cache = out.cache.ok_or_else(|| Error::msg("the host kept no keys/values"))?;
        let (_, ids, tokens) = learned.queries(host, batch)?;
        let mask = Tensor::cat(&[tokens.ones_like().narrow(1, 0, 1).expand([-1, c], false), tokens], 1);
        let request = ForwardRequest { logits: Logits::Last, grad: false, past: Some(cache), ..Default::default() };
        let logits = host.forward(&ids, &mask, &request);
        host.free_cache(cache)?;
        logits?.logits.ok_or_else(|| Error::msg("the host returned no logits"))
    }
}

ftlab_sdk::export_library!(Cpt);
