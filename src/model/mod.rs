//! Backbones and where they run.

pub mod device;

pub use device::{DeviceChoice, DeviceError};
