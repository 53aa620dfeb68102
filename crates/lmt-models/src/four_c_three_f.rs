//! The larger MNIST CNN of Wong et al. (2018) that BCP, GloRo and BCOP also report on ("4C3F"): conv
//! 1->32 3x3 s1 p1, conv 32->32 4x4 s2 p1, conv 32->64 3x3 s1 p1, conv 64->64 4x4 s2 p1, flatten, fc
//! 3136->512, fc 512->512, fc 512->10, with ReLU or MinMax between layers. Initialised like the
//! Kolter-Wong CNN (He-normal convolutions, LeCun-normal fully connected layers, zero biases); parameter
//! names `conv1`..`conv4`, `fc1`..`fc3` match the PyTorch mirror in `bench/pytorch/models.py`.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use crate::kolter_wong::{he_conv, lecun_fc};
use crate::lip::{Ctx, Lip, LipModule};
use crate::simple::{activation_module, hidden_activation};
use crate::{forward_seq, Act, Classifier, ConvCfg, Flatten, Graph, LipConv2d, LipLinear, Op};
use crate::{Output, Result};

/// The 4C3F network; the last layer is kept apart for Prop. 2.
#[derive(Debug, Clone)]
pub struct FourCThreeF {
    convs: [LipConv2d; 4],
    fc1: LipLinear,
    fc2: LipLinear,
    fc3: LipLinear,
    act: Act,
}

impl FourCThreeF {
    /// Creates the parameters in `varmap`, initialised deterministically from `seed`, with `act` (ReLU
    /// or MinMax) after every layer but the last.
    pub fn new(varmap: &VarMap, seed: u64, act: Act, device: &Device) -> Result<Self> {
        let (s1, s2) = (ConvCfg::square(1, 1), ConvCfg::square(2, 1));
        let c = |name, ci, co, k, cfg| he_conv(varmap, name, ci, co, k, cfg, seed, device);
        Ok(FourCThreeF {
            convs: [
                c("conv1", 1, 32, 3, s1)?,
                c("conv2", 32, 32, 4, s2)?,
                c("conv3", 32, 64, 3, s1)?,
                c("conv4", 64, 64, 4, s2)?,
            ],
            fc1: lecun_fc(varmap, "fc1", 64 * 7 * 7, 512, seed, device)?,
            fc2: lecun_fc(varmap, "fc2", 512, 512, seed, device)?,
            fc3: lecun_fc(varmap, "fc3", 512, 10, seed, device)?,
            act: hidden_activation(act)?,
        })
    }
}

impl Classifier for FourCThreeF {
    /// Forward pass of a batch `(B, 1, 28, 28)` carrying `lip`.
    fn forward(&self, x: &Tensor, lip: Lip, ctx: &Ctx) -> Result<Output> {
        let act = activation_module(self.act);
        let [c1, c2, c3, c4] = &self.convs;
        let layers: [&dyn LipModule; 13] = [
            c1, act, c2, act, c3, act, c4, act, &Flatten, &self.fc1, act, &self.fc2, act,
        ];
        let (h, l_sub) = forward_seq(&layers, x, lip, ctx)?;
        let (logits, l) = self.fc3.forward_lip(&h, l_sub.clone(), ctx)?;
        Ok(Output { logits, l_sub, l })
    }

    /// The last layer's weight `(10, 512)`, whose rows enter Prop. 2.
    fn last_weight(&self) -> Option<&Tensor> {
        Some(self.fc3.weight())
    }

    fn to_graph(&self) -> Result<Graph> {
        let mut g = Graph::new(vec![1, 28, 28])?;
        let act = Op::Activation(self.act);
        let mut v = 0;
        for (i, c) in self.convs.iter().enumerate() {
            v = g.push(format!("conv{}", i + 1), Op::Conv(c.clone()), vec![v])?;
            v = g.push(format!("act{}", i + 1), act.clone(), vec![v])?;
        }
        v = g.push("flatten", Op::Reshape(vec![64 * 7 * 7]), vec![v])?;
        v = g.push("fc1", Op::Linear(self.fc1.clone()), vec![v])?;
        v = g.push("act5", act.clone(), vec![v])?;
        v = g.push("fc2", Op::Linear(self.fc2.clone()), vec![v])?;
        v = g.push("act6", act, vec![v])?;
        g.push("fc3", Op::Linear(self.fc3.clone()), vec![v])?;
        g.finish()
    }
}
