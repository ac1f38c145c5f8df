//! A masked prompt for an SSH key's passphrase or a login password.

use crate::tui::app::App;
use crate::tui::ui::{block, centered};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Clear, Paragraph};
use ratatui_textarea::TextArea;

/// A masked field for an SSH key's passphrase or a login password; the answer goes back
/// to the connection.
pub struct PassphrasePrompt {
    pub asked: crate::ssh::remote::Asked,
    pub input: TextArea<'static>,
    pub(crate) reply: Option<tokio::sync::oneshot::Sender<Option<String>>>,
}

impl std::fmt::Debug for PassphrasePrompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PassphrasePrompt({})", self.asked.subject())
    }
}

impl PassphrasePrompt {
    pub(crate) fn answer(mut self, value: Option<String>) {
        if let Some(r) = self.reply.take() {
            let _ = r.send(value);
        }
    }
}

pub(crate) fn draw_passphrase(f: &mut Frame, app: &App, p: &PassphrasePrompt, area: Rect) {
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
