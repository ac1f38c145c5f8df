//! The Cost pane: totals, budget and per instance / per job amounts.

use crate::model::Money;
use crate::tui::app::*;
use crate::tui::ui::*;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Gauge, Paragraph, Row, Table};

pub(crate) fn draw_cost(f: &mut Frame, app: &mut App, area: Rect) {
    let t = &app.theme;
    let b = pane_block(app, crate::tui::keymap::View::Cost, " Cost ".into());
    let inner = b.inner(area);
    f.render_widget(b, area);
    let Some(c) = &app.snap.cost else {
        f.render_widget(Paragraph::new("…"), inner);
        return;
    };
    let [summary, gauge, tables] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(if app.snap.budget_day.is_some() { 1 } else { 0 }),
        Constraint::Fill(1),
    ])
    .areas(inner);
    let lines = summary_lines(app, c);
    f.render_widget(Paragraph::new(lines), summary);
    if let Some(l) = app.snap.budget_day {
        let ratio = if l.0 > 0 {
            c.today_micros as f64 / l.0 as f64
        } else {
            1.0
        };
        let style = if ratio >= 0.9 {
            t.error()
        } else if ratio >= 0.7 {
            t.warn()
        } else {
            t.ok()
        };
        f.render_widget(
            Gauge::default()
                .ratio(ratio.clamp(0.0, 1.0))
                .label(format!("{:.0}% of today's budget", ratio * 100.0))
                .gauge_style(style),
            gauge,
        );
    }
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
            .spacing(2)
            .areas(tables);
    let h = left.height.saturating_sub(2) as usize;
    let shown: Vec<_> = c.instances.iter().take(h).collect();
    let hourly = money_column(shown.iter().map(|i| Some(Money(i.hourly_micros))));
    let cost = money_column(shown.iter().map(|i| Some(Money(i.cost_micros))));
    let rows: Vec<[String; 4]> = shown
        .iter()
        .enumerate()
        .map(|(k, i)| {
            [
                i.name.clone(),
                i.state.clone(),
                hourly[k].clone(),
                cost[k].clone(),
            ]
        })
        .collect();
    draw_cost_table(
        f,
        app,
        left,
        " per instance ",
        ["INSTANCE", "STATE", "$/H", "COST"],
        rows,
    );
    let shown: Vec<_> = c.jobs.iter().take(h).collect();
    let cost = money_column(shown.iter().map(|j| Some(Money(j.cost_micros))));
    let proj = money_column(shown.iter().map(|j| j.projected_micros.map(Money)));
    let rows: Vec<[String; 5]> = shown
        .iter()
        .enumerate()
        .map(|(k, j)| {
            [
                j.name.clone(),
                j.state.clone(),
                cost[k].clone(),
                proj[k].clone(),
                crate::cost::fmt_gpu_hours(j.gpu_seconds),
            ]
        })
        .collect();
    draw_cost_table(
        f,
        app,
        right,
        " per job ",
        ["JOB", "STATE", "COST", "PROJECTED", "GPU-H"],
        rows,
    );
}

/// A table of the cost pane: name, state, two amounts; columns sized by what they hold
/// and dropped by priority (the amounts go last but for the name).
fn draw_cost_table<const N: usize>(
    f: &mut Frame,
    app: &App,
    area: Rect,
    title: &str,
    header: [&'static str; N],
    rows: Vec<[String; N]>,
) {
    let t = &app.theme;
    // Name, state, two amounts, then (jobs) GPU-hours, which go first.
    let cols: Vec<Col> = (0..N)
        .map(|i| match i {
            0 => Col::fill(header[0], 8, 0),
            1 => Col::fixed(header[1], widest(rows.iter().map(|r| &r[1]), 5), 2),
            2 | 3 => Col::fixed(header[i], widest(rows.iter().map(|r| &r[i]), 4), 1),
            _ => Col::fixed(header[i], widest(rows.iter().map(|r| &r[i]), 5), 3),
        })
        .collect();
    let (keep, widths) = fit_columns(&cols, area.width);
    let table_rows: Vec<Row> = rows
        .iter()
        .map(|r| {
            Row::new(
                keep.iter()
                    .map(|&i| {
                        if i == 1 {
                            Cell::from(Span::styled(r[1].clone(), state_style(app, &r[1])))
                        } else {
                            Cell::from(r[i].clone())
                        }
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let table = Table::new(table_rows, widths)
        .header(
            Row::new(keep.iter().map(|&i| cols[i].header).collect::<Vec<_>>()).style(t.header()),
        )
        .block(
            Block::default()
                .borders(Borders::TOP)
                .border_style(t.dim())
                .title(title.to_string()),
        );
    f.render_widget(table, area);
}

/// Totals, the budget, and the highlighted job's cost (the cost pane follows it).
fn summary_lines(app: &App, c: &crate::cost::CostReport) -> Vec<Line<'static>> {
    let t = &app.theme;
    let amounts = Money::column(&[
        Money(c.total_micros),
        Money(c.today_micros),
        Money(c.burn_rate_micros_per_hour),
    ]);
    let mut lines = vec![Line::from(vec![
        Span::styled("total ", t.dim()),
        Span::styled(amounts[0].clone(), t.accent()),
        Span::styled("  today ", t.dim()),
        Span::raw(amounts[1].clone()),
        Span::styled("  burn ", t.dim()),
        Span::raw(format!("{}/h", amounts[2])),
    ])];
    // A cluster bills GPU time: how much of it today.
    let gpu_today = c
        .gpu_seconds_days
        .get(&crate::cost::utc_date(crate::model::now_ms()))
        .copied()
        .unwrap_or(0);
    if gpu_today > 0 {
        lines[0].spans.push(Span::styled("  GPU-h today ", t.dim()));
        lines[0]
            .spans
            .push(Span::raw(crate::cost::fmt_gpu_hours(gpu_today)));
    }
    let mut budget = vec![];
    if let Some(l) = app.snap.budget_day {
        budget.push(format!("per day {l}, left {}", Money(l.0 - c.today_micros)));
    }
    if let Some(l) = app.snap.budget_job {
        budget.push(format!("per job {l}"));
    }
    lines.push(Line::from(Span::styled(
        if budget.is_empty() {
            "no budget set ([budget] in the user config)".to_string()
        } else {
            format!("budget: {}", budget.join(" · "))
        },
        t.dim(),
    )));
    if let Some(j) = app.focus_job_row() {
        let m = Money::column(&[j.cost, j.projected.unwrap_or(Money(0))]);
        let mut spans = vec![
            Span::styled("job ", t.dim()),
            Span::raw(crate::tui::panes::metrics::job_label(&j.rec)),
            Span::styled(" cost ", t.dim()),
            Span::raw(m[0].clone()),
        ];
        if j.projected.is_some() {
            spans.push(Span::styled(" → ", t.dim()));
            spans.push(Span::raw(m[1].clone()));
        }
        lines.push(Line::from(spans));
    }
    lines
}

/// The dashboard's cost strip: totals, budget, the highlighted job's cost.
pub(crate) fn draw_cost_summary(f: &mut Frame, app: &mut App, area: Rect) {
    let b = pane_block(app, crate::tui::keymap::View::Cost, " Cost ".into());
    let inner = b.inner(area);
    f.render_widget(b, area);
    let Some(c) = &app.snap.cost else {
        f.render_widget(Paragraph::new("…"), inner);
        return;
    };
    f.render_widget(Paragraph::new(summary_lines(app, c)), inner);
}
