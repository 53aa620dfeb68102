//! Golden values from the real MNIST and Fashion-MNIST files.

mod common;

use std::path::Path;

use lmt_data::{load_fashion_mnist, load_mnist, FASHION_DEFAULT_DIR};

#[test]
fn mnist_has_the_canonical_shape_counts_pixels_and_mean() {
    let dir = common::mnist_dir();
    if !common::available(&dir, "MNIST", "run `make data`") {
        return;
    }
    let d = load_mnist(&dir).unwrap();
    assert_eq!(d.name, "mnist");
    assert!(d.all_verified(), "checksums: {:?}", d.files);
    assert_eq!(d.train.image_shape(), [1, 28, 28]);
    assert_eq!((d.train.len(), d.test.len()), (60_000, 10_000));
    assert_eq!(
        d.train.class_counts(),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(
        d.test.class_counts(),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    // Row 5 of the famous first training image (a 5).
    let row5 = &d.train.image(0)[5 * 28..6 * 28];
    let mut expected = [0u8; 28];
    expected[12..24].copy_from_slice(&[3, 18, 18, 18, 126, 136, 175, 26, 166, 255, 247, 127]);
    assert_eq!(row5, expected);
    assert_eq!(d.train.labels[..10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    assert_eq!(d.test.labels[0], 7);
    assert!(
        (d.train.mean_pixel() - 0.1307).abs() < 1e-4,
        "{}",
        d.train.mean_pixel()
    );
    assert!(
        (d.test.mean_pixel() - 0.1325).abs() < 1e-4,
        "{}",
        d.test.mean_pixel()
    );
}

#[test]
fn mnist_batches_are_scaled_to_unit_interval() {
    let dir = common::mnist_dir();
    if !common::available(&dir, "MNIST", "run `make data`") {
        return;
    }
    let d = load_mnist(&dir).unwrap();
    let (x, y) = d.train.batch_f32(&[0, 1]);
    assert_eq!(x.len(), 2 * 784);
    assert_eq!(y, [5, 0]);
    assert_eq!(x[5 * 28 + 21], 1.0); // the 255 of row 5
    assert_eq!(x[5 * 28 + 12], 3.0 / 255.0);
    assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn fashion_mnist_has_balanced_classes_and_known_mean() {
    let dir = Path::new(FASHION_DEFAULT_DIR);
    if !common::available(
        dir,
        "Fashion-MNIST",
        "apt-get install dataset-fashion-mnist",
    ) {
        return;
    }
    let d = load_fashion_mnist(dir).unwrap();
    assert!(d.all_verified(), "checksums: {:?}", d.files);
    assert_eq!((d.train.len(), d.test.len()), (60_000, 10_000));
    assert_eq!(d.train.class_counts(), [6000; 10]);
    assert_eq!(d.test.class_counts(), [1000; 10]);
    assert_eq!(d.train.labels[..10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]);
    assert_eq!(d.test.labels[..10], [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]);
    assert!(
        (d.train.mean_pixel() - 0.2860).abs() < 1e-4,
        "{}",
        d.train.mean_pixel()
    );
}

#[test]
fn data_sets_are_named_by_their_digests_not_by_the_flag() {
    let mnist = common::mnist_dir();
    if !common::available(&mnist, "MNIST", "run `make data`") {
        return;
    }
    assert_eq!(lmt_data::load_mnist(&mnist).unwrap().name, "mnist");
    // Tiny MNIST-format files are MNIST-format files, not MNIST.
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_mnist(dir.path(), 20);
    let name = lmt_data::load_mnist(dir.path()).unwrap().name;
    assert!(
        name.contains("not the official mnist set")
            && name.contains(&dir.path().display().to_string()),
        "{name}"
    );
    // Fashion-MNIST passed where MNIST is expected is named Fashion-MNIST.
    let fashion = std::path::Path::new(lmt_data::FASHION_DEFAULT_DIR);
    if common::available(
        fashion,
        "Fashion-MNIST",
        "apt-get install dataset-fashion-mnist",
    ) {
        let name = lmt_data::load_mnist(fashion).unwrap().name;
        assert!(
            name.starts_with("fashion-mnist (the official files, given as mnist)"),
            "{name}"
        );
    }
}
