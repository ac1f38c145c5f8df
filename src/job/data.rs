//! Datasets placed on a machine once (`[[data]]` in `trainctl.toml`), apart from the code.
//!
//! On the machine (`ROOT/data/`): `<content hash>/` holds a complete dataset (`<hash>.done`
//! says so), `q-<listing hash>` names the content hash of a listing already placed (so a
//! second placement is one round trip, without reading a byte locally), and
//! `q-<listing hash>.part/` is a transfer under way (a transfer cut off resumes there,
//! sending only the files not yet there whole). The job finds each dataset at
//! `ROOT/datasets/<project>/<dst>` (`TRAINCTL_DATA_DIR`), a link to its content.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One file of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct DataFile {
    /// Relative to the dataset's root (for a single-file dataset: its name).
    pub rel: String,
    pub size: u64,
    pub mtime_s: i64,
    pub mtime_ns: u32,
    /// The executable bit (datasets rarely have one; kept so the content is the same).
    pub exec: bool,
}

/// A dataset as found on this computer.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The folder the files are relative to (a single file's parent folder).
    pub base: PathBuf,
    /// A single file rather than a folder.
    pub single: bool,
    pub files: Vec<DataFile>,
    pub bytes: u64,
}

/// List `src` (a folder: every file under it, in path order, symlinks followed; a file:
/// itself). Files whose name is not UTF-8 are refused (the machine-side scripts name
/// them).
pub fn scan(src: &Path) -> Result<Listing> {
    let meta = std::fs::metadata(src).with_context(|| format!("reading {}", src.display()))?;
    let (base, single) = if meta.is_dir() {
        (src.to_path_buf(), false)
    } else {
        (src.parent().unwrap_or(Path::new(".")).to_path_buf(), true)
    };
    let mut files = Vec::new();
    if single {
        let name = src
            .file_name()
            .and_then(|n| n.to_str())
            .context("a data file's name must be UTF-8")?;
        files.push(file_entry(name.to_string(), &meta));
    } else {
        walk(src, "", &mut files)?;
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    let bytes = files.iter().map(|f| f.size).sum();
    Ok(Listing {
        base,
        single,
        files,
        bytes,
    })
}

fn file_entry(rel: String, meta: &std::fs::Metadata) -> DataFile {
    use std::os::unix::fs::MetadataExt;
    DataFile {
        rel,
        size: meta.len(),
        mtime_s: meta.mtime(),
        mtime_ns: meta.mtime_nsec() as u32,
        exec: meta.mode() & 0o111 != 0,
    }
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<DataFile>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            bail!("{}: a data file's name must be UTF-8", e.path().display());
        };
        if name.contains('\n') {
            bail!(
                "{}: a data file's name may not hold a newline",
                e.path().display()
            );
        }
        let rel = format!("{prefix}{name}");
        // Symlinks are followed: the dataset is what they point at.
        let meta = match std::fs::metadata(e.path()) {
            Ok(m) => m,
            Err(_) => continue, // a dangling link holds no data
        };
        if meta.is_dir() {
            walk(&e.path(), &format!("{rel}/"), out)?;
        } else if meta.is_file() {
            out.push(file_entry(rel, &meta));
        }
    }
    Ok(())
}

/// The listing's hash: names, sizes, mtimes and modes, no content read. The same listing
/// placed again is found by it in one round trip.
pub fn listing_hash(l: &Listing) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"trainctl-data-listing-1\0");
    h.update(&[l.single as u8]);
    for f in &l.files {
        h.update(f.rel.as_bytes());
        h.update(b"\0");
        h.update(&f.size.to_le_bytes());
        h.update(&f.mtime_s.to_le_bytes());
        h.update(&f.mtime_ns.to_le_bytes());
        h.update(&[f.exec as u8]);
    }
    h.finalize().to_hex()[..32].to_string()
}

/// The content's hash from each file's BLAKE3 (in listing order): the same data anywhere,
/// under any name of its folder, is one dataset on the machine.
pub fn content_hash(l: &Listing, hashes: &[String]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"trainctl-data-content-1\0");
    h.update(&[l.single as u8]);
    for (f, b3) in l.files.iter().zip(hashes) {
        h.update(f.rel.as_bytes());
        h.update(b"\0");
        h.update(&f.size.to_le_bytes());
        h.update(&[f.exec as u8]);
        h.update(b3.as_bytes());
    }
    h.finalize().to_hex()[..32].to_string()
}

/// BLAKE3 of files already read, by absolute path, size and mtime: a dataset read once is
/// not read again to be recognised (`<data>/datasets/hashes.json`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HashCache {
    #[serde(skip)]
    path: PathBuf,
    files: HashMap<String, (u64, i64, u32, String)>,
}

impl HashCache {
    pub fn load(path: &Path) -> HashCache {
        let mut c: HashCache = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        c.path = path.to_path_buf();
        c
    }

    fn key(l: &Listing, f: &DataFile) -> String {
        l.base.join(&f.rel).to_string_lossy().into_owned()
    }

    pub fn get(&self, l: &Listing, f: &DataFile) -> Option<&str> {
        match self.files.get(&Self::key(l, f)) {
            Some((size, s, ns, b3)) if *size == f.size && *s == f.mtime_s && *ns == f.mtime_ns => {
                Some(b3)
            }
            _ => None,
        }
    }

    pub fn put(&mut self, l: &Listing, f: &DataFile, b3: String) {
        self.files
            .insert(Self::key(l, f), (f.size, f.mtime_s, f.mtime_ns, b3));
    }

    /// Every file's BLAKE3, reading those not known (and remembering them).
    pub fn hashes(&mut self, l: &Listing) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(l.files.len());
        for f in &l.files {
            let b3 = match self.get(l, f) {
                Some(b) => b.to_string(),
                None => {
                    let p = l.base.join(&f.rel);
                    let mut h = blake3::Hasher::new();
                    std::fs::File::open(&p)
                        .and_then(|mut file| std::io::copy(&mut file, &mut h))
                        .with_context(|| format!("reading {}", p.display()))?;
                    let b = h.finalize().to_hex().to_string();
                    self.put(l, f, b.clone());
                    b
                }
            };
            out.push(b3);
        }
        Ok(out)
    }

    /// Whether every file's hash is known without reading.
    pub fn knows_all(&self, l: &Listing) -> bool {
        l.files.iter().all(|f| self.get(l, f).is_some())
    }

    pub fn save(&self) -> Result<()> {
        crate::model::write_whole(&self.path, &serde_json::to_vec(self)?)?;
        Ok(())
    }
}

/// Keep the record of a content placed by this computer
/// (`<data>/datasets/contents/<hash>.json`: name, size, and its BLAKE3 — or, for an object
/// store's, its ETag): a transfer that starts from hard links of that content keeps the
/// files whose hash did not change.
pub fn save_records(dir: &Path, content: &str, files: &[(&str, u64, &str)]) -> Result<()> {
    crate::model::write_whole(
        &dir.join(format!("{content}.json")),
        &serde_json::to_vec(&files)?,
    )?;
    Ok(())
}

/// The names (NUL-separated, for the finishing command's stdin) of the files in a
/// transfer folder that the dataset does not have.
pub fn extras<'a>(
    partial: &[(String, u64, i64)],
    wanted: impl Iterator<Item = &'a str>,
) -> Vec<u8> {
    let wanted: std::collections::HashSet<&str> = wanted.collect();
    let mut out = Vec::new();
    for (rel, _, _) in partial {
        if !wanted.contains(rel.as_str()) {
            out.extend_from_slice(rel.as_bytes());
            out.push(0);
        }
    }
    out
}

/// [`save_records`]' record of `content`: name to (size, BLAKE3); none when unknown here.
pub fn load_content(dir: &Path, content: &str) -> HashMap<String, (u64, String)> {
    let Ok(b) = std::fs::read(dir.join(format!("{content}.json"))) else {
        return HashMap::new();
    };
    serde_json::from_slice::<Vec<(String, u64, String)>>(&b)
        .unwrap_or_default()
        .into_iter()
        .map(|(r, s, h)| (r, (s, h)))
        .collect()
}

/// What the machine said in the first round trip.
#[derive(Debug, Default, PartialEq)]
pub struct MachineSide {
    /// The listing was placed already: its content hash (and the link was made).
    pub placed: Option<String>,
    /// Content hashes of every complete dataset on the machine.
    pub done: Vec<String>,
    /// Files of an earlier, cut-off transfer of this listing: (rel, size, mtime seconds).
    pub partial: Vec<(String, u64, i64)>,
    /// The content the transfer folder started from (hard links of it), if it did.
    pub from: Option<String>,
}

/// The script that links the dataset at `target` (a shell word: quoted, or an expansion
/// in double quotes) at `mount`, replacing an earlier link, refusing a real file or
/// folder there.
fn link_script(target: &str, mount: &str) -> String {
    use crate::remote::sh_quote;
    format!(
        "m={m}; mkdir -p \"$(dirname \"$m\")\" || exit 1; \
         if [ -e \"$m\" ] && [ ! -L \"$m\" ]; then echo \"$m exists and is not trainctl's link\" >&2; exit 3; fi; \
         ln -sfn {target} \"$m\"",
        m = sh_quote(mount),
    )
}

/// `/name` for a single-file dataset (its link names the file), else nothing.
fn inside(single: Option<&str>) -> String {
    single.map_or(String::new(), |n| format!("/{n}"))
}

/// The first round trip: is the listing placed (then link it)? Which datasets are done?
/// What did a cut-off transfer of it leave?
pub fn probe_script(root: &str, listing: &str, single: Option<&str>, mount: &str) -> String {
    use crate::remote::sh_quote;
    let d = format!("{root}/data");
    format!(
        "d={d}; mkdir -p \"$d\" || exit 1; cd \"$d\" || exit 1; \
         if [ -f q-{q} ]; then c=$(cat q-{q}); \
           if [ -n \"$c\" ] && [ -f \"$c.done\" ]; then {link_fn} && echo \"placed=$c\" && exit 0; fi; fi; \
         for f in *.done; do [ -f \"$f\" ] && echo \"done=${{f%.done}}\"; done; \
         {seed}\
         if [ -d q-{q}.part ]; then cd q-{q}.part && find . -type f -printf 'part=%s %T@ %P\\n'; fi; true",
        d = sh_quote(&d),
        q = listing,
        // A new content of a folder placed here before starts as hard links of the
        // previous one (the link at the mount names it): only what changed is sent (tar
        // unlinks a file before writing it, so the previous content stays whole).
        seed = match single {
            Some(_) => String::new(),
            None => format!(
                "if [ ! -d q-{listing}.part ] && p=$(readlink {m} 2>/dev/null) && [ \"${{p%/*}}\" = \"$d\" ] && [ -f \"$p.done\" ]; then \
                   cp -al \"$p\" q-{listing}.seed 2>/dev/null && printf '%s\\n' \"${{p##*/}}\" > q-{listing}.from && \
                   mv q-{listing}.seed q-{listing}.part || rm -rf q-{listing}.seed; fi; \
                 [ -d q-{listing}.part ] && [ -f q-{listing}.from ] && echo \"from=$(cat q-{listing}.from)\"; ",
                m = sh_quote(mount),
            ),
        },
        link_fn = link_script(
            &match single {
                Some(n) => format!("\"$d/$c\"{}", sh_quote(&format!("/{n}"))),
                None => "\"$d/$c\"".to_string(),
            },
            mount
        ),
    )
}

/// Read [`probe_script`]'s answer.
pub fn parse_probe(text: &str) -> MachineSide {
    let mut m = MachineSide::default();
    for line in text.lines() {
        if let Some(c) = line.strip_prefix("placed=") {
            m.placed = Some(c.trim().to_string());
        } else if let Some(c) = line.strip_prefix("from=") {
            m.from = Some(c.trim().to_string());
        } else if let Some(c) = line.strip_prefix("done=") {
            m.done.push(c.trim().to_string());
        } else if let Some(p) = line.strip_prefix("part=") {
            let mut it = p.splitn(3, ' ');
            if let (Some(size), Some(mtime), Some(rel)) = (it.next(), it.next(), it.next())
                && let (Ok(size), Some(Ok(mtime))) = (
                    size.parse::<u64>(),
                    mtime.split('.').next().map(str::parse::<i64>),
                )
            {
                m.partial.push((rel.to_string(), size, mtime));
            }
        }
    }
    m
}

/// The last step: the transfer becomes dataset `content` (or is dropped when the machine
/// had that content already), the listing is remembered, the link made. Its stdin names
/// (NUL-separated) the files of the transfer folder the listing does not have (left by
/// the previous content it started from), which go.
pub fn finish_script(
    root: &str,
    listing: &str,
    content: &str,
    single: Option<&str>,
    mount: &str,
) -> String {
    use crate::remote::sh_quote;
    let d = format!("{root}/data");
    format!(
        "cd {d} || exit 1; \
         if [ -f {c}.done ]; then rm -rf q-{q}.part; \
         else rm -rf {c} && mkdir -p q-{q}.part && \
           (cd q-{q}.part && xargs -0 -r rm -f --) && \
           find q-{q}.part -name {partial} -type d -prune -exec rm -rf {{}} + && \
           mv q-{q}.part {c} && : > {c}.done || exit 1; fi; \
         rm -f q-{q}.from; printf '%s\\n' {c} > q-{q}.tmp && mv q-{q}.tmp q-{q} && {link}",
        d = sh_quote(&d),
        c = content,
        q = listing,
        partial = crate::remote::PARTIAL_DIR,
        link = link_script(
            &crate::remote::sh_quote(&format!("{root}/data/{content}{}", inside(single))),
            mount
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_hash_by_names_sizes_and_times_contents_by_bytes() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::create_dir_all(a.join("sub")).unwrap();
        std::fs::write(a.join("x.bin"), b"xx").unwrap();
        std::fs::write(a.join("sub/y.txt"), b"y").unwrap();
        let l = scan(&a).unwrap();
        let rels: Vec<&str> = l.files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(rels, vec!["sub/y.txt", "x.bin"]);
        assert_eq!(l.bytes, 3);
        let mut cache = HashCache::load(&d.path().join("h.json"));
        assert!(!cache.knows_all(&l));
        let hashes = cache.hashes(&l).unwrap();
        assert!(cache.knows_all(&l));
        cache.save().unwrap();
        assert!(HashCache::load(&d.path().join("h.json")).knows_all(&l));
        // A copy elsewhere: another listing hash (other mtimes maybe), the same content.
        let b = d.path().join("b");
        std::fs::create_dir_all(b.join("sub")).unwrap();
        std::fs::write(b.join("x.bin"), b"xx").unwrap();
        std::fs::write(b.join("sub/y.txt"), b"y").unwrap();
        let lb = scan(&b).unwrap();
        let hb = cache.hashes(&lb).unwrap();
        assert_eq!(content_hash(&l, &hashes), content_hash(&lb, &hb));
        std::fs::write(b.join("x.bin"), b"xy").unwrap();
        let lb = scan(&b).unwrap();
        let hb = cache.hashes(&lb).unwrap();
        assert_ne!(content_hash(&l, &hashes), content_hash(&lb, &hb));
        // A single file.
        let one = scan(&a.join("x.bin")).unwrap();
        assert!(one.single);
        assert_eq!(one.files[0].rel, "x.bin");
    }

    #[test]
    fn the_probe_answer_is_read() {
        let m = parse_probe("done=abc\ndone=def\npart=12 1700000000.5 sub/a b.txt\npart=x\n");
        assert_eq!(m.done, vec!["abc", "def"]);
        assert_eq!(
            m.partial,
            vec![("sub/a b.txt".to_string(), 12, 1_700_000_000)]
        );
        assert_eq!(parse_probe("placed=abc\n").placed.as_deref(), Some("abc"));
    }
}
