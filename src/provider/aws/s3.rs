//! Checkpoints in S3: `s3://BUCKET/PREFIX/<job>/<name>`, the file's BLAKE3 in the object's
//! metadata (`x-amz-meta-blake3`), large files in parts that a later try resumes (the
//! upload id is kept beside the local copy; parts S3 already holds are not sent again).
//! A local copy stays in `<data>/checkpoints` as a cache, so a restore on the same laptop
//! reads no S3 bytes; a restore anywhere else downloads and checks the BLAKE3.
//!
//! The laptop's credentials do the S3 work (the engine ships checkpoints off the machine
//! over SSH as they are written): the machine needs no S3 rights of its own.

use crate::config::AwsProviderConfig;
use crate::job::checkpoint::{CheckpointStore, LocalDirStore, Unrecorded, size_and_blake3};
use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use aws_config::{Region, SdkConfig};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const FORGOTTEN: &str = "upload forgotten";

/// Files above this go up in parts of this size (S3's minimum part is 5 MiB).
pub const PART_SIZE: u64 = 16 << 20;
/// Parts in flight at once (one stream to S3 rarely fills a link).
const PARALLEL: usize = 4;

/// `s3://bucket/prefix` → (bucket, prefix without slashes at either end).
/// An S3 client for the provider's settings (first region, S3 endpoint, path style).
pub fn client(
    sdk: &aws_config::SdkConfig,
    cfg: &crate::config::AwsProviderConfig,
) -> aws_sdk_s3::Client {
    let mut b = aws_sdk_s3::config::Builder::from(sdk).force_path_style(cfg.s3_force_path_style);
    if let Some(r) = cfg.regions.first() {
        b = b.region(Region::new(r.clone()));
    }
    if let Some(u) = cfg.endpoints.get("s3") {
        b = b.endpoint_url(u);
    }
    aws_sdk_s3::Client::from_conf(b.build())
}

/// Every object under `s3://bucket/prefix` (folder markers left out): name under the
/// prefix, size, ETag; a name that would leave the dataset's folder is refused.
pub async fn list_dataset(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<(String, u64, String)>> {
    let mut out = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page =
            page.map_err(|e| s3_error(&format!("listing s3://{bucket}/{prefix}"), bucket, e))?;
        for o in page.contents() {
            let Some(key) = o.key() else { continue };
            let rel = key.strip_prefix(prefix).unwrap_or(key);
            if rel.is_empty() || rel.ends_with('/') {
                continue;
            }
            if rel.contains('\n') || crate::remote::safe_join(Path::new("/x"), rel).is_err() {
                anyhow::bail!("s3://{bucket}/{key}: a name that would leave the dataset's folder");
            }
            out.push((
                rel.to_string(),
                o.size().unwrap_or(0).max(0) as u64,
                o.e_tag().unwrap_or("").trim_matches('"').to_string(),
            ));
        }
    }
    out.sort();
    Ok(out)
}

pub fn parse_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("s3://")
        .with_context(|| format!("`{url}` is not an s3://BUCKET/PREFIX address"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !ok {
        bail!("`{bucket}` is not an S3 bucket name (3-63 of a-z 0-9 . -)");
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// A multipart upload under way, kept beside the local copy so a later try resumes it.
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    upload_id: String,
    blake3: String,
    size: u64,
    /// Parts S3 confirmed: (number, ETag).
    #[serde(default)]
    parts: Vec<(i32, String)>,
}

pub struct S3Store {
    sdk: Arc<tokio::sync::OnceCell<SdkConfig>>,
    cfg: AwsProviderConfig,
    bucket: String,
    prefix: String,
    cache: LocalDirStore,
    uploads: PathBuf,
    part_size: u64,
    /// Tests: give up after this many parts, as a process killed mid-upload would.
    stop_after_parts: Option<usize>,
}

impl S3Store {
    pub fn new(
        sdk: Arc<tokio::sync::OnceCell<SdkConfig>>,
        cfg: AwsProviderConfig,
        url: &str,
        data_dir: &Path,
    ) -> Result<S3Store> {
        let (bucket, prefix) = parse_url(url)?;
        Ok(S3Store {
            sdk,
            cfg,
            bucket,
            prefix,
            cache: LocalDirStore::new(data_dir),
            uploads: data_dir.join("checkpoints").join(".uploads"),
            part_size: PART_SIZE,
            stop_after_parts: None,
        })
    }

    /// Smaller parts (tests: a multipart upload without hundreds of megabytes).
    pub fn with_part_size(mut self, bytes: u64) -> S3Store {
        self.part_size = bytes.max(5 << 20);
        self
    }

    /// Tests: fail every upload after `n` parts, leaving it to be resumed.
    pub fn stop_after_parts(mut self, n: Option<usize>) -> S3Store {
        self.stop_after_parts = n;
        self
    }

    async fn client(&self) -> Result<aws_sdk_s3::Client> {
        let sdk = self
            .sdk
            .get_or_try_init(|| super::ec2::load_sdk(&self.cfg))
            .await?;
        Ok(client(sdk, &self.cfg))
    }

    pub fn key(&self, job_id: &str, name: &str) -> String {
        if self.prefix.is_empty() {
            format!("{job_id}/{name}")
        } else {
            format!("{}/{job_id}/{name}", self.prefix)
        }
    }

    fn pending_file(&self, job_id: &str, name: &str) -> PathBuf {
        let flat: String = name
            .chars()
            .map(|c| if c == '/' { '_' } else { c })
            .collect();
        self.uploads.join(job_id).join(format!("{flat}.json"))
    }

    /// Upload `src` as `key` in parts, resuming an upload of the same content cut off
    /// before. Parts S3 already has are skipped.
    async fn put_multipart(
        &self,
        s3: &aws_sdk_s3::Client,
        key: &str,
        src: &Path,
        size: u64,
        blake3: &str,
        pending: &Path,
    ) -> Result<()> {
        let earlier: Option<Pending> = tokio::fs::read(pending)
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|p: &Pending| p.blake3 == blake3 && p.size == size);
        // Parts already sent are in the journal (written after each part): no ListParts
        // round trip, and an upload S3 has forgotten fails at the first part or at the end
        // with NoSuchUpload, which starts it over.
        let mut journal = match earlier {
            Some(p) => p,
            None => self.start_upload(s3, key, blake3, size, pending).await?,
        };
        let upload_id = journal.upload_id.clone();
        let parts = size.div_ceil(self.part_size).max(1);
        let todo: Vec<u64> = (1..=parts)
            .filter(|n| !journal.parts.iter().any(|(k, _)| *k == *n as i32))
            .take(self.stop_after_parts.unwrap_or(usize::MAX))
            .collect();
        let cut = self
            .stop_after_parts
            .is_some_and(|max| (parts as usize).saturating_sub(journal.parts.len()) > max);
        // PARALLEL parts in flight; each one journaled as S3 confirms it.
        use futures_util::StreamExt;
        let mut uploads = futures_util::stream::iter(todo.into_iter().map(|n| {
            let upload_id = upload_id.clone();
            async move {
                let etag = self
                    .upload_part(s3, key, src, size, &upload_id, n, pending)
                    .await?;
                anyhow::Ok((n, etag))
            }
        }))
        .buffer_unordered(PARALLEL);
        while let Some(done) = uploads.next().await {
            let (n, etag) = done?;
            journal.parts.push((n as i32, etag));
            tokio::fs::write(pending, serde_json::to_vec(&journal)?).await?;
        }
        drop(uploads);
        if cut {
            bail!(
                "upload of {key} stopped after {} parts (test)",
                self.stop_after_parts.unwrap_or(0)
            );
        }
        journal.parts.sort();
        let done: Vec<CompletedPart> = journal
            .parts
            .iter()
            .map(|(n, e)| CompletedPart::builder().part_number(*n).e_tag(e).build())
            .collect();
        let completed = s3
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(done))
                    .build(),
            )
            .send()
            .await;
        if let Err(e) = completed {
            // An answer the SDK cannot read (S3 may answer 200 with an error inside; moto
            // names the document's root differently) is settled by asking for the object.
            let there = s3
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .ok()
                .filter(|h| {
                    h.content_length() == Some(size as i64)
                        && h.metadata()
                            .and_then(|m| m.get("blake3"))
                            .map(String::as_str)
                            == Some(blake3)
                });
            if there.is_none() {
                bail!(
                    "completing the upload of {key}: {}",
                    aws_smithy_types::error::display::DisplayErrorContext(&e)
                );
            }
        }
        let _ = tokio::fs::remove_file(pending).await;
        Ok(())
    }

    /// One part, retried 3 times; a forgotten upload ends the whole upload at once.
    #[allow(clippy::too_many_arguments)]
    async fn upload_part(
        &self,
        s3: &aws_sdk_s3::Client,
        key: &str,
        src: &Path,
        size: u64,
        upload_id: &str,
        n: u64,
        pending: &Path,
    ) -> Result<String> {
        let offset = (n - 1) * self.part_size;
        let len = self.part_size.min(size - offset);
        let mut tries = 0;
        loop {
            let body = ByteStream::read_from()
                .path(src)
                .offset(offset)
                .length(Length::Exact(len))
                .build()
                .await?;
            match s3
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(n as i32)
                .body(body)
                .send()
                .await
            {
                Ok(o) => return Ok(o.e_tag().unwrap_or_default().to_string()),
                Err(e) if e.code() == Some("NoSuchUpload") => {
                    let _ = tokio::fs::remove_file(pending).await;
                    bail!("{FORGOTTEN}: S3 no longer has the upload of {key}");
                }
                Err(e) if tries < 3 => {
                    tries += 1;
                    tracing::warn!("part {n} of {key}: {e}; again");
                    tokio::time::sleep(std::time::Duration::from_millis(500 << tries)).await;
                }
                Err(e) => {
                    bail!(
                        "uploading part {n} of {key}: {}",
                        aws_smithy_types::error::display::DisplayErrorContext(&e)
                    );
                }
            }
        }
    }

    /// Download `name` of `job_id` into the local cache, after `accept` has seen the
    /// object's metadata (refusing stops before any byte is written); returns the cached
    /// file and the metadata.
    async fn fetch(
        &self,
        job_id: &str,
        name: &str,
        accept: impl FnOnce(&std::collections::HashMap<String, String>) -> Result<()>,
    ) -> Result<(PathBuf, std::collections::HashMap<String, String>)> {
        let s3 = self.client().await?;
        let key = self.key(job_id, name);
        let obj = s3
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| s3_error(&format!("downloading {key}"), &self.bucket, e))?;
        let meta = obj.metadata().cloned().unwrap_or_default();
        accept(&meta)?;
        let scratch = self.cache.scratch(job_id, name)?;
        body_to_file(obj.body, &scratch, true).await?;
        let file = PathBuf::from(self.cache.put(job_id, name, &scratch).await?);
        Ok((file, meta))
    }

    async fn start_upload(
        &self,
        s3: &aws_sdk_s3::Client,
        key: &str,
        blake3: &str,
        size: u64,
        pending: &Path,
    ) -> Result<Pending> {
        let up = s3
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .metadata("blake3", blake3)
            .send()
            .await
            .map_err(|e| s3_error(&format!("starting the upload of {key}"), &self.bucket, e))?;
        let id = up.upload_id().context("no upload id")?.to_string();
        if let Some(d) = pending.parent() {
            tokio::fs::create_dir_all(d).await?;
        }
        let p = Pending {
            upload_id: id,
            blake3: blake3.to_string(),
            size,
            parts: Vec::new(),
        };
        tokio::fs::write(pending, serde_json::to_vec(&p)?).await?;
        Ok(p)
    }
}

fn s3_error<E, R>(what: &str, bucket: &str, e: aws_sdk_s3::error::SdkError<E, R>) -> anyhow::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let hint = match e.code() {
        Some("NoSuchBucket") => {
            format!(" (bucket {bucket} does not exist: create it, or fix checkpoints_s3)")
        }
        Some("AccessDenied") => format!(" (these credentials may not write to {bucket})"),
        _ => String::new(),
    };
    anyhow::anyhow!(
        "{what}: {}{hint}",
        aws_smithy_types::error::display::DisplayErrorContext(&e)
    )
}

#[async_trait]
impl CheckpointStore for S3Store {
    async fn put(&self, job_id: &str, name: &str, src: &Path) -> Result<String> {
        let s3 = self.client().await?;
        let key = self.key(job_id, name);
        let (size, blake3) = size_and_blake3(src).await?;
        if size <= self.part_size {
            s3.put_object()
                .bucket(&self.bucket)
                .key(&key)
                .metadata("blake3", &blake3)
                .body(ByteStream::from_path(src).await?)
                .send()
                .await
                .map_err(|e| s3_error(&format!("uploading {key}"), &self.bucket, e))?;
        } else {
            let pending = self.pending_file(job_id, name);
            match self
                .put_multipart(&s3, &key, src, size, &blake3, &pending)
                .await
            {
                // The journal named an upload S3 dropped (expired, aborted): once afresh.
                Err(e) if format!("{e}").starts_with(FORGOTTEN) => {
                    self.put_multipart(&s3, &key, src, size, &blake3, &pending)
                        .await?
                }
                r => r?,
            }
        }
        // The local copy stays as a cache for restores from this machine.
        self.cache.put(job_id, name, src).await?;
        Ok(format!("s3://{}/{key}", self.bucket))
    }

    async fn list(&self, job_id: &str) -> Result<Vec<String>> {
        let s3 = self.client().await?;
        let base = self.key(job_id, "");
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = s3
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&base)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| s3_error("listing checkpoints", &self.bucket, e))?;
            for o in page.contents() {
                if let Some(n) = o.key().and_then(|k| k.strip_prefix(&base)) {
                    names.push(n.to_string());
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        names.sort();
        Ok(names)
    }

    async fn get(&self, job_id: &str, name: &str, blake3: &str) -> Result<PathBuf> {
        if let Ok(p) = self.cache.get(job_id, name, blake3).await {
            return Ok(p);
        }
        let key = self.key(job_id, name);
        self.fetch(job_id, name, |m| match m.get("blake3") {
            Some(h) if h != blake3 => Err(anyhow::anyhow!(
                "s3://{}/{key} holds another file (BLAKE3 {}) than the one shipped; refused",
                self.bucket,
                crate::model::short_hash(h)
            )),
            _ => Ok(()),
        })
        .await?;
        self.cache.get(job_id, name, blake3).await
    }

    async fn delete(&self, job_id: &str, name: &str) -> Result<()> {
        let s3 = self.client().await?;
        let key = self.key(job_id, name);
        s3.delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| s3_error(&format!("deleting {key}"), &self.bucket, e))?;
        self.cache.delete(job_id, name).await
    }

    fn scratch(&self, job_id: &str, name: &str) -> Result<PathBuf> {
        self.cache.scratch(job_id, name)
    }

    async fn keep_log(&self, job_id: &str, attempt: i64, file: &Path) -> Result<Option<String>> {
        let s3 = self.client().await?;
        let key = self.key(job_id, &format!("logs/{attempt}.log"));
        s3.put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("text/plain; charset=utf-8")
            .body(ByteStream::from_path(file).await?)
            .send()
            .await
            .map_err(|e| s3_error(&format!("archiving the log as {key}"), &self.bucket, e))?;
        Ok(Some(format!("s3://{}/{key}", self.bucket)))
    }

    fn rescue_env(
        &self,
        job_id: &str,
        inst: &crate::store::InstanceRecord,
    ) -> Option<Vec<(String, String)>> {
        let mut v = vec![
            (
                "TRAINCTL_RESCUE_URL".to_string(),
                format!("s3://{}/{}", self.bucket, self.key(job_id, "")),
            ),
            ("TRAINCTL_RESCUE_BUCKET".to_string(), self.bucket.clone()),
            ("TRAINCTL_RESCUE_PREFIX".to_string(), self.key(job_id, "")),
        ];
        if let Some(r) = inst
            .region
            .clone()
            .or_else(|| self.cfg.regions.first().cloned())
        {
            v.push(("AWS_DEFAULT_REGION".into(), r));
        }
        // Only for emulators and private endpoints; on EC2 the defaults are right.
        if let Some(u) = self
            .cfg
            .endpoints
            .get("s3")
            .or(self.cfg.endpoint_url.as_ref())
        {
            v.push(("AWS_ENDPOINT_URL_S3".into(), u.clone()));
        }
        if self.cfg.imds_endpoint != crate::config::AwsProviderConfig::default().imds_endpoint {
            v.push((
                "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
                format!("{}/", self.cfg.imds_endpoint.trim_end_matches('/')),
            ));
        }
        Some(v)
    }

    async fn rescued_log(&self, job_id: &str, attempt: i64) -> Result<Option<(u64, PathBuf)>> {
        let s3 = self.client().await?;
        let key = self.key(job_id, &crate::job::checkpoint::rescued_log_name(attempt));
        let obj = match s3.get_object().bucket(&self.bucket).key(&key).send().await {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(s3_error(&format!("downloading {key}"), &self.bucket, e)),
        };
        let offset = obj
            .metadata()
            .and_then(|m| m.get("offset"))
            .and_then(|o| o.trim().parse::<u64>().ok())
            .with_context(|| format!("{key} has no `offset` metadata"))?;
        let file = self
            .uploads
            .join(job_id)
            .join(format!("rescued-{attempt}.log"));
        body_to_file(obj.body, &file, false).await?;
        Ok(Some((offset, file)))
    }

    async fn unrecorded(&self, job_id: &str, known: &[String]) -> Result<Vec<Unrecorded>> {
        let mut out = Vec::new();
        for name in self.list(job_id).await? {
            if known.contains(&name) || name.starts_with('.') || name.contains('/') {
                continue;
            }
            let (file, meta) = self.fetch(job_id, &name, |_| Ok(())).await?;
            let mtime_ms = meta
                .get("mtime")
                .and_then(|t| t.trim().parse::<f64>().ok())
                .map(|t| (t * 1000.0) as i64);
            let key = self.key(job_id, &name);
            out.push(Unrecorded {
                name,
                file,
                location: format!("s3://{}/{key}", self.bucket),
                mtime_ms,
            });
        }
        Ok(out)
    }

    /// Write, then delete, a small object where the job's checkpoints will go.
    async fn check(&self, job_id: &str) -> Result<()> {
        let s3 = self.client().await?;
        let key = self.key(job_id, ".trainctl-write-check");
        s3.put_object()
            .bucket(&self.bucket)
            .key(&key)
            .body(ByteStream::from_static(b"trainctl"))
            .send()
            .await
            .map_err(|e| {
                s3_error(
                    &format!("cannot write checkpoints to s3://{}/{key}", self.bucket),
                    &self.bucket,
                    e,
                )
            })?;
        s3.delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| {
                s3_error(
                    &format!("deleting s3://{}/{key}", self.bucket),
                    &self.bucket,
                    e,
                )
            })?;
        Ok(())
    }
}

/// An object's body into the file `path` (its folder made), synced to disk when `sync`
/// (a file kept, not a scratch copy read once).
async fn body_to_file(body: ByteStream, path: &Path, sync: bool) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    if let Some(d) = path.parent() {
        tokio::fs::create_dir_all(d).await?;
    }
    let mut body = body.into_async_read();
    let mut f = tokio::fs::File::create(path).await?;
    tokio::io::copy_buf(&mut body, &mut f).await?;
    f.flush().await?;
    if sync {
        f.sync_all().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_addresses_are_checked() {
        assert_eq!(
            parse_url("s3://my-bucket/runs/ckpt/").unwrap(),
            ("my-bucket".into(), "runs/ckpt".into())
        );
        assert_eq!(
            parse_url("s3://my-bucket").unwrap(),
            ("my-bucket".into(), "".into())
        );
        assert!(parse_url("my-bucket/x").is_err());
        assert!(parse_url("s3://My_Bucket/x").is_err());
    }
}
