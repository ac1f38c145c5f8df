//! Test and benchmark support: a real OpenSSH `sshd` on 127.0.0.1 with a free port, a temp
//! host key and an authorized client key, stopped (and its directory removed) when dropped.
//! Needs `/usr/sbin/sshd` and `ssh-keygen` (Debian: openssh-server, openssh-client).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "{prefix}-{}-{n}-{}",
            std::process::id(),
            crate::model::now_ms()
        ));
        std::fs::create_dir_all(&p).expect("creating a temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Sshd {
    pub dir: TempDir,
    pub port: u16,
    pub client_key: PathBuf,
    child: Child,
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "trainctl-test", "-f"])
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .expect("ssh-keygen (openssh-client) is needed");
    assert!(st.success());
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sshd {
    pub fn start() -> Sshd {
        let dir = TempDir::new("trainctl-sshd");
        let hk = dir.path().join("host_key");
        keygen(&hk);
        let client_key = dir.path().join("client_key");
        keygen(&client_key);
        std::fs::copy(
            dir.path().join("client_key.pub"),
            dir.path().join("authorized_keys"),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = free_port();
        let cfg = dir.path().join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPidFile {pid}\n\
                 UsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin yes\nSubsystem sftp internal-sftp\nLogLevel ERROR\nMaxSessions 64\nMaxStartups 64\n",
                hk = hk.display(),
                ak = dir.path().join("authorized_keys").display(),
                pid = dir.path().join("sshd.pid").display(),
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/sbin/sshd (openssh-server) is needed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Sshd {
            dir,
            port,
            client_key,
            child,
        }
    }

    /// A new client key protected by `passphrase`, authorized on this server.
    pub fn add_encrypted_key(&self, passphrase: &str) -> PathBuf {
        let k = self.dir.path().join("enc_key");
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", passphrase, "-C", "enc", "-f"])
            .arg(&k)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        let pubkey = std::fs::read_to_string(self.dir.path().join("enc_key.pub")).unwrap();
        let mut ak = std::fs::read_to_string(self.dir.path().join("authorized_keys")).unwrap();
        ak.push_str(&pubkey);
        std::fs::write(self.dir.path().join("authorized_keys"), ak).unwrap();
        k
    }

    /// Kill every connection this sshd serves (its session children), keeping the listener.
    pub fn kill_sessions(&self) {
        let me = self.child.id();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let fields: Vec<&str> = stat.rsplit(") ").next().unwrap_or("").split(' ').collect();
            if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(me) {
                // SAFETY: kill(2) on a pid read from /proc; no memory is touched.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill_sessions();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
