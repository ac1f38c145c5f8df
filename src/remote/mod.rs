//! Remotes run commands and move files on a machine. The job state machine, sync,
//! log follow and artifact pull are written once against [`Remote`]; `local` runs
//! processes in a sandbox directory, `ssh` (next) the same over an SSH connection.

pub mod local;
pub mod pack;

use anyhow::{Context, Result};
use async_trait::async_trait;
use std::path::Path;
use tokio::sync::mpsc;

/// The connection to a machine was lost while a command was in flight: whether the command
/// ran is unknown. Operations that are safe to repeat retry on a new connection
/// ([`is_connection_lost`]); the others say so.
#[derive(Debug)]
pub struct ConnectionLost(pub String);

impl std::fmt::Display for ConnectionLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectionLost {}

/// Whether `e` (or anything in its chain) is a [`ConnectionLost`].
pub fn is_connection_lost(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<ConnectionLost>())
}

/// What went wrong, where callers act on it. Decisions are made on this, never on text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The machine's host key was never seen (accept it knowingly).
    HostKeyUnknown,
    /// The machine's host key differs from the recorded one (possible attack).
    HostKeyChanged,
    /// A key needs its passphrase and nobody can be asked.
    PassphraseNeeded,
    /// Credentials refused.
    Auth,
    /// The provider has no capacity for the request now.
    Capacity,
    /// An account limit (quota) stops the request.
    Quota,
    /// The connection dropped; what was in flight may or may not have happened.
    LostConnection,
    /// A provider's API refused the request as malformed or invalid (fix the request).
    BadRequest,
    /// A provider's API does not know the object (an instance already gone).
    NotFound,
}

/// How a caller treats an error: retry it, give up at once, or tell the user to act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retried with backoff (a dropped connection, no capacity yet).
    Transient,
    /// Retrying cannot help (a changed host key): what waits on it ends.
    Permanent,
    /// The user must act (accept a key, add a key to the agent, raise a quota).
    User,
}

impl ErrorKind {
    pub fn class(self) -> ErrorClass {
        use ErrorKind::*;
        match self {
            LostConnection | Capacity => ErrorClass::Transient,
            HostKeyChanged | NotFound => ErrorClass::Permanent,
            BadRequest => ErrorClass::User,
            HostKeyUnknown | PassphraseNeeded | Auth | Quota => ErrorClass::User,
        }
    }
}

/// An error with its [`ErrorKind`]; its message is what the user reads.
#[derive(Debug)]
pub struct Classified {
    pub kind: ErrorKind,
    pub message: String,
}

impl std::fmt::Display for Classified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Classified {}

/// `Err(Classified)` as an `anyhow::Error`.
pub fn classified(kind: ErrorKind, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Classified {
        kind,
        message: message.into(),
    })
}

/// The kind of `e`, from anything in its chain.
pub fn error_kind(e: &anyhow::Error) -> Option<ErrorKind> {
    e.chain().find_map(|c| {
        if let Some(k) = c.downcast_ref::<Classified>() {
            Some(k.kind)
        } else if c.is::<ConnectionLost>() {
            Some(ErrorKind::LostConnection)
        } else {
            None
        }
    })
}

/// Whether retrying `e` is pointless (permanent, or the user must act first).
pub fn is_final(e: &anyhow::Error) -> bool {
    error_kind(e).is_some_and(|k| k.class() != ErrorClass::Transient)
}

/// Run `op` again (up to `tries` times in all) while it fails with a lost connection; the
/// remote reconnects on its own, with backoff. Only for operations safe to repeat.
pub async fn retry_lost<T, F, Fut>(tries: usize, what: &str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut n = 1;
    loop {
        match op().await {
            Err(e) if n < tries && is_connection_lost(&e) => {
                tracing::warn!("{what}: {e:#}; retrying on a new connection ({n}/{tries})");
                n += 1;
            }
            r => return r,
        }
    }
}

/// What a finished command left behind.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// An error naming what failed, with the (sanitised) stderr.
    pub fn check(self, what: &str) -> Result<ExecOutput> {
        if self.success() {
            Ok(self)
        } else {
            // The machine's own lines, each made safe, shown as the lines they were.
            let lines: Vec<String> = self
                .stderr
                .trim_ascii()
                .split(|&b| b == b'\n')
                .map(crate::sanitize::sanitize_line)
                .filter(|l| !l.trim().is_empty())
                .collect();
            anyhow::bail!(
                "{what} failed (exit {}):{}{}",
                self.status,
                if lines.len() > 1 { "\n" } else { " " },
                lines.join("\n")
            )
        }
    }
}

/// One file moved by [`Remote::get`]: its size and BLAKE3 hash, checked after the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub size: u64,
    pub blake3: String,
}

/// A command whose stdin is written after reading the start of its output: a question and
/// its answer in one round trip (see [`Remote::converse`]).
#[async_trait]
pub trait Conversation: Send {
    /// The command's stdout up to and including `mark` (an error if it ends first).
    async fn read_until(&mut self, mark: &[u8]) -> Result<Vec<u8>>;
    /// More of the command's stdin.
    async fn write(&mut self, data: &[u8]) -> Result<()>;
    /// Close stdin; the rest of the output and the exit status.
    async fn finish(self: Box<Self>) -> Result<ExecOutput>;
}

/// The bytes of `buf` up to and including the first `mark`, taken out of it (None while
/// `mark` has not come).
pub fn take_through(buf: &mut Vec<u8>, mark: &[u8]) -> Option<Vec<u8>> {
    let at = memchr::memmem::find(buf, mark)?;
    let rest = buf.split_off(at + mark.len());
    Some(std::mem::replace(buf, rest))
}

/// What follows the files of [`Remote::put_files_between`] on `after`'s stdin, made from
/// what was sent (sizes and hashes known only once the files were read).
pub type Trailer = Box<dyn FnOnce(&[Fetched]) -> Result<Vec<u8>> + Send>;

/// What [`Remote::stream_file`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streamed {
    /// The file does not exist.
    Missing,
    /// Read to its end. `complete`: the `complete_if` file existed before the first byte
    /// was read, so nothing was written to the file after the read began.
    Read { complete: bool },
}

/// A machine trainctl can run things on. Paths are absolute paths on that machine;
/// scripts are POSIX `sh` text whose every argument was quoted with [`sh_quote`].
#[async_trait]
pub trait Remote: Send + Sync {
    /// trainctl's directory on the machine (`~/.trainctl`), absolute.
    fn root(&self) -> &str;

    /// Run a script with `sh -c` and collect its output.
    async fn exec(&self, script: &str) -> Result<ExecOutput>;

    /// Run a script, sending stdout to `sink` chunk by chunk as it comes; returns the exit status.
    async fn exec_stream(&self, script: &str, sink: mpsc::Sender<Vec<u8>>) -> Result<i32>;

    /// Write `data` to `path` atomically (temp name, then rename), creating parents, with `mode`.
    async fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<()>;

    /// Run a script with `data` on its stdin.
    async fn exec_with_stdin(&self, script: &str, data: &[u8]) -> Result<ExecOutput>;

    /// Append `data` to `path` (created if missing, parents too).
    async fn append_file(&self, path: &str, data: &[u8]) -> Result<()>;

    /// Copy local files `rels` (relative to `local_root`) to `remote_root/rel`, keeping the
    /// permission bits. Returns each file's size and BLAKE3 as sent (hashed while read, so
    /// a first sync reads every file once).
    async fn put_files(
        &self,
        local_root: &Path,
        rels: &[String],
        remote_root: &str,
    ) -> Result<Vec<Fetched>> {
        self.put_files_counted(local_root, rels, remote_root, Default::default())
            .await
    }
    /// [`Remote::put_files`], adding the bytes read to `sent` as they go (progress for a
    /// long transfer).
    async fn put_files_counted(
        &self,
        local_root: &Path,
        rels: &[String],
        remote_root: &str,
        sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<Vec<Fetched>>;
    /// Start `script` for a conversation (None when this remote cannot hold one; the
    /// caller then uses separate commands).
    async fn converse<'a>(&'a self, _script: &str) -> Result<Option<Box<dyn Conversation + 'a>>> {
        Ok(None)
    }

    /// One step of a sync in one round trip where the transport allows it: the shell
    /// `before`, then `rels` copied as [`Remote::put_files`] does, then the shell `after`
    /// with `trailer(what was sent)` on its stdin. A failing `before` or copy is an error;
    /// `after`'s output is returned for the caller to judge.
    async fn put_files_between(
        &self,
        local_root: &Path,
        rels: &[String],
        remote_root: &str,
        before: &str,
        after: &str,
        trailer: Trailer,
    ) -> Result<(Vec<Fetched>, ExecOutput)> {
        if !before.is_empty() {
            self.exec(before)
                .await?
                .check("updating links, deletions and times")?;
        }
        let sent = if rels.is_empty() {
            Vec::new()
        } else {
            self.put_files(local_root, rels, remote_root).await?
        };
        let input = trailer(&sent)?;
        let out = self.exec_with_stdin(after, &input).await?;
        Ok((sent, out))
    }

    /// Download `path` to the local file `dest` (temp name, then rename), verifying size and
    /// BLAKE3 against the source.
    async fn get(&self, path: &str, dest: &Path) -> Result<Fetched>;

    /// Run `script` (short, its output text), then stream `path` from `offset` into `sink`
    /// as [`Remote::stream_file`] does: the file is read only after the script ended. One
    /// round trip on a remote machine (here: two commands one after the other).
    async fn exec_then_stream(
        &self,
        script: &str,
        path: &str,
        offset: u64,
        sink: mpsc::Sender<Vec<u8>>,
    ) -> Result<(ExecOutput, Streamed)> {
        let out = self.exec(script).await?;
        let streamed = self.stream_file(path, offset, None, sink).await?;
        Ok((out, streamed))
    }

    /// Up to `max` bytes of `path` from `offset`; `None` when the file does not exist.
    async fn read_range(&self, path: &str, offset: u64, max: usize) -> Result<Option<Vec<u8>>>;

    /// Everything in `path` from `offset` to its current end, sent to `sink` in chunks as it
    /// is read (one round trip on a remote machine). Stops early, without error, when the
    /// receiver goes away. With `complete_if`, also says whether that file existed before
    /// the first byte was read (a job's exit code: the log had its last byte then).
    async fn stream_file(
        &self,
        path: &str,
        offset: u64,
        complete_if: Option<&str>,
        sink: mpsc::Sender<Vec<u8>>,
    ) -> Result<Streamed> {
        let complete = match complete_if {
            Some(m) => self.read_range(m, 0, 0).await?.is_some(),
            None => false,
        };
        let mut off = offset;
        loop {
            match self.read_range(path, off, 1 << 20).await? {
                None => return Ok(Streamed::Missing),
                Some(b) if b.is_empty() => return Ok(Streamed::Read { complete }),
                Some(b) => {
                    off += b.len() as u64;
                    if sink.send(b).await.is_err() {
                        return Ok(Streamed::Read { complete });
                    }
                }
            }
        }
    }
}

/// The most bytes in one chunk a [`Remote`] streams (`stream_file`, `exec_then_stream`):
/// a MiB and an SSH packet. A reader that gathers chunks sizes its buffers by it.
pub const STREAM_CHUNK_MAX: usize = (1 << 20) + (64 << 10);

/// Most of a line a transport carries over to its next chunk so that a chunk ends at a
/// line end ([`line_aligned_len`]).
pub const LINE_CARRY_MAX: usize = 64 << 10;

/// The length of `chunk` through its last line end, when the part of a line after it is
/// at most [`LINE_CARRY_MAX`] bytes; else 0 (no line end, or a line too long to carry:
/// the chunk goes as it is). A log's transport ends its full chunks there, so the follow
/// takes each chunk whole as a piece of complete lines instead of copying it after the
/// part of a line the last one ended with.
pub fn line_aligned_len(chunk: &[u8]) -> usize {
    let from = chunk.len().saturating_sub(LINE_CARRY_MAX + 1);
    memchr::memrchr(b'\n', &chunk[from..]).map_or(0, |p| from + p + 1)
}

/// Quote one shell argument for POSIX `sh`: `'...'` with embedded quotes as `'\''`.
/// Safe for spaces, `$`, backticks, quotes and newlines.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:,+@%".contains(&b))
    {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// The folder, beside each downloaded file, where its partial download lives until it is
/// complete and checked. Artifacts under a folder of this name are never pulled, so no
/// file of a job can be taken for another's partial download.
pub const PARTIAL_DIR: &str = ".trainctl-partial";

/// Where the partial download of `dest` lives (`<dest's folder>/.trainctl-partial/<name>`).
pub fn partial_path(dest: &Path) -> Result<std::path::PathBuf> {
    let parent = dest
        .parent()
        .context("destination has no parent directory")?;
    let name = dest.file_name().context("destination has no file name")?;
    Ok(parent.join(PARTIAL_DIR).join(name))
}

/// Join `rel` under `base` for writing a file that came from a machine: refuses absolute
/// paths, `..`, and anything else that would land outside `base`.
pub fn safe_join(base: &Path, rel: &str) -> Result<std::path::PathBuf> {
    safe_join_path(base, Path::new(rel))
}

/// [`safe_join`] of a name that may not be UTF-8.
pub fn safe_join_path(base: &Path, rel: &Path) -> Result<std::path::PathBuf> {
    let mut out = base.to_path_buf();
    let mut depth = 0usize;
    for c in rel.components() {
        match c {
            std::path::Component::Normal(part) => {
                out.push(part);
                depth += 1;
            }
            std::path::Component::CurDir => {}
            _ => anyhow::bail!(
                "refusing remote path `{}`: it would write outside {}",
                rel.display(),
                base.display()
            ),
        }
    }
    if depth == 0 {
        anyhow::bail!("refusing empty remote path `{}`", rel.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_aligned_at_its_last_line_end_when_the_rest_is_short() {
        assert_eq!(line_aligned_len(b"abc\ndef"), 4);
        assert_eq!(line_aligned_len(b"abc\n"), 4);
        assert_eq!(line_aligned_len(b"abc"), 0);
        assert_eq!(line_aligned_len(b""), 0);
        let mut c = vec![b'x'; 10];
        c.push(b'\n');
        c.extend(std::iter::repeat_n(b'y', LINE_CARRY_MAX));
        assert_eq!(line_aligned_len(&c), 11, "a carry of exactly the most");
        c.push(b'y');
        assert_eq!(line_aligned_len(&c), 0, "one byte more: sent as it is");
    }

    #[test]
    fn quoting_round_trips_through_sh() {
        for s in [
            "plain",
            "with space",
            "it's",
            "$HOME `id` $(id)",
            "new\nline",
            "",
            "\"dq\" \\ back",
            "ünïcödé ✓",
            "-n",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", sh_quote(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
        }
    }

    #[test]
    fn safe_join_refuses_escapes() {
        let b = Path::new("/tmp/dest");
        assert!(safe_join(b, "../../etc/x").is_err());
        assert!(safe_join(b, "/etc/passwd").is_err());
        assert!(safe_join(b, "a/../../b").is_err());
        assert!(safe_join(b, "").is_err());
        assert_eq!(
            safe_join(b, "./a/b.pt").unwrap(),
            Path::new("/tmp/dest/a/b.pt")
        );
    }
}
