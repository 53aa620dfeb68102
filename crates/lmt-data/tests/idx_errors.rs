//! Every bad IDX input gives an error that names the file and the fix.

mod common;

use std::io::Write;

use common::{idx_header, write_tiny_mnist};
use lmt_data::{load_mnist, read_idx, DataError};

fn message(e: DataError) -> String {
    e.to_string()
}

#[test]
fn tiny_valid_directory_loads_raw_and_gz() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_mnist(dir.path(), 12);
    // Replace one raw file by its gzip: detection is by magic bytes.
    let p = dir.path().join("t10k-labels-idx1-ubyte");
    let raw = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).unwrap();
    std::fs::write(
        dir.path().join("t10k-labels-idx1-ubyte.gz"),
        gz.finish().unwrap(),
    )
    .unwrap();
    let d = load_mnist(dir.path()).unwrap();
    assert_eq!(d.test.labels, (0..12).map(|k| k % 10).collect::<Vec<u8>>());
    assert_eq!(d.train.image(1)[0], (784 % 251) as u8);
    // Our synthetic files are not the real ones: the checksum check must say so.
    assert!(!d.all_verified());
    assert_eq!(d.files[0].status(), "MISMATCH");
}

#[test]
fn missing_directory_says_make_data() {
    let m = message(load_mnist(std::path::Path::new("/nonexistent/mnist")).unwrap_err());
    assert!(
        m.contains("/nonexistent/mnist") && m.contains("make data") && m.contains("--mnist-dir"),
        "{m}"
    );
}

#[test]
fn missing_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_mnist(dir.path(), 3);
    std::fs::remove_file(dir.path().join("t10k-images-idx3-ubyte")).unwrap();
    let m = message(load_mnist(dir.path()).unwrap_err());
    assert!(
        m.contains("t10k-images-idx3-ubyte") && m.contains("not found") && m.contains("make data"),
        "{m}"
    );
}

#[test]
fn wrong_magic_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    std::fs::write(&p, b"PK\x03\x04 this is a zip file").unwrap();
    let e = read_idx(&p).unwrap_err();
    assert!(matches!(e, DataError::BadMagic { .. }));
    let m = message(e);
    assert!(
        m.contains("not an IDX file")
            && m.contains("50 4b 03 04")
            && m.contains(p.to_str().unwrap()),
        "{m}"
    );
}

#[test]
fn truncated_file_reports_expected_and_found_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("train-images-idx3-ubyte");
    let mut bytes = idx_header(&[2, 28, 28]);
    bytes.extend(vec![0u8; 1000]);
    std::fs::write(&p, bytes).unwrap();
    let e = read_idx(&p).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::Truncated {
                expected: 1568,
                found: 1000,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(message(e).contains("truncated"));
    // A header cut short is truncated too.
    std::fs::write(&p, &idx_header(&[2, 28, 28])[..9]).unwrap();
    assert!(matches!(
        read_idx(&p).unwrap_err(),
        DataError::Truncated { .. }
    ));
}

#[test]
fn trailing_bytes_are_a_header_size_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("labels");
    let mut bytes = idx_header(&[4]);
    bytes.extend([1, 2, 3, 4, 5]);
    std::fs::write(&p, bytes).unwrap();
    let m = message(read_idx(&p).unwrap_err());
    assert!(
        m.contains("[4]") && m.contains("give 4 bytes") && m.contains("holds 5"),
        "{m}"
    );
}

#[test]
fn image_and_label_counts_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_mnist(dir.path(), 5);
    let mut lab = idx_header(&[4]);
    lab.extend([0, 1, 2, 3]);
    std::fs::write(dir.path().join("train-labels-idx1-ubyte"), lab).unwrap();
    let m = message(load_mnist(dir.path()).unwrap_err());
    assert!(
        m.contains("4 labels but 5 images") && m.contains("train-labels-idx1-ubyte"),
        "{m}"
    );
}

#[test]
fn wrong_image_shape_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_mnist(dir.path(), 2);
    let mut img = idx_header(&[2, 32, 32]);
    img.extend(vec![0u8; 2 * 32 * 32]);
    std::fs::write(dir.path().join("train-images-idx3-ubyte"), img).unwrap();
    let m = message(load_mnist(dir.path()).unwrap_err());
    assert!(
        m.contains("N x 28 x 28") && m.contains("[2, 32, 32]"),
        "{m}"
    );
}

#[test]
fn label_out_of_range_names_index_and_value() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_mnist(dir.path(), 3);
    let mut lab = idx_header(&[3]);
    lab.extend([0, 12, 1]);
    std::fs::write(dir.path().join("t10k-labels-idx1-ubyte"), lab).unwrap();
    let e = load_mnist(dir.path()).unwrap_err();
    assert!(
        matches!(e, DataError::LabelOutOfRange { index: 1, .. }),
        "{e:?}"
    );
    let m = message(e);
    assert!(
        m.contains("label 12") && m.contains("0..=9") && m.contains("t10k-labels"),
        "{m}"
    );
}

#[test]
fn corrupt_gzip_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&vec![7u8; 5000]).unwrap();
    let bytes = gz.finish().unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let m = message(read_idx(&p).unwrap_err());
    assert!(
        m.contains("gzip stream is corrupt or truncated") && m.contains("a.gz"),
        "{m}"
    );
}
