//! The Instances pane: machines, their state, market, uptime and cost.

use crate::cli::fmt_duration;
use crate::tui::app::*;
use crate::tui::ui::*;
use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Cell, Row, Table, TableState};

pub(crate) fn draw_instances(f: &mut Frame, app: &mut App, area: Rect) {
    let title = filter_title(
        "Instances",
        &app.inst_filter,
        app.inst_visible.len(),
        app.snap.instances.len(),
    );
    let Some((inner, height)) = list_frame(f, app, area, title, app.inst_visible.len(), |app| {
        if app.snap.instances.is_empty() {
            format!(
                "No instances. Press {} to launch one on the local provider (free, no credentials).",
                app.keymap.first_key(crate::tui::keymap::Action::Launch)
            )
        } else {
            "Nothing matches the filter (esc clears it).".to_string()
        }
    }) else {
        return;
    };
    let (start, end) = window(app.inst_visible.len(), app.inst_sel, height);
    let wide = inner.width >= 110;
    let rows: Vec<Row> = app.inst_visible[start..end]
        .iter()
        .map(|&i| instance_row(app, &app.snap.instances[i], wide))
        .collect();
    let mut widths = vec![
        Constraint::Length(14),
        Constraint::Fill(1),
        Constraint::Length(if wide { 16 } else { 11 }),
        Constraint::Length(3),
        Constraint::Length(11),
        Constraint::Length(if wide { 9 } else { 4 }),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(8),
    ];
    let mut header = vec![
        "ID",
        "NAME",
        if wide { "TYPE" } else { "PROV/TYPE" },
        "GPU",
        "STATE",
        "MKT",
        "UPTIME",
        "$/H",
        "COST",
    ];
    if wide {
        widths.insert(2, Constraint::Length(8));
        header.insert(2, "PROVIDER");
    }
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(app.theme.header()))
        .row_highlight_style(app.theme.selected())
        .column_spacing(1);
    let mut state = TableState::default().with_selected(Some(app.inst_sel - start));
    f.render_stateful_widget(table, inner, &mut state);
}

pub(crate) fn instance_row<'a>(app: &App, r: &InstanceRow, wide: bool) -> Row<'a> {
    let i = &r.rec;
    let market = match (i.spot, wide) {
        (true, _) => "spot",
        (false, true) => "on-demand",
        (false, false) => "od",
    };
    let mut cells = vec![
        Cell::from(i.id.clone()),
        // An orphan's name is its provider id: what the provider's console shows.
        Cell::from(if r.orphan {
            i.provider_id.clone().unwrap_or_default()
        } else {
            i.name.clone()
        }),
        // Narrow: provider and type share a column.
        Cell::from(if wide {
            i.instance_type.clone()
        } else {
            format!("{}/{}", i.provider, i.instance_type)
        }),
        Cell::from(i.gpus.to_string()),
        Cell::from(match r.idle_deadline {
            // Held by the provider, unknown to the store: ctrl-d terminates, `a` adopts.
            _ if r.orphan => Span::styled("ORPHAN", app.theme.error()),
            // The idle guard's countdown, in its last five minutes.
            Some(d) if d - crate::model::now_ms() < 5 * 60_000 => Span::styled(
                format!(
                    "idle, ends in {}",
                    fmt_duration((d - crate::model::now_ms()).max(0))
                ),
                app.theme.warn(),
            ),
            _ => Span::styled(i.state.to_string(), state_style(app, i.state.as_str())),
        }),
        Cell::from(market),
        Cell::from(if i.state.is_live() {
            fmt_duration(r.uptime_ms)
        } else {
            "-".into()
        }),
        Cell::from(i.hourly.short()),
        Cell::from(r.cost.short()),
    ];
    if wide {
        cells.insert(2, Cell::from(i.provider.clone()));
    }
    Row::new(cells)
}
