//! Store write throughput: 1 M metric points inserted in batches (as the log follower
//! commits them), against the same rows inserted into a bare table with no index in the
//! same SQLite configuration (the floor for this engine), measured in the same run.
//!
//! `cargo run --release --example bench_store [-- POINTS [BATCH]]`

use std::time::Instant;
use trainctl::model::MetricPoint;
use trainctl::store::Store;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let batch: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let names = ["loss", "lr", "accuracy", "grad_norm"];
    let points: Vec<MetricPoint> = (0..n)
        .map(|i| MetricPoint {
            name: names[i % names.len()].to_string(),
            value: 1.0 / (i as f64 + 1.0),
            step: Some(i as i64 / 4),
            epoch: Some((i / 10_000) as f64),
            line: i as u64 + 1,
        })
        .collect();
    let dir = tempfile::tempdir()?;

    // Baseline: the same rows, same pragmas, a table with no index and no job bookkeeping.
    let conn = rusqlite::Connection::open(dir.path().join("bare.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(
        "CREATE TABLE p (job_id TEXT, attempt INTEGER, line INTEGER, name TEXT, value REAL, step INTEGER, epoch REAL, ts_ms INTEGER)",
    )?;
    let t = Instant::now();
    let mut conn = conn;
    for chunk in points.chunks(batch) {
        let tx = conn.transaction()?;
        {
            let mut st =
                tx.prepare_cached("INSERT INTO p VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")?;
            for p in chunk {
                st.execute(rusqlite::params![
                    "j-bench",
                    1,
                    p.line as i64,
                    p.name,
                    p.value,
                    p.step,
                    p.epoch,
                    0
                ])?;
            }
        }
        tx.commit()?;
    }
    let bare = t.elapsed().as_secs_f64();

    let mut store = Store::open(&dir.path().join("trainctl.db"))?;
    let t = Instant::now();
    for chunk in points.chunks(batch) {
        store.insert_points("j-bench", 1, chunk)?;
    }
    let ours = t.elapsed().as_secs_f64();
    assert_eq!(store.metric_count("j-bench")? as usize, n);

    let rate = |s: f64| n as f64 / s;
    println!("points            {n} in batches of {batch}");
    println!(
        "bare table        {:.3} s  {:.0} k points/s",
        bare,
        rate(bare) / 1e3
    );
    println!(
        "trainctl store    {:.3} s  {:.0} k points/s (target >= 500 k/s)",
        ours,
        rate(ours) / 1e3
    );
    println!("ratio store/bare  {:.2}", bare / ours);
    Ok(())
}
