//! Evaluation (shared/DESIGN.md §1, §4): metrics, the harness that scores every eval set and
//! subset of a task, and the time and memory a phase costs.

pub mod harness;
pub mod language;
pub mod metrics;
pub mod predictions;
pub mod resources;

pub use harness::{evaluate, model_scorer, EvalOptions, EvalReport, Prediction, Scores, SetReport};
pub use metrics::MetricValues;
pub use resources::{PhaseMeter, PhaseResources};
