//! The one-line prompts: `/` filter, log search and the `:` command line.

use crate::tui::app::*;
use crate::tui::keymap::View;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineKind {
    Filter,
    Command,
    Search,
}

impl LineKind {
    pub(crate) fn mode(self, s: String) -> Mode {
        match self {
            LineKind::Filter => Mode::Filter(s),
            LineKind::Command => Mode::Command(s),
            LineKind::Search => Mode::Search(s),
        }
    }
}

/// The `:` commands: name, what it does, and whether `--readonly` hides it. Views also
/// answer to their aliases (`:i`, `:ls`, `:j`, …); any unique prefix runs (`:co` → cost).
pub const COMMANDS: [(&str, &str, bool); 9] = [
    ("instances", "the instances pane", false),
    ("jobs", "the jobs pane", false),
    ("logs", "the highlighted job's log", false),
    ("metrics", "the highlighted job's charts", false),
    ("cost", "the cost pane", false),
    ("launch", "the launch form", true),
    ("messages", "everything said this session", false),
    ("help", "this help", false),
    ("quit", "quit", false),
];

/// Commands past `:` shown to this user (`--readonly` leaves out what it hides).
pub fn commands(
    readonly: bool,
) -> impl Iterator<Item = &'static (&'static str, &'static str, bool)> {
    COMMANDS.iter().filter(move |c| !(readonly && c.2))
}

/// Most command lines remembered (↑/↓ at `:`).
pub const HISTORY_KEPT: usize = 100;

impl App {
    pub(crate) fn on_line_key(
        &mut self,
        ev: KeyEvent,
        mut line: String,
        kind: LineKind,
    ) -> Vec<Command> {
        let ctrl = ev.modifiers.contains(KeyModifiers::CONTROL);
        match ev.code {
            KeyCode::Esc => {
                if kind == LineKind::Filter {
                    self.set_filter(String::new());
                }
                self.history_pos = None;
                Vec::new()
            }
            KeyCode::Enter => match kind {
                LineKind::Filter => {
                    self.set_filter(line);
                    Vec::new()
                }
                LineKind::Search => {
                    if line.is_empty() {
                        self.logs.search = None;
                    } else {
                        self.logs.search = Some(line);
                        let from = self.logs.top;
                        self.jump_to_match(from, true);
                    }
                    Vec::new()
                }
                LineKind::Command => {
                    let l = line.trim().to_string();
                    self.history_pos = None;
                    if !l.is_empty() && self.history.last() != Some(&l) {
                        self.history.push(l.clone());
                        if self.history.len() > HISTORY_KEPT {
                            self.history.remove(0);
                        }
                    }
                    self.run_command_line(&l)
                }
            },
            // ctrl-u clears the line, as in a shell.
            KeyCode::Char('u') if ctrl => {
                if kind == LineKind::Filter {
                    self.set_filter(String::new());
                }
                self.mode = kind.mode(String::new());
                Vec::new()
            }
            KeyCode::Tab if kind == LineKind::Command => {
                let word = line.trim();
                let hits: Vec<&str> = commands(self.readonly)
                    .map(|c| c.0)
                    .filter(|c| c.starts_with(word))
                    .collect();
                match hits.as_slice() {
                    [] => self.say(format!("no command starts with `{word}`"), true),
                    [one] => line = one.to_string(),
                    many => {
                        let many: Vec<String> = many.iter().map(|s| s.to_string()).collect();
                        line = super::launch::common_prefix(&many);
                        self.say(many.join("  "), false);
                    }
                }
                self.mode = kind.mode(line);
                Vec::new()
            }
            KeyCode::Up | KeyCode::Down if kind == LineKind::Command => {
                let n = self.history.len();
                let pos = match (ev.code, self.history_pos) {
                    (KeyCode::Up, None) if n > 0 => Some(n - 1),
                    (KeyCode::Up, Some(p)) => Some(p.saturating_sub(1)),
                    (KeyCode::Down, Some(p)) if p + 1 < n => Some(p + 1),
                    _ => None,
                };
                self.history_pos = pos;
                line = pos.map_or_else(String::new, |p| self.history[p].clone());
                self.mode = kind.mode(line);
                Vec::new()
            }
            KeyCode::Backspace => {
                line.pop();
                if kind == LineKind::Filter {
                    self.set_filter(line.clone());
                }
                self.mode = kind.mode(line);
                Vec::new()
            }
            KeyCode::Char(c) if !ctrl => {
                line.push(c);
                if kind == LineKind::Filter {
                    // Filter as you type.
                    self.set_filter(line.clone());
                }
                self.mode = kind.mode(line);
                Vec::new()
            }
            _ => {
                self.mode = kind.mode(line);
                Vec::new()
            }
        }
    }

    pub(crate) fn set_filter(&mut self, f: String) {
        match self.view {
            View::Instances => self.inst_filter = f,
            _ => self.job_filter = f,
        }
        self.refilter();
    }

    pub(crate) fn run_command_line(&mut self, cmd: &str) -> Vec<Command> {
        let word = cmd.split_whitespace().next().unwrap_or("");
        if word.is_empty() {
            return Vec::new();
        }
        if let Some(v) = View::from_command(word) {
            return self.switch_view(v);
        }
        if matches!(word, "q" | "q!" | "h") {
            return self.run_named(if word == "h" { "help" } else { "quit" });
        }
        let hits: Vec<&str> = commands(self.readonly)
            .map(|c| c.0)
            .filter(|c| c.starts_with(word))
            .collect();
        match hits.as_slice() {
            [one] => self.run_named(one),
            [] => {
                let known: Vec<&str> = commands(self.readonly).map(|c| c.0).collect();
                self.say(
                    format!("unknown command `:{word}` ({})", known.join(", ")),
                    true,
                );
                Vec::new()
            }
            many => {
                self.say(
                    format!("`:{word}` could be {}: type more", many.join(", ")),
                    true,
                );
                Vec::new()
            }
        }
    }

    fn run_named(&mut self, name: &str) -> Vec<Command> {
        if let Some(v) = View::from_command(name) {
            return self.switch_view(v);
        }
        match name {
            "quit" => self.quit = true,
            "launch" => return self.open_launch_form(),
            "help" => self.mode = Mode::Help(0),
            "messages" => self.mode = Mode::Messages(0),
            _ => {}
        }
        Vec::new()
    }
}
