//! The job on the machine: where its files live, the detached runner that starts it,
//! how its status is read and how it is signalled; code sync and artifact pull.
//!
//! Layout under the remote root (`~/.trainctl`):
//! `runner.sh`, `code/<project>/`, `manifests/<project>.json`,
//! `jobs/<job>-<attempt>/{cmd.sh, pid, status, started_at, stdout.log, exit_code, ended_at}`.

pub mod artifacts;
pub mod checkpoint;
pub mod container;
pub mod data;
pub mod delta;
pub mod executor;
pub mod gpu;
pub mod setup;
pub mod slurm;
pub mod sync;

use crate::remote::{Remote, retry_lost, sh_quote};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::time::Duration;

/// The runner script, embedded so the binary is all a machine needs.
pub const RUNNER_SH: &str = include_str!("../../assets/remote/runner.sh");

pub fn job_dir(root: &str, job_id: &str, attempt: i64) -> String {
    format!("{root}/jobs/{job_id}-{attempt}")
}

pub fn log_path(job_dir: &str) -> String {
    format!("{job_dir}/stdout.log")
}

/// The runner's GPU samples (`nvidia-smi` CSV rows), appended while the job runs.
pub fn gpu_path(job_dir: &str) -> String {
    format!("{job_dir}/gpu.csv")
}

/// What one look at a job's machine read: its status, its log, and the size of its GPU
/// samples file when that was told (`None`: unknown; read it to know).
#[derive(Debug)]
pub struct Polled {
    pub status: RemoteStatus,
    pub log: crate::remote::Streamed,
    pub gpu_bytes: Option<u64>,
}

/// The file the runner writes the command's exit status to, after its last byte of log.
pub fn exit_code_path(job_dir: &str) -> String {
    format!("{job_dir}/exit_code")
}

/// What the job's files on the machine say.
#[derive(Debug, Clone, PartialEq)]
pub enum RemoteStatus {
    /// The job directory is gone: the machine was replaced or wiped.
    Missing,
    /// Started but the runner has not written its pid yet.
    Starting,
    /// Waiting in a scheduler's queue (Slurm): why, and when it expects to start.
    Queued {
        reason: String,
        start: Option<String>,
    },
    /// The runner runs the project's setup before the command (or waits for another job
    /// on the machine running the same one).
    SettingUp {
        pid: i32,
    },
    Running {
        pid: i32,
    },
    Exited {
        code: i32,
        ended_at: Option<i64>,
        /// An interruption notice stopped it: the notice's reason (untrusted text).
        interrupted: Option<String>,
        /// The setup failed (its status is `code`): the command never ran.
        setup_failed: bool,
    },
    /// The runner died without recording an exit code (killed with SIGKILL, machine reboot).
    Vanished,
}

/// The shell text of `cmd.sh`: exported environment, then the user's command.
pub fn command_script(command: &str, env: &BTreeMap<String, String>) -> String {
    let mut s = String::from("# written by trainctl\n");
    for (k, v) in env {
        // Keys are validated as identifiers when the project is loaded.
        s.push_str(&format!("export {k}={}\n", sh_quote(v)));
    }
    s.push_str(command);
    s.push('\n');
    s
}

/// The runner and the attempt's `cmd.sh` on the machine; returns the runner's path.
/// Safe to repeat (files written atomically; a lost connection is retried).
pub(crate) async fn upload_runner(
    remote: &dyn Remote,
    job_dir: &str,
    cmd_script: &str,
) -> Result<String> {
    let runner = format!("{}/runner.sh", remote.root());
    retry_lost(4, "uploading the runner", || {
        remote.write_file(&runner, RUNNER_SH.as_bytes(), 0o755)
    })
    .await?;
    let cmd = format!("{job_dir}/cmd.sh");
    retry_lost(4, "uploading the command", || {
        remote.write_file(&cmd, cmd_script.as_bytes(), 0o644)
    })
    .await?;
    Ok(runner)
}

/// Upload the runner and the command, then start the job detached in its own session and
/// process group. Returns once the runner recorded its pid.
pub async fn start_detached(
    remote: &dyn Remote,
    job_dir: &str,
    workdir: &str,
    cmd_script: &str,
    grace: Duration,
) -> Result<i32> {
    let runner = upload_runner(remote, job_dir, cmd_script).await?;
    // setsid: own session and process group, so neither a closed terminal nor a dropped
    // connection reaches it; every stream redirected, so nothing dies of SIGPIPE.
    let script = format!(
        "cd {jd} && {{ mkdir start.lock 2>/dev/null || exit 0; }} && \
         if command -v setsid >/dev/null 2>&1; then \
           TRAINCTL_GRACE={g} setsid sh {r} {jd} {wd} > runner.out 2>&1 < /dev/null & \
         else TRAINCTL_GRACE={g} nohup sh {r} {jd} {wd} > runner.out 2>&1 < /dev/null & fi",
        g = grace.as_secs().max(1),
        jd = sh_quote(job_dir),
        r = sh_quote(&runner),
        wd = sh_quote(workdir),
    );
    retry_lost(4, "starting the job", async || {
        remote.exec(&script).await?.check("starting the job")
    })
    .await?;
    for _ in 0..200 {
        match retry_lost(4, "reading the job's status", || status(remote, job_dir)).await? {
            RemoteStatus::Running { pid } | RemoteStatus::SettingUp { pid } => return Ok(pid),
            RemoteStatus::Exited { .. } | RemoteStatus::Vanished => {
                // Finished (or failed) faster than we looked: still started.
                let pid = remote
                    .read_range(&format!("{job_dir}/pid"), 0, 64)
                    .await?
                    .and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok())
                    .unwrap_or(0);
                return Ok(pid);
            }
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    let out = remote
        .read_range(&format!("{job_dir}/runner.out"), 0, 4096)
        .await?
        .unwrap_or_default();
    bail!(
        "the runner did not start within 5 s: {}",
        crate::sanitize::sanitize_line(&out)
    )
}

/// Read the job's status in one command.
pub async fn status(remote: &dyn Remote, job_dir: &str) -> Result<RemoteStatus> {
    let out = remote.exec(&status_script(job_dir)).await?;
    parse_status(remote, job_dir, out).await
}

/// The job's status, then its log from `offset` streamed into `sink`, in one command where
/// the remote allows it (over SSH: the status on stderr, the log on stdout). The log is
/// read after the status was taken: when it says the job ended, the read took the whole
/// log (`Streamed::Read { complete: true }`). The status tells the GPU samples' size too,
/// so they are read only when they grew.
pub async fn status_then_log(
    remote: &dyn Remote,
    job_dir: &str,
    offset: u64,
    sink: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<Polled> {
    use crate::remote::Streamed;
    let (out, streamed) = remote
        .exec_then_stream(&status_script(job_dir), &log_path(job_dir), offset, sink)
        .await?;
    // The samples' size, when the script got that far (empty: there is no samples file).
    let text = out.stdout_str();
    let gpu_bytes = text.lines().find_map(|l| {
        let v = l.strip_prefix("gpu_bytes=")?.trim();
        Some(if v.is_empty() { 0 } else { v.parse().ok()? })
    });
    let status = parse_status(remote, job_dir, out).await?;
    let ended = matches!(status, RemoteStatus::Exited { .. } | RemoteStatus::Vanished);
    let streamed = match streamed {
        Streamed::Read { complete } => Streamed::Read {
            complete: complete || ended,
        },
        Streamed::Missing => Streamed::Missing,
    };
    Ok(Polled {
        status,
        log: streamed,
        gpu_bytes,
    })
}

/// The script that prints a job's status as `key=value` lines (see [`parse_status`]).
fn status_script(job_dir: &str) -> String {
    format!(
        "cd {} 2>/dev/null || {{ echo missing=1; exit 0; }}
date +%s > seen 2>/dev/null
pid=$(cat pid 2>/dev/null)
echo \"pid=$pid\"
[ -f exit_code ] && echo \"exit_code=$(cat exit_code)\"
[ -f ended_at ] && echo \"ended_at=$(cat ended_at)\"
[ -f interrupting ] && echo \"interrupting=$(sed -n 's/^reason=//p' interrupting | head -n 1)\"
[ -f setup_failed ] && echo setup_failed=1
[ -f phase ] && echo \"phase=$(cat phase)\"
echo \"gpu_bytes=$([ -f gpu.csv ] && wc -c < gpu.csv)\"
alive=0
if [ -n \"$pid\" ] && kill -0 \"$pid\" 2>/dev/null; then
  alive=1
  # A zombie nobody reaped is dead for our purposes.
  if [ -r /proc/$pid/stat ] && sed 's/.*) //' /proc/$pid/stat | grep -q '^Z'; then alive=0; fi
fi
echo \"alive=$alive\"",
        sh_quote(job_dir)
    )
}

/// A job's status from what [`status_script`] printed.
async fn parse_status(
    remote: &dyn Remote,
    job_dir: &str,
    out: crate::remote::ExecOutput,
) -> Result<RemoteStatus> {
    let out = out.check("reading job status")?;
    let text = out.stdout_str();
    let kv: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    if kv.contains_key("missing") {
        return Ok(RemoteStatus::Missing);
    }
    let interrupted = kv.get("interrupting").map(|r| {
        let r = crate::sanitize::sanitize_line(r.trim().as_bytes());
        if r.is_empty() {
            "interruption notice".to_string()
        } else {
            r
        }
    });
    let setup_failed = kv.contains_key("setup_failed");
    if let Some(code) = kv.get("exit_code").and_then(|c| c.trim().parse().ok()) {
        return Ok(RemoteStatus::Exited {
            code,
            ended_at: kv.get("ended_at").and_then(|s| s.trim().parse().ok()),
            interrupted,
            setup_failed,
        });
    }
    let setting_up = kv.get("phase").map(|p| p.trim()) == Some("setup");
    let pid: Option<i32> = kv.get("pid").and_then(|p| p.trim().parse().ok());
    let alive = kv.get("alive").map(|a| a.trim()) == Some("1");
    Ok(match (pid, alive) {
        (None, _) => RemoteStatus::Starting,
        (Some(pid), true) if setting_up => RemoteStatus::SettingUp { pid },
        (Some(pid), true) => RemoteStatus::Running { pid },
        (Some(_), false) => {
            // The runner may have exited between our reads: look once more.
            let code = remote
                .read_range(&exit_code_path(job_dir), 0, 64)
                .await?
                .and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok());
            match code {
                Some(code) => RemoteStatus::Exited {
                    code,
                    ended_at: None,
                    interrupted,
                    setup_failed,
                },
                None => RemoteStatus::Vanished,
            }
        }
    })
}

/// Give one job an interruption notice: the watcher on the machine stops it within ~1 s
/// (SIGTERM, the grace to save, SIGKILL) and records `interrupted`, with or without us.
pub async fn notify(remote: &dyn Remote, job_dir: &str, reason: &str) -> Result<()> {
    let reason: String = reason.chars().filter(|c| !c.is_control()).collect();
    let path = format!("{job_dir}/notice");
    let body = format!("reason={reason}\n");
    retry_lost(4, "writing the interruption notice", || {
        remote.write_file(&path, body.as_bytes(), 0o644)
    })
    .await
}

/// Send `signal` (e.g. "TERM", "KILL") to the job's whole process group.
pub async fn signal(remote: &dyn Remote, job_dir: &str, signal: &str) -> Result<()> {
    let script = format!(
        // No `--`: dash's kill refuses it; a negative pid means the process group.
        "pid=$(cat {}/pid 2>/dev/null) && [ -n \"$pid\" ] && kill -{} -\"$pid\" 2>/dev/null; true",
        sh_quote(job_dir),
        sh_quote(signal)
    );
    remote.exec(&script).await?.check("signalling the job")?;
    Ok(())
}

/// Stop the job gracefully: SIGTERM to its process group, wait up to `grace`, then SIGKILL.
pub async fn stop(remote: &dyn Remote, job_dir: &str, grace: Duration) -> Result<RemoteStatus> {
    signal(remote, job_dir, "TERM").await?;
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        let st = status(remote, job_dir).await?;
        if !matches!(
            st,
            RemoteStatus::Running { .. } | RemoteStatus::SettingUp { .. } | RemoteStatus::Starting
        ) {
            return Ok(st);
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(remote, job_dir, "KILL").await?;
    for _ in 0..50 {
        let st = status(remote, job_dir).await?;
        if !matches!(
            st,
            RemoteStatus::Running { .. } | RemoteStatus::SettingUp { .. }
        ) {
            return Ok(st);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    status(remote, job_dir)
        .await
        .context("the job survived SIGKILL")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::local::LocalRemote;

    /// One look at a job: its status, its log from an offset, and how long its GPU samples
    /// are (0 when there are none), so that they are read only when they grew.
    #[tokio::test]
    async fn a_look_tells_the_status_the_log_and_the_gpu_samples_size() {
        let home = tempfile::tempdir().unwrap();
        let r = LocalRemote::new(home.path(), "trainctl-test-look");
        let jd = job_dir(r.root(), "j-look", 1);
        r.write_file(&log_path(&jd), b"a\nb\nhalf", 0o644)
            .await
            .unwrap();
        let look = || async {
            let (tx, mut rx) = tokio::sync::mpsc::channel(8);
            let polled = status_then_log(&r, &jd, 2, tx).await.unwrap();
            let mut log = Vec::new();
            while let Some(c) = rx.recv().await {
                log.extend(c);
            }
            (polled, String::from_utf8(log).unwrap())
        };
        let (p, log) = look().await;
        assert_eq!(
            (p.status, p.gpu_bytes, log.as_str()),
            (RemoteStatus::Starting, Some(0), "b\nhalf")
        );
        assert_eq!(p.log, crate::remote::Streamed::Read { complete: false });
        r.write_file(&gpu_path(&jd), b"1,0,50,1024\n", 0o644)
            .await
            .unwrap();
        r.write_file(&exit_code_path(&jd), b"0\n", 0o644)
            .await
            .unwrap();
        let (p, _) = look().await;
        assert_eq!(p.gpu_bytes, Some(12));
        assert!(matches!(p.status, RemoteStatus::Exited { code: 0, .. }));
        assert_eq!(p.log, crate::remote::Streamed::Read { complete: true });
    }

    /// A start repeated after a lost connection must not start the job twice.
    #[tokio::test]
    async fn starting_twice_starts_the_job_once() {
        let home = tempfile::tempdir().unwrap();
        let r = LocalRemote::new(home.path(), "trainctl-test-start-twice");
        let jd = job_dir(r.root(), "j-twice", 1);
        let work = home.path().join("w");
        std::fs::create_dir_all(&work).unwrap();
        let script = command_script("echo started >> ../count; sleep 30", &BTreeMap::new());
        let wd = work.to_str().unwrap();
        let g = Duration::from_secs(2);
        let first = start_detached(&r, &jd, wd, &script, g).await.unwrap();
        let second = start_detached(&r, &jd, wd, &script, g).await.unwrap();
        assert_eq!(first, second);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let count = std::fs::read_to_string(home.path().join("count")).unwrap();
        assert_eq!(count, "started\n");
        let end = stop(&r, &jd, Duration::from_secs(2)).await.unwrap();
        assert!(matches!(end, RemoteStatus::Exited { .. }), "{end:?}");
    }
}
