//! Deterministic shuffled batching.
//!
//! The order of epoch `e` depends only on `(seed, e)`: a ChaCha8 stream selected by the epoch drives a
//! Fisher-Yates shuffle. So a run resumed at epoch `e` sees exactly the batches the uninterrupted run saw,
//! and no state beyond the seed needs saving.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The order in which epoch `epoch` visits examples `0..n`.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order
}

/// The index batches of epoch `epoch`: `epoch_order` cut into chunks of `batch_size`; the last chunk may be
/// short. A `batch_size` of 0 is treated as 1.
pub fn epoch_batches(n: usize, batch_size: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    epoch_order(n, seed, epoch)
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_order_and_a_permutation() {
        let a = epoch_order(1000, 7, 3);
        assert_eq!(a, epoch_order(1000, 7, 3));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(a, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn epochs_and_seeds_differ() {
        assert_ne!(epoch_order(100, 7, 0), epoch_order(100, 7, 1));
        assert_ne!(epoch_order(100, 7, 0), epoch_order(100, 8, 0));
    }

    #[test]
    fn batches_cover_everything_once() {
        let b = epoch_batches(103, 10, 1, 0);
        assert_eq!(b.len(), 11);
        assert_eq!(b[10].len(), 3);
        let mut all: Vec<usize> = b.concat();
        all.sort_unstable();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
    }
}
