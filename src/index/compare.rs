//! How far two models' rankings of one gallery agree: the overlap of their top k and
//! Spearman's rank correlation over the images both ranked.

use std::collections::HashMap;
use std::hash::Hash;

use serde::Serialize;

/// Agreement of two rankings of the same items.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RankAgreement {
    /// The k of `overlap_at_k`.
    pub k: usize,
    /// Items in both top k, divided by k (1: the same k items, in any order).
    pub overlap_at_k: f64,
    /// Spearman's ρ over the items both rankings hold, in `[-1, 1]` (1: the same order,
    /// −1: reversed); `None` with fewer than two such items.
    pub spearman: Option<f64>,
    /// How many items both rankings hold.
    pub items: usize,
}

impl std::fmt::Display for RankAgreement {
    /// `overlap@10 0.40 (4 of 10), Spearman's ρ 0.123 over the 300 images both ranked`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = (self.overlap_at_k * self.k as f64).round() as usize;
        write!(
            f,
            "overlap@{k} {:.2} ({shared} of {k}), Spearman's ρ ",
            self.overlap_at_k,
            k = self.k
        )?;
        match self.spearman {
            Some(r) => write!(f, "{r:.3}")?,
            None => write!(f, "–")?,
        }
        write!(f, " over the {} images both ranked", self.items)
    }
}

/// Compares two rankings, best first, of items identified by `T` (gallery paths). Items
/// only one ranking holds (an image one model could not read) count only against the
/// overlap; ρ is computed over the common items, re-ranked among themselves.
pub fn rank_agreement<T: Eq + Hash>(a: &[T], b: &[T], k: usize) -> RankAgreement {
    let k = k.max(1);
    let top_a: std::collections::HashSet<&T> = a.iter().take(k).collect();
    let shared_top = b.iter().take(k).filter(|x| top_a.contains(x)).count();
    let in_b: HashMap<&T, usize> = b.iter().enumerate().map(|(i, x)| (x, i)).collect();
    // Common items in a's order, with their position in b.
    let common: Vec<usize> = a.iter().filter_map(|x| in_b.get(x).copied()).collect();
    let n = common.len();
    // Rank within the common items on b's side.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| common[i]);
    let mut rank_b = vec![0usize; n];
    for (r, &i) in order.iter().enumerate() {
        rank_b[i] = r;
    }
    let spearman = (n >= 2).then(|| {
        let d2: f64 = (0..n)
            .map(|i| {
                let d = i as f64 - rank_b[i] as f64;
                d * d
            })
            .sum();
        let n = n as f64;
        1.0 - 6.0 * d2 / (n * (n * n - 1.0))
    });
    RankAgreement {
        k,
        overlap_at_k: shared_top as f64 / k as f64,
        spearman,
        items: n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_reversed_and_partial_rankings() {
        let a = ["p", "q", "r", "s", "t"];
        let same = rank_agreement(&a, &a, 3);
        assert_eq!(same.overlap_at_k, 1.0);
        assert_eq!(same.spearman, Some(1.0));
        let rev: Vec<&str> = a.iter().rev().copied().collect();
        let r = rank_agreement(&a, &rev, 2);
        assert_eq!(r.overlap_at_k, 0.0);
        assert_eq!(r.spearman, Some(-1.0));
        // One swap of neighbours among 5: Σd² = 2, ρ = 1 − 12/120 = 0.9.
        let swapped = ["q", "p", "r", "s", "t"];
        let s = rank_agreement(&a, &swapped, 2);
        assert_eq!(s.overlap_at_k, 1.0);
        assert!((s.spearman.unwrap() - 0.9).abs() < 1e-12);
        // An item only one side holds: ρ over the 4 common ones (same order), overlap
        // counts the missing one.
        let missing = ["q", "r", "s", "t"];
        let m = rank_agreement(&a, &missing, 2);
        assert_eq!(m.items, 4);
        assert_eq!(m.spearman, Some(1.0));
        assert_eq!(m.overlap_at_k, 0.5);
        assert_eq!(rank_agreement(&["x"], &["x"], 10).spearman, None);
        assert_eq!(
            s.to_string(),
            "overlap@2 1.00 (2 of 2), Spearman's ρ 0.900 over the 5 images both ranked"
        );
    }
}
