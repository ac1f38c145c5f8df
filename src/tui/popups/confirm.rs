//! A yes/no question before a destructive action; the answer starts at No.

use crate::tui::app::*;
use crate::tui::ui::*;
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph};

#[derive(Debug, Clone)]
pub struct Confirm {
    pub title: String,
    pub lines: Vec<String>,
    /// The highlighted choice; always starts at No.
    pub yes: bool,
    pub on_yes: Command,
}

impl App {
    pub(crate) fn on_confirm_key(&mut self, ev: KeyEvent, mut c: Confirm) -> Vec<Command> {
        match ev.code {
            KeyCode::Char('y') | KeyCode::Char('Y') => vec![c.on_yes],
            KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc | KeyCode::Char('q') => {
                Vec::new()
            }
            KeyCode::Enter => {
                if c.yes {
                    vec![c.on_yes]
                } else {
                    Vec::new()
                }
            }
            KeyCode::Left
            | KeyCode::Right
            | KeyCode::Tab
            | KeyCode::Char('h')
            | KeyCode::Char('l') => {
                c.yes = !c.yes;
                self.mode = Mode::Confirm(c);
                Vec::new()
            }
            _ => {
                self.mode = Mode::Confirm(c);
                Vec::new()
            }
        }
    }
}

pub(crate) fn draw_confirm(f: &mut Frame, app: &App, c: &Confirm, area: Rect) {
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
