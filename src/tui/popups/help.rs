//! The `?` help: a table of key and description for every binding of the keymap (the
//! same table the key dispatch and the status bar use), grouped by pane, flowing into as
//! many columns as the width holds, scrollable with j/k.

use crate::tui::app::*;
use crate::tui::keymap::{Binding, Keymap, View};
use crate::tui::popups::prompt::commands;
use crate::tui::ui::*;
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph};

/// One row of the help table.
enum HelpRow {
    Section(String),
    Key(String, String),
}

fn help_rows(app: &App) -> Vec<HelpRow> {
    let visible = |b: &&Binding| !(app.readonly && b.action.is_destructive());
    let mut rows = vec![HelpRow::Section("everywhere".into())];
    for b in app
        .keymap
        .bindings
        .iter()
        .filter(visible)
        .filter(|b| b.views.is_none())
    {
        rows.push(HelpRow::Key(Keymap::keys_text(b), b.hint.to_string()));
    }
    for v in View::ALL {
        let bs: Vec<&Binding> = app
            .keymap
            .for_view(v, app.readonly)
            .into_iter()
            .filter(|b| b.views.is_some())
            .collect();
        if bs.is_empty() {
            continue;
        }
        rows.push(HelpRow::Section(v.title().to_lowercase()));
        for b in bs {
            rows.push(HelpRow::Key(Keymap::keys_text(b), b.hint.to_string()));
        }
    }
    rows.push(HelpRow::Section(
        ": commands (tab completes, ↑/↓ history)".into(),
    ));
    for (name, what, _) in commands(app.readonly) {
        rows.push(HelpRow::Key(format!(":{name}"), what.to_string()));
    }
    rows.push(HelpRow::Section("prompts".into()));
    rows.push(HelpRow::Key("/x, /!x".into(), "filter; ! inverts".into()));
    rows.push(HelpRow::Key("ctrl-u".into(), "clear the prompt".into()));
    rows
}

impl App {
    /// j/k and page keys scroll the help; any other key closes it.
    pub(crate) fn on_help_key(&mut self, ev: KeyEvent, top: usize) -> Vec<Command> {
        let page = self.page.max(1);
        let top = match ev.code {
            KeyCode::Char('j') | KeyCode::Down => top + 1,
            KeyCode::Char('k') | KeyCode::Up => top.saturating_sub(1),
            KeyCode::PageDown => top + page,
            KeyCode::PageUp => top.saturating_sub(page),
            _ => return Vec::new(),
        };
        self.mode = Mode::Help(top);
        Vec::new()
    }
}

pub(crate) fn draw_help(f: &mut Frame, app: &App, top: usize, area: Rect) {
    let t = &app.theme;
    // Everything but the status bar.
    let r = Rect::new(area.x, area.y, area.width, area.height.saturating_sub(1));
    f.render_widget(Clear, r);
    let rows = help_rows(app);
    let key_w = rows
        .iter()
        .map(|r| match r {
            HelpRow::Key(k, _) => k.chars().count(),
            HelpRow::Section(_) => 0,
        })
        .max()
        .unwrap_or(0) as u16;
    let b = block(
        app,
        " Help · j/k scroll · any other key closes ".to_string(),
    );
    let inner = b.inner(r);
    f.render_widget(b, r);
    // As many columns of (key, description) as fit whole, balanced.
    let desc_w = rows
        .iter()
        .map(|r| match r {
            HelpRow::Key(_, d) => d.chars().count(),
            HelpRow::Section(s) => s.chars().count().saturating_sub(key_w as usize + 2),
        })
        .max()
        .unwrap_or(0) as u16;
    let col_w = key_w + 2 + desc_w + 2;
    let ncols = (inner.width / col_w.max(1)).max(1) as usize;
    let height = inner.height.max(1) as usize;
    let per_col = rows.len().div_ceil(ncols);
    let fits = per_col <= height;
    let top = if fits { 0 } else { top.min(per_col - height) };
    let areas = Layout::horizontal(vec![Constraint::Fill(1); ncols]).split(inner);
    for (c, a) in areas.iter().enumerate() {
        let lines: Vec<Line> = rows
            .iter()
            .skip(c * per_col)
            .take(per_col)
            .skip(top)
            .take(height)
            .map(|row| match row {
                HelpRow::Section(s) => Line::from(Span::styled(s.clone(), t.accent())),
                HelpRow::Key(k, d) => Line::from(vec![
                    Span::styled(format!(" {k:<w$} ", w = key_w as usize), t.accent()),
                    Span::raw(d.clone()),
                ]),
            })
            .collect();
        f.render_widget(Paragraph::new(lines), *a);
    }
    if !fits {
        let note = format!(" {}/{} ", (top + height).min(per_col), per_col);
        let w = note.chars().count() as u16;
        f.render_widget(
            Paragraph::new(Span::styled(note, t.dim())),
            Rect::new(r.right().saturating_sub(w + 1), r.bottom() - 1, w, 1),
        );
    }
}
