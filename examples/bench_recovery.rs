//! How long a job is at risk when its machine goes, end to end with the real binaries:
//!
//! - **notice → safe**: an interruption notice is written on the machine (what `migrate`
//!   or an admin does); the watcher there stops the job, which saves a checkpoint of SIZE
//!   on SIGTERM; measured until that checkpoint is in the checkpoint store, shipped and
//!   checked by the supervisor (`trainctl watch`, started before and left running).
//! - **loss → resumed**: the machine dies with no notice (every process killed, its disk
//!   removed); measured until the next attempt, on a replacement, has printed its first
//!   line after restoring the newest shipped checkpoint of SIZE. Providers' boot time is
//!   not in it (`local` launches in milliseconds).
//!
//! On `local`, and (notice → safe) over SSH to a real sshd on 127.0.0.1.
//!
//! `cargo build --release && cargo run --release --example bench_recovery [-- SIZE_MB...]`
//! (default 10 and 1024). The supervisor polls every 250 ms (the default).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use trainctl::store::Store;

const SCRIPT: &str = r#"
import os, signal, sys, time
size = int(os.environ["CKPT_BYTES"])
d = os.environ["TRAINCTL_CHECKPOINT_DIR"]
os.makedirs(d, exist_ok=True)
stop = False
def term(*a):
    global stop
    stop = True
signal.signal(signal.SIGTERM, term)
def save(name):
    tmp = os.path.join(d, name + ".part")
    block = os.urandom(1 << 20)
    with open(tmp, "wb") as f:
        for _ in range(max(1, size >> 20)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(d, name))
r = os.environ.get("TRAINCTL_RESUME_FROM")
print("resumed from " + r if r else "started from scratch", flush=True)
if not r:
    save("ckpt-0001.bin")
n = 0
while not stop:
    n += 1
    print(f"step={n}", flush=True)
    time.sleep(0.05)
save("ckpt-0002.bin")
sys.exit(143)
"#;

fn trainctl() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("trainctl");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release` first",
        bin.display()
    );
    bin
}

struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
    project: PathBuf,
    vars: Vec<(String, String)>,
}

impl Env {
    fn new(size_mb: u64, providers: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nstop_grace_seconds = 30\n{providers}",
                dir.path().join("data").to_str().unwrap()
            ),
        )
        .unwrap();
        let project = dir.path().join("proj");
        std::fs::create_dir_all(&project).unwrap();
        std::fs::write(project.join("train.py"), SCRIPT).unwrap();
        std::fs::write(
            project.join("trainctl.toml"),
            format!(
                "name = \"bench\"\ncommand = \"python3 -S train.py\"\ncheckpoints = \"ck\"\n\
                 [recovery]\non = [\"lost\"]\nkeep_checkpoints = 1\n[env]\nCKPT_BYTES = \"{}\"\n",
                size_mb << 20
            ),
        )
        .unwrap();
        Env {
            dir,
            config,
            project,
            vars: Vec::new(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(trainctl());
        c.args(args)
            .env("TRAINCTL_CONFIG", &self.config)
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.project);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Terminate every machine the bench left (a replacement included).
    fn cleanup(&self) {
        let out = self.ok(&["ls", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        for i in v.as_array().unwrap() {
            if let Some(id) = i["id"].as_str() {
                let _ = self.cmd(&["terminate", id]).output();
            }
        }
    }

    fn store(&self) -> Store {
        Store::open(&self.dir.path().join("data/trainctl.db")).unwrap()
    }

    fn watch(&self) -> Child {
        self.cmd(&["watch"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Wait until `f` holds (checked every 5 ms); the time it took.
    fn until(&self, what: &str, limit: Duration, mut f: impl FnMut(&Store) -> bool) -> f64 {
        let t = Instant::now();
        let s = self.store();
        while !f(&s) {
            assert!(t.elapsed() < limit, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
        t.elapsed().as_secs_f64()
    }

    fn shipped(s: &Store, job: &str, name: &str) -> bool {
        s.checkpoints(job).unwrap().iter().any(|c| c.name == name)
    }

    /// Start the job (detached) on `instance`, supervised by `watch`; wait until its first
    /// checkpoint is shipped. Returns (job, the job dir on the machine, watch).
    fn start(&self, instance: &str) -> (String, String, Child) {
        let job = self
            .ok(&["run", "--instance", instance, "--detach"])
            .trim()
            .to_string();
        let w = self.watch();
        self.until("the first checkpoint", Duration::from_secs(300), |s| {
            Env::shipped(s, &job, "ckpt-0001.bin")
        });
        let att = self.store().attempts(&job).unwrap().pop().unwrap();
        (job, att.remote_dir, w)
    }
}

fn notice_to_safe(env: &Env, instance: &str) -> f64 {
    notice_to_safe_by(env, instance, |job_dir| {
        std::fs::write(format!("{job_dir}/notice"), "reason=bench\n").unwrap();
    })
}

/// From `notify(job_dir)` (whatever gives the notice) until the checkpoint saved on it is
/// shipped and recorded.
fn notice_to_safe_by(env: &Env, instance: &str, notify: impl FnOnce(&str)) -> f64 {
    let (job, job_dir, mut w) = env.start(instance);
    notify(&job_dir);
    let secs = env.until(
        "the checkpoint saved on notice",
        Duration::from_secs(600),
        |s| Env::shipped(s, &job, "ckpt-0002.bin"),
    );
    let _ = w.kill();
    let _ = w.wait();
    let _ = env.cmd(&["cancel", &job, "--no-wait"]).output();
    secs
}

fn loss_to_resumed(env: &Env, instance: &str) -> f64 {
    let (job, _, mut w) = env.start(instance);
    let sandbox = env.dir.path().join("data/sandboxes").join(instance);
    let t = Instant::now();
    for pid in trainctl::provider::local::sandbox_processes(instance) {
        // SAFETY: kill(2) on pids read from /proc.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    std::fs::remove_dir_all(&sandbox).unwrap();
    let log2 = env.dir.path().join(format!("data/logs/{job}/2.log"));
    env.until(
        "the resumed attempt's first line",
        Duration::from_secs(600),
        |_| std::fs::read_to_string(&log2).is_ok_and(|l| l.contains("resumed from")),
    );
    let secs = t.elapsed().as_secs_f64();
    let _ = w.kill();
    let _ = w.wait();
    let _ = env.cmd(&["cancel", &job, "--no-wait"]).output();
    secs
}

fn main() {
    let sizes: Vec<u64> = {
        let v: Vec<u64> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        if v.is_empty() { vec![10, 1024] } else { v }
    };
    println!("| checkpoint | provider | notice → safe | loss → resumed |");
    println!("|---|---|---|---|");
    for &mb in &sizes {
        let env = Env::new(mb, "");
        let id = env.ok(&["launch"]).trim().to_string();
        let notice = notice_to_safe(&env, &id);
        let id = env.ok(&["launch"]).trim().to_string();
        let loss = loss_to_resumed(&env, &id);
        println!("| {mb} MB | local | {notice:.2} s | {loss:.2} s |");
        env.cleanup();

        let sshd = trainctl::testkit::Sshd::start();
        let work = tempfile::tempdir().unwrap();
        let env = Env::new(
            mb,
            &format!(
                "[providers.ssh]\naccept_new_host_keys = true\n[[providers.ssh.hosts]]\n\
                 name = \"lab1\"\naddress = \"127.0.0.1\"\nuser = \"root\"\nport = {}\n\
                 identity_file = \"{}\"\nremote_dir = \"{}/.trainctl\"\n",
                sshd.port,
                sshd.client_key.display(),
                work.path().display()
            ),
        );
        let id = env.ok(&["launch", "--provider", "ssh"]).trim().to_string();
        let notice = notice_to_safe(&env, &id);
        println!("| {mb} MB | ssh (127.0.0.1) | {notice:.2} s | see docs/benchmarks.md |");
        env.cleanup();

        let notice = aws_notice_to_safe(mb);
        println!(
            "| {mb} MB | aws on moto: IMDS spot notice → checkpoint in S3 | {notice:.2} s | - |"
        );
    }
    aws_launch_overhead();
}

/// An AWS environment on moto: machines that boot as real sshds, an IMDS emulator, a
/// bucket; EC2 and SSM calls go through a counting proxy, S3 straight to moto. Returned
/// with what must live as long as it.
fn aws_env(
    mb: u64,
    extra: &str,
) -> (
    Env,
    trainctl::testkit::Moto,
    trainctl::testkit::Ec2Machines,
    trainctl::testkit::Imds,
    trainctl::testkit::HttpFaults,
) {
    use trainctl::testkit::{Ec2Machines, HttpFaults, Imds, Moto};
    let moto = Moto::start();
    let imds = Imds::start();
    let faults = HttpFaults::start(moto.port, |_| None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ami = rt.block_on(async {
        let sdk = moto.sdk("us-east-1");
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(true)
                .build(),
        )
        .create_bucket()
        .bucket("bench")
        .send()
        .await
        .unwrap();
        let images = aws_sdk_ec2::Client::new(&sdk)
            .describe_images()
            .owners("amazon")
            .send()
            .await
            .unwrap();
        images.images()[0].image_id().unwrap().to_string()
    });
    let mut env = Env::new(mb, "");
    let machines = Ec2Machines::start(
        &moto,
        "us-east-1",
        env.dir.path().join("data/aws/id_ed25519.pub"),
    );
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!(
            "{cfg}[providers.aws]\nregions = [\"us-east-1\"]\nendpoint_url = \"{}\"\nssh_cidr = \"127.0.0.1/32\"\n\
             ami = \"{ami}\"\nssh_user = \"root\"\nimds_endpoint = \"{}\"\ncheckpoints_s3 = \"s3://bench/ck\"\n\
             s3_force_path_style = true\nproxy_command = {:?}\nendpoints = {{ s3 = \"{}\" }}\n{extra}",
            faults.endpoint(),
            imds.endpoint(),
            machines.proxy_command(),
            moto.endpoint()
        ),
    )
    .unwrap();
    env.vars = Moto::client_env(&env.dir.path().join("none"));
    (env, moto, machines, imds, faults)
}

const LAUNCH_G5_SPOT: [&str; 6] = [
    "launch",
    "--provider",
    "aws",
    "--type",
    "g5.xlarge",
    "--spot",
];

/// IMDS says the spot machine goes in two minutes → the checkpoint the job saved on
/// SIGTERM is in S3 (uploaded, recorded).
fn aws_notice_to_safe(mb: u64) -> f64 {
    let (env, _moto, _machines, imds, _faults) = aws_env(mb, "");
    let id = env.ok(&LAUNCH_G5_SPOT).trim().to_string();
    let secs = notice_to_safe_by(&env, &id, |_| imds.interrupt(120));
    env.cleanup();
    secs
}

/// What a launch costs beyond EC2's own waits: AWS API calls by action, and the wall time
/// of `trainctl launch` on moto (whose instances run at once and whose machines answer
/// SSH within ~0.2 s), median of 5, the first (key pair, security group made) apart.
fn aws_launch_overhead() {
    let (env, _moto, _machines, _imds, faults) = aws_env(1, "");
    let mut times = Vec::new();
    let mut calls: Vec<Vec<String>> = Vec::new();
    for _ in 0..6 {
        let before = faults.actions().len();
        let t = Instant::now();
        env.ok(&LAUNCH_G5_SPOT);
        times.push(t.elapsed().as_secs_f64());
        calls.push(faults.actions()[before..].to_vec());
    }
    let first = times[0];
    let mut rest = times[1..].to_vec();
    rest.sort_by(f64::total_cmp);
    let count = |c: &[String]| {
        let mut m: std::collections::BTreeMap<&str, usize> = Default::default();
        for a in c {
            *m.entry(a.as_str()).or_default() += 1;
        }
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!();
    println!("| aws launch on moto | wall time | AWS calls |");
    println!("|---|---|---|");
    println!(
        "| first (key pair, security group made) | {first:.2} s | {} ({}) |",
        calls[0].len(),
        count(&calls[0])
    );
    println!(
        "| later (median of 5) | {:.2} s | {} ({}) |",
        rest[2],
        calls[1].len(),
        count(&calls[1])
    );
    env.cleanup();
}
