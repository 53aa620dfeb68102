//! The two kinds of Lipschitz number, kept apart by the type system.
//!
//! A [`CertifiedBound`] is a guaranteed upper bound on an L2 Lipschitz constant (an f64 plus the method
//! that produced it). Only this crate's certified methods can create one from a number; layers combine
//! them with the paper's rules (composition multiplies, addition adds, concatenation takes the root of the
//! sum of squares, Sec. 5.1). [`LowerBound`] (an empirical lower bound, e.g. from gradient norms) and the
//! train-time estimate (a candle tensor) have no conversion into it, so an estimate can never be passed where
//! a certificate needs a bound. Both of these fail to compile:
//!
//! ```compile_fail
//! // An empirical lower bound is not a certified bound.
//! let lower = lmt_core::LowerBound(1.0);
//! let _ = lmt_core::certify_prop1(&[1.0, 0.0], 2, &[0], &lower);
//! ```
//!
//! ```compile_fail
//! // Nor can one be made from a bare number outside lmt-core.
//! let _ = lmt_core::CertifiedBound { value: 1.0, method: lmt_core::BoundMethod::Dense };
//! ```
//!
//! ```compile_fail
//! // Nor from a lower bound by way of a "constant": closed forms are named norms in `norms`.
//! let lower = lmt_core::LowerBound(1.0);
//! let _ = lmt_core::CertifiedBound::constant(lower.0);
//! ```
//!
//! Outside this crate a `CertifiedBound` comes from a named norm of an operator's parameters in
//! [`crate::norms`] (or is the identity's, [`CertifiedBound::one`], where a carried product starts), and
//! from the combination rules, which refuse a non-finite result.

use std::fmt;

/// How a certified bound was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BoundMethod {
    /// Largest singular value of the exact operator matrix (exact up to a rounding margin).
    Dense,
    /// Power iteration on the operator and its exact adjoint, plus the Thm. 2 correction: PROBABILISTIC,
    /// sound only if a random start has enough weight on the top singular vector (the seed is fixed, so
    /// the probability is over nothing the user controls).
    Power,
    /// Largest singular value over the per-frequency matrices of the kernel's DFT on a circular grid
    /// that embeds the padded input (deterministic, never below the exact norm).
    Fft,
    /// Cor. 1: sqrt(n) times the spectral norm of the reshaped kernel W'.
    Cor1,
    /// Cisse et al. (Parseval networks): sqrt(kh kw) times the spectral norm of W'.
    Cisse,
    /// Peck et al., as reconstructed here: sqrt(Ho Wo) times the Frobenius norm of the kernel (pooling:
    /// sqrt of the number of windows). Not checked against Peck's text.
    PeckReconstructed,
    /// A closed form that is exact (ReLU, BN at inference, pooling by Thm. 3, a known scalar).
    ClosedForm,
    /// A combination of layers bounded by different deterministic methods.
    Mixed,
    /// A combination in which some layer was bounded by `Power`: probabilistic as a whole.
    MixedProbabilistic,
}

impl BoundMethod {
    /// Every method, for reading a name back ([`Self::from_name`]).
    pub const ALL: [BoundMethod; 9] = [
        BoundMethod::Dense,
        BoundMethod::Power,
        BoundMethod::Fft,
        BoundMethod::Cor1,
        BoundMethod::Cisse,
        BoundMethod::PeckReconstructed,
        BoundMethod::ClosedForm,
        BoundMethod::Mixed,
        BoundMethod::MixedProbabilistic,
    ];

    /// The method a [`Self::name`] names (as read from a certificate file), or `None`.
    pub fn from_name(name: &str) -> Option<BoundMethod> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Short name used in CSV files and reports.
    pub fn name(self) -> &'static str {
        match self {
            BoundMethod::Dense => "dense",
            BoundMethod::Power => "power (probabilistic)",
            BoundMethod::Fft => "fft",
            BoundMethod::Cor1 => "cor1",
            BoundMethod::Cisse => "cisse",
            BoundMethod::PeckReconstructed => "peck-reconstructed",
            BoundMethod::ClosedForm => "closed-form",
            BoundMethod::Mixed => "mixed",
            BoundMethod::MixedProbabilistic => "mixed with power (probabilistic)",
        }
    }

    /// Whether a bound by this method holds only with some probability (power iteration).
    pub fn is_probabilistic(self) -> bool {
        matches!(self, BoundMethod::Power | BoundMethod::MixedProbabilistic)
    }

    /// The method of a combination: closed forms take the other side's method; two different
    /// numerical methods give `Mixed`.
    fn join(self, other: BoundMethod) -> BoundMethod {
        match (self, other) {
            (BoundMethod::ClosedForm, m) | (m, BoundMethod::ClosedForm) => m,
            (a, b) if a == b => a,
            (a, b) if a.is_probabilistic() || b.is_probabilistic() => {
                BoundMethod::MixedProbabilistic
            }
            _ => BoundMethod::Mixed,
        }
    }
}

impl fmt::Display for BoundMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A guaranteed upper bound on an L2 Lipschitz constant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CertifiedBound {
    value: f64,
    method: BoundMethod,
}

impl CertifiedBound {
    /// Built only by this crate's certified computations, always finite and non-negative.
    pub(crate) fn new(value: f64, method: BoundMethod) -> crate::Result<Self> {
        if !value.is_finite() || value < 0.0 {
            return Err(crate::CoreError::NonFinite("certified bound"));
        }
        Ok(CertifiedBound { value, method })
    }

    /// The bound of the identity (and of ReLU, dropout at inference, flatten): exactly 1.
    pub fn one() -> Self {
        CertifiedBound {
            value: 1.0,
            method: BoundMethod::ClosedForm,
        }
    }

    /// The bound's value.
    pub fn value(&self) -> f64 {
        self.value
    }

    /// How it was computed.
    pub fn method(&self) -> BoundMethod {
        self.method
    }

    /// Composition `g(f(x))` where `self` bounds f and `next` bounds g: the product. An overflow to
    /// infinity is an error, never a bound.
    pub fn then(self, next: CertifiedBound) -> crate::Result<Self> {
        CertifiedBound::new(self.value * next.value, self.method.join(next.method))
    }

    /// Sum `f(x) + g(x)` (residual addition): the sum of the bounds.
    pub fn plus(self, other: CertifiedBound) -> crate::Result<Self> {
        CertifiedBound::new(self.value + other.value, self.method.join(other.method))
    }

    /// The larger of two bounds of the same map (e.g. the blocks of a block-diagonal operator).
    pub fn max(self, other: CertifiedBound) -> crate::Result<Self> {
        CertifiedBound::new(self.value.max(other.value), self.method.join(other.method))
    }

    /// Concatenation `(f(x), g(x))`: sqrt(L_f^2 + L_g^2).
    pub fn concat(self, other: CertifiedBound) -> crate::Result<Self> {
        CertifiedBound::new(
            self.value.hypot(other.value),
            self.method.join(other.method),
        )
    }
}

impl fmt::Display for CertifiedBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.6} ({})", self.value, self.method)
    }
}

/// An empirical lower bound on a Lipschitz constant (e.g. the largest gradient norm found). It says how
/// far the certified bound can at most be from the truth; it can never stand in for a certified bound.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct LowerBound(pub f64);

#[cfg(test)]
mod tests {
    use super::*;

    /// `ALL` lists every method once (the match below stops compiling when a method is added), and
    /// every name reads back to its method.
    #[test]
    fn every_method_name_reads_back() {
        let index = |m: BoundMethod| match m {
            BoundMethod::Dense => 0,
            BoundMethod::Power => 1,
            BoundMethod::Fft => 2,
            BoundMethod::Cor1 => 3,
            BoundMethod::Cisse => 4,
            BoundMethod::PeckReconstructed => 5,
            BoundMethod::ClosedForm => 6,
            BoundMethod::Mixed => 7,
            BoundMethod::MixedProbabilistic => 8,
        };
        for (i, m) in BoundMethod::ALL.into_iter().enumerate() {
            assert_eq!(index(m), i);
            assert_eq!(BoundMethod::from_name(m.name()), Some(m));
        }
        assert_eq!(BoundMethod::from_name("power"), None);
    }

    #[test]
    fn combination_rules_and_methods() {
        let d = CertifiedBound::new(2.0, BoundMethod::Dense).unwrap();
        let f = CertifiedBound::new(3.0, BoundMethod::Fft).unwrap();
        let p = CertifiedBound::new(5.0, BoundMethod::Power).unwrap();
        let one = CertifiedBound::one();
        assert_eq!(d.then(one).unwrap().method(), BoundMethod::Dense);
        assert_eq!(d.then(f).unwrap().value(), 6.0);
        assert_eq!(d.then(f).unwrap().method(), BoundMethod::Mixed);
        assert_eq!(d.plus(d).unwrap().value(), 4.0);
        assert!((d.concat(f).unwrap().value() - 13f64.sqrt()).abs() < 1e-15);
        assert!(CertifiedBound::new(f64::NAN, BoundMethod::ClosedForm).is_err());
        assert!(CertifiedBound::new(-1.0, BoundMethod::Dense).is_err());
        // A probabilistic factor makes the whole probabilistic, and every output says so.
        let m = d.then(p).unwrap().then(f).unwrap();
        assert_eq!(m.method(), BoundMethod::MixedProbabilistic);
        assert!(
            m.method().name().contains("probabilistic")
                && p.method().name().contains("probabilistic")
        );
        // Overflow is an error, not an infinite bound.
        let huge = CertifiedBound::new(1e200, BoundMethod::Dense).unwrap();
        assert!(huge.then(huge).is_err() && huge.then(one).is_ok());
        assert!(CertifiedBound::new(f64::MAX, BoundMethod::Dense)
            .unwrap()
            .plus(huge)
            .is_ok());
        let max = CertifiedBound::new(f64::MAX, BoundMethod::Dense).unwrap();
        assert!(max.plus(max).is_err() && max.concat(max).is_err());
    }
}
