//! The Metrics pane: the highlighted job's series as charts.

use crate::model::MetricPoint;
use crate::tui::app::*;
use crate::tui::series::Series;
use crate::tui::ui::*;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::symbols;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Chart, Dataset, GraphType, Paragraph};

/// The selected job's metrics, one series per name in order of first appearance.
#[derive(Debug, Clone, Default)]
pub struct MetricsView {
    pub job: Option<String>,
    pub series: Vec<(String, Series)>,
    pub selected: usize,
    pub last_rowid: i64,
    pub loading: bool,
}

impl MetricsView {
    pub fn push(&mut self, p: &MetricPoint) {
        let x = p
            .step
            .map(|s| s as f64)
            .or(p.epoch)
            .unwrap_or(p.line as f64);
        match self.series.iter_mut().find(|(n, _)| *n == p.name) {
            Some((_, s)) => s.push(x, p.value),
            None => {
                let mut s = Series::new();
                s.push(x, p.value);
                self.series.push((p.name.clone(), s));
            }
        }
    }
}

pub(crate) fn axis_labels(lo: f64, hi: f64) -> Vec<Line<'static>> {
    vec![
        Line::from(fmt_value(lo)),
        Line::from(fmt_value((lo + hi) / 2.0)),
        Line::from(fmt_value(hi)),
    ]
}

pub(crate) fn draw_chart(f: &mut Frame, app: &App, idx: usize, area: Rect, highlighted: bool) {
    let Some((name, series)) = app.metrics.series.get(idx) else {
        return;
    };
    let mut title = format!(" {name} ");
    if let Some((_, y)) = series.last {
        title.push_str(&format!("= {} ", fmt_value(y)));
    }
    title.push_str(&format!("· {} pts ", series.len));
    if series.non_finite > 0 {
        title.push_str(&format!("· {} NaN/inf ", series.non_finite));
    }
    let mut b = block(app, title);
    if highlighted {
        b = b.border_style(app.theme.accent());
    }
    let Some((xb, yb)) = series.bounds() else {
        f.render_widget(Paragraph::new("no finite values").block(b), area);
        return;
    };
    // Braille gives two dots per column.
    let data = series.downsample(area.width.saturating_sub(10).max(1) as usize * 2);
    let pad = ((yb[1] - yb[0]).abs() * 0.05).max(1e-12);
    let (y0, y1) = (yb[0] - pad, yb[1] + pad);
    let x1 = if xb[1] > xb[0] { xb[1] } else { xb[0] + 1.0 };
    let ds = Dataset::default()
        .marker(symbols::Marker::Braille)
        .graph_type(GraphType::Line)
        .style(app.theme.series(idx))
        .data(&data);
    let chart = Chart::new(vec![ds])
        .block(b)
        .x_axis(
            Axis::default()
                .bounds([xb[0], x1])
                .labels(axis_labels(xb[0], x1))
                .style(app.theme.dim()),
        )
        .y_axis(
            Axis::default()
                .bounds([y0, y1])
                .labels(axis_labels(yb[0], yb[1]))
                .style(app.theme.dim()),
        );
    f.render_widget(chart, area);
}

pub(crate) fn draw_metrics(f: &mut Frame, app: &mut App, area: Rect) {
    let n = app.metrics.series.len();
    if n == 0 {
        let msg = match &app.metrics.job {
            None => "No job selected: pick one in Jobs (2).".to_string(),
            Some(j) => format!("No metrics parsed from {j} yet."),
        };
        let b = block(app, " Metrics ".into());
        f.render_widget(Paragraph::new(msg).style(app.theme.dim()).block(b), area);
        return;
    }
    let sel = app.metrics.selected.min(n - 1);
    // A names line, then one chart or a 2x2 grid when there is room.
    let [names, charts] =
        Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(area);
    let mut spans = vec![Span::styled("metric: ", app.theme.dim())];
    for (i, (name, _)) in app.metrics.series.iter().enumerate() {
        let style = if i == sel {
            app.theme.selected()
        } else {
            app.theme.dim()
        };
        spans.push(Span::styled(format!(" {name} "), style));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), names);
    let grid = charts.width >= 100 && charts.height >= 24 && n > 1;
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
