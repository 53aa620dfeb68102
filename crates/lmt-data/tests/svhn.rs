//! The SVHN .mat reader on committed fixtures (made by scripts/make-svhn-fixtures.py): every pixel
//! position, both label mappings, compressed and uncompressed files, and every bad-input case.

mod common;

use std::path::{Path, PathBuf};

use lmt_data::{load_svhn, parse_svhn_mat, DataError, ImageSet, SvhnLabels, SvhnOptions};

/// The generator's pattern: X[i, j, c, n] = (7 i + 3 j + 80 c + 11 n) mod 256.
fn pattern(i: usize, j: usize, c: usize, n: usize) -> u8 {
    ((7 * i + 3 * j + 80 * c + 11 * n) % 256) as u8
}

const RAW_LABELS: [u8; 8] = [10, 1, 2, 3, 4, 5, 9, 10];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn parse(name: &str, labels: SvhnLabels) -> lmt_data::Result<ImageSet> {
    let p = fixture(name);
    parse_svhn_mat(&std::fs::read(&p).unwrap(), &p, labels)
}

fn check_every_pixel(s: &ImageSet) {
    assert_eq!(s.image_shape(), [3, 32, 32]);
    assert_eq!(s.len(), 8);
    for n in 0..8 {
        let img = s.image(n);
        for c in 0..3 {
            for i in 0..32 {
                for j in 0..32 {
                    assert_eq!(
                        img[c * 1024 + i * 32 + j],
                        pattern(i, j, c, n),
                        "n={n} c={c} i={i} j={j}"
                    );
                }
            }
        }
    }
}

#[test]
fn compressed_uint8_labels_read_exactly() {
    let s = parse("svhn_compressed.mat", SvhnLabels::Digit).unwrap();
    check_every_pixel(&s);
    assert_eq!(s.labels, [0, 1, 2, 3, 4, 5, 9, 0]);
}

#[test]
fn uncompressed_double_labels_read_exactly() {
    let s = parse("svhn_uncompressed.mat", SvhnLabels::Digit).unwrap();
    check_every_pixel(&s);
    assert_eq!(s.labels, [0, 1, 2, 3, 4, 5, 9, 0]);
}

#[test]
fn authors_label_mapping_is_minus_one() {
    let s = parse("svhn_compressed.mat", SvhnLabels::AuthorsMinusOne).unwrap();
    let expected: Vec<u8> = RAW_LABELS.iter().map(|l| l - 1).collect();
    assert_eq!(s.labels, expected);
    assert_eq!(
        s.labels[0], 9,
        "digit 0 (label 10) is class 9 in the authors' mapping"
    );
}

fn svhn_dir(with_extra: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("svhn_compressed.mat"),
        dir.path().join("train_32x32.mat"),
    )
    .unwrap();
    std::fs::copy(
        fixture("svhn_uncompressed.mat"),
        dir.path().join("test_32x32.mat"),
    )
    .unwrap();
    if with_extra {
        std::fs::copy(
            fixture("svhn_compressed.mat"),
            dir.path().join("extra_32x32.mat"),
        )
        .unwrap();
    }
    dir
}

#[test]
fn directory_loads_and_extra_only_when_asked() {
    let dir = svhn_dir(true);
    let d = load_svhn(dir.path(), SvhnOptions::default()).unwrap();
    assert_eq!(
        (d.name.as_str(), d.train.len(), d.test.len()),
        ("svhn", 8, 8)
    );
    assert_eq!(d.files.len(), 2);
    // Fixtures are not the official files: the MD5 check must flag them.
    assert!(d.files.iter().all(|f| f.verified == Some(false)));
    let opts = SvhnOptions {
        include_extra: true,
        ..Default::default()
    };
    let d = load_svhn(dir.path(), opts).unwrap();
    assert_eq!(d.train.len(), 16);
    assert_eq!(d.train.image(8), d.train.image(0));
}

#[test]
fn missing_directory_and_file_say_svhn_dir() {
    let m = load_svhn(Path::new("/nonexistent/svhn"), SvhnOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("/nonexistent/svhn") && m.contains("--svhn-dir"),
        "{m}"
    );
    let dir = svhn_dir(false);
    std::fs::remove_file(dir.path().join("test_32x32.mat")).unwrap();
    let m = load_svhn(dir.path(), SvhnOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("test_32x32.mat") && m.contains("not found") && m.contains("--svhn-dir"),
        "{m}"
    );
    let m = load_svhn(
        svhn_dir(false).path(),
        SvhnOptions {
            include_extra: true,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(m.contains("extra_32x32.mat"), "{m}");
}

#[test]
fn label_out_of_range_is_rejected() {
    let e = parse("svhn_bad_label.mat", SvhnLabels::Digit).unwrap_err();
    assert!(
        matches!(e, DataError::LabelOutOfRange { index: 3, .. }),
        "{e:?}"
    );
    let m = e.to_string();
    assert!(
        m.contains("label 11") && m.contains("1..=10") && m.contains("svhn_bad_label.mat"),
        "{m}"
    );
}

#[test]
fn missing_label_variable_is_named() {
    let m = parse("svhn_no_labels.mat", SvhnLabels::Digit)
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("no variable `y`") && m.contains("svhn_no_labels.mat"),
        "{m}"
    );
}

#[test]
fn mat_v73_hdf5_says_how_to_resave() {
    // A v7.3 file: MATLAB's 512-byte text header, then the HDF5 superblock signature.
    let mut bytes = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .".to_vec();
    bytes.resize(512, b' ');
    bytes.extend_from_slice(b"\x89HDF\r\n\x1a\n");
    bytes.resize(2048, 0);
    let p = Path::new("train_32x32.mat");
    let e = parse_svhn_mat(&bytes, p, SvhnLabels::Digit).unwrap_err();
    assert!(matches!(e, DataError::MatV73 { .. }));
    let m = e.to_string();
    assert!(
        m.contains("v7.3") && m.contains("-v7") && m.contains("train_32x32.mat"),
        "{m}"
    );
}

#[test]
fn non_mat_file_is_rejected() {
    let e = parse_svhn_mat(
        b"<html>not found</html>",
        Path::new("test_32x32.mat"),
        SvhnLabels::Digit,
    )
    .unwrap_err();
    assert!(matches!(e, DataError::BadMagic { .. }), "{e:?}");
    assert!(e.to_string().contains("MATLAB 5.0 MAT-file"));
}

#[test]
fn truncated_mat_is_reported_not_panicked() {
    for name in ["svhn_compressed.mat", "svhn_uncompressed.mat"] {
        let p = fixture(name);
        let bytes = std::fs::read(&p).unwrap();
        for cut in [130, bytes.len() / 2, bytes.len() - 7] {
            let e = parse_svhn_mat(&bytes[..cut], &p, SvhnLabels::Digit).unwrap_err();
            let m = e.to_string();
            assert!(
                m.contains(name) && (m.contains("truncated") || m.contains("corrupt")),
                "cut {cut}: {m}"
            );
        }
    }
}
