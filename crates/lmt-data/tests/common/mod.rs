//! Shared helpers for the data tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository's `data/mnist`, or `$MNIST_DIR`.
pub fn mnist_dir() -> PathBuf {
    std::env::var_os("MNIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist"))
}

/// True if `dir` exists; otherwise prints why the test is skipped. Under CI (`CI` set) a missing MNIST
/// is a failure, since `make test` fetches it first: a skip must not hide a broken fetch.
pub fn available(dir: &Path, what: &str, how: &str) -> bool {
    if dir.is_dir() {
        return true;
    }
    if what == "MNIST" && std::env::var_os("CI").is_some() {
        panic!(
            "{what} missing at {} under CI; `make test` should have run `make data`",
            dir.display()
        );
    }
    eprintln!("SKIPPED: {what} not found at {} ({how})", dir.display());
    false
}

/// An IDX header for u8 data with the given dimensions.
pub fn idx_header(dims: &[u32]) -> Vec<u8> {
    let mut h = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        h.extend_from_slice(&d.to_be_bytes());
    }
    h
}

/// Writes a well-formed tiny MNIST-like directory (`n` train and test images of 28x28) into `dir`.
pub fn write_tiny_mnist(dir: &Path, n: u32) {
    for prefix in ["train", "t10k"] {
        let mut img = idx_header(&[n, 28, 28]);
        img.extend((0..n * 784).map(|k| (k % 251) as u8));
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), img).unwrap();
        let mut lab = idx_header(&[n]);
        lab.extend((0..n).map(|k| (k % 10) as u8));
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), lab).unwrap();
    }
}
