//! Drawing: a pure function of the [`App`] state onto a ratatui frame. Lists build rows
//! only for what is visible; charts draw pre-decimated series.

use super::app::{App, Confirm, FORM_FIELDS, InstanceRow, JobRow, LaunchForm, Mode};
use super::keymap::{Keymap, View};
use crate::cli::fmt_duration;
use crate::model::Money;
use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::symbols;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Borders, Cell, Chart, Clear, Dataset, Gauge, GraphType, Paragraph, Row, Table,
    TableState, Wrap,
};

/// Smallest terminal the cockpit draws in; below it, a clear message.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 16;

pub fn draw(f: &mut Frame, app: &mut App) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!(
            "terminal too small: {}x{}\nthe cockpit needs at least {MIN_WIDTH}x{MIN_HEIGHT}\n(ctrl-c quits)",
            area.width, area.height
        );
        let y = area.height.saturating_sub(3) / 2;
        let r = Rect::new(area.x, area.y + y, area.width, 3.min(area.height));
        f.render_widget(Paragraph::new(msg).alignment(Alignment::Center), r);
        return;
    }
    let fullscreen = app.view == View::Logs && app.logs.fullscreen;
    let [top, main, bar] = Layout::vertical([
        Constraint::Length(if fullscreen { 0 } else { 1 }),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    if !fullscreen {
        draw_tabs(f, app, top);
    }
    match app.view {
        View::Instances => draw_instances(f, app, main),
        View::Jobs => draw_jobs(f, app, main),
        View::Logs => draw_logs(f, app, main, fullscreen),
        View::Metrics => draw_metrics(f, app, main),
        View::Cost => draw_cost(f, app, main),
    }
    draw_bar(f, app, bar);
    match &app.mode {
        Mode::Help => draw_help(f, app, area),
        Mode::Confirm(c) => draw_confirm(f, app, c, area),
        Mode::Launch(form) => draw_launch(f, app, form, area),
        Mode::Passphrase(p) => {
            let r = centered(area, 64, 6);
            f.render_widget(Clear, r);
            let outer = block(app, format!(" {} ", p.asked.title()));
            let inner = outer.inner(r);
            f.render_widget(outer, r);
            let [label, field, hint] = Layout::vertical([
                Constraint::Length(1),
                Constraint::Length(1),
                Constraint::Length(1),
            ])
            .areas(inner);
            f.render_widget(
                Paragraph::new(crate::sanitize::sanitize_line(p.asked.subject().as_bytes())),
                label,
            );
            f.render_widget(&p.input, field);
            f.render_widget(
                Paragraph::new(Span::styled(
                    "enter send · esc cancel (never stored)",
                    app.theme.dim(),
                )),
                hint,
            );
        }
        _ => {}
    }
}

fn draw_tabs(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let mut spans = Vec::new();
    for (i, v) in View::ALL.iter().enumerate() {
        let style = if *v == app.view {
            t.selected()
        } else {
            t.dim()
        };
        spans.push(Span::styled(format!(" {} {} ", i + 1, v.title()), style));
    }
    let mut right = String::new();
    if let Some(c) = &app.snap.cost {
        right = format!(
            "{} total · {}/h ",
            Money(c.total_micros),
            Money(c.burn_rate_micros_per_hour)
        );
    }
    if app.readonly {
        right.push_str("[readonly] ");
    }
    let left = Line::from(spans);
    let w = right.chars().count() as u16;
    let [l, r] = Layout::horizontal([Constraint::Fill(1), Constraint::Length(w)]).areas(area);
    f.render_widget(Paragraph::new(left), l);
    f.render_widget(Paragraph::new(Span::styled(right, t.accent())), r);
}

fn block<'a>(app: &App, title: String) -> Block<'a> {
    Block::default()
        .borders(Borders::ALL)
        .border_style(app.theme.dim())
        .title(Span::styled(title, app.theme.accent()))
}

/// The rows `[start, end)` of a list of `len` that keep `sel` visible in `height` rows.
fn window(len: usize, sel: usize, height: usize) -> (usize, usize) {
    if len <= height {
        return (0, len);
    }
    let start = sel
        .saturating_sub(height.saturating_sub(1))
        .min(len - height);
    let start = if sel < start { sel } else { start };
    (start, (start + height).min(len))
}

fn state_style(app: &App, s: &str) -> Style {
    match s {
        "running" | "succeeded" => app.theme.ok(),
        "pending" | "syncing" | "starting" | "setting_up" | "terminating" | "interrupted"
        | "recovering" | "stopped" => app.theme.warn(),
        "failed" | "lost" | "preempted" => app.theme.error(),
        _ => app.theme.dim(),
    }
}

fn filter_title(name: &str, filter: &str, shown: usize, total: usize) -> String {
    if filter.is_empty() {
        format!(" {name} ({total}) ")
    } else {
        format!(" {name} ({shown}/{total}) /{filter} ")
    }
}

/// A list pane's frame: titled block (with the filter), page size, and `empty` in place of
/// the table when no row is shown. Returns the table's area and height, or None.
fn list_frame(
    f: &mut Frame,
    app: &mut App,
    area: Rect,
    title: String,
    shown: usize,
    empty: impl FnOnce(&App) -> String,
) -> Option<(Rect, usize)> {
    let b = block(app, title);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let height = inner.height.saturating_sub(1) as usize;
    app.page = height.max(1);
    if shown > 0 {
        return Some((inner, height));
    }
    f.render_widget(
        Paragraph::new(empty(app))
            .style(app.theme.dim())
            .wrap(Wrap { trim: true }),
        inner,
    );
    None
}

fn draw_instances(f: &mut Frame, app: &mut App, area: Rect) {
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
                app.keymap.first_key(super::keymap::Action::Launch)
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

fn instance_row<'a>(app: &App, r: &InstanceRow, wide: bool) -> Row<'a> {
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

fn fmt_value(v: f64) -> String {
    crate::metrics::fmt_metric(v, 4)
}

fn draw_jobs(f: &mut Frame, app: &mut App, area: Rect) {
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
fn state_label(s: crate::model::JobState) -> &'static str {
    use crate::model::JobState::*;
    match s {
        SettingUp => "setup",
        Interrupted => "interrupt",
        Recovering => "recover",
        s => s.as_str(),
    }
}

fn job_row<'a>(app: &App, r: &JobRow, wide: bool, spark_w: usize) -> Row<'a> {
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

fn draw_logs(f: &mut Frame, app: &mut App, area: Rect, fullscreen: bool) {
    let lv = &app.logs;
    let job = app.focus_job_row();
    let mut title = match (&lv.job, job) {
        (Some(id), Some(j)) => format!(" Logs {} · {} · {} ", j.rec.name, id, j.rec.state),
        (Some(id), None) => format!(" Logs {id} "),
        (None, _) => " Logs ".to_string(),
    };
    let flags: Vec<&str> = [
        (lv.autoscroll, "follow"),
        (lv.wrap, "wrap"),
        (lv.timestamps, "time"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| *n)
    .collect();
    if !flags.is_empty() {
        title.push_str(&format!("[{}] ", flags.join(" ")));
    }
    if let Some(s) = &lv.search {
        title.push_str(&format!("/{s} "));
    }
    let inner = if fullscreen {
        area
    } else {
        let b = block(app, title);
        let inner = b.inner(area);
        f.render_widget(b, area);
        inner
    };
    let height = inner.height as usize;
    app.page = height.max(1);
    let lv = &mut app.logs;
    if lv.job.is_none() {
        f.render_widget(
            Paragraph::new("No job selected: pick one in Jobs (2) and press enter.")
                .style(app.theme.dim()),
            inner,
        );
        return;
    }
    let len = lv.lines.len();
    let width = inner.width.max(1) as usize;
    let ts_w = if lv.timestamps { 9 } else { 0 };
    // Which lines fit: from `top`, or from the bottom up when following.
    let (start, end) = if lv.autoscroll {
        if lv.wrap {
            let mut rows = 0;
            let mut s = len;
            while s > 0 {
                let h = (lv.lines[s - 1].text.chars().count() + ts_w)
                    .div_ceil(width)
                    .max(1);
                if rows + h > height {
                    break;
                }
                rows += h;
                s -= 1;
            }
            (s, len)
        } else {
            (len.saturating_sub(height), len)
        }
    } else {
        let top = lv.top.min(len.saturating_sub(1));
        (top, (top + height).min(len))
    };
    if lv.autoscroll {
        lv.top = start;
    }
    let needle = lv.search.as_ref().map(|s| s.to_lowercase());
    let t = &app.theme;
    let lines: Vec<Line> = (start..end)
        .map(|i| {
            let l = &lv.lines[i];
            let mut spans = Vec::with_capacity(2);
            if lv.timestamps {
                let ts = l.ts.map_or_else(
                    || "--:--:-- ".to_string(),
                    |ms| {
                        let s = ms.div_euclid(1000).rem_euclid(86_400);
                        format!("{:02}:{:02}:{:02} ", s / 3600, (s / 60) % 60, s % 60)
                    },
                );
                spans.push(Span::styled(ts, t.dim()));
            }
            let style = match &needle {
                Some(n) if Some(i) == lv.current_match => t.selected(),
                Some(n) if !n.is_empty() && l.text.to_lowercase().contains(n.as_str()) => {
                    t.warn().add_modifier(Modifier::BOLD)
                }
                _ => Style::default(),
            };
            spans.push(Span::styled(l.text.clone(), style));
            Line::from(spans)
        })
        .collect();
    let mut p = Paragraph::new(lines);
    if lv.wrap {
        p = p.wrap(Wrap { trim: false });
    }
    f.render_widget(p, inner);
    if lv.first_line > 0 && start == 0 && !lv.autoscroll {
        let note = format!(" {} older lines on disk: ↑ loads them ", lv.first_line);
        let w = (note.chars().count() as u16).min(inner.width);
        f.render_widget(
            Paragraph::new(Span::styled(note, t.dim())),
            Rect::new(inner.right() - w, inner.y, w, 1),
        );
    }
}

fn axis_labels(lo: f64, hi: f64) -> Vec<Line<'static>> {
    vec![
        Line::from(fmt_value(lo)),
        Line::from(fmt_value((lo + hi) / 2.0)),
        Line::from(fmt_value(hi)),
    ]
}

fn draw_chart(f: &mut Frame, app: &App, idx: usize, area: Rect, highlighted: bool) {
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

fn draw_metrics(f: &mut Frame, app: &mut App, area: Rect) {
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

fn draw_cost(f: &mut Frame, app: &mut App, area: Rect) {
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
fn cost_table<'a>(
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

fn draw_bar(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let line = match &app.mode {
        Mode::Filter(s) => Line::from(vec![
            Span::styled("/", t.accent()),
            Span::raw(s.clone()),
            Span::raw("█"),
        ]),
        Mode::Search(s) => Line::from(vec![
            Span::styled("search /", t.accent()),
            Span::raw(s.clone()),
            Span::raw("█"),
        ]),
        Mode::Command(s) => Line::from(vec![
            Span::styled(":", t.accent()),
            Span::raw(s.clone()),
            Span::raw("█"),
        ]),
        _ => match &app.status {
            Some((msg, true)) => Line::from(Span::styled(msg.clone(), t.error())),
            Some((msg, false)) => Line::from(Span::styled(msg.clone(), t.ok())),
            None => hints_line(app),
        },
    };
    f.render_widget(Paragraph::new(line), area);
}

/// The status bar's key hints, built from the keymap for the current view.
fn hints_line(app: &App) -> Line<'static> {
    let t = &app.theme;
    let mut spans = Vec::new();
    for b in app
        .keymap
        .for_view(app.view, app.readonly)
        .into_iter()
        .filter(|b| b.in_bar)
    {
        spans.push(Span::styled(Keymap::keys_text(b), t.accent()));
        spans.push(Span::styled(format!(" {}  ", b.hint), t.dim()));
    }
    Line::from(spans)
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

fn draw_help(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let r = centered(area, 76, area.height.saturating_sub(2));
    f.render_widget(Clear, r);
    let mut lines = Vec::new();
    let mut sections: Vec<(String, Vec<&super::keymap::Binding>)> = vec![(
        "everywhere".into(),
        app.keymap
            .bindings
            .iter()
            .filter(|b| b.views.is_none() && !(app.readonly && b.action.is_destructive()))
            .collect(),
    )];
    for v in View::ALL {
        let bs: Vec<_> = app
            .keymap
            .for_view(v, app.readonly)
            .into_iter()
            .filter(|b| b.views.is_some())
            .collect();
        if !bs.is_empty() {
            sections.push((v.title().to_lowercase(), bs));
        }
    }
    // One wrapped paragraph per section, so all of it fits at 80x24.
    for (name, bs) in sections {
        let mut spans = vec![Span::styled(format!("{name}: "), t.accent())];
        for (i, b) in bs.iter().enumerate() {
            if i > 0 {
                spans.push(Span::styled(" · ", t.dim()));
            }
            spans.push(Span::styled(Keymap::keys_text(b), t.accent()));
            spans.push(Span::raw(format!(" {}", b.hint)));
        }
        lines.push(Line::from(spans));
    }
    lines.push(Line::from(Span::styled(
        ": commands: instances jobs logs metrics cost launch help quit · / filter (!x inverts)",
        t.dim(),
    )));
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(block(app, " Help (any key closes) ".into())),
        r,
    );
}

fn draw_confirm(f: &mut Frame, app: &App, c: &Confirm, area: Rect) {
    let t = &app.theme;
    let r = centered(area, 60, c.lines.len() as u16 + 5);
    f.render_widget(Clear, r);
    let mut lines: Vec<Line> = c.lines.iter().map(|l| Line::from(l.clone())).collect();
    lines.push(Line::from(""));
    let (no, yes) = if c.yes {
        (t.dim(), t.selected())
    } else {
        (t.selected(), t.dim())
    };
    lines.push(Line::from(vec![
        Span::styled("  [ No ]  ", no),
        Span::raw("   "),
        Span::styled("  [ Yes ]  ", yes),
        Span::styled("   y/n, ←/→, enter", t.dim()),
    ]));
    f.render_widget(
        Paragraph::new(lines).block(block(app, format!(" {} ", c.title)).border_style(t.error())),
        r,
    );
}

fn draw_launch(f: &mut Frame, app: &App, form: &LaunchForm, area: Rect) {
    let t = &app.theme;
    let h = (FORM_FIELDS.len() as u16) * 3 + 4;
    let r = centered(area, 64, h);
    f.render_widget(Clear, r);
    let outer = block(app, " Launch an instance ".into());
    let inner = outer.inner(r);
    f.render_widget(outer, r);
    let mut constraints: Vec<Constraint> =
        FORM_FIELDS.iter().map(|_| Constraint::Length(3)).collect();
    constraints.push(Constraint::Fill(1));
    let rows = Layout::vertical(constraints).split(inner);
    for (i, label) in FORM_FIELDS.iter().enumerate() {
        let mut title = format!(" {label} ");
        if i == 1 && !form.completions.is_empty() {
            title.push_str(&format!("(tab: {}) ", form.completions.join(", ")));
        }
        let err = form.errors[i].as_deref();
        let border = if err.is_some() {
            t.error()
        } else if i == form.focus {
            t.accent()
        } else {
            t.dim()
        };
        let mut b = Block::default()
            .borders(Borders::ALL)
            .border_style(border)
            .title(title);
        if let Some(e) = err {
            b = b.title_bottom(Span::styled(format!(" {e} "), t.error()));
        }
        let mut ta = form.fields[i].clone();
        ta.set_block(b);
        if i != form.focus {
            ta.set_cursor_style(Style::default());
        }
        f.render_widget(&ta, rows[i]);
    }
    let footer = match &form.plan {
        Some(p) if !form.cheapest.is_empty() => {
            let (first, rest) = form.cheapest.split_first().expect("not empty");
            let then: Vec<String> = rest
                .iter()
                .take(2)
                .map(|(p, ty, m)| format!("{p}:{ty} {m}"))
                .collect();
            Line::from(vec![
                Span::styled(
                    format!(
                        "→ {}:{} {} at {}/h",
                        first.0,
                        first.1,
                        if p.spot { "spot" } else { "on-demand" },
                        first.2
                    ),
                    t.ok(),
                ),
                Span::styled(
                    if then.is_empty() {
                        String::new()
                    } else {
                        format!(", then {}", then.join(", "))
                    },
                    t.dim(),
                ),
            ])
        }
        Some(p) => Line::from(vec![
            Span::styled(
                format!(
                    "→ {} {} at {}/h",
                    p.instance_type,
                    if p.spot { "spot" } else { "on-demand" },
                    p.hourly
                ),
                t.ok(),
            ),
            Span::styled("   enter launch · esc cancel · ↑/↓ field", t.dim()),
        ]),
        None => Line::from(Span::styled("esc cancel · ↑/↓ field", t.dim())),
    };
    f.render_widget(Paragraph::new(footer), rows[FORM_FIELDS.len()]);
}
