//! A real one-node Slurm cluster of its own for the tests: `munged` (its own key and
//! socket), `slurmctld` and `slurmd` on 127.0.0.1 with free ports, state, spool and logs in
//! a temp dir, two GPUs declared through `gres.conf` device files (plain files: nothing
//! reads them), job completions in a text file (`jobcomp/filetxt`: `sacct` needs
//! slurmdbd). Clients find it through `SLURM_CONF`. Dropped, its jobs are cancelled and
//! its daemons stopped. Needs Debian's `slurm-wlm` and `munge`, and root (slurmd).
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
    pub dir: TempDir,
    /// The cluster's `slurm.conf` (clients: `SLURM_CONF`).
    pub conf: PathBuf,
    pub ctld_port: u16,
}

impl Slurm {
    /// Start the cluster and wait until its node is idle (a few seconds).
    pub fn start() -> Slurm {
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
        let conf = format!(
            "ClusterName=tc\n\
             SlurmctldHost=localhost(127.0.0.1)\n\
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
             NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 Gres=gpu:2 State=UNKNOWN\n\
             PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP\n",
            sock = socket.display(),
            state = p("state"),
            spool = p("spool"),
            ctld_pid = p("run/ctld.pid"),
            d_pid = p("run/d.pid"),
            ctld_log = p("log/ctld.log"),
            d_log = p("log/d.log"),
            jobcomp = p("log/jobcomp"),
        );
        let conf_path = d.join("slurm.conf");
        std::fs::write(&conf_path, conf).expect("slurm.conf");
        std::fs::write(
            d.join("gres.conf"),
            format!(
                "AutoDetect=off\nNodeName=localhost Name=gpu File={}/dev/gpu[0-1]\n",
                d.display()
            ),
        )
        .expect("gres.conf");
        let s = Slurm {
            dir,
            conf: conf_path,
            ctld_port,
        };
        let ok = Command::new("slurmctld")
            .arg("-f")
            .arg(&s.conf)
            .arg("-i")
            .status()
            .expect("slurmctld (Debian: slurm-wlm)")
            .success();
        assert!(ok, "slurmctld did not start: {}", s.log("ctld.log"));
        let ok = Command::new("slurmd")
            .arg("-f")
            .arg(&s.conf)
            .args(["-N", "localhost"])
            .status()
            .expect("slurmd (Debian: slurm-wlm)")
            .success();
        assert!(ok, "slurmd did not start: {}", s.log("d.log"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = s.run("sinfo", &["-h", "-o", "%T"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state == "idle" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the Slurm node never became idle ({state}); slurmctld: {}\nslurmd: {}",
                s.log("ctld.log"),
                s.log("d.log")
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
        for f in ["run/d.pid", "run/ctld.pid"] {
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
