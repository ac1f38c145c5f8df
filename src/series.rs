//! Metric points packed per series, as Facebook's Gorilla packs time series: the store
//! keeps a job's points as chunks of one metric each (one per commit of the log), every
//! point as bits relative to the one before it.
//!
//! Per point:
//! - its log line: the delta-of-delta to the previous line (`0` when lines are evenly
//!   spaced, as a metric printed every k lines is), in buckets of 7, 12, 20 or 64 bits;
//! - its step: `0` for none, else `1` and the delta-of-delta to the previous step;
//! - its value: a number a logger printed with a few decimals (`0.4567`) is an integer at
//!   a decimal scale, stored as the delta to the previous one at the same scale (checked
//!   to give the very same bits back); any other float is the XOR of its bits with the
//!   previous value's, as Gorilla does: `0` when equal, `10` and the meaningful bits when
//!   they fit the previous window, else `11`, 6 bits of leading zeros, 6 of length and the
//!   bits;
//! - its epoch: `0` for none, else `1` and the value encoding against the previous epoch.
//!
//! A training loss that moves slowly costs a few bytes a point, a counter or a constant a
//! few bits; any f64 (NaN, infinities, -0.0) comes back bit for bit.

use anyhow::{Result, bail};

/// One point of a series, without its name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub line: u64,
    pub value: f64,
    pub step: Option<i64>,
    pub epoch: Option<f64>,
}

struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn new() -> Bits {
        Bits {
            out: Vec::new(),
            acc: 0,
            n: 0,
        }
    }

    /// The low `width` bits of `v`, most significant first.
    fn put(&mut self, v: u64, width: u32) {
        if width == 0 {
            return;
        }
        let v = if width == 64 {
            v
        } else {
            v & ((1u64 << width) - 1)
        };
        let free = 64 - self.n;
        if width <= free {
            self.acc |= if width == 64 { v } else { v << (free - width) };
            self.n += width;
        } else {
            let hi = width - free;
            self.acc |= v >> hi;
            self.n = 64;
            self.flush_full();
            self.acc = v << (64 - hi);
            self.n = hi;
        }
        if self.n == 64 {
            self.flush_full();
        }
    }

    fn flush_full(&mut self) {
        self.out.extend_from_slice(&self.acc.to_be_bytes());
        self.acc = 0;
        self.n = 0;
    }

    fn finish(mut self) -> Vec<u8> {
        let bytes = self.n.div_ceil(8) as usize;
        self.out.extend_from_slice(&self.acc.to_be_bytes()[..bytes]);
        self.out
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn get(&mut self, width: u32) -> Result<u64> {
        if self.pos + width as usize > self.data.len() * 8 {
            bail!("a metric chunk ends early");
        }
        let mut v = 0u64;
        let mut left = width;
        while left > 0 {
            let byte = self.data[self.pos / 8];
            let off = (self.pos % 8) as u32;
            let take = (8 - off).min(left);
            let bits = (byte >> (8 - off - take)) & ((1u16 << take) - 1) as u8;
            v = (v << take) | bits as u64;
            self.pos += take as usize;
            left -= take;
        }
        Ok(v)
    }

    fn bit(&mut self) -> Result<bool> {
        Ok(self.get(1)? == 1)
    }
}

/// Signed delta-of-delta buckets: (prefix, prefix bits, value bits).
const DOD: [(u64, u32, u32); 4] = [
    (0b10, 2, 7),
    (0b110, 3, 12),
    (0b1110, 4, 20),
    (0b1111, 4, 64),
];

fn put_dod(b: &mut Bits, d: i64) {
    if d == 0 {
        b.put(0, 1);
        return;
    }
    for (prefix, pbits, vbits) in DOD {
        let fits = vbits == 64 || (-(1i64 << (vbits - 1)) <= d && d < (1i64 << (vbits - 1)));
        if fits {
            b.put(prefix, pbits);
            b.put(d as u64, vbits);
            return;
        }
    }
}

fn get_dod(r: &mut Reader<'_>) -> Result<i64> {
    if !r.bit()? {
        return Ok(0);
    }
    let vbits = if !r.bit()? {
        7
    } else if !r.bit()? {
        12
    } else if !r.bit()? {
        20
    } else {
        64
    };
    let raw = r.get(vbits)?;
    Ok(if vbits == 64 {
        raw as i64
    } else {
        // Sign-extend.
        ((raw << (64 - vbits)) as i64) >> (64 - vbits)
    })
}

/// XOR state of a float stream.
#[derive(Default, Clone, Copy)]
struct Xor {
    prev: u64,
    lead: u32,
    trail: u32,
    started: bool,
}

impl Xor {
    fn put(&mut self, b: &mut Bits, v: f64) {
        let bits = v.to_bits();
        let x = bits ^ self.prev;
        self.prev = bits;
        if x == 0 {
            b.put(0, 1);
            return;
        }
        let lead = x.leading_zeros().min(63);
        let trail = x.trailing_zeros();
        if self.started && lead >= self.lead && trail >= self.trail {
            b.put(0b10, 2);
            b.put(x >> self.trail, 64 - self.lead - self.trail);
        } else {
            let len = 64 - lead - trail;
            b.put(0b11, 2);
            b.put(lead as u64, 6);
            // 64 meaningful bits are written as 0 (they never are 0).
            b.put((len & 63) as u64, 6);
            b.put(x >> trail, len);
            self.lead = lead;
            self.trail = trail;
            self.started = true;
        }
    }

    fn get(&mut self, r: &mut Reader<'_>) -> Result<f64> {
        if r.bit()? {
            if r.bit()? {
                let lead = r.get(6)? as u32;
                let mut len = r.get(6)? as u32;
                if len == 0 {
                    len = 64;
                }
                if lead + len > 64 {
                    bail!("a metric chunk is damaged");
                }
                self.lead = lead;
                self.trail = 64 - lead - len;
                self.started = true;
            } else if !self.started {
                bail!("a metric chunk is damaged");
            }
            let len = 64 - self.lead - self.trail;
            let x = r.get(len)? << self.trail;
            self.prev ^= x;
        }
        Ok(f64::from_bits(self.prev))
    }
}

/// Powers of ten that are exact in an f64.
const TEN: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// `v` as `m / 10^k` exactly (the same bits back), trying `k` = `prefer` first: values a
/// logger printed with a few decimals are small integers in disguise.
fn decimal(v: f64, prefer: u32) -> Option<(u32, i64)> {
    if !v.is_finite() {
        return None;
    }
    let exact = |k: u32| {
        let m = (v * TEN[k as usize]).round();
        if m.abs() >= (1u64 << 53) as f64 {
            return None;
        }
        let m = m as i64;
        ((m as f64 / TEN[k as usize]).to_bits() == v.to_bits()).then_some((k, m))
    };
    exact(prefer).or_else(|| (0..TEN.len() as u32).find_map(exact))
}

/// A float stream: `0` for the previous value again; `10` and 3 bits for one of the 7
/// other values seen last (a metric alternating between a few values, as a train and an
/// eval loss printed under one name do); `110` for a decimal number, as the delta of its
/// integer to the previous one's at a shared scale (`0` for the same scale or `1` and 4
/// bits of a new one, then the delta); `111` for anything else, XORed as Gorilla does.
#[derive(Default, Clone, Copy)]
struct Num {
    xor: Xor,
    k: u32,
    m: i64,
    dec: bool,
    /// The last distinct values, newest first (`recent[0]` is the previous value).
    recent: [u64; 8],
    seen: usize,
}

impl Num {
    /// After every value, on both sides: it becomes the previous one (the decimal
    /// state moves only with decimal-coded values).
    fn observe(&mut self, v: f64) {
        let bits = v.to_bits();
        self.xor.prev = bits;
        let n = self.seen.min(self.recent.len());
        let at = self.recent[..n].iter().position(|&r| r == bits);
        let end = match at {
            Some(i) => i,
            None => n.min(self.recent.len() - 1),
        };
        self.recent.copy_within(0..end, 1);
        self.recent[0] = bits;
        if at.is_none() {
            self.seen += 1;
        }
    }

    fn put(&mut self, b: &mut Bits, v: f64) {
        let bits = v.to_bits();
        let n = self.seen.min(self.recent.len());
        match self.recent[..n].iter().position(|&r| r == bits) {
            Some(0) => b.put(0, 1),
            Some(i) => {
                b.put(0b10, 2);
                b.put(i as u64 - 1, 3);
            }
            None => match decimal(v, self.k) {
                Some((k, m)) => {
                    b.put(0b110, 3);
                    let same = self.dec && k == self.k;
                    if same {
                        b.put(0, 1);
                    } else {
                        b.put(1, 1);
                        b.put(k as u64, 4);
                    }
                    put_dod(b, if same { m.wrapping_sub(self.m) } else { m });
                    (self.k, self.m, self.dec) = (k, m, true);
                }
                None => {
                    b.put(0b111, 3);
                    self.xor.put(b, v);
                }
            },
        }
        self.observe(v);
    }

    fn get(&mut self, r: &mut Reader<'_>) -> Result<f64> {
        let n = self.seen.min(self.recent.len());
        let v = if !r.bit()? {
            if n == 0 {
                bail!("a metric chunk is damaged");
            }
            f64::from_bits(self.recent[0])
        } else if !r.bit()? {
            let i = r.get(3)? as usize + 1;
            if i >= n {
                bail!("a metric chunk is damaged");
            }
            f64::from_bits(self.recent[i])
        } else if !r.bit()? {
            let same = !r.bit()?;
            let k = if same { self.k } else { r.get(4)? as u32 };
            if k as usize >= TEN.len() || (same && !self.dec) {
                bail!("a metric chunk is damaged");
            }
            let d = get_dod(r)?;
            let m = if same { self.m.wrapping_add(d) } else { d };
            (self.k, self.m, self.dec) = (k, m, true);
            m as f64 / TEN[k as usize]
        } else {
            self.xor.get(r)?
        };
        self.observe(v);
        Ok(v)
    }
}

impl From<&crate::model::MetricPoint> for Point {
    fn from(p: &crate::model::MetricPoint) -> Point {
        Point {
            line: p.line,
            value: p.value,
            step: p.step,
            epoch: p.epoch,
        }
    }
}

impl From<&crate::metrics::PointRef<'_>> for Point {
    fn from(p: &crate::metrics::PointRef<'_>) -> Point {
        Point {
            line: p.line,
            value: p.value,
            step: p.step,
            epoch: p.epoch,
        }
    }
}

/// Points of several metrics in log order, grouped by metric as they come (no
/// allocation per point: a log has a handful of metric names).
#[derive(Debug, Default)]
pub struct Batch {
    pub series: Vec<(String, Vec<Point>)>,
    last: usize,
}

impl Batch {
    /// An empty batch with room for as many points per metric as `like` has (the next
    /// piece of a log holds about what the last one held: no growing copies per point).
    pub fn sized_like(like: &Batch) -> Batch {
        Batch {
            series: like
                .series
                .iter()
                .filter(|(_, pts)| !pts.is_empty())
                .map(|(name, pts)| (name.clone(), Vec::with_capacity(pts.len() + pts.len() / 8)))
                .collect(),
            last: 0,
        }
    }

    pub fn push(&mut self, name: &str, p: Point) {
        let i = if self.series.get(self.last).is_some_and(|(n, _)| n == name) {
            self.last
        } else if let Some(i) = self.series.iter().position(|(n, _)| n == name) {
            i
        } else {
            self.series.push((name.to_string(), Vec::new()));
            self.series.len() - 1
        };
        self.last = i;
        self.series[i].1.push(p);
    }
}

/// Points per stored chunk at most (a commit with more makes several).
pub const CHUNK_POINTS: usize = 65_536;

impl Batch {
    /// Every metric's points packed, in chunks of at most [`CHUNK_POINTS`].
    pub fn pack(&self) -> Packed {
        Packed {
            series: self
                .series
                .iter()
                .filter(|(_, pts)| !pts.is_empty())
                .map(|(name, pts)| {
                    let chunks = pts
                        .chunks(CHUNK_POINTS)
                        .map(|part| (part.len(), encode(part)))
                        .collect();
                    (name.clone(), chunks)
                })
                .collect(),
        }
    }
}

/// A [`Batch`] packed for the store: per metric, its chunks.
#[derive(Debug, Default)]
pub struct Packed {
    pub series: Vec<(String, Vec<PackedChunk>)>,
}

/// A chunk of one metric's points: how many, and their bytes ([`decode`] them).
pub type PackedChunk = (usize, Vec<u8>);

/// Pack `points` (in line order); [`decode`] with the same count gives them back.
pub fn encode(points: &[Point]) -> Vec<u8> {
    let mut b = Bits::new();
    let (mut line, mut dline) = (0i64, 0i64);
    let (mut step, mut dstep) = (0i64, 0i64);
    let mut value = Num::default();
    let mut epoch = Num::default();
    for p in points {
        let l = p.line as i64;
        let d = l.wrapping_sub(line);
        put_dod(&mut b, d.wrapping_sub(dline));
        (line, dline) = (l, d);
        match p.step {
            None => b.put(0, 1),
            Some(s) => {
                b.put(1, 1);
                let d = s.wrapping_sub(step);
                put_dod(&mut b, d.wrapping_sub(dstep));
                (step, dstep) = (s, d);
            }
        }
        value.put(&mut b, p.value);
        match p.epoch {
            None => b.put(0, 1),
            Some(e) => {
                b.put(1, 1);
                epoch.put(&mut b, e);
            }
        }
    }
    b.finish()
}

/// Unpack `n` points; each is handed to `f` as it is read.
pub fn decode(data: &[u8], n: usize, mut f: impl FnMut(Point)) -> Result<()> {
    let mut r = Reader { data, pos: 0 };
    let (mut line, mut dline) = (0i64, 0i64);
    let (mut step, mut dstep) = (0i64, 0i64);
    let mut value = Num::default();
    let mut epoch = Num::default();
    for _ in 0..n {
        dline = dline.wrapping_add(get_dod(&mut r)?);
        line = line.wrapping_add(dline);
        let s = if r.bit()? {
            dstep = dstep.wrapping_add(get_dod(&mut r)?);
            step = step.wrapping_add(dstep);
            Some(step)
        } else {
            None
        };
        let v = value.get(&mut r)?;
        let e = if r.bit()? {
            Some(epoch.get(&mut r)?)
        } else {
            None
        };
        f(Point {
            line: line as u64,
            value: v,
            step: s,
            epoch: e,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_sized_like_the_last_keeps_room_not_names() {
        let p = |line| Point {
            line,
            value: 0.5,
            step: None,
            epoch: None,
        };
        let mut last = Batch::default();
        for line in 0..100 {
            last.push(if line % 2 == 0 { "loss" } else { "acc" }, p(line));
        }
        last.push("once", p(100));
        let mut next = Batch::sized_like(&last);
        assert!(next.series.iter().all(|(_, pts)| pts.is_empty()));
        assert!(next.series.iter().all(|(_, pts)| pts.capacity() >= 1));
        assert!(
            next.series
                .iter()
                .find(|(n, _)| n == "loss")
                .unwrap()
                .1
                .capacity()
                >= 50
        );
        next.push("acc", p(200));
        next.push("new", p(201));
        // Only what this piece got is packed: no empty series stored for `loss` or `once`.
        let packed: Vec<(String, usize)> = next
            .pack()
            .series
            .iter()
            .map(|(n, chunks)| (n.clone(), chunks.iter().map(|(k, _)| k).sum()))
            .collect();
        assert_eq!(packed, vec![("acc".to_string(), 1), ("new".to_string(), 1)]);
        // A name absent from a piece is not carried to the one after it.
        let after = Batch::sized_like(&next);
        let names: Vec<&str> = after.series.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["acc", "new"]);
    }

    #[test]
    fn a_batch_groups_points_by_name_in_order_whatever_the_order_of_names() {
        let names = "a b c a b c b d a c c d a";
        let mut batch = Batch::default();
        for (line, n) in names.split(' ').enumerate() {
            let p = Point {
                line: line as u64,
                value: 0.0,
                step: None,
                epoch: None,
            };
            batch.push(n, p);
        }
        let got: Vec<(String, Vec<u64>)> = batch
            .series
            .iter()
            .map(|(n, pts)| (n.clone(), pts.iter().map(|p| p.line).collect()))
            .collect();
        let want: Vec<(String, Vec<u64>)> = ["a", "b", "c", "d"]
            .iter()
            .map(|w| {
                let lines = names.split(' ').enumerate();
                let lines = lines.filter(|(_, n)| n == w).map(|(i, _)| i as u64);
                (w.to_string(), lines.collect())
            })
            .collect();
        assert_eq!(got, want);
    }

    fn round_trip(points: &[Point]) -> Vec<u8> {
        let data = encode(points);
        let mut back = Vec::new();
        decode(&data, points.len(), |p| back.push(p)).unwrap();
        assert_eq!(back.len(), points.len());
        for (a, b) in points.iter().zip(&back) {
            assert_eq!(a.line, b.line);
            assert_eq!(a.step, b.step);
            assert_eq!(a.value.to_bits(), b.value.to_bits(), "{a:?} vs {b:?}");
            assert_eq!(a.epoch.map(f64::to_bits), b.epoch.map(f64::to_bits));
        }
        data
    }

    #[test]
    fn every_value_comes_back_bit_for_bit() {
        let odd = [
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            f64::MAX,
            -1e-300,
            1.0,
            1.0,
            0.123456789,
        ];
        let points: Vec<Point> = odd
            .iter()
            .enumerate()
            .map(|(i, &v)| Point {
                line: [
                    1,
                    2,
                    3,
                    1000,
                    1001,
                    5_000_000,
                    u32::MAX as u64 * 7,
                    5,
                    6,
                    7,
                    8,
                ][i],
                value: v,
                step: [
                    None,
                    Some(-5),
                    Some(i64::MAX),
                    Some(i64::MIN),
                    None,
                    Some(0),
                    Some(1),
                    Some(1),
                    Some(2),
                    None,
                    Some(3),
                ][i],
                epoch: if i % 3 == 0 { None } else { Some(v * 0.5) },
            })
            .collect();
        round_trip(&points);
        round_trip(&[]);
    }

    #[test]
    fn a_training_series_packs_into_a_few_bytes_a_point() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let points: Vec<Point> = (0..100_000u64)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // A loss falling with noise, printed with 4 decimals as loggers do.
                let noisy = 2.0 / (1.0 + i as f64 / 1000.0) + (x % 1000) as f64 / 1e5;
                Point {
                    line: 3 + i * 12,
                    value: (noisy * 1e4).round() / 1e4,
                    step: Some(i as i64),
                    epoch: Some((i / 1000) as f64),
                }
            })
            .collect();
        let data = round_trip(&points);
        let per_point = data.len() as f64 / points.len() as f64;
        assert!(per_point < 3.0, "{per_point} bytes a point");
        // Full-precision floats (an lr schedule computed in f64): Gorilla's XOR.
        let raw: Vec<Point> = (0..10_000u64)
            .map(|i| Point {
                line: 1 + i,
                value: 3e-4 * (1.0 - i as f64 / 10_000.0).powf(0.9),
                step: None,
                epoch: None,
            })
            .collect();
        round_trip(&raw);
        // A constant every 12 lines with a counting step: a few bits each.
        let flat: Vec<Point> = (0..100_000u64)
            .map(|i| Point {
                line: 1 + i * 12,
                value: 3e-4,
                step: Some(i as i64),
                epoch: None,
            })
            .collect();
        let data = round_trip(&flat);
        assert!(data.len() <= 100_000 * 5 / 8 + 8, "{} bytes", data.len());
    }

    #[test]
    fn a_metric_cycling_through_a_few_values_costs_under_two_bytes_a_point() {
        let cycle = [0.4567, 2.3051, 0.31, 0.295, 0.289124, 2.4512, 1e-5];
        let points: Vec<Point> = (0..70_000u64)
            .map(|i| Point {
                line: i * 12 + [0, 1, 2, 3, 4, 6, 9][i as usize % 7],
                value: cycle[i as usize % 7],
                step: None,
                epoch: None,
            })
            .collect();
        let data = round_trip(&points);
        assert!(data.len() < 2 * points.len(), "{} bytes", data.len());
    }

    #[test]
    fn a_damaged_chunk_is_an_error_not_a_panic() {
        let points = [Point {
            line: 1,
            value: 0.5,
            step: Some(1),
            epoch: None,
        }];
        let data = encode(&points);
        assert!(decode(&data[..data.len() - 1], 1, |_| {}).is_err() || data.len() == 1);
        assert!(decode(&[], 1, |_| {}).is_err());
        assert!(decode(&[0xff; 3], 10, |_| {}).is_err());
    }
}
