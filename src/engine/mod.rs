//! The engine: launches and terminates instances, drives jobs through their state machine,
//! follows logs into the store, accounts cost and enforces the budget. Both front ends
//! (the headless CLI and the cockpit) use it, and every step is safe to run from several
//! trainctl processes at once: state lives in the store, log offsets advance by
//! compare-and-swap, and a stop request is honoured by whichever process polls next.
//!
//! A running job is watched by a job actor ([`Engine::spawn_job_actor`]): a task that polls
//! the machine ([`Engine::poll_job`]), pumps new log bytes into the store and a local copy,
//! and broadcasts [`EngineEvent`]s to subscribers.

use crate::config::{Project, ProjectConfig, UserConfig};
use crate::cost;
use crate::job::{self, RemoteStatus, artifacts, sync};
use crate::metrics::{LogParser, complete_prefix_len};
use crate::model::{
    InstanceState, JobState, MetricPoint, Money, Progress, TimestampMs, new_id, now_ms,
};
use crate::provider::{LaunchRequest, Launched, Listed, Observed, Provider};
use crate::remote::Remote;
use crate::store::{AttemptRecord, InstanceRecord, JobRecord, LogOffset, Store};
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

mod budget;
pub mod data;
mod fleet;
mod follow;
mod instances;
mod logcopy;
mod poll;
mod query;
mod recovery;
mod start;
pub mod summary;
mod supervisor;
pub use follow::CommittedLog;
pub use recovery::MigrateTarget;

/// Bytes of a job's log parsed and committed at a time (a piece: complete lines, one
/// store transaction); the follow keeps a few pieces in flight between its stages.
const LOG_CHUNK: usize = 1 << 20;

/// What a job was created from, stored with it so any process can re-attach.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    pub project: ProjectConfig,
    pub project_name: String,
    pub root: String,
}

/// What subscribers (the cockpit, `run`) hear about.
#[derive(Debug, Clone)]
pub enum EngineEvent {
    JobState {
        job_id: String,
        state: JobState,
        reason: String,
    },
    /// Complete log lines, sanitised, in order.
    LogLines {
        job_id: String,
        lines: Vec<String>,
    },
    Metrics {
        job_id: String,
        points: Vec<MetricPoint>,
        progress: Progress,
    },
    Instance {
        id: String,
        state: InstanceState,
    },
    Notice {
        job_id: Option<String>,
        message: String,
    },
    /// A transfer for a job under way (a dataset): bytes there so far of `total`.
    Transfer {
        job_id: Option<String>,
        what: String,
        done: u64,
        total: u64,
        elapsed_ms: u64,
    },
}

/// Messages to a job actor.
#[derive(Debug)]
pub enum JobCommand {
    Cancel { reason: String },
}

/// A handle on a job actor: cancel it, or await its end.
pub struct JobHandle {
    pub job_id: String,
    commands: mpsc::Sender<JobCommand>,
    pub done: tokio::task::JoinHandle<Result<JobState>>,
}

impl JobHandle {
    pub async fn cancel(&self, reason: &str) {
        let _ = self
            .commands
            .send(JobCommand::Cancel {
                reason: reason.to_string(),
            })
            .await;
    }
}

struct Inner {
    cfg: UserConfig,
    data_dir: PathBuf,
    store: Mutex<Store>,
    providers: BTreeMap<String, Arc<dyn Provider>>,
    events: broadcast::Sender<EngineEvent>,
    /// Where SSH key passphrases are asked (the cockpit fills it).
    prompt: crate::ssh::remote::PromptSlot,
    /// Where shipped checkpoints are kept.
    checkpoints: Arc<dyn crate::job::checkpoint::CheckpointStore>,
    /// When each job's checkpoint directory was last scanned (scans are rate-limited).
    last_ship: Mutex<HashMap<String, std::time::Instant>>,
    /// When each spot machine's price was last read.
    last_price: Mutex<HashMap<String, std::time::Instant>>,
    /// When each job's GPU samples were last read (read once per sampling interval).
    last_gpu: Mutex<HashMap<String, std::time::Instant>>,
    /// Each followed attempt's parser as the last commit left it, with the offset it
    /// reached: a table header or a YOLO header read in one commit still names the
    /// columns of the rows in the next (a parser resumed from the store knows only the
    /// line and progress).
    parsers: Mutex<HashMap<(String, i64), (u64, crate::metrics::LogParser)>>,
    /// Jobs a job actor of this process supervises now (one actor per job).
    supervised: Mutex<std::collections::HashSet<String>>,
    /// Where each job's log pieces go as this process commits them (a printer), by job.
    log_taps: Mutex<HashMap<String, follow::LogTap>>,
}

/// Whether `key` is due in a rate-limited map (not marked within `every`); marks it now
/// when it is.
fn due(map: &Mutex<HashMap<String, std::time::Instant>>, key: &str, every: Duration) -> bool {
    let mut last = map.lock().unwrap_or_else(|p| p.into_inner());
    let now = std::time::Instant::now();
    if last
        .get(key)
        .is_some_and(|t| now.duration_since(*t) < every)
    {
        return false;
    }
    last.insert(key.to_string(), now);
    true
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    pub fn open(cfg: UserConfig) -> Result<Engine> {
        let data_dir = cfg.data_dir();
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
        let store = Store::open(&data_dir.join("trainctl.db"))?;
        let prompt: crate::ssh::remote::PromptSlot = Arc::default();
        let providers = crate::provider::registry(&cfg, &data_dir, prompt.clone());
        let (events, _) = broadcast::channel(4096);
        let checkpoints_dir = data_dir.clone();
        Ok(Engine {
            inner: Arc::new(Inner {
                cfg,
                data_dir,
                store: Mutex::new(store),
                providers,
                events,
                prompt,
                checkpoints: Arc::new(crate::job::checkpoint::LocalDirStore::new(&checkpoints_dir)),
                last_ship: Mutex::default(),
                last_price: Mutex::default(),
                last_gpu: Mutex::default(),
                parsers: Mutex::default(),
                supervised: Mutex::default(),
                log_taps: Mutex::default(),
            }),
        })
    }

    pub fn config(&self) -> &UserConfig {
        &self.inner.cfg
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// The store, for short synchronous work. Never hold it across an await.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        // Waiting for another task's store work blocks: off the async worker.
        crate::store::off_worker(|| self.inner.store.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Route SSH key passphrase questions to `tx` (the cockpit asks the person).
    pub fn set_passphrase_prompter(&self, tx: mpsc::Sender<crate::ssh::remote::PassphraseRequest>) {
        *self.inner.prompt.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EngineEvent> {
        self.inner.events.subscribe()
    }

    fn emit(&self, e: EngineEvent) {
        let _ = self.inner.events.send(e);
    }

    pub fn provider(&self, name: &str) -> Result<Arc<dyn Provider>> {
        self.inner.providers.get(name).cloned().ok_or_else(|| {
            anyhow!(
                "unknown provider `{name}` (known: {})",
                self.inner
                    .providers
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    pub fn provider_names(&self) -> Vec<String> {
        self.inner.providers.keys().cloned().collect()
    }

    /// A job's state now (`Lost` for a job the store no longer has).
    fn job_state(&self, job_id: &str) -> Result<JobState> {
        Ok(self
            .store()
            .job(job_id)?
            .map_or(JobState::Lost, |j| j.state))
    }

    /// Ids of the jobs that have not ended, oldest first.
    pub fn live_job_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .store()
            .jobs()?
            .into_iter()
            .filter(|j| !j.state.is_terminal())
            .map(|j| j.id)
            .collect())
    }

    /// How attempts run on `inst`: its provider's executor (Slurm's `sbatch`), else
    /// trainctl's detached runner. The caller holds the record already (no store read on
    /// the poll's path).
    pub(crate) fn executor(
        &self,
        inst: &InstanceRecord,
    ) -> Arc<dyn crate::job::executor::Executor> {
        self.provider(&inst.provider)
            .ok()
            .and_then(|p| p.executor(inst))
            .unwrap_or_else(|| Arc::new(crate::job::executor::DetachedRunner))
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(self.inner.cfg.stop_grace_seconds)
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.inner.cfg.poll_interval_ms.max(10))
    }

    /// Where the local copy of an attempt's log lives.
    pub fn local_log_path(&self, job_id: &str, attempt: i64) -> PathBuf {
        self.inner
            .data_dir
            .join("logs")
            .join(job_id)
            .join(format!("{attempt}.log"))
    }

    fn transition(&self, job_id: &str, to: JobState, why: &str, code: Option<i32>) -> Result<()> {
        if self.transition_only(job_id, to, why, code)? && to.is_terminal() {
            self.say_continuations(job_id, to)?;
            self.job_ended(job_id);
        }
        Ok(())
    }

    /// A job that ended after more than one attempt says how many continuations it took
    /// (a run of days on a 4-hour partition: each time limit is one).
    pub(super) fn say_continuations(&self, job_id: &str, to: JobState) -> Result<()> {
        let n = self.store().attempts(job_id)?.len();
        if n > 1 {
            self.store().add_event(
                "job.continuations",
                None,
                Some(job_id),
                &format!(
                    "{to} after {n} attempts: {} continuation(s) after interruptions",
                    n - 1
                ),
            )?;
        }
        Ok(())
    }

    /// [`Engine::transition`] without the end's hook (for a caller that runs it after its
    /// own end work); true when this call moved the job.
    fn transition_only(
        &self,
        job_id: &str,
        to: JobState,
        why: &str,
        code: Option<i32>,
    ) -> Result<bool> {
        let from = self.store().transition_job_with(job_id, to, why, code)?;
        if from != to {
            self.emit(EngineEvent::JobState {
                job_id: job_id.to_string(),
                state: to,
                reason: why.to_string(),
            });
        }
        Ok(from != to)
    }

    /// The process starting `job` exited before the job started: nobody will start it. A
    /// first start fails; a recovery (earlier attempts exist) goes back to Interrupted, so
    /// the next supervisor resumes it.
    fn abandoned_start(&self, job: &JobRecord, attempts: usize) -> Result<()> {
        let why = "the trainctl process starting it exited before the job started";
        if attempts > 0 && job.state != JobState::Pending {
            // A recovery cut off while readying its replacement: resume it on the same
            // replacement (it is fine; only the process driving it died).
            if let Some(id) = job.instance_id.as_deref()
                && self
                    .store()
                    .instance(id)?
                    .is_some_and(|i| i.state == InstanceState::Running)
            {
                self.store()
                    .set_migrate_to(&job.id, &format!("instance:{id}"))?;
            }
            self.transition(&job.id, JobState::Interrupted, why, None)
        } else {
            self.transition(&job.id, JobState::Failed, why, None)
        }
    }

    fn job_instance(&self, job: &JobRecord) -> Result<InstanceRecord> {
        let id = job.instance_id.as_deref().context("job has no instance")?;
        self.store()
            .instance(id)?
            .context("job's instance is not in the store")
    }
}

/// `2x NVIDIA A100 (81920 MiB), 1x T4 (15360 MiB)` from nvidia-smi CSV lines.
pub fn summarize_gpus(csv: &str) -> String {
    let lines: Vec<String> = csv
        .lines()
        .map(|l| {
            crate::sanitize::sanitize_line(l.as_bytes())
                .trim()
                .to_string()
        })
        .filter(|l| !l.is_empty())
        .collect();
    if lines.iter().any(|l| l == "no GPU") {
        return "no GPU".into();
    }
    crate::job::gpu::count_kinds(lines.into_iter().map(|line| match line.split_once(',') {
        Some((name, mem)) => format!("{} ({})", name.trim(), mem.trim()),
        None => line,
    }))
}

/// Lines as a terminal would show them: split on `\n`, a `\r` rewrite keeps only its last
/// non-empty part, control sequences stripped.
pub fn display_lines(chunk: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    each_display_line(chunk, |seg| out.push(crate::sanitize::sanitize_line(seg)));
    out
}

/// [`display_lines`] as one text, each line ending with a newline (printing).
///
/// Stretches of whole lines a terminal shows as they are (no control byte but the
/// newlines, valid UTF-8 without C1 controls, no line of spaces alone) are copied whole;
/// only a line with something to strip or choose goes through [`each_display_line`].
pub fn display_text(chunk: &[u8], out: &mut String) {
    let body = chunk.strip_suffix(b"\n").unwrap_or(chunk);
    if body.is_empty() && chunk.len() <= 1 {
        return;
    }
    out.reserve(body.len() + 1);
    // `at` is always at the start of a line of `body`.
    let mut at = 0;
    loop {
        let Some(bad) = find_control(&body[at..]).map(|p| at + p) else {
            // The rest, its last line (perhaps empty) without its newline.
            plain_lines(&body[at..], out);
            out.push('\n');
            return;
        };
        let line_start = memchr::memrchr(b'\n', &body[at..bad]).map_or(at, |p| at + p + 1);
        let line_end = memchr::memchr(b'\n', &body[bad..]).map(|p| bad + p);
        if line_start > at {
            // Whole lines, each with its newline.
            plain_lines(&body[at..line_start - 1], out);
            out.push('\n');
        }
        let line = &body[line_start..line_end.unwrap_or(body.len())];
        each_display_line(line, |seg| crate::sanitize::sanitize_into(seg, out));
        out.push('\n');
        match line_end {
            Some(e) => at = e + 1,
            None => return,
        }
    }
}

/// The position of the first byte a terminal acts on rather than shows, newlines aside: a
/// C0 control or DEL.
fn find_control(bytes: &[u8]) -> Option<usize> {
    crate::sanitize::first_where(bytes, |b| (b < 0x20 && b != b'\n') || b == 0x7f)
}

static SPACE_NEWLINE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b" \n"));

/// Whether whole lines without a control byte but their newlines (`lines`, the last
/// without its newline) show on a terminal as they are: valid UTF-8 without C1 controls,
/// no line of spaces alone. Then they are that text.
fn shows_as_is(lines: &[u8]) -> Option<&str> {
    let text = simdutf8::basic::from_utf8(lines).ok()?;
    (!memchr::memchr_iter(0xc2, lines)
        .any(|i| lines.get(i + 1).is_some_and(|b| (0x80..=0x9f).contains(b)))
        && ((!lines.ends_with(b" ") && SPACE_NEWLINE.find(lines).is_none())
            || !lines.split(|&b| b == b'\n').any(spaces_alone)))
    .then_some(text)
}

fn spaces_alone(line: &[u8]) -> bool {
    !line.is_empty() && line.iter().all(|&b| b == b' ')
}

/// [`display_text`] of `chunk` as bytes: `chunk` itself when it is whole lines that show
/// as they are (most of a log; nothing copied), else the text made of it.
pub fn display_bytes(chunk: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if let Some(body) = chunk.strip_suffix(b"\n")
        && !body.is_empty()
        && find_control(body).is_none()
        && shows_as_is(body).is_some()
    {
        return std::borrow::Cow::Borrowed(chunk);
    }
    let mut text = String::new();
    display_text(chunk, &mut text);
    std::borrow::Cow::Owned(text.into_bytes())
}

/// Lines without control bytes (joined by their newlines, the last without one) as a
/// terminal shows them: as they are when they are valid UTF-8 without C1 controls and no
/// line is spaces alone, else line by line.
fn plain_lines(lines: &[u8], out: &mut String) {
    if let Some(text) = shows_as_is(lines) {
        out.push_str(text);
        return;
    }
    for (i, line) in lines.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if !spaces_alone(line) {
            crate::sanitize::sanitize_into(line, out);
        }
    }
}

/// The part of each line of `chunk` a terminal would show (after the last `\r` that is
/// followed by something), raw.
fn each_display_line(chunk: &[u8], mut f: impl FnMut(&[u8])) {
    let body = chunk.strip_suffix(b"\n").unwrap_or(chunk);
    if body.is_empty() && chunk.len() <= 1 {
        return;
    }
    // memchr over the bytes rather than `split`'s test of each byte: this runs on every
    // line with a control byte (a tqdm bar's `\r` updates: a twelfth of a training log).
    for line in memchr::memchr_iter(b'\n', body)
        .chain([body.len()])
        .scan(0, |start, end| {
            let line = &body[*start..end];
            *start = end + 1;
            Some(line)
        })
    {
        f(shown_part(line));
    }
}

/// What a terminal shows of one line: after its last `\r` followed by something other
/// than whitespace (a rewrite), nothing for whitespace alone.
fn shown_part(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    loop {
        let start = memchr::memrchr(b'\r', &line[..end]).map_or(0, |p| p + 1);
        let seg = &line[start..end];
        if !seg.iter().all(u8::is_ascii_whitespace) {
            return seg;
        }
        if start == 0 {
            return b"";
        }
        end = start - 1;
    }
}

/// Whether a process with this pid exists on this machine.
pub fn pid_alive(pid: i64) -> bool {
    if pid <= 0 || pid > i32::MAX as i64 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::kill(pid as i32, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_summary() {
        assert_eq!(
            summarize_gpus(
                "NVIDIA A100-SXM4-80GB, 81920 MiB\nNVIDIA A100-SXM4-80GB, 81920 MiB\nTesla T4, 15360 MiB\n"
            ),
            "2x NVIDIA A100-SXM4-80GB (81920 MiB), 1x Tesla T4 (15360 MiB)"
        );
        assert_eq!(summarize_gpus("no GPU\n"), "no GPU");
        assert_eq!(summarize_gpus("\x1b[31mX\x1b[0m, 1 MiB"), "1x X (1 MiB)");
    }

    #[test]
    fn display_text_is_display_lines_joined() {
        for chunk in [
            &b"a\nb\n"[..],
            b"a\nb",
            b"\n",
            b"\n\n",
            b"x\n   \ny\n",
            b" 10%\r100% done\n",
            b"\x1b[31merr\x1b[0m\n",
            "caf\u{e9} \u{85}x\n".as_bytes(),
            b"a\tb\n",
            b"trailing \n",
            b"",
        ] {
            let mut text = String::new();
            display_text(chunk, &mut text);
            let joined: String = display_lines(chunk).into_iter().map(|l| l + "\n").collect();
            assert_eq!(text, joined, "{chunk:?}");
            assert_eq!(*display_bytes(chunk), *text.as_bytes(), "{chunk:?}");
        }
        // Lines that show as they are: handed on as they are, not copied.
        let plain = b"step=1 loss=0.5\ncaf\xc3\xa9 ok\n\n";
        assert!(matches!(
            display_bytes(plain),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn display_text_and_bytes_of_any_bytes_are_display_lines_joined() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for n in 0..20_000 {
            let mut chunk = crate::sanitize::tests::nasty_bytes(&mut seed, n % 120);
            // Lines of spaces alone, blank lines and a plain stretch now and then.
            match n % 7 {
                0 => chunk.extend_from_slice(b"\n   \nplain line\nmore\n"),
                1 => chunk
                    .splice(0..0, b"  \n\nok\n".iter().copied())
                    .for_each(drop),
                2 => chunk.extend_from_slice(b" "),
                _ => {}
            }
            let mut text = String::new();
            display_text(&chunk, &mut text);
            let joined: String = display_lines(&chunk)
                .into_iter()
                .map(|l| l + "\n")
                .collect();
            assert_eq!(text, joined, "{chunk:?}");
            // And the bytes the printer writes of a committed piece.
            assert_eq!(*display_bytes(&chunk), *text.as_bytes(), "{chunk:?}");
        }
    }

    /// `each_display_line` finds lines and `\r` rewrites with memchr; the same parts as
    /// splitting every byte, on any bytes.
    #[test]
    fn each_display_line_is_the_split_by_newline_and_last_rewrite() {
        let reference = |chunk: &[u8]| -> Vec<Vec<u8>> {
            let body = chunk.strip_suffix(b"\n").unwrap_or(chunk);
            if body.is_empty() && chunk.len() <= 1 {
                return Vec::new();
            }
            body.split(|&b| b == b'\n')
                .map(|line| {
                    line.split(|&b| b == b'\r')
                        .rfind(|s| !s.iter().all(u8::is_ascii_whitespace))
                        .unwrap_or(b"")
                        .to_vec()
                })
                .collect()
        };
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for n in 0..20_000 {
            let mut chunk = crate::sanitize::tests::nasty_bytes(&mut seed, n % 90);
            for (i, b) in chunk.iter_mut().enumerate() {
                // More line ends, rewrites and blanks than the generator makes.
                match (i + n) % 11 {
                    0 => *b = b'\r',
                    3 => *b = b' ',
                    7 if n % 3 == 0 => *b = b'\n',
                    _ => {}
                }
            }
            let mut got = Vec::new();
            each_display_line(&chunk, |seg| got.push(seg.to_vec()));
            assert_eq!(got, reference(&chunk), "{chunk:?}");
        }
    }

    #[test]
    fn display_lines_shows_what_a_terminal_shows() {
        assert_eq!(display_lines(b"a\nb\n"), vec!["a", "b"]);
        assert_eq!(display_lines(b" 10%\r 50%\r100% done\n"), vec!["100% done"]);
        assert_eq!(display_lines(b"\x1b[31merr\x1b[0m\n"), vec!["err"]);
        assert!(display_lines(b"\n").len() <= 1);
    }

    /// An engine on a fresh data directory with one `local` machine.
    async fn local_engine() -> (tempfile::TempDir, Engine, InstanceRecord) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = UserConfig {
            data_dir: Some(dir.path().join("data")),
            ..Default::default()
        };
        let engine = Engine::open(cfg).unwrap();
        let inst = engine
            .launch("local", &LaunchRequest::default())
            .await
            .unwrap();
        (dir, engine, inst)
    }

    /// A job `id` on `inst` with its first attempt, as the store holds them once started
    /// (its directory under the machine's `root`).
    fn stored_attempt(
        engine: &Engine,
        inst: &InstanceRecord,
        root: &str,
        id: &str,
    ) -> AttemptRecord {
        let att = AttemptRecord {
            job_id: id.into(),
            attempt: 1,
            instance_id: inst.id.clone(),
            remote_dir: job::job_dir(root, id, 1),
            workdir: "/nowhere".into(),
            started_ms: now_ms(),
            ..Default::default()
        };
        let mut st = engine.store();
        st.insert_job(&JobRecord::pending(id, "t", "/nowhere", "true", &inst.id))
            .unwrap();
        st.add_attempt(&att).unwrap();
        att
    }

    /// The machine's own remote, whose log stream breaks off after `cut_at` bytes as a
    /// lost connection does; everything else is the machine's.
    struct CutStream {
        inner: Arc<dyn Remote>,
        cut_at: Option<usize>,
    }

    #[async_trait::async_trait]
    impl Remote for CutStream {
        fn root(&self) -> &str {
            self.inner.root()
        }
        async fn exec(&self, s: &str) -> Result<crate::remote::ExecOutput> {
            self.inner.exec(s).await
        }
        async fn exec_stream(&self, s: &str, sink: mpsc::Sender<Vec<u8>>) -> Result<i32> {
            self.inner.exec_stream(s, sink).await
        }
        async fn write_file(&self, p: &str, d: &[u8], m: u32) -> Result<()> {
            self.inner.write_file(p, d, m).await
        }
        async fn exec_with_stdin(&self, s: &str, d: &[u8]) -> Result<crate::remote::ExecOutput> {
            self.inner.exec_with_stdin(s, d).await
        }
        async fn append_file(&self, p: &str, d: &[u8]) -> Result<()> {
            self.inner.append_file(p, d).await
        }
        async fn put_files_counted(
            &self,
            root: &Path,
            rels: &[String],
            to: &str,
            sent: Arc<std::sync::atomic::AtomicU64>,
        ) -> Result<Vec<crate::remote::Fetched>> {
            self.inner.put_files_counted(root, rels, to, sent).await
        }
        async fn get(&self, p: &str, dest: &Path) -> Result<crate::remote::Fetched> {
            self.inner.get(p, dest).await
        }
        async fn read_range(&self, p: &str, off: u64, max: usize) -> Result<Option<Vec<u8>>> {
            self.inner.read_range(p, off, max).await
        }
        async fn stream_file(
            &self,
            p: &str,
            off: u64,
            complete_if: Option<&str>,
            sink: mpsc::Sender<Vec<u8>>,
        ) -> Result<crate::remote::Streamed> {
            let Some(n) = self.cut_at else {
                return self.inner.stream_file(p, off, complete_if, sink).await;
            };
            if let Some(b) = self.inner.read_range(p, off, n).await? {
                let _ = sink.send(b).await;
            }
            Err(crate::remote::ConnectionLost("cut".into()).into())
        }
    }

    /// The final read of an ended job: a stream cut in the middle of the last line
    /// commits none of it; the next read, which ends well, commits it whole.
    #[tokio::test]
    async fn a_last_line_cut_short_is_not_committed() {
        let (_dir, engine, inst) = local_engine().await;
        let machine = engine.remote_for(&inst).await.unwrap();
        let att = stored_attempt(&engine, &inst, machine.root(), "j-cut");
        // The job ended with a last line without its newline.
        machine
            .write_file(
                &job::log_path(&att.remote_dir),
                b"step=1 loss=0.5\nstep=2 loss=0.25",
                0o644,
            )
            .await
            .unwrap();
        let cut = CutStream {
            inner: machine.clone(),
            cut_at: Some(25),
        };
        assert!(engine.pump_log(&cut, &att, true).await.is_err());
        assert_eq!(
            engine.store().log_offset("j-cut", 1).unwrap().byte_offset,
            16
        );
        let whole = CutStream {
            inner: machine,
            cut_at: None,
        };
        engine.pump_log(&whole, &att, true).await.unwrap();
        assert_eq!(
            engine.store().log_offset("j-cut", 1).unwrap().byte_offset,
            32
        );
        let loss: Vec<(Option<i64>, f64)> = engine
            .store()
            .metrics("j-cut", Some("loss"))
            .unwrap()
            .iter()
            .map(|p| (p.step, p.value))
            .collect();
        assert_eq!(loss, vec![(Some(1), 0.5), (Some(2), 0.25)]);
        // The local machine runs nothing here: the temp dir going is its end.
    }

    /// A log of `step=N loss=…` lines of at least `len` bytes, put where the attempt's
    /// log is on its machine: the log and its steps.
    async fn put_step_log(machine: &dyn Remote, att: &AttemptRecord, len: usize) -> (Vec<u8>, u64) {
        let mut log = Vec::new();
        let mut steps = 0u64;
        while log.len() < len {
            steps += 1;
            log.extend_from_slice(format!("step={steps} loss={}.5\n", steps % 97).as_bytes());
        }
        machine
            .write_file(&job::log_path(&att.remote_dir), &log, 0o644)
            .await
            .unwrap();
        (log, steps)
    }

    /// Two processes follow one long log at once (many pieces each): whichever loses the
    /// compare-and-swap stops its whole pipeline and returns (it once waited forever on
    /// a parser blocked behind a full channel), and every point is stored exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_followers_of_one_long_log_both_finish_and_store_each_point_once() {
        let (dir, engine, inst) = local_engine().await;
        let other = Engine::open(UserConfig {
            data_dir: Some(dir.path().join("data")),
            ..Default::default()
        })
        .unwrap();
        let machine = engine.remote_for(&inst).await.unwrap();
        let att = stored_attempt(&engine, &inst, machine.root(), "j-two");
        // 24 MiB: two dozen pieces.
        let (log, steps) = put_step_log(machine.as_ref(), &att, 24 << 20).await;
        let both = async {
            tokio::join!(
                engine.pump_log(machine.as_ref(), &att, true),
                other.pump_log(machine.as_ref(), &att, true)
            )
        };
        let (a, b) = tokio::time::timeout(Duration::from_secs(120), both)
            .await
            .expect("both followers return");
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(
            a + b,
            log.len(),
            "each byte committed by exactly one of them"
        );
        assert_eq!(
            engine.store().log_offset("j-two", 1).unwrap().byte_offset,
            log.len() as u64
        );
        let loss = engine.store().metrics("j-two", Some("loss")).unwrap();
        assert_eq!(loss.len() as u64, steps, "every point once");
        assert!(loss.windows(2).all(|w| w[1].step > w[0].step));
    }

    /// The local copy cannot be written (a folder where the file should be): the follow
    /// fails saying so, commits nothing (no offset past bytes the copy does not hold), and
    /// returns rather than wait on its other stages. Once the copy can be written, the
    /// next follow takes the whole log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_local_copy_that_cannot_be_written_fails_the_follow_and_commits_nothing() {
        let (_dir, engine, inst) = local_engine().await;
        let machine = engine.remote_for(&inst).await.unwrap();
        let att = stored_attempt(&engine, &inst, machine.root(), "j-nocopy");
        let (log, steps) = put_step_log(machine.as_ref(), &att, 6 << 20).await;
        let copy = engine.local_log_path("j-nocopy", 1);
        std::fs::create_dir_all(&copy).unwrap();
        let failed = tokio::time::timeout(
            Duration::from_secs(60),
            engine.pump_log(machine.as_ref(), &att, true),
        )
        .await
        .expect("the follow returns");
        let e = format!("{:#}", failed.expect_err("the copy cannot be written"));
        assert!(e.contains(&copy.display().to_string()), "{e}");
        assert_eq!(
            engine
                .store()
                .log_offset("j-nocopy", 1)
                .unwrap()
                .byte_offset,
            0
        );
        assert!(
            engine
                .store()
                .metrics("j-nocopy", Some("loss"))
                .unwrap()
                .is_empty()
        );
        std::fs::remove_dir(&copy).unwrap();
        let n = engine.pump_log(machine.as_ref(), &att, true).await.unwrap();
        assert_eq!(n, log.len());
        assert!(std::fs::read(&copy).unwrap() == log);
        assert_eq!(
            engine
                .store()
                .metrics("j-nocopy", Some("loss"))
                .unwrap()
                .len() as u64,
            steps
        );
    }

    /// Follow `att`'s whole log (`log`) in one go, then drop the job's tap, so that its
    /// printer's queue ends.
    async fn follow_to_end_untapped(
        engine: &Engine,
        machine: &dyn Remote,
        att: &AttemptRecord,
        log: &[u8],
    ) {
        let n = tokio::time::timeout(Duration::from_secs(60), engine.pump_log(machine, att, true))
            .await
            .expect("the follow returns")
            .unwrap();
        assert_eq!(n, log.len());
        engine.untap_log(&att.job_id);
    }

    /// A printer slower than the follow (it takes a while over each piece, its queue one
    /// deep) is still sent every piece: the committer waits for room, so the printer
    /// never has to read the local copy back. A printer that stops reading costs the
    /// follow one wait, not one per piece: the follow finishes, and the printer finds the
    /// one piece it had room for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_printer_is_sent_every_piece_and_a_stopped_one_does_not_stall_the_follow() {
        let (_dir, engine, inst) = local_engine().await;
        let machine = engine.remote_for(&inst).await.unwrap();
        let att = stored_attempt(&engine, &inst, machine.root(), "j-tap");
        // Ten pieces or so.
        let (log, _) = put_step_log(machine.as_ref(), &att, 10 << 20).await;
        let pieces = engine.tap_log("j-tap", 1);
        let printer = std::thread::spawn(move || {
            let mut got = Vec::new();
            while let Ok(p) = pieces.recv() {
                std::thread::sleep(Duration::from_millis(150));
                got.push((p.offset, p.bytes.len()));
            }
            got
        });
        follow_to_end_untapped(&engine, machine.as_ref(), &att, &log).await;
        let got = printer.join().unwrap();
        assert!(got.len() > 3, "{got:?}");
        let mut at = 0;
        for (offset, len) in &got {
            assert_eq!(*offset, at, "pieces sent in order, none left out: {got:?}");
            at += *len as u64;
        }
        assert_eq!(at, log.len() as u64);

        // A printer that never reads: its queue fills at once.
        let att = stored_attempt(&engine, &inst, machine.root(), "j-stuck");
        let (log, _) = put_step_log(machine.as_ref(), &att, 10 << 20).await;
        let pieces = engine.tap_log("j-stuck", 1);
        follow_to_end_untapped(&engine, machine.as_ref(), &att, &log).await;
        let got: Vec<_> = pieces.iter().map(|p| p.offset).collect();
        assert_eq!(got, vec![0], "only the first piece found room");
    }

    /// A poll reads the status, the log and the GPU samples side by side: while the job
    /// runs, a last line without its newline waits for it; once the job's exit code is on
    /// the machine, the poll that sees it takes the whole log, that line included.
    #[tokio::test]
    async fn a_poll_beside_the_status_takes_an_ended_jobs_last_line_whole() {
        let (_dir, engine, inst) = local_engine().await;
        let machine = engine.remote_for(&inst).await.unwrap();
        let att = stored_attempt(&engine, &inst, machine.root(), "j-end");
        {
            let mut st = engine.store();
            for s in [JobState::Syncing, JobState::Starting, JobState::Running] {
                st.transition_job("j-end", s, "t").unwrap();
            }
        }
        let log = job::log_path(&att.remote_dir);
        machine
            .write_file(&log, b"step=1 loss=0.5\nstep=2 loss=0.2", 0o644)
            .await
            .unwrap();
        // A live runner (this process stands in for it).
        let pid = format!("{}\n", std::process::id());
        machine
            .write_file(&format!("{}/pid", att.remote_dir), pid.as_bytes(), 0o644)
            .await
            .unwrap();
        let offset = || engine.store().log_offset("j-end", 1).unwrap().byte_offset;
        assert_eq!(engine.poll_job("j-end").await.unwrap(), JobState::Running);
        assert_eq!(offset(), 16, "the half line waits while the job runs");
        // The line goes on and the job ends without a last newline.
        machine
            .write_file(&log, b"step=1 loss=0.5\nstep=2 loss=0.25", 0o644)
            .await
            .unwrap();
        machine
            .write_file(&job::exit_code_path(&att.remote_dir), b"0\n", 0o644)
            .await
            .unwrap();
        assert_eq!(engine.poll_job("j-end").await.unwrap(), JobState::Succeeded);
        assert_eq!(offset(), 32);
        let loss: Vec<f64> = engine
            .store()
            .metrics("j-end", Some("loss"))
            .unwrap()
            .iter()
            .map(|p| p.value)
            .collect();
        assert_eq!(loss, vec![0.5, 0.25]);
        engine.terminate(&inst.id, "test over").await.unwrap();
    }

    /// The attempt row is written before the job's directory exists on the machine; a
    /// second process polling in between must not call the job lost.
    #[tokio::test]
    async fn a_starting_job_without_its_directory_yet_is_not_lost() {
        let (dir, engine, inst) = local_engine().await;
        let starting = |id: &str, driver: i64| {
            let j = JobRecord {
                driver_pid: Some(driver),
                ..JobRecord::pending(id, "t", "/nowhere", "true", &inst.id)
            };
            let mut st = engine.store();
            st.insert_job(&j).unwrap();
            st.transition_job(id, JobState::Syncing, "t").unwrap();
            st.transition_job(id, JobState::Starting, "t").unwrap();
            st.add_attempt(&AttemptRecord {
                job_id: id.into(),
                attempt: 1,
                instance_id: inst.id.clone(),
                remote_dir: dir.path().join("not-yet").to_string_lossy().into_owned(),
                workdir: "/nowhere".into(),
                started_ms: now_ms(),
                ended_ms: None,
                exit_code: None,
                ..Default::default()
            })
            .unwrap();
        };
        // Its starter is alive (this process): still starting.
        starting("j-alive", std::process::id() as i64);
        assert_eq!(
            engine.poll_job("j-alive").await.unwrap(),
            JobState::Starting
        );
        // Its starter is gone: it failed to start; it was never lost on the machine.
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let pid = dead.id() as i64;
        dead.wait().unwrap();
        starting("j-orphan", pid);
        assert_eq!(engine.poll_job("j-orphan").await.unwrap(), JobState::Failed);
        engine.terminate(&inst.id, "test over").await.unwrap();
    }
}
