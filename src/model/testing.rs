//! Helpers shared by the model's unit tests.

use candle_core::{Device, Tensor};

/// Fixed pseudo-random values in [-1, 1), so that a failing run reproduces
/// (`Tensor::randn` on the CPU is not seedable).
pub fn uniform(n: usize, seed: u64) -> Vec<f32> {
    crate::util::rng::SplitMix64::new(seed).uniform_pm1(n)
}

/// [`uniform`] values as a CPU tensor of `shape`.
pub fn uniform_tensor(shape: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(uniform(shape.iter().product(), seed), shape, &Device::Cpu).unwrap()
}

/// The largest element of `t` (any shape).
pub fn largest(t: &Tensor) -> f32 {
    t.flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// The largest absolute difference of two tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    largest(&(a - b).unwrap().abs().unwrap())
}
