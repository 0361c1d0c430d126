//! The integration tests, one module per concern, linked into one test binary: each
//! binary links the whole crate with egui, wgpu and candle, so one instead of eleven keeps
//! CI's disk use and link time small. Run one concern with a filter, as in
//! `cargo test --test integration app::`.

mod common;

mod agff_core;
mod app;
mod cli;
mod demo_weights;
mod embed_cli;
mod index;
mod model_errors;
mod qwen3vl_parity;
mod scenes;
mod siglip_parity;
mod training;
