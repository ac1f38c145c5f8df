//! Slurm through a login node, against a real cluster: the fixture's `slurmctld` and
//! `slurmd` on 127.0.0.1 (`testkit::slurm`), reached through the test sshd as the login
//! node, as trainctl reaches a university cluster.

use crate::ssh::connect_trusting;
use std::time::Duration;
use trainctl::job::slurm::{self, Batch, Cluster, SlurmState};
use trainctl::remote::Remote;
use trainctl::testkit::Sshd;
use trainctl::testkit::slurm::Slurm;

fn batch(dir: &std::path::Path, name: &str, body: &str) -> Batch {
    Batch {
        name: name.into(),
        nodes: 1,
        ntasks_per_node: 1,
        cpus_per_task: Some(1),
        output: dir.join(format!("{name}.out")).display().to_string(),
        workdir: dir.display().to_string(),
        body: body.into(),
        ..Default::default()
    }
}

/// The job's state once it ended (polled every 200 ms, at most 30 s).
async fn ended(r: &dyn Remote, c: &Cluster, id: &str) -> Option<slurm::JobInfo> {
    slurm::wait_terminal(
        r,
        c,
        id,
        Duration::from_millis(200),
        Duration::from_secs(30),
    )
    .await
    .unwrap()
}

async fn until(
    r: &dyn Remote,
    c: &Cluster,
    id: &str,
    what: &str,
    f: impl Fn(&slurm::JobInfo) -> bool,
) -> slurm::JobInfo {
    for _ in 0..200 {
        if let Some(j) = slurm::job(r, c, id).await.unwrap()
            && f(&j)
        {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {id} never {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waits_with_its_reason_then_runs_on_the_gpus_it_asked_for_and_completes() {
    let cluster = Slurm::start();
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let r = connect_trusting(&sshd, work.path(), &work.path().join("remote")).await;
    let c = Cluster { env: cluster.env() };
    let dir = work.path();
    // Both CPUs held: the next job waits, and says why.
    let mut hold = batch(dir, "hold", "sleep 60");
    hold.cpus_per_task = Some(2);
    let hold_id = slurm::submit(&r, &c, &hold).await.unwrap();
    until(&r, &c, &hold_id, "ran", |j| j.state == SlurmState::Running).await;
    let mut job = batch(
        dir,
        "j-1",
        "echo \"on $SLURM_JOB_NODELIST gres=$SLURM_JOB_GPUS tasks=$SLURM_NTASKS\"; echo done",
    );
    job.gpus_per_node = 2;
    let id = slurm::submit(&r, &c, &job).await.unwrap();
    // Slurm says why once its scheduler has looked (a second or so).
    let pending = until(&r, &c, &id, "waited with a reason", |j| {
        j.state == SlurmState::Pending && j.reason != "None"
    })
    .await;
    assert!(
        ["Resources", "Priority"].contains(&pending.reason.as_str()),
        "{pending:?}"
    );
    let mine = slurm::ours(&r, &c).await.unwrap();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(
        mine.iter()
            .any(|(i, n, s)| *i == id && n == "trainctl-j-1" && s == "PENDING")
    );
    // The hold goes; the job runs and completes.
    slurm::cancel(&r, &c, &hold_id, None).await.unwrap();
    let end = ended(&r, &c, &id).await.expect("still known to Slurm");
    assert_eq!(
        (end.state.clone(), end.exit_code),
        (SlurmState::Completed, Some(0)),
        "{end:?}"
    );
    let out = std::fs::read_to_string(dir.join("j-1.out")).unwrap();
    assert!(
        out.contains("on localhost") && out.contains("tasks=1") && out.ends_with("done\n"),
        "{out}"
    );
    let hold_end = slurm::job(&r, &c, &hold_id).await.unwrap().unwrap();
    assert_eq!(hold_end.state, SlurmState::Cancelled);
    assert!(
        slurm::ours(&r, &c).await.unwrap().is_empty(),
        "nothing of ours left queued"
    );
    assert!(
        cluster.completions().contains(&format!("JobId={id} ")),
        "{}",
        cluster.completions()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_keeps_its_exit_code_a_term_reaches_the_batch_shell_and_a_cancel_leaves_nothing()
{
    let cluster = Slurm::start();
    let sshd = Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let r = connect_trusting(&sshd, work.path(), &work.path().join("remote")).await;
    let c = Cluster { env: cluster.env() };
    let dir = work.path();
    // A failing command: FAILED with its exit code.
    let id = slurm::submit(&r, &c, &batch(dir, "fails", "echo trying; exit 3"))
        .await
        .unwrap();
    let end = ended(&r, &c, &id).await.unwrap();
    assert_eq!((end.state, end.exit_code), (SlurmState::Failed, Some(3)));
    // TERM reaches the batch shell (what a job saves its checkpoint on), which ends well.
    let id = slurm::submit(
        &r,
        &c,
        &batch(
            dir,
            "saves",
            "trap 'echo saving; exit 0' TERM\necho started\nsleep 60 & wait",
        ),
    )
    .await
    .unwrap();
    until(&r, &c, &id, "ran", |j| j.state == SlurmState::Running).await;
    for _ in 0..50 {
        if std::fs::read_to_string(dir.join("saves.out"))
            .unwrap_or_default()
            .contains("started")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    slurm::cancel(&r, &c, &id, Some("TERM")).await.unwrap();
    let end = ended(&r, &c, &id).await.unwrap();
    let out = std::fs::read_to_string(dir.join("saves.out")).unwrap();
    assert!(out.contains("saving"), "{out} {end:?}");
    // A cancel ends one that would run on; nothing of ours is left in the queue.
    let id = slurm::submit(&r, &c, &batch(dir, "long", "sleep 60"))
        .await
        .unwrap();
    until(&r, &c, &id, "ran", |j| j.state == SlurmState::Running).await;
    slurm::cancel(&r, &c, &id, None).await.unwrap();
    let end = ended(&r, &c, &id).await.unwrap();
    assert_eq!(end.state, SlurmState::Cancelled);
    assert!(slurm::ours(&r, &c).await.unwrap().is_empty());
    // A value sbatch could misread never reaches it.
    let mut odd = batch(dir, "odd", "true");
    odd.partition = Some("debug\n#SBATCH --uid=0".into());
    assert!(slurm::submit(&r, &c, &odd).await.is_err());
}

/// `[providers.slurm]` with the fixture's cluster `tc`, its login node the test sshd.
fn slurm_env(
    cluster: &Slurm,
    sshd: &Sshd,
    shared: &std::path::Path,
    step_sleep: &str,
    cluster_extra: &str,
) -> crate::common::Env {
    crate::common::Env::new(
        &format!(
            "[providers.slurm]\naccept_new_host_keys = true\n\
             [[providers.slurm.clusters]]\nname = \"tc\"\nlogin = \"127.0.0.1\"\nuser = \"root\"\nport = {}\n\
             identity_file = \"{}\"\nremote_dir = \"{}/.trainctl\"\ngpus = 1\npartition = \"debug\"\n\
             env = {{ SLURM_CONF = \"{}\" }}\n{cluster_extra}",
            sshd.port,
            sshd.client_key.display(),
            shared.display(),
            cluster.conf.display()
        ),
        step_sleep,
    )
}

/// `launch` of the cluster `tc` (its login node's key trusted on first sight).
fn hold_cluster(env: &crate::common::Env) -> serde_json::Value {
    env.json(&[
        "launch",
        "--provider",
        "slurm",
        "--type",
        "tc",
        "--accept-new-host-key",
    ])
}

/// What Slurm still has queued or running here, trainctl's or not.
fn queue(cluster: &Slurm) -> String {
    String::from_utf8_lossy(&cluster.run("squeue", &["-h", "-o", "%i %j %T"]).stdout).into_owned()
}

#[test]
fn trainctl_runs_a_job_on_a_slurm_cluster_follows_it_and_cancels_or_fails_cleanly() {
    let cluster = Slurm::start();
    let sshd = Sshd::start();
    let shared = tempfile::tempdir().unwrap();
    let env = slurm_env(&cluster, &sshd, shared.path(), "0", "");
    let inst = hold_cluster(&env);
    let id = inst["id"].as_str().unwrap().to_string();
    assert_eq!(inst["state"], "running");
    // A run: submitted as a batch job, followed, its metrics parsed and artifacts pulled.
    let out = env.run(&["run", "--instance", &id, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["state"], "succeeded", "{run}");
    let job = run["job_id"].as_str().unwrap().to_string();
    let metrics = env.json(&["metrics", &job]);
    assert!(!metrics.as_array().unwrap().is_empty(), "{metrics}");
    assert!(
        env.project
            .join("trainctl-out")
            .join(&job)
            .join("model.json")
            .exists()
    );
    let done = cluster.completions();
    // Named `trainctl-<this store's tag>-<the attempt's directory>`.
    assert!(
        done.contains(&format!(" Name=trainctl-{}-{job}-1 ", owner_tag(&env)))
            && done.contains("JobState=COMPLETED"),
        "{done}"
    );
    // A cancelled job leaves no Slurm job behind.
    let gate = env.hold_at(5);
    let out = env.run(&["run", "--instance", &id, "--detach", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let held: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let held = held["job_id"].as_str().unwrap().to_string();
    for _ in 0..200 {
        if queue(&cluster).contains("RUNNING") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(queue(&cluster).contains("trainctl-"), "{}", queue(&cluster));
    let out = env.run(&["cancel", &held]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::write(&gate, "");
    for _ in 0..200 {
        if env.job(&held)["state"] == "cancelled" && queue(&cluster).trim().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(env.job(&held)["state"], "cancelled");
    assert!(queue(&cluster).trim().is_empty(), "{}", queue(&cluster));
    // A failing command: failed, with its exit code.
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml).unwrap().replace(
        "command = \"python3 train.py --epochs 5\"",
        "command = \"echo failing; exit 3\"",
    );
    std::fs::write(&toml, text).unwrap();
    let out = env.run(&["run", "--instance", &id, "--json"]);
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (run["state"].as_str(), run["exit_code"].as_i64()),
        (Some("failed"), Some(3)),
        "{run}"
    );
    env.ok(&["terminate", &id]);
    assert!(queue(&cluster).trim().is_empty());
}

/// A run held after epoch 2's checkpoint, on a cluster with `cluster_extra`; `interrupt`
/// (given the cluster and the first batch job's id) stops that batch job as the cluster
/// would; the job must run on in another batch job and end with the model an
/// uninterrupted run makes, leaving nothing queued. Returns the env and the job.
fn survives(
    cluster_extra: &str,
    project_extra: &str,
    interrupt: impl Fn(&Slurm, &str),
) -> (Slurm, crate::common::Env, String) {
    use crate::common::{finish_resumed_run, reference_model, run_until_epoch_2_is_kept};
    let cluster = Slurm::start();
    let sshd = Sshd::start();
    let shared = tempfile::tempdir().unwrap();
    let env = slurm_env(&cluster, &sshd, shared.path(), "0.005", cluster_extra);
    let expected = reference_model(&env);
    let gate = env.hold_at(2 * 16 + 5);
    // After `[env]`, which hold_at adds to.
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("{text}\n{project_extra}")).unwrap();
    let (run, job) = run_until_epoch_2_is_kept(&env, "slurm");
    let id = queue(&cluster)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    interrupt(&cluster, &id);
    env.wait_for(90, "the job running in another batch job", || {
        queue(&cluster)
            .lines()
            .any(|l| l.contains("RUNNING") && !l.starts_with(&format!("{id} ")))
            && env.job(&job)["state"] == "running"
    });
    finish_resumed_run(&env, &gate, run, &job, &expected);
    env.wait_for(30, "nothing left queued", || {
        queue(&cluster).trim().is_empty()
    });
    (cluster, env, job)
}

/// A Slurm client command that must succeed; its output.
fn slurm_ok(cluster: &Slurm, cmd: &str, args: &[&str]) -> String {
    let out = cluster.run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Does any of the job's events say `what`?
fn said(env: &crate::common::Env, job: &str, what: &str) -> bool {
    env.events(job)
        .iter()
        .any(|e| e["message"].as_str().unwrap_or_default().contains(what))
}

/// The time limit survived: a cluster with `time_limit` submits each batch job with
/// `--signal=B:USR1@…`; when Slurm sends it (here sent as Slurm does, with `scancel
/// --signal=USR1 --batch`, rather than waiting out a real limit: Slurm's minute-grain
/// limits may signal up to a minute early), the job checkpoints and trainctl continues it
/// in a new batch job from that checkpoint, to the model an uninterrupted run makes.
///
/// The time limit is the job's own (`[slurm] time_limit` in its `trainctl.toml`, over the
/// cluster's), and the cluster bills GPU-hours: the job costs its GPU time over both
/// batch jobs at the cluster's price, the held cluster nothing.
#[test]
fn a_job_near_its_time_limit_saves_and_continues_in_a_new_batch_job() {
    let (_cluster, env, job) = survives(
        "time_limit = \"08:00:00\"\nhourly_usd_per_gpu = 3.6\n",
        "[slurm]\ntime_limit = \"04:00:00\"\n",
        |cluster, id| {
            let script = slurm_ok(cluster, "scontrol", &["write", "batch_script", id, "-"]);
            assert!(script.contains("#SBATCH --time=04:00:00"), "{script}");
            assert!(script.contains("#SBATCH --partition=debug"), "{script}");
            assert!(script.contains("#SBATCH --signal=B:USR1@"), "{script}");
            slurm_ok(cluster, "scancel", &["--signal=USR1", "--batch", id]);
        },
    );
    assert!(
        said(&env, &job, "Slurm time limit"),
        "{:?}",
        env.events(&job)
    );
    assert!(
        said(&env, &job, "succeeded after 2 attempts: 1 continuation"),
        "{:?}",
        env.events(&job)
    );
    // One GPU at $3.60 an hour: a thousandth of a dollar per GPU-second, over both
    // attempts' run time; the cluster's hold bills nothing.
    let cost = env.json(&["cost"]);
    let j = cost["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == job.as_str())
        .unwrap();
    let secs = j["gpu_seconds"].as_i64().unwrap();
    assert!(secs >= 1, "{cost}");
    assert_eq!(j["cost_micros"].as_i64().unwrap(), secs * 1000, "{cost}");
    assert_eq!(cost["instances"][0]["cost_micros"], 0, "{cost}");
    assert_eq!(
        cost["total_micros"].as_i64().unwrap(),
        secs * 1000,
        "{cost}"
    );
    let day: i64 = cost["gpu_seconds_days"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(day, secs, "{cost}");
    let table = env.ok(&["cost"]);
    assert!(table.contains("GPU-H"), "{table}");
}

/// A batch job Slurm requeues mid-run (what a preemption or a failed node does) is
/// recovered: trainctl continues the job in a new batch job from its newest checkpoint,
/// and the requeued one does not run the attempt again.
#[test]
fn a_requeued_batch_job_is_recovered_from_its_checkpoint() {
    let (_cluster, env, job) = survives("", "", |cluster, id| {
        slurm_ok(cluster, "scontrol", &["requeue", id]);
    });
    assert!(said(&env, &job, "requeued"), "{:?}", env.events(&job));
}

/// The node a job runs on set DOWN mid-run (what an administrator, or Slurm on a failed
/// health check, does): Slurm kills the batch job there and requeues it; trainctl
/// recovers the job in a new batch job, queued until a node is up, which resumes from the
/// checkpoint. (The fixture's node returns to service by itself when its slurmd registers
/// again, `ReturnToService=2`, within about two seconds; else it is resumed here.)
#[test]
fn a_job_whose_node_goes_down_is_recovered_once_a_node_is_back() {
    let (_cluster, env, job) = survives("", "", |cluster, id| {
        slurm_ok(
            cluster,
            "scontrol",
            &[
                "update",
                "nodename=localhost",
                "state=down",
                "reason=trainctl-test",
            ],
        );
        // The batch job is taken off the node (requeued, or failed with the node).
        for _ in 0..200 {
            let q = queue(cluster);
            if !q
                .lines()
                .any(|l| l.starts_with(&format!("{id} ")) && l.contains("RUNNING"))
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
        // Back (unless it came back by itself when it registered again).
        let state = slurm_ok(cluster, "sinfo", &["-h", "-n", "localhost", "-o", "%t"]);
        if state.trim().starts_with("down") {
            slurm_ok(
                cluster,
                "scontrol",
                &["update", "nodename=localhost", "state=resume"],
            );
        }
    });
    assert!(said(&env, &job, "Slurm"), "{:?}", env.events(&job));
}

/// This store's tag in its batch jobs' names.
fn owner_tag(env: &crate::common::Env) -> String {
    let owner = std::fs::read_to_string(env.dir.path().join("data/slurm/owner")).unwrap();
    trainctl::provider::gpucloud::owner_tag(owner.trim())
}

/// `ls` shows what the cluster has free, and the batch jobs named for this store that no
/// job of the store accounts for (a store lost, a submit from elsewhere) as orphans, which
/// `terminate` cancels; another store's jobs on the same account are left alone.
#[test]
fn ls_shows_the_clusters_room_and_batch_jobs_no_job_accounts_for() {
    let cluster = Slurm::start();
    let sshd = Sshd::start();
    let shared = tempfile::tempdir().unwrap();
    let env = slurm_env(&cluster, &sshd, shared.path(), "0", "");
    let inst = hold_cluster(&env);
    let id = inst["id"].as_str().unwrap().to_string();
    let table = env.ok(&["ls"]);
    assert!(table.contains("debug 2/2 GPUs free"), "{table}");
    let sub = |name: &str| {
        let out = slurm_ok(
            &cluster,
            "sbatch",
            &[
                "--parsable",
                "--job-name",
                name,
                "--gres=gpu:1",
                "-c",
                "1",
                "-o",
                "/dev/null",
                "--wrap",
                "sleep 60",
            ],
        );
        out.trim().to_string()
    };
    let stray = sub(&format!("trainctl-{}-j-gone-1", owner_tag(&env)));
    let _theirs = sub("trainctl-0123abcd-j-theirs-1");
    env.wait_for(30, "both running", || {
        queue(&cluster).matches("RUNNING").count() == 2
    });
    let out = env.run(&["ls"]);
    let table = String::from_utf8_lossy(&out.stdout);
    let key = format!("slurm:{stray}");
    assert!(table.contains("debug 0/2 GPUs free"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&key))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("ORPHAN JOB"), "{row}");
    assert!(!table.contains("j-theirs"), "another store's: {table}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 batch job(s)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = env.json(&["ls"]);
    let o = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == key.as_str())
        .unwrap();
    assert_eq!(
        (o["orphan"].as_bool(), o["batch_on"].as_str()),
        (Some(true), Some(id.as_str()))
    );
    // Not a machine to adopt; terminate cancels it and it leaves the queue.
    assert!(!env.run(&["adopt", &key]).status.success());
    env.ok(&["terminate", &key]);
    let q = queue(&cluster);
    assert!(
        !q.lines().any(|l| l.starts_with(&format!("{stray} "))),
        "{q}"
    );
    assert!(q.contains("j-theirs"), "{q}");
    assert!(!env.ok(&["ls"]).contains("ORPHAN"));
    assert!(
        env.event_kinds(None)
            .contains(&"orphan.cancelled".to_string())
    );
    env.ok(&["terminate", &id]);
}

/// A job the cluster keeps waiting says so, with Slurm's reason, until it runs.
#[test]
fn a_queued_job_says_why_it_waits_then_runs() {
    let cluster = Slurm::start();
    let sshd = Sshd::start();
    let shared = tempfile::tempdir().unwrap();
    let env = slurm_env(&cluster, &sshd, shared.path(), "0", "");
    // Someone else holds both CPUs.
    let out = cluster.run(
        "sbatch",
        &[
            "--parsable",
            "-c",
            "2",
            "-o",
            "/dev/null",
            "--wrap",
            "sleep 60",
        ],
    );
    let other = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !other.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = env.json(&["run", "--provider", "slurm", "--detach"]);
    let job = run["job_id"].as_str().unwrap().to_string();
    // A supervisor follows it (as the cockpit or `watch` does).
    let watch = env
        .cmd(&["watch"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    env.wait_for(60, "the job queued with a reason", || {
        env.job(&job)["reason"].as_str().is_some_and(|r| {
            r.starts_with("queued: Resources") || r.starts_with("queued: Priority")
        })
    });
    let table = env.ok(&["jobs"]);
    assert!(table.contains("queued"), "{table}");
    assert!(
        env.event_kinds(Some(&job))
            .contains(&"job.queued".to_string())
    );
    // The other job ends: ours runs to the end.
    let freed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let _ = cluster.run("scancel", &[&other]);
    let status = watch.wait_with_output().unwrap().status;
    assert!(status.success(), "{status:?}");
    let end = env.job(&job);
    assert_eq!(end["state"], "succeeded", "{end}");
    assert!(
        env.event_kinds(Some(&job))
            .contains(&"job.running".to_string())
    );
    assert!(!env.ok(&["jobs"]).contains("queued"));
    // Its GPU time counts from when it left the queue, not from its submission.
    let submitted = env
        .events(&job)
        .iter()
        .find(|e| e["kind"] == "job.attempt")
        .and_then(|e| e["ts_ms"].as_i64())
        .unwrap();
    let queued_ms = freed - submitted;
    assert!(queued_ms >= 1000, "queued {queued_ms} ms");
    let gpu_s = env.job(&job)["gpu_seconds"].as_i64().unwrap();
    let ran_ms = end["ended_ms"].as_i64().unwrap() - freed;
    assert!(
        gpu_s * 1000 <= ran_ms + 1000,
        "{gpu_s} GPU-s in {ran_ms} ms out of the queue (queued {queued_ms} ms)"
    );
    // `run --cluster` again: the cluster already held is used again, not taken twice.
    let again = env.json(&["run", "--cluster", "tc"]);
    assert_eq!(again["state"], "succeeded", "{again}");
    assert_eq!(again["instance_id"], run["instance_id"]);
    assert_eq!(env.json(&["ls"]).as_array().unwrap().len(), 1);
}

/// A run on the cluster of `command` (it echoes its rank's environment) with `resources`:
/// the env (its project and sshd kept alive), the shared dir, the job, the job's log and
/// rank 1's output file.
struct Ranks {
    env: crate::common::Env,
    _sshd: Sshd,
    _shared: tempfile::TempDir,
    job: String,
    log: String,
    rank1: String,
}

fn run_ranks(cluster: &Slurm, resources: &str, command: &str) -> Ranks {
    let sshd = Sshd::start();
    let shared = tempfile::tempdir().unwrap();
    let env = slurm_env(cluster, &sshd, shared.path(), "0", "");
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml).unwrap().replace(
        "command = \"python3 train.py --epochs 5\"",
        &format!("command = \"{command}\""),
    );
    std::fs::write(&toml, text).unwrap();
    crate::common::set_resources(&env, resources);
    let run = env.json(&["run", "--cluster", "tc"]);
    assert_eq!(run["state"], "succeeded", "{run}");
    let job = run["job_id"].as_str().unwrap().to_string();
    let log = env.ok(&["logs", &job]);
    let rank1 = std::fs::read_to_string(
        shared
            .path()
            .join(".trainctl/jobs")
            .join(format!("{job}-1"))
            .join("rank-1.log"),
    )
    .unwrap();
    Ranks {
        env,
        _sshd: sshd,
        _shared: shared,
        job,
        log,
        rank1,
    }
}

/// Several ranks: `resources.tasks_per_node = 2` runs one task per rank with `srun`, each
/// with torchrun's rendezvous environment; rank 0's output is the job's log, the other
/// rank's is kept beside it. On a machine of trainctl's own it is refused.
#[test]
fn a_two_rank_job_gets_torchruns_environment_on_each_rank() {
    let cluster = Slurm::start();
    // Bound whole: the login node and shared dir live to the test's end.
    let Ranks {
        env,
        job,
        log,
        rank1,
        _sshd,
        _shared,
    } = run_ranks(
        &cluster,
        "tasks_per_node = 2",
        "echo rank=$RANK local=$LOCAL_RANK node=$NODE_RANK world=$WORLD_SIZE local_world=$LOCAL_WORLD_SIZE master=$MASTER_ADDR:$MASTER_PORT",
    );
    let job = job.as_str();
    let rank0 = log
        .lines()
        .find(|l| l.starts_with("rank="))
        .unwrap_or_default();
    assert!(
        rank0.starts_with("rank=0 local=0 node=0 world=2 local_world=2 master=localhost:29"),
        "{log}"
    );
    assert!(
        !log.contains("rank=1"),
        "only rank 0 in the job's log: {log}"
    );
    assert!(
        rank1.starts_with("rank=1 local=1 node=0 world=2 local_world=2 master=localhost:29"),
        "{rank1}"
    );
    // Viewable from trainctl: `logs --rank 1` reads it from the cluster.
    assert_eq!(env.ok(&["logs", job, "--rank", "1"]), rank1);
    let out = env.run(&["logs", job, "--rank", "5"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no output of rank 5"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The local provider runs one task: refused, saying what would place them.
    let out = env.run(&["run", "--provider", "local"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tasks_per_node") && err.contains("slurm"),
        "{err}"
    );
}

/// Two nodes, each its own slurmd in a network namespace of its own (`Slurm::start_nodes`):
/// `resources.nodes = 2` runs one rank on each, through srun, with torchrun's environment
/// naming the first node as the master; each rank sees its node's name and network.
#[test]
fn a_two_node_job_runs_a_rank_on_each_node() {
    let cluster = Slurm::start_nodes(2);
    let Ranks { log, rank1, .. } = run_ranks(
        &cluster,
        "nodes = 2\ntasks_per_node = 1",
        "echo rank=$RANK node=$NODE_RANK world=$WORLD_SIZE on=$SLURMD_NODENAME master=$MASTER_ADDR net=$(readlink /proc/self/ns/net)",
    );
    let rank0 = log
        .lines()
        .find(|l| l.starts_with("rank="))
        .unwrap_or_default()
        .to_string();
    assert!(
        rank0.starts_with("rank=0 node=0 world=2 on=node1 master=node1 net="),
        "{log}"
    );
    assert!(
        rank1.starts_with("rank=1 node=1 world=2 on=node2 master=node1 net="),
        "{rank1}"
    );
    let net = |l: &str| {
        l.rsplit("net=")
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    assert_ne!(net(&rank0), net(&rank1), "two networks: {rank0} / {rank1}");
}
