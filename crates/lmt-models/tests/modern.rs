//! The layers and networks of the modern yardstick: MinMax (its bound 1 against brute force, its
//! gradient against finite differences, its orthogonal Jacobian), the 4C3F network (its certified bound
//! against Jacobian norms, its f64 sound pass against the f32 pass), and MinMax networks (Kolter-Wong,
//! 4C3F, WRN) end to end.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use lmt_core::CertifiedBound;
use lmt_models::*;
use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DEV: Device = Device::Cpu;

fn uniform(rng: &mut ChaCha8Rng, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_vec(v, shape, &DEV).unwrap()
}

fn minmax(x: &Tensor) -> Tensor {
    MinMax
        .forward_lip(x, Lip::None, &Ctx::eval(CertifyMethod::Dense))
        .unwrap()
        .0
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn minmax_sorts_the_channel_halves_and_keeps_its_bound() {
    // (1, 4, 1, 2): channels 0 and 2 pair, channels 1 and 3 pair.
    let x = Tensor::new(
        &[[[[1f64, -5.0]], [[2.0, 0.0]], [[3.0, -6.0]], [[-1.0, 7.0]]]],
        &DEV,
    )
    .unwrap();
    assert_eq!(
        values(&minmax(&x)),
        [3.0, -5.0, 2.0, 7.0, 1.0, -6.0, -1.0, 0.0]
    );
    // The bound travels unchanged (factor 1).
    let lip = Lip::Certified(CertifiedBound::one());
    let (_, out) = MinMax
        .forward_lip(&x, lip, &Ctx::eval(CertifyMethod::Dense))
        .unwrap();
    assert_eq!(out.certified().unwrap().value(), 1.0);
    // An odd channel count is an error, not a silent mispairing.
    let odd = Tensor::zeros((2, 3), DType::F32, &DEV).unwrap();
    assert!(MinMax
        .forward_lip(&odd, Lip::None, &Ctx::eval(CertifyMethod::Dense))
        .is_err());
    let mut g = Graph::new(vec![3]).unwrap();
    let err = g
        .push("mm", Op::Activation(Act::MinMax), vec![0])
        .unwrap_err();
    assert!(err.to_string().contains("even"), "{err}");
}

/// Brute force: no pair of inputs, including pairs that straddle and sit on the switching set a = b,
/// moves further apart than their distance; and pairs swapped within one region move exactly as far.
#[test]
fn minmax_is_one_lipschitz_by_brute_force() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut tight = 0.0f64;
    for trial in 0..2000 {
        let x = uniform(&mut rng, &[1, 6], -1.0, 1.0);
        let d = uniform(&mut rng, &[1, 6], -1.0, 1.0)
            .affine(10f64.powi(-(trial % 7)), 0.0)
            .unwrap();
        // Every third trial starts on the switching set (a tie), the adversarial case.
        let x = if trial % 3 == 0 {
            let a = x.narrow(1, 0, 3).unwrap();
            Tensor::cat(&[&a, &a], 1).unwrap()
        } else {
            x
        };
        let y = (&x + &d).unwrap();
        let num = values(&(minmax(&y) - minmax(&x)).unwrap());
        // The step actually taken (x + d rounds), so rounding is not mistaken for growth.
        let den = values(&(&y - &x).unwrap());
        let n2 = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
        let ratio = n2(&num) / n2(&den);
        assert!(ratio <= 1.0 + 1e-9, "ratio {ratio} at trial {trial}");
        tight = tight.max(ratio);
    }
    assert!(tight > 1.0 - 1e-9, "the bound 1 is attained: best {tight}");
}

/// The gradient candle computes equals central finite differences in f64, and the Jacobian at a point
/// off the switching set is a permutation matrix (orthogonal: MinMax preserves gradient norms).
#[test]
fn minmax_gradient_matches_finite_differences_and_is_orthogonal() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x = uniform(&mut rng, &[2, 4, 2, 2], -1.0, 1.0);
    let w = uniform(&mut rng, &[2, 4, 2, 2], -1.0, 1.0);
    let f = |x: &Tensor| (minmax(x) * &w).unwrap().sum_all().unwrap();
    let xv = Var::from_tensor(&x).unwrap();
    let g = f(xv.as_tensor()).backward().unwrap();
    let grad = values(g.get(xv.as_tensor()).unwrap());
    let x0 = values(&x);
    let h = 1e-6;
    for i in 0..x0.len() {
        let at = |delta: f64| {
            let mut v = x0.clone();
            v[i] += delta;
            let t = Tensor::from_vec(v, x.shape(), &DEV).unwrap();
            f(&t).to_scalar::<f64>().unwrap()
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        assert!(
            (fd - grad[i]).abs() < 1e-6,
            "coordinate {i}: {fd} vs {}",
            grad[i]
        );
    }
    // Jacobian of one sample, row by row.
    let s = uniform(&mut rng, &[1, 6], -1.0, 1.0);
    let sv = Var::from_tensor(&s).unwrap();
    let y = minmax(sv.as_tensor()).flatten_all().unwrap();
    let mut rows = Vec::new();
    for k in 0..6 {
        let g = y.get(k).unwrap().backward().unwrap();
        rows.extend(values(g.get(sv.as_tensor()).unwrap()));
    }
    let j = DMatrix::from_row_slice(6, 6, &rows);
    let jtj = j.transpose() * &j;
    assert!((jtj - DMatrix::identity(6, 6)).norm() < 1e-12);
}

fn jacobian_norm(net: &dyn Classifier, x: &Tensor) -> f64 {
    let xv = Var::from_tensor(x).unwrap();
    let z = net.eval_logits(xv.as_tensor()).unwrap();
    let n = x.elem_count();
    let mut rows = Vec::new();
    for k in 0..10 {
        let g = z.get(0).unwrap().get(k).unwrap().backward().unwrap();
        rows.extend(values(g.get(xv.as_tensor()).unwrap()));
    }
    DMatrix::from_row_slice(10, n, &rows)
        .singular_values()
        .iter()
        .cloned()
        .fold(0.0, f64::max)
}

fn networks(seed: u64) -> Vec<(&'static str, Box<dyn Classifier>)> {
    let vm = VarMap::new();
    vec![
        (
            "Kolter-Wong, MinMax",
            Box::new(KolterWong::with_activation(&vm, seed, Act::MinMax, &DEV).unwrap()),
        ),
        (
            "4C3F, ReLU",
            Box::new(FourCThreeF::new(&VarMap::new(), seed, Act::Relu, &DEV).unwrap()),
        ),
        (
            "4C3F, MinMax",
            Box::new(FourCThreeF::new(&VarMap::new(), seed, Act::MinMax, &DEV).unwrap()),
        ),
        (
            "WRN-10-1, MinMax",
            Box::new(
                WideResNet::new(
                    WideResNetCfg {
                        depth: 10,
                        width: 1,
                        activation: Act::MinMax,
                        ..Default::default()
                    },
                    &VarMap::new(),
                    seed,
                    &DEV,
                )
                .unwrap(),
            ),
        ),
    ]
}

/// The certified bound (auto: exact for the fully connected layers, the deterministic FFT bound for
/// the convolutions that are too large for dense) is at least the Jacobian norm at random inputs, and
/// the f64 sound pass agrees with the f32 forward pass within its stated error.
#[test]
fn new_networks_bound_their_jacobians_and_their_sound_pass_agrees() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (name, net) in networks(2) {
        let mut shape = vec![3];
        shape.extend(net.to_graph().unwrap().input_shape());
        let x = uniform(&mut rng, &shape, 0.0, 1.0)
            .to_dtype(DType::F32)
            .unwrap();
        let out = net
            .forward(
                &x,
                Lip::Certified(CertifiedBound::one()),
                &Ctx::eval(CertifyMethod::Auto),
            )
            .unwrap();
        let l = out.l.certified().unwrap().value();
        for i in 0..3 {
            let j = jacobian_norm(net.as_ref(), &x.narrow(0, i, 1).unwrap());
            assert!(
                j <= l * (1.0 + 1e-6),
                "{name}: Jacobian norm {j} above the bound {l}"
            );
        }
        let z = values(&net.eval_logits(&x).unwrap());
        let sound = net
            .to_graph()
            .unwrap()
            .sound_logits(&values(&x), 3)
            .unwrap();
        let scale = z.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        for (a, b) in sound.logits.iter().zip(&z) {
            assert!((a - b).abs() < 1e-4 * scale, "{name}: {a} vs {b}");
        }
        assert!(sound.errors.iter().all(|e| *e > 0.0 && *e < 1e-7 * scale));
        // The train-time estimate carries through the same layers.
        let vectors = lmt_core::PowerVectors::new(1);
        let est = net
            .forward(
                &x,
                Lip::Estimate(lmt_core::LipEstimate::one(&DEV).unwrap()),
                &Ctx::train(&vectors),
            )
            .unwrap();
        assert!(est.l.estimate().is_some(), "{name}: estimate carried");
    }
}
