//! The bottom layer: small helpers every other layer may use and that use nothing of the
//! crate: atomic file writes ([`write_atomic`]), the seeded random generator
//! ([`rng::SplitMix64`]) and character facts for query checks ([`text`]).

mod atomic;
pub mod rng;
pub mod text;

pub use atomic::write_atomic;
