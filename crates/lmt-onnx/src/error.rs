//! The error type of lmt-onnx: every message names the file or the node, what was found, and what is
//! supported.

use std::path::PathBuf;

/// A failure to read, interpret or write an ONNX model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnnxError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes are not an ONNX model (not protobuf, truncated, or no graph).
    #[error("{origin}: not a readable ONNX model ({detail}); export one with torch.onnx.export")]
    Decode {
        /// The file or a description of the bytes.
        origin: String,
        /// What the decoder found.
        detail: String,
    },
    /// A node that lmt-rs cannot bound soundly or does not implement.
    #[error("{origin}: node `{node}` ({op}): {found}; supported: {supported}")]
    Unsupported {
        /// The file.
        origin: String,
        /// The node's name (or its first output when unnamed).
        node: String,
        /// The op type.
        op: String,
        /// What was found.
        found: String,
        /// What would be accepted.
        supported: String,
    },
    /// A model that is well formed but cannot be a classifier of images as given.
    #[error("{origin}: {detail}")]
    Model {
        /// The file.
        origin: String,
        /// What is wrong and what to do.
        detail: String,
    },
    /// From building the graph's layers.
    #[error("{origin}: {source}")]
    Layer {
        /// The file.
        origin: String,
        /// The cause.
        source: lmt_models::ModelError,
    },
}

/// Result alias of lmt-onnx.
pub type Result<T> = std::result::Result<T, OnnxError>;
