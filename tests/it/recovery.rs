//! Jobs that survive their machine, on the local provider: migrate, loss without notice,
//! max_attempts. Real processes, the real binary, a real store.

use crate::common::{Env, cost_of, model_of, sandbox_processes};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

/// Steps per epoch of the toy job (512 samples, batches of 32).
const SPE: u32 = 16;

/// A toy project of 6 epochs (`step_sleep` s a step) whose machines bill $36/h.
fn env6(extra_project: &str, step_sleep: &str) -> Env {
    let env = Env::new(
        "[providers.local]\nhourly_usd = 36\nmax_instances = 16\n",
        step_sleep,
    );
    let toml = env.project.join("trainctl.toml");
    let mut text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("--epochs 5", "--epochs 6");
    // Put `[recovery]` before `[env]` (hold_at appends to `[env]`, the last table).
    let at = text.find("\n[env]").unwrap();
    text.insert_str(at, &format!("\n{extra_project}\n"));
    std::fs::write(&toml, text).unwrap();
    env
}

/// A `run --json --terminate-after` in the background whose job is held after step
/// `hold` (until the returned gate file exists), once it runs and logs, and, when given,
/// once checkpoint `shipped` is in the checkpoint store. Returns (gate, run, job).
fn start_held(env: &Env, hold: u32, shipped: Option<&str>) -> (PathBuf, Child, String) {
    let gate = env.hold_at(hold);
    let run = spawn_run(env, &["run", "--json", "--terminate-after"]);
    let job = env.wait_running_with_metrics();
    if let Some(name) = shipped {
        wait_checkpoint(env, &job, name);
    }
    (gate, run, job)
}

fn spawn_run(env: &Env, args: &[&str]) -> Child {
    let mut c = env.cmd(args);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c.spawn().unwrap()
}

fn finish(child: Child) -> serde_json::Value {
    finish_printed(child).0
}

/// [`finish`], with what the run printed on stderr (the log, with `--json`).
fn finish_printed(child: Child) -> (serde_json::Value, String) {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let end = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    (end, stderr)
}

/// An uninterrupted run of the same project: its job id and the model it wrote.
fn uninterrupted(env: &Env) -> (String, Vec<u8>) {
    let run = env.json(&["run", "--terminate-after"]);
    assert_eq!(run["state"], "succeeded", "{run}");
    let job = run["job_id"].as_str().unwrap().to_string();
    let model = model_of(env, &job);
    (job, model)
}

fn wait_checkpoint(env: &Env, job: &str, name: &str) {
    env.wait_for(30, &format!("{name} to be shipped"), || {
        env.json(&["checkpoints", job])
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == name)
    });
}

/// The resumed job's metrics read as one continuous series: exactly the points of the
/// uninterrupted run (same names, steps, epochs and values, in order), none repeated
/// although the second attempt re-computed the steps after its checkpoint.
fn assert_same_metrics(env: &Env, job: &str, reference: &str) {
    let key = |job: &str| -> Vec<String> {
        env.json(&["metrics", job])
            .as_array()
            .unwrap()
            .iter()
            .map(|p| format!("{} {} {} {}", p["name"], p["step"], p["epoch"], p["value"]))
            .collect()
    };
    let (got, want) = (key(job), key(reference));
    let steps: HashSet<_> = got.iter().filter(|k| k.starts_with("\"lr\"")).collect();
    assert_eq!(steps.len(), 6 * SPE as usize, "one lr point per step");
    assert_eq!(got, want);
}

fn instances_of(env: &Env, job: &str) -> Vec<String> {
    let mut ids: Vec<String> = env
        .events(job)
        .iter()
        .filter(|e| e["kind"] == "job.attempt")
        .map(|e| e["instance_id"].as_str().unwrap().to_string())
        .collect();
    ids.dedup();
    ids
}

#[test]
fn migrate_moves_a_running_job_to_a_new_machine_with_an_identical_result() {
    // Slow enough that the second machine runs (and bills) for whole seconds.
    let env = env6("", "0.03");
    let (reference, expected) = uninterrupted(&env);
    // Hold the job inside epoch 3, with epoch 2's checkpoint written.
    let (gate, run, job) = start_held(&env, 2 * SPE + 5, Some("epoch-0002.json"));
    let first = env.job(&job)["instance_id"].as_str().unwrap().to_string();

    let moved = env.json(&["migrate", &job]);
    assert_eq!(moved["state"], "running", "{moved}");
    assert_eq!(moved["attempt"], 2, "{moved}");
    let second = moved["instance_id"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    std::fs::write(&gate, b"").unwrap();

    let (end, printed) = finish_printed(run);
    assert_eq!(end["state"], "succeeded", "{end}");
    assert_eq!(model_of(&env, &job), expected, "resumed model differs");
    assert_same_metrics(&env, &job, &reference);
    // The second attempt resumed from the shipped checkpoint, and said so in the log.
    let log = env.ok(&["logs", &job]);
    assert!(log.contains("resumed from"), "{log}");
    assert!(log.contains("attempt 2 on"), "{log}");
    // The run that followed the job across both machines printed the whole log, in
    // order, the marker between the attempts included (its other messages between).
    let mut lines = printed.lines();
    for want in log.lines() {
        assert!(
            lines.any(|l| l == want),
            "{want:?} not printed in order by the run:\n{printed}"
        );
    }
    // Cost: both machines billed, and the job's cost covers both attempts.
    let cost = env.json(&["cost"]);
    let job_cost = cost_of(&cost, "jobs", &job);
    let inst_cost = |id: &str| cost_of(&cost, "instances", id);
    assert!(inst_cost(&first) > 0 && inst_cost(&second) > 0, "{cost}");
    assert!(job_cost > inst_cost(&second), "{cost}");
    // Both machines terminated: nothing left billing, no process left.
    assert!(env.json(&["ls"]).as_array().unwrap().is_empty());
    assert!(sandbox_processes(&first).is_empty() && sandbox_processes(&second).is_empty());
}

#[test]
fn a_machine_lost_without_notice_resumes_from_the_newest_shipped_checkpoint() {
    let env = env6("", "0.01");
    let (reference, expected) = uninterrupted(&env);
    let (gate, run, job) = start_held(&env, 3 * SPE + 3, Some("epoch-0003.json"));
    let first = env.job(&job)["instance_id"].as_str().unwrap().to_string();
    // The machine dies: every process killed, its disk gone. No notice, no grace.
    for pid in sandbox_processes(&first) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    std::fs::remove_dir_all(env.data().join("sandboxes").join(&first)).unwrap();
    std::fs::write(&gate, b"").unwrap();

    let end = finish(run);
    assert_eq!(end["state"], "succeeded", "{end}");
    assert_eq!(model_of(&env, &job), expected);
    assert_same_metrics(&env, &job, &reference);
    let log = env.ok(&["logs", &job]);
    assert!(log.contains("epoch-0003.json at epoch 4"), "{log}");
    assert_eq!(instances_of(&env, &job).len(), 2);
    assert!(env.json(&["ls"]).as_array().unwrap().is_empty());
}

#[test]
fn max_attempts_reached_fails_the_job_and_releases_every_machine() {
    let env = env6("[recovery]\nmax_attempts = 2", "0.01");
    let (gate, run, job) = start_held(&env, SPE + 2, None);
    // Two interruptions in a row: the second exhausts max_attempts.
    for attempt in 1..=2 {
        env.wait_for(30, "the attempt to run", || {
            let j = env.job(&job);
            j["state"] == "running"
                && env
                    .json(&["events", &job])
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| {
                        e["kind"] == "job.attempt"
                            && e["message"]
                                .as_str()
                                .unwrap()
                                .starts_with(&format!("attempt {attempt} "))
                    })
        });
        let att = sandbox_job_dir(&env, &job, attempt);
        env.wait_for(30, "the runner's watcher", || att.join("pid").exists());
        std::fs::write(att.join("notice"), "reason=drill\n").unwrap();
        // (The machine's own record may already be gone with the machine: ask the store.)
        env.wait_for(30, "the interruption", || {
            env.events(&job)
                .iter()
                .filter(|e| e["kind"] == "job.interrupted")
                .count()
                >= attempt as usize
        });
    }
    let end = finish(run);
    assert_eq!(end["state"], "failed", "{end}");
    let reason = env.job(&job)["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("max_attempts (2)"), "{reason}");
    assert!(env.json(&["ls"]).as_array().unwrap().is_empty());
    for id in instances_of(&env, &job) {
        assert!(sandbox_processes(&id).is_empty());
    }
    drop(gate);
}

/// The job directory of `attempt` on whichever sandbox ran it.
fn sandbox_job_dir(env: &Env, job: &str, attempt: u32) -> PathBuf {
    let sandboxes = env.data().join("sandboxes");
    for e in std::fs::read_dir(&sandboxes).unwrap().flatten() {
        let p = e
            .path()
            .join("home/.trainctl/jobs")
            .join(format!("{job}-{attempt}"));
        if p.is_dir() {
            return p;
        }
    }
    panic!(
        "no job dir for attempt {attempt} under {}",
        Path::new(&sandboxes).display()
    );
}

/// Kill the trainctl driving a migration (as `kill -9` would) right after recovery step
/// `step`; a later `trainctl watch` completes the recovery with exactly one replacement,
/// the job ends well, and nothing is left running (`--terminate-after` was stored).
fn killed_during_recovery_is_completed_by_watch(step: &str) {
    let env = env6("", "0.01");
    let (gate, mut run, job) = start_held(&env, 2 * SPE + 5, Some("epoch-0002.json"));
    // The first supervisor goes away mid-job (what `run --terminate-after` asked is stored).
    run.kill().unwrap();
    run.wait().unwrap();
    let out = env
        .cmd(&["migrate", &job])
        .env("TRAINCTL_FAILPOINT", format!("recovery.{step}"))
        .output()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGKILL),
        "migrate was to die at {step}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&gate, b"").unwrap();
    let watched = env.json(&["watch"]);
    assert_eq!(watched[0]["state"], "succeeded", "{step}: {watched}");
    let instances = env.json(&["ls", "--all"]);
    assert_eq!(
        instances.as_array().unwrap().len(),
        2,
        "{step}: one replacement only: {instances}"
    );
    assert!(env.json(&["ls"]).as_array().unwrap().is_empty(), "{step}");
    for i in instances.as_array().unwrap() {
        let left = sandbox_processes(i["id"].as_str().unwrap());
        let cmds: Vec<String> = left
            .iter()
            .map(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default())
            .collect();
        assert!(left.is_empty(), "{step}: {cmds:?} left in {i}");
    }
    let log = env.ok(&["logs", &job]);
    assert!(log.contains("resumed from"), "{step}: {log}");
    // Pulled at the end by `watch`, as `run --terminate-after` would have.
    assert!(!model_of(&env, &job).is_empty());
}

#[test]
fn killed_after_the_recovery_intent() {
    killed_during_recovery_is_completed_by_watch("intent");
}

#[test]
fn killed_after_the_replacement_launch() {
    killed_during_recovery_is_completed_by_watch("launch");
}

#[test]
fn killed_after_the_code_sync() {
    killed_during_recovery_is_completed_by_watch("sync");
}

#[test]
fn killed_after_the_checkpoint_restore() {
    killed_during_recovery_is_completed_by_watch("restore");
}

#[test]
fn killed_after_the_start() {
    killed_during_recovery_is_completed_by_watch("start");
}

#[test]
fn a_killed_run_terminate_after_is_honoured_by_watch() {
    let env = env6("", "0.01");
    let (gate, mut run, job) = start_held(&env, SPE + 3, None);
    run.kill().unwrap();
    run.wait().unwrap();
    std::fs::write(&gate, b"").unwrap();
    let watched = env.json(&["watch"]);
    assert_eq!(watched[0]["state"], "succeeded", "{watched}");
    assert!(env.json(&["ls"]).as_array().unwrap().is_empty());
    assert!(!model_of(&env, &job).is_empty());
}

fn launch_killed_at(env: &Env, point: &str) {
    let out = env
        .cmd(&["launch"])
        .env("TRAINCTL_FAILPOINT", point)
        .output()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGKILL),
        "launch was to die at {point}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_launch_cut_off_after_the_providers_answer_is_healed() {
    let env = Env::new("[providers.local]\nhourly_usd = 36\n", "0");
    launch_killed_at(&env, "launch.answered");
    // The next trainctl asks the provider by trainctl's id and finds the machine.
    let live = env.json(&["ls"]);
    let inst = &live.as_array().unwrap()[0];
    assert_eq!(inst["state"], "running", "{live}");
    assert_eq!(inst["provider_id"], inst["id"], "{live}");
    assert!(inst["launched_ms"].as_i64().is_some());
    let kinds = env.event_kinds(None);
    assert!(kinds.contains(&"instance.healed".to_string()), "{kinds:?}");
    env.ok(&["terminate", inst["id"].as_str().unwrap()]);
}

#[test]
fn a_pending_intent_the_provider_never_saw_is_closed_and_bills_nothing() {
    let env = Env::new("[providers.local]\nhourly_usd = 3600\n", "0");
    launch_killed_at(&env, "launch.intent");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(env.json(&["ls"]).as_array().unwrap().is_empty());
    let all = env.json(&["ls", "--all"]);
    assert_eq!(all[0]["state"], "terminated", "{all}");
    let cost = env.json(&["cost"]);
    assert_eq!(cost["total_micros"], 0, "{cost}");
}
