//! The training workflow around the command: setup once per machine, GPUs checked and
//! watched, the end announced.

use crate::common::Env;
use std::process::Stdio;

/// Put top-level keys (TOML lines) into the project, right after its `command`.
fn set_top(env: &Env, lines: &str) {
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let at = text.find("\ncommand = ").unwrap();
    let end = at + 1 + text[at + 1..].find('\n').unwrap();
    let mut new = text[..=end].to_string();
    new.push_str(lines);
    new.push('\n');
    new.push_str(&text[end + 1..]);
    std::fs::write(&toml, new).unwrap();
}

fn log_of(env: &Env, job: &str) -> String {
    env.ok(&["logs", job])
}

fn count(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

#[test]
fn setup_runs_once_per_machine_and_hash_and_its_output_is_logged_not_parsed() {
    let env = Env::new("", "0");
    let ran = env.dir.path().join("setup-ran");
    let gate = env.dir.path().join("setup-may-end");
    std::fs::write(env.project.join("requirements.txt"), "numpy\n").unwrap();
    set_top(
        &env,
        &format!(
            "setup = [\"echo setup >> '{}'\", \"echo 'Get:1 http://deb.example bookworm' ; echo setup_metric=42\", \"i=0; while [ ! -e '{}' ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\"]\nsetup_inputs = [\"requirements.txt\"]",
            ran.display(),
            gate.display()
        ),
    );
    let inst = env.json(&["launch"])["id"].as_str().unwrap().to_string();
    let run = env
        .cmd(&["run", "--instance", &inst, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The job shows its own state while the setup runs, and its output as it comes.
    let mut job = String::new();
    env.wait_for(30, "the job to be setting up", || {
        let jobs = env.json(&["jobs"]);
        match jobs.as_array().unwrap().first() {
            Some(j) if j["state"] == "setting_up" => {
                job = j["id"].as_str().unwrap().to_string();
                log_of(&env, &job).contains("setup_metric=42")
            }
            _ => false,
        }
    });
    std::fs::write(&gate, "").unwrap();
    let out = run.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(count(&ran), 1);
    let log = log_of(&env, &job);
    assert!(log.contains("── trainctl: setup "), "{log}");
    assert!(log.contains("── trainctl: setup ended: done in"), "{log}");
    // The setup's lines are not training metrics; the job's are.
    let names = env.json(&["metrics", &job]);
    let names: Vec<&str> = names
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"lr"), "{names:?}");
    assert!(!names.contains(&"setup_metric"), "{names:?}");
    assert!(!names.contains(&"get"), "{names:?}");
    let kinds = env.event_kinds(Some(&job));
    let at = |k: &str| kinds.iter().position(|x| x == k).unwrap_or(usize::MAX);
    assert!(
        at("job.starting") < at("job.setting_up") && at("job.setting_up") < at("job.running"),
        "{kinds:?}"
    );

    // The same setup on the same machine: skipped, the job runs at once.
    let v = env.json(&["run", "--instance", &inst]);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(count(&ran), 1);
    let log = log_of(&env, v["job_id"].as_str().unwrap());
    assert!(
        log.contains("── trainctl: setup skipped: this machine ran setup"),
        "{log}"
    );

    // A changed input is another setup.
    std::fs::write(env.project.join("requirements.txt"), "numpy==2.1\n").unwrap();
    let v = env.json(&["run", "--instance", &inst]);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(count(&ran), 2);

    // Another machine runs it too.
    let v = env.json(&["run", "--provider", "local", "--terminate-after"]);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(count(&ran), 3);
    env.ok(&["terminate", &inst]);
}

#[test]
fn a_failing_setup_fails_the_job_with_its_output_and_the_command_never_runs() {
    let env = Env::new("", "0");
    set_top(
        &env,
        "setup = \"\"\"\necho preparing\necho 'ERROR: No matching distribution found for torch==9.9' >&2\nexit 7\necho never\n\"\"\"",
    );
    let out = env.run(&["run", "--json", "--terminate-after"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["exit_code"], 7, "{v}");
    let job = v["job_id"].as_str().unwrap();
    let reason = env.job(job)["reason"].as_str().unwrap().to_string();
    assert!(
        reason.starts_with("setup failed with status 7: preparing | ERROR: No matching distribution found for torch==9.9"),
        "{reason}"
    );
    let log = env.ok(&["logs", job]);
    assert!(!log.contains("never"), "{log}");
    assert!(log.contains("setup ended: failed with status 7"), "{log}");
    // The command did not run: no training metric.
    assert!(!env.has_metrics(job));
    // The cleanup policy held: the machine it launched is gone.
    assert!(env.json(&["ls"]).as_array().unwrap().is_empty());
}

#[test]
fn a_broken_setup_config_names_its_place() {
    let env = Env::new("", "0");
    set_top(&env, "setup_inputs = [\"requirements.txt\"]");
    let out = env.run(&["run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("trainctl.toml:4:"), "{err}");
    assert!(err.contains("there is no `setup`"), "{err}");
    let env = Env::new("", "0");
    set_top(
        &env,
        "setup = \"pip install -r requirements.txt\"\nsetup_inputs = [\"requirements.txt\"]",
    );
    let out = env.run(&["run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("setup input `requirements.txt` does not exist"),
        "{err}"
    );
}

/// A stand-in `nvidia-smi` on a PATH of its own: two 22 GiB GPUs whose utilisation is
/// read from `util` in the returned directory. Returns (PATH value, that directory).
fn fake_gpus(env: &Env) -> (String, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let bin = env.dir.path().join("gpu-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let smi = bin.join("nvidia-smi");
    std::fs::write(
        &smi,
        format!(
            "#!/bin/sh\ncase \"$*\" in\n\
             *index,name,memory.total,memory.used*) printf '0, NVIDIA A10G, 23028, 20000\\n1, NVIDIA A10G, 23028, 5\\n' ;;\n\
             *index,utilization.gpu,memory.used*) u=$(cat '{0}/util' 2>/dev/null || echo 0); printf '0, %s, 1536\\n1, [N/A], 2048\\n' \"$u\" ;;\n\
             *) printf 'NVIDIA A10G, 23028 MiB\\nNVIDIA A10G, 23028 MiB\\n' ;;\nesac\n",
            bin.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    (path, bin)
}

#[test]
fn a_gpu_job_is_refused_on_a_machine_without_the_gpus_it_asks_for() {
    let env = Env::new("", "0");
    crate::common::set_resources(&env, "gpus = 1");
    let out = env.run(&["run", "--json", "--terminate-after"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "the job asks for 1 GPU(s); this machine has none (no nvidia-smi on its PATH)"
        ),
        "{err}"
    );
    let jobs = env.json(&["jobs"]);
    assert_eq!(jobs[0]["state"], "failed", "{jobs}");
    assert!(!env.has_metrics(jobs[0]["id"].as_str().unwrap()));
    // Nothing was left billing.
    assert!(env.json(&["ls"]).as_array().unwrap().is_empty());

    // GPUs, but not big enough.
    let (path, _) = fake_gpus(&env);
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, text.replace("gpus = 1", "gpu_memory_gib = 40")).unwrap();
    let out = env
        .cmd(&["run", "--json", "--terminate-after"])
        .env("PATH", &path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "asks for 1 GPU(s) with at least 40 GiB each; this machine has 2x NVIDIA A10G (22 GiB)"
        ),
        "{err}"
    );
}

#[test]
fn gpus_are_given_to_the_job_sampled_while_it_runs_and_an_idle_one_is_flagged() {
    let env = Env::new("gpu_sample_seconds = 1\ngpu_idle_minutes = 0.03\n", "0.01");
    let (path, bin) = fake_gpus(&env);
    crate::common::set_resources(&env, "gpus = 1");
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml).unwrap().replace(
        "command = \"python3 train.py",
        "command = \"echo \\\"devices [$CUDA_VISIBLE_DEVICES]\\\"; python3 train.py",
    );
    std::fs::write(&toml, text).unwrap();
    let gate = env.hold_at(20);
    let run = env
        .cmd(&["run", "--json", "--terminate-after"])
        .env("PATH", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let job = env.wait_running_with_metrics();
    // Idle GPUs (0 %) for longer than the limit: flagged.
    env.wait_for(30, "the idle GPUs to be flagged", || {
        env.job(&job)["gpu_idle_flag"] == true
    });
    let table = env.ok(&["jobs"]);
    assert!(table.contains("running (GPUs idle "), "{table}");
    // Busy again: no flag.
    std::fs::write(bin.join("util"), "97").unwrap();
    env.wait_for(30, "the busy GPU to clear the flag", || {
        env.job(&job)["gpu_idle_ms"].is_null()
    });
    std::fs::write(&gate, "").unwrap();
    let out = run.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "succeeded", "{v}");
    // The least used GPU was given to the job.
    assert!(env.ok(&["logs", &job]).contains("devices [1]"));
    // Samples are metric series beside the training's, placed at training steps.
    let util = env.json(&["metrics", &job, "--name", "gpu0.util"]);
    let util = util.as_array().unwrap();
    assert!(util.len() >= 2, "{util:?}");
    assert!(util.iter().any(|p| p["value"] == 0.0), "{util:?}");
    assert!(util.iter().any(|p| p["value"] == 97.0), "{util:?}");
    assert!(
        util.iter()
            .any(|p| p["step"].as_i64().is_some_and(|s| s >= 20)),
        "{util:?}"
    );
    let mem = env.json(&["metrics", &job, "--name", "gpu0.mem_gib"]);
    assert_eq!(mem[0]["value"], 1.5, "{mem}");
    // A field the GPU does not report makes no point.
    assert!(
        env.json(&["metrics", &job, "--name", "gpu1.util"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        env.json(&["metrics", &job, "--name", "gpu1.mem_gib"])[0]["value"],
        2.0
    );
    // The sampler ended with the job.
    let left = std::process::Command::new("pgrep")
        .args(["-f", "runner.sh --gpu"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&left.stdout)
            .lines()
            .any(
                |pid| std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.contains(env.dir.path().to_str().unwrap()))
            ),
        "a GPU sampler outlived its job"
    );
}

#[test]
fn on_end_runs_once_per_job_end_with_its_summary_also_after_a_reattach() {
    let env = Env::new("", "0.01");
    let ends = env.dir.path().join("ends");
    set_top(
        &env,
        &format!(
            "on_end = \"echo \\\"$TRAINCTL_JOB_ID $TRAINCTL_JOB_STATE code=$TRAINCTL_EXIT_CODE\\\" >> '{0}'; printf '%s\\\\n' \\\"$TRAINCTL_SUMMARY\\\" >> '{0}.json'\"",
            ends.display()
        ),
    );
    // 1. Watched to the end by `run`: the summary is printed, and on_end called once.
    let out = env.run(&["run", "--terminate-after"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("  succeeded in "), "{err}");
    assert!(err.contains("6 artifacts pulled"), "{err}");
    assert!(
        err.lines()
            .any(|l| l.trim_start().starts_with("loss ") && l.contains("best ")),
        "{err}"
    );
    let first = env.json(&["jobs"])[0]["id"].as_str().unwrap().to_string();
    env.wait_for(10, "on_end to run", || count(&ends) == 1);
    let line = std::fs::read_to_string(&ends).unwrap();
    assert_eq!(line, format!("{first} succeeded code=0\n"));
    let summary: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(ends.with_extension("json"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    assert_eq!(summary["job_id"], first.as_str());
    assert_eq!(summary["artifacts"], 6, "{summary}");
    let loss = summary["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "loss")
        .unwrap()
        .clone();
    assert_eq!(loss["lower_is_better"], true);
    assert!(loss["best"].as_f64().unwrap() <= loss["last"].as_f64().unwrap());

    // 2. The job ends while no trainctl watches; the next one to look runs on_end, once.
    let gate = env.hold_at(10);
    let inst = env.json(&["launch"])["id"].as_str().unwrap().to_string();
    let mut run = env
        .cmd(&["run", "--instance", &inst])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let job = env.wait_running_with_metrics();
    run.kill().unwrap();
    run.wait().unwrap();
    std::fs::write(&gate, "").unwrap();
    env.wait_for(30, "the job to be seen ended", || {
        env.job(&job)["state"] == "succeeded"
    });
    for _ in 0..3 {
        env.ok(&["jobs"]);
    }
    env.wait_for(10, "on_end to run for the re-attached job", || {
        count(&ends) == 2
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let text = std::fs::read_to_string(&ends).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.starts_with(&job)).count(),
        1,
        "{text}"
    );
    assert_eq!(
        env.event_kinds(Some(&job))
            .iter()
            .filter(|k| *k == "job.on_end")
            .count(),
        1
    );
    env.ok(&["terminate", &inst]);
}

#[test]
fn setup_runs_once_on_an_ssh_host_and_a_gpu_job_is_refused_there() {
    let sshd = trainctl::testkit::Sshd::start();
    let env = crate::ssh::ssh_env(&sshd, "", "0");
    let inst = crate::ssh::launch_ssh(&env);
    set_top(
        &env,
        "setup = [\"echo installing\", \"touch .setup-ran-$TRAINCTL_JOB_ID\"]",
    );
    let first = env.json(&["run", "--instance", &inst]);
    assert_eq!(first["state"], "succeeded", "{first}");
    let log = env.ok(&["logs", first["job_id"].as_str().unwrap()]);
    assert!(
        log.contains("installing") && log.contains("setup ended: done"),
        "{log}"
    );
    let second = env.json(&["run", "--instance", &inst]);
    assert_eq!(second["state"], "succeeded", "{second}");
    let log = env.ok(&["logs", second["job_id"].as_str().unwrap()]);
    assert!(log.contains("setup skipped"), "{log}");
    assert!(!log.contains("installing"), "{log}");
    // The setup ran in the job's workdir with the job's environment, once.
    let code = crate::ssh::remote_code_dir(&env);
    let ran: Vec<String> = std::fs::read_dir(&code)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(".setup-ran-"))
        .collect();
    assert_eq!(
        ran,
        vec![format!(".setup-ran-{}", first["job_id"].as_str().unwrap())]
    );

    crate::common::set_resources(&env, "gpus = 1");
    let out = env.run(&["run", "--instance", &inst, "--json"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("this machine has none (no nvidia-smi on its PATH)"),
        "{err}"
    );
    env.ok(&["terminate", &inst]);
}

/// `count` files of `size` random bytes under `dir`, some in a sub-folder.
fn make_dataset(dir: &std::path::Path, count: usize, size: usize, seed: u64) {
    let mut x = seed;
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..count {
        let rel = if i % 3 == 0 {
            format!("sub/part-{i:04}.bin")
        } else {
            format!("part-{i:04}.bin")
        };
        std::fs::write(dir.join(rel), crate::common::pseudo_random(&mut x, size)).unwrap();
    }
}

/// Every file under `a` is under `b` with the same bytes, and nothing more.
fn same_tree(a: &std::path::Path, b: &std::path::Path) {
    fn files(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let (mut fa, mut fb) = (Vec::new(), Vec::new());
    files(a, a, &mut fa);
    files(b, b, &mut fb);
    fa.sort();
    fb.sort();
    assert_eq!(fa, fb);
    for f in fa {
        assert!(
            std::fs::read(a.join(&f)).unwrap() == std::fs::read(b.join(&f)).unwrap(),
            "{f} differs"
        );
    }
}

fn data_events(env: &Env, job: &str) -> Vec<(String, String)> {
    env.events(job)
        .iter()
        .filter(|e| e["kind"].as_str().unwrap().starts_with("data."))
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_dataset_is_placed_once_per_machine_and_content_apart_from_the_code() {
    let env = Env::new("", "0");
    let ds = env.project.join("data/ds");
    make_dataset(&ds, 60, 50_000, 7);
    // `[[data]]` is an array of tables: after every top-level key.
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(
        &toml,
        format!("{text}\n[[data]]\nsrc = \"data/ds\"\ndst = \"sets/ds\"\n").replace(
            "command = \"python3 train.py",
            "command = \"echo \\\"data at [$TRAINCTL_DATA_DIR]\\\"; ls \\\"$TRAINCTL_DATA_DIR/sets/ds\\\" | head -n 1; python3 train.py",
        ),
    )
    .unwrap();
    let inst = env.json(&["launch"])["id"].as_str().unwrap().to_string();
    let home = env
        .data()
        .join("sandboxes")
        .join(&inst)
        .join("home/.trainctl");
    let first = env.json(&["run", "--instance", &inst]);
    assert_eq!(first["state"], "succeeded", "{first}");
    let job = first["job_id"].as_str().unwrap();
    let mount = home.join("datasets/toy-train/sets/ds");
    same_tree(&ds, &mount);
    let log = env.ok(&["logs", job]);
    assert!(
        log.contains(&format!(
            "data at [{}]",
            home.join("datasets/toy-train").display()
        )),
        "{log}"
    );
    assert!(log.contains("part-0001.bin"), "{log}");
    // Apart from the code: the code sync left it out.
    assert!(!home.join("code/toy-train/data/ds").exists());
    let ev = data_events(&env, job);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].0, "data.sent");
    assert!(
        ev[0].1.starts_with("sets/ds: 60 files, 3000000 bytes sent"),
        "{ev:?}"
    );

    // Again on the same machine: nothing is sent, nothing rewritten.
    let one = mount.join("part-0001.bin");
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(&one).unwrap().ino();
    let second = env.json(&["run", "--instance", &inst]);
    assert_eq!(second["state"], "succeeded", "{second}");
    let ev = data_events(&env, second["job_id"].as_str().unwrap());
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].0, "data.placed", "{ev:?}");
    assert_eq!(std::fs::metadata(&one).unwrap().ino(), ino);

    // A copy of the folder (other mtimes) is the same content: not sent either.
    let copy = env.dir.path().join("elsewhere/ds");
    make_dataset(&copy, 60, 50_000, 7);
    // Other mtimes than the first folder's, whatever the clock did meanwhile.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    for e in std::fs::read_dir(&copy)
        .unwrap()
        .chain(std::fs::read_dir(copy.join("sub")).unwrap())
    {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
    }
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(
        &toml,
        text.replace(
            "src = \"data/ds\"",
            &format!("src = \"{}\"", copy.display()),
        ),
    )
    .unwrap();
    let third = env.json(&["run", "--instance", &inst]);
    let ev = data_events(&env, third["job_id"].as_str().unwrap());
    assert!(
        ev.len() == 1
            && ev[0]
                .1
                .contains("the same content is on the machine already"),
        "{ev:?}"
    );

    // A changed file (and one removed, one added) is another dataset: only what changed
    // is sent, the job sees the new one, the earlier content stays whole.
    std::fs::write(copy.join("part-0001.bin"), b"changed").unwrap();
    std::fs::remove_file(copy.join("part-0002.bin")).unwrap();
    std::fs::write(copy.join("sub/new.bin"), b"new!").unwrap();
    let before = std::fs::read(mount.join("part-0001.bin")).unwrap();
    let old_content = std::fs::canonicalize(&mount).unwrap();
    let fourth = env.json(&["run", "--instance", &inst]);
    assert_eq!(fourth["state"], "succeeded", "{fourth}");
    let ev = data_events(&env, fourth["job_id"].as_str().unwrap());
    assert_eq!(ev[0].0, "data.sent", "{ev:?}");
    assert!(
        ev[0].1.starts_with("sets/ds: 60 files, 11 bytes sent"),
        "{ev:?}"
    );
    same_tree(&copy, &mount);
    assert_eq!(
        std::fs::read(old_content.join("part-0001.bin")).unwrap(),
        before
    );
    assert!(old_content.join("part-0002.bin").exists());
    // The earlier content is still there for the earlier listing.
    let kept = std::fs::read_dir(home.join("data"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".done")
        })
        .count();
    assert_eq!(kept, 2);
    env.ok(&["terminate", &inst]);
}

#[test]
fn a_dataset_transfer_cut_by_killed_connections_resumes_and_matches() {
    let sshd = trainctl::testkit::Sshd::start();
    let env = crate::ssh::ssh_env(&sshd, "", "0");
    let inst = crate::ssh::launch_ssh(&env);
    let ds = env.dir.path().join("big");
    make_dataset(&ds, 300, 128 << 10, 11);
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(
        &toml,
        format!(
            "{text}\n[[data]]\nsrc = \"{}\"\ndst = \"big\"\n",
            ds.display()
        ),
    )
    .unwrap();
    let root = crate::ssh::remote_code_dir(&env)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let mut child = env
        .cmd(&["run", "--instance", &inst, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let landed = || -> usize {
        let Ok(rd) = std::fs::read_dir(root.join("data")) else {
            return 0;
        };
        rd.filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .map(|e| {
                std::fs::read_dir(e.path()).map_or(0, |d| d.count())
                    + std::fs::read_dir(e.path().join("sub")).map_or(0, |d| d.count())
            })
            .sum()
    };
    let mut kills = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while kills < 2 && std::time::Instant::now() < deadline {
        let n = landed();
        if (kills == 0 && n >= 40) || (kills == 1 && n >= 150) {
            sshd.kill_sessions();
            kills += 1;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let out = child.wait_with_output().unwrap();
    assert!(kills >= 1, "the transfer ended before a kill landed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["state"], "succeeded", "{v}");
    let job = v["job_id"].as_str().unwrap();
    let ev = data_events(&env, job);
    let sent = ev.iter().find(|(k, _)| k == "data.sent").unwrap();
    // The files that had landed whole were not sent again.
    assert!(sent.1.contains("were on the machine"), "{ev:?}");
    same_tree(&ds, &root.join("datasets/toy-train/big"));
    // No transfer folder is left behind.
    assert_eq!(landed(), 0);
    env.ok(&["terminate", &inst]);
}

#[test]
fn a_job_cancelled_during_its_setup_leaves_no_process_and_the_next_one_sets_up() {
    let env = Env::new("", "0");
    set_top(&env, "setup = \"echo slow setup; sleep 30\"");
    let inst = env.json(&["launch"])["id"].as_str().unwrap().to_string();
    let job = env
        .ok(&["run", "--instance", &inst, "--detach"])
        .trim()
        .to_string();
    env.wait_for(30, "the setup to run", || {
        env.job(&job)["state"] == "setting_up" && env.ok(&["logs", &job]).contains("slow setup")
    });
    env.ok(&["cancel", &job]);
    assert_eq!(env.job(&job)["state"], "cancelled");
    assert!(
        crate::common::sandbox_processes(&inst).is_empty(),
        "processes left after a cancel during the setup"
    );
    let log = env.ok(&["logs", &job]);
    assert!(log.contains("setup ended: stopped"), "{log}");
    // Not recorded as done, no lock left: the next job runs it (and is let through).
    let home = env
        .data()
        .join("sandboxes")
        .join(&inst)
        .join("home/.trainctl/setup");
    let left: Vec<String> = std::fs::read_dir(&home)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, text.replace("sleep 30", "sleep 0")).unwrap();
    let v = env.json(&["run", "--instance", &inst]);
    assert_eq!(v["state"], "succeeded", "{v}");
    let log = env.ok(&["logs", v["job_id"].as_str().unwrap()]);
    assert!(log.contains("setup ended: done"), "{log}");
    env.ok(&["terminate", &inst]);
}
