//! Cockpit benchmarks, each against a baseline measured in the same run:
//!
//! 1. frame time with 1 000 instances, 10 000 jobs, a 100 000-line log and four charts of
//!    1 M points each (p50/p99 over many frames, real crossterm backend into a byte sink),
//!    against an empty cockpit;
//! 2. bytes written to the terminal per second while following a log at 100 lines/s and
//!    while a chart updates at 100 points/s (80x24, frames capped at 20/s), against
//!    repainting the whole screen at the same rate;
//! 3. keypress-to-frame latency through the real event loop while a log streams in at
//!    50 000 lines/s.
//!
//! `cargo run --release --example bench_tui`

use crossterm::event::{Event, KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trainctl::model::{InstanceState, JobState, MetricPoint, Money, Progress};
use trainctl::store::{InstanceRecord, JobRecord};
use trainctl::tui::app::{App, InstanceRow, JobRow, Msg, Snapshot};
use trainctl::tui::keymap::Keymap;
use trainctl::tui::theme::{ColorMode, Theme};

/// Counts bytes and remembers when each frame was flushed.
#[derive(Clone, Default)]
struct Sink {
    bytes: Arc<AtomicU64>,
    flushes: Arc<Mutex<Vec<Instant>>>,
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.flushes.lock().unwrap().push(Instant::now());
        Ok(())
    }
}

fn app() -> App {
    let theme = Theme::new(ColorMode::Palette256, &Default::default()).unwrap();
    let validator: trainctl::tui::app::Validator = Arc::new(|_: &str, _: &_| Err("bench".into()));
    App::new(Keymap::default(), theme, false, 100_000, validator)
}

fn big_snapshot() -> Snapshot {
    let now = 1_795_600_000_000;
    let instances = (0..1000)
        .map(|i| InstanceRow {
            idle_deadline: None,
            orphan_job_on: None,
            rec: InstanceRecord {
                name: format!("box-{i}"),
                spot: i % 3 == 0,
                gpus: (i % 9) as u32,
                state: if i % 4 == 0 {
                    InstanceState::Terminated
                } else {
                    InstanceState::Running
                },
                created_ms: now - 10_000_000,
                launched_ms: Some(now - 9_000_000),
                ..InstanceRecord::intent(
                    &format!("i-{i:012}"),
                    "local",
                    "local",
                    Money(1_000_000 + i),
                )
            },
            cost: Money(2_500_000 + i),
            uptime_ms: 9_000_000,
            orphan: i == 7,
        })
        .collect();
    let jobs = (0..10_000)
        .map(|i| JobRow {
            rec: JobRecord {
                name: format!("run-{i}"),
                state: if i % 5 == 0 {
                    JobState::Running
                } else {
                    JobState::Succeeded
                },
                created_ms: now - 1_000_000,
                started_ms: Some(now - 900_000),
                ..JobRecord::pending(
                    &format!("j-{i:012}"),
                    "p",
                    "/p",
                    "python3 train.py",
                    &format!("i-{:012}", i % 1000),
                )
            },
            progress: Progress {
                epoch: Some(3.0),
                epochs_total: Some(10.0),
                step: Some(i),
                steps_total: None,
                ..Default::default()
            },
            elapsed_ms: Some(900_000),
            eta_ms: Some(100_000),
            cost: Money(i),
            projected: Some(Money(2 * i)),
            metric: Some(("loss".into(), 1.0 / (i as f64 + 1.0))),
            trend: (0..32).map(|k| ((k + i) as f64).sin()).collect(),
            attempt: 1,
        })
        .collect();
    Snapshot {
        now_ms: now,
        instances,
        jobs,
        cost: None,
        budget_day: None,
        budget_job: None,
    }
}

fn key(c: char) -> Msg {
    Msg::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Draw `frames` frames, poking the app between them; returns per-frame ms.
fn time_frames(
    term: &mut Terminal<CrosstermBackend<Sink>>,
    app: &mut App,
    frames: usize,
    mut poke: impl FnMut(&mut App, usize),
) -> Vec<f64> {
    let mut out = Vec::with_capacity(frames);
    for i in 0..frames {
        poke(app, i);
        let t = Instant::now();
        term.draw(|f| trainctl::tui::ui::draw(f, app)).unwrap();
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    out
}

fn frame_time() {
    let (w, h) = (160, 48);
    let sink = Sink::default();
    let mut term = Terminal::with_options(
        CrosstermBackend::new(sink.clone()),
        ratatui::TerminalOptions {
            viewport: ratatui::Viewport::Fixed(ratatui::layout::Rect::new(0, 0, w, h)),
        },
    )
    .unwrap();

    // Baseline: an empty cockpit, same size, same number of frames.
    let mut empty = app();
    let mut base = time_frames(&mut term, &mut empty, 300, |a, i| {
        a.update(key(['1', '2', '3', '4'][i % 4]));
    });

    let mut a = app();
    a.update(Msg::Snapshot(Box::new(big_snapshot())));
    let job = a.focus_job.clone().unwrap();
    let t = Instant::now();
    a.update(Msg::LogAppend {
        job: job.clone(),
        attempt: 1,
        end: 0,
        lines: (0..100_000)
            .map(|i| {
                format!(
                    "step={i} loss={:.6} lr=3e-4 some more text of a typical line",
                    1.0 / (i as f64 + 1.0)
                )
            })
            .collect(),
        skipped: Some(0),
    });
    for m in ["loss", "val_loss", "accuracy", "lr"] {
        let pts: Vec<MetricPoint> = (0..1_000_000)
            .map(|i| MetricPoint {
                name: m.into(),
                value: ((i as f64) / 5000.0).sin() / (1.0 + i as f64 / 1e5),
                step: Some(i),
                epoch: None,
                line: i as u64,
            })
            .collect();
        a.update(Msg::MetricsAppend {
            job: job.clone(),
            last_rowid: 0,
            points: pts,
            more: false,
        });
    }
    eprintln!(
        "loaded 4 M points and 100 k lines in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    // Two other runs marked, their 1 M-point loss curves overlaid on the chart.
    for other in [1usize, 2] {
        let id = a.snap.jobs[other].rec.id.clone();
        a.marked.push(id.clone());
        let mut c = trainctl::tui::panes::metrics::Curve::new(
            "loss",
            trainctl::tui::panes::metrics::XAxis::Step,
            0.0,
        );
        for i in 0..1_000_000 {
            c.push(
                i as f64,
                ((i as f64) / 4000.0).cos() / (1.0 + i as f64 / 1e5),
            );
        }
        a.update(Msg::Curve {
            job: id,
            curve: Box::new(c),
        });
    }
    let mut all = Vec::new();
    // The dashboard (160x48): every pane drawn every frame, the focus moving between them;
    // something changes every frame: a selection or the log's scroll, a new line, a point.
    for (view, mv, label) in [
        ('1', ('j', 'k'), "dashboard, instances"),
        ('3', ('k', 'j'), "dashboard, log"),
        ('4', ('l', 'h'), "dashboard, chart (+2 runs)"),
        ('5', ('j', 'k'), "dashboard, cost"),
    ] {
        a.update(key(view));
        let mut v = time_frames(&mut term, &mut a, 300, |a, i| {
            a.update(key(if i % 2 == 0 { mv.0 } else { mv.1 }));
            a.metrics.push(&MetricPoint {
                name: "loss".into(),
                value: 0.1,
                step: Some(1_000_000 + i as i64),
                epoch: None,
                line: 0,
            });
            a.logs.push(format!("new line {i}"), None);
            a.dirty = true;
        });
        let p50 = percentile(&mut v, 0.5);
        let p99 = percentile(&mut v, 0.99);
        println!("frame {label:<28} p50 {p50:.2} ms  p99 {p99:.2} ms");
        all.extend(v);
    }
    // The jobs list zoomed (z): 10 000 rows, the highlight moving.
    a.update(key('2'));
    a.update(key('z'));
    let mut v = time_frames(&mut term, &mut a, 300, |a, i| {
        a.update(key(if i % 2 == 0 { 'j' } else { 'k' }));
        a.dirty = true;
    });
    let p50 = percentile(&mut v, 0.5);
    let p99 = percentile(&mut v, 0.99);
    println!(
        "frame {:<28} p50 {p50:.2} ms  p99 {p99:.2} ms",
        "jobs zoomed (10 000)"
    );
    all.extend(v);
    let b99 = percentile(&mut base, 0.99);
    let p99 = percentile(&mut all, 0.99);
    println!("frame empty cockpit            p99 {b99:.2} ms");
    println!(
        "frame all of the above         p99 {p99:.2} ms (target < 4 ms), {:.1}x the empty cockpit",
        p99 / b99
    );
}

fn bytes_per_second() {
    for (label, view) in [("log following", '3'), ("chart updating", '4')] {
        let sink = Sink::default();
        let mut term = Terminal::with_options(
            CrosstermBackend::new(sink.clone()),
            ratatui::TerminalOptions {
                viewport: ratatui::Viewport::Fixed(ratatui::layout::Rect::new(0, 0, 80, 24)),
            },
        )
        .unwrap();
        let mut a = app();
        let mut snap = big_snapshot();
        snap.instances.truncate(3);
        snap.jobs.truncate(3);
        a.update(Msg::Snapshot(Box::new(snap)));
        let job = a.focus_job.clone().unwrap();
        a.update(key(view));
        term.draw(|f| trainctl::tui::ui::draw(f, &mut a)).unwrap();
        // A full repaint: the same screen drawn onto a fresh terminal.
        let full_frame = {
            let fresh = Sink::default();
            let mut t2 = Terminal::with_options(
                CrosstermBackend::new(fresh.clone()),
                ratatui::TerminalOptions {
                    viewport: ratatui::Viewport::Fixed(ratatui::layout::Rect::new(0, 0, 80, 24)),
                },
            )
            .unwrap();
            t2.draw(|f| trainctl::tui::ui::draw(f, &mut a)).unwrap();
            fresh.bytes.load(Ordering::Relaxed)
        };
        // 10 s of virtual time: a line (and a point) every 10 ms, a frame every 50 ms when dirty.
        let start = sink.bytes.load(Ordering::Relaxed);
        let mut frames = 0;
        for tick in 0..1000 {
            a.update(Msg::LogAppend {
                job: job.clone(),
                attempt: 1,
                end: tick,
                lines: vec![format!(
                    "step={tick} loss={:.6} lr=3e-4",
                    1.0 / (tick as f64 + 1.0)
                )],
                skipped: None,
            });
            a.update(Msg::MetricsAppend {
                job: job.clone(),
                last_rowid: tick as i64,
                points: vec![MetricPoint {
                    name: "loss".into(),
                    value: 1.0 / (tick as f64 + 1.0),
                    step: Some(tick as i64),
                    epoch: None,
                    line: tick,
                }],
                more: false,
            });
            if tick % 5 == 4 && a.dirty {
                term.draw(|f| trainctl::tui::ui::draw(f, &mut a)).unwrap();
                a.dirty = false;
                frames += 1;
            }
        }
        let per_s = (sink.bytes.load(Ordering::Relaxed) - start) as f64 / 10.0;
        let naive = full_frame as f64 * 20.0;
        println!(
            "bytes/s {label:<15} {per_s:>8.0} B/s over {frames} frames; full repaints at 20 fps {naive:.0} B/s ({:.1}x less)",
            naive / per_s
        );
    }
    // Idle: nothing changes, nothing is written.
    let mut a = app();
    let mut snap = big_snapshot();
    snap.instances.retain(|i| !i.rec.state.is_live());
    snap.instances.truncate(3);
    snap.jobs.retain(|j| j.rec.state.is_terminal());
    snap.jobs.truncate(3);
    a.update(Msg::Snapshot(Box::new(snap.clone())));
    a.dirty = false;
    snap.now_ms += 1000;
    a.update(Msg::Snapshot(Box::new(snap)));
    println!(
        "idle: a refresh with nothing live marks the screen dirty: {}",
        a.dirty
    );
}

fn keypress_latency() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = trainctl::config::UserConfig {
            data_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let engine = trainctl::engine::Engine::open(cfg).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let ctx = trainctl::tui::run::Context::new(engine, None, tx.clone());
        let mut a = app();
        a.logs.job = Some("j-stream".into());
        a.focus_job = Some("j-stream".into());
        a.update(key('3'));
        let sink = Sink::default();
        let mut term = Terminal::with_options(
            CrosstermBackend::new(sink.clone()),
            ratatui::TerminalOptions {
                viewport: ratatui::Viewport::Fixed(ratatui::layout::Rect::new(0, 0, 120, 40)),
            },
        )
        .unwrap();
        let (ktx, krx) = tokio::sync::mpsc::unbounded_channel::<std::io::Result<Event>>();
        let input = futures_util::stream::unfold(krx, |mut r| async move { r.recv().await.map(|e| (e, r)) });
        let input = Box::pin(input);
        // The stream: 500 lines every 10 ms = 50 000 lines/s.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stx, st) = (tx.clone(), stop.clone());
        let producer = tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !st.load(Ordering::Relaxed) {
                tick.tick().await;
                let lines = (0..500).map(|k| format!("step={} loss={:.5} lr=3e-4", n + k, 1.0 / (n + k + 1) as f64)).collect();
                n += 500;
                let _ = stx.send(Msg::LogAppend {
                    job: "j-stream".into(),
                    attempt: 1,
                    end: n,
                    lines,
                    skipped: None,
                });
            }
            n
        });
        let flushes = sink.flushes.clone();
        let keys = tokio::spawn(async move {
            let mut lat = Vec::new();
            tokio::time::sleep(Duration::from_millis(500)).await;
            for i in 0..100 {
                let before = flushes.lock().unwrap().len();
                let t = Instant::now();
                let c = if i % 2 == 0 { 'w' } else { 't' };
                let _ = ktx.send(Ok(Event::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))));
                loop {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    let f = flushes.lock().unwrap();
                    if let Some(at) = f.get(before..).and_then(|s| s.iter().find(|x| **x >= t)) {
                        lat.push((*at - t).as_secs_f64() * 1e3);
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(37)).await;
            }
            let _ = ktx.send(Ok(Event::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL))));
            lat
        });
        trainctl::tui::run::event_loop(&mut term, &mut a, &ctx, &mut rx, input, 20)
            .await
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        let lines = producer.await.unwrap();
        let mut lat = keys.await.unwrap();
        let p50 = percentile(&mut lat, 0.5);
        let p99 = percentile(&mut lat, 0.99);
        let max = lat.iter().cloned().fold(0.0, f64::max);
        println!(
            "keypress->frame while streaming 50 000 lines/s: p50 {p50:.2} ms  p99 {p99:.2} ms  max {max:.2} ms (target < 50 ms); {lines} lines streamed, buffer {} lines",
            a.logs.lines.len()
        );
    });
}

fn main() {
    frame_time();
    bytes_per_second();
    keypress_latency();
}
