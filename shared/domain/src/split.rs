//! Seeded, platform-independent train/test splits and k-fold partitions.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// A permutation of `0..n` determined only by `seed` (ChaCha20, Fisher–Yates).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut idx: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        // Multiply-shift maps a 64-bit draw onto 0..=i without a modulo.
        let j = ((rng.next_u64() as u128 * (i as u128 + 1)) >> 64) as usize;
        idx.swap(i, j);
    }
    idx
}

/// Row indices of a train/test split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Training rows.
    pub train: Vec<usize>,
    /// Held-out rows.
    pub test: Vec<usize>,
}

/// Splits `n` rows into train and test; `test_fraction` of them (rounded) go to test.
pub fn train_test_split(n: usize, test_fraction: f64, seed: u64) -> Split {
    let perm = permutation(n, seed);
    let n_test = ((n as f64) * test_fraction.clamp(0.0, 1.0)).round() as usize;
    let (test, train) = perm.split_at(n_test.min(n));
    Split {
        train: train.to_vec(),
        test: test.to_vec(),
    }
}

/// `k` folds over `n` rows: each element is (train rows, validation rows) of one fold.
pub fn k_fold(n: usize, k: usize, seed: u64) -> Vec<Split> {
    let k = k.clamp(2, n.max(2));
    let perm = permutation(n, seed);
    (0..k)
        .map(|f| {
            let lo = f * n / k;
            let hi = (f + 1) * n / k;
            let test = perm[lo..hi].to_vec();
            let train = perm[..lo].iter().chain(&perm[hi..]).copied().collect();
            Split { train, test }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_a_partition_and_seeded() {
        let s = train_test_split(1000, 0.2, 42);
        assert_eq!(s.test.len(), 200);
        let mut all: Vec<usize> = s.train.iter().chain(&s.test).copied().collect();
        all.sort();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_eq!(s, train_test_split(1000, 0.2, 42));
        assert_ne!(s, train_test_split(1000, 0.2, 43));
    }

    #[test]
    fn folds_cover_every_row_once() {
        let folds = k_fold(103, 5, 7);
        let mut seen: Vec<usize> = folds.iter().flat_map(|f| f.test.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..103).collect::<Vec<_>>());
        for f in &folds {
            assert_eq!(f.train.len() + f.test.len(), 103);
        }
    }
}
