//! The one error type of lmt-data. Every variant names the file it is about and says what to do.

use std::path::PathBuf;

/// A failure to find, read or decode a data file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The data directory does not exist.
    #[error("data directory {path} does not exist; {fix}")]
    MissingDir {
        /// The directory that was looked for.
        path: PathBuf,
        /// How to obtain the data (e.g. `run make data`).
        fix: String,
    },
    /// An expected file is absent from an existing directory.
    #[error("data file {path} not found; {fix}")]
    MissingFile {
        /// The file (without `.gz`) that was looked for.
        path: PathBuf,
        /// How to obtain the data.
        fix: String,
    },
    /// An operating-system error while reading.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file does not start with the expected magic number.
    #[error("{path} is not {expected}: {found}; check that the file is what its name says (re-run `make data` for MNIST)")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// What the file should have been.
        expected: &'static str,
        /// What was found instead.
        found: String,
    },
    /// The file ends before its header says it should.
    #[error("{path} is truncated: header promises {expected} bytes of data, file has {found}; re-download it (`make data` for MNIST)")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the header promises.
        expected: usize,
        /// Bytes present.
        found: usize,
    },
    /// Headers disagree with each other or with what the data set must look like.
    #[error("{path}: {detail}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What does not match, and the fix.
        detail: String,
    },
    /// A MATLAB v7.3 file (HDF5 container), which the MAT v5 reader cannot read.
    #[error("{path} is a MATLAB v7.3 (HDF5) file; SVHN's official files are MAT v5. Re-save it as v7 in MATLAB/Octave with `load('{name}'); save('-v7', '{name}', 'X', 'y')` or in Python with scipy.io.savemat, or download the official file again")]
    MatV73 {
        /// The file.
        path: PathBuf,
        /// Its file name, for the suggested command.
        name: String,
    },
    /// The MAT file could not be parsed or lacks a variable.
    #[error("{path}: {detail}")]
    Mat {
        /// The file.
        path: PathBuf,
        /// What went wrong and the fix.
        detail: String,
    },
    /// A label outside the data set's range.
    #[error("{path}: label {value} at index {index} is outside {range}; the file is corrupt or not this data set")]
    LabelOutOfRange {
        /// The file.
        path: PathBuf,
        /// Position of the bad label.
        index: usize,
        /// The bad value.
        value: f64,
        /// The allowed range, in words.
        range: &'static str,
    },
}

/// Result alias of lmt-data.
pub type Result<T> = std::result::Result<T, DataError>;

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
