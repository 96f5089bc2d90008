//! # ftlab-sdk: write a fine-tuning method as a plugin
//!
//! ftlab loads every method — its own and third parties' alike — from a dynamically loaded
//! library built against this crate only. A method implements [`Method`]: a serde
//! hyperparameter struct with defaults, a role ([`Role::Objective`] decides the loss and the
//! prediction; [`Role::Adapter`] chooses what trains and acts at [`Site`]s of the forward pass),
//! and the hooks it needs. [`export_library!`] exports the library. See `sdk/README.md` for the
//! workflow from `ftlab plugins new` to `ftlab run --plugin NAME`.
//!
//! Under the hood ([`abi`]) the library exports an abi_stable root module; the host checks its
//! layout and the versions in [`abi::AbiInfo`] before use, tensors cross as libtorch handles
//! with written ownership rules, and every call is guarded so that a panic or a libtorch error
//! becomes an error value naming the method and the call.

pub mod abi;
pub mod context;
mod error;
pub mod export;
pub mod host;
mod message;
mod method;
pub mod peft;
pub mod rng;
pub mod soft_prompt;
pub mod testing;

pub use abi::{Inputs, Role};
pub use error::{Error, Result};
pub use host::{ForwardOutput, ForwardRequest, Host, HostRequest, Init, LoadedModel, Logits, ModelInfo, TaskInfo};
pub use message::Tensors;
pub use method::{
    all_logits, last_token_logits, next_token_targets, token_cross_entropy, verbalizer_logits, Batch, Demonstrations,
    Export, Loss, Method, MomentMove, Site,
};

#[doc(hidden)]
pub use inventory;
pub use {abi_stable, schemars, serde, serde_json, tch};

/// The tch version this SDK links (pinned exactly in the workspace).
pub const TCH_VERSION: &str = "0.26.0";

/// Files `ftlab plugins new` writes (placeholders `{{name}}`, `{{sdk}}`, `{{libtorch}}`).
pub mod template {
    /// `Cargo.toml` of a method library.
    pub const CARGO_TOML: &str = include_str!("../template/Cargo.toml.in");
    /// `.cargo/config.toml` pinning the host's libtorch.
    pub const CARGO_CONFIG: &str = include_str!("../template/cargo-config.toml.in");
    /// `src/lib.rs` of an adapter.
    pub const ADAPTER: &str = include_str!("../template/adapter.rs.in");
    /// `src/lib.rs` of an objective.
    pub const OBJECTIVE: &str = include_str!("../template/objective.rs.in");
    /// `tests/check.rs`: `ftlab plugins check` on the built library (placeholder `{{ftlab}}`).
    pub const CHECK_TEST: &str = include_str!("../template/check.rs.in");
}

/// Everything a method file needs.
pub mod prelude {
    pub use crate::host::{ForwardRequest, Host, Init, Logits};
    pub use crate::method::{
        all_logits, last_token_logits, next_token_targets, token_cross_entropy, verbalizer_logits, Batch, Export, Loss,
        Method, MomentMove, Site,
    };
    pub use crate::{Error, Inputs, Result, Role, Tensors};
    pub use schemars::JsonSchema;
    pub use serde::{Deserialize, Serialize};
    pub use tch::{self, Kind, Reduction, Tensor};
}
