//! The Kolter-Wong MNIST CNN as the authors build it (reference 4.1): conv 1->16 4x4 s2 p1, ReLU,
//! conv 16->32 4x4 s2 p1, ReLU, flatten, fc 1568->100, ReLU, fc 100->10; He-normal convolutions,
//! LeCun-normal fully connected layers, zero biases. Parameter names (`conv1.weight`, ..., `fc2.bias`)
//! match a PyTorch module with attributes `conv1`, `conv2`, `fc1`, `fc2`. MinMax may replace ReLU (the
//! modern Lipschitz networks' activation).

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use crate::init::{param, Init};
use crate::lip::{Ctx, Lip, LipModule};
use crate::simple::{activation_module, hidden_activation};
use crate::{forward_seq, Act, ConvCfg, Flatten, Graph, LipConv2d, LipLinear, Op, Result};

/// The network; the last layer is kept apart for Prop. 2.
#[derive(Debug, Clone)]
pub struct KolterWong {
    conv1: LipConv2d,
    conv2: LipConv2d,
    fc1: LipLinear,
    fc2: LipLinear,
    act: Act,
}

/// A network that classifies images and carries its Lipschitz number: what training, certification and
/// attacks need from a model.
pub trait Classifier {
    /// Logits plus the bound below the last layer (L_sub) and of the whole network (L).
    fn forward(&self, x: &Tensor, lip: Lip, ctx: &Ctx) -> Result<Output>;
    /// The last linear layer's weight `(classes, features)`, for Prop. 2; `None` when the network does
    /// not end in a linear layer (then only Prop. 1 applies).
    fn last_weight(&self) -> Option<&Tensor>;
    /// The same network as a [`crate::Graph`] of its layers (for ONNX export), sharing their weights.
    fn to_graph(&self) -> Result<crate::Graph> {
        Err(crate::config(
            "graph",
            "this model has no graph description",
        ))
    }
    /// The device the network's weights live on: inputs go there. Certified bounds are computed in
    /// f64 on the CPU from host copies of the weights, whatever the device.
    fn device(&self) -> candle_core::Device {
        if let Some(w) = self.last_weight() {
            return w.device().clone();
        }
        self.to_graph()
            .ok()
            .and_then(|g| g.device().cloned())
            .unwrap_or(candle_core::Device::Cpu)
    }
    /// State that is not trained but must be checkpointed (BN running statistics), by name.
    fn buffers(&self) -> Vec<(String, candle_core::Var)> {
        Vec::new()
    }
    /// Inference-mode logits (no dropout, BN running statistics, no bound): the function attacks see
    /// through `lmt_attacks::LogitsFn`, with candle's error type.
    fn eval_logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.forward(x, Lip::None, &Ctx::eval(crate::CertifyMethod::Auto)) {
            Ok(out) => Ok(out.logits),
            Err(crate::ModelError::Candle(e)) => Err(e),
            Err(e) => Err(candle_core::Error::Msg(e.to_string())),
        }
    }
}

/// What one forward pass returns.
#[derive(Debug, Clone)]
pub struct Output {
    /// Logits `(B, 10)`.
    pub logits: Tensor,
    /// Bound of the network below the last layer (L_sub of Prop. 2).
    pub l_sub: Lip,
    /// Bound of the whole network (Prop. 1).
    pub l: Lip,
}

impl KolterWong {
    /// Creates the parameters in `varmap`, initialised deterministically from `seed` (ReLU, as the
    /// authors' network).
    pub fn new(varmap: &VarMap, seed: u64, device: &Device) -> Result<Self> {
        Self::with_activation(varmap, seed, Act::Relu, device)
    }

    /// The same network with `act` (ReLU or MinMax) after every layer but the last.
    pub fn with_activation(varmap: &VarMap, seed: u64, act: Act, device: &Device) -> Result<Self> {
        let s2 = ConvCfg::square(2, 1);
        Ok(KolterWong {
            conv1: he_conv(varmap, "conv1", 1, 16, 4, s2, seed, device)?,
            conv2: he_conv(varmap, "conv2", 16, 32, 4, s2, seed, device)?,
            fc1: lecun_fc(varmap, "fc1", 1568, 100, seed, device)?,
            fc2: lecun_fc(varmap, "fc2", 100, 10, seed, device)?,
            act: hidden_activation(act)?,
        })
    }
}

/// A convolution `name` of `co` kernels `k x k` over `ci` channels: He-normal weight, zero bias.
#[allow(clippy::too_many_arguments)]
pub(crate) fn he_conv(
    varmap: &VarMap,
    name: &str,
    ci: usize,
    co: usize,
    k: usize,
    cfg: ConvCfg,
    seed: u64,
    device: &Device,
) -> Result<LipConv2d> {
    let w = param(
        varmap,
        &format!("{name}.weight"),
        (co, ci, k, k),
        Init::HeNormal { fan_in: ci * k * k },
        seed,
        device,
    )?;
    let b = param(
        varmap,
        &format!("{name}.bias"),
        co,
        Init::Const(0.0),
        seed,
        device,
    )?;
    LipConv2d::new(w, Some(b), cfg, name)
}

/// A fully connected layer `name` from `i` to `o` features: LeCun-normal weight, zero bias.
pub(crate) fn lecun_fc(
    varmap: &VarMap,
    name: &str,
    i: usize,
    o: usize,
    seed: u64,
    device: &Device,
) -> Result<LipLinear> {
    let w = param(
        varmap,
        &format!("{name}.weight"),
        (o, i),
        Init::LecunNormal { fan_in: i },
        seed,
        device,
    )?;
    let b = param(
        varmap,
        &format!("{name}.bias"),
        o,
        Init::Const(0.0),
        seed,
        device,
    )?;
    LipLinear::new(w, Some(b), name)
}

impl Classifier for KolterWong {
    /// Forward pass of a batch `(B, 1, 28, 28)` carrying `lip` (start it at 1, or at c in training).
    fn forward(&self, x: &Tensor, lip: Lip, ctx: &Ctx) -> Result<Output> {
        let act = activation_module(self.act);
        let layers: [&dyn LipModule; 7] =
            [&self.conv1, act, &self.conv2, act, &Flatten, &self.fc1, act];
        let (h, l_sub) = forward_seq(&layers, x, lip, ctx)?;
        let (logits, l) = self.fc2.forward_lip(&h, l_sub.clone(), ctx)?;
        Ok(Output { logits, l_sub, l })
    }

    /// The last layer's weight `(10, 100)`, whose rows enter Prop. 2.
    fn last_weight(&self) -> Option<&Tensor> {
        Some(self.fc2.weight())
    }

    fn to_graph(&self) -> Result<Graph> {
        let mut g = Graph::new(vec![1, 28, 28])?;
        let relu = Op::Activation(self.act);
        let v = g.push("conv1", Op::Conv(self.conv1.clone()), vec![0])?;
        let v = g.push("relu1", relu.clone(), vec![v])?;
        let v = g.push("conv2", Op::Conv(self.conv2.clone()), vec![v])?;
        let v = g.push("relu2", relu.clone(), vec![v])?;
        let v = g.push("flatten", Op::Reshape(vec![32 * 7 * 7]), vec![v])?;
        let v = g.push("fc1", Op::Linear(self.fc1.clone()), vec![v])?;
        let v = g.push("relu3", relu, vec![v])?;
        g.push("fc2", Op::Linear(self.fc2.clone()), vec![v])?;
        g.finish()
    }
}
