//! Following a log: stream new bytes from the stored offset, parse, write the local copy at the remote offset, commit by compare-and-swap.

use super::*;

impl Engine {
    /// Read every new byte of an attempt's log into the store and the local copy: one
    /// streamed read (one round trip), committed in pieces of complete lines as they
    /// arrive, so memory stays bounded whatever the backlog. With `final_read`, a last line
    /// without a newline is taken too (the job has ended). Returns the bytes consumed.
    pub(super) async fn pump_log(
        &self,
        remote: &dyn Remote,
        att: &AttemptRecord,
        final_read: bool,
    ) -> Result<usize> {
        let path = job::log_path(&att.remote_dir);
        let read = |from, tx| -> LogRead<'_, ()> {
            Box::pin(async move { Ok((remote.stream_file(&path, from, None, tx).await?, ())) })
        };
        Ok(self.pump_log_read(att, final_read, read).await?.0)
    }

    /// [`Engine::pump_log`] with the read given: `read(from, sink)` streams the log from
    /// byte `from` into `sink` and says whether that took the whole log (then it is the
    /// last read, as with `final_read`), with whatever else it learnt (the job's status,
    /// read in the same command). Returns the bytes consumed, whether the read was the
    /// last, and what it learnt.
    pub(super) async fn pump_log_read<'a, T>(
        &self,
        att: &AttemptRecord,
        final_read: bool,
        read: impl FnOnce(u64, mpsc::Sender<Vec<u8>>) -> LogRead<'a, T>,
    ) -> Result<(usize, bool, T)> {
        let start = self.store().log_offset(&att.job_id, att.attempt)?;
        // Chunks of up to a MiB (local files and SSH streams are read so).
        let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
        let reader = read(start.byte_offset, tx);
        let from = start.byte_offset;
        let consume = self.commit_stream(att, start, rx);
        let began = std::time::Instant::now();
        let (read, consumed) = tokio::join!(reader, consume);
        // Evaluated first: a failed read is an error whatever the caller knows.
        let (streamed, learnt) = read?;
        let whole = matches!(streamed, crate::remote::Streamed::Read { complete: true });
        let final_read = final_read || whole;
        let (mut total, cur, rest) = consumed?;
        tracing::debug!(
            "{} attempt {}: {total} bytes of log committed from {} in {} ms",
            att.job_id,
            att.attempt,
            from,
            began.elapsed().as_millis()
        );
        // The job has ended and the whole file was read: its last line is complete even
        // without a newline.
        if final_read
            && let Some(rest) = rest
            && !rest.is_empty()
            && self.commit_log_piece(att, &cur, &rest).await?.is_some()
        {
            total += rest.len();
        }
        Ok((total, final_read, learnt))
    }

    /// Commit the bytes `rx` brings (they start at `start`) in pieces of complete lines,
    /// as they arrive: up to [`LOG_CHUNK`] each, or whatever complete lines are there when
    /// nothing more has come. Returns the bytes committed, the offset after them and the
    /// partial last line left over (the caller decides whether it is complete; `None`
    /// when another process took over the log).
    ///
    /// Four stages run side by side, each handing the next a piece at a time: cutting
    /// the stream into pieces (here), parsing (a thread of its own, carrying the parser
    /// from piece to piece), writing the local copy (a thread of its own: its direct
    /// writes wait for the disk, 2 s for a GiB on this project's VMs, while the commits
    /// go on), and committing (packing the points, the compare-and-swap of offset and
    /// points, on a blocking thread). A piece is committed only after every piece before
    /// it and after its bytes are in the local copy; parsing runs ahead by at most a few
    /// pieces.
    async fn commit_stream(
        &self,
        att: &AttemptRecord,
        start: LogOffset,
        mut rx: mpsc::Receiver<Vec<u8>>,
    ) -> Result<(usize, LogOffset, Option<Vec<u8>>)> {
        let key = (att.job_id.clone(), att.attempt);
        // A few pieces queue before the parser, so the transport keeps reading while a
        // piece slow to parse is parsed (a remote stalls when nobody reads).
        let (piece_tx, mut piece_rx) = mpsc::channel::<Vec<u8>>(3);
        let (parsed_tx, mut parsed_rx) = mpsc::channel::<ParsedPiece>(2);
        let parsing = tokio::task::spawn_blocking({
            let (engine, key, start) = (self.clone(), key.clone(), start.clone());
            move || {
                let mut parser = engine.take_parser(&key, &start);
                let mut cur = start;
                // Where the stage's time went (debug log): starved, busy, held up.
                let mut times = StageTimes::default();
                let mut next = crate::series::Batch::default();
                while let Some(data) = times.waiting(|| piece_rx.blocking_recv()) {
                    let batch = std::mem::take(&mut next);
                    let parsed = times.busy(|| engine.parse_piece(&mut parser, &cur, data, batch));
                    next = crate::series::Batch::sized_like(&parsed.batch);
                    cur = parsed.new.clone();
                    if !times.held(|| parsed_tx.blocking_send(parsed).is_ok()) {
                        break;
                    }
                }
                tracing::debug!("{} parsing: {times}", key.0);
                (parser, cur.byte_offset)
            }
        });
        let cutting = async move {
            let mut pending: Vec<u8> = crate::bufpool::take(PENDING_ROOM);
            let mut times = StageTimes::default();
            loop {
                let began = std::time::Instant::now();
                let chunk = tokio::select! {
                    c = rx.recv() => c,
                    // The commits stopped (another process owns the log, or an error).
                    _ = piece_tx.closed() => return pending,
                };
                times.waited += began.elapsed();
                let open = match chunk {
                    // A chunk that starts a piece becomes it, uncopied (the transports end
                    // their full chunks at a line end, so most do).
                    Some(chunk) if pending.is_empty() && chunk.capacity() >= LOG_CHUNK => {
                        crate::bufpool::give(std::mem::replace(&mut pending, chunk));
                        true
                    }
                    Some(chunk) => {
                        pending.extend_from_slice(&chunk);
                        crate::bufpool::give(chunk);
                        true
                    }
                    None => false,
                };
                // Take whatever else already arrived, up to a piece's size; not after
                // a chunk that is already a good piece of whole lines (copying the next
                // one after it would cost more than the larger piece saves).
                let whole_piece = |p: &Vec<u8>| p.len() >= LOG_CHUNK / 2 && p.ends_with(b"\n");
                while open && pending.len() < LOG_CHUNK && !whole_piece(&pending) {
                    match rx.try_recv() {
                        Ok(c) => {
                            pending.extend_from_slice(&c);
                            crate::bufpool::give(c);
                        }
                        Err(_) => break,
                    }
                }
                let mut take = complete_prefix_len(&pending);
                // A last line without its newline is left to the caller: a stream cut
                // mid-line must not commit half a line.
                if take == 0 && pending.len() >= LOG_CHUNK {
                    take = pending.len();
                }
                if take > 0 {
                    let mut next = crate::bufpool::take(PENDING_ROOM);
                    next.extend_from_slice(&pending[take..]);
                    pending.truncate(take);
                    let piece = std::mem::replace(&mut pending, next);
                    let began = std::time::Instant::now();
                    if piece_tx.send(piece).await.is_err() {
                        return pending;
                    }
                    times.held_up += began.elapsed();
                    times.items += 1;
                }
                if !open {
                    tracing::debug!("cutting: {times}");
                    return pending;
                }
            }
        };
        // The writer takes the parsed pieces, writes them to the local copy and hands them
        // on to the committer. Each stage owns its receiver: when the committer stops
        // (another process won, or an error), the receiver goes with it, so the writer's
        // next send fails, the writer stops, then the parser, the cutter, and the
        // transport is told to stop. A receiver kept alive here left the parser waiting
        // forever on a full channel.
        let (written_tx, mut written_rx) = mpsc::channel::<ParsedPiece>(2);
        let writing = tokio::task::spawn_blocking({
            let (engine, att) = (self.clone(), att.clone());
            move || {
                let mut times = StageTimes::default();
                while let Some(piece) = times.waiting(|| parsed_rx.blocking_recv()) {
                    times.busy(|| engine.write_local_copy(&att, std::slice::from_ref(&piece)))?;
                    if !times.held(|| written_tx.blocking_send(piece).is_ok()) {
                        break;
                    }
                }
                tracing::debug!("{} writing: {times}", att.job_id);
                Ok::<_, anyhow::Error>(())
            }
        });
        let committing = async move {
            let (mut cur, mut total) = (start.clone(), 0usize);
            let mut times = StageTimes::default();
            loop {
                let began = std::time::Instant::now();
                let Some(written) = written_rx.recv().await else {
                    break;
                };
                times.waited += began.elapsed();
                // The pieces written while the last commit ran go in one transaction with it
                // (when the store is the slowest stage, fewer and larger commits).
                let mut group = vec![written];
                while group.len() < COMMIT_GROUP {
                    match written_rx.try_recv() {
                        Ok(p) => group.push(p),
                        Err(_) => break,
                    }
                }
                let (engine, att) = (self.clone(), att.clone());
                let began = std::time::Instant::now();
                let committed =
                    tokio::task::spawn_blocking(move || engine.commit_written(&att, group))
                        .await??;
                times.worked += began.elapsed();
                times.items += 1;
                match committed {
                    Some((len, next)) => {
                        cur = next;
                        total += len;
                    }
                    // Another process advanced this log first: it owns these bytes.
                    None => return Ok((total, cur, false)),
                }
            }
            tracing::debug!("{} committing: {times}", att.job_id);
            Ok::<_, anyhow::Error>((total, cur, true))
        };
        let (rest, committed) = tokio::join!(cutting, committing);
        let (parser, parsed_to) = parsing.await?;
        // A failed write ends the pieces the committer gets: its error is the follow's.
        writing.await??;
        let (total, cur, ours) = committed?;
        if cur.byte_offset == parsed_to {
            self.keep_parser(key, parsed_to, parser);
        }
        Ok((total, cur, ours.then_some(rest)))
    }

    /// The log tail a machine put in the job's checkpoint store itself on a notice, while
    /// no trainctl watched (`rescue` in runner.sh): what this store has not read of it is
    /// taken in as if pumped (parsed, kept, metrics stored), so the lines written between
    /// the last poll and the machine's end are not lost with the machine. Bytes before the
    /// tail that nobody read are said lost, in the log itself and in a `log.gap` event.
    pub(super) async fn take_in_rescued_log(
        &self,
        job: &JobRecord,
        att: &AttemptRecord,
    ) -> Result<()> {
        let store = self.checkpoint_store_for(job)?;
        let Some((start, file)) = store.rescued_log(&job.id, att.attempt).await? else {
            return Ok(());
        };
        let mut cur = self.store().log_offset(&job.id, att.attempt)?;
        let len = tokio::fs::metadata(&file).await?.len();
        let end = start + len;
        if end <= cur.byte_offset {
            return Ok(());
        }
        let first = cur.byte_offset;
        if start > cur.byte_offset {
            let lost = start - cur.byte_offset;
            let note = format!(
                "[trainctl: {lost} bytes of this log were lost with the machine: it kept only its last {len} bytes]\n"
            );
            match self.commit_log_piece(att, &cur, note.as_bytes()).await? {
                Some(next) => cur = next,
                None => return Ok(()),
            }
            self.store().add_event(
                "log.gap",
                Some(&att.instance_id),
                Some(&job.id),
                &format!(
                    "attempt {}: {lost} bytes of its log were lost with its machine",
                    att.attempt
                ),
            )?;
        }
        // The file, from the first byte this store has not read, through the same
        // commits as a follow; the machine is gone, so its last line is complete.
        let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
        let path = file.clone();
        // Moves `tx`: the commits see the end when the file is read.
        let read = async move {
            use tokio::io::{AsyncReadExt, AsyncSeekExt};
            let mut f = tokio::fs::File::open(&path).await?;
            f.seek(std::io::SeekFrom::Start(first.saturating_sub(start)))
                .await?;
            loop {
                let mut buf = vec![0u8; 1 << 20];
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<(), anyhow::Error>(());
                }
                buf.truncate(n);
                if tx.send(buf).await.is_err() {
                    return Ok(());
                }
            }
        };
        let (read, committed) = tokio::join!(read, self.commit_stream(att, cur, rx));
        read?;
        let (mut taken, cur, rest) = committed?;
        let Some(rest) = rest else {
            return Ok(());
        };
        if !rest.is_empty() {
            if self.commit_log_piece(att, &cur, &rest).await?.is_none() {
                return Ok(());
            }
            taken += rest.len();
        }
        let _ = tokio::fs::remove_file(&file).await;
        self.store().add_event(
            "log.rescued",
            Some(&att.instance_id),
            Some(&job.id),
            &format!(
                "attempt {}: {taken} bytes of its log that no trainctl had read, put in the checkpoint store by the machine itself",
                att.attempt
            ),
        )?;
        Ok(())
    }

    /// Parse `chunk` (which starts at `old`), write it to the local copy at its offset, and
    /// advance the stored offset by compare-and-swap. `None` when another process won.
    pub(super) async fn commit_log_piece(
        &self,
        att: &AttemptRecord,
        old: &LogOffset,
        chunk: &[u8],
    ) -> Result<Option<LogOffset>> {
        self.commit_log_piece_owned(att, old, chunk.to_vec()).await
    }

    /// [`Engine::commit_log_piece`] of a piece given away.
    async fn commit_log_piece_owned(
        &self,
        att: &AttemptRecord,
        old: &LogOffset,
        data: Vec<u8>,
    ) -> Result<Option<LogOffset>> {
        // Parsing, the local copy and the store run on a blocking thread.
        let (engine, att, old) = (self.clone(), att.clone(), old.clone());
        tokio::task::spawn_blocking(move || {
            let key = (att.job_id.clone(), att.attempt);
            let mut parser = engine.take_parser(&key, &old);
            let parsed = engine.parse_piece(&mut parser, &old, data, Default::default());
            let committed = engine.commit_parsed(&att, vec![parsed])?;
            if let Some((_, next)) = &committed {
                engine.keep_parser(key, next.byte_offset, parser);
            }
            Ok(committed.map(|(_, next)| next))
        })
        .await?
    }

    /// The parser kept for an attempt's log where it stopped at `old`, or one resumed
    /// from the stored line and progress.
    fn take_parser(&self, key: &(String, i64), old: &LogOffset) -> LogParser {
        let kept = self
            .inner
            .parsers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        match kept {
            Some((at, p)) if at == old.byte_offset => p,
            _ => LogParser::resume(old.line, old.progress),
        }
    }

    /// Keep the parser of an attempt's log, which stopped at byte `at`, for its next piece.
    fn keep_parser(&self, key: (String, i64), at: u64, parser: LogParser) {
        let mut kept = self.inner.parsers.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: ended attempts' parsers are dropped now and then (a later commit
        // of one resumes from the store).
        if kept.len() >= 256 {
            kept.clear();
        }
        kept.insert(key, (at, parser));
    }

    /// Parse a piece of log (which starts at `old`): its points grouped by metric (and
    /// as owned points only when someone listens), and the offset after it.
    /// `batch` is where the points go (empty; sized like the last piece's).
    fn parse_piece(
        &self,
        parser: &mut LogParser,
        old: &LogOffset,
        data: Vec<u8>,
        mut batch: crate::series::Batch,
    ) -> ParsedPiece {
        let watched = self.inner.events.receiver_count() > 0;
        let mut points = Vec::new();
        parser.feed_complete(&data, &mut |p| {
            batch.push(p.name, (&p).into());
            if watched {
                points.push(p.to_owned_point());
            }
        });
        let progress = parser.progress();
        let new = LogOffset {
            byte_offset: old.byte_offset + data.len() as u64,
            line: parser.line(),
            progress,
            progress_ms: if progress != old.progress {
                Some(now_ms())
            } else {
                old.progress_ms
            },
        };
        ParsedPiece {
            data,
            old: old.clone(),
            new,
            batch,
            points,
            watched,
        }
    }

    /// Write parsed pieces (consecutive, in log order) to the local copy at their offsets
    /// and advance the stored offset over them all with their points by one
    /// compare-and-swap: their length and the offset after them, `None` when another
    /// process won.
    fn commit_parsed(
        &self,
        att: &AttemptRecord,
        pieces: Vec<ParsedPiece>,
    ) -> Result<Option<(usize, LogOffset)>> {
        self.write_local_copy(att, &pieces)?;
        self.commit_written(att, pieces)
    }

    /// Write parsed pieces (consecutive, in log order) to the local copy at their
    /// offsets: at the remote offset, so a retry rewrites the same bytes.
    fn write_local_copy(&self, att: &AttemptRecord, pieces: &[ParsedPiece]) -> Result<()> {
        let Some(first) = pieces.first() else {
            return Ok(());
        };
        let local = self.local_log_path(&att.job_id, att.attempt);
        if let Some(dir) = local.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let bytes: Vec<&[u8]> = pieces.iter().map(|p| &p.data[..]).collect();
        super::logcopy::write_at(&local, first.old.byte_offset, &bytes)
            .with_context(|| format!("writing {}", local.display()))
    }

    /// [`Engine::commit_parsed`] of pieces already in the local copy.
    fn commit_written(
        &self,
        att: &AttemptRecord,
        pieces: Vec<ParsedPiece>,
    ) -> Result<Option<(usize, LogOffset)>> {
        let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
            anyhow::bail!("no piece of log to commit");
        };
        let (old, new) = (first.old.clone(), last.new.clone());
        // Packed before the store is taken: it is held only for the writes. Pieces in log
        // order, so their chunks are stored in log order.
        let mut packed = crate::series::Packed::default();
        for p in &pieces {
            packed.series.extend(p.batch.pack().series);
        }
        if !self
            .store()
            .commit_log_batch(&att.job_id, att.attempt, &old, &new, &packed)?
        {
            return Ok(None);
        }
        let mut len = 0;
        let mut tap = self
            .inner
            .log_taps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&att.job_id)
            .cloned();
        for p in pieces {
            len += p.data.len();
            // Lines and points for whoever listens (the cockpit); nobody: no work.
            if p.watched {
                let lines = display_lines(&p.data);
                if !lines.is_empty() {
                    self.emit(EngineEvent::LogLines {
                        job_id: att.job_id.clone(),
                        lines,
                    });
                }
                if !p.points.is_empty() || p.new.progress != p.old.progress {
                    self.emit(EngineEvent::Metrics {
                        job_id: att.job_id.clone(),
                        points: p.points,
                        progress: p.new.progress,
                    });
                }
            }
            // The bytes themselves to a printer, which need not read them back; when it
            // is behind (its queue still full after a wait: `LogTap::send`), it reads them
            // from the local copy instead.
            if let Some(t) = &tap {
                let piece = CommittedLog {
                    attempt: att.attempt,
                    offset: p.old.byte_offset,
                    bytes: p.data,
                };
                match t.send(piece) {
                    Ok(()) => {}
                    Err(std::sync::mpsc::TrySendError::Full(piece)) => {
                        crate::bufpool::give(piece.bytes);
                    }
                    Err(std::sync::mpsc::TrySendError::Disconnected(piece)) => {
                        crate::bufpool::give(piece.bytes);
                        self.untap_log(&att.job_id);
                        tap = None;
                    }
                }
            } else {
                crate::bufpool::give(p.data);
            }
        }
        Ok(Some((len, new)))
    }
}

/// A piece of a job's log this process committed: its bytes are in the local copy and
/// the stored offset is past them.
pub struct CommittedLog {
    pub attempt: i64,
    /// Where the piece starts in its attempt's log.
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// How long a committer waits for a printer that has a full queue before leaving the
/// piece to be read back from the local copy: long enough for a printer that shares
/// the machine's cores to catch up, short enough that a stopped one (`| less`, paused)
/// barely slows the follow.
const TAP_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// A printer's queue of committed pieces ([`Engine::tap_log`]).
#[derive(Clone)]
pub(crate) struct LogTap {
    tx: std::sync::mpsc::SyncSender<CommittedLog>,
    /// Set when a wait ran out: the printer is stopped or far behind, so pieces are not
    /// waited for again until one finds room at once.
    behind: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LogTap {
    /// Queue a piece, waiting up to [`TAP_WAIT`] for room unless the printer is behind:
    /// a piece the printer is sent it need not read back from the local copy, which a
    /// large backlog writes past the page cache (read back, it comes from disk).
    fn send(&self, piece: CommittedLog) -> Result<(), std::sync::mpsc::TrySendError<CommittedLog>> {
        use std::sync::atomic::Ordering;
        use std::sync::mpsc::TrySendError;
        let mut piece = match self.tx.try_send(piece) {
            Ok(()) => {
                self.behind.store(false, Ordering::Relaxed);
                return Ok(());
            }
            Err(TrySendError::Full(p)) if !self.behind.load(Ordering::Relaxed) => p,
            Err(e) => return Err(e),
        };
        // No way to wait on a std channel's room: a short sleep, doubled up to a
        // millisecond (a printer takes about that for a piece).
        let deadline = std::time::Instant::now() + TAP_WAIT;
        let mut nap = std::time::Duration::from_micros(50);
        loop {
            std::thread::sleep(nap);
            nap = (nap * 2).min(std::time::Duration::from_millis(1));
            piece = match self.tx.try_send(piece) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(p)) if std::time::Instant::now() < deadline => p,
                Err(TrySendError::Full(p)) => {
                    self.behind.store(true, Ordering::Relaxed);
                    return Err(TrySendError::Full(p));
                }
                Err(e) => return Err(e),
            };
        }
    }
}

impl Engine {
    /// The pieces of `job_id`'s log as this process commits them, in log order, until
    /// the receiver goes (a printer's: it need not read the local copy back). A piece
    /// that finds `depth` pieces waiting waits for room a moment ([`TAP_WAIT`]); one
    /// that waited in vain is not sent, and neither are the next until one finds room
    /// at once: the printer reads those from the local copy, as it reads what another
    /// process committed.
    pub fn tap_log(&self, job_id: &str, depth: usize) -> std::sync::mpsc::Receiver<CommittedLog> {
        let (tx, rx) = std::sync::mpsc::sync_channel(depth);
        let tap = LogTap {
            tx,
            behind: Default::default(),
        };
        self.inner
            .log_taps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job_id.to_string(), tap);
        rx
    }

    /// Forget a tap whose printer went. (Should a newer printer of the job have tapped
    /// it meanwhile, it loses its tap and reads the local copy: slower, the same text.)
    pub(super) fn untap_log(&self, job_id: &str) {
        self.inner
            .log_taps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(job_id);
    }
}

/// Room in a piece being cut: a piece's size and a chunk more, so that adding the chunk
/// that completes it never grows (copies) it.
const PENDING_ROOM: usize = LOG_CHUNK + crate::remote::STREAM_CHUNK_MAX;

/// The most parsed pieces committed in one transaction.
const COMMIT_GROUP: usize = 4;

/// A piece of log parsed and not yet committed.
struct ParsedPiece {
    data: Vec<u8>,
    /// Where the piece starts, and where it leaves the log.
    old: LogOffset,
    new: LogOffset,
    batch: crate::series::Batch,
    /// The points as owned points, when someone listened as it was parsed.
    points: Vec<MetricPoint>,
    watched: bool,
}

/// A read of a log into a sink, as [`Engine::pump_log_read`] takes it: what it found, and
/// whatever else it learnt.
pub(super) type LogRead<'a, T> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(crate::remote::Streamed, T)>> + Send + 'a>,
>;

/// Where a stage of the follow spent its time: waiting for its input, working, held up
/// by the next stage (shown in the debug log: the slowest stage is the one never starved).
#[derive(Default)]
struct StageTimes {
    waited: Duration,
    worked: Duration,
    held_up: Duration,
    /// Pieces handled (groups, for the committer).
    items: u64,
}

impl StageTimes {
    fn timed<T>(slot: &mut Duration, f: impl FnOnce() -> T) -> T {
        let began = std::time::Instant::now();
        let r = f();
        *slot += began.elapsed();
        r
    }
    fn waiting<T>(&mut self, f: impl FnOnce() -> T) -> T {
        Self::timed(&mut self.waited, f)
    }
    fn busy<T>(&mut self, f: impl FnOnce() -> T) -> T {
        self.items += 1;
        Self::timed(&mut self.worked, f)
    }
    fn held<T>(&mut self, f: impl FnOnce() -> T) -> T {
        Self::timed(&mut self.held_up, f)
    }
}

impl std::fmt::Display for StageTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} pieces; waited {} ms, worked {} ms, held up {} ms",
            self.items,
            self.waited.as_millis(),
            self.worked.as_millis(),
            self.held_up.as_millis()
        )
    }
}

/// A GPU under this utilisation (percent) is idle.
pub const GPU_IDLE_PERCENT: f64 = 5.0;

impl Engine {
    /// The machine's GPU samples (`gpu.csv`, written by the runner's sampler) since the
    /// stored offset, as points `gpu<i>.util` (percent) and `gpu<i>.mem_gib`, placed at the
    /// step and line the log had reached when they were read (samples read in a catch-up
    /// share them); committed with the offset by compare-and-swap, like the log, with the
    /// time since when every GPU sat idle. `size`: the samples file's size, when the
    /// machine told it (nothing is read when nothing was added).
    pub(super) async fn pump_gpu(
        &self,
        remote: &dyn Remote,
        att: &AttemptRecord,
        final_read: bool,
        size: Option<u64>,
    ) -> Result<()> {
        let every = self.inner.cfg.gpu_sample_seconds;
        if every == 0 {
            return Ok(());
        }
        if !final_read
            && !due(
                &self.inner.last_gpu,
                &att.job_id,
                Duration::from_secs(every),
            )
        {
            return Ok(());
        }
        let (off, idle_since) = self
            .store()
            .stream_offset(&att.job_id, att.attempt, GPU_STREAM)?;
        if size.is_some_and(|n| n <= off) {
            return Ok(());
        }
        let path = job::gpu_path(&att.remote_dir);
        let Some(bytes) = remote.read_range(&path, off, 1 << 20).await? else {
            return Ok(());
        };
        let take = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        if take == 0 {
            return Ok(());
        }
        let log = self.store().log_offset(&att.job_id, att.attempt)?;
        let (step, epoch) = (log.progress.step, log.progress.epoch);
        let line = log.line.saturating_sub(1).max(1);
        let mut batch = crate::series::Batch::default();
        let mut points = Vec::new();
        // Per sample time: whether any GPU was busy.
        let mut times: Vec<(i64, bool)> = Vec::new();
        for row in bytes[..take].split(|&b| b == b'\n') {
            let text = String::from_utf8_lossy(row);
            let f: Vec<&str> = text.split(',').map(str::trim).collect();
            let [t, index, util, mem] = f.as_slice() else {
                continue;
            };
            let (Ok(t), Ok(index)) = (t.parse::<i64>(), index.parse::<u32>()) else {
                continue;
            };
            // `[N/A]` on GPUs that do not report a field: no point for it.
            let util = util.parse::<f64>().ok();
            let mem = mem
                .parse::<f64>()
                .ok()
                .map(|m| (m / 1024.0 * 100.0).round() / 100.0);
            for (name, value) in [("util", util), ("mem_gib", mem)] {
                let Some(value) = value else { continue };
                let name = format!("gpu{index}.{name}");
                batch.push(
                    &name,
                    crate::series::Point {
                        line,
                        value,
                        step,
                        epoch,
                    },
                );
                points.push(MetricPoint {
                    name,
                    value,
                    step,
                    epoch,
                    line,
                });
            }
            let busy = util.is_some_and(|u| u >= GPU_IDLE_PERCENT);
            match times.last_mut() {
                Some((at, b)) if *at == t => *b |= busy,
                _ => times.push((t, busy)),
            }
        }
        let mut idle = idle_since;
        for (t, busy) in times {
            idle = if busy { None } else { idle.or(Some(t * 1000)) };
        }
        let committed = self.store().commit_stream_batch(
            &att.job_id,
            att.attempt,
            GPU_STREAM,
            (off, off + take as u64),
            idle,
            &batch,
        )?;
        if committed && !points.is_empty() && self.inner.events.receiver_count() > 0 {
            self.emit(EngineEvent::Metrics {
                job_id: att.job_id.clone(),
                points,
                progress: log.progress,
            });
        }
        Ok(())
    }

    /// How long (ms) every GPU of a running job's attempt `attempt` (its newest) has sat
    /// idle, when the samples say so.
    pub fn gpu_idle_ms(&self, job: &JobRecord, attempt: i64) -> Result<Option<i64>> {
        if job.state != JobState::Running {
            return Ok(None);
        }
        let (_, since) = self.store().stream_offset(&job.id, attempt, GPU_STREAM)?;
        Ok(since.map(|s| (now_ms() - s).max(0)))
    }
}

/// The side stream of an attempt that holds its machine's GPU samples.
const GPU_STREAM: &str = "gpu";
