//! A metric series held for charting: points are folded on arrival into at most
//! [`MAX_BUCKETS`] min/max buckets (a bucket's size doubles when they run out), so drawing
//! 1 M points costs the same as drawing a few thousand, and appending is O(1).

/// Upper bound on buckets kept per series.
pub const MAX_BUCKETS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    n: usize,
    x_first: f64,
    y_first: f64,
    x_last: f64,
    y_last: f64,
    y_min: f64,
    x_at_min: f64,
    y_max: f64,
    x_at_max: f64,
}

impl Bucket {
    fn new(x: f64, y: f64) -> Bucket {
        Bucket {
            n: 1,
            x_first: x,
            y_first: y,
            x_last: x,
            y_last: y,
            y_min: y,
            x_at_min: x,
            y_max: y,
            x_at_max: x,
        }
    }
    fn add(&mut self, x: f64, y: f64) {
        self.n += 1;
        self.x_last = x;
        self.y_last = y;
        if y < self.y_min {
            self.y_min = y;
            self.x_at_min = x;
        }
        if y > self.y_max {
            self.y_max = y;
            self.x_at_max = x;
        }
    }
    fn merge(&mut self, o: &Bucket) {
        self.n += o.n;
        self.x_last = o.x_last;
        self.y_last = o.y_last;
        if o.y_min < self.y_min {
            self.y_min = o.y_min;
            self.x_at_min = o.x_at_min;
        }
        if o.y_max > self.y_max {
            self.y_max = o.y_max;
            self.x_at_max = o.x_at_max;
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Series {
    buckets: Vec<Bucket>,
    per_bucket: usize,
    /// Every point pushed, drawable or not.
    pub len: usize,
    /// Points that were NaN or infinite (kept out of the chart, counted).
    pub non_finite: usize,
    pub last: Option<(f64, f64)>,
    x_min: f64,
    x_max: f64,
    y_min: f64,
    y_max: f64,
}

impl Series {
    pub fn new() -> Series {
        Series {
            per_bucket: 1,
            ..Default::default()
        }
    }

    pub fn push(&mut self, x: f64, y: f64) {
        self.len += 1;
        if !x.is_finite() || !y.is_finite() {
            self.non_finite += 1;
            return;
        }
        if self.buckets.is_empty() {
            self.x_min = x;
            self.x_max = x;
            self.y_min = y;
            self.y_max = y;
        } else {
            self.x_min = self.x_min.min(x);
            self.x_max = self.x_max.max(x);
            self.y_min = self.y_min.min(y);
            self.y_max = self.y_max.max(y);
        }
        self.last = Some((x, y));
        match self.buckets.last_mut() {
            Some(b) if b.n < self.per_bucket.max(1) => b.add(x, y),
            _ => self.buckets.push(Bucket::new(x, y)),
        }
        if self.buckets.len() > MAX_BUCKETS {
            self.halve();
        }
    }

    fn halve(&mut self) {
        let mut merged = Vec::with_capacity(self.buckets.len() / 2 + 1);
        for pair in self.buckets.chunks(2) {
            let mut b = pair[0];
            if let Some(o) = pair.get(1) {
                b.merge(o);
            }
            merged.push(b);
        }
        self.buckets = merged;
        self.per_bucket = self.per_bucket.max(1) * 2;
    }

    /// Drawable points: ((x_min, x_max), (y_min, y_max)) of everything finite.
    pub fn bounds(&self) -> Option<([f64; 2], [f64; 2])> {
        if self.buckets.is_empty() {
            return None;
        }
        Some(([self.x_min, self.x_max], [self.y_min, self.y_max]))
    }

    /// At most about `2 * columns` points that keep every bucket's extremes, in x order:
    /// a line through them looks like a line through every point.
    pub fn downsample(&self, columns: usize) -> Vec<(f64, f64)> {
        let columns = columns.max(1);
        let group = self.buckets.len().div_ceil(columns).max(1);
        let mut out = Vec::with_capacity(2 * columns + 2);
        for chunk in self.buckets.chunks(group) {
            let mut b = chunk[0];
            for o in &chunk[1..] {
                b.merge(o);
            }
            if b.n == 1 {
                out.push((b.x_first, b.y_first));
                continue;
            }
            let (a, z) = if b.x_at_min <= b.x_at_max {
                ((b.x_at_min, b.y_min), (b.x_at_max, b.y_max))
            } else {
                ((b.x_at_max, b.y_max), (b.x_at_min, b.y_min))
            };
            out.push(a);
            if z != a {
                out.push(z);
            }
        }
        if let (Some(last), Some(end)) = (self.last, out.last())
            && *end != last
        {
            out.push(last);
        }
        out
    }

    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }
}

/// Buckets a [`Trend`] keeps.
pub const TREND_BUCKETS: usize = 64;

/// A whole run's values folded into at most [`TREND_BUCKETS`] means (a bucket's size
/// doubles when they run out): the jobs list's trend column costs a few hundred bytes per
/// job whatever the run's length, and shows the whole run, not its last few points.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trend {
    buckets: Vec<(f64, u32)>,
    per: u32,
}

impl Trend {
    pub fn push(&mut self, y: f64) {
        if !y.is_finite() {
            return;
        }
        let per = self.per.max(1);
        match self.buckets.last_mut() {
            Some((sum, n)) if *n < per => {
                *sum += y;
                *n += 1;
            }
            _ => self.buckets.push((y, 1)),
        }
        if self.buckets.len() > TREND_BUCKETS {
            self.buckets = self
                .buckets
                .chunks(2)
                .map(|c| c.iter().fold((0.0, 0), |(s, n), (s2, n2)| (s + s2, n + n2)))
                .collect();
            self.per = per * 2;
        }
    }

    /// The bucket means, oldest first.
    pub fn means(&self) -> Vec<f64> {
        self.buckets
            .iter()
            .map(|(s, n)| s / (*n).max(1) as f64)
            .collect()
    }
}

/// `values` resampled to at most `width` means of consecutive groups.
pub fn resample(values: &[f64], width: usize) -> Vec<f64> {
    if values.len() <= width || width == 0 {
        return values.to_vec();
    }
    (0..width)
        .map(|k| {
            let (a, b) = (k * values.len() / width, (k + 1) * values.len() / width);
            let g = &values[a..b.max(a + 1)];
            g.iter().sum::<f64>() / g.len() as f64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trend_keeps_the_whole_run_in_bounded_buckets() {
        let mut t = Trend::default();
        for i in 0..1_000_000 {
            t.push(1_000_000.0 - i as f64);
        }
        let m = t.means();
        assert!(m.len() <= TREND_BUCKETS && m.len() >= TREND_BUCKETS / 2);
        // The first bucket is the start of the run, the last its end: a falling line.
        assert!(m[0] > 900_000.0 && *m.last().unwrap() < 100_000.0);
        assert!(m.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(resample(&m, 8).len(), 8);
    }

    #[test]
    fn a_million_points_fold_into_bounded_buckets_keeping_extremes() {
        let mut s = Series::new();
        for i in 0..1_000_000u32 {
            let y = if i == 777_777 {
                -50.0
            } else {
                (i as f64 / 1000.0).sin()
            };
            s.push(i as f64, y);
        }
        assert!(s.bucket_count() <= MAX_BUCKETS);
        let pts = s.downsample(200);
        assert!(pts.len() <= 2 * 200 + 2, "{}", pts.len());
        // The one spike survives decimation.
        assert!(pts.iter().any(|p| p.1 == -50.0));
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0), "x order");
        assert_eq!(s.bounds().unwrap().1[0], -50.0);
        assert_eq!(
            pts.last().copied(),
            Some((999_999.0, (999_999f64 / 1000.0).sin()))
        );
    }

    #[test]
    fn non_finite_values_are_counted_not_drawn() {
        let mut s = Series::new();
        s.push(0.0, 1.0);
        s.push(1.0, f64::NAN);
        s.push(2.0, f64::INFINITY);
        assert_eq!((s.len, s.non_finite), (3, 2));
        assert_eq!(s.downsample(10), vec![(0.0, 1.0)]);
    }
}
