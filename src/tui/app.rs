//! The cockpit's state and its update function. No IO here: key presses and engine
//! results come in as [`Msg`], side effects go out as [`Command`]s that the runtime
//! executes off the UI task. Everything is testable with plain key sequences.

use super::keymap::{Action, Keymap, View};
pub use super::panes::logs::{LogLine, LogView};
pub use super::panes::metrics::MetricsView;
pub use super::popups::confirm::Confirm;
pub use super::popups::launch::{CHEAPEST, FORM_FIELDS, LaunchForm, Validator};
pub use super::popups::passphrase::PassphrasePrompt;
pub(crate) use super::popups::prompt::LineKind;
use super::theme::Theme;
use crate::cost::CostReport;
use crate::engine::EngineEvent;
use crate::model::{JobState, MetricPoint, Money, Progress, TimestampMs};
use crate::provider::LaunchRequest;
use crate::store::{InstanceRecord, JobRecord};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui_textarea::TextArea;

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRow {
    pub rec: InstanceRecord,
    pub cost: Money,
    pub uptime_ms: i64,
    /// Known to the provider, not to the store.
    pub orphan: bool,
    /// When the idle guard ends it, if it stays without a job.
    pub idle_deadline: Option<crate::model::TimestampMs>,
}

#[derive(Debug, Clone)]
pub struct JobRow {
    pub rec: JobRecord,
    pub progress: Progress,
    pub elapsed_ms: Option<i64>,
    pub eta_ms: Option<i64>,
    pub cost: Money,
    pub projected: Option<Money>,
    /// The latest loss-like metric: name, value.
    pub metric: Option<(String, f64)>,
    /// Its recent values, for the sparkline.
    pub spark: Vec<f64>,
}

/// Equality for "would the screen change": NaN equals NaN here (a job whose loss went NaN
/// must not force a redraw every second).
impl PartialEq for JobRow {
    fn eq(&self, o: &JobRow) -> bool {
        let same_f = |a: f64, b: f64| a.to_bits() == b.to_bits();
        self.rec == o.rec
            && self.progress == o.progress
            && self.elapsed_ms == o.elapsed_ms
            && self.eta_ms == o.eta_ms
            && self.cost == o.cost
            && self.projected == o.projected
            && match (&self.metric, &o.metric) {
                (Some((n1, v1)), Some((n2, v2))) => n1 == n2 && same_f(*v1, *v2),
                (None, None) => true,
                _ => false,
            }
            && self.spark.len() == o.spark.len()
            && self.spark.iter().zip(&o.spark).all(|(a, b)| same_f(*a, *b))
    }
}

/// Everything the lists and the cost pane show, read from the store off the UI task.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub now_ms: TimestampMs,
    pub instances: Vec<InstanceRow>,
    pub jobs: Vec<JobRow>,
    pub cost: Option<CostReport>,
    pub budget_day: Option<Money>,
    pub budget_job: Option<Money>,
}

impl Snapshot {
    /// Would drawing `other` instead of `self` change anything on screen? Time alone
    /// changes nothing unless something is live (uptime, cost and ETA then move).
    pub fn same_screen(&self, other: &Snapshot) -> bool {
        let live = self.instances.iter().any(|i| i.rec.state.is_live())
            || self.jobs.iter().any(|j| !j.rec.state.is_terminal());
        (!live || self.now_ms / 1000 == other.now_ms / 1000)
            && self.instances == other.instances
            && self.jobs == other.jobs
            && self.cost == other.cost
            && self.budget_day == other.budget_day
            && self.budget_job == other.budget_job
    }
}

/// Side effects, run by the runtime.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Launch {
        provider: String,
        req: LaunchRequest,
    },
    Terminate {
        instance: String,
    },
    Adopt {
        instance: String,
    },
    RunJob {
        instance: String,
    },
    Cancel {
        job: String,
    },
    Migrate {
        job: String,
    },
    Pull {
        job: String,
    },
    Sync {
        instance: String,
    },
    Refresh,
    /// Read the job's stored log from `from` (attempt, byte offset) to what is committed.
    LoadLog {
        job: String,
        attempt: i64,
        from: u64,
    },
    /// Read lines before line `before` (0-based index in the whole log) from the stored log.
    LoadOlderLog {
        job: String,
        before: u64,
        count: usize,
    },
    LoadMetrics {
        job: String,
        after_rowid: i64,
    },
}

#[derive(Debug)]
pub enum Msg {
    Key(KeyEvent),
    Resize,
    Engine(EngineEvent),
    Snapshot(Box<Snapshot>),
    LogAppend {
        job: String,
        attempt: i64,
        end: u64,
        lines: Vec<String>,
        /// Lines of the whole log before these (only for the first load).
        skipped: Option<u64>,
    },
    LogOlder {
        job: String,
        first_line: u64,
        lines: Vec<String>,
    },
    MetricsAppend {
        job: String,
        last_rowid: i64,
        points: Vec<MetricPoint>,
        /// More batches of the same load follow: no new load may start before the last
        /// (it would read the same chunks again).
        more: bool,
    },
    Done(Result<String, String>),
    /// A job this cockpit started: show it.
    JobStarted(String),
    /// An SSH key needs its passphrase, or a login its password.
    Passphrase(crate::ssh::remote::PassphraseRequest),
    /// A launch met a host key never seen before: ask before trusting it.
    UnknownHostKey {
        provider: String,
        req: LaunchRequest,
        message: String,
    },
}

#[derive(Debug)]
pub enum Mode {
    Normal,
    Filter(String),
    Command(String),
    Search(String),
    Launch(Box<LaunchForm>),
    Confirm(Confirm),
    Passphrase(Box<PassphrasePrompt>),
    Help,
}

pub struct App {
    pub view: View,
    pub mode: Mode,
    pub readonly: bool,
    pub keymap: Keymap,
    pub theme: Theme,
    pub snap: Snapshot,
    pub inst_sel: usize,
    pub job_sel: usize,
    pub inst_filter: String,
    pub job_filter: String,
    pub inst_visible: Vec<usize>,
    pub job_visible: Vec<usize>,
    pub logs: LogView,
    pub metrics: MetricsView,
    /// The job the Logs and Metrics panes show.
    pub focus_job: Option<String>,
    pub status: Option<(String, bool)>,
    pub dirty: bool,
    /// A key was pressed since the last frame: draw now, not at the next frame slot.
    pub urgent: bool,
    pub quit: bool,
    pub project: Option<String>,
    pub providers: Vec<String>,
    pub catalog: Vec<(String, Vec<String>)>,
    /// Every provider's priced offers (for `cheapest` in the launch form).
    pub offers: Vec<crate::provider::Offer>,
    pub default_provider: String,
    pub validator: Validator,
    /// Rows per page of the current list (set when drawing).
    pub page: usize,
    /// Ring the terminal's bell when a job ends (`[tui] bell`).
    pub bell: bool,
    /// A bell is due (the event loop rings it once).
    pub ring: bool,
}

fn is_press(ev: &KeyEvent) -> bool {
    ev.kind != crossterm::event::KeyEventKind::Release
}

/// `job j-… placing coco: 41% (812.0 MB of 2.0 GB), 301.2 MB/s, 4 s left`.
pub fn transfer_text(job: &str, what: &str, done: u64, total: u64, elapsed_ms: u64) -> String {
    let mb = |b: u64| {
        if b >= 1 << 30 {
            format!("{:.1} GB", b as f64 / 1e9)
        } else {
            format!("{:.1} MB", b as f64 / 1e6)
        }
    };
    if done >= total {
        return format!("job {job}: {what} placed ({})", mb(total));
    }
    let pct = done.saturating_mul(100) / total.max(1);
    let mut t = format!(
        "job {job} placing {what}: {pct}% ({} of {})",
        mb(done),
        mb(total)
    );
    if elapsed_ms >= 500 && done > 0 {
        let rate = done as f64 / (elapsed_ms as f64 / 1000.0);
        let left = (total - done) as f64 / rate.max(1.0);
        t.push_str(&format!(", {:.1} MB/s, {:.0} s left", rate / 1e6, left));
    }
    t
}

/// Case-insensitive substring filter; a leading `!` inverts it (as in k9s).
pub fn filter_match(filter: &str, text: &str) -> bool {
    if filter.is_empty() {
        return true;
    }
    let (inverse, needle) = match filter.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, filter),
    };
    text.to_lowercase().contains(&needle.to_lowercase()) != inverse
}

impl App {
    pub fn new(
        keymap: Keymap,
        theme: Theme,
        readonly: bool,
        log_cap: usize,
        validator: Validator,
    ) -> App {
        App {
            view: View::Instances,
            mode: Mode::Normal,
            readonly,
            keymap,
            theme,
            snap: Snapshot::default(),
            inst_sel: 0,
            job_sel: 0,
            inst_filter: String::new(),
            job_filter: String::new(),
            inst_visible: Vec::new(),
            job_visible: Vec::new(),
            logs: LogView::new(log_cap),
            metrics: MetricsView::default(),
            focus_job: None,
            status: None,
            dirty: true,
            urgent: false,
            quit: false,
            project: None,
            providers: vec!["local".into()],
            catalog: vec![("local".into(), vec!["local".into()])],
            offers: Vec::new(),
            default_provider: "local".into(),
            validator,
            page: 10,
            bell: false,
            ring: false,
        }
    }

    pub(crate) fn say(&mut self, msg: impl Into<String>, error: bool) {
        self.status = Some((msg.into(), error));
    }

    pub fn instance_text(r: &InstanceRow) -> String {
        format!(
            "{} {} {} {} {} {}",
            r.rec.id,
            r.rec.name,
            r.rec.provider,
            r.rec.instance_type,
            r.rec.state,
            if r.orphan { "orphan" } else { "" }
        )
    }

    pub fn job_text(r: &JobRow) -> String {
        format!(
            "{} {} {} {}",
            r.rec.id,
            r.rec.name,
            r.rec.state,
            r.rec.instance_id.as_deref().unwrap_or("")
        )
    }

    /// Recompute the filtered rows and keep the selection on a visible row.
    pub fn refilter(&mut self) {
        self.inst_visible = (0..self.snap.instances.len())
            .filter(|&i| {
                filter_match(
                    &self.inst_filter,
                    &Self::instance_text(&self.snap.instances[i]),
                )
            })
            .collect();
        self.job_visible = (0..self.snap.jobs.len())
            .filter(|&i| filter_match(&self.job_filter, &Self::job_text(&self.snap.jobs[i])))
            .collect();
        self.inst_sel = self.inst_sel.min(self.inst_visible.len().saturating_sub(1));
        self.job_sel = self.job_sel.min(self.job_visible.len().saturating_sub(1));
    }

    pub fn selected_instance(&self) -> Option<&InstanceRow> {
        self.inst_visible
            .get(self.inst_sel)
            .and_then(|&i| self.snap.instances.get(i))
    }

    pub fn selected_job(&self) -> Option<&JobRow> {
        self.job_visible
            .get(self.job_sel)
            .and_then(|&i| self.snap.jobs.get(i))
    }

    /// Ask before acting on the job in view (the focused one in Logs, else the selected):
    /// `what` gives the lines after the job's own and the command, or None when the action
    /// does not apply to it. The answer defaults to No. Returns whether it asked.
    pub(crate) fn job_confirm(
        &mut self,
        title: &str,
        what: impl FnOnce(&JobRow) -> Option<(Vec<String>, Command)>,
    ) -> bool {
        let job = match self.view {
            View::Logs => self.focus_job_row(),
            _ => self.selected_job(),
        };
        let Some(j) = job else {
            return false;
        };
        let Some((more, on_yes)) = what(j) else {
            return false;
        };
        let mut lines = vec![format!(
            "{} ({}) on {}",
            j.rec.name,
            j.rec.id,
            j.rec.instance_id.as_deref().unwrap_or("-")
        )];
        lines.extend(more);
        self.mode = Mode::Confirm(Confirm {
            title: title.into(),
            lines,
            yes: false,
            on_yes,
        });
        true
    }

    pub fn focus_job_row(&self) -> Option<&JobRow> {
        let id = self.focus_job.as_deref()?;
        self.snap.jobs.iter().find(|j| j.rec.id == id)
    }

    /// Point the Logs and Metrics panes at `job`, loading what is stored.
    pub(crate) fn focus(&mut self, job: Option<String>) -> Vec<Command> {
        if job == self.focus_job && self.logs.job == job {
            return Vec::new();
        }
        self.focus_job = job.clone();
        self.logs.reset(job.clone());
        self.metrics = MetricsView {
            job: job.clone(),
            ..Default::default()
        };
        match job {
            Some(j) => {
                self.logs.loading = true;
                self.metrics.loading = true;
                vec![
                    Command::LoadLog {
                        job: j.clone(),
                        attempt: 1,
                        from: 0,
                    },
                    Command::LoadMetrics {
                        job: j,
                        after_rowid: 0,
                    },
                ]
            }
            None => Vec::new(),
        }
    }

    /// Ask for whatever is new in the focused job's log and metrics.
    pub(crate) fn poll_focus(&mut self) -> Vec<Command> {
        let mut out = Vec::new();
        if let Some(j) = self.logs.job.clone()
            && !self.logs.loading
        {
            self.logs.loading = true;
            out.push(Command::LoadLog {
                job: j,
                attempt: self.logs.read_attempt,
                from: self.logs.read_offset,
            });
        }
        if let Some(j) = self.metrics.job.clone()
            && !self.metrics.loading
        {
            self.metrics.loading = true;
            out.push(Command::LoadMetrics {
                job: j,
                after_rowid: self.metrics.last_rowid,
            });
        }
        out
    }

    pub fn update(&mut self, msg: Msg) -> Vec<Command> {
        match msg {
            Msg::Key(ev) if is_press(&ev) => {
                self.dirty = true;
                self.urgent = true;
                self.on_key(ev)
            }
            Msg::Key(_) => Vec::new(),
            Msg::Resize => {
                self.dirty = true;
                Vec::new()
            }
            Msg::Snapshot(s) => {
                if !s.same_screen(&self.snap) {
                    self.dirty = true;
                }
                self.snap = *s;
                self.refilter();
                if self.focus_job.is_none() {
                    // Follow the newest job until the user picks one.
                    let newest = self.snap.jobs.first().map(|j| j.rec.id.clone());
                    return self.focus(newest);
                }
                self.poll_focus()
            }
            Msg::Engine(ev) => match ev {
                EngineEvent::LogLines { job_id, .. } | EngineEvent::Metrics { job_id, .. }
                    if Some(&job_id) == self.focus_job.as_ref() =>
                {
                    self.poll_focus()
                }
                EngineEvent::JobState {
                    job_id,
                    state,
                    reason,
                } if state.is_terminal() => {
                    // A job's end is said once (its state moves there once), with why.
                    let name = self
                        .snap
                        .jobs
                        .iter()
                        .find(|j| j.rec.id == job_id)
                        .map(|j| format!("{} ({job_id})", j.rec.name))
                        .unwrap_or(job_id);
                    let reason = crate::sanitize::sanitize_line(reason.as_bytes());
                    self.say(
                        format!("job {name} {state}: {reason}"),
                        state != JobState::Succeeded,
                    );
                    self.ring |= self.bell;
                    self.dirty = true;
                    vec![Command::Refresh]
                }
                EngineEvent::JobState { .. } | EngineEvent::Instance { .. } => {
                    vec![Command::Refresh]
                }
                EngineEvent::Transfer {
                    job_id,
                    what,
                    done,
                    total,
                    elapsed_ms,
                } => {
                    self.say(
                        transfer_text(
                            job_id.as_deref().unwrap_or("-"),
                            &what,
                            done,
                            total,
                            elapsed_ms,
                        ),
                        false,
                    );
                    self.dirty = true;
                    Vec::new()
                }
                EngineEvent::Notice { message, .. } => {
                    self.say(message, true);
                    self.dirty = true;
                    vec![Command::Refresh]
                }
                _ => Vec::new(),
            },
            Msg::LogAppend {
                job,
                attempt,
                end,
                lines,
                skipped,
            } => {
                if Some(&job) != self.logs.job.as_ref() {
                    return Vec::new();
                }
                self.logs.loading = false;
                if let Some(s) = skipped {
                    self.logs.first_line = s;
                }
                let now = self.snap.now_ms;
                let changed = !lines.is_empty() || attempt != self.logs.read_attempt;
                for l in lines {
                    self.logs.push(l, Some(now));
                }
                self.logs.read_attempt = attempt;
                self.logs.read_offset = end;
                if changed {
                    self.dirty = true;
                }
                Vec::new()
            }
            Msg::LogOlder {
                job,
                first_line,
                lines,
            } => {
                if Some(&job) != self.logs.job.as_ref() {
                    return Vec::new();
                }
                self.logs.loading = false;
                let n = lines.len();
                for l in lines.into_iter().rev() {
                    if self.logs.lines.len() >= self.logs.cap {
                        self.logs.lines.pop_back();
                    }
                    self.logs.lines.push_front(LogLine { text: l, ts: None });
                }
                self.logs.first_line = first_line;
                self.logs.top += n;
                self.logs.current_match = self.logs.current_match.map(|m| m + n);
                self.dirty = true;
                Vec::new()
            }
            Msg::MetricsAppend {
                job,
                last_rowid,
                points,
                more,
            } => {
                if Some(&job) != self.metrics.job.as_ref() {
                    return Vec::new();
                }
                if !more {
                    self.metrics.loading = false;
                }
                if !points.is_empty() {
                    for p in &points {
                        self.metrics.push(p);
                    }
                    self.dirty = true;
                }
                self.metrics.last_rowid = last_rowid;
                Vec::new()
            }
            Msg::Passphrase(req) => {
                self.dirty = true;
                self.urgent = true;
                let mut input = TextArea::default();
                input.set_mask_char('•');
                input.set_cursor_line_style(ratatui::style::Style::default());
                let prompt = PassphrasePrompt {
                    asked: req.asked,
                    input,
                    reply: Some(req.reply),
                };
                // Whatever was open gives way; the connection is waiting.
                if let Mode::Passphrase(old) =
                    std::mem::replace(&mut self.mode, Mode::Passphrase(Box::new(prompt)))
                {
                    old.answer(None);
                }
                Vec::new()
            }
            Msg::UnknownHostKey {
                provider,
                req,
                message,
            } => {
                self.dirty = true;
                self.urgent = true;
                let fingerprint = message
                    .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
                    .find(|w| w.starts_with("SHA256:"))
                    .unwrap_or("(fingerprint unknown)")
                    .to_string();
                let host = message
                    .split("unknown host key for ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .unwrap_or("the machine")
                    .to_string();
                self.mode = Mode::Confirm(Confirm {
                    title: "Trust this host key?".into(),
                    lines: vec![
                        format!("{host} presents a host key never seen before:"),
                        fingerprint,
                        "Compare it with the machine's own (ssh-keygen -lf).".into(),
                        "Yes records it in trainctl's known_hosts.".into(),
                    ],
                    yes: false,
                    on_yes: Command::Launch {
                        provider,
                        req: LaunchRequest {
                            accept_new_host_key: true,
                            ..req
                        },
                    },
                });
                Vec::new()
            }
            Msg::JobStarted(job) => {
                self.dirty = true;
                self.say(format!("job {job} started"), false);
                let mut c = self.focus(Some(job));
                c.push(Command::Refresh);
                c
            }
            Msg::Done(r) => {
                match r {
                    Ok(m) => self.say(m, false),
                    Err(e) => self.say(e, true),
                }
                self.dirty = true;
                vec![Command::Refresh]
            }
        }
    }

    pub(crate) fn on_key(&mut self, ev: KeyEvent) -> Vec<Command> {
        // ctrl-c always quits, whatever is open.
        if ev.code == KeyCode::Char('c') && ev.modifiers.contains(KeyModifiers::CONTROL) {
            self.quit = true;
            return Vec::new();
        }
        let mode = std::mem::replace(&mut self.mode, Mode::Normal);
        match mode {
            Mode::Normal => self.on_normal_key(ev),
            Mode::Help => {
                // Any key closes help.
                Vec::new()
            }
            Mode::Filter(s) => self.on_line_key(ev, s, LineKind::Filter),
            Mode::Command(s) => self.on_line_key(ev, s, LineKind::Command),
            Mode::Search(s) => self.on_line_key(ev, s, LineKind::Search),
            Mode::Confirm(c) => self.on_confirm_key(ev, c),
            Mode::Passphrase(mut p) => {
                match ev.code {
                    KeyCode::Enter => {
                        let pass = p.input.lines().join("");
                        p.answer(Some(pass));
                    }
                    KeyCode::Esc => p.answer(None),
                    _ => {
                        p.input.input(ev);
                        self.mode = Mode::Passphrase(p);
                    }
                }
                Vec::new()
            }
            Mode::Launch(f) => self.on_launch_key(ev, f),
        }
    }

    pub(crate) fn list_len(&self) -> usize {
        match self.view {
            View::Instances => self.inst_visible.len(),
            View::Jobs => self.job_visible.len(),
            View::Logs => self.logs.lines.len(),
            View::Metrics => self.metrics.series.len(),
            View::Cost => 0,
        }
    }

    pub(crate) fn move_sel(&mut self, delta: isize) -> Vec<Command> {
        match self.view {
            View::Instances | View::Jobs => {
                let len = self.list_len();
                let sel = if self.view == View::Instances {
                    &mut self.inst_sel
                } else {
                    &mut self.job_sel
                };
                *sel = (*sel as isize + delta).clamp(0, len.saturating_sub(1) as isize) as usize;
                Vec::new()
            }
            View::Logs => self.scroll_logs(delta),
            View::Metrics => {
                let n = self.metrics.series.len();
                if n > 0 {
                    self.metrics.selected =
                        (self.metrics.selected as isize + delta).rem_euclid(n as isize) as usize;
                }
                Vec::new()
            }
            View::Cost => Vec::new(),
        }
    }

    pub(crate) fn switch_view(&mut self, v: View) -> Vec<Command> {
        self.view = v;
        if matches!(v, View::Logs | View::Metrics) && self.focus_job.is_none() {
            let j = self.selected_job().map(|j| j.rec.id.clone());
            return self.focus(j);
        }
        Vec::new()
    }

    pub(crate) fn on_normal_key(&mut self, ev: KeyEvent) -> Vec<Command> {
        let Some(action) = self.keymap.action_for(&ev, self.view, self.readonly) else {
            return Vec::new();
        };
        self.status = None;
        match action {
            Action::Quit => {
                self.quit = true;
                Vec::new()
            }
            Action::Back => {
                match self.view {
                    View::Logs if self.logs.fullscreen => self.logs.fullscreen = false,
                    View::Instances if !self.inst_filter.is_empty() => {
                        self.inst_filter.clear();
                        self.refilter();
                    }
                    View::Jobs if !self.job_filter.is_empty() => {
                        self.job_filter.clear();
                        self.refilter();
                    }
                    View::Logs if self.logs.search.is_some() => {
                        self.logs.search = None;
                        self.logs.current_match = None;
                    }
                    View::Logs | View::Metrics => self.view = View::Jobs,
                    View::Jobs | View::Cost => self.view = View::Instances,
                    View::Instances => {}
                }
                Vec::new()
            }
            Action::Help => {
                self.mode = Mode::Help;
                Vec::new()
            }
            Action::CommandLine => {
                self.mode = Mode::Command(String::new());
                Vec::new()
            }
            Action::Filter => {
                let current = match self.view {
                    View::Instances => self.inst_filter.clone(),
                    _ => self.job_filter.clone(),
                };
                self.mode = Mode::Filter(current);
                Vec::new()
            }
            Action::Search => {
                self.mode = Mode::Search(self.logs.search.clone().unwrap_or_default());
                Vec::new()
            }
            Action::NextView => {
                self.switch_view(View::ALL[(self.view.index() + 1) % View::ALL.len()])
            }
            Action::PrevView => self.switch_view(
                View::ALL[(self.view.index() + View::ALL.len() - 1) % View::ALL.len()],
            ),
            Action::ShowInstances => self.switch_view(View::Instances),
            Action::ShowJobs => self.switch_view(View::Jobs),
            Action::ShowLogs => self.switch_view(View::Logs),
            Action::ShowMetrics => self.switch_view(View::Metrics),
            Action::ShowCost => self.switch_view(View::Cost),
            Action::Up | Action::PrevMetric => self.move_sel(-1),
            Action::Down | Action::NextMetric => self.move_sel(1),
            Action::PageUp => self.move_sel(-(self.page.max(1) as isize)),
            Action::PageDown => self.move_sel(self.page.max(1) as isize),
            Action::Top => {
                match self.view {
                    View::Instances => self.inst_sel = 0,
                    View::Jobs => self.job_sel = 0,
                    View::Logs => {
                        self.logs.autoscroll = false;
                        self.logs.top = 0;
                    }
                    _ => {}
                }
                Vec::new()
            }
            Action::Bottom => {
                match self.view {
                    View::Instances => self.inst_sel = self.inst_visible.len().saturating_sub(1),
                    View::Jobs => self.job_sel = self.job_visible.len().saturating_sub(1),
                    View::Logs => self.logs.autoscroll = true,
                    _ => {}
                }
                Vec::new()
            }
            Action::Open => match self.view {
                View::Jobs => {
                    let j = self.selected_job().map(|j| j.rec.id.clone());
                    self.view = View::Logs;
                    self.focus(j)
                }
                View::Instances => {
                    if let Some(i) = self.selected_instance() {
                        self.job_filter = i.rec.id.clone();
                        self.view = View::Jobs;
                        self.refilter();
                    }
                    Vec::new()
                }
                _ => Vec::new(),
            },
            Action::Launch => {
                self.open_launch_form();
                Vec::new()
            }
            Action::RunJob => {
                let inst = match self.view {
                    View::Jobs => self
                        .selected_job()
                        .and_then(|j| j.rec.instance_id.clone())
                        .filter(|id| {
                            self.snap
                                .instances
                                .iter()
                                .any(|i| &i.rec.id == id && i.rec.state.is_live())
                        }),
                    _ => self
                        .selected_instance()
                        .filter(|i| i.rec.state.is_live() && !i.orphan)
                        .map(|i| i.rec.id.clone()),
                };
                match (inst, &self.project) {
                    (_, None) => {
                        self.say("no trainctl.toml here: start the cockpit in a project (or --project DIR)", true);
                        Vec::new()
                    }
                    (None, _) => {
                        self.say("select a running instance first (launch one with L)", true);
                        Vec::new()
                    }
                    (Some(instance), Some(p)) => {
                        self.say(format!("starting {p} on {instance}…"), false);
                        vec![Command::RunJob { instance }]
                    }
                }
            }
            Action::Sync => match self.selected_instance().filter(|i| i.rec.state.is_live()) {
                Some(i) if self.project.is_some() => vec![Command::Sync {
                    instance: i.rec.id.clone(),
                }],
                Some(_) => {
                    self.say("no trainctl.toml here to sync", true);
                    Vec::new()
                }
                None => Vec::new(),
            },
            Action::Terminate => {
                if let Some(i) = self.selected_instance().filter(|i| i.orphan) {
                    // A machine the provider holds that the store lost: it may be billing.
                    self.mode = Mode::Confirm(Confirm {
                        title: "Terminate orphan?".into(),
                        lines: vec![
                            format!(
                                "{} ({}, {}) on {}",
                                i.rec.id,
                                i.rec.provider_id.clone().unwrap_or_default(),
                                i.rec.instance_type,
                                i.rec.provider
                            ),
                            format!(
                                "unknown to the store; cost so far {} at {}/h",
                                i.cost, i.rec.hourly
                            ),
                        ],
                        yes: false,
                        on_yes: Command::Terminate {
                            instance: i.rec.id.clone(),
                        },
                    });
                } else if let Some(i) = self
                    .selected_instance()
                    .filter(|i| i.rec.state.is_live() && !i.orphan)
                {
                    let live_jobs = self
                        .snap
                        .jobs
                        .iter()
                        .filter(|j| {
                            !j.rec.state.is_terminal()
                                && j.rec.instance_id.as_deref() == Some(&i.rec.id)
                        })
                        .count();
                    let mut lines = vec![
                        format!("{} ({}, {})", i.rec.name, i.rec.id, i.rec.instance_type),
                        format!("cost so far {} at {}/h", i.cost, i.rec.hourly),
                    ];
                    if live_jobs > 0 {
                        lines.push(format!("{live_jobs} running job(s) there will be stopped"));
                    }
                    self.mode = Mode::Confirm(Confirm {
                        title: "Terminate instance?".into(),
                        lines,
                        yes: false,
                        on_yes: Command::Terminate {
                            instance: i.rec.id.clone(),
                        },
                    });
                }
                Vec::new()
            }
            Action::Adopt => match self.selected_instance().filter(|i| i.orphan) {
                Some(i) => vec![Command::Adopt {
                    instance: i.rec.id.clone(),
                }],
                None => {
                    self.say(
                        "adopt takes an orphan (a machine the store does not know)",
                        true,
                    );
                    Vec::new()
                }
            },
            Action::CancelJob => {
                self.job_confirm("Cancel job?", |j| {
                    (!j.rec.state.is_terminal()).then(|| {
                        (
                            vec![
                                format!("cost so far {}", j.cost),
                                "SIGTERM now, SIGKILL after the grace period".into(),
                            ],
                            Command::Cancel {
                                job: j.rec.id.clone(),
                            },
                        )
                    })
                });
                Vec::new()
            }
            Action::Migrate => {
                let asked = self.job_confirm("Migrate job?", |j| {
                    (matches!(j.rec.state, JobState::Running | JobState::SettingUp)).then(|| {
                        (
                            vec![
                                "stopped with the grace to save, then resumed from its".into(),
                                "newest checkpoint on a new machine like this one".into(),
                            ],
                            Command::Migrate {
                                job: j.rec.id.clone(),
                            },
                        )
                    })
                });
                if !asked {
                    self.say("select a running job to migrate", true);
                }
                Vec::new()
            }
            Action::Pull => match self.selected_job() {
                Some(j) => vec![Command::Pull {
                    job: j.rec.id.clone(),
                }],
                None => Vec::new(),
            },
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
        }
    }
}
