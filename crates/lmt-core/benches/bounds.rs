//! Timings of the certified core (a benchmark, not a test: nothing here is asserted).
//!
//! - the six conv bounds side by side on the MNIST conv2 shape (16 -> 32, 4x4, stride 2, pad 1, 14x14)
//!   with a He-normal kernel;
//! - the certified bound of the Kolter-Wong CNN's layer shapes (`dense`);
//! - the WideResNet-16-4 conv layers by `fft` and by `power` (a fixed, small number of iterations, so the
//!   time per iteration is what is measured; the bound it reports is sound but not converged);
//! - certification (Prop. 2) of 10,000 inputs from their logits.
//!
//! Weights are random He-normal draws: bound values here say nothing about trained networks.
//! Run with `make bench` or `cargo bench -p lmt-core --bench bounds`.

use std::time::Instant;

use lmt_core::norms::{self, PowerConfig};
use lmt_core::{certify_prop2, CertifiedBound, ConvGeometry};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn he(rng: &mut ChaCha8Rng, g: &ConvGeometry) -> Vec<f64> {
    let s = (2.0 / (g.c_in * g.kh * g.kw) as f64).sqrt();
    (0..g.kernel_len())
        .map(|_| s * Distribution::<f64>::sample(&StandardNormal, rng))
        .collect::<Vec<f64>>()
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed().as_secs_f64())
}

fn main() {
    let mut rng = ChaCha8Rng::seed_from_u64(2018);

    println!("## Six bounds on the MNIST conv2 shape (16->32, 4x4, s2, p1, input 14x14), He-normal kernel seed 2018");
    let g = ConvGeometry::square(16, 32, 4, 2, 1, 14, 14).unwrap();
    let k = he(&mut rng, &g);
    println!("| method | bound | seconds |\n|---|---|---|");
    let (d, t) = timed(|| norms::conv_dense(&g, &k).unwrap());
    println!("| dense (exact) | {:.6} | {t:.3} |", d.value());
    let cfg = PowerConfig {
        max_iterations: 5000,
        starts: 8,
        seed: 0,
        rel_tolerance: 0.0,
    };
    let (p, t) = timed(|| norms::conv_power(&g, &k, &cfg).unwrap());
    println!(
        "| power (Thm. 1+2, 5000 it, 8 starts, f64) | {:.6} (lower {:.6}) | {t:.3} |",
        p.bound.value(),
        p.lower.0
    );
    let cfg500 = PowerConfig {
        max_iterations: 500,
        ..cfg
    };
    let (p5, t) = timed(|| norms::conv_power(&g, &k, &cfg500).unwrap());
    println!(
        "| power (Thm. 1+2, 500 it, 8 starts, f64) | {:.6} | {t:.3} |",
        p5.bound.value()
    );
    let (f, t) = timed(|| norms::conv_fft(&g, &k).unwrap());
    println!("| fft | {:.6} | {t:.3} |", f.value());
    for (name, b) in [
        ("cor1 (Cor. 1)", norms::conv_cor1(&g, &k).unwrap()),
        ("cisse", norms::conv_cisse(&g, &k).unwrap()),
        ("peck (reconstructed)", norms::conv_peck(&g, &k).unwrap()),
    ] {
        println!("| {name} | {:.6} | - |", b.value());
    }
    println!(
        "||W'|| (Cor. 1 lower end) = {:.6}\n",
        norms::reshaped_kernel_norm(&g, &k).unwrap()
    );

    println!("## Kolter-Wong CNN layer shapes, dense");
    let t0 = Instant::now();
    let c1 = ConvGeometry::square(1, 16, 4, 2, 1, 28, 28).unwrap();
    let c2 = ConvGeometry::square(16, 32, 4, 2, 1, 14, 14).unwrap();
    let mut total = CertifiedBound::one();
    for (name, g) in [("conv1", c1), ("conv2", c2)] {
        let k = he(&mut rng, &g);
        let (b, t) = timed(|| norms::conv_dense(&g, &k).unwrap());
        println!("{name}: {:.4} in {t:.2} s", b.value());
        total = total.then(b).unwrap();
    }
    for (name, out, inp) in [("fc1", 100, 1568), ("fc2", 10, 100)] {
        let s = (1.0 / inp as f64).sqrt();
        let w: Vec<f64> = (0..out * inp)
            .map(|_| s * Distribution::<f64>::sample(&StandardNormal, &mut rng))
            .collect();
        let (b, t) = timed(|| norms::linear_dense(&w, out, inp).unwrap());
        println!("{name}: {:.4} in {t:.3} s", b.value());
        total = total.then(b).unwrap();
    }
    println!(
        "whole network: {total} in {:.2} s\n",
        t0.elapsed().as_secs_f64()
    );

    println!("## WideResNet-16-4 conv shapes: fft, and power at 20 iterations x 2 starts (time per iteration)");
    let wrn = [
        (
            "stem 3->16 @32",
            ConvGeometry::square(3, 16, 3, 1, 1, 32, 32).unwrap(),
        ),
        (
            "g1 16->64 @32",
            ConvGeometry::square(16, 64, 3, 1, 1, 32, 32).unwrap(),
        ),
        (
            "g1 64->64 @32 (x3)",
            ConvGeometry::square(64, 64, 3, 1, 1, 32, 32).unwrap(),
        ),
        (
            "g1 shortcut 1x1 16->64",
            ConvGeometry::square(16, 64, 1, 1, 0, 32, 32).unwrap(),
        ),
        (
            "g2 64->128 s2 @32",
            ConvGeometry::square(64, 128, 3, 2, 1, 32, 32).unwrap(),
        ),
        (
            "g2 128->128 @16 (x3)",
            ConvGeometry::square(128, 128, 3, 1, 1, 16, 16).unwrap(),
        ),
        (
            "g2 shortcut 1x1 s2",
            ConvGeometry::square(64, 128, 1, 2, 0, 32, 32).unwrap(),
        ),
        (
            "g3 128->256 s2 @16",
            ConvGeometry::square(128, 256, 3, 2, 1, 16, 16).unwrap(),
        ),
        (
            "g3 256->256 @8 (x3)",
            ConvGeometry::square(256, 256, 3, 1, 1, 8, 8).unwrap(),
        ),
        (
            "g3 shortcut 1x1 s2",
            ConvGeometry::square(128, 256, 1, 2, 0, 16, 16).unwrap(),
        ),
    ];
    println!("| layer | fft | fft s | power (20 it) | lower | power s/iteration |\n|---|---|---|---|---|---|");
    let (mut fft_total, mut power_total) = (0.0, 0.0);
    for (name, g) in wrn {
        let k = he(&mut rng, &g);
        let (f, tf) = timed(|| norms::conv_fft(&g, &k).unwrap());
        let cfg = PowerConfig {
            max_iterations: 20,
            starts: 2,
            seed: 0,
            rel_tolerance: 0.0,
        };
        let (p, tp) = timed(|| norms::conv_power(&g, &k, &cfg).unwrap());
        let reps = if name.contains("x3") { 3.0 } else { 1.0 };
        fft_total += tf * reps;
        power_total += tp / 20.0 * reps;
        println!(
            "| {name} | {:.4} | {tf:.2} | {:.4} | {:.4} | {:.3} |",
            f.value(),
            p.bound.value(),
            p.lower.0,
            tp / 20.0
        );
    }
    println!("all 13 convs + 3 shortcuts: fft {fft_total:.1} s; power {power_total:.2} s per iteration (x 5000 iterations = {:.0} min)\n", power_total * 5000.0 / 60.0);

    println!("## Certification of 10,000 inputs (Prop. 2, 10 classes, last layer 100-d)");
    let logits: Vec<f32> = (0..100_000)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    let labels: Vec<usize> = (0..10_000).map(|i| i % 10).collect();
    let w: Vec<f64> = (0..1000).map(|_| StandardNormal.sample(&mut rng)).collect();
    let l = norms::linear_dense(&w, 10, 100).unwrap();
    let (c, t) = timed(|| certify_prop2(&logits, 10, &labels, &l, &w, 100).unwrap());
    let certified = c.iter().filter(|c| c.radius > 0.0).count();
    println!("{} certificates ({certified} with radius > 0) in {:.2} ms (logits given; the forward pass is not included)", c.len(), t * 1e3);
}
