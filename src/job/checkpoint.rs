//! Checkpoints leave the machine as they are written, so a machine lost without notice
//! costs at most the work since the last checkpoint.
//!
//! The engine lists the job's checkpoint directory on the machine ([`scan`]); a file is
//! complete once its size and mtime have been still for [`STABLE_MS`] (a checkpoint
//! written by rename is complete at once, but we cannot tell it from one still being
//! written, so both wait) and its name is not a temp name (`*.part`, `*.tmp`, `.*`). A
//! complete file not shipped yet is downloaded (size and BLAKE3 checked against the
//! machine's copy) and handed to a [`CheckpointStore`]; the store's record (name, size,
//! mtime, BLAKE3) is what recovery restores from, newest first, and a stored file whose
//! BLAKE3 no longer matches its record is refused.

use crate::remote::{Remote, safe_join, sh_quote};
use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use std::path::{Path, PathBuf};

/// How long a file's size and mtime must be still before it is taken as complete.
pub const STABLE_MS: i64 = 2000;

/// Where shipped checkpoints are kept. The local directory store is the first; S3 follows
/// with the AWS provider. Records (newest, hashes) live in the trainctl store.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// Take the complete local file `src` in as checkpoint `name` of `job_id` (moved or
    /// copied); returns where it is kept.
    async fn put(&self, job_id: &str, name: &str, src: &Path) -> Result<String>;
    /// Names kept for `job_id`.
    async fn list(&self, job_id: &str) -> Result<Vec<String>>;
    /// A local file holding checkpoint `name`, checked against `blake3` (refused when it
    /// does not match).
    async fn get(&self, job_id: &str, name: &str, blake3: &str) -> Result<PathBuf>;
    async fn delete(&self, job_id: &str, name: &str) -> Result<()>;
    /// A local scratch path for a download that [`CheckpointStore::put`] then takes in.
    fn scratch(&self, job_id: &str, name: &str) -> Result<PathBuf>;
    /// Whether `job_id`'s checkpoints can be kept here (rights, the bucket exists): asked
    /// before the job starts, so a missing right is an error before anything depends on it.
    async fn check(&self, _job_id: &str) -> Result<()> {
        Ok(())
    }
    /// What a machine needs to put `job_id`'s newest checkpoint here by itself when it is
    /// interrupted and no trainctl watches (`TRAINCTL_RESCUE_URL` and the uploader's
    /// environment), when it can: None for a store on this laptop.
    fn rescue_env(
        &self,
        _job_id: &str,
        _inst: &crate::store::InstanceRecord,
    ) -> Option<Vec<(String, String)>> {
        None
    }
    /// Keep a copy of attempt `attempt`'s log of `job_id` beside its checkpoints (S3:
    /// `PREFIX/<job>/logs/<attempt>.log`); None when this store keeps no logs (the local
    /// one: the log is already in the data directory). Returns where it went.
    async fn keep_log(&self, job_id: &str, attempt: i64, file: &Path) -> Result<Option<String>> {
        let _ = (job_id, attempt, file);
        Ok(None)
    }
    /// The tail of attempt `attempt`'s log that its machine put here itself on a notice
    /// (no trainctl watching), fetched to a local file, with the log offset it starts at.
    async fn rescued_log(&self, job_id: &str, attempt: i64) -> Result<Option<(u64, PathBuf)>> {
        let _ = (job_id, attempt);
        Ok(None)
    }
    /// Checkpoints kept here that the trainctl store has no record of (a machine put them
    /// here itself), each fetched to a local file.
    async fn unrecorded(&self, job_id: &str, known: &[String]) -> Result<Vec<Unrecorded>> {
        let _ = (job_id, known);
        Ok(Vec::new())
    }
}

/// Where (under a job's prefix in its store) a machine puts attempt `attempt`'s log tail.
pub fn rescued_log_name(attempt: i64) -> String {
    format!("logs/{attempt}.rescued.log")
}

/// A checkpoint found in a store without a record (see [`CheckpointStore::unrecorded`]).
#[derive(Debug, Clone)]
pub struct Unrecorded {
    pub name: String,
    /// A local copy (the store's cache).
    pub file: PathBuf,
    /// Where the store keeps it.
    pub location: String,
    /// Its modification time on the machine, when the machine said.
    pub mtime_ms: Option<i64>,
}

/// A local file's size and BLAKE3 (hex), read on a blocking thread.
pub async fn size_and_blake3(path: &Path) -> Result<(u64, String)> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<(u64, String)> {
        let mut h = blake3::Hasher::new();
        h.update_reader(std::fs::File::open(&p)?)?;
        Ok((
            std::fs::metadata(&p)?.len(),
            h.finalize().to_hex().to_string(),
        ))
    })
    .await?
}

/// Checkpoints in `<data dir>/checkpoints/<job>/<name>`.
pub struct LocalDirStore {
    root: PathBuf,
}

impl LocalDirStore {
    pub fn new(data_dir: &Path) -> LocalDirStore {
        LocalDirStore {
            root: data_dir.join("checkpoints"),
        }
    }

    fn path(&self, job_id: &str, name: &str) -> Result<PathBuf> {
        safe_join(&self.root.join(job_id), name)
    }
}

#[async_trait]
impl CheckpointStore for LocalDirStore {
    async fn put(&self, job_id: &str, name: &str, src: &Path) -> Result<String> {
        let dest = self.path(job_id, name)?;
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        tokio::fs::rename(src, &dest)
            .await
            .with_context(|| format!("keeping checkpoint {}", dest.display()))?;
        Ok(dest.to_string_lossy().into_owned())
    }

    async fn list(&self, job_id: &str) -> Result<Vec<String>> {
        let base = self.root.join(job_id);
        let out = tokio::task::spawn_blocking(move || {
            let mut names = Vec::new();
            for e in ignore::WalkBuilder::new(&base)
                .standard_filters(false)
                .build()
                .flatten()
            {
                if e.file_type().is_some_and(|t| t.is_file())
                    && let Ok(rel) = e.path().strip_prefix(&base)
                    && !rel.starts_with(".scratch")
                {
                    names.push(rel.to_string_lossy().into_owned());
                }
            }
            names.sort();
            names
        })
        .await?;
        Ok(out)
    }

    async fn get(&self, job_id: &str, name: &str, blake3: &str) -> Result<PathBuf> {
        let path = self.path(job_id, name)?;
        let (_, actual) = size_and_blake3(&path)
            .await
            .with_context(|| format!("reading checkpoint {}", path.display()))?;
        if actual != blake3 {
            bail!(
                "checkpoint {} is damaged: BLAKE3 {} where {} was shipped; refused",
                path.display(),
                crate::model::short_hash(&actual),
                crate::model::short_hash(blake3)
            );
        }
        Ok(path)
    }

    async fn delete(&self, job_id: &str, name: &str) -> Result<()> {
        match tokio::fs::remove_file(self.path(job_id, name)?).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn scratch(&self, job_id: &str, name: &str) -> Result<PathBuf> {
        let flat: String = name
            .chars()
            .map(|c| if c == '/' { '_' } else { c })
            .collect();
        Ok(self
            .root
            .join(job_id)
            .join(".scratch")
            .join(format!("{flat}.{}", std::process::id())))
    }
}

/// A file in the machine's checkpoint directory.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteFile {
    /// Path relative to the checkpoint directory.
    pub name: String,
    pub size: u64,
    pub mtime_ms: i64,
    /// Still for at least [`STABLE_MS`] as of the machine's clock, and not a temp name.
    pub complete: bool,
}

/// List the checkpoint directory `dir` on the machine in one command (the machine's own
/// clock decides what is still). With `writers_gone` (the job's whole process group has
/// exited, as the runner records it) nothing can still be writing: every file with a final
/// name is complete at once, and waiting for it to be still would only delay its rescue.
pub async fn scan(remote: &dyn Remote, dir: &str, writers_gone: bool) -> Result<Vec<RemoteFile>> {
    let script = format!(
        "cd {} 2>/dev/null || exit 0; date +%s.%N; printf '\\0'; \
         find . -type f -printf '%s %T@ %P\\0'",
        sh_quote(dir)
    );
    let out = remote.exec(&script).await?.check("listing checkpoints")?;
    let mut parts = out.stdout.split(|&b| b == 0);
    let Some(now) = parts.next() else {
        return Ok(Vec::new());
    };
    let now_ms = secs_to_ms(String::from_utf8_lossy(now).trim()).unwrap_or(0);
    let mut files = Vec::new();
    for rec in parts {
        let rec = String::from_utf8_lossy(rec);
        let mut it = rec.splitn(3, ' ');
        let (Some(size), Some(mtime), Some(name)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let (Ok(size), Some(mtime_ms)) = (size.parse::<u64>(), secs_to_ms(mtime)) else {
            continue;
        };
        let base = name.rsplit('/').next().unwrap_or(name);
        let temp = base.starts_with('.') || base.ends_with(".part") || base.ends_with(".tmp");
        files.push(RemoteFile {
            name: name.to_string(),
            size,
            mtime_ms,
            complete: !temp && (writers_gone || now_ms - mtime_ms >= STABLE_MS),
        });
    }
    files.sort_by(|a, b| (a.mtime_ms, &a.name).cmp(&(b.mtime_ms, &b.name)));
    Ok(files)
}

/// `1732600000.123456789` -> milliseconds.
fn secs_to_ms(s: &str) -> Option<i64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = int.parse().ok()?;
    let mut ms = 0i64;
    for (i, c) in frac.chars().take(3).enumerate() {
        ms += c.to_digit(10)? as i64 * 10i64.pow(2 - i as u32);
    }
    Some(secs * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::local::LocalRemote;

    #[test]
    fn fractional_seconds_become_milliseconds() {
        assert_eq!(secs_to_ms("1700000000.1239"), Some(1_700_000_000_123));
        assert_eq!(secs_to_ms("1700000000"), Some(1_700_000_000_000));
        assert_eq!(secs_to_ms("x"), None);
    }

    /// A file still being written, or with a temp name, is never complete.
    #[tokio::test]
    async fn only_still_files_with_final_names_are_complete() {
        let home = tempfile::tempdir().unwrap();
        let r = LocalRemote::new(home.path(), "trainctl-test-ckpt-scan");
        let dir = home.path().join("ck");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
        for name in ["epoch-1.pt", "sub/deep.pt", "epoch-2.pt.part", ".hidden"] {
            let f = std::fs::File::create(dir.join(name)).unwrap();
            f.set_modified(old).unwrap();
        }
        std::fs::write(dir.join("growing.pt"), b"half").unwrap();
        let files = scan(&r, dir.to_str().unwrap(), false).await.unwrap();
        let complete: Vec<_> = files
            .iter()
            .filter(|f| f.complete)
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(complete, ["epoch-1.pt", "sub/deep.pt"]);
        assert_eq!(files.len(), 5);
        assert!(scan(&r, "/nonexistent/x", false).await.unwrap().is_empty());
        // Once the job's processes are gone, a file with a final name is complete at once;
        // temp names never are.
        let done = scan(&r, dir.to_str().unwrap(), true).await.unwrap();
        assert_eq!(done.iter().filter(|f| f.complete).count(), 3);
    }

    #[tokio::test]
    async fn a_damaged_checkpoint_is_refused() {
        let data = tempfile::tempdir().unwrap();
        let s = LocalDirStore::new(data.path());
        let src = s.scratch("j-1", "a/b.pt").unwrap();
        std::fs::create_dir_all(src.parent().unwrap()).unwrap();
        std::fs::write(&src, b"weights").unwrap();
        let kept = s.put("j-1", "a/b.pt", &src).await.unwrap();
        let good = blake3::hash(b"weights").to_hex().to_string();
        assert_eq!(
            s.get("j-1", "a/b.pt", &good).await.unwrap(),
            Path::new(&kept)
        );
        assert_eq!(s.list("j-1").await.unwrap(), ["a/b.pt"]);
        std::fs::write(&kept, b"weightz").unwrap();
        let e = s.get("j-1", "a/b.pt", &good).await.unwrap_err();
        assert!(format!("{e:#}").contains("damaged"), "{e:#}");
        assert!(s.put("j-1", "../escape", &src).await.is_err());
    }
}
