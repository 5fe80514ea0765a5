//! Key hashing and the cheap arithmetic the hash-based pickers share.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Hashes a request's affinity key (client address, header value, cookie) to the 64-bit key the
/// hash-based pickers take. XXH3 is fast on short inputs and mixes every input bit into every
/// output bit, which the pickers rely on: they use the key's high bits directly.
#[inline]
pub fn hash_key(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// Hashes a backend id with a seed, for placement (Maglev offsets and skips, ring points).
#[inline]
pub(crate) fn hash_id(id: &[u8], seed: u64) -> u64 {
    xxh3_64_with_seed(id, seed)
}

/// Maps a well-mixed 64-bit hash uniformly onto `0..n` without a division (Lemire's
/// multiply-shift reduction): a 64-bit `%` costs more than the rest of a Maglev pick.
#[inline]
pub(crate) fn reduce(hash: u64, n: usize) -> usize {
    ((u128::from(hash) * n as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_stays_in_range_and_spreads() {
        let mut counts = [0u32; 7];
        for i in 0..70_000u64 {
            let slot = reduce(hash_key(&i.to_le_bytes()), 7);
            counts[slot] += 1;
        }
        for count in counts {
            assert!((9_500..10_500).contains(&count), "{counts:?}");
        }
        assert_eq!(reduce(u64::MAX, 7), 6);
        assert_eq!(reduce(0, 7), 0);
    }
}
