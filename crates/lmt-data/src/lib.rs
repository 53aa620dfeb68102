//! Real image data for lmt-rs.
//!
//! Readers for the data sets of the LMT paper (Tsuzuku, Sato and Sugiyama, NeurIPS 2018): MNIST (the
//! Kolter-Wong CNN experiments), SVHN (the WideResNet Table 1) and Fashion-MNIST as a second real set.
//! Every loader returns a [`Dataset`] of u8 [`ImageSet`]s plus the digest of each file it read, checked
//! against the published one. Nothing here downloads: `make data` fetches MNIST, the user supplies SVHN.
//!
//! ```no_run
//! let mnist = lmt_data::load_mnist(std::path::Path::new(lmt_data::MNIST_DEFAULT_DIR))?;
//! assert_eq!(mnist.train.len(), 60_000);
//! for batch in lmt_data::epoch_batches(mnist.train.len(), 50, /* seed */ 0, /* epoch */ 0) {
//!     let (x, y) = mnist.train.batch_f32(&batch); // f32 in [0, 1], NCHW
//!     # let _ = (x, y);
//! }
//! # Ok::<(), lmt_data::DataError>(())
//! ```
//!
//! **Invariant:** this crate depends on nothing else of lmt-rs and on no tensor library.
#![deny(missing_docs)]

pub use batch::{epoch_batches, epoch_order};
pub use checksum::{md5_hex, sha256_hex, FileDigest};
pub use error::{DataError, Result};
pub use idx::{parse_idx, read_idx, read_maybe_gz, IdxArray};
pub use images::ImageSet;
pub use mnist::{
    load_fashion_mnist, load_idx_dir, load_idx_pair, load_mnist, IdxSet, FASHION_DEFAULT_DIR,
    MNIST_DEFAULT_DIR,
};
pub use svhn::{load_svhn, parse_svhn_mat, SvhnLabels, SvhnOptions};

mod batch;
mod checksum;
mod error;
mod idx;
mod images;
mod mnist;
mod svhn;

/// A data set's train and test splits with the digests of the files they came from.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// `mnist`, `fashion-mnist` or `svhn`; stand-ins built from these get another name.
    pub name: String,
    /// Training split.
    pub train: ImageSet,
    /// Test split.
    pub test: ImageSet,
    /// Digest of every file read, for manifests and `experiments data-info`.
    pub files: Vec<FileDigest>,
}

impl Dataset {
    /// A validation split of the training set: trains on its first `len - n` images and evaluates on
    /// its last `n`, so hyper-parameters are chosen without the test set. The name says so, and the
    /// test split is not part of the result. `None` unless `0 < n < train.len()`.
    pub fn validation_split(&self, n: usize) -> Option<Dataset> {
        let name = self.validation_name(n)?;
        let keep = self.train.len() - n;
        Some(Dataset {
            name,
            train: self.train.take(keep),
            test: self.train.skip(keep),
            files: self.files.clone(),
        })
    }

    /// The name of [`Dataset::validation_split`]`(n)` (`None` where it is `None`), without copying images.
    pub fn validation_name(&self, n: usize) -> Option<String> {
        let keep = self
            .train
            .len()
            .checked_sub(n)
            .filter(|&k| k > 0 && n > 0)?;
        Some(format!(
            "{} VALIDATION split (trained on the first {keep} training images, evaluated on the last {n}; no test image)",
            self.name
        ))
    }

    /// True when every file's digest matched a published one.
    pub fn all_verified(&self) -> bool {
        self.files.iter().all(|f| f.verified == Some(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> ImageSet {
        ImageSet {
            pixels: (0..n * 4).map(|v| v as u8).collect(),
            labels: (0..n).map(|v| (v % 10) as u8).collect(),
            channels: 1,
            height: 2,
            width: 2,
            num_classes: 10,
        }
    }

    #[test]
    fn validation_split_is_the_tail_of_the_training_set_and_never_the_test_set() {
        let d = Dataset {
            name: "toy".into(),
            train: set(10),
            test: set(3),
            files: vec![],
        };
        let v = d.validation_split(4).unwrap();
        assert_eq!((v.train.len(), v.test.len()), (6, 4));
        assert_eq!(v.train.image(5), d.train.image(5));
        assert_eq!(v.test.image(0), d.train.image(6));
        assert_eq!(v.test.labels, d.train.labels[6..]);
        assert!(v.name.contains("VALIDATION") && v.name.starts_with("toy"));
        for bad in [0, 10, 11] {
            assert!(d.validation_split(bad).is_none(), "n = {bad}");
        }
    }
}
