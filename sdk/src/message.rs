//! Safe conversions between [`Message`] (what crosses the ABI) and named tch tensors plus JSON.

use std::collections::BTreeMap;

use abi_stable::std_types::RVec;
use tch::Tensor;

use crate::abi::{Message, NamedTensor, OwnedTensor};

/// Named tensors and JSON metadata: the safe form of a [`Message`].
#[derive(Debug, Default)]
pub struct Tensors {
    /// Tensors by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// JSON metadata (an object).
    pub json: serde_json::Value,
}

impl Tensors {
    /// An empty set with `{}` metadata.
    pub fn new() -> Self {
        Self { tensors: BTreeMap::new(), json: serde_json::json!({}) }
    }

    /// Adds a tensor.
    pub fn with(mut self, name: &str, tensor: Tensor) -> Self {
        self.tensors.insert(name.into(), tensor);
        self
    }

    /// The tensor `name`, or an error naming what is there instead.
    pub fn get(&self, name: &str) -> crate::Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| {
            let have: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
            crate::Error::msg(format!("no tensor `{name}` (have: {})", have.join(", ")))
        })
    }

    /// Moves the tensors into a message.
    pub fn into_message(self) -> Message {
        let tensors: RVec<NamedTensor> = self
            .tensors
            .into_iter()
            .map(|(name, tensor)| NamedTensor { name: name.into(), tensor: OwnedTensor::new(tensor) })
            .collect();
        Message { json: self.json.to_string().into(), tensors }
    }

    /// Takes a message's tensors; malformed JSON is an error.
    pub fn from_message(message: Message) -> crate::Result<Self> {
        let json = if message.json.is_empty() { serde_json::json!({}) } else { serde_json::from_str(&message.json)? };
        let tensors = message.tensors.into_iter().map(|t| (t.name.into_string(), t.tensor.into_tensor())).collect();
        Ok(Self { tensors, json })
    }
}
