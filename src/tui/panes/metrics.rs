//! The Metrics pane: the highlighted job's series as charts, each named by its job,
//! metric and x-axis; EMA smoothing (raw shown faint), log scale, zoom to the last N
//! steps, and the curves of marked jobs overlaid to compare runs.

use crate::model::MetricPoint;
use crate::tui::app::*;
use crate::tui::keymap::Action;
use crate::tui::series::Series;
use crate::tui::ui::*;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Modifier;
use ratatui::symbols;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Chart, Dataset, GraphType, LegendPosition, Paragraph};
use std::collections::VecDeque;

/// What a series is plotted against: points with a step are per-step, points with only an
/// epoch per-epoch; the two are never one line even when they share a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XAxis {
    Step,
    Epoch,
    /// Neither: the log line the value was read on.
    Line,
}

impl XAxis {
    pub fn of(p: &MetricPoint) -> (XAxis, f64) {
        match (p.step, p.epoch) {
            (Some(s), _) => (XAxis::Step, s as f64),
            (None, Some(e)) => (XAxis::Epoch, e),
            (None, None) => (XAxis::Line, p.line as f64),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            XAxis::Step => "step",
            XAxis::Epoch => "epoch",
            XAxis::Line => "log line",
        }
    }
}

/// Raw points kept as they were for zooming into the newest steps exactly.
pub const RECENT_KEPT: usize = 4096;

/// EMA weights `s` steps through (0 = off), as TensorBoard's smoothing slider.
pub const SMOOTHING: [f64; 6] = [0.0, 0.6, 0.8, 0.9, 0.95, 0.99];

/// Zoom windows, in x units from the newest point (None: the whole run).
pub const ZOOMS: [Option<f64>; 5] = [
    None,
    Some(100_000.0),
    Some(10_000.0),
    Some(1_000.0),
    Some(100.0),
];

/// An exponential moving average with the start-up bias removed (TensorBoard's), so the
/// first points are not pulled towards zero.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ema {
    weight: f64,
    acc: f64,
    n: i32,
}

impl Ema {
    pub fn new(weight: f64) -> Ema {
        Ema {
            weight,
            acc: 0.0,
            n: 0,
        }
    }

    pub fn next(&mut self, y: f64) -> f64 {
        if !y.is_finite() {
            return y;
        }
        self.acc = self.acc * self.weight + (1.0 - self.weight) * y;
        self.n = self.n.saturating_add(1);
        let debias = 1.0 - self.weight.powi(self.n);
        if debias > 0.0 { self.acc / debias } else { y }
    }
}

/// One line of a chart: raw and smoothed, folded into bounded buckets as points arrive.
#[derive(Debug, Clone)]
pub struct Curve {
    pub name: String,
    pub axis: XAxis,
    pub raw: Series,
    pub smooth: Series,
    ema: Ema,
    /// The newest raw points (x, y), for zooms finer than the buckets.
    pub recent: VecDeque<(f64, f64)>,
}

impl Curve {
    pub fn new(name: &str, axis: XAxis, smoothing: f64) -> Curve {
        Curve {
            name: name.to_string(),
            axis,
            raw: Series::new(),
            smooth: Series::new(),
            ema: Ema::new(smoothing),
            recent: VecDeque::new(),
        }
    }

    pub fn push(&mut self, x: f64, y: f64) {
        self.raw.push(x, y);
        self.smooth.push(x, self.ema.next(y));
        if x.is_finite() && y.is_finite() {
            self.recent.push_back((x, y));
            if self.recent.len() > RECENT_KEPT {
                self.recent.pop_front();
            }
        }
    }

    /// `loss`, or `loss (epoch)` when the name is per-epoch and `others` also have it
    /// per-step.
    pub fn label(&self, all: &[Curve]) -> String {
        let twin = all
            .iter()
            .any(|c| c.name == self.name && c.axis != self.axis);
        if twin && self.axis != XAxis::Step {
            format!("{} ({})", self.name, self.axis.name())
        } else {
            self.name.clone()
        }
    }

    /// Points to draw between `lo` and the end, about `columns * 2` of them: the exact
    /// newest points when the window is inside what `recent` holds, else the buckets.
    fn points(&self, smoothed: bool, lo: Option<f64>, columns: usize) -> Vec<(f64, f64)> {
        let exact = lo.is_some_and(|lo| self.recent.front().is_some_and(|f| f.0 <= lo));
        if exact && !smoothed {
            let lo = lo.unwrap_or(f64::NEG_INFINITY);
            return self.recent.iter().copied().filter(|p| p.0 >= lo).collect();
        }
        let s = if smoothed { &self.smooth } else { &self.raw };
        let pts = s.downsample(if lo.is_some() { columns * 8 } else { columns });
        match lo {
            Some(lo) => pts.into_iter().filter(|p| p.0 >= lo).collect(),
            None => pts,
        }
    }
}

/// Another job's curve of the same metric, overlaid to compare runs.
#[derive(Debug, Clone)]
pub struct Compared {
    pub job: String,
    pub label: String,
    pub curve: Curve,
}

/// The highlighted job's metrics, one curve per (name, x-axis) in order of first
/// appearance, and the chart's settings (kept from job to job).
#[derive(Debug, Clone, Default)]
pub struct MetricsView {
    pub job: Option<String>,
    pub series: Vec<Curve>,
    pub selected: usize,
    pub last_rowid: i64,
    pub loading: bool,
    /// EMA weight, 0 = off.
    pub smoothing: f64,
    pub log_y: bool,
    /// Index into [`ZOOMS`].
    pub zoom: usize,
    /// Curves of marked jobs for the selected metric.
    pub compared: Vec<Compared>,
    /// A setting changed while a load was under way: load again from the start after it.
    pub reload: bool,
    /// Loading again from the start: what is shown goes when the first batch comes.
    pub stale: bool,
}

impl MetricsView {
    pub fn push(&mut self, p: &MetricPoint) {
        let (axis, x) = XAxis::of(p);
        match self
            .series
            .iter_mut()
            .find(|c| c.name == p.name && c.axis == axis)
        {
            Some(c) => c.push(x, p.value),
            None => {
                let mut c = Curve::new(&p.name, axis, self.smoothing);
                c.push(x, p.value);
                self.series.push(c);
            }
        }
    }

    /// The same settings, nothing loaded: for another job, or to load again.
    pub fn emptied(&self, job: Option<String>) -> MetricsView {
        MetricsView {
            job,
            smoothing: self.smoothing,
            log_y: self.log_y,
            zoom: self.zoom,
            ..Default::default()
        }
    }

    pub fn next_smoothing(&mut self) {
        let i = SMOOTHING
            .iter()
            .position(|w| *w == self.smoothing)
            .unwrap_or(0);
        self.smoothing = SMOOTHING[(i + 1) % SMOOTHING.len()];
    }

    pub fn zoom(&mut self, closer: bool) {
        self.zoom = if closer {
            (self.zoom + 1).min(ZOOMS.len() - 1)
        } else {
            self.zoom.saturating_sub(1)
        };
    }

    pub fn selected_curve(&self) -> Option<&Curve> {
        self.series
            .get(self.selected.min(self.series.len().saturating_sub(1)))
    }
}

fn label_value(v: f64, log: bool) -> String {
    fmt_value(if log { 10f64.powf(v) } else { v })
}

pub(crate) fn axis_labels(lo: f64, hi: f64, log: bool) -> Vec<Line<'static>> {
    vec![
        Line::from(label_value(lo, log)),
        Line::from(label_value((lo + hi) / 2.0, log)),
        Line::from(label_value(hi, log)),
    ]
}

/// The chart of curve `idx` of the highlighted job, with the marked jobs' curves of the
/// same metric and x-axis over it.
pub(crate) fn draw_chart(f: &mut Frame, app: &App, idx: usize, area: Rect, highlighted: bool) {
    let mv = &app.metrics;
    let Some(curve) = mv.series.get(idx) else {
        return;
    };
    let job_name = app
        .focus_job_row()
        .map_or_else(|| mv.job.clone().unwrap_or_default(), |j| job_label(&j.rec));
    let label = curve.label(&mv.series);
    // What the chart is (metric, job, x-axis) always; the rest as the width allows.
    let mut title = format!(" {label} · {job_name} · per {} ", curve.axis.name());
    let mut extra = Vec::new();
    if let Some((_, y)) = curve.raw.last {
        extra.push(format!("= {} ", fmt_value(y)));
    }
    if curve.raw.non_finite > 0 {
        extra.push(format!("· {} NaN/inf ", curve.raw.non_finite));
    }
    extra.push(format!("· {} pts ", curve.raw.len));
    let mut flags = Vec::new();
    if mv.smoothing > 0.0 {
        flags.push(format!("EMA {}", mv.smoothing));
    }
    if mv.log_y {
        flags.push("log".to_string());
    }
    if let Some(n) = ZOOMS[mv.zoom.min(ZOOMS.len() - 1)] {
        flags.push(format!("last {}", fmt_value(n)));
    }
    if !flags.is_empty() {
        // What the user switched on is said before the figures.
        extra.insert(0, format!("[{}] ", flags.join(" ")));
    }
    let room = area.width.saturating_sub(2) as usize;
    for e in extra {
        if title.chars().count() + e.chars().count() <= room {
            title.push_str(&e);
        }
    }
    let mut b = block(app, title);
    if highlighted {
        b = b.border_style(app.theme.accent());
    }
    let columns = area.width.saturating_sub(10).max(1) as usize * 2;
    let x_end = curve.raw.bounds().map(|(xb, _)| xb[1]);
    let lo = ZOOMS[mv.zoom.min(ZOOMS.len() - 1)].and_then(|n| x_end.map(|e| e - n));
    let ylog = |pts: Vec<(f64, f64)>| -> Vec<(f64, f64)> {
        if mv.log_y {
            pts.into_iter()
                .filter(|p| p.1 > 0.0)
                .map(|p| (p.0, p.1.log10()))
                .collect()
        } else {
            pts
        }
    };
    let smoothing = mv.smoothing > 0.0;
    let main = ylog(curve.points(smoothing, lo, columns));
    let raw = if smoothing {
        ylog(curve.points(false, lo, columns))
    } else {
        Vec::new()
    };
    let others: Vec<(String, Vec<(f64, f64)>)> = mv
        .compared
        .iter()
        .filter(|c| c.curve.name == curve.name && c.curve.axis == curve.axis)
        .map(|c| {
            (
                c.label.clone(),
                ylog(c.curve.points(smoothing, lo, columns)),
            )
        })
        .collect();
    let all = main
        .iter()
        .chain(raw.iter())
        .chain(others.iter().flat_map(|o| o.1.iter()));
    let Some((xb, yb)) = bounds(all) else {
        let why = if mv.log_y {
            "no positive finite values (log scale: v turns it off)"
        } else {
            "no finite values"
        };
        f.render_widget(Paragraph::new(why).block(b), area);
        return;
    };
    let pad = ((yb[1] - yb[0]).abs() * 0.05).max(1e-12);
    let (y0, y1) = (yb[0] - pad, yb[1] + pad);
    let x1 = if xb[1] > xb[0] { xb[1] } else { xb[0] + 1.0 };
    let comparing = !others.is_empty();
    let mut sets = Vec::new();
    if smoothing {
        sets.push(
            Dataset::default()
                .marker(symbols::Marker::Braille)
                .graph_type(GraphType::Line)
                .style(app.theme.dim().add_modifier(Modifier::DIM))
                .data(&raw),
        );
    }
    let mut main_set = Dataset::default()
        .marker(symbols::Marker::Braille)
        .graph_type(GraphType::Line)
        .style(app.theme.series(idx))
        .data(&main);
    if comparing {
        main_set = main_set.name(job_name.clone());
    }
    sets.push(main_set);
    for (k, (name, pts)) in others.iter().enumerate() {
        sets.push(
            Dataset::default()
                .name(name.clone())
                .marker(symbols::Marker::Braille)
                .graph_type(GraphType::Line)
                .style(app.theme.series(idx + k + 1))
                .data(pts),
        );
    }
    let chart = Chart::new(sets)
        .block(b)
        .legend_position(comparing.then_some(LegendPosition::TopRight))
        .hidden_legend_constraints((Constraint::Percentage(60), Constraint::Percentage(60)))
        .x_axis(
            Axis::default()
                .title(curve.axis.name())
                .bounds([xb[0], x1])
                .labels(axis_labels(xb[0], x1, false))
                .style(app.theme.dim()),
        )
        .y_axis(
            Axis::default()
                .bounds([y0, y1])
                .labels(axis_labels(yb[0], yb[1], mv.log_y))
                .style(app.theme.dim()),
        );
    f.render_widget(chart, area);
}

fn bounds<'a>(pts: impl Iterator<Item = &'a (f64, f64)>) -> Option<([f64; 2], [f64; 2])> {
    let mut b: Option<([f64; 2], [f64; 2])> = None;
    for &(x, y) in pts {
        if !x.is_finite() || !y.is_finite() {
            continue;
        }
        b = Some(match b {
            None => ([x, x], [y, y]),
            Some((xb, yb)) => ([xb[0].min(x), xb[1].max(x)], [yb[0].min(y), yb[1].max(y)]),
        });
    }
    b
}

/// `name (short id)`: what identifies a job in a title or legend.
pub fn job_label(j: &crate::store::JobRecord) -> String {
    format!("{} ({})", j.name, short_id(&j.id))
}

/// The metric names line, then one chart, or a 2x2 grid when there is room (tabs).
pub(crate) fn draw_metrics(f: &mut Frame, app: &mut App, area: Rect) {
    draw_metrics_in(f, app, area, true)
}

pub(crate) fn draw_metrics_in(f: &mut Frame, app: &mut App, area: Rect, grid_allowed: bool) {
    let n = app.metrics.series.len();
    if n == 0 {
        let msg = match (&app.metrics.job, app.focus_job_row()) {
            (None, _) => {
                "No job yet: the charts of the job highlighted in Jobs (2) show here.".to_string()
            }
            (Some(_), Some(j)) if app.metrics.loading => {
                format!("Reading the metrics of {}…", job_label(&j.rec))
            }
            (Some(_), Some(j)) => format!("No metrics parsed from {} yet.", job_label(&j.rec)),
            (Some(j), None) => format!("No metrics parsed from {j} yet."),
        };
        let b = block(app, " Metrics ".into());
        f.render_widget(Paragraph::new(msg).style(app.theme.dim()).block(b), area);
        return;
    }
    let sel = app.metrics.selected.min(n - 1);
    let [names, charts] =
        Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(area);
    let mut spans = vec![Span::styled("metric: ", app.theme.dim())];
    for (i, c) in app.metrics.series.iter().enumerate() {
        let style = if i == sel {
            app.theme.selected()
        } else {
            app.theme.dim()
        };
        spans.push(Span::styled(
            format!(" {} ", c.label(&app.metrics.series)),
            style,
        ));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), names);
    let grid = grid_allowed && charts.width >= 100 && charts.height >= 24 && n > 1;
    if !grid {
        draw_chart(f, app, sel, charts, true);
        return;
    }
    let shown = n.min(4);
    let rows = Layout::vertical(vec![Constraint::Fill(1); shown.div_ceil(2)]).split(charts);
    let mut cells = Vec::new();
    for (ri, r) in rows.iter().enumerate() {
        let in_row = if ri * 2 + 1 < shown { 2 } else { 1 };
        cells.extend(
            Layout::horizontal(vec![Constraint::Fill(1); in_row])
                .split(*r)
                .iter()
                .copied(),
        );
    }
    for (k, cell) in cells.into_iter().enumerate().take(shown) {
        let idx = (sel + k) % n;
        draw_chart(f, app, idx, cell, k == 0);
    }
}

impl App {
    /// The chart's settings: smoothing, log scale, zoom.
    pub(crate) fn on_metrics_action(&mut self, action: Action) -> Option<Vec<Command>> {
        Some(match action {
            Action::Smoothing => {
                self.metrics.next_smoothing();
                let out = self.reload_metrics();
                let w = self.metrics.smoothing;
                self.say(
                    if w == 0.0 {
                        "smoothing off".to_string()
                    } else {
                        format!("smoothing: EMA weight {w} (raw shown faint)")
                    },
                    false,
                );
                out
            }
            Action::LogScale => {
                self.metrics.log_y = !self.metrics.log_y;
                Vec::new()
            }
            Action::ZoomIn | Action::ZoomOut => {
                self.metrics.zoom(action == Action::ZoomIn);
                Vec::new()
            }
            _ => return None,
        })
    }
}

impl App {
    /// The chart's curves again from the store (a smoothing change needs every raw
    /// point); after the load under way, if any.
    pub(crate) fn reload_metrics(&mut self) -> Vec<Command> {
        if self.metrics.loading {
            self.metrics.reload = true;
            return Vec::new();
        }
        let Some(job) = self.metrics.job.clone() else {
            return Vec::new();
        };
        // The curves on screen stay until the new ones come (no blank chart).
        self.metrics.reload = false;
        self.metrics.stale = true;
        self.metrics.last_rowid = 0;
        self.metrics.loading = true;
        vec![Command::LoadMetrics {
            job,
            after_rowid: 0,
        }]
    }

    /// Load the marked jobs' curves of the selected metric (the highlighted job's own
    /// is drawn from its view).
    pub(crate) fn load_compared(&mut self) -> Vec<Command> {
        let marked = &self.marked;
        self.metrics.compared.retain(|c| marked.contains(&c.job));
        self.compare_loaded_ms = self.snap.now_ms;
        let Some(c) = self.metrics.selected_curve() else {
            return Vec::new();
        };
        let (name, axis, smoothing) = (c.name.clone(), c.axis, self.metrics.smoothing);
        self.marked
            .iter()
            .filter(|j| Some(*j) != self.metrics.job.as_ref())
            .map(|j| Command::LoadCurve {
                job: j.clone(),
                name: name.clone(),
                axis,
                smoothing,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ema_has_no_start_up_bias_and_zero_weight_is_the_raw_line() {
        let mut e = Ema::new(0.9);
        assert_eq!(e.next(5.0), 5.0);
        let mut raw = Ema::new(0.0);
        assert_eq!(raw.next(3.0), 3.0);
        assert_eq!(raw.next(7.0), 7.0);
        let mut e = Ema::new(0.5);
        e.next(0.0);
        // (0.5*0.5*0 + 0.5*... ) debiased: mean-like, between the two.
        let v = e.next(4.0);
        assert!((v - 8.0 / 3.0).abs() < 1e-9, "{v}");
    }

    #[test]
    fn per_step_and_per_epoch_points_of_one_name_are_two_curves() {
        let mut mv = MetricsView::default();
        let p = |step: Option<i64>, epoch: Option<f64>, v: f64| MetricPoint {
            name: "loss".into(),
            value: v,
            step,
            epoch,
            line: 1,
        };
        mv.push(&p(Some(1), Some(0.1), 2.0));
        mv.push(&p(Some(2), Some(0.2), 1.5));
        mv.push(&p(None, Some(1.0), 1.7));
        assert_eq!(mv.series.len(), 2);
        assert_eq!(mv.series[0].axis, XAxis::Step);
        assert_eq!(mv.series[0].raw.len, 2);
        assert_eq!(mv.series[1].axis, XAxis::Epoch);
        assert_eq!(mv.series[1].label(&mv.series), "loss (epoch)");
        assert_eq!(mv.series[0].label(&mv.series), "loss");
    }

    #[test]
    fn a_zoom_inside_the_newest_points_draws_them_exactly() {
        let mut c = Curve::new("loss", XAxis::Step, 0.0);
        for i in 0..100_000 {
            c.push(i as f64, (i % 7) as f64);
        }
        let pts = c.points(false, Some(99_900.0), 100);
        assert_eq!(pts.len(), 100);
        assert_eq!(pts[0], (99_900.0, (99_900 % 7) as f64));
    }
}
