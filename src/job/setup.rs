//! The project's `setup`, run by the runner before the job's command, once per machine for
//! a given hash (see `setup()` in `assets/remote/runner.sh`).

use anyhow::{Context, Result};
use std::path::Path;

/// The hash that decides whether a machine must run a setup again: its text, the workdir
/// it runs in (a setup may make things relative to it, like a `.venv`), and the content of
/// every file `inputs` names under `root` (folders: every file inside, in path order).
/// 16 hex digits of BLAKE3.
pub fn setup_hash(root: &Path, text: &str, workdir: &str, inputs: &[String]) -> Result<String> {
    let mut h = blake3::Hasher::new();
    h.update(b"trainctl-setup-1\0");
    h.update(text.as_bytes());
    h.update(b"\0");
    h.update(workdir.as_bytes());
    h.update(b"\0");
    for rel in inputs {
        let path = root.join(rel);
        let mut files = Vec::new();
        collect_files(&path, &mut files)
            .with_context(|| format!("setup input {}", path.display()))?;
        files.sort();
        for f in files {
            let name = f.strip_prefix(root).unwrap_or(&f);
            h.update(name.as_os_str().as_encoded_bytes());
            h.update(b"\0");
            let mut fh = blake3::Hasher::new();
            std::fs::File::open(&f)
                .and_then(|mut file| std::io::copy(&mut file, &mut fh))
                .with_context(|| format!("reading setup input {}", f.display()))?;
            h.update(fh.finalize().as_bytes());
        }
    }
    Ok(h.finalize().to_hex()[..16].to_string())
}

fn collect_files(path: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        for e in std::fs::read_dir(path)? {
            collect_files(&e?.path(), out)?;
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// The text of `setup.sh`: its hash in the first line (`# setup_hash=…`, which the runner
/// reads), the job's environment, `set -e`, the setup.
pub fn setup_script(
    hash: &str,
    text: &str,
    env: &std::collections::BTreeMap<String, String>,
) -> String {
    format!(
        "# setup_hash={hash}\n{}",
        super::command_script(&format!("set -e\n{text}"), env)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_follows_the_text_the_workdir_and_the_inputs() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("requirements.txt"), "numpy\n").unwrap();
        std::fs::create_dir(d.path().join("deps")).unwrap();
        std::fs::write(d.path().join("deps/a.txt"), "a").unwrap();
        let inputs = vec!["requirements.txt".to_string(), "deps".to_string()];
        let h = |t: &str, w: &str| setup_hash(d.path(), t, w, &inputs).unwrap();
        let first = h("pip install -r requirements.txt", "/w");
        assert_eq!(first.len(), 16);
        assert_eq!(first, h("pip install -r requirements.txt", "/w"));
        assert_ne!(first, h("pip install -r requirements.txt ", "/w"));
        assert_ne!(first, h("pip install -r requirements.txt", "/v"));
        std::fs::write(d.path().join("requirements.txt"), "numpy==2\n").unwrap();
        let changed = h("pip install -r requirements.txt", "/w");
        assert_ne!(first, changed);
        std::fs::write(d.path().join("deps/b.txt"), "b").unwrap();
        assert_ne!(changed, h("pip install -r requirements.txt", "/w"));
        let missing = setup_hash(d.path(), "x", "/w", &["nope.txt".into()]);
        assert!(format!("{:#}", missing.unwrap_err()).contains("nope.txt"));
    }
}
