//! Our im2col convolution against candle's `conv2d` (forward) and against the definition evaluated in
//! f64 loops (forward, input gradient, kernel gradient) on random shapes: strides 1-3, paddings 0-2,
//! odd sizes, batches of 1-3.

use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct Case {
    b: usize,
    c: usize,
    o: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    s: usize,
    p: usize,
}

fn out(n: usize, k: usize, s: usize, p: usize) -> usize {
    (n + 2 * p - k) / s + 1
}

/// y, dL/dx and dL/dk of L = <g, conv(x, k)> from the definition of cross-correlation.
fn definition(cs: &Case, x: &[f32], k: &[f32], g: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (oh, ow) = (out(cs.h, cs.kh, cs.s, cs.p), out(cs.w, cs.kw, cs.s, cs.p));
    let mut y = vec![0f64; cs.b * cs.o * oh * ow];
    let mut gx = vec![0f64; x.len()];
    let mut gk = vec![0f64; k.len()];
    for b in 0..cs.b {
        for o in 0..cs.o {
            for yy in 0..oh {
                for xx in 0..ow {
                    let yi = ((b * cs.o + o) * oh + yy) * ow + xx;
                    for c in 0..cs.c {
                        for i in 0..cs.kh {
                            for j in 0..cs.kw {
                                let ih = (yy * cs.s + i) as isize - cs.p as isize;
                                let iw = (xx * cs.s + j) as isize - cs.p as isize;
                                if ih < 0 || iw < 0 || ih >= cs.h as isize || iw >= cs.w as isize {
                                    continue;
                                }
                                let xi = ((b * cs.c + c) * cs.h + ih as usize) * cs.w + iw as usize;
                                let ki = ((o * cs.c + c) * cs.kh + i) * cs.kw + j;
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

#[test]
fn forward_and_both_gradients_equal_the_definition_and_candle() {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut strided_uneven = 0;
    for _ in 0..60 {
        let cs = Case {
            b: rng.random_range(1..4),
            c: rng.random_range(1..4),
            o: rng.random_range(1..5),
            h: rng.random_range(3..12),
            w: rng.random_range(3..12),
            kh: rng.random_range(1..5),
            kw: rng.random_range(1..5),
            s: rng.random_range(1..4),
            p: rng.random_range(0..3),
        };
        if cs.h + 2 * cs.p < cs.kh || cs.w + 2 * cs.p < cs.kw {
            continue;
        }
        let (oh, ow) = (out(cs.h, cs.kh, cs.s, cs.p), out(cs.w, cs.kw, cs.s, cs.p));
        if cs.s > 1 && (cs.h + 2 * cs.p - cs.kh) % cs.s != 0 {
            strided_uneven += 1; // the windows stop short of the padded edge
        }
        let xs = random(&mut rng, cs.b * cs.c * cs.h * cs.w);
        let ks = random(&mut rng, cs.o * cs.c * cs.kh * cs.kw);
        let gs = random(&mut rng, cs.b * cs.o * oh * ow);
        let x = Var::from_vec(xs.clone(), (cs.b, cs.c, cs.h, cs.w), &dev).unwrap();
        let k = Var::from_vec(ks.clone(), (cs.o, cs.c, cs.kh, cs.kw), &dev).unwrap();
        let g = Tensor::from_vec(gs.clone(), (cs.b, cs.o, oh, ow), &dev).unwrap();
        let y = lmt_models::conv2d(x.as_tensor(), k.as_tensor(), cs.s, cs.p).unwrap();
        assert_eq!(y.dims(), &[cs.b, cs.o, oh, ow]);
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let (want_y, want_gx, want_gk) = definition(&cs, &xs, &ks, &gs);
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        close("forward", &flat(&y), &want_y);
        close("input gradient", &flat(grads.get(&x).unwrap()), &want_gx);
        close("kernel gradient", &flat(grads.get(&k).unwrap()), &want_gk);
        // With untracked images (a training batch) only the kernel gradient is computed, and it is the same.
        let y2 = lmt_models::conv2d(&x.as_tensor().detach(), k.as_tensor(), cs.s, cs.p).unwrap();
        let g2 = (&y2 * &g).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(flat(g2.get(&k).unwrap()), flat(grads.get(&k).unwrap()));
        let reference = x.conv2d(&k, cs.p, cs.s, 1, 1).unwrap();
        let want: Vec<f64> = flat(&reference).iter().map(|&v| v as f64).collect();
        close("candle conv2d", &flat(&y), &want);
    }
    assert!(
        strided_uneven > 5,
        "the draw covers strided windows that stop short"
    );
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
