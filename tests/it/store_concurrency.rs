//! Several processes (and threads) writing one store at once: nothing lost, nothing corrupt.

use crate::common::Env;
use trainctl::model::{InstanceState, Money, now_ms};
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
                    s.insert_instance(&InstanceRecord {
                        id: id.clone(),
                        provider: "local".into(),
                        name: id.clone(),
                        instance_type: "local".into(),
                        spot: false,
                        gpus: 0,
                        gpu_info: None,
                        state: InstanceState::Pending,
                        hourly: Money(1),
                        created_ms: now_ms(),
                        launched_ms: None,
                        terminated_ms: None,
                        address: None,
                        error: None,
                    })
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
