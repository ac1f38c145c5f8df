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

impl App {
    pub(crate) fn on_line_key(
        &mut self,
        ev: KeyEvent,
        mut line: String,
        kind: LineKind,
    ) -> Vec<Command> {
        match ev.code {
            KeyCode::Esc => {
                if kind == LineKind::Filter {
                    self.set_filter(String::new());
                }
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
                LineKind::Command => self.run_command_line(line.trim()),
            },
            KeyCode::Backspace => {
                line.pop();
                if kind == LineKind::Filter {
                    self.set_filter(line.clone());
                }
                self.mode = kind.mode(line);
                Vec::new()
            }
            KeyCode::Char(c) if !ev.modifiers.contains(KeyModifiers::CONTROL) => {
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
        if let Some(v) = View::from_command(word) {
            return self.switch_view(v);
        }
        match word {
            "" => Vec::new(),
            "q" | "quit" | "q!" => {
                self.quit = true;
                Vec::new()
            }
            "launch" if !self.readonly => {
                self.open_launch_form();
                Vec::new()
            }
            "help" | "h" => {
                self.mode = Mode::Help;
                Vec::new()
            }
            other => {
                self.say(
                    format!("unknown command `:{other}` (instances, jobs, logs, metrics, cost, launch, help, quit)"),
                    true,
                );
                Vec::new()
            }
        }
    }
}
