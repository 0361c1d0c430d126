//! The gallery engine the app and the CLI share: finding images in a folder, embedding
//! them through an on-disk cache, and ranking them for a query by the fused AGFF score.

mod cache;
mod embed;
mod gallery;
mod search;

use std::path::PathBuf;

pub use cache::{CacheProblem, EmbeddingCache, default_cache_dir, perspectives_fingerprint};
pub use embed::{
    EmbedReport, GalleryEmbeddings, embed_gallery, embed_gallery_soft, embed_unit, embed_unit_soft,
};
pub use gallery::{
    Gallery, GalleryItem, IMAGE_EXTENSIONS, MAX_FILE_BYTES, Skipped, scan_gallery, thumbnail,
};
pub use search::{
    DEFAULT_FIRST_STAGE, FirstStageOn, Hit, SearchOptions, first_stage, first_stage_recall, search,
};

/// What can go wrong indexing or searching.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: not a folder")]
    NotAFolder(PathBuf),
    #[error("{0}: no images found (looked for {exts})", exts = IMAGE_EXTENSIONS.join(", "))]
    Empty(PathBuf),
    #[error("cancelled")]
    Cancelled,
    #[error("embedding cache: {0}")]
    Cache(String),
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Agff(#[from] crate::agff::AgffError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl IndexError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IndexError::Io {
            path: path.into(),
            source,
        }
    }
}
