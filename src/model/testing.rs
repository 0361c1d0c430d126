//! Helpers shared by the model's unit tests.

use candle_core::{Device, Tensor};

/// Fixed pseudo-random values in [-1, 1) from an LCG, so that a failing run reproduces
/// (`Tensor::randn` on the CPU is not seedable).
pub fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
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
