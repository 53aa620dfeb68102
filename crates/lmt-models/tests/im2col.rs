//! Our custom ops against references: the im2col convolution against candle's `conv2d` (forward) and
//! the definition in f64 loops (forward, input gradient, kernel gradient) on random shapes (strides 1-3,
//! paddings 0-2, odd sizes, batches of 1-3, and the general case: asymmetric pads, unequal strides,
//! dilations 1-2, 1-3 groups); the per-channel ops and batch normalisation against the
//! same formulas written with candle's broadcast ops.

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use lmt_models::ConvCfg;

struct Case {
    b: usize,
    c: usize,
    o: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    cfg: ConvCfg,
}

impl Case {
    fn out(&self) -> (usize, usize) {
        let [pt, pl, pb, pr] = self.cfg.pads;
        let ((sh, sw), (dh, dw)) = (self.cfg.stride, self.cfg.dilation);
        let eh = (self.kh - 1) * dh + 1;
        let ew = (self.kw - 1) * dw + 1;
        (
            (self.h + pt + pb - eh) / sh + 1,
            (self.w + pl + pr - ew) / sw + 1,
        )
    }
}

/// y, dL/dx and dL/dk of L = <g, conv(x, k)> from the definition of grouped, dilated cross-correlation.
fn definition(cs: &Case, x: &[f32], k: &[f32], g: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (oh, ow) = cs.out();
    let [pt, pl, _, _] = cs.cfg.pads;
    let ((sh, sw), (dh, dw)) = (cs.cfg.stride, cs.cfg.dilation);
    let groups = cs.cfg.groups;
    let (cg, og) = (cs.c / groups, cs.o / groups);
    let mut y = vec![0f64; cs.b * cs.o * oh * ow];
    let mut gx = vec![0f64; x.len()];
    let mut gk = vec![0f64; k.len()];
    for b in 0..cs.b {
        for o in 0..cs.o {
            let grp = o / og;
            for yy in 0..oh {
                for xx in 0..ow {
                    let yi = ((b * cs.o + o) * oh + yy) * ow + xx;
                    for cl in 0..cg {
                        let c = grp * cg + cl;
                        for i in 0..cs.kh {
                            for j in 0..cs.kw {
                                let ih = (yy * sh + i * dh) as isize - pt as isize;
                                let iw = (xx * sw + j * dw) as isize - pl as isize;
                                if ih < 0 || iw < 0 || ih >= cs.h as isize || iw >= cs.w as isize {
                                    continue;
                                }
                                let xi = ((b * cs.c + c) * cs.h + ih as usize) * cs.w + iw as usize;
                                let ki = ((o * cg + cl) * cs.kh + i) * cs.kw + j;
                                y[yi] += x[xi] as f64 * k[ki] as f64;
                                gx[xi] += k[ki] as f64 * g[yi] as f64;
                                gk[ki] += x[xi] as f64 * g[yi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    (y, gx, gk)
}

fn close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= 1e-5 * scale,
            "{what}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// A random case; `general` draws asymmetric pads, unequal strides, dilations and groups, otherwise the
/// square stride and padding of the built-in networks.
fn draw(rng: &mut ChaCha8Rng, general: bool) -> Option<Case> {
    let groups = if general { rng.random_range(1..4) } else { 1 };
    let cfg = if general {
        ConvCfg {
            stride: (rng.random_range(1..4), rng.random_range(1..4)),
            pads: [0; 4].map(|_| rng.random_range(0..3)),
            dilation: (rng.random_range(1..3), rng.random_range(1..3)),
            groups,
        }
    } else {
        ConvCfg::square(rng.random_range(1..4), rng.random_range(0..3))
    };
    let cs = Case {
        b: rng.random_range(1..4),
        c: groups * rng.random_range(1..4),
        o: groups * rng.random_range(1..4),
        h: rng.random_range(3..12),
        w: rng.random_range(3..12),
        kh: rng.random_range(1..5),
        kw: rng.random_range(1..5),
        cfg,
    };
    let [pt, pl, pb, pr] = cs.cfg.pads;
    let (dh, dw) = cs.cfg.dilation;
    let fits = cs.h + pt + pb > (cs.kh - 1) * dh && cs.w + pl + pr > (cs.kw - 1) * dw;
    fits.then_some(cs)
}

#[test]
fn forward_and_both_gradients_equal_the_definition_and_candle() {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (mut strided_uneven, mut general_cases) = (0, 0);
    for case in 0..120 {
        let general = case % 2 == 1;
        let Some(cs) = draw(&mut rng, general) else {
            continue;
        };
        general_cases += general as usize;
        let (oh, ow) = cs.out();
        let (s, p) = (cs.cfg.stride.0, cs.cfg.pads[0]);
        if !general && s > 1 && (cs.h + 2 * p - cs.kh) % s != 0 {
            strided_uneven += 1; // the windows stop short of the padded edge
        }
        let xs = random(&mut rng, cs.b * cs.c * cs.h * cs.w);
        let cg = cs.c / cs.cfg.groups;
        let ks = random(&mut rng, cs.o * cg * cs.kh * cs.kw);
        let gs = random(&mut rng, cs.b * cs.o * oh * ow);
        let x = Var::from_vec(xs.clone(), (cs.b, cs.c, cs.h, cs.w), &dev).unwrap();
        let k = Var::from_vec(ks.clone(), (cs.o, cg, cs.kh, cs.kw), &dev).unwrap();
        let g = Tensor::from_vec(gs.clone(), (cs.b, cs.o, oh, ow), &dev).unwrap();
        let y = lmt_models::conv2d(x.as_tensor(), k.as_tensor(), &cs.cfg).unwrap();
        assert_eq!(y.dims(), &[cs.b, cs.o, oh, ow]);
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let (want_y, want_gx, want_gk) = definition(&cs, &xs, &ks, &gs);
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        close("forward", &flat(&y), &want_y);
        close("input gradient", &flat(grads.get(&x).unwrap()), &want_gx);
        close("kernel gradient", &flat(grads.get(&k).unwrap()), &want_gk);
        // With untracked images (a training batch) only the kernel gradient is computed, and it is the same.
        let y2 = lmt_models::conv2d(&x.as_tensor().detach(), k.as_tensor(), &cs.cfg).unwrap();
        let g2 = (&y2 * &g).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(flat(g2.get(&k).unwrap()), flat(grads.get(&k).unwrap()));
        if !general {
            let reference = x.conv2d(&k, p, s, 1, 1).unwrap();
            let want: Vec<f64> = flat(&reference).iter().map(|&v| v as f64).collect();
            close("candle conv2d", &flat(&y), &want);
        }
    }
    assert!(
        strided_uneven > 5,
        "the draw covers strided windows that stop short"
    );
    assert!(general_cases > 30, "only {general_cases} general cases");
}

/// The biased convolution gives the bits of `add_channel_bias(conv2d(x, k), b)`, forward and all three
/// gradients, with signed zeros, NaN and infinities in the output gradient, whichever operands are
/// tracked (a training batch: images detached; an attack: kernel and bias detached), grouped cases
/// included (they take the unfused path).
#[test]
fn biased_convolution_equals_convolution_then_bias_bit_for_bit() {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let bits = |t: &Tensor| -> Vec<u32> {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v.into_iter().map(f32::to_bits).collect()
    };
    let mut cases = 0;
    for case in 0..60 {
        let Some(cs) = draw(&mut rng, case % 3 == 2) else {
            continue;
        };
        cases += 1;
        let (oh, ow) = cs.out();
        let cg = cs.c / cs.cfg.groups;
        let x = Var::from_vec(
            random(&mut rng, cs.b * cs.c * cs.h * cs.w),
            (cs.b, cs.c, cs.h, cs.w),
            &dev,
        )
        .unwrap();
        let k = Var::from_vec(
            random(&mut rng, cs.o * cg * cs.kh * cs.kw),
            (cs.o, cg, cs.kh, cs.kw),
            &dev,
        )
        .unwrap();
        let b = Var::from_vec(random(&mut rng, cs.o), cs.o, &dev).unwrap();
        let mut gs = random(&mut rng, cs.b * cs.o * oh * ow);
        for (i, v) in gs.iter_mut().enumerate() {
            *v = match i % 7 {
                1 => -0.0,
                2 => 0.0,
                _ if i == 3 && case % 2 == 0 => f32::NAN,
                _ if i == 5 && case % 4 == 0 => f32::NEG_INFINITY,
                _ => *v,
            };
        }
        let g = Tensor::from_vec(gs, (cs.b, cs.o, oh, ow), &dev).unwrap();
        for (track_x, track_kb) in [(true, true), (false, true), (true, false)] {
            let pick = |v: &Var, tracked: bool| match tracked {
                true => v.as_tensor().clone(),
                false => v.as_tensor().detach(),
            };
            let (xt, kt, bt) = (pick(&x, track_x), pick(&k, track_kb), pick(&b, track_kb));
            let fused = lmt_models::conv2d_bias(&xt, &kt, &bt, &cs.cfg).unwrap();
            let chain =
                lmt_models::add_channel_bias(&lmt_models::conv2d(&xt, &kt, &cs.cfg).unwrap(), &bt)
                    .unwrap();
            assert_eq!(bits(&fused), bits(&chain), "forward, case {case}");
            let gf = (&fused * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gc = (&chain * &g)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (name, v, tracked) in [("x", &x, track_x), ("k", &k, track_kb), ("b", &b, track_kb)]
            {
                let (f, c) = (gf.get(v.as_tensor()), gc.get(v.as_tensor()));
                assert_eq!(
                    f.is_some(),
                    tracked,
                    "gradient of {name} present iff tracked"
                );
                if let (Some(f), Some(c)) = (f, c) {
                    assert_eq!(
                        bits(f),
                        bits(c),
                        "gradient of {name}, case {case}, tracked x {track_x}"
                    );
                }
            }
        }
    }
    assert!(cases > 40, "only {cases} cases fit");
}

#[test]
fn channel_bias_equals_broadcast_add_with_its_gradients() {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for shape in [
        vec![3, 5, 7, 4],
        vec![1, 2, 1, 1],
        vec![4, 3, 6],
        vec![2, 16, 14, 14],
    ] {
        let n: usize = shape.iter().product();
        let c = shape[1];
        let y = Var::from_vec(random(&mut rng, n), shape.as_slice(), &dev).unwrap();
        let b = Var::from_vec(random(&mut rng, c), c, &dev).unwrap();
        let g = Tensor::from_vec(random(&mut rng, n), shape.as_slice(), &dev).unwrap();
        let ours = lmt_models::add_channel_bias(y.as_tensor(), b.as_tensor()).unwrap();
        let mut bshape = vec![1; shape.len()];
        bshape[1] = c;
        let theirs = y
            .as_tensor()
            .broadcast_add(&b.as_tensor().reshape(bshape).unwrap())
            .unwrap();
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(&ours), v(&theirs), "forward {shape:?}");
        let go = (&ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gt = (&theirs * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(
            v(go.get(&y).unwrap()),
            v(gt.get(&y).unwrap()),
            "dy {shape:?}"
        );
        // dL/db_c = sum of g over every position of channel c, in f64.
        let gv = v(&g);
        let row: usize = shape[2..].iter().product();
        let want: Vec<f64> = (0..c)
            .map(|ch| {
                (0..shape[0])
                    .flat_map(|i| (0..row).map(move |r| (i * c + ch) * row + r))
                    .map(|k| gv[k] as f64)
                    .sum()
            })
            .collect();
        close("db", &v(go.get(&b).unwrap()), &want);
        close("db (candle)", &v(gt.get(&b).unwrap()), &want);
    }
}

#[test]
fn channel_scale_and_sum_equal_broadcast_ops_with_their_gradients() {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for shape in [vec![3, 5, 7, 4], vec![2, 3, 6], vec![2, 16, 9, 9]] {
        let n: usize = shape.iter().product();
        let c = shape[1];
        let mut bshape = vec![1; shape.len()];
        bshape[1] = c;
        let x = Var::from_vec(random(&mut rng, n), shape.as_slice(), &dev).unwrap();
        let s = Var::from_vec(random(&mut rng, c), c, &dev).unwrap();
        let g = Tensor::from_vec(random(&mut rng, n), shape.as_slice(), &dev).unwrap();
        let gc = Tensor::from_vec(random(&mut rng, c), c, &dev).unwrap();
        // L = <g, x * s> + <gc, sum_c(x)>
        let loss = |y: &Tensor, sum: &Tensor| {
            ((y * &g).unwrap().sum_all().unwrap() + (sum * &gc).unwrap().sum_all().unwrap())
                .unwrap()
        };
        let ours = lmt_models::mul_channel(x.as_tensor(), s.as_tensor()).unwrap();
        let ours_sum = lmt_models::channel_sum(x.as_tensor()).unwrap();
        let theirs = x
            .as_tensor()
            .broadcast_mul(&s.as_tensor().reshape(bshape.clone()).unwrap())
            .unwrap();
        let mut dims: Vec<usize> = (0..shape.len()).filter(|&d| d != 1).collect();
        dims.reverse();
        let mut theirs_sum = x.as_tensor().clone();
        for d in dims {
            theirs_sum = theirs_sum.sum(d).unwrap();
        }
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let f64s = |t: &Tensor| v(t).iter().map(|&a| a as f64).collect::<Vec<_>>();
        assert_eq!(v(&ours), v(&theirs), "x * s {shape:?}");
        close("channel sum", &v(&ours_sum), &f64s(&theirs_sum));
        let go = loss(&ours, &ours_sum).backward().unwrap();
        let gt = loss(&theirs, &theirs_sum).backward().unwrap();
        close("dx", &v(go.get(&x).unwrap()), &f64s(gt.get(&x).unwrap()));
        close("ds", &v(go.get(&s).unwrap()), &f64s(gt.get(&s).unwrap()));
    }
}

/// Batch normalisation (training and inference) against the same formulas written with candle's
/// broadcast ops: output, scale, running statistics and the gradients of x, gamma and beta.
#[test]
fn batch_norm_equals_the_broadcast_formula() {
    use lmt_models::{BatchNorm2d, CertifyMethod, Ctx};
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let (b, c, h, w) = (4, 3, 5, 6);
    let x = Var::from_vec(random(&mut rng, b * c * h * w), (b, c, h, w), &dev).unwrap();
    let gamma = Var::from_vec(random(&mut rng, c), c, &dev).unwrap();
    let beta = Var::from_vec(random(&mut rng, c), c, &dev).unwrap();
    let g = Tensor::from_vec(random(&mut rng, b * c * h * w), (b, c, h, w), &dev).unwrap();
    let rm0 = random(&mut rng, c);
    let rv0: Vec<f32> = random(&mut rng, c).iter().map(|a| a.abs() + 0.5).collect();
    let pv = lmt_core::PowerVectors::new(0);
    for train in [true, false] {
        let rm = Var::from_vec(rm0.clone(), c, &dev).unwrap();
        let rv = Var::from_vec(rv0.clone(), c, &dev).unwrap();
        let bn = BatchNorm2d::new(
            gamma.as_tensor().clone(),
            beta.as_tensor().clone(),
            rm.clone(),
            rv.clone(),
            1e-3,
            0.9,
        )
        .unwrap();
        let ctx = if train {
            Ctx::train(&pv)
        } else {
            Ctx {
                frozen: false,
                ..Ctx::eval(CertifyMethod::Auto)
            }
        };
        let (y, scale) = bn.normalize(x.as_tensor(), &ctx).unwrap();
        // Reference.
        let xt = x.as_tensor();
        let (mean, var) = if train {
            let mean = xt
                .mean_keepdim(0)
                .unwrap()
                .mean_keepdim(2)
                .unwrap()
                .mean_keepdim(3)
                .unwrap();
            let var = xt
                .broadcast_sub(&mean)
                .unwrap()
                .sqr()
                .unwrap()
                .mean_keepdim(0)
                .unwrap()
                .mean_keepdim(2)
                .unwrap()
                .mean_keepdim(3)
                .unwrap();
            (mean.flatten_all().unwrap(), var.flatten_all().unwrap())
        } else {
            (
                Tensor::from_vec(rm0.clone(), c, &dev).unwrap(),
                Tensor::from_vec(rv0.clone(), c, &dev).unwrap(),
            )
        };
        let want_scale = gamma
            .as_tensor()
            .div(&(&var + 1e-3).unwrap().sqrt().unwrap())
            .unwrap();
        let sh = (1, c, 1, 1);
        let want = xt
            .broadcast_sub(&mean.reshape(sh).unwrap())
            .unwrap()
            .broadcast_mul(&want_scale.reshape(sh).unwrap())
            .unwrap()
            .broadcast_add(&beta.as_tensor().reshape(sh).unwrap())
            .unwrap();
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let f64s = |t: &Tensor| v(t).iter().map(|&a| a as f64).collect::<Vec<_>>();
        close("y", &v(&y), &f64s(&want));
        close("scale", &v(&scale), &f64s(&want_scale));
        if train {
            let m = (b * h * w) as f64;
            let want_rm = ((Tensor::from_vec(rm0.clone(), c, &dev).unwrap() * 0.9).unwrap()
                + (&mean * 0.1).unwrap())
            .unwrap();
            let want_rv = ((Tensor::from_vec(rv0.clone(), c, &dev).unwrap() * 0.9).unwrap()
                + (&var * (0.1 * m / (m - 1.0))).unwrap())
            .unwrap();
            close("running mean", &v(rm.as_tensor()), &f64s(&want_rm));
            close("running var", &v(rv.as_tensor()), &f64s(&want_rv));
        }
        // The scale enters the LMT estimate, so its gradient must flow too.
        let loss = |y: &Tensor, s: &Tensor| {
            ((y * &g).unwrap().sum_all().unwrap() + s.sqr().unwrap().sum_all().unwrap()).unwrap()
        };
        let go = loss(&y, &scale).backward().unwrap();
        let gt = loss(&want, &want_scale).backward().unwrap();
        for (name, p) in [("dx", &x), ("dgamma", &gamma), ("dbeta", &beta)] {
            close(name, &v(go.get(p).unwrap()), &f64s(gt.get(p).unwrap()));
        }
    }
}

#[test]
fn bn_recalibration_averages_the_batch_statistics_with_dropout_off() {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let c = 3;
    let var = |v: Vec<f32>| Var::from_vec(v, c, &dev).unwrap();
    let bn = lmt_models::BatchNorm2d::new(
        Tensor::ones(c, candle_core::DType::F32, &dev).unwrap(),
        Tensor::zeros(c, candle_core::DType::F32, &dev).unwrap(),
        var(vec![5.0; c]),
        var(vec![7.0; c]),
        1e-5,
        0.9,
    )
    .unwrap();
    let batches: Vec<Tensor> = (0..3)
        .map(|k| {
            let v: Vec<f32> = random(&mut rng, 4 * c * 5 * 5)
                .iter()
                .map(|x| x * (k + 1) as f32)
                .collect();
            Tensor::from_vec(v, (4, c, 5, 5), &dev).unwrap()
        })
        .collect();
    // Per channel: batch mean and unbiased batch variance, then their means over the batches.
    let (mut mean, mut var_u) = (vec![0f64; c], vec![0f64; c]);
    for x in &batches {
        let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        for ch in 0..c {
            let vals: Vec<f64> = (0..4)
                .flat_map(|b| (0..25).map(move |p| (b * c + ch) * 25 + p))
                .map(|i| v[i] as f64)
                .collect();
            let m = vals.iter().sum::<f64>() / 100.0;
            mean[ch] += m / 3.0;
            var_u[ch] += vals.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 99.0 / 3.0;
        }
    }
    for (k, x) in batches.iter().enumerate() {
        bn.normalize(x, &lmt_models::Ctx::recalibrate_bn(k))
            .unwrap();
    }
    let got = |t: &Var| t.as_tensor().to_vec1::<f32>().unwrap();
    close("running mean", &got(bn.running_mean()), &mean);
    close("running variance", &got(bn.running_var()), &var_u);
    // Dropout is the identity in this mode.
    let d = lmt_models::Dropout::new(0.5, "d").unwrap();
    let ctx = lmt_models::Ctx::recalibrate_bn(0);
    let (y, _) =
        lmt_models::LipModule::forward_lip(&d, &batches[0], lmt_models::Lip::None, &ctx).unwrap();
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        batches[0].flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}

/// The path every device but the CPU takes (candle's conv2d with the padding applied explicitly, and
/// candle's broadcast ops for the per-channel ops), exercised on the CPU through f64 tensors, which
/// take the same fallback: forward and both gradients against the definition, including strided
/// windows that stop short of the padded edge (where candle's own conv2d backward gets the input
/// gradient's shape wrong).
#[test]
fn the_off_cpu_fallback_equals_the_definition_with_its_gradients() {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let mut strided_uneven = 0;
    for _ in 0..60 {
        let Some(cs) = draw(&mut rng, false) else {
            continue;
        };
        let (oh, ow) = cs.out();
        let (s, p) = (cs.cfg.stride.0, cs.cfg.pads[0]);
        strided_uneven += usize::from(s > 1 && (cs.h + 2 * p - cs.kh) % s != 0);
        let xs = random(&mut rng, cs.b * cs.c * cs.h * cs.w);
        let ks = random(&mut rng, cs.o * cs.c * cs.kh * cs.kw);
        let gs = random(&mut rng, cs.b * cs.o * oh * ow);
        let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
        let x = Var::from_vec(f64s(&xs), (cs.b, cs.c, cs.h, cs.w), &dev).unwrap();
        let k = Var::from_vec(f64s(&ks), (cs.o, cs.c, cs.kh, cs.kw), &dev).unwrap();
        let g = Tensor::from_vec(f64s(&gs), (cs.b, cs.o, oh, ow), &dev).unwrap();
        let y = lmt_models::conv2d(x.as_tensor(), k.as_tensor(), &cs.cfg).unwrap();
        assert_eq!(y.dims(), &[cs.b, cs.o, oh, ow]);
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let (want_y, want_gx, want_gk) = definition(&cs, &xs, &ks, &gs);
        let exact = |what: &str, t: &Tensor, want: &[f64]| {
            let got = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            assert_eq!(got.len(), want.len(), "{what}: length");
            let scale = want.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                assert!((a - b).abs() <= 1e-12 * scale, "{what}[{i}]: {a} vs {b}");
            }
        };
        exact("forward", &y, &want_y);
        exact("input gradient", grads.get(&x).unwrap(), &want_gx);
        exact("kernel gradient", grads.get(&k).unwrap(), &want_gk);
        // The per-channel ops' fallback: y + b and y * s per channel, and the channel sum.
        let bias = Var::from_vec(f64s(&random(&mut rng, cs.o)), cs.o, &dev).unwrap();
        let z = lmt_models::mul_channel(
            &lmt_models::add_channel_bias(&y, bias.as_tensor()).unwrap(),
            bias.as_tensor(),
        )
        .unwrap();
        let sums = lmt_models::channel_sum(&z)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let (yv, bv) = (
            y.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            bias.as_tensor().to_vec1::<f64>().unwrap(),
        );
        let row = oh * ow;
        for (ch, got) in sums.iter().enumerate() {
            let want: f64 = (0..cs.b)
                .flat_map(|n| (0..row).map(move |r| (n * cs.o + ch) * row + r))
                .map(|i| (yv[i] + bv[ch]) * bv[ch])
                .sum();
            assert!(
                (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                "channel {ch}: {got} vs {want}"
            );
        }
    }
    assert!(
        strided_uneven > 3,
        "the draw covers strided windows that stop short"
    );
}
