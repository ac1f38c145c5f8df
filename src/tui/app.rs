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
use std::collections::VecDeque;

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRow {
    pub rec: InstanceRecord,
    pub cost: Money,
    pub uptime_ms: i64,
    /// Known to the provider, not to the store.
    pub orphan: bool,
    /// An orphan that is a scheduler's batch job on this held cluster, not a machine.
    pub orphan_job_on: Option<String>,
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
    /// Its whole run, bucketed into means (oldest first), for the trend column.
    pub trend: Vec<f64>,
    /// Which attempt runs (or ran last): 2 and up after a recovery or a migrate.
    pub attempt: i64,
}

/// Equality for "would the screen change": NaN equals NaN here (a job whose loss went NaN
/// must not force a redraw every second).
impl PartialEq for JobRow {
    fn eq(&self, o: &JobRow) -> bool {
        let same_f = |a: f64, b: f64| a.to_bits() == b.to_bits();
        self.rec == o.rec
            && self.attempt == o.attempt
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
            && self.trend.len() == o.trend.len()
            && self.trend.iter().zip(&o.trend).all(|(a, b)| same_f(*a, *b))
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
    /// Ask the machine which artifacts of its jobs were never pulled (before the
    /// terminate question).
    CheckArtifacts {
        instance: String,
    },
    /// Pull every job's artifacts from the machine, then terminate it if all came.
    PullThenTerminate {
        instance: String,
        jobs: Vec<String>,
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
    /// Check and price the launch form's values (off the UI task: a provider's check may
    /// scan a large catalog).
    CheckLaunch {
        seq: u64,
        values: Vec<String>,
        checker: super::popups::launch::CheckerRef,
    },
    /// One curve of a job (to compare with the highlighted job's).
    LoadCurve {
        job: String,
        name: String,
        axis: super::panes::metrics::XAxis,
        smoothing: f64,
    },
}

impl Command {
    /// Work the user asked for, whose answer comes back as a message (`q` waits for it).
    pub fn is_work(&self) -> bool {
        matches!(
            self,
            Command::Launch { .. }
                | Command::Terminate { .. }
                | Command::PullThenTerminate { .. }
                | Command::Adopt { .. }
                | Command::RunJob { .. }
                | Command::Cancel { .. }
                | Command::Migrate { .. }
                | Command::Pull { .. }
                | Command::Sync { .. }
        )
    }
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
    /// What terminating a machine would lose: (job, path, size) never pulled, or why it
    /// could not be asked.
    TerminateCheck {
        instance: String,
        unpulled: Result<Vec<(String, String, u64)>, String>,
    },
    /// The launch form's values checked: applied if `seq` is still the newest.
    LaunchChecked {
        seq: u64,
        verdict: Box<super::popups::launch::Verdict>,
    },
    /// A marked job's curve, loaded.
    Curve {
        job: String,
        curve: Box<super::panes::metrics::Curve>,
    },
    /// A command's work finished: what to say.
    Done(Result<String, String>),
    /// A command's work is under way and ends with the job (a cancel: "stopping …").
    Underway {
        job: String,
        text: String,
    },
    /// Something done on the user's behalf that no command waits for (the artifacts of a
    /// job started here, pulled when it succeeded).
    Said(String),
    /// Something failed that no command of the user's waits for (reading the store).
    Problem(String),
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
    /// The key table, scrolled down this many rows.
    Help(usize),
    /// The messages said this session, newest last, scrollable (offset from the end).
    Messages(usize),
    /// `q` at the top level while work is in flight: quit anyway?
    Quit,
}

/// A status line belongs to what made it and ends with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub text: String,
    pub error: bool,
    pub ends: StatusEnd,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StatusEnd {
    /// The next key press clears it.
    NextKey,
    /// It stays until this job's state is terminal (then its end is announced instead).
    JobEnds(String),
}

/// How long the answer to the user's action keeps the status line from a job's end.
const ANSWER_KEPT: std::time::Duration = std::time::Duration::from_secs(4);
/// Said after an answer when a job's end went to the messages instead.
const MORE_IN_MESSAGES: &str = " · a job ended (! shows it)";

/// One message of the session's log (the `!` popup).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub at_ms: TimestampMs,
    pub text: String,
    pub error: bool,
}

/// Most messages kept for the `!` popup.
pub const MESSAGES_KEPT: usize = 200;

/// The dashboard's layout choices (≥ 120x36).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dashboard {
    /// Drawn as a dashboard this frame (set when drawing: the terminal is large enough).
    pub on: bool,
    /// The focused pane fills the screen.
    pub zoom: bool,
    /// Percent of the lower area the jobs list takes (the log and chart share the rest).
    pub jobs_pct: u16,
    /// Percent of the log+chart row the log takes.
    pub log_pct: u16,
}

impl Default for Dashboard {
    fn default() -> Self {
        Dashboard {
            on: false,
            zoom: false,
            jobs_pct: 40,
            log_pct: 55,
        }
    }
}

/// Smallest terminal drawn as a dashboard.
pub const DASHBOARD_MIN: (u16, u16) = (120, 36);

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
    /// The job the Logs and Metrics panes show: the highlighted one.
    pub focus_job: Option<String>,
    pub status: Option<Status>,
    /// When the status line was said, and whether it was an announcement (a job's end)
    /// rather than the answer to something the user did.
    status_said: Option<(std::time::Instant, bool)>,
    pub messages: VecDeque<Message>,
    pub dash: Dashboard,
    /// Jobs marked (space) to compare their curves in the chart.
    pub marked: Vec<String>,
    /// The first snapshot with rows picked the live ones.
    pub(crate) picked: bool,
    /// Jobs live in the last snapshot (an end seen by the next one is announced).
    pub(crate) live_seen: Vec<String>,
    /// Jobs whose end was announced.
    pub(crate) announced: Vec<String>,
    /// Commands sent whose answer has not come back (launch, terminate, sync, …): `q`
    /// asks before quitting while any is out.
    pub in_flight: usize,
    /// Command lines run, oldest first, and where ↑/↓ are in them.
    pub history: Vec<String>,
    pub(crate) history_pos: Option<usize>,
    /// When the marked jobs' curves were last read (live ones are read again).
    pub(crate) compare_loaded_ms: TimestampMs,
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
    /// The launch form's checker, made from the fields above on first use.
    pub(crate) checker: Option<super::popups::launch::CheckerRef>,
    /// Rows per page of the current list (set when drawing).
    pub page: usize,
    /// Ring the terminal's bell when a job ends (`[tui] bell`).
    pub bell: bool,
    /// A bell is due (the event loop rings it once).
    pub ring: bool,
}

/// Two progress lines of the same transfer (`job X placing Y: …`).
fn same_transfer(a: &str, b: &str) -> bool {
    let head = |t: &str| t.split_once(": ").map(|(h, _)| h.to_string());
    a.contains(" placing ") && head(a).is_some() && head(a) == head(b)
}

fn is_press(ev: &KeyEvent) -> bool {
    ev.kind != crossterm::event::KeyEventKind::Release
}

/// `job j-… placing coco: 41% (812.0 MB of 2.0 GB), 301.2 MB/s, 4 s left`.
pub fn transfer_text(job: &str, what: &str, done: u64, total: u64, elapsed_ms: u64) -> String {
    let mb = crate::cli::fmt_bytes;
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
            status_said: None,
            messages: VecDeque::new(),
            dash: Dashboard::default(),
            marked: Vec::new(),
            picked: false,
            live_seen: Vec::new(),
            announced: Vec::new(),
            in_flight: 0,
            history: Vec::new(),
            history_pos: None,
            compare_loaded_ms: 0,
            dirty: true,
            urgent: false,
            quit: false,
            project: None,
            providers: vec!["local".into()],
            catalog: vec![("local".into(), vec!["local".into()])],
            offers: Vec::new(),
            default_provider: "local".into(),
            validator,
            checker: None,
            page: 10,
            bell: false,
            ring: false,
        }
    }

    /// Show `msg` until the next key, and keep it in the messages log.
    pub(crate) fn say(&mut self, msg: impl Into<String>, error: bool) {
        self.say_until(msg, error, StatusEnd::NextKey);
    }

    /// Keep a line in the session's messages (the `!` popup), stamped with the refresh's
    /// clock (a second's precision, and the same in tests).
    fn log_message(&mut self, text: String, error: bool) {
        let at_ms = if self.snap.now_ms > 0 {
            self.snap.now_ms
        } else {
            crate::model::now_ms()
        };
        self.messages.push_back(Message { at_ms, text, error });
        if self.messages.len() > MESSAGES_KEPT {
            self.messages.pop_front();
        }
    }

    pub(crate) fn say_until(&mut self, msg: impl Into<String>, error: bool, ends: StatusEnd) {
        let text = msg.into();
        // A transfer's progress repeats four times a second: the log keeps its latest.
        if let Some(last) = self.messages.back_mut()
            && !error
            && !last.error
            && same_transfer(&last.text, &text)
        {
            last.text = text.clone();
            last.at_ms = self.snap.now_ms;
        } else {
            self.log_message(text.clone(), error);
        }
        self.status = Some(Status { text, error, ends });
        self.status_said = Some((std::time::Instant::now(), false));
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

    /// Recompute the filtered rows and keep the selection on the same rows when they
    /// are still shown.
    pub fn refilter(&mut self) {
        let keep = self.selected_ids();
        self.refilter_keeping(keep);
    }

    fn selected_ids(&self) -> (Option<String>, Option<String>) {
        (
            self.selected_instance().map(|i| i.rec.id.clone()),
            self.selected_job().map(|j| j.rec.id.clone()),
        )
    }

    /// Recompute the filtered rows; the selection stays on the rows `keep` names (rows
    /// move when a new job or machine arrives), else on a visible row.
    fn refilter_keeping(&mut self, keep: (Option<String>, Option<String>)) {
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
        if let Some(id) = keep.0
            && let Some(k) = self
                .inst_visible
                .iter()
                .position(|&i| self.snap.instances[i].rec.id == id)
        {
            self.inst_sel = k;
        }
        if let Some(id) = keep.1
            && let Some(k) = self
                .job_visible
                .iter()
                .position(|&i| self.snap.jobs[i].rec.id == id)
        {
            self.job_sel = k;
        }
        self.inst_sel = self.inst_sel.min(self.inst_visible.len().saturating_sub(1));
        self.job_sel = self.job_sel.min(self.job_visible.len().saturating_sub(1));
    }

    /// The first snapshot with rows: a live machine and the newest live job (the newest
    /// job when none is live), not whatever ended last.
    fn pick_live_rows(&mut self) {
        if self.picked || (self.snap.instances.is_empty() && self.snap.jobs.is_empty()) {
            return;
        }
        self.picked = true;
        if let Some(k) = self.inst_visible.iter().position(|&i| {
            let r = &self.snap.instances[i];
            r.rec.state.is_live() && !r.orphan
        }) {
            self.inst_sel = k;
        }
        if let Some(k) = self
            .job_visible
            .iter()
            .position(|&i| !self.snap.jobs[i].rec.state.is_terminal())
        {
            self.job_sel = k;
        }
    }

    /// Nothing to go back from: the instances pane, unfiltered, nothing zoomed.
    fn at_top(&self) -> bool {
        self.view == View::Instances
            && self.inst_filter.is_empty()
            && !(self.dash.on && self.dash.zoom)
    }

    /// A status that lasts until a job ends goes when the job has ended; every job seen
    /// ending since the last snapshot is announced (once: an engine event may have done it).
    fn end_statuses(&mut self) {
        let ended: Vec<(String, String, JobState, Option<i32>, String)> = self
            .snap
            .jobs
            .iter()
            .filter(|j| j.rec.state.is_terminal())
            .filter(|j| self.live_seen.contains(&j.rec.id))
            .map(|j| {
                (
                    j.rec.id.clone(),
                    j.rec.name.clone(),
                    j.rec.state,
                    j.rec.exit_code,
                    j.rec.reason.clone().unwrap_or_default(),
                )
            })
            .collect();
        for (id, name, state, code, reason) in ended {
            self.announce_end(&id, &name, state, code, &reason);
        }
        self.live_seen = self
            .snap
            .jobs
            .iter()
            .filter(|j| !j.rec.state.is_terminal())
            .map(|j| j.rec.id.clone())
            .collect();
        if let Some(Status {
            ends: StatusEnd::JobEnds(id),
            ..
        }) = &self.status
            && self
                .snap
                .jobs
                .iter()
                .any(|j| &j.rec.id == id && j.rec.state.is_terminal())
        {
            self.status = None;
        }
    }

    /// `job NAME (ID) failed (exit 1): why`, said once per job, with the bell if asked.
    fn announce_end(
        &mut self,
        id: &str,
        name: &str,
        state: JobState,
        code: Option<i32>,
        reason: &str,
    ) {
        if self.announced.iter().any(|a| a == id) {
            return;
        }
        self.announced.push(id.to_string());
        if self.announced.len() > 1000 {
            self.announced.remove(0);
        }
        let code = match (state, code) {
            (JobState::Failed, Some(c)) => format!(" (exit {c})"),
            _ => String::new(),
        };
        let reason = crate::sanitize::sanitize_line(reason.as_bytes());
        let reason = if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        };
        let text = format!("job {name} ({id}) {state}{code}{reason}");
        let error = state != JobState::Succeeded;
        // The answer to what the user just did stays on the status line (a job ending
        // elsewhere must not hide "terminated i-…"): the end goes to the messages, and the
        // line says there is more.
        let answer_fresh = matches!(&self.status, Some(st) if st.ends == StatusEnd::NextKey)
            && self
                .status_said
                .is_some_and(|(at, aside)| !aside && at.elapsed() < ANSWER_KEPT);
        if answer_fresh {
            self.log_message(text, error);
            if let Some(st) = &mut self.status
                && !st.text.ends_with(MORE_IN_MESSAGES)
            {
                st.text.push_str(MORE_IN_MESSAGES);
            }
        } else {
            self.say(text, error);
            self.status_said = Some((std::time::Instant::now(), true));
        }
        self.ring |= self.bell;
        self.dirty = true;
    }

    /// Logs, metrics and cost follow the highlighted job.
    fn follow_highlight(&mut self) -> Vec<Command> {
        let sel = self.selected_job().map(|j| j.rec.id.clone());
        if sel.is_some() && sel != self.focus_job {
            return self.focus(sel);
        }
        Vec::new()
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
        self.mode = Mode::Confirm(Confirm::yes_no(title, lines, on_yes));
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
        self.metrics = self.metrics.emptied(job.clone());
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
                let mut out = self.on_key(ev);
                self.in_flight += out.iter().filter(|c| c.is_work()).count();
                out.extend(self.follow_highlight());
                out
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
                let keep = self.selected_ids();
                self.snap = *s;
                self.refilter_keeping(keep);
                self.pick_live_rows();
                self.end_statuses();
                let mut out = self.follow_highlight();
                if out.is_empty() {
                    out = self.poll_focus();
                }
                // Marked jobs still running: their curves again every 5 s.
                let live_marked = self.marked.iter().any(|m| {
                    self.snap
                        .jobs
                        .iter()
                        .any(|j| &j.rec.id == m && !j.rec.state.is_terminal())
                });
                if live_marked && self.snap.now_ms - self.compare_loaded_ms >= 5000 {
                    out.extend(self.load_compared());
                }
                out
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
                    // A job's end is said once, with why (and its exit code, which the
                    // store has by now).
                    let row = self.snap.jobs.iter().find(|j| j.rec.id == job_id);
                    let name = row.map_or_else(|| job_id.clone(), |j| j.rec.name.clone());
                    let code = row.and_then(|j| j.rec.exit_code);
                    self.announce_end(&job_id, &name, state, code, &reason);
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
                if self.metrics.stale {
                    let selected = self.metrics.selected;
                    self.metrics = self.metrics.emptied(Some(job));
                    self.metrics.selected = selected;
                    self.metrics.loading = more;
                }
                if !points.is_empty() {
                    for p in &points {
                        self.metrics.push(p);
                    }
                    self.dirty = true;
                }
                self.metrics.last_rowid = last_rowid;
                if !more && self.metrics.reload {
                    return self.reload_metrics();
                }
                if !more && self.metrics.compared.is_empty() && !self.marked.is_empty() {
                    // The first load named the metrics: the marked jobs' curves can come.
                    return self.load_compared();
                }
                Vec::new()
            }
            Msg::TerminateCheck { instance, unpulled } => {
                self.dirty = true;
                self.urgent = true;
                if matches!(&self.status, Some(s) if s.text.starts_with("checking ")) {
                    self.status = None;
                }
                self.terminate_question(&instance, unpulled);
                Vec::new()
            }
            Msg::LaunchChecked { seq, verdict } => {
                self.launch_checked(seq, *verdict);
                Vec::new()
            }
            Msg::Curve { job, curve } => {
                let sel = self.metrics.selected_curve();
                let wanted = self.marked.contains(&job)
                    && sel.is_some_and(|c| c.name == curve.name && c.axis == curve.axis);
                if wanted {
                    let label =
                        self.snap.jobs.iter().find(|j| j.rec.id == job).map_or_else(
                            || job.clone(),
                            |j| super::panes::metrics::job_label(&j.rec),
                        );
                    self.metrics.compared.retain(|c| c.job != job);
                    self.metrics.compared.push(super::panes::metrics::Compared {
                        job,
                        label,
                        curve: *curve,
                    });
                    self.dirty = true;
                }
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
                self.in_flight = self.in_flight.saturating_sub(1);
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
                self.mode = Mode::Confirm(Confirm::yes_no(
                    "Trust this host key?",
                    vec![
                        format!("{host} presents a host key never seen before:"),
                        fingerprint,
                        "Compare it with the machine's own (ssh-keygen -lf).".into(),
                        "Yes records it in trainctl's known_hosts.".into(),
                    ],
                    Command::Launch {
                        provider,
                        req: LaunchRequest {
                            accept_new_host_key: true,
                            ..req
                        },
                    },
                ));
                Vec::new()
            }
            Msg::JobStarted(job) => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.dirty = true;
                self.say(format!("job {job} started"), false);
                let mut c = self.focus(Some(job));
                c.push(Command::Refresh);
                c
            }
            Msg::Underway { job, text } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.say_until(text, false, StatusEnd::JobEnds(job));
                self.dirty = true;
                vec![Command::Refresh]
            }
            Msg::Said(m) => {
                self.say(m, false);
                self.dirty = true;
                Vec::new()
            }
            Msg::Problem(e) => {
                self.say(e, true);
                self.dirty = true;
                Vec::new()
            }
            Msg::Done(r) => {
                self.in_flight = self.in_flight.saturating_sub(1);
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
            Mode::Help(top) => self.on_help_key(ev, top),
            Mode::Messages(back) => self.on_messages_key(ev, back),
            Mode::Quit => self.on_quit_key(ev),
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
                self.load_compared()
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
        if matches!(&self.status, Some(s) if s.ends == StatusEnd::NextKey) {
            self.status = None;
        }
        let Some(action) = self.keymap.action_for(&ev, self.view, self.readonly) else {
            match self.keymap.explain(&ev, self.view, self.readonly) {
                Some(why) => self.say(why, true),
                None if matches!(ev.code, KeyCode::Char(_)) => {
                    self.say(
                        format!(
                            "{}: no such key here ({} lists them)",
                            super::keymap::Key {
                                code: ev.code,
                                mods: ev.modifiers - KeyModifiers::SHIFT
                            },
                            self.keymap.first_key(Action::Help)
                        ),
                        true,
                    );
                }
                None => {}
            }
            return Vec::new();
        };
        match action {
            Action::Quit => {
                self.quit = true;
                Vec::new()
            }
            Action::Close if self.at_top() => {
                if self.in_flight > 0 {
                    self.mode = Mode::Quit;
                } else {
                    self.quit = true;
                }
                Vec::new()
            }
            Action::Back | Action::Close => {
                match self.view {
                    _ if self.dash.on && self.dash.zoom => self.dash.zoom = false,
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
                self.mode = Mode::Help(0);
                Vec::new()
            }
            Action::Messages => {
                self.mode = Mode::Messages(0);
                Vec::new()
            }
            Action::Zoom => {
                if self.dash.on {
                    self.dash.zoom = !self.dash.zoom;
                } else if self.view == View::Logs {
                    self.logs.fullscreen = !self.logs.fullscreen;
                } else {
                    self.say(
                        "each pane is already whole here: the dashboard (and zoom) starts at 120x36",
                        true,
                    );
                }
                Vec::new()
            }
            Action::Grow | Action::Shrink => {
                let d: i16 = if action == Action::Grow { 5 } else { -5 };
                let step = |v: u16, d: i16| (v as i16 + d).clamp(20, 80) as u16;
                match self.view {
                    _ if !self.dash.on => self.say(
                        "panes resize on the dashboard (a terminal of 120x36 and up)",
                        true,
                    ),
                    View::Jobs => self.dash.jobs_pct = step(self.dash.jobs_pct, d),
                    View::Logs => self.dash.log_pct = step(self.dash.log_pct, d),
                    View::Metrics => self.dash.log_pct = step(self.dash.log_pct, -d),
                    _ => self.say(
                        "the jobs list, the log and the chart resize (tab to one of them)",
                        true,
                    ),
                }
                Vec::new()
            }
            Action::CommandLine => {
                self.mode = Mode::Command(String::new());
                Vec::new()
            }
            // Prompts start empty (the filter in force shows in the pane's title).
            Action::Filter => {
                self.mode = Mode::Filter(String::new());
                Vec::new()
            }
            Action::Search => {
                self.mode = Mode::Search(String::new());
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
            // A pane's own actions, in the pane's file.
            a => self
                .on_instances_action(a)
                .or_else(|| self.on_jobs_action(a))
                .or_else(|| self.on_logs_action(a))
                .or_else(|| self.on_metrics_action(a))
                .unwrap_or_default(),
        }
    }
}
