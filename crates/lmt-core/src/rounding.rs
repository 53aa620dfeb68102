//! Bounds on the rounding error of an f64 forward pass, so certificates are about the network the stored
//! weights define in exact arithmetic, not about its floating-point evaluation.
//!
//! The standard model (Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 2-3): each f64
//! operation returns `op(a, b)(1 + d)` with `|d| <= u = 2^-53`, and an `n`-term dot product computed in
//! any order satisfies `|fl(w.x) - w.x| <= gamma(n) |w|.|x|` with `gamma(n) = n u / (1 - n u)`. A layer's
//! computed output then differs from its exact output at the computed input by at most a local error
//! `rho`, and the error carried to the logits obeys `delta_out <= L delta_in + ‖rho‖` (L the layer's
//! certified Lipschitz bound), summing over the branches of a residual addition.

/// The unit roundoff of f64, `2^-53`.
pub const UNIT_ROUNDOFF: f64 = f64::EPSILON / 2.0;

/// `gamma(n) = n u / (1 - n u)`: the relative error bound of an `n`-term f64 sum of products (n u < 1;
/// for any realistic layer n u is below 1e-9).
pub fn gamma(n: usize) -> f64 {
    let nu = n as f64 * UNIT_ROUNDOFF;
    if nu >= 0.5 {
        return f64::INFINITY;
    }
    nu / (1.0 - nu)
}

/// A bound on `|fl(sum) - sum|` for an `n`-term f64 sum of products whose absolute values, summed in
/// f64, gave `abs_sum`: `gamma(n)` times the exact absolute sum, which `abs_sum (1 + 2 gamma(n))` bounds.
pub fn dot_error(n: usize, abs_sum: f64) -> f64 {
    let g = gamma(n);
    g * abs_sum * (1.0 + 2.0 * g) * (1.0 + 4.0 * UNIT_ROUNDOFF)
}

/// The L2 norm of `v`, rounded up so it bounds the exact norm of the computed entries (a sum of `n`
/// squares, then a square root).
pub fn norm_up(v: &[f64]) -> f64 {
    let s: f64 = v.iter().map(|x| x * x).sum();
    (s * (1.0 + gamma(v.len() + 2))).sqrt() * (1.0 + 2.0 * UNIT_ROUNDOFF)
}

/// `a L + b`, the carried error after a layer with bound `l`, rounded up.
pub fn carry(delta_in: f64, l: f64, rho: f64) -> f64 {
    (delta_in * l + rho) * (1.0 + 4.0 * UNIT_ROUNDOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_bounds_a_real_dot_product_and_norms_round_up() {
        // 1e16 + 1 - 1e16 in f64 is 0 (the 1 is lost): the error 1 is within gamma(3) (|1e16| + 1 + |1e16|).
        let exact = 1.0f64;
        let computed: f64 = (1e16 + 1.0) - 1e16;
        assert_eq!(computed, 0.0);
        assert!((computed - exact).abs() <= gamma(3) * (1e16 + 1.0 + 1e16));
        assert!(norm_up(&[3.0, 4.0]) >= 5.0);
        assert!(gamma(0) == 0.0 && gamma(usize::MAX / 2) == f64::INFINITY);
    }
}
