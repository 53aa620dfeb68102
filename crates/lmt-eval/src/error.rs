//! The error type of lmt-eval.

use std::path::PathBuf;

/// A failure of an evaluation step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// Inputs that cannot be evaluated as given (names what and why).
    #[error("{0}")]
    Invalid(String),
    /// A result file that cannot be read as the rows it should hold.
    #[error("{path}: {detail}")]
    Csv {
        /// The file (or a description of the source).
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// From the models.
    #[error(transparent)]
    Model(#[from] lmt_models::ModelError),
    /// From the certified core.
    #[error(transparent)]
    Core(#[from] lmt_core::CoreError),
    /// From the attacks.
    #[error(transparent)]
    Attack(#[from] lmt_attacks::AttackError),
    /// From batching.
    #[error(transparent)]
    Train(#[from] lmt_train::TrainError),
    /// From candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of lmt-eval.
pub type Result<T> = std::result::Result<T, EvalError>;

pub(crate) fn invalid(detail: impl Into<String>) -> EvalError {
    EvalError::Invalid(detail.into())
}
