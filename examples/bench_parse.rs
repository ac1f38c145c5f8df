//! Metric parsing throughput on a large mixed log, against `grep -c` of the same file in
//! the same run (the floor any line scanner pays).
//!
//! `cargo run --release --example bench_parse [-- SIZE_MB [PATH]]` (default 1024 MB in the
//! system temp dir; the file is reused when it already has the right size).

use std::io::{Read, Write};
use std::time::Instant;

const LINES: &[&str] = trainctl::testkit::MIXED_LOG_LINES;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mb: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let path = args
        .get(2)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("trainctl-bench-{mb}mb.log")));
    let want = mb << 20;
    if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) != want {
        let t = Instant::now();
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
        let mut written = 0u64;
        let mut i = 0usize;
        while written < want {
            let l = LINES[i % LINES.len()].as_bytes();
            let l = &l[..l.len().min((want - written) as usize)];
            f.write_all(l)?;
            written += l.len() as u64;
            i += 1;
        }
        f.flush()?;
        eprintln!(
            "wrote {} in {:.1}s",
            path.display(),
            t.elapsed().as_secs_f64()
        );
    }
    // Warm the page cache so both sides read from memory.
    let mut f = std::fs::File::open(&path)?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf)? > 0 {}

    let mut best_grep = f64::MAX;
    let mut best_parse = f64::MAX;
    let mut points = 0u64;
    for _ in 0..3 {
        let t = Instant::now();
        let out = std::process::Command::new("grep")
            .arg("-c")
            .arg("loss")
            .arg(&path)
            .output()?;
        best_grep = best_grep.min(t.elapsed().as_secs_f64());
        assert!(!out.stdout.is_empty());

        let t = Instant::now();
        let mut f = std::fs::File::open(&path)?;
        let mut parser = trainctl::metrics::LogParser::new();
        let mut n = 0u64;
        loop {
            let k = f.read(&mut buf)?;
            if k == 0 {
                break;
            }
            parser.feed(&buf[..k], &mut |_| n += 1);
        }
        parser.finish(&mut |_| n += 1);
        best_parse = best_parse.min(t.elapsed().as_secs_f64());
        points = n;
    }
    let mbs = |s: f64| mb as f64 / s;
    println!("log size          {mb} MB ({} points)", points);
    println!(
        "grep -c loss      {:.3} s  {:.0} MB/s",
        best_grep,
        mbs(best_grep)
    );
    println!(
        "trainctl parser   {:.3} s  {:.0} MB/s  ({:.1} M points/s)",
        best_parse,
        mbs(best_parse),
        points as f64 / best_parse / 1e6
    );
    println!(
        "ratio parser/grep {:.2} (target >= 0.33)",
        best_grep / best_parse
    );
    Ok(())
}
