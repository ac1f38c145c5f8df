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

mod converge {
    //! Any change of the tree converges in one sync: file <-> directory <-> symlink swaps,
    //! renames, deletions (empty directories removed), mode changes, mtimes to the ns.

    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;
    use trainctl::job::sync;
    use trainctl::remote::Remote;

    /// What a tree holds, as `rsync -a` would compare it: files (content, mode, mtime),
    /// links (target); directories only where they hold something.
    #[derive(Debug, PartialEq)]
    pub enum Node {
        File(Vec<u8>, u32, i64),
        Link(String),
        Dir,
    }

    fn snapshot(root: &Path) -> BTreeMap<String, Node> {
        let mut out = BTreeMap::new();
        walk(root, root, &mut out);
        out
    }

    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.insert(rel, Node::Link(t.to_string_lossy().into_owned()));
            } else if meta.is_dir() {
                out.insert(rel, Node::Dir);
                walk(root, &p, out);
            } else {
                let mtime = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
                let mode = meta.permissions().mode() & 0o777;
                out.insert(rel, Node::File(std::fs::read(&p).unwrap(), mode, mtime));
            }
        }
    }

    /// The local tree as the machine should hold it: directories only where they hold a
    /// file or link (empty ones are not synced, as with `git`).
    fn expected(root: &Path) -> BTreeMap<String, Node> {
        let mut s = snapshot(root);
        let keep: Vec<String> = s
            .keys()
            .filter(|k| !matches!(s[*k], Node::Dir))
            .cloned()
            .collect();
        s.retain(|k, n| {
            !matches!(n, Node::Dir) || keep.iter().any(|f| f.starts_with(&format!("{k}/")))
        });
        s
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(usize, u8),
        Remove(usize),
        Link(usize, usize),
        Chmod(usize, bool),
        Touch(usize, i64),
        /// A large file (block deltas): made, or edited by an insertion, an overwrite or an
        /// append at a position.
        Big(usize, u16, u8),
    }

    /// Paths that overlap on purpose: `a` is a file in one step and a directory in the next.
    const PATHS: [&str; 8] = ["a", "a/b", "a/b/c", "a/d", "e", "e/f", "g/h/i", "g"];

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..PATHS.len(), any::<u8>()).prop_map(|(p, b)| Op::Write(p, b)),
            (0..PATHS.len()).prop_map(Op::Remove),
            (0..PATHS.len(), 0..PATHS.len()).prop_map(|(p, t)| Op::Link(p, t)),
            (0..PATHS.len(), any::<bool>()).prop_map(|(p, x)| Op::Chmod(p, x)),
            (0..PATHS.len(), 0i64..1_000_000_000).prop_map(|(p, t)| Op::Touch(p, t)),
            (0..PATHS.len(), any::<u16>(), any::<u8>()).prop_map(|(p, at, k)| Op::Big(p, at, k)),
        ]
    }

    fn remove(p: &Path) {
        if let Ok(m) = std::fs::symlink_metadata(p) {
            if m.is_dir() {
                std::fs::remove_dir_all(p).unwrap();
            } else {
                std::fs::remove_file(p).unwrap();
            }
        }
    }

    /// Make `p`'s parents directories, replacing whatever non-directory stands in the way.
    fn make_parents(root: &Path, rel: &str) {
        let mut cur = root.to_path_buf();
        let parts: Vec<&str> = rel.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            cur.push(part);
            match std::fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    std::fs::remove_file(&cur).unwrap();
                    std::fs::create_dir(&cur).unwrap();
                }
                Err(_) => std::fs::create_dir(&cur).unwrap(),
            }
        }
    }

    fn apply_op(root: &Path, op: &Op) {
        match op {
            Op::Write(i, b) => {
                let p = root.join(PATHS[*i]);
                make_parents(root, PATHS[*i]);
                remove(&p);
                std::fs::write(&p, vec![*b; 1 + *b as usize]).unwrap();
            }
            Op::Remove(i) => remove(&root.join(PATHS[*i])),
            Op::Big(i, at, kind) => {
                let p = root.join(PATHS[*i]);
                let noise = |n: usize, seed: u64| crate::common::pseudo_random(&mut (seed | 1), n);
                match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.is_file() && m.len() >= 20_000 => {
                        let mut data = std::fs::read(&p).unwrap();
                        let at = *at as usize % data.len();
                        let chunk = noise(300, at as u64 + *kind as u64);
                        match kind % 3 {
                            0 => {
                                data.splice(at..at, chunk);
                            }
                            1 => {
                                let end = (at + chunk.len()).min(data.len());
                                data[at..end].copy_from_slice(&chunk[..end - at]);
                            }
                            _ => data.extend_from_slice(&chunk),
                        }
                        std::fs::write(&p, data).unwrap();
                    }
                    _ => {
                        make_parents(root, PATHS[*i]);
                        remove(&p);
                        std::fs::write(&p, noise(40_000 + *at as usize, *kind as u64)).unwrap();
                    }
                }
            }
            Op::Link(i, t) => {
                let p = root.join(PATHS[*i]);
                make_parents(root, PATHS[*i]);
                remove(&p);
                std::os::unix::fs::symlink(format!("target-{t}"), &p).unwrap();
            }
            Op::Chmod(i, x) => {
                let p = root.join(PATHS[*i]);
                if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                    let mode = if *x { 0o755 } else { 0o644 };
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
                }
            }
            Op::Touch(i, ns) => {
                let p = root.join(PATHS[*i]);
                if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                    let t = std::time::UNIX_EPOCH
                        + std::time::Duration::from_nanos(1_600_000_000_000_000_000 + *ns as u64);
                    std::fs::File::options()
                        .write(true)
                        .open(&p)
                        .unwrap()
                        .set_modified(t)
                        .unwrap();
                }
            }
        }
    }

    /// Sync `root` as the engine does (one conversation), or in two steps (plan, then
    /// apply: remotes that cannot converse).
    pub async fn sync_once_or_twice(
        remote: &dyn Remote,
        root: &Path,
        cache: Option<&Path>,
        once: bool,
    ) {
        if once {
            sync::sync_once(remote, "p", root, &[], cache, None, false)
                .await
                .unwrap();
        } else {
            let plan = sync::prepare_with(remote, "p", root, &[], cache)
                .await
                .unwrap();
            sync::apply_with(remote, "p", root, &plan, cache)
                .await
                .unwrap();
        }
    }

    /// Sync `root` to the machine once; its tree must then equal the local one.
    pub async fn sync_and_compare(
        remote: &dyn Remote,
        root: &Path,
        code: &Path,
        cache: Option<&Path>,
        once: bool,
    ) {
        sync_once_or_twice(remote, root, cache, once).await;
        let got = if code.exists() {
            snapshot(code)
        } else {
            BTreeMap::new()
        };
        assert_eq!(got, expected(root));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn any_sequence_of_tree_changes_converges_in_one_sync(
            ops in proptest::collection::vec(proptest::collection::vec(op(), 1..4), 1..7)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("src");
            std::fs::create_dir_all(&root).unwrap();
            let home = dir.path().join("home");
            std::fs::create_dir_all(&home).unwrap();
            let remote = trainctl::remote::local::LocalRemote::new(&home, "trainctl-test-converge");
            let code = Path::new(remote.root()).join("code/p");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            // With a local copy of the machine's manifest, as the engine syncs.
            let cache = dir.path().join("cache.json");
            for (k, step) in ops.iter().enumerate() {
                for o in step {
                    apply_op(&root, o);
                }
                rt.block_on(sync_and_compare(&remote, &root, &code, Some(&cache), k % 2 == 0));
            }
        }
    }
}

/// Over SSH (tar on the machine): a directory becomes a file and a file a directory, a
/// directory is removed, mtimes kept to the nanosecond, and errors keep their lines.
#[tokio::test]
async fn tree_kind_changes_converge_over_ssh() {
    use trainctl::remote::Remote;
    let sshd = trainctl::testkit::Sshd::start();
    let work = tempfile::tempdir().unwrap();
    let root_dir = work.path().join("remote/.trainctl");
    let r = crate::ssh::connect_trusting(&sshd, work.path(), &root_dir).await;
    let src = work.path().join("src");
    let code = root_dir.join("code/p");
    std::fs::create_dir_all(src.join("pkg/models")).unwrap();
    std::fs::write(src.join("pkg/models/net.py"), "net").unwrap();
    std::fs::write(src.join("pkg/settings"), "settings").unwrap();
    std::fs::create_dir_all(src.join("old/deep")).unwrap();
    std::fs::write(src.join("old/deep/x.py"), "x").unwrap();
    converge::sync_and_compare(&r, &src, &code, None, true).await;
    // Swap kinds, drop a directory, and let the machine add a file of its own in the way.
    std::fs::remove_dir_all(src.join("pkg/models")).unwrap();
    std::fs::write(src.join("pkg/models"), "now a file").unwrap();
    std::fs::remove_file(src.join("pkg/settings")).unwrap();
    std::fs::create_dir_all(src.join("pkg/settings")).unwrap();
    std::fs::write(src.join("pkg/settings/base.py"), "base").unwrap();
    std::fs::remove_dir_all(src.join("old")).unwrap();
    std::fs::create_dir_all(code.join("pkg/models/__pycache__")).unwrap();
    std::fs::write(code.join("pkg/models/__pycache__/net.pyc"), "junk").unwrap();
    converge::sync_and_compare(&r, &src, &code, None, false).await;
    assert!(
        !code.join("old").exists(),
        "an empty directory was left behind"
    );
    // Only the mtime changes: the machine's copy follows.
    std::fs::File::options()
        .write(true)
        .open(src.join("pkg/models"))
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000, 123_456_789))
        .unwrap();
    converge::sync_and_compare(&r, &src, &code, None, true).await;
    // A failing command's stderr keeps its lines.
    let e = r
        .exec("echo one >&2; echo two >&2; exit 4")
        .await
        .unwrap()
        .check("the test command")
        .unwrap_err()
        .to_string();
    assert!(e.ends_with("one\ntwo"), "{e}");
}
