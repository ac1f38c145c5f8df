//! Drawing: a pure function of the [`App`] state onto a ratatui frame. Lists build rows
//! only for what is visible; charts draw pre-decimated series.

use super::app::{App, DASHBOARD_MIN, Mode, Status};
use super::keymap::{Action, Keymap, View};
use super::panes::{cost::*, instances::*, jobs::*, logs::*, metrics::*};
use super::popups::{confirm::*, help::*, launch::*, messages::*, passphrase::*};
use crate::model::Money;
use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};

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
    app.dash.on = area.width >= DASHBOARD_MIN.0 && area.height >= DASHBOARD_MIN.1;
    let fullscreen = !app.dash.on && app.view == View::Logs && app.logs.fullscreen;
    let [top, main, bar] = Layout::vertical([
        Constraint::Length(if fullscreen { 0 } else { 1 }),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    if !fullscreen {
        draw_tabs(f, app, top);
    }
    if app.dash.on && !app.dash.zoom {
        draw_dashboard(f, app, main);
    } else {
        draw_pane(f, app, app.view, main, fullscreen);
    }
    draw_bar(f, app, bar);
    match &app.mode {
        Mode::Help(top) => draw_help(f, app, *top, area),
        Mode::Confirm(c) => draw_confirm(f, app, c, area),
        Mode::Launch(form) => draw_launch(f, app, form, area),
        Mode::Passphrase(p) => draw_passphrase(f, app, p, area),
        Mode::Messages(back) => draw_messages(f, app, *back, area),
        Mode::Quit => draw_quit(f, app, area),
        _ => {}
    }
}

/// One pane filling `area` (the tabs, or a zoomed pane of the dashboard).
fn draw_pane(f: &mut Frame, app: &mut App, view: View, area: Rect, fullscreen: bool) {
    match view {
        View::Instances => draw_instances(f, app, area),
        View::Jobs => draw_jobs(f, app, area),
        View::Logs => draw_logs(f, app, area, fullscreen),
        View::Metrics => draw_metrics(f, app, area),
        View::Cost => draw_cost(f, app, area),
    }
}

/// ≥ 120x36: instances and cost in a strip, the jobs list, then the highlighted job's log
/// and main chart side by side. Tab moves the focus (its border lights up), `z` zooms the
/// focused pane, `+`/`-` resize the jobs list or the log/chart split.
fn draw_dashboard(f: &mut Frame, app: &mut App, main: Rect) {
    let inst_rows = app.inst_visible.len().clamp(1, 6) as u16;
    let [strip, lower] =
        Layout::vertical([Constraint::Length(inst_rows + 3), Constraint::Fill(1)]).areas(main);
    let [inst, cost] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Length(48)]).areas(strip);
    // The jobs list takes its share, or less when it has fewer rows (a failed job's
    // detail below the list needs 7 more).
    let failed = app
        .selected_job()
        .is_some_and(|j| j.rec.state == crate::model::JobState::Failed);
    let want = app.job_visible.len().max(2) as u16 + 3 + if failed { 7 } else { 0 };
    let jobs_h = (lower.height * app.dash.jobs_pct / 100).min(want).max(5);
    let [jobs, detail] =
        Layout::vertical([Constraint::Length(jobs_h), Constraint::Fill(1)]).areas(lower);
    let [log, chart] = Layout::horizontal([
        Constraint::Percentage(app.dash.log_pct),
        Constraint::Fill(1),
    ])
    .areas(detail);
    draw_instances(f, app, inst);
    draw_cost_summary(f, app, cost);
    draw_jobs(f, app, jobs);
    draw_logs(f, app, log, false);
    draw_metrics_in(f, app, chart, false);
}

/// The pane names and the money summary on one line that never overlaps: names shorten
/// (the focused pane's stays whole), then the summary does.
pub(crate) fn draw_tabs(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let w = area.width as usize;
    let rights: Vec<String> = {
        let ro = if app.readonly { " [readonly]" } else { "" };
        match &app.snap.cost {
            Some(c) => {
                let m = Money::column(&[Money(c.total_micros), Money(c.burn_rate_micros_per_hour)]);
                vec![
                    format!("{} total · {}/h{ro} ", m[0], m[1]),
                    format!("{} · {}/h{ro} ", m[0], m[1]),
                    format!("{}/h{} ", m[1], if app.readonly { " [ro]" } else { "" }),
                ]
            }
            None => vec![format!("{} ", ro.trim()), String::new()],
        }
    };
    let label = |v: View, i: usize, style: u8| -> String {
        match style {
            _ if v == app.view => format!(" {} {} ", i + 1, v.title()),
            0 => format!(" {} {} ", i + 1, v.title()),
            1 => format!(" {} {} ", i + 1, &v.title()[..4.min(v.title().len())]),
            _ => format!(" {} ", i + 1),
        }
    };
    let mut pick = (2u8, rights.last().cloned().unwrap_or_default());
    'fit: for style in 0..3u8 {
        let left: usize = View::ALL
            .iter()
            .enumerate()
            .map(|(i, v)| label(*v, i, style).chars().count())
            .sum();
        for r in &rights {
            if left + r.chars().count() <= w {
                pick = (style, r.clone());
                break 'fit;
            }
        }
    }
    let spans: Vec<Span> = View::ALL
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let style = if *v == app.view {
                t.selected()
            } else {
                t.dim()
            };
            Span::styled(label(*v, i, pick.0), style)
        })
        .collect();
    let right = pick.1;
    let rw = right.chars().count() as u16;
    let [l, r] = Layout::horizontal([Constraint::Fill(1), Constraint::Length(rw)]).areas(area);
    f.render_widget(Paragraph::new(Line::from(spans)), l);
    f.render_widget(Paragraph::new(Span::styled(right, t.accent())), r);
}

pub(crate) fn block<'a>(app: &App, title: String) -> Block<'a> {
    Block::default()
        .borders(Borders::ALL)
        .border_style(app.theme.dim())
        .title(Span::styled(title, app.theme.accent()))
}

/// A pane's frame: on the dashboard, the focused pane's border is lit.
pub(crate) fn pane_block<'a>(app: &App, view: View, title: String) -> Block<'a> {
    let b = block(app, title);
    if app.dash.on && !app.dash.zoom && app.view == view {
        b.border_style(app.theme.accent())
    } else {
        b
    }
}

/// The end of an id: what tells two rows of the same name apart (`j-t9x2k1a4f2c3` →
/// `a4f2c3`).
pub fn short_id(id: &str) -> &str {
    let n = id.chars().count();
    if n <= 8 {
        return id;
    }
    let cut = id.char_indices().nth(n - 6).map_or(0, |(i, _)| i);
    &id[cut..]
}

/// The rows `[start, end)` of a list of `len` that keep `sel` visible in `height` rows.
pub(crate) fn window(len: usize, sel: usize, height: usize) -> (usize, usize) {
    if len <= height {
        return (0, len);
    }
    let start = sel
        .saturating_sub(height.saturating_sub(1))
        .min(len - height);
    let start = if sel < start { sel } else { start };
    (start, (start + height).min(len))
}

pub(crate) fn state_style(app: &App, s: &str) -> Style {
    match s {
        "running" | "succeeded" => app.theme.ok(),
        "pending" | "queued" | "syncing" | "starting" | "setting_up" | "terminating"
        | "interrupted" | "recovering" | "stopped" => app.theme.warn(),
        "failed" | "lost" | "preempted" => app.theme.error(),
        _ => app.theme.dim(),
    }
}

pub(crate) fn filter_title(name: &str, filter: &str, shown: usize, total: usize) -> String {
    if filter.is_empty() {
        format!(" {name} ({total}) ")
    } else {
        format!(" {name} ({shown}/{total}) /{filter} ")
    }
}

/// A list pane's frame: titled block (with the filter), page size, and `empty` in place of
/// the table when no row is shown. Returns the table's area and height, or None.
pub(crate) fn list_frame(
    f: &mut Frame,
    app: &mut App,
    view: View,
    area: Rect,
    title: String,
    shown: usize,
    empty: impl FnOnce(&App) -> String,
) -> Option<(Rect, usize)> {
    let b = pane_block(app, view, title);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let height = inner.height.saturating_sub(1) as usize;
    if app.view == view {
        app.page = height.max(1);
    }
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

pub(crate) fn fmt_value(v: f64) -> String {
    crate::metrics::fmt_metric(v, 4)
}

pub(crate) fn draw_bar(f: &mut Frame, app: &App, area: Rect) {
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
            Some(Status { text, error, .. }) => {
                let style = if *error { t.error() } else { t.ok() };
                let w = area.width as usize;
                if text.chars().count() <= w {
                    Line::from(Span::styled(text.clone(), style))
                } else {
                    // Cut, and say where the whole of it is.
                    let more = format!(
                        "… ({} shows it all)",
                        app.keymap.first_key(Action::Messages)
                    );
                    let keep = w.saturating_sub(more.chars().count());
                    let head: String = text.chars().take(keep).collect();
                    Line::from(vec![Span::styled(head, style), Span::styled(more, t.dim())])
                }
            }
            None => hints_line(app),
        },
    };
    f.render_widget(Paragraph::new(line), area);
}

/// The status bar's key hints, built from the keymap for the current view.
pub(crate) fn hints_line(app: &App) -> Line<'static> {
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

pub(crate) fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

/// A table column: its header, its width (a `fill` column takes what is left, at least
/// `width`), and how much it matters (0 = identifies the row: never dropped).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Col {
    pub header: &'static str,
    pub width: u16,
    pub prio: u8,
    pub fill: bool,
}

impl Col {
    pub(crate) fn fixed(header: &'static str, width: u16, prio: u8) -> Col {
        Col {
            header,
            width: width.max(header.chars().count() as u16),
            prio,
            fill: false,
        }
    }
    pub(crate) fn fill(header: &'static str, min: u16, prio: u8) -> Col {
        Col {
            header,
            width: min,
            prio,
            fill: true,
        }
    }
}

/// The columns that fit in `width` (spacing 1), dropping the least important first (the
/// highest `prio`, rightmost first among equals): their indices and constraints.
pub(crate) fn fit_columns(cols: &[Col], width: u16) -> (Vec<usize>, Vec<Constraint>) {
    let mut keep: Vec<usize> = (0..cols.len()).collect();
    let need = |keep: &[usize]| -> u16 {
        keep.iter().map(|&i| cols[i].width).sum::<u16>() + keep.len().saturating_sub(1) as u16
    };
    while need(&keep) > width {
        let Some((pos, _)) = keep
            .iter()
            .enumerate()
            .filter(|(_, i)| cols[**i].prio > 0)
            .max_by_key(|(pos, i)| (cols[**i].prio, *pos))
        else {
            break;
        };
        keep.remove(pos);
    }
    let constraints = keep
        .iter()
        .map(|&i| {
            if cols[i].fill {
                Constraint::Min(cols[i].width)
            } else {
                Constraint::Length(cols[i].width)
            }
        })
        .collect();
    (keep, constraints)
}

/// The widest of `texts` (at least `min`), for a column sized by what it holds, so a
/// number is never cut.
pub(crate) fn widest<'a>(texts: impl Iterator<Item = &'a String>, min: u16) -> u16 {
    texts
        .map(|t| t.chars().count() as u16)
        .max()
        .unwrap_or(0)
        .max(min)
}

/// A money column: every amount with the same decimals ([`Money::column`]), `-` for none.
pub(crate) fn money_column(values: impl Iterator<Item = Option<Money>>) -> Vec<String> {
    let v: Vec<Option<Money>> = values.collect();
    let d = Money::decimals_for(&v.iter().flatten().copied().collect::<Vec<_>>());
    v.iter()
        .map(|m| m.map_or_else(|| "-".to_string(), |m| m.with_decimals(d)))
        .collect()
}
