//! The on-disk embedding cache: one file per (model identity, perspective set), entries
//! keyed by image content hash. Written atomically (temporary file, fsync, rename),
//! checksummed (blake3 over everything before the checksum), and guarded by an exclusive
//! lock on a sibling `.lock` file, so two instances never interleave their writes. A file
//! that is cut short, altered or from another version is reported and rebuilt.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::IndexError;
use crate::model::{ModelIdentity, PerspectiveSet};

const MAGIC: &[u8; 8] = b"AGFFEMB1";
const CHECKSUM_LEN: usize = 32;

/// What the cache file says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Header {
    model: String,
    weights_digest: String,
    perspectives: String,
    /// Vectors per item (1+K) and their width.
    per_item: usize,
    dim: usize,
    keys: Vec<String>,
}

/// Cached unit perspective vectors by image content hash.
#[derive(Debug)]
pub struct EmbeddingCache {
    path: PathBuf,
    model: ModelIdentity,
    perspectives: String,
    per_item: usize,
    dim: usize,
    entries: HashMap<String, Vec<f32>>,
    dirty: bool,
    /// Set when the cache cannot be used on disk: it then lives in memory only.
    unwritable: Option<CacheUnwritable>,
}

/// Why the cache could not be read or written on disk. The cache is an optimisation: the
/// run goes on from memory and nothing is half-written; the next run embeds again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheUnwritable {
    /// The cache folder, or the file in it, that failed.
    pub path: PathBuf,
    /// The cause in words: the disk is full, a read-only file system, no permission, a
    /// file where the folder should be, or the operating system's message.
    pub cause: String,
}

impl std::fmt::Display for CacheUnwritable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: the embedding cache cannot be used ({}); going on without it, so the \
             next run embeds these images again",
            self.path.display(),
            self.cause
        )
    }
}

/// `e` (met at `path`) as a cause a user can act on.
fn cause(path: &Path, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            format!("the disk is full: {e}")
        }
        ErrorKind::ReadOnlyFilesystem => format!("a read-only file system: {e}"),
        ErrorKind::PermissionDenied => format!("no permission to write there: {e}"),
        ErrorKind::NotADirectory | ErrorKind::AlreadyExists => {
            // create_dir_all on a path with a file in it.
            let file = path
                .ancestors()
                .find(|a| a.is_file())
                .unwrap_or(path)
                .display()
                .to_string();
            format!("{file} is a file where the cache folder should be")
        }
        _ => e.to_string(),
    }
}

/// A fingerprint of a perspective set: names, instructions and soft-token counts (and
/// the soft vectors' values when given), so editing one re-embeds.
pub fn perspectives_fingerprint(set: &PerspectiveSet, soft: &[u8]) -> String {
    let mut h = blake3::Hasher::new();
    for p in &set.perspectives {
        h.update(p.name.as_bytes());
        h.update(&[0]);
        h.update(p.instruction.as_bytes());
        h.update(&[0]);
        h.update(&(p.soft_tokens as u64).to_le_bytes());
    }
    h.update(soft);
    h.finalize().to_hex()[..16].to_string()
}

/// Where caches live: `$AGFF_LENS_CACHE`, else `$XDG_CACHE_HOME/agff-lens`, else
/// `~/.cache/agff-lens`.
pub fn default_cache_dir() -> PathBuf {
    crate::util::cache_dir()
}

/// A problem found with an existing cache file (it is then rebuilt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheProblem {
    /// The cache file.
    pub path: PathBuf,
    /// Why it could not be used (not a cache file, checksum mismatch, written for another
    /// model or perspective set, a non-finite value, …).
    pub reason: String,
}

impl EmbeddingCache {
    /// The cache file for this model and perspective set inside `dir`.
    pub fn file_for(dir: &Path, model: &ModelIdentity, perspectives: &str) -> PathBuf {
        let mut h = blake3::Hasher::new();
        h.update(model.name.as_bytes());
        h.update(&[0]);
        h.update(model.weights_digest.as_bytes());
        h.update(&[0]);
        h.update(model.preprocess.as_bytes());
        h.update(&[0]);
        h.update(perspectives.as_bytes());
        dir.join(format!("embeddings-{}.bin", &h.finalize().to_hex()[..20]))
    }

    /// Opens (or starts) the cache in `dir`. A damaged file is not used: the problem is
    /// returned with an empty cache that will replace the file on the next save. A folder
    /// that cannot be created, read or locked gives a cache in memory only
    /// ([`EmbeddingCache::unwritable`] says why); it never fails.
    pub fn open(
        dir: &Path,
        model: &ModelIdentity,
        perspectives: &str,
        per_item: usize,
        dim: usize,
    ) -> (Self, Option<CacheProblem>) {
        let path = Self::file_for(dir, model, perspectives);
        let mut cache = Self {
            path: path.clone(),
            model: model.clone(),
            perspectives: perspectives.to_string(),
            per_item,
            dim,
            entries: HashMap::new(),
            dirty: false,
            unwritable: None,
        };
        if let Err(e) = std::fs::create_dir_all(dir) {
            cache.give_up(dir, &e);
            return (cache, None);
        }
        let _lock = match lock(&path) {
            Ok(l) => l,
            Err((at, e)) => {
                cache.give_up(&at, &e);
                return (cache, None);
            }
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (cache, None),
            Err(e) => {
                cache.give_up(&path, &e);
                return (cache, None);
            }
        };
        match cache.parse(&bytes) {
            Ok(entries) => {
                cache.entries = entries;
                (cache, None)
            }
            Err(reason) => {
                cache.dirty = true;
                (cache, Some(CacheProblem { path, reason }))
            }
        }
    }

    /// Why the cache lives in memory only, if it does (set by [`EmbeddingCache::open`] or
    /// by a [`EmbeddingCache::save`] that failed).
    pub fn unwritable(&self) -> Option<&CacheUnwritable> {
        self.unwritable.as_ref()
    }

    fn give_up(&mut self, at: &Path, e: &std::io::Error) {
        tracing::debug!("embedding cache {}: {e}", at.display());
        self.unwritable = Some(CacheUnwritable {
            path: at.to_path_buf(),
            cause: cause(at, e),
        });
    }

    fn parse(&self, bytes: &[u8]) -> Result<HashMap<String, Vec<f32>>, String> {
        let min = MAGIC.len() + 8 + CHECKSUM_LEN;
        if bytes.len() < min {
            return Err(format!(
                "cut short: {} bytes, less than the smallest valid cache",
                bytes.len()
            ));
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err("not an agff-lens embedding cache (bad magic bytes)".into());
        }
        let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if blake3::hash(body).as_bytes() != checksum {
            return Err("checksum mismatch: the file was cut short or altered".into());
        }
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&body[MAGIC.len()..MAGIC.len() + 8]);
        let header_len = u64::from_le_bytes(len8) as usize;
        let start = MAGIC.len() + 8;
        let header_bytes = body
            .get(start..start.saturating_add(header_len))
            .ok_or("header length runs past the end")?;
        let header: Header =
            serde_json::from_slice(header_bytes).map_err(|e| format!("bad header: {e}"))?;
        if header.model != self.model.name
            || header.weights_digest != self.model.weights_digest
            || header.perspectives != self.perspectives
        {
            return Err("written for another model or perspective set".into());
        }
        if header.per_item != self.per_item || header.dim != self.dim {
            return Err(format!(
                "vector shape {}×{} differs from the model's {}×{}",
                header.per_item, header.dim, self.per_item, self.dim
            ));
        }
        let data = &body[start + header_len..];
        let per = self.per_item * self.dim;
        if data.len() != header.keys.len() * per * 4 {
            return Err(format!(
                "{} bytes of vectors for {} entries, expected {}",
                data.len(),
                header.keys.len(),
                header.keys.len() * per * 4
            ));
        }
        let mut entries = HashMap::with_capacity(header.keys.len());
        for (i, key) in header.keys.into_iter().enumerate() {
            let chunk = &data[i * per * 4..(i + 1) * per * 4];
            let v: Vec<f32> = chunk
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if v.iter().any(|x| !x.is_finite()) {
                return Err(format!("entry {key} holds a non-finite number"));
            }
            entries.insert(key, v);
        }
        Ok(entries)
    }

    /// The cache file (see [`EmbeddingCache::file_for`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of cached images.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no image is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `(1+K)·d` unit vectors cached for the image with this content hash, if any.
    pub fn get(&self, key: &str) -> Option<&[f32]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    /// Adds one item's `(1+K)·d` unit vectors.
    pub fn insert(&mut self, key: String, vectors: Vec<f32>) -> Result<(), IndexError> {
        if vectors.len() != self.per_item * self.dim {
            return Err(IndexError::Cache(format!(
                "{} values for one item, expected {}",
                vectors.len(),
                self.per_item * self.dim
            )));
        }
        self.entries.insert(key, vectors);
        self.dirty = true;
        Ok(())
    }

    /// Writes the cache if it changed: under the lock, merging entries another instance
    /// saved meanwhile, into a temporary file that is synced and renamed over the old one.
    /// A write that fails (disk full, read-only) leaves the old file as it was and turns
    /// the cache to memory only ([`EmbeddingCache::unwritable`]); it is not an error.
    ///
    /// # Errors
    /// Only [`IndexError::Cache`] when the header cannot be encoded.
    pub fn save(&mut self) -> Result<(), IndexError> {
        if !self.dirty || self.unwritable.is_some() {
            return Ok(());
        }
        let _lock = match lock(&self.path) {
            Ok(l) => l,
            Err((at, e)) => {
                self.give_up(&at, &e);
                return Ok(());
            }
        };
        if let Ok(bytes) = std::fs::read(&self.path)
            && let Ok(theirs) = self.parse(&bytes)
        {
            for (k, v) in theirs {
                self.entries.entry(k).or_insert(v);
            }
        }
        let mut keys: Vec<String> = self.entries.keys().cloned().collect();
        keys.sort();
        let header = Header {
            model: self.model.name.clone(),
            weights_digest: self.model.weights_digest.clone(),
            perspectives: self.perspectives.clone(),
            per_item: self.per_item,
            dim: self.dim,
            keys: keys.clone(),
        };
        let header_bytes = serde_json::to_vec(&header)
            .map_err(|e| IndexError::Cache(format!("cannot encode the header: {e}")))?;
        let mut body = Vec::with_capacity(
            MAGIC.len() + 8 + header_bytes.len() + keys.len() * self.per_item * self.dim * 4,
        );
        body.extend_from_slice(MAGIC);
        body.extend_from_slice(&(header_bytes.len() as u64).to_le_bytes());
        body.extend_from_slice(&header_bytes);
        for k in &keys {
            for x in &self.entries[k] {
                body.extend_from_slice(&x.to_le_bytes());
            }
        }
        let checksum = blake3::hash(&body);
        body.extend_from_slice(checksum.as_bytes());
        match crate::util::write_atomic(&self.path, &body) {
            Ok(()) => self.dirty = false,
            Err(e) => {
                let path = self.path.clone();
                self.give_up(&path, &e);
            }
        }
        Ok(())
    }
}

/// An exclusive lock on `<cache>.lock`, held until dropped; the error names the lock file.
fn lock(path: &Path) -> Result<File, (PathBuf, std::io::Error)> {
    let lock_path = path.with_extension("lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| (lock_path.clone(), e))?;
    f.lock().map_err(|e| (lock_path, e))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_become_causes_a_user_can_act_on() {
        let p = Path::new("/nowhere/cache");
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert!(cause(p, &full).starts_with("the disk is full"));
        let ro = std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem);
        assert!(cause(p, &ro).starts_with("a read-only file system"));
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(cause(p, &denied).starts_with("no permission"));
    }
}
