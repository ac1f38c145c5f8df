//! Reads for both front ends: the cost report, a job's stored log across attempts.

use super::*;

impl Engine {
    /// The cost report as of now.
    pub fn cost_report(&self) -> Result<cost::CostReport> {
        let store = self.store();
        let instances = store.instances(true)?;
        let jobs = store.jobs()?;
        let attempts = store.all_attempts()?;
        let mut offsets = HashMap::new();
        for j in &jobs {
            if let Some(a) = attempts.iter().rev().find(|a| a.job_id == j.id) {
                offsets.insert(j.id.clone(), store.log_offset(&j.id, a.attempt)?);
            }
        }
        Ok(cost::report(
            &instances,
            &jobs,
            &attempts,
            &offsets,
            now_ms(),
        ))
    }

    /// Output of rank `rank` (from 1) of the job's newest attempt, a job of several ranks
    /// on a scheduler (`rank-N.log` beside its log, kept on the cluster's filesystem, not
    /// in the store): up to `max` bytes from `from`, with whether the job is still live.
    /// None while the file is not there.
    pub async fn rank_log(
        &self,
        job_id: &str,
        rank: u32,
        from: u64,
        max: usize,
    ) -> Result<(Option<Vec<u8>>, bool)> {
        if rank == 0 {
            bail!("rank 0's output is the job's log: `trainctl logs {job_id}`");
        }
        let job = self.store().find_job(job_id)?;
        let att = self
            .store()
            .attempts(&job.id)?
            .pop()
            .with_context(|| format!("job {} has not started", job.id))?;
        let inst = self.store().find_instance(&att.instance_id)?;
        let remote = self.remote_for(&inst).await.with_context(|| {
            format!(
                "the ranks' output stays on {}, which cannot be reached",
                inst.id
            )
        })?;
        let path = format!("{}/rank-{rank}.log", att.remote_dir);
        let bytes = crate::remote::retry_lost(4, "reading a rank's output", || {
            remote.read_range(&path, from, max)
        })
        .await?;
        Ok((bytes, !job.state.is_terminal()))
    }

    /// Display lines of a job's stored log from (attempt, byte offset) up to what is
    /// committed, every attempt in order: complete lines only in the live attempt, all of
    /// it once the job ended; at most about `max_bytes` of it per call (memory stays
    /// bounded whatever the log's size). Returns where the next read starts (attempt,
    /// offset).
    pub fn log_lines_since(
        &self,
        job_id: &str,
        attempt: i64,
        from: u64,
        max_bytes: usize,
    ) -> Result<(i64, u64, Vec<String>)> {
        let mut lines = Vec::new();
        let (at, end) = self.log_since(job_id, attempt, from, max_bytes, |piece| match piece {
            LogPiece::Marker(m) => lines.push(m),
            LogPiece::Bytes(b) => lines.extend(display_lines(b)),
        })?;
        Ok((at, end, lines))
    }

    /// [`Engine::log_lines_since`] as one text, each line ending with a newline (what
    /// `logs` prints).
    pub fn log_text_since(
        &self,
        job_id: &str,
        attempt: i64,
        from: u64,
        max_bytes: usize,
    ) -> Result<(i64, u64, String)> {
        let mut text = String::new();
        let (at, end) = self.log_since(job_id, attempt, from, max_bytes, |piece| match piece {
            LogPiece::Marker(m) => {
                text.push_str(&m);
                text.push('\n');
            }
            LogPiece::Bytes(b) => display_text(b, &mut text),
        })?;
        Ok((at, end, text))
    }

    fn log_since(
        &self,
        job_id: &str,
        attempt: i64,
        from: u64,
        max_bytes: usize,
        mut emit: impl FnMut(LogPiece<'_>),
    ) -> Result<(i64, u64)> {
        let attempts = self.store().attempts(job_id)?;
        let ended = self
            .store()
            .job(job_id)?
            .is_some_and(|j| j.state.is_terminal());
        let (mut at, mut end) = (attempt, from);
        let mut budget = max_bytes as u64;
        for a in attempts.iter().filter(|a| a.attempt >= attempt) {
            if a.attempt > at {
                at = a.attempt;
                end = 0;
                // One marker line between attempts: the log goes on across machines.
                if a.attempt > 1 {
                    emit(LogPiece::Marker(format!(
                        "── trainctl: attempt {} on {} ──",
                        a.attempt, a.instance_id
                    )));
                }
            }
            let off = self.store().log_offset(job_id, a.attempt)?;
            let to = off.byte_offset.min(end.saturating_add(budget));
            let capped = to < off.byte_offset;
            let bytes = self.read_local_log(job_id, a.attempt, end, to)?;
            let live = !ended && Some(a.attempt) == attempts.last().map(|l| l.attempt);
            let take = if live || capped {
                match bytes.iter().rposition(|&b| b == b'\n') {
                    Some(p) => p + 1,
                    // One line longer than the whole budget: shown in pieces.
                    None if capped => bytes.len(),
                    None => 0,
                }
            } else {
                bytes.len()
            };
            if take > 0 {
                emit(LogPiece::Bytes(&bytes[..take]));
            }
            crate::bufpool::give(bytes);
            end += take as u64;
            budget = budget.saturating_sub(take as u64);
            // This attempt is not read to its end yet: the next ones wait.
            if end < off.byte_offset || budget == 0 {
                break;
            }
        }
        Ok((at, end))
    }

    /// Bytes `[from, to)` of an attempt's local log copy.
    pub fn read_local_log(
        &self,
        job_id: &str,
        attempt: i64,
        from: u64,
        to: u64,
    ) -> Result<Vec<u8>> {
        if to <= from {
            return Ok(Vec::new());
        }
        let path = self.local_log_path(job_id, attempt);
        Ok(super::logcopy::read_at(&path, from, (to - from) as usize)?.unwrap_or_default())
    }
}

/// What [`Engine::log_since`] hands on: a marker line between attempts, or raw log bytes.
enum LogPiece<'a> {
    Marker(String),
    Bytes(&'a [u8]),
}
