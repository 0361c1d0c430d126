//! Embedding a gallery with a backbone's perspectives, incrementally through the cache.

use std::path::Path;

use candle_core::{DType, Tensor};

use super::IndexError;
use super::cache::{CacheProblem, CacheUnwritable, EmbeddingCache, perspectives_fingerprint};
use super::gallery::{Gallery, GalleryItem, Skipped};
use crate::agff::PerspectiveEmbeddings;
use crate::model::image_io::{open_image, to_rgb8};
use crate::model::{Backbone, EmbedInput, EmbedOptions, PerspectiveSet};

/// Unit perspective vectors of every indexed image, `[n, 1+K, d]` row-major.
#[derive(Debug, Clone, Default)]
pub struct GalleryEmbeddings {
    /// The n images that were embedded, in gallery order (images that failed are left
    /// out).
    pub items: Vec<GalleryItem>,
    /// Perspectives per item, 1+K.
    pub per_item: usize,
    /// Embedding width d (the backbone's hidden size).
    pub dim: usize,
    /// The `n·(1+K)·d` values, row-major `[n, 1+K, d]`.
    pub data: Vec<f32>,
}

impl GalleryEmbeddings {
    /// Number of embedded images n.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no image was embedded.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Item `i`'s `(1+K)·d` values.
    pub fn item(&self, i: usize) -> &[f32] {
        let per = self.per_item * self.dim;
        &self.data[i * per..(i + 1) * per]
    }

    /// The unit embeddings `[indices.len(), 1+K, d]` of the given items, on the CPU (they
    /// were normalised when embedded, so no pass over them checks it again).
    pub fn embeddings(&self, indices: &[usize]) -> Result<PerspectiveEmbeddings, IndexError> {
        let mut flat = Vec::with_capacity(indices.len() * self.per_item * self.dim);
        for &i in indices {
            flat.extend_from_slice(self.item(i));
        }
        let t = Tensor::from_vec(
            flat,
            (indices.len(), self.per_item, self.dim),
            &candle_core::Device::Cpu,
        )?;
        Ok(PerspectiveEmbeddings::assume_unit(t)?)
    }
}

/// What an indexing run did.
#[derive(Debug, Clone, Default)]
pub struct EmbedReport {
    /// Images embedded by the backbone in this run.
    pub embedded: usize,
    /// Images whose vectors came from the cache.
    pub from_cache: usize,
    /// Images that passed the scan but could not be decoded or embedded.
    pub failed: Vec<Skipped>,
    /// A damaged cache file that was set aside and rebuilt.
    pub cache_problem: Option<CacheProblem>,
    /// Why the cache could not be read or written (disk full, read-only, a file where the
    /// folder should be): the run went on from memory, nothing was half-written.
    pub cache_unwritable: Option<CacheUnwritable>,
}

/// One input's unit perspective vectors, flattened.
pub fn embed_unit(
    backbone: &dyn Backbone,
    input: &EmbedInput,
    perspectives: &PerspectiveSet,
) -> Result<Vec<f32>, IndexError> {
    embed_unit_soft(backbone, input, perspectives, &[])
}

/// [`embed_unit`] with soft-prompt vectors (one per perspective that has soft tokens, e.g.
/// from a fine-tune; empty: the backbone's own).
pub fn embed_unit_soft(
    backbone: &dyn Backbone,
    input: &EmbedInput,
    perspectives: &PerspectiveSet,
    soft: &[Option<Tensor>],
) -> Result<Vec<f32>, IndexError> {
    let options = EmbedOptions {
        soft_prompts: soft.to_vec(),
        ..EmbedOptions::default()
    };
    embed_unit_with(backbone, input, perspectives, &options)
}

/// [`embed_unit`] with every embedding option (soft prompts, truncation of long texts).
pub fn embed_unit_with(
    backbone: &dyn Backbone,
    input: &EmbedInput,
    perspectives: &PerspectiveSet,
    options: &EmbedOptions,
) -> Result<Vec<f32>, IndexError> {
    let (unit, _) = PerspectiveEmbeddings::embed(backbone, input, perspectives, options)?;
    Ok(unit.tensor().flatten_all()?.to_vec1::<f32>()?)
}

/// Embeds every gallery image not yet in the cache, saving the cache as it goes (so a
/// cancelled run loses nothing). `progress(done, total)` counts images handled.
pub fn embed_gallery(
    backbone: &dyn Backbone,
    perspectives: &PerspectiveSet,
    gallery: &Gallery,
    cache_dir: &Path,
    cancel: &dyn Fn() -> bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(GalleryEmbeddings, EmbedReport), IndexError> {
    embed_gallery_soft(
        backbone,
        perspectives,
        &[],
        gallery,
        cache_dir,
        cancel,
        progress,
    )
}

/// The bytes of soft-prompt vectors, for the cache's perspective fingerprint.
fn soft_bytes(soft: &[Option<Tensor>]) -> Result<Vec<u8>, IndexError> {
    let mut bytes = Vec::new();
    for (i, t) in soft.iter().enumerate() {
        bytes.extend_from_slice(&(i as u64).to_le_bytes());
        if let Some(t) = t {
            for v in t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()? {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    Ok(bytes)
}

/// [`embed_gallery`] with soft-prompt vectors; they are part of the cache key.
pub fn embed_gallery_soft(
    backbone: &dyn Backbone,
    perspectives: &PerspectiveSet,
    soft: &[Option<Tensor>],
    gallery: &Gallery,
    cache_dir: &Path,
    cancel: &dyn Fn() -> bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(GalleryEmbeddings, EmbedReport), IndexError> {
    let options = EmbedOptions {
        soft_prompts: soft.to_vec(),
        ..EmbedOptions::default()
    };
    embed_gallery_with(
        backbone,
        perspectives,
        &options,
        gallery,
        cache_dir,
        cancel,
        progress,
    )
}

/// [`embed_gallery`] with every embedding option; the soft prompts and the Matryoshka
/// dimensions are part of the cache key.
pub fn embed_gallery_with(
    backbone: &dyn Backbone,
    perspectives: &PerspectiveSet,
    options: &EmbedOptions,
    gallery: &Gallery,
    cache_dir: &Path,
    cancel: &dyn Fn() -> bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(GalleryEmbeddings, EmbedReport), IndexError> {
    let soft = options.soft_prompts.as_slice();
    perspectives.validate().map_err(IndexError::Input)?;
    let per_item = perspectives.perspectives.len();
    let dim = options.dim.unwrap_or_else(|| backbone.hidden_size());
    let mut key = soft_bytes(soft)?;
    if let Some(d) = options.dim {
        key.extend_from_slice(format!("dim={d}").as_bytes());
    }
    let fingerprint = perspectives_fingerprint(perspectives, &key);
    let (mut cache, cache_problem) =
        EmbeddingCache::open(cache_dir, backbone.identity(), &fingerprint, per_item, dim);
    let mut report = EmbedReport {
        cache_problem,
        ..EmbedReport::default()
    };
    let mut out = GalleryEmbeddings {
        per_item,
        dim,
        ..GalleryEmbeddings::default()
    };
    let total = gallery.items.len();
    let mut unsaved = 0;
    for (n, item) in gallery.items.iter().enumerate() {
        if cancel() {
            cache.save()?;
            return Err(IndexError::Cancelled);
        }
        if let Some(v) = cache.get(&item.content_hash) {
            out.data.extend_from_slice(v);
            out.items.push(item.clone());
            report.from_cache += 1;
        } else {
            let vectors = open_image(&item.path)
                .map_err(|e| e.to_string())
                .and_then(|img| {
                    embed_unit_with(
                        backbone,
                        &EmbedInput::image(to_rgb8(&img)),
                        perspectives,
                        options,
                    )
                    .map_err(|e| e.to_string())
                });
            match vectors {
                Ok(v) => {
                    out.data.extend_from_slice(&v);
                    out.items.push(item.clone());
                    cache.insert(item.content_hash.clone(), v)?;
                    report.embedded += 1;
                    unsaved += 1;
                }
                Err(reason) => report.failed.push(Skipped {
                    path: item.path.clone(),
                    reason,
                }),
            }
        }
        if unsaved >= 256 {
            cache.save()?;
            unsaved = 0;
        }
        progress(n + 1, total);
    }
    cache.save()?;
    report.cache_unwritable = cache.unwritable().cloned();
    Ok((out, report))
}
