//! End to end on the local provider: run, re-attach, cancel, budget, failure.

use crate::common::{Env, cost_of, sandbox_processes};
use std::path::Path;
use std::process::Stdio;

fn launch(env: &Env, hourly: &str) -> String {
    let v = env.json(&["launch", "--hourly-usd", hourly]);
    v["id"].as_str().unwrap().to_string()
}

fn sandbox(env: &Env, id: &str) -> std::path::PathBuf {
    env.data().join("sandboxes").join(id)
}

fn blake3_of(p: &Path) -> String {
    blake3::hash(&std::fs::read(p).unwrap())
        .to_hex()
        .to_string()
}

#[test]
fn run_to_completion_stores_metrics_pulls_checksummed_artifacts_and_cleans_up() {
    let env = Env::new("", "0.005");
    // $36/h is one cent a second: enough to see cost accrue in a short run.
    let id = launch(&env, "36");
    let run = env.json(&["run", "--instance", &id]);
    assert_eq!(run["state"], "succeeded", "{run}");
    let job = run["job_id"].as_str().unwrap().to_string();

    // The model the script wrote, pulled, with the checksum of the file on the machine.
    let remote_model = sandbox(&env, &id).join("home/.trainctl/code/toy-train/model.json");
    let local_model = env
        .project
        .join("trainctl-out")
        .join(&job)
        .join("model.json");
    assert_eq!(blake3_of(&remote_model), blake3_of(&local_model));
    let arts = run["artifacts"].as_array().unwrap();
    let model_art = arts.iter().find(|a| a["path"] == "model.json").unwrap();
    assert_eq!(
        model_art["blake3"].as_str().unwrap(),
        blake3_of(&local_model)
    );
    // The fallback rule: no best.json, so every epoch checkpoint.
    assert_eq!(
        arts.iter()
            .filter(|a| a["path"]
                .as_str()
                .unwrap()
                .starts_with("checkpoints/epoch-"))
            .count(),
        5
    );

    // Metrics parsed from the plain log match the script's own numbers exactly.
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&local_model).unwrap()).unwrap();
    let final_loss = env.json(&["metrics", &job, "--name", "final_loss"]);
    assert_eq!(final_loss.as_array().unwrap().len(), 1);
    assert_eq!(
        final_loss[0]["value"].as_f64(),
        model["final_loss"].as_f64()
    );
    let train_loss = env.json(&["metrics", &job, "--name", "train_loss"]);
    let epochs: Vec<f64> = train_loss
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["epoch"].as_f64().unwrap())
        .collect();
    assert_eq!(epochs, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(
        train_loss[4]["value"].as_f64(),
        model["final_loss"].as_f64()
    );
    assert_eq!(
        env.json(&["metrics", &job, "--name", "lr"])
            .as_array()
            .unwrap()
            .len(),
        80
    );

    // Cost rows exist and are positive.
    let cost = env.json(&["cost"]);
    let inst_cost = cost_of(&cost, "instances", &id);
    assert!(inst_cost >= 0);
    assert!(!cost["days"].as_object().unwrap().is_empty());
    assert!(
        cost["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == job.as_str())
    );

    // Let the instance live past a whole second so accrual has something to count.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // The log is kept locally and readable after the machine is gone.
    let out = env.run(&["terminate", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!sandbox(&env, &id).exists(), "sandbox left behind");
    assert!(sandbox_processes(&id).is_empty(), "processes left behind");
    let logs = env.ok(&["logs", &job]);
    assert!(logs.contains("final_loss="), "{logs}");
    let all = env.json(&["ls", "--all"]);
    let inst = all
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id.as_str())
        .unwrap();
    assert_eq!(inst["state"], "terminated");
    // Per-second accrual from launch to confirmed termination: $0.01 per whole second.
    let c1 = inst["cost_micros"].as_i64().unwrap();
    let secs =
        (inst["terminated_ms"].as_i64().unwrap() - inst["launched_ms"].as_i64().unwrap()) / 1000;
    assert_eq!(c1, secs * 10_000, "{inst}");
    assert!(secs >= 1 && c1 > 0, "{inst}");
    // Accrual stopped at the confirmed termination.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let all = env.json(&["ls", "--all"]);
    let inst = all
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id.as_str())
        .unwrap();
    assert_eq!(inst["cost_micros"].as_i64().unwrap(), c1);
    let kinds = env.event_kinds(None);
    for k in [
        "instance.intent",
        "instance.running",
        "job.succeeded",
        "artifact.pulled",
        "instance.terminated",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} event in {kinds:?}");
    }
}

#[test]
fn killed_trainctl_reattaches_with_no_line_lost_or_repeated() {
    let env = Env::new("", "0.01");
    // The job waits after step 10 until the test lets it go: it is running when trainctl dies.
    let gate = env.hold_at(10);
    let id = launch(&env, "0");
    let mut child = env
        .cmd(&["run", "--instance", &id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the job runs and some of its log was consumed, then kill trainctl hard.
    let job = env.wait_running_with_metrics();
    child.kill().unwrap();
    child.wait().unwrap();
    // Training did not die with it.
    assert!(
        !sandbox_processes(&id).is_empty(),
        "the job died with trainctl"
    );
    assert_eq!(env.job(&job)["state"], "running");
    std::fs::write(&gate, "").unwrap();

    // A new trainctl re-attaches and follows to the end.
    let out = env.run(&["logs", "-f", &job]);
    env.assert_followed_completely(&out, &job, 80);
    assert_eq!(env.job(&job)["state"], "succeeded");
    // The finished job's outcome is known to a later process too.
    assert_eq!(env.job(&job)["exit_code"], 0);
    env.ok(&["terminate", &id]);
}

#[test]
fn cancel_stops_the_job_gracefully_and_leaves_no_process() {
    let env = Env::new("", "0.01");
    // Held after step 10 and never let go: only the cancel can end it.
    let _gate = env.hold_at(10);
    let id = launch(&env, "0");
    let job = env
        .ok(&["run", "--instance", &id, "--detach"])
        .trim()
        .to_string();
    env.wait_for(30, "some metrics", || env.has_metrics(&job));
    let out = env.run(&["cancel", &job]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = env.job(&job);
    assert_eq!(j["state"], "cancelled");
    // SIGTERM reached the script, which said so and exited 143 before finishing.
    assert_eq!(j["exit_code"], 143);
    let log = env.ok(&["logs", &job]);
    assert!(log.contains("SIGTERM: stopping"), "{log}");
    assert!(
        !log.contains("final_loss="),
        "the job ran to the end: {log}"
    );
    assert!(
        sandbox_processes(&id).is_empty(),
        "processes left after cancel"
    );
    let kinds = env.event_kinds(Some(&job));
    assert!(kinds.contains(&"job.sigterm".to_string()), "{kinds:?}");
    env.ok(&["terminate", &id]);
}

#[test]
fn budget_breach_stops_the_job_and_terminates_the_machine() {
    let env = Env::new("[budget]\nper_job_usd = 0.015\n", "0.05");
    // $36/h = $0.01/s: the per-job budget is passed after two seconds.
    let id = launch(&env, "36");
    let out = env.run(&["run", "--instance", &id, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["state"], "cancelled");
    assert!(
        run["reason"].as_str().unwrap().starts_with("budget:"),
        "{run}"
    );
    let job = run["job_id"].as_str().unwrap();
    let events = env.events(job);
    let breach = events
        .iter()
        .find(|e| e["kind"] == "budget.breach")
        .expect("no budget event");
    assert!(
        breach["message"]
            .as_str()
            .unwrap()
            .contains("per-job budget $0.015"),
        "{breach}"
    );
    // The machine was terminated and confirmed gone; nothing left running.
    let all = env.json(&["ls", "--all"]);
    let inst = all
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id.as_str())
        .unwrap();
    assert_eq!(inst["state"], "terminated");
    assert!(!sandbox(&env, &id).exists());
    assert!(sandbox_processes(&id).is_empty());
    // Artifacts (checkpoints) were saved before the machine went.
    assert!(
        env.project
            .join("trainctl-out")
            .join(job)
            .join("checkpoints")
            .is_dir()
    );
}

#[test]
fn failing_job_exits_non_zero_and_records_its_status() {
    let env = Env::new("", "0");
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("--epochs 5", "--epochs 3 --fail-at-epoch 1");
    std::fs::write(&toml, text).unwrap();
    let out = env.run(&["run", "--json", "--terminate-after"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["state"], "failed");
    assert_eq!(run["exit_code"], 3);
    // --terminate-after launched and then terminated its own machine.
    assert!(env.json(&["ls"]).as_array().unwrap().is_empty());
}

#[test]
fn daily_budget_breach_stops_the_job_too() {
    let env = Env::new("[budget]\nper_day_usd = 0.01\n", "0.05");
    let id = launch(&env, "36");
    let out = env.run(&["run", "--instance", &id, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        run["reason"]
            .as_str()
            .unwrap()
            .contains("per-day budget $0.01"),
        "{run}"
    );
    assert!(sandbox_processes(&id).is_empty());
    assert!(!sandbox(&env, &id).exists());
}

#[test]
fn example_resumes_to_exactly_the_uninterrupted_result() {
    let env = Env::new("", "0");
    let dir = &env.project;
    let py = |args: &[&str], extra_env: &[(&str, &str)]| {
        let mut c = std::process::Command::new("python3");
        c.arg("train.py").args(args).current_dir(dir);
        for (k, v) in extra_env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    py(&["--epochs", "4", "--out", "full.json"], &[]);
    // Interrupted after epoch 2, resumed from its newest checkpoint.
    py(
        &[
            "--epochs",
            "4",
            "--stop-after-epoch",
            "2",
            "--out",
            "resumed.json",
        ],
        &[],
    );
    let log = py(&["--epochs", "4", "--resume", "--out", "resumed.json"], &[]);
    assert!(
        log.contains("resumed from") && log.contains("at epoch 3"),
        "{log}"
    );
    assert_eq!(
        std::fs::read(dir.join("full.json")).unwrap(),
        std::fs::read(dir.join("resumed.json")).unwrap()
    );
    // Resumed through TRAINCTL_RESUME_FROM from an earlier checkpoint.
    py(
        &[
            "--epochs",
            "4",
            "--stop-after-epoch",
            "3",
            "--out",
            "x.json",
        ],
        &[],
    );
    let ck = dir.join("checkpoints/epoch-0001.json");
    py(
        &["--epochs", "4", "--out", "env.json"],
        &[("TRAINCTL_RESUME_FROM", ck.to_str().unwrap())],
    );
    assert_eq!(
        std::fs::read(dir.join("full.json")).unwrap(),
        std::fs::read(dir.join("env.json")).unwrap()
    );
}

#[test]
fn gpu_facts_come_from_nvidia_smi_when_the_machine_has_it() {
    let env = Env::new("", "0");
    let v = env.json(&["launch"]);
    assert_eq!(v["gpu_info"], "no GPU");
    env.ok(&["terminate", v["id"].as_str().unwrap()]);
    // A machine whose nvidia-smi answers (a stand-in on PATH).
    let bin = env.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let smi = bin.join("nvidia-smi");
    std::fs::write(
        &smi,
        "#!/bin/sh\nprintf 'NVIDIA A100-SXM4-80GB, 81920 MiB\\nNVIDIA A100-SXM4-80GB, 81920 MiB\\n'\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = env
        .cmd(&["launch", "--json"])
        .env("PATH", &path)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["gpu_info"], "2x NVIDIA A100-SXM4-80GB (81920 MiB)");
    env.ok(&["terminate", v["id"].as_str().unwrap()]);
}

#[test]
fn provider_only_options_are_checked_by_their_provider_before_any_launch() {
    let env = Env::new("", "0");
    let out = env.run(&["launch", "-o", "ami=ami-123"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no option `ami`") && err.contains("hourly_usd"),
        "{err}"
    );
    let out = env.run(&["launch", "-o", "hourly_usd=lots"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a dollar amount"));
    assert_eq!(env.run(&["launch", "-o", "novalue"]).status.code(), Some(2));
    // Nothing was recorded, let alone launched.
    assert!(env.json(&["ls", "--all"]).as_array().unwrap().is_empty());
    let v = env.json(&["launch", "-o", "hourly_usd=1.5"]);
    assert_eq!(v["hourly"], 1_500_000);
    env.ok(&["terminate", v["id"].as_str().unwrap()]);
}
