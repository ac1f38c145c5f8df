//! GPUs on the machine: checked against what the job asks for before it starts, and the
//! ones it gets chosen (`CUDA_VISIBLE_DEVICES`).

use crate::remote::Remote;
use anyhow::{Result, bail};

/// One GPU as `nvidia-smi --query-gpu=index,name,memory.total,memory.used` says it.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub total_mib: u64,
    pub used_mib: u64,
}

/// The command that lists the machine's GPUs; `NO_SMI` when it has no `nvidia-smi`.
pub const QUERY: &str = "if command -v nvidia-smi >/dev/null 2>&1; then \
    nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv,noheader,nounits 2>&1 | head -n 256; \
    else echo trainctl:no-nvidia-smi; fi";
const NO_SMI: &str = "trainctl:no-nvidia-smi";

/// The GPUs in `nvidia-smi`'s CSV answer (`None`: the machine has no `nvidia-smi`).
pub fn parse(text: &str) -> Result<Option<Vec<Gpu>>> {
    if text.trim() == NO_SMI {
        return Ok(None);
    }
    let mut gpus = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed = match f.as_slice() {
            [i, name, total, used] => (|| {
                Some(Gpu {
                    index: i.parse().ok()?,
                    name: crate::sanitize::sanitize_line(name.as_bytes()),
                    total_mib: total.parse().ok()?,
                    used_mib: used.parse().unwrap_or(0),
                })
            })(),
            _ => None,
        };
        match parsed {
            Some(g) => gpus.push(g),
            None => bail!(
                "nvidia-smi answered `{}`",
                crate::sanitize::sanitize_line(line.as_bytes())
            ),
        }
    }
    Ok(Some(gpus))
}

/// The GPUs a job asking for `want` GPUs of at least `min_gib` each gets: those with enough
/// memory, the least used first (then by index), or why the machine cannot run it.
pub fn choose(gpus: Option<&[Gpu]>, want: u32, min_gib: Option<f64>) -> Result<Vec<u32>> {
    let need_mib = min_gib.map_or(0, |g| (g * 1024.0).ceil() as u64);
    let asks = match min_gib {
        Some(g) => format!("{want} GPU(s) with at least {g} GiB each"),
        None => format!("{want} GPU(s)"),
    };
    let Some(gpus) = gpus else {
        bail!("the job asks for {asks}; this machine has none (no nvidia-smi on its PATH)");
    };
    let mut fit: Vec<&Gpu> = gpus.iter().filter(|g| g.total_mib >= need_mib).collect();
    if (fit.len() as u32) < want {
        bail!(
            "the job asks for {asks}; this machine has {}",
            describe(gpus)
        );
    }
    fit.sort_by_key(|g| (g.used_mib, g.index));
    let mut chosen: Vec<u32> = fit.iter().take(want as usize).map(|g| g.index).collect();
    chosen.sort_unstable();
    Ok(chosen)
}

/// `2x NVIDIA A10 (24 GiB)`, `no GPU`.
pub fn describe(gpus: &[Gpu]) -> String {
    count_kinds(
        gpus.iter()
            .map(|g| format!("{} ({:.0} GiB)", g.name, g.total_mib as f64 / 1024.0)),
    )
}

/// GPUs described one by one, counted by kind in the order first seen: `2x A (…), 1x B
/// (…)`; `no GPU` for none.
pub fn count_kinds(descs: impl IntoIterator<Item = String>) -> String {
    let mut kinds: Vec<(String, usize)> = Vec::new();
    for d in descs {
        match kinds.iter_mut().find(|(k, _)| *k == d) {
            Some((_, n)) => *n += 1,
            None => kinds.push((d, 1)),
        }
    }
    if kinds.is_empty() {
        return "no GPU".into();
    }
    kinds
        .iter()
        .map(|(d, n)| format!("{n}x {d}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Check the machine against the job's `resources.gpus` / `gpu_memory_gib`: the value of
/// `CUDA_VISIBLE_DEVICES` for the job, `None` when it asks for no GPU.
pub async fn check(
    remote: &dyn Remote,
    gpus: Option<u32>,
    min_gib: Option<f64>,
) -> Result<Option<String>> {
    let want = match (gpus, min_gib) {
        (Some(0), _) | (None, None) => return Ok(None),
        (Some(n), _) => n,
        (None, Some(_)) => 1,
    };
    let out = remote.exec(QUERY).await?;
    if !out.success() {
        bail!(
            "asking the machine for its GPUs: {}",
            crate::sanitize::sanitize_line(out.stderr.trim_ascii())
        );
    }
    let listed = parse(&out.stdout_str())?;
    let chosen = choose(listed.as_deref(), want, min_gib)?;
    Ok(Some(
        chosen
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "0, NVIDIA A10G, 23028, 20000\n1, NVIDIA A10G, 23028, 3\n2, NVIDIA A100-SXM4-80GB, 81920, 0\n";

    #[test]
    fn gpus_are_chosen_by_memory_then_least_used() {
        let g = parse(TWO).unwrap().unwrap();
        assert_eq!(g.len(), 3);
        assert_eq!(choose(Some(&g), 1, None).unwrap(), vec![2]);
        assert_eq!(choose(Some(&g), 2, None).unwrap(), vec![1, 2]);
        assert_eq!(choose(Some(&g), 1, Some(40.0)).unwrap(), vec![2]);
        let e = choose(Some(&g), 2, Some(40.0)).unwrap_err().to_string();
        assert_eq!(
            e,
            "the job asks for 2 GPU(s) with at least 40 GiB each; this machine has 2x NVIDIA A10G (22 GiB), 1x NVIDIA A100-SXM4-80GB (80 GiB)"
        );
        let e = choose(None, 1, None).unwrap_err().to_string();
        assert!(e.contains("has none (no nvidia-smi"), "{e}");
        assert!(parse("trainctl:no-nvidia-smi\n").unwrap().is_none());
        let e =
            parse("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("couldn't communicate"), "{e}");
    }
}
