//! The bottom layer: small helpers every other layer may use and that use nothing of the
//! crate: atomic file writes ([`write_atomic`]), the seeded random generator
//! ([`rng::SplitMix64`]) character facts for query checks ([`text`]) and where caches live
//! ([`cache_dir`]).

mod atomic;
pub mod rng;
pub mod text;

pub use atomic::write_atomic;

use std::path::PathBuf;

/// Where agff-lens keeps its caches (embeddings, weight digests): `$AGFF_LENS_CACHE`, else
/// `$XDG_CACHE_HOME/agff-lens`, else `~/.cache/agff-lens`, else a folder in the system's
/// temporary folder.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AGFF_LENS_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("agff-lens");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache").join("agff-lens"))
        .unwrap_or_else(|| std::env::temp_dir().join("agff-lens-cache"))
}
