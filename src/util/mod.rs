//! The bottom layer: small helpers every other layer may use and that use nothing of the
//! crate: atomic file writes ([`write_atomic`]), the seeded random generator
//! ([`rng::SplitMix64`]) character facts for query checks ([`text`]), where caches live
//! ([`cache_dir`]) and where long numeric jobs run ([`on_compute_pool`]).

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

/// Runs `f` on a worker thread of rayon's global pool, blocks the calling thread until it
/// returns, and gives back its result (a panic in `f` resumes on the caller).
///
/// candle's matrix products and this crate's CPU kernels split their work over that pool.
/// Called from a thread outside it (a training or app worker thread), every split leaves the
/// caller waiting while the pool's threads compute, and between splits those threads stay
/// awake looking for work and take the cores from the caller's single-threaded part of the
/// step. Run on a worker, the caller is one of the threads that share the work. Measured
/// with 60 stage-2 steps of the demo recipe on 2 cores (README, "Speed").
pub fn on_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // Called from outside the pool, `rayon::scope` runs its closure on a pool worker.
    rayon::scope(|_| f())
}

#[cfg(test)]
mod tests {
    use super::on_compute_pool;

    /// The closure runs on a worker of the global pool (not on the calling thread), its
    /// result comes back, and a panic in it reaches the caller.
    #[test]
    fn compute_pool_runs_the_job_on_a_pool_worker() {
        let (caller, worker, index) = std::thread::spawn(|| {
            assert_eq!(rayon::current_thread_index(), None);
            let caller = std::thread::current().id();
            let (worker, index) =
                on_compute_pool(|| (std::thread::current().id(), rayon::current_thread_index()));
            (caller, worker, index)
        })
        .join()
        .unwrap();
        assert!(index.is_some(), "ran outside the pool");
        assert_ne!(worker, caller, "ran on the calling thread");
        let panicked = std::thread::spawn(|| on_compute_pool(|| panic!("job failed"))).join();
        assert!(panicked.is_err());
    }
}
