//! ftlab's runtime library: the OPT model family, its tokenizer, devices and dtypes.
//!
//! Data flow (shared/DESIGN.md §1): a run config names a model, which [`model::Model::load`]
//! turns into a network and tokenizer; the training loop, evaluation harness and results store
//! build on it. The `ftlab` binary is a thin CLI over this crate.

pub mod bench;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod methods;
pub mod model;
pub mod run;
pub mod tokenizer;

pub use device::{DeviceSpec, Dtype};
pub use error::{Error, Result};
