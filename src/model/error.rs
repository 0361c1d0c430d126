//! Errors of the model layer: every one names the file or tensor and the problem.

use std::path::PathBuf;

/// What can go wrong loading or running a backbone.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON for {what}: {source}")]
    Json {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}: missing {1}")]
    MissingFile(PathBuf, &'static str),
    #[error("{path}: unknown architecture {found:?}; supported: {supported}")]
    UnknownArchitecture {
        path: PathBuf,
        found: String,
        supported: &'static str,
    },
    #[error("{0}: the config has no vision settings (`vision_config`), so it cannot embed images")]
    MissingVisionConfig(PathBuf),
    #[error("{path}: invalid config: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("tensor `{name}` is missing from the weights in {dir}")]
    MissingTensor { name: String, dir: PathBuf },
    #[error("tensor `{name}` in {file} has shape {found:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        file: PathBuf,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: cannot read weights: {reason}")]
    BadWeights { path: PathBuf, reason: String },
    #[error("{path}: cannot decode image: {reason}")]
    Image { path: PathBuf, reason: String },
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("input: {0}")]
    Input(String),
    /// Resolving a `--model` argument (a folder, the Hub, the Hugging Face cache) failed;
    /// the message names the argument and what to do.
    #[error("{0}")]
    ModelArg(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result type of the model layer.
pub type Result<T> = std::result::Result<T, ModelError>;
