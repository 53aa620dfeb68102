//! The error type of lmt-train.

use std::path::PathBuf;

/// A failure while configuring, running or resuming training.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A configuration value is invalid; names the key.
    #[error("config key `{key}`: {detail}")]
    Config {
        /// The offending key, dotted (e.g. `optimizer.lr`).
        key: String,
        /// What is wrong and what is allowed.
        detail: String,
    },
    /// Loss, weights or bound became NaN or infinite.
    #[error("{what} became {value} at epoch {epoch}, step {step}; last good checkpoint: {last_checkpoint}. Lower the learning rate or c, or resume from that checkpoint")]
    NonFinite {
        /// Which quantity.
        what: &'static str,
        /// Its value.
        value: f64,
        /// 0-based epoch.
        epoch: usize,
        /// Global step (1-based).
        step: usize,
        /// Path of the last checkpoint written, or "none".
        last_checkpoint: String,
    },
    /// A checkpoint could not be read or does not fit the model.
    #[error("checkpoint {path}: {detail}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        detail: String,
    },
    /// The adversary of adversarial training failed.
    #[error("crafting the adversarial batch failed: {0}")]
    Adversary(String),
    /// I/O on a named file.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// From the models.
    #[error(transparent)]
    Model(#[from] lmt_models::ModelError),
    /// From the core.
    #[error(transparent)]
    Core(#[from] lmt_core::CoreError),
    /// From candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of lmt-train.
pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn config_err(key: &str, detail: impl Into<String>) -> TrainError {
    TrainError::Config {
        key: key.to_string(),
        detail: detail.into(),
    }
}
