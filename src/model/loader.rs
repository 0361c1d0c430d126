//! Loading a backbone from a folder, whatever its architecture, and the dtype flag.

use std::path::Path;

use candle_core::{DType, Device};

use super::backbone::Backbone;
use super::error::{ModelError, Result};
use super::qwen3_vl::Qwen3Vl;

/// Parses `f32`, `bf16` or `f16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" | "half" => Ok(DType::F16),
        other => Err(ModelError::Input(format!(
            "unknown dtype {other:?}: expected f32, bf16 or f16"
        ))),
    }
}

/// Loads the model in a Hugging Face folder; `config.json` says which architecture.
pub fn load_folder(dir: &Path, dtype: DType, device: &Device) -> Result<Box<dyn Backbone>> {
    load_folder_with(dir, dtype, device, &ImageOptions::default())
}

/// Which image preprocessing a user asked for (`None`: the model's default, see
/// [`crate::model::qwen3_vl::default_profile`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageOptions {
    /// The profile: the released embedder's path or the processor's.
    pub profile: Option<ProfileKind>,
    /// Fewest pixels after resizing (overrides the profile's).
    pub min_pixels: Option<usize>,
    /// Most pixels after resizing (overrides the profile's): the CPU user's speed knob.
    pub max_pixels: Option<usize>,
}

/// The two preprocessing profiles of a Qwen3-VL model
/// ([`crate::model::qwen3_vl::PreprocessProfile`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileKind {
    /// `qwen_vl_utils.fetch_image` with the embedder's budget, as `Qwen3VLEmbedder` runs.
    Embedder,
    /// transformers' processor resizing itself.
    Processor,
}

/// [`load_folder`] with the image preprocessing chosen (models without a choice, such as
/// a demo folder, ignore it).
pub fn load_folder_with(
    dir: &Path,
    dtype: DType,
    device: &Device,
    images: &ImageOptions,
) -> Result<Box<dyn Backbone>> {
    if !dir.is_dir() {
        return Err(ModelError::MissingFile(
            dir.to_path_buf(),
            "the model folder",
        ));
    }
    let config = dir.join("config.json");
    if !config.is_file() {
        return Err(ModelError::MissingFile(dir.to_path_buf(), "config.json"));
    }
    if super::demo::DemoModel::is_demo_folder(dir) {
        return Ok(Box::new(super::demo::DemoModel::load(dir, device)?));
    }
    if super::siglip::is_siglip_folder(dir) {
        // SigLIP has one preprocessing (its processor's fixed size): no profile to choose.
        if *images != ImageOptions::default() {
            tracing::warn!(
                "{}: SigLIP resizes every image to its processor's size; --preprocess, --min-pixels and --max-pixels are for Qwen3-VL and are ignored",
                dir.display()
            );
        }
        return Ok(Box::new(super::siglip::Siglip::load(dir, dtype, device)?));
    }
    // Otherwise Qwen3-VL; its loader rejects other architectures by name.
    let mut model = Qwen3Vl::load(dir, dtype, device)?;
    if *images != ImageOptions::default() {
        use super::qwen3_vl::PreprocessProfile;
        let base = match images.profile {
            Some(ProfileKind::Embedder) => PreprocessProfile::EMBEDDER,
            Some(ProfileKind::Processor) => PreprocessProfile::PROCESSOR,
            None => model.preprocess_profile(),
        };
        if let (Some(min), Some(max)) = (images.min_pixels, images.max_pixels)
            && min > max
        {
            return Err(ModelError::Input(format!(
                "--min-pixels {min} is more than --max-pixels {max}"
            )));
        }
        model.set_preprocess(base.with_budget(images.min_pixels, images.max_pixels));
    }
    Ok(Box::new(model))
}
