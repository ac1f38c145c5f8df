//! The `?` help: every binding of the keymap, grouped by pane.

use crate::tui::app::*;
use crate::tui::keymap::{Keymap, View};
use crate::tui::ui::*;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph, Wrap};

pub(crate) fn draw_help(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let r = centered(area, 76, area.height.saturating_sub(2));
    f.render_widget(Clear, r);
    let mut lines = Vec::new();
    let mut sections: Vec<(String, Vec<&crate::tui::keymap::Binding>)> = vec![(
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
