//! The Logs pane: a bounded window onto the highlighted job's stored log, search and scrolling.

use crate::model::TimestampMs;
use crate::tui::app::*;
use crate::tui::keymap::Action;
use crate::tui::ui::*;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};
use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub struct LogLine {
    pub text: String,
    /// When the cockpit received it (None for lines read back from history).
    pub ts: Option<TimestampMs>,
}

/// The selected job's log: a bounded window onto the stored log.
#[derive(Debug, Clone)]
pub struct LogView {
    pub job: Option<String>,
    pub lines: VecDeque<LogLine>,
    pub cap: usize,
    /// Index of `lines[0]` in the whole log (0-based).
    pub first_line: u64,
    /// Where reading continues: (attempt, byte offset in that attempt's log).
    pub read_attempt: i64,
    pub read_offset: u64,
    pub loading: bool,
    /// Index (into `lines`) of the first visible line when not following.
    pub top: usize,
    pub autoscroll: bool,
    pub wrap: bool,
    pub timestamps: bool,
    pub fullscreen: bool,
    pub search: Option<String>,
    /// Index into `lines` of the current match.
    pub current_match: Option<usize>,
}

impl LogView {
    pub(crate) fn new(cap: usize) -> LogView {
        LogView {
            job: None,
            lines: VecDeque::new(),
            cap: cap.max(100),
            first_line: 0,
            read_attempt: 1,
            read_offset: 0,
            loading: false,
            top: 0,
            autoscroll: true,
            wrap: false,
            timestamps: false,
            fullscreen: false,
            search: None,
            current_match: None,
        }
    }

    pub(crate) fn reset(&mut self, job: Option<String>) {
        let (wrap, ts, fs, cap) = (self.wrap, self.timestamps, self.fullscreen, self.cap);
        *self = LogView::new(cap);
        self.job = job;
        self.wrap = wrap;
        self.timestamps = ts;
        self.fullscreen = fs;
    }

    pub fn push(&mut self, text: String, ts: Option<TimestampMs>) {
        self.lines.push_back(LogLine { text, ts });
        if self.lines.len() > self.cap {
            self.lines.pop_front();
            self.first_line += 1;
            self.top = self.top.saturating_sub(1);
            self.current_match = self.current_match.and_then(|m| m.checked_sub(1));
        }
    }

    pub(crate) fn find(&self, from: usize, forward: bool) -> Option<usize> {
        let needle = self.search.as_deref()?.to_lowercase();
        let n = self.lines.len();
        let hit = |i: usize| self.lines[i].text.to_lowercase().contains(&needle);
        if forward {
            (from..n).chain(0..from).find(|&i| hit(i))
        } else {
            (0..=from.min(n.saturating_sub(1)))
                .rev()
                .chain((from + 1..n).rev())
                .find(|&i| hit(i))
        }
    }
}

impl App {
    pub(crate) fn scroll_logs(&mut self, delta: isize) -> Vec<Command> {
        let len = self.logs.lines.len();
        let page = self.page.max(1);
        let max_top = len.saturating_sub(page);
        if self.logs.autoscroll {
            self.logs.top = max_top;
        }
        let new_top = self.logs.top as isize + delta;
        if new_top < 0 && self.logs.first_line > 0 && !self.logs.loading {
            // Scrolled past what is held: read older lines back from the stored log.
            self.logs.autoscroll = false;
            self.logs.top = 0;
            if let Some(job) = self.logs.job.clone() {
                self.logs.loading = true;
                return vec![Command::LoadOlderLog {
                    job,
                    before: self.logs.first_line,
                    count: (self.logs.cap / 10).max(page * 4),
                }];
            }
        }
        self.logs.top = new_top.clamp(0, max_top as isize) as usize;
        self.logs.autoscroll = self.logs.top >= max_top && delta > 0;
        Vec::new()
    }

    pub(crate) fn jump_to_match(&mut self, from: usize, forward: bool) {
        match self.logs.find(from.min(self.logs.lines.len()), forward) {
            Some(i) => {
                self.logs.current_match = Some(i);
                self.logs.autoscroll = false;
                let page = self.page.max(1);
                self.logs.top = i
                    .saturating_sub(page / 2)
                    .min(self.logs.lines.len().saturating_sub(page));
            }
            None => {
                let s = self.logs.search.clone().unwrap_or_default();
                self.say(format!("no match for `{s}`"), true);
            }
        }
    }
}

pub(crate) fn draw_logs(f: &mut Frame, app: &mut App, area: Rect, fullscreen: bool) {
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
        let b = pane_block(app, crate::tui::keymap::View::Logs, title);
        let inner = b.inner(area);
        f.render_widget(b, area);
        inner
    };
    let height = inner.height as usize;
    if app.view == crate::tui::keymap::View::Logs {
        app.page = height.max(1);
    }
    let lv = &mut app.logs;
    if lv.job.is_none() {
        f.render_widget(
            Paragraph::new("No job yet: the log of the job highlighted in Jobs (2) shows here.")
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

impl App {
    /// The log pane's toggles and search moves.
    pub(crate) fn on_logs_action(&mut self, action: Action) -> Option<Vec<Command>> {
        Some(match action {
            Action::Autoscroll => {
                self.logs.autoscroll = !self.logs.autoscroll;
                Vec::new()
            }
            Action::Wrap => {
                self.logs.wrap = !self.logs.wrap;
                Vec::new()
            }
            Action::Timestamps => {
                self.logs.timestamps = !self.logs.timestamps;
                Vec::new()
            }
            Action::Fullscreen => {
                self.logs.fullscreen = !self.logs.fullscreen;
                Vec::new()
            }
            Action::NextMatch | Action::PrevMatch => {
                let forward = action == Action::NextMatch;
                let from = match self.logs.current_match {
                    Some(m) if forward => m + 1,
                    Some(m) => m.saturating_sub(1),
                    None => self.logs.top,
                };
                self.jump_to_match(from, forward);
                Vec::new()
            }
            _ => return None,
        })
    }
}
