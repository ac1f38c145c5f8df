//! Large byte buffers used again instead of freed. A log follow moves every byte through
//! buffers of a MiB or two (read from the transport, cut into pieces, printed); a fresh
//! buffer costs a page fault and a page cleared per 4 KiB written into it (the allocator
//! hands memory of this size back to the system), which was 70 000 faults per GiB
//! followed. Bounded: at most [`KEEP`] buffers of at most [`MAX`] bytes are kept.

use std::sync::Mutex;

/// The most buffers kept.
const KEEP: usize = 12;
/// Buffers of this size and more are kept; smaller ones cost little to make.
const MIN: usize = 256 << 10;
/// Larger buffers are freed (kept, they would hold too much memory).
const MAX: usize = 4 << 20;

/// Buffers kept.
struct Pool(Mutex<Vec<Vec<u8>>>);

static POOL: Pool = Pool(Mutex::new(Vec::new()));

/// An empty buffer with room for at least `cap` bytes: the smallest kept one large
/// enough, if any.
pub fn take(cap: usize) -> Vec<u8> {
    POOL.take(cap)
}

/// Give a buffer back: kept for [`take`] when its size is worth keeping and there is
/// room, freed otherwise.
pub fn give(buf: Vec<u8>) {
    POOL.give(buf)
}

impl Pool {
    fn take(&self, cap: usize) -> Vec<u8> {
        if cap >= MIN {
            let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
            // The smallest that will do: a larger one is kept for a larger need.
            let fit = (kept.iter().enumerate())
                .filter(|(_, b)| b.capacity() >= cap)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            if let Some(i) = fit {
                return kept.swap_remove(i);
            }
        }
        Vec::with_capacity(cap)
    }

    fn give(&self, mut buf: Vec<u8>) {
        if !(MIN..=MAX).contains(&buf.capacity()) {
            return;
        }
        buf.clear();
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < KEEP {
            kept.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again_empty_and_the_pool_stays_bounded() {
        let pool = Pool(Mutex::new(Vec::new()));
        let mut b = pool.take(3 << 20);
        b.extend_from_slice(b"abc");
        let ptr = b.as_ptr();
        pool.give(b);
        // Too large for what is kept: a new one.
        let larger = pool.take((3 << 20) + 1);
        assert_ne!(larger.as_ptr(), ptr);
        let again = pool.take(1 << 20);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), ptr, "the same allocation");
        // Too small or too large: not kept.
        pool.give(Vec::with_capacity(1024));
        pool.give(Vec::with_capacity(MAX + 1));
        assert!(pool.0.lock().unwrap().is_empty());
        for _ in 0..3 * KEEP {
            pool.give(Vec::with_capacity(MIN));
        }
        assert_eq!(pool.0.lock().unwrap().len(), KEEP);
    }
}
