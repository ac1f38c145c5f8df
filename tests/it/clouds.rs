//! The HTTP GPU clouds against their contract servers (`testkit::clouds`): the documented
//! request and response shapes, real sshd machines behind them, the real `trainctl` binary.

use crate::common::*;
use std::path::Path;
use trainctl::testkit::clouds::{Broken, CanopyWaveApi, LambdaApi, RunPodApi};

const LAMBDA_KEY: &str = "secret_lambda_k3y_0123456789abcdef";

/// A test env whose `[providers.<provider>]` is the shared settings (`api_url`, the
/// pool's `proxy_command`, no request spacing, short waits) plus `extra`, with the API key
/// in `key_var` and no credentials file.
fn cloud_env(provider: &str, url: &str, proxy: &str, extra: &str, key_var: &str, key: &str) -> Env {
    let mut env = Env::new(
        &format!(
            "[providers.{provider}]\napi_url = \"{url}\"\nproxy_command = {proxy:?}\n\
             request_interval_ms = 0\nreach_timeout_seconds = 60\napi_max_attempts = 3\n\
             terminate_timeout_seconds = 30\n{extra}"
        ),
        "0.005",
    );
    env.vars = vec![
        (key_var.into(), key.into()),
        (
            "TRAINCTL_CREDENTIALS".into(),
            env.dir.path().join("no-credentials").display().to_string(),
        ),
    ];
    env
}

/// A test env whose `[providers.lambda]` talks to `api`, with `key` in the environment.
fn lambda_env(api: &LambdaApi, key: &str) -> Env {
    cloud_env(
        "lambda",
        &api.url(),
        &api.proxy_command(),
        "ssh_user = \"root\"\nlaunch_interval_seconds = 0\n",
        "LAMBDA_API_KEY",
        key,
    )
}

/// Every file under `dir` that holds `needle` (the store, logs, events, keys...).
fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p)
                && b.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn lambda_runs_the_example_end_to_end_and_terminates_with_confirmation() {
    let api = LambdaApi::start(LAMBDA_KEY);
    let env = lambda_env(&api, LAMBDA_KEY);
    set_resources(&env, "instance_type = \"gpu_1x_a10\"");
    let out = env.run(&["run", "--provider", "lambda", "--terminate-after"]);
    assert!(out.status.success(), "{}", text(&out));
    let jobs = env.json(&["jobs"]);
    let job = &jobs.as_array().unwrap()[0];
    assert_eq!(job["state"], "succeeded", "{job}");
    let model: serde_json::Value =
        serde_json::from_slice(&model_of(&env, job["id"].as_str().unwrap())).unwrap();
    assert!(model.is_object(), "{model}");
    // One machine, named for this store, terminated and confirmed so.
    let machines = api.machines();
    assert_eq!(machines.len(), 1, "{machines:?}");
    assert!(
        machines[0].1.starts_with("tc-")
            && machines[0]
                .1
                .ends_with(job["instance_id"].as_str().unwrap())
    );
    assert_eq!(machines[0].2, "terminated");
    let calls = api.calls();
    for want in [
        "GET /instance-types",
        "POST /ssh-keys",
        "POST /instance-operations/launch",
        "POST /instance-operations/terminate",
    ] {
        assert!(
            calls.iter().any(|c| c == want),
            "{want} missing from {calls:?}"
        );
    }
    // The launch body is the documented one.
    let launch = api
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/launch"))
        .unwrap();
    assert_eq!(launch.body["instance_type_name"], "gpu_1x_a10");
    assert_eq!(launch.body["ssh_key_names"].as_array().unwrap().len(), 1);
    assert!(
        api.requests()
            .iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {LAMBDA_KEY}")[..]))
    );
    // The price Lambda charges is the one costed: $1.29/h.
    let ls = env.json(&["ls", "--all"]);
    let row = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == job["instance_id"])
        .unwrap()
        .clone();
    assert_eq!(row["hourly"], 1_290_000, "{row}");
    assert_eq!(row["state"], "terminated", "{row}");
    // The key is nowhere: not in any output, the store, the logs, the data directory.
    assert!(!text(&out).contains(LAMBDA_KEY));
    let events = env.ok(&["events"]);
    assert!(!events.contains(LAMBDA_KEY));
    assert_eq!(files_holding(&env.data(), LAMBDA_KEY), Vec::<String>::new());
    assert_eq!(
        files_holding(&env.project, LAMBDA_KEY),
        Vec::<String>::new()
    );
    // The machine's pinned host key and files went with it.
    assert!(
        !env.data()
            .join("lambda/hosts")
            .join(job["instance_id"].as_str().unwrap())
            .exists()
    );
}

#[test]
fn a_bad_lambda_key_is_a_clear_error_and_nothing_is_launched() {
    let api = LambdaApi::start(LAMBDA_KEY);
    let env = lambda_env(&api, "secret_wrong_key_987654321");
    let out = env.run(&["launch", "--provider", "lambda", "--type", "gpu_1x_a10"]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("invalid-api-key") && t.contains("401"), "{t}");
    assert!(!t.contains("secret_wrong_key"), "{t}");
    assert!(api.machines().is_empty());
    assert!(
        !api.calls().iter().any(|c| c.contains("launch")),
        "{:?}",
        api.calls()
    );
    // Refused before any call: an unknown type, and a key file others can read.
    let out = env.run(&["launch", "--provider", "lambda", "--type", "gpu_1x_h9000"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("unknown Lambda instance type"),
        "{}",
        text(&out)
    );
    let mut env2 = lambda_env(&api, "");
    let creds = env2.dir.path().join("credentials.toml");
    std::fs::write(&creds, format!("[lambda]\napi_key = \"{LAMBDA_KEY}\"\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    env2.vars = vec![("TRAINCTL_CREDENTIALS".into(), creds.display().to_string())];
    let n = api.calls().len();
    let out = env2.run(&["launch", "--provider", "lambda", "--type", "gpu_1x_a10"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("chmod 600"), "{}", text(&out));
    assert_eq!(api.calls().len(), n, "nothing was asked of Lambda");
}

#[test]
fn lambda_429_is_retried_after_the_time_it_asks() {
    let api = LambdaApi::start(LAMBDA_KEY);
    let env = lambda_env(&api, LAMBDA_KEY);
    api.fail_next(
        "/instance-types",
        429,
        serde_json::json!({"error": {"code": "global/too-many-requests", "message": "slow down"}}),
        Some(2),
    );
    let id = env.json(&["launch", "--provider", "lambda", "--type", "gpu_1x_a10"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let reqs = api.requests();
    let first = reqs
        .iter()
        .position(|r| r.path.ends_with("/instance-types"))
        .unwrap();
    let again = reqs[first + 1..]
        .iter()
        .find(|r| r.path.ends_with("/instance-types"))
        .unwrap();
    let waited = again.at - reqs[first].at;
    assert!(
        waited >= std::time::Duration::from_millis(1900),
        "{waited:?}"
    );
    env.ok(&["terminate", &id]);
    assert_eq!(api.machines()[0].2, "terminated");
}

#[test]
fn no_capacity_on_lambda_moves_to_the_next_offer_on_another_provider() {
    let api = LambdaApi::start(LAMBDA_KEY);
    let env = lambda_env(&api, LAMBDA_KEY);
    // No region has an A10 now: `plan` says so before anything is launched.
    api.set_capacity("gpu_1x_a10", &[]);
    set_resources(
        &env,
        "instance_type = \"gpu_1x_a10\"\nany_of = [\"lambda:gpu_1x_a6000\", \"local:local\"]",
    );
    // The A6000 passes the capacity check, then loses the race at launch.
    api.fail_next(
        "/instance-operations/launch",
        400,
        serde_json::json!({"error": {"code": "instance-operations/launch/insufficient-capacity",
            "message": "Not enough capacity to fulfill launch request."}}),
        None,
    );
    let run = env.json(&["run", "--provider", "lambda", "--terminate-after"]);
    assert_eq!(run["state"], "succeeded", "{run}");
    let inst = run["instance_id"].as_str().unwrap();
    let ls = env.json(&["ls", "--all"]);
    let rows = ls.as_array().unwrap();
    let row = rows.iter().find(|r| r["id"] == inst).unwrap();
    assert_eq!(row["provider"], "local", "{ls}");
    // The A6000's intent row ended as terminated (Lambda holds nothing for it).
    assert!(
        rows.iter().any(|r| r["provider"] == "lambda"
            && r["instance_type"] == "gpu_1x_a6000"
            && r["state"] == "terminated"),
        "{ls}"
    );
    assert!(api.machines().is_empty(), "{:?}", api.machines());
    let events = env.json(&["events"]);
    let failovers: Vec<&serde_json::Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "launch.failover")
        .collect();
    assert_eq!(failovers.len(), 2, "{events}");
    assert!(
        failovers[1]["message"]
            .as_str()
            .unwrap()
            .contains("trying local:local"),
        "{events}"
    );
}

#[test]
fn a_run_whose_setup_fails_terminates_the_machine_it_launched() {
    let api = LambdaApi::start(LAMBDA_KEY);
    let env = lambda_env(&api, LAMBDA_KEY);
    set_resources(&env, "instance_type = \"gpu_1x_a10\"");
    api.break_new_machines(Broken::Tools);
    let out = env.run(&["run", "--provider", "lambda"]);
    assert!(!out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("after the failed start") && t.contains("billed"),
        "{t}"
    );
    let m = api.machines();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].2, "terminated", "{m:?}");
    // Asked to keep it: kept, and told how to end it.
    let out = env.run(&["run", "--provider", "lambda", "--keep-on-error"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("kept"), "{}", text(&out));
    let m = api.machines();
    assert_eq!(m.len(), 2);
    assert_eq!(m[1].2, "active", "{m:?}");
    let ls = env.json(&["ls"]);
    let live = ls.as_array().unwrap();
    assert_eq!(live.len(), 1, "{ls}");
    env.ok(&["terminate", live[0]["id"].as_str().unwrap()]);
    assert_eq!(api.machines()[1].2, "terminated");
}

#[test]
fn a_launch_that_never_lets_trainctl_in_terminates_the_machine() {
    let api = LambdaApi::start(LAMBDA_KEY);
    let env = lambda_env(&api, LAMBDA_KEY);
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        cfg.replace("reach_timeout_seconds = 60", "reach_timeout_seconds = 4"),
    )
    .unwrap();
    api.break_new_machines(Broken::Login);
    let out = env.run(&["launch", "--provider", "lambda", "--type", "gpu_1x_a10"]);
    assert!(!out.status.success());
    let t = text(&out);
    // What it waited for was said while it waited (when it changed, not at every poll).
    assert!(
        t.contains("waiting for Lambda to report it active (now booting)"),
        "{t}"
    );
    let said = t
        .lines()
        .filter(|l| l.contains("INFO") && l.contains("waiting for a login"))
        .count();
    assert!((1..=3).contains(&said), "{t}");
    assert!(
        t.contains("not reachable")
            && t.contains("the machine was terminated")
            && t.contains("billed"),
        "{t}"
    );
    let m = api.machines();
    assert_eq!((m.len(), m[0].2.as_str()), (1, "terminated"), "{m:?}");
    let ls = env.json(&["ls"]);
    assert!(ls.as_array().unwrap().is_empty(), "{ls}");
}

const CANOPY_KEY: &str = "secret_canopy_k3y_fedcba9876543210";

fn canopy_env(api: &CanopyWaveApi) -> Env {
    cloud_env(
        "canopywave",
        &api.url(),
        &api.proxy_command(),
        &format!(
            "ssh_user = \"{}\"\nregions = [\"{}\"]\nflavors = {{ \"H100-1\" = 2.25, \"A100-1\" = 1.45 }}\n",
            api.user(),
            trainctl::testkit::clouds::CANOPY_REGION
        ),
        "CANOPYWAVE_API_KEY",
        CANOPY_KEY,
    )
}

#[test]
fn canopywave_logs_in_with_its_password_then_with_trainctls_key() {
    let api = CanopyWaveApi::start(CANOPY_KEY, "floating_ip", &["H100-1", "A100-1"]);
    let env = canopy_env(&api);
    // No H100 now: the A100 alternative is launched instead.
    api.sell_out("H100-1");
    let inst = env.json(&[
        "launch",
        "--provider",
        "canopywave",
        "--type",
        "H100-1",
        "--any-of",
        "A100-1",
    ]);
    let id = inst["id"].as_str().unwrap().to_string();
    assert_eq!(inst["instance_type"], "A100-1", "{inst}");
    assert_eq!(inst["hourly"], 1_450_000, "{inst}");
    let launch = api
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/launch") && r.body["flavor"] == "A100-1")
        .unwrap();
    let password = launch.body["password"].as_str().unwrap().to_string();
    assert!(password.len() >= 20, "{password}");
    assert_eq!(
        launch.body["project"],
        trainctl::testkit::clouds::CANOPY_PROJECT
    );
    // Kept private while the machine lives.
    let pw_file = env.data().join("canopywave/passwords").join(&id);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&pw_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The password no longer works: a new connection (another trainctl) gets in with the
    // key installed after the first login.
    api.change_password("Changed-by-the-user-42");
    let run = env.json(&["run", "--instance", &id]);
    assert_eq!(run["state"], "succeeded", "{run}");
    let model: serde_json::Value =
        serde_json::from_slice(&model_of(&env, run["job_id"].as_str().unwrap())).unwrap();
    assert!(model.is_object());
    env.ok(&["terminate", &id]);
    let m = api.machines();
    assert_eq!(m.iter().filter(|x| x.2 == "DELETED").count(), 1, "{m:?}");
    assert!(!pw_file.exists(), "the password goes with the machine");
    // Neither the API key nor the machine's password is anywhere.
    for secret in [CANOPY_KEY, password.as_str()] {
        assert_eq!(files_holding(&env.data(), secret), Vec::<String>::new());
        assert!(!env.ok(&["events"]).contains(secret));
    }
}

const RUNPOD_KEY: &str = "secret_runpod_k3y_a1b2c3d4e5f6";

fn runpod_env(api: &RunPodApi) -> Env {
    cloud_env(
        "runpod",
        &api.url(),
        &api.proxy_command(),
        "",
        "RUNPOD_API_KEY",
        RUNPOD_KEY,
    )
}

#[test]
fn runpod_pods_run_on_demand_priced_per_gpu() {
    let api = RunPodApi::start(RUNPOD_KEY);
    let env = runpod_env(&api);
    let inst = env.json(&[
        "launch",
        "--provider",
        "runpod",
        "--type",
        "A100-80GB",
        "--gpus",
        "2",
    ]);
    // Two A100s at $1.64/h each.
    assert_eq!(inst["hourly"], 3_280_000, "{inst}");
    assert_eq!(
        inst["address"].as_str().unwrap().split(':').next_back(),
        Some("40001"),
        "{inst}"
    );
    let deploy = api
        .requests()
        .into_iter()
        .find(|r| {
            r.body["query"]
                .as_str()
                .unwrap_or_default()
                .contains("podFindAndDeployOnDemand")
        })
        .unwrap();
    let input = &deploy.body["variables"]["input"];
    assert_eq!(input["gpuTypeId"], "NVIDIA A100 80GB PCIe");
    assert_eq!(input["gpuCount"], 2);
    let id = inst["id"].as_str().unwrap().to_string();
    let run = env.json(&["run", "--instance", &id, "--terminate-after"]);
    assert_eq!(run["state"], "succeeded", "{run}");
    let pods = api.pods();
    assert_eq!(
        (pods.len(), pods[0].2.as_str()),
        (1, "TERMINATED"),
        "{pods:?}"
    );
    assert_eq!(files_holding(&env.data(), RUNPOD_KEY), Vec::<String>::new());
    // An unknown GPU is refused before any call; a sold-out one is a capacity error.
    let n = api.requests().len();
    let out = env.run(&["launch", "--provider", "runpod", "--type", "Z9000"]);
    assert!(
        !out.status.success() && text(&out).contains("unknown RunPod GPU"),
        "{}",
        text(&out)
    );
    assert_eq!(api.requests().len(), n);
    // Its listing read and kept: every GPU of the catalog priced from RunPod.
    let out = env.run(&["gpus", "--refresh", "--provider", "runpod"]);
    assert!(
        out.status.success()
            && text(&out).contains("runpod: 20 of 20 GPUs priced from RunPod's gpuTypes"),
        "{}",
        text(&out)
    );
    assert!(env.data().join("catalog/runpod.csv").exists());
    api.sell_out("NVIDIA H100 PCIe");
    let out = env.run(&["launch", "--provider", "runpod", "--type", "H100"]);
    assert!(
        !out.status.success() && text(&out).contains("no longer any instances"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_reclaimed_runpod_spot_pod_is_recovered_on_a_new_pod() {
    let api = RunPodApi::start(RUNPOD_KEY);
    let env = runpod_env(&api);
    let expected = reference_model(&env);
    set_resources(&env, "instance_type = \"A100-80GB\"\nspot = true");
    let gate = env.hold_at(2 * 16 + 5);
    let (run, job) = run_until_epoch_2_is_kept(&env, "runpod");
    let first = api.pods()[0].0.clone();
    assert!(api.pods()[0].3, "a spot pod");
    let rent = api
        .requests()
        .into_iter()
        .find(|r| {
            r.body["query"]
                .as_str()
                .unwrap_or_default()
                .contains("podRentInterruptable")
        })
        .unwrap();
    assert_eq!(rent.body["variables"]["input"]["bidPerGpu"], 1.19);
    api.reclaim(&first);
    env.wait_for(90, "a second pod running the job", || {
        let p = api.pods();
        p.len() == 2 && p[1].2 == "RUNNING" && env.job(&job)["state"] == "running"
    });
    finish_resumed_run(&env, &gate, run, &job, &expected);
    // Both pods are gone: the reclaimed one (its disk still billed) and the second.
    let pods = api.pods();
    assert!(pods.iter().all(|p| p.2 == "TERMINATED"), "{pods:?}");
}

#[test]
fn gpus_lists_every_configured_providers_offers_cheapest_first_offline() {
    let api = LambdaApi::start(LAMBDA_KEY);
    let env = Env::new(
        &format!(
            "[providers.lambda]\napi_url = \"{}\"\n[providers.runpod]\napi_url = \"{}/graphql\"\n\
             [providers.canopywave]\nregions = [\"KEF-3\"]\nflavors = {{ \"H100-1\" = 2.25 }}\n",
            api.url(),
            api.url()
        ),
        "0.005",
    );
    let all = env.json(&["gpus", "--limit", "0"]);
    let rows = all.as_array().unwrap();
    for p in ["aws", "lambda", "runpod", "canopywave"] {
        assert!(rows.iter().any(|r| r["provider"] == p), "{p} missing");
    }
    assert!(
        rows.windows(2)
            .all(|w| best_price(&w[0]) <= best_price(&w[1]))
    );
    let h100 = rows
        .iter()
        .find(|r| r["provider"] == "lambda" && r["instance_type"] == "gpu_1x_h100_pcie")
        .unwrap();
    assert_eq!(h100["on_demand_micros"], 3_290_000);
    // RunPod: spot where there is one, a pod of 2 at twice the price of one.
    let a100x2 = rows
        .iter()
        .find(|r| {
            r["provider"] == "runpod" && r["instance_type"] == "A100-80GB" && r["gpus"] == 2.0
        })
        .unwrap();
    assert_eq!(
        (
            a100x2["on_demand_micros"].as_i64(),
            a100x2["spot_micros"].as_i64()
        ),
        (Some(3_280_000), Some(2_380_000))
    );
    let only = env.json(&["gpus", "--provider", "lambda", "--limit", "0"]);
    assert!(
        only.as_array()
            .unwrap()
            .iter()
            .all(|r| r["provider"] == "lambda")
    );
    // Offline: no API was asked.
    assert!(api.requests().is_empty());
}

#[test]
fn an_offer_on_a_provider_not_configured_is_refused_before_any_launch() {
    let api = LambdaApi::start(LAMBDA_KEY);
    let env = lambda_env(&api, LAMBDA_KEY);
    let out = env.run(&[
        "launch",
        "--provider",
        "lambda",
        "--type",
        "gpu_1x_a10",
        "--any-of",
        "runpod:A100-80GB",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("the runpod provider is not configured"),
        "{}",
        text(&out)
    );
    assert!(api.requests().is_empty());
}
