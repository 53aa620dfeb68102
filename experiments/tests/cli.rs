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

/// SHA-256 of the smoke-budget checkpoints (Kolter-Wong LMT on MNIST; WRN-16-1 LMT on the SVHN-format
/// fixtures), one pair per gemm depth block (`lmt_analysis::gemm_depth_block`): training is
/// deterministic on hosts with one block, and its last bits differ between blocks. These change exactly
/// when the numerics change: then the committed results under results/ no longer equal what the code
/// produces, and must be regenerated (README, "Reproducing the paper") in the same commit that updates
/// these values. 512: AMD EPYC family 25 (AVX2, 32 KiB 8-way L1d); 1024: AMD EPYC family 26 (AVX-512,
/// 48 KiB 12-way L1d); both blocks measured by the probe on those hosts. Under `--numerics portable`
/// every host gives the 512 pair (`portable_numerics_give_the_512_block_digests_on_every_host`).
const SMOKE_SHA256: [(usize, Smoke); 2] = [
    (
        512,
        Smoke {
            kw: "eb8951051e3f81c682cb2a9664810cf043e279708a1c4c3b4385ba76a9ef8ea9",
            wrn: "c6a3c9901940765f4977aeb5d84269d1c52c85494686aaca2a9d39a02f810438",
        },
    ),
    (
        1024,
        Smoke {
            kw: "7aab807748bf60128777c8231f0b7df3a2258ad5f7c3e003c0c45bc0c0f9d39b",
            wrn: "72ae3caccee94f7c56b2334cdd09b7e9fd887cabcaaeff327c8b1f7e4452c682",
        },
    ),
];

/// The two smoke checkpoints' digests on one class of host.
struct Smoke {
    kw: &'static str,
    wrn: &'static str,
}

/// The pinned digests for this host's gemm depth block; a host with a block none was pinned on fails
/// with the block and what to do.
fn smoke_digests() -> &'static Smoke {
    let block = lmt_analysis::gemm_depth_block();
    let pinned = SMOKE_SHA256.iter().find(|(b, _)| *b == block);
    &pinned
        .unwrap_or_else(|| {
            panic!(
                "no smoke digests are pinned for gemm depth block {block}: add this host's pair to \
                 SMOKE_SHA256 from a checkout whose other pairs hold"
            )
        })
        .1
}

/// SHA-256 over the checkpoint's network tensors (names and bytes, in name order): not its metadata, and
/// not the `meta.` running sums a resumed epoch needs, which describe the run rather than the network.
fn pinned_digest(ckpt: &Path, want: &str) {
    use sha2::Digest;
    let bytes = std::fs::read(ckpt).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    let mut h = sha2::Sha256::new();
    for n in names.into_iter().filter(|n| !n.starts_with("meta.")) {
        h.update(n.as_bytes());
        h.update(st.tensor(n).unwrap().data());
    }
    let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        got,
        want,
        "{}: the numerics changed on a host with gemm depth block {}; regenerate the committed results \
         and update the pinned digests",
        ckpt.display(),
        lmt_analysis::gemm_depth_block()
    );
}

/// Whether `make data` fetched MNIST; under CI its absence is a failure, elsewhere a printed skip.
fn mnist_present() -> bool {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data/mnist")
        .is_dir();
    if !here {
        assert!(std::env::var_os("CI").is_none(), "MNIST missing under CI");
        eprintln!("SKIPPED: MNIST not found (run `make data`)");
    }
    here
}

#[test]
fn smoke_train_then_certify_writes_every_file() {
    if !mnist_present() {
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
    pinned_digest(&ckpt, smoke_digests().kw);
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
        "index,label,prediction,margin,logit_error,radius,proposition,bound_method"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 300);
    for row in rows {
        let f: Vec<&str> = row.split(',').collect();
        assert_eq!(f.len(), 8, "{row}");
        let (label, pred, radius): (usize, &str, f64) =
            (f[1].parse().unwrap(), f[2], f[5].parse().unwrap());
        let logit_error: f64 = f[4].parse().unwrap();
        assert!(
            logit_error > 0.0 && logit_error < 1e-6,
            "the f64 pass's error bound is positive and tiny: {row}"
        );
        assert!(radius >= 0.0);
        if pred != label.to_string() {
            assert_eq!(radius, 0.0, "a misclassified input has radius 0: {row}");
        }
        assert_eq!((f[6], f[7]), ("prop2", "dense"));
    }
    attacks_agree_with_certificates(dir.path(), &ckpt);
    export_then_import_certifies_the_same(dir.path(), &ckpt, &csv);
    // The checkpoint alone says what it is: certify works without config.yaml beside it.
    let alone = tempfile::tempdir().unwrap();
    let copy = alone.path().join("checkpoint.safetensors");
    std::fs::copy(&ckpt, &copy).unwrap();
    let r = experiments(&[
        "certify",
        "--checkpoint",
        copy.to_str().unwrap(),
        "--test-subset",
        "50",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // An output directory that cannot be written fails before any attack runs (root ignores
    // permissions, so the directory sits under a regular file), and an empty test subset is refused.
    let blocked = copy.join("out");
    let r = experiments(&[
        "attack",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--attack",
        "cw",
        "--out",
        blocked.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("output directory") && err.contains("out"),
        "{err}"
    );
    let said = format!("{}{err}", String::from_utf8_lossy(&r.stdout));
    assert!(
        !said.contains("attacking"),
        "the unwritable output was found only after the attack began: {said}"
    );
    for cmd in ["certify", "attack"] {
        let r = experiments(&[
            cmd,
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--test-subset",
            "0",
        ]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            !r.status.success() && err.contains("test-subset"),
            "{cmd}: {err}"
        );
    }
}

/// `export` writes the checkpoint as ONNX; `certify --onnx` of that file gives the same certificates.
fn export_then_import_certifies_the_same(dir: &Path, ckpt: &Path, checkpoint_csv: &str) {
    let onnx = dir.join("model.onnx");
    let r = experiments(&["export", "--checkpoint", ckpt.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stdout).contains("within"));
    let r = experiments(&["export", "--checkpoint", ckpt.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("--force"),
        "never overwrite unasked: {err}"
    );
    let out = dir.join("imported");
    let r = experiments(&[
        "certify",
        "--onnx",
        onnx.to_str().unwrap(),
        "--dataset",
        "mnist",
        "--test-subset",
        "300",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let imported = std::fs::read_to_string(out.join("certificates.csv")).unwrap();
    let radii = |csv: &str| -> Vec<f64> {
        let col = csv
            .lines()
            .next()
            .unwrap()
            .split(',')
            .position(|h| h == "radius")
            .unwrap();
        csv.lines()
            .skip(1)
            .map(|l| l.split(',').nth(col).unwrap().parse().unwrap())
            .collect()
    };
    let (a, b) = (radii(checkpoint_csv), radii(&imported));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() <= 1e-6 * x.max(1e-12),
            "radius {x} from the checkpoint, {y} from its export"
        );
    }
    let manifest = std::fs::read_to_string(out.join("certify_manifest.json")).unwrap();
    assert!(
        manifest.contains("\"model\": \"onnx ") && manifest.contains("sha256"),
        "{manifest}"
    );
}

/// Parses `attack_<name>.csv`: per input (success, distance, certified radius).
fn attack_rows(dir: &Path, name: &str) -> Vec<(bool, Option<f64>, f64)> {
    let csv = std::fs::read_to_string(dir.join(format!("attack_{name}.csv"))).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "index,label,success,distance,iterations,certified_radius"
    );
    lines
        .map(|row| {
            let f: Vec<&str> = row.split(',').collect();
            (
                f[2].parse().unwrap(),
                (!f[3].is_empty()).then(|| f[3].parse().unwrap()),
                f[5].parse().unwrap(),
            )
        })
        .collect()
}

/// On the smoke-trained LMT model: every successful attack lies outside the certified radius (the
/// command also fails on a violation), and C&W's distance is at most DeepFool's on most inputs.
fn attacks_agree_with_certificates(dir: &Path, ckpt: &Path) {
    let ckpt = ckpt.to_str().unwrap();
    // C&W on MNIST needs ~700 Adam steps of the authors' 0.01 to move a saturated pixel through tanh
    // space; step size 0.1 and six binary steps from c = 1 on 20 inputs keep this test short.
    for extra in [
        &["--attack", "deepfool", "--test-subset", "100"][..],
        &[
            "--attack",
            "deepfool",
            "--test-subset",
            "20",
            "--deepfool-clip",
        ][..],
        &[
            "--attack",
            "cw",
            "--test-subset",
            "20",
            "--cw-iterations",
            "150",
            "--cw-binary-steps",
            "6",
            "--cw-initial-const",
            "1",
            "--cw-lr",
            "0.1",
        ][..],
        &[
            "--attack",
            "pgd",
            "--test-subset",
            "100",
            "--epsilon",
            "1.0",
            "--pgd-steps",
            "10",
        ][..],
    ] {
        let mut args = vec!["attack", "--checkpoint", ckpt];
        args.extend_from_slice(extra);
        let r = experiments(&args);
        let out = String::from_utf8_lossy(&r.stdout);
        assert!(
            r.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(
            out.contains("no successful attack inside a certified radius")
                && out.contains("REDUCED"),
            "{out}"
        );
    }
    let df = attack_rows(dir, "deepfool");
    let cw = attack_rows(dir, "cw");
    let pgd = attack_rows(dir, "pgd_1");
    let df_clip = attack_rows(dir, "deepfool_clip");
    assert_eq!((df.len(), cw.len(), pgd.len()), (100, 20, 100));
    for (s, d, r) in df.iter().chain(&cw).chain(&pgd).chain(&df_clip) {
        assert_eq!(
            *s,
            d.is_some(),
            "a distance is reported exactly for successes"
        );
        if let Some(d) = d {
            assert!(*d >= *r, "attack at {d} inside certified radius {r}");
        }
    }
    for (s, d, _) in &pgd {
        assert!(!s || d.unwrap() <= 1.0, "PGD left its ball");
    }
    // Both in the box [0, 1]: C&W against DeepFool with clipping (unclipped DeepFool may leave the box).
    let both: Vec<(f64, f64)> = cw
        .iter()
        .zip(&df_clip)
        .filter_map(|(c, d)| Some((c.1?, d.1?)))
        .filter(|&(_, d)| d > 0.0)
        .collect();
    let cw_closer = both.iter().filter(|(c, d)| c <= &(d * 1.0001)).count();
    eprintln!(
        "C&W distance <= clipped DeepFool's on {cw_closer}/{} correctly classified inputs where both succeeded",
        both.len()
    );
    assert!(
        both.len() >= 8 && cw_closer * 2 > both.len(),
        "{cw_closer}/{}",
        both.len()
    );
}

#[test]
fn unknown_config_and_bad_flags_give_clear_errors() {
    let r = experiments(&["train", "--config", "no_such_config", "--profile", "smoke"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("no_such_config") && err.contains("mnist_lmt_c1"),
        "{err}"
    );
    // Profiles are checked when the command line is parsed, by every command that takes one.
    for cmd in ["train", "fig4", "reproduce"] {
        let mut args = vec![cmd, "--profile", "smok"];
        if cmd == "train" {
            args.extend(["--config", "mnist_naive"]);
        }
        let r = experiments(&args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            !r.status.success() && err.contains("smok") && err.contains("overnight"),
            "{cmd}: {err}"
        );
    }
    let r = experiments(&[
        "certify",
        "--checkpoint",
        "/nonexistent/checkpoint.safetensors",
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("config.yaml"), "{err}");
}

/// The SVHN-format fixtures as official file names in a fresh directory.
fn svhn_fixture_dir() -> tempfile::TempDir {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/lmt-data/tests/fixtures");
    let svhn = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("svhn_compressed.mat", "train_32x32.mat"),
        ("svhn_uncompressed.mat", "test_32x32.mat"),
    ] {
        std::fs::copy(fixtures.join(from), svhn.path().join(to)).unwrap();
    }
    svhn
}

/// Portable numerics reduce every deep product in a 512-block host's blocks, so both smoke checkpoints
/// come out bit for bit as on a 512-block host whatever this host's block, and the manifest says so.
#[test]
fn portable_numerics_give_the_512_block_digests_on_every_host() {
    if !mnist_present() {
        return;
    }
    let pinned = &SMOKE_SHA256.iter().find(|(b, _)| *b == 512).unwrap().1;
    let svhn = svhn_fixture_dir();
    let s = svhn.path().to_str().unwrap();
    for (config, extra, want) in [
        ("mnist_lmt_c1", &[][..], pinned.kw),
        ("svhn_lmt_c001", &["--svhn-dir", s][..], pinned.wrn),
    ] {
        let out = tempfile::tempdir().unwrap();
        let o = out.path().to_str().unwrap();
        let mut args = vec![
            "--numerics",
            "portable",
            "train",
            "--config",
            config,
            "--profile",
            "smoke",
            "--out",
            o,
            "--no-progress",
        ];
        args.extend_from_slice(extra);
        let r = experiments(&args);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        pinned_digest(&out.path().join("checkpoint.safetensors"), want);
        let manifest = std::fs::read_to_string(out.path().join("manifest.json")).unwrap();
        assert!(manifest.contains("portable numerics"), "{manifest}");
    }
    let r = experiments(&["--numerics", "fast", "data-info"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("--numerics") && err.contains("portable"),
        "{err}"
    );
}

/// The WRN path end to end on the committed SVHN-format fixtures (8 synthetic images: this checks the
/// plumbing, not any accuracy).
#[test]
fn smoke_wide_resnet_on_svhn_format_files() {
    let svhn = svhn_fixture_dir();
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
    pinned_digest(&ckpt, smoke_digests().wrn);
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
    // A config.yaml that describes another network than the checkpoint's is refused, even when every
    // tensor name would fit (avg_pool_shortcut flipped; the LMT run read as a Parseval one).
    let cfg = out.path().join("config.yaml");
    let original = std::fs::read_to_string(&cfg).unwrap();
    let other = tempfile::tempdir().unwrap();
    let r = experiments(&[
        "train",
        "--config",
        "svhn_weight_decay",
        "--profile",
        "smoke",
        "--svhn-dir",
        s,
        "--out",
        other.path().to_str().unwrap(),
        "--no-progress",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let foreign = std::fs::read_to_string(other.path().join("config.yaml")).unwrap();
    let flipped = original.replace("avg_pool_shortcut: false", "avg_pool_shortcut: true");
    assert_ne!(flipped, original);
    for (text, what) in [(flipped, "network"), (foreign, "method")] {
        std::fs::write(&cfg, text).unwrap();
        let r = experiments(&[
            "certify",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--svhn-dir",
            s,
        ]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            !r.status.success() && err.contains("does not describe") && err.contains(what),
            "{err}"
        );
    }
    std::fs::write(&cfg, original).unwrap();
    // A run directory is never overwritten unasked, and never resumed with another config.
    let again = [
        "train",
        "--config",
        "svhn_lmt_c001",
        "--profile",
        "smoke",
        "--svhn-dir",
        s,
        "--out",
        o,
    ];
    let r = experiments(&again);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("already holds a run") && err.contains("--force"),
        "{err}"
    );
    let r = experiments(&[
        "train",
        "--config",
        "svhn_weight_decay",
        "--profile",
        "smoke",
        "--svhn-dir",
        s,
        "--out",
        o,
        "--resume",
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("another config") && err.contains("svhn_weight_decay"),
        "{err}"
    );
    // Without --svhn-dir the run says what it needs.
    let fresh = tempfile::tempdir().unwrap();
    let r = experiments(&[
        "train",
        "--config",
        "svhn_weight_decay",
        "--profile",
        "smoke",
        "--out",
        fresh.path().to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("--svhn-dir"), "{err}");
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/lmt-onnx/tests/fixtures")
        .join(name)
        .to_string_lossy()
        .to_string()
}

/// A PyTorch-exported CNN: certify, attack (checked against the certificates) and inequality (5) on
/// MNIST and on the user's own images in IDX files; inputs that do not fit are errors.
#[test]
fn onnx_models_certify_attack_and_tightness() {
    if !mnist_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let cnn = fixture("cnn_bn_maxpool.onnx");
    let common = ["--onnx", cnn.as_str(), "--dataset", "mnist", "--out", out];
    let r = experiments(&[&["certify", "--test-subset", "200"][..], &common].concat());
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        stdout.contains("proposition 2") && stdout.contains("certified accuracy at L2 radius 1.58"),
        "{stdout}"
    );
    let r = experiments(
        &[
            &["attack", "--attack", "deepfool", "--test-subset", "100"][..],
            &common,
        ]
        .concat(),
    );
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success() && stdout.contains("no successful attack inside a certified radius"),
        "{stdout}"
    );
    let r = experiments(
        &[
            &["tightness", "--test-subset", "50", "--draws", "3"][..],
            &common,
        ]
        .concat(),
    );
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        stdout.contains("(i) B/A") && stdout.contains("breaking A <= B <= C or A <= D: 0"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("tightness.csv"))
            .unwrap()
            .lines()
            .count(),
        51
    );

    // The first 30 MNIST test images as the user's own IDX files.
    let mnist =
        lmt_data::load_mnist(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist")).unwrap();
    let mut img = vec![0, 0, 8, 3, 0, 0, 0, 30, 0, 0, 0, 28, 0, 0, 0, 28];
    img.extend_from_slice(&mnist.test.pixels[..30 * 784]);
    let mut lab = vec![0, 0, 8, 1, 0, 0, 0, 30];
    lab.extend_from_slice(&mnist.test.labels[..30]);
    let (ip, lp) = (dir.path().join("imgs.idx"), dir.path().join("labs.idx"));
    std::fs::write(&ip, img).unwrap();
    std::fs::write(&lp, lab).unwrap();
    let r = experiments(&[
        "certify",
        "--onnx",
        &cnn,
        "--idx-images",
        ip.to_str().unwrap(),
        "--idx-labels",
        lp.to_str().unwrap(),
        "--out",
        out,
    ]);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success()
            && stdout.contains("30 idx:imgs.idx (user images, not an official data set)"),
        "{stdout}"
    );

    // Certificates of another model are never used to check an attack.
    let r = experiments(&[
        "attack",
        "--attack",
        "deepfool",
        "--test-subset",
        "10",
        "--onnx",
        &fixture("depthwise_concat.onnx"),
        "--dataset",
        "mnist",
        "--out",
        out,
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("of another model"),
        "{err}"
    );

    // Inputs that do not fit, and a missing data set, are errors that say what to do.
    let r = experiments(&[
        "certify",
        "--onnx",
        &fixture("resnet_avgpool.onnx"),
        "--dataset",
        "mnist",
        "--out",
        out,
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("[3, 16, 16]") && err.contains("1 x 28 x 28"),
        "{err}"
    );
    let r = experiments(&["certify", "--onnx", &cnn, "--out", out]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("--dataset"), "{err}");
    let r = experiments(&[
        "certify",
        "--onnx",
        &fixture("bad_unknown_op.onnx"),
        "--dataset",
        "mnist",
        "--out",
        out,
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("(Erf)"), "{err}");
    let r = experiments(&[
        "certify",
        "--onnx",
        &cnn,
        "--dataset",
        "mnist",
        "--test-subset",
        "0",
        "--out",
        out,
    ]);
    assert!(!r.status.success(), "--test-subset 0 is refused");
}

/// `modern` end to end on its smoke budget: one setting per family trained on a validation split and
/// certified on the held-out images (never the test set), the chosen ones certified on the test set, and
/// the table, SUMMARY.md, figure and manifests written, every output labelled REDUCED.
#[test]
fn modern_sweeps_on_a_validation_split_and_writes_table_summary_and_figure() {
    if !mnist_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (results, figures) = (dir.path().join("r"), dir.path().join("f"));
    let modern = || {
        experiments(&[
            "modern",
            "--budget",
            "smoke",
            "--results",
            results.to_str().unwrap(),
            "--figures",
            figures.to_str().unwrap(),
        ])
    };
    let r = modern();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let root = results.join("modern-smoke");
    let t = std::fs::read_to_string(root.join("table.csv")).unwrap();
    let mut rdr = csv::Reader::from_reader(t.as_bytes());
    let header = rdr.headers().unwrap().clone();
    for col in [
        "certified_0.5",
        "certified_1",
        "certified_1.58_lo",
        "clean_hi",
    ] {
        assert!(
            header.iter().any(|h| h == col),
            "no column {col}: {header:?}"
        );
    }
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    let stage = header.iter().position(|h| h == "stage").unwrap();
    let points = header.iter().position(|h| h == "points").unwrap();
    let sweep: Vec<_> = rows
        .iter()
        .filter(|r| r[stage].starts_with("sweep"))
        .collect();
    let long: Vec<_> = rows
        .iter()
        .filter(|r| r[stage].starts_with("long"))
        .collect();
    // Five families on the Kolter-Wong CNN (three with ReLU, two with MinMax), and the best of them once
    // more on 4C3F.
    assert_eq!((sweep.len(), long.len()), (5, 6), "{t}");
    assert!(long.iter().any(|r| r[2].starts_with("4C3F")), "{t}");
    assert!(
        sweep.iter().all(|r| &r[points] == "500"),
        "validation points"
    );
    assert!(
        long.iter().all(|r| &r[points] == "500"),
        "test points of the smoke budget"
    );
    assert!(rows.iter().all(|r| r[r.len() - 1].contains("REDUCED")));
    // The sweep's certificates are of the held-out training images, and say so.
    let sweep_dir = root.join("sweep").join("modern_kw_lmt_capped_c0.25");
    let m = std::fs::read_to_string(sweep_dir.join("certify_manifest.json")).unwrap();
    assert!(
        m.contains("VALIDATION split") && m.contains("validation split"),
        "{m}"
    );
    let summary = std::fs::read_to_string(root.join("SUMMARY.md")).unwrap();
    assert!(summary.contains("BCOP-Small") && summary.contains("45.84"));
    assert!(summary.contains("REDUCED"));
    for ext in ["png", "svg"] {
        let f = figures
            .join("modern-smoke")
            .join(format!("clean_vs_certified.{ext}"));
        assert!(
            std::fs::metadata(&f).unwrap().len() > 1000,
            "{}",
            f.display()
        );
    }
    assert!(root.join("table_manifest.json").is_file());
    // A second run reuses everything: no training, no certification.
    let again = modern();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        again.status.success() && !err.contains("certified upper bounds"),
        "{err}"
    );
}
