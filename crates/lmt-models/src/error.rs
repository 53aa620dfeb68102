//! The error type of lmt-models.

/// A failure while building or running a Lipschitz-aware layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Invalid layer configuration, caught when the layer is built.
    #[error("invalid {layer}: {detail}")]
    Config {
        /// The layer kind.
        layer: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A residual or concatenation joined a certified bound with an estimate (or with nothing).
    #[error("cannot combine different kinds of Lipschitz numbers (certified, estimate, none) in one pass")]
    MixedLip,
    /// An estimate was requested without power-iteration vectors in the context.
    #[error("a train-time estimate needs power-iteration vectors: use Ctx::train(&vectors)")]
    NoPowerVectors,
    /// From the bound computations.
    #[error(transparent)]
    Core(#[from] lmt_core::CoreError),
    /// From candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of lmt-models.
pub type Result<T> = std::result::Result<T, ModelError>;

pub(crate) fn config(layer: &'static str, detail: impl Into<String>) -> ModelError {
    ModelError::Config {
        layer,
        detail: detail.into(),
    }
}
