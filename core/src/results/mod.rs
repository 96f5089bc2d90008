//! Results for papers: every run's `record.json`, across any number of run folders, read as
//! one table; aggregated into paper tables; drawn as plots.
//!
//! - [`store`]: finds the records, flattens each into one [`store::ResultRow`], builds a polars
//!   `DataFrame`, and exports it to parquet or CSV. One file per run, each written atomically by
//!   the run itself (`run::record::write_atomically`), is what lets concurrent runs and sweeps on
//!   a shared filesystem add results without a shared file to lock or lose.
//! - [`table`]: rows × columns of mean ± std over seeds, with the number of runs per cell and
//!   failed runs flagged in their cell, as Markdown, LaTeX or CSV.
//! - [`plot`]: the llmft paper's figures (in- vs out-of-domain accuracy per method, accuracy vs
//!   shots) and the cost of each method (training time, peak memory), as PNG and SVG.

pub mod plot;
pub mod store;
pub mod table;

pub use store::{load, ResultRow};
