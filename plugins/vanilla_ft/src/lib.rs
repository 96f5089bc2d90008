//! `vanilla_ft`: fine-tuning with a new classification head, the paper's "vanilla FT"
//! (Mosbach et al., 2023, <https://arxiv.org/abs/2305.16938>). As HF's
//! `OPTForSequenceClassification`, the head reads the final hidden state (width
//! `word_embed_proj_dim`, what the LM head would read) of each row's last non-pad token; the
//! loss is the cross-entropy over the task's labels and the prediction is the head's scores.
//! The LM head is never computed. The head is new: on a few examples give it a larger step
//! than the pretrained body's (`--set 'train.lr_groups={"vanilla_ft." = 3e-2}'`), or it barely
//! moves while the body fits the examples instead.

use ftlab_sdk::prelude::*;

/// Which head reads the hidden state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Head {
    /// HF's `score`: one linear layer without bias, `[num_labels, dim]`, normal(0, 0.02).
    #[default]
    Linear,
    /// llmft's `ClassificationHead`: `score.dense` (dim → dim, bias) → ReLU → dropout →
    /// `score.output` (dim → num_labels, bias); weights normal(0, 0.02), biases zero.
    Llmft,
}

/// Hyperparameters, set in an experiment file under `vanilla_ft`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Config {
    /// The head: `linear` (HF's, the default) or `llmft`.
    pub head: Head,
    /// Dropout inside the `llmft` head during training (llmft uses OPT's `dropout`, 0.1);
    /// unused by `linear`.
    pub dropout: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self { head: Head::Linear, dropout: 0.1 }
    }
}

/// HF's initialisation of new linear weights (OPT's `init_std`).
const INIT: Init = Init::Normal { std: 0.02 };

/// The head's parameters, `(weight, bias)` pairs for the llmft head.
enum Weights {
    Linear { score: Tensor },
    Llmft { dense: (Tensor, Tensor), output: (Tensor, Tensor) },
}

/// A classification head on the last token.
pub struct VanillaFt {
    weights: Weights,
    dropout: f64,
    train: bool,
}

impl VanillaFt {
    /// Class scores `[B, num_labels]`, with or without autograd history.
    fn scores(&self, host: &mut Host, batch: &Batch, grad: bool) -> Result<Tensor> {
        let request = ForwardRequest { logits: Logits::None, grad, ..Default::default() };
        let out = host.forward(batch.input_ids()?, batch.attention_mask()?, &request)?;
        let (b, _, d) = out.hidden.size3()?;
        let index = out.last_token.view([b, 1, 1]).expand([b, 1, d], false);
        let pooled = out.hidden.gather(1, &index, false).squeeze_dim(1); // (B, D)
        Ok(match &self.weights {
            Weights::Linear { score } => pooled.linear::<&Tensor>(score, None),
            Weights::Llmft { dense, output } => {
                let h = pooled.linear(&dense.0, Some(&dense.1)).relu().dropout(self.dropout, self.train);
                h.linear(&output.0, Some(&output.1))
            }
        })
    }
}

impl Method for VanillaFt {
    const NAME: &'static str = "vanilla_ft";
    const ROLE: Role = Role::Objective;
    const DESCRIPTION: &'static str = "Vanilla fine-tuning: a classification head on the last token's hidden state, \
        cross-entropy over the labels (HF OPTForSequenceClassification; https://arxiv.org/abs/2305.16938).";
    type Config = Config;

    fn new(config: Config, host: &mut Host) -> Result<Self> {
        if !(0.0..1.0).contains(&config.dropout) {
            return Err(Error::msg(format!("dropout must be in [0, 1), got {}", config.dropout)));
        }
        let labels = host.task()?.label_words.len() as i64;
        let dim = host.model()?.word_embed_proj_dim;
        let weights = match config.head {
            Head::Linear => Weights::Linear { score: host.parameter("score.weight", &[labels, dim], INIT)? },
            Head::Llmft => Weights::Llmft {
                dense: (
                    host.parameter("score.dense.weight", &[dim, dim], INIT)?,
                    host.parameter("score.dense.bias", &[dim], Init::Zeros)?,
                ),
                output: (
                    host.parameter("score.output.weight", &[labels, dim], INIT)?,
                    host.parameter("score.output.bias", &[labels], Init::Zeros)?,
                ),
            },
        };
        Ok(Self { weights, dropout: config.dropout, train: false })
    }

    fn set_train(&mut self, train: bool) {
        self.train = train;
    }

    fn loss(&mut self, host: &mut Host, batch: &Batch) -> Result<Loss> {
        let scores = self.scores(host, batch, true)?;
        Ok(Loss::new(scores.to_kind(Kind::Float).cross_entropy_for_logits(batch.labels()?)))
    }

    fn predict(&mut self, host: &mut Host, batch: &Batch) -> Result<Tensor> {
        self.scores(host, batch, false)
    }
}

ftlab_sdk::export_library!(VanillaFt);
