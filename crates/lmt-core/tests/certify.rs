//! Certification: hand-built edge cases, and a linear model whose exact robustness radius is known.

use lmt_core::{certify_prop1, certify_prop2, norms, BoundMethod, Proposition};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn one() -> lmt_core::CertifiedBound {
    lmt_core::CertifiedBound::one()
}

#[test]
fn ties_nan_and_misclassified_inputs_get_radius_zero() {
    let logits = [
        2.0,
        2.0,
        0.0, // tie between the label 0 and class 1
        f32::NAN,
        0.0,
        0.0, // NaN
        0.0,
        1.0,
        0.0, // misclassified
        3.0,
        1.0,
        f32::INFINITY, // infinite logit
        3.0,
        1.0,
        0.0, // fine: margin 2
    ];
    let labels = [0, 0, 0, 0, 0];
    for certs in [
        certify_prop1(&logits, 3, &labels, &one()).unwrap(),
        certify_prop2(
            &logits,
            3,
            &labels,
            &one(),
            &[1.0, 0.0, 0.0, 1.0, 0.0, 0.0],
            2,
        )
        .unwrap(),
    ] {
        assert_eq!(certs[0].radius, 0.0);
        assert_eq!(certs[0].margin, 0.0);
        assert!(!certs[0].certified_at(0.0));
        assert_eq!(certs[1].radius, 0.0);
        assert!(certs[1].margin.is_nan() && certs[1].prediction.is_none());
        assert_eq!(certs[2].radius, 0.0);
        assert_eq!(certs[2].margin, -1.0);
        assert_eq!(certs[2].prediction, Some(1));
        assert_eq!(certs[3].radius, 0.0);
        assert!(certs[4].radius > 0.0 && certs[4].certified_at(0.0));
    }
    let c = certify_prop1(&logits, 3, &labels, &one()).unwrap();
    assert!((c[4].radius - 2.0 / 2f64.sqrt()).abs() < 1e-12);
    assert!(!c[4].certified_at(c[4].radius) && c[4].certified_at(c[4].radius * 0.999999));
    assert!(!c[4].certified_at(-1.0) && !lmt_core::certified_at(f64::NAN, 0.0));
    assert_eq!(
        (c[4].proposition, c[4].method),
        (Proposition::One, BoundMethod::ClosedForm)
    );
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    assert!(certify_prop1(&[1.0, 2.0, 3.0], 2, &[0], &one()).is_err());
    assert!(certify_prop1(&[1.0, 2.0], 2, &[2], &one()).is_err());
    assert!(certify_prop2(&[1.0, 2.0], 2, &[0], &one(), &[1.0; 3], 2).is_err());
}

/// For a linear classifier z = W x + b the correctly classified region is an intersection of half-spaces,
/// so the exact distance to a different prediction is min_i (z_t - z_i) / ‖w_t - w_i‖: Prop. 2 with
/// L_sub = 1 must equal it, and Prop. 1 with the exact ‖W‖ must not exceed it.
#[test]
fn linear_model_radius_is_exact_under_prop2() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (k, d) = (5, 7);
    let w: Vec<f64> = (0..k * d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let b: Vec<f64> = (0..k).map(|_| rng.random_range(-0.5..0.5)).collect();
    let l = norms::linear_dense(&w, k, d).unwrap();
    for _ in 0..200 {
        let x: Vec<f64> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let z: Vec<f64> = (0..k)
            .map(|i| (0..d).map(|j| w[i * d + j] * x[j]).sum::<f64>() + b[i])
            .collect();
        let t = (0..k).fold(0, |best, i| if z[i] > z[best] { i } else { best });
        let exact = (0..k)
            .filter(|&i| i != t)
            .map(|i| {
                let dist = (0..d)
                    .map(|j| (w[t * d + j] - w[i * d + j]).powi(2))
                    .sum::<f64>()
                    .sqrt();
                (z[t] - z[i]) / dist
            })
            .fold(f64::INFINITY, f64::min);
        let zf: Vec<f32> = z.iter().map(|&v| v as f32).collect();
        let p2 = certify_prop2(&zf, k, &[t], &one(), &w, d).unwrap()[0].radius;
        assert!(
            (p2 - exact).abs() < 1e-5 * exact + 1e-6,
            "prop2 {p2} vs exact {exact}"
        );
        let p1 = certify_prop1(&zf, k, &[t], &l).unwrap()[0].radius;
        assert!(
            p1 <= exact * (1.0 + 1e-5) + 1e-6,
            "prop1 {p1} exceeds exact {exact}"
        );
        // Moving exactly to the nearest boundary (plus a hair) flips the prediction: the radius is tight.
        let (i_near, _) = (0..k)
            .filter(|&i| i != t)
            .map(|i| {
                let dist = (0..d)
                    .map(|j| (w[t * d + j] - w[i * d + j]).powi(2))
                    .sum::<f64>()
                    .sqrt();
                (i, (z[t] - z[i]) / dist)
            })
            .fold((t, f64::INFINITY), |a, c| if c.1 < a.1 { c } else { a });
        let dir: Vec<f64> = (0..d).map(|j| w[i_near * d + j] - w[t * d + j]).collect();
        let norm = dir.iter().map(|v| v * v).sum::<f64>().sqrt();
        let xp: Vec<f64> = x
            .iter()
            .zip(&dir)
            .map(|(a, v)| a + v / norm * exact * 1.0001)
            .collect();
        let zp: Vec<f64> = (0..k)
            .map(|i| (0..d).map(|j| w[i * d + j] * xp[j]).sum::<f64>() + b[i])
            .collect();
        assert!(
            zp[i_near] > zp[t],
            "a step of 1.0001 x radius must cross the boundary"
        );
    }
}

#[test]
fn zero_weight_distance_imposes_no_limit() {
    // Classes 0 and 1 have identical rows: they can never swap order, so only class 2 limits the radius.
    let w = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
    let c = certify_prop2(&[2.0, 1.0, 0.0], 3, &[0], &one(), &w, 2).unwrap();
    assert!((c[0].radius - 2.0 / 2f64.sqrt()).abs() < 1e-12);
}

#[test]
fn a_perturbation_of_exactly_the_radius_can_reach_a_tie_so_the_radius_itself_is_not_certified() {
    // Identity logits on R^2 at x = (1, 0): margin 1, ||w_0 - w_1|| = sqrt 2, so the Prop. 2 radius is
    // 1 / sqrt 2; moving by exactly that along (-1, 1) / sqrt 2 lands on (1/2, 1/2), a tie.
    let l_sub = lmt_core::norms::linear_dense(&[1.0, 0.0, 0.0, 1.0], 2, 2).unwrap();
    let c = certify_prop2(&[1.0, 0.0], 2, &[0], &l_sub, &[1.0, 0.0, 0.0, 1.0], 2).unwrap()[0];
    let r = c.radius;
    assert!(
        (r - 0.5f64.sqrt()).abs() < 1e-8 && r <= 0.5f64.sqrt(),
        "sound: never above the exact radius"
    );
    let moved = [1.0 - r / 2f64.sqrt(), r / 2f64.sqrt()];
    assert!(
        (moved[0] - moved[1]).abs() < 1e-8,
        "the moved point is (up to rounding) a tie"
    );
    assert!(!c.certified_at(r), "radius itself: a tie is reachable");
    assert!(c.certified_at(r * (1.0 - 1e-6)));
    // A successful attack at distance exactly the radius contradicts the certificate; beyond it, not.
    assert!(lmt_core::contradicts(r, r) && !lmt_core::contradicts(r, r * (1.0 + 1e-9)));
    assert!(
        !lmt_core::contradicts(0.0, 0.0),
        "a misclassified input (radius 0) promises nothing"
    );
}
