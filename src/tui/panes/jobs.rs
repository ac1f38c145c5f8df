//! The Jobs pane: every job with its state, progress, main metric trend, time and cost.

use crate::cli::fmt_duration;
use crate::model::Money;
use crate::tui::app::*;
use crate::tui::ui::*;
use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Cell, Row, Table, TableState};

/// `▁▂▅▇` of the finite values.
pub fn sparkline_text(values: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let v = &v[v.len().saturating_sub(width)..];
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    v.iter()
        .map(|&x| {
            if hi > lo {
                BARS[(((x - lo) / (hi - lo)) * 7.0).round().clamp(0.0, 7.0) as usize]
            } else {
                BARS[3]
            }
        })
        .collect()
}

pub fn progress_text(p: &crate::model::Progress) -> String {
    match (p.epoch, p.epochs_total, p.step, p.steps_total) {
        (Some(e), Some(t), _, _) => format!("ep {e}/{t}"),
        (_, _, Some(s), Some(t)) => format!("{s}/{t}"),
        (Some(e), None, _, _) => format!("ep {e}"),
        (_, _, Some(s), None) => format!("step {s}"),
        _ => "-".into(),
    }
}

pub(crate) fn draw_jobs(f: &mut Frame, app: &mut App, area: Rect) {
    let title = filter_title(
        "Jobs",
        &app.job_filter,
        app.job_visible.len(),
        app.snap.jobs.len(),
    );
    let Some((inner, height)) = list_frame(f, app, area, title, app.job_visible.len(), |app| {
        if !app.snap.jobs.is_empty() {
            return "Nothing matches the filter (esc clears it).".into();
        }
        match &app.project {
            Some(p) => format!("No jobs yet. Select a running instance and press r to run {p}."),
            None => "No jobs yet, and no trainctl.toml here to run.".into(),
        }
    }) else {
        return;
    };
    let wide = inner.width >= 100;
    let (start, end) = window(app.job_visible.len(), app.job_sel, height);
    let spark_w = if wide { 10 } else { 5 };
    let rows: Vec<Row> = app.job_visible[start..end]
        .iter()
        .map(|&i| job_row(app, &app.snap.jobs[i], wide, spark_w))
        .collect();
    // Narrow: the name stands for the job (its id is in the Logs title); wide: id and instance too.
    let mut widths = vec![
        Constraint::Fill(1),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(if wide { 13 } else { 10 } + spark_w as u16),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(8),
    ];
    let mut header = vec![
        "NAME", "STATE", "PROGRESS", "METRIC", "TIME", "ETA", "COST", "PROJ",
    ];
    if wide {
        widths.insert(0, Constraint::Length(14));
        header.insert(0, "ID");
        widths.insert(2, Constraint::Length(14));
        header.insert(2, "INSTANCE");
    }
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(app.theme.header()))
        .row_highlight_style(app.theme.selected())
        .column_spacing(1);
    let mut state = TableState::default().with_selected(Some(app.job_sel - start));
    f.render_stateful_widget(table, inner, &mut state);
}

/// A job state whole in the 9 columns the jobs list gives it (the longer names shortened
/// the same at every width: a word is never cut).
pub(crate) fn state_label(s: crate::model::JobState) -> &'static str {
    use crate::model::JobState::*;
    match s {
        SettingUp => "setup",
        Interrupted => "interrupt",
        Recovering => "recover",
        s => s.as_str(),
    }
}

pub(crate) fn job_row<'a>(app: &App, r: &JobRow, wide: bool, spark_w: usize) -> Row<'a> {
    let j = &r.rec;
    let metric = match &r.metric {
        Some((name, v)) => {
            let name: String = name.chars().take(if wide { 6 } else { 4 }).collect();
            let v = fmt_value(*v);
            let v: String = v.chars().take(if wide { 6 } else { 5 }).collect();
            format!("{name} {v} {}", sparkline_text(&r.spark, spark_w))
        }
        None => "-".into(),
    };
    let mut cells = vec![
        Cell::from(j.name.clone()),
        Cell::from(Span::styled(
            state_label(j.state),
            state_style(app, j.state.as_str()),
        )),
        Cell::from(progress_text(&r.progress)),
        Cell::from(metric),
        Cell::from(r.elapsed_ms.map_or("-".into(), fmt_duration)),
        Cell::from(r.eta_ms.map_or("-".into(), fmt_duration)),
        Cell::from(r.cost.short()),
        Cell::from(r.projected.map_or("-".into(), Money::short)),
    ];
    if wide {
        cells.insert(0, Cell::from(j.id.clone()));
        cells.insert(2, Cell::from(j.instance_id.clone().unwrap_or_default()));
    }
    Row::new(cells)
}
