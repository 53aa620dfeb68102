//! The authors' optimisers (Chainer 4 formulas, reference 1.3), with state we can checkpoint.
//!
//! - Adam: `m += (1-b1)(g-m)`, `v += (1-b2)(g^2-v)`, `p -= alpha sqrt(1-b2^t)/(1-b1^t) m/(sqrt(v)+eps)`.
//!   (candle's AdamW divides eps by the bias correction too; the difference is tiny but not zero.)
//! - Nesterov: `v = mu v - lr g`, `p += mu^2 v - (1+mu) lr g`.
//!
//! Weight decay is Chainer's hook: `g += rate p` for every parameter, before the update.

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Layout, Storage, Tensor, Var};

use crate::config::OptimizerConfig;
use crate::Result;

const B1: f64 = 0.9;
const B2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// Optimiser state over a fixed, named list of parameters.
#[derive(Debug)]
pub struct Optimizer {
    kind: OptimizerConfig,
    params: Vec<(String, Var)>,
    /// Adam: first moments; Nesterov: velocities.
    pub(crate) m: Vec<Tensor>,
    /// Adam: second moments (unused by Nesterov).
    pub(crate) v: Vec<Tensor>,
    /// Steps taken.
    pub(crate) t: u64,
    /// Which parameters weight decay applies to (all unless restricted).
    decay: Vec<bool>,
}

impl Optimizer {
    /// Zero state for `params` (sorted by name so the order never depends on a hash map).
    pub fn new(kind: OptimizerConfig, mut params: Vec<(String, Var)>) -> Result<Self> {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = params
            .iter()
            .map(|(_, p)| p.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let decay = vec![true; params.len()];
        Ok(Optimizer {
            kind,
            m: zeros.clone(),
            v: zeros,
            params,
            t: 0,
            decay,
        })
    }

    /// Restricts weight decay to the parameters whose name satisfies `keep` (Parseval: the last layer).
    pub fn restrict_decay(&mut self, keep: impl Fn(&str) -> bool) {
        self.decay = self.params.iter().map(|(n, _)| keep(n)).collect();
    }

    /// The parameters, by name.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update with learning rate `lr` and weight decay `weight_decay`. A parameter without a gradient
    /// is treated as having gradient zero (as Chainer does).
    pub fn step(&mut self, grads: &GradStore, lr: f64, weight_decay: f64) -> Result<()> {
        self.step_with(grads, lr, weight_decay, true)
    }

    /// [`Optimizer::step`], on CPU f32 data as one fused pass per parameter where `fused` (the same
    /// bits as the chain of tensor ops, a NaN's sign aside; the chain runs elsewhere and is the
    /// reference).
    pub(crate) fn step_with(
        &mut self,
        grads: &GradStore,
        lr: f64,
        weight_decay: f64,
        fused: bool,
    ) -> Result<()> {
        self.t += 1;
        let rule = match self.kind {
            OptimizerConfig::Adam { .. } => {
                let t = self.t as i32;
                Rule::Adam {
                    lr_t: lr * (1.0 - B2.powi(t)).sqrt() / (1.0 - B1.powi(t)),
                }
            }
            OptimizerConfig::Nesterov { momentum: mu, .. } => Rule::Nesterov { mu, lr },
        };
        for i in 0..self.params.len() {
            // Everything here is detached: the state must not keep each step's autograd graph alive
            // (it chains through m and v across steps and exhausted 24 GiB within 20 MNIST epochs).
            let g = grads.get(self.params[i].1.as_tensor()).map(Tensor::detach);
            let decay = if weight_decay > 0.0 && self.decay[i] {
                weight_decay
            } else {
                0.0
            };
            if !(fused && self.fused_update(i, g.as_ref(), decay, rule)?) {
                self.chain_update(i, g, decay, rule)?;
            }
        }
        Ok(())
    }

    /// The update of parameter `i` as a chain of tensor ops (any device).
    fn chain_update(&mut self, i: usize, g: Option<Tensor>, decay: f64, rule: Rule) -> Result<()> {
        let p = &self.params[i].1;
        let mut g = match g {
            Some(g) => g,
            None => p.zeros_like()?,
        };
        let p_now = p.as_tensor().detach();
        if decay > 0.0 {
            g = (g + (&p_now * decay)?)?;
        }
        match rule {
            Rule::Adam { lr_t } => {
                let m = (&self.m[i] + ((&g - &self.m[i])? * (1.0 - B1))?)?;
                let v = (&self.v[i] + ((g.sqr()? - &self.v[i])? * (1.0 - B2))?)?;
                let update = (&m / (v.sqrt()? + EPS)?)?;
                p.set(&(&p_now - (update * lr_t)?)?)?;
                self.m[i] = m;
                self.v[i] = v;
            }
            Rule::Nesterov { mu, lr } => {
                let v = ((&self.m[i] * mu)? - (&g * lr)?)?;
                let delta = ((&v * (mu * mu))? - (&g * ((1.0 + mu) * lr))?)?;
                p.set(&(&p_now + delta)?)?;
                self.m[i] = v;
            }
        }
        Ok(())
    }

    /// The update of parameter `i` in one pass over contiguous f32 CPU data, computing each entry with
    /// the f32 operations, in the order, that the chain's tensor ops perform (a scalar product is
    /// candle's affine map `x * a + 0`, a scalar sum `x * 1 + a`). Returns false, having changed
    /// nothing, where the data is not such (another device or dtype, or lengths that differ).
    fn fused_update(
        &mut self,
        i: usize,
        g: Option<&Tensor>,
        decay: f64,
        rule: Rule,
    ) -> Result<bool> {
        let p = &self.params[i].1;
        let (p_new, m_new, v_new) = {
            let (ps, pl) = p.storage_and_layout();
            let (ms, ml) = self.m[i].storage_and_layout();
            let (vs, vl) = self.v[i].storage_and_layout();
            let gsl = g.map(Tensor::storage_and_layout);
            let (Some(pd), Some(md), Some(vd)) =
                (cpu_f32(&ps, pl), cpu_f32(&ms, ml), cpu_f32(&vs, vl))
            else {
                return Ok(false);
            };
            let gd = match &gsl {
                Some((gs, gl)) => match cpu_f32(gs, gl) {
                    Some(gd) => Some(gd),
                    None => return Ok(false),
                },
                None => None,
            };
            let n = pd.len();
            if md.len() != n || vd.len() != n || gd.is_some_and(|gd| gd.len() != n) {
                return Ok(false);
            }
            let zeros;
            let gd = match gd {
                Some(gd) => gd,
                None => {
                    // Candle's zeros_like for a missing gradient.
                    zeros = vec![0f32; n];
                    &zeros
                }
            };
            let is_adam = matches!(rule, Rule::Adam { .. });
            let (with_decay, decay) = (decay > 0.0, decay as f32);
            let count = if is_adam { 3 } else { 2 };
            let mut outs = lmt_models::new_chunks_of(count, n, CHUNK, ENTRY_WORK, |c, outs| {
                let r = c * CHUNK..(c * CHUNK + outs[0].len());
                let (pd, gd, md, vd) = (&pd[r.clone()], &gd[r.clone()], &md[r.clone()], &vd[r]);
                match (rule, outs) {
                    (Rule::Adam { lr_t }, [pn, mn, vn]) => match with_decay {
                        true => adam_pass::<true>(lr_t, decay, (pd, gd, md, vd), (pn, mn, vn)),
                        false => adam_pass::<false>(lr_t, decay, (pd, gd, md, vd), (pn, mn, vn)),
                    },
                    (Rule::Nesterov { mu, lr }, [pn, mn]) => match with_decay {
                        true => nesterov_pass::<true>(mu, lr, decay, (pd, gd, md), (pn, mn)),
                        false => nesterov_pass::<false>(mu, lr, decay, (pd, gd, md), (pn, mn)),
                    },
                    _ => {}
                }
            });
            let v_new = if is_adam {
                outs.pop().unwrap_or_default()
            } else {
                Vec::new()
            };
            let m_new = outs.pop().unwrap_or_default();
            let p_new = outs.pop().unwrap_or_default();
            (p_new, m_new, v_new)
        };
        let (shape, device) = (p.shape().clone(), p.device().clone());
        p.set(&Tensor::from_vec(p_new, shape.clone(), &device)?)?;
        self.m[i] = Tensor::from_vec(m_new, shape.clone(), &device)?;
        if matches!(rule, Rule::Adam { .. }) {
            self.v[i] = Tensor::from_vec(v_new, shape, &device)?;
        }
        Ok(true)
    }
}

/// Entries per item of the fused update's parallel loop.
const CHUNK: usize = 1 << 13;

/// The cost of one entry's update in multiply-adds (Adam's square root and division count several),
/// so that updates of more than about 16,000 entries use both cores.
const ENTRY_WORK: usize = 16;

/// One step's update rule with its scalars.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// Adam with the bias-corrected step size `lr_t`.
    Adam { lr_t: f64 },
    /// Nesterov momentum `mu` at learning rate `lr`.
    Nesterov { mu: f64, lr: f64 },
}

/// Candle's `x * a` in f32: its affine map `x * a + 0` (so -0 becomes +0).
#[inline(always)]
fn scale(x: f32, a: f32) -> f32 {
    x * a + 0.0
}

/// The gradient after Chainer's weight-decay hook `g + rate p` (candle's `p * rate` is `p * rate + 0`).
#[inline(always)]
fn decayed<const DECAY: bool>(g: f32, p: f32, rate: f32) -> f32 {
    if DECAY {
        g + scale(p, rate)
    } else {
        g
    }
}

/// Adam over one chunk: new (parameter, m, v) from (parameter, gradient, m, v), each f32 operation as
/// the chain of tensor ops in [`Optimizer::chain_update`] rounds it (candle's `x + a` is `x * 1 + a`).
/// Indexed loops over slices cut to one length, so they compile to vector instructions.
fn adam_pass<const DECAY: bool>(
    lr_t: f64,
    rate: f32,
    (p, g, m, v): (&[f32], &[f32], &[f32], &[f32]),
    (p_new, m_new, v_new): (&mut [f32], &mut [f32], &mut [f32]),
) {
    let n = p_new.len();
    let (p, g, m, v, m_new, v_new) = (
        &p[..n],
        &g[..n],
        &m[..n],
        &v[..n],
        &mut m_new[..n],
        &mut v_new[..n],
    );
    let (b1, b2, eps, lr_t) = (
        (1.0 - B1) as f32,
        (1.0 - B2) as f32,
        EPS as f32,
        lr_t as f32,
    );
    for k in 0..n {
        let g = decayed::<DECAY>(g[k], p[k], rate);
        let mk = m[k] + scale(g - m[k], b1);
        let vk = v[k] + scale(g * g - v[k], b2);
        let update = mk / (vk.sqrt() * 1.0 + eps);
        p_new[k] = p[k] - scale(update, lr_t);
        m_new[k] = mk;
        v_new[k] = vk;
    }
}

/// Nesterov over one chunk: new (parameter, velocity) from (parameter, gradient, velocity), as the
/// chain rounds it.
fn nesterov_pass<const DECAY: bool>(
    mu: f64,
    lr: f64,
    rate: f32,
    (p, g, m): (&[f32], &[f32], &[f32]),
    (p_new, m_new): (&mut [f32], &mut [f32]),
) {
    let n = p_new.len();
    let (p, g, m, m_new) = (&p[..n], &g[..n], &m[..n], &mut m_new[..n]);
    let (mu1, lr1, mu2, lr2) = (
        mu as f32,
        lr as f32,
        (mu * mu) as f32,
        ((1.0 + mu) * lr) as f32,
    );
    for k in 0..n {
        let g = decayed::<DECAY>(g[k], p[k], rate);
        let vel = scale(m[k], mu1) - scale(g, lr1);
        p_new[k] = p[k] + (scale(vel, mu2) - scale(g, lr2));
        m_new[k] = vel;
    }
}

/// The contiguous f32 data of a CPU tensor, or None.
fn cpu_f32<'a>(storage: &'a Storage, layout: &Layout) -> Option<&'a [f32]> {
    match storage {
        Storage::Cpu(CpuStorage::F32(data)) => {
            let (start, end) = layout.contiguous_offsets()?;
            data.get(start..end)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Adam, and Nesterov with momentum `mu`, both at learning rate 0.1.
    fn both_rules(mu: f64) -> [OptimizerConfig; 2] {
        [
            OptimizerConfig::Adam { lr: 0.1 },
            OptimizerConfig::Nesterov {
                lr: 0.1,
                momentum: mu,
                drop_epochs: vec![],
                drop_ratio: 0.1,
            },
        ]
    }

    /// Values that stress the rounding: signed zeros, subnormals, huge and non-finite entries.
    const SPECIAL: [f32; 10] = [
        0.0,
        -0.0,
        1e-45,
        -3e-39,
        1e30,
        -1e30,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1.0,
    ];

    fn values(rng: &mut rand_chacha::ChaCha8Rng, n: usize) -> Vec<f32> {
        use rand::Rng;
        (0..n)
            .map(|i| match rng.random_range(0..4) {
                0 => SPECIAL[i % SPECIAL.len()],
                1 => rng.random_range(-1e-6f32..1e-6),
                _ => rng.random_range(-2f32..2.0),
            })
            .collect()
    }

    /// The bits of every entry, every NaN as one: where two NaNs meet, x86 keeps one operand's, and
    /// which one depends on an operand order the compiler may swap, so a NaN's sign is not compared.
    fn bits(t: &Tensor) -> Vec<u32> {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let canonical = |x: &f32| if x.is_nan() { f32::NAN } else { *x };
        v.iter().map(|x| canonical(x).to_bits()).collect()
    }

    #[test]
    fn fused_update_gives_the_bits_of_the_chain_of_tensor_ops() {
        use rand::SeedableRng;
        let dev = Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        // "big" is long enough for the parallel loop, "small" holds the special values and "frozen"
        // gets no gradient; weight decay skips "small".
        let sizes = [("big", 300_000), ("frozen", 33), ("small", 40)];
        let init: Vec<Vec<f32>> = sizes.iter().map(|&(_, n)| values(&mut rng, n)).collect();
        for kind in both_rules(0.9) {
            let make = || {
                let params: Vec<(String, Var)> = sizes
                    .iter()
                    .zip(&init)
                    .map(|(&(name, n), v)| {
                        let t = Tensor::from_vec(v.clone(), n, &dev).unwrap();
                        (name.to_string(), Var::from_tensor(&t).unwrap())
                    })
                    .collect();
                let mut opt = Optimizer::new(kind.clone(), params).unwrap();
                opt.restrict_decay(|n| n != "small");
                opt
            };
            let (mut fused, mut chain) = (make(), make());
            for step in 0..4 {
                let coef: Vec<Tensor> = [sizes[0], sizes[2]]
                    .iter()
                    .map(|&(_, n)| Tensor::from_vec(values(&mut rng, n), n, &dev).unwrap())
                    .collect();
                let grads_of = |opt: &Optimizer| {
                    // d/dp sum(p * c) = c exactly: the gradient is the coefficient vector.
                    let p = |name: &str| {
                        let (_, v) = opt.params().iter().find(|(n, _)| n == name).unwrap();
                        v.as_tensor().clone()
                    };
                    let loss = ((p("big") * &coef[0]).unwrap().sum_all().unwrap()
                        + (p("small") * &coef[1]).unwrap().sum_all().unwrap())
                    .unwrap();
                    loss.backward().unwrap()
                };
                let decay = [0.0, 5e-4][step % 2];
                let gf = grads_of(&fused);
                fused.step_with(&gf, 0.05, decay, true).unwrap();
                let gc = grads_of(&chain);
                chain.step_with(&gc, 0.05, decay, false).unwrap();
                for (i, (name, _)) in sizes.iter().enumerate() {
                    let what = format!("{kind:?}, step {step}, {name}");
                    let (pf, pc) = (fused.params[i].1.as_tensor(), chain.params[i].1.as_tensor());
                    assert_eq!(bits(pf), bits(pc), "parameter, {what}");
                    assert_eq!(bits(&fused.m[i]), bits(&chain.m[i]), "m, {what}");
                    assert_eq!(bits(&fused.v[i]), bits(&chain.v[i]), "v, {what}");
                }
            }
            // The fused pass ran (it falls back to the chain only off the CPU or on mismatched data).
            let g = Tensor::ones(40, candle_core::DType::F32, &dev).unwrap();
            let rule = Rule::Nesterov { mu: 0.9, lr: 0.1 };
            assert!(fused.fused_update(2, Some(&g), 0.0, rule).unwrap());
            let wrong = Tensor::ones(41, candle_core::DType::F32, &dev).unwrap();
            assert!(!fused.fused_update(2, Some(&wrong), 0.0, rule).unwrap());
        }
    }

    #[test]
    fn fused_update_matches_the_chain_on_every_combination_of_special_values() {
        // Every (parameter, gradient, m, v) drawn from values whose products underflow, overflow or
        // carry a sign of zero; a momentum of 0.5 makes tiny velocities underflow to signed zeros.
        const S: [f32; 12] = [
            0.0,
            -0.0,
            1e-45,
            -1e-45,
            1e-38,
            -1e-38,
            1.0,
            -1.0,
            3e38,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        let dev = Device::Cpu;
        let n = S.len().pow(4);
        let pick = |k: usize, axis: u32| S[k / S.len().pow(axis) % S.len()];
        let column = |axis| Tensor::from_vec((0..n).map(|k| pick(k, axis)).collect(), n, &dev);
        let (p0, g, m0, v0) = (
            column(0).unwrap(),
            column(1).unwrap(),
            column(2).unwrap(),
            column(3).unwrap(),
        );
        for kind in both_rules(0.5) {
            for decay in [0.0, 1e-3] {
                let mut out = Vec::new();
                for fused in [true, false] {
                    let p = Var::from_tensor(&p0).unwrap();
                    let mut opt =
                        Optimizer::new(kind.clone(), vec![("p".into(), p.clone())]).unwrap();
                    // v must be nonnegative for Adam's square root to be defined as the chain's.
                    (opt.m[0], opt.v[0]) = (m0.clone(), v0.abs().unwrap());
                    let grads = (p.as_tensor() * &g)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap();
                    opt.step_with(&grads, 0.01, decay, fused).unwrap();
                    out.push((bits(p.as_tensor()), bits(&opt.m[0]), bits(&opt.v[0])));
                }
                assert!(
                    out[0] == out[1],
                    "{kind:?}, decay {decay}: fused and chain differ"
                );
            }
        }
    }

    #[test]
    fn state_keeps_no_autograd_graph() {
        let p = Var::from_tensor(&Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap()).unwrap();
        for kind in both_rules(0.9) {
            let mut opt = Optimizer::new(kind, vec![("p".into(), p.clone())]).unwrap();
            for _ in 0..3 {
                let grads = p
                    .as_tensor()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                opt.step(&grads, 0.1, 0.01).unwrap();
                assert!(
                    !opt.m[0].track_op() && !opt.v[0].track_op(),
                    "optimiser state tracks the graph"
                );
            }
        }
    }
}
