//! The error type of lmt-core.

/// A failure in a bound or certification computation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// Shapes or hyper-parameters that do not describe a valid layer or batch.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// What was being validated (e.g. "convolution geometry").
        what: &'static str,
        /// What is wrong and how to fix it.
        detail: String,
    },
    /// The operator is too large for the requested method.
    #[error("{method} bound of a {rows}x{cols} operator exceeds the size limit of {limit} entries; use the `power` or `fft` method")]
    TooLarge {
        /// The method asked for.
        method: &'static str,
        /// Output dimension.
        rows: usize,
        /// Input dimension.
        cols: usize,
        /// The limit on rows x cols.
        limit: usize,
    },
    /// A NaN or infinity where a finite number is needed.
    #[error("non-finite value in {0}")]
    NonFinite(&'static str),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of lmt-core.
pub type Result<T> = std::result::Result<T, CoreError>;

pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> CoreError {
    CoreError::Invalid {
        what,
        detail: detail.into(),
    }
}
