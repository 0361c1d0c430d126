//! The bottom layer: small helpers every other layer may use and that use nothing of the
//! crate: atomic file writes ([`write_atomic`]) and the seeded random generator
//! ([`rng::SplitMix64`]).

mod atomic;
pub mod rng;

pub use atomic::write_atomic;
