//! ftlab's runtime library, in the order of a run's data flow (shared/DESIGN.md §1):
//!
//! - [`run::config`]: one run's settings, as the `ftlab` binary layers and hands them over;
//! - [`model`] and [`tokenizer`]: the OPT family from HF checkpoints or the embedded tiny model;
//! - [`data`]: tasks, llmft's few-shot sampling, prompts and batches;
//! - [`methods`]: the objective and adapters, loaded as plugins through the registry;
//! - [`run`]: the training loop, checkpoints and the run record;
//! - [`eval`]: the evaluation harness and metrics;
//! - [`results`]: run records as one table, paper tables and plots;
//! - [`sweep`]: experiment grids run as resumable sweeps.
//!
//! - [`bench`]: what `ftlab bench` measures, each against its baseline.
//!
//! The `ftlab` binary (`core/cli`) is a thin front over this crate: it parses, layers the
//! configuration and dispatches.

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

pub use device::{Autocast, DeviceList, DeviceSpec, Dtype};
pub use error::{Error, Result};
