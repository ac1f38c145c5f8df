//! Code sync by content-hash manifest.
//!
//! The machine keeps the manifest of what was last synced (`<root>/manifests/<project>.json`).
//! A sync walks the project (honouring `.gitignore` and `sync.exclude`), reuses the stored
//! hash of every file whose size and mtime are unchanged (hashing only the rest), and moves
//! only new or changed files; files that left the tree are deleted there. An unchanged tree
//! costs one read of the manifest and no transfer. Excluded paths are always reported by
//! `--dry-run`, never dropped silently.

use super::delta;
use crate::remote::{Conversation, Fetched, Remote, sh_quote};
use anyhow::{Context, Result, bail};
use ignore::WalkBuilder;
use ignore::overrides::{Override, OverrideBuilder};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// Changed files at least this large travel as changed blocks when the machine has them.
pub const DELTA_MIN_SIZE: u64 = 16 * 1024;
/// The helper that checksums and patches blocks on the machine (needs python3 there; without
/// it, files travel whole).
const DELTA_PY: &str = include_str!("../../assets/remote/delta.py");

/// The machine's system python, without site packages (fast start; a pyenv or conda shim
/// can cost 100 ms a start), else whatever `python3` is on PATH.
const PY_DEF: &str = "py() { p=/usr/bin/python3; [ -x \"$p\" ] || p=python3; \"$p\" -S \"$@\"; }; ";

/// What a sync moved.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SyncStats {
    pub whole_files: usize,
    pub delta_files: usize,
    /// Block bytes sent for the delta files.
    pub delta_bytes: u64,
}

/// Paths never synced whatever the project says: VCS data and trainctl's own pull folder.
pub const BUILTIN_EXCLUDES: &[&str] = &[".git/", "trainctl-out/"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub size: u64,
    /// Modification time of the local file when it was hashed (ns since the epoch).
    pub mtime_ns: i64,
    /// Permission bits.
    pub mode: u32,
    /// BLAKE3 of the content (files), empty for links.
    pub hash: String,
    /// Target of a symbolic link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

impl Entry {
    /// Same content and kind, whatever the mtime.
    fn same_content(&self, o: &Entry) -> bool {
        self.hash == o.hash && self.link == o.link && self.mode == o.mode && self.size == o.size
    }
}

pub type Manifest = BTreeMap<String, Entry>;

/// One line of the manifest file on the machine. The file is a log: a full snapshot, then
/// patches appended by later syncs (so changing 10 files sends 10 entries, not all of
/// them); it is rewritten as one snapshot when the log grows long.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ManifestLine {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    full: Option<Manifest>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    set: BTreeMap<String, Entry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    del: Vec<String>,
    /// Local cache only: the generation token the machine's manifest had when this copy
    /// was written, and its number of lines then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lines: Option<usize>,
}

/// Patch lines kept before the manifest is rewritten as one snapshot.
const MANIFEST_MAX_LINES: usize = 32;

/// Replay a manifest log. A torn last line (a crash mid-append) is ignored: the files it
/// described are simply sent again. Anything else unreadable means "unknown": sync all.
fn replay_manifest(bytes: &[u8]) -> (Manifest, usize) {
    let mut m = Manifest::new();
    let lines: Vec<&[u8]> = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
        .collect();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_slice::<ManifestLine>(line) {
            Ok(rec) => {
                if let Some(full) = rec.full {
                    m = full;
                }
                m.extend(rec.set);
                for d in rec.del {
                    m.remove(&d);
                }
            }
            Err(_) if i + 1 == lines.len() => {}
            Err(_) => return (Manifest::new(), 0),
        }
    }
    (m, lines.len())
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Excluded {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncPlan {
    /// New or changed files to copy.
    pub upload: Vec<String>,
    /// Symbolic links to (re)create: (path, target).
    pub links: Vec<(String, String)>,
    /// Paths that left the tree.
    pub delete: Vec<String>,
    pub unchanged: usize,
    pub upload_bytes: u64,
    /// Uploads the machine already has an older version of (block-delta candidates).
    #[serde(skip)]
    pub modified: Vec<String>,
    /// The machine's sizes of `modified` files.
    #[serde(skip)]
    pub modified_sizes: Vec<u64>,
    /// The machine's block signatures of `modified` files, when fetched with the manifest.
    #[serde(skip)]
    pub block_sums: HashMap<String, delta::Signature>,
    /// Same content, new mtime: the machine's copy gets the mtime (as `rsync -a` keeps
    /// it), and the manifest records it so the next scan need not hash them again.
    #[serde(skip)]
    pub touched: Vec<String>,
    /// New files where the machine has a directory (a directory became a file): removed
    /// before the file lands, whatever the machine added inside it.
    #[serde(skip)]
    pub in_the_way: Vec<String>,
    #[serde(skip)]
    pub manifest: Manifest,
    /// Lines in the manifest log on the machine when it was read.
    #[serde(skip)]
    pub manifest_lines: usize,
    /// The machine answered that its manifest is the local copy's (same generation): a
    /// sync that moves nothing leaves both as they are.
    #[serde(skip)]
    pub cache_current: bool,
}

impl SyncPlan {
    pub fn is_noop(&self) -> bool {
        self.upload.is_empty() && self.links.is_empty() && self.delete.is_empty()
    }
}

fn overrides(root: &Path, excludes: &[String]) -> Result<Override> {
    let mut ob = OverrideBuilder::new(root);
    for pat in BUILTIN_EXCLUDES
        .iter()
        .copied()
        .chain(excludes.iter().map(String::as_str))
    {
        ob.add(&format!("!{pat}"))
            .with_context(|| format!("bad sync.exclude pattern `{pat}`"))?;
    }
    Ok(ob.build()?)
}

fn walker(root: &Path, excludes: &[String], filtered: bool) -> Result<WalkBuilder> {
    let mut wb = WalkBuilder::new(root);
    wb.hidden(false)
        .follow_links(false)
        .require_git(false)
        .git_global(false)
        .sort_by_file_name(|a, b| a.cmp(b));
    if filtered {
        wb.git_ignore(true)
            .git_exclude(true)
            .ignore(true)
            .parents(true);
        wb.overrides(overrides(root, excludes)?);
    } else {
        wb.standard_filters(false).hidden(false);
    }
    Ok(wb)
}

fn rel_of(root: &Path, p: &Path) -> Option<String> {
    let rel = p.strip_prefix(root).ok()?;
    let s = rel.to_str()?.to_string();
    if s.is_empty() { None } else { Some(s) }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
}

/// The manifest of the tree at `root` as it is now. Files whose size and mtime match
/// `previous` keep its hash (no read); the others are hashed.
/// Whether [`scan`] hashes files the machine does not have yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashNew {
    Now,
    /// Leave their hash empty: the upload computes it while reading them.
    WhileSending,
}

pub fn scan(root: &Path, excludes: &[String], previous: &Manifest) -> Result<Manifest> {
    scan_with(root, excludes, previous, HashNew::Now)
}

pub fn scan_with(
    root: &Path,
    excludes: &[String],
    previous: &Manifest,
    hash_new: HashNew,
) -> Result<Manifest> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Manifest::new();
    for entry in walker(root, excludes, true)?.build() {
        let entry = entry?;
        let Some(ft) = entry.file_type() else {
            continue;
        };
        if ft.is_dir() {
            continue;
        }
        let Some(rel) = rel_of(root, entry.path()) else {
            // A name that is not UTF-8 cannot be carried in the manifest: refuse loudly.
            anyhow::bail!(
                "cannot sync {}: file names must be valid UTF-8",
                entry.path().display()
            );
        };
        let meta = entry.path().symlink_metadata()?;
        let mtime = mtime_ns(&meta);
        let mode = meta.permissions().mode() & 0o7777;
        if ft.is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            out.insert(
                rel,
                Entry {
                    size: 0,
                    mtime_ns: mtime,
                    mode: 0o777,
                    hash: String::new(),
                    link: Some(target.to_string_lossy().into_owned()),
                },
            );
            continue;
        }
        if !ft.is_file() {
            continue; // sockets, fifos, devices
        }
        let size = meta.len();
        let hash = match previous.get(&rel) {
            Some(p) if p.size == size && p.mtime_ns == mtime && p.link.is_none() => p.hash.clone(),
            // New on the machine: it travels anyway and is hashed on the way (see `apply`).
            None if hash_new == HashNew::WhileSending => String::new(),
            _ => {
                let mut h = blake3::Hasher::new();
                h.update_reader(std::fs::File::open(entry.path())?)?;
                h.finalize().to_hex().to_string()
            }
        };
        out.insert(
            rel,
            Entry {
                size,
                mtime_ns: mtime,
                mode,
                hash,
                link: None,
            },
        );
    }
    Ok(out)
}

/// Every path the sync leaves out, with why: the topmost excluded directory stands for
/// everything under it (and is not walked: a `.venv/` of 50 000 files costs nothing).
pub fn excluded(root: &Path, excludes: &[String]) -> Result<Vec<Excluded>> {
    let mut included = BTreeSet::new();
    for e in walker(root, excludes, true)?.build() {
        if let Some(rel) = rel_of(root, e?.path()) {
            included.insert(rel);
        }
    }
    let included = std::sync::Arc::new(included);
    let ov = overrides(root, excludes)?;
    let mut out = Vec::new();
    let mut all = walker(root, excludes, false)?;
    let (inc, top) = (included.clone(), root.to_path_buf());
    all.filter_entry(move |e| {
        // Only what is in a directory the sync walks (an excluded one is listed, not entered).
        e.path()
            .parent()
            .is_none_or(|p| p == top || rel_of(&top, p).is_some_and(|rel| inc.contains(&rel)))
            || e.depth() == 0
    });
    for e in all.build() {
        let e = e?;
        let Some(rel) = rel_of(root, e.path()) else {
            continue;
        };
        if included.contains(&rel) {
            continue;
        }
        let is_dir = e.file_type().is_some_and(|t| t.is_dir());
        let reason = if ov.matched(e.path(), is_dir).is_ignore() {
            let builtin = BUILTIN_EXCLUDES
                .iter()
                .any(|b| rel == b.trim_end_matches('/') || rel.starts_with(b));
            if builtin { "built-in" } else { "sync.exclude" }
        } else {
            ".gitignore"
        };
        out.push(Excluded {
            path: if is_dir { format!("{rel}/") } else { rel },
            reason: reason.to_string(),
        });
    }
    Ok(out)
}

/// What must move to turn `remote` into `local`.
pub fn plan(local: Manifest, remote: &Manifest) -> SyncPlan {
    let mut p = SyncPlan::default();
    for (path, e) in &local {
        match remote.get(path) {
            Some(r) if r.same_content(e) => {
                p.unchanged += 1;
                if r.mtime_ns != e.mtime_ns {
                    p.touched.push(path.clone());
                }
            }
            _ => {
                if let Some(t) = &e.link {
                    p.links.push((path.clone(), t.clone()));
                } else {
                    if let Some(r) = remote.get(path)
                        && r.link.is_none()
                        && e.size >= DELTA_MIN_SIZE
                    {
                        p.modified.push(path.clone());
                        p.modified_sizes.push(r.size);
                    }
                    p.upload.push(path.clone());
                    p.upload_bytes += e.size;
                }
            }
        }
    }
    for path in remote.keys() {
        if !local.contains_key(path) {
            p.delete.push(path.clone());
        }
    }
    // A new file or link at a path the machine holds as a directory (it has entries below).
    for path in p.upload.iter().chain(p.links.iter().map(|(l, _)| l)) {
        if remote.contains_key(path) {
            continue;
        }
        let below = format!("{path}/");
        if remote
            .range(below.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&below))
        {
            p.in_the_way.push(path.clone());
        }
    }
    p.manifest = local;
    p
}

pub fn code_dir(root: &str, project: &str) -> String {
    format!("{root}/code/{project}")
}

fn manifest_path(root: &str, project: &str) -> String {
    format!("{root}/manifests/{project}.json")
}

/// A token rewritten with every change of the manifest: a client holding a copy of the
/// manifest with the same token needs nothing more from the machine.
fn generation_path(root: &str, project: &str) -> String {
    format!("{root}/manifests/{project}.gen")
}

/// The shell that records `token` as the manifest's generation (atomically).
fn generation_cmd(root: &str, project: &str, token: &str) -> String {
    let g = generation_path(root, project);
    format!(
        "mkdir -p {d} && printf %s {t} > {p} && mv {p} {g}",
        d = sh_quote(&format!("{root}/manifests")),
        t = sh_quote(token),
        p = sh_quote(&format!("{g}.part")),
        g = sh_quote(&g)
    )
}

/// The local copy of the machine's manifest: (manifest, generation, log lines).
fn read_cache(c: &Path) -> Option<(Manifest, Option<String>, Option<usize>)> {
    let bytes = std::fs::read(c).ok()?;
    let line: ManifestLine = serde_json::from_slice(bytes.trim_ascii()).ok()?;
    let m = line.full.filter(|m| !m.is_empty())?;
    Some((m, line.generation, line.lines))
}

/// Read the manifest stored on the machine (empty when there is none or it is unreadable),
/// with the number of lines of its log.
pub async fn remote_manifest(remote: &dyn Remote, project: &str) -> Result<(Manifest, usize)> {
    let path = manifest_path(remote.root(), project);
    Ok(match remote.read_range(&path, 0, usize::MAX).await? {
        Some(bytes) => replay_manifest(&bytes),
        None => (Manifest::new(), 0),
    })
}

const SUMS_MARK: &str = "--trainctl-block-sums--";
const SAME_MARK: &str = "--trainctl-manifest-unchanged--";

/// Like [`prepare`], with a local copy of the manifest last written to this machine
/// (`cache`): the local tree is compared with it first, so the machine's block sums of
/// the changed large files come back in the same round trip as its manifest. If the
/// machine's manifest is not the cached one (someone else synced), the plan is made
/// against what is there, as [`prepare`] does.
pub async fn prepare_with(
    remote: &dyn Remote,
    project: &str,
    local_root: &Path,
    excludes: &[String],
    cache: Option<&Path>,
) -> Result<SyncPlan> {
    let pre = prescan_async(local_root, excludes, cache).await?;
    prepare_scanned(remote, project, local_root, excludes, pre).await
}

/// The local half of a sync with a cached manifest: the tree compared with the copy of
/// the manifest last written to the machine. It needs nothing from the machine, so it can
/// run while the connection is being made.
pub struct Prescan {
    cached: Manifest,
    generation: Option<String>,
    lines: Option<usize>,
    guess: SyncPlan,
}

/// [`Prescan`] of `local_root` against `cache`. Blocking.
pub fn prescan(local_root: &Path, excludes: &[String], cache: Option<&Path>) -> Result<Prescan> {
    // Without a copy of the machine's manifest, the guess is that it has nothing (a first
    // sync): the walk is done meanwhile all the same, and redone if the machine has files.
    let (cached, generation, lines) = cache.and_then(read_cache).unwrap_or_default();
    let scanned = scan_with(local_root, excludes, &cached, HashNew::WhileSending)?;
    let mut guess = plan(scanned, &cached);
    // Signatures of what the machine holds, kept from the syncs that sent it: not asked for.
    let sigs = cache.map(sig_dir);
    for (rel, size) in guess.modified.iter().zip(&guess.modified_sizes) {
        if let Some(sigs) = &sigs
            && let Some(e) = cached.get(rel)
            && let Ok(bytes) = std::fs::read(sigs.join(&e.hash))
            && let Some(sig) = delta::Signature::from_bytes(&bytes)
            && sig.size == *size
            && sig.block == delta::block_size(*size)
        {
            guess.block_sums.insert(rel.clone(), sig);
        }
    }
    Ok(Prescan {
        cached,
        generation,
        lines,
        guess,
    })
}

/// [`prescan`] on a blocking thread.
pub async fn prescan_async(
    local_root: &Path,
    excludes: &[String],
    cache: Option<&Path>,
) -> Result<Prescan> {
    let (root, ex, c) = (
        local_root.to_path_buf(),
        excludes.to_vec(),
        cache.map(Path::to_path_buf),
    );
    tokio::task::spawn_blocking(move || prescan(&root, &ex, c.as_deref())).await?
}

/// [`prepare_with`] from a [`prescan`] already made.
pub async fn prepare_scanned(
    remote: &dyn Remote,
    project: &str,
    local_root: &Path,
    excludes: &[String],
    pre: Prescan,
) -> Result<SyncPlan> {
    let script = question(remote, project, pre.generation.as_deref(), &pre.guess);
    let out = remote.exec(&script).await?;
    answer(pre, &out.stdout, local_root, excludes).await
}

/// The question a sync asks the machine: its manifest (or only "unchanged" when its
/// generation is the cached one), then the block signatures of the files the guess
/// found modified.
fn question(
    remote: &dyn Remote,
    project: &str,
    generation: Option<&str>,
    guess: &SyncPlan,
) -> String {
    let cat = format!(
        "cat {} 2>/dev/null",
        sh_quote(&manifest_path(remote.root(), project))
    );
    let fetch = match generation {
        Some(g) => format!(
            "if [ \"$(cat {} 2>/dev/null)\" = {} ]; then printf %s {SAME_MARK}; same=1; else {cat}; fi",
            sh_quote(&generation_path(remote.root(), project)),
            sh_quote(g)
        ),
        None => cat,
    };
    let mut script = format!("{fetch}; printf '\\n%s\\n' {SUMS_MARK}");
    let (files, sizes) = to_ask(guess);
    if !files.is_empty() {
        script.push_str("; ");
        script.push_str(&sums_script(
            &code_dir(remote.root(), project),
            &files,
            &sizes,
        ));
    }
    script
}

/// The modified files whose signatures the machine is asked for (those not kept here).
fn to_ask(guess: &SyncPlan) -> (Vec<String>, Vec<u64>) {
    guess
        .modified
        .iter()
        .zip(&guess.modified_sizes)
        .filter(|(f, _)| !guess.block_sums.contains_key(*f))
        .map(|(f, s)| (f.clone(), *s))
        .unzip()
}

/// Keep `new` signatures in `dir` and drop those of content the machine no longer has
/// (best effort: a missing signature only means asking the machine).
fn keep_sigs(dir: &Path, new: &[(String, delta::Signature)], manifest: &Manifest) {
    if new.is_empty() && !dir.exists() {
        return;
    }
    for (hash, sig) in new {
        let _ = crate::model::write_whole(&dir.join(hash), &sig.to_bytes());
    }
    let live: BTreeSet<&str> = manifest.values().map(|e| e.hash.as_str()).collect();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !e.file_name().to_str().is_some_and(|n| live.contains(n)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Where signatures of the files last sent to a machine are kept, by content hash.
fn sig_dir(cache: &Path) -> std::path::PathBuf {
    cache.with_extension("sigs")
}

/// The plan from the machine's answer to [`question`].
async fn answer(
    pre: Prescan,
    text: &[u8],
    local_root: &Path,
    excludes: &[String],
) -> Result<SyncPlan> {
    let mark = format!("\n{SUMS_MARK}\n");
    let Some(at) = memchr::memmem::find(text, mark.as_bytes()) else {
        bail!("could not read the manifest on the machine");
    };
    let same = &text[..at] == SAME_MARK.as_bytes();
    let (remote_m, lines) = if same {
        // Unknown line count: a cache that lost it makes the next change a rewrite.
        (pre.cached.clone(), pre.lines.unwrap_or(MANIFEST_MAX_LINES))
    } else {
        replay_manifest(&text[..at])
    };
    if remote_m == pre.cached {
        let mut p = pre.guess;
        p.manifest_lines = lines;
        p.cache_current = same;
        let (files, sizes) = to_ask(&p);
        let answered = parse_sums(&text[at + mark.len()..], &files, &sizes);
        p.block_sums.extend(answered);
        return Ok(p);
    }
    // Not what we last wrote (someone else synced, or no cache): planned against what is
    // there.
    plan_against(remote_m, lines, local_root, excludes).await
}

/// The plan that turns the machine's manifest `remote_m` (a log of `lines`) into the tree
/// at `local_root` (walked on a blocking thread).
async fn plan_against(
    remote_m: Manifest,
    lines: usize,
    local_root: &Path,
    excludes: &[String],
) -> Result<SyncPlan> {
    let (root, ex, prev) = (
        local_root.to_path_buf(),
        excludes.to_vec(),
        remote_m.clone(),
    );
    let local =
        tokio::task::spawn_blocking(move || scan_with(&root, &ex, &prev, HashNew::WhileSending))
            .await??;
    let mut p = plan(local, &remote_m);
    p.manifest_lines = lines;
    Ok(p)
}

/// The end of the conversation script: what the sync sends next, `go <length>` and a
/// script of that many bytes (then what the script reads), or nothing.
const INTERPRETER: &str = "read -r op n || exit 0; [ \"$op\" = go ] || exit 0; s=$(head -c \"$n\") || exit 1; eval \"$s\"";

/// What [`INTERPRETER`] runs next: `script`.
fn go(script: &str) -> Vec<u8> {
    format!("go {}\n{script}", script.len()).into_bytes()
}

/// The line that ends a conversation's question.
const READY_MARK: &str = "--trainctl-ready--";

/// Plan and apply a sync of `local_root` as `project` (with `cache`, the local copy of the
/// machine's manifest, and `pre`, the local tree already compared with it) in one
/// conversation with the machine: the question, then on the same command the work. One
/// round trip for any sync whose large changed files' signatures came with the answer,
/// and none more for a tree that did not change. A remote that cannot converse gets
/// [`prepare_scanned`] and [`apply_with`].
pub async fn sync_once(
    remote: &dyn Remote,
    project: &str,
    local_root: &Path,
    excludes: &[String],
    cache: Option<&Path>,
    pre: Option<Prescan>,
    dry_run: bool,
) -> Result<(SyncPlan, SyncStats)> {
    let pre = match pre {
        Some(p) => p,
        None => prescan_async(local_root, excludes, cache).await?,
    };
    let q = question(remote, project, pre.generation.as_deref(), &pre.guess);
    let expect_noop = pre.guess.is_noop() && pre.guess.touched.is_empty();
    // Nothing to do here and nothing changed there: the machine need not wait for us.
    let early = if expect_noop && !dry_run {
        "[ -n \"$same\" ] && exit 0; "
    } else {
        ""
    };
    let script = format!("{q}; printf '%s\\n' {READY_MARK}; {early}{INTERPRETER}");
    let Some(mut conv) = remote.converse(&script).await? else {
        let plan = prepare_scanned(remote, project, local_root, excludes, pre).await?;
        let stats = if dry_run {
            SyncStats::default()
        } else {
            apply_with(remote, project, local_root, &plan, cache).await?
        };
        return Ok((plan, stats));
    };
    let mark = format!("{READY_MARK}\n");
    let text = conv.read_until(mark.as_bytes()).await?;
    let text = &text[..text.len() - mark.len()];
    let plan = match answer(pre, text, local_root, excludes).await {
        Ok(p) => p,
        Err(e) => {
            // End the machine's side (it reads end of input and stops) before saying why.
            let _ = conv.finish().await;
            return Err(e);
        }
    };
    if dry_run {
        conv.finish().await?;
        return Ok((plan, SyncStats::default()));
    }
    let stats = apply_cached(remote, project, local_root, &plan, cache, Some(conv)).await?;
    Ok((plan, stats))
}

/// [`apply`], then remember the machine's new manifest (with its generation token) in
/// `cache`, so the next unchanged sync fetches nothing but "unchanged".
pub async fn apply_with(
    remote: &dyn Remote,
    project: &str,
    local_root: &Path,
    plan: &SyncPlan,
    cache: Option<&Path>,
) -> Result<SyncStats> {
    apply_cached(remote, project, local_root, plan, cache, None).await
}

/// [`apply_with`], on `conv` when the plan came from a conversation still open.
async fn apply_cached(
    remote: &dyn Remote,
    project: &str,
    local_root: &Path,
    plan: &SyncPlan,
    cache: Option<&Path>,
    conv: Option<Box<dyn Conversation + '_>>,
) -> Result<SyncStats> {
    let (stats, applied) =
        apply_inner(remote, project, local_root, plan, cache.is_some(), conv).await?;
    let (Some(c), Some(applied)) = (cache, applied) else {
        return Ok(stats);
    };
    keep_sigs(&sig_dir(c), &applied.sigs, &applied.manifest);
    let mut json = serde_json::to_vec(&ManifestLine {
        full: Some(applied.manifest),
        generation: Some(applied.generation),
        lines: Some(applied.lines),
        ..Default::default()
    })?;
    json.push(b'\n');
    crate::model::write_whole(c, &json)?;
    Ok(stats)
}

/// Compute the plan for syncing `local_root` to the machine.
pub async fn prepare(
    remote: &dyn Remote,
    project: &str,
    local_root: &Path,
    excludes: &[String],
) -> Result<SyncPlan> {
    let (remote_m, lines) = remote_manifest(remote, project).await?;
    plan_against(remote_m, lines, local_root, excludes).await
}

/// The shell text that prints the machine's block signatures of `files` (relative to
/// `dir`; `sizes` are the machine's sizes, which choose the block size).
fn sums_script(dir: &str, files: &[String], sizes: &[u64]) -> String {
    let mut script = format!(
        "{PY_DEF}cd {} && py -c {} sums",
        sh_quote(dir),
        sh_quote(DELTA_PY)
    );
    for (f, size) in files.iter().zip(sizes) {
        script.push_str(&format!(" {} {}", delta::block_size(*size), sh_quote(f)));
    }
    script
}

/// Parse the helper's signatures (`<u32 index><i64 count>` then `count` entries, per file);
/// files it could not read, or whose signature does not fit their size, are left out.
fn parse_sums(bytes: &[u8], files: &[String], sizes: &[u64]) -> HashMap<String, delta::Signature> {
    let mut out = HashMap::new();
    let mut at = 0usize;
    while at + 12 <= bytes.len() {
        let i = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4")) as usize;
        let count = i64::from_le_bytes(bytes[at + 4..at + 12].try_into().expect("8"));
        at += 12;
        if count < 0 {
            continue;
        }
        let len = count as usize * delta::SIG_ENTRY;
        if i >= files.len() || at + len > bytes.len() {
            break;
        }
        let size = sizes[i];
        if let Some(sig) = delta::parse_entries(&bytes[at..at + len], delta::block_size(size), size)
        {
            out.insert(files[i].clone(), sig);
        }
        at += len;
    }
    out
}

/// A whole file read by two threads, one half each: most of reading a large cached file
/// is faulting in the fresh buffer's pages, which two cores do twice as fast.
fn read_in_halves(path: &Path) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let n = f.metadata()?.len() as usize;
    if n < 8 << 20 {
        return Ok(std::fs::read(path)?);
    }
    let mut v = vec![0u8; n];
    let (a, b) = v.split_at_mut(n / 2);
    let read = std::thread::scope(|sc| {
        let first = sc.spawn(|| f.read_exact_at(a, 0));
        let second = f.read_exact_at(b, (n / 2) as u64);
        first
            .join()
            .map_err(|_| std::io::Error::other("read panicked"))?
            .and(second)
    });
    // Changed size since: read it the plain way.
    let mut rest = [0u8; 1];
    if read.is_err() || f.read_at(&mut rest, n as u64)? != 0 {
        return Ok(std::fs::read(path)?);
    }
    Ok(v)
}

/// One file patched by blocks: what it will hash to, its literal bytes and mtime.
struct Patched {
    rel: String,
    fetched: Fetched,
    literal: u64,
    mtime_ns: i64,
    /// The signature of the new content (kept for the next change of this file).
    sig: delta::Signature,
}

/// Work out the changed blocks of `files` (relative to `dir` on the machine, which has older
/// versions of `sizes`): one round trip for the machine's signatures unless they came with
/// its manifest. Returns the patch stream and the files it covers; files it cannot do (no
/// python3 there, file gone, mostly changed) are left for a whole upload.
async fn prepare_deltas(
    remote: &dyn Remote,
    dir: &str,
    local_root: &Path,
    files: &[String],
    sizes: &[u64],
    prefetched: &HashMap<String, delta::Signature>,
) -> Result<(Vec<u8>, Vec<Patched>)> {
    if files.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut known: HashMap<String, delta::Signature> = prefetched.clone();
    let (missing, missing_sizes): (Vec<String>, Vec<u64>) = files
        .iter()
        .zip(sizes)
        .filter(|(f, _)| !known.contains_key(*f))
        .map(|(f, s)| (f.clone(), *s))
        .unzip();
    if !missing.is_empty() {
        let out = remote
            .exec(&sums_script(dir, &missing, &missing_sizes))
            .await?;
        if out.success() {
            known.extend(parse_sums(&out.stdout, &missing, &missing_sizes));
        } else {
            tracing::info!("block delta unavailable on the machine; sending whole files");
        }
    }
    let sigs: Vec<Option<delta::Signature>> = files.iter().map(|f| known.remove(f)).collect();
    let root = local_root.to_path_buf();
    let list = files.to_vec();
    tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, Vec<Patched>)> {
        use sha2::Digest;
        use std::os::unix::fs::PermissionsExt;
        let mut stream = Vec::new();
        let mut done = Vec::new();
        for (rel, sig) in list.iter().zip(sigs) {
            let Some(sig) = sig else { continue };
            let path = root.join(rel);
            let t0 = std::time::Instant::now();
            let data = read_in_halves(&path)?;
            let meta = std::fs::metadata(&path)?;
            tracing::debug!("delta: read {rel} in {:?}", t0.elapsed());
            // The two whole-file hashes beside the search (two cores).
            let (ops, sha, b3) = std::thread::scope(|sc| {
                let sha = sc.spawn(|| sha2::Sha256::digest(&data));
                let b3 = sc.spawn(|| {
                    (
                        blake3::hash(&data),
                        delta::signature(&data, delta::block_size(data.len() as u64)),
                    )
                });
                let ops = delta::diff(&data, &sig);
                (ops, sha.join(), b3.join())
            });
            let (sha, (b3, new_sig)) = (
                sha.map_err(|_| anyhow::anyhow!("hashing panicked"))?,
                b3.map_err(|_| anyhow::anyhow!("hashing panicked"))?,
            );
            tracing::debug!("delta: searched and hashed {rel} in {:?}", t0.elapsed());
            let Some(ops) = ops else {
                continue;
            };
            let literal = delta::literal_bytes(&ops);
            if literal * 2 >= data.len() {
                continue; // mostly changed: whole is as cheap and simpler
            }
            let wire: Vec<[i64; 2]> = ops
                .iter()
                .map(|op| match *op {
                    delta::Op::Copy { first, count } => [first as i64, count as i64],
                    delta::Op::Literal { len, .. } => [-1, len as i64],
                })
                .collect();
            let mtime_ns = mtime_ns(&meta);
            let header = serde_json::json!({
                "path": rel, "size": data.len(), "mode": meta.permissions().mode() & 0o7777,
                "mtime_ns": mtime_ns, "block": sig.block, "ops": wire,
                "sha256": crate::model::hex(&sha),
            });
            stream.extend_from_slice(header.to_string().as_bytes());
            stream.push(b'\n');
            for op in &ops {
                if let delta::Op::Literal { at, len } = *op {
                    stream.extend_from_slice(&data[at..at + len]);
                }
            }
            done.push(Patched {
                rel: rel.clone(),
                fetched: Fetched {
                    size: data.len() as u64,
                    blake3: b3.to_hex().to_string(),
                },
                literal: literal as u64,
                mtime_ns,
                sig: new_sig,
            });
        }
        Ok((stream, done))
    })
    .await?
}

/// Carry out a plan: copy, link, delete, then record the new manifest on the machine.
pub async fn apply(
    remote: &dyn Remote,
    project: &str,
    local_root: &Path,
    plan: &SyncPlan,
) -> Result<SyncStats> {
    Ok(apply_inner(remote, project, local_root, plan, false, None)
        .await?
        .0)
}

/// Record in `manifest` the size and hash of what was sent of `rels`.
fn record_sent(manifest: &mut Manifest, rels: &[String], sent: &[Fetched]) {
    for (rel, f) in rels.iter().zip(sent) {
        if let Some(e) = manifest.get_mut(rel) {
            e.hash = f.blake3.clone();
            e.size = f.size;
        }
    }
}

/// Send `rels` whole in one stream (creating `dir` too) and record in `manifest` the size
/// and hash of what was sent.
async fn send_whole(
    remote: &dyn Remote,
    local_root: &Path,
    rels: &[String],
    dir: &str,
    manifest: &mut Manifest,
) -> Result<()> {
    let sent = remote.put_files(local_root, rels, dir).await?;
    record_sent(manifest, rels, &sent);
    Ok(())
}

/// Shell commands run in the code directory, joined with `&&` and sent in batches of
/// up to 64 KiB (one round trip each; the directory is created first).
struct Batch<'a> {
    remote: &'a dyn Remote,
    dir: &'a str,
    script: String,
}

impl Batch<'_> {
    async fn push(&mut self, command: &str) -> Result<()> {
        self.script.push_str(command);
        self.script.push_str(" && ");
        if self.script.len() > 64 * 1024 {
            self.flush().await?;
        }
        Ok(())
    }

    /// The batch as one script (None when empty).
    fn script(&self) -> Option<String> {
        (!self.script.is_empty()).then(|| {
            format!(
                "mkdir -p {d} && cd {d} && {}true",
                self.script,
                d = sh_quote(self.dir)
            )
        })
    }

    async fn flush(&mut self) -> Result<()> {
        let Some(script) = self.script() else {
            return Ok(());
        };
        self.remote
            .exec(&script)
            .await?
            .check("updating links, deletions and times")?;
        self.script.clear();
        Ok(())
    }
}

/// The manifest line recording `manifest` on the machine: the whole of it, or the entries
/// the plan changed.
fn manifest_record(plan: &SyncPlan, manifest: &Manifest, rewrite: bool) -> Result<Vec<u8>> {
    let record = if rewrite {
        ManifestLine {
            full: Some(manifest.clone()),
            ..Default::default()
        }
    } else {
        let set = plan
            .upload
            .iter()
            .chain(plan.links.iter().map(|(p, _)| p))
            .chain(plan.touched.iter())
            .filter_map(|p| manifest.get(p).map(|e| (p.clone(), e.clone())))
            .collect();
        ManifestLine {
            set,
            del: plan.delete.clone(),
            ..Default::default()
        }
    };
    let mut json = serde_json::to_vec(&record)?;
    json.push(b'\n');
    Ok(json)
}

/// Returns what moved and, when the manifest on the machine was written, what it became.
///
/// Everything goes in one command when it can: the shell work (deletions first, so a path
/// that changed kind is free before the new one lands; directories left empty; mtimes of
/// unchanged content; links), the new and changed files as one tar stream, and after them
/// on the same stdin the block patches and the manifest line, which the machine records
/// with a new generation token only once everything before it succeeded.
async fn apply_inner(
    remote: &dyn Remote,
    project: &str,
    local_root: &Path,
    plan: &SyncPlan,
    remember: bool,
    conv: Option<Box<dyn Conversation + '_>>,
) -> Result<(SyncStats, Option<Applied>)> {
    if plan.is_noop() && plan.touched.is_empty() {
        // Nothing moved. A copy of the manifest kept here (`remember`) needs a generation
        // token on the machine, unless it confirmed ours.
        if !remember || plan.cache_current {
            if let Some(c) = conv {
                c.finish().await?;
            }
            return Ok((SyncStats::default(), None));
        }
        let generation = crate::model::new_id("g");
        let script = generation_cmd(remote.root(), project, &generation);
        let out = match conv {
            Some(mut c) => {
                c.write(&go(&script)).await?;
                c.finish().await?
            }
            None => remote.exec(&script).await?,
        };
        out.check("recording the manifest's generation")?;
        return Ok((
            SyncStats::default(),
            Some(Applied {
                manifest: plan.manifest.clone(),
                generation,
                lines: plan.manifest_lines,
                sigs: Vec::new(),
            }),
        ));
    }
    let dir = code_dir(remote.root(), project);
    let mut manifest = plan.manifest.clone();
    let mut stats = SyncStats::default();
    // Modified large files: only their changed blocks, when the machine can patch.
    let (patch, deltas) = prepare_deltas(
        remote,
        &dir,
        local_root,
        &plan.modified,
        &plan.modified_sizes,
        &plan.block_sums,
    )
    .await?;
    for d in &deltas {
        if let Some(e) = manifest.get_mut(&d.rel) {
            e.hash = d.fetched.blake3.clone();
            e.size = d.fetched.size;
            e.mtime_ns = d.mtime_ns;
        }
        stats.delta_files += 1;
        stats.delta_bytes += d.literal;
    }
    let whole: Vec<String> = plan
        .upload
        .iter()
        .filter(|p| !deltas.iter().any(|d| &d.rel == *p))
        .cloned()
        .collect();
    // The shell work, every path quoted; flushed on its own only when it grows past 64 KiB.
    let mut batch = Batch {
        remote,
        dir: &dir,
        script: String::new(),
    };
    let mut emptied: Vec<&str> = Vec::new();
    for path in &plan.delete {
        batch.push(&format!("rm -f -- {}", sh_quote(path))).await?;
        if let Some(parent) = Path::new(path).parent().and_then(|p| p.to_str())
            && !parent.is_empty()
        {
            emptied.push(parent);
        }
    }
    for path in &plan.in_the_way {
        batch
            .push(&format!(
                "{{ [ -L {p} ] || [ ! -d {p} ] || rm -rf -- {p}; }}",
                p = sh_quote(path)
            ))
            .await?;
    }
    emptied.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    emptied.dedup();
    for d in emptied {
        batch
            .push(&format!(
                "{{ rmdir -p --ignore-fail-on-non-empty -- {} 2>/dev/null || true; }}",
                sh_quote(d)
            ))
            .await?;
    }
    // Same content, new mtime: the machine's copy takes the local mtime.
    for path in &plan.touched {
        if let Some(e) = manifest.get(path)
            && e.link.is_none()
        {
            batch
                .push(&format!(
                    "touch -m -d @{}.{:09} -- {}",
                    e.mtime_ns.div_euclid(1_000_000_000),
                    e.mtime_ns.rem_euclid(1_000_000_000),
                    sh_quote(path)
                ))
                .await?;
        }
    }
    for (path, target) in &plan.links {
        let parent = Path::new(path)
            .parent()
            .and_then(|p| p.to_str())
            .unwrap_or("");
        if !parent.is_empty() {
            batch
                .push(&format!("mkdir -p -- {}", sh_quote(parent)))
                .await?;
        }
        batch
            .push(&format!(
                "rm -rf -- {p} && ln -s -- {t} {p}",
                p = sh_quote(path),
                t = sh_quote(target)
            ))
            .await?;
    }
    let before = batch.script().unwrap_or_default();
    // The manifest line (made once the whole files' hashes are known) and its generation.
    let path = manifest_path(remote.root(), project);
    let part = format!("{path}.part");
    let generation = crate::model::new_id("g");
    let gen_cmd = generation_cmd(remote.root(), project, &generation);
    let rewrite = plan.manifest_lines == 0 || plan.manifest_lines >= MANIFEST_MAX_LINES;
    let finish = if rewrite {
        format!("mv {p} {m}", p = sh_quote(&part), m = sh_quote(&path))
    } else {
        format!(
            "cat {p} >> {m} && rm -f {p}",
            p = sh_quote(&part),
            m = sh_quote(&path)
        )
    };
    let manifests = sh_quote(&format!("{}/manifests", remote.root()));
    // The manifest line on stdin, recorded with its generation.
    let record = format!(
        "mkdir -p {manifests} && cat > {} && {finish} && {gen_cmd}",
        sh_quote(&part)
    );
    let after = if deltas.is_empty() {
        record.clone()
    } else {
        format!(
            "mkdir -p {manifests} && {PY_DEF}cd {} && py -c {} patch {} && {finish} && {gen_cmd}",
            sh_quote(&dir),
            sh_quote(DELTA_PY),
            sh_quote(&part)
        )
    };
    let trailer: crate::remote::Trailer = {
        let (mut m, whole, plan) = (manifest.clone(), whole.clone(), plan.clone());
        let has_deltas = !deltas.is_empty();
        Box::new(move |sent: &[Fetched]| {
            record_sent(&mut m, &whole, sent);
            let mut input = Vec::new();
            if has_deltas {
                input.extend_from_slice(&patch);
                input.extend_from_slice(b"{\"end\": true}\n");
            }
            input.extend(manifest_record(&plan, &m, rewrite)?);
            Ok(input)
        })
    };
    let (sent, out) = match conv {
        Some(c) => {
            let sizes: Vec<u64> = whole
                .iter()
                .map(|r| manifest.get(r).map_or(0, |e| e.size))
                .collect();
            converse_between(
                c, remote, local_root, &whole, &sizes, &dir, &before, &after, trailer,
            )
            .await?
        }
        None => {
            remote
                .put_files_between(local_root, &whole, &dir, &before, &after, trailer)
                .await?
        }
    };
    record_sent(&mut manifest, &whole, &sent);
    stats.whole_files = whole.len();
    if !out.success() {
        // Patched files that did not match (changed on the machine since their sums were
        // read: exit 3 and their names), or no python3 to patch with (127): sent whole.
        let redo: Vec<String> = match out.status {
            3 => out
                .stdout_str()
                .lines()
                .filter_map(|l| serde_json::from_str::<String>(l).ok())
                .filter(|p| deltas.iter().any(|d| &d.rel == p))
                .collect(),
            127 if !deltas.is_empty() => deltas.iter().map(|d| d.rel.clone()).collect(),
            _ => Vec::new(),
        };
        if redo.is_empty() {
            out.check("recording the manifest")?;
        }
        tracing::warn!(
            "{} file(s) could not be patched on the machine; sending them whole",
            redo.len()
        );
        send_whole(remote, local_root, &redo, &dir, &mut manifest).await?;
        for r in &redo {
            if let Some(e) = manifest.get_mut(r)
                && let Ok(meta) = std::fs::symlink_metadata(local_root.join(r))
            {
                e.mtime_ns = mtime_ns(&meta);
            }
        }
        stats.delta_files -= redo.len();
        stats.whole_files += redo.len();
        let json = manifest_record(plan, &manifest, rewrite)?;
        remote
            .exec_with_stdin(&record, &json)
            .await?
            .check("recording the manifest")?;
    }
    let lines = if rewrite { 1 } else { plan.manifest_lines + 1 };
    let sigs = deltas
        .into_iter()
        .filter(|d| {
            manifest
                .get(&d.rel)
                .is_some_and(|e| e.hash == d.fetched.blake3)
        })
        .map(|d| (d.fetched.blake3, d.sig))
        .collect();
    Ok((
        stats,
        Some(Applied {
            manifest,
            generation,
            lines,
            sigs,
        }),
    ))
}

/// The line a conversation prints once the work before the files is done.
const BEFORE_DONE: &str = "--trainctl-before-done--";

/// Bytes per extra stream of a large upload.
const STREAM_BYTES: u64 = 64 << 20;
/// Streams at most for one upload.
const MAX_STREAMS: usize = 4;

/// Split `rels` (with their `sizes`) into streams of about equal bytes: one per
/// [`STREAM_BYTES`], up to [`MAX_STREAMS`]. Each stream lists indexes into `rels`.
fn streams(sizes: &[u64]) -> Vec<Vec<usize>> {
    let total: u64 = sizes.iter().sum();
    let n = ((total / STREAM_BYTES) as usize).clamp(1, MAX_STREAMS);
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|i| std::cmp::Reverse(sizes[*i]));
    let mut out = vec![Vec::new(); n];
    let mut load = vec![0u64; n];
    for i in order {
        let k = (0..n).min_by_key(|k| load[*k]).unwrap_or(0);
        load[k] += sizes[i];
        out[k].push(i);
    }
    for s in &mut out {
        s.sort_unstable();
    }
    out.retain(|s| !s.is_empty());
    if out.is_empty() {
        out.push(Vec::new());
    }
    out
}

/// [`Remote::put_files_between`] on an open conversation: its script after `go`, then the
/// archive and the trailer. A large upload also travels on up to three more commands
/// at once (each SSH channel has its own flow-control window: on a far machine one
/// stream is limited to a window per round trip), and the trailer, which records the
/// manifest, goes only once they all succeeded.
#[allow(clippy::too_many_arguments)]
async fn converse_between(
    mut conv: Box<dyn Conversation + '_>,
    remote: &dyn Remote,
    local_root: &Path,
    rels: &[String],
    sizes: &[u64],
    dir: &str,
    before: &str,
    after: &str,
    trailer: crate::remote::Trailer,
) -> Result<(Vec<Fetched>, crate::remote::ExecOutput)> {
    let parts = streams(sizes);
    let (main, sides) = parts.split_first().expect("one stream at least");
    let pick = |idx: &[usize]| -> Vec<String> { idx.iter().map(|i| rels[*i].clone()).collect() };
    let main_rels = pick(main);
    // With other streams: they start once `before` ran (its deletions must not race their
    // files) and every folder they write into exists (two GNU tars creating the same
    // missing folder at once can fail with "Cannot open: No such file or directory").
    let mut before = before.to_string();
    if !sides.is_empty() {
        let parents: BTreeSet<&str> = rels
            .iter()
            .filter_map(|r| Path::new(r).parent().and_then(|p| p.to_str()))
            .filter(|p| !p.is_empty())
            .collect();
        let mut prep = format!("mkdir -p {d} && cd {d}", d = sh_quote(dir));
        if !parents.is_empty() {
            prep.push_str(" && mkdir -p --");
            for p in parents {
                prep.push(' ');
                prep.push_str(&sh_quote(p));
            }
        }
        prep.push_str(&format!(" && printf '%s\\n' {BEFORE_DONE}"));
        before = if before.is_empty() {
            prep
        } else {
            format!("{before} && {prep}")
        };
    }
    let script = crate::remote::pack::between_script(&before, !main_rels.is_empty(), dir, after);
    conv.write(&go(&script)).await?;
    if !sides.is_empty() {
        conv.read_until(format!("{BEFORE_DONE}\n").as_bytes())
            .await?;
    }
    // The trailer waits (on the packer's thread) for the other streams' results, then
    // sees every file's hash in `rels` order.
    let (side_tx, side_rx) = std::sync::mpsc::channel::<Result<Vec<Vec<Fetched>>>>();
    let order: Vec<Vec<usize>> = parts.clone();
    let n = rels.len();
    let all_sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = all_sent.clone();
    let trailer: crate::remote::Trailer = Box::new(move |main_sent: &[Fetched]| {
        let side_sent = if order.len() > 1 {
            side_rx
                .recv()
                .map_err(|_| anyhow::anyhow!("the other streams stopped"))??
        } else {
            Vec::new()
        };
        let mut all: Vec<Option<Fetched>> = vec![None; n];
        for (idx, sent) in order
            .iter()
            .zip(std::iter::once(main_sent.to_vec()).chain(side_sent))
        {
            for (i, f) in idx.iter().zip(sent) {
                all[*i] = Some(f);
            }
        }
        let all: Vec<Fetched> = all
            .into_iter()
            .collect::<Option<_>>()
            .ok_or_else(|| anyhow::anyhow!("a stream sent fewer files than asked"))?;
        *keep.lock().unwrap_or_else(|p| p.into_inner()) = all.clone();
        trailer(&all)
    });
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let root = local_root.to_path_buf();
    let packer = tokio::task::spawn_blocking(move || {
        crate::remote::pack::pack(&root, &main_rels, &Default::default(), tx, Some(trailer))
    });
    let write = async {
        // Owned here: a failed write drops it, which stops the packer.
        let mut rx = rx;
        while let Some(chunk) = rx.recv().await {
            conv.write(&chunk).await?;
        }
        anyhow::Ok(())
    };
    let others = async {
        let side_rels: Vec<Vec<String>> = sides.iter().map(|idx| pick(idx)).collect();
        let sent = futures_util::future::try_join_all(
            side_rels
                .iter()
                .map(|r| remote.put_files(local_root, r, dir)),
        )
        .await;
        // The trailer is told either way (an error stops the main stream too).
        let failed = sent.as_ref().err().map(|e| format!("{e:#}"));
        let _ = side_tx.send(sent.map_err(|e| anyhow::anyhow!("{e:#}")));
        match failed {
            Some(e) => Err(anyhow::anyhow!(e)),
            None => Ok(()),
        }
    };
    let (wrote, others) = tokio::join!(write, others);
    let packed = packer.await?;
    let (_, tail) = match (others, wrote, packed) {
        (Ok(()), Ok(()), Ok(p)) => p,
        (o, w, p) => {
            // The machine's side reads the end of its input and records nothing.
            let _ = conv.finish().await;
            return Err(o
                .err()
                .or(w.err())
                .or(p.err())
                .unwrap_or_else(|| anyhow::anyhow!("the upload stopped")));
        }
    };
    let sent = std::mem::take(&mut *all_sent.lock().unwrap_or_else(|p| p.into_inner()));
    let out = conv.finish().await?;
    match crate::remote::pack::judge(out)? {
        Some(out) => Ok((sent, out)),
        None => Ok((sent, remote.exec_with_stdin(after, &tail).await?)),
    }
}

/// What the machine's manifest became: its content, generation token and log lines.
struct Applied {
    manifest: Manifest,
    generation: String,
    lines: usize,
    /// Signatures of the patched files' new content, by content hash.
    sigs: Vec<(String, delta::Signature)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manifest_records_the_hash_of_what_was_sent() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("a")).unwrap();
        std::fs::write(src.join("a/x.py"), "x = 1\n").unwrap();
        std::fs::write(src.join("y.txt"), "why").unwrap();
        let home = d.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let r = crate::remote::local::LocalRemote::new(&home, "t-manifest");
        let p = prepare(&r, "p", &src, &[]).await.unwrap();
        // New files are not hashed by the scan: the upload hashes them.
        assert!(p.manifest.values().all(|e| e.hash.is_empty()));
        apply(&r, "p", &src, &p).await.unwrap();
        let (m, lines) = remote_manifest(&r, "p").await.unwrap();
        assert_eq!(lines, 1);
        assert_eq!(
            m["a/x.py"].hash,
            blake3::hash(b"x = 1\n").to_hex().to_string()
        );
        assert_eq!(m["y.txt"].hash, blake3::hash(b"why").to_hex().to_string());
        // Touching a file without changing it moves nothing but records the new mtime.
        let f = std::fs::File::options()
            .write(true)
            .open(src.join("y.txt"))
            .unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        let p2 = prepare(&r, "p", &src, &[]).await.unwrap();
        assert!(p2.is_noop());
        assert_eq!(p2.touched, vec!["y.txt"]);
        apply(&r, "p", &src, &p2).await.unwrap();
        let (m2, lines) = remote_manifest(&r, "p").await.unwrap();
        assert_eq!(lines, 2);
        assert_eq!(m2["y.txt"].hash, m["y.txt"].hash);
        assert_ne!(m2["y.txt"].mtime_ns, m["y.txt"].mtime_ns);
    }

    #[tokio::test]
    async fn changed_large_files_travel_as_blocks_and_come_out_identical() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let mut big: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(src.join("big.bin"), &big).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(src.join("big.bin"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        let home = d.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let r = crate::remote::local::LocalRemote::new(&home, "t-delta");
        let p = prepare(&r, "p", &src, &[]).await.unwrap();
        assert_eq!(apply(&r, "p", &src, &p).await.unwrap().whole_files, 1);
        // One byte in the middle changes, and the file grows and then shrinks.
        big[100_000] ^= 0xff;
        big.extend_from_slice(b"tail");
        std::fs::write(src.join("big.bin"), &big).unwrap();
        let p = prepare(&r, "p", &src, &[]).await.unwrap();
        assert_eq!(p.modified, vec!["big.bin"]);
        let st = apply(&r, "p", &src, &p).await.unwrap();
        assert_eq!((st.delta_files, st.whole_files), (1, 0), "{st:?}");
        assert!(
            st.delta_bytes <= 2 * delta::block_size(big.len() as u64) as u64,
            "{st:?}"
        );
        let remote_file = home.join(".trainctl/code/p/big.bin");
        assert_eq!(std::fs::read(&remote_file).unwrap(), big);
        big.truncate(150_000);
        big[10] ^= 1;
        std::fs::write(src.join("big.bin"), &big).unwrap();
        let p = prepare(&r, "p", &src, &[]).await.unwrap();
        apply(&r, "p", &src, &p).await.unwrap();
        assert_eq!(std::fs::read(&remote_file).unwrap(), big);
        assert_eq!(
            std::fs::metadata(&remote_file)
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o640
        );
        // The manifest agrees with the content: nothing moves next time.
        let (m, _) = remote_manifest(&r, "p").await.unwrap();
        assert_eq!(m["big.bin"].hash, blake3::hash(&big).to_hex().to_string());
        assert!(prepare(&r, "p", &src, &[]).await.unwrap().is_noop());
    }

    #[test]
    fn large_uploads_are_split_into_streams_of_about_equal_bytes() {
        assert_eq!(streams(&[]), vec![Vec::<usize>::new()]);
        assert_eq!(streams(&[10, 20]), vec![vec![0, 1]]);
        let mb = 1 << 20;
        let s = streams(&[100 * mb, 10 * mb, 90 * mb, 5 * mb]);
        assert_eq!(s.len(), 3);
        let load = |idx: &Vec<usize>| idx.iter().map(|i| [100, 10, 90, 5][*i]).sum::<u64>();
        assert!(s.iter().all(|p| load(p) <= 100), "{s:?}");
        let mut all: Vec<usize> = s.concat();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3]);
        assert!(streams(&vec![mb; 1000]).len() == MAX_STREAMS);
    }

    #[test]
    fn manifest_log_replays_patches_and_survives_a_torn_tail() {
        let e = |h: &str| Entry {
            size: 1,
            mtime_ns: 1,
            mode: 0o644,
            hash: h.into(),
            link: None,
        };
        let full = ManifestLine {
            full: Some(Manifest::from([("a".into(), e("1")), ("b".into(), e("2"))])),
            ..Default::default()
        };
        let patch = ManifestLine {
            set: BTreeMap::from([("c".into(), e("3")), ("a".into(), e("9"))]),
            del: vec!["b".into()],
            ..Default::default()
        };
        let mut log = serde_json::to_vec(&full).unwrap();
        log.push(b'\n');
        log.extend(serde_json::to_vec(&patch).unwrap());
        log.push(b'\n');
        let (m, n) = replay_manifest(&log);
        assert_eq!(n, 2);
        assert_eq!(m.keys().cloned().collect::<Vec<_>>(), vec!["a", "c"]);
        assert_eq!(m["a"].hash, "9");
        // A crash mid-append leaves half a line: it is ignored.
        log.extend_from_slice(b"{\"set\": {\"d\"");
        assert_eq!(replay_manifest(&log).0, m);
        // Garbage in the middle: unknown, sync everything.
        assert!(replay_manifest(b"nonsense\n{}\n").0.is_empty());
    }

    #[test]
    fn plan_moves_only_changes_and_propagates_deletions() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::write(root.join("a.py"), "print(1)").unwrap();
        std::fs::write(root.join("b.py"), "print(2)").unwrap();
        std::fs::write(root.join(".gitignore"), "data/\n*.tmp\n").unwrap();
        std::fs::create_dir(root.join("data")).unwrap();
        std::fs::write(root.join("data/big.bin"), "x").unwrap();
        std::fs::write(root.join("x.tmp"), "x").unwrap();
        std::fs::write(root.join("secret.key"), "x").unwrap();
        let ex = vec!["*.key".to_string()];
        let m1 = scan(root, &ex, &Manifest::new()).unwrap();
        assert_eq!(
            m1.keys().cloned().collect::<Vec<_>>(),
            vec![".gitignore", "a.py", "b.py"]
        );
        let p = plan(m1.clone(), &Manifest::new());
        assert_eq!(p.upload.len(), 3);
        // Unchanged: nothing moves.
        let m2 = scan(root, &ex, &m1).unwrap();
        assert!(plan(m2, &m1).is_noop());
        // Change one, delete one.
        std::fs::write(root.join("a.py"), "print(10)").unwrap();
        std::fs::remove_file(root.join("b.py")).unwrap();
        let p = plan(scan(root, &ex, &m1).unwrap(), &m1);
        assert_eq!(p.upload, vec!["a.py"]);
        assert_eq!(p.delete, vec!["b.py"]);
        let mut ex_list = excluded(root, &ex).unwrap();
        ex_list.sort_by(|a, b| a.path.cmp(&b.path));
        let shown: Vec<_> = ex_list
            .iter()
            .map(|e| (e.path.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(
            shown,
            vec![
                ("data/", ".gitignore"),
                ("secret.key", "sync.exclude"),
                ("x.tmp", ".gitignore")
            ]
        );
    }
}
