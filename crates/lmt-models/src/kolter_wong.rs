//! The Kolter-Wong MNIST CNN as the authors build it (reference 4.1): conv 1->16 4x4 s2 p1, ReLU,
//! conv 16->32 4x4 s2 p1, ReLU, flatten, fc 1568->100, ReLU, fc 100->10; He-normal convolutions,
//! LeCun-normal fully connected layers, zero biases. Parameter names (`conv1.weight`, ..., `fc2.bias`)
//! match a PyTorch module with attributes `conv1`, `conv2`, `fc1`, `fc2`.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use crate::init::{param, Init};
use crate::lip::{Ctx, Lip, LipModule};
use crate::{forward_seq, Act, ConvCfg, Flatten, Graph, LipConv2d, LipLinear, Op, Relu, Result};

/// The network; the last layer is kept apart for Prop. 2.
#[derive(Debug, Clone)]
pub struct KolterWong {
    conv1: LipConv2d,
    conv2: LipConv2d,
    fc1: LipLinear,
    fc2: LipLinear,
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
    /// Creates the parameters in `varmap`, initialised deterministically from `seed`.
    pub fn new(varmap: &VarMap, seed: u64, device: &Device) -> Result<Self> {
        let s2 = ConvCfg::square(2, 1);
        let conv = |name: &str, ci: usize, co: usize| -> Result<LipConv2d> {
            let w = param(
                varmap,
                &format!("{name}.weight"),
                (co, ci, 4, 4),
                Init::HeNormal { fan_in: ci * 16 },
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
            LipConv2d::new(w, Some(b), s2, name)
        };
        let fc = |name: &str, i: usize, o: usize| -> Result<LipLinear> {
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
        };
        Ok(KolterWong {
            conv1: conv("conv1", 1, 16)?,
            conv2: conv("conv2", 16, 32)?,
            fc1: fc("fc1", 1568, 100)?,
            fc2: fc("fc2", 100, 10)?,
        })
    }
}

impl Classifier for KolterWong {
    /// Forward pass of a batch `(B, 1, 28, 28)` carrying `lip` (start it at 1, or at c in training).
    fn forward(&self, x: &Tensor, lip: Lip, ctx: &Ctx) -> Result<Output> {
        let layers: [&dyn LipModule; 7] = [
            &self.conv1,
            &Relu,
            &self.conv2,
            &Relu,
            &Flatten,
            &self.fc1,
            &Relu,
        ];
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
        let relu = Op::Activation(Act::Relu);
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
