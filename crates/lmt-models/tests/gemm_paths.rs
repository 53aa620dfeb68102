//! The gemm kernels on this host's path (`lmt_models::gemm_path`: AVX2, or AVX-512 in a build with the
//! `avx512` feature) against exact f64 sums, on sizes that reach the wide micro-kernels: a matmul and
//! the convolutions of a WRN block (forward and both gradients). Each path is within 5e-6 of the exact
//! values relative to their scale, so any two paths agree within 1e-5.

use candle_core::{Device, Tensor, Var};
use lmt_models::ConvCfg;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TOL: f64 = 5e-6;

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn within(what: &str, got: &Tensor, want: &[f64]) {
    let got = lmt_models::tensor_f64(got).unwrap();
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (g, w)| m.max((g - w).abs()));
    eprintln!(
        "{what} on the {} path: {:.2e} of scale",
        lmt_models::gemm_path(),
        worst / scale
    );
    assert!(
        worst <= TOL * scale,
        "{what}: {worst:e} > {TOL:e} x {scale}"
    );
}

#[test]
fn matmul_on_this_hosts_gemm_path_is_within_5e_6_of_exact() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (m, k, n) = (301, 577, 129);
    let (a, b) = (random(&mut rng, m * k), random(&mut rng, k * n));
    let ta = Tensor::from_vec(a.clone(), (m, k), &Device::Cpu).unwrap();
    let tb = Tensor::from_vec(b.clone(), (k, n), &Device::Cpu).unwrap();
    let want: Vec<f64> = (0..m * n)
        .map(|ij| {
            (0..k)
                .map(|p| a[ij / n * k + p] as f64 * b[p * n + ij % n] as f64)
                .sum()
        })
        .collect();
    within("matmul 301x577x129", &ta.matmul(&tb).unwrap(), &want);
}

#[test]
fn wrn_convolutions_on_this_hosts_gemm_path_are_within_5e_6_of_exact() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    // 3x3 stride 1 and stride 2 (a group's first block), 64 -> 64 channels at 16x16, batch 2.
    for stride in [1, 2] {
        let (b, c, o, hw) = (2, 64, 64, 16);
        let cfg = ConvCfg::square(stride, 1);
        let oh = (hw + 2 - 3) / stride + 1;
        let (xs, ks) = (
            random(&mut rng, b * c * hw * hw),
            random(&mut rng, o * c * 9),
        );
        let gs = random(&mut rng, b * o * oh * oh);
        let x = Var::from_vec(xs.clone(), (b, c, hw, hw), &Device::Cpu).unwrap();
        let k = Var::from_vec(ks.clone(), (o, c, 3, 3), &Device::Cpu).unwrap();
        let g = Tensor::from_vec(gs.clone(), (b, o, oh, oh), &Device::Cpu).unwrap();
        let y = lmt_models::conv2d(x.as_tensor(), k.as_tensor(), &cfg).unwrap();
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        // The definition, in f64: y[n,o,i,j] = sum_{c,u,v} x[n,c,i s + u - 1, j s + v - 1] k[o,c,u,v].
        let xi = |n: usize, ch: usize, r: isize, q: isize| -> Option<usize> {
            let ok = (0..hw as isize).contains(&r) && (0..hw as isize).contains(&q);
            ok.then(|| ((n * c + ch) * hw + r as usize) * hw + q as usize)
        };
        let (mut wy, mut wgx, mut wgk) = (
            vec![0f64; gs.len()],
            vec![0f64; xs.len()],
            vec![0f64; ks.len()],
        );
        for n in 0..b {
            for oc in 0..o {
                for i in 0..oh {
                    for j in 0..oh {
                        let yi = ((n * o + oc) * oh + i) * oh + j;
                        for ch in 0..c {
                            for u in 0..3 {
                                for v in 0..3 {
                                    let r = (i * stride + u) as isize - 1;
                                    let q = (j * stride + v) as isize - 1;
                                    if let Some(p) = xi(n, ch, r, q) {
                                        let ki = ((oc * c + ch) * 3 + u) * 3 + v;
                                        wy[yi] += xs[p] as f64 * ks[ki] as f64;
                                        wgx[p] += gs[yi] as f64 * ks[ki] as f64;
                                        wgk[ki] += gs[yi] as f64 * xs[p] as f64;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        within(&format!("conv stride {stride} forward"), &y, &wy);
        within(
            &format!("conv stride {stride} input gradient"),
            grads.get(&x).unwrap(),
            &wgx,
        );
        within(
            &format!("conv stride {stride} kernel gradient"),
            grads.get(&k).unwrap(),
            &wgk,
        );
    }
}
