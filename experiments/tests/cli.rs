//! End to end through the binary: smoke-profile training, certification, and the files they write.

use std::path::Path;
use std::process::Command;

fn experiments(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_experiments"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .unwrap()
}

#[test]
fn smoke_train_then_certify_writes_every_file() {
    if !Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data/mnist")
        .is_dir()
    {
        assert!(std::env::var_os("CI").is_none(), "MNIST missing under CI");
        eprintln!("SKIPPED: MNIST not found (run `make data`)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let r = experiments(&[
        "train",
        "--config",
        "mnist_lmt_c1",
        "--profile",
        "smoke",
        "--out",
        out,
        "--no-progress",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let log = std::fs::read_to_string(dir.path().join("log.csv")).unwrap();
    assert_eq!(
        log.lines().next().unwrap(),
        "epoch,train_loss,train_accuracy,test_accuracy,c,estimated_bound,seconds"
    );
    assert_eq!(log.lines().count(), 2);
    let manifest = std::fs::read_to_string(dir.path().join("manifest.json")).unwrap();
    for field in [
        "\"profile\": \"smoke\"",
        "\"reduced\": true",
        "git_revision",
        "\"seed\": 0",
        "\"dataset\": \"mnist\"",
        "sha256",
        "machine",
        "wall_seconds",
    ] {
        assert!(
            manifest.contains(field),
            "manifest lacks {field}:\n{manifest}"
        );
    }
    let ckpt = dir.path().join("checkpoint.safetensors");
    let r = experiments(&[
        "certify",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--test-subset",
        "300",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        stdout.contains("REDUCED")
            && stdout.contains("median certified radius")
            && stdout.contains("(dense)"),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(dir.path().join("certificates.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "index,label,prediction,margin,radius,proposition,bound_method"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 300);
    for row in rows {
        let f: Vec<&str> = row.split(',').collect();
        assert_eq!(f.len(), 7, "{row}");
        let (label, pred, radius): (usize, &str, f64) =
            (f[1].parse().unwrap(), f[2], f[4].parse().unwrap());
        assert!(radius >= 0.0);
        if pred != label.to_string() {
            assert_eq!(radius, 0.0, "a misclassified input has radius 0: {row}");
        }
        assert_eq!((f[5], f[6]), ("prop2", "dense"));
    }
}

#[test]
fn unknown_config_and_bad_flags_give_clear_errors() {
    let r = experiments(&["train", "--config", "no_such_config", "--profile", "smoke"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("no_such_config") && err.contains("mnist_lmt_c1"),
        "{err}"
    );
    let r = experiments(&["train", "--config", "mnist_naive", "--profile", "nope"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("profiles") && err.contains("nope"),
        "{err}"
    );
    let r = experiments(&[
        "certify",
        "--checkpoint",
        "/nonexistent/checkpoint.safetensors",
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("config.yaml"), "{err}");
}

/// The WRN path end to end on the committed SVHN-format fixtures (8 synthetic images: this checks the
/// plumbing, not any accuracy).
#[test]
fn smoke_wide_resnet_on_svhn_format_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fixtures = root.join("crates/lmt-data/tests/fixtures");
    let svhn = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures.join("svhn_compressed.mat"),
        svhn.path().join("train_32x32.mat"),
    )
    .unwrap();
    std::fs::copy(
        fixtures.join("svhn_uncompressed.mat"),
        svhn.path().join("test_32x32.mat"),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let (s, o) = (svhn.path().to_str().unwrap(), out.path().to_str().unwrap());
    let r = experiments(&[
        "train",
        "--config",
        "svhn_lmt_c001",
        "--profile",
        "smoke",
        "--svhn-dir",
        s,
        "--out",
        o,
        "--no-progress",
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(
        err.contains("do not match the official checksums"),
        "fixtures must be flagged as not the official files: {err}"
    );
    let config = std::fs::read_to_string(out.path().join("config.yaml")).unwrap();
    assert!(
        config.contains("width: 1") && config.contains("reduced: true"),
        "{config}"
    );
    let ckpt = out.path().join("checkpoint.safetensors");
    let r = experiments(&[
        "certify",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--svhn-dir",
        s,
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let csv = std::fs::read_to_string(out.path().join("certificates.csv")).unwrap();
    assert_eq!(csv.lines().count(), 9);
    // Without --svhn-dir the run says what it needs.
    let r = experiments(&[
        "train",
        "--config",
        "svhn_weight_decay",
        "--profile",
        "smoke",
        "--out",
        o,
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("--svhn-dir"), "{err}");
}
