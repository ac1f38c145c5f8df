//! The local copy of a job's log, written at the remote offset, and read back.
//!
//! A backlog's whole blocks go to the disk directly (`O_DIRECT`), not through the page
//! cache: a follow of a large log neither pushes the machine's cached files out nor pays
//! for a fresh page-cache page per 4 KiB. On a VM that hands freed memory back to its host
//! (free page reporting, as on this project's CI machines) each fresh page costs the host
//! a fault: the kernel's copy into the page cache was half of a 1 GiB follow's CPU in a
//! slow hour, and a follow writes two GiBs where `ssh host cat` writes one.
//!
//! The part of a write before its first block boundary and after its last go through the
//! page cache (a live job's few lines: all of it), so the blocks one follower writes
//! directly are never cached by it. Writers of one copy take its `flock` exclusively and
//! readers take it shared: a direct write makes the kernel write back and drop the cached
//! pages of its range, which must not race with another process's cached write or read of
//! the same block. Where the file system refuses direct I/O, everything goes through the
//! page cache.

use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Mutex;

/// Direct I/O's unit: offsets, lengths and memory addresses are multiples of it. 4 KiB
/// serves every disk whose logical block is 4 KiB or less (which is all of them).
const BLOCK: u64 = 4096;

/// The most written in one direct write: bytes are copied into an aligned buffer of this
/// size first.
const DIRECT_WRITE: usize = 2 << 20;

/// Less than this of whole blocks (a live job's lines) goes through the page cache: a
/// direct write waits for the disk (on its own stage of the follow). A backlog streamed
/// over SSH comes in pieces of what arrived while the last was parsed, some small: with
/// 256 KiB here, a 1 GiB follow over the test sshd wrote 28-77 MiB through the page cache,
/// with 64 KiB 14-20 MiB, with 16 KiB 5 MiB (the parts of pieces before their first
/// block boundary and after their last).
const DIRECT_MIN: u64 = 16 << 10;

/// Write `pieces`, consecutive, to the file at `path` from byte `at` on (the file is made
/// when missing; nothing else in it changes).
pub(super) fn write_at(path: &Path, at: u64, pieces: &[&[u8]]) -> io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    lock(&file, libc::LOCK_EX)?;
    let end = at + pieces.iter().map(|p| p.len() as u64).sum::<u64>();
    let first = at.next_multiple_of(BLOCK);
    let last = end - end % BLOCK;
    let direct = if last >= first + DIRECT_MIN {
        open_direct(path)
    } else {
        None
    };
    let Some(direct) = direct else {
        return each_part(pieces, at, at, end, |p, pos| file.write_all_at(p, pos));
    };
    each_part(pieces, at, at, first, |p, pos| file.write_all_at(p, pos))?;
    let mut buf = AlignedBuf::take();
    let (mut filled, mut written_to, mut refused) = (0usize, first, false);
    let flush = |buf: &[u8], pos: u64, refused: &mut bool| -> io::Result<()> {
        if !*refused {
            match direct.write_all_at(buf, pos) {
                Ok(()) => return Ok(()),
                // Alignment this file system does not take: the page cache from here.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => *refused = true,
                Err(e) => return Err(e),
            }
        }
        file.write_all_at(buf, pos)
    };
    each_part(pieces, at, first, last, |mut p, _| {
        while !p.is_empty() {
            let n = p.len().min(DIRECT_WRITE - filled);
            buf.bytes()[filled..filled + n].copy_from_slice(&p[..n]);
            (filled, p) = (filled + n, &p[n..]);
            if filled == DIRECT_WRITE {
                flush(&buf.bytes()[..filled], written_to, &mut refused)?;
                (written_to, filled) = (written_to + filled as u64, 0);
            }
        }
        Ok(())
    })?;
    if filled > 0 {
        flush(&buf.bytes()[..filled], written_to, &mut refused)?;
    }
    AlignedBuf::give(buf);
    each_part(pieces, at, last, end, |p, pos| file.write_all_at(p, pos))
}

/// At most `max` bytes of the file at `path` from byte `from` (fewer at its end; `None`
/// when there is no such file).
pub(super) fn read_at(path: &Path, from: u64, max: usize) -> io::Result<Option<Vec<u8>>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    lock(&file, libc::LOCK_SH)?;
    crate::remote::local::read_at_most(&file, from, max).map(Some)
}

/// `flock` the file (released when it is closed).
fn lock(file: &std::fs::File, how: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor this function's caller owns.
        if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Call `f` with each part of `pieces` (consecutive, the first at byte `at`) that lies in
/// bytes `[from, to)`, and where it starts.
fn each_part(
    pieces: &[&[u8]],
    at: u64,
    from: u64,
    to: u64,
    mut f: impl FnMut(&[u8], u64) -> io::Result<()>,
) -> io::Result<()> {
    let mut pos = at;
    for p in pieces {
        let (start, end) = (pos.max(from), (pos + p.len() as u64).min(to));
        if start < end {
            f(&p[(start - pos) as usize..(end - pos) as usize], start)?;
        }
        pos += p.len() as u64;
        if pos >= to {
            break;
        }
    }
    Ok(())
}

/// The file opened for direct writes, when its file system takes them.
#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_: &Path) -> Option<std::fs::File> {
    None
}

/// [`DIRECT_WRITE`] bytes aligned to [`BLOCK`].
struct AlignedBuf(std::ptr::NonNull<u8>);

// SAFETY: the buffer is owned memory with no aliases; it moves between threads whole.
unsafe impl Send for AlignedBuf {}

/// One kept buffer (commits of one log follow one another).
static KEPT: Mutex<Option<AlignedBuf>> = Mutex::new(None);

impl AlignedBuf {
    fn layout() -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(DIRECT_WRITE, BLOCK as usize).expect("a valid layout")
    }

    fn take() -> AlignedBuf {
        if let Some(b) = KEPT.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return b;
        }
        // SAFETY: the layout's size is not zero. Zeroed: the buffer is read as bytes.
        let p = unsafe { std::alloc::alloc_zeroed(Self::layout()) };
        match std::ptr::NonNull::new(p) {
            Some(p) => AlignedBuf(p),
            None => std::alloc::handle_alloc_error(Self::layout()),
        }
    }

    fn give(b: AlignedBuf) {
        let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
        if kept.is_none() {
            *kept = Some(b);
        }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the allocation is DIRECT_WRITE bytes, initialised, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr(), DIRECT_WRITE) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by `take` with this layout.
        unsafe { std::alloc::dealloc(self.0.as_ptr(), Self::layout()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic log-like bytes.
    fn text(len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 64);
        let mut i = 0u64;
        while v.len() < len {
            v.extend_from_slice(format!("line {i} loss={}\n", i % 977).as_bytes());
            i += 1;
        }
        v.truncate(len);
        v
    }

    /// Cut `bytes` into commits of random sizes, each of a few random pieces, and write
    /// them in order: the start of each commit and its pieces.
    fn commits(bytes: &[u8], seed: u64, max: usize) -> Vec<(u64, Vec<&[u8]>)> {
        let mut rng = seed;
        let mut next = |n: usize| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) as usize % n.max(1)
        };
        let (mut out, mut at) = (Vec::new(), 0usize);
        while at < bytes.len() {
            let len = (1 + next(max)).min(bytes.len() - at);
            let mut pieces = Vec::new();
            let mut p = at;
            while p < at + len {
                let n = (1 + next(len)).min(at + len - p);
                pieces.push(&bytes[p..p + n]);
                p += n;
            }
            out.push((at as u64, pieces));
            at += len;
        }
        out
    }

    /// Pages of the file in the page cache: (resident, all).
    fn resident_pages(path: &Path) -> (usize, usize) {
        let f = std::fs::File::open(path).unwrap();
        let len = f.metadata().unwrap().len() as usize;
        let page = 4096;
        let pages = len.div_ceil(page);
        // SAFETY: a read-only shared map of a file this test owns, unmapped below;
        // mincore fills one byte per page of it.
        unsafe {
            let m = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(m, libc::MAP_FAILED);
            let mut vec = vec![0u8; pages];
            assert_eq!(libc::mincore(m, len, vec.as_mut_ptr()), 0);
            libc::munmap(m, len);
            (vec.iter().filter(|&&b| b & 1 == 1).count(), pages)
        }
    }

    #[test]
    fn a_log_written_in_any_pieces_is_the_log_and_a_backlog_skips_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let want = text(9 << 20);
        // Small commits (a live job's: all through the page cache), large ones (a
        // backlog: mostly direct, larger than the aligned buffer too), and the same
        // bytes again over the copy (a retry), each from an unaligned start.
        for (name, max) in [("small", 9000), ("large", 5 << 20)] {
            let path = dir.path().join(name);
            for (at, pieces) in commits(&want, 7, max) {
                write_at(&path, at, &pieces).unwrap();
            }
            assert!(
                std::fs::read(&path).unwrap() == want,
                "{name}: copy differs"
            );
            for (at, pieces) in commits(&want, 11, max).into_iter().skip(1) {
                write_at(&path, at, &pieces).unwrap();
            }
            assert!(
                std::fs::read(&path).unwrap() == want,
                "{name}: rewrite differs"
            );
            let got = read_at(&path, 12_345, 100_000).unwrap().unwrap();
            assert!(got == want[12_345..112_345]);
        }
        assert_eq!(read_at(&dir.path().join("none"), 0, 10).unwrap(), None);
        // Where direct writes are taken (not tmpfs, which caches whatever is written), a
        // backlog's pages never entered the page cache: the copy read above is read
        // from the disk.
        let fresh = dir.path().join("fresh");
        write_at(&fresh, 0, &[&want]).unwrap();
        let (resident, pages) = resident_pages(&fresh);
        // SAFETY: statfs fills the struct given for a path that exists.
        let on_tmpfs = unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            let p = std::ffi::CString::new(fresh.as_os_str().as_encoded_bytes()).unwrap();
            assert_eq!(libc::statfs(p.as_ptr(), &mut st), 0);
            st.f_type == libc::TMPFS_MAGIC
        };
        if cfg!(target_os = "linux") && !on_tmpfs && open_direct(&fresh).is_some() {
            assert!(resident <= 2, "{resident} of {pages} pages cached");
        }
        assert!(std::fs::read(&fresh).unwrap() == want);
    }

    #[test]
    fn followers_writing_one_copy_at_once_leave_the_log() {
        // Two processes following one log commit its bytes with different boundaries,
        // one behind the other; a reader reads what is there meanwhile.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy");
        let want = text(24 << 20);
        std::thread::scope(|s| {
            for (seed, max) in [(3, 3 << 20), (5, 700_000), (9, 1 << 20)] {
                let (path, want) = (&path, &want);
                s.spawn(move || {
                    for (at, pieces) in commits(want, seed, max) {
                        write_at(path, at, &pieces).unwrap();
                    }
                });
            }
            s.spawn(|| {
                for i in 0..200u64 {
                    let from = i * 100_003 % (20 << 20);
                    if let Some(got) = read_at(&path, from, 65_536).unwrap() {
                        // What is there is the log; bytes not written yet are zeros.
                        for (k, &b) in got.iter().enumerate() {
                            let w = want[from as usize + k];
                            assert!(b == w || b == 0, "byte {} is {b}", from as usize + k);
                        }
                    }
                }
            });
        });
        assert!(std::fs::read(&path).unwrap() == want);
    }
}
