//! The messages popup (`!`): every status and error said this session, newest last, in
//! full and scrollable; and the "quit while work is in flight?" question.

use crate::tui::app::*;
use crate::tui::ui::*;
use crossterm::event::{KeyCode, KeyEvent};
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph, Wrap};

impl App {
    /// Keys of the messages popup: j/k and page keys scroll, anything else closes.
    pub(crate) fn on_messages_key(&mut self, ev: KeyEvent, back: usize) -> Vec<Command> {
        let most = self.messages.len().saturating_sub(1);
        let page = self.page.max(1);
        let back = match ev.code {
            KeyCode::Char('k') | KeyCode::Up => (back + 1).min(most),
            KeyCode::Char('j') | KeyCode::Down => back.saturating_sub(1),
            KeyCode::PageUp => (back + page).min(most),
            KeyCode::PageDown => back.saturating_sub(page),
            KeyCode::Char('g') | KeyCode::Home => most,
            KeyCode::Char('G') | KeyCode::End => 0,
            _ => return Vec::new(),
        };
        self.mode = Mode::Messages(back);
        Vec::new()
    }

    /// `q` while commands are out: y quits (the machines and jobs go on; what was asked is
    /// recorded), anything else stays.
    pub(crate) fn on_quit_key(&mut self, ev: KeyEvent) -> Vec<Command> {
        if matches!(ev.code, KeyCode::Char('y') | KeyCode::Char('Y')) {
            self.quit = true;
        }
        Vec::new()
    }
}

/// Newest at the bottom; `back` messages scrolled up from the end.
pub(crate) fn draw_messages(f: &mut Frame, app: &App, back: usize, area: Rect) {
    let t = &app.theme;
    let r = centered(
        area,
        area.width.saturating_sub(4).min(120),
        area.height.saturating_sub(2),
    );
    f.render_widget(Clear, r);
    let n = app.messages.len();
    let end = n.saturating_sub(back);
    let lines: Vec<Line> = app
        .messages
        .iter()
        .take(end)
        .map(|m| {
            let s = m.at_ms.div_euclid(1000).rem_euclid(86_400);
            Line::from(vec![
                Span::styled(
                    format!("{:02}:{:02}:{:02} ", s / 3600, (s / 60) % 60, s % 60),
                    t.dim(),
                ),
                Span::styled(
                    m.text.clone(),
                    if m.error { t.error() } else { Style::default() },
                ),
            ])
        })
        .collect();
    let title = format!(
        " Messages ({n}, newest last) · j/k scroll · any other key closes{} ",
        if back > 0 {
            format!(" · {back} newer below")
        } else {
            String::new()
        }
    );
    let inner_h = r.height.saturating_sub(2);
    let body = if lines.is_empty() {
        Paragraph::new("Nothing said yet.").style(t.dim())
    } else {
        // Wrapped, so a long error is read whole; scrolled to show the last lines.
        let w = r.width.saturating_sub(2).max(1) as usize;
        let rows: usize = lines.iter().map(|l| l.width().div_ceil(w).max(1)).sum();
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .scroll(((rows as u16).saturating_sub(inner_h), 0))
    };
    f.render_widget(body.block(block(app, title)), r);
}

pub(crate) fn draw_quit(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let r = centered(area, 62, 7);
    f.render_widget(Clear, r);
    let lines = vec![
        Line::from(format!(
            "{} command(s) sent from here have not answered yet.",
            app.in_flight
        )),
        Line::from("Machines and jobs go on without the cockpit; open it again"),
        Line::from("to see how they ended."),
        Line::from(Span::styled("y quits · any other key stays", t.dim())),
    ];
    f.render_widget(
        Paragraph::new(lines).block(block(app, " Quit now? ".into()).border_style(t.warn())),
        r,
    );
}
