//! Memory-mapped safetensors weights: one `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Every lookup checks the tensor's shape and names the
//! file it came from when something is off.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::error::{ModelError, Result};

/// File name of a single-file checkpoint.
pub const SINGLE_WEIGHTS: &str = "model.safetensors";
/// File name of a sharded checkpoint's index.
pub const WEIGHT_INDEX: &str = "model.safetensors.index.json";

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

/// The shard files a `model.safetensors.index.json` names, each once, in a stable order.
/// The one parser of shard indexes (the loader and the Hub download use it).
///
/// # Errors
/// [`ModelError::Io`]/[`ModelError::Json`] when the index cannot be read or parsed,
/// [`ModelError::BadWeights`] when it lists no tensors or names a shard that is not a
/// plain file name inside the model folder (absolute, `..`, a drive or backslash path):
/// a model folder stays in its folder.
pub fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let parsed: ShardIndex = serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: index.to_path_buf(),
        what: "a safetensors shard index",
        source,
    })?;
    let shards: BTreeSet<String> = parsed.weight_map.into_values().collect();
    if shards.is_empty() {
        return Err(ModelError::BadWeights {
            path: index.to_path_buf(),
            reason: "the shard index lists no tensors".into(),
        });
    }
    if let Some(bad) = shards.iter().find(|s| !is_plain_relative(s)) {
        return Err(ModelError::BadWeights {
            path: index.to_path_buf(),
            reason: format!("shard `{bad}` is not a file name inside the model folder"),
        });
    }
    Ok(shards.into_iter().collect())
}

/// A relative path of plain components (no root, `.`, `..`, drive or backslash).
fn is_plain_relative(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('\\')
        && !name.contains(':')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// The safetensors files of a model folder, in a stable order.
///
/// # Errors
/// [`ModelError::MissingFile`] when the folder has neither file or a shard is missing,
/// and the errors of [`shard_names`].
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(SINGLE_WEIGHTS);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join(WEIGHT_INDEX);
    if !index_path.is_file() {
        return Err(ModelError::MissingFile(
            dir.to_path_buf(),
            "model.safetensors or model.safetensors.index.json",
        ));
    }
    let mut files = Vec::new();
    for shard in shard_names(&index_path)? {
        let path = dir.join(shard);
        if !path.is_file() {
            return Err(ModelError::MissingFile(
                path,
                "a weight shard named in the index",
            ));
        }
        files.push(path);
    }
    Ok(files)
}

/// File name of the digest memo inside the cache folder ([`crate::util::cache_dir`]).
const DIGEST_MEMO: &str = "weight-digests.json";

/// What the memo remembers of one weight file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct MemoEntry {
    len: u64,
    modified_ns: u128,
    blake3: String,
}

/// The blake3 of a whole file (hex), streamed through a memory map on all cores, and
/// remembered in `memo_dir` per (canonical path, size, modification time), so a
/// multi-gigabyte checkpoint is hashed once and a file rewritten in place, even at the
/// same size, is hashed again. The memo is an optimisation: one that cannot be read or
/// written is ignored.
///
/// # Errors
/// [`ModelError::Io`] when the file cannot be read.
pub fn file_digest(path: &Path, memo_dir: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
    let modified_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .to_string_lossy()
        .into_owned();
    let memo_path = memo_dir.join(DIGEST_MEMO);
    let mut memo: BTreeMap<String, MemoEntry> = std::fs::read(&memo_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if let Some(e) = memo.get(&key)
        && e.len == meta.len()
        && e.modified_ns == modified_ns
        && modified_ns != 0
    {
        return Ok(e.blake3.clone());
    }
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_mmap_rayon(path)
        .map_err(|e| ModelError::io(path, e))?;
    let digest = hasher.finalize().to_hex().to_string();
    memo.insert(
        key,
        MemoEntry {
            len: meta.len(),
            modified_ns,
            blake3: digest.clone(),
        },
    );
    let written = serde_json::to_vec(&memo)
        .map_err(std::io::Error::other)
        .and_then(|bytes| {
            std::fs::create_dir_all(memo_dir)?;
            crate::util::write_atomic(&memo_path, &bytes)
        });
    if let Err(e) = written {
        tracing::debug!("weight digest memo {}: {e}", memo_path.display());
    }
    Ok(digest)
}

/// A digest of the weight files: their whole contents ([`file_digest`],
/// remembered per path, size and modification time), so a tensor rewritten in place gives
/// another model identity and the embedding cache cannot serve stale vectors. Short hex
/// (16 digits) over each file's name and digest, in the order given.
///
/// # Errors
/// [`ModelError::Io`] when a file cannot be read.
pub fn weights_digest(files: &[PathBuf]) -> Result<String> {
    let memo = crate::util::cache_dir();
    let mut hasher = blake3::Hasher::new();
    for path in files {
        let name = path
            .file_name()
            .map(std::ffi::OsStr::as_encoded_bytes)
            .unwrap_or_default();
        hasher.update(name);
        hasher.update(file_digest(path, &memo)?.as_bytes());
    }
    Ok(hasher.finalize().to_hex()[..16].to_string())
}

/// Weights of one model, memory-mapped, converted to `dtype` on `device` when read; or
/// random normal values of whatever shape is asked for (for benchmarks at a real
/// configuration without its checkpoint).
pub struct Weights {
    dir: PathBuf,
    files: Vec<(PathBuf, MmapedSafetensors)>,
    by_name: HashMap<String, usize>,
    dtype: DType,
    device: Device,
    random: bool,
}

impl Weights {
    /// Maps every safetensors file of `dir`.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let mut files = Vec::new();
        let mut by_name = HashMap::new();
        for path in weight_files(dir)? {
            // SAFETY: the file is mapped read-only; like every mmap-based loader we rely on
            // nobody truncating the weight files while the model is loaded.
            let st =
                unsafe { MmapedSafetensors::new(&path) }.map_err(|e| ModelError::BadWeights {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            for (name, _) in st.tensors() {
                by_name.insert(name, files.len());
            }
            files.push((path, st));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            by_name,
            dtype,
            device: device.clone(),
            random: false,
        })
    }

    /// Random weights, N(0, 0.02²) (norm weights N(1, 0.02²)), for timing a configuration.
    pub fn random(dtype: DType, device: &Device) -> Self {
        Self {
            dir: PathBuf::from("(random weights)"),
            files: Vec::new(),
            by_name: HashMap::new(),
            dtype,
            device: device.clone(),
            random: true,
        }
    }

    /// The safetensors files, in load order (empty for random weights).
    pub fn files(&self) -> Vec<PathBuf> {
        self.files.iter().map(|(path, _)| path.clone()).collect()
    }

    /// The folder the weights came from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The dtype tensors are converted to.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device tensors are loaded on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.random || self.by_name.contains_key(name)
    }

    /// Loads tensor `name` in the model dtype, checking that its shape is `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.load(name, shape, self.dtype)
    }

    /// Loads tensor `name` in f32 whatever the model dtype (norm weights, position tables).
    pub fn get_f32(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.load(name, shape, DType::F32)
    }

    fn load(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        if self.random {
            let mean = if name.contains("norm") && name.ends_with(".weight") {
                1.0
            } else {
                0.0
            };
            return Ok(Tensor::randn(mean, 0.02f32, shape, &self.device)?.to_dtype(dtype)?);
        }
        let Some(&file) = self.by_name.get(name) else {
            return Err(ModelError::MissingTensor {
                name: name.to_string(),
                dir: self.dir.clone(),
            });
        };
        let (path, st) = &self.files[file];
        let view = st.get(name).map_err(|e| ModelError::BadWeights {
            path: path.clone(),
            reason: format!("tensor `{name}`: {e}"),
        })?;
        if view.shape() != shape {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                file: path.clone(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let tensor = st
            .load(name, &self.device)
            .map_err(|e| ModelError::BadWeights {
                path: path.clone(),
                reason: format!("tensor `{name}`: {e}"),
            })?;
        Ok(tensor.to_dtype(dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_digests_are_remembered_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.safetensors");
        std::fs::write(&file, vec![7u8; 100_000]).unwrap();
        let memo = dir.path().join("memo");
        let first = file_digest(&file, &memo).unwrap();
        assert_eq!(first, blake3::hash(&[7u8; 100_000]).to_hex().to_string());
        // The memo answers for an unchanged file: plant a marker to see it used.
        let memo_file = memo.join(DIGEST_MEMO);
        let text = std::fs::read_to_string(&memo_file).unwrap();
        std::fs::write(&memo_file, text.replace(&first, "remembered")).unwrap();
        assert_eq!(file_digest(&file, &memo).unwrap(), "remembered");
        // Same size, new bytes and a new modification time: hashed again.
        std::fs::write(&file, vec![8u8; 100_000]).unwrap();
        let f = std::fs::File::options().write(true).open(&file).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        drop(f);
        assert_eq!(
            file_digest(&file, &memo).unwrap(),
            blake3::hash(&[8u8; 100_000]).to_hex().to_string()
        );
        // A memo that cannot be written is no error.
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, b"file").unwrap();
        assert!(file_digest(&file, &blocked).is_ok());
    }

    #[test]
    fn a_shard_index_may_not_leave_the_model_folder() {
        let dir = tempfile::tempdir().unwrap();
        for (shard, refused) in [
            ("/etc/passwd", true),
            ("../outside.safetensors", true),
            ("sub/../../x.safetensors", true),
            ("C:\\\\weights.safetensors", true),
            ("model-00001-of-00001.safetensors", false),
        ] {
            let index = format!(r#"{{"weight_map":{{"a":"{shard}"}}}}"#);
            std::fs::write(dir.path().join(WEIGHT_INDEX), index).unwrap();
            let err = weight_files(dir.path()).unwrap_err().to_string();
            if refused {
                assert!(
                    err.contains("not a file name inside the model folder"),
                    "{shard}: {err}"
                );
            } else {
                // A plain name is accepted, and then missing.
                assert!(
                    err.contains("a weight shard named in the index"),
                    "{shard}: {err}"
                );
            }
        }
    }
}
