//! Code sync through the CLI on a local instance: only changes move, deletions propagate,
//! exclusions are reported, odd names and links survive.

use crate::common::Env;

fn sync_json(env: &Env, id: &str, dry: bool) -> serde_json::Value {
    let mut args = vec!["sync", "--instance", id];
    if dry {
        args.push("--dry-run");
    }
    env.json(&args)
}

fn names(v: &serde_json::Value) -> Vec<String> {
    let mut n: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

#[test]
fn sync_moves_only_changes_and_reports_exclusions() {
    let env = Env::new("", "0");
    let id = env.json(&["launch"])["id"].as_str().unwrap().to_string();
    let p = &env.project;
    std::fs::write(p.join("run.log"), "noise").unwrap(); // sync.exclude *.log
    std::fs::create_dir_all(p.join("checkpoints")).unwrap(); // .gitignore
    std::fs::write(p.join("checkpoints/old.json"), "{}").unwrap();
    std::fs::write(p.join("with space & 'quote'.py"), "x = 1\n").unwrap();
    std::fs::write(p.join("ünïcödé.txt"), "u").unwrap();
    std::fs::write(p.join("empty"), "").unwrap();
    std::os::unix::fs::symlink("train.py", p.join("link.py")).unwrap();

    let dry = sync_json(&env, &id, true);
    let code = env
        .data()
        .join("sandboxes")
        .join(&id)
        .join("home/.trainctl/code/toy-train");
    assert!(!code.exists(), "dry run moved files");
    let excluded: Vec<(String, String)> = dry["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().into(),
                e["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        excluded.contains(&("checkpoints/".into(), ".gitignore".into())),
        "{excluded:?}"
    );
    assert!(
        excluded.contains(&("run.log".into(), "sync.exclude".into())),
        "{excluded:?}"
    );
    assert_eq!(
        names(&dry["upload"]),
        vec![
            ".gitignore",
            "empty",
            "train.py",
            "trainctl.toml",
            "with space & 'quote'.py",
            "ünïcödé.txt"
        ]
    );

    let first = sync_json(&env, &id, false);
    assert_eq!(first["upload"].as_array().unwrap().len(), 6);
    assert_eq!(
        std::fs::read_to_string(code.join("with space & 'quote'.py")).unwrap(),
        "x = 1\n"
    );
    assert_eq!(std::fs::read(code.join("empty")).unwrap().len(), 0);
    assert_eq!(
        std::fs::read_link(code.join("link.py")).unwrap().to_str(),
        Some("train.py")
    );
    assert!(!code.join("run.log").exists() && !code.join("checkpoints").exists());

    // Unchanged tree: nothing moves.
    let again = sync_json(&env, &id, false);
    assert!(again["upload"].as_array().unwrap().is_empty());
    assert!(again["delete"].as_array().unwrap().is_empty());
    assert_eq!(again["unchanged"], 7);

    // Change one, delete one, rename one.
    std::fs::write(p.join("train.py"), "print('changed')\n").unwrap();
    std::fs::remove_file(p.join("empty")).unwrap();
    std::fs::rename(p.join("ünïcödé.txt"), p.join("renamed.txt")).unwrap();
    let third = sync_json(&env, &id, false);
    assert_eq!(names(&third["upload"]), vec!["renamed.txt", "train.py"]);
    assert_eq!(names(&third["delete"]), vec!["empty", "ünïcödé.txt"]);
    assert!(!code.join("empty").exists() && !code.join("ünïcödé.txt").exists());
    assert_eq!(
        std::fs::read_to_string(code.join("train.py")).unwrap(),
        "print('changed')\n"
    );
    env.ok(&["terminate", &id]);
}
