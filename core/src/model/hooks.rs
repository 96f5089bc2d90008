//! Named sites in the OPT forward pass where a fine-tuning method can act.
//!
//! The sites are those of shared/DESIGN.md §2: every attention and MLP linear output per layer
//! (LoRA adds a delta, (IA)³ rescales), the token embeddings before positions are added (DePT
//! offsets them), a prompt every row reads first (prompt tuning's soft prompt), and the MLP
//! activation. The forward pass takes an `Option<&dyn ForwardHooks>`: with `None` no site costs
//! more than a branch.

use tch::Tensor;

/// The hook sites are the SDK's, so methods and the model name them identically.
pub use ftlab_sdk::Site;

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

    /// Vectors every row reads before its tokens, `[m, word_embed_proj_dim]` (a soft prompt), or
    /// `None`. The model reads them once per pass, at batch 1 and positions 0..m, and every row
    /// attends to their keys/values as to kept ones: the same logits as prepending them to each
    /// row (PEFT's prompt learning), for m positions per pass instead of m per row, and outputs
    /// cover the tokens only. Asked only when no keys/values are given (those hold the prompt).
    fn prompt(&self) -> HookResult<Option<Tensor>> {
        Ok(None)
    }

    /// The output of linear `site` in layer `layer`, given its input; returns the value the
    /// model continues with (e.g. `output + delta(input)`).
    fn linear(&self, layer: i64, site: Site, input: &Tensor, output: Tensor) -> HookResult<Tensor> {
        let _ = (layer, site, input);
        Ok(output)
    }

    /// The MLP activation `act(fc1(x))` in layer `layer`, `[B, T, ffn_dim]`.
    fn activation(&self, layer: i64, activation: Tensor) -> HookResult<Tensor> {
        let _ = layer;
        Ok(activation)
    }

    /// These hooks as a value of their own, for activation checkpointing, which runs a layer
    /// and its hooks again in the backward pass, after the forward's borrow of them ended: a
    /// copy that borrows only what the hooks themselves borrow. `None` (default): the layers
    /// run without checkpointing.
    fn boxed(&self) -> Option<Box<dyn ForwardHooks + '_>> {
        None
    }
}
