//! agff-lens: see why a multimodal embedding model retrieved what it retrieved.
//!
//! The crate is layered, data flowing one way (lower layers never import upper ones):
//!
//! - [`util`]: the bottom layer: atomic writes and the seeded random generators;
//! - [`model`]: backbones and the compute device;
//! - [`agff`]: the AGFF-Embed method on candle tensors: perspective embeddings, the four
//!   perception-pattern similarities, adaptive fusion, InfoNCE and EGA
//!   (`../shared/docs/method.md` §1–§5);
//! - [`scenes`]: seeded procedural scenes with captions, and the P-MMVP pair benchmark;
//! - [`train`]: training the demo model from scratch and fine-tuning soft prompts and
//!   fusion with AGFF InfoNCE and EGA (§4–§6);
//! - [`index`]: galleries (recursive scan, bad files skipped with reasons), the
//!   checksummed, locked embedding cache, and search by the fused score;
//! - [`explain`]: heatmaps per perspective and pattern (attribution, mean-baseline, attention,
//!   similarity), candidate comparisons and the pointing game;
//! - [`session`]: the workflow shared by the app and the CLI: load a model, apply a
//!   fine-tune, index a gallery, search, explain;
//! - [`app`]: the desktop app (eframe on wgpu); all model work runs on its worker thread;
//! - [`cli`]: the headless command line, the edge where errors become messages.

pub mod agff;
pub mod app;
pub mod cli;
pub mod explain;
pub mod index;
pub mod model;
pub mod scenes;
pub mod session;
pub mod train;
pub mod util;
