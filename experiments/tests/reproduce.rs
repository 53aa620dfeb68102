//! The `smoke` profile of `experiments reproduce` end to end: every analysis subcommand runs, and the
//! files it writes have the right columns, rows, manifests and decodable figures.

use std::path::Path;
use std::process::Command;

fn csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r =
        ::csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    let rows: Vec<Vec<String>> = r
        .records()
        .map(|rec| rec.unwrap().iter().map(str::to_string).collect())
        .collect();
    for r in &rows {
        assert_eq!(r.len(), header.len(), "{}: {r:?}", path.display());
    }
    (header, rows)
}

fn col<'a>(h: &[String], rows: &'a [Vec<String>], name: &str) -> Vec<&'a str> {
    let c = h
        .iter()
        .position(|x| x == name)
        .unwrap_or_else(|| panic!("no column {name} in {h:?}"));
    rows.iter().map(|r| r[c].as_str()).collect()
}

fn manifest(path: &Path) -> String {
    let m = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for field in [
        "\"profile\": \"smoke\"",
        "\"reduced\": true",
        "git_revision",
        "\"seed\"",
        "\"dataset\"",
        "data_checksums",
        "machine",
        "wall_seconds",
        "\"command\"",
    ] {
        assert!(m.contains(field), "{} lacks {field}", path.display());
    }
    m
}

fn figure(stem: &Path) {
    let png = stem.with_extension("png");
    let img =
        image::open(&png).unwrap_or_else(|e| panic!("{}: not a decodable PNG: {e}", png.display()));
    assert!(img.width() > 300 && img.height() > 200, "{}", png.display());
    // Not a blank canvas: some pixels are far from white.
    let rgb = img.to_rgb8();
    assert!(
        rgb.pixels()
            .filter(|p| p.0.iter().any(|&c| c < 128))
            .count()
            > 1000,
        "{} looks empty",
        png.display()
    );
    let svg = std::fs::read_to_string(stem.with_extension("svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>") && svg.contains("<text"));
}

#[test]
fn smoke_reproduce_writes_every_table_figure_and_manifest() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if !root.join("data/mnist").is_dir() {
        assert!(std::env::var_os("CI").is_none(), "MNIST missing under CI");
        eprintln!("SKIPPED: MNIST not found (run `make data`)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (results, figures) = (tmp.path().join("results"), tmp.path().join("figures"));
    // An analysis subcommand at the smoke profile, writing under the temporary results and figures.
    let analysis = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_experiments"))
            .args(args)
            .args(["--profile", "smoke", "--results"])
            .arg(&results)
            .arg("--figures")
            .arg(&figures)
            .env_remove("SVHN_DIR")
            .current_dir(&root)
            .output()
            .unwrap()
    };
    let out = analysis(&["reproduce"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for step in ["fig3", "fig4", "fig5", "table1", "curves", "summary"] {
        assert!(
            err.contains(&format!(": {step}")),
            "step {step} did not run:\n{err}"
        );
    }
    let r = results.join("smoke");
    let f = figures.join("smoke");

    let (h, rows) = csv(&r.join("fig3.csv"));
    assert_eq!(rows.len(), 2 * 6 + 3);
    // Thm. 1+2 (power) is labelled probabilistic, every other bound certified.
    for (method, kind) in col(&h, &rows, "method").iter().zip(col(&h, &rows, "kind")) {
        let want = if method.contains("power") {
            "probabilistic upper bound (random starts)"
        } else {
            "certified upper bound"
        };
        assert_eq!(kind, want, "{method}");
    }
    assert!(col(&h, &rows, "budget")
        .iter()
        .all(|b| b.starts_with("REDUCED")));
    manifest(&r.join("fig3_manifest.json"));
    figure(&f.join("fig3_conv"));
    figure(&f.join("fig3_pool"));

    let (h, rows) = csv(&r.join("fig4_summary.csv"));
    assert_eq!(col(&h, &rows, "model"), ["naive", "AT", "LMT"]);
    assert!(col(&h, &rows, "violations").iter().all(|v| *v == "0"));
    for m in ["naive", "at", "lmt"] {
        let (h, rows) = csv(&r.join(format!("fig4_{m}.csv")));
        assert_eq!(rows.len(), 100);
        let num = |c: &str| -> Vec<f64> {
            col(&h, &rows, c)
                .iter()
                .map(|v| v.parse().unwrap())
                .collect()
        };
        let (a, b, c, d) = (
            num("A_certified_radius"),
            num("B_margin_over_global_lower"),
            num("C_margin_over_local_lower"),
            num("D_worst_attack"),
        );
        for i in 0..100 {
            assert!(
                a[i] <= b[i] * (1.0 + 1e-6) + 1e-12
                    && b[i] <= c[i] * (1.0 + 1e-6) + 1e-12
                    && a[i] <= d[i],
                "{m} row {i}"
            );
        }
    }
    manifest(&r.join("fig4_manifest.json"));
    figure(&f.join("fig4"));

    let (h, rows) = csv(&r.join("fig5.csv"));
    assert_eq!(rows.len(), 8);
    for (lab, pred) in col(&h, &rows, "label")
        .iter()
        .zip(col(&h, &rows, "prediction_after"))
    {
        assert_eq!(*lab, pred, "a certified image changed class");
    }
    manifest(&r.join("fig5_manifest.json"));
    figure(&f.join("fig5"));

    // Without SVHN files Table 1 runs on the stand-in and says so everywhere.
    let (h, rows) = csv(&r.join("table1_standin.csv"));
    assert_eq!(rows.len(), 5);
    assert!(col(&h, &rows, "dataset")
        .iter()
        .all(|d| d.contains("STAND-IN")));
    assert!(
        !r.join("table1.csv").exists(),
        "stand-in results must not be written as table1.csv"
    );
    let m = manifest(&r.join("table1_standin_manifest.json"));
    assert!(m.contains("STAND-IN"));
    for kind in ["cw", "strongest", "certified"] {
        for e in ["0.2", "0.5", "1.0"] {
            let v: Vec<f64> = col(&h, &rows, &format!("{kind}_accuracy_{e}_lo"))
                .iter()
                .map(|v| v.parse().unwrap())
                .collect();
            assert!(
                v.iter().all(|x| (0.0..=100.0).contains(x)),
                "interval of {kind} at {e}"
            );
        }
    }
    figure(&f.join("table1_standin"));

    let (h, rows) = csv(&r.join("curves.csv"));
    let models = col(&h, &rows, "model");
    assert!(
        models
            .iter()
            .any(|m| m.starts_with("standin_") && m.ends_with("svhn_lmt_c001"))
            && models.contains(&"mnist_lmt_c1")
    );
    manifest(&r.join("curves_manifest.json"));
    figure(&f.join("curves_1"));

    let summary = std::fs::read_to_string(r.join("SUMMARY.md")).unwrap();
    for needle in [
        "REDUCED",
        "| quantity | paper | ours | ours / paper |",
        "median certified radius",
        "STAND-IN",
        "Table 1 LMT (c 0.01): accuracy under C&W at L2 0.5 (%)",
        "## Table 1 on",
        "The paper's claim at L2 0.5",
    ] {
        assert!(
            summary.contains(needle),
            "SUMMARY.md lacks {needle}:\n{summary}"
        );
    }

    // `table1 --only`: on a fresh clone (no checkpoints) one row is trained again and the others are
    // read as they stand; the retrained row is the same run, so the table does not change.
    let (_, before) = csv(&r.join("table1_standin.csv"));
    for e in std::fs::read_dir(&r).unwrap() {
        let ckpt = e.unwrap().path().join("checkpoint.safetensors");
        if ckpt.is_file() {
            std::fs::remove_file(ckpt).unwrap();
        }
    }
    let table1 = |only: &str| analysis(&["table1", "--only", only]);
    let out = table1("svhn_lmt_c001");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.matches("read as it stands (not in --only)").count(),
        4,
        "{err}"
    );
    assert!(r
        .join("standin_fashion_svhn_lmt_c001/checkpoint.safetensors")
        .is_file());
    assert!(!r
        .join("standin_fashion_svhn_parseval/checkpoint.safetensors")
        .exists());
    assert_eq!(csv(&r.join("table1_standin.csv")).1, before);
    let m = manifest(&r.join("table1_standin_manifest.json"));
    assert!(
        m.contains("rows trained by this command (--only): svhn_lmt_c001"),
        "{m}"
    );
    // A row read as it stands with the checkpoint of an unfinished run is refused, not attacked.
    let sn = r.join("standin_fashion_svhn_spectral_norm");
    let out = Command::new(env!("CARGO_BIN_EXE_experiments"))
        .args([
            "train",
            "--config",
            "svhn_spectral_norm",
            "--profile",
            "smoke",
        ])
        .args([
            "--svhn-stand-in",
            "--resume",
            "--no-progress",
            "--stop-after-steps",
            "1",
            "--out",
        ])
        .arg(&sn)
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = table1("svhn_lmt_c001");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("an unfinished run (0 of 1 epochs)"),
        "{err}"
    );
    std::fs::remove_file(sn.join("checkpoint.safetensors")).unwrap();
    // A row read as it stands must cover the budget: without its PGD file it is an error naming --only.
    std::fs::remove_file(r.join("standin_fashion_svhn_parseval/attack_pgd_0.5.csv")).unwrap();
    let out = table1("svhn_lmt_c001");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("name svhn_parseval in --only"),
        "{err}"
    );
    let out = table1("svhn_bogus");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--only svhn_bogus: not a Table 1 config"),
        "{err}"
    );
}

/// Every data file a Table 1 run directory holds (checkpoint, certificates, attacks), by name; not the
/// manifests, summaries and training log, which carry times and paths.
fn run_data(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            (name.ends_with(".csv") && name != "log.csv") || name.ends_with(".safetensors")
        })
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// The path a user with the official SVHN files takes: `table1 --svhn-dir` on SVHN-format MAT files
/// (`scripts/make-svhn-fixtures.py` wrote them), with and without `--svhn-extra`, writes `table1.csv`;
/// with `--jobs 2` (rows in stages, two processes of one thread at once) every file holds the same
/// bytes.
#[test]
fn smoke_table1_on_svhn_format_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let svhn = root.join("crates/lmt-data/tests/fixtures/svhn_dir");
    let mut one_job = None;
    for (extra, jobs) in [(false, "1"), (true, "1"), (false, "2")] {
        let tmp = tempfile::tempdir().unwrap();
        let (results, figures) = (tmp.path().join("results"), tmp.path().join("figures"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_experiments"));
        cmd.args(["table1", "--profile", "smoke", "--jobs", jobs, "--svhn-dir"])
            .arg(&svhn)
            .arg("--results")
            .arg(&results)
            .arg("--figures")
            .arg(&figures)
            .env_remove("LMT_JOBS")
            .current_dir(&root);
        if extra {
            cmd.arg("--svhn-extra");
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        let r = results.join("smoke");
        assert!(!r.join("table1_standin.csv").exists());
        let (h, rows) = csv(&r.join("table1.csv"));
        assert_eq!(rows.len(), 5);
        assert!(
            col(&h, &rows, "dataset").iter().all(|d| *d == "svhn"),
            "{:?}",
            col(&h, &rows, "dataset")
        );
        manifest(&r.join("table1_manifest.json"));
        figure(&figures.join("smoke").join("table1"));
        // Training read 64 images, plus 16 from extra when asked.
        let log =
            std::fs::read_to_string(r.join("svhn_weight_decay").join("manifest.json")).unwrap();
        assert_eq!(log.contains("extra_32x32.mat"), extra, "{log}");
        let data: Vec<_> = std::iter::once(r.join("table1.csv"))
            .chain(TABLE1_RUNS.iter().map(|run| r.join(run)))
            .map(|p| {
                if p.is_dir() {
                    run_data(&p)
                } else {
                    vec![(p.display().to_string(), std::fs::read(&p).unwrap())]
                }
            })
            .map(|files| {
                files
                    .into_iter()
                    .map(|(n, b)| (n.replace(&*r.to_string_lossy(), ""), b))
                    .collect::<Vec<_>>()
            })
            .collect();
        if jobs == "2" {
            assert!(
                err.contains("5 rows in stages, up to 2 processes of 1 thread(s) at once"),
                "{err}"
            );
            for stage in ["train", "cw", "deepfool", "pgd"] {
                assert!(err.contains(&format!("[svhn_parseval {stage}] ")), "{err}");
            }
            assert!(
                data == *one_job.as_ref().unwrap(),
                "--jobs 2 changed some file"
            );
        } else if !extra {
            one_job = Some(data);
        }
    }
}

/// The run directories of Table 1's rows on SVHN.
const TABLE1_RUNS: [&str; 5] = [
    "svhn_weight_decay",
    "svhn_parseval",
    "svhn_spectral_norm",
    "svhn_lmt_c001",
    "svhn_avg_lmt_c01",
];
