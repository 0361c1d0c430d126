//! Errors of the model layer: every one names the file or tensor and the problem.

use std::path::PathBuf;

/// What can go wrong loading or running a backbone.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading a file (config, tokenizer, weights, image, perspective set) failed.
    #[error("{path}: {source}")]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (`config.json`, `preprocessor_config.json`, a perspective set, …) does
    /// not parse or does not have the expected fields.
    #[error("{path}: not valid JSON for {what}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What the file was expected to hold, e.g. `a Qwen3-VL config`.
        what: &'static str,
        /// serde_json's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A required file or folder does not exist: the model folder, `config.json`,
    /// `tokenizer.json`, the weights or a shard named in the shard index. Holds the path
    /// and a description of what was expected there.
    #[error("{0}: missing {1}")]
    MissingFile(PathBuf, &'static str),
    /// `config.json` names neither `model_type` `qwen3_vl` nor a `Qwen3VL*` architecture.
    #[error("{path}: unknown architecture {found:?}; supported: {supported}")]
    UnknownArchitecture {
        /// The config file.
        path: PathBuf,
        /// The `model_type` (or the `architectures`) the config gives.
        found: String,
        /// What this build loads.
        supported: &'static str,
    },
    /// `config.json` has no `vision_config`: a text-only model, which cannot embed
    /// images. Holds the config's path.
    #[error("{0}: the config has no vision settings (`vision_config`), so it cannot embed images")]
    MissingVisionConfig(PathBuf),
    /// A config parses but its values are inconsistent or out of range (e.g. head counts,
    /// `mrope_section`, patch sizes that differ between `config.json` and
    /// `preprocessor_config.json`).
    #[error("{path}: invalid config: {reason}")]
    BadConfig {
        /// The config file (or a placeholder for a config built in code).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor the architecture needs is not in the weights.
    #[error("tensor `{name}` is missing from the weights in {dir}")]
    MissingTensor {
        /// The tensor's name, e.g. `model.visual.patch_embed.proj.weight`.
        name: String,
        /// The model folder or weights file searched.
        dir: PathBuf,
    },
    /// A tensor in the weights has another shape than the config implies.
    #[error("tensor `{name}` in {file} has shape {found:?}, expected {expected:?}")]
    TensorShape {
        /// The tensor's name.
        name: String,
        /// The safetensors file that holds it.
        file: PathBuf,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A weights file cannot be read as safetensors (or a tensor in it cannot be loaded),
    /// a shard index lists no tensors or names a shard outside the folder, or the demo
    /// model's weights cannot be serialised.
    #[error("{path}: cannot read weights: {reason}")]
    BadWeights {
        /// The weights file or shard index.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// An image file is not a known format, cannot be decoded (or is over the decoding
    /// limits), or has no pixels.
    #[error("{path}: cannot decode image: {reason}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// `tokenizer.json` cannot be loaded, or it fails to encode a text.
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// The tokenizers crate's message.
        reason: String,
    },
    /// An input or a setting is not usable: an empty or too elongated image, more than one
    /// image, a missing or mis-shaped soft prompt, an invalid perspective set, an unknown
    /// dtype.
    #[error("input: {0}")]
    Input(String),
    /// A text (with its prompt, image tokens and the longest perspective suffix) longer
    /// than the model reads; checked before anything is allocated. `--truncate` cuts the
    /// text to fit instead.
    #[error(
        "input: the text is {tokens} tokens with its prompt, longer than the {limit} the \
         model reads ({why}); shorten it, or pass --truncate to cut it to fit"
    )]
    TooLong {
        /// Tokens of the longest branch (prompt, image tokens, text, perspective suffix).
        tokens: usize,
        /// The most the model reads.
        limit: usize,
        /// Where the limit comes from.
        why: String,
    },
    /// Resolving a `--model` argument (a folder, the Hub, the Hugging Face cache) failed;
    /// the message names the argument and what to do.
    #[error("{0}")]
    ModelArg(String),
    /// A candle tensor operation failed (device, dtype, shape or out-of-memory error).
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
