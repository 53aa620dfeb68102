//! SVHN cropped digits from the official `train_32x32.mat`, `test_32x32.mat` and `extra_32x32.mat`.
//!
//! The files are MAT v5 containers (zlib-compressed variables in the official release). `X` is uint8
//! `[32, 32, 3, N]` in column-major order, so pixel (row i, column j, channel c, image n) sits at
//! `i + 32 j + 1024 c + 3072 n`; we transpose each plane into NCHW. `y` is `[N, 1]` (uint8 or double)
//! with labels 1..=10, where 10 stands for the digit 0.

use std::path::Path;

use crate::checksum::{md5_hex, FileDigest, KNOWN_SVHN_MD5};
use crate::error::{DataError, Result};
use crate::images::ImageSet;
use crate::Dataset;

/// How SVHN's labels 1..=10 become classes 0..=9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SvhnLabels {
    /// Class = the digit shown (label 10 -> class 0). Our default: class names mean what they say.
    #[default]
    Digit,
    /// Class = label - 1, so digit 0 is class 9 (the authors' code, reference section 3.2).
    AuthorsMinusOne,
}

/// What to load from an SVHN directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SvhnOptions {
    /// Label mapping.
    pub labels: SvhnLabels,
    /// Append `extra_32x32.mat` (531,131 images, a 1.3 GB file) to the training split, as the paper does.
    pub include_extra: bool,
}

const FIX: &str = "pass --svhn-dir DIR (or set SVHN_DIR) pointing at the official train_32x32.mat and test_32x32.mat from the SVHN site";

/// Loads SVHN's train (plus `extra` if asked) and test splits from `dir`.
pub fn load_svhn(dir: &Path, options: SvhnOptions) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(DataError::MissingDir {
            path: dir.to_path_buf(),
            fix: FIX.to_string(),
        });
    }
    let mut files = Vec::new();
    let mut train = read_split(dir, "train_32x32.mat", options.labels, &mut files)?;
    if options.include_extra {
        let extra = read_split(dir, "extra_32x32.mat", options.labels, &mut files)?;
        train.pixels.extend_from_slice(&extra.pixels);
        train.labels.extend_from_slice(&extra.labels);
    }
    let test = read_split(dir, "test_32x32.mat", options.labels, &mut files)?;
    Ok(Dataset {
        name: "svhn".to_string(),
        train,
        test,
        files,
    })
}

fn read_split(
    dir: &Path,
    name: &str,
    labels: SvhnLabels,
    files: &mut Vec<FileDigest>,
) -> Result<ImageSet> {
    let path = dir.join(name);
    if !path.is_file() {
        return Err(DataError::MissingFile {
            path,
            fix: FIX.to_string(),
        });
    }
    let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
    let expected = KNOWN_SVHN_MD5
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, d)| *d);
    files.push(FileDigest::check(&path, "md5", md5_hex(&bytes), expected));
    parse_svhn_mat(&bytes, &path, labels)
}

/// Decodes one SVHN-layout MAT v5 file already read into `bytes` (`path` is for messages).
pub fn parse_svhn_mat(bytes: &[u8], path: &Path, labels: SvhnLabels) -> Result<ImageSet> {
    check_mat_header(bytes, path)?;
    let mat_err = |detail: String| DataError::Mat {
        path: path.to_path_buf(),
        detail,
    };
    // matfile reports parse failures without detail; a failure after a valid header means a corrupt or
    // truncated body, so say that.
    // matfile multiplies array dimensions without overflow checks (a panic on a corrupt file in a
    // debug build); our walk rejects such dimensions first, and any panic left is caught and reported
    // as the corrupt file it is.
    let parsed = std::panic::catch_unwind(|| matfile::MatFile::parse(bytes));
    let mat = match parsed {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            return Err(mat_err(format!(
                "cannot decode the MAT v5 body ({e:?}); the file is truncated or corrupt, download it again"
            )))
        }
        Err(_) => {
            return Err(mat_err(
                "cannot decode the MAT v5 body (the decoder failed on it); the file is corrupt, download it again".into(),
            ))
        }
    };
    let x = mat.find_by_name("X").ok_or_else(|| {
        mat_err("has no variable `X` (the images); is this an SVHN cropped-digits file?".into())
    })?;
    let y = mat.find_by_name("y").ok_or_else(|| {
        mat_err("has no variable `y` (the labels); is this an SVHN cropped-digits file?".into())
    })?;

    let size = x.size();
    if size.len() != 4 || size[0] != 32 || size[1] != 32 || size[2] != 3 {
        return Err(mat_err(format!(
            "`X` has size {size:?}, expected [32, 32, 3, N] (SVHN format 2, cropped digits)"
        )));
    }
    let n = size[3];
    let x_data = match x.data() {
        matfile::NumericData::UInt8 { real, .. } => real,
        other => {
            return Err(mat_err(format!(
                "`X` is stored as {}, expected uint8",
                numeric_name(other)
            )))
        }
    };
    if x_data.len() != 32 * 32 * 3 * n {
        return Err(mat_err(format!(
            "`X` holds {} values, its size {size:?} needs {}; the file is corrupt",
            x_data.len(),
            32 * 32 * 3 * n
        )));
    }
    let y_size = y.size();
    if y_size.iter().product::<usize>() != n || y_size.iter().filter(|&&d| d != 1).count() > 1 {
        return Err(mat_err(format!(
            "`y` has size {y_size:?}, expected [{n}, 1] to match the {n} images in `X`"
        )));
    }
    let raw_labels: Vec<f64> = match y.data() {
        matfile::NumericData::UInt8 { real, .. } => real.iter().map(|&v| v as f64).collect(),
        matfile::NumericData::Double { real, .. } => real.clone(),
        other => {
            return Err(mat_err(format!(
                "`y` is stored as {}, expected uint8 or double",
                numeric_name(other)
            )))
        }
    };
    let mut classes = Vec::with_capacity(n);
    for (index, &v) in raw_labels.iter().enumerate() {
        // NaN fails the range test too, so it is rejected here.
        if !(1.0..=10.0).contains(&v) || v.fract() != 0.0 {
            return Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                index,
                value: v,
                range: "the integers 1..=10",
            });
        }
        let label = v as u8;
        classes.push(match labels {
            SvhnLabels::Digit => label % 10,
            SvhnLabels::AuthorsMinusOne => label - 1,
        });
    }

    // Column-major [i, j, c, n] -> row-major NCHW.
    let mut pixels = vec![0u8; x_data.len()];
    for img in 0..n {
        for c in 0..3 {
            let src = &x_data[1024 * c + 3072 * img..][..1024];
            let dst = &mut pixels[(img * 3 + c) * 1024..][..1024];
            for i in 0..32 {
                for j in 0..32 {
                    dst[i * 32 + j] = src[i + 32 * j];
                }
            }
        }
    }
    Ok(ImageSet {
        pixels,
        labels: classes,
        channels: 3,
        height: 32,
        width: 32,
        num_classes: 10,
    })
}

/// Rejects non-MAT files and MATLAB v7.3 (HDF5) files with a message that says what to do.
fn check_mat_header(bytes: &[u8], path: &Path) -> Result<()> {
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(116)]);
    let hdf5 = bytes.len() >= 520 && &bytes[512..520] == b"\x89HDF\r\n\x1a\n";
    if text.starts_with("MATLAB 7.3") || hdf5 {
        return Err(DataError::MatV73 {
            path: path.to_path_buf(),
            name,
        });
    }
    if !text.starts_with("MATLAB 5.0 MAT-file") {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            expected: "a MATLAB 5.0 MAT-file",
            found: format!("header {:?}", text.chars().take(24).collect::<String>()),
        });
    }
    if bytes.len() < 128 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected: 128,
            found: bytes.len(),
        });
    }
    check_top_level_elements(bytes, path)
}

/// Walks the top-level data elements after the 128-byte header and checks that they end exactly at the end
/// of the file. matfile silently drops a cut-off final variable, so truncation must be caught here.
fn check_top_level_elements(bytes: &[u8], path: &Path) -> Result<()> {
    const MI_COMPRESSED: u32 = 15;
    let mut at = 128usize;
    while at < bytes.len() {
        if bytes.len() - at < 8 {
            return Err(DataError::Truncated {
                path: path.to_path_buf(),
                expected: at + 8,
                found: bytes.len(),
            });
        }
        let word = |k: usize| u32::from_le_bytes(bytes[k..k + 4].try_into().expect("4 bytes"));
        let (kind, size) = (word(at), word(at + 4) as usize);
        let body = if kind >> 16 != 0 {
            0 // small data element: tag and data share the 8 bytes
        } else if kind == MI_COMPRESSED {
            size
        } else {
            size.div_ceil(8) * 8
        };
        let end = at.saturating_add(8).saturating_add(body);
        // An uncompressed final element may omit its padding.
        if end > bytes.len() && !(kind != MI_COMPRESSED && at + 8 + size == bytes.len()) {
            return Err(DataError::Truncated {
                path: path.to_path_buf(),
                expected: end,
                found: bytes.len(),
            });
        }
        let element = &bytes[at..end.min(bytes.len())];
        if kind == MI_COMPRESSED {
            use std::io::Read;
            // The matrix header (tag, flags, dimensions) is all the walk needs: inflate only its
            // first bytes, never the whole (for `extra`, 1.6 GB) variable.
            let mut inner = Vec::new();
            flate2::read::ZlibDecoder::new(&element[8..])
                .take(256)
                .read_to_end(&mut inner)
                .map_err(|e| DataError::Mat {
                    path: path.to_path_buf(),
                    detail: format!(
                        "a compressed variable does not inflate ({e}); the file is corrupt"
                    ),
                })?;
            check_matrix_dims(&inner, path)?;
        } else {
            check_matrix_dims(element, path)?;
        }
        at = end;
    }
    Ok(())
}

/// For a miMATRIX element, checks that its dimensions are non-negative and that their product fits the
/// decoder's 32-bit count.
fn check_matrix_dims(element: &[u8], path: &Path) -> Result<()> {
    const MI_MATRIX: u32 = 14;
    const MI_INT32: u32 = 5;
    let word = |k: usize| -> Option<u32> {
        Some(u32::from_le_bytes(element.get(k..k + 4)?.try_into().ok()?))
    };
    if word(0) != Some(MI_MATRIX) {
        return Ok(());
    }
    let bad = |detail: &str| DataError::Mat {
        path: path.to_path_buf(),
        detail: format!("{detail}; the file is corrupt"),
    };
    // Tag (8), array flags (8 + 8), then the dimensions sub-element.
    let (kind, size) = (word(24).map(|w| w & 0xffff), word(28));
    let (Some(MI_INT32), Some(size)) = (kind, size) else {
        return Err(bad("a matrix without an int32 dimensions field"));
    };
    let mut count: i32 = 1;
    for k in 0..size as usize / 4 {
        let d =
            word(32 + 4 * k).ok_or_else(|| bad("a matrix whose dimensions are cut off"))? as i32;
        if d < 0 {
            return Err(bad("a matrix with a negative dimension"));
        }
        count = count
            .checked_mul(d)
            .ok_or_else(|| bad("a matrix whose dimensions overflow"))?;
    }
    Ok(())
}

fn numeric_name(d: &matfile::NumericData) -> &'static str {
    use matfile::NumericData::*;
    match d {
        Int8 { .. } => "int8",
        UInt8 { .. } => "uint8",
        Int16 { .. } => "int16",
        UInt16 { .. } => "uint16",
        Int32 { .. } => "int32",
        UInt32 { .. } => "uint32",
        Int64 { .. } => "int64",
        UInt64 { .. } => "uint64",
        Single { .. } => "single",
        Double { .. } => "double",
    }
}
