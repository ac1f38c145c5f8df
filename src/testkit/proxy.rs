//! A loopback TCP proxy for benchmarks: counts every byte in each direction and can add a
//! one-way delay (a delay line: each chunk leaves `delay` after it arrived, order kept, no
//! bandwidth cap), so a 127.0.0.1 server behaves like one `2 * delay` of round trip away.
//! (A `tc netem` qdisc would do the same in the kernel; this machine's kernel has none.)

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bytes seen by a [`Proxy`], each way.
#[derive(Default)]
pub struct Counter {
    pub up: AtomicU64,
    pub down: AtomicU64,
}

impl Counter {
    /// Bytes both ways since the last call (and reset).
    pub fn take(&self) -> u64 {
        self.up.swap(0, Ordering::SeqCst) + self.down.swap(0, Ordering::SeqCst)
    }
}

pub struct Proxy {
    /// Where clients connect.
    pub port: u16,
    pub counter: Arc<Counter>,
}

impl Proxy {
    /// A proxy to `127.0.0.1:target`, with `delay` added each way.
    pub fn start(target: u16, delay: Duration) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let port = l.local_addr().unwrap().port();
        let counter = Arc::new(Counter::default());
        let n = counter.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let Ok(s) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = (c.set_nodelay(true), s.set_nodelay(true));
                let (c2, s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
                let (n1, n2) = (n.clone(), n.clone());
                std::thread::spawn(move || pump(c, s, n1, true, delay));
                std::thread::spawn(move || pump(s2, c2, n2, false, delay));
            }
        });
        Proxy { port, counter }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, n: Arc<Counter>, up: bool, delay: Duration) {
    let count = move |k: usize| {
        let c = if up { &n.up } else { &n.down };
        c.fetch_add(k as u64, Ordering::Relaxed);
    };
    if delay.is_zero() {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    if to.write_all(&buf[..k]).is_err() {
                        break;
                    }
                    count(k);
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
        return;
    }
    // Reader stamps chunks; the writer sends each when its time comes.
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    if tx
                        .send((Instant::now() + delay, buf[..k].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    while let Ok((due, chunk)) = rx.recv() {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if to.write_all(&chunk).is_err() {
            break;
        }
        count(chunk.len());
    }
    let _ = to.shutdown(Shutdown::Write);
}
