//! Tasks, few-shot data and prompts (shared/DESIGN.md §1 and §4): everything between a task
//! name in a run config and the padded batches the model scores.
//!
//! - [`task`]: the registry of tasks and eval sets ([`tasks`] holds one file per task);
//! - [`source`]: hub parquet through the HF cache, users' TSV/CSV/JSONL/parquet files, and the
//!   embedded llmft files, all read into [`dataset::Dataset`]s;
//! - [`synthetic`]: the embedded synthetic NLI task with its HANS-like out-of-domain split;
//! - [`text`]: documents and prompt/response rows for language modelling (the `text` task);
//! - [`sampling`]: few-shot sets and in-context demonstrations, index for index as numpy/llmft;
//! - [`prompt`]: patterns and verbalizers;
//! - [`batch`]: dynamic padding and length-bucketed, seeded batch orders.

pub mod batch;
pub mod dataset;
pub mod numpy;
pub mod prompt;
pub mod sampling;
pub mod source;
pub mod synthetic;
pub mod task;
pub mod tasks;
pub mod text;

pub use dataset::{Dataset, EvalSet, Example, Subset};
pub use prompt::{Compat, PatternStyle, Prompt, PromptFamily, PromptSpec};
pub use task::{DataOptions, HansScope, Metric, TaskDef};
