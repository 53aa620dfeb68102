//! The certified core of lmt-rs: Lipschitz bounds, certification and the LMT loss of Tsuzuku, Sato and
//! Sugiyama, *Lipschitz-Margin Training* (NeurIPS 2018).
//!
//! - [`CertifiedBound`]: a guaranteed upper bound on an L2 Lipschitz constant with the method that made
//!   it, built only by the certified norms in [`norms`] (exact `dense`, Thm. 1+2 `power`, deterministic
//!   `fft`, and the looser Cor. 1, Cisse and Peck bounds of Fig. 3) and combined by the Sec. 5.1 rules.
//! - [`LipEstimate`] and [`PowerVectors`]: the differentiable train-time estimate (Alg. 2).
//! - [`certify_prop1`] / [`certify_prop2`]: the guarded radius per input (Prop. 1, Prop. 2).
//! - [`lmt_logits_prop1`] / [`lmt_logits_prop2`]: the LMT logit modification (Alg. 1).
//!
//! ```
//! use lmt_core::{certify_prop1, norms, ConvGeometry};
//! // A 1x1 convolution that doubles its single channel has norm exactly 2.
//! let g = ConvGeometry::square(1, 1, 1, 1, 0, 4, 4)?;
//! let l = norms::conv_dense(&g, &[2.0])?;
//! assert!((l.value() - 2.0).abs() < 1e-8);
//! // Logits (3, 1): margin 2, radius 2 / (sqrt(2) * 2).
//! let cert = certify_prop1(&[3.0, 1.0], 2, &[0], &l)?;
//! assert!((cert[0].radius - 1.0 / 2f64.sqrt()).abs() < 1e-8);
//! # Ok::<(), lmt_core::CoreError>(())
//! ```
//!
//! **Invariant:** depends on nothing else of lmt-rs; a number that is not a guaranteed upper bound never
//! becomes a `CertifiedBound`.
#![deny(missing_docs)]

pub use bound::{BoundMethod, CertifiedBound, LowerBound};
pub use certify::{
    certified_at, certify_prop1, certify_prop1_guarded, certify_prop2, certify_prop2_guarded,
    contradicts, Certificate, Proposition,
};
pub use conv::ConvGeometry;
pub use error::{CoreError, Result};
pub use estimate::{l2_norm, LipEstimate, PowerVectors};
pub use loss::{
    class_distances, cross_entropy, gloro_logits, lmt_logits_prop1, lmt_logits_prop2,
    LmtProposition,
};
pub use norms::{PowerConfig, PowerOutcome};

mod bound;

/// A ChaCha8 generator keyed by `seed` and an FNV-1a hash of `name`: every named random draw (initial
/// weights, power vectors, dropout masks, regulariser vectors) is reproducible and independent of the
/// order in which things are created.
pub fn named_rng(seed: u64, name: &str) -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    let h = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ h)
}
mod certify;
mod conv;
mod error;
mod estimate;
mod loss;
pub mod norms;
pub mod rounding;
