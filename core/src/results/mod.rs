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

/// Run rows for the unit tests, without running anything.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::PathBuf;

    use super::ResultRow;
    use crate::methods::MethodSpec;
    use crate::run::{Headline, RunConfig, RunRecord, RunStatus, Timings};

    /// A run of `method` (+ `adapter`, unless `full`) at `shots` with data seed `seed`; `acc` =
    /// (in, ood) when completed, `None` for a failed run. It trained `shots × (1 + seed)` seconds.
    pub fn row(method: &str, adapter: &str, shots: usize, seed: u32, acc: Option<(f64, f64)>) -> ResultRow {
        let mut config = RunConfig { shots, data_seed: seed, method: MethodSpec::named(method), ..Default::default() };
        if adapter != "full" {
            config.adapters = vec![MethodSpec::named(adapter)];
        }
        let headline = acc.map(|(acc_in, ood)| Headline { acc_in, acc_ood: Some(ood), report: serde_json::json!([]) });
        let status = if acc.is_some() { RunStatus::Completed } else { RunStatus::Failed };
        let record = RunRecord {
            error: acc.is_none().then(|| "deliberate failure".to_string()),
            trainable_parameters: 10,
            last: headline.clone(),
            best: headline.map(|h| (1, h)),
            timings: Timings { train: (shots * (1 + seed as usize)) as f64, ..Default::default() },
            peak_rss_bytes: Some(1 << 20),
            ..RunRecord::new(&config, status)
        };
        ResultRow { dir: PathBuf::from(format!("runs/{}", record.name)), record }
    }
}
