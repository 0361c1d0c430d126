//! Our own Qwen3-VL in candle, computing what transformers 5.x computes.

pub mod config;
pub mod model;
pub mod preprocess;
pub mod rope;
pub mod text;
pub mod vision;

pub use config::Qwen3VlConfig;
pub use model::{BranchStrategy, Qwen3Vl, default_profile};
pub use preprocess::{PreprocessProfile, Resampler, resized_image};
