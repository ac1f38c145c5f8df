//! Test fixtures: a private data dir and config per test, the real `trainctl` binary, and a
//! copy of the example project.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub project: PathBuf,
    /// Environment every trainctl command of this test gets.
    pub vars: Vec<(String, String)>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_trainctl")
}

impl Env {
    /// A fresh data dir, a user config with fast polling (plus `extra` TOML), and a copy
    /// of `examples/toy-train` whose step sleep is `step_sleep` seconds.
    pub fn new(extra: &str, step_sleep: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\npoll_interval_ms = 50\nstop_grace_seconds = 3\n{extra}",
                data.to_str().unwrap()
            ),
        )
        .unwrap();
        let project = dir.path().join("toy");
        std::fs::create_dir(&project).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/toy-train");
        std::fs::copy(src.join("train.py"), project.join("train.py")).unwrap();
        std::fs::copy(src.join(".gitignore"), project.join(".gitignore")).unwrap();
        let toml = std::fs::read_to_string(src.join("trainctl.toml"))
            .unwrap()
            .replace(
                "TOY_STEP_SLEEP = \"0.04\"",
                &format!("TOY_STEP_SLEEP = \"{step_sleep}\""),
            );
        std::fs::write(project.join("trainctl.toml"), toml).unwrap();
        Env {
            dir,
            config,
            project,
            vars: Vec::new(),
        }
    }

    /// Make the toy job wait after step `step` until the returned file exists, so a test
    /// can act while the job is certainly still running.
    pub fn hold_at(&self, step: u32) -> PathBuf {
        let gate = self.dir.path().join("release-the-job");
        let toml = self.project.join("trainctl.toml");
        let mut text = std::fs::read_to_string(&toml).unwrap();
        // `[env]` is the last table of the example's trainctl.toml.
        assert_eq!(text.rfind("\n["), text.find("\n[env]"));
        text.push('\n');
        text.push_str(&format!(
            "TOY_HOLD_AT_STEP = \"{step}\"\nTOY_HOLD_FILE = {:?}\n",
            gate.to_str().unwrap()
        ));
        std::fs::write(&toml, text).unwrap();
        gate
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .env("TRAINCTL_CONFIG", &self.config)
            .env_remove("TRAINCTL_LOG")
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.project);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "trainctl {args:?} failed ({:?}):\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let s = self.ok(&a);
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("{e}: {s}"))
    }

    pub fn job(&self, id: &str) -> serde_json::Value {
        self.json(&["jobs"])
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no job {id}"))
    }

    /// The kinds of every event (of one job, or all), in order.
    pub fn event_kinds(&self, job: Option<&str>) -> Vec<String> {
        let mut args = vec!["events"];
        args.extend(job);
        self.json(&args)
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn events(&self, job: &str) -> Vec<serde_json::Value> {
        self.json(&["events", job]).as_array().unwrap().clone()
    }

    /// Whether the store holds any `lr` point of `job` (the toy job logs one a step).
    pub fn has_metrics(&self, job: &str) -> bool {
        !self
            .json(&["metrics", job, "--name", "lr"])
            .as_array()
            .unwrap()
            .is_empty()
    }

    /// Wait until the first job listed is running and some of its log was consumed;
    /// returns its id.
    pub fn wait_running_with_metrics(&self) -> String {
        let mut job = String::new();
        self.wait_for(30, "the job to run and log", || {
            let jobs = self.json(&["jobs"]);
            match jobs.as_array().unwrap().first() {
                Some(j) if j["state"] == "running" => {
                    job = j["id"].as_str().unwrap().to_string();
                    self.has_metrics(&job)
                }
                _ => false,
            }
        });
        job
    }

    /// Wait until `f` holds, up to `secs`.
    pub fn wait_for(&self, secs: u64, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if f() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}");
    }
}

/// `len` bytes of xorshift64 output from `state` (advanced), for data that neither
/// compresses nor repeats.
pub fn pseudo_random(state: &mut u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    for b in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        b.copy_from_slice(&state.to_le_bytes()[..b.len()]);
    }
    buf
}

/// The `step=N` numbers of the toy job's log lines, in order.
pub fn steps_in_log(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| l.strip_prefix("step="))
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

impl Env {
    /// A `logs -f` that ended well printed steps 1..=n exactly once, and the store holds
    /// the `lr` point of each step exactly once.
    pub fn assert_followed_completely(&self, out: &Output, job: &str, n: u32) {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            steps_in_log(&text),
            (1..=n).collect::<Vec<_>>(),
            "log lines lost or repeated"
        );
        assert_eq!(
            self.metric_steps(job, "lr"),
            (1..=n as i64).collect::<Vec<_>>(),
            "metric points lost or repeated"
        );
    }

    /// The steps of a job's stored points of metric `name`, in order.
    pub fn metric_steps(&self, job: &str, name: &str) -> Vec<i64> {
        self.json(&["metrics", job, "--name", name])
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["step"].as_i64().unwrap())
            .collect()
    }
}

/// Live processes carrying the sandbox marker of instance `id`.
pub fn sandbox_processes(id: &str) -> Vec<i32> {
    trainctl::provider::local::sandbox_processes(id)
}

/// `cost_micros` of row `id` in table `table` ("instances" or "jobs") of `cost --json`.
pub fn cost_of(cost: &serde_json::Value, table: &str, id: &str) -> i64 {
    cost[table]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no {table} row {id}: {cost}"))["cost_micros"]
        .as_i64()
        .unwrap()
}

/// The model.json a job pulled (into `<project>/trainctl-out/<job>/`).
pub fn model_of(env: &Env, job: &str) -> Vec<u8> {
    std::fs::read(
        env.project
            .join("trainctl-out")
            .join(job)
            .join("model.json"),
    )
    .unwrap()
}

/// Set the project's `[resources]` table (TOML lines).
pub fn set_resources(env: &Env, lines: &str) {
    set_table(env, "resources", lines);
}

/// Put table `[name]` (TOML lines) into the project, before `[env]` (the last table).
pub fn set_table(env: &Env, name: &str, lines: &str) {
    let toml = env.project.join("trainctl.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let (head, tail) = text.split_at(text.find("\n[env]").unwrap());
    std::fs::write(&toml, format!("{head}\n[{name}]\n{lines}\n{tail}")).unwrap();
}

/// The model of an uninterrupted run of the project on the local provider (the toy's
/// model does not depend on the machine).
pub fn reference_model(env: &Env) -> Vec<u8> {
    let run = env.json(&["run", "--provider", "local", "--terminate-after"]);
    assert_eq!(run["state"], "succeeded", "{run}");
    model_of(env, run["job_id"].as_str().unwrap())
}

/// `run` of the project on `provider` (followed, JSON, terminate after), once epoch 2's
/// checkpoint is kept; the running `run` and the job.
pub fn run_until_epoch_2_is_kept(env: &Env, provider: &str) -> (std::process::Child, String) {
    use std::process::Stdio;
    let run = env
        .cmd(&["run", "--provider", provider, "--json", "--terminate-after"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let job = env.wait_running_with_metrics();
    env.wait_for(60, "epoch 2's checkpoint kept", || {
        env.json(&["checkpoints", &job])
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "epoch-0002.json")
    });
    (run, job)
}

/// Release the held job (`gate`) and let `run` end: it succeeded after a resume from a
/// kept checkpoint, with the model an uninterrupted run makes (`expected`).
pub fn finish_resumed_run(
    env: &Env,
    gate: &Path,
    run: std::process::Child,
    job: &str,
    expected: &[u8],
) {
    std::fs::write(gate, "").unwrap();
    let out = run.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(result["state"], "succeeded", "{result}");
    assert_eq!(
        model_of(env, job),
        expected,
        "the resumed model is the uninterrupted one"
    );
    let kinds = env.event_kinds(Some(job));
    assert!(
        kinds.contains(&"checkpoint.restored".to_string()),
        "{kinds:?}"
    );
}

/// The cheaper of a `gpus --json` row's spot and on-demand prices.
pub fn best_price(r: &serde_json::Value) -> i64 {
    [r["spot_micros"].as_i64(), r["on_demand_micros"].as_i64()]
        .into_iter()
        .flatten()
        .min()
        .unwrap()
}

/// `[providers.ssh]` with one host, `lab1`: the test sshd as root with `key`, its remote
/// dir under `work`, first-seen host keys accepted.
pub fn one_ssh_host(sshd: &trainctl::testkit::Sshd, key: &Path, work: &Path) -> String {
    format!(
        "[providers.ssh]\naccept_new_host_keys = true\n\
         [[providers.ssh.hosts]]\nname = \"lab1\"\naddress = \"127.0.0.1\"\nuser = \"root\"\nport = {}\n\
         identity_file = \"{}\"\nremote_dir = \"{}/.trainctl\"\n",
        sshd.port,
        key.display(),
        work.display()
    )
}
