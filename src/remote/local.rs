//! The local remote: processes on this machine, inside a sandbox directory.
//!
//! Every process it starts gets `HOME=<sandbox>/home` and the environment marker
//! `TRAINCTL_SANDBOX=<instance id>`, which descendants inherit even when they leave the
//! process group (a detached job does); the local provider finds and stops them by it.

use super::{ExecOutput, Fetched, Remote, Streamed};
use anyhow::{Context, Result};
use async_trait::async_trait;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

/// Environment variable that marks every process started in a sandbox.
pub const SANDBOX_ENV: &str = "TRAINCTL_SANDBOX";

#[derive(Debug, Clone)]
pub struct LocalRemote {
    home: PathBuf,
    root: String,
    marker: String,
}

impl LocalRemote {
    /// A remote for the sandbox whose home is `home`, marked with `marker`.
    pub fn new(home: &Path, marker: &str) -> LocalRemote {
        LocalRemote {
            home: home.to_path_buf(),
            root: home.join(".trainctl").to_string_lossy().into_owned(),
            marker: marker.to_string(),
        }
    }

    fn command(&self, script: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .current_dir(&self.home)
            .env("HOME", &self.home)
            .env(SANDBOX_ENV, &self.marker)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }

    /// `script` started with its stdin, stdout and stderr piped.
    fn spawn_piped(&self, script: &str) -> Result<tokio::process::Child> {
        self.command(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running sh in the sandbox")
    }
}

/// Copy `src` to `dest` through a temp name in the same directory, hashing as it goes.
/// The caller has created `dest`'s parent directory.
fn copy_hashed(src: &Path, dest: &Path, buf: &mut Vec<u8>) -> Result<Fetched> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let parent = dest
        .parent()
        .context("destination has no parent directory")?;
    let tmp = crate::remote::partial_path(dest)?;
    std::fs::create_dir_all(tmp.parent().unwrap_or(parent))?;
    let mut input =
        std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mode = input.metadata()?.permissions().mode() & 0o7777;
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
    };
    // Another copy into the same folder may have just removed the emptied partial folder.
    let mut out = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(tmp.parent().unwrap_or(parent))?;
            open()
        }
        r => r,
    }
    .with_context(|| format!("creating {}", tmp.display()))?;
    let mut hasher = blake3::Hasher::new();
    if buf.len() < 256 * 1024 {
        buf.resize(256 * 1024, 0);
    }
    let mut size = 0u64;
    loop {
        let n = input.read(buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        size += n as u64;
    }
    // The source's mtime, to the nanosecond, as `rsync -a` keeps it.
    if let Ok(m) = input.metadata().and_then(|m| m.modified()) {
        out.set_modified(m)?;
    }
    drop(out);
    // The umask may have narrowed the mode at creation.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, dest).with_context(|| format!("renaming into {}", dest.display()))?;
    if let Some(d) = tmp.parent() {
        let _ = std::fs::remove_dir(d);
    }
    Ok(Fetched {
        size,
        blake3: hasher.finalize().to_hex().to_string(),
    })
}

/// BLAKE3 of a local file, hex.
pub fn hash_file(path: &Path) -> Result<(u64, String)> {
    let (size, b3, _) = hash_file_with(path, false)?;
    Ok((size, b3))
}

/// Size and BLAKE3 of a local file, hex, read once; its SHA-256 too when `with_sha256`
/// (to compare with a machine that has `sha256sum` but no `b3sum`).
pub fn hash_file_with(path: &Path, with_sha256: bool) -> Result<(u64, String, Option<String>)> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut sha = with_sha256.then(sha2::Sha256::new);
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(s) = sha.as_mut() {
            s.update(&buf[..n]);
        }
        size += n as u64;
    }
    Ok((
        size,
        hasher.finalize().to_hex().to_string(),
        sha.map(|s| crate::model::hex(&s.finalize())),
    ))
}

/// A command of the local remote in conversation.
struct LocalConversation {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    stdout: tokio::process::ChildStdout,
    stderr: tokio::task::JoinHandle<Vec<u8>>,
    buffered: Vec<u8>,
}

#[async_trait]
impl super::Conversation for LocalConversation {
    async fn read_until(&mut self, mark: &[u8]) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(answer) = super::take_through(&mut self.buffered, mark) {
                return Ok(answer);
            }
            let n = self.stdout.read(&mut buf).await?;
            if n == 0 {
                anyhow::bail!("the command ended before answering");
            }
            self.buffered.extend_from_slice(&buf[..n]);
        }
    }

    async fn write(&mut self, data: &[u8]) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        Ok(stdin.write_all(data).await?)
    }

    async fn finish(mut self: Box<Self>) -> Result<ExecOutput> {
        drop(self.stdin.take());
        let mut stdout = std::mem::take(&mut self.buffered);
        self.stdout.read_to_end(&mut stdout).await?;
        let status = self.child.wait().await?;
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        Ok(ExecOutput {
            status: status.code().unwrap_or(128 + 9),
            stdout,
            stderr,
        })
    }
}

#[async_trait]
impl Remote for LocalRemote {
    fn root(&self) -> &str {
        &self.root
    }

    async fn converse<'a>(
        &'a self,
        script: &str,
    ) -> Result<Option<Box<dyn super::Conversation + 'a>>> {
        let mut child = self.spawn_piped(script)?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut err = child.stderr.take().context("no stderr pipe")?;
        let stderr = tokio::spawn(async move {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v).await;
            v
        });
        Ok(Some(Box::new(LocalConversation {
            child,
            stdin,
            stdout,
            stderr,
            buffered: Vec::new(),
        })))
    }

    async fn exec(&self, script: &str) -> Result<ExecOutput> {
        let out = self
            .command(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .context("running sh in the sandbox")?;
        Ok(ExecOutput {
            status: out.status.code().unwrap_or(128 + 9),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    async fn exec_stream(&self, script: &str, sink: mpsc::Sender<Vec<u8>>) -> Result<i32> {
        let mut child = self
            .command(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("running sh in the sandbox")?;
        let mut stdout = child.stdout.take().context("no stdout pipe")?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stdout.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if sink.send(buf[..n].to_vec()).await.is_err() {
                // The reader went away: stop the command rather than let it block.
                let _ = child.start_kill();
                break;
            }
        }
        let status = child.wait().await?;
        Ok(status.code().unwrap_or(128 + 9))
    }

    async fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        let path = PathBuf::from(path);
        let data = data.to_vec();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let parent = path.parent().context("path has no parent")?;
            std::fs::create_dir_all(parent)?;
            let tmp = parent.join(format!(
                ".{}.trainctl-part",
                path.file_name().context("no file name")?.to_string_lossy()
            ));
            std::fs::write(&tmp, &data)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
            std::fs::rename(&tmp, &path)?;
            Ok(())
        })
        .await?
    }

    async fn exec_with_stdin(&self, script: &str, data: &[u8]) -> Result<ExecOutput> {
        use tokio::io::AsyncWriteExt;
        let mut child = self.spawn_piped(script)?;
        let mut stdin = child.stdin.take().context("no stdin pipe")?;
        let data = data.to_vec();
        let writer = tokio::spawn(async move {
            let r = stdin.write_all(&data).await;
            drop(stdin);
            r
        });
        let out = child.wait_with_output().await?;
        let _ = writer.await;
        Ok(ExecOutput {
            status: out.status.code().unwrap_or(128 + 9),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    async fn append_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let path = PathBuf::from(path);
        let data = data.to_vec();
        tokio::task::spawn_blocking(move || -> Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            f.write_all(&data)?;
            Ok(())
        })
        .await?
    }

    async fn put_files_counted(
        &self,
        local_root: &Path,
        rels: &[String],
        remote_root: &str,
        total: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<Vec<Fetched>> {
        let local_root = local_root.to_path_buf();
        let remote_root = PathBuf::from(remote_root);
        let rels = rels.to_vec();
        tokio::task::spawn_blocking(move || -> Result<Vec<Fetched>> {
            let mut sent = Vec::with_capacity(rels.len());
            let mut buf = Vec::new();
            let mut made: Option<PathBuf> = None;
            for rel in &rels {
                let dest = super::safe_join(&remote_root, rel)?;
                let parent = dest.parent().context("no parent")?;
                if made.as_deref() != Some(parent) {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                    made = Some(parent.to_path_buf());
                }
                let f = copy_hashed(&local_root.join(rel), &dest, &mut buf)?;
                total.fetch_add(f.size, std::sync::atomic::Ordering::Relaxed);
                sent.push(f);
            }
            Ok(sent)
        })
        .await?
    }

    async fn get(&self, path: &str, dest: &Path) -> Result<Fetched> {
        let src = PathBuf::from(path);
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || -> Result<Fetched> {
            let parent = dest
                .parent()
                .context("destination has no parent directory")?;
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
            let fetched = copy_hashed(&src, &dest, &mut Vec::new())?;
            // Verify what landed, not what we meant to write.
            let (size, hash) = hash_file(&dest)?;
            let src_len = std::fs::metadata(&src)?.len();
            if size != fetched.size || hash != fetched.blake3 || size != src_len {
                let _ = std::fs::remove_file(&dest);
                anyhow::bail!(
                    "{} changed or was corrupted while copying (size {size} vs {src_len})",
                    src.display()
                );
            }
            Ok(fetched)
        })
        .await?
    }

    /// A file here is read on one blocking thread, a MiB at a time, straight into the
    /// buffers sent (not through tokio's file, which copies each read once more).
    async fn stream_file(
        &self,
        path: &str,
        offset: u64,
        complete_if: Option<&str>,
        sink: mpsc::Sender<Vec<u8>>,
    ) -> Result<Streamed> {
        let path = path.to_string();
        let complete_if = complete_if.map(str::to_string);
        tokio::task::spawn_blocking(move || {
            let complete = complete_if.is_some_and(|m| std::fs::metadata(m).is_ok());
            let f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(Streamed::Missing);
                }
                Err(e) => return Err(e).with_context(|| format!("opening {path}")),
            };
            let mut off = offset;
            loop {
                const READ: usize = 1 << 20;
                const _: () = assert!(READ <= super::STREAM_CHUNK_MAX);
                let mut buf =
                    read_at_most(&f, off, READ).with_context(|| format!("reading {path}"))?;
                if buf.is_empty() {
                    return Ok(Streamed::Read { complete });
                }
                // A full read ends at its last line end (the rest is read again next time):
                // the follow then takes each chunk whole as a piece, uncopied.
                if buf.len() == READ {
                    let whole = crate::remote::line_aligned_len(&buf);
                    if whole > 0 {
                        buf.truncate(whole);
                    }
                }
                off += buf.len() as u64;
                if sink.blocking_send(buf).is_err() {
                    return Ok(Streamed::Read { complete });
                }
            }
        })
        .await?
    }

    async fn read_range(&self, path: &str, offset: u64, max: usize) -> Result<Option<Vec<u8>>> {
        let mut f = match tokio::fs::File::open(path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {path}")),
        };
        f.seek(std::io::SeekFrom::Start(offset)).await?;
        let mut buf = Vec::with_capacity(max.min(1 << 20));
        f.take(max as u64).read_to_end(&mut buf).await?;
        Ok(Some(buf))
    }
}

/// Up to `max` bytes of `f` from `offset` (fewer at its end), read straight into a new
/// buffer's spare room: a follow reads a whole log this way, and zeroing each buffer
/// first cost as much as the read.
pub fn read_at_most(f: &std::fs::File, offset: u64, max: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::io::AsRawFd;
    let mut buf: Vec<u8> = crate::bufpool::take(max);
    while buf.len() < max {
        let want = max - buf.len();
        // A kept buffer may have more room than asked for.
        let spare = &mut buf.spare_capacity_mut()[..want];
        // SAFETY: pread writes at most `spare.len()` bytes into the spare room it is given,
        // and `set_len` covers only the bytes it reports written.
        let n = unsafe {
            libc::pread(
                f.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                (offset + buf.len() as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        // SAFETY: the first `n` bytes of the spare room were written by pread.
        unsafe { buf.set_len(buf.len() + n as usize) };
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log streamed from here comes in chunks that end at a line end (but a line too
    /// long to carry over and the last part), and all of it, in order.
    #[tokio::test]
    async fn streamed_chunks_end_at_line_ends_and_make_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let (data, long) = crate::testkit::log_with_a_long_line(5 << 20);
        std::fs::write(&p, &data).unwrap();
        let remote = LocalRemote::new(dir.path(), "m");
        let (tx, mut rx) = mpsc::channel(1 << 10);
        let path = p.to_string_lossy().to_string();
        let streamed = remote.stream_file(&path, 0, None, tx).await.unwrap();
        assert!(matches!(streamed, Streamed::Read { .. }));
        let mut chunks = Vec::new();
        while let Some(c) = rx.recv().await {
            chunks.push(c);
        }
        assert!(chunks.len() > 4);
        let mut end = 0;
        for c in &chunks[..chunks.len() - 1] {
            end += c.len();
            // Only a chunk that ends inside the long line may end elsewhere.
            assert!(
                c.ends_with(b"\n") || long.contains(&end),
                "a chunk ends at {end}"
            );
        }
        assert_eq!(chunks.concat(), data);
    }

    #[test]
    fn a_read_into_a_kept_buffer_larger_than_asked_reads_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        // Kept buffers of 4 MiB: the read of 300 000 bytes likely gets one.
        for _ in 0..4 {
            crate::bufpool::give(Vec::with_capacity(4 << 20));
        }
        let got = read_at_most(&f, 1000, 300_000).unwrap();
        assert_eq!(got.len(), 300_000);
        assert_eq!(got, data[1000..301_000]);
        let tail = read_at_most(&f, (1 << 20) - 10, 300_000).unwrap();
        assert_eq!(tail, data[(1 << 20) - 10..]);
    }

    #[test]
    fn file_hashes_match_the_one_shot_functions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        use sha2::Digest;
        let want_sha: String = sha2::Sha256::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let (n, b3, sha) = hash_file_with(&p, true).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(b3, blake3::hash(&data).to_hex().to_string());
        assert_eq!(sha, Some(want_sha));
        assert_eq!(hash_file_with(&p, false).unwrap().2, None);
        assert_eq!(hash_file(&p).unwrap(), (n, b3));
    }

    #[tokio::test]
    async fn exec_stream_delivers_output_as_it_comes_and_the_status() {
        let dir = tempfile::tempdir().unwrap();
        let r = LocalRemote::new(dir.path(), "t-stream");
        let (tx, mut rx) = mpsc::channel(16);
        let run = tokio::spawn(async move {
            r.exec_stream("echo one; sleep 0.3; echo two; exit 7", tx)
                .await
        });
        // The first chunk arrives before the command ends.
        let first = tokio::time::timeout(std::time::Duration::from_millis(250), rx.recv())
            .await
            .expect("first line should stream before the command ends")
            .unwrap();
        assert_eq!(first, b"one\n");
        let mut rest = Vec::new();
        while let Some(c) = rx.recv().await {
            rest.extend(c);
        }
        assert_eq!(rest, b"two\n");
        assert_eq!(run.await.unwrap().unwrap(), 7);
    }

    #[tokio::test]
    async fn put_get_and_read_range_round_trip_with_checks() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        let r = LocalRemote::new(&home, "t-files");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub dir")).unwrap();
        std::fs::write(src.join("sub dir/a b.txt"), b"hello world").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            src.join("sub dir/a b.txt"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        let dest_root = home.join("code");
        let n = r
            .put_files(
                &src,
                &["sub dir/a b.txt".into()],
                dest_root.to_str().unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(n[0].size, 11);
        assert_eq!(
            n[0].blake3,
            blake3::hash(b"hello world").to_hex().to_string()
        );
        let copied = dest_root.join("sub dir/a b.txt");
        assert_eq!(
            std::fs::metadata(&copied).unwrap().permissions().mode() & 0o777,
            0o750
        );
        let got = r
            .read_range(copied.to_str().unwrap(), 6, 100)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"world");
        assert!(
            r.read_range("/nonexistent/x", 0, 10)
                .await
                .unwrap()
                .is_none()
        );
        let back = dir.path().join("back/x.txt");
        let f = r.get(copied.to_str().unwrap(), &back).await.unwrap();
        assert_eq!(f.size, 11);
        assert_eq!(f.blake3, blake3::hash(b"hello world").to_hex().to_string());
        // A remote name that climbs out of the target is refused before anything is written.
        assert!(
            r.put_files(&src, &["../escape".into()], dest_root.to_str().unwrap())
                .await
                .is_err()
        );
    }
}
