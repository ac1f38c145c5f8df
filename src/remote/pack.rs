//! Files as one tar stream, built while it is sent (each file read once and hashed on the
//! way), and the shell that unpacks it on the machine. The stream can carry a trailer after
//! the archive for a command that runs once the files are in place (see
//! [`super::Remote::put_files_between`]): the archive then ends on a whole tar record, where
//! GNU tar stops reading, and a mark line proves the trailer starts where it should.

use super::{ExecOutput, Fetched, Trailer, sh_quote};
use anyhow::{Context, Result, anyhow};
use std::io::{Read, Write};
use std::path::Path;
use tokio::sync::mpsc;

/// GNU tar's default record: it reads whole records, and none past the one that ends the
/// archive.
const TAR_RECORD: u64 = 20 * 512;

/// The line between an archive and its trailer.
const TRAILER_MARK: &str = "--trainctl-trailer--";

/// Exit statuses of [`between_script`]'s own steps.
const BEFORE_FAILED: i32 = 76;
const UNPACK_FAILED: i32 = 77;
const NO_MARK: i32 = 75;

struct HashingReader<'a, R> {
    inner: R,
    hasher: blake3::Hasher,
    n: u64,
    /// Every byte read, across files (progress).
    total: &'a std::sync::atomic::AtomicU64,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.hasher.update(&buf[..k]);
        self.n += k as u64;
        self.total
            .fetch_add(k as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(k)
    }
}

/// A `Write` that hands 1 MiB chunks to an async sender (from a blocking thread).
struct ChunkWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
    /// Bytes written so far.
    n: u64,
}

impl Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.n += b.len() as u64;
        self.buf.extend_from_slice(b);
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(1 << 20));
            self.tx.blocking_send(chunk).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the connection closed")
            })?;
        }
        Ok(())
    }
}

/// A PAX record carrying the mtime to the nanosecond, as `rsync -a` keeps it (the GNU
/// header itself holds whole seconds).
fn append_pax_mtime<W: Write>(
    b: &mut tar::Builder<W>,
    secs: u64,
    nanos: u32,
) -> std::io::Result<()> {
    let body = format!(" mtime={secs}.{nanos:09}\n");
    // The record's length counts its own digits.
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    let record = format!("{len}{body}");
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(record.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "././@PaxHeader", record.as_bytes())
}

/// Write the archive of `rels` (relative to `root`) to `tx` in chunks, then, with a
/// trailer, the padding, the mark line and `trailer(what was sent)`. Blocking. Returns
/// each file's size and BLAKE3 as read into the archive, and the trailer's bytes.
pub fn pack(
    root: &Path,
    rels: &[String],
    total: &std::sync::atomic::AtomicU64,
    tx: mpsc::Sender<Vec<u8>>,
    trailer: Option<Trailer>,
) -> Result<(Vec<Fetched>, Vec<u8>)> {
    for r in rels {
        super::safe_join(Path::new("/x"), r)?;
    }
    let mut w = ChunkWriter {
        tx,
        buf: Vec::with_capacity(1 << 20),
        n: 0,
    };
    let mut sent = Vec::with_capacity(rels.len());
    if !rels.is_empty() {
        let mut b = tar::Builder::new(&mut w);
        for rel in rels {
            let p = root.join(rel);
            let file = std::fs::File::open(&p).with_context(|| format!("opening {rel}"))?;
            let meta = file.metadata()?;
            if let Ok(m) = meta.modified()
                && let Ok(d) = m.duration_since(std::time::UNIX_EPOCH)
            {
                append_pax_mtime(&mut b, d.as_secs(), d.subsec_nanos())?;
            }
            let mut header = tar::Header::new_gnu();
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            // Hash what is read into the archive: exactly the bytes the machine gets.
            let mut reader = HashingReader {
                inner: file.take(meta.len()),
                hasher: blake3::Hasher::new(),
                n: 0,
                total,
            };
            b.append_data(&mut header, rel, &mut reader)
                .with_context(|| format!("packing {rel}"))?;
            sent.push(Fetched {
                size: reader.n,
                blake3: reader.hasher.finalize().to_hex().to_string(),
            });
        }
        b.finish()?;
    }
    let mut tail = Vec::new();
    if let Some(t) = trailer {
        if !rels.is_empty() {
            let pad = (TAR_RECORD - w.n % TAR_RECORD) % TAR_RECORD;
            w.write_all(&vec![0u8; pad as usize])?;
        }
        tail = t(&sent)?;
        w.write_all(TRAILER_MARK.as_bytes())?;
        w.write_all(b"\n")?;
        w.write_all(&tail)?;
    }
    w.flush()?;
    Ok((sent, tail))
}

/// The shell that unpacks an archive into `remote_root`.
pub fn unpack_script(remote_root: &str) -> String {
    format!(
        "mkdir -p {r} && tar -x -p --no-same-owner -f - -C {r}",
        r = sh_quote(remote_root)
    )
}

/// The one command of `put_files_between`: `before`, the archive (when there are files),
/// then `after` reading the trailer.
pub fn between_script(before: &str, has_files: bool, remote_root: &str, after: &str) -> String {
    let mut script = String::new();
    if !before.is_empty() {
        script.push_str(&format!("{{ {before}\n}} || exit {BEFORE_FAILED}\n"));
    }
    if has_files {
        script.push_str(&format!(
            "{} || exit {UNPACK_FAILED}\n",
            unpack_script(remote_root)
        ));
    }
    script.push_str(&format!(
        "read -r m || m=\n[ \"$m\" = {TRAILER_MARK} ] || exit {NO_MARK}\n{after}"
    ));
    script
}

/// What [`between_script`]'s output means: an error for a failed `before` or unpacking,
/// `Ok(None)` when `after` must run alone (a tar that read past its archive, so the mark
/// was not found), else `after`'s own output.
pub fn judge(out: ExecOutput) -> Result<Option<ExecOutput>> {
    match out.status {
        BEFORE_FAILED => Err(out
            .check("updating links, deletions and times")
            .err()
            .unwrap_or_else(|| anyhow!("exit {BEFORE_FAILED}"))),
        UNPACK_FAILED => Err(out
            .check("unpacking files on the machine")
            .err()
            .unwrap_or_else(|| anyhow!("exit {UNPACK_FAILED}"))),
        NO_MARK => {
            tracing::debug!("the machine's tar read past its archive; `after` runs alone");
            Ok(None)
        }
        _ => Ok(Some(out)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `between_script` with `sh` (PATH optionally led by `fake_bin`) on `input`.
    fn run(script: &str, input: &[u8], fake_bin: Option<&Path>) -> (i32, String) {
        use std::io::Write;
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        if let Some(dir) = fake_bin {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", dir.display()));
        }
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = input.to_vec();
        let w = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        w.join().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// The stream `pack` makes for `rels` under `root` with `trailer` after it.
    fn stream(root: &Path, rels: &[String], trailer: &'static [u8]) -> Vec<u8> {
        let (tx, mut rx) = mpsc::channel(1024);
        pack(
            root,
            rels,
            &Default::default(),
            tx,
            Some(Box::new(move |_: &[Fetched]| Ok(trailer.to_vec()))),
        )
        .unwrap();
        let mut v = Vec::new();
        while let Ok(c) = rx.try_recv() {
            v.extend(c);
        }
        v
    }

    #[test]
    fn the_trailer_after_an_archive_reaches_the_command_after_tar() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("a")).unwrap();
        let mut rels = Vec::new();
        // Sizes that end the archive anywhere in a record.
        for (i, n) in [0usize, 1, 511, 512, 513, 9_000, 10_240, 70_001]
            .iter()
            .enumerate()
        {
            let rel = format!("a/f{i}");
            std::fs::write(src.join(&rel), vec![b'x'; *n]).unwrap();
            rels.push(rel);
        }
        let input = stream(&src, &rels, b"the trailer\nline two\n");
        let dest = d.path().join("dest");
        let script = between_script("true", true, dest.to_str().unwrap(), "cat");
        let (status, out) = run(&script, &input, None);
        assert_eq!(status, 0);
        assert_eq!(out, "the trailer\nline two\n");
        for r in &rels {
            assert_eq!(
                std::fs::read(dest.join(r)).unwrap(),
                std::fs::read(src.join(r)).unwrap()
            );
        }
        // A tar that reads past its archive leaves no mark: the script says so (75) and
        // `judge` asks for `after` to run on its own.
        let fake = d.path().join("bin");
        std::fs::create_dir_all(&fake).unwrap();
        std::fs::write(fake.join("tar"), "#!/bin/sh\ncat > /dev/null\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(fake.join("tar"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (status, out) = run(&script, &input, Some(&fake));
        assert_eq!((status, out.as_str()), (NO_MARK, ""));
        let judged = judge(ExecOutput {
            status,
            ..Default::default()
        })
        .unwrap();
        assert!(judged.is_none());
        // A failing `before` stops everything with its own status, and is an error.
        let (status, _) = run(
            &between_script("false", true, dest.to_str().unwrap(), "cat"),
            &input,
            None,
        );
        assert_eq!(status, BEFORE_FAILED);
        let err = judge(ExecOutput {
            status,
            stderr: b"rm: cannot remove 'x'\nsecond line".to_vec(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("rm: cannot remove 'x'\nsecond line"),
            "{err:#}"
        );
    }
}
