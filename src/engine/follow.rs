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
        let start = self.store().log_offset(&att.job_id, att.attempt)?;
        let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
        let path = job::log_path(&att.remote_dir);
        let reader = remote.stream_file(&path, start.byte_offset, tx);
        let consume = self.commit_stream(att, start, rx);
        let (read, consumed) = tokio::join!(reader, consume);
        read?;
        let (mut total, cur, rest) = consumed?;
        // The job has ended and the whole file was read: its last line is complete even
        // without a newline.
        if final_read
            && !rest.is_empty()
            && self.commit_log_piece(att, &cur, &rest).await?.is_some()
        {
            total += rest.len();
        }
        Ok(total)
    }

    /// Commit the bytes `rx` brings (they start at `start`) in pieces of complete lines,
    /// as they arrive: up to [`LOG_CHUNK`] each, or whatever complete lines are there when
    /// nothing more has come. Returns the bytes committed, the offset after them and the
    /// partial last line left over (the caller decides whether it is complete).
    async fn commit_stream(
        &self,
        att: &AttemptRecord,
        start: LogOffset,
        mut rx: mpsc::Receiver<Vec<u8>>,
    ) -> Result<(usize, LogOffset, Vec<u8>)> {
        let mut cur = start;
        let mut pending: Vec<u8> = Vec::new();
        let mut total = 0usize;
        let mut open = true;
        while open {
            match rx.recv().await {
                Some(chunk) => pending.extend_from_slice(&chunk),
                None => open = false,
            }
            // Take whatever else already arrived, up to a piece's size.
            while pending.len() < LOG_CHUNK {
                match rx.try_recv() {
                    Ok(c) => pending.extend_from_slice(&c),
                    Err(_) => break,
                }
            }
            let mut take = complete_prefix_len(&pending);
            // A last line without its newline is left to the caller: a stream cut
            // mid-line must not commit half a line.
            if take == 0 && pending.len() >= LOG_CHUNK {
                take = pending.len();
            }
            if take == 0 {
                continue;
            }
            // The piece leaves `pending` without a copy (only the partial line after it
            // is moved).
            let rest = pending.split_off(take);
            let piece = std::mem::replace(&mut pending, rest);
            match self.commit_log_piece_owned(att, &cur, piece).await? {
                Some(next) => {
                    cur = next;
                    total += take;
                }
                // Another process advanced this log first: it owns these bytes.
                None => break,
            }
        }
        Ok((total, cur, pending))
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
        // Parsing, the local copy and the store run on a blocking thread, so the transport
        // keeps reading the next piece meanwhile (pump_log joins the two).
        let (engine, att, old) = (self.clone(), att.clone(), old.clone());
        tokio::task::spawn_blocking(move || engine.commit_log_piece_now(&att, &old, &data)).await?
    }

    fn commit_log_piece_now(
        &self,
        att: &AttemptRecord,
        old: &LogOffset,
        chunk: &[u8],
    ) -> Result<Option<LogOffset>> {
        let key = (att.job_id.clone(), att.attempt);
        let kept = self
            .inner
            .parsers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        let mut parser = match kept {
            Some((at, p)) if at == old.byte_offset => p,
            _ => LogParser::resume(old.line, old.progress),
        };
        // Points go to the store grouped by metric; as owned points only for listeners.
        let watched = self.inner.events.receiver_count() > 0;
        let mut batch = crate::series::Batch::default();
        let mut points = Vec::new();
        parser.feed_complete(chunk, &mut |p| {
            batch.push(p.name, (&p).into());
            if watched {
                points.push(p.to_owned_point());
            }
        });
        let progress = parser.progress();
        let new = LogOffset {
            byte_offset: old.byte_offset + chunk.len() as u64,
            line: parser.line(),
            progress,
            progress_ms: if progress != old.progress {
                Some(now_ms())
            } else {
                old.progress_ms
            },
        };
        // The local copy is written at the remote offset, so a retry rewrites the same bytes.
        let local = self.local_log_path(&att.job_id, att.attempt);
        {
            use std::os::unix::fs::FileExt;
            if let Some(dir) = local.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&local)?;
            f.write_all_at(chunk, old.byte_offset)?;
        }
        if !self
            .store()
            .commit_log_batch(&att.job_id, att.attempt, old, &new, &batch)?
        {
            return Ok(None);
        }
        {
            let mut kept = self.inner.parsers.lock().unwrap_or_else(|p| p.into_inner());
            // Bounded: ended attempts' parsers are dropped now and then (a later commit
            // of one resumes from the store).
            if kept.len() >= 256 {
                kept.clear();
            }
            kept.insert(key, (new.byte_offset, parser));
        }
        // Lines and points for whoever listens (the cockpit); nobody: no work.
        if watched {
            let lines = display_lines(chunk);
            if !lines.is_empty() {
                self.emit(EngineEvent::LogLines {
                    job_id: att.job_id.clone(),
                    lines,
                });
            }
            if !points.is_empty() || progress != old.progress {
                self.emit(EngineEvent::Metrics {
                    job_id: att.job_id.clone(),
                    points,
                    progress,
                });
            }
        }
        Ok(Some(new))
    }
}

/// A GPU under this utilisation (percent) is idle.
pub const GPU_IDLE_PERCENT: f64 = 5.0;

impl Engine {
    /// The machine's GPU samples (`gpu.csv`, written by the runner's sampler) since the
    /// stored offset, as points `gpu<i>.util` (percent) and `gpu<i>.mem_gib`, placed at the
    /// step and line the log had reached when they were read (samples read in a catch-up
    /// share them); committed with the offset by compare-and-swap, like the log, with the
    /// time since when every GPU sat idle. Returns the bytes consumed.
    pub(super) async fn pump_gpu(
        &self,
        remote: &dyn Remote,
        att: &AttemptRecord,
        final_read: bool,
    ) -> Result<usize> {
        let every = self.inner.cfg.gpu_sample_seconds;
        if every == 0 {
            return Ok(0);
        }
        if !final_read
            && !due(
                &self.inner.last_gpu,
                &att.job_id,
                Duration::from_secs(every),
            )
        {
            return Ok(0);
        }
        let (off, idle_since) = self
            .store()
            .stream_offset(&att.job_id, att.attempt, GPU_STREAM)?;
        let path = format!("{}/gpu.csv", att.remote_dir);
        let Some(bytes) = remote.read_range(&path, off, 1 << 20).await? else {
            return Ok(0);
        };
        let take = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        if take == 0 {
            return Ok(0);
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
        Ok(if committed { take } else { 0 })
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
