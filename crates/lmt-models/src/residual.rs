//! Joining two branches: residual addition (bounds add) and channel concatenation (bounds combine as
//! sqrt of the sum of squares), Sec. 5.1.

use candle_core::Tensor;

use crate::lip::Lip;
use crate::Result;

/// `f(x) + g(x)` from the two branches' outputs and bounds.
pub fn residual_add(a: (Tensor, Lip), b: (Tensor, Lip)) -> Result<(Tensor, Lip)> {
    Ok(((a.0 + b.0)?, a.1.plus(b.1)?))
}

/// `(f(x), g(x))` concatenated along dimension 1 (channels or features).
pub fn concat(a: (Tensor, Lip), b: (Tensor, Lip)) -> Result<(Tensor, Lip)> {
    Ok((Tensor::cat(&[&a.0, &b.0], 1)?, a.1.concat(b.1)?))
}
