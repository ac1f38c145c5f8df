//! Several processes (and threads) writing one store at once: nothing lost, nothing corrupt.

use crate::common::Env;
use trainctl::model::{Money, now_ms};
use trainctl::store::{InstanceRecord, Store};

#[test]
fn threads_with_their_own_connections_never_corrupt_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    Store::open(&path).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut s = Store::open(&path).unwrap();
                for i in 0..100 {
                    let id = format!("i-{t}-{i}");
                    s.insert_instance(&InstanceRecord::intent(&id, "local", "local", Money(1)))
                        .unwrap();
                    s.mark_instance_running(&id, "/x", now_ms()).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.integrity_check().unwrap(), "ok");
    assert_eq!(s.instances(false).unwrap().len(), 400);
    // Every state change left its event: intent + running per instance.
    assert_eq!(s.events(None, None).unwrap().len(), 800);
}

#[test]
fn two_trainctl_processes_launching_at_once_both_land() {
    let env = Env::new("[providers.local]\nmax_instances = 64\n", "0");
    let spawn = || {
        let mut c = env.cmd(&["launch"]);
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    let mut children = Vec::new();
    for _ in 0..6 {
        children.push(spawn().spawn().unwrap());
    }
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let live = env.json(&["ls"]);
    assert_eq!(live.as_array().unwrap().len(), 6);
    for i in live.as_array().unwrap() {
        env.ok(&["terminate", i["id"].as_str().unwrap()]);
    }
}

/// Issue 16's cause, reproduced: many processes open one brand-new store at the same
/// moment (a file barrier), each then writes once. Before the fix, two openers each
/// holding a read lock while switching the file to WAL made SQLite answer BUSY at once
/// (a deadlock its busy handler is never asked about): "database is locked". The openers
/// are this test binary run again on this same test, as children (`OPENER_STORE` set).
#[test]
fn many_processes_opening_one_fresh_store_at_once_all_succeed() {
    if let Ok(path) = std::env::var("OPENER_STORE") {
        return open_and_write_once_behind_the_gate(&path);
    }
    const PROCS: usize = 8;
    let rounds: usize = std::env::var("STORE_OPEN_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let exe = std::env::current_exe().unwrap();
    for round in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("trainctl.db");
        let gate = dir.path().join("go");
        let children: Vec<_> = (0..PROCS)
            .map(|i| {
                std::process::Command::new(&exe)
                    .args([
                        "--exact",
                        "store_concurrency::many_processes_opening_one_fresh_store_at_once_all_succeed",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env("OPENER_STORE", &path)
                    .env("OPENER_GATE", &gate)
                    .env("OPENER_ID", format!("{round}-{i}"))
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // Let every child reach the barrier, then release them together.
        std::thread::sleep(std::time::Duration::from_millis(150));
        std::fs::write(&gate, b"").unwrap();
        for c in children {
            let out = c.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("opener ok"),
                "round {round}: {:?}\n{stdout}\n{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.integrity_check().unwrap(), "ok");
        assert_eq!(s.instances(true).unwrap().len(), PROCS, "round {round}");
    }
}

/// One opener of the test above, in its own process: wait for the gate, open, write.
fn open_and_write_once_behind_the_gate(path: &str) {
    let gate = std::path::PathBuf::from(std::env::var("OPENER_GATE").unwrap());
    let id = format!("i-{}", std::env::var("OPENER_ID").unwrap());
    while !gate.exists() {
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let mut s = Store::open(std::path::Path::new(path)).expect("open");
    s.insert_instance(&InstanceRecord::intent(&id, "local", "local", Money(1)))
        .expect("insert");
    println!("opener ok");
}
