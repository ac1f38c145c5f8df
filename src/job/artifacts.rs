//! Pull a job's artifacts: glob rules with fallbacks, matched against the files in the
//! job's workdir on the machine; each file is copied to a temp name, checked (size and
//! BLAKE3) and renamed. A remote name can never write outside the destination folder.

use crate::config::ArtifactRule;
use crate::remote::{Remote, safe_join, sh_quote};
use anyhow::{Context, Result};
use serde::Serialize;
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
}

/// Every regular file under `workdir` on the machine, relative to it.
pub async fn list_files(remote: &dyn Remote, workdir: &str) -> Result<Vec<String>> {
    let out = remote
        .exec(&format!(
            "cd {} && find . -type f -print0",
            sh_quote(workdir)
        ))
        .await?
        .check("listing the workdir")?;
    let mut files: Vec<String> = out
        .stdout
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let s = String::from_utf8_lossy(s);
            s.strip_prefix("./").unwrap_or(&s).to_string()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Which files the rules select: per rule, the matches of its first pattern that matches.
pub fn select(rules: &[ArtifactRule], files: &[String]) -> Result<(Vec<String>, Vec<String>)> {
    let mut chosen = Vec::new();
    let mut unmatched = Vec::new();
    for rule in rules {
        let mut found = false;
        for pat in rule.patterns() {
            let m = globset::GlobBuilder::new(pat)
                .literal_separator(true)
                .build()
                .with_context(|| format!("bad artifact pattern `{pat}`"))?
                .compile_matcher();
            let hits: Vec<&String> = files.iter().filter(|f| m.is_match(f.as_str())).collect();
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

/// Pull the files the rules select from `workdir` on the machine into `dest`.
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
    for rel in chosen {
        // Check before any byte moves: `../../etc/x` or `/abs` never leave `dest`.
        let local = safe_join(dest, &rel)?;
        let fetched = remote
            .get(&format!("{workdir}/{rel}"), &local)
            .await
            .with_context(|| format!("pulling {rel}"))?;
        report.pulled.push(Pulled {
            path: rel,
            size: fetched.size,
            blake3: fetched.blake3,
            local_path: local.to_string_lossy().into_owned(),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallbacks_take_the_first_pattern_that_matches() {
        let files: Vec<String> = ["last.pt", "ckpt/e1.ckpt", "ckpt/e2.ckpt", "m.json"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let rules = vec![
            ArtifactRule::FirstOf(vec!["best.pt".into(), "last.pt".into()]),
            ArtifactRule::One("ckpt/*.ckpt".into()),
            ArtifactRule::One("*.onnx".into()),
        ];
        let (chosen, unmatched) = select(&rules, &files).unwrap();
        assert_eq!(chosen, vec!["last.pt", "ckpt/e1.ckpt", "ckpt/e2.ckpt"]);
        assert_eq!(unmatched, vec!["*.onnx"]);
    }
}
