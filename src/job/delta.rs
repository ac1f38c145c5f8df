//! Block delta of a changed file against the machine's older copy, as rsync does it: the
//! machine sends a signature of its copy (per block, a rolling checksum and a CRC-32), and the sender finds those blocks anywhere in the new content with the
//! rolling checksum, so data inserted in the middle (shifting the rest) moves only about
//! the inserted bytes. The result is a list of operations: copy blocks of the old file, or
//! insert literal bytes. The machine rebuilds the file from them (`assets/remote/delta.py`)
//! and checks its SHA-256 before it replaces the old one.
//!
//! Rolling checksum: Adler-32 (zlib's, so the machine's Python computes it in C), rolled one
//! byte at a time. The second check is the block's CRC-32 (zlib's too): 64 bits per
//! block in all. A false match cannot corrupt a file, only cost a resend: the rebuilt file
//! must have the sender's SHA-256 or it is not used (and the file is then sent whole), so
//! the per-block check is chosen for speed (on both sides, at memory speed) and size
//! (8 bytes a block) rather than strength.

use std::collections::HashMap;

const MOD: u32 = 65_521;

/// The block size for a file of `size` bytes: a power of two near twice its square root,
/// 4 KiB to 128 KiB (a 50 MB file: 16 KiB blocks, 3 200 of them, 25 KB of signature).
pub fn block_size(size: u64) -> usize {
    let target = 2.0 * (size as f64).sqrt();
    (target as usize)
        .next_power_of_two()
        .clamp(4 << 10, 128 << 10)
}

/// Bytes per block in a signature: Adler-32 and CRC-32, little-endian.
pub const SIG_ENTRY: usize = 8;

/// The machine's description of its copy of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub block: usize,
    /// The old file's size (its last block may be short).
    pub size: u64,
    pub weak: Vec<u32>,
    pub strong: Vec<[u8; 4]>,
}

/// zlib's Adler-32 of `data` (SIMD).
pub fn adler32(data: &[u8]) -> u32 {
    let mut h = simd_adler32::Adler32::new();
    h.write(data);
    h.finish()
}

fn strong(block: &[u8]) -> [u8; 4] {
    crc32fast::hash(block).to_le_bytes()
}

/// The signature of `data` cut in `block`-byte blocks (what the machine computes).
pub fn signature(data: &[u8], block: usize) -> Signature {
    let mut s = Signature {
        block,
        size: data.len() as u64,
        weak: Vec::new(),
        strong: Vec::new(),
    };
    for b in data.chunks(block) {
        s.weak.push(adler32(b));
        s.strong.push(strong(b));
    }
    s
}

/// Parse `count` entries of a signature (`SIG_ENTRY` bytes each, weak little-endian).
pub fn parse_entries(bytes: &[u8], block: usize, size: u64) -> Option<Signature> {
    if !bytes.len().is_multiple_of(SIG_ENTRY) {
        return None;
    }
    let mut s = Signature {
        block,
        size,
        weak: Vec::with_capacity(bytes.len() / SIG_ENTRY),
        strong: Vec::with_capacity(bytes.len() / SIG_ENTRY),
    };
    for e in bytes.chunks_exact(SIG_ENTRY) {
        s.weak.push(u32::from_le_bytes(e[..4].try_into().ok()?));
        s.strong.push(e[4..].try_into().ok()?);
    }
    let want = size.div_ceil(block as u64) as usize;
    (s.weak.len() == want).then_some(s)
}

impl Signature {
    /// The signature as stored: size and block size (u64 LE), then the entries.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + self.weak.len() * SIG_ENTRY);
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&(self.block as u64).to_le_bytes());
        for (w, s) in self.weak.iter().zip(&self.strong) {
            v.extend_from_slice(&w.to_le_bytes());
            v.extend_from_slice(s);
        }
        v
    }

    pub fn from_bytes(b: &[u8]) -> Option<Signature> {
        let size = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        let block = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?) as usize;
        if block == 0 {
            return None;
        }
        parse_entries(&b[16..], block, size)
    }
}

/// One step of rebuilding the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `count` old blocks from block `first` (the last one may be short).
    Copy { first: usize, count: usize },
    /// `len` bytes of the new content from `at`.
    Literal { at: usize, len: usize },
}

/// The operations that turn the old file into `new`, or None when matching stopped paying
/// (a literal run past a quarter of the file and 8 MiB, with nothing matched before it:
/// the file is better sent whole than searched byte by byte).
pub fn diff(new: &[u8], sig: &Signature) -> Option<Vec<Op>> {
    let b = sig.block;
    let n = new.len();
    // Full-size old blocks by weak checksum; a bit filter in front of the map.
    let full = (sig.size / b as u64) as usize;
    let mut table: HashMap<u32, Vec<u32>> = HashMap::with_capacity(full);
    let mut filter = vec![0u64; 1 << 14]; // 2^20 bits
    for k in 0..full {
        let w = sig.weak[k];
        table.entry(w).or_default().push(k as u32);
        let h = (w ^ (w >> 20)) & 0xF_FFFF;
        filter[(h >> 6) as usize] |= 1 << (h & 63);
    }
    let give_up = (n / 4).max(8 << 20);
    let mut ops: Vec<Op> = Vec::new();
    let push = |ops: &mut Vec<Op>, op: Op| match (ops.last_mut(), op) {
        (
            Some(Op::Copy { first, count }),
            Op::Copy {
                first: f2,
                count: c2,
            },
        ) if *first + *count == f2 => *count += c2,
        (Some(Op::Literal { at, len }), Op::Literal { at: a2, len: l2 }) if *at + *len == a2 => {
            *len += l2
        }
        (_, Op::Literal { len: 0, .. }) => {}
        _ => ops.push(op),
    };
    let mut lit = 0usize; // start of the pending literal
    let mut i = 0usize;
    let mut matched_any = false;
    // Weak checksum of new[i..i+b], rolled.
    let (mut a, mut bb) = (0u32, 0u32);
    let mut fresh = true;
    let mut next_expected: Option<usize> = None;
    while full > 0 && i + b <= n {
        if fresh {
            let w = adler32(&new[i..i + b]);
            a = w & 0xffff;
            bb = w >> 16;
            fresh = false;
        }
        let w = (bb << 16) | a;
        let h = (w ^ (w >> 20)) & 0xF_FFFF;
        if filter[(h >> 6) as usize] & (1 << (h & 63)) != 0
            && let Some(cands) = table.get(&w)
        {
            let s = strong(&new[i..i + b]);
            // The block after the last one matched first: runs stay runs.
            let hit = next_expected
                .filter(|k| cands.contains(&(*k as u32)) && sig.strong[*k] == s)
                .or_else(|| {
                    cands
                        .iter()
                        .map(|k| *k as usize)
                        .find(|k| sig.strong[*k] == s)
                });
            if let Some(k) = hit {
                push(
                    &mut ops,
                    Op::Literal {
                        at: lit,
                        len: i - lit,
                    },
                );
                push(&mut ops, Op::Copy { first: k, count: 1 });
                matched_any = true;
                i += b;
                lit = i;
                fresh = true;
                next_expected = Some(k + 1);
                continue;
            }
        }
        if i - lit > give_up && !matched_any {
            return None;
        }
        // Roll one byte: out new[i], in new[i + b].
        if i + b < n {
            let out = new[i] as u32;
            let inn = new[i + b] as u32;
            a = (a + MOD - out + inn) % MOD;
            // b' = b - len*out + a' - 1
            let sub = ((b as u64 * out as u64) % MOD as u64) as u32;
            bb = (bb + 2 * MOD - sub + a - 1) % MOD;
        }
        i += 1;
    }
    // The old file's short last block, when the new content ends with it.
    let tail = (sig.size % b as u64) as usize;
    if tail > 0 && n - lit >= tail {
        let k = full;
        let end = &new[n - tail..];
        if adler32(end) == sig.weak[k] && strong(end) == sig.strong[k] {
            push(
                &mut ops,
                Op::Literal {
                    at: lit,
                    len: n - tail - lit,
                },
            );
            push(&mut ops, Op::Copy { first: k, count: 1 });
            return Some(ops);
        }
    }
    push(
        &mut ops,
        Op::Literal {
            at: lit,
            len: n - lit,
        },
    );
    Some(ops)
}

/// Literal bytes in `ops`.
pub fn literal_bytes(ops: &[Op]) -> usize {
    ops.iter()
        .map(|o| match o {
            Op::Literal { len, .. } => *len,
            Op::Copy { .. } => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `ops` rebuild from `old` (the machine's side, `delta.py`, in Rust).
    fn apply(old: &[u8], block: usize, ops: &[Op], new: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for op in ops {
            match *op {
                Op::Copy { first, count } => {
                    let s = (first * block).min(old.len());
                    let e = ((first + count) * block).min(old.len());
                    out.extend_from_slice(&old[s..e]);
                }
                Op::Literal { at, len } => out.extend_from_slice(&new[at..at + len]),
            }
        }
        out
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn adler32_is_zlibs() {
        // Known values (zlib.adler32 in Python).
        assert_eq!(adler32(b""), 1);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
        let big = noise(100_000, 7);
        // Rolling equals computing afresh.
        let b = 4096;
        let w0 = adler32(&big[..b]);
        let (mut a, mut bb) = (w0 & 0xffff, w0 >> 16);
        for i in 0..5000 {
            let out = big[i] as u32;
            let inn = big[i + b] as u32;
            a = (a + MOD - out + inn) % MOD;
            let sub = ((b as u64 * out as u64) % MOD as u64) as u32;
            bb = (bb + 2 * MOD - sub + a - 1) % MOD;
            assert_eq!((bb << 16) | a, adler32(&big[i + 1..i + 1 + b]), "at {i}");
        }
    }

    #[test]
    fn an_insertion_in_the_middle_moves_about_the_inserted_bytes() {
        let old = noise(3_000_000, 1);
        let b = block_size(old.len() as u64);
        let sig = signature(&old, b);
        let mut new = old.clone();
        let ins = noise(100_000, 2);
        new.splice(1_234_567..1_234_567, ins.iter().copied());
        let ops = diff(&new, &sig).unwrap();
        assert_eq!(apply(&old, b, &ops, &new), new);
        let lit = literal_bytes(&ops);
        assert!(lit >= 100_000 && lit <= 100_000 + 2 * b, "{lit}");
        // An append, an in-place change, a deletion, a shrink below a block.
        for edit in 0..4 {
            let mut new = old.clone();
            match edit {
                0 => new.extend_from_slice(&noise(50_000, 3)),
                1 => new[500_000..600_000].copy_from_slice(&noise(100_000, 4)),
                2 => {
                    new.drain(10_000..70_000);
                }
                _ => new.truncate(1000),
            }
            let ops = diff(&new, &sig).unwrap();
            assert_eq!(apply(&old, b, &ops, &new), new, "edit {edit}");
            assert!(literal_bytes(&ops) <= 100_000 + 2 * b, "edit {edit}");
        }
        // The old short last block is found at the new end.
        let mut grown = noise(500_000, 9);
        let old2 = grown[..300_001].to_vec();
        let sig2 = signature(&old2, block_size(old2.len() as u64));
        grown.truncate(300_001);
        let ops = diff(&grown, &sig2).unwrap();
        assert_eq!(literal_bytes(&ops), 0, "{ops:?}");
    }

    #[test]
    fn a_new_content_is_given_up_early() {
        let old = noise(10 << 20, 5);
        let sig = signature(&old, block_size(old.len() as u64));
        assert!(diff(&noise(10 << 20, 6), &sig).is_none());
    }

    #[test]
    fn signature_entries_round_trip() {
        let data = noise(70_000, 11);
        let sig = signature(&data, 4096);
        let mut bytes = Vec::new();
        for (w, s) in sig.weak.iter().zip(&sig.strong) {
            bytes.extend_from_slice(&w.to_le_bytes());
            bytes.extend_from_slice(s);
        }
        assert_eq!(parse_entries(&bytes, 4096, 70_000), Some(sig.clone()));
        assert_eq!(Signature::from_bytes(&sig.to_bytes()), Some(sig.clone()));
        assert_eq!(parse_entries(&bytes[..24], 4096, 70_000), None);
    }
}
