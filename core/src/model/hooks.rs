//! Named sites in the OPT forward pass where a fine-tuning method can act.
//!
//! The sites are those of shared/DESIGN.md §2: every attention and MLP linear output per layer
//! (LoRA adds a delta, (IA)³ rescales), the token embeddings before positions are added (prompt
//! tuning prepends vectors and extends the mask), and the MLP activation. The forward pass takes
//! an `Option<&dyn ForwardHooks>`: with `None` no site costs more than a branch.

use tch::Tensor;

/// A linear layer inside a decoder layer; the names are the HF parameter path segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinearSite {
    /// Attention query projection (its output is hooked before OPT's `head_dim^-0.5` scaling,
    /// as PEFT's wrapped `q_proj` would be).
    QProj,
    /// Attention key projection.
    KProj,
    /// Attention value projection.
    VProj,
    /// Attention output projection.
    OutProj,
    /// MLP up projection.
    Fc1,
    /// MLP down projection.
    Fc2,
}

impl LinearSite {
    /// Every site, in forward order.
    pub const ALL: [LinearSite; 6] = [Self::QProj, Self::KProj, Self::VProj, Self::OutProj, Self::Fc1, Self::Fc2];

    /// The HF name of the module (`q_proj`, …, `fc2`).
    pub fn name(self) -> &'static str {
        match self {
            Self::QProj => "q_proj",
            Self::KProj => "k_proj",
            Self::VProj => "v_proj",
            Self::OutProj => "out_proj",
            Self::Fc1 => "fc1",
            Self::Fc2 => "fc2",
        }
    }

    /// The module's full HF parameter path in layer `layer`,
    /// e.g. `model.decoder.layers.3.self_attn.q_proj`.
    pub fn path(self, layer: i64) -> String {
        match self {
            Self::Fc1 | Self::Fc2 => format!("model.decoder.layers.{layer}.{}", self.name()),
            _ => format!("model.decoder.layers.{layer}.self_attn.{}", self.name()),
        }
    }

    /// Parses `q_proj` … `fc2`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What a hook returns; the message becomes an [`crate::Error::Hook`] naming the site.
pub type HookResult<T> = Result<T, String>;

/// Callbacks at the hook sites. Every method defaults to "leave the value unchanged", so an
/// implementation overrides only the sites it needs.
pub trait ForwardHooks {
    /// Token embeddings `[B, T, word_embed_proj_dim]` and the attention mask `[B, P + T]`
    /// (P = cached prefix length), before `project_in` and position embeddings. May prepend
    /// vectors, provided the mask is extended to match; positions follow the returned mask.
    fn embeddings(&self, embeds: Tensor, mask: Tensor) -> HookResult<(Tensor, Tensor)> {
        Ok((embeds, mask))
    }

    /// The output of linear `site` in layer `layer`, given its input; returns the value the
    /// model continues with (e.g. `output + delta(input)`).
    fn linear(&self, layer: i64, site: LinearSite, input: &Tensor, output: Tensor) -> HookResult<Tensor> {
        let _ = (layer, site, input);
        Ok(output)
    }

    /// The MLP activation `act(fc1(x))` in layer `layer`, `[B, T, ffn_dim]`.
    fn activation(&self, layer: i64, activation: Tensor) -> HookResult<Tensor> {
        let _ = layer;
        Ok(activation)
    }
}
