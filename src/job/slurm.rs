//! Slurm through a login node: a batch script submitted with `sbatch --parsable`, a job's
//! state read with `scontrol show job -o` (its reason while pending, its exit code at the
//! end), cancelled with `scancel` (a signal first, so the job can save), and the jobs
//! trainctl named listed (`squeue --me`) to find any the store does not know. Every
//! command runs on the login node through the job's [`Remote`], with the cluster's
//! environment (`SLURM_CONF` when the cluster is not the machine's default). The executor
//! and provider built on it are the next step of the Slurm issue.

use crate::remote::{Remote, sh_quote};
use anyhow::{Context, Result, bail};

/// The name prefix of every Slurm job trainctl submits (how its own are told apart).
pub const JOB_PREFIX: &str = "trainctl-";

/// How to reach a cluster's commands on its login node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cluster {
    /// Exported before every Slurm command (`SLURM_CONF`, `PATH`).
    pub env: Vec<(String, String)>,
}

impl Cluster {
    /// `export K='v'; …` for the cluster's environment, quoted.
    fn prefix(&self) -> String {
        self.env
            .iter()
            .filter(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
            .map(|(k, v)| format!("export {k}={}; ", sh_quote(v)))
            .collect()
    }
}

/// One batch job: what `sbatch` is asked for, and the script it runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Without the prefix; `trainctl-` is put in front.
    pub name: String,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// `--constraint`: node features.
    pub constraint: Option<String>,
    /// GPUs per node (`--gres=gpu:N`); 0: none asked.
    pub gpus_per_node: u32,
    pub nodes: u32,
    pub ntasks_per_node: u32,
    pub cpus_per_task: Option<u32>,
    /// `--mem` as Slurm reads it (`16G`).
    pub mem: Option<String>,
    /// `--time` as Slurm reads it (`04:00:00`).
    pub time_limit: Option<String>,
    /// `--signal=B:USR1@<seconds>`: the batch shell is told this long before the time
    /// limit (it turns that into trainctl's interruption notice: checkpoint, continue).
    pub signal_before_limit_s: Option<u32>,
    /// Where stdout and stderr go (a path on the shared filesystem).
    pub output: String,
    pub workdir: String,
    /// The commands (POSIX sh).
    pub body: String,
}

/// A value for an `#SBATCH` line: sbatch reads these lines itself (no shell), taking a
/// double-quoted value whole; quotes, backslashes, `$` and newlines are refused rather
/// than guessed at.
pub fn directive_value(v: &str) -> Result<String> {
    if v.is_empty()
        || v.chars()
            .any(|c| "\"'\\$`\n\r".contains(c) || c.is_control())
    {
        bail!("`{v}` cannot be passed to sbatch (empty, or quotes, backslashes, $ or newlines)");
    }
    Ok(if v.contains(char::is_whitespace) {
        format!("\"{v}\"")
    } else {
        v.to_string()
    })
}

/// The batch script: `#SBATCH` lines from `b`, then the body. A value sbatch could
/// misread is refused (see [`directive_value`]).
pub fn batch_script(b: &Batch) -> Result<String> {
    let mut s = String::from("#!/bin/sh\n");
    let mut err = None;
    let mut d = |flag: &str, v: &str| match directive_value(v) {
        Ok(v) => s.push_str(&format!("#SBATCH {flag}={v}\n")),
        Err(e) => {
            err.get_or_insert(e.context(flag.to_string()));
        }
    };
    d("--job-name", &format!("{JOB_PREFIX}{}", b.name));
    d("--output", &b.output);
    d("--chdir", &b.workdir);
    d("--nodes", &b.nodes.max(1).to_string());
    d("--ntasks-per-node", &b.ntasks_per_node.max(1).to_string());
    if b.gpus_per_node > 0 {
        d("--gres", &format!("gpu:{}", b.gpus_per_node));
    }
    for (flag, v) in [
        ("--partition", &b.partition),
        ("--account", &b.account),
        ("--qos", &b.qos),
        ("--constraint", &b.constraint),
        ("--mem", &b.mem),
        ("--time", &b.time_limit),
    ] {
        if let Some(v) = v {
            d(flag, v);
        }
    }
    if let Some(c) = b.cpus_per_task {
        d("--cpus-per-task", &c.to_string());
    }
    if let Some(sec) = b.signal_before_limit_s {
        d("--signal", &format!("B:USR1@{sec}"));
    }
    if let Some(e) = err {
        return Err(e);
    }
    s.push_str(&b.body);
    if !s.ends_with('\n') {
        s.push('\n');
    }
    Ok(s)
}

/// Submit `b`; returns the Slurm job id.
pub async fn submit(remote: &dyn Remote, cluster: &Cluster, b: &Batch) -> Result<String> {
    let script = batch_script(b)?;
    let out = remote
        .exec_with_stdin(
            &format!("{}sbatch --parsable", cluster.prefix()),
            script.as_bytes(),
        )
        .await?
        .check("sbatch")?;
    // `--parsable` prints `id` or `id;cluster`.
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit() || c == '_') {
        bail!("sbatch answered `{}`, not a job id", text.trim());
    }
    Ok(id)
}

/// A Slurm job's state as trainctl reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum SlurmState {
    /// Waiting for resources; `reason` is Slurm's (Priority, Resources, QOSMaxGRES…).
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
    /// Its time limit came.
    Timeout,
    OutOfMemory,
    /// Taken back by the cluster (preempted, a node failed, requeued): not the job's
    /// fault; trainctl recovers it.
    Interrupted,
    /// A state trainctl does not map (say which).
    Other(String),
}

impl SlurmState {
    pub fn of(s: &str) -> SlurmState {
        // `CANCELLED by 0` and the like: the first word.
        match s.split_whitespace().next().unwrap_or("") {
            "PENDING" | "CONFIGURING" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD" => {
                SlurmState::Pending
            }
            "RUNNING" | "COMPLETING" | "SUSPENDED" | "STAGE_OUT" | "SIGNALING" | "RESIZING" => {
                SlurmState::Running
            }
            "COMPLETED" => SlurmState::Completed,
            "FAILED" | "BOOT_FAIL" | "DEADLINE" => SlurmState::Failed,
            "CANCELLED" | "REVOKED" => SlurmState::Cancelled,
            "TIMEOUT" => SlurmState::Timeout,
            "OUT_OF_MEMORY" => SlurmState::OutOfMemory,
            "PREEMPTED" | "NODE_FAIL" | "REQUEUED" => SlurmState::Interrupted,
            other => SlurmState::Other(other.to_string()),
        }
    }

    pub fn is_terminal(&self) -> bool {
        !matches!(
            self,
            SlurmState::Pending | SlurmState::Running | SlurmState::Interrupted
        )
    }
}

/// What `scontrol show job -o` says of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobInfo {
    pub id: String,
    pub name: String,
    pub state: SlurmState,
    /// Slurm's words for the state (`PENDING`, `CANCELLED`…).
    pub state_text: String,
    /// Why it waits or ended (`Resources`, `Priority`, `NonZeroExitCode`, `None`).
    pub reason: String,
    /// The batch script's exit status and the signal that ended it (`ExitCode=3:0`).
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub nodes: String,
    /// Slurm's estimate of the start while pending (`StartTime`, when not `Unknown`).
    pub start_estimate: Option<String>,
    /// How many times Slurm requeued it (preemption, a failed node, `scontrol requeue`).
    pub restarts: u32,
}

/// Parse one line of `scontrol show job -o`. Values never hold spaces except the last
/// fields (`Command=`, `Comment=`…), which are not read.
pub fn parse_job(line: &str) -> Option<JobInfo> {
    let mut kv = std::collections::HashMap::new();
    for tok in line.split_whitespace() {
        if let Some((k, v)) = tok.split_once('=') {
            kv.entry(k).or_insert(v);
        }
    }
    let id = kv.get("JobId")?.to_string();
    let state_text = kv.get("JobState").copied().unwrap_or("").to_string();
    let (exit_code, signal) = kv
        .get("ExitCode")
        .and_then(|e| e.split_once(':'))
        .map_or((None, None), |(c, s)| (c.parse().ok(), s.parse().ok()));
    Some(JobInfo {
        id,
        name: kv.get("JobName").copied().unwrap_or("").to_string(),
        state: SlurmState::of(&state_text),
        reason: kv.get("Reason").copied().unwrap_or("None").to_string(),
        exit_code,
        signal,
        nodes: kv.get("NodeList").copied().unwrap_or("").to_string(),
        start_estimate: kv
            .get("StartTime")
            .filter(|t| **t != "Unknown" && **t != "None")
            .map(|t| t.to_string()),
        restarts: kv.get("Restarts").and_then(|r| r.parse().ok()).unwrap_or(0),
        state_text,
    })
}

/// The job's state, or None when Slurm no longer knows it (ended and purged).
pub async fn job(remote: &dyn Remote, cluster: &Cluster, id: &str) -> Result<Option<JobInfo>> {
    let out = remote
        .exec(&format!(
            "{}scontrol show job -o {} 2>&1",
            cluster.prefix(),
            sh_quote(id)
        ))
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Invalid job id") {
        return Ok(None);
    }
    if out.status != 0 {
        bail!("scontrol show job {id}: {}", text.trim());
    }
    Ok(text.lines().find_map(parse_job))
}

/// Send `signal` to the batch shell and its steps (`scancel --signal=TERM --full`), or
/// cancel the job outright (`None`). A job already gone is done.
pub async fn cancel(
    remote: &dyn Remote,
    cluster: &Cluster,
    id: &str,
    signal: Option<&str>,
) -> Result<()> {
    let sig = match signal {
        Some(s) if s.chars().all(|c| c.is_ascii_alphanumeric()) => {
            format!("--signal={s} --full ")
        }
        Some(s) => bail!("`{s}` is not a signal name"),
        None => String::new(),
    };
    let out = remote
        .exec(&format!(
            "{}scancel {sig}{} 2>&1",
            cluster.prefix(),
            sh_quote(id)
        ))
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    if out.status != 0 && !text.contains("Invalid job id") && !text.contains("already completing") {
        bail!("scancel {id}: {}", text.trim());
    }
    Ok(())
}

/// Jobs of the login user that trainctl named, not yet ended: (id, name, state).
pub async fn ours(remote: &dyn Remote, cluster: &Cluster) -> Result<Vec<(String, String, String)>> {
    let out = remote
        .exec(&format!("{}squeue --me -h -o '%i %j %T'", cluster.prefix()))
        .await?
        .check("squeue")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (id, name, state) = (w.next()?, w.next()?, w.next()?);
            name.starts_with(JOB_PREFIX)
                .then(|| (id.to_string(), name.to_string(), state.to_string()))
        })
        .collect())
}

/// One partition's room for the next job, summed over its usable nodes (idle or mixed:
/// not down, drained, draining, failing or not responding).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Partition {
    pub name: String,
    pub nodes: u32,
    pub nodes_usable: u32,
    pub gpus: u32,
    pub gpus_free: u32,
    pub cpus: u32,
    pub cpus_idle: u32,
}

/// GPUs in a gres list (`gpu:2`, `gpu:a100:4(S:0-1)`, `gpu:a100:2(IDX:0-1),shard:8`).
fn gres_gpus(gres: &str) -> u32 {
    // Split at commas outside parentheses.
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in gres.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&gres[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&gres[start..]);
    items
        .iter()
        .filter(|g| g.starts_with("gpu"))
        .filter_map(|g| g.split('(').next()?.rsplit(':').next()?.parse::<u32>().ok())
        .sum()
}

/// Partitions from `sinfo -h -N -O "PartitionName:|,NodeHost:|,Gres:|,GresUsed:|,CPUsState:|,StateCompact:|"`
/// (a line per node and partition), in the order sinfo gives them.
pub fn parse_sinfo(text: &str) -> Vec<Partition> {
    let mut parts: Vec<Partition> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('|').map(str::trim).collect();
        let [name, _node, gres, used, cpus, state, ..] = f.as_slice() else {
            continue;
        };
        let name = name.trim_end_matches('*');
        if name.is_empty() {
            continue;
        }
        let k = match parts.iter().position(|p| p.name == name) {
            Some(k) => k,
            None => {
                parts.push(Partition {
                    name: name.to_string(),
                    ..Partition::default()
                });
                parts.len() - 1
            }
        };
        let p = &mut parts[k];
        p.nodes += 1;
        let total = gres_gpus(gres);
        p.gpus += total;
        // Allocated/idle/other/total.
        let c: Vec<u32> = cpus.split('/').filter_map(|x| x.parse().ok()).collect();
        p.cpus += c.get(3).copied().unwrap_or(0);
        // A trailing flag (`*` not responding, `~` powered off, `#` powering up…) makes a
        // node unusable unless it is only `+`/`$`-marked (reservation, maintenance soon).
        let usable = matches!(state.trim_end_matches(['+', '$']), "idle" | "mix" | "alloc");
        if usable {
            p.nodes_usable += 1;
            p.gpus_free += total.saturating_sub(gres_gpus(used));
            p.cpus_idle += c.get(1).copied().unwrap_or(0);
        }
    }
    parts
}

/// `debug 1/2 GPUs free · cpu 30/64 CPUs idle (1 of 3 nodes down)`.
pub fn capacity_text(parts: &[Partition]) -> String {
    if parts.is_empty() {
        return "no partition".into();
    }
    parts
        .iter()
        .map(|p| {
            let room = if p.gpus > 0 {
                format!("{} {}/{} GPUs free", p.name, p.gpus_free, p.gpus)
            } else {
                format!("{} {}/{} CPUs idle", p.name, p.cpus_idle, p.cpus)
            };
            match p.nodes - p.nodes_usable {
                0 => room,
                n => format!("{room} ({n} of {} nodes down)", p.nodes),
            }
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// The cluster's partitions and their room, asked of `sinfo`.
pub async fn partitions(remote: &dyn Remote, cluster: &Cluster) -> Result<Vec<Partition>> {
    let out = remote
        .exec(&format!(
            "{}sinfo -h -N -O 'PartitionName:|,NodeHost:|,Gres:|,GresUsed:|,CPUsState:|,StateCompact:|'",
            cluster.prefix()
        ))
        .await?
        .check("sinfo")?;
    Ok(parse_sinfo(&String::from_utf8_lossy(&out.stdout)))
}

/// Wait (polling every `every`) until `id` is in a terminal state or gone; at most `max`.
pub async fn wait_terminal(
    remote: &dyn Remote,
    cluster: &Cluster,
    id: &str,
    every: std::time::Duration,
    max: std::time::Duration,
) -> Result<Option<JobInfo>> {
    let deadline = tokio::time::Instant::now() + max;
    loop {
        let info = job(remote, cluster, id).await?;
        match &info {
            Some(i) if !i.state.is_terminal() => {}
            _ => return Ok(info),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow::anyhow!(
                "job {id} still {:?}",
                info.map(|i| i.state)
            ))
            .context("waiting for a Slurm job");
        }
        tokio::time::sleep(every).await;
    }
}

/// The second [`super::executor::Executor`]: an attempt is a Slurm batch job. The batch
/// script runs trainctl's runner in the foreground inside the allocation, so the attempt's
/// files (pid, exit code, times, log) are written as on any machine, on the cluster's
/// shared filesystem; what the login node cannot see (a process on a compute node) is
/// asked of Slurm: queued, running, or ended without the runner recording an exit (time
/// limit, cancel, node failure: the engine's loss and recovery take it from there).
pub struct SbatchExecutor {
    pub cluster: Cluster,
    /// Put after `trainctl-` in every batch job's name: this store's tag and a dash (so
    /// the jobs of another store on the same account are not taken for orphans).
    pub owner: String,
    /// Partition, account, QoS, GPUs, time limit: the cluster's defaults for every job.
    pub template: Batch,
}

/// The batch job's commands: trainctl's runner in its own session (its stop reaches the
/// job's whole group, as on any machine), waited for; Slurm's time-limit signal (USR1 to
/// the batch shell) becomes the runner's interruption notice, so the job checkpoints and
/// trainctl continues it in a new batch job (the trap runs in the job directory, where
/// the shell went). A cancel (scancel's TERM to every process) is not a notice: it reaches
/// the runner, which stops the job. A batch job Slurm requeued (preempted, its node
/// failed, `scontrol requeue`) does not run the attempt a second time over its own files:
/// it ends at once, and trainctl's recovery starts the next attempt from the newest
/// checkpoint.
fn batch_body(job_dir: &str, workdir: &str, runner: &str, grace: std::time::Duration) -> String {
    format!(
        "trap 'printf \"reason=Slurm time limit near: saving, to continue in a new batch job\\n\" > notice.part && mv notice.part notice' USR1\n\
         cd {jd} || exit 1\n\
         if [ -e batch.started ]; then echo 'requeued: this attempt already ran once; trainctl continues the job in a new batch job' >&2; exit 0; fi\n\
         : > batch.started\n\
         TRAINCTL_GRACE={g} setsid -w sh {r} {jd} {wd} > runner.out 2>&1 < /dev/null &\n\
         child=$!\n\
         while :; do wait $child; s=$?; kill -0 $child 2>/dev/null || break; done\n\
         exit $s\n",
        jd = sh_quote(job_dir),
        g = grace.as_secs().max(1),
        r = sh_quote(runner),
        wd = sh_quote(workdir),
    )
}

/// `cmd.sh` of an attempt of several ranks: the script's settings head kept (the runner
/// reads it), torchrun's rendezvous environment from Slurm's (`MASTER_ADDR` the first
/// node of the allocation, `MASTER_PORT`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, and per rank
/// `RANK`, `LOCAL_RANK`, `NODE_RANK`), then `srun` starting `cmd.rank.sh` once per task:
/// rank 0's output is the job's log (metrics are read from it), every other rank's is kept
/// beside it as `rank-N.log`.
fn ranks_script(script: &str, job_dir: &str) -> String {
    let head: String = script
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let jd = sh_quote(job_dir);
    let per_rank = format!(
        "export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID NODE_RANK=$SLURM_NODEID; \
         if [ \"$RANK\" = 0 ]; then exec sh {jd}/cmd.rank.sh; \
         else exec sh {jd}/cmd.rank.sh > {jd}/rank-$RANK.log 2>&1; fi"
    );
    format!(
        "{head}\
         export MASTER_ADDR=\"$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\"\n\
         export MASTER_PORT=$((29500 + SLURM_JOB_ID % 1000))\n\
         export WORLD_SIZE=\"$SLURM_NTASKS\" LOCAL_WORLD_SIZE=\"${{SLURM_NTASKS_PER_NODE%%(*}}\"\n\
         exec srun --kill-on-bad-exit=1 sh -c {}\n",
        sh_quote(&per_rank)
    )
}

/// Before the batch job's id is recorded: what the files say, or starting.
fn files_or_starting(files: super::RemoteStatus) -> super::RemoteStatus {
    match files {
        super::RemoteStatus::Exited { .. } => files,
        _ => super::RemoteStatus::Starting,
    }
}

impl SbatchExecutor {
    /// The cluster's defaults with what the attempt's script head asks for over them
    /// (`# nodes=`, `# tasks_per_node=`, `# gpus=`, `# slurm.<key>=`).
    pub fn batch_for(&self, script: &str) -> Result<Batch> {
        let head: Vec<(&str, &str)> = script
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# ")?.split_once('='))
            .map(|(k, v)| (k, v.trim()))
            .collect();
        let get = |key: &str| head.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let num = |key: &str| -> Result<Option<u32>> {
            get(key)
                .map(|v| {
                    v.parse::<u32>()
                        .with_context(|| format!("`{key}` is `{v}`, not a count"))
                })
                .transpose()
        };
        let text = |key: &str, default: &Option<String>| -> Result<Option<String>> {
            match get(&format!("slurm.{key}")) {
                Some(v) => Ok(Some(directive_value(v).map(|_| v.to_string())?)),
                None => Ok(default.clone()),
            }
        };
        let t = &self.template;
        Ok(Batch {
            nodes: num("nodes")?.unwrap_or(1).max(1),
            ntasks_per_node: num("tasks_per_node")?.unwrap_or(1).max(1),
            gpus_per_node: num("gpus")?.unwrap_or(t.gpus_per_node),
            partition: text("partition", &t.partition)?,
            account: text("account", &t.account)?,
            qos: text("qos", &t.qos)?,
            constraint: text("constraint", &t.constraint)?,
            time_limit: text("time_limit", &t.time_limit)?,
            mem: text("mem", &t.mem)?,
            cpus_per_task: match get("slurm.cpus_per_task") {
                Some(_) => num("slurm.cpus_per_task")?,
                None => t.cpus_per_task,
            },
            ..t.clone()
        })
    }

    async fn slurm_id(&self, remote: &dyn Remote, job_dir: &str) -> Result<Option<String>> {
        Ok(remote
            .read_range(&format!("{job_dir}/slurm_id"), 0, 64)
            .await?
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .filter(|s| !s.is_empty()))
    }
}

#[async_trait::async_trait]
impl super::executor::Executor for SbatchExecutor {
    fn name(&self) -> &'static str {
        "sbatch"
    }

    async fn start(
        &self,
        remote: &dyn Remote,
        job_dir: &str,
        workdir: &str,
        script: &str,
        grace: std::time::Duration,
    ) -> Result<String> {
        // The attempt's shape and what the job asks for, from the script's head (the
        // engine writes it there), over the cluster's defaults.
        let b = self.batch_for(script)?;
        let (nodes, tasks) = (b.nodes, b.ntasks_per_node);
        let runner = if nodes * tasks > 1 {
            // One task per rank: the command in cmd.rank.sh, started by srun from cmd.sh.
            remote
                .write_file(&format!("{job_dir}/cmd.rank.sh"), script.as_bytes(), 0o644)
                .await?;
            super::upload_runner(remote, job_dir, &ranks_script(script, job_dir)).await?
        } else {
            super::upload_runner(remote, job_dir, script).await?
        };
        // Submitted once: the lock is taken before sbatch, the id written after it.
        let locked = remote
            .exec(&format!("cd {} && mkdir start.lock", sh_quote(job_dir)))
            .await?
            .status
            == 0;
        if !locked {
            for _ in 0..100 {
                if let Some(id) = self.slurm_id(remote, job_dir).await? {
                    return Ok(format!("slurm:{id}"));
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            bail!("another start of this attempt holds its lock and never submitted");
        }
        let name = format!(
            "{}{}",
            self.owner,
            job_dir.rsplit('/').next().unwrap_or("job")
        );
        let b = Batch {
            name,
            output: format!("{job_dir}/slurm.out"),
            workdir: workdir.to_string(),
            body: batch_body(job_dir, workdir, &runner, grace),
            // With a time limit, Slurm tells the batch shell in time to save: the grace
            // and a minute (Slurm's own timer may be that late).
            signal_before_limit_s: b.time_limit.as_ref().map(|_| grace.as_secs() as u32 + 60),
            ..b
        };
        let id = submit(remote, &self.cluster, &b).await?;
        remote
            .write_file(&format!("{job_dir}/slurm_id"), id.as_bytes(), 0o644)
            .await?;
        Ok(format!("slurm:{id}"))
    }

    async fn status(&self, remote: &dyn Remote, job_dir: &str) -> Result<super::RemoteStatus> {
        use super::RemoteStatus as S;
        let files = super::status(remote, job_dir).await?;
        if matches!(files, S::Missing) {
            return Ok(files);
        }
        let Some(id) = self.slurm_id(remote, job_dir).await? else {
            return Ok(files_or_starting(files));
        };
        if let S::Exited {
            code,
            ended_at,
            interrupted: None,
            setup_failed,
        } = files
        {
            // Stopped by the cluster (preempted, node failed, requeued): an interruption,
            // not the job's own end, and trainctl recovers it.
            let taken = job(remote, &self.cluster, &id)
                .await?
                .filter(|i| i.restarts > 0 || i.state == SlurmState::Interrupted);
            if taken.is_some() {
                // The attempt is over for trainctl: its requeued batch job must not wait in
                // the queue (the next attempt is a batch job of its own).
                if let Err(e) = cancel(remote, &self.cluster, &id, None).await {
                    tracing::warn!("cancelling requeued batch job {id}: {e:#}");
                }
            }
            return Ok(S::Exited {
                code,
                ended_at,
                interrupted: taken.map(|i| {
                    format!(
                        "Slurm {} batch job {id}",
                        if i.restarts > 0 {
                            "requeued"
                        } else {
                            i.state_text.as_str()
                        }
                    )
                }),
                setup_failed,
            });
        }
        if matches!(files, S::Exited { .. }) {
            return Ok(files);
        }
        let Some(info) = job(remote, &self.cluster, &id).await? else {
            // Slurm forgot it and the runner recorded no exit: it ended some other way.
            return super::status(remote, job_dir).await.map(|s| match s {
                S::Exited { .. } => s,
                _ => S::Vanished,
            });
        };
        Ok(match info.state {
            SlurmState::Pending => S::Queued {
                reason: info.reason.clone(),
                start: info.start_estimate.clone(),
            },
            SlurmState::Running => match files {
                S::Running { .. } | S::SettingUp { .. } => files,
                // The runner's pid lives on a compute node: Slurm vouches it runs.
                _ => S::Running { pid: 0 },
            },
            // Ended: the runner's exit may land a moment after Slurm's record.
            _ => match super::status(remote, job_dir).await? {
                s @ S::Exited { .. } => s,
                _ => S::Vanished,
            },
        })
    }

    async fn signal(&self, remote: &dyn Remote, job_dir: &str, signal: &str) -> Result<()> {
        let Some(id) = self.slurm_id(remote, job_dir).await? else {
            return Ok(());
        };
        // KILL: the job goes (scancel's own TERM, KillWait, KILL).
        let sig = (signal != "KILL").then_some(signal);
        cancel(remote, &self.cluster, &id, sig).await
    }

    async fn stop(
        &self,
        remote: &dyn Remote,
        job_dir: &str,
        grace: std::time::Duration,
    ) -> Result<super::RemoteStatus> {
        use super::RemoteStatus as S;
        self.signal(remote, job_dir, "TERM").await?;
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let st = self.status(remote, job_dir).await?;
            if !matches!(
                st,
                S::Running { .. } | S::SettingUp { .. } | S::Starting | S::Queued { .. }
            ) {
                return Ok(st);
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        self.signal(remote, job_dir, "KILL").await?;
        for _ in 0..150 {
            let st = self.status(remote, job_dir).await?;
            if !matches!(
                st,
                S::Running { .. } | S::SettingUp { .. } | S::Starting | S::Queued { .. }
            ) {
                return Ok(st);
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        bail!("the Slurm job of {job_dir} is still there after scancel")
    }

    async fn notify(&self, remote: &dyn Remote, job_dir: &str, reason: &str) -> Result<()> {
        // The runner's watcher runs inside the allocation and reads the shared filesystem.
        super::notify(remote, job_dir, reason).await
    }

    async fn capacity(&self, remote: &dyn Remote) -> Result<Option<String>> {
        Ok(Some(capacity_text(
            &partitions(remote, &self.cluster).await?,
        )))
    }

    async fn batch_jobs(&self, remote: &dyn Remote) -> Result<Vec<super::executor::BatchJob>> {
        let mine = format!("{JOB_PREFIX}{}", self.owner);
        Ok(ours(remote, &self.cluster)
            .await?
            .into_iter()
            // Ending already: not something to cancel.
            .filter(|(_, _, state)| state != "COMPLETING")
            .filter_map(|(id, name, state)| {
                Some(super::executor::BatchJob {
                    attempt_dir: name.strip_prefix(&mine)?.to_string(),
                    id,
                    name,
                    state,
                })
            })
            .collect())
    }

    async fn cancel_batch_job(&self, remote: &dyn Remote, id: &str) -> Result<()> {
        cancel(remote, &self.cluster, id, None).await?;
        match wait_terminal(
            remote,
            &self.cluster,
            id,
            std::time::Duration::from_millis(200),
            std::time::Duration::from_secs(60),
        )
        .await?
        {
            Some(i) if !i.state.is_terminal() => bail!("batch job {id} is still {:?}", i.state),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scontrol_lines_are_read_with_reason_exit_code_and_estimate() {
        let pending = "JobId=12 JobName=trainctl-j-1 UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=1 Nice=0 Account=(null) QOS=(null) JobState=PENDING Reason=Resources Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=UNLIMITED TimeMin=N/A SubmitTime=2026-11-26T21:29:10 EligibleTime=2026-11-26T21:29:10 StartTime=2026-11-26T21:40:00 EndTime=Unknown NodeList=(null) Command=/tmp/a b.sh";
        let j = parse_job(pending).unwrap();
        assert_eq!(j.id, "12");
        assert_eq!(j.name, "trainctl-j-1");
        assert_eq!(j.state, SlurmState::Pending);
        assert_eq!(j.reason, "Resources");
        assert_eq!(j.start_estimate.as_deref(), Some("2026-11-26T21:40:00"));
        let failed = "JobId=13 JobName=x JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0 StartTime=2026-11-26T21:29:11 NodeList=localhost";
        let j = parse_job(failed).unwrap();
        assert_eq!(
            (j.state, j.exit_code, j.signal),
            (SlurmState::Failed, Some(3), Some(0))
        );
        assert_eq!(j.nodes, "localhost");
        assert_eq!(SlurmState::of("CANCELLED by 0"), SlurmState::Cancelled);
        for s in ["PREEMPTED", "NODE_FAIL", "REQUEUED"] {
            assert_eq!(SlurmState::of(s), SlurmState::Interrupted);
            assert!(!SlurmState::of(s).is_terminal());
        }
        assert_eq!(SlurmState::of("TIMEOUT"), SlurmState::Timeout);
        assert!(parse_job("no job here").is_none());
    }

    #[test]
    fn a_batch_script_quotes_every_value_and_asks_what_the_job_needs() {
        let b = Batch {
            name: "j-1".into(),
            account: Some("lab-a".into()),
            gpus_per_node: 2,
            nodes: 2,
            ntasks_per_node: 1,
            time_limit: Some("04:00:00".into()),
            signal_before_limit_s: Some(120),
            output: "/shared/j 1/out.log".into(),
            workdir: "/shared/code".into(),
            body: "python3 train.py".into(),
            ..Default::default()
        };
        let s = batch_script(&b).unwrap();
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("#SBATCH --job-name=trainctl-j-1\n"), "{s}");
        assert!(s.contains("#SBATCH --account=lab-a\n"), "{s}");
        assert!(s.contains("#SBATCH --gres=gpu:2\n"));
        assert!(s.contains("#SBATCH --nodes=2\n"));
        assert!(s.contains("#SBATCH --signal=B:USR1@120\n"));
        assert!(
            s.contains("#SBATCH --output=\"/shared/j 1/out.log\"\n"),
            "{s}"
        );
        assert!(!s.contains("--partition"), "unset: not asked");
        assert!(s.ends_with("python3 train.py\n"));
        // A value sbatch could misread is refused, naming the directive.
        let bad = Batch {
            account: Some("lab's".into()),
            ..b.clone()
        };
        let e = batch_script(&bad).unwrap_err();
        assert!(format!("{e:#}").contains("--account"), "{e:#}");
        let env = Cluster {
            env: vec![
                ("SLURM_CONF".into(), "/etc/x y/slurm.conf".into()),
                ("bad key".into(), "x".into()),
            ],
        };
        assert_eq!(env.prefix(), "export SLURM_CONF='/etc/x y/slurm.conf'; ");
    }

    #[test]
    fn sinfo_lines_sum_to_each_partitions_room() {
        let text = "debug|localhost|gpu:2|gpu:1|1/1/0/2|mix|\n\
                    gpu|n1|gpu:a100:4(S:0-1)|gpu:a100:4(IDX:0-3)|64/0/0/64|alloc|\n\
                    gpu|n2|gpu:a100:2(S:0),gpu:v100:2|gpu:a100:0(IDX:N/A),gpu:v100:1(IDX:0)|8/56/0/64|mix|\n\
                    gpu|n3|gpu:a100:4|gpu:0|0/0/64/64|down*|\n\
                    cpu*|c1|(null)|gpu:0|2/30/0/32|idle|\n";
        let p = parse_sinfo(text);
        assert_eq!(p.len(), 3);
        assert_eq!((p[0].gpus, p[0].gpus_free, p[0].nodes_usable), (2, 1, 1));
        assert_eq!((p[1].gpus, p[1].gpus_free, p[1].nodes), (12, 3, 3));
        assert_eq!(p[1].nodes_usable, 2);
        assert_eq!(
            (p[2].name.as_str(), p[2].cpus_idle, p[2].cpus),
            ("cpu", 30, 32)
        );
        assert_eq!(
            capacity_text(&p),
            "debug 1/2 GPUs free · gpu 3/12 GPUs free (1 of 3 nodes down) · cpu 30/32 CPUs idle"
        );
    }

    /// What a job's `trainctl.toml` asks for (in its script head) overrides the cluster's
    /// defaults; what it does not ask keeps them.
    #[test]
    fn a_job_asks_over_the_clusters_defaults() {
        let x = SbatchExecutor {
            cluster: Cluster::default(),
            owner: "abcd1234-".into(),
            template: Batch {
                partition: Some("debug".into()),
                account: Some("lab".into()),
                gpus_per_node: 1,
                time_limit: Some("1:00:00".into()),
                ..Batch::default()
            },
        };
        let b = x
            .batch_for(
                "# gpu_every=5\n# nodes=2\n# tasks_per_node=4\n# gpus=8\n\
                 # slurm.partition=gpu long\n# slurm.time_limit=2-00:00:00\n\
                 # slurm.cpus_per_task=16\n# slurm.mem=64G\n# slurm.constraint=a100&ib\n\
                 python3 train.py\n# slurm.qos=not-the-head\n",
            )
            .unwrap();
        assert_eq!((b.nodes, b.ntasks_per_node, b.gpus_per_node), (2, 4, 8));
        assert_eq!(b.partition.as_deref(), Some("gpu long"));
        assert_eq!(b.account.as_deref(), Some("lab"), "the cluster's");
        assert_eq!(b.qos, None, "only the head is read");
        assert_eq!(b.time_limit.as_deref(), Some("2-00:00:00"));
        assert_eq!(b.cpus_per_task, Some(16));
        assert_eq!(b.mem.as_deref(), Some("64G"));
        let s = batch_script(&Batch {
            output: "/o".into(),
            workdir: "/w".into(),
            ..b
        })
        .unwrap();
        assert!(s.contains("#SBATCH --partition=\"gpu long\"\n"), "{s}");
        assert!(s.contains("#SBATCH --constraint=a100&ib\n"), "{s}");
        assert!(s.contains("#SBATCH --cpus-per-task=16\n"), "{s}");
        // Nothing asked: the cluster's defaults.
        let d = x.batch_for("python3 train.py\n").unwrap();
        assert_eq!((d.nodes, d.gpus_per_node), (1, 1));
        assert_eq!(d.partition.as_deref(), Some("debug"));
        assert!(x.batch_for("# gpus=two\ntrue\n").is_err());
    }
}
