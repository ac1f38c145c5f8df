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
    /// What can be answered, in the order shown; one of them is No (no command).
    pub choices: Vec<Choice>,
    /// The highlighted choice; always starts at No.
    pub sel: usize,
}

/// One answer: its label, the key that picks it at once, what it does (None: nothing).
#[derive(Debug, Clone)]
pub struct Choice {
    pub label: String,
    pub key: char,
    pub cmd: Option<Command>,
}

impl Confirm {
    /// No or Yes, starting at No.
    pub fn yes_no(title: &str, lines: Vec<String>, on_yes: Command) -> Confirm {
        Confirm {
            title: title.into(),
            lines,
            choices: vec![
                Choice {
                    label: "No".into(),
                    key: 'n',
                    cmd: None,
                },
                Choice {
                    label: "Yes".into(),
                    key: 'y',
                    cmd: Some(on_yes),
                },
            ],
            sel: 0,
        }
    }

    /// Is the highlighted answer No?
    pub fn is_no(&self) -> bool {
        self.choices.get(self.sel).is_none_or(|c| c.cmd.is_none())
    }
}

impl App {
    pub(crate) fn on_confirm_key(&mut self, ev: KeyEvent, mut c: Confirm) -> Vec<Command> {
        let n = c.choices.len().max(1);
        match ev.code {
            KeyCode::Esc | KeyCode::Char('q') => Vec::new(),
            KeyCode::Enter => c
                .choices
                .get(c.sel)
                .and_then(|ch| ch.cmd.clone())
                .into_iter()
                .collect(),
            KeyCode::Left | KeyCode::BackTab | KeyCode::Char('h') => {
                c.sel = (c.sel + n - 1) % n;
                self.mode = Mode::Confirm(c);
                Vec::new()
            }
            KeyCode::Right | KeyCode::Tab | KeyCode::Char('l') => {
                c.sel = (c.sel + 1) % n;
                self.mode = Mode::Confirm(c);
                Vec::new()
            }
            KeyCode::Char(k) => {
                let k = k.to_ascii_lowercase();
                match c.choices.iter().find(|ch| ch.key == k) {
                    Some(ch) => ch.cmd.clone().into_iter().collect(),
                    None => {
                        self.mode = Mode::Confirm(c);
                        Vec::new()
                    }
                }
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
    let w = c
        .choices
        .iter()
        .map(|ch| ch.label.chars().count() as u16 + 11)
        .sum::<u16>()
        .max(60);
    let r = centered(area, w, c.lines.len() as u16 + 5 + c.choices.len() as u16);
    f.render_widget(Clear, r);
    let mut lines: Vec<Line> = c.lines.iter().map(|l| Line::from(l.clone())).collect();
    lines.push(Line::from(""));
    let answers: Vec<Span> = c
        .choices
        .iter()
        .enumerate()
        .map(|(i, ch)| {
            let style = if i == c.sel { t.selected() } else { t.dim() };
            Span::styled(format!(" [ {} ({}) ] ", ch.label, ch.key), style)
        })
        .collect();
    let one_line: usize = answers.iter().map(|a| a.width() + 1).sum();
    if one_line <= r.width.saturating_sub(2) as usize {
        let mut row = Vec::new();
        for a in answers {
            row.push(a);
            row.push(Span::raw(" "));
        }
        lines.push(Line::from(row));
    } else {
        // Too wide for one row: one answer per row.
        lines.extend(answers.into_iter().map(Line::from));
    }
    lines.push(Line::from(Span::styled(
        "  the key picks it · ←/→ move · enter answers · esc is No",
        t.dim(),
    )));
    f.render_widget(
        Paragraph::new(lines).block(block(app, format!(" {} ", c.title)).border_style(t.error())),
        r,
    );
}
