//! Drawing: a pure function of the [`App`] state onto a ratatui frame. Lists build rows
//! only for what is visible; charts draw pre-decimated series.

use super::app::{App, Mode};
use super::keymap::{Keymap, View};
use super::panes::{cost::*, instances::*, jobs::*, logs::*, metrics::*};
use super::popups::{confirm::*, help::*, launch::*};
use crate::model::Money;
use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};

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

pub(crate) fn draw_tabs(f: &mut Frame, app: &App, area: Rect) {
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

pub(crate) fn block<'a>(app: &App, title: String) -> Block<'a> {
    Block::default()
        .borders(Borders::ALL)
        .border_style(app.theme.dim())
        .title(Span::styled(title, app.theme.accent()))
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
        "pending" | "syncing" | "starting" | "setting_up" | "terminating" | "interrupted"
        | "recovering" | "stopped" => app.theme.warn(),
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
            Some((msg, true)) => Line::from(Span::styled(msg.clone(), t.error())),
            Some((msg, false)) => Line::from(Span::styled(msg.clone(), t.ok())),
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
