//! WideResNet-16-k: the authors' parameter count, shapes, a training step through every layer (stride-2
//! convolutions on even sizes included), and a sound certified bound; frozen passes of WRN and
//! Kolter-Wong.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use lmt_core::{cross_entropy, lmt_logits_prop2, CertifiedBound, LipEstimate, PowerVectors};
use lmt_models::{Act, CertifyMethod, Classifier, Ctx, KolterWong, Lip, WideResNet, WideResNetCfg};
use nalgebra::DMatrix;

const DEV: Device = Device::Cpu;

fn count(vm: &VarMap) -> usize {
    vm.all_vars().iter().map(|v| v.elem_count()).sum()
}

#[test]
fn wrn_16_4_has_the_authors_parameter_count() {
    for avg in [false, true] {
        let vm = VarMap::new();
        let net = WideResNet::new(
            WideResNetCfg {
                avg_pool_shortcut: avg,
                ..Default::default()
            },
            &vm,
            0,
            &DEV,
        )
        .unwrap();
        // Reference 4.2: conv kernels 2,742,704 + last FC 2,570 + BN gamma/beta 3,616 = 2,748,890.
        assert_eq!(count(&vm), 2_748_890, "avg_pool_shortcut = {avg}");
        // 13 BN layers, each with running mean and variance, kept out of the trainable variables.
        assert_eq!(net.buffers().len(), 26);
    }
    // Parseval adds the 12 residual weights (2 per block), as the reference counts them.
    let vm = VarMap::new();
    WideResNet::new(
        WideResNetCfg {
            parseval: true,
            ..Default::default()
        },
        &vm,
        0,
        &DEV,
    )
    .unwrap();
    assert_eq!(count(&vm), 2_748_890 + 12);
    assert!(WideResNet::new(
        WideResNetCfg {
            depth: 15,
            ..Default::default()
        },
        &VarMap::new(),
        0,
        &DEV
    )
    .is_err());
}

fn small(avg: bool) -> (WideResNet, VarMap) {
    small_with(avg, false)
}

fn small_with(avg: bool, parseval: bool) -> (WideResNet, VarMap) {
    let vm = VarMap::new();
    let cfg = WideResNetCfg {
        depth: 10,
        width: 1,
        dropout: 0.4,
        classes: 10,
        avg_pool_shortcut: avg,
        parseval,
        activation: Act::Relu,
    };
    (WideResNet::new(cfg, &vm, 1, &DEV).unwrap(), vm)
}

fn images(seed: u64, b: usize) -> Tensor {
    let mut s = seed;
    let v: Vec<f32> = (0..b * 3 * 32 * 32)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    Tensor::from_vec(v, (b, 3, 32, 32), &DEV).unwrap()
}

#[test]
fn an_lmt_training_step_reaches_every_parameter() {
    for avg in [false, true] {
        let (net, vm) = small(avg);
        let pv = PowerVectors::new(0);
        let x = images(3, 4);
        let y = Tensor::new(&[1u32, 2, 3, 4], &DEV).unwrap();
        let ctx = Ctx::train(&pv).with_seed(9);
        let out = net
            .forward(
                &x,
                Lip::Estimate(LipEstimate::one(&DEV).unwrap().scale(0.1).unwrap()),
                &ctx,
            )
            .unwrap();
        assert_eq!(out.logits.dims(), [4, 10]);
        let c_l = out.l_sub.estimate().unwrap().tensor().clone();
        // Uncapped (Alg. 1): at initialisation every sample may be misclassified, and capping would then
        // add nothing, leaving the power vectors without a gradient (which refresh() correctly skips).
        let loss = cross_entropy(
            &lmt_logits_prop2(&out.logits, &y, &c_l, net.last_weight().unwrap(), false).unwrap(),
            &y,
        )
        .unwrap();
        let grads = loss.backward().unwrap();
        for v in vm.all_vars() {
            let g = grads
                .get(v.as_tensor())
                .expect("every parameter gets a gradient");
            let s = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(s.is_finite(), "non-finite gradient");
        }
        // Every vector below the last layer was refreshed; the last layer's own vector enters only L (Prop. 1),
        // which this Prop. 2 loss does not use, so it has no gradient and is kept.
        assert_eq!(pv.refresh(&grads).unwrap(), 1);
        assert_eq!(
            pv.all().len(),
            1 + 2 * 3 + 3 + 1,
            "stem, two convs in each of 3 blocks, 3 shortcuts, fc"
        );
        // Training mode moved the running statistics away from their zero start.
        let rv: f32 = net.buffers()[1]
            .1
            .as_tensor()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(rv > 0.0);
    }
}

#[test]
fn dropout_masks_follow_the_step_seed() {
    let (net, _) = small(false);
    let pv = PowerVectors::new(0);
    let x = images(4, 2);
    let run = |seed| {
        net.forward(&x, Lip::None, &Ctx::train(&pv).with_seed(seed))
            .unwrap()
            .logits
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

#[test]
fn certified_bound_exceeds_the_jacobian_norm() {
    for (avg, parseval) in [(false, false), (true, false), (false, true)] {
        let (net, _) = small_with(avg, parseval);
        // Give BN non-trivial running statistics first (training mode updates them).
        let pv = PowerVectors::new(0);
        for s in 0..3 {
            net.forward(&images(10 + s, 8), Lip::None, &Ctx::train(&pv))
                .unwrap();
        }
        let x0 = Tensor::zeros((1, 3, 32, 32), DType::F32, &DEV).unwrap();
        let l = net
            .forward(
                &x0,
                Lip::Certified(CertifiedBound::one()),
                &Ctx::eval(CertifyMethod::Auto),
            )
            .unwrap()
            .l
            .certified()
            .unwrap();
        let xv = Var::from_tensor(&images(20, 1)).unwrap();
        let z = net
            .forward(xv.as_tensor(), Lip::None, &Ctx::eval(CertifyMethod::Auto))
            .unwrap()
            .logits;
        let mut rows = Vec::new();
        for k in 0..10 {
            let g = z.get(0).unwrap().get(k).unwrap().backward().unwrap();
            let gx: Vec<f32> = g
                .get(xv.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            rows.extend(gx.iter().map(|&v| v as f64));
        }
        let jac = DMatrix::from_row_slice(10, 3072, &rows)
            .singular_values()
            .iter()
            .cloned()
            .fold(0.0, f64::max);
        eprintln!(
            "WRN-10-1 (avg shortcut {avg}): certified L {:.3} ({}), Jacobian norm {jac:.3}",
            l.value(),
            l.method()
        );
        assert!(jac <= l.value() && jac > 0.0);
    }
}

/// A frozen forward pass (`Ctx::eval`) against the same pass with tracked parameters: the same logits
/// and input gradient bit for bit, and no parameter gradient at all.
fn check_frozen(net: &dyn Classifier, vm: &VarMap, x: Tensor) {
    let xv = Var::from_tensor(&x).unwrap();
    let grads = |frozen: bool| {
        let ctx = Ctx {
            frozen,
            ..Ctx::eval(CertifyMethod::Auto)
        };
        let z = net.forward(xv.as_tensor(), Lip::None, &ctx).unwrap().logits;
        let loss = z.sqr().unwrap().sum_all().unwrap();
        (z, loss.backward().unwrap())
    };
    let (z_frozen, g_frozen) = grads(true);
    let (z_tracked, g_tracked) = grads(false);
    let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(v(&z_frozen), v(&z_tracked), "the same logits, bit for bit");
    assert_eq!(
        v(g_frozen.get(xv.as_tensor()).unwrap()),
        v(g_tracked.get(xv.as_tensor()).unwrap()),
        "the same input gradient, bit for bit"
    );
    for p in vm.all_vars() {
        assert!(
            g_frozen.get(p.as_tensor()).is_none(),
            "frozen: no parameter gradient"
        );
        assert!(
            g_tracked.get(p.as_tensor()).is_some(),
            "tracked: every parameter gradient"
        );
    }
    for (name, b) in net.buffers() {
        let g = g_tracked.get(b.as_tensor());
        assert!(g.is_none(), "{name}: a buffer is never differentiated");
    }
}

#[test]
fn a_frozen_pass_gives_the_same_input_gradient_and_no_parameter_gradients() {
    for (avg, parseval) in [(false, false), (true, true)] {
        let (net, vm) = small_with(avg, parseval);
        check_frozen(&net, &vm, images(5, 3));
    }
    let vm = VarMap::new();
    let kw = KolterWong::new(&vm, 3, &DEV).unwrap();
    let x = images(6, 4)
        .narrow(1, 0, 1)
        .unwrap()
        .narrow(2, 0, 28)
        .unwrap();
    check_frozen(&kw, &vm, x.narrow(3, 0, 28).unwrap().contiguous().unwrap());
}
