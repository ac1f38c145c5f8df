//! Key bindings: one table, from which the status bar hints, the `?` help screen and the
//! key dispatch are all built, so they can never disagree. Overridable from the user
//! config (`[tui.keys] terminate = "ctrl-d"`).

use crate::config::TuiConfig;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::fmt;

/// The views (panes) of the cockpit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    Instances,
    Jobs,
    Logs,
    Metrics,
    Cost,
}

impl View {
    pub const ALL: [View; 5] = [
        View::Instances,
        View::Jobs,
        View::Logs,
        View::Metrics,
        View::Cost,
    ];
    pub fn title(self) -> &'static str {
        match self {
            View::Instances => "Instances",
            View::Jobs => "Jobs",
            View::Logs => "Logs",
            View::Metrics => "Metrics",
            View::Cost => "Cost",
        }
    }
    pub fn index(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }
    /// `:instances`, `:i`, `:jobs`, ...
    pub fn from_command(s: &str) -> Option<View> {
        Some(match s {
            "instances" | "instance" | "i" | "ls" => View::Instances,
            "jobs" | "job" | "j" => View::Jobs,
            "logs" | "log" | "l" => View::Logs,
            "metrics" | "metric" | "m" => View::Metrics,
            "cost" | "costs" | "c" => View::Cost,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Quit,
    Back,
    Help,
    CommandLine,
    Filter,
    NextView,
    PrevView,
    ShowInstances,
    ShowJobs,
    ShowLogs,
    ShowMetrics,
    ShowCost,
    Up,
    Down,
    Top,
    Bottom,
    PageUp,
    PageDown,
    Open,
    Launch,
    RunJob,
    Sync,
    Terminate,
    Adopt,
    CancelJob,
    Migrate,
    Pull,
    Autoscroll,
    Wrap,
    Timestamps,
    Fullscreen,
    Search,
    NextMatch,
    PrevMatch,
    NextMetric,
    PrevMetric,
    Close,
    Messages,
    Zoom,
    Grow,
    Shrink,
    Mark,
    Smoothing,
    LogScale,
    ZoomIn,
    ZoomOut,
}

impl Action {
    /// The name used in `[tui.keys]`.
    pub fn name(self) -> &'static str {
        use Action::*;
        match self {
            Quit => "quit",
            Back => "back",
            Help => "help",
            CommandLine => "command",
            Filter => "filter",
            NextView => "next_view",
            PrevView => "prev_view",
            ShowInstances => "instances",
            ShowJobs => "jobs",
            ShowLogs => "logs",
            ShowMetrics => "metrics",
            ShowCost => "cost",
            Up => "up",
            Down => "down",
            Top => "top",
            Bottom => "bottom",
            PageUp => "page_up",
            PageDown => "page_down",
            Open => "open",
            Launch => "launch",
            RunJob => "run",
            Sync => "sync",
            Terminate => "terminate",
            Adopt => "adopt",
            CancelJob => "cancel",
            Migrate => "migrate",
            Pull => "pull",
            Autoscroll => "autoscroll",
            Wrap => "wrap",
            Timestamps => "timestamps",
            Fullscreen => "fullscreen",
            Search => "search",
            NextMatch => "next_match",
            PrevMatch => "prev_match",
            NextMetric => "next_metric",
            PrevMetric => "prev_metric",
            Close => "close",
            Messages => "messages",
            Zoom => "zoom",
            Grow => "grow",
            Shrink => "shrink",
            Mark => "mark",
            Smoothing => "smoothing",
            LogScale => "log_scale",
            ZoomIn => "zoom_in",
            ZoomOut => "zoom_out",
        }
    }

    /// Actions that spend money, stop work or change a machine: hidden by `--readonly`.
    pub fn is_destructive(self) -> bool {
        matches!(
            self,
            Action::Launch
                | Action::RunJob
                | Action::Sync
                | Action::Terminate
                | Action::Adopt
                | Action::CancelJob
                | Action::Migrate
        )
    }
}

/// One key: a code plus modifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub code: KeyCode,
    pub mods: KeyModifiers,
}

impl Key {
    pub fn parse(s: &str) -> Result<Key, String> {
        let s = s.trim();
        let mut mods = KeyModifiers::NONE;
        let mut rest = s;
        loop {
            if let Some(r) = rest.strip_prefix("ctrl-") {
                mods |= KeyModifiers::CONTROL;
                rest = r;
            } else if let Some(r) = rest.strip_prefix("alt-") {
                mods |= KeyModifiers::ALT;
                rest = r;
            } else if let Some(r) = rest.strip_prefix("shift-") {
                mods |= KeyModifiers::SHIFT;
                rest = r;
            } else {
                break;
            }
        }
        let code = match rest {
            "esc" => KeyCode::Esc,
            "enter" => KeyCode::Enter,
            "tab" if mods.contains(KeyModifiers::SHIFT) => {
                mods.remove(KeyModifiers::SHIFT);
                KeyCode::BackTab
            }
            "tab" => KeyCode::Tab,
            "backtab" => KeyCode::BackTab,
            "up" => KeyCode::Up,
            "down" => KeyCode::Down,
            "left" => KeyCode::Left,
            "right" => KeyCode::Right,
            "pgup" | "pageup" => KeyCode::PageUp,
            "pgdn" | "pagedown" => KeyCode::PageDown,
            "home" => KeyCode::Home,
            "end" => KeyCode::End,
            "space" => KeyCode::Char(' '),
            "backspace" => KeyCode::Backspace,
            f if f.len() >= 2 && f.starts_with('f') && f[1..].parse::<u8>().is_ok() => {
                KeyCode::F(f[1..].parse().unwrap_or(1))
            }
            c if c.chars().count() == 1 => KeyCode::Char(c.chars().next().unwrap_or(' ')),
            _ => return Err(format!("unknown key `{s}`")),
        };
        Ok(Key { code, mods })
    }

    /// Does a terminal key event press this key? Shift is implied by an upper-case char.
    pub fn matches(&self, ev: &KeyEvent) -> bool {
        let mut mods = ev.modifiers;
        if let KeyCode::Char(c) = ev.code
            && !c.is_ascii_lowercase()
        {
            mods.remove(KeyModifiers::SHIFT);
        }
        // crossterm reports shift-tab as BackTab with SHIFT set: the shift is the key.
        if ev.code == KeyCode::BackTab {
            mods.remove(KeyModifiers::SHIFT);
        }
        let code = match ev.code {
            KeyCode::Char(c) if self.mods.contains(KeyModifiers::CONTROL) => {
                KeyCode::Char(c.to_ascii_lowercase())
            }
            c => c,
        };
        code == self.code && mods == self.mods
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mods.contains(KeyModifiers::CONTROL) {
            f.write_str("ctrl-")?;
        }
        if self.mods.contains(KeyModifiers::ALT) {
            f.write_str("alt-")?;
        }
        match self.code {
            KeyCode::Char(' ') => f.write_str("space"),
            KeyCode::Char(c) => write!(f, "{c}"),
            KeyCode::Esc => f.write_str("esc"),
            KeyCode::Enter => f.write_str("enter"),
            KeyCode::Tab => f.write_str("tab"),
            KeyCode::BackTab => f.write_str("shift-tab"),
            KeyCode::Up => f.write_str("↑"),
            KeyCode::Down => f.write_str("↓"),
            KeyCode::Left => f.write_str("←"),
            KeyCode::Right => f.write_str("→"),
            KeyCode::PageUp => f.write_str("pgup"),
            KeyCode::PageDown => f.write_str("pgdn"),
            KeyCode::Home => f.write_str("home"),
            KeyCode::End => f.write_str("end"),
            KeyCode::F(n) => write!(f, "f{n}"),
            _ => f.write_str("?"),
        }
    }
}

/// One binding: the keys, what they do, where, and the hint shown for them.
#[derive(Debug, Clone)]
pub struct Binding {
    pub action: Action,
    pub keys: Vec<Key>,
    /// None: every view.
    pub views: Option<Vec<View>>,
    pub hint: &'static str,
    /// Shown in the status bar (the help screen shows all).
    pub in_bar: bool,
}

#[derive(Debug, Clone)]
pub struct Keymap {
    pub bindings: Vec<Binding>,
}

fn b(
    action: Action,
    keys: &[&str],
    views: Option<&[View]>,
    hint: &'static str,
    in_bar: bool,
) -> Binding {
    Binding {
        action,
        keys: keys.iter().filter_map(|k| Key::parse(k).ok()).collect(),
        views: views.map(|v| v.to_vec()),
        hint,
        in_bar,
    }
}

impl Default for Keymap {
    fn default() -> Self {
        use Action::*;
        use View::*;
        let lists: &[View] = &[Instances, Jobs];
        Keymap {
            bindings: vec![
                b(Help, &["?"], None, "help", true),
                b(CommandLine, &[":"], None, "command", true),
                b(Filter, &["/"], Some(lists), "filter", true),
                b(Quit, &["ctrl-c"], None, "quit", true),
                b(Close, &["q"], None, "back (quit at the top)", false),
                b(Back, &["esc"], None, "back", false),
                b(Messages, &["!"], None, "messages", false),
                b(Zoom, &["z"], None, "zoom pane", false),
                b(Grow, &["+", "="], None, "grow pane", false),
                b(Shrink, &["-"], None, "shrink pane", false),
                b(NextView, &["tab"], None, "next pane", false),
                b(PrevView, &["shift-tab"], None, "previous pane", false),
                b(ShowInstances, &["1"], None, "instances", false),
                b(ShowJobs, &["2"], None, "jobs", false),
                b(ShowLogs, &["3"], None, "logs", false),
                b(ShowMetrics, &["4"], None, "metrics", false),
                b(ShowCost, &["5"], None, "cost", false),
                b(Up, &["k", "up"], None, "up", false),
                b(Down, &["j", "down"], None, "down", false),
                b(Top, &["g", "home"], None, "top", false),
                b(Bottom, &["G", "end"], None, "bottom", false),
                b(PageUp, &["pgup", "ctrl-u"], None, "page up", false),
                b(PageDown, &["pgdn", "ctrl-f"], None, "page down", false),
                b(Open, &["enter"], Some(lists), "open", true),
                b(Launch, &["L"], Some(&[Instances]), "launch", true),
                b(RunJob, &["r"], Some(&[Instances, Jobs]), "run job", true),
                b(Sync, &["y"], Some(&[Instances]), "sync code", true),
                b(
                    Terminate,
                    &["ctrl-d"],
                    Some(&[Instances]),
                    "terminate",
                    true,
                ),
                b(Adopt, &["a"], Some(&[Instances]), "adopt orphan", false),
                b(
                    CancelJob,
                    &["ctrl-k"],
                    Some(&[Jobs, Logs]),
                    "cancel job",
                    true,
                ),
                b(Migrate, &["m"], Some(&[Jobs, Logs]), "migrate job", true),
                b(Pull, &["p"], Some(&[Jobs]), "pull artifacts", true),
                b(Mark, &["space"], Some(&[Jobs]), "mark to compare", true),
                b(Autoscroll, &["s"], Some(&[Logs]), "autoscroll", true),
                b(Wrap, &["w"], Some(&[Logs]), "wrap", true),
                b(Timestamps, &["t"], Some(&[Logs]), "timestamps", true),
                b(Fullscreen, &["f"], Some(&[Logs]), "fullscreen", true),
                b(Search, &["/"], Some(&[Logs]), "search", true),
                b(NextMatch, &["n"], Some(&[Logs]), "next match", false),
                b(PrevMatch, &["N"], Some(&[Logs]), "previous match", false),
                b(
                    NextMetric,
                    &["l", "right"],
                    Some(&[Metrics]),
                    "next metric",
                    true,
                ),
                b(
                    PrevMetric,
                    &["h", "left"],
                    Some(&[Metrics]),
                    "previous metric",
                    true,
                ),
                b(Smoothing, &["s"], Some(&[Metrics]), "smoothing", true),
                b(LogScale, &["v"], Some(&[Metrics]), "log scale", true),
                b(ZoomIn, &["]"], Some(&[Metrics]), "fewer steps", true),
                b(ZoomOut, &["["], Some(&[Metrics]), "more steps", false),
            ],
        }
    }
}

impl Keymap {
    /// The default keymap with the user's overrides applied.
    pub fn from_config(cfg: &TuiConfig) -> Result<Keymap, String> {
        let mut km = Keymap::default();
        for (name, keys) in &cfg.keys {
            let binding = km
                .bindings
                .iter_mut()
                .find(|b| b.action.name() == name)
                .ok_or_else(|| format!("unknown action `{name}` in [tui.keys]"))?;
            let parsed: Result<Vec<Key>, String> =
                keys.keys().into_iter().map(Key::parse).collect();
            binding.keys = parsed.map_err(|e| format!("[tui.keys] {name}: {e}"))?;
        }
        Ok(km)
    }

    /// The action a key press means in `view`: view-specific bindings first.
    pub fn action_for(&self, ev: &KeyEvent, view: View, readonly: bool) -> Option<Action> {
        let visible = |b: &&Binding| !(readonly && b.action.is_destructive());
        let in_view = |b: &&Binding| b.views.as_ref().is_some_and(|v| v.contains(&view));
        self.bindings
            .iter()
            .filter(visible)
            .filter(in_view)
            .chain(
                self.bindings
                    .iter()
                    .filter(visible)
                    .filter(|b| b.views.is_none()),
            )
            .find(|b| b.keys.iter().any(|k| k.matches(ev)))
            .map(|b| b.action)
    }

    /// Bindings that apply in `view` (for the status bar and help).
    pub fn for_view(&self, view: View, readonly: bool) -> Vec<&Binding> {
        self.bindings
            .iter()
            .filter(|b| !(readonly && b.action.is_destructive()))
            .filter(|b| b.views.as_ref().is_none_or(|v| v.contains(&view)))
            .collect()
    }

    /// Why a key that does nothing in `view` does nothing: hidden by `--readonly`, or
    /// bound in another pane (which one); None for a key bound nowhere.
    pub fn explain(&self, ev: &KeyEvent, view: View, readonly: bool) -> Option<String> {
        let b = self
            .bindings
            .iter()
            .find(|b| b.keys.iter().any(|k| k.matches(ev)))?;
        let key = b
            .keys
            .iter()
            .find(|k| k.matches(ev))
            .map_or_else(String::new, |k| k.to_string());
        if readonly && b.action.is_destructive() {
            return Some(format!("read-only: {key} ({}) is off", b.hint));
        }
        let views = b.views.as_ref()?;
        if views.contains(&view) {
            return None;
        }
        let where_: Vec<String> = views
            .iter()
            .map(|v| format!("{} ({})", v.title(), v.index() + 1))
            .collect();
        Some(format!(
            "{key} ({}) works in {}, not in {}",
            b.hint,
            where_.join(" and "),
            view.title()
        ))
    }

    /// Two actions that one key would start in the same pane: (key, first, second).
    pub fn conflicts(&self) -> Vec<(Key, Action, Action)> {
        let mut out = Vec::new();
        for (i, a) in self.bindings.iter().enumerate() {
            for b in &self.bindings[i + 1..] {
                // A global binding meets every pane's own.
                let overlap = match (&a.views, &b.views) {
                    (Some(x), Some(y)) => x.iter().any(|v| y.contains(v)),
                    _ => true,
                };
                if !overlap {
                    continue;
                }
                for k in &a.keys {
                    if b.keys.contains(k) {
                        out.push((*k, a.action, b.action));
                    }
                }
            }
        }
        out
    }

    pub fn keys_text(b: &Binding) -> String {
        b.keys
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join("/")
    }

    pub fn first_key(&self, action: Action) -> String {
        self.bindings
            .iter()
            .find(|b| b.action == action)
            .and_then(|b| b.keys.first())
            .map_or_else(|| "?".into(), |k| k.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(code: KeyCode, mods: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, mods)
    }

    #[test]
    fn parse_and_match() {
        let k = Key::parse("ctrl-d").unwrap();
        assert!(k.matches(&ev(KeyCode::Char('d'), KeyModifiers::CONTROL)));
        assert!(!k.matches(&ev(KeyCode::Char('d'), KeyModifiers::NONE)));
        let g = Key::parse("G").unwrap();
        assert!(g.matches(&ev(KeyCode::Char('G'), KeyModifiers::SHIFT)));
        assert!(
            Key::parse("shift-tab")
                .unwrap()
                .matches(&ev(KeyCode::BackTab, KeyModifiers::NONE))
        );
        // What crossterm really sends for shift-tab.
        assert!(
            Key::parse("shift-tab")
                .unwrap()
                .matches(&ev(KeyCode::BackTab, KeyModifiers::SHIFT))
        );
        assert!(Key::parse("hyper-x").is_err());
    }

    #[test]
    fn readonly_hides_destructive_actions() {
        let km = Keymap::default();
        let ctrl_d = ev(KeyCode::Char('d'), KeyModifiers::CONTROL);
        assert_eq!(
            km.action_for(&ctrl_d, View::Instances, false),
            Some(Action::Terminate)
        );
        assert_eq!(km.action_for(&ctrl_d, View::Instances, true), None);
        assert!(
            km.for_view(View::Instances, true)
                .iter()
                .all(|b| !b.action.is_destructive())
        );
    }

    #[test]
    fn overrides_apply_and_unknown_actions_are_refused() {
        let mut cfg = TuiConfig::default();
        cfg.keys.insert(
            "terminate".into(),
            crate::config::KeyList::One("ctrl-x".into()),
        );
        let km = Keymap::from_config(&cfg).unwrap();
        let x = ev(KeyCode::Char('x'), KeyModifiers::CONTROL);
        assert_eq!(
            km.action_for(&x, View::Instances, false),
            Some(Action::Terminate)
        );
        cfg.keys
            .insert("explode".into(), crate::config::KeyList::One("x".into()));
        assert!(Keymap::from_config(&cfg).is_err());
    }
}
