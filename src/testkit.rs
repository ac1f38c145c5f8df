//! Test and benchmark support: a real OpenSSH `sshd` on 127.0.0.1 with a free port, a temp
//! host key and an authorized client key, stopped (and its directory removed) when dropped.
//! Needs `/usr/sbin/sshd` and `ssh-keygen` (Debian: openssh-server, openssh-client).

pub mod clouds;
pub mod docker;
pub mod proxy;
pub mod slurm;

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
    /// The login user of a password machine ([`Sshd::start_password_machine`]); None: root.
    pub user: Option<String>,
    owned_user: Option<TestUser>,
    child: Child,
}

/// A system user made for tests (no home of its own: each machine sets HOME), removed
/// when dropped.
pub struct TestUser {
    pub name: String,
}

impl TestUser {
    pub fn create() -> TestUser {
        let mut seed = Vec::new();
        seed.extend_from_slice(&crate::model::now_ms().to_le_bytes());
        seed.extend_from_slice(&std::process::id().to_le_bytes());
        seed.extend_from_slice(&free_port().to_le_bytes());
        let name = format!("tcpw{}", &blake3::hash(&seed).to_hex()[..10]);
        let mut last = String::new();
        for _ in 0..50 {
            let out = Command::new("useradd")
                .args(["-M", "-N", "-s", "/bin/sh", "-d", "/nonexistent"])
                .arg(&name)
                .output()
                .expect("useradd (passwd) is needed");
            if out.status.success() {
                return TestUser { name };
            }
            last = String::from_utf8_lossy(&out.stderr).to_string();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("useradd {name}: {last}");
    }

    /// Give the user `password`.
    pub fn set_password(&self, password: &str) {
        chpasswd(&self.name, password);
    }
}

/// Give system user `name` the password `password`.
fn chpasswd(name: &str, password: &str) {
    let mut child = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .spawn()
        .expect("chpasswd (passwd) is needed");
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{name}:{password}").unwrap();
    assert!(child.wait().unwrap().success(), "chpasswd failed");
}

/// SIGKILL every process running as user `name`.
fn kill_processes_of(name: &str) {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return;
    };
    // SAFETY: getpwnam with a NUL-terminated name; the record is read at once.
    let uid = unsafe {
        let pw = libc::getpwnam(cname.as_ptr());
        if pw.is_null() {
            return;
        }
        (*pw).pw_uid
    };
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let real = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok());
        if real == Some(uid) {
            // SAFETY: kill(2) on a pid read from /proc; no memory is touched.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // userdel refuses a user whose processes still run (a job the test left behind).
        kill_processes_of(&self.name);
        for _ in 0..20 {
            // -f: a session process that is not reaped yet still counts as "in use".
            let ok = Command::new("userdel")
                .arg("-f")
                .arg(&self.name)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
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
        Sshd::start_with(None, None, false, None)
    }

    /// A machine of its own (HOME is `<dir>/home`, root logs in with the client key and
    /// any key appended to `<dir>/authorized_keys`).
    pub fn start_home() -> Sshd {
        Sshd::start_with(None, None, true, None)
    }

    /// A stand-in for a GPU cloud's machine reached with a password: a system user made for
    /// this server alone (removed when dropped) whose HOME is `<dir>/home`, password
    /// authentication on (and keyboard-interactive through PAM), and the keys in
    /// `<home>/.ssh/authorized_keys` accepted, so a key installed after a password login
    /// works. Set the password with [`Sshd::set_password`].
    pub fn start_password_machine() -> Sshd {
        let user = TestUser::create();
        let mut s = Sshd::start_with(None, None, true, Some(user.name.clone()));
        s.owned_user = Some(user);
        s
    }

    /// [`Sshd::start_password_machine`] logging in `user`, a user shared with other
    /// machines (a cloud image's fixed login user).
    pub fn start_password_machine_as(user: &TestUser) -> Sshd {
        Sshd::start_with(None, None, true, Some(user.name.clone()))
    }

    /// Give the password machine's user `password` (as a cloud does when it builds the
    /// machine with the password the launch asked for).
    pub fn set_password(&self, password: &str) {
        chpasswd(self.user.as_deref().expect("a password machine"), password);
    }

    /// A stand-in for a cloud machine: it presents `host_key` (an OpenSSH private key, as
    /// the machine's user-data gave it), lets in `authorized` (a public key line) besides
    /// the test client key, and gives every session its own HOME (`<dir>/home`), so two
    /// machines never share a disk.
    pub fn start_machine(host_key: &str, authorized: &str) -> Sshd {
        Sshd::start_with(Some(host_key), Some(authorized), true, None)
    }

    fn start_with(
        host_key: Option<&str>,
        authorized: Option<&str>,
        own_home: bool,
        user: Option<String>,
    ) -> Sshd {
        let dir = TempDir::new("trainctl-sshd");
        let hk = dir.path().join("host_key");
        match host_key {
            Some(k) => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::write(&hk, k).unwrap();
                std::fs::set_permissions(&hk, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
            None => keygen(&hk),
        }
        let client_key = dir.path().join("client_key");
        keygen(&client_key);
        let mut ak = std::fs::read_to_string(dir.path().join("client_key.pub")).unwrap();
        if let Some(a) = authorized {
            ak.push_str(a.trim());
            ak.push('\n');
        }
        std::fs::write(dir.path().join("authorized_keys"), ak).unwrap();
        let home = dir.path().join("home");
        let mut extra = String::new();
        if own_home {
            std::fs::create_dir_all(&home).unwrap();
            // The machine's tools are this host's (an image with python3 and boto3, as a
            // Deep Learning AMI has the aws CLI): the same PATH.
            let path = std::env::var("PATH").unwrap_or_default();
            extra = format!("SetEnv HOME={} PATH={path}\n", home.display());
        }
        let mut auth =
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no".to_string();
        let mut keys_files = dir.path().join("authorized_keys").display().to_string();
        if let Some(u) = &user {
            std::fs::create_dir_all(&home).unwrap();
            let st = Command::new("chown").arg(u).arg(&home).status().unwrap();
            assert!(st.success());
            auth =
                "PasswordAuthentication yes\nKbdInteractiveAuthentication yes\nUsePAM yes".into();
            keys_files.push_str(&format!(" {}/.ssh/authorized_keys", home.display()));
        }
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = free_port();
        let cfg = dir.path().join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPidFile {pid}\n\
                 {auth}\nStrictModes no\n\
                 PermitRootLogin yes\nSubsystem sftp internal-sftp\nLogLevel ERROR\nMaxSessions 64\nMaxStartups 64\n{extra}",
                hk = hk.display(),
                ak = keys_files,
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
            user,
            owned_user: None,
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

    /// Read `sshd_config` again (SIGHUP: sshd re-executes itself), waiting until it listens.
    pub fn reload(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGHUP);
        }
        std::thread::sleep(Duration::from_millis(300));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not come back");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The OpenSSH client command (for `rsync -e`) that reaches this server on `port` (its
    /// own, or a proxy's in front of it) as root, trusting only its host key, pinned in a
    /// known_hosts file written under `dir`.
    pub fn openssh_command(&self, port: u16, dir: &Path) -> String {
        let kh = dir.join("known_hosts");
        let hk = std::fs::read_to_string(self.dir.path().join("host_key.pub"))
            .expect("the server's host key");
        let mut parts = hk.split_whitespace();
        std::fs::write(
            &kh,
            format!(
                "[127.0.0.1]:{port} {} {}\n",
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default()
            ),
        )
        .expect("writing known_hosts");
        format!(
            "ssh -p {port} -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
            self.client_key.display(),
            kh.display()
        )
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
        // `owned_user` (dropped after this) removes its user once the sessions are gone.
    }
}

// ------------------------------------------------------------------------------- AWS

/// A real `moto_server` (PyPI `moto[server]`) on 127.0.0.1 and a free port, stopped when
/// dropped. Its EC2, S3 and SSM are the AWS APIs the `aws` provider's tests talk to.
pub struct Moto {
    pub port: u16,
    child: Child,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (pip install 'moto[server]') is needed");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto { port, child }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The SDK configuration a test talks to moto with (static test credentials, no
    /// retries: a retry would hide a failure).
    pub fn sdk(&self, region: &str) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()))
            .endpoint_url(self.endpoint())
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(
                    aws_credential_types::Credentials::new(
                        "testing", "testing", None, None, "test",
                    ),
                ),
            )
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build()
    }

    /// The environment a `trainctl` talking to this moto gets: test credentials, and
    /// nothing read from this machine's own AWS setup (`no_files` names files that do not
    /// exist; IMDS, profile and region variables off).
    pub fn client_env(no_files: &Path) -> Vec<(String, String)> {
        let none = no_files.display().to_string();
        let mut v: Vec<(String, String)> = [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", none.as_str()),
            ("AWS_SHARED_CREDENTIALS_FILE", none.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for k in [
            "AWS_PROFILE",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_SESSION_TOKEN",
        ] {
            v.push((k.to_string(), String::new()));
        }
        v
    }

    pub fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.sdk(region))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A ProxyCommand for tests: `python3 PROXY MAP HOST` connects to the loopback port that
/// MAP (lines `HOST PORT`) gives HOST, waiting up to 10 s for the line to appear, and
/// relays bytes both ways. Nothing leaves 127.0.0.1: the machines' public addresses only
/// name which local sshd stands in for them.
pub const PROXY_PY: &str = r#"
import os, socket, sys, time, select
mapfile, host = sys.argv[1], sys.argv[2]
try:
    if host in open(mapfile + ".blocked").read().split():
        sys.stderr.write("connect to %s port 22: Connection refused\n" % host); sys.exit(255)
except FileNotFoundError: pass
port, deadline = None, time.time() + 10
while port is None and time.time() < deadline:
    try:
        for line in open(mapfile):
            h, p = line.split()[:2]
            if h == host: port = int(p)
    except FileNotFoundError: pass
    if port is None: time.sleep(0.1)
if port is None:
    sys.stderr.write("no machine answers at %s\n" % host); sys.exit(1)
s = socket.create_connection(("127.0.0.1", port))
inp, out = sys.stdin.fileno(), sys.stdout.fileno()
while True:
    r, _, _ = select.select([inp, s], [], [])
    if inp in r:
        b = os.read(inp, 65536)
        if not b: s.shutdown(socket.SHUT_WR); inp = -1
        else: s.sendall(b)
    if s in r:
        b = s.recv(65536)
        if not b: break
        os.write(out, b)
    if inp == -1:
        while True:
            b = s.recv(65536)
            if not b: sys.exit(0)
            os.write(out, b)
"#;

/// EC2's side of a machine's life, for tests against moto (which runs nothing): each
/// instance that moto reports running gets a real sshd presenting the host key its
/// user-data carries and accepting the key pair's public key, reachable through
/// [`PROXY_PY`] at the instance's public address; an instance moto reports terminated
/// loses its sshd (its machine is gone). Stops when dropped.
pub struct Ec2Machines {
    pub dir: TempDir,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ec2Machines {
    /// Boot the instances of `region` in `moto`; `authorized` is the public key file the
    /// provider logs in with (it may appear later: read when a machine boots).
    pub fn start(moto: &Moto, region: &str, authorized: PathBuf) -> Ec2Machines {
        let dir = TempDir::new("trainctl-ec2");
        std::fs::write(dir.path().join("proxy.py"), PROXY_PY).unwrap();
        std::fs::write(dir.path().join("map"), "").unwrap();
        let map = dir.path().join("map");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ec2 = moto.ec2(region);
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut machines: std::collections::HashMap<String, Sshd> = Default::default();
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let seen = rt.block_on(async { ec2.describe_instances().send().await });
                if let Ok(seen) = seen {
                    for i in seen.reservations().iter().flat_map(|r| r.instances()) {
                        let id = i.instance_id().unwrap_or_default().to_string();
                        let state = i
                            .state()
                            .and_then(|s| s.name())
                            .map(|n| n.as_str().to_string());
                        let running = state.as_deref() == Some("running");
                        if !running {
                            machines.remove(&id);
                            continue;
                        }
                        if machines.contains_key(&id) {
                            continue;
                        }
                        let Some(ip) = i.public_ip_address() else {
                            continue;
                        };
                        let ud = rt.block_on(async {
                            ec2.describe_instance_attribute()
                                .instance_id(&id)
                                .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
                                .send()
                                .await
                        });
                        let Some(key) = ud
                            .ok()
                            .and_then(|a| a.user_data().and_then(|u| u.value()).map(str::to_string))
                            .and_then(|b| aws_smithy_types::base64::decode(b).ok())
                            .and_then(|b| String::from_utf8(b).ok())
                            .and_then(|t| host_key_of_user_data(&t))
                        else {
                            continue;
                        };
                        let Ok(auth) = std::fs::read_to_string(&authorized) else {
                            continue;
                        };
                        let sshd = Sshd::start_machine(&key, &auth);
                        use std::io::Write;
                        let mut f = std::fs::OpenOptions::new().append(true).open(&map).unwrap();
                        writeln!(
                            f,
                            "{ip} {} {} {id}",
                            sshd.port,
                            sshd.dir.path().join("home").display()
                        )
                        .unwrap();
                        machines.insert(id, sshd);
                    }
                }
                std::thread::sleep(Duration::from_millis(150));
            }
        });
        Ec2Machines {
            dir,
            stop,
            thread: Some(thread),
        }
    }

    /// The `proxy_command` that reaches these machines.
    pub fn proxy_command(&self) -> String {
        format!(
            "python3 {} {} %h",
            self.dir.path().join("proxy.py").display(),
            self.dir.path().join("map").display()
        )
    }

    /// Refuse (or admit again) SSH to the machine of EC2 instance `instance`, as a
    /// security group that no longer admits this address would.
    pub fn block_ssh(&self, instance: &str, blocked: bool) {
        let map = std::fs::read_to_string(self.dir.path().join("map")).unwrap_or_default();
        let ip = map
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.get(3) == Some(&instance)).then(|| f[0].to_string())
            })
            .unwrap_or_else(|| panic!("no machine for {instance}"));
        let path = self.dir.path().join("map.blocked");
        let mut list: Vec<String> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .split_whitespace()
            .filter(|h| *h != ip)
            .map(str::to_string)
            .collect();
        if blocked {
            list.push(ip);
        }
        std::fs::write(&path, list.join("\n") + "\n").unwrap();
    }

    /// Each booted machine's HOME (its disk), in boot order.
    pub fn homes(&self) -> Vec<PathBuf> {
        std::fs::read_to_string(self.dir.path().join("map"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(2).map(PathBuf::from))
            .collect()
    }
}

impl Drop for Ec2Machines {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The ed25519 private host key in a cloud-config's `ssh_keys`, as cloud-init reads it.
pub fn host_key_of_user_data(text: &str) -> Option<String> {
    let start = text.find("-----BEGIN OPENSSH PRIVATE KEY-----")?;
    let end = text[start..].find("-----END OPENSSH PRIVATE KEY-----")? + start;
    let block = &text[start..end + "-----END OPENSSH PRIVATE KEY-----".len()];
    let lines: Vec<&str> = block.lines().map(str::trim).collect();
    Some(lines.join("\n") + "\n")
}

/// A loopback HTTP proxy in front of an emulator that can answer a request itself (an
/// error the emulator never gives, such as EC2's `InsufficientInstanceCapacity`) and
/// records every request's form body (the AWS query `Action=...` calls, in order). One
/// request per connection; everything else is forwarded as is.
pub struct HttpFaults {
    pub port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

type FaultRule = dyn Fn(&str) -> Option<(u16, String)> + Send + Sync;

impl HttpFaults {
    pub fn start(
        upstream: u16,
        rule: impl Fn(&str) -> Option<(u16, String)> + Send + Sync + 'static,
    ) -> HttpFaults {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let rule: std::sync::Arc<FaultRule> = std::sync::Arc::new(rule);
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (rule, seen) = (rule.clone(), seen2.clone());
                std::thread::spawn(move || {
                    let _ = serve_one(conn, upstream, &*rule, &seen);
                });
            }
        });
        HttpFaults { port, seen }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `Action` of every query-protocol request so far (EC2, SSM's JSON target too).
    pub fn actions(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| {
                let b = r.split_once('\n').map_or("", |(_, b)| b);
                b.split('&')
                    .find_map(|kv| kv.strip_prefix("Action="))
                    .map(str::to_string)
                    .or_else(|| b.strip_prefix("X-Amz-Target: ").map(str::to_string))
            })
            .collect()
    }

    /// The request line of every request so far (`PUT /bucket/key?partNumber=2&... HTTP/1.1`).
    pub fn request_lines(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.split('\n').next().unwrap_or("").to_string())
            .collect()
    }
}

/// EC2's error document.
pub fn ec2_error(code: &str, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>fault-{code}</RequestID></Response>"
    )
}

fn serve_one(
    mut c: std::net::TcpStream,
    upstream: u16,
    rule: &FaultRule,
    seen: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let Some((head, buf, head_end)) = read_request(&mut c)? else {
        return Ok(());
    };
    let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
    let target = header(&head, "x-amz-target");
    let line = head.lines().next().unwrap_or("").to_string();
    seen.lock().unwrap().push(match target {
        Some(t) => format!("{line}\nX-Amz-Target: {t}"),
        None => format!("{line}\n{body}"),
    });
    if let Some((status, doc)) = rule(&body) {
        let resp = format!(
            "HTTP/1.1 {status} Fault\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{doc}",
            doc.len()
        );
        c.write_all(resp.as_bytes())?;
        return Ok(());
    }
    // Forward with `Connection: close`, so the answer ends with the upstream's EOF.
    let mut head_fwd = String::new();
    for l in head.split("\r\n") {
        let lower = l.to_ascii_lowercase();
        if lower.starts_with("connection:") || lower.starts_with("expect:") || l.is_empty() {
            continue;
        }
        head_fwd.push_str(l);
        head_fwd.push_str("\r\n");
    }
    head_fwd.push_str("Connection: close\r\n\r\n");
    let mut u = std::net::TcpStream::connect(("127.0.0.1", upstream))?;
    u.write_all(head_fwd.as_bytes())?;
    u.write_all(&buf[head_end..])?;
    // Read the answer to its length (an upstream may be slow to close), else to EOF.
    let mut resp = Vec::new();
    let mut chunk = [0u8; 65536];
    let mut want: Option<usize> = None;
    loop {
        if let Some(w) = want
            && resp.len() >= w
        {
            break;
        }
        let n = u.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        resp.extend_from_slice(&chunk[..n]);
        if want.is_none()
            && let Some(p) = resp.windows(4).position(|w| w == b"\r\n\r\n")
        {
            let head = String::from_utf8_lossy(&resp[..p]);
            want = header(&head, "content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .map(|len| p + 4 + len);
        }
    }
    c.write_all(&resp)?;
    Ok(())
}

/// The value of header `name` (any case) in an HTTP head.
pub(crate) fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// One HTTP/1.1 request from `c`: its head, the bytes read (head and body) and where the
/// body starts. None when the client closed first.
pub(crate) fn read_request(
    c: &mut std::net::TcpStream,
) -> std::io::Result<Option<(String, Vec<u8>, usize)>> {
    use std::io::{Read, Write};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        let n = c.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    // A client that asks to be told to go on (the S3 SDK for bodies) waits for it.
    if head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("expect: 100-continue"))
    {
        c.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let len = header(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = c.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some((head, buf, head_end)))
}

/// SSM Run Command as the agent on [`Ec2Machines`] would run it (moto records
/// `SendCommand` and runs nothing): `AWS-RunShellScript` commands run with `sh` in the
/// machine's HOME; `GetCommandInvocation` answers `InvocationDoesNotExist` the first time
/// (as SSM may right after SendCommand), `InProgress` while the script runs, then
/// `Success`/`Failed` with its exit code and output cut at SSM's 24 000 characters. An
/// instance with no machine is `InvalidInstanceId`, as an unmanaged instance is. Other
/// SSM operations are refused. One request per connection.
pub struct SsmAgent {
    pub port: u16,
    scripts: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[derive(Default)]
struct Invocation {
    asked: u32,
    done: Option<(i32, String, String)>,
}

type Invocations = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Invocation>>>;

impl SsmAgent {
    /// Run commands on the machines of `machines`.
    pub fn start(machines: &Ec2Machines) -> SsmAgent {
        let map = machines.dir.path().join("map");
        let scripts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let invs: Invocations = Default::default();
        let scripts2 = scripts.clone();
        let port = json_server(std::sync::Arc::new(move |target, req| {
            ssm_answer(target, req, &map, &scripts2, &invs)
        }));
        SsmAgent { port, scripts }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `commands` of every SendCommand so far.
    pub fn scripts(&self) -> Vec<String> {
        self.scripts.lock().unwrap().clone()
    }
}

type JsonHandler = dyn Fn(&str, &serde_json::Value) -> (u16, serde_json::Value) + Send + Sync;

/// A loopback server of an AWS JSON protocol (`X-Amz-Target` names the operation): each
/// request's target and body go to `handler`, whose (status, document) is the answer;
/// one request per connection. Returns the port.
fn json_server(handler: std::sync::Arc<JsonHandler>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let handler = handler.clone();
            std::thread::spawn(move || {
                let _ = json_serve_one(conn, &*handler);
            });
        }
    });
    port
}

fn json_serve_one(mut c: std::net::TcpStream, handler: &JsonHandler) -> std::io::Result<()> {
    use std::io::Write;
    let Some((head, buf, head_end)) = read_request(&mut c)? else {
        return Ok(());
    };
    let target = header(&head, "x-amz-target")
        .unwrap_or_default()
        .to_string();
    let req: serde_json::Value = serde_json::from_slice(&buf[head_end..]).unwrap_or_default();
    let (status, doc) = handler(&target, &req);
    let body = doc.to_string();
    let reason = if status == 200 { "OK" } else { "Bad Request" };
    c.write_all(
        format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: testkit\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )?;
    Ok(())
}

fn json_error(code: &str, msg: &str) -> (u16, serde_json::Value) {
    (400, serde_json::json!({"__type": code, "message": msg}))
}

fn ssm_answer(
    target: &str,
    req: &serde_json::Value,
    map: &Path,
    scripts: &std::sync::Mutex<Vec<String>>,
    invs: &Invocations,
) -> (u16, serde_json::Value) {
    let error = json_error;
    match target {
        "AmazonSSM.SendCommand" => {
            let instance = req["InstanceIds"][0].as_str().unwrap_or("").to_string();
            let home = std::fs::read_to_string(map)
                .unwrap_or_default()
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(' ').collect();
                    (f.get(3) == Some(&instance.as_str())).then(|| PathBuf::from(f[2]))
                });
            match (req["DocumentName"].as_str(), home) {
                (Some("AWS-RunShellScript"), Some(home)) => {
                    let script = req["Parameters"]["commands"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str())
                                .collect::<Vec<_>>()
                                .join("\n")
                        })
                        .unwrap_or_default();
                    scripts.lock().unwrap().push(script.clone());
                    let id = format!("{:032x}", rand_u128());
                    invs.lock()
                        .unwrap()
                        .insert(id.clone(), Invocation::default());
                    let (invs, id2) = (invs.clone(), id.clone());
                    std::thread::spawn(move || {
                        let out = std::process::Command::new("sh")
                            .arg("-c")
                            .arg(&script)
                            .current_dir(&home)
                            .env("HOME", &home)
                            .stdin(std::process::Stdio::null())
                            .output();
                        let done = match out {
                            Ok(o) => (
                                o.status.code().unwrap_or(-1),
                                String::from_utf8_lossy(&o.stdout).to_string(),
                                String::from_utf8_lossy(&o.stderr).to_string(),
                            ),
                            Err(e) => (-1, String::new(), e.to_string()),
                        };
                        if let Some(i) = invs.lock().unwrap().get_mut(&id2) {
                            i.done = Some(done);
                        }
                    });
                    (
                        200,
                        serde_json::json!({"Command": {"CommandId": id, "DocumentName": "AWS-RunShellScript",
                            "InstanceIds": [instance], "Status": "Pending"}}),
                    )
                }
                (Some("AWS-RunShellScript"), None) => error(
                    "InvalidInstanceId",
                    &format!("Instances [[{instance}]] not in a valid state for account"),
                ),
                _ => error("InvalidDocument", "only AWS-RunShellScript here"),
            }
        }
        "AmazonSSM.GetCommandInvocation" => {
            let id = req["CommandId"].as_str().unwrap_or("");
            let mut invs = invs.lock().unwrap();
            match invs.get_mut(id) {
                Some(i) if i.asked == 0 => {
                    i.asked += 1;
                    error("InvocationDoesNotExist", "")
                }
                Some(i) => {
                    i.asked += 1;
                    let cut = |s: &str| s.chars().take(24_000).collect::<String>();
                    match &i.done {
                        None => (
                            200,
                            serde_json::json!({"CommandId": id, "Status": "InProgress",
                            "StatusDetails": "InProgress", "ResponseCode": -1}),
                        ),
                        Some((code, out, err)) => {
                            let st = if *code == 0 { "Success" } else { "Failed" };
                            (
                                200,
                                serde_json::json!({"CommandId": id, "InstanceId": req["InstanceId"],
                                "Status": st, "StatusDetails": st, "ResponseCode": code,
                                "StandardOutputContent": cut(out), "StandardErrorContent": cut(err)}),
                            )
                        }
                    }
                }
                None => error("InvalidCommandId", id),
            }
        }
        "AmazonSSM.CancelCommand" => (200, serde_json::json!({})),
        other => error("UnknownOperationException", other),
    }
}

/// The AWS Price List Query API (`AWSPriceListService.GetProducts`) for EC2, serving the
/// documented shapes: each product a JSON *string* in `PriceList` with its attributes and
/// `terms.OnDemand.<sku>.<offer>.priceDimensions.<rate>.pricePerUnit.USD` (unit `Hrs`).
/// Every priced (region, type) has the products a careless filter would pick up too —
/// Windows, dedicated tenancy, SQL Server pre-installed, an unused capacity reservation —
/// at other prices; `TERM_MATCH` filters are applied on the attributes, `MaxResults` pages
/// with `NextToken`. Counts GetProducts calls.
pub struct PriceListApi {
    pub port: u16,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl PriceListApi {
    /// `prices`: (region code, instance type, Linux on-demand USD per hour as text).
    pub fn start(prices: &[(&str, &str, &str)]) -> PriceListApi {
        let mut products: Vec<serde_json::Value> = Vec::new();
        for (region, ty, usd) in prices {
            let base: f64 = usd.parse().unwrap();
            for (os, tenancy, sw, cap, factor) in [
                ("Linux", "Shared", "NA", "Used", 1.0),
                ("Windows", "Shared", "NA", "Used", 1.5),
                ("Linux", "Dedicated", "NA", "Used", 1.1),
                ("Linux", "Shared", "SQL Std", "Used", 2.0),
                ("Linux", "Shared", "NA", "UnusedCapacityReservation", 0.0),
            ] {
                let sku = format!("SKU{:08X}", products.len() * 7919 + 17);
                let price = format!("{:.10}", base * factor);
                products.push(serde_json::json!({
                    "product": {"productFamily": "Compute Instance", "sku": sku, "attributes": {
                        "instanceType": ty, "regionCode": region, "operatingSystem": os,
                        "tenancy": tenancy, "preInstalledSw": sw, "capacitystatus": cap,
                        "servicecode": "AmazonEC2"}},
                    "serviceCode": "AmazonEC2",
                    "terms": {
                        "OnDemand": {format!("{sku}.JRTCKXETXF"): {
                            "offerTermCode": "JRTCKXETXF", "sku": sku,
                            "effectiveDate": "2026-11-01T00:00:00Z",
                            "priceDimensions": {format!("{sku}.JRTCKXETXF.6YS6EN2CT7"): {
                                "unit": "Hrs", "pricePerUnit": {"USD": price},
                                "description": format!("{os} {ty} per hour"),
                                "beginRange": "0", "endRange": "Inf"}}}},
                        "Reserved": {format!("{sku}.4NA7Y494T4"): {
                            "offerTermCode": "4NA7Y494T4", "sku": sku,
                            "priceDimensions": {format!("{sku}.4NA7Y494T4.2TG2D8R56U"): {
                                "unit": "Quantity", "pricePerUnit": {"USD": "1234"}}}}}},
                    "version": "20261101000000", "publicationDate": "2026-11-01T00:00:00Z"
                }));
            }
        }
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let calls2 = calls.clone();
        let port = json_server(std::sync::Arc::new(move |target, req| {
            if target != "AWSPriceListService.GetProducts" {
                return json_error("UnknownOperationException", target);
            }
            calls2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if req["ServiceCode"] != "AmazonEC2" {
                return (
                    200,
                    serde_json::json!({"FormatVersion": "aws_v1", "PriceList": []}),
                );
            }
            let filters: Vec<(String, String)> = req["Filters"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter(|f| f["Type"] == "TERM_MATCH")
                .map(|f| {
                    (
                        f["Field"].as_str().unwrap_or("").to_string(),
                        f["Value"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            let hits: Vec<String> = products
                .iter()
                .filter(|p| {
                    filters
                        .iter()
                        .all(|(k, v)| p["product"]["attributes"][k].as_str() == Some(v))
                })
                .map(|p| p.to_string())
                .collect();
            let from: usize = req["NextToken"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            let n = req["MaxResults"].as_u64().unwrap_or(100) as usize;
            let page: Vec<&String> = hits.iter().skip(from).take(n).collect();
            let mut doc = serde_json::json!({"FormatVersion": "aws_v1", "PriceList": page});
            if from + n < hits.len() {
                doc["NextToken"] = serde_json::json!((from + n).to_string());
            }
            (200, doc)
        }));
        PriceListApi { port, calls }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn rand_u128() -> u128 {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .unwrap();
    u128::from_le_bytes(b)
}

/// An EC2 instance metadata service (IMDSv2) on 127.0.0.1, as EC2 behaves: `PUT
/// /latest/api/token` with a TTL of 1..21600 s (400 otherwise), 401 for a GET without a
/// live token, `spot/instance-action` 404 until [`Imds::interrupt`], then a fixed
/// `{"action","time"}` (the time never drifts: every poll sees the same notice),
/// `events/recommendations/rebalance` likewise, and `iam/security-credentials/<role>`.
pub struct Imds {
    pub port: u16,
    state: std::sync::Arc<std::sync::Mutex<ImdsState>>,
}

#[derive(Default)]
struct ImdsState {
    tokens: std::collections::HashMap<String, Instant>,
    action: Option<String>,
    /// When a machine first read the notice: it is served for [`NOTICE_SERVED_FOR`] after
    /// that, then taken back, so a replacement machine booted later (every machine asks
    /// this one IMDS) never reads the old machine's notice, however slow the test is to
    /// call [`Imds::clear`].
    action_first_read: Option<Instant>,
    rebalance: Option<String>,
}

/// How long a spot notice is served after a machine first read it (the runner's watcher
/// asks every 2 s).
const NOTICE_SERVED_FOR: Duration = Duration::from_secs(6);

/// `YYYY-MM-DDTHH:MM:SSZ` of unix seconds.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

impl Imds {
    pub fn start() -> Imds {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new(std::sync::Mutex::new(ImdsState::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = imds_serve(conn, &st);
                });
            }
        });
        Imds { port, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// From now on, a spot interruption notice: EC2 takes the machine `in_secs` from now.
    pub fn interrupt(&self, in_secs: i64) {
        let at = rfc3339(crate::model::now_ms() / 1000 + in_secs);
        let mut s = self.state.lock().unwrap();
        s.action = Some(format!("{{\"action\": \"terminate\", \"time\": \"{at}\"}}"));
        s.action_first_read = None;
    }

    /// No notice any more (the machine that got it is gone; a new one asks a fresh IMDS).
    pub fn clear(&self) {
        let mut s = self.state.lock().unwrap();
        s.action = None;
        s.rebalance = None;
    }

    pub fn rebalance(&self) {
        let at = rfc3339(crate::model::now_ms() / 1000);
        self.state.lock().unwrap().rebalance = Some(format!("{{\"noticeTime\": \"{at}\"}}"));
    }
}

fn imds_serve(mut c: std::net::TcpStream, st: &std::sync::Mutex<ImdsState>) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let mut r = BufReader::new(c.try_clone()?);
    let mut first = String::new();
    r.read_line(&mut first)?;
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 || l == "\r\n" {
            break;
        }
        if let Some((k, v)) = l.trim_end().split_once(':') {
            headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |k: &str| headers.iter().find(|(h, _)| h == k).map(|(_, v)| v.clone());
    let mut parts = first.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body): (u16, String) = {
        let mut s = st.lock().unwrap();
        let now = Instant::now();
        s.tokens.retain(|_, exp| *exp > now);
        if method == "PUT" && path == "/latest/api/token" {
            match header("x-aws-ec2-metadata-token-ttl-seconds").and_then(|t| t.parse::<u64>().ok())
            {
                Some(ttl) if (1..=21600).contains(&ttl) => {
                    let token = blake3::hash(format!("{:?}{}", now, s.tokens.len()).as_bytes())
                        .to_hex()
                        .to_string();
                    s.tokens
                        .insert(token.clone(), now + Duration::from_secs(ttl));
                    (200, token)
                }
                _ => (400, String::new()),
            }
        } else if method != "GET" {
            (405, String::new())
        } else if !header("x-aws-ec2-metadata-token").is_some_and(|t| s.tokens.contains_key(&t)) {
            (401, String::new())
        } else {
            match path {
                "/latest/meta-data/spot/instance-action" => match s.action.clone() {
                    Some(a) => {
                        let first = *s.action_first_read.get_or_insert_with(Instant::now);
                        if first.elapsed() <= NOTICE_SERVED_FOR {
                            (200, a)
                        } else {
                            (404, String::new())
                        }
                    }
                    None => (404, String::new()),
                },
                "/latest/meta-data/events/recommendations/rebalance" => s
                    .rebalance
                    .clone()
                    .map_or((404, String::new()), |a| (200, a)),
                "/latest/meta-data/iam/security-credentials/" => (200, "trainctl-test-role".into()),
                "/latest/meta-data/iam/security-credentials/trainctl-test-role" => (
                    200,
                    format!(
                        "{{\"Code\":\"Success\",\"Type\":\"AWS-HMAC\",\"AccessKeyId\":\"testing\",\"SecretAccessKey\":\"testing\",\"Token\":\"testing\",\"LastUpdated\":\"{}\",\"Expiration\":\"{}\"}}",
                        rfc3339(crate::model::now_ms() / 1000),
                        rfc3339(crate::model::now_ms() / 1000 + 6 * 3600)
                    ),
                ),
                _ => (404, String::new()),
            }
        }
    };
    let resp = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    c.write_all(resp.as_bytes())
}

/// A log of about `size` bytes: short lines of any length (0..300 bytes), one line of
/// 200 KiB (longer than a transport carries over to its next chunk) after the first
/// 3 MiB, and a last line without its newline. Also where the long line is.
pub fn log_with_a_long_line(size: usize) -> (Vec<u8>, std::ops::Range<usize>) {
    let mut data = Vec::new();
    let mut seed = 7u64;
    let mut long = 0..0;
    while data.len() < size {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = if long.is_empty() && data.len() > 3 << 20 {
            long = data.len()..data.len() + (200 << 10);
            200 << 10
        } else {
            (seed >> 33) as usize % 300
        };
        data.extend(std::iter::repeat_n(b'a' + (seed % 26) as u8, len));
        data.push(b'\n');
    }
    data.extend_from_slice(b"a last line without its newline");
    (data, long)
}

/// The line kinds of the benchmarks' mixed training log (`bench_parse`, `bench_follow`):
/// the metric formats trainctl reads, a progress bar redrawn with `\r`, plain lines.
pub const MIXED_LOG_LINES: &[&str] = &[
    "step=1234 loss=0.4567 lr=3e-4 grad_norm=1.25\n",
    "{\"step\": 1234, \"loss\": 0.4567, \"acc\": 0.91}\n",
    "{'loss': 2.3051, 'grad_norm': 1.0, 'learning_rate': 4.9e-05, 'epoch': 0.05}\n",
    " 45%|████▌     | 450/1000 [00:10<00:12, 44.50it/s, loss=0.32]\r 46%|████▌     | 460/1000 [00:10<00:12, 44.50it/s, loss=0.31]\n",
    "1875/1875 [==============================] - 5s 2ms/step - loss: 0.2950 - accuracy: 0.9146\n",
    "Train Epoch: 3 [12800/60000 (21%)]\tLoss: 0.289124\n",
    "iter 1200: loss 2.4512, time 35.21ms, mfu 12.34%\n",
    "2024-05-01 12:00:01,123 INFO trainer.py:88 saving checkpoint to /ckpt/step_1234.pt\n",
    "Epoch 3: 100%|██████████| 938/938 [00:15<00:00, 60.12it/s, v_num=0, train_loss=0.123]\n",
    "Downloading shards: 100%|██████████| 2/2 [00:00<00:00, 1234.56it/s]\n",
    "warning: this is a plain line of prose without any metric in it at all\n",
    "Epoch 4/10\n",
];
