//! A real one-node Slurm cluster of its own for the tests: `munged` (its own key and
//! socket), `slurmctld` and `slurmd` on 127.0.0.1 with free ports, state, spool and logs in
//! a temp dir, two GPUs declared through `gres.conf` device files (plain files: nothing
//! reads them), job completions in a text file (`jobcomp/filetxt`: `sacct` needs
//! slurmdbd). Clients find it through `SLURM_CONF`. Dropped, its jobs are cancelled and
//! its daemons stopped. Needs Debian's `slurm-wlm` and `munge`, and root (slurmd).
//!
//! [`Slurm::start_nodes`] makes a cluster of several nodes on one machine: each slurmd in
//! a network namespace of its own (entered with `nsenter --net`: `ip netns exec` would
//! mount a sysfs without the cgroup filesystem slurmd wants), joined to slurmctld by a
//! bridge on a private /24, its spool, pid and log files per node (`%n`); the filesystem
//! stays shared, as a cluster's home is.
//!
//! Found making it: `slurmd -N localhost` names the node whatever the host is called; a
//! gres count with no device files is read as 0 GPUs (the node drains), so the fixture
//! makes the files; proctrack/linuxproc and task/none need no cgroups; a fresh state dir
//! per cluster (`slurmctld -i` still keeps an old drain reason).

use super::{TempDir, free_port};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub struct Slurm {
    /// The node names (`localhost`, or `node1`, `node2`…).
    pub nodes: Vec<String>,
    /// The cluster's `slurm.conf` (clients: `SLURM_CONF`).
    pub conf: PathBuf,
    pub ctld_port: u16,
    /// Dropped after the daemons (declared after `dir`'s users, before `dir`).
    net: Option<Net>,
    pub dir: TempDir,
}

/// The network namespaces and bridge of a cluster of several nodes (see
/// [`Slurm::start_nodes`]); removed when dropped.
struct Net {
    bridge: String,
    namespaces: Vec<String>,
}

impl Net {
    /// A bridge with `prefix.1/24` and `n` namespaces joined to it, node `k` (from 1) at
    /// `prefix.(k+1)`.
    fn make(tag: &str, prefix: &str, n: usize) -> Result<Net, String> {
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("ip: {e} (Debian: iproute2)"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        let mut net = Net {
            bridge: format!("tcb{tag}"),
            namespaces: Vec::new(),
        };
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{prefix}.1/24"), "dev", &net.bridge])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        for k in 1..=n {
            let ns = format!("tcs{tag}n{k}");
            ip(&["netns", "add", &ns])?;
            net.namespaces.push(ns.clone());
            let veth = format!("tcv{tag}n{k}");
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &net.bridge, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{prefix}.{}/24", k + 1),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // A namespace's end takes its veth pair with it.
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

impl Slurm {
    /// Start the cluster and wait until its node is idle (a few seconds).
    pub fn start() -> Slurm {
        Self::start_with(1)
    }

    /// A cluster of `n` nodes (`node1`…): each node's `slurmd` in a network namespace of
    /// its own, joined to slurmctld's by a bridge on a private /24, so each node has an
    /// address of its own as on a real cluster (the filesystem is shared, as a cluster's
    /// home is). Needs root and `ip` (iproute2).
    pub fn start_nodes(n: usize) -> Slurm {
        assert!(n >= 2, "one node: Slurm::start");
        Self::start_with(n)
    }

    fn start_with(nodes: usize) -> Slurm {
        let dir = TempDir::new("trainctl-slurm");
        let d = dir.path().to_path_buf();
        for sub in ["state", "spool", "log", "run", "munge", "dev"] {
            std::fs::create_dir_all(d.join(sub)).expect("slurm dirs");
        }
        use std::os::unix::fs::PermissionsExt;
        let munge = d.join("munge");
        std::fs::set_permissions(&munge, std::fs::Permissions::from_mode(0o700)).ok();
        let mut key = vec![0u8; 1024];
        {
            use std::io::Read;
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut key))
                .expect("/dev/urandom");
        }
        let key_file = munge.join("munge.key");
        std::fs::write(&key_file, key).expect("munge key");
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o400)).ok();
        let socket = munge.join("sock");
        let status = Command::new("munged")
            .arg("--force")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", key_file.display()))
            .arg(format!("--log-file={}", munge.join("log").display()))
            .arg(format!("--pid-file={}", munge.join("pid").display()))
            .arg(format!("--seed-file={}", munge.join("seed").display()))
            .status()
            .expect("munged (Debian: munge)");
        assert!(status.success(), "munged did not start");
        for g in ["gpu0", "gpu1"] {
            std::fs::write(d.join("dev").join(g), b"").expect("gpu files");
        }
        let (ctld_port, slurmd_port) = (free_port(), free_port());
        let p = |s: &str| d.join(s).display().to_string();
        // Several nodes: a namespace each, on a /24 picked at random among 10.234.x.
        let (net, ctld_addr, node_lines, names) = if nodes == 1 {
            (
                None,
                "127.0.0.1".to_string(),
                "NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 Gres=gpu:2 State=UNKNOWN\n"
                    .to_string(),
                vec!["localhost".to_string()],
            )
        } else {
            let mut last = String::new();
            let mut made = None;
            for _ in 0..8 {
                let mut r = [0u8; 3];
                {
                    use std::io::Read;
                    std::fs::File::open("/dev/urandom")
                        .and_then(|mut f| f.read_exact(&mut r))
                        .expect("/dev/urandom");
                }
                let tag = format!("{:02x}{:02x}", r[0], r[1]);
                let prefix = format!("10.234.{}", r[2]);
                match Net::make(&tag, &prefix, nodes) {
                    Ok(n) => {
                        made = Some((n, prefix));
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            let (net, prefix) = made.unwrap_or_else(|| panic!("network namespaces: {last}"));
            let names: Vec<String> = (1..=nodes).map(|k| format!("node{k}")).collect();
            let lines: String = names
                .iter()
                .enumerate()
                .map(|(k, n)| {
                    format!(
                        "NodeName={n} NodeAddr={prefix}.{} CPUs=2 RealMemory=1000 Gres=gpu:2 State=UNKNOWN\n",
                        k + 2
                    )
                })
                .collect();
            (Some(net), format!("{prefix}.1"), lines, names)
        };
        let conf = format!(
            "ClusterName=tc\n\
             SlurmctldHost=localhost({ctld_addr})\n\
             SlurmctldPort={ctld_port}\n\
             SlurmdPort={slurmd_port}\n\
             SlurmUser=root\n\
             SlurmdUser=root\n\
             AuthType=auth/munge\n\
             AuthInfo=socket={sock}\n\
             CredType=cred/munge\n\
             StateSaveLocation={state}\n\
             SlurmdSpoolDir={spool}\n\
             SlurmctldPidFile={ctld_pid}\n\
             SlurmdPidFile={d_pid}\n\
             SlurmctldLogFile={ctld_log}\n\
             SlurmdLogFile={d_log}\n\
             ProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\n\
             JobAcctGatherType=jobacct_gather/none\n\
             AccountingStorageType=accounting_storage/none\n\
             JobCompType=jobcomp/filetxt\n\
             JobCompLoc={jobcomp}\n\
             SelectType=select/cons_tres\n\
             SelectTypeParameters=CR_Core\n\
             GresTypes=gpu\n\
             MpiDefault=none\n\
             ReturnToService=2\n\
             SchedulerType=sched/backfill\n\
             SchedulerParameters=sched_interval=1\n\
             KillWait=5\n\
             {node_lines}\
             PartitionName=debug Nodes={all} Default=YES MaxTime=INFINITE State=UP\n",
            all = names.join(","),
            sock = socket.display(),
            state = p("state"),
            spool = p("spool/%n"),
            ctld_pid = p("run/ctld.pid"),
            d_pid = p("run/d-%n.pid"),
            ctld_log = p("log/ctld.log"),
            d_log = p("log/d-%n.log"),
            jobcomp = p("log/jobcomp"),
        );
        let conf_path = d.join("slurm.conf");
        std::fs::write(&conf_path, conf).expect("slurm.conf");
        std::fs::write(
            d.join("gres.conf"),
            format!(
                "AutoDetect=off\nNodeName={} Name=gpu File={}/dev/gpu[0-1]\n",
                names.join(","),
                d.display()
            ),
        )
        .expect("gres.conf");
        let s = Slurm {
            nodes: names.clone(),
            conf: conf_path,
            ctld_port,
            net,
            dir,
        };
        let ok = Command::new("slurmctld")
            .arg("-f")
            .arg(&s.conf)
            .arg("-i")
            .status()
            .expect("slurmctld (Debian: slurm-wlm)")
            .success();
        assert!(ok, "slurmctld did not start: {}", s.log("ctld.log"));
        for (k, node) in s.nodes.iter().enumerate() {
            std::fs::create_dir_all(s.dir.path().join("spool").join(node)).expect("spool");
            // Each node's slurmd in its namespace (one node: here).
            let mut cmd = match &s.net {
                // Only its network: `ip netns exec` would also mount a sysfs of its
                // own, without the cgroup filesystem slurmd wants.
                Some(net) => {
                    let mut c = Command::new("nsenter");
                    c.arg(format!("--net=/run/netns/{}", net.namespaces[k]))
                        .arg("slurmd");
                    c
                }
                None => Command::new("slurmd"),
            };
            let ok = cmd
                .arg("-f")
                .arg(&s.conf)
                .args(["-N", node])
                .status()
                .expect("slurmd (Debian: slurm-wlm)")
                .success();
            assert!(
                ok,
                "slurmd did not start: {}",
                s.log(&format!("d-{node}.log"))
            );
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = s.run("sinfo", &["-h", "-N", "-o", "%T"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state.lines().count() == s.nodes.len() && state.lines().all(|l| l == "idle") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the Slurm node never became idle ({state}); slurmctld: {}\nslurmd: {}",
                s.log("ctld.log"),
                s.log(&format!("d-{}.log", s.nodes[0]))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    /// `KEY=VALUE` environment every client of this cluster needs.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("SLURM_CONF".into(), self.conf.display().to_string())]
    }

    /// A Slurm client command (`sbatch`, `squeue`, …) against this cluster, here.
    pub fn run(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new(cmd)
            .args(args)
            .envs(self.env())
            .output()
            .unwrap_or_else(|e| panic!("{cmd}: {e}"))
    }

    /// The tail of one of its logs, for a failure's message.
    pub fn log(&self, name: &str) -> String {
        let t = std::fs::read_to_string(self.dir.path().join("log").join(name)).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The completion records (`jobcomp/filetxt`): one line per ended job.
    pub fn completions(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log/jobcomp")).unwrap_or_default()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        // Its jobs first (their steps are processes of this machine), then the daemons.
        let _ = self.run("scancel", &["--full", "-u", "root"]);
        let _ = self.run("scontrol", &["shutdown"]);
        let pid = |f: &str| {
            std::fs::read_to_string(self.dir.path().join(f))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut files: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("run/d-{n}.pid"))
            .collect();
        files.push("run/ctld.pid".into());
        for f in &files {
            if let Some(p) = pid(f) {
                while Instant::now() < deadline && unsafe { libc::kill(p, 0) } == 0 {
                    std::thread::sleep(Duration::from_millis(50));
                }
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        if let Some(p) = pid("munge/pid") {
            unsafe { libc::kill(p, libc::SIGTERM) };
        }
    }
}
