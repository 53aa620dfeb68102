//! WideResNet-16-k as the authors build it (reference 4.2, `wide_resnet_new.py`) and its average-pooling
//! variant (4.3, `wide_resnet_avg.py`).
//!
//! Stem conv+BN 3->16 (no ReLU after it); three groups of `(depth - 4) / 6` pre-activation blocks with
//! widths 16k, 32k, 64k (strides 1, 2, 2); each block: `h = conv2(dropout(relu(convbn1(a))))`, shortcut
//! from the pre-activated `a` (1x1 conv, strided) in a group's first block and from the raw stream `x`
//! otherwise, `x' = h + shortcut`, `a' = relu(bn(x'))`; head: 8x8 average pool of the last `a`, then the
//! last layer (LeCun-normal). Convolutions: no bias, He-normal; BN eps 2e-5, decay 0.9. In the average-pool
//! variant the strided shortcuts become 2x2 average pooling then an unstrided 1x1 conv.
//!
//! The bound follows the same recursion as the forward pass (reference 5.7), because it is carried by it.

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;

use crate::init::{param, Init};
use crate::kolter_wong::{Classifier, Output};
use crate::lip::{Ctx, Lip, LipModule};
use crate::{
    config, forward_seq, residual_add, Act, BatchNorm2d, ConvBn, ConvCfg, Dropout, Flatten, Graph,
    LipConv2d, LipLinear, Op, Pool2d, PoolKind, Result,
};

/// Shape of a WideResNet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WideResNetCfg {
    /// Total depth, 6n + 4 (16 in the paper).
    pub depth: usize,
    /// Width factor k (4 in the paper; smaller for reduced profiles).
    pub width: usize,
    /// Dropout probability inside blocks (0.4 in the paper).
    pub dropout: f32,
    /// Number of classes.
    pub classes: usize,
    /// Average-pooling shortcuts (reference 4.3) instead of strided 1x1 convolutions (4.2).
    pub avg_pool_shortcut: bool,
    /// Parseval-network structure (reference 7.1): every convolution's output scaled by 1/sqrt(kh kw),
    /// and residual sums `a0 branch + a1 shortcut` with learned weights `groupG.B.alpha` (start 0.5, 0.5).
    pub parseval: bool,
    /// The activation after every BN: ReLU (the authors') or MinMax.
    pub activation: Act,
}

impl Default for WideResNetCfg {
    fn default() -> Self {
        WideResNetCfg {
            depth: 16,
            width: 4,
            dropout: 0.4,
            classes: 10,
            avg_pool_shortcut: false,
            parseval: false,
            activation: Act::Relu,
        }
    }
}

#[derive(Debug, Clone)]
enum Shortcut {
    Identity,
    Conv(LipConv2d),
    PoolConv(Pool2d, LipConv2d),
}

#[derive(Debug, Clone)]
struct Block {
    convbn1: ConvBn,
    dropout: Dropout,
    conv2: LipConv2d,
    shortcut: Shortcut,
    bn: BatchNorm2d,
    /// Parseval residual weights (a0 for the branch, a1 for the shortcut).
    alpha: Option<Tensor>,
}

/// The network.
#[derive(Debug, Clone)]
pub struct WideResNet {
    stem: ConvBn,
    blocks: Vec<Block>,
    pool: Pool2d,
    fc: LipLinear,
    buffers: Vec<(String, Var)>,
    act: Act,
}

/// BN with trainable gamma/beta in `params` and running statistics (mean 0, variance 0, as the authors
/// initialise them) kept apart so no optimiser touches them.
fn bn(
    params: &VarMap,
    buffers: &mut Vec<(String, Var)>,
    name: &str,
    c: usize,
    seed: u64,
    dev: &Device,
) -> Result<BatchNorm2d> {
    let gamma = param(
        params,
        &format!("{name}.weight"),
        c,
        Init::Const(1.0),
        seed,
        dev,
    )?;
    let beta = param(
        params,
        &format!("{name}.bias"),
        c,
        Init::Const(0.0),
        seed,
        dev,
    )?;
    let mean = Var::zeros(c, candle_core::DType::F32, dev)?;
    let var = Var::zeros(c, candle_core::DType::F32, dev)?;
    buffers.push((format!("{name}.running_mean"), mean.clone()));
    buffers.push((format!("{name}.running_var"), var.clone()));
    BatchNorm2d::new(gamma, beta, mean, var, 2e-5, 0.9)
}

impl WideResNet {
    /// Creates the parameters in `params`, initialised deterministically from `seed`.
    pub fn new(cfg: WideResNetCfg, params: &VarMap, seed: u64, dev: &Device) -> Result<Self> {
        if cfg.depth < 10 || (cfg.depth - 4) % 6 != 0 || cfg.width == 0 || cfg.classes < 2 {
            return Err(config(
                "wide resnet",
                format!(
                    "depth {} must be 6n + 4 with n >= 1, width >= 1, classes >= 2",
                    cfg.depth
                ),
            ));
        }
        let mut buffers = Vec::new();
        let conv =
            |name: &str, ci: usize, co: usize, k: usize, stride: usize| -> Result<LipConv2d> {
                let w = param(
                    params,
                    &format!("{name}.weight"),
                    (co, ci, k, k),
                    Init::HeNormal { fan_in: ci * k * k },
                    seed,
                    dev,
                )?;
                let c = LipConv2d::new(w, None, ConvCfg::square(stride, k / 2), name)?;
                Ok(if cfg.parseval {
                    c.with_output_scale(1.0 / k as f64)
                } else {
                    c
                })
            };
        let stem = ConvBn::new(
            conv("stem.conv", 3, 16, 3, 1)?,
            bn(params, &mut buffers, "stem.bn", 16, seed, dev)?,
        )?;
        let n = (cfg.depth - 4) / 6;
        let mut blocks = Vec::new();
        let mut c_in = 16;
        for (g, (width, stride)) in [
            (16 * cfg.width, 1),
            (32 * cfg.width, 2),
            (64 * cfg.width, 2),
        ]
        .into_iter()
        .enumerate()
        {
            for b in 0..n {
                let name = format!("group{}.{b}", g + 1);
                let s = if b == 0 { stride } else { 1 };
                let shortcut = if b > 0 {
                    Shortcut::Identity
                } else if cfg.avg_pool_shortcut && s > 1 {
                    Shortcut::PoolConv(
                        Pool2d::new(PoolKind::Avg, 2, 2)?,
                        conv(&format!("{name}.shortcut"), c_in, width, 1, 1)?,
                    )
                } else {
                    Shortcut::Conv(conv(&format!("{name}.shortcut"), c_in, width, 1, s)?)
                };
                blocks.push(Block {
                    convbn1: ConvBn::new(
                        conv(&format!("{name}.conv1"), c_in, width, 3, s)?,
                        bn(
                            params,
                            &mut buffers,
                            &format!("{name}.bn1"),
                            width,
                            seed,
                            dev,
                        )?,
                    )?,
                    dropout: Dropout::new(cfg.dropout, format!("{name}.dropout"))?,
                    conv2: conv(&format!("{name}.conv2"), width, width, 3, 1)?,
                    shortcut,
                    bn: bn(
                        params,
                        &mut buffers,
                        &format!("{name}.bn_out"),
                        width,
                        seed,
                        dev,
                    )?,
                    alpha: if cfg.parseval {
                        Some(param(
                            params,
                            &format!("{name}.alpha"),
                            2,
                            Init::Const(0.5),
                            seed,
                            dev,
                        )?)
                    } else {
                        None
                    },
                });
                c_in = width;
            }
        }
        let fc_w = param(
            params,
            "fc.weight",
            (cfg.classes, c_in),
            Init::LecunNormal { fan_in: c_in },
            seed,
            dev,
        )?;
        let fc_b = param(params, "fc.bias", cfg.classes, Init::Const(0.0), seed, dev)?;
        Ok(WideResNet {
            stem,
            blocks,
            pool: Pool2d::new(PoolKind::Avg, 8, 1)?,
            fc: LipLinear::new(fc_w, Some(fc_b), "fc")?,
            buffers,
            act: crate::simple::hidden_activation(cfg.activation)?,
        })
    }
}

impl Classifier for WideResNet {
    /// Forward pass of `(B, 3, 32, 32)` images carrying `lip`.
    fn forward(&self, x: &Tensor, lip: Lip, ctx: &Ctx) -> Result<Output> {
        let (mut a, mut l_a) = self.stem.forward_lip(x, lip, ctx)?;
        let mut raw: Option<(Tensor, Lip)> = None;
        // ReLU right after BN runs inside BN's pass (one fused pass at inference).
        let relu = self.act == Act::Relu;
        for block in &self.blocks {
            let act = crate::simple::activation_module(self.act);
            let branch = if relu {
                let h = block.convbn1.forward_lip_act(&a, l_a.clone(), ctx, true)?;
                forward_seq(&[&block.dropout, &block.conv2], &h.0, h.1, ctx)?
            } else {
                let layers: [&dyn LipModule; 4] =
                    [&block.convbn1, act, &block.dropout, &block.conv2];
                forward_seq(&layers, &a, l_a.clone(), ctx)?
            };
            let shortcut = match &block.shortcut {
                Shortcut::Identity => raw.take().ok_or_else(|| {
                    config("wide resnet", "identity shortcut without a residual stream")
                })?,
                Shortcut::Conv(c) => c.forward_lip(&a, l_a.clone(), ctx)?,
                Shortcut::PoolConv(p, c) => forward_seq(&[p, c], &a, l_a.clone(), ctx)?,
            };
            let (branch, shortcut) = match &block.alpha {
                None => (branch, shortcut),
                Some(a) => {
                    let a = ctx.param(a);
                    let (a0, a1) = (a.get(0)?, a.get(1)?);
                    (
                        (branch.0.broadcast_mul(&a0)?, branch.1.scaled_by(&a0)?),
                        (shortcut.0.broadcast_mul(&a1)?, shortcut.1.scaled_by(&a1)?),
                    )
                }
            };
            let (x_new, l_x) = residual_add(branch, shortcut)?;
            (a, l_a) = if relu {
                block.bn.forward_lip_act(&x_new, l_x.clone(), ctx, true)?
            } else {
                forward_seq(&[&block.bn, act], &x_new, l_x.clone(), ctx)?
            };
            raw = Some((x_new, l_x));
        }
        let (h, l_sub) = forward_seq(&[&self.pool, &Flatten], &a, l_a, ctx)?;
        let (logits, l) = self.fc.forward_lip(&h, l_sub.clone(), ctx)?;
        Ok(Output { logits, l_sub, l })
    }

    fn last_weight(&self) -> Option<&Tensor> {
        Some(self.fc.weight())
    }

    /// The same recursion as `forward`, as graph nodes (dropout, the identity at inference, is left out).
    fn to_graph(&self) -> Result<Graph> {
        let mut g = Graph::new(vec![3, 32, 32])?;
        let relu = || Op::Activation(self.act);
        let mut a = g.push("stem", Op::ConvBn(self.stem.clone()), vec![0])?;
        let mut raw: Option<usize> = None;
        for (i, block) in self.blocks.iter().enumerate() {
            let name = |part: &str| format!("block{i}.{part}");
            let b = g.push(name("convbn1"), Op::ConvBn(block.convbn1.clone()), vec![a])?;
            let b = g.push(name("relu1"), relu(), vec![b])?;
            let mut branch = g.push(name("conv2"), Op::Conv(block.conv2.clone()), vec![b])?;
            let mut shortcut = match &block.shortcut {
                Shortcut::Identity => raw.ok_or_else(|| {
                    config("wide resnet", "identity shortcut without a residual stream")
                })?,
                Shortcut::Conv(c) => g.push(name("shortcut"), Op::Conv(c.clone()), vec![a])?,
                Shortcut::PoolConv(p, c) => {
                    let v = g.push(name("shortcut.pool"), Op::Pool(*p), vec![a])?;
                    g.push(name("shortcut"), Op::Conv(c.clone()), vec![v])?
                }
            };
            if let Some(alpha) = &block.alpha {
                let weight = |k: usize| -> Result<Tensor> {
                    Ok(alpha.get(k)?.detach().reshape((1, 1, 1, 1))?.copy()?)
                };
                branch = g.push(name("alpha0"), Op::Scale(weight(0)?), vec![branch])?;
                shortcut = g.push(name("alpha1"), Op::Scale(weight(1)?), vec![shortcut])?;
            }
            let x = g.push(name("add"), Op::Add, vec![branch, shortcut])?;
            let v = g.push(name("bn_out"), Op::BatchNorm(block.bn.clone()), vec![x])?;
            a = g.push(name("relu_out"), relu(), vec![v])?;
            raw = Some(x);
        }
        let v = g.push("pool", Op::Pool(self.pool), vec![a])?;
        let c = g.shape(v)[0];
        let v = g.push("flatten", Op::Reshape(vec![c]), vec![v])?;
        g.push("fc", Op::Linear(self.fc.clone()), vec![v])?;
        g.finish()
    }

    fn buffers(&self) -> Vec<(String, Var)> {
        self.buffers.clone()
    }
}
