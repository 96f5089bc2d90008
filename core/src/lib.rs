//! ftlab's runtime library, in the order of a run's data flow (shared/DESIGN.md §1):
//!
//! - [`run::config`]: experiment file ← `FTLAB_*` environment ← flags, into a `RunConfig`;
//! - [`model`] and [`tokenizer`]: the OPT family from HF checkpoints or the embedded tiny model;
//! - [`data`]: tasks, llmft's few-shot sampling, prompts and batches;
//! - [`methods`]: the objective and adapters, loaded as plugins through the registry;
//! - [`run`]: the training loop, checkpoints and the run record;
//! - [`eval`]: the evaluation harness and metrics;
//! - [`results`]: run records as one table, paper tables and plots;
//! - [`sweep`]: experiment grids run as resumable sweeps.
//!
//! The `ftlab` binary is a thin CLI over this crate; [`bench`] holds what its benchmarks measure.

pub mod bench;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod hub;
pub mod methods;
pub mod model;
pub mod results;
pub mod run;
pub mod sweep;
pub mod tokenizer;

pub use device::{Autocast, DeviceSpec, Dtype};
pub use error::{Error, Result};
