//! Result figures, each written as PNG and SVG with plotters:
//!
//! - [`PlotKind::Scatter`]: in-domain vs out-of-domain accuracy, one point per run and one
//!   colour and marker per method and adapter — the llmft paper's main figure (Mosbach et al.
//!   2023, "Few-shot Fine-tuning vs. In-context Learning", Fig. 1), where points above the
//!   diagonal generalise out of domain;
//! - [`PlotKind::Shots`]: accuracy against the number of shots (log₂ axis), the mean over runs
//!   as a line with a ±1 sample-std band, per method and adapter;
//! - [`PlotKind::Cost`]: mean training time and mean peak memory per method and adapter, as bars;
//! - [`PlotKind::Frontier`]: the research question in one figure — in-domain and out-of-domain
//!   accuracy against what learning from the examples cost (`cost_seconds`: training + prepare
//!   time, ICL's being its inference over the eval sets) and against peak memory, one point per
//!   method (and shot count) with ±1 std bars over seeds, and the Pareto front (no other point
//!   is both cheaper and more accurate) drawn through the points on it.
//!
//! Text is set in DejaVu Sans embedded in the binary (`core/assets/`, with its license), so a
//! figure looks the same on a machine without system fonts, such as CI.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::store::ResultRow;
use super::table::Cell;
use crate::error::{Error, Result};

/// Which figure to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlotKind {
    /// In-domain vs out-of-domain accuracy per run.
    Scatter,
    /// Accuracy vs shots with ±std bands.
    Shots,
    /// Training time and peak memory per method.
    Cost,
    /// Accuracy against cost per method, with the Pareto front.
    Frontier,
}

/// A figure request.
#[derive(Debug, Clone)]
pub struct PlotSpec {
    /// The figure.
    pub kind: PlotKind,
    /// Pixels (PNG) or user units (SVG), width × height.
    pub size: (u32, u32),
    /// The metric on the y axis of [`PlotKind::Shots`] (e.g. `acc_in`, `acc_ood`).
    pub metric: String,
}

/// Tableau's ten colours, distinct in print and for most colour-blind readers.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

const FONT: &str = "sans-serif";

/// Registers the embedded font once per process.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let bytes: &'static [u8] = include_bytes!("../../assets/DejaVuSans.ttf");
    if *REGISTERED.get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok()) {
        Ok(())
    } else {
        Err(Error::Results("the embedded font DejaVuSans.ttf could not be loaded".into()))
    }
}

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::Results(format!("plot: {e}"))
}

/// The legend label of a run: `pbft (lora)`.
fn series_of(row: &ResultRow) -> String {
    format!("{} ({})", row.record.config.method.name, row.adapter())
}

/// Draws `spec` from `runs` to `stem.png` and `stem.svg`; returns both paths.
pub fn plot(runs: &[ResultRow], spec: &PlotSpec, stem: &Path) -> Result<Vec<PathBuf>> {
    register_font()?;
    let completed: Vec<&ResultRow> = runs.iter().filter(|r| r.completed()).collect();
    if completed.is_empty() {
        return Err(Error::Results("no completed runs to plot".into()));
    }
    let (png, svg) = outputs(stem)?;
    draw(BitMapBackend::new(&png, spec.size).into_drawing_area(), &completed, spec)?;
    draw(SVGBackend::new(&svg, spec.size).into_drawing_area(), &completed, spec)?;
    Ok(vec![png, svg])
}

/// `stem.png` and `stem.svg`, their folder created.
fn outputs(stem: &Path) -> Result<(PathBuf, PathBuf)> {
    if let Some(parent) = stem.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
    }
    Ok((stem.with_extension("png"), stem.with_extension("svg")))
}

fn draw<DB: DrawingBackend>(area: DrawingArea<DB, Shift>, runs: &[&ResultRow], spec: &PlotSpec) -> Result<()> {
    area.fill(&WHITE).map_err(plot_error)?;
    match spec.kind {
        PlotKind::Scatter => scatter(&area, runs)?,
        PlotKind::Shots => shots(&area, runs, &spec.metric)?,
        PlotKind::Cost => cost(&area, runs)?,
        PlotKind::Frontier => frontier(&area, runs)?,
    }
    area.present().map_err(plot_error)
}

/// A range around `values`, padded by 5% (and by 0.05 when they are all equal).
fn padded(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.05).max(0.05);
    (lo - pad)..(hi + pad)
}

fn scatter<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, runs: &[&ResultRow]) -> Result<()> {
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for run in runs {
        if let (Some(x), Some(y)) = (run.get("acc_in")?.number(), run.get("acc_ood")?.number()) {
            series.entry(series_of(run)).or_default().push((x, y));
        }
    }
    if series.is_empty() {
        return Err(Error::Results("no run has both acc_in and acc_ood (does the task have OOD sets?)".into()));
    }
    let points = || series.values().flatten();
    let range = padded(points().flat_map(|&(x, y)| [x, y]));
    let mut chart = ChartBuilder::on(area)
        .caption("In-domain vs out-of-domain accuracy", (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(range.clone(), range.clone())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("in-domain accuracy")
        .y_desc("out-of-domain accuracy")
        .label_style((FONT, 13))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(plot_error)?;
    // The diagonal: equal accuracy in and out of domain.
    chart
        .draw_series(LineSeries::new([(range.start, range.start), (range.end, range.end)], BLACK.mix(0.3)))
        .map_err(plot_error)?;
    for (i, (name, points)) in series.iter().enumerate() {
        chart
            .draw_series(points.iter().map(|&p| marker(i, p)))
            .map_err(plot_error)?
            .label(name.clone())
            .legend(move |(x, y)| marker(i, (x + 10, y)));
    }
    legend(&mut chart)
}

fn legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(plot_error)
}

fn shots<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, runs: &[&ResultRow], metric: &str) -> Result<()> {
    // series → shots → the metric over runs (data seeds, seeds).
    let mut series: BTreeMap<String, BTreeMap<usize, Cell>> = BTreeMap::new();
    for run in runs {
        if let Some(v) = run.get(metric)?.number().filter(|v| v.is_finite()) {
            let cell = series.entry(series_of(run)).or_default().entry(run.record.config.shots).or_default();
            cell.values.push(v);
        }
    }
    if series.is_empty() {
        return Err(Error::Results(format!("no completed run has a numeric `{metric}`")));
    }
    // (log₂ shots, mean, std) per series.
    let lines: BTreeMap<&String, Vec<(f64, f64, f64)>> = series
        .iter()
        .map(|(name, by_shots)| {
            let line = by_shots
                .iter()
                .filter_map(|(&k, cell)| Some(((k as f64).log2(), cell.mean()?, cell.std().unwrap_or(0.0))))
                .collect();
            (name, line)
        })
        .collect();
    let all = || lines.values().flatten();
    let x = padded(all().map(|p| p.0));
    // Label only the ticks that fall on a shot count of the data (at most one per count).
    let mut ticks: Vec<f64> = all().map(|p| p.0).collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    let tolerance = (x.end - x.start) / (2.0 * TICKS as f64);
    let y = padded(all().flat_map(|&(_, m, s)| [m - s, m + s]));
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{metric} vs shots (mean ± std)"), (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(x, y)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("shots (k)")
        .y_desc(metric)
        .label_style((FONT, 13))
        .light_line_style(WHITE.mix(0.0))
        .disable_x_mesh()
        .x_labels(TICKS)
        .x_label_formatter(&|v| shot_label(*v, &ticks, tolerance))
        .draw()
        .map_err(plot_error)?;
    for (i, (name, line)) in lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let band: Vec<(f64, f64)> =
            line.iter().map(|&(x, m, s)| (x, m + s)).chain(line.iter().rev().map(|&(x, m, s)| (x, m - s))).collect();
        chart.draw_series(std::iter::once(Polygon::new(band, colour.mix(0.2)))).map_err(plot_error)?;
        chart
            .draw_series(LineSeries::new(line.iter().map(|&(x, m, _)| (x, m)), colour.stroke_width(2)))
            .map_err(plot_error)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart.draw_series(line.iter().map(|&(x, m, _)| Circle::new((x, m), 4, colour.filled()))).map_err(plot_error)?;
    }
    legend(&mut chart)
}

/// Tick marks on the shots axis, dense enough that one falls near every shot count.
const TICKS: usize = 60;

/// The shot count at log₂ position `x`, if `x` is within `tolerance` of one of `ticks`.
fn shot_label(x: f64, ticks: &[f64], tolerance: f64) -> String {
    ticks.iter().find(|t| (x - **t).abs() <= tolerance).map_or(String::new(), |t| format!("{:.0}", t.exp2()))
}

fn cost<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, runs: &[&ResultRow]) -> Result<()> {
    let mut time: BTreeMap<String, Cell> = BTreeMap::new();
    let mut memory: BTreeMap<String, Cell> = BTreeMap::new();
    for run in runs {
        if let Some(t) = run.get("time_train")?.number() {
            time.entry(series_of(run)).or_default().values.push(t);
        }
        if let Some(m) = run.get("peak_rss_bytes")?.number() {
            memory.entry(series_of(run)).or_default().values.push(m / (1024.0 * 1024.0));
        }
    }
    let (left, right) = area.split_horizontally(area.dim_in_pixel().0 / 2);
    bars(&left, &time, "training time", "seconds (mean over runs)")?;
    bars(&right, &memory, "peak memory", "MiB (mean over runs)")
}

fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    cells: &BTreeMap<String, Cell>,
    title: &str,
    unit: &str,
) -> Result<()> {
    let names: Vec<&String> = cells.keys().collect();
    let means: Vec<f64> = cells.values().map(|c| c.mean().unwrap_or(0.0)).collect();
    let top = means.iter().copied().fold(0.0, f64::max).max(f64::MIN_POSITIVE) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        // Integer ranges include their end: n bars are the segments of 0..=n-1.
        .build_cartesian_2d((0..names.len().saturating_sub(1)).into_segmented(), 0.0..top)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE.mix(0.0))
        .y_desc(unit)
        .label_style((FONT, 12))
        .x_labels(names.len().max(1))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                names.get(*i).map_or(String::new(), |n| n.to_string())
            }
            SegmentValue::Last => String::new(),
        })
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(means.iter().enumerate().map(|(i, &m)| {
            let colour = COLOURS[i % COLOURS.len()];
            let mut bar =
                Rectangle::new([(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), m)], colour.filled());
            bar.set_margin(0, 0, 8, 8);
            bar
        }))
        .map_err(plot_error)?;
    Ok(())
}

/// `ftlab bench methods`' record as three bar panels — training tokens/s, peak memory and
/// optimizer state, each as a multiple of full fine-tuning's — to `stem.png` and `stem.svg`.
pub fn methods(record: &crate::bench::memory::MethodsRecord, size: (u32, u32), stem: &Path) -> Result<Vec<PathBuf>> {
    register_font()?;
    let full = (record.rows.iter().find(|r| r.method == "full"))
        .ok_or_else(|| Error::Results("the bench record has no `full` row to compare with".into()))?;
    let ratio = |value: fn(&crate::bench::memory::TrainingCost) -> f64| -> BTreeMap<String, Cell> {
        let base = value(&full.cost).max(f64::MIN_POSITIVE);
        let cell = |v: f64| Cell { values: vec![v / base], ..Default::default() };
        record.rows.iter().map(|r| (r.method.clone(), cell(value(&r.cost)))).collect()
    };
    let panels = [
        (ratio(|c| c.tokens_per_s), "training tokens/s"),
        (ratio(|c| c.peak_rss_bytes as f64), "peak memory"),
        (ratio(|c| c.optimizer_state_bytes as f64), "optimizer state"),
    ];
    let checkpointed = if record.gradient_checkpointing { ", activations checkpointed" } else { "" };
    let caption = format!("× full fine-tuning (batch {} × {}{checkpointed})", record.batch, record.seq);
    let (png, svg) = outputs(stem)?;
    fn draw_panels<DB: DrawingBackend>(
        area: DrawingArea<DB, Shift>,
        panels: &[(BTreeMap<String, Cell>, &str)],
        caption: &str,
    ) -> Result<()> {
        area.fill(&WHITE).map_err(plot_error)?;
        for (panel, (cells, title)) in area.split_evenly((panels.len(), 1)).iter().zip(panels) {
            bars(panel, cells, title, caption)?;
        }
        area.present().map_err(plot_error)
    }
    draw_panels(BitMapBackend::new(&png, size).into_drawing_area(), &panels, &caption)?;
    draw_panels(SVGBackend::new(&svg, size).into_drawing_area(), &panels, &caption)?;
    Ok(vec![png, svg])
}

/// One point of a frontier panel: a series' mean cost and accuracy, each with its std.
#[derive(Debug, Clone, PartialEq)]
struct FrontierPoint {
    name: String,
    cost: (f64, f64),
    accuracy: (f64, f64),
}

/// The indices of the points no other point dominates (at most the cost, at least the
/// accuracy, better in one), by increasing cost.
fn pareto_front(points: &[FrontierPoint]) -> Vec<usize> {
    let dominates = |a: &FrontierPoint, b: &FrontierPoint| {
        a.cost.0 <= b.cost.0 && a.accuracy.0 >= b.accuracy.0 && (a.cost.0 < b.cost.0 || a.accuracy.0 > b.accuracy.0)
    };
    let mut front: Vec<usize> =
        (0..points.len()).filter(|&i| !points.iter().any(|p| dominates(p, &points[i]))).collect();
    front.sort_by(|&a, &b| points[a].cost.0.total_cmp(&points[b].cost.0));
    front
}

/// The series of a frontier point: method and adapter, and the shot count when the runs have
/// several.
fn frontier_points(runs: &[&ResultRow], cost: &str, accuracy: &str, scale: f64) -> Result<Vec<FrontierPoint>> {
    let several_shots = runs.iter().map(|r| r.record.config.shots).collect::<std::collections::BTreeSet<_>>().len() > 1;
    let mut cells: BTreeMap<String, (Cell, Cell)> = BTreeMap::new();
    for run in runs {
        if let (Some(c), Some(a)) = (run.get(cost)?.number(), run.get(accuracy)?.number()) {
            let mut name = series_of(run);
            if several_shots {
                name = format!("{name}, k={}", run.record.config.shots);
            }
            let (costs, accuracies) = cells.entry(name).or_default();
            costs.values.push(c / scale);
            accuracies.values.push(a);
        }
    }
    Ok(cells
        .into_iter()
        .filter_map(|(name, (c, a))| {
            let (cost, accuracy) = ((c.mean()?, c.std().unwrap_or(0.0)), (a.mean()?, a.std().unwrap_or(0.0)));
            Some(FrontierPoint { name, cost, accuracy })
        })
        .collect())
}

fn frontier<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, runs: &[&ResultRow]) -> Result<()> {
    let axes = [
        ("cost_seconds", "seconds (training + prepare; ICL: inference)", 1.0),
        ("peak_rss_bytes", "peak memory (MiB)", 1024.0 * 1024.0),
    ];
    let accuracies = [("acc_in", "in-domain accuracy"), ("acc_ood", "out-of-domain accuracy")];
    let mut panels = Vec::new();
    for (accuracy, label) in accuracies {
        for (cost, unit, scale) in axes {
            panels.push((frontier_points(runs, cost, accuracy, scale)?, label, unit));
        }
    }
    // One key beside the panels (a legend inside each would cover points), one style per series.
    let names: Vec<String> = panels
        .iter()
        .flat_map(|(points, ..)| points.iter().map(|p| p.name.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if names.is_empty() {
        return Err(Error::Results("no completed run has an accuracy and a cost".into()));
    }
    let (plots, key) = area.split_horizontally(area.dim_in_pixel().0 * 18 / 25);
    for ((points, label, unit), panel) in panels.iter().zip(plots.split_evenly((2, 2)).iter()) {
        if !points.is_empty() {
            frontier_panel(panel, points, &names, label, unit)?;
        }
    }
    let text = TextStyle::from((FONT, 11).into_font()).color(&BLACK);
    key.draw(&PathElement::new([(8, 30), (28, 30)], BLACK.mix(0.5))).map_err(plot_error)?;
    key.draw(&Text::new("Pareto front", (34, 24), text.clone())).map_err(plot_error)?;
    for (i, name) in names.iter().enumerate() {
        let y = 50 + 20 * i as i32;
        key.draw(&marker(i, (18, y))).map_err(plot_error)?;
        key.draw(&Text::new(name.clone(), (34, y - 6), text.clone())).map_err(plot_error)?;
    }
    Ok(())
}

/// Series `i`'s marker at `at`, in the plot and in its key: one of [`COLOURS`], and for each
/// further ten series the next shape (disc, triangle, ring, cross), so forty series stay apart.
fn marker<'a, DB: DrawingBackend, C: Clone + 'static>(i: usize, at: C) -> DynElement<'a, DB, C> {
    let colour = COLOURS[i % COLOURS.len()];
    match i / COLOURS.len() % 4 {
        0 => Circle::new(at, 5, colour.filled()).into_dyn(),
        1 => TriangleMarker::new(at, 7, colour.filled()).into_dyn(),
        2 => Circle::new(at, 5, colour.stroke_width(2)).into_dyn(),
        _ => Cross::new(at, 5, colour.stroke_width(2)).into_dyn(),
    }
}

fn frontier_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    points: &[FrontierPoint],
    names: &[String],
    accuracy: &str,
    unit: &str,
) -> Result<()> {
    let x = padded(points.iter().flat_map(|p| [p.cost.0 - p.cost.1, p.cost.0 + p.cost.1]));
    let x = x.start.max(0.0)..x.end;
    // Whole numbers once the axis spans tens (MiB): `190.0195.0` ran together.
    let whole = x.end - x.start >= 10.0;
    let y = padded(points.iter().flat_map(|p| [p.accuracy.0 - p.accuracy.1, p.accuracy.0 + p.accuracy.1]));
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{accuracy} vs cost"), (FONT, 16))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(46)
        .build_cartesian_2d(x, y)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(unit)
        .y_desc(accuracy)
        .x_labels(6)
        .x_label_formatter(&|v| if whole { format!("{v:.0}") } else { format!("{v}") })
        .label_style((FONT, 12))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(plot_error)?;
    let front: Vec<(f64, f64)> =
        pareto_front(points).iter().map(|&i| (points[i].cost.0, points[i].accuracy.0)).collect();
    chart.draw_series(LineSeries::new(front, BLACK.mix(0.5).stroke_width(1))).map_err(plot_error)?;
    let plotting = chart.plotting_area();
    for p in points {
        let i = names.iter().position(|n| *n == p.name).unwrap_or_default();
        let colour = COLOURS[i % COLOURS.len()];
        let ((c, cs), (a, as_)) = (p.cost, p.accuracy);
        plotting
            .draw(&ErrorBar::new_vertical(c, a - as_, a, a + as_, colour.stroke_width(1), 6))
            .map_err(plot_error)?;
        plotting
            .draw(&ErrorBar::new_horizontal(a, c - cs, c, c + cs, colour.stroke_width(1), 6))
            .map_err(plot_error)?;
        plotting.draw(&marker(i, (c, a))).map_err(plot_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pareto_front_keeps_the_points_nothing_beats() {
        let point = |name: &str, cost: f64, accuracy: f64| FrontierPoint {
            name: name.into(),
            cost: (cost, 0.0),
            accuracy: (accuracy, 0.0),
        };
        // icl: cheap and fair; pbft: dearer and better; lora: dearer than pbft and worse
        // (dominated); cd: dearest and best; zero: as cheap as icl and worse (dominated).
        let points = [
            point("pbft", 5.0, 0.8),
            point("icl", 1.0, 0.7),
            point("lora", 6.0, 0.75),
            point("cd", 9.0, 0.9),
            point("zero", 1.0, 0.5),
        ];
        let front: Vec<&str> = pareto_front(&points).iter().map(|&i| points[i].name.as_str()).collect();
        assert_eq!(front, ["icl", "pbft", "cd"]);
    }

    #[test]
    fn ranges_are_padded_and_never_empty() {
        let r = padded([0.5, 0.7].into_iter());
        assert!(r.start < 0.5 && r.end > 0.7);
        let r = padded([0.5].into_iter());
        assert!(r.start < 0.5 && r.end > 0.5);
        assert_eq!(padded(std::iter::empty()), 0.0..1.0);
    }
}
