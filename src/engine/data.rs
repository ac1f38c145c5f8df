//! Placing a job's datasets on its machine before it starts, once per machine and content
//! (the layout on the machine: `job/data.rs`).

use super::*;
use crate::job::data;
use crate::remote::sh_quote;

/// The machine-side fetch of an `s3://` dataset.
const FETCH_S3_PY: &str = include_str!("../../assets/remote/fetch_s3.py");

/// The code sync leaves out the datasets that live inside the project (they travel
/// apart): `sync.exclude` plus an anchored pattern per such `[[data]] src`.
pub fn sync_excludes(project: &crate::config::ProjectConfig, root: &Path) -> Vec<String> {
    let mut ex = project.sync.exclude.clone();
    for d in project.data.iter().filter(|d| !d.src.starts_with("s3://")) {
        let src = Path::new(&d.src);
        let rel = if src.is_absolute() {
            match src.strip_prefix(root) {
                Ok(r) => r.to_path_buf(),
                Err(_) => continue,
            }
        } else {
            src.to_path_buf()
        };
        let rel = rel.to_string_lossy();
        let rel = rel.trim_start_matches("./").trim_end_matches('/');
        if rel.is_empty() || rel == "." {
            continue;
        }
        // Glob characters in a real name are literal here.
        let mut pat = String::from("/");
        for c in rel.chars() {
            if "*?[]\\{}!".contains(c) {
                pat.push('\\');
            }
            pat.push(c);
        }
        ex.push(pat);
    }
    ex
}

/// Every file's BLAKE3, those the cache does not know read off the async workers; the
/// cache saved and handed back with the listing.
async fn hash_listing(
    mut cache: data::HashCache,
    listing: data::Listing,
) -> Result<(Vec<String>, data::HashCache, data::Listing)> {
    let (hashes, cache, listing) = tokio::task::spawn_blocking(move || {
        let h = cache.hashes(&listing);
        let _ = cache.save();
        (h, cache, listing)
    })
    .await?;
    Ok((hashes?, cache, listing))
}

/// A folder's record: (name, size, BLAKE3) per file.
fn records_of<'a>(l: &'a data::Listing, hashes: &'a [String]) -> Vec<(&'a str, u64, &'a str)> {
    l.files
        .iter()
        .zip(hashes)
        .map(|(f, h)| (f.rel.as_str(), f.size, h.as_str()))
        .collect()
}

impl Engine {
    /// Place every `[[data]]` of the job on its machine (sent only when the machine does
    /// not hold that content yet); the value of `TRAINCTL_DATA_DIR`.
    pub(super) async fn place_data(
        &self,
        job_id: Option<&str>,
        remote: &dyn Remote,
        inst: &InstanceRecord,
        spec: &JobSpec,
    ) -> Result<Option<String>> {
        if spec.project.data.is_empty() {
            return Ok(None);
        }
        let dir = format!("{}/datasets/{}", remote.root(), spec.project_name);
        for d in &spec.project.data {
            let mount = format!("{dir}/{}", d.dst.trim_end_matches('/'));
            if d.src.starts_with("s3://") {
                crate::remote::retry_lost(6, "placing a dataset", || {
                    self.place_s3(job_id, remote, inst, &d.src, &d.dst, &mount)
                })
                .await
                .with_context(|| format!("placing {} on {}", d.src, inst.id))?;
                continue;
            }
            let src = Path::new(&spec.root).join(&d.src);
            crate::remote::retry_lost(6, "placing a dataset", || {
                self.place_one(job_id, remote, inst, &src, &d.dst, &mount)
            })
            .await
            .with_context(|| format!("placing {} on {}", d.src, inst.id))?;
        }
        Ok(Some(dir))
    }

    /// Place the project's datasets on an instance (`trainctl data`), as a job's start
    /// does; the value of `TRAINCTL_DATA_DIR` there.
    pub async fn place_project_data(
        &self,
        project: &crate::config::Project,
        instance_key: &str,
    ) -> Result<Option<String>> {
        let inst = self.store().find_instance(instance_key)?;
        let remote = self.remote_for(&inst).await?;
        let spec = JobSpec {
            project: project.config.clone(),
            project_name: project.name(),
            root: project.root.to_string_lossy().into_owned(),
        };
        self.place_data(None, remote.as_ref(), &inst, &spec).await
    }

    /// A dataset in an object store (`s3://`): listed here (names, sizes, ETags: its
    /// identity, with no byte moved), found on the machine in one round trip like a
    /// folder, else fetched by the machine itself (its own credentials and bandwidth,
    /// `assets/remote/fetch_s3.py`), resuming from the files already there whole.
    async fn place_s3(
        &self,
        job_id: Option<&str>,
        remote: &dyn Remote,
        inst: &InstanceRecord,
        url: &str,
        name: &str,
        mount: &str,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let mut listing = None;
        for p in self.inner.providers.values() {
            if let Some(l) = p.data_source(url).await? {
                listing = Some(l);
                break;
            }
        }
        let listing = listing.with_context(|| {
            format!("{url}: an s3:// dataset needs [providers.aws] in the user config")
        })?;
        let mut h = blake3::Hasher::new();
        h.update(b"trainctl-data-s3-1\0");
        h.update(listing.bucket.as_bytes());
        h.update(b"\0");
        h.update(listing.prefix.as_bytes());
        for (rel, size, etag) in &listing.objects {
            h.update(b"\0");
            h.update(rel.as_bytes());
            h.update(&size.to_le_bytes());
            h.update(etag.as_bytes());
        }
        let lhash = h.finalize().to_hex()[..32].to_string();
        // The objects' ETags are the store's own content tags: the listing is the content.
        let content = format!("s3-{}", &lhash[..29]);
        let root = remote.root().to_string();
        let side = Self::probe_dataset(remote, &lhash, None, mount).await?;
        if side.placed.is_some() {
            return self.store().add_event(
                "data.placed",
                Some(&inst.id),
                job_id,
                &format!("{name}: on the machine already ({url})"),
            );
        }
        let have: HashMap<&str, u64> = side
            .partial
            .iter()
            .map(|(r, s, _)| (r.as_str(), *s))
            .collect();
        // A transfer folder that started as hard links of an earlier content keeps the
        // objects whose ETag that content's record has; one of this fetch's own keeps
        // what landed whole (renamed into place only when complete).
        let seeded = side
            .from
            .as_deref()
            .map(|c| data::load_content(&self.contents_dir(), c));
        let todo: Vec<&(String, u64, String)> = listing
            .objects
            .iter()
            .filter(|(rel, size, etag)| {
                let there = have.get(rel.as_str()) == Some(size);
                let same = match &seeded {
                    None => true,
                    Some(rec) => rec.get(rel).is_some_and(|(s, e)| s == size && e == etag),
                };
                !(there && same)
            })
            .collect();
        let total: u64 = listing.objects.iter().map(|o| o.1).sum();
        let resumed = total - todo.iter().map(|o| o.1).sum::<u64>();
        let part = format!("{root}/data/q-{lhash}.part");
        let names = format!("{root}/data/q-{lhash}.names");
        let script = format!("{root}/fetch_s3.py");
        let list: String = todo.iter().map(|(rel, _, _)| format!("{rel}\n")).collect();
        crate::remote::retry_lost(4, "uploading the fetch", || {
            remote.write_file(&script, FETCH_S3_PY.as_bytes(), 0o644)
        })
        .await?;
        crate::remote::retry_lost(4, "uploading the names to fetch", || {
            remote.write_file(&names, list.as_bytes(), 0o644)
        })
        .await?;
        let mut env = String::new();
        for (k, v) in &listing.env {
            env.push_str(&format!("{k}={} ", sh_quote(v)));
        }
        // An empty AWS_PROFILE (or region, token) set on the machine is no setting at all;
        // botocore takes it for a profile named "" and stops.
        let cmd = format!(
            "for v in AWS_PROFILE AWS_DEFAULT_PROFILE AWS_REGION AWS_SESSION_TOKEN; do \
               eval \"[ -n \\\"\\${{$v:-}}\\\" ] || unset $v\"; done; \
             mkdir -p {part} && {env}python3 {script} {bucket} {prefix} {part} {names} 2> {err}",
            part = sh_quote(&part),
            script = sh_quote(&script),
            bucket = sh_quote(&listing.bucket),
            prefix = sh_quote(&listing.prefix),
            names = sh_quote(&names),
            err = sh_quote(&format!("{names}.err")),
        );
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
        let fetch = remote.exec_stream(&cmd, tx);
        let tell = async {
            let mut done = resumed;
            let mut line = Vec::new();
            while let Some(chunk) = rx.recv().await {
                for b in chunk {
                    if b == b'\n' {
                        done += String::from_utf8_lossy(&line)
                            .trim()
                            .parse::<u64>()
                            .unwrap_or(0);
                        line.clear();
                        self.emit(EngineEvent::Transfer {
                            job_id: job_id.map(str::to_string),
                            what: name.to_string(),
                            done,
                            total,
                            elapsed_ms: started.elapsed().as_millis() as u64,
                        });
                    } else {
                        line.push(b);
                    }
                }
            }
        };
        let (status, ()) = tokio::join!(fetch, tell);
        if status? != 0 {
            let err = remote
                .read_range(&format!("{names}.err"), 0, 4096)
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            let last = String::from_utf8_lossy(&err)
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| crate::sanitize::sanitize_line(l.as_bytes()))
                .unwrap_or_default();
            bail!(
                "the machine could not fetch {url} (python3 with boto3 and its own AWS credentials are needed): {last}"
            );
        }
        let extras = data::extras(&side.partial, listing.objects.iter().map(|o| o.0.as_str()));
        remote
            .exec_with_stdin(
                &format!(
                    "rm -f {n} {n}.err; {}",
                    data::finish_script(&root, &lhash, &content, None, mount),
                    n = sh_quote(&names)
                ),
                &extras,
            )
            .await?
            .check("keeping the dataset on the machine")?;
        let records: Vec<(&str, u64, &str)> = listing
            .objects
            .iter()
            .map(|(r, s, e)| (r.as_str(), *s, e.as_str()))
            .collect();
        self.keep_record(&content, &records);
        self.store().add_event(
            "data.sent",
            Some(&inst.id),
            job_id,
            &format!(
                "{name}: {} objects, {} bytes fetched by the machine from {url}{} in {:.1} s",
                listing.objects.len(),
                total - resumed,
                if resumed > 0 {
                    format!(" ({resumed} bytes were there already)")
                } else {
                    String::new()
                },
                started.elapsed().as_secs_f64()
            ),
        )
    }

    /// The first round trip of a placement (see `data::probe_script`).
    async fn probe_dataset(
        remote: &dyn Remote,
        lhash: &str,
        single: Option<&str>,
        mount: &str,
    ) -> Result<data::MachineSide> {
        let out = remote
            .exec(&data::probe_script(remote.root(), lhash, single, mount))
            .await?
            .check("looking for the dataset on the machine")?;
        Ok(data::parse_probe(&out.stdout_str()))
    }

    /// Where the record of each content placed from here is kept (`data::save_records`).
    fn contents_dir(&self) -> PathBuf {
        self.inner.data_dir.join("datasets").join("contents")
    }

    /// Keep the record of `content` (names, sizes, hashes); a failure is only logged (the
    /// record saves sends later, nothing depends on it now).
    fn keep_record(&self, content: &str, files: &[(&str, u64, &str)]) {
        if let Err(e) = data::save_records(&self.contents_dir(), content, files) {
            tracing::warn!("keeping the record of dataset {content}: {e:#}");
        }
    }

    async fn place_one(
        &self,
        job_id: Option<&str>,
        remote: &dyn Remote,
        inst: &InstanceRecord,
        src: &Path,
        name: &str,
        mount: &str,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let path = src.to_path_buf();
        let mut listing = tokio::task::spawn_blocking(move || data::scan(&path)).await??;
        let lhash = data::listing_hash(&listing);
        let single = listing.single.then(|| listing.files[0].rel.clone());
        let side = Self::probe_dataset(remote, &lhash, single.as_deref(), mount).await?;
        let say =
            |kind: &str, msg: String| self.store().add_event(kind, Some(&inst.id), job_id, &msg);
        if let Some(c) = side.placed {
            return say(
                "data.placed",
                format!("{name}: on the machine already (content {c})"),
            );
        }
        let mut cache =
            data::HashCache::load(&self.inner.data_dir.join("datasets").join("hashes.json"));
        // The same content may be there under another listing (a copy of the folder,
        // another project's): worth reading it here to know, when the machine holds any
        // dataset, or when every file's hash is known already.
        if !side.done.is_empty() || cache.knows_all(&listing) {
            let hashes;
            (hashes, cache, listing) = hash_listing(cache, listing).await?;
            let content = data::content_hash(&listing, &hashes);
            if side.done.contains(&content) {
                self.keep_record(&content, &records_of(&listing, &hashes));
                remote
                    .exec_with_stdin(
                        &data::finish_script(
                            remote.root(),
                            &lhash,
                            &content,
                            single.as_deref(),
                            mount,
                        ),
                        &[],
                    )
                    .await?
                    .check("linking the dataset")?;
                return say(
                    "data.placed",
                    format!("{name}: the same content is on the machine already ({content})"),
                );
            }
        }
        self.send_dataset(
            job_id,
            remote,
            listing,
            cache,
            side,
            (&lhash, name, mount),
            started,
        )
        .await
    }

    /// Send the files of `listing` the machine does not hold whole yet into the listing's
    /// transfer folder (one stream, progress told as it goes), then make it the dataset.
    #[allow(clippy::too_many_arguments)]
    async fn send_dataset(
        &self,
        job_id: Option<&str>,
        remote: &dyn Remote,
        mut listing: data::Listing,
        mut cache: data::HashCache,
        side: data::MachineSide,
        (lhash, name, mount): (&str, &str, &str),
        started: std::time::Instant,
    ) -> Result<()> {
        let root = remote.root().to_string();
        let partial = side.partial;
        let have: HashMap<&str, (u64, i64)> = partial
            .iter()
            .map(|(r, s, m)| (r.as_str(), (*s, *m)))
            .collect();
        // The transfer folder started as hard links of an earlier content: its files whose
        // hash is this dataset's are there (their hashes: the record kept when that content
        // was placed, and this dataset's from the cache or read now).
        let seeded = side
            .from
            .as_deref()
            .map(|c| data::load_content(&self.contents_dir(), c))
            .unwrap_or_default();
        let now: Vec<String> = if seeded.is_empty() {
            Vec::new()
        } else {
            let hashes;
            (hashes, cache, listing) = hash_listing(cache, listing).await?;
            hashes
        };
        let todo: Vec<&data::DataFile> = listing
            .files
            .iter()
            .enumerate()
            .filter(|(i, f)| {
                let there = have.get(f.rel.as_str());
                let ours = there == Some(&(f.size, f.mtime_s));
                let kept = there.is_some_and(|(s, _)| *s == f.size)
                    && seeded
                        .get(&f.rel)
                        .is_some_and(|(s, h)| *s == f.size && now.get(*i) == Some(h));
                !(ours || kept)
            })
            .map(|(_, f)| f)
            .collect();
        let total = listing.bytes;
        let resumed: u64 = total - todo.iter().map(|f| f.size).sum::<u64>();
        let part = format!("{root}/data/q-{lhash}.part");
        // One stream for every file (no stall between batches); progress is the bytes
        // read into it, told four times a second.
        let counter: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let tell = |sent: u64, ms: u64| {
            self.emit(EngineEvent::Transfer {
                job_id: job_id.map(str::to_string),
                what: name.to_string(),
                done: resumed + sent,
                total,
                elapsed_ms: ms,
            })
        };
        tell(0, 0);
        let rels: Vec<String> = todo.iter().map(|f| f.rel.clone()).collect();
        let send_started = std::time::Instant::now();
        let sent = {
            let send = remote.put_files_counted(&listing.base, &rels, &part, counter.clone());
            tokio::pin!(send);
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    r = &mut send => break r?,
                    _ = tick.tick() => tell(
                        counter.load(std::sync::atomic::Ordering::Relaxed),
                        send_started.elapsed().as_millis() as u64,
                    ),
                }
            }
        };
        for (f, got) in todo.iter().zip(sent) {
            if got.size != f.size {
                bail!(
                    "{} changed while it was sent ({} bytes listed, {} read)",
                    f.rel,
                    f.size,
                    got.size
                );
            }
            cache.put(&listing, f, got.blake3);
        }
        tell(total - resumed, send_started.elapsed().as_millis() as u64);
        // Files a cut-off transfer had sent whole are hashed here if they were not then.
        let (hashes, _, listing) = hash_listing(cache, listing).await?;
        let content = data::content_hash(&listing, &hashes);
        self.keep_record(&content, &records_of(&listing, &hashes));
        let single = listing.single.then(|| listing.files[0].rel.clone());
        let extras = data::extras(&partial, listing.files.iter().map(|f| f.rel.as_str()));
        remote
            .exec_with_stdin(
                &data::finish_script(&root, lhash, &content, single.as_deref(), mount),
                &extras,
            )
            .await?
            .check("keeping the dataset on the machine")?;
        let secs = started.elapsed().as_secs_f64();
        let sent = total - resumed;
        self.store().add_event(
            "data.sent",
            None,
            job_id,
            &format!(
                "{name}: {} files, {sent} bytes sent{} in {secs:.1} s ({:.1} MB/s); content {content}",
                listing.files.len(),
                if resumed > 0 {
                    format!(
                        " ({resumed} bytes were on the machine: a cut-off transfer's, or the previous content's)"
                    )
                } else {
                    String::new()
                },
                sent as f64 / secs.max(1e-3) / 1e6
            ),
        )?;
        Ok(())
    }
}
