//! The store: one SQLite file (WAL) shared by every trainctl process, the cockpit included.
//!
//! Every state change goes through a method here that also writes an event row in the same
//! transaction. Writes take the lock up front (`BEGIN IMMEDIATE`) so two processes never
//! dead-lock on a read-to-write upgrade, and wait (busy timeout) rather than fail.

use crate::model::{InstanceState, JobState, MetricPoint, Money, Progress, TimestampMs, now_ms};
use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Versioned migrations; the index + 1 is the schema version (`PRAGMA user_version`).
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        name TEXT NOT NULL,
        instance_type TEXT NOT NULL,
        spot INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        hourly_micros INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        launched_ms INTEGER,
        terminated_ms INTEGER,
        address TEXT,
        error TEXT
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        project TEXT NOT NULL,
        project_dir TEXT NOT NULL,
        command TEXT NOT NULL,
        spec_json TEXT NOT NULL,
        state TEXT NOT NULL,
        instance_id TEXT REFERENCES instances(id),
        created_ms INTEGER NOT NULL,
        started_ms INTEGER,
        ended_ms INTEGER,
        exit_code INTEGER,
        reason TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        -- pid of the trainctl process syncing and starting it (until it runs detached)
        driver_pid INTEGER,
        -- when SIGTERM was sent to stop it (SIGKILL follows after the grace)
        stop_sent_ms INTEGER,
        -- terminate the machine once the job ends (budget breach)
        terminate_on_end INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE job_attempts (
        job_id TEXT NOT NULL REFERENCES jobs(id),
        attempt INTEGER NOT NULL,
        instance_id TEXT NOT NULL REFERENCES instances(id),
        remote_dir TEXT NOT NULL,
        workdir TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        ended_ms INTEGER,
        exit_code INTEGER,
        PRIMARY KEY (job_id, attempt)
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        instance_id TEXT,
        job_id TEXT,
        message TEXT NOT NULL
    );
    CREATE INDEX events_job ON events(job_id);
    CREATE TABLE metric_points (
        job_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        line INTEGER NOT NULL,
        name TEXT NOT NULL,
        value REAL,
        step INTEGER,
        epoch REAL,
        ts_ms INTEGER NOT NULL
    );
    CREATE INDEX metric_points_job ON metric_points(job_id, name);
    CREATE TABLE log_offsets (
        job_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        byte_offset INTEGER NOT NULL,
        line INTEGER NOT NULL,
        progress_json TEXT NOT NULL,
        progress_ms INTEGER,
        PRIMARY KEY (job_id, attempt)
    );
    CREATE TABLE artifacts (
        job_id TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        blake3 TEXT NOT NULL,
        local_path TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        PRIMARY KEY (job_id, path)
    );",
    // 2: GPUs per instance (shown in the cockpit; the local provider has none).
    "ALTER TABLE instances ADD COLUMN gpus INTEGER NOT NULL DEFAULT 0;",
    // 3: what the machine says about its GPUs (nvidia-smi), or "no GPU".
    "ALTER TABLE instances ADD COLUMN gpu_info TEXT;",
    // 4: jobs that outlive their machine. What the provider answered to a launch (its own
    // id, region, opaque backend data) is kept as soon as it answers. What the user asked at `run` (pull on end)
    // outlives the process that heard it; the replacement machine a recovery chose is
    // recorded before it is launched; a migration's target; shipped checkpoints.
    "ALTER TABLE jobs ADD COLUMN pull_on_end INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE jobs ADD COLUMN recovery_instance TEXT;
    ALTER TABLE jobs ADD COLUMN migrate_to TEXT;
    ALTER TABLE instances ADD COLUMN provider_id TEXT;
    ALTER TABLE instances ADD COLUMN region TEXT;
    ALTER TABLE instances ADD COLUMN backend TEXT;
    ALTER TABLE instances ADD COLUMN launch_pid INTEGER;
    ALTER TABLE jobs ADD COLUMN lease_pid INTEGER;
    ALTER TABLE jobs ADD COLUMN lease_until_ms INTEGER;
    CREATE TABLE checkpoints (
        job_id TEXT NOT NULL,
        name TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        size INTEGER NOT NULL,
        mtime_ms INTEGER NOT NULL,
        blake3 TEXT NOT NULL,
        local_path TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        PRIMARY KEY (job_id, name)
    );
    CREATE INDEX metric_points_step ON metric_points(job_id, name, step);
    -- An instance's price over time (a spot price moves): each row is the hourly price
    -- from from_ms on; the first row also covers any time before it.
    CREATE TABLE price_segments (
        instance_id TEXT NOT NULL,
        from_ms INTEGER NOT NULL,
        hourly_micros INTEGER NOT NULL,
        PRIMARY KEY (instance_id, from_ms)
    );",
    // 5: the provider's minimum billed time per machine (EC2 bills at least 60 s).
    "ALTER TABLE instances ADD COLUMN min_billed_ms INTEGER NOT NULL DEFAULT 0;",
    // 6: an instance's events by kind (the fleet step asks for the newest of a kind).
    "CREATE INDEX events_instance ON events(instance_id, kind);",
    // 7: metric points packed per series (`series.rs`): one row per metric per commit of
    // the log instead of one per point (the rows of `metric_points` are moved here by
    // `pack_old_points`, then the table is dropped).
    "CREATE TABLE metric_chunks (
        job_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        name TEXT NOT NULL,
        n INTEGER NOT NULL,
        data BLOB NOT NULL
    );
    CREATE INDEX metric_chunks_job ON metric_chunks(job_id, name);",
    // 8: files of an attempt followed beside its log (`gpu`: the machine's GPU samples),
    // each with its offset, committed with the points read from it; `idle_since_ms`: since
    // when every GPU sample of the attempt said idle (none: busy, or no sample yet).
    "CREATE TABLE stream_offsets (
        job_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        stream TEXT NOT NULL,
        byte_offset INTEGER NOT NULL,
        idle_since_ms INTEGER,
        PRIMARY KEY (job_id, attempt, stream)
    );",
    // 9: an attempt's GPUs, when it began to run (a scheduler's queue time is not GPU
    // time) and its own price per GPU-hour (a cluster bills jobs, not a machine). An
    // attempt made before knew no better than its machine's GPUs from its start.
    "ALTER TABLE job_attempts ADD COLUMN gpus INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE job_attempts ADD COLUMN running_ms INTEGER;
    ALTER TABLE job_attempts ADD COLUMN gpu_hour_micros INTEGER NOT NULL DEFAULT 0;
    UPDATE job_attempts SET running_ms = started_ms,
        gpus = COALESCE((SELECT gpus FROM instances WHERE instances.id = job_attempts.instance_id), 0);",
    // 10: a series' chunks of one attempt, and a job's chunks in store order, each an index
    // range (a query that needed a sort read every chunk of the job, points and all,
    // before its first row: 80-230 ms to the first point of a 10 M-point series).
    "CREATE INDEX metric_chunks_series ON metric_chunks(job_id, name, attempt);
    CREATE INDEX metric_chunks_rows ON metric_chunks(job_id);",
];

/// The query of [`Store::each_chunk`]: a job's metric chunks after a rowid (`?4`), of one
/// metric (`?2`) and one attempt (`?3`) when asked. Only the filters given are in it, so
/// each combination is a range of one index, in rowid order (`?2 IS NULL OR name = ?2`
/// hid the index from the planner, which then sorted every chunk of the job, points and
/// all, before the first row).
fn chunks_query(name: bool, attempt: bool, newest_first: bool) -> String {
    format!(
        "SELECT rowid, attempt, name, n, data FROM metric_chunks
         WHERE job_id = ?1{}{} AND rowid > ?4
         ORDER BY rowid {}",
        if name { " AND name = ?2" } else { "" },
        if attempt { " AND attempt = ?3" } else { "" },
        if newest_first { "DESC" } else { "ASC" }
    )
}

/// Where a metric point sits in its series, for the rule that a later attempt's point
/// replaces an earlier attempt's at the same place: its step, else its epoch (a point
/// with neither is never replaced).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
enum ReplacedAt {
    Step(i64),
    Epoch(u64),
}

impl ReplacedAt {
    fn of(p: &MetricPoint) -> Option<ReplacedAt> {
        match (p.step, p.epoch) {
            (Some(s), _) => Some(ReplacedAt::Step(s)),
            (None, Some(e)) => Some(ReplacedAt::Epoch(e.to_bits())),
            (None, None) => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InstanceRecord {
    pub id: String,
    pub provider: String,
    pub name: String,
    pub instance_type: String,
    pub spot: bool,
    pub gpus: u32,
    /// The machine's own account of its GPUs (`nvidia-smi`), once asked.
    pub gpu_info: Option<String>,
    pub state: InstanceState,
    pub hourly: Money,
    pub created_ms: TimestampMs,
    pub launched_ms: Option<TimestampMs>,
    pub terminated_ms: Option<TimestampMs>,
    /// Where the machine is reached: a sandbox path (local) or host (ssh).
    pub address: Option<String>,
    pub error: Option<String>,
    /// The provider's own id (EC2 instance id, pod id...), once it answered the launch.
    pub provider_id: Option<String>,
    pub region: Option<String>,
    /// Provider-only data (JSON text), opaque to the engine.
    pub backend: Option<String>,
    /// The price over time, oldest first, when it ever changed (a spot price); empty
    /// means `hourly` all along. Cost sums the segments exactly.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub price_segments: Vec<(TimestampMs, Money)>,
    /// The least time the provider bills a machine for (EC2: 60 s); 0 for none.
    pub min_billed_ms: i64,
}

impl InstanceRecord {
    /// A launch intent: Pending, created now, named by its id, nothing launched or known
    /// about it yet. Callers set what they know beyond that.
    pub fn intent(id: &str, provider: &str, instance_type: &str, hourly: Money) -> InstanceRecord {
        InstanceRecord {
            id: id.into(),
            provider: provider.into(),
            name: id.into(),
            instance_type: instance_type.into(),
            spot: false,
            gpus: 0,
            gpu_info: None,
            state: InstanceState::Pending,
            hourly,
            created_ms: now_ms(),
            launched_ms: None,
            terminated_ms: None,
            address: None,
            error: None,
            provider_id: None,
            region: None,
            backend: None,
            price_segments: Vec::new(),
            min_billed_ms: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub name: String,
    pub project: String,
    pub project_dir: String,
    pub command: String,
    pub spec_json: String,
    pub state: JobState,
    pub instance_id: Option<String>,
    pub created_ms: TimestampMs,
    pub started_ms: Option<TimestampMs>,
    pub ended_ms: Option<TimestampMs>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub cancel_requested: bool,
    pub driver_pid: Option<i64>,
    pub stop_sent_ms: Option<TimestampMs>,
    /// Terminate the machine once the job ends (`run --terminate-after`, budget breach).
    pub terminate_on_end: bool,
    /// With `terminate_on_end`: pull the artifacts first.
    pub pull_on_end: bool,
    /// The replacement machine a recovery chose (recorded before it is launched).
    pub recovery_instance: Option<String>,
    /// Where `migrate` asked the job to go: `instance:ID` or `type:T` (or `same`).
    pub migrate_to: Option<String>,
}

impl JobRecord {
    /// The state as people read it: a job a scheduler holds in its queue is `queued`.
    pub fn state_label(&self) -> String {
        match (&self.state, &self.reason) {
            (JobState::Starting | JobState::Running, Some(r)) if r.starts_with("queued:") => {
                "queued".into()
            }
            (s, _) => s.to_string(),
        }
    }

    /// A job that has not run yet: Pending on `instance_id`, created now, named after its
    /// project, no driver, spec `{}`. Callers set what they know beyond that.
    pub fn pending(
        id: &str,
        project: &str,
        project_dir: &str,
        command: &str,
        instance_id: &str,
    ) -> JobRecord {
        JobRecord {
            id: id.into(),
            name: project.into(),
            project: project.into(),
            project_dir: project_dir.into(),
            command: command.into(),
            spec_json: "{}".into(),
            state: JobState::Pending,
            instance_id: Some(instance_id.into()),
            created_ms: now_ms(),
            started_ms: None,
            ended_ms: None,
            exit_code: None,
            reason: None,
            cancel_requested: false,
            driver_pid: None,
            stop_sent_ms: None,
            terminate_on_end: false,
            pull_on_end: true,
            recovery_instance: None,
            migrate_to: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct AttemptRecord {
    pub job_id: String,
    pub attempt: i64,
    pub instance_id: String,
    /// The job's directory on the machine (runner files, `stdout.log`).
    pub remote_dir: String,
    /// Where the command runs on the machine.
    pub workdir: String,
    pub started_ms: TimestampMs,
    pub ended_ms: Option<TimestampMs>,
    pub exit_code: Option<i32>,
    /// GPUs the attempt holds (all its nodes'): GPU-hours are these over its run time.
    pub gpus: u32,
    /// When its command began to run: its start on a machine of its own; on a scheduler,
    /// when the scheduler said it runs (none while it waits in the queue).
    pub running_ms: Option<TimestampMs>,
    /// Dollars (micro) per GPU-hour of the attempt's own run time, when the provider
    /// bills the job rather than a machine (a Slurm cluster with a price); 0: the
    /// machine's price is what the attempt costs.
    pub gpu_hour_micros: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventRecord {
    pub id: i64,
    pub ts_ms: TimestampMs,
    pub kind: String,
    pub instance_id: Option<String>,
    pub job_id: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct LogOffset {
    pub byte_offset: u64,
    pub line: u64,
    pub progress: Progress,
    /// When progress last moved (for the ETA).
    pub progress_ms: Option<TimestampMs>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ArtifactRecord {
    pub job_id: String,
    pub path: String,
    pub size: u64,
    pub blake3: String,
    pub local_path: String,
}

/// A checkpoint file shipped off the machine into the checkpoint store.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckpointRecord {
    pub job_id: String,
    /// Path relative to the job's checkpoint directory.
    pub name: String,
    /// The attempt that wrote it.
    pub attempt: i64,
    pub size: u64,
    /// Its modification time on the machine.
    pub mtime_ms: TimestampMs,
    pub blake3: String,
    /// Where the checkpoint store keeps it.
    pub local_path: String,
}

/// How long one statement waits for another process's lock (SQLite's busy handler).
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Run blocking store work without holding an async worker hostage: on a multi-threaded
/// tokio runtime the worker hands its other tasks to another thread while `f` blocks
/// (`block_in_place`); elsewhere (no runtime, a current-thread runtime, a blocking
/// thread) `f` simply runs. SQLite calls wait up to the busy timeout when another process
/// writes, and a waiting worker must not stall the cockpit or a follow.
pub fn off_worker<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Whether `e` is SQLite saying another connection holds a lock (transient).
pub fn is_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(f, _))
                if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    })
}

/// Run `f` again while it fails with a busy/locked store: jittered exponential backoff
/// from 2 ms to 500 ms, for up to two busy timeouts in all; any other error returns at once.
fn retry_busy<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let start = std::time::Instant::now();
    let mut delay_ms = 2u64;
    loop {
        match f() {
            Err(e) if is_busy(&e) && start.elapsed() < 2 * BUSY_TIMEOUT => {
                // Jitter from the clock's low bits: no two processes retry in step.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos() as u64)
                    .unwrap_or(0);
                let sleep = delay_ms / 2 + nanos % (delay_ms / 2 + 1);
                tracing::debug!("store busy ({e:#}); retrying in {sleep} ms");
                std::thread::sleep(std::time::Duration::from_millis(sleep));
                delay_ms = (delay_ms * 2).min(500);
            }
            r => return r,
        }
    }
}

/// An exclusive `flock` on `<store>.lock`, held while a process creates, switches to WAL
/// and migrates the store; released on drop (and by the kernel if the process dies).
struct InitLock(std::fs::File);

impl InitLock {
    fn acquire(store: &Path) -> Result<InitLock> {
        use std::os::fd::AsRawFd;
        let mut name = store.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        loop {
            // SAFETY: flock on a descriptor this File owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(InitLock(file));
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err).with_context(|| format!("locking {}", path.display()));
            }
        }
    }
}

impl Drop for InitLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as above; closing the file would release it too.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// A handle on the store file. One per thread; cheap to open.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Open (creating if needed) the store at `path`. Safe however many processes open one
    /// store at once, a brand-new one included: the file is created, switched to WAL and
    /// migrated by one opener at a time, under an exclusive `flock` on `<path>.lock`.
    /// (Two openers each switching a fresh file to WAL deadlock inside SQLite — each holds
    /// a read lock while asking for the exclusive one — and SQLite answers one of them
    /// `SQLITE_BUSY` at once, without consulting the busy handler: issue 16.)
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the data directory {}", dir.display()))?;
        }
        let _init = InitLock::acquire(path)?;
        let conn = Connection::open(path)
            .with_context(|| format!("opening the store {}", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        retry_busy(|| {
            let mode: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                bail!(
                    "the store {} cannot use WAL (journal mode {mode})",
                    path.display()
                );
            }
            Ok(())
        })
        .context("switching the store to WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store.migrate().context("migrating the store")?;
        Ok(store)
    }

    /// Run `f` in a write transaction taken up front (`BEGIN IMMEDIATE`), committed when
    /// `f` succeeds. A `SQLITE_BUSY`/`SQLITE_LOCKED` that escapes the busy timeout (cases
    /// where SQLite does not consult the handler) is transient: the whole transaction is
    /// rolled back and run again with backoff, never reported as a failure.
    fn write<T>(
        &mut self,
        mut f: impl FnMut(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let conn = &mut self.conn;
        off_worker(|| {
            retry_busy(|| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let v = f(&tx)?;
                tx.commit()?;
                Ok(v)
            })
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&mut self) -> Result<()> {
        let path = self.path.clone();
        self.write(|tx| {
            let version: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            if version > MIGRATIONS.len() {
                bail!(
                    "the store {} has schema version {version}, newer than this trainctl knows ({}); upgrade trainctl",
                    path.display(),
                    MIGRATIONS.len()
                );
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
                tx.execute_batch(sql)
                    .with_context(|| format!("store migration {}", i + 1))?;
                if i + 1 == 7 {
                    Self::pack_old_points(tx).context("store migration 7")?;
                }
                tx.pragma_update(None, "user_version", i + 1)?;
            }
            Ok(())
        })
    }

    pub fn schema_version(&self) -> Result<usize> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    fn event_tx(
        tx: &rusqlite::Transaction<'_>,
        kind: &str,
        instance_id: Option<&str>,
        job_id: Option<&str>,
        message: &str,
    ) -> Result<()> {
        tx.execute(
            "INSERT INTO events (ts_ms, kind, instance_id, job_id, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now_ms(), kind, instance_id, job_id, message],
        )?;
        Ok(())
    }

    /// When `instance_id` last had an event of `kind`, if ever.
    pub fn last_instance_event_ms(
        &self,
        instance_id: &str,
        kind: &str,
    ) -> Result<Option<TimestampMs>> {
        Ok(self.conn.query_row(
            "SELECT MAX(ts_ms) FROM events WHERE instance_id = ?1 AND kind = ?2",
            params![instance_id, kind],
            |r| r.get(0),
        )?)
    }

    pub fn add_event(
        &mut self,
        kind: &str,
        instance_id: Option<&str>,
        job_id: Option<&str>,
        message: &str,
    ) -> Result<()> {
        self.write(|tx| {
            Self::event_tx(tx, kind, instance_id, job_id, message)?;
            Ok(())
        })
    }

    // ---------------------------------------------------------------- instances

    /// Record the intent to launch, before any provider call.
    pub fn insert_instance(&mut self, r: &InstanceRecord) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO instances (id, provider, name, instance_type, spot, state, hourly_micros,
                    created_ms, launched_ms, terminated_ms, address, error, gpus, provider_id,
                    region, backend, launch_pid, min_billed_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                    ?17, ?18)",
                params![
                    r.id,
                    r.provider,
                    r.name,
                    r.instance_type,
                    r.spot,
                    r.state.as_str(),
                    r.hourly.0,
                    r.created_ms,
                    r.launched_ms,
                    r.terminated_ms,
                    r.address,
                    r.error,
                    r.gpus,
                    r.provider_id,
                    r.region,
                    r.backend,
                    std::process::id() as i64,
                    r.min_billed_ms
                ],
            )?;
            Self::event_tx(
                tx,
                "instance.intent",
                Some(&r.id),
                None,
                &format!(
                    "launch of {} ({}) on {} recorded at {}/h",
                    r.name, r.instance_type, r.provider, r.hourly
                ),
            )?;
            Ok(())
        })
    }

    /// What the provider answered to the launch of `id`: kept before anything waits on the
    /// machine. Billing starts at the provider's own launch time.
    pub fn record_launched(
        &mut self,
        id: &str,
        l: &crate::provider::Launched,
        launched_ms: TimestampMs,
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE instances SET provider_id = ?2, region = ?3, backend = ?4,
                    launched_ms = COALESCE(launched_ms, ?5),
                    hourly_micros = COALESCE(?6, hourly_micros),
                    instance_type = COALESCE(?7, instance_type) WHERE id = ?1",
                params![
                    id,
                    l.provider_id,
                    l.region,
                    l.backend,
                    launched_ms,
                    l.hourly.map(|m| m.0),
                    l.instance_type
                ],
            )?;
            for note in &l.notes {
                Self::event_tx(tx, "instance.launch_try", Some(id), None, note)?;
            }
            Self::event_tx(
                tx,
                "instance.launched",
                Some(id),
                None,
                &format!(
                    "the provider holds it as {}{}",
                    l.provider_id,
                    l.region
                        .as_deref()
                        .map_or(String::new(), |r| format!(" in {r}"))
                ),
            )?;
            Ok(())
        })
    }

    /// The pid of the trainctl process that recorded a launch intent (while it lives, the
    /// launch is in flight and nobody else heals it).
    pub fn launch_pid(&self, id: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT launch_pid FROM instances WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// The provider confirmed the machine: running, reachable at `address`.
    pub fn mark_instance_running(
        &mut self,
        id: &str,
        address: &str,
        launched_ms: i64,
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE instances SET state = 'running', address = ?2,
                    launched_ms = COALESCE(launched_ms, ?3) WHERE id = ?1",
                params![id, address, launched_ms],
            )?;
            Self::event_tx(
                tx,
                "instance.running",
                Some(id),
                None,
                &format!("running at {address}"),
            )?;
            Ok(())
        })
    }

    /// Change an instance's state, with an event saying why. `terminated_ms` is set when
    /// moving to Terminated or Lost (cost accrual stops there).
    pub fn set_instance_state(&mut self, id: &str, to: InstanceState, why: &str) -> Result<()> {
        self.write(|tx| {
            let ended = matches!(
                to,
                InstanceState::Terminated | InstanceState::Lost | InstanceState::Preempted
            );
            let n = if ended {
                tx.execute(
                    "UPDATE instances SET state = ?2, terminated_ms = COALESCE(terminated_ms, ?3),
                        error = CASE WHEN ?2 = 'lost' THEN ?4 ELSE error END WHERE id = ?1",
                    params![id, to.as_str(), now_ms(), why],
                )?
            } else {
                tx.execute(
                    "UPDATE instances SET state = ?2 WHERE id = ?1",
                    params![id, to.as_str()],
                )?
            };
            if n == 0 {
                bail!("no instance {id} in the store");
            }
            Self::event_tx(
                tx,
                &format!("instance.{}", to.as_str()),
                Some(id),
                None,
                why,
            )?;
            Ok(())
        })
    }

    pub fn set_gpu_info(&mut self, id: &str, info: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE instances SET gpu_info = ?2 WHERE id = ?1",
                params![id, info],
            )?;
            Ok(())
        })
    }

    pub fn set_instance_error(&mut self, id: &str, error: Option<&str>) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE instances SET error = ?2 WHERE id = ?1",
                params![id, error],
            )?;
            Ok(())
        })
    }

    fn instance_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<InstanceRecord> {
        let state: String = r.get(5)?;
        Ok(InstanceRecord {
            id: r.get(0)?,
            provider: r.get(1)?,
            name: r.get(2)?,
            instance_type: r.get(3)?,
            spot: r.get(4)?,
            state: InstanceState::parse(&state).unwrap_or(InstanceState::Lost),
            hourly: Money(r.get(6)?),
            created_ms: r.get(7)?,
            launched_ms: r.get(8)?,
            terminated_ms: r.get(9)?,
            address: r.get(10)?,
            error: r.get(11)?,
            gpus: r.get(12)?,
            gpu_info: r.get(13)?,
            provider_id: r.get(14)?,
            region: r.get(15)?,
            backend: r.get(16)?,
            price_segments: Vec::new(),
            min_billed_ms: r.get(17)?,
        })
    }

    const INSTANCE_COLS: &'static str =
        "id, provider, name, instance_type, spot, state, hourly_micros,
        created_ms, launched_ms, terminated_ms, address, error, gpus, gpu_info, provider_id,
        region, backend, min_billed_ms";

    pub fn instance(&self, id: &str) -> Result<Option<InstanceRecord>> {
        let sql = format!(
            "SELECT {} FROM instances WHERE id = ?1",
            Self::INSTANCE_COLS
        );
        let Some(inst) = self
            .conn
            .query_row(&sql, params![id], Self::instance_row)
            .optional()?
        else {
            return Ok(None);
        };
        let mut one = [inst];
        self.attach_price_segments(&mut one, Some(id))?;
        let [inst] = one;
        Ok(Some(inst))
    }

    /// Find an instance by id, unique id prefix, or name (live instances first).
    pub fn find_instance(&self, key: &str) -> Result<InstanceRecord> {
        if let Some(r) = self.instance(key)? {
            return Ok(r);
        }
        let all = self.instances(true)?;
        let hits: Vec<_> = all
            .iter()
            .filter(|i| i.id.starts_with(key) || i.name == key)
            .collect();
        let live: Vec<_> = hits.iter().filter(|i| i.state.is_live()).collect();
        match (hits.len(), live.len()) {
            (0, _) => bail!("no instance `{key}` (see `trainctl ls --all`)"),
            (1, _) => Ok(hits[0].clone()),
            (_, 1) => Ok((*live[0]).clone()),
            _ => bail!(
                "`{key}` matches {} instances; give more of the id",
                hits.len()
            ),
        }
    }

    /// Instances, newest first. `all = false` keeps only those that may still bill.
    pub fn instances(&self, all: bool) -> Result<Vec<InstanceRecord>> {
        let filter = if all {
            ""
        } else {
            "WHERE state IN ('pending', 'running', 'terminating', 'stopped')"
        };
        let sql = format!(
            "SELECT {} FROM instances {filter} ORDER BY created_ms DESC, id DESC",
            Self::INSTANCE_COLS
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], Self::instance_row)?;
        let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        self.attach_price_segments(&mut out, None)?;
        Ok(out)
    }

    /// Fill `price_segments` of `insts` (one query; `only` narrows it to one instance).
    fn attach_price_segments(
        &self,
        insts: &mut [InstanceRecord],
        only: Option<&str>,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT instance_id, from_ms, hourly_micros FROM price_segments
             WHERE ?1 IS NULL OR instance_id = ?1 ORDER BY instance_id, from_ms",
        )?;
        let mut by_id: HashMap<String, Vec<(TimestampMs, Money)>> = HashMap::new();
        for row in stmt.query_map(params![only], |r| {
            Ok((r.get::<_, String>(0)?, r.get(1)?, Money(r.get(2)?)))
        })? {
            let (id, from, price) = row?;
            by_id.entry(id).or_default().push((from, price));
        }
        for i in insts {
            if let Some(v) = by_id.remove(&i.id) {
                i.price_segments = v;
            }
        }
        Ok(())
    }

    /// The instance's price changes to `hourly` from `from_ms` on (a spot price moved).
    /// The price it had until then is kept as the first segment, so cost stays exact.
    pub fn set_price(&mut self, id: &str, from_ms: TimestampMs, hourly: Money) -> Result<()> {
        self.write(|tx| {
            let (old, since): (i64, i64) = tx.query_row(
                "SELECT hourly_micros, COALESCE(launched_ms, created_ms) FROM instances WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO price_segments (instance_id, from_ms, hourly_micros)
                 SELECT ?1, ?2, ?3 WHERE NOT EXISTS
                    (SELECT 1 FROM price_segments WHERE instance_id = ?1)",
                params![id, since.min(from_ms), old],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO price_segments (instance_id, from_ms, hourly_micros)
                 VALUES (?1, ?2, ?3)",
                params![id, from_ms, hourly.0],
            )?;
            tx.execute(
                "UPDATE instances SET hourly_micros = ?2 WHERE id = ?1",
                params![id, hourly.0],
            )?;
            Self::event_tx(
                tx,
                "instance.price",
                Some(id),
                None,
                &format!("{}/h from {from_ms} (was {}/h)", hourly, Money(old)),
            )?;
            Ok(())
        })
    }

    // --------------------------------------------------------------------- jobs

    pub fn insert_job(&mut self, j: &JobRecord) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO jobs (id, name, project, project_dir, command, spec_json, state, instance_id,
                    created_ms, started_ms, ended_ms, exit_code, reason, cancel_requested, driver_pid,
                    stop_sent_ms, terminate_on_end, pull_on_end, recovery_instance, migrate_to)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                    ?18, ?19, ?20)",
                params![
                    j.id,
                    j.name,
                    j.project,
                    j.project_dir,
                    j.command,
                    j.spec_json,
                    j.state.as_str(),
                    j.instance_id,
                    j.created_ms,
                    j.started_ms,
                    j.ended_ms,
                    j.exit_code,
                    j.reason,
                    j.cancel_requested,
                    j.driver_pid,
                    j.stop_sent_ms,
                    j.terminate_on_end,
                    j.pull_on_end,
                    j.recovery_instance,
                    j.migrate_to
                ],
            )?;
            Self::event_tx(
                tx,
                "job.pending",
                j.instance_id.as_deref(),
                Some(&j.id),
                &format!("job {} created: {}", j.name, j.command),
            )?;
            Ok(())
        })
    }

    /// Move a job along its state machine. Returns the state it was in. Refuses illegal
    /// moves; a job already in `to` is left alone (Ok(to)).
    pub fn transition_job(&mut self, id: &str, to: JobState, why: &str) -> Result<JobState> {
        self.transition_job_with(id, to, why, None)
    }

    /// As [`Store::transition_job`], also recording the exit code on a terminal move.
    pub fn transition_job_with(
        &mut self,
        id: &str,
        to: JobState,
        why: &str,
        exit_code: Option<i32>,
    ) -> Result<JobState> {
        self.write(|tx| {
            let from: String = tx
                .query_row("SELECT state FROM jobs WHERE id = ?1", params![id], |r| {
                    r.get(0)
                })
                .optional()?
                .with_context(|| format!("no job {id} in the store"))?;
            let from = JobState::parse(&from).unwrap_or(JobState::Lost);
            if from == to {
                return Ok(from);
            }
            if !from.can_transition_to(to) {
                bail!("job {id} cannot go from {from} to {to}");
            }
            let now = now_ms();
            tx.execute(
                "UPDATE jobs SET state = ?2,
                    started_ms = CASE WHEN ?2 = 'running' THEN COALESCE(started_ms, ?3) ELSE started_ms END,
                    ended_ms = CASE WHEN ?4 THEN ?3 ELSE ended_ms END,
                    exit_code = COALESCE(?5, exit_code),
                    reason = CASE WHEN ?4 OR ?2 = 'interrupted' THEN ?6 ELSE reason END
                 WHERE id = ?1",
                params![id, to.as_str(), now, to.is_terminal(), exit_code, why],
            )?;
            let instance: Option<String> = tx.query_row(
                "SELECT instance_id FROM jobs WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )?;
            Self::event_tx(
                tx,
                &format!("job.{}", to.as_str()),
                instance.as_deref(),
                Some(id),
                why,
            )?;
            Ok(from)
        })
    }

    /// Move a job to `to` only while `attempt` is its newest attempt and it is Starting or
    /// Running: a decision about an attempt, taken from a read that another process has
    /// since overtaken (the job already moved on to its next attempt), changes nothing.
    /// Returns whether the move was made.
    pub fn transition_attempt(
        &mut self,
        id: &str,
        attempt: i64,
        to: JobState,
        why: &str,
    ) -> Result<bool> {
        let current: Option<(String, Option<i64>)> = self
            .conn
            .query_row(
                "SELECT state, (SELECT MAX(attempt) FROM job_attempts WHERE job_id = ?1)
                 FROM jobs WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((state, newest)) = current else {
            bail!("no job {id} in the store");
        };
        if !matches!(state.as_str(), "starting" | "running") || newest != Some(attempt) {
            return Ok(false);
        }
        // Checked again inside the write, by compare-and-swap on the state read above.
        let from = JobState::parse(&state).unwrap_or(JobState::Lost);
        if !from.can_transition_to(to) {
            bail!("job {id} cannot go from {from} to {to}");
        }
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE jobs SET state = ?2, reason = ?3,
                    ended_ms = CASE WHEN ?5 THEN ?6 ELSE ended_ms END
                 WHERE id = ?1 AND state = ?4
                   AND (SELECT MAX(attempt) FROM job_attempts WHERE job_id = ?1) = ?7",
                params![
                    id,
                    to.as_str(),
                    why,
                    from.as_str(),
                    to.is_terminal(),
                    now_ms(),
                    attempt
                ],
            )?;
            if n > 0 {
                Self::event_tx(tx, &format!("job.{}", to.as_str()), None, Some(id), why)?;
            }
            Ok(n > 0)
        })
    }

    /// Record that SIGTERM went to the job (once; the first sender wins).
    pub fn mark_stop_sent(&mut self, id: &str) -> Result<bool> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE jobs SET stop_sent_ms = ?2 WHERE id = ?1 AND stop_sent_ms IS NULL",
                params![id, now_ms()],
            )?;
            if n > 0 {
                Self::event_tx(
                    tx,
                    "job.sigterm",
                    None,
                    Some(id),
                    "SIGTERM sent to the job's process group",
                )?;
            }
            Ok(n > 0)
        })
    }

    /// Why a job is where it is, without a move (a queue's reason while it waits).
    pub fn set_job_reason(&mut self, id: &str, reason: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE jobs SET reason = ?2 WHERE id = ?1",
                params![id, reason],
            )?;
            Ok(())
        })
    }

    /// Budget breach: stop the job and terminate its machine once it ends.
    pub fn request_stop_and_terminate(&mut self, id: &str, why: &str) -> Result<()> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE jobs SET cancel_requested = 1, terminate_on_end = 1, reason = ?2
                 WHERE id = ?1 AND terminate_on_end = 0",
                params![id, why],
            )?;
            if n > 0 {
                Self::event_tx(tx, "budget.breach", None, Some(id), why)?;
            }
            Ok(())
        })
    }

    pub fn set_job_instance(&mut self, id: &str, instance_id: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE jobs SET instance_id = ?2 WHERE id = ?1",
                params![id, instance_id],
            )?;
            Ok(())
        })
    }

    /// Ask whoever follows the job to stop it; any trainctl process will honour it.
    pub fn request_cancel(&mut self, id: &str, why: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE jobs SET cancel_requested = 1,
                    reason = CASE WHEN reason IS NULL OR reason LIKE 'queued:%' THEN ?2 ELSE reason END
                 WHERE id = ?1",
                params![id, why],
            )?;
            Self::event_tx(tx, "job.cancel_requested", None, Some(id), why)?;
            Ok(())
        })
    }

    /// What `run` was asked to do when the job ends, stored with the job so whichever
    /// trainctl process sees the end honours it.
    pub fn set_end_intent(&mut self, id: &str, terminate: bool, pull: bool) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE jobs SET terminate_on_end = ?2, pull_on_end = ?3 WHERE id = ?1",
                params![id, terminate, pull],
            )?;
            if terminate {
                Self::event_tx(
                    tx,
                    "job.end_intent",
                    None,
                    Some(id),
                    if pull {
                        "pull the artifacts and terminate the machine when the job ends"
                    } else {
                        "terminate the machine when the job ends"
                    },
                )?;
            }
            Ok(())
        })
    }

    /// Record where `migrate` sends the job (`instance:ID`, `type:T` or `same`).
    pub fn set_migrate_to(&mut self, id: &str, target: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE jobs SET migrate_to = ?2 WHERE id = ?1",
                params![id, target],
            )?;
            Self::event_tx(
                tx,
                "job.migrate",
                None,
                Some(id),
                &format!("migration requested to {target}"),
            )?;
            Ok(())
        })
    }

    /// The replacement machine of a recovery: `candidate` when none was chosen yet, else
    /// the one chosen first (by whichever process). Recorded before anything is launched,
    /// so a recovery cut off anywhere resumes with the same machine id.
    pub fn claim_recovery_instance(&mut self, id: &str, candidate: &str) -> Result<String> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE jobs SET recovery_instance = ?2 WHERE id = ?1 AND recovery_instance IS NULL",
                params![id, candidate],
            )?;
            if n > 0 {
                Self::event_tx(
                    tx,
                    "recovery.intent",
                    Some(candidate),
                    Some(id),
                    &format!("the job resumes on {candidate}"),
                )?;
            }
            Ok(tx.query_row(
                "SELECT recovery_instance FROM jobs WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )?)
        })
    }

    /// Take a Recovering job into its next attempt on `instance_id`: Recovering -> Syncing
    /// (compare-and-swap: false when another process took it), the job moved to the
    /// replacement, the stop and migration marks of the last attempt cleared.
    pub fn begin_recovered_attempt(&mut self, id: &str, instance_id: &str) -> Result<bool> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE jobs SET state = 'syncing', instance_id = ?2, recovery_instance = NULL,
                    migrate_to = NULL, stop_sent_ms = NULL, driver_pid = ?3
                 WHERE id = ?1 AND state = 'recovering'",
                params![id, instance_id, std::process::id() as i64],
            )?;
            if n > 0 {
                Self::event_tx(
                    tx,
                    "job.syncing",
                    Some(instance_id),
                    Some(id),
                    "syncing code to the replacement machine",
                )?;
            }
            Ok(n > 0)
        })
    }

    /// Take (or renew) the supervision lease of a job for `ttl_ms`: only its holder drives
    /// the job's recovery. Free when nobody holds it, when it expired, or when its holder
    /// (a trainctl process on this machine, where the store file is) is dead.
    pub fn try_lease(&mut self, id: &str, ttl_ms: i64) -> Result<bool> {
        let me = std::process::id() as i64;
        let holder: Option<(Option<i64>, Option<i64>)> = self
            .conn
            .query_row(
                "SELECT lease_pid, lease_until_ms FROM jobs WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((pid, _)) = holder else {
            bail!("no job {id} in the store");
        };
        // A dead holder's lease is free at once (checked here, outside the write).
        let dead = pid.filter(|&p| p != me && !crate::engine::pid_alive(p));
        self.write(|tx| {
            let now = now_ms();
            let n = tx.execute(
                "UPDATE jobs SET lease_pid = ?2, lease_until_ms = ?3
                 WHERE id = ?1 AND (lease_pid IS NULL OR lease_pid = ?2 OR lease_until_ms < ?4
                    OR lease_pid = ?5)",
                params![id, me, now + ttl_ms, now, dead],
            )?;
            Ok(n > 0)
        })
    }

    /// Give the lease back (it would expire anyway).
    pub fn release_lease(&mut self, id: &str) -> Result<()> {
        let me = std::process::id() as i64;
        self.write(|tx| {
            tx.execute(
                "UPDATE jobs SET lease_pid = NULL, lease_until_ms = NULL
                 WHERE id = ?1 AND lease_pid = ?2",
                params![id, me],
            )?;
            Ok(())
        })
    }

    /// Forget a replacement that can no longer be used (it ended before the job ran there).
    pub fn clear_recovery_instance(&mut self, id: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE jobs SET recovery_instance = NULL WHERE id = ?1",
                params![id],
            )?;
            Ok(())
        })
    }

    /// Whether a recovery of `job_id` chose (and so launched) `instance_id`.
    pub fn recovery_launched(&self, job_id: &str, instance_id: &str) -> Result<bool> {
        self.has_event("recovery.intent", job_id, instance_id)
    }

    /// Whether an event of `kind` about `job_id` on `instance_id` was recorded.
    pub fn has_event(&self, kind: &str, job_id: &str, instance_id: &str) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM events WHERE kind = ?1
                AND job_id = ?2 AND instance_id = ?3)",
            params![kind, job_id, instance_id],
            |r| r.get(0),
        )?)
    }

    // ------------------------------------------------------------- checkpoints

    pub fn record_checkpoint(&mut self, c: &CheckpointRecord) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO checkpoints
                    (job_id, name, attempt, size, mtime_ms, blake3, local_path, ts_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    c.job_id,
                    c.name,
                    c.attempt,
                    c.size as i64,
                    c.mtime_ms,
                    c.blake3,
                    c.local_path,
                    now_ms()
                ],
            )?;
            Self::event_tx(
                tx,
                "checkpoint.shipped",
                None,
                Some(&c.job_id),
                &format!(
                    "{} ({} bytes, blake3 {}) from attempt {}",
                    c.name,
                    c.size,
                    crate::model::short_hash(&c.blake3),
                    c.attempt
                ),
            )?;
            Ok(())
        })
    }

    pub fn forget_checkpoint(&mut self, job_id: &str, name: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM checkpoints WHERE job_id = ?1 AND name = ?2",
                params![job_id, name],
            )?;
            Ok(())
        })
    }

    /// A job's shipped checkpoints, newest first (by their time on the machine).
    pub fn checkpoints(&self, job_id: &str) -> Result<Vec<CheckpointRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT job_id, name, attempt, size, mtime_ms, blake3, local_path FROM checkpoints
             WHERE job_id = ?1 ORDER BY mtime_ms DESC, name DESC",
        )?;
        let rows = stmt.query_map(params![job_id], |r| {
            Ok(CheckpointRecord {
                job_id: r.get(0)?,
                name: r.get(1)?,
                attempt: r.get(2)?,
                size: r.get::<_, i64>(3)? as u64,
                mtime_ms: r.get(4)?,
                blake3: r.get(5)?,
                local_path: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    const JOB_COLS: &'static str = "id, name, project, project_dir, command, spec_json, state, instance_id,
        created_ms, started_ms, ended_ms, exit_code, reason, cancel_requested, driver_pid, stop_sent_ms,
        terminate_on_end, pull_on_end, recovery_instance, migrate_to";

    fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
        let state: String = r.get(6)?;
        Ok(JobRecord {
            id: r.get(0)?,
            name: r.get(1)?,
            project: r.get(2)?,
            project_dir: r.get(3)?,
            command: r.get(4)?,
            spec_json: r.get(5)?,
            state: JobState::parse(&state).unwrap_or(JobState::Lost),
            instance_id: r.get(7)?,
            created_ms: r.get(8)?,
            started_ms: r.get(9)?,
            ended_ms: r.get(10)?,
            exit_code: r.get(11)?,
            reason: r.get(12)?,
            cancel_requested: r.get(13)?,
            driver_pid: r.get(14)?,
            stop_sent_ms: r.get(15)?,
            terminate_on_end: r.get(16)?,
            pull_on_end: r.get(17)?,
            recovery_instance: r.get(18)?,
            migrate_to: r.get(19)?,
        })
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        let sql = format!("SELECT {} FROM jobs WHERE id = ?1", Self::JOB_COLS);
        Ok(self
            .conn
            .query_row(&sql, params![id], Self::job_row)
            .optional()?)
    }

    /// Find a job by id or unique id prefix; `last` means the newest job.
    pub fn find_job(&self, key: &str) -> Result<JobRecord> {
        if let Some(j) = self.job(key)? {
            return Ok(j);
        }
        let jobs = self.jobs()?;
        if key == "last" || key == "@" {
            return jobs.into_iter().next().context("no jobs yet");
        }
        let hits: Vec<_> = jobs
            .into_iter()
            .filter(|j| j.id.starts_with(key) || j.name == key)
            .collect();
        match hits.len() {
            0 => bail!("no job `{key}` (see `trainctl jobs`)"),
            1 => Ok(hits.into_iter().next().unwrap_or_else(|| unreachable!())),
            n => bail!("`{key}` matches {n} jobs; give more of the id"),
        }
    }

    /// All jobs, newest first.
    pub fn jobs(&self) -> Result<Vec<JobRecord>> {
        let sql = format!(
            "SELECT {} FROM jobs ORDER BY created_ms DESC, id DESC",
            Self::JOB_COLS
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], Self::job_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    // ----------------------------------------------------------------- attempts

    pub fn add_attempt(&mut self, a: &AttemptRecord) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO job_attempts (job_id, attempt, instance_id, remote_dir, workdir, started_ms, ended_ms, exit_code, gpus, running_ms, gpu_hour_micros)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    a.job_id,
                    a.attempt,
                    a.instance_id,
                    a.remote_dir,
                    a.workdir,
                    a.started_ms,
                    a.ended_ms,
                    a.exit_code,
                    a.gpus,
                    a.running_ms,
                    a.gpu_hour_micros
                ],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO log_offsets (job_id, attempt, byte_offset, line, progress_json)
                 VALUES (?1, ?2, 0, 1, '{}')",
                params![a.job_id, a.attempt],
            )?;
            Self::event_tx(
                tx,
                "job.attempt",
                Some(&a.instance_id),
                Some(&a.job_id),
                &format!(
                    "attempt {} on {} in {}",
                    a.attempt, a.instance_id, a.remote_dir
                ),
            )?;
            Ok(())
        })
    }

    /// The attempt began to run at `ms` (kept if it was said before).
    pub fn set_attempt_running(&mut self, job_id: &str, attempt: i64, ms: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE job_attempts SET running_ms = COALESCE(running_ms, ?3)
                 WHERE job_id = ?1 AND attempt = ?2",
                params![job_id, attempt, ms],
            )?;
            Ok(())
        })
    }

    pub fn finish_attempt(
        &mut self,
        job_id: &str,
        attempt: i64,
        exit_code: Option<i32>,
        ended_ms: i64,
    ) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE job_attempts SET ended_ms = COALESCE(ended_ms, ?3), exit_code = COALESCE(exit_code, ?4)
                 WHERE job_id = ?1 AND attempt = ?2",
                params![job_id, attempt, ended_ms, exit_code],
            )?;
            Ok(())
        })
    }

    fn attempt_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AttemptRecord> {
        Ok(AttemptRecord {
            job_id: r.get(0)?,
            attempt: r.get(1)?,
            instance_id: r.get(2)?,
            remote_dir: r.get(3)?,
            workdir: r.get(4)?,
            started_ms: r.get(5)?,
            ended_ms: r.get(6)?,
            exit_code: r.get(7)?,
            gpus: r.get(8)?,
            running_ms: r.get(9)?,
            gpu_hour_micros: r.get(10)?,
        })
    }

    pub fn attempts(&self, job_id: &str) -> Result<Vec<AttemptRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT job_id, attempt, instance_id, remote_dir, workdir, started_ms, ended_ms, exit_code, gpus, running_ms, gpu_hour_micros
             FROM job_attempts WHERE job_id = ?1 ORDER BY attempt",
        )?;
        let rows = stmt.query_map(params![job_id], Self::attempt_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// When `instance_id` last did work: None while an attempt runs there, else the last
    /// attempt's end (or None when it never ran one).
    pub fn last_work_on(&self, instance_id: &str) -> Result<Option<Option<TimestampMs>>> {
        let (running, last): (i64, Option<i64>) = self.conn.query_row(
            "SELECT COUNT(*) FILTER (WHERE ended_ms IS NULL), MAX(ended_ms)
             FROM job_attempts WHERE instance_id = ?1",
            params![instance_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(if running > 0 { None } else { Some(last) })
    }

    /// Every attempt ever made, for cost accounting.
    pub fn all_attempts(&self) -> Result<Vec<AttemptRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT job_id, attempt, instance_id, remote_dir, workdir, started_ms, ended_ms, exit_code, gpus, running_ms, gpu_hour_micros
             FROM job_attempts ORDER BY job_id, attempt",
        )?;
        let rows = stmt.query_map([], Self::attempt_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    // ------------------------------------------------------------- log + metrics

    pub fn log_offset(&self, job_id: &str, attempt: i64) -> Result<LogOffset> {
        let row = self
            .conn
            .query_row(
                "SELECT byte_offset, line, progress_json, progress_ms FROM log_offsets WHERE job_id = ?1 AND attempt = ?2",
                params![job_id, attempt],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                    ))
                },
            )
            .optional()?;
        Ok(match row {
            None => LogOffset {
                line: 1,
                ..Default::default()
            },
            Some((off, line, prog, pms)) => LogOffset {
                byte_offset: off as u64,
                line: line as u64,
                progress: serde_json::from_str(&prog).unwrap_or_default(),
                progress_ms: pms,
            },
        })
    }

    /// Move an attempt's log offset from `old` to `new`; false when it is not at `old`
    /// any more (another process advanced it).
    fn advance_offset_tx(
        tx: &rusqlite::Transaction<'_>,
        job_id: &str,
        attempt: i64,
        old: &LogOffset,
        new: &LogOffset,
    ) -> Result<bool> {
        let progress = serde_json::to_string(&new.progress)?;
        let n = tx.execute(
            "UPDATE log_offsets SET byte_offset = ?3, line = ?4, progress_json = ?5, progress_ms = ?6
             WHERE job_id = ?1 AND attempt = ?2 AND byte_offset = ?7",
            params![
                job_id,
                attempt,
                new.byte_offset as i64,
                new.line as i64,
                progress,
                new.progress_ms,
                old.byte_offset as i64
            ],
        )?;
        Ok(n > 0)
    }

    /// Advance a job's log offset from `old` to `new`, with the points parsed from those
    /// bytes, atomically. Compare-and-swap: when another process advanced the offset first,
    /// nothing is written and `false` comes back, so no point is ever stored twice.
    pub fn commit_log_chunk(
        &mut self,
        job_id: &str,
        attempt: i64,
        old: &LogOffset,
        new: &LogOffset,
        points: &[MetricPoint],
    ) -> Result<bool> {
        self.write(|tx| {
            if !Self::advance_offset_tx(tx, job_id, attempt, old, new)? {
                return Ok(false);
            }
            Self::insert_points_tx(tx, job_id, attempt, points)?;
            Ok(true)
        })
    }

    /// [`Store::commit_log_chunk`] of points already grouped by metric.
    pub fn commit_log_batch(
        &mut self,
        job_id: &str,
        attempt: i64,
        old: &LogOffset,
        new: &LogOffset,
        packed: &crate::series::Packed,
    ) -> Result<bool> {
        self.write(|tx| {
            if !Self::advance_offset_tx(tx, job_id, attempt, old, new)? {
                return Ok(false);
            }
            Self::insert_packed_tx(tx, job_id, attempt, packed)?;
            Ok(true)
        })
    }

    /// Where the follow of an attempt's side file `stream` stands: its byte offset and
    /// since when it said idle.
    pub fn stream_offset(
        &self,
        job_id: &str,
        attempt: i64,
        stream: &str,
    ) -> Result<(u64, Option<TimestampMs>)> {
        let row = self
            .conn
            .query_row(
                "SELECT byte_offset, idle_since_ms FROM stream_offsets
                 WHERE job_id = ?1 AND attempt = ?2 AND stream = ?3",
                params![job_id, attempt, stream],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Option<i64>>(1)?)),
            )
            .optional()?;
        Ok(row.unwrap_or((0, None)))
    }

    /// Move the side file `stream` of an attempt from offset `old` to `new`, with the
    /// points read from those bytes and its idle mark, atomically; false (nothing
    /// written) when another process advanced it first.
    pub fn commit_stream_batch(
        &mut self,
        job_id: &str,
        attempt: i64,
        stream: &str,
        (old, new): (u64, u64),
        idle_since_ms: Option<TimestampMs>,
        batch: &crate::series::Batch,
    ) -> Result<bool> {
        self.write(|tx| {
            tx.execute(
                "INSERT OR IGNORE INTO stream_offsets (job_id, attempt, stream, byte_offset)
                 VALUES (?1, ?2, ?3, 0)",
                params![job_id, attempt, stream],
            )?;
            let n = tx.execute(
                "UPDATE stream_offsets SET byte_offset = ?4, idle_since_ms = ?5
                 WHERE job_id = ?1 AND attempt = ?2 AND stream = ?3 AND byte_offset = ?6",
                params![
                    job_id,
                    attempt,
                    stream,
                    new as i64,
                    idle_since_ms,
                    old as i64
                ],
            )?;
            if n == 0 {
                return Ok(false);
            }
            Self::insert_batch_tx(tx, job_id, attempt, batch)?;
            Ok(true)
        })
    }

    /// Migration 7: every point of the one-row-per-point table, packed into chunks in
    /// the order they were stored, then that table dropped.
    fn pack_old_points(tx: &rusqlite::Transaction<'_>) -> Result<()> {
        let mut batch = crate::series::Batch::default();
        let mut key: Option<(String, i64)> = None;
        {
            let mut stmt = tx.prepare(
                "SELECT job_id, attempt, name, value, step, epoch, line FROM metric_points
                 ORDER BY job_id, attempt, rowid",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let k = (r.get::<_, String>(0)?, r.get::<_, i64>(1)?);
                if key.as_ref() != Some(&k) {
                    if let Some((j, a)) = key.take() {
                        Self::insert_batch_tx(tx, &j, a, &std::mem::take(&mut batch))?;
                    }
                    key = Some(k);
                }
                let name: String = r.get(2)?;
                batch.push(
                    &name,
                    crate::series::Point {
                        // NULL was how a NaN was stored.
                        value: r.get::<_, Option<f64>>(3)?.unwrap_or(f64::NAN),
                        step: r.get(4)?,
                        epoch: r.get(5)?,
                        line: r.get::<_, i64>(6)? as u64,
                    },
                );
            }
        }
        if let Some((j, a)) = key {
            Self::insert_batch_tx(tx, &j, a, &batch)?;
        }
        tx.execute_batch("DROP TABLE metric_points;")?;
        Ok(())
    }

    /// Store `points` (in log order) as one chunk per metric.
    fn insert_points_tx(
        tx: &rusqlite::Transaction<'_>,
        job_id: &str,
        attempt: i64,
        points: &[MetricPoint],
    ) -> Result<()> {
        let mut batch = crate::series::Batch::default();
        for p in points {
            batch.push(&p.name, p.into());
        }
        Self::insert_batch_tx(tx, job_id, attempt, &batch)
    }

    /// Store a batch as one chunk per metric (more for a metric with very many points).
    fn insert_batch_tx(
        tx: &rusqlite::Transaction<'_>,
        job_id: &str,
        attempt: i64,
        batch: &crate::series::Batch,
    ) -> Result<()> {
        Self::insert_packed_tx(tx, job_id, attempt, &batch.pack())
    }

    /// Store chunks packed beforehand (outside the transaction, so the store is held
    /// only for the writes).
    fn insert_packed_tx(
        tx: &rusqlite::Transaction<'_>,
        job_id: &str,
        attempt: i64,
        packed: &crate::series::Packed,
    ) -> Result<()> {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO metric_chunks (job_id, attempt, name, n, data)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (name, chunks) in &packed.series {
            for (n, data) in chunks {
                stmt.execute(params![job_id, attempt, name, *n as i64, data])?;
            }
        }
        Ok(())
    }

    /// Insert points in one transaction (benchmarks and imports).
    pub fn insert_points(
        &mut self,
        job_id: &str,
        attempt: i64,
        points: &[MetricPoint],
    ) -> Result<()> {
        self.write(|tx| {
            Self::insert_points_tx(tx, job_id, attempt, points)?;
            Ok(())
        })
    }

    /// Each stored chunk of a job (one metric or all, one attempt or all) after
    /// `after_rowid`, in store order (`newest_first`: backwards), `f` called with (rowid,
    /// attempt, points) as each is unpacked; `f` returns false to stop.
    fn each_chunk(
        &self,
        job_id: &str,
        name: Option<&str>,
        attempt: Option<i64>,
        after_rowid: i64,
        newest_first: bool,
        mut f: impl FnMut(i64, i64, &mut dyn Iterator<Item = MetricPoint>) -> bool,
    ) -> Result<()> {
        let sql = chunks_query(name.is_some(), attempt.is_some(), newest_first);
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(params![job_id, name, attempt, after_rowid])?;
        let mut buf: Vec<crate::series::Point> = Vec::new();
        while let Some(r) = rows.next()? {
            let rowid: i64 = r.get(0)?;
            let attempt: i64 = r.get(1)?;
            let name: String = r.get(2)?;
            let n: i64 = r.get(3)?;
            let data = r.get_ref(4)?.as_blob()?;
            buf.clear();
            crate::series::decode(data, n.max(0) as usize, |p| buf.push(p))
                .with_context(|| format!("metric chunk {rowid} of job {job_id}"))?;
            let mut it = buf.iter().map(|p| MetricPoint {
                name: name.clone(),
                value: p.value,
                step: p.step,
                epoch: p.epoch,
                line: p.line,
            });
            if !f(rowid, attempt, &mut it) {
                break;
            }
        }
        Ok(())
    }

    /// A job's points in log order, optionally one metric only. A later attempt
    /// re-computes the steps (or epochs) after its resume point: its points replace the
    /// earlier attempts' for the same (name, step), so a resumed job reads as one
    /// continuous series.
    pub fn metrics(&self, job_id: &str, name: Option<&str>) -> Result<Vec<MetricPoint>> {
        let mut all: Vec<(i64, MetricPoint)> = Vec::new();
        self.each_chunk(job_id, name, None, 0, false, |_, attempt, pts| {
            all.extend(pts.map(|p| (attempt, p)));
            true
        })?;
        // Chunks of one commit are per metric: back to log order (stable, so the metrics
        // of one line keep their order).
        all.sort_by_key(|(a, p)| (*a, p.line));
        let attempts: std::collections::BTreeSet<i64> = all.iter().map(|(a, _)| *a).collect();
        if attempts.len() <= 1 {
            return Ok(all.into_iter().map(|(_, p)| p).collect());
        }
        let key = |p: &MetricPoint| ReplacedAt::of(p).map(|at| (p.name.clone(), at));
        // Newest attempt first: a point is kept unless a later attempt has its key.
        let mut later: std::collections::HashSet<(String, ReplacedAt)> = Default::default();
        let mut keep = vec![true; all.len()];
        let mut i = all.len();
        while i > 0 {
            let a = all[i - 1].0;
            let mut j = i;
            while j > 0 && all[j - 1].0 == a {
                j -= 1;
            }
            for (k, (_, p)) in all[j..i].iter().enumerate() {
                if key(p).is_some_and(|kk| later.contains(&kk)) {
                    keep[j + k] = false;
                }
            }
            for (_, p) in &all[j..i] {
                if let Some(kk) = key(p) {
                    later.insert(kk);
                }
            }
            i = j;
        }
        Ok(all
            .into_iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|((_, p), _)| p)
            .collect())
    }

    /// Every point of metric `name` of a job in log order, handed to `f` chunk by chunk
    /// as it is unpacked (a long series is never all in memory); earlier attempts' points
    /// that a later attempt replaced (see [`Store::metrics`]) are left out.
    pub fn for_each_metric(
        &self,
        job_id: &str,
        name: &str,
        mut f: impl FnMut(&MetricPoint),
    ) -> Result<()> {
        let attempts: Vec<i64> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT DISTINCT attempt FROM metric_chunks WHERE job_id = ?1 AND name = ?2 ORDER BY attempt",
            )?;
            let rows = stmt.query_map(params![job_id, name], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        // Where each attempt after the first is (steps or epochs): usually there is none.
        let mut later: Vec<(i64, std::collections::HashSet<ReplacedAt>)> = Vec::new();
        for &a in attempts.iter().skip(1) {
            let mut at = std::collections::HashSet::new();
            self.each_chunk(job_id, Some(name), Some(a), 0, false, |_, _, pts| {
                at.extend(pts.filter_map(|p| ReplacedAt::of(&p)));
                true
            })?;
            later.push((a, at));
        }
        for &a in &attempts {
            self.each_chunk(job_id, Some(name), Some(a), 0, false, |_, _, pts| {
                for p in pts {
                    let replaced = ReplacedAt::of(&p)
                        .is_some_and(|k| later.iter().any(|(b, at)| *b > a && at.contains(&k)));
                    if !replaced {
                        f(&p);
                    }
                }
                true
            })?;
        }
        Ok(())
    }

    /// A job's points stored after `after_rowid`, with the rowid of the chunk each came
    /// in, in store order (incremental load): whole chunks, until `limit` points or more.
    pub fn metrics_after(
        &self,
        job_id: &str,
        after_rowid: i64,
        limit: usize,
    ) -> Result<Vec<(i64, MetricPoint)>> {
        let mut out = Vec::new();
        self.each_chunk(job_id, None, None, after_rowid, false, |rowid, _, pts| {
            out.extend(pts.map(|p| (rowid, p)));
            out.len() < limit
        })?;
        Ok(out)
    }

    /// The values of metric `name` of a job stored after `after_rowid`, in store order,
    /// chunk by chunk; returns the rowid to continue after.
    pub fn metric_values_after(
        &self,
        job_id: &str,
        name: &str,
        after_rowid: i64,
        mut f: impl FnMut(f64),
    ) -> Result<i64> {
        let mut last = after_rowid;
        self.each_chunk(
            job_id,
            Some(name),
            None,
            after_rowid,
            false,
            |rowid, _, pts| {
                pts.for_each(|p| f(p.value));
                last = rowid;
                true
            },
        )?;
        Ok(last)
    }

    /// The newest `limit` values of metric `name` of a job, oldest first.
    pub fn recent_values(&self, job_id: &str, name: &str, limit: usize) -> Result<Vec<f64>> {
        let mut chunks: Vec<Vec<f64>> = Vec::new();
        let mut have = 0;
        self.each_chunk(job_id, Some(name), None, 0, true, |_, _, pts| {
            let v: Vec<f64> = pts.map(|p| p.value).collect();
            have += v.len();
            chunks.push(v);
            have < limit
        })?;
        let mut v: Vec<f64> = chunks.into_iter().rev().flatten().collect();
        if v.len() > limit {
            v.drain(..v.len() - limit);
        }
        Ok(v)
    }

    /// Distinct metric names of a job, in order of first appearance.
    pub fn metric_names(&self, job_id: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name FROM metric_chunks WHERE job_id = ?1 GROUP BY name ORDER BY MIN(rowid)",
        )?;
        let rows = stmt.query_map(params![job_id], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Every attempt's log offset: (job, attempt, offset). Cheap change detection.
    pub fn all_log_offsets(&self) -> Result<Vec<(String, i64, LogOffset)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT job_id, attempt, byte_offset, line, progress_json, progress_ms FROM log_offsets",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                LogOffset {
                    byte_offset: r.get::<_, i64>(2)? as u64,
                    line: r.get::<_, i64>(3)? as u64,
                    progress: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
                    progress_ms: r.get(5)?,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn metric_count(&self, job_id: &str) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(SUM(n), 0) FROM metric_chunks WHERE job_id = ?1",
            params![job_id],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    // ------------------------------------------------------------------- events

    /// Events, oldest first; for one job or instance when given.
    pub fn events(
        &self,
        job_id: Option<&str>,
        instance_id: Option<&str>,
    ) -> Result<Vec<EventRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, ts_ms, kind, instance_id, job_id, message FROM events
             WHERE (?1 IS NULL OR job_id = ?1) AND (?2 IS NULL OR instance_id = ?2) ORDER BY id",
        )?;
        let rows = stmt.query_map(params![job_id, instance_id], |r| {
            Ok(EventRecord {
                id: r.get(0)?,
                ts_ms: r.get(1)?,
                kind: r.get(2)?,
                instance_id: r.get(3)?,
                job_id: r.get(4)?,
                message: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    // ---------------------------------------------------------------- artifacts

    pub fn record_artifact(&mut self, a: &ArtifactRecord) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO artifacts (job_id, path, size, blake3, local_path, ts_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    a.job_id,
                    a.path,
                    a.size as i64,
                    a.blake3,
                    a.local_path,
                    now_ms()
                ],
            )?;
            Self::event_tx(
                tx,
                "artifact.pulled",
                None,
                Some(&a.job_id),
                &format!(
                    "{} ({} bytes, blake3 {}) -> {}",
                    a.path,
                    a.size,
                    crate::model::short_hash(&a.blake3),
                    a.local_path
                ),
            )?;
            Ok(())
        })
    }

    pub fn artifacts(&self, job_id: &str) -> Result<Vec<ArtifactRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT job_id, path, size, blake3, local_path FROM artifacts WHERE job_id = ?1 ORDER BY path",
        )?;
        let rows = stmt.query_map(params![job_id], |r| {
            Ok(ArtifactRecord {
                job_id: r.get(0)?,
                path: r.get(1)?,
                size: r.get::<_, i64>(2)? as u64,
                blake3: r.get(3)?,
                local_path: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// `PRAGMA integrity_check` result ("ok" when healthy).
    pub fn integrity_check(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy() -> anyhow::Error {
        anyhow::Error::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some("database is locked".into()),
        ))
        .context("inserting")
    }

    #[test]
    fn price_changes_are_kept_as_segments_with_the_first_price() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("t.db")).unwrap();
        s.insert_instance(&instance("i-1")).unwrap();
        s.mark_instance_running("i-1", "/x", 1_000).unwrap();
        let before = s.instance("i-1").unwrap().unwrap();
        assert!(before.price_segments.is_empty());
        s.set_price("i-1", 5_000, Money(7)).unwrap();
        s.set_price("i-1", 9_000, Money(3)).unwrap();
        let after = s.instance("i-1").unwrap().unwrap();
        assert_eq!(
            after.price_segments,
            vec![(1_000, before.hourly), (5_000, Money(7)), (9_000, Money(3))]
        );
        assert_eq!(after.hourly, Money(3));
        assert_eq!(s.instances(true).unwrap()[0].price_segments.len(), 3);
    }

    /// Every way the chunks of a series are read is a range of an index in the order asked:
    /// no query sorts (or gathers for DISTINCT) the job's chunks before its first row.
    #[test]
    fn reading_metric_chunks_never_sorts_the_job_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("q.db")).unwrap();
        let plan = |sql: &str| -> String {
            let mut stmt = s
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            let n = stmt.parameter_count();
            let args: Vec<rusqlite::types::Value> =
                (0..n).map(|_| rusqlite::types::Value::Integer(1)).collect();
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
                .unwrap();
            rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
        };
        let mut queries = vec![
            "SELECT DISTINCT attempt FROM metric_chunks WHERE job_id = ?1 AND name = ?2 ORDER BY attempt"
                .to_string(),
        ];
        for bits in 0..8 {
            let (name, attempt, newest_first) = (bits & 1 != 0, bits & 2 != 0, bits & 4 != 0);
            queries.push(chunks_query(name, attempt, newest_first));
        }
        for q in queries {
            let p = plan(&q);
            assert!(p.contains("USING") && p.contains("INDEX"), "{q}: {p}");
            assert!(!p.contains("TEMP B-TREE"), "{q}: {p}");
        }
    }

    #[test]
    fn a_busy_store_is_retried_and_other_errors_are_not() {
        let mut calls = 0;
        let v = retry_busy(|| {
            calls += 1;
            if calls < 4 { Err(busy()) } else { Ok(7) }
        })
        .unwrap();
        assert_eq!((v, calls), (7, 4));
        let mut calls = 0;
        let e = retry_busy::<()>(|| {
            calls += 1;
            bail!("no instance x in the store")
        })
        .unwrap_err();
        assert_eq!(calls, 1);
        assert!(!is_busy(&e));
        assert!(is_busy(&busy()));
    }

    fn instance(id: &str) -> InstanceRecord {
        InstanceRecord::intent(id, "local", "local", Money(1_000_000))
    }

    fn job(id: &str, inst: &str) -> JobRecord {
        JobRecord::pending(id, "toy", "/tmp", "true", inst)
    }

    #[test]
    fn every_state_change_is_an_event_and_illegal_moves_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len());
        s.insert_instance(&instance("i-1")).unwrap();
        s.insert_job(&job("j-1", "i-1")).unwrap();
        s.transition_job("j-1", JobState::Syncing, "sync").unwrap();
        assert!(s.transition_job("j-1", JobState::Succeeded, "x").is_err());
        s.transition_job("j-1", JobState::Starting, "start")
            .unwrap();
        s.transition_job("j-1", JobState::Running, "run").unwrap();
        s.transition_job_with("j-1", JobState::Succeeded, "done", Some(0))
            .unwrap();
        let j = s.job("j-1").unwrap().unwrap();
        assert_eq!((j.state, j.exit_code), (JobState::Succeeded, Some(0)));
        assert!(j.started_ms.is_some() && j.ended_ms.is_some());
        let kinds: Vec<_> = s
            .events(Some("j-1"), None)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            vec![
                "job.pending",
                "job.syncing",
                "job.starting",
                "job.running",
                "job.succeeded"
            ]
        );
        // Reopening migrates nothing and keeps everything.
        drop(s);
        let s = Store::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(s.jobs().unwrap().len(), 1);
        assert_eq!(s.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn a_store_of_one_row_per_point_is_packed_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            // A store as schema 6 left it, with points of two attempts.
            let mut conn = rusqlite::Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &MIGRATIONS[..6] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 6).unwrap();
            let mut ins = tx
                .prepare(
                    "INSERT INTO metric_points (job_id, attempt, line, name, value, step, epoch, ts_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)",
                )
                .unwrap();
            for step in 1..=10i64 {
                ins.execute(params![
                    "j-1",
                    1,
                    step * 2,
                    "loss",
                    1.0 / step as f64,
                    step,
                    None::<f64>
                ])
                .unwrap();
                ins.execute(params![
                    "j-1",
                    1,
                    step * 2,
                    "lr",
                    None::<f64>,
                    step,
                    None::<f64>
                ])
                .unwrap();
            }
            // The second attempt resumed from step 6.
            for step in 7..=12i64 {
                ins.execute(params![
                    "j-1",
                    2,
                    step,
                    "loss",
                    0.5 / step as f64,
                    step,
                    Some(1.0)
                ])
                .unwrap();
            }
            drop(ins);
            tx.commit().unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len());
        let loss: Vec<(Option<i64>, f64)> = s
            .metrics("j-1", Some("loss"))
            .unwrap()
            .iter()
            .map(|p| (p.step, p.value))
            .collect();
        let mut want: Vec<(Option<i64>, f64)> =
            (1..=6).map(|st| (Some(st), 1.0 / st as f64)).collect();
        want.extend((7..=12).map(|st| (Some(st), 0.5 / st as f64)));
        assert_eq!(loss, want);
        let mut streamed = Vec::new();
        s.for_each_metric("j-1", "loss", |p| streamed.push((p.step, p.value)))
            .unwrap();
        assert_eq!(streamed, want);
        // NaN (stored as NULL) came through; every point is counted once.
        let lr = s.metrics("j-1", Some("lr")).unwrap();
        assert!(lr.len() == 10 && lr.iter().all(|p| p.value.is_nan()));
        assert_eq!(s.metric_count("j-1").unwrap(), 10 + 10 + 6);
        assert_eq!(s.metric_names("j-1").unwrap(), vec!["loss", "lr"]);
        assert_eq!(
            s.recent_values("j-1", "loss", 3).unwrap(),
            vec![0.5 / 10.0, 0.5 / 11.0, 0.5 / 12.0]
        );
        let all = s.metrics("j-1", None).unwrap();
        assert_eq!(all.len(), 6 + 10 + 6);
        assert!(
            all.windows(2)
                .all(|w| w[0].line <= w[1].line || w[1].step >= Some(7))
        );
        let gone: i64 = s
            .conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'metric_points'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(gone, 0);
    }

    #[test]
    fn log_chunk_commit_is_compare_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut a = Store::open(&path).unwrap();
        let mut b = Store::open(&path).unwrap();
        a.insert_instance(&instance("i-1")).unwrap();
        a.insert_job(&job("j-1", "i-1")).unwrap();
        a.add_attempt(&AttemptRecord {
            job_id: "j-1".into(),
            attempt: 1,
            instance_id: "i-1".into(),
            remote_dir: "/r".into(),
            workdir: "/w".into(),
            started_ms: now_ms(),
            ended_ms: None,
            exit_code: None,
            ..Default::default()
        })
        .unwrap();
        let old = a.log_offset("j-1", 1).unwrap();
        let new = LogOffset {
            byte_offset: 10,
            line: 2,
            ..Default::default()
        };
        let pt = MetricPoint {
            name: "loss".into(),
            value: f64::NAN,
            step: Some(1),
            epoch: None,
            line: 1,
        };
        assert!(
            a.commit_log_chunk("j-1", 1, &old, &new, std::slice::from_ref(&pt))
                .unwrap()
        );
        // A second process with the stale offset loses the race and writes nothing.
        assert!(!b.commit_log_chunk("j-1", 1, &old, &new, &[pt]).unwrap());
        let m = b.metrics("j-1", None).unwrap();
        assert_eq!(m.len(), 1);
        assert!(m[0].value.is_nan());
        assert_eq!(b.log_offset("j-1", 1).unwrap().byte_offset, 10);
    }
}
