//! The built-in networks as graphs and as ONNX files: the graph computes the same logits and certified
//! bounds as the network, and importing its export gives them again.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use lmt_core::CertifiedBound;
use lmt_models::{CertifyMethod, Classifier, Ctx, KolterWong, Lip, WideResNet, WideResNetCfg};
use rand::SeedableRng;
use rand_distr::{Distribution, Uniform};

fn images(n: usize, c: usize, hw: usize, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let u = Uniform::new(0f32, 1.0).unwrap();
    let v: Vec<f32> = (0..n * c * hw * hw).map(|_| u.sample(&mut rng)).collect();
    Tensor::from_vec(v, (n, c, hw, hw), &Device::Cpu).unwrap()
}

/// Logits (flat) and the certified (L_sub, L) by `method`.
fn run(m: &dyn Classifier, x: &Tensor, method: CertifyMethod) -> (Vec<f32>, f64, f64) {
    let z = m
        .eval_logits(x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let x0 = x.narrow(0, 0, 1).unwrap();
    let out = m
        .forward(
            &x0,
            Lip::Certified(CertifiedBound::one()),
            &Ctx::eval(method),
        )
        .unwrap();
    (
        z,
        out.l_sub.certified().unwrap().value(),
        out.l.certified().unwrap().value(),
    )
}

fn check(name: &str, model: &dyn Classifier, x: &Tensor, method: CertifyMethod) {
    let (z, l_sub, l) = run(model, x, method);
    let graph = model.to_graph().unwrap();
    let (zg, l_sub_g, l_g) = run(&graph, x, method);
    assert_eq!(
        z, zg,
        "{name}: the graph's logits differ from the network's"
    );
    assert_eq!(
        (l_sub, l),
        (l_sub_g, l_g),
        "{name}: the graph's bounds differ"
    );
    let bytes = lmt_onnx::export(&graph, name).unwrap();
    let back = lmt_onnx::import(&bytes, name, None).unwrap();
    assert!(back.batched && back.graph.last_linear().is_some(), "{name}");
    let (zb, l_sub_b, l_b) = run(&back.graph, x, method);
    let scale = z.iter().fold(1f32, |m, v| m.max(v.abs()));
    let worst = z
        .iter()
        .zip(&zb)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= 1e-5 * scale,
        "{name}: imported logits differ by {worst} (scale {scale})"
    );
    for (what, a, b) in [("L_sub", l_sub, l_sub_b), ("L", l, l_b)] {
        assert!(
            (a - b).abs() <= 1e-6 * a,
            "{name}: imported {what} {b} vs {a}"
        );
    }
    eprintln!("{name}: logits within {worst:.2e}, L {l:.6} vs {l_b:.6}");
}

#[test]
fn kolter_wong_round_trips() {
    let vm = VarMap::new();
    let m = KolterWong::new(&vm, 3, &Device::Cpu).unwrap();
    check(
        "kolter-wong",
        &m,
        &images(5, 1, 28, 1),
        CertifyMethod::Dense,
    );
}

#[test]
fn wide_resnets_round_trip_in_every_variant() {
    for (avg, parseval) in [(false, false), (true, false), (false, true)] {
        let vm = VarMap::new();
        let cfg = WideResNetCfg {
            depth: 10,
            width: 1,
            avg_pool_shortcut: avg,
            parseval,
            ..WideResNetCfg::default()
        };
        let m = WideResNet::new(cfg, &vm, 5, &Device::Cpu).unwrap();
        // Running statistics as a trained network has them (they start at mean 0, variance 0).
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let u = Uniform::new(0.5f32, 2.0).unwrap();
        for (name, var) in m.buffers() {
            let n = var.elem_count();
            let v: Vec<f32> = (0..n)
                .map(|_| u.sample(&mut rng) - if name.ends_with("mean") { 1.0 } else { 0.0 })
                .collect();
            var.set(&Tensor::from_vec(v, n, &Device::Cpu).unwrap())
                .unwrap();
        }
        let x = images(3, 3, 32, 2).to_dtype(DType::F32).unwrap();
        check(
            &format!("wrn avg {avg} parseval {parseval}"),
            &m,
            &x,
            CertifyMethod::Fft,
        );
    }
}
