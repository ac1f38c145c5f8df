//! Pull a job's artifacts: glob rules with fallbacks, matched against the files in the
//! job's workdir on the machine; each file is copied to a temp name, checked (size and
//! BLAKE3) and renamed. A remote name can never write outside the destination folder.

use crate::config::ArtifactRule;
use crate::remote::{Remote, sh_quote};
use anyhow::{Context, Result};
use serde::Serialize;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Pulled {
    /// Path relative to the workdir.
    pub path: String,
    pub size: u64,
    pub blake3: String,
    pub local_path: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct PullReport {
    pub pulled: Vec<Pulled>,
    /// Rules none of whose patterns matched anything (shown as warnings).
    pub unmatched: Vec<String>,
    /// Files that matched but could not be pulled, each with why; the others were pulled.
    pub failed: Vec<Failed>,
}

impl PullReport {
    /// `a.bin: why; b.bin: why`: every file that failed, for one line of text.
    pub fn failures_text(&self) -> String {
        self.failed
            .iter()
            .map(|f| format!("{}: {}", f.path, f.error))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The folder the files went to (that of the first one).
    pub fn dir(&self) -> String {
        self.pulled
            .first()
            .and_then(|p| Path::new(&p.local_path).parent())
            .map_or_else(String::new, |d| d.display().to_string())
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Failed {
    /// Path relative to the workdir, made printable (a name that is not UTF-8 shows
    /// `\xNN` for its odd bytes).
    pub path: String,
    pub error: String,
}

/// A file on the machine: its name as the bytes it is, and as text for matching and
/// showing.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteName {
    pub bytes: Vec<u8>,
    pub text: String,
}

impl RemoteName {
    fn new(bytes: &[u8]) -> RemoteName {
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t.to_string(),
            Err(_) => bytes
                .utf8_chunks()
                .map(|c| {
                    let mut s = c.valid().to_string();
                    for b in c.invalid() {
                        s.push_str(&format!("\\x{b:02x}"));
                    }
                    s
                })
                .collect(),
        };
        RemoteName {
            bytes: bytes.to_vec(),
            text,
        }
    }

    fn is_utf8(&self) -> bool {
        std::str::from_utf8(&self.bytes).is_ok()
    }
}

/// Every regular file under `workdir` on the machine, relative to it.
pub async fn list_files(remote: &dyn Remote, workdir: &str) -> Result<Vec<RemoteName>> {
    let out = remote
        .exec(&format!(
            "cd {} && find . -type f -print0",
            sh_quote(workdir)
        ))
        .await?
        .check("listing the workdir")?;
    let mut files: Vec<RemoteName> = out
        .stdout
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| RemoteName::new(s.strip_prefix(b"./").unwrap_or(s)))
        .collect();
    files.sort_by(|a, b| a.bytes.cmp(&b.bytes));
    Ok(files)
}

/// Every regular file under `workdir` on the machine with its size in bytes.
pub async fn list_sized(remote: &dyn Remote, workdir: &str) -> Result<Vec<(RemoteName, u64)>> {
    let out = remote
        .exec(&format!(
            "cd {} && find . -type f -printf '%s %P\\0'",
            sh_quote(workdir)
        ))
        .await?
        .check("listing the workdir")?;
    let mut files: Vec<(RemoteName, u64)> = out
        .stdout
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let sp = s.iter().position(|&b| b == b' ')?;
            let size = std::str::from_utf8(&s[..sp]).ok()?.parse().ok()?;
            Some((RemoteName::new(&s[sp + 1..]), size))
        })
        .collect();
    files.sort_by(|a, b| a.0.bytes.cmp(&b.0.bytes));
    Ok(files)
}

/// Which files the rules select: per rule, the matches of its first pattern that matches.
pub fn select(
    rules: &[ArtifactRule],
    files: &[RemoteName],
) -> Result<(Vec<RemoteName>, Vec<String>)> {
    let mut chosen: Vec<RemoteName> = Vec::new();
    let mut unmatched = Vec::new();
    for rule in rules {
        let mut found = false;
        for pat in rule.patterns() {
            let m = globset::GlobBuilder::new(pat)
                .literal_separator(true)
                .build()
                .with_context(|| format!("bad artifact pattern `{pat}`"))?
                .compile_matcher();
            let hits: Vec<&RemoteName> = files
                .iter()
                .filter(|f| {
                    let os = std::ffi::OsStr::from_bytes(&f.bytes);
                    m.is_match(std::path::Path::new(os))
                })
                .collect();
            if !hits.is_empty() {
                for h in hits {
                    if !chosen.contains(h) {
                        chosen.push(h.clone());
                    }
                }
                found = true;
                break;
            }
        }
        if !found {
            unmatched.push(rule.patterns().join(" | "));
        }
    }
    Ok((chosen, unmatched))
}

/// Pull the files the rules select from `workdir` on the machine into `dest`: every one
/// that can be, each failure reported with its name (the others are still pulled).
pub async fn pull(
    remote: &dyn Remote,
    workdir: &str,
    rules: &[ArtifactRule],
    dest: &Path,
) -> Result<PullReport> {
    let files = list_files(remote, workdir).await?;
    let (chosen, unmatched) = select(rules, &files)?;
    let mut report = PullReport {
        unmatched,
        ..Default::default()
    };
    for name in chosen {
        match pull_one(remote, workdir, &name, dest).await {
            Ok(p) => report.pulled.push(p),
            Err(e) => report.failed.push(Failed {
                path: crate::sanitize::sanitize_line(name.text.as_bytes()),
                error: format!("{e:#}"),
            }),
        }
    }
    Ok(report)
}

async fn pull_one(
    remote: &dyn Remote,
    workdir: &str,
    name: &RemoteName,
    dest: &Path,
) -> Result<Pulled> {
    let rel = std::path::Path::new(std::ffi::OsStr::from_bytes(&name.bytes));
    if rel
        .components()
        .any(|c| c.as_os_str() == crate::remote::PARTIAL_DIR)
    {
        anyhow::bail!(
            "a folder named {} is where trainctl keeps partial downloads: not pulled",
            crate::remote::PARTIAL_DIR
        );
    }
    // Check before any byte moves: `../../etc/x` or `/abs` never leave `dest`.
    let local = crate::remote::safe_join_path(dest, rel)?;
    let fetched = if name.is_utf8() {
        remote
            .get(&format!("{workdir}/{}", name.text), &local)
            .await?
    } else {
        // The remote API names files as text: a name that is not UTF-8 is linked to a
        // text name beside the job's files for the copy, then unlinked.
        let alias = format!(
            "{workdir}/.trainctl-pull-{}",
            crate::model::short_hash(&blake3::hash(&name.bytes).to_hex())
        );
        let octal: String = name.bytes.iter().map(|b| format!("\\0{b:03o}")).collect();
        remote
            .exec(&format!(
                "cd {w} && n=$(printf '%bx' '{octal}') && n=${{n%x}} && ln -f -- \"$n\" {a} 2>/dev/null || cp -p -- \"$n\" {a}",
                w = sh_quote(workdir),
                a = sh_quote(&alias)
            ))
            .await?
            .check("naming the file for the copy")?;
        let got = remote.get(&alias, &local).await;
        let _ = remote.exec(&format!("rm -f -- {}", sh_quote(&alias))).await;
        got?
    };
    Ok(Pulled {
        path: name.text.clone(),
        size: fetched.size,
        blake3: fetched.blake3,
        local_path: local.to_string_lossy().into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallbacks_take_the_first_pattern_that_matches() {
        let files: Vec<RemoteName> = ["last.pt", "ckpt/e1.ckpt", "ckpt/e2.ckpt", "m.json"]
            .iter()
            .map(|s| RemoteName::new(s.as_bytes()))
            .collect();
        let rules = vec![
            ArtifactRule::FirstOf(vec!["best.pt".into(), "last.pt".into()]),
            ArtifactRule::One("ckpt/*.ckpt".into()),
            ArtifactRule::One("*.onnx".into()),
        ];
        let (chosen, unmatched) = select(&rules, &files).unwrap();
        let chosen: Vec<&str> = chosen.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(chosen, vec!["last.pt", "ckpt/e1.ckpt", "ckpt/e2.ckpt"]);
        assert_eq!(unmatched, vec!["*.onnx"]);
    }
}
