//! The train-time estimate (Alg. 2) and the LMT loss: gradients against finite differences, convergence
//! of the persistent power iteration to the exact norm, and the logit modifications' closed forms.

use candle_core::{DType, Device, Tensor, Var};
use lmt_core::{
    class_distances, cross_entropy, gloro_logits, l2_norm, lmt_logits_prop1, lmt_logits_prop2,
    norms, ConvGeometry, PowerVectors,
};

const DEV: Device = Device::Cpu;

fn conv_sigma(kernel: &Tensor, u: &Tensor) -> Tensor {
    l2_norm(&u.conv2d(kernel, 1, 2, 1, 1).unwrap()).unwrap()
}

fn kernel_values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) as f32
        })
        .collect()
}

#[test]
fn sigma_gradient_matches_finite_differences() {
    let g = ConvGeometry::square(2, 3, 4, 2, 1, 8, 8).unwrap();
    let kv = kernel_values(1, g.kernel_len());
    let k64: Vec<f64> = kv.iter().map(|&v| v as f64).collect();
    let kernel =
        Var::from_tensor(&Tensor::from_vec(kv.clone(), (3, 2, 4, 4), &DEV).unwrap()).unwrap();
    let pv = PowerVectors::new(0);
    let u = pv.get("conv", (1, 2, 8, 8), &DEV).unwrap();
    let sigma = conv_sigma(kernel.as_tensor(), u.as_tensor());
    let grads = sigma.backward().unwrap();
    let gk: Vec<f32> = grads
        .get(kernel.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    // Central differences in f64 on our own operator (independent of candle's autograd).
    let u64v: Vec<f64> = u
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    let f = |k: &[f64]| {
        g.apply(k, &u64v, 1)
            .iter()
            .map(|v| v * v)
            .sum::<f64>()
            .sqrt()
    };
    for idx in [0, 5, 17, 40, 95] {
        let h = 1e-5;
        let (mut kp, mut km) = (k64.clone(), k64.clone());
        kp[idx] += h;
        km[idx] -= h;
        let fd = (f(&kp) - f(&km)) / (2.0 * h);
        assert!(
            (fd - gk[idx] as f64).abs() < 1e-3 * fd.abs().max(1e-2),
            "index {idx}: fd {fd} vs autograd {}",
            gk[idx]
        );
    }
}

#[test]
fn persistent_power_iteration_converges_to_the_exact_norm() {
    let g = ConvGeometry::square(2, 3, 4, 2, 1, 8, 8).unwrap();
    let kv = kernel_values(2, g.kernel_len());
    let exact = norms::conv_dense(&g, &kv.iter().map(|&v| v as f64).collect::<Vec<_>>())
        .unwrap()
        .value();
    let kernel = Tensor::from_vec(kv, (3, 2, 4, 4), &DEV).unwrap();
    let pv = PowerVectors::new(0);
    let mut sigma = 0.0;
    for _ in 0..300 {
        let u = pv.get("conv", (1, 2, 8, 8), &DEV).unwrap();
        let s = conv_sigma(&kernel, u.as_tensor());
        sigma = s.to_scalar::<f32>().unwrap() as f64;
        // Any loss increasing in sigma gives a positive multiple of A^T A u as u's gradient.
        let grads = s.affine(3.0, 0.0).unwrap().backward().unwrap();
        assert_eq!(pv.refresh(&grads).unwrap(), 0);
    }
    assert!(
        sigma <= exact * (1.0 + 1e-5),
        "estimate {sigma} above the exact norm {exact}"
    );
    assert!(
        (sigma - exact).abs() < 1e-3 * exact,
        "estimate {sigma} did not converge to {exact}"
    );
}

#[test]
fn refresh_keeps_the_vector_when_the_gradient_vanishes() {
    let pv = PowerVectors::new(0);
    let u = pv.get("fc", (1, 4), &DEV).unwrap();
    let before: Vec<f32> = u.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let w = Tensor::zeros((3, 4), DType::F32, &DEV).unwrap();
    let s = l2_norm(&u.as_tensor().matmul(&w.t().unwrap()).unwrap()).unwrap();
    let grads = (s * 0.0).unwrap().backward().unwrap();
    assert_eq!(pv.refresh(&grads).unwrap(), 1);
    let after: Vec<f32> = pv
        .get("fc", (1, 4), &DEV)
        .unwrap()
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(before, after);
    assert!(after.iter().all(|v| v.is_finite()));
}

#[test]
fn power_vectors_are_deterministic_and_unit() {
    let a = PowerVectors::new(5).get("x", (1, 3, 4, 4), &DEV).unwrap();
    let b = PowerVectors::new(5).get("x", (1, 3, 4, 4), &DEV).unwrap();
    let va: Vec<f32> = a.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(
        va,
        b.as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );
    let n: f32 = va.iter().map(|v| v * v).sum();
    assert!((n - 1.0).abs() < 1e-5);
}

fn t2(v: &[f32], r: usize, c: usize) -> Tensor {
    Tensor::from_slice(v, (r, c), &DEV).unwrap()
}

#[test]
fn prop1_logits_add_sqrt2_cl_to_non_targets() {
    let z = t2(&[3.0, 1.0, 0.0, 0.0, 2.0, 1.5], 2, 3);
    let y = Tensor::new(&[0u32, 1], &DEV).unwrap();
    let cl = Tensor::new(0.5f32, &DEV).unwrap();
    let out: Vec<Vec<f32>> = lmt_logits_prop1(&z, &y, &cl, false)
        .unwrap()
        .to_vec2()
        .unwrap();
    let a = 0.5 * std::f32::consts::SQRT_2;
    assert_eq!(out, vec![vec![3.0, 1.0 + a, a], vec![a, 2.0, 1.5 + a]]);
    // Capped: sample 0 has margin 2 >= gap 0.707, so f = 1; sample 1 has margin 0.5, f = 0.5 / 0.707.
    let capped: Vec<Vec<f32>> = lmt_logits_prop1(&z, &y, &cl, true)
        .unwrap()
        .to_vec2()
        .unwrap();
    assert!((capped[0][1] - (1.0 + a)).abs() < 1e-6);
    let f = 0.5 / a;
    assert!((capped[1][2] - (1.5 + f * a)).abs() < 1e-6);
    assert!(
        (capped[1][2] - capped[1][1]).abs() < 1e-6,
        "capping stops exactly at the margin"
    );
    // Misclassified: f = 0, logits unchanged.
    let zm = t2(&[0.0, 1.0], 1, 2);
    let out: Vec<Vec<f32>> = lmt_logits_prop1(&zm, &Tensor::new(&[0u32], &DEV).unwrap(), &cl, true)
        .unwrap()
        .to_vec2()
        .unwrap();
    assert_eq!(out, vec![vec![0.0, 1.0]]);
}

#[test]
fn prop2_logits_use_pairwise_weight_distances() {
    let w = t2(&[1.0, 0.0, 0.0, 1.0, 3.0, 4.0], 3, 2);
    let d: Vec<Vec<f32>> = class_distances(&w).unwrap().to_vec2().unwrap();
    assert!(
        (d[0][1] - 2f32.sqrt()).abs() < 1e-6
            && d[0][0] == 0.0
            && (d[1][2] - 3f32.hypot(3.0)).abs() < 1e-5
    );
    let z = t2(&[5.0, 1.0, 0.0], 1, 3);
    let y = Tensor::new(&[0u32], &DEV).unwrap();
    let cl = Tensor::new(2.0f32, &DEV).unwrap();
    let out: Vec<Vec<f32>> = lmt_logits_prop2(&z, &y, &cl, &w, false)
        .unwrap()
        .to_vec2()
        .unwrap();
    assert!((out[0][1] - (1.0 + 2.0 * 2f32.sqrt())).abs() < 1e-5);
    assert!((out[0][2] - (0.0 + 2.0 * 20f32.sqrt())).abs() < 1e-5);
    assert_eq!(out[0][0], 5.0);
    // Capped: margins 4 and 5 against required 2.83 and 8.94; f = min(1, 5 / 8.94) = 0.559.
    let capped: Vec<Vec<f32>> = lmt_logits_prop2(&z, &y, &cl, &w, true)
        .unwrap()
        .to_vec2()
        .unwrap();
    let f = 5.0 / (2.0 * 20f32.sqrt());
    assert!(
        (capped[0][1] - (1.0 + f * 2.0 * 2f32.sqrt())).abs() < 1e-5,
        "{capped:?}"
    );
    assert!(
        (capped[0][2] - 5.0).abs() < 1e-5,
        "the binding class reaches exactly the target: {capped:?}"
    );
    assert_eq!(capped[0][0], 5.0);
    // Misclassified: nothing is added.
    let zm = t2(&[0.0, 1.0, 0.0], 1, 3);
    let out: Vec<Vec<f32>> = lmt_logits_prop2(&zm, &y, &cl, &w, true)
        .unwrap()
        .to_vec2()
        .unwrap();
    assert_eq!(out, vec![vec![0.0, 1.0, 0.0]]);
}

#[test]
fn lmt_loss_gradient_reaches_weights_and_bound_and_is_finite() {
    let w = Var::from_tensor(&t2(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3, 2)).unwrap();
    let cl = Var::from_tensor(&Tensor::new(0.3f32, &DEV).unwrap()).unwrap();
    let h = t2(&[1.0, 2.0, -1.0, 0.5], 2, 2);
    let z = h.matmul(&w.as_tensor().t().unwrap()).unwrap();
    let y = Tensor::new(&[1u32, 0], &DEV).unwrap();
    let loss = cross_entropy(
        &lmt_logits_prop2(&z, &y, cl.as_tensor(), w.as_tensor(), false).unwrap(),
        &y,
    )
    .unwrap();
    let grads = loss.backward().unwrap();
    let gw: Vec<f32> = grads
        .get(w.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let gc = grads
        .get(cl.as_tensor())
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        gw.iter().all(|v| v.is_finite()) && gc.is_finite() && gc > 0.0,
        "{gw:?} {gc}"
    );
    // Finite difference in c L: the loss grows with the required margin.
    let f = |c: f32| {
        let c = Tensor::new(c, &DEV).unwrap();
        cross_entropy(
            &lmt_logits_prop2(&z, &y, &c, w.as_tensor(), false).unwrap(),
            &y,
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
    };
    let fd = (f(0.3 + 1e-3) - f(0.3 - 1e-3)) / 2e-3;
    assert!((fd - gc).abs() < 1e-2 * gc.abs(), "fd {fd} vs {gc}");
}

#[test]
fn gloro_logits_append_the_largest_raised_non_target() {
    let w = t2(&[1.0, 0.0, 0.0, 1.0, 3.0, 4.0], 3, 2);
    // Sample 0 (target 0): raised others 1 + 2 sqrt(2) = 3.83 and 0 + 2 sqrt(20) = 8.94.
    // Sample 1 (target 2): raised others 2 + 2 ||w2 - w0|| and 0.5 + 2 ||w2 - w1||.
    let z = t2(&[5.0, 1.0, 0.0, 2.0, 0.5, 9.0], 2, 3);
    let y = Tensor::new(&[0u32, 2], &DEV).unwrap();
    let el = Tensor::new(2.0f32, &DEV).unwrap();
    let out: Vec<Vec<f32>> = gloro_logits(&z, &y, &el, &w).unwrap().to_vec2().unwrap();
    assert_eq!(out[0][..3], [5.0, 1.0, 0.0]);
    assert!((out[0][3] - 2.0 * 20f32.sqrt()).abs() < 1e-5, "{out:?}");
    let d20 = (2f32 * 2.0 + 4.0 * 4.0).sqrt();
    let d21 = (3f32 * 3.0 + 3.0 * 3.0).sqrt();
    let want = (2.0 + 2.0 * d20).max(0.5 + 2.0 * d21);
    assert!((out[1][3] - want).abs() < 1e-5, "{out:?}");
    // The bottom logit stays below the target exactly when every pairwise margin exceeds eps L_sub
    // ||w_t - w_j||, i.e. when Prop. 2 certifies radius eps: here sample 1 (margin 7 against 2 d20 =
    // 8.94) is not certified, and its bottom logit beats its target.
    assert!(out[1][3] > out[1][2]);
    // Shapes are checked.
    assert!(gloro_logits(&z, &y, &el, &t2(&[1.0, 0.0], 1, 2)).is_err());
}

/// The GloRo loss's gradient in the logits, the last weight and eps L_sub against central differences.
#[test]
fn gloro_loss_gradient_matches_finite_differences() {
    let wv = [0.9f32, -0.2, 0.1, 1.1, 0.7, 0.8];
    let zv = [0.4f32, 1.3, -0.2, 0.8, 0.1, 0.5];
    let y = Tensor::new(&[1u32, 0], &DEV).unwrap();
    let loss = |z: &Tensor, w: &Tensor, el: &Tensor| {
        cross_entropy(&gloro_logits(z, &y, el, w).unwrap(), &y).unwrap()
    };
    let w = Var::from_tensor(&t2(&wv, 3, 2)).unwrap();
    let z = Var::from_tensor(&t2(&zv, 2, 3)).unwrap();
    let el = Var::from_tensor(&Tensor::new(0.3f32, &DEV).unwrap()).unwrap();
    let grads = loss(z.as_tensor(), w.as_tensor(), el.as_tensor())
        .backward()
        .unwrap();
    let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let gz = flat(grads.get(z.as_tensor()).unwrap());
    let gw = flat(grads.get(w.as_tensor()).unwrap());
    let ge = grads
        .get(el.as_tensor())
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let value = |zv: &[f32], wv: &[f32], e: f32| {
        loss(&t2(zv, 2, 3), &t2(wv, 3, 2), &Tensor::new(e, &DEV).unwrap())
            .to_scalar::<f32>()
            .unwrap()
    };
    let h = 1e-2f32;
    let close = |fd: f32, g: f32, what: &str| {
        assert!(
            (fd - g).abs() < 2e-3 + 1e-2 * g.abs(),
            "{what}: fd {fd} vs {g}"
        );
    };
    for i in 0..6 {
        let (mut p, mut m) = (zv, zv);
        p[i] += h;
        m[i] -= h;
        close(
            (value(&p, &wv, 0.3) - value(&m, &wv, 0.3)) / (2.0 * h),
            gz[i],
            "logit",
        );
        let (mut p, mut m) = (wv, wv);
        p[i] += h;
        m[i] -= h;
        close(
            (value(&zv, &p, 0.3) - value(&zv, &m, 0.3)) / (2.0 * h),
            gw[i],
            "weight",
        );
    }
    close(
        (value(&zv, &wv, 0.3 + h) - value(&zv, &wv, 0.3 - h)) / (2.0 * h),
        ge,
        "eps L_sub",
    );
    assert!(ge > 0.0, "a larger required radius costs loss");
}
