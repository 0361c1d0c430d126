//! The crate's one seeded random generator, SplitMix64 (Steele, Lea and Flood 2014): the
//! same seed gives the same stream on every platform. Scenes, the demo model's initial
//! weights, the benchmarks' synthetic data and the tests' fixed inputs all draw from it
//! (`Tensor::randn` on the CPU cannot be seeded).
//!
//! The scene stream the committed demo weights learned from depends on it bit for bit;
//! `tests/integration/scenes.rs` pins that stream.

/// SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output mix of one 64-bit value.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for sub-stream `stream` of `seed` (e.g. scene `i` of a data set).
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    mix64(seed ^ mix64(stream.wrapping_add(GOLDEN)))
}

impl SplitMix64 {
    /// A generator whose stream depends only on `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// Uniform in `0..n` (0 when `n == 0`).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `[0, 1)` with 24 bits of precision.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f32) -> bool {
        self.unit() < p
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// One element of a non-empty slice, `None` for an empty one.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        items.get(self.below(items.len())).copied()
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }

    /// One element of a constant, non-empty array.
    pub(crate) fn of<T: Copy, const N: usize>(&mut self, items: &[T; N]) -> T {
        items[self.below(N).min(N.saturating_sub(1))]
    }

    /// Uniform in `(0, 1)` with 53 bits of precision (never 0, so `ln` is safe).
    pub fn unit_f64(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// A standard normal sample (Box–Muller over two [`SplitMix64::unit_f64`] draws).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit_f64(), self.unit_f64());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// A fast, roughly normal sample (the sum of two uniforms from one draw, scaled to
    /// unit variance): synthetic benchmark data, where speed matters more than tails.
    pub fn rough_normal(&mut self) -> f32 {
        let z = self.next_u64();
        let a = (z as u32) as f32 / u32::MAX as f32;
        let b = ((z >> 32) as u32) as f32 / u32::MAX as f32;
        (a + b - 1.0) * 2.449_489_7
    }

    /// `n` values uniform in `[-1, 1)`, as f32: fixed inputs for tests and benchmarks, and
    /// seeded initial weights (the cosine scene heads).
    pub fn uniform_pm1(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.unit() * 2.0 - 1.0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // First outputs of SplitMix64 seeded with 0 (published reference values).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn below_and_unit_stay_in_range() {
        let mut r = SplitMix64::new(7);
        for n in 1..50 {
            assert!(r.below(n) < n);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert_eq!(r.below(0), 0);
        assert_eq!(r.pick::<u8>(&[]), None);
    }

    #[test]
    fn normal_samples_have_unit_moments() {
        let mut r = SplitMix64::new(3);
        let xs: Vec<f64> = (0..20_000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
        let u = r.uniform_pm1(1000);
        assert!(u.iter().all(|v| (-1.0..1.0).contains(v)));
    }
}
