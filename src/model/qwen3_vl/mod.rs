//! Our own Qwen3-VL in candle, computing what transformers 5.x computes.

pub mod config;

pub use config::Qwen3VlConfig;
