//! A real Docker engine of its own for the tests: `dockerd` with its own data root, exec
//! root, socket and pid file in a temp dir (`--storage-driver vfs --iptables=false
//! --bridge=none`: no kernel overlay, no firewall rules, no bridge; containers use the
//! host's network), started in about a second and stopped when dropped. No registry is
//! reachable, so the base image is made here: `docker import` of a root filesystem holding
//! a static busybox (`sh`, `sleep`…; Debian's `busybox-static`) and this machine's own
//! `python3` with the shared libraries it and its standard library's extension modules
//! load (found with `ldd`) and its standard library (tests, idle, tkinter left out):
//! ~26 MB, imported in well under a second. Needs Debian's `docker.io` and root.

use super::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub struct Docker {
    pub socket: PathBuf,
    child: std::process::Child,
    pub dir: TempDir,
}

/// The image every test's job runs in: busybox and python3.
pub const PYTHON_IMAGE: &str = "trainctl-test/python:3";

impl Docker {
    pub fn start() -> Docker {
        let dir = TempDir::new("trainctl-docker");
        let d = dir.path().to_path_buf();
        for sub in ["root", "exec"] {
            std::fs::create_dir_all(d.join(sub)).expect("docker dirs");
        }
        let socket = d.join("sock");
        let log = std::fs::File::create(d.join("dockerd.log")).expect("dockerd log");
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--pidfile")
            .arg(d.join("pid"))
            .args([
                "--storage-driver",
                "vfs",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
            ])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("dockerd (Debian: docker.io)");
        let docker = Docker { socket, child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if docker.socket.exists()
                && docker
                    .run(&["info", "--format", "{{.ID}}"])
                    .status
                    .success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd never answered: {}",
                docker.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        docker
    }

    /// `DOCKER_HOST` for clients of this engine.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// A `docker` client command against this engine.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .env("DOCKER_HOST", self.host())
            .args(args)
            .output()
            .expect("docker (Debian: docker.io)")
    }

    /// Names of every container, running or not.
    pub fn containers(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.run(&["ps", "-a", "--format", "{{.Names}}"]).stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Import [`PYTHON_IMAGE`] (busybox and this machine's python3).
    pub fn import_python(&self) {
        let root = self.dir.path().join("rootfs");
        make_rootfs(&root);
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["-cf", "-", "."])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("tar");
        let out = Command::new("docker")
            .env("DOCKER_HOST", self.host())
            .args(["import", "-", PYTHON_IMAGE])
            .stdin(tar.stdout.take().expect("tar's output"))
            .output()
            .expect("docker import");
        assert!(
            tar.wait().is_ok_and(|s| s.success()),
            "tar of the root filesystem"
        );
        assert!(
            out.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    pub fn log(&self) -> String {
        let t = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Copy `src` to the same path under `root`, links followed (and their own directory made).
fn put(root: &Path, src: &Path) {
    let dst = root.join(src.strip_prefix("/").unwrap_or(src));
    if dst.exists() {
        return;
    }
    std::fs::create_dir_all(dst.parent().expect("a parent")).expect("rootfs dir");
    std::fs::copy(src, &dst).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
}

/// The shared libraries `bin` loads, as `ldd` lists them (the loader too).
fn libs_of(bin: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(bin).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn make_rootfs(root: &Path) {
    let _ = std::fs::remove_dir_all(root);
    for d in ["bin", "tmp", "etc", "usr/bin"] {
        std::fs::create_dir_all(root.join(d)).expect("rootfs");
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).ok();
    // busybox, statically linked, with its applets the jobs use.
    let bb = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("a static busybox (Debian: busybox-static)");
    std::fs::copy(bb, root.join("bin/busybox")).expect("busybox");
    for a in [
        "sh", "sleep", "cat", "echo", "ls", "env", "id", "mkdir", "rm", "mv", "test", "kill", "ps",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).expect("applet");
    }
    // python3, its libraries and standard library.
    let py = std::fs::canonicalize("/usr/bin/python3").expect("python3 (Debian: python3)");
    let info = Command::new(&py)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .expect("python3");
    let stdlib = PathBuf::from(String::from_utf8_lossy(&info.stdout).trim());
    put(root, &py);
    std::os::unix::fs::symlink(&py, root.join("usr/bin/python3")).expect("python3 link");
    let mut libs = libs_of(&py);
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {0} && tar -cf - --exclude=./test --exclude=./idlelib --exclude=./tkinter \
             --exclude=./lib2to3 --exclude=./ensurepip --exclude='*/__pycache__' \
             --exclude=./site-packages --exclude=./dist-packages . | \
             (mkdir -p {1} && tar -C {1} -xf -)",
            stdlib.display(),
            root.join(stdlib.strip_prefix("/").unwrap_or(&stdlib))
                .display()
        ))
        .status()
        .expect("copying the standard library");
    assert!(status.success(), "copying the standard library");
    if let Ok(dir) = std::fs::read_dir(stdlib.join("lib-dynload")) {
        for e in dir.flatten() {
            libs.extend(libs_of(&e.path()));
        }
    }
    libs.sort();
    libs.dedup();
    for l in libs {
        let real = std::fs::canonicalize(&l).unwrap_or(l.clone());
        put(root, &real);
        let at = root.join(l.strip_prefix("/").unwrap_or(&l));
        if !at.exists() {
            std::fs::create_dir_all(at.parent().expect("parent")).ok();
            std::os::unix::fs::symlink(&real, &at).ok();
        }
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        // Containers first, then the engine (it stops its containerd).
        let names = self.containers();
        if !names.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(names.iter().map(String::as_str));
            let _ = self.run(&args);
        }
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut ended = false;
        while !ended && Instant::now() < deadline {
            ended = matches!(self.child.try_wait(), Ok(Some(_)));
            if !ended {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if !ended {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        unmount_under(self.dir.path());
    }
}

/// Unmount what dockerd left mounted under `dir` (its default network namespace's
/// bind mount), so the directory can go.
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p) {
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// A real image registry of its own (Debian's `docker-registry`, the distribution
/// registry) on 127.0.0.1 at a free port, storing in a temp dir; no auth (Docker trusts
/// 127.0.0.0/8 over plain HTTP). Stopped when dropped.
pub struct Registry {
    pub port: u16,
    child: std::process::Child,
    pub dir: TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = TempDir::new("trainctl-registry");
        let port = super::free_port();
        let conf = dir.path().join("config.yml");
        std::fs::write(
            &conf,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("registry config");
        let log = std::fs::File::create(dir.path().join("log")).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&conf)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian: docker-registry)");
        let r = Registry { port, child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry never listened: {}",
                std::fs::read_to_string(r.dir.path().join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
