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
    // Qwen3-VL is the one real architecture so far; its loader rejects others by name.
    Ok(Box::new(Qwen3Vl::load(dir, dtype, device)?))
}
