//! The architecture's dependency invariants, checked on the crates' manifests.

use std::path::Path;

fn deps(krate: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let toml = std::fs::read_to_string(root.join("crates").join(krate).join("Cargo.toml")).unwrap();
    // Normal dependencies only: what follows [dependencies] up to the next table.
    let start = toml
        .find("[dependencies]")
        .map(|i| i + 14)
        .unwrap_or(toml.len());
    let rest = &toml[start..];
    rest[..rest.find("\n[").unwrap_or(rest.len())].to_string()
}

#[test]
fn data_and_core_depend_on_nothing_of_ours() {
    for krate in ["lmt-data", "lmt-core"] {
        assert!(
            !deps(krate).contains("lmt-"),
            "{krate} depends on another lmt crate:\n{}",
            deps(krate)
        );
    }
    assert!(
        !deps("lmt-data").contains("candle"),
        "lmt-data must not depend on a tensor library"
    );
}

#[test]
fn attacks_never_depend_on_models_and_models_only_on_core() {
    assert!(!deps("lmt-attacks").contains("lmt-models"));
    let models = deps("lmt-models");
    assert!(
        models.contains("lmt-core")
            && !models.contains("lmt-attacks")
            && !models.contains("lmt-analysis")
    );
}

#[test]
fn training_never_depends_on_attacks_or_analysis() {
    let train = deps("lmt-train");
    assert!(
        train.contains("lmt-models")
            && !train.contains("lmt-attacks")
            && !train.contains("lmt-analysis")
    );
}

#[test]
fn only_analysis_knows_plotters_and_only_experiments_knows_clap_and_yaml() {
    for krate in [
        "lmt-data",
        "lmt-core",
        "lmt-models",
        "lmt-attacks",
        "lmt-train",
        "lmt-onnx",
        "lmt-eval",
    ] {
        let d = deps(krate);
        for heavy in ["plotters", "clap", "serde_norway"] {
            assert!(!d.contains(heavy), "{krate} depends on {heavy}");
        }
    }
    assert!(!deps("lmt-analysis").contains("clap"));
}

#[test]
fn the_evaluation_library_knows_no_plotting_and_onnx_only_layers() {
    let eval = deps("lmt-eval");
    for needed in ["lmt-data", "lmt-core", "lmt-models", "lmt-attacks"] {
        assert!(eval.contains(needed), "lmt-eval lacks {needed}");
    }
    assert!(!eval.contains("lmt-analysis") && !eval.contains("lmt-onnx"));
    let onnx = deps("lmt-onnx");
    assert!(onnx.contains("lmt-models") && onnx.contains("prost"));
    for other in [
        "lmt-attacks",
        "lmt-train",
        "lmt-eval",
        "lmt-analysis",
        "lmt-data",
    ] {
        assert!(!onnx.contains(other), "lmt-onnx depends on {other}");
    }
}
