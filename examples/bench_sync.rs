//! Sync of an unchanged 10 000-file tree on the local provider, against `rsync -a` of the
//! same tree to a local folder, measured in the same run (median of several runs each).
//! Also reports the first (full) sync and a sync after changing 10 files.
//!
//! `cargo run --release --example bench_sync [-- FILES]`

use std::time::Instant;
use trainctl::job::sync;
use trainctl::remote::local::LocalRemote;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn rsync(src: &std::path::Path, dst: &std::path::Path) -> f64 {
    let t = Instant::now();
    let st = std::process::Command::new("rsync")
        .arg("-a")
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .status()
        .expect("rsync is needed for this benchmark (apt-get install rsync)");
    assert!(st.success());
    t.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let files: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("project");
    for i in 0..files {
        let d = src.join(format!("pkg{:03}", i % 100));
        std::fs::create_dir_all(&d)?;
        std::fs::write(
            d.join(format!("mod{i:05}.py")),
            format!("# file {i}\n{}\n", "x = 1\n".repeat(i % 50)),
        )?;
    }
    let home = dir.path().join("sandbox/home");
    std::fs::create_dir_all(&home)?;
    let remote = LocalRemote::new(&home, "bench");
    let rs_dst = dir.path().join("rsync-dst");
    std::fs::create_dir_all(&rs_dst)?;

    let t = Instant::now();
    let plan = sync::prepare(&remote, "bench", &src, &[]).await?;
    sync::apply(&remote, "bench", &src, &plan).await?;
    let first_ours = t.elapsed().as_secs_f64();
    assert_eq!(plan.upload.len(), files);
    let first_rsync = rsync(&src, &rs_dst);

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let plan = sync::prepare(&remote, "bench", &src, &[]).await?;
        sync::apply(&remote, "bench", &src, &plan).await?;
        ours.push(t.elapsed().as_secs_f64());
        assert!(plan.is_noop(), "unchanged tree moved files");
        theirs.push(rsync(&src, &rs_dst));
    }
    // Ten changed files.
    for i in 0..10 {
        let f = src.join(format!("pkg{:03}/mod{:05}.py", i % 100, i));
        std::fs::write(f, format!("# changed {i}\n"))?;
    }
    let t = Instant::now();
    let plan = sync::prepare(&remote, "bench", &src, &[]).await?;
    sync::apply(&remote, "bench", &src, &plan).await?;
    let changed_ours = t.elapsed().as_secs_f64();
    assert_eq!(plan.upload.len(), 10);
    let changed_rsync = rsync(&src, &rs_dst);

    let (o, r) = (median(ours), median(theirs));
    println!("tree                  {files} files");
    println!(
        "first sync            trainctl {:.1} ms   rsync -a {:.1} ms",
        first_ours * 1e3,
        first_rsync * 1e3
    );
    println!(
        "10 files changed      trainctl {:.1} ms   rsync -a {:.1} ms",
        changed_ours * 1e3,
        changed_rsync * 1e3
    );
    println!(
        "unchanged (median 7)  trainctl {:.1} ms   rsync -a {:.1} ms",
        o * 1e3,
        r * 1e3
    );
    println!(
        "ratio rsync/trainctl  {:.2} (target > 1: faster than rsync)",
        r / o
    );
    Ok(())
}
