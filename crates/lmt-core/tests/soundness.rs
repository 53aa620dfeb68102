//! Soundness of every certified norm against brute force on hundreds of random small convolutions.

use candle_core::{Device, Tensor};
use lmt_core::norms::{self, PowerConfig};
use lmt_core::ConvGeometry;
use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// The operator matrix obtained independently of lmt-core: candle's conv2d applied to every basis vector
/// (padded explicitly, at stride 1 with the geometry's dilation, then subsampled by the strides).
fn matrix_from_candle(g: &ConvGeometry, kernel: &[f64]) -> DMatrix<f64> {
    let n = g.in_dim();
    let basis = Tensor::eye(n, candle_core::DType::F64, &Device::Cpu)
        .unwrap()
        .reshape((n, g.c_in, g.in_h, g.in_w))
        .unwrap()
        .pad_with_zeros(2, g.pad.0, g.pad_end.0)
        .unwrap()
        .pad_with_zeros(3, g.pad.1, g.pad_end.1)
        .unwrap();
    let k = Tensor::from_slice(kernel, (g.c_out, g.c_in, g.kh, g.kw), &Device::Cpu).unwrap();
    assert_eq!(g.dilation.0, g.dilation.1);
    let full = basis.conv2d(&k, 0, 1, g.dilation.0, 1).unwrap();
    let pick = |len: usize, s: usize| {
        Tensor::from_vec(
            (0..len).map(|i| (i * s) as u32).collect::<Vec<_>>(),
            len,
            &Device::Cpu,
        )
        .unwrap()
    };
    let out = full
        .index_select(&pick(g.out_h(), g.stride.0), 2)
        .unwrap()
        .index_select(&pick(g.out_w(), g.stride.1), 3)
        .unwrap(); // (n, c_out, Ho, Wo): column j = A e_j
    assert_eq!(out.dims(), [n, g.c_out, g.out_h(), g.out_w()]);
    let cols: Vec<f64> = out.flatten_all().unwrap().to_vec1().unwrap();
    DMatrix::from_row_slice(n, g.out_dim(), &cols).transpose()
}

fn sigma_max(m: &DMatrix<f64>) -> f64 {
    m.singular_values().iter().cloned().fold(0.0, f64::max)
}

/// A random convolution; every third case is general (asymmetric padding, unequal strides, dilation).
fn random_case(rng: &mut ChaCha8Rng, general: bool) -> (ConvGeometry, Vec<f64>) {
    loop {
        let k = rng.random_range(1..=5);
        let s = rng.random_range(1..=2);
        let p = rng.random_range(0..=2usize.min(k));
        let h = rng.random_range(3..=12);
        let w = rng.random_range(3..=12);
        let (ci, co) = (rng.random_range(1..=8), rng.random_range(1..=8));
        if ci * h * w > 600 || co * h * w > 600 {
            continue; // keep the brute-force SVDs quick; sizes still span every kernel/stride/padding mix
        }
        let geometry = if general {
            let d = rng.random_range(1..=2);
            let g = ConvGeometry {
                c_in: ci,
                c_out: co,
                kh: k,
                kw: rng.random_range(1..=4),
                stride: (s, rng.random_range(1..=3)),
                pad: (p, rng.random_range(0..=2)),
                pad_end: (rng.random_range(0..=2), rng.random_range(0..=2)),
                dilation: (d, d),
                in_h: h,
                in_w: w,
            };
            g.validate().map(|_| g)
        } else {
            ConvGeometry::square(ci, co, k, s, p, h, w)
        };
        if let Ok(g) = geometry {
            let scale = (2.0 / (ci * g.kh * g.kw) as f64).sqrt(); // He normal, as the networks use
            let kernel = (0..g.kernel_len())
                .map(|_| {
                    let z: f64 = StandardNormal.sample(rng);
                    scale * z
                })
                .collect();
            return (g, kernel);
        }
    }
}

#[test]
fn every_bound_is_sound_on_random_convolutions() {
    let mut rng = ChaCha8Rng::seed_from_u64(2018);
    let cfg = PowerConfig {
        max_iterations: 20_000,
        starts: 4,
        seed: 1,
        rel_tolerance: 1e-10,
    };
    let (mut power_gap_max, mut fft_gap_max): (f64, f64) = (0.0, 0.0);
    let cases = 300;
    let mut converged = 0;
    for case in 0..cases {
        let (g, kernel) = random_case(&mut rng, case % 3 == 2);
        let truth = sigma_max(&matrix_from_candle(&g, &kernel));
        let dense = norms::conv_dense(&g, &kernel).unwrap().value();
        assert!(
            (dense - truth).abs() <= 1e-8 * truth.max(1e-12),
            "case {case} {g:?}: dense {dense} vs svd {truth}"
        );
        assert!(
            dense >= truth,
            "case {case}: dense {dense} below svd {truth}"
        );

        let outcome = norms::conv_power(&g, &kernel, &cfg).unwrap();
        let power = outcome.bound.value();
        assert!(power >= truth, "case {case} {g:?}: power {power} < {truth}");
        assert!(
            outcome.lower.0 <= truth,
            "case {case}: power lower bound {} > {truth}",
            outcome.lower.0
        );
        if outcome.converged(1e-5) {
            converged += 1;
            power_gap_max = power_gap_max.max(power / truth - 1.0);
            assert!(
                power <= truth * (1.0 + 1e-4),
                "case {case} {g:?}: converged power {power} not within 1e-4 of {truth}"
            );
        }

        let fft = norms::conv_fft(&g, &kernel).unwrap().value();
        assert!(fft >= truth, "case {case} {g:?}: fft {fft} < {truth}");
        fft_gap_max = fft_gap_max.max(fft / truth - 1.0);

        let w_prime = norms::reshaped_kernel_norm(&g, &kernel).unwrap();
        let cor1 = norms::conv_cor1(&g, &kernel).unwrap().value();
        assert!(cor1 >= truth, "case {case} {g:?}: cor1 {cor1} < {truth}");
        // Cor. 1's lower half needs one window entirely inside the unpadded input.
        if g.has_interior_window() {
            assert!(
                truth >= w_prime * (1.0 - 1e-8),
                "case {case} {g:?}: ‖W'‖ {w_prime} > {truth}"
            );
        }
        assert!(norms::conv_cisse(&g, &kernel).unwrap().value() >= truth * (1.0 - 1e-9));
        assert!(norms::conv_peck(&g, &kernel).unwrap().value() >= truth * (1.0 - 1e-9));
    }
    eprintln!("{cases} cases: power converged on {converged} and was then within {power_gap_max:.2e}; fft within {fft_gap_max:.2e} relative of the exact norm");
    // Slow convergence (nearly equal top singular values) must stay rare, or the test proves little.
    assert!(
        converged >= cases * 9 / 10,
        "power iteration converged on only {converged} of {cases} cases"
    );
}

#[test]
fn window_counts_equal_the_authors_formula_without_dilation_and_brute_force_always() {
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    for _ in 0..2000 {
        let general = rng.random_bool(0.5);
        let (g, _) = random_case(&mut rng, general);
        // Brute force: every output window's input pixels, counted per pixel.
        let (eh, ew) = g.kernel_extent();
        let mut count = vec![0usize; g.in_h * g.in_w];
        for i in 0..g.out_h() {
            for j in 0..g.out_w() {
                for a in 0..g.kh {
                    for b in 0..g.kw {
                        let y = (i * g.stride.0 + a * g.dilation.0) as isize - g.pad.0 as isize;
                        let x = (j * g.stride.1 + b * g.dilation.1) as isize - g.pad.1 as isize;
                        if y >= 0 && x >= 0 && (y as usize) < g.in_h && (x as usize) < g.in_w {
                            count[y as usize * g.in_w + x as usize] += 1;
                        }
                    }
                }
            }
        }
        let brute = count.into_iter().max().unwrap();
        assert_eq!(g.windows_per_element(), brute, "{g:?}");
        let symmetric = g.pad == g.pad_end && g.dilation == (1, 1);
        if symmetric {
            let one =
                |k: usize, size: usize, p: usize, s: usize| k.min(size + 2 * p - k + 1).div_ceil(s);
            let authors =
                one(g.kh, g.in_h, g.pad.0, g.stride.0) * one(g.kw, g.in_w, g.pad.1, g.stride.1);
            assert_eq!(brute, authors, "{g:?}: extent {eh}x{ew}");
        }
    }
}

#[test]
fn exact_average_pool_norm_equals_the_svd_with_and_without_counting_padding() {
    let mut rng = ChaCha8Rng::seed_from_u64(32);
    let mut checked = 0;
    while checked < 100 {
        let (g, _) = random_case(&mut rng, true);
        let g = ConvGeometry {
            c_in: 1,
            c_out: 1,
            ..g
        };
        for include in [true, false] {
            // The operator, assembled pixel by pixel from the definition of ONNX's AveragePool.
            let (oh, ow) = (g.out_h(), g.out_w());
            let mut m = DMatrix::<f64>::zeros(oh * ow, g.in_dim());
            let mut empty = false;
            for i in 0..oh {
                for j in 0..ow {
                    let mut taps = Vec::new();
                    for a in 0..g.kh {
                        for b in 0..g.kw {
                            let y = (i * g.stride.0 + a * g.dilation.0) as isize - g.pad.0 as isize;
                            let x = (j * g.stride.1 + b * g.dilation.1) as isize - g.pad.1 as isize;
                            if y >= 0 && x >= 0 && (y as usize) < g.in_h && (x as usize) < g.in_w {
                                taps.push(y as usize * g.in_w + x as usize);
                            }
                        }
                    }
                    let div = if include { g.kh * g.kw } else { taps.len() };
                    empty |= div == 0;
                    for t in taps {
                        m[(i * ow + j, t)] += 1.0 / div.max(1) as f64;
                    }
                }
            }
            let ours = norms::avg_pool_exact(&g, include);
            if empty {
                assert!(
                    ours.is_err(),
                    "{g:?}: a window of padding only must be an error"
                );
                continue;
            }
            let ours = ours.unwrap().value();
            let truth = sigma_max(&m);
            assert!(
                ours >= truth && ours <= truth * (1.0 + 1e-8),
                "{g:?} include {include}: {ours} vs {truth}"
            );
            if include {
                let thm3 = norms::avg_pool_thm3(&g).unwrap().value();
                assert!(
                    thm3 >= truth * (1.0 - 1e-12),
                    "{g:?}: Thm. 3 {thm3} < {truth}"
                );
            }
            checked += 1;
        }
    }
}

#[test]
fn cisse_is_twice_cor1_on_the_mnist_conv2_shape() {
    let g = ConvGeometry::square(16, 32, 4, 2, 1, 14, 14).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let kernel: Vec<f64> = (0..g.kernel_len())
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let cor1 = norms::conv_cor1(&g, &kernel).unwrap().value();
    let cisse = norms::conv_cisse(&g, &kernel).unwrap().value();
    assert_eq!(g.windows_per_element(), 4);
    assert!((cisse - 2.0 * cor1).abs() < 1e-12 * cisse);
}

#[test]
fn pooling_bounds_cover_the_exact_average_pool_norm() {
    // Average pooling of one channel is a convolution with a constant kernel; its dense norm is exact.
    for &(k, s, h) in &[(2, 2, 28), (2, 1, 28), (3, 1, 9), (3, 2, 10), (8, 1, 8)] {
        let g = ConvGeometry::square(1, 1, k, s, 0, h, h).unwrap();
        let kernel = vec![1.0 / (k * k) as f64; k * k];
        let exact = norms::conv_dense(&g, &kernel).unwrap().value();
        let thm3 = norms::avg_pool_thm3(&g).unwrap().value();
        assert!(
            thm3 >= exact * (1.0 - 1e-9),
            "k{k} s{s} h{h}: thm3 {thm3} < exact {exact}"
        );
        assert!(norms::pool_peck(&g).unwrap().value() >= norms::max_pool_thm3(&g).unwrap().value());
    }
    // Non-overlapping 2x2 average pool on 28x28: Thm. 3 gives exactly 1/2, which is exact.
    let g = ConvGeometry::square(1, 1, 2, 2, 0, 28, 28).unwrap();
    assert_eq!(norms::avg_pool_thm3(&g).unwrap().value(), 0.5);
    assert_eq!(norms::max_pool_thm3(&g).unwrap().value(), 1.0);
    assert_eq!(norms::pool_peck(&g).unwrap().value(), 14.0);
}

#[test]
fn max_pool_bound_holds_under_gradient_ascent() {
    // Search for the largest ‖maxpool(x + d) - maxpool(x)‖ / ‖d‖ over random x and small d.
    let (k, s, h) = (3usize, 1usize, 6usize);
    let g = ConvGeometry::square(1, 1, k, s, 0, h, h).unwrap();
    let bound = norms::max_pool_thm3(&g).unwrap().value();
    let pool = |x: &[f64]| -> Vec<f64> {
        let o = g.out_h();
        (0..o * o)
            .map(|ij| {
                let (i, j) = (ij / o, ij % o);
                (0..k * k)
                    .map(|ab| x[(i + ab / k) * h + j + ab % k])
                    .fold(f64::MIN, f64::max)
            })
            .collect()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut best: f64 = 0.0;
    for _ in 0..2000 {
        let x: Vec<f64> = (0..h * h)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let d: Vec<f64> = (0..h * h)
            .map(|_| {
                let z: f64 = StandardNormal.sample(&mut rng);
                1e-3 * z
            })
            .collect();
        let xd: Vec<f64> = x.iter().zip(&d).map(|(a, b)| a + b).collect();
        let num: f64 = pool(&xd)
            .iter()
            .zip(pool(&x))
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        let den: f64 = d.iter().map(|v| v * v).sum::<f64>().sqrt();
        best = best.max(num / den);
    }
    // A single spike at a pixel covered by all 9 windows reaches sqrt(9) = 3 exactly.
    let mut x = vec![0.0; h * h];
    x[2 * h + 2] = 1.0;
    let spike: f64 = pool(&x).iter().map(|v| v * v).sum::<f64>().sqrt();
    best = best.max(spike);
    assert!(best <= bound + 1e-12, "found {best} > bound {bound}");
    assert!(
        (spike - bound).abs() < 1e-12,
        "Thm. 3 is tight here: {spike} vs {bound}"
    );
}

#[test]
fn batch_norm_fusion_is_exact_and_no_looser_than_the_product() {
    let g = ConvGeometry::square(3, 4, 3, 1, 1, 6, 6).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let kernel: Vec<f64> = (0..g.kernel_len())
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let gamma = [0.5, -2.0, 1.5, 0.1];
    let var = [1.0, 4.0, 0.25, 2.0];
    let fused = norms::fuse_batch_norm(&g, &kernel, &gamma, &var, 2e-5).unwrap();
    let fused_norm = norms::conv_dense(&g, &fused).unwrap().value();
    let product = norms::conv_dense(&g, &kernel).unwrap().value()
        * norms::batch_norm_inference(&gamma, &var, 2e-5)
            .unwrap()
            .value();
    assert!(fused_norm <= product * (1.0 + 1e-9));
    let truth = sigma_max(&matrix_from_candle(&g, &fused));
    assert!((fused_norm - truth).abs() < 1e-8 * truth);
}

#[test]
fn linear_dense_and_power_agree_with_svd() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (out, inp) = (10, 37);
    let w: Vec<f64> = (0..out * inp)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let truth = sigma_max(&DMatrix::from_row_slice(out, inp, &w));
    let dense = norms::linear_dense(&w, out, inp).unwrap().value();
    assert!((dense - truth).abs() < 1e-9 * truth && dense >= truth);
}

#[test]
fn power_never_returns_the_bare_estimate_when_rounding_stalls_the_iteration() {
    // diag(1, 1 - 1e-8, ..., 1 - 1e-8) on 300 coordinates, a near-tie at the top: the iteration's change
    // rounds to 0 in f64 long before the estimate reaches the true norm 1.
    let n = 300;
    let d: Vec<f64> = (0..n)
        .map(|i| if i == 0 { 1.0 } else { 1.0 - 1e-8 })
        .collect();
    let gram = |x: &[f64], b: usize| -> Vec<f64> {
        (0..b * n).map(|k| d[k % n] * d[k % n] * x[k]).collect()
    };
    let mut lowest = f64::INFINITY;
    for seed in 0..40 {
        let cfg = PowerConfig {
            starts: 1,
            seed,
            ..PowerConfig::default()
        };
        let out = norms::power_bound(n, gram, &cfg).unwrap();
        lowest = lowest.min(out.bound.value());
        assert!(
            out.bound.value() >= 1.0,
            "seed {seed}: power gave {} below the true norm 1 after {} iterations",
            out.bound.value(),
            out.iterations
        );
        assert!(out.lower.0 <= 1.0 && out.bound.value() < 1.0 + 1e-4);
        assert!(out.bound.method().is_probabilistic());
    }
    eprintln!("lowest bound over 40 seeds: {lowest:.12}");
}
