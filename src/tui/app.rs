//! The cockpit's state and its update function. No IO here: key presses and engine
//! results come in as [`Msg`], side effects go out as [`Command`]s that the runtime
//! executes off the UI task. Everything is testable with plain key sequences.

use super::keymap::{Action, Keymap, View};
use super::series::Series;
use super::theme::Theme;
use crate::cost::CostReport;
use crate::engine::EngineEvent;
use crate::model::{JobState, MetricPoint, Money, Progress, TimestampMs};
use crate::provider::{LaunchRequest, Plan};
use crate::store::{InstanceRecord, JobRecord};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui_textarea::TextArea;
use std::collections::VecDeque;
use std::sync::Arc;

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
    fn new(cap: usize) -> LogView {
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

    fn reset(&mut self, job: Option<String>) {
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

    fn find(&self, from: usize, forward: bool) -> Option<usize> {
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

/// The selected job's metrics, one series per name in order of first appearance.
#[derive(Debug, Clone, Default)]
pub struct MetricsView {
    pub job: Option<String>,
    pub series: Vec<(String, Series)>,
    pub selected: usize,
    pub last_rowid: i64,
    pub loading: bool,
}

impl MetricsView {
    pub fn push(&mut self, p: &MetricPoint) {
        let x = p
            .step
            .map(|s| s as f64)
            .or(p.epoch)
            .unwrap_or(p.line as f64);
        match self.series.iter_mut().find(|(n, _)| *n == p.name) {
            Some((_, s)) => s.push(x, p.value),
            None => {
                let mut s = Series::new();
                s.push(x, p.value);
                self.series.push((p.name.clone(), s));
            }
        }
    }
}

/// Checks a launch request (provider, request) and prices it, with no side effect.
pub type Validator = Arc<dyn Fn(&str, &LaunchRequest) -> Result<Plan, String> + Send + Sync>;

/// The launch form's provider that means "the cheapest offer of any provider".
pub const CHEAPEST: &str = "cheapest";

pub const FORM_FIELDS: [&str; 5] = [
    "provider (or cheapest)",
    "instance type",
    "spot (yes/no)",
    "max $/h",
    "name",
];

pub struct LaunchForm {
    pub fields: Vec<TextArea<'static>>,
    pub focus: usize,
    /// Per-field error, as you type.
    pub errors: Vec<Option<String>>,
    /// The priced plan when everything is valid.
    pub plan: Option<Plan>,
    /// Completions for the instance type field.
    pub completions: Vec<String>,
    /// With provider `cheapest`: the offers that fit, cheapest first (provider, type,
    /// hourly); the first is launched, the others tried in order when it has no capacity.
    pub cheapest: Vec<(String, String, Money)>,
}

impl std::fmt::Debug for LaunchForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchForm")
            .field("values", &self.values())
            .field("focus", &self.focus)
            .field("errors", &self.errors)
            .finish()
    }
}

impl LaunchForm {
    fn new(provider: &str, instance_type: &str) -> LaunchForm {
        let mut fields: Vec<TextArea<'static>> =
            FORM_FIELDS.iter().map(|_| TextArea::default()).collect();
        fields[0].insert_str(provider);
        fields[1].insert_str(instance_type);
        fields[2].insert_str("no");
        for f in &mut fields {
            f.set_cursor_line_style(ratatui::style::Style::default());
        }
        LaunchForm {
            fields,
            focus: 0,
            errors: vec![None; FORM_FIELDS.len()],
            cheapest: Vec::new(),
            plan: None,
            completions: Vec::new(),
        }
    }

    pub fn values(&self) -> Vec<String> {
        self.fields
            .iter()
            .map(|f| f.lines().join("").trim().to_string())
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct Confirm {
    pub title: String,
    pub lines: Vec<String>,
    /// The highlighted choice; always starts at No.
    pub yes: bool,
    pub on_yes: Command,
}

/// A masked field for an SSH key's passphrase or a login password; the answer goes back
/// to the connection.
pub struct PassphrasePrompt {
    pub asked: crate::ssh::remote::Asked,
    pub input: TextArea<'static>,
    reply: Option<tokio::sync::oneshot::Sender<Option<String>>>,
}

impl std::fmt::Debug for PassphrasePrompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PassphrasePrompt({})", self.asked.subject())
    }
}

impl PassphrasePrompt {
    fn answer(mut self, value: Option<String>) {
        if let Some(r) = self.reply.take() {
            let _ = r.send(value);
        }
    }
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

    fn say(&mut self, msg: impl Into<String>, error: bool) {
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
    fn job_confirm(
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
    fn focus(&mut self, job: Option<String>) -> Vec<Command> {
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
    fn poll_focus(&mut self) -> Vec<Command> {
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

    fn on_key(&mut self, ev: KeyEvent) -> Vec<Command> {
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

    fn list_len(&self) -> usize {
        match self.view {
            View::Instances => self.inst_visible.len(),
            View::Jobs => self.job_visible.len(),
            View::Logs => self.logs.lines.len(),
            View::Metrics => self.metrics.series.len(),
            View::Cost => 0,
        }
    }

    fn move_sel(&mut self, delta: isize) -> Vec<Command> {
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

    fn scroll_logs(&mut self, delta: isize) -> Vec<Command> {
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

    fn switch_view(&mut self, v: View) -> Vec<Command> {
        self.view = v;
        if matches!(v, View::Logs | View::Metrics) && self.focus_job.is_none() {
            let j = self.selected_job().map(|j| j.rec.id.clone());
            return self.focus(j);
        }
        Vec::new()
    }

    fn on_normal_key(&mut self, ev: KeyEvent) -> Vec<Command> {
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

    fn jump_to_match(&mut self, from: usize, forward: bool) {
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

    fn on_line_key(&mut self, ev: KeyEvent, mut line: String, kind: LineKind) -> Vec<Command> {
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

    fn set_filter(&mut self, f: String) {
        match self.view {
            View::Instances => self.inst_filter = f,
            _ => self.job_filter = f,
        }
        self.refilter();
    }

    fn run_command_line(&mut self, cmd: &str) -> Vec<Command> {
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

    fn on_confirm_key(&mut self, ev: KeyEvent, mut c: Confirm) -> Vec<Command> {
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

    pub fn open_launch_form(&mut self) {
        if self.readonly {
            return;
        }
        let ty = self
            .catalog
            .iter()
            .find(|(p, _)| *p == self.default_provider)
            .and_then(|(_, t)| t.first().cloned())
            .unwrap_or_default();
        let mut form = LaunchForm::new(&self.default_provider, &ty);
        self.validate_form(&mut form);
        self.mode = Mode::Launch(Box::new(form));
    }

    /// Check every field as typed; fills `errors`, `plan` and `completions`.
    pub fn validate_form(&self, f: &mut LaunchForm) {
        let v = f.values();
        f.errors = vec![None; FORM_FIELDS.len()];
        f.plan = None;
        f.cheapest.clear();
        if v[0] == CHEAPEST {
            return self.validate_cheapest(f, &v);
        }
        let provider_ok = self.providers.contains(&v[0]);
        if !provider_ok {
            f.errors[0] = Some(format!(
                "unknown provider (known: {}, or {CHEAPEST})",
                self.providers.join(", ")
            ));
        }
        let types: Vec<String> = self
            .catalog
            .iter()
            .find(|(p, _)| *p == v[0])
            .map(|(_, t)| t.clone())
            .unwrap_or_default();
        f.completions = types
            .iter()
            .filter(|t| t.starts_with(&v[1]))
            .cloned()
            .collect();
        let spot = match v[2].to_lowercase().as_str() {
            "yes" | "y" | "true" | "spot" => Some(true),
            "no" | "n" | "false" | "" | "on-demand" => Some(false),
            _ => {
                f.errors[2] = Some("yes or no".into());
                None
            }
        };
        let max_price = if v[3].is_empty() {
            None
        } else {
            match Money::from_dollars_str(&v[3]) {
                Some(m) if m.0 > 0 => Some(m),
                _ => {
                    f.errors[3] = Some("a dollar amount, e.g. 2.50".into());
                    None
                }
            }
        };
        if !v[4].is_empty()
            && !v[4]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            f.errors[4] = Some("letters, digits, - _ . only".into());
        }
        if !provider_ok || f.errors.iter().any(Option::is_some) {
            return;
        }
        let req = self.form_request(&v, spot.unwrap_or(false));
        match (self.validator)(&v[0], &req) {
            Ok(plan) => {
                if let Some(max) = max_price
                    && plan.hourly > max
                {
                    f.errors[3] = Some(format!(
                        "{} costs {}/h, above your max",
                        plan.instance_type, plan.hourly
                    ));
                    return;
                }
                f.plan = Some(plan);
            }
            Err(e) => f.errors[1] = Some(e),
        }
    }

    /// Provider `cheapest`: the instance type field filters offers of every provider by
    /// GPU or type name (`H100`, `a100`); those that pass their provider's check and the
    /// max price are kept, cheapest first (spot prices when spot is asked).
    fn validate_cheapest(&self, f: &mut LaunchForm, v: &[String]) {
        let spot = matches!(v[2].to_lowercase().as_str(), "yes" | "y" | "true" | "spot");
        let max = Money::from_dollars_str(&v[3]).filter(|m| m.0 > 0);
        if !v[3].is_empty() && max.is_none() {
            f.errors[3] = Some("a dollar amount, e.g. 2.50".into());
            return;
        }
        let want = v[1].to_lowercase();
        // Each (provider, type) once, priced by its provider's own check (its region, its
        // market): the catalog rows only say which offers exist.
        let mut seen: Vec<(&str, &str)> = Vec::new();
        let mut fits: Vec<(String, String, Plan)> = Vec::new();
        for o in &self.offers {
            let name_fits = o.accelerator.to_lowercase().contains(&want)
                || o.instance_type.to_lowercase().contains(&want);
            let market = if spot {
                o.spot_micros
            } else {
                o.on_demand_micros
            };
            if !name_fits || market.is_none() || o.gpus < 1.0 {
                continue;
            }
            if seen.contains(&(o.provider.as_str(), o.instance_type.as_str())) {
                continue;
            }
            seen.push((&o.provider, &o.instance_type));
            let req = LaunchRequest {
                instance_type: Some(o.instance_type.clone()),
                ..self.form_request(v, spot)
            };
            // Only offers their provider would take (a bid it needs, a type it knows).
            if let Ok(plan) = (self.validator)(&o.provider, &req)
                && max.is_none_or(|m| plan.hourly <= m)
            {
                fits.push((o.provider.clone(), o.instance_type.clone(), plan));
            }
        }
        fits.sort_by_key(|(p, t, plan)| (plan.hourly, p.clone(), t.clone()));
        fits.truncate(8);
        let first_plan = fits.first().map(|(_, _, plan)| plan.clone());
        f.cheapest = fits
            .into_iter()
            .map(|(p, t, plan)| (p, t, plan.hourly))
            .collect();
        f.completions.clear();
        match first_plan {
            Some(plan) => f.plan = Some(plan),
            None => {
                f.errors[1] = Some(format!(
                    "no {}offer fits `{}`{}",
                    if spot { "spot " } else { "" },
                    v[1],
                    if max.is_some() { " under your max" } else { "" }
                ))
            }
        }
    }

    /// The launch of the form's values: for `cheapest`, its first offer with the others as
    /// `PROVIDER:TYPE` alternatives.
    fn form_launch(&self, f: &LaunchForm) -> (String, LaunchRequest) {
        let v = f.values();
        let spot = matches!(v[2].to_lowercase().as_str(), "yes" | "y" | "true" | "spot");
        let req = self.form_request(&v, spot);
        match f.cheapest.split_first() {
            Some(((p, t, _), rest)) if v[0] == CHEAPEST => (
                p.clone(),
                LaunchRequest {
                    instance_type: Some(t.clone()),
                    any_of: rest.iter().map(|(p, t, _)| format!("{p}:{t}")).collect(),
                    ..req
                },
            ),
            _ => (v[0].clone(), req),
        }
    }

    fn form_request(&self, v: &[String], spot: bool) -> LaunchRequest {
        LaunchRequest {
            name: (!v[4].is_empty()).then(|| v[4].clone()),
            instance_type: (!v[1].is_empty()).then(|| v[1].clone()),
            gpus: None,
            spot,
            accept_new_host_key: false,
            ..Default::default()
        }
    }

    fn on_launch_key(&mut self, ev: KeyEvent, mut f: Box<LaunchForm>) -> Vec<Command> {
        let n = FORM_FIELDS.len();
        match ev.code {
            KeyCode::Esc => return Vec::new(),
            KeyCode::Enter => {
                self.validate_form(&mut f);
                if f.plan.is_some() {
                    let (provider, req) = self.form_launch(&f);
                    self.say(format!("launching on {provider}…"), false);
                    return vec![Command::Launch { provider, req }];
                }
                self.say("fix the fields marked in red first", true);
            }
            KeyCode::Down | KeyCode::BackTab | KeyCode::Up | KeyCode::Tab
                if !(ev.code == KeyCode::Tab && f.focus == 1 && !f.completions.is_empty()) =>
            {
                f.focus = match ev.code {
                    KeyCode::Up | KeyCode::BackTab => (f.focus + n - 1) % n,
                    _ => (f.focus + 1) % n,
                };
            }
            KeyCode::Tab => {
                // Complete the instance type to the longest common prefix of the candidates.
                let prefix = common_prefix(&f.completions);
                let field = &mut f.fields[1];
                field.select_all();
                field.cut();
                field.insert_str(prefix);
                self.validate_form(&mut f);
            }
            _ => {
                let focus = f.focus;
                f.fields[focus].input(ev);
                self.validate_form(&mut f);
            }
        }
        self.mode = Mode::Launch(f);
        Vec::new()
    }
}

fn common_prefix(v: &[String]) -> String {
    let Some(first) = v.first() else {
        return String::new();
    };
    let mut len = first.len();
    for s in &v[1..] {
        len = first
            .chars()
            .zip(s.chars())
            .take_while(|(a, b)| a == b)
            .map(|(a, _)| a.len_utf8())
            .sum::<usize>()
            .min(len);
    }
    first[..len].to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineKind {
    Filter,
    Command,
    Search,
}

impl LineKind {
    fn mode(self, s: String) -> Mode {
        match self {
            LineKind::Filter => Mode::Filter(s),
            LineKind::Command => Mode::Command(s),
            LineKind::Search => Mode::Search(s),
        }
    }
}
