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
    let b = block(app, " Cost ".into());
    let inner = b.inner(area);
    f.render_widget(b, area);
    let Some(c) = &app.snap.cost else {
        f.render_widget(Paragraph::new("…"), inner);
        return;
    };
    let [summary, gauge, tables] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(if app.snap.budget_day.is_some() { 1 } else { 0 }),
        Constraint::Fill(1),
    ])
    .areas(inner);
    let mut lines = vec![Line::from(vec![
        Span::styled("total ", t.dim()),
        Span::styled(Money(c.total_micros).to_string(), t.accent()),
        Span::styled("   today ", t.dim()),
        Span::raw(Money(c.today_micros).to_string()),
        Span::styled("   burn ", t.dim()),
        Span::raw(format!("{}/h", Money(c.burn_rate_micros_per_hour))),
    ])];
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
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(tables);
    let h = left.height.saturating_sub(2) as usize;
    let inst_rows: Vec<Row> = c
        .instances
        .iter()
        .take(h)
        .map(|i| {
            Row::new(vec![
                Cell::from(i.name.clone()),
                Cell::from(Span::styled(i.state.clone(), state_style(app, &i.state))),
                Cell::from(Money(i.hourly_micros).short()),
                Cell::from(Money(i.cost_micros).short()),
            ])
        })
        .collect();
    f.render_widget(
        cost_table(
            app,
            " per instance ",
            inst_rows,
            ["INSTANCE", "STATE", "$/H", "COST"],
            11,
        ),
        left,
    );
    let job_rows: Vec<Row> = c
        .jobs
        .iter()
        .take(h)
        .map(|j| {
            Row::new(vec![
                Cell::from(j.name.clone()),
                Cell::from(Span::styled(j.state.clone(), state_style(app, &j.state))),
                Cell::from(Money(j.cost_micros).short()),
                Cell::from(j.projected_micros.map_or("-".into(), |m| Money(m).short())),
            ])
        })
        .collect();
    f.render_widget(
        cost_table(
            app,
            " per job ",
            job_rows,
            ["JOB", "STATE", "COST", "PROJECTED"],
            10,
        ),
        right,
    );
}

/// A four-column table of the cost pane: name, state, two amounts.
pub(crate) fn cost_table<'a>(
    app: &App,
    title: &'a str,
    rows: Vec<Row<'a>>,
    header: [&'a str; 4],
    state_w: u16,
) -> Table<'a> {
    let t = &app.theme;
    Table::new(
        rows,
        [
            Constraint::Fill(1),
            Constraint::Length(state_w),
            Constraint::Length(9),
            Constraint::Length(10),
        ],
    )
    .header(Row::new(header.to_vec()).style(t.header()))
    .block(
        Block::default()
            .borders(Borders::TOP)
            .border_style(t.dim())
            .title(title),
    )
}
