//! Backbones and where they run: devices, weights, image decoding, perspectives, and the
//! model implementations.

pub mod backbone;
pub mod cpu;
pub mod demo;
pub mod device;
pub mod error;
mod fused;
pub mod hub;
pub mod image_io;
pub mod loader;
pub mod ops;
pub mod perspective;
pub mod qwen3_vl;
pub mod siglip;
pub mod weights;

#[cfg(test)]
pub(crate) mod testing;

pub use backbone::{
    Backbone, BranchTokens, EmbedInput, EmbedOptions, Embedding, ModelIdentity, TrainedFusion,
    VisualTokens,
};
pub use device::{DeviceChoice, DeviceError};
pub use error::{ModelError, Result};
pub use perspective::{Perspective, PerspectiveSet};
