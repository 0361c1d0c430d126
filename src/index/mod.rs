//! The gallery engine the app and the CLI share: finding images in a folder, embedding
//! them through an on-disk cache, and ranking them for a query by the fused AGFF score.

mod cache;
mod compare;
mod embed;
mod gallery;
pub mod projection;
mod search;

use std::path::PathBuf;

pub use cache::{
    CacheProblem, CacheUnwritable, EmbeddingCache, default_cache_dir, perspectives_fingerprint,
};
pub use compare::{RankAgreement, rank_agreement};
pub use embed::{
    EmbedReport, GalleryEmbeddings, embed_gallery, embed_gallery_soft, embed_gallery_with,
    embed_unit, embed_unit_soft, embed_unit_with,
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
    /// Reading the gallery folder, or reading, writing or locking the cache, failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The gallery path exists but is not a folder.
    #[error("{0}: not a folder")]
    NotAFolder(PathBuf),
    /// The gallery folder holds no image with one of [`IMAGE_EXTENSIONS`] that could be
    /// indexed.
    #[error("{0}: no images found (looked for {exts})", exts = IMAGE_EXTENSIONS.join(", "))]
    Empty(PathBuf),
    /// The caller's cancel flag was set during a scan or an indexing run (what was
    /// embedded so far is saved in the cache).
    #[error("cancelled")]
    Cancelled,
    /// The embedding cache cannot be used: an entry of the wrong length, or a header that
    /// cannot be encoded.
    #[error("embedding cache: {0}")]
    Cache(String),
    /// An input is not usable: an invalid perspective set, or a query whose length does
    /// not match the gallery's `(1+K)·d`.
    #[error("{0}")]
    Input(String),
    /// The backbone failed to embed an image or a query.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// Normalising or scoring embeddings failed.
    #[error(transparent)]
    Agff(#[from] crate::agff::AgffError),
    /// A candle tensor operation failed.
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
