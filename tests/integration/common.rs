//! Helpers the test files share: comparing tensors of any device and dtype on the CPU.
//! Each file uses the part it needs.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};

/// Largest absolute difference of two tensors of the same shape (compared in f32 on the
/// CPU, where the references are).
pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    let on_cpu = |t: &Tensor| {
        t.to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    };
    let (a, b) = (on_cpu(a), on_cpu(b));
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Cosine of two tensors' values (flattened), accumulated in f64.
pub fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    let values = |t: &Tensor| -> Vec<f32> {
        t.to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (a, b) = (values(a), values(b));
    let dot: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}
