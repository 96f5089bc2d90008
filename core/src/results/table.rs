//! Paper tables: runs grouped into rows × columns, each cell aggregated over the runs in it
//! (typically the data seeds), as Markdown, LaTeX or CSV.
//!
//! Conventions, as in the llmft paper's tables:
//! - a cell shows `mean ± std (n=…)`; std is the sample standard deviation (n − 1 in the
//!   denominator), absent for a cell with one run, where it is undefined;
//! - the best cell of each column is bold: the highest mean (or max, without mean), except for
//!   costs (`time_*`, `peak_rss_bytes`, `trainable_parameters`), where lower is better;
//! - a run that did not complete is never dropped: its cell says how many runs failed
//!   (`0.812 ± 0.010 (n=3, 1 failed)`) and Markdown/LaTeX list every failed run and its error
//!   below the table;
//! - `ci95` is a 95% bootstrap interval of the cell's mean: over seeds (runs resampled with
//!   replacement) and, for accuracies, over examples within each run (each run's per-example
//!   predictions resampled), 2,000 replicates from a fixed seed, shown `[lo, hi]`;
//! - CSV holds plain numbers: per column `mean`, `std`, `max`, `ci95_lo`/`ci95_hi` (as asked),
//!   `n` and `failed`.

use std::cmp::Ordering;
use std::str::FromStr;

use super::store::{ResultRow, Value};
use crate::error::{Error, Result};
use crate::eval::predictions;

/// An aggregation over the runs of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    /// Arithmetic mean.
    Mean,
    /// Sample standard deviation (n − 1); absent for one run.
    Std,
    /// Largest value.
    Max,
    /// 95% bootstrap interval of the mean, over seeds and (for accuracies) examples.
    Ci95,
}

impl FromStr for Agg {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Agg::Mean),
            "std" => Ok(Agg::Std),
            "max" => Ok(Agg::Max),
            "ci95" => Ok(Agg::Ci95),
            _ => Err(Error::Results(format!("unknown aggregation `{s}`; use mean, std, max or ci95"))),
        }
    }
}

/// Output format of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    /// GitHub-flavoured Markdown.
    Markdown,
    /// A LaTeX `tabular` (booktabs rules).
    Latex,
    /// Plain numbers, one CSV column per aggregate.
    Csv,
}

/// What to tabulate.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Columns whose values make the table's rows (e.g. `method`, `adapter`).
    pub rows: Vec<String>,
    /// Columns whose values make the table's columns (e.g. `shots`); may be empty.
    pub cols: Vec<String>,
    /// Numeric columns aggregated in each cell (e.g. `acc_in`, `acc_ood`).
    pub metrics: Vec<String>,
    /// Aggregations shown per cell.
    pub aggs: Vec<Agg>,
    /// A first row `zero-shot`: the before-training evaluations (`zero_shot_acc_in`, …) of
    /// this objective's runs without adapters — the untrained model scored by the same pattern.
    pub zero_shot: Option<String>,
}

/// The runs of one cell: the metric of each completed run that has it, and the failures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cell {
    /// The metric of each completed run (in run-folder order).
    pub values: Vec<f64>,
    /// Runs in this cell that did not complete.
    pub failed: usize,
    /// Per value, when known: each eval set's per-example correctness, for [`Cell::ci95`].
    pub examples: Vec<Option<Vec<Vec<bool>>>>,
}

/// Bootstrap replicates of [`Cell::ci95`].
const REPLICATES: usize = 2000;

/// SplitMix64: a small, fixed-seed generator, so an interval is the same on every machine.
struct SplitMix64(u64);

impl SplitMix64 {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

impl Cell {
    /// Mean, or `None` without values.
    pub fn mean(&self) -> Option<f64> {
        (!self.values.is_empty()).then(|| self.values.iter().sum::<f64>() / self.values.len() as f64)
    }

    /// Sample standard deviation (n − 1), or `None` with fewer than two values.
    pub fn std(&self) -> Option<f64> {
        let mean = self.mean()?;
        let n = self.values.len();
        (n >= 2).then(|| (self.values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt())
    }

    /// Largest value, or `None` without values.
    pub fn max(&self) -> Option<f64> {
        self.values.iter().copied().reduce(f64::max)
    }

    /// The 95% bootstrap interval of the mean: each replicate draws the runs with replacement
    /// and, for a run whose per-example predictions are known, its examples with replacement
    /// within each eval set (the run's value is then the mean accuracy over its sets).
    pub fn ci95(&self) -> Option<(f64, f64)> {
        let n = self.values.len();
        if n == 0 {
            return None;
        }
        let mut rng = SplitMix64(0);
        let mut means: Vec<f64> = (0..REPLICATES)
            .map(|_| {
                let total: f64 = (0..n)
                    .map(|_| {
                        let run = rng.below(n);
                        match self.examples.get(run).and_then(Option::as_ref) {
                            Some(sets) if !sets.is_empty() => {
                                let accuracy = |set: &Vec<bool>| {
                                    let hits = (0..set.len()).filter(|_| set[rng.below(set.len())]).count();
                                    hits as f64 / set.len().max(1) as f64
                                };
                                sets.iter().map(accuracy).sum::<f64>() / sets.len() as f64
                            }
                            _ => self.values[run],
                        }
                    })
                    .sum();
                total / n as f64
            })
            .collect();
        means.sort_by(f64::total_cmp);
        let at = |q: f64| means[((q * REPLICATES as f64) as usize).min(REPLICATES - 1)];
        Some((at(0.025), at(0.975)))
    }

    fn agg(&self, agg: Agg) -> Option<f64> {
        match agg {
            Agg::Mean => self.mean(),
            Agg::Std => self.std(),
            Agg::Max => self.max(),
            Agg::Ci95 => self.ci95().map(|(lo, _)| lo),
        }
    }
}

/// A built table: sorted row and column keys and a cell for each pair.
#[derive(Debug, Clone)]
pub struct Table {
    /// The request.
    pub spec: TableSpec,
    /// One label per row column, per row.
    pub rows: Vec<Vec<String>>,
    /// Per table column: the labels of the column keys and the metric.
    pub columns: Vec<(Vec<String>, String)>,
    /// `cells[row][column]`.
    pub cells: Vec<Vec<Cell>>,
    /// Every run that did not complete: name, status and error.
    pub failed: Vec<(String, String, String)>,
}

/// Orders keys as numbers where both are numbers, else as text.
fn compare(a: &[Value], b: &[Value]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| match (x.number(), y.number()) {
            (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
            _ => x.label().cmp(&y.label()),
        })
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

/// The distinct values of `names` over `rows`, sorted.
fn keys(rows: &[ResultRow], names: &[String]) -> Result<Vec<Vec<Value>>> {
    let mut keys: Vec<Vec<Value>> = Vec::new();
    for row in rows {
        let key = names.iter().map(|n| row.get(n)).collect::<Result<Vec<_>>>()?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.sort_by(|a, b| compare(a, b));
    Ok(keys)
}

/// Groups `runs` as `spec` asks.
pub fn build(runs: &[ResultRow], spec: &TableSpec) -> Result<Table> {
    if runs.is_empty() {
        return Err(Error::Results("no run records found".into()));
    }
    if spec.rows.is_empty() || spec.metrics.is_empty() || spec.aggs.is_empty() {
        return Err(Error::Results("a table needs at least one row column, metric and aggregation".into()));
    }
    for metric in &spec.metrics {
        if let Value::Text(_) = runs[0].get(metric)? {
            return Err(Error::Results(format!("`{metric}` is text; a metric must be a number")));
        }
    }
    let row_keys = keys(runs, &spec.rows)?;
    let col_keys = keys(runs, &spec.cols)?;
    let columns: Vec<(Vec<Value>, String)> =
        col_keys.iter().flat_map(|k| spec.metrics.iter().map(move |m| (k.clone(), m.clone()))).collect();
    let mut cells = vec![vec![Cell::default(); columns.len()]; row_keys.len()];
    for run in runs {
        let row_key = spec.rows.iter().map(|n| run.get(n)).collect::<Result<Vec<_>>>()?;
        let col_key = spec.cols.iter().map(|n| run.get(n)).collect::<Result<Vec<_>>>()?;
        let Some(r) = row_keys.iter().position(|k| *k == row_key) else { continue };
        for (c, (key, metric)) in columns.iter().enumerate() {
            if *key != col_key {
                continue;
            }
            let cell = &mut cells[r][c];
            if !run.completed() {
                cell.failed += 1;
            } else if let Some(v) = run.get(metric)?.number().filter(|v| v.is_finite()) {
                cell.values.push(v);
                let per_example = spec.aggs.contains(&Agg::Ci95).then(|| examples_of(run, metric)).flatten();
                cell.examples.push(per_example);
            }
        }
    }
    let mut row_labels: Vec<Vec<String>> = row_keys.iter().map(|k| k.iter().map(Value::label).collect()).collect();
    if let Some(method) = &spec.zero_shot {
        let mut zero = vec![Cell::default(); columns.len()];
        let before_training = runs.iter().filter(|r| r.completed() && r.record.config.method.name == *method);
        for run in before_training.filter(|r| r.record.config.adapters.is_empty()) {
            let col_key = spec.cols.iter().map(|n| run.get(n)).collect::<Result<Vec<_>>>()?;
            for (c, (key, metric)) in columns.iter().enumerate() {
                // Metrics without a before-training column (costs) stay empty.
                let before = format!("zero_shot_{metric}");
                let value = match ResultRow::has_column(&before) && *key == col_key {
                    true => run.get(&before)?.number(),
                    false => None,
                };
                zero[c].values.extend(value.filter(|v| v.is_finite()));
            }
        }
        if zero.iter().all(|c| c.values.is_empty()) {
            return Err(Error::Results(format!("no completed `{method}` run without adapters for the zero-shot row")));
        }
        cells.insert(0, zero);
        let mut label = vec!["-".to_string(); spec.rows.len()];
        label[0] = "zero-shot".into();
        row_labels.insert(0, label);
    }
    let failed = runs
        .iter()
        .filter(|r| !r.completed())
        .map(|r| (r.record.name.clone(), r.record.status.to_string(), r.record.error.clone().unwrap_or_default()))
        .collect();
    let labels = |k: &Vec<Value>| k.iter().map(Value::label).collect::<Vec<_>>();
    Ok(Table {
        spec: spec.clone(),
        rows: row_labels,
        columns: columns.iter().map(|(k, m)| (labels(k), m.clone())).collect(),
        cells,
        failed,
    })
}

/// The per-example correctness behind `metric` (`acc_in`: the in-domain set; `acc_ood`: each
/// out-of-domain set) of a run's last evaluation, from its `predictions/`; `None` for other
/// metrics or when the files are not there.
fn examples_of(run: &ResultRow, metric: &str) -> Option<Vec<Vec<bool>>> {
    let in_domain = match metric {
        "acc_in" => true,
        "acc_ood" => false,
        _ => return None,
    };
    let folder = run.dir.join("predictions");
    let last = predictions::epoch_folder(&folder, predictions::epochs(&folder).ok()?.into_iter().max()?);
    let report = run.record.last.as_ref()?.report.as_array()?;
    let sets = report.iter().filter(|set| set["in_domain"].as_bool() == Some(in_domain));
    sets.map(|set| predictions::correct(&predictions::set_file(&last, set["name"].as_str()?)).ok()).collect()
}

/// Costs are better low; everything else (accuracies) high.
fn lower_is_better(metric: &str) -> bool {
    metric.starts_with("time_") || ["cost_seconds", "peak_rss_bytes", "trainable_parameters"].contains(&metric)
}

impl Table {
    /// The header of table column `c`: `shots=16 acc_in` (the metric only when it tells columns apart).
    pub fn column_label(&self, c: usize) -> String {
        let (key, metric) = &self.columns[c];
        let mut parts: Vec<String> = self.spec.cols.iter().zip(key).map(|(n, v)| format!("{n}={v}")).collect();
        if self.spec.metrics.len() > 1 || parts.is_empty() {
            parts.push(metric.clone());
        }
        parts.join(" ")
    }

    /// The value that ranks cells (mean, else max), if the table shows one.
    fn rank_value(&self, cell: &Cell) -> Option<f64> {
        [Agg::Mean, Agg::Max].into_iter().find(|a| self.spec.aggs.contains(a)).and_then(|a| cell.agg(a))
    }

    /// Whether `cells[r][c]` is the best of its column (ties are all best).
    pub fn is_best(&self, r: usize, c: usize) -> bool {
        let Some(value) = self.rank_value(&self.cells[r][c]) else { return false };
        let lower = lower_is_better(&self.columns[c].1);
        self.cells.iter().filter_map(|row| self.rank_value(&row[c])).all(|other| {
            if lower {
                value <= other
            } else {
                value >= other
            }
        })
    }

    /// The table as text in `format`.
    pub fn render(&self, format: TableFormat) -> String {
        match format {
            TableFormat::Markdown => self.markdown(),
            TableFormat::Latex => self.latex(),
            TableFormat::Csv => self.csv(),
        }
    }

    /// `0.812 ± 0.010` (with `pm` between mean and std), or `–` without values.
    fn numbers(&self, cell: &Cell, pm: &str) -> String {
        let aggs = &self.spec.aggs;
        let mut text = String::new();
        if let Some(mean) = aggs.contains(&Agg::Mean).then(|| cell.mean()).flatten() {
            text.push_str(&format_number(mean));
        }
        if let Some(std) = aggs.contains(&Agg::Std).then(|| cell.std()).flatten() {
            text.push_str(&format!("{pm}{}", format_number(std)));
        }
        if let Some(max) = aggs.contains(&Agg::Max).then(|| cell.max()).flatten() {
            let sep = if text.is_empty() { "" } else { ", max " };
            text.push_str(&format!("{sep}{}", format_number(max)));
        }
        if let Some((lo, hi)) = aggs.contains(&Agg::Ci95).then(|| cell.ci95()).flatten() {
            let sep = if text.is_empty() { "" } else { " " };
            text.push_str(&format!("{sep}[{}, {}]", format_number(lo), format_number(hi)));
        }
        if text.is_empty() {
            "–".into()
        } else {
            text
        }
    }

    /// `(n=3)` or `(n=3, 1 failed)`.
    fn counts(cell: &Cell) -> String {
        if cell.failed > 0 {
            format!("(n={}, {} failed)", cell.values.len(), cell.failed)
        } else {
            format!("(n={})", cell.values.len())
        }
    }

    fn markdown(&self) -> String {
        let mut header: Vec<String> = self.spec.rows.clone();
        header.extend((0..self.columns.len()).map(|c| self.column_label(c)));
        let mut out = format!("| {} |\n|{}\n", header.join(" | "), "---|".repeat(header.len()));
        for (r, labels) in self.rows.iter().enumerate() {
            let mut line = labels.clone();
            for (c, cell) in self.cells[r].iter().enumerate() {
                let numbers = self.numbers(cell, " ± ");
                let numbers = if self.is_best(r, c) { format!("**{numbers}**") } else { numbers };
                line.push(format!("{numbers} {}", Self::counts(cell)));
            }
            out.push_str(&format!("| {} |\n", line.join(" | ")));
        }
        if !self.failed.is_empty() {
            out.push_str(&format!("\n{} failed run(s):\n", self.failed.len()));
            for (name, status, error) in &self.failed {
                out.push_str(&format!("- `{name}` ({status}): {}\n", error.replace('\n', " ")));
            }
        }
        out
    }

    fn latex(&self) -> String {
        let header: Vec<String> = self
            .spec
            .rows
            .iter()
            .cloned()
            .chain((0..self.columns.len()).map(|c| self.column_label(c)))
            .map(|h| latex_escape(&h))
            .collect();
        let align = format!("{}{}", "l".repeat(self.spec.rows.len()), "c".repeat(self.columns.len()));
        let mut out = format!("% needs \\usepackage{{booktabs}}\n\\begin{{tabular}}{{{align}}}\n\\toprule\n");
        out.push_str(&format!("{} \\\\\n\\midrule\n", header.join(" & ")));
        for (r, labels) in self.rows.iter().enumerate() {
            let mut line: Vec<String> = labels.iter().map(|l| latex_escape(l)).collect();
            for (c, cell) in self.cells[r].iter().enumerate() {
                let numbers = self.numbers(cell, " $\\pm$ ");
                let numbers = if self.is_best(r, c) { format!("\\textbf{{{numbers}}}") } else { numbers };
                line.push(format!("{numbers} {{\\scriptsize {}}}", Self::counts(cell)));
            }
            out.push_str(&format!("{} \\\\\n", line.join(" & ")));
        }
        out.push_str("\\bottomrule\n\\end{tabular}\n");
        for (name, status, error) in &self.failed {
            out.push_str(&format!("% {status}: {name}: {}\n", error.replace('\n', " ")));
        }
        out
    }

    fn csv(&self) -> String {
        let mut header: Vec<String> = self.spec.rows.clone();
        for c in 0..self.columns.len() {
            let label = self.column_label(c);
            for agg in &self.spec.aggs {
                match agg {
                    Agg::Ci95 => header.extend([format!("{label} ci95_lo"), format!("{label} ci95_hi")]),
                    _ => header.push(format!("{label} {}", agg_name(*agg))),
                }
            }
            header.push(format!("{label} n"));
            header.push(format!("{label} failed"));
        }
        let mut out = csv_line(&header);
        for (r, labels) in self.rows.iter().enumerate() {
            let mut line = labels.clone();
            for cell in &self.cells[r] {
                for agg in &self.spec.aggs {
                    match (agg, cell.ci95()) {
                        (Agg::Ci95, Some((lo, hi))) => line.extend([lo.to_string(), hi.to_string()]),
                        (Agg::Ci95, None) => line.extend([String::new(), String::new()]),
                        _ => line.push(cell.agg(*agg).map_or(String::new(), |v| v.to_string())),
                    }
                }
                line.push(cell.values.len().to_string());
                line.push(cell.failed.to_string());
            }
            out.push_str(&csv_line(&line));
        }
        out
    }
}

fn agg_name(agg: Agg) -> &'static str {
    match agg {
        Agg::Mean => "mean",
        Agg::Std => "std",
        Agg::Max => "max",
        Agg::Ci95 => "ci95",
    }
}

/// Three decimals for fractions such as accuracies, fewer for larger numbers.
fn format_number(v: f64) -> String {
    match v.abs() {
        a if a >= 1000.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.3}"),
    }
}

fn latex_escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '_' | '%' | '&' | '#' | '$' | '{' | '}' => format!("\\{c}"),
            _ => c.to_string(),
        })
        .collect()
}

fn csv_line(fields: &[String]) -> String {
    let quoted: Vec<String> = fields
        .iter()
        .map(|f| if f.contains([',', '"', '\n']) { format!("\"{}\"", f.replace('"', "\"\"")) } else { f.clone() })
        .collect();
    format!("{}\n", quoted.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One run of 1,000 examples at 70%: the bootstrap interval is the binomial one,
    /// 0.7 ± 1.96·√(0.7·0.3/1000) = [0.672, 0.728], to the bootstrap's own noise (±0.004).
    /// Three runs without per-example data: a replicate of three 0.6s has probability
    /// 1/27 ≈ 3.7% > 2.5%, so the interval of the resampled mean of {0.6, 0.7, 0.8} is exactly
    /// [0.6, 0.8].
    #[test]
    fn ci95_bootstraps_examples_and_seeds() {
        let correct: Vec<bool> = (0..1000).map(|i| i % 10 < 7).collect();
        let one = Cell { values: vec![0.7], failed: 0, examples: vec![Some(vec![correct])] };
        let (lo, hi) = one.ci95().unwrap();
        let half = 1.96 * (0.7f64 * 0.3 / 1000.0).sqrt();
        assert!((lo - (0.7 - half)).abs() < 0.004 && (hi - (0.7 + half)).abs() < 0.004, "[{lo}, {hi}] vs ±{half}");
        let seeds = Cell { values: vec![0.6, 0.7, 0.8], failed: 0, examples: vec![None, None, None] };
        let (lo, hi) = seeds.ci95().unwrap();
        assert!((lo - 0.6).abs() < 1e-9 && (hi - 0.8).abs() < 1e-9, "[{lo}, {hi}]");
        assert_eq!(Cell::default().ci95(), None);
    }

    #[test]
    fn std_is_the_sample_std_and_absent_for_one_value() {
        let cell = Cell { values: vec![0.5, 0.7, 0.9], ..Cell::default() };
        assert!((cell.mean().unwrap() - 0.7).abs() < 1e-12);
        assert!((cell.std().unwrap() - 0.2).abs() < 1e-12);
        assert_eq!(cell.max(), Some(0.9));
        assert_eq!(Cell { values: vec![0.5], ..Cell::default() }.std(), None);
        assert_eq!(Cell::default().mean(), None);
    }

    fn spec(metrics: &[&str]) -> TableSpec {
        TableSpec {
            zero_shot: None,
            rows: vec!["method".into(), "adapter".into()],
            cols: vec!["shots".into()],
            metrics: metrics.iter().map(|m| m.to_string()).collect(),
            aggs: vec![Agg::Mean, Agg::Std],
        }
    }

    #[test]
    fn cells_group_runs_flag_failures_and_bold_the_best() {
        use crate::results::testing::row;
        let runs = vec![
            row("pbft", "lora", 16, 0, Some((0.6, 0.5))),
            row("pbft", "lora", 16, 1, Some((0.8, 0.5))),
            row("pbft", "lora", 16, 2, None),
            row("pbft", "full", 16, 0, Some((0.5, 0.5))),
            row("pbft", "full", 32, 0, Some((0.9, 0.5))),
        ];
        let table = build(&runs, &spec(&["acc_in"])).unwrap();
        assert_eq!(table.rows, [["pbft", "full"], ["pbft", "lora"]]);
        assert_eq!((table.column_label(0), table.column_label(1)), ("shots=16".into(), "shots=32".into()));
        assert_eq!(table.cells[1][0], Cell { values: vec![0.6, 0.8], failed: 1, examples: vec![None, None] });
        let markdown = table.render(TableFormat::Markdown);
        assert!(markdown.contains("| pbft | lora | **0.700 ± 0.141** (n=2, 1 failed) | – (n=0) |"), "{markdown}");
        assert!(markdown.contains("| pbft | full | 0.500 (n=1) | **0.900** (n=1) |"), "{markdown}");
        assert!(markdown.contains("deliberate failure"), "failed runs are listed: {markdown}");
        let latex = table.render(TableFormat::Latex);
        assert!(latex.contains("\\textbf{0.700 $\\pm$ 0.141}") && latex.contains("\\bottomrule"), "{latex}");
        let csv = table.render(TableFormat::Csv);
        assert!(csv.starts_with("method,adapter,shots=16 mean,shots=16 std,shots=16 n,shots=16 failed,"), "{csv}");
        let lora = csv.lines().find(|l| l.starts_with("pbft,lora,")).unwrap();
        assert!(lora.starts_with("pbft,lora,0.7,0.1414") && lora.ends_with(",2,1,,,0,0"), "{csv}");
        // Costs: lower is better (training time is shots × (1 + data seed) in these rows).
        let time = build(&runs, &spec(&["time_train"])).unwrap().render(TableFormat::Markdown);
        assert!(time.contains("| pbft | full | **16.0** (n=1) | **32.0** (n=1) |"), "{time}");
        assert!(time.contains("| pbft | lora | 24.0 ± 11.3 (n=2, 1 failed) |"), "{time}");
        let err = build(&runs, &spec(&["method"])).unwrap_err().to_string();
        assert!(err.contains("`method` is text"), "{err}");
    }

    /// `--zero-shot pbft`: a first row from pbft's full-model runs' before-training scores.
    #[test]
    fn the_zero_shot_row_holds_the_before_training_scores() {
        use crate::results::testing::row;
        let mut runs = vec![
            row("pbft", "full", 16, 0, Some((0.8, 0.6))),
            row("pbft", "full", 16, 1, Some((0.9, 0.6))),
            row("pbft", "lora", 16, 0, Some((0.7, 0.6))),
            row("icl", "full", 16, 0, Some((0.75, 0.6))),
        ];
        for (run, before) in runs.iter_mut().zip([0.5, 0.54, 0.3, 0.75]) {
            run.record.zero_shot =
                Some(crate::run::Headline { acc_in: before, acc_ood: None, report: serde_json::json!([]) });
        }
        let table =
            build(&runs, &TableSpec { zero_shot: Some("pbft".into()), ..spec(&["acc_in", "time_train"]) }).unwrap();
        assert_eq!(table.rows[0], ["zero-shot", "-"]);
        assert_eq!(table.cells[0][0].values, [0.5, 0.54], "pbft without adapters only");
        assert!(table.cells[0][1].values.is_empty(), "no before-training cost");
        let err = build(&runs, &TableSpec { zero_shot: Some("lm".into()), ..spec(&["acc_in"]) }).unwrap_err();
        assert!(err.to_string().contains("no completed `lm` run"), "{err}");
    }

    #[test]
    fn numbers_are_formatted_by_magnitude() {
        assert_eq!(format_number(0.81234), "0.812");
        assert_eq!(format_number(12.34), "12.3");
        assert_eq!(format_number(123456.7), "123457");
        assert_eq!(latex_escape("pbft_ft"), "pbft\\_ft");
        assert_eq!(csv_line(&["a,b".into(), "c".into()]), "\"a,b\",c\n");
    }
}
