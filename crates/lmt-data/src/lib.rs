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
    /// True when every file's digest matched a published one.
    pub fn all_verified(&self) -> bool {
        self.files.iter().all(|f| f.verified == Some(true))
    }
}
