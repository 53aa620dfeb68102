//! Damaged data files (truncated at random offsets, random bytes flipped) give clean errors or valid
//! data, never a panic or a hang: real MNIST IDX files and the SVHN-format MAT fixtures.

mod common;

use std::path::Path;

use rand::{Rng, SeedableRng};

/// `cases` damaged copies of `good`: half truncated at a random offset, half with 1-8 bytes flipped.
fn damaged(good: &[u8], cases: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..cases)
        .map(|c| {
            let mut b = good.to_vec();
            if c % 2 == 0 {
                b.truncate(rng.random_range(0..good.len()));
            } else {
                for _ in 0..rng.random_range(1..=8) {
                    let at = rng.random_range(0..b.len());
                    b[at] ^= rng.random_range(1..=255u8);
                }
            }
            b
        })
        .collect()
}

/// Runs `read` on every damaged copy; returns (clean errors, still readable).
fn check<T, E: std::fmt::Display>(
    what: &str,
    copies: &[Vec<u8>],
    read: impl Fn(&[u8]) -> Result<T, E>,
) -> (usize, usize) {
    let (mut errors, mut fine) = (0, 0);
    for (i, b) in copies.iter().enumerate() {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            read(b).map(|_| ()).map_err(|e| e.to_string())
        })) {
            Ok(Ok(())) => fine += 1,
            Ok(Err(e)) => {
                assert!(!e.is_empty(), "{what} case {i}: an empty message");
                errors += 1;
            }
            Err(_) => panic!(
                "{what}, damaged copy {i} ({} bytes): the reader panicked",
                b.len()
            ),
        }
    }
    eprintln!(
        "{what}: {} damaged copies, {errors} clean errors, {fine} still readable",
        copies.len()
    );
    (errors, fine)
}

#[test]
fn damaged_idx_files_never_panic() {
    let dir = common::mnist_dir();
    if !common::available(&dir, "MNIST", "run `make data`") {
        return;
    }
    let path = Path::new("t10k-labels-idx1-ubyte");
    let labels = std::fs::read(dir.join(path)).unwrap();
    let (e, _) = check("IDX labels", &damaged(&labels, 300, 1), |b| {
        lmt_data::parse_idx(b, path)
    });
    assert!(e > 100);
    // The first 200 test images as their own IDX file (the whole file is 7.8 MB).
    let images = std::fs::read(dir.join("t10k-images-idx3-ubyte")).unwrap();
    let mut small = common::idx_header(&[200, 28, 28]);
    small.extend_from_slice(&images[16..16 + 200 * 784]);
    let (e, _) = check("IDX images", &damaged(&small, 300, 2), |b| {
        lmt_data::parse_idx(b, path)
    });
    assert!(e > 100);
    // Also through the gzip path.
    let mut gz = Vec::new();
    {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::fast());
        enc.write_all(&labels).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let copies = damaged(&gz, 200, 3);
    let (e, _) = check("gzip IDX labels", &copies, |b| {
        let p = tmp.path().join("t10k-labels-idx1-ubyte.gz");
        std::fs::write(&p, b).unwrap();
        lmt_data::read_idx(&p)
    });
    assert!(e > 50);
}

#[test]
fn damaged_mat_files_never_panic() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (name, seed) in [("svhn_compressed.mat", 4), ("svhn_uncompressed.mat", 5)] {
        let good = std::fs::read(fixtures.join(name)).unwrap();
        let path = Path::new(name);
        let (e, _) = check(name, &damaged(&good, 300, seed), |b| {
            lmt_data::parse_svhn_mat(b, path, lmt_data::SvhnLabels::Digit)
        });
        assert!(e > 100);
    }
}
