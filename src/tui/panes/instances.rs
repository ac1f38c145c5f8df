//! The Instances pane: machines, their state, market, uptime and cost.

use crate::cli::fmt_duration;
use crate::tui::app::*;
use crate::tui::keymap::View;
use crate::tui::ui::*;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::Span;
use ratatui::widgets::{Cell, Row, Table, TableState};

pub(crate) fn draw_instances(f: &mut Frame, app: &mut App, area: Rect) {
    let title = filter_title(
        "Instances",
        &app.inst_filter,
        app.inst_visible.len(),
        app.snap.instances.len(),
    );
    let Some((inner, height)) = list_frame(
        f,
        app,
        View::Instances,
        area,
        title,
        app.inst_visible.len(),
        |app| {
            if app.snap.instances.is_empty() {
                format!(
                    "No instances. Press {} to launch one on the local provider (free, no credentials).",
                    app.keymap.first_key(crate::tui::keymap::Action::Launch)
                )
            } else {
                "Nothing matches the filter (esc clears it).".to_string()
            }
        },
    ) else {
        return;
    };
    let (start, end) = window(app.inst_visible.len(), app.inst_sel, height);
    let rows: Vec<&InstanceRow> = app.inst_visible[start..end]
        .iter()
        .map(|&i| &app.snap.instances[i])
        .collect();
    let hourly = money_column(rows.iter().map(|r| Some(r.rec.hourly)));
    let cost = money_column(rows.iter().map(|r| Some(r.cost)));
    let states: Vec<String> = rows.iter().map(|r| state_text(r)).collect();
    let types: Vec<String> = rows.iter().map(|r| r.rec.instance_type.clone()).collect();
    let uptimes: Vec<String> = rows
        .iter()
        .map(|r| {
            if r.rec.state.is_live() {
                fmt_duration(r.uptime_ms)
            } else {
                "-".into()
            }
        })
        .collect();
    let cols = [
        Col::fill("NAME", 10, 0),
        Col::fixed("ID", 14, 0),
        Col::fixed("STATE", widest(states.iter(), 7), 0),
        Col::fixed("$/H", widest(hourly.iter(), 4), 1),
        Col::fixed("COST", widest(cost.iter(), 4), 1),
        Col::fixed("TYPE", widest(types.iter(), 4).min(24), 2),
        Col::fixed("GPU", 3, 3),
        Col::fixed("UPTIME", widest(uptimes.iter(), 6), 3),
        Col::fixed("MARKET", 9, 4),
        Col::fixed("PROVIDER", 8, 4),
    ];
    let (keep, widths) = fit_columns(&cols, inner.width);
    let table_rows: Vec<Row> = rows
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let i = &r.rec;
            let all = [
                // An orphan's name is its provider id: what the provider's console shows.
                Cell::from(if r.orphan {
                    i.provider_id.clone().unwrap_or_default()
                } else {
                    i.name.clone()
                }),
                Cell::from(i.id.clone()),
                Cell::from(Span::styled(states[k].clone(), state_style_of(app, r))),
                Cell::from(hourly[k].clone()),
                Cell::from(cost[k].clone()),
                Cell::from(types[k].clone()),
                Cell::from(i.gpus.to_string()),
                Cell::from(uptimes[k].clone()),
                Cell::from(if i.spot { "spot" } else { "on-demand" }),
                Cell::from(i.provider.clone()),
            ];
            Row::new(keep.iter().map(|&c| all[c].clone()).collect::<Vec<_>>())
        })
        .collect();
    let header: Vec<&str> = keep.iter().map(|&i| cols[i].header).collect();
    let table = Table::new(table_rows, widths)
        .header(Row::new(header).style(app.theme.header()))
        .row_highlight_style(app.theme.selected())
        .column_spacing(1);
    let mut state = TableState::default().with_selected(Some(app.inst_sel - start));
    f.render_stateful_widget(table, inner, &mut state);
}

/// An orphan (held by the provider, unknown to the store: ctrl-d terminates, `a` adopts),
/// the idle guard's countdown in its last five minutes, or the state.
fn state_text(r: &InstanceRow) -> String {
    match r.idle_deadline {
        _ if r.orphan => "ORPHAN".into(),
        Some(d) if d - crate::model::now_ms() < 5 * 60_000 => format!(
            "idle, ends in {}",
            fmt_duration((d - crate::model::now_ms()).max(0))
        ),
        _ => r.rec.state.to_string(),
    }
}

fn state_style_of(app: &App, r: &InstanceRow) -> ratatui::style::Style {
    match r.idle_deadline {
        _ if r.orphan => app.theme.error(),
        Some(d) if d - crate::model::now_ms() < 5 * 60_000 => app.theme.warn(),
        _ => state_style(app, r.rec.state.as_str()),
    }
}
