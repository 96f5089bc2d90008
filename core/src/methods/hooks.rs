//! The model's hook sites calling the run's adapters, in the order they were given.

use ftlab_sdk::abi::{OwnedTensor, TensorRef};
use tch::Tensor;

use super::Loaded;
use crate::model::hooks::{ForwardHooks, HookResult, Site};

/// The run's adapters as forward hooks. A site no adapter declared is never called across the
/// ABI, so adapters cost only where they act.
#[derive(Clone, Copy)]
pub struct AdapterHooks<'a> {
    /// The adapters, in run order.
    pub adapters: &'a [Loaded],
}

impl AdapterHooks<'_> {
    fn at(&self, site: Site) -> impl Iterator<Item = &Loaded> {
        self.adapters.iter().filter(move |a| a.acts_at(site))
    }
}

impl ForwardHooks for AdapterHooks<'_> {
    fn embeddings(&self, mut embeds: Tensor, mut mask: Tensor) -> HookResult<(Tensor, Tensor)> {
        for adapter in self.at(Site::Embeddings) {
            let pair = adapter.object.embeddings(OwnedTensor::new(embeds), OwnedTensor::new(mask));
            let pair = pair.into_result().map_err(|e| e.to_string())?;
            (embeds, mask) = (pair.0.into_tensor(), pair.1.into_tensor());
        }
        Ok((embeds, mask))
    }

    /// The adapters' prompts, in run order, one after another.
    fn prompt(&self) -> HookResult<Option<Tensor>> {
        let mut prompts = Vec::new();
        for adapter in self.at(Site::Prompt) {
            let prompt = adapter.object.prompt().into_result().map_err(|e| e.to_string())?;
            prompts.extend(prompt.into_option().map(OwnedTensor::into_tensor));
        }
        Ok(match prompts.len() {
            0 => None,
            1 => prompts.pop(),
            _ => Some(Tensor::f_cat(&prompts, 0).map_err(|e| format!("the adapters' prompts: {e}"))?),
        })
    }

    fn linear(&self, layer: i64, site: Site, input: &Tensor, mut output: Tensor) -> HookResult<Tensor> {
        for adapter in self.at(site) {
            let result = adapter.object.linear(layer, site.code(), TensorRef::new(input), OwnedTensor::new(output));
            output = result.into_result().map_err(|e| e.to_string())?.into_tensor();
        }
        Ok(output)
    }

    fn activation(&self, layer: i64, mut activation: Tensor) -> HookResult<Tensor> {
        for adapter in self.at(Site::Activation) {
            let result = adapter.object.activation(layer, OwnedTensor::new(activation));
            activation = result.into_result().map_err(|e| e.to_string())?.into_tensor();
        }
        Ok(activation)
    }
    /// A copy: it borrows the run's adapters, which outlive every training step.
    fn boxed(&self) -> Option<Box<dyn ForwardHooks + '_>> {
        Some(Box::new(*self))
    }
}
