//! Classifiers exported by PyTorch (`scripts/make-onnx-fixtures.py`): our logits equal PyTorch's, our
//! certified bound equals the exact per-layer bound the script computed in float64, no Jacobian norm
//! found by a search exceeds it, and PGD never succeeds inside a certified radius. Bad files give
//! clear errors.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lmt_attacks::{pgd, PgdConfig};
use lmt_core::{certify_prop1, certify_prop2, CertifiedBound};
use lmt_models::{CertifyMethod, Classifier, Ctx, Lip};
use rand::SeedableRng;
use rand_distr::{Distribution, Uniform};

const FIXTURES: [&str; 5] = [
    "cnn_bn_maxpool",
    "resnet_avgpool",
    "mlp_normalised_sigmoid",
    "depthwise_concat",
    "mlp_unbatched",
];

fn path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

struct Fixture {
    model: lmt_onnx::Imported,
    inputs: Tensor,
    logits: Vec<f32>,
    bound_l: f64,
    bound_l_sub: f64,
}

fn fixture(name: &str) -> Fixture {
    let model = lmt_onnx::load(&path(&format!("{name}.onnx"))).unwrap();
    let io = candle_core::safetensors::load(path(&format!("{name}_io.safetensors")), &Device::Cpu)
        .unwrap();
    let scalar = |k: &str| io[k].to_vec1::<f64>().unwrap()[0];
    Fixture {
        model,
        inputs: io["inputs"].clone(),
        logits: io["logits"].flatten_all().unwrap().to_vec1().unwrap(),
        bound_l: scalar("bound_l"),
        bound_l_sub: scalar("bound_l_sub"),
    }
}

fn bounds(g: &dyn Classifier, x: &Tensor) -> (CertifiedBound, CertifiedBound) {
    let out = g
        .forward(
            &x.narrow(0, 0, 1).unwrap(),
            Lip::Certified(CertifiedBound::one()),
            &Ctx::eval(CertifyMethod::Auto),
        )
        .unwrap();
    (out.l_sub.certified().unwrap(), out.l.certified().unwrap())
}

#[test]
fn logits_equal_pytorch_and_bounds_equal_the_exact_layer_bounds() {
    for name in FIXTURES {
        let f = fixture(name);
        let g = &f.model.graph;
        let ours: Vec<f32> = g
            .eval_logits(&f.inputs)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let scale = f.logits.iter().fold(1f32, |m, v| m.max(v.abs()));
        let worst = ours
            .iter()
            .zip(&f.logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-5 * scale, "{name}: logits differ by {worst}");
        let (l_sub, l) = bounds(g, &f.inputs);
        for (what, ours, exact) in [
            ("L", l.value(), f.bound_l),
            ("L_sub", l_sub.value(), f.bound_l_sub),
        ] {
            assert!(
                ours >= exact * (1.0 - 1e-7) && ours <= exact * (1.0 + 1e-6),
                "{name}: {what} {ours} vs the exact layer bound {exact}"
            );
        }
        assert!(
            g.last_linear().is_some(),
            "{name} ends in a linear layer: Prop. 2 applies"
        );
        eprintln!(
            "{name}: logits within {worst:.1e}; L = {} (exact {:.6}), L_sub = {}",
            l, f.bound_l, l_sub
        );
    }
    let dw = fixture("depthwise_concat").model.graph;
    assert!(
        dw.notes().iter().any(|n| n.contains("Softmax")),
        "the dropped softmax is noted"
    );
}

/// The spectral norm of the logits' Jacobian at `x` (one image), from one backward pass per class.
fn jacobian_norm(g: &dyn Classifier, x: &Tensor) -> f64 {
    let v = candle_core::Var::from_tensor(x).unwrap();
    let z = g.eval_logits(v.as_tensor()).unwrap();
    let k = z.dim(1).unwrap();
    let n = x.elem_count();
    let mut rows = Vec::with_capacity(k * n);
    for c in 0..k {
        let grads = z
            .narrow(1, c, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gr: Vec<f32> = grads
            .get(&v)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        rows.extend(gr.iter().map(|&x| x as f64));
    }
    let m = nalgebra::DMatrix::from_row_slice(k, n, &rows);
    m.singular_values().iter().cloned().fold(0.0, f64::max)
}

#[test]
fn no_jacobian_norm_found_exceeds_the_bound_and_pgd_fails_inside_certified_radii() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let u = Uniform::new(0f32, 1.0).unwrap();
    for name in FIXTURES {
        let f = fixture(name);
        let g = &f.model.graph;
        let (l_sub, l) = bounds(g, &f.inputs);
        let per: usize = f.inputs.dims()[1..].iter().product();
        let mut best: f64 = 0.0;
        for i in 0..12 {
            let x = if i < 4 {
                f.inputs.narrow(0, i, 1).unwrap()
            } else {
                let v: Vec<f32> = (0..per).map(|_| u.sample(&mut rng)).collect();
                Tensor::from_vec(v, f.inputs.narrow(0, 0, 1).unwrap().shape(), &Device::Cpu)
                    .unwrap()
            };
            best = best.max(jacobian_norm(g, &x));
        }
        assert!(
            best <= l.value(),
            "{name}: a Jacobian norm {best} exceeds the bound {}",
            l.value()
        );
        // Certify the stored inputs against the class the model predicts, then attack inside the radius.
        let z: Vec<f32> = g
            .eval_logits(&f.inputs)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let k = g.classes();
        let labels: Vec<usize> = z
            .chunks(k)
            .map(|r| (0..k).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap())
            .collect();
        let w = lmt_models::tensor_f64(g.last_weight().unwrap()).unwrap();
        let p2 = certify_prop2(&z, k, &labels, &l_sub, &w, w.len() / k).unwrap();
        let p1 = certify_prop1(&z, k, &labels, &l).unwrap();
        let f_logits = |x: &Tensor| g.eval_logits(x);
        let mut attacked = 0;
        for (i, c) in p2.iter().enumerate() {
            assert!(
                c.radius >= p1[i].radius * (1.0 - 1e-9),
                "{name}: Prop. 2 below Prop. 1"
            );
            if c.radius <= 0.0 {
                continue;
            }
            let x = f.inputs.narrow(0, i, 1).unwrap();
            let mut cfg = PgdConfig::new(c.radius * (1.0 - 1e-6), 40);
            cfg.restarts = 3;
            let out = pgd(&f_logits, &x, &labels[i..=i], &cfg).unwrap();
            assert!(
                !out.per_input[0].success,
                "{name}: PGD succeeded inside the certified radius {}",
                c.radius
            );
            attacked += 1;
        }
        assert!(attacked > 0, "{name}: no input was certified");
        eprintln!("{name}: largest Jacobian norm found {best:.6} <= L {:.6}; {attacked} certified inputs survive PGD", l.value());
    }
}

fn error_of(bytes: &[u8]) -> String {
    lmt_onnx::import(bytes, "model.onnx", None)
        .unwrap_err()
        .to_string()
}

#[test]
fn bad_files_give_clear_errors() {
    let good = std::fs::read(path("cnn_bn_maxpool.onnx")).unwrap();
    for cut in [good.len() / 2, good.len() - 3, 10] {
        let e = error_of(&good[..cut]);
        assert!(
            e.contains("model.onnx")
                && (e.contains("not a readable ONNX model") || e.contains("tensor")),
            "truncated at {cut}: {e}"
        );
    }
    let e = error_of(b"this is a text file, not a model\n");
    assert!(e.contains("not a readable ONNX model"), "{e}");
    let e = lmt_onnx::load(&path("bad_unknown_op.onnx"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("(Erf)") && e.contains("supported: Conv, Gemm"),
        "{e}"
    );
    let e = lmt_onnx::load(&path("bad_missing_initializer.onnx"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("conv2.weight") && e.contains("missing initializer"),
        "{e}"
    );
    let e = lmt_onnx::load(&path("no_such_model.onnx"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no_such_model.onnx") && e.contains("cannot read"),
        "{e}"
    );
}

/// Hundreds of damaged copies of real exports (truncated at random offsets, random bytes flipped): each
/// is read to a clean error or to a model that runs; none panics.
#[test]
fn damaged_files_never_panic() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
    let (mut errors, mut loaded) = (0, 0);
    for name in FIXTURES {
        let good = std::fs::read(path(&format!("{name}.onnx"))).unwrap();
        for case in 0..80 {
            let mut bytes = good.clone();
            if case % 2 == 0 {
                bytes.truncate(rand::Rng::random_range(&mut rng, 0..good.len()));
            } else {
                for _ in 0..rand::Rng::random_range(&mut rng, 1..8) {
                    let at = rand::Rng::random_range(&mut rng, 0..bytes.len());
                    bytes[at] ^= rand::Rng::random_range(&mut rng, 1..=255u8);
                }
            }
            let result = std::panic::catch_unwind(|| {
                let m = lmt_onnx::import(&bytes, "damaged.onnx", None)?;
                let shape: Vec<usize> = std::iter::once(2)
                    .chain(m.graph.input_shape().iter().copied())
                    .collect();
                let x = Tensor::zeros(shape, DType::F32, &Device::Cpu)?;
                m.graph.eval_logits(&x)?;
                Ok::<_, Box<dyn std::error::Error>>(())
            });
            match result {
                Ok(Ok(())) => loaded += 1,
                Ok(Err(e)) => {
                    assert!(!e.to_string().is_empty());
                    errors += 1
                }
                Err(_) => panic!("{name}, case {case}: the importer panicked"),
            }
        }
    }
    eprintln!(
        "{} damaged files: {errors} clean errors, {loaded} still valid models",
        errors + loaded
    );
    assert!(errors > 200);
}
