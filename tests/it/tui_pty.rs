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

#[test]
fn cockpit_in_a_pty_launches_runs_charts_terminates_and_quits() {
    let env = Env::new("", "0.02");
    let (rows, cols) = (24u16, 80u16);
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
    let mut child = pair.slave.spawn_command(cmd).unwrap();
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
    let mut s = Screen {
        parser,
        writer: pair.master.take_writer().unwrap(),
    };

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
    s.wait("the job to succeed", 60, |t| {
        t.contains("succeeded") && t.contains("ep 5/5")
    });
    s.send(b"4");
    let t = s.wait("a metric chart", 20, |t| {
        t.contains("metric:") && t.contains("loss =") && t.contains("pts")
    });
    assert!(t.contains("train_loss"), "{t}");

    s.send(b"1");
    s.send(b"\x04"); // ctrl-d
    let t = s.wait("the confirmation", 10, |t| {
        t.contains("Terminate instance?")
    });
    assert!(t.contains(&id) && t.contains("cost so far"), "{t}");
    s.send(b"y");
    s.wait("the termination", 30, |t| {
        t.contains(&format!("terminated {id}"))
    });
    assert!(sandbox_processes(&id).is_empty());
    assert!(!env.data().join("sandboxes").join(&id).exists());

    s.send(b"\x03"); // ctrl-c
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the cockpit did not quit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    drop(s);
    drop(pair.master);
    let _ = pump.join();
    // The CLI sees what the cockpit did: same store.
    let all = env.json(&["ls", "--all"]);
    assert_eq!(all[0]["state"], "terminated");
    let jobs = env.json(&["jobs"]);
    assert_eq!(jobs[0]["state"], "succeeded");
}
