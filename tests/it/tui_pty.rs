//! The real `trainctl-tui` binary in a pseudo-terminal: launch a local instance, run the
//! example, see a metric appear in the Metrics pane, terminate, quit.

use crate::common::{Env, sandbox_processes};
use portable_pty::{CommandBuilder, PtySize, native_pty_system};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Screen {
    parser: Arc<Mutex<vt100::Parser>>,
    writer: Box<dyn Write + Send>,
}

impl Screen {
    fn text(&self) -> String {
        self.parser.lock().unwrap().screen().contents()
    }

    fn wait(&self, what: &str, secs: u64, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.text();
            if f(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
        self.writer.flush().unwrap();
        // Let the frame settle before the next key.
        std::thread::sleep(Duration::from_millis(150));
    }
}

/// The real `trainctl-tui` in a pseudo-terminal of `cols` x `rows`, in the env's project.
struct Cockpit {
    s: Screen,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    master: Box<dyn portable_pty::MasterPty + Send>,
    pump: std::thread::JoinHandle<()>,
}

impl Cockpit {
    fn open(env: &Env, cols: u16, rows: u16, vars: &[(&str, Option<&str>)]) -> Cockpit {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows,
                cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .unwrap();
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_trainctl-tui"));
        cmd.cwd(&env.project);
        cmd.env("TRAINCTL_CONFIG", &env.config);
        cmd.env("TERM", "xterm-256color");
        cmd.env_remove("NO_COLOR");
        for (k, v) in vars {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            }
        }
        let child = pair.slave.spawn_command(cmd).unwrap();
        drop(pair.slave);
        let parser = Arc::new(Mutex::new(vt100::Parser::new(
            std::num::NonZero::new(rows).unwrap(),
            std::num::NonZero::new(cols).unwrap(),
            0,
        )));
        let mut reader = pair.master.try_clone_reader().unwrap();
        let p2 = parser.clone();
        let pump = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                p2.lock().unwrap().process(&buf[..n]);
            }
        });
        let s = Screen {
            parser,
            writer: pair.master.take_writer().unwrap(),
        };
        Cockpit {
            s,
            child,
            master: pair.master,
            pump,
        }
    }

    /// ctrl-c, and the cockpit exits 0.
    fn quit(mut self) {
        self.s.send(b"\x03");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "the cockpit did not quit");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{status:?}");
        drop(self.s);
        drop(self.master);
        let _ = self.pump.join();
    }
}

/// Wait for `path` to exist.
fn wait_file(path: &std::path::Path, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never came", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cockpit_in_a_pty_launches_runs_charts_terminates_and_quits() {
    let env = Env::new("", "0.02");
    let mut c = Cockpit::open(&env, 80, 24, &[]);
    let s = &mut c.s;
    s.wait("the instances pane", 20, |t| t.contains("Instances (0)"));
    s.send(b"L");
    s.wait("the launch form", 10, |t| {
        t.contains("Launch an instance") && t.contains("on-demand at $0.00/h")
    });
    s.send(b"\r");
    let t = s.wait("a running instance", 20, |t| {
        t.contains("Instances (1)") && t.contains("running")
    });
    let id = t
        .split_whitespace()
        .find(|w| w.starts_with("i-"))
        .unwrap()
        .to_string();

    s.send(b"r");
    s.wait("the job to start", 20, |t| t.contains("started"));
    s.send(b"2");
    let t = s.wait("the job to succeed", 60, |t| {
        t.contains("succeeded") && t.contains("ep 5/5")
    });
    // Run from the cockpit, its artifacts come back when it succeeds, as `trainctl run`.
    let jobs = env.json(&["jobs"]);
    let job = jobs[0]["id"].as_str().unwrap().to_string();
    wait_file(
        &env.project
            .join("trainctl-out")
            .join(&job)
            .join("model.json"),
        30,
    );
    s.wait("the pull said", 10, |t| t.contains("artifact(s) pulled to"));
    assert!(
        t.contains(&job[job.len() - 6..]),
        "the short id names the row: {t}"
    );
    s.send(b"4");
    let t = s.wait("a metric chart", 20, |t| {
        t.contains("metric:") && t.contains("per step") && t.contains("pts")
    });
    assert!(t.contains("train_loss"), "{t}");
    // shift-tab (ESC [ Z, which crossterm reads as BackTab with SHIFT) moves back a pane.
    s.send(b"\x1b[Z");
    s.wait("the logs pane", 10, |t| t.contains("┌ Logs toy-train"));
    s.send(b"\x1b[Z");
    s.wait("the jobs pane again", 10, |t| t.contains("Jobs (1)"));
    s.send(b"\x1b[Z");
    s.wait("the instances pane again", 10, |t| {
        t.contains("Instances (1)")
    });

    // A second job, run headless with --no-pull: its artifacts stay on the machine, and
    // terminate says so and offers to pull them first.
    let out = env.run(&["run", "--instance", &id, "--no-pull"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs = env.json(&["jobs"]);
    let second = jobs[0]["id"].as_str().unwrap().to_string();
    assert_ne!(second, job);
    let local = env
        .project
        .join("trainctl-out")
        .join(&second)
        .join("model.json");
    assert!(!local.exists());
    s.send(b"\x04"); // ctrl-d
    let t = s.wait("the confirmation", 20, |t| {
        t.contains("Terminate instance?") && t.contains("never pulled")
    });
    assert!(t.contains(&id) && t.contains("cost so far"), "{t}");
    assert!(t.contains("Pull, then terminate (p)"), "{t}");
    s.send(b"p");
    // Said on the status line (a job's end a refresh announces after it does not hide
    // it), and kept among the session's messages (`!`).
    s.wait("the pull and the termination", 30, |t| {
        t.contains(&format!("terminated {id}"))
    });
    s.send(b"!");
    s.wait("the termination among the messages", 10, |t| {
        t.contains(&format!("terminated {id}"))
    });
    s.send(b"\x1b");
    assert!(local.exists(), "pulled before the machine went");
    assert!(sandbox_processes(&id).is_empty());
    assert!(!env.data().join("sandboxes").join(&id).exists());
    c.quit();
    // The CLI sees what the cockpit did: same store.
    let all = env.json(&["ls", "--all"]);
    assert_eq!(all[0]["state"], "terminated");
    let jobs = env.json(&["jobs"]);
    assert_eq!(jobs[0]["state"], "succeeded");
}

/// An SSH key with a passphrase, no agent: the real cockpit asks for it in its masked
/// popup (a wrong answer is asked again), and the launch goes through.
#[test]
fn cockpit_asks_for_a_key_passphrase_in_a_popup() {
    let sshd = trainctl::testkit::Sshd::start();
    let key = sshd.add_encrypted_key("open sesame");
    let work = tempfile::tempdir().unwrap();
    let extra = format!(
        "default_provider = \"ssh\"\n{}",
        crate::common::one_ssh_host(&sshd, &key, work.path())
    );
    let env = Env::new(&extra, "0");
    let mut c = Cockpit::open(&env, 80, 24, &[("SSH_AUTH_SOCK", None)]);
    let s = &mut c.s;
    s.wait("the instances pane", 20, |t| t.contains("Instances (0)"));
    s.send(b"L");
    s.wait("the launch form on ssh", 10, |t| {
        t.contains("Launch an instance") && t.contains("ssh")
    });
    s.send(b"\r");
    let t = s.wait("the passphrase popup", 20, |t| {
        t.contains("SSH key passphrase")
    });
    assert!(t.contains(&key.display().to_string()[..20]), "{t}");
    s.send(b"wrong\r");
    let t = s.wait("asked again", 20, |t| t.contains("SSH key passphrase"));
    assert!(!t.contains("wrong"), "the answer is masked: {t}");
    s.send(b"open sesame\r");
    s.wait("the launch", 30, |t| {
        t.contains("launched") && t.contains("running")
    });
    c.quit();
    let all = env.json(&["ls"]);
    assert_eq!(all[0]["state"], "running");
    assert_eq!(all[0]["provider"], "ssh");
}
