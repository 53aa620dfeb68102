//! The sound f64 pass: its error bound covers the exact value (computed in integers) of layers with
//! heavy cancellation, it closes the hole an f32 margin leaves (a constructed network the f32 pass
//! certifies for the wrong class), its radii never exceed the exact ones where f32 radii do (near ties,
//! checked in integers; without the guard the test fails), and on whole networks it agrees with the f32
//! forward pass.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use lmt_core::{certify_prop1, certify_prop1_guarded};
use lmt_models::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DEV: Device = Device::Cpu;

fn t(v: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, &DEV).unwrap()
}

fn linear(w: Vec<f32>, out: usize, inp: usize, b: Option<Vec<f32>>, name: &str) -> Op {
    Op::Linear(LipLinear::new(t(w, &[out, inp]), b.map(|b| t(b, &[out])), name).unwrap())
}

/// An f32 with a full 24-bit mantissa and magnitude in [2^-8, 2^8), random sign: every such value is an
/// integer multiple of 2^-31, so products of two are integer multiples of 2^-62 (exact in i128).
fn wide(rng: &mut ChaCha8Rng) -> f32 {
    let m = rng.random_range((1u32 << 23)..(1u32 << 24)) as f32 / (1u32 << 23) as f32;
    let e = rng.random_range(-8i32..8);
    let v = m * 2f32.powi(e);
    if rng.random_bool(0.5) {
        -v
    } else {
        v
    }
}

/// `v * 2^31` as an integer (exact for the values `wide` makes, and for 0).
fn fixed(v: f32) -> i128 {
    let s = v as f64 * 2f64.powi(31);
    assert_eq!(s.fract(), 0.0, "{v} is not a multiple of 2^-31");
    s as i128
}

/// Asserts `|computed - exact| <= bound`, with `exact` in units of 2^-62; returns the actual error.
fn covered(computed: f64, exact: i128, bound: f64) -> f64 {
    let scale = 2f64.powi(62);
    let diff = ((computed * scale).round() as i128 - exact).unsigned_abs() as f64 / scale;
    assert!(
        diff <= bound,
        "computed {computed} is {diff} from the exact value, beyond the bound {bound}"
    );
    diff
}

#[test]
fn the_error_bound_covers_exact_dot_products_with_cancellation() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (mut worst_ratio, mut nonzero) = (0.0f64, 0);
    for trial in 0..200 {
        let (out, inp) = (3, 40);
        let mut w: Vec<f32> = (0..out * inp).map(|_| wide(&mut rng)).collect();
        let x: Vec<f32> = (0..inp).map(|_| wide(&mut rng).abs()).collect();
        // Cancellation: the second half of each row undoes the first half up to the last bits.
        for o in 0..out {
            for i in 0..inp / 2 {
                if trial % 2 == 0 {
                    w[o * inp + inp / 2 + i] = -w[o * inp + i] * (x[i] / x[inp / 2 + i]);
                }
            }
        }
        // Values made by the division above may leave the grid: snap them back onto it.
        let w: Vec<f32> = w
            .iter()
            .map(|&v| ((v as f64 * 2f64.powi(31)).round() / 2f64.powi(31)) as f32)
            .collect();
        let b: Vec<f32> = (0..out).map(|_| wide(&mut rng)).collect();
        let mut g = Graph::new(vec![inp]).unwrap();
        g.push(
            "fc",
            linear(w.clone(), out, inp, Some(b.clone()), "fc"),
            vec![0],
        )
        .unwrap();
        let xs: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let s = g.sound_logits(&xs, 1).unwrap();
        for o in 0..out {
            let exact: i128 = (0..inp)
                .map(|i| fixed(w[o * inp + i]) * fixed(x[i]))
                .sum::<i128>()
                + fixed(b[o]) * (1i128 << 31);
            let d = covered(s.logits[o], exact, s.errors[0]);
            if d > 0.0 {
                nonzero += 1;
                worst_ratio = worst_ratio.max(d / s.errors[0]);
            }
        }
    }
    // The cases really round (or the test would pass with a zero bound), and the bound is not vacuous.
    assert!(
        nonzero > 100,
        "only {nonzero} computed values differ from the exact ones"
    );
    assert!(
        worst_ratio > 1e-6,
        "the bound is {worst_ratio:e} times too loose"
    );
}

#[test]
fn the_error_bound_covers_an_exact_padded_convolution() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (ci, co, h, k) = (2, 3, 5, 3);
    for _ in 0..20 {
        let kernel: Vec<f32> = (0..co * ci * k * k).map(|_| wide(&mut rng)).collect();
        let bias: Vec<f32> = (0..co).map(|_| wide(&mut rng)).collect();
        let x: Vec<f32> = (0..ci * h * h).map(|_| wide(&mut rng)).collect();
        let conv = LipConv2d::new(
            t(kernel.clone(), &[co, ci, k, k]),
            Some(t(bias.clone(), &[co])),
            ConvCfg::square(1, 1),
            "conv",
        )
        .unwrap();
        let mut g = Graph::new(vec![ci, h, h]).unwrap();
        let v = g.push("conv", Op::Conv(conv), vec![0]).unwrap();
        g.push("flat", Op::Reshape(vec![co * h * h]), vec![v])
            .unwrap();
        let xs: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let s = g.sound_logits(&xs, 1).unwrap();
        // The L2 error of the whole output is bounded; each entry's error is at most that.
        for o in 0..co {
            for i in 0..h {
                for j in 0..h {
                    let mut exact = fixed(bias[o]) * (1i128 << 31);
                    for c in 0..ci {
                        for a in 0..k {
                            for bb in 0..k {
                                let (y, z) = (i + a, j + bb);
                                if (1..=h).contains(&y) && (1..=h).contains(&z) {
                                    exact += fixed(kernel[((o * ci + c) * k + a) * k + bb])
                                        * fixed(x[(c * h + y - 1) * h + z - 1]);
                                }
                            }
                        }
                    }
                    covered(s.logits[(o * h + i) * h + j], exact, s.errors[0]);
                }
            }
        }
    }
}

/// `h = (1e8 x0 + 4.5 x1) - 1e8 x0`, exactly 4.5 at x = (1, 1), but 8 in f32 (1e8 + 4.5 rounds to
/// 1e8 + 8); logits `(h, 6)`. The exact network puts x in class 1.
fn cancelling() -> Graph {
    let mut g = Graph::new(vec![2]).unwrap();
    let a = g
        .push("a", linear(vec![1e8, 4.5], 1, 2, None, "a"), vec![0])
        .unwrap();
    let b = g
        .push("b", linear(vec![1e8, 0.0], 1, 2, None, "b"), vec![0])
        .unwrap();
    let h = g.push("h", Op::Sub, vec![a, b]).unwrap();
    g.push(
        "out",
        linear(vec![1.0, 0.0], 2, 1, Some(vec![0.0, 6.0]), "out"),
        vec![h],
    )
    .unwrap();
    g
}

#[test]
fn f32_logits_certify_the_wrong_class_and_sound_ones_do_not() {
    let g = cancelling();
    let x = t(vec![1.0, 1.0], &[1, 2]);
    let out = g
        .forward(
            &x,
            Lip::Certified(lmt_core::CertifiedBound::one()),
            &Ctx::eval(CertifyMethod::Dense),
        )
        .unwrap();
    let l = out.l.certified().unwrap();
    let z: Vec<f32> = out.logits.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(
        z,
        vec![8.0, 6.0],
        "the f32 pass rounds as the construction says"
    );
    // Taken at face value, the f32 logits certify class 0 with a positive radius: unsound.
    let naive = certify_prop1(&z, 2, &[0], &l).unwrap()[0];
    assert!(naive.radius > 0.0 && naive.prediction == Some(0));
    // The sound pass gets the exact logits (4.5, 6): class 1, nothing certified for label 0.
    let s = g.sound_logits(&[1.0, 1.0], 1).unwrap();
    assert_eq!(s.logits, vec![4.5, 6.0]);
    let c = certify_prop1_guarded(&s.logits, &s.errors, 2, &[0], &l).unwrap()[0];
    assert_eq!((c.prediction, c.radius), (Some(1), 0.0));
    // For label 1 the certificate is the exact margin's, shrunk by at most the rounding guard.
    let c = certify_prop1_guarded(&s.logits, &s.errors, 2, &[1], &l).unwrap()[0];
    let exact = 1.5 / (std::f64::consts::SQRT_2 * l.value());
    assert!(
        c.radius <= exact && c.radius > exact * (1.0 - 1e-6),
        "{} vs {exact}",
        c.radius
    );
}

#[test]
fn a_margin_within_the_error_bound_is_not_certified() {
    // Errors of 1 guard every pairwise margin by sqrt 2: a margin of 1.4 is within it, 1.5 is not.
    let l = lmt_core::CertifiedBound::one();
    let c = certify_prop1_guarded(&[1.4, 0.0, 1.5, 0.0], &[1.0, 1.0], 2, &[0, 0], &l).unwrap();
    assert_eq!(c[0].radius, 0.0);
    assert!(c[1].radius > 0.0 && c[1].radius < (1.5 - std::f64::consts::SQRT_2) / 2f64.sqrt());
    // An infinite or NaN error bound certifies nothing.
    for e in [f64::INFINITY, f64::NAN] {
        assert_eq!(
            certify_prop1_guarded(&[9.0, 0.0], &[e], 2, &[0], &l).unwrap()[0].radius,
            0.0
        );
    }
}

fn sound_and_f32(net: &dyn Classifier, x: &Tensor) -> (SoundLogits, Vec<f32>) {
    let b = x.dim(0).unwrap();
    let z: Vec<f32> = net
        .eval_logits(x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let xs = lmt_models::tensor_f64(x).unwrap();
    (net.to_graph().unwrap().sound_logits(&xs, b).unwrap(), z)
}

#[test]
fn whole_networks_agree_with_the_f32_pass_and_have_tiny_error_bounds() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let vm = VarMap::new();
    let kw = KolterWong::new(&vm, 5, &DEV).unwrap();
    let x = t(
        (0..4 * 784).map(|_| rng.random::<f32>()).collect(),
        &[4, 1, 28, 28],
    );
    let vm2 = VarMap::new();
    let cfg = WideResNetCfg {
        depth: 10,
        width: 1,
        dropout: 0.0,
        classes: 10,
        avg_pool_shortcut: true,
        parseval: true,
        activation: Act::Relu,
    };
    let wrn = WideResNet::new(cfg, &vm2, 1, &DEV).unwrap();
    let y = t(
        (0..2 * 3 * 32 * 32).map(|_| rng.random::<f32>()).collect(),
        &[2, 3, 32, 32],
    );
    for (net, x) in [(&kw as &dyn Classifier, &x), (&wrn as &dyn Classifier, &y)] {
        let (s, z) = sound_and_f32(net, x);
        assert_eq!(s.logits.len(), z.len());
        let scale = z.iter().fold(1e-3f64, |m, v| m.max(v.abs() as f64));
        for (a, b) in s.logits.iter().zip(&z) {
            assert!((a - *b as f64).abs() < 1e-4 * scale, "{a} vs {b}");
        }
        // Carried through the layers' bounds, the error bound is pessimistic (the untrained WRN's
        // activations reach 1e12, its BN layers amplify), yet far below f32 rounding.
        for e in &s.errors {
            assert!(
                *e > 0.0 && *e < 1e-7 * scale,
                "error bound {e} for logits up to {scale}"
            );
        }
    }
}

#[test]
fn bad_inputs_to_the_sound_pass_are_errors() {
    let g = cancelling();
    assert!(g.sound_logits(&[1.0], 1).is_err());
    assert!(g.sound_logits(&[1.0, f64::NAN], 1).is_err());
}

/// An f32 in `[2^-4, 2^1)` with a full mantissa, random sign: a multiple of 2^-27 (so of 2^-31).
fn narrow(rng: &mut ChaCha8Rng) -> f32 {
    let m = rng.random_range((1u32 << 23)..(1u32 << 24)) as f32 / (1u32 << 23) as f32;
    let v = m * 2f32.powi(rng.random_range(-4i32..1));
    if rng.random_bool(0.5) {
        -v
    } else {
        v
    }
}

/// The measured failure of f32 margins, reproduced where exact arithmetic is affordable: a ReLU MLP
/// whose two top classes nearly tie (their last-layer rows differ by a few units of 2^-22), so f32
/// rounding moves margins by more than their size. Exact logits are integers in units of 2^-93. Over
/// 2,000 inputs the f32 certificate exceeds the exact radius (or certifies an exactly misclassified
/// input) at least once; the sound certificate never does.
#[test]
fn near_ties_f32_radii_exceed_the_exact_ones_and_sound_radii_never_do() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let (n, h, k) = (64usize, 32usize, 3usize);
    let w1: Vec<f32> = (0..h * n).map(|_| narrow(&mut rng)).collect();
    let b1: Vec<f32> = (0..h).map(|_| narrow(&mut rng)).collect();
    let mut w2: Vec<f32> = (0..k * h).map(|_| narrow(&mut rng)).collect();
    for j in 0..h {
        let delta = rng.random_range(-4i32..=4) as f32 * 2f32.powi(-22);
        w2[h + j] = w2[j] + delta;
        assert_eq!(w2[h + j] - delta, w2[j], "the near-tie rows stay exact");
    }
    let b2 = vec![0.0f32, 0.0, -64.0];
    let mut g = Graph::new(vec![n]).unwrap();
    let a = g
        .push(
            "fc1",
            linear(w1.clone(), h, n, Some(b1.clone()), "fc1"),
            vec![0],
        )
        .unwrap();
    let r = g.push("relu", Op::Activation(Act::Relu), vec![a]).unwrap();
    g.push(
        "fc2",
        linear(w2.clone(), k, h, Some(b2.clone()), "fc2"),
        vec![r],
    )
    .unwrap();
    let points = 2000;
    let x: Vec<f32> = (0..points * n).map(|_| narrow(&mut rng).abs()).collect();
    let out = g
        .forward(
            &t(x.clone(), &[points, n]),
            Lip::Certified(lmt_core::CertifiedBound::one()),
            &Ctx::eval(CertifyMethod::Dense),
        )
        .unwrap();
    let l = out.l.certified().unwrap();
    let z: Vec<f32> = out.logits.flatten_all().unwrap().to_vec1().unwrap();
    let xs: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let s = g.sound_logits(&xs, points).unwrap();
    let (mut f32_over, mut sound_positive) = (0, 0);
    for p in 0..points {
        // Exact hidden units in 2^-62, then exact logits in 2^-93.
        let hid: Vec<i128> = (0..h)
            .map(|j| {
                let v: i128 = (0..n)
                    .map(|i| fixed(w1[j * n + i]) * fixed(x[p * n + i]))
                    .sum::<i128>()
                    + fixed(b1[j]) * (1i128 << 31);
                v.max(0)
            })
            .collect();
        let exact: Vec<i128> = (0..k)
            .map(|c| {
                (0..h).map(|j| fixed(w2[c * h + j]) * hid[j]).sum::<i128>()
                    + fixed(b2[c]) * (1i128 << 62)
            })
            .collect();
        let label = usize::from(exact[1] > exact[0]);
        let margin = (0..k)
            .filter(|&c| c != label)
            .map(|c| exact[label] - exact[c])
            .min()
            .unwrap();
        let exact_radius = if margin > 0 {
            margin as f64 * 2f64.powi(-93) / (std::f64::consts::SQRT_2 * l.value())
        } else {
            0.0
        };
        let f = certify_prop1(&z[p * k..(p + 1) * k], k, &[label], &l).unwrap()[0];
        let c = certify_prop1_guarded(
            &s.logits[p * k..(p + 1) * k],
            &s.errors[p..p + 1],
            k,
            &[label],
            &l,
        )
        .unwrap()[0];
        assert!(
            c.radius <= exact_radius,
            "input {p}: sound radius {} above the exact {exact_radius}",
            c.radius
        );
        if f.radius > exact_radius {
            f32_over += 1;
        }
        if c.radius > 0.0 {
            sound_positive += 1;
        }
    }
    // The construction really exposes the f32 hole, and the sound pass still certifies most inputs.
    assert!(f32_over > 0, "no f32 radius exceeded the exact one");
    assert!(
        sound_positive > points / 2,
        "only {sound_positive} of {points} certified"
    );
    eprintln!("f32 radius above the exact one on {f32_over} of {points} inputs");
}
