//! A network as a directed acyclic graph of the same Lipschitz-aware layers the built-in networks use:
//! what an imported ONNX model becomes, and what a built-in network is written out as.
//!
//! Value 0 is the input; node `i` (in topological order) produces value `i + 1`, the last node the
//! logits. Shapes are per sample (the batch dimension is implicit and never mixed). Each value carries
//! its Lipschitz number beside the tensor, combined as the paper does (Sec. 5.1): composition multiplies,
//! addition and subtraction add, concatenation takes the root of the sum of squares. A graph whose last
//! node is a fully connected layer supports Prop. 2 (its input's bound is L_sub); any other supports
//! Prop. 1 only.

use candle_core::{DType, Tensor};
use lmt_core::{norms, CertifiedBound};

use crate::kolter_wong::{Classifier, Output};
use crate::lip::{Ctx, Lip, LipModule};
use crate::{config, BatchNorm2d, ConvBn, LipConv2d, LipLinear, Pool2d, Relu, Result};

/// An elementwise activation and its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    /// max(0, x).
    Relu,
    /// x for x >= 0, alpha x below.
    LeakyRelu(f32),
    /// The logistic function.
    Sigmoid,
    /// tanh.
    Tanh,
    /// min(max(x, lo), hi).
    Clip(f32, f32),
    /// MinMax on the per-sample axis 0 (channels, or features): channel i and channel i + C/2 become
    /// their maximum and their minimum (see [`crate::MinMax`]); C must be even.
    MinMax,
}

impl Act {
    fn core(self) -> norms::Activation {
        match self {
            Act::Relu => norms::Activation::Relu,
            Act::LeakyRelu(a) => norms::Activation::LeakyRelu(a as f64),
            Act::Sigmoid => norms::Activation::Sigmoid,
            Act::Tanh => norms::Activation::Tanh,
            Act::Clip(..) => norms::Activation::Clip,
            Act::MinMax => norms::Activation::MinMax,
        }
    }

    fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Act::Relu => crate::simple::relu(x)?,
            Act::LeakyRelu(a) => (x.relu()? - (x.neg()?.relu()? * a as f64)?)?,
            Act::Sigmoid => candle_nn::ops::sigmoid(x)?,
            Act::Tanh => x.tanh()?,
            Act::Clip(lo, hi) => x.clamp(lo, hi)?,
            Act::MinMax => crate::simple::min_max(x)?,
        })
    }
}

/// What a node computes. Constants are f32 tensors of rank `1 + sample rank` whose first dimension is 1,
/// broadcast over the sample.
#[derive(Debug, Clone)]
pub enum Op {
    /// A convolution with its bias and output scale.
    Conv(LipConv2d),
    /// A bias-free convolution followed by batch normalisation, bounded as one operator.
    ConvBn(ConvBn),
    /// Batch normalisation at inference over NCHW activations.
    BatchNorm(BatchNorm2d),
    /// A fully connected layer on `[features]`.
    Linear(LipLinear),
    /// Elementwise multiplication by a constant (input normalisation's 1/std, a residual weight, BN on
    /// a non-image activation): bound max |c|.
    Scale(Tensor),
    /// Elementwise addition of a constant (a bias, a mean to subtract): bound 1.
    Shift(Tensor),
    /// An elementwise activation.
    Activation(Act),
    /// Average or max pooling.
    Pool(Pool2d),
    /// Zero padding per sample axis, (before, after): an isometric embedding.
    Pad(Vec<(usize, usize)>),
    /// A new per-sample shape with the same elements in the same order.
    Reshape(Vec<usize>),
    /// A permutation of the per-sample axes.
    Transpose(Vec<usize>),
    /// The sum of two values (a residual connection): bounds add.
    Add,
    /// The difference of two values: bounds add.
    Sub,
    /// Concatenation of values along a per-sample axis: the root of the sum of squared bounds.
    Concat(usize),
}

impl Op {
    /// The device the op's weights live on; `None` for ops without weights.
    pub fn device(&self) -> Option<&candle_core::Device> {
        match self {
            Op::Conv(c) => Some(c.weight().device()),
            Op::ConvBn(c) => Some(c.conv().weight().device()),
            Op::BatchNorm(b) => Some(b.gamma().device()),
            Op::Linear(l) => Some(l.weight().device()),
            Op::Scale(t) | Op::Shift(t) => Some(t.device()),
            _ => None,
        }
    }

    /// Short name for descriptions and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv(_) => "Conv",
            Op::ConvBn(_) => "Conv+BatchNorm",
            Op::BatchNorm(_) => "BatchNorm",
            Op::Linear(_) => "Linear",
            Op::Scale(_) => "Scale",
            Op::Shift(_) => "Shift",
            Op::Activation(Act::Relu) => "Relu",
            Op::Activation(Act::LeakyRelu(_)) => "LeakyRelu",
            Op::Activation(Act::Sigmoid) => "Sigmoid",
            Op::Activation(Act::Tanh) => "Tanh",
            Op::Activation(Act::Clip(..)) => "Clip",
            Op::Activation(Act::MinMax) => "MinMax",
            Op::Pool(_) => "Pool",
            Op::Pad(_) => "Pad",
            Op::Reshape(_) => "Reshape",
            Op::Transpose(_) => "Transpose",
            Op::Add => "Add",
            Op::Sub => "Sub",
            Op::Concat(_) => "Concat",
        }
    }

    fn arity(&self) -> std::ops::RangeInclusive<usize> {
        match self {
            Op::Add | Op::Sub => 2..=2,
            Op::Concat(_) => 1..=usize::MAX,
            _ => 1..=1,
        }
    }
}

/// One node: a name (from the file, for messages), what it computes, and the values it reads.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node's name.
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// The values it reads (0 is the input, `i + 1` the output of node `i`).
    pub inputs: Vec<usize>,
}

/// A network as a DAG of Lipschitz-aware nodes; see the module documentation.
#[derive(Debug, Clone)]
pub struct Graph {
    input: Vec<usize>,
    nodes: Vec<Node>,
    shapes: Vec<Vec<usize>>,
    notes: Vec<String>,
}

/// A zero input of shape `(1, shape...)` on the device of `op`'s weights, for probing a layer's output
/// shape (and, in the sound pass, its certified bound).
pub(crate) fn probe(op: &Op, shape: &[usize]) -> Result<Tensor> {
    let mut dims = vec![1];
    dims.extend_from_slice(shape);
    let dev = op.device().cloned().unwrap_or(candle_core::Device::Cpu);
    Ok(Tensor::zeros(dims, DType::F32, &dev)?)
}

/// Checks that a constant broadcasts over a sample of shape `shape` without enlarging it.
fn check_constant(name: &str, c: &Tensor, shape: &[usize]) -> Result<()> {
    let d = c.dims();
    let fits = d.len() == shape.len() + 1
        && d[0] == 1
        && d[1..].iter().zip(shape).all(|(&a, &b)| a == 1 || a == b);
    if !fits || c.dtype() != DType::F32 {
        return Err(config(
            "graph",
            format!("node `{name}`: a constant of shape {d:?} does not broadcast over samples of shape {shape:?} (it may not enlarge them)"),
        ));
    }
    let v: Vec<f32> = c.flatten_all()?.to_vec1()?;
    if v.iter().any(|x| !x.is_finite()) {
        return Err(config(
            "graph",
            format!("node `{name}`: a constant holds NaN or infinity"),
        ));
    }
    Ok(())
}

impl Graph {
    /// An empty graph whose input has per-sample shape `input` (e.g. `[1, 28, 28]` or `[784]`).
    pub fn new(input: Vec<usize>) -> Result<Self> {
        if input.is_empty() || input.contains(&0) {
            return Err(config(
                "graph",
                format!("input shape {input:?} must be non-empty with positive sizes"),
            ));
        }
        Ok(Graph {
            shapes: vec![input.clone()],
            input,
            nodes: Vec::new(),
            notes: Vec::new(),
        })
    }

    /// Appends a node reading `inputs`; checks its inputs and shapes and returns its value.
    pub fn push(&mut self, name: impl Into<String>, op: Op, inputs: Vec<usize>) -> Result<usize> {
        let name = name.into();
        let bad =
            |detail: String| config("graph", format!("node `{name}` ({}): {detail}", op.kind()));
        if !op.arity().contains(&inputs.len()) {
            return Err(bad(format!("{} inputs", inputs.len())));
        }
        if let Some(&v) = inputs.iter().find(|&&v| v >= self.shapes.len()) {
            return Err(bad(format!("reads value {v}, which does not exist yet")));
        }
        let s: Vec<&[usize]> = inputs.iter().map(|&v| self.shapes[v].as_slice()).collect();
        let image = |s: &[usize]| -> Result<()> {
            if s.len() != 3 {
                return Err(bad(format!("needs a (C, H, W) input, got {s:?}")));
            }
            Ok(())
        };
        let shape: Vec<usize> = match &op {
            Op::Conv(_) | Op::ConvBn(_) | Op::BatchNorm(_) | Op::Pool(_) => {
                image(s[0])?;
                let x = probe(&op, s[0])?;
                let ctx = Ctx::eval(crate::CertifyMethod::Auto);
                let y = match &op {
                    Op::Conv(c) => c.forward_lip(&x, Lip::None, &ctx),
                    Op::ConvBn(c) => c.forward_lip(&x, Lip::None, &ctx),
                    Op::BatchNorm(b) => b.forward_lip(&x, Lip::None, &ctx),
                    Op::Pool(p) => p.forward_lip(&x, Lip::None, &ctx),
                    _ => unreachable!("matched above"),
                }
                .map_err(|e| bad(e.to_string()))?
                .0;
                y.dims()[1..].to_vec()
            }
            Op::Linear(l) => {
                let (out, inp) = l.weight().dims2()?;
                if s[0] != [inp] {
                    return Err(bad(format!("needs input [{inp}], got {:?}", s[0])));
                }
                vec![out]
            }
            Op::Scale(c) | Op::Shift(c) => {
                check_constant(&name, c, s[0])?;
                s[0].to_vec()
            }
            Op::Activation(Act::MinMax) if s[0].first().is_none_or(|c| c % 2 != 0) => {
                return Err(bad(format!(
                    "MinMax pairs the halves of axis 0, which needs an even size; got {:?}",
                    s[0]
                )));
            }
            Op::Activation(_) => s[0].to_vec(),
            Op::Pad(p) => {
                if p.len() != s[0].len() {
                    return Err(bad(format!("{} pads for rank {}", p.len(), s[0].len())));
                }
                s[0].iter().zip(p).map(|(d, (a, b))| d + a + b).collect()
            }
            Op::Reshape(t) => {
                let n = |v: &[usize]| v.iter().product::<usize>();
                if n(t) != n(s[0]) || t.contains(&0) {
                    return Err(bad(format!("{:?} cannot become {t:?}", s[0])));
                }
                t.clone()
            }
            Op::Transpose(p) => {
                let mut sorted = p.clone();
                sorted.sort_unstable();
                if sorted != (0..s[0].len()).collect::<Vec<_>>() {
                    return Err(bad(format!(
                        "{p:?} is no permutation of the axes of {:?}",
                        s[0]
                    )));
                }
                p.iter().map(|&i| s[0][i]).collect()
            }
            Op::Add | Op::Sub => {
                if s[0] != s[1] {
                    return Err(bad(format!("shapes {:?} and {:?} differ", s[0], s[1])));
                }
                s[0].to_vec()
            }
            Op::Concat(axis) => {
                let first = s[0];
                let same = s.iter().all(|t| {
                    t.len() == first.len()
                        && t.iter()
                            .zip(first)
                            .enumerate()
                            .all(|(i, (a, b))| i == *axis || a == b)
                });
                if *axis >= first.len() || !same {
                    return Err(bad(format!("cannot concatenate {s:?} along axis {axis}")));
                }
                let mut out = first.to_vec();
                out[*axis] = s.iter().map(|t| t[*axis]).sum();
                out
            }
        };
        self.nodes.push(Node { name, op, inputs });
        self.shapes.push(shape);
        Ok(self.shapes.len() - 1)
    }

    /// Records something the reader of a description should know (e.g. a dropped softmax).
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// What was noted while building.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The per-sample input shape.
    pub fn input_shape(&self) -> &[usize] {
        &self.input
    }

    /// The per-sample shape of value `v`.
    pub fn shape(&self, v: usize) -> &[usize] {
        &self.shapes[v]
    }

    /// The nodes in topological order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The device of the graph's weights (those of its first node with weights); `None` when it has
    /// none.
    pub fn device(&self) -> Option<&candle_core::Device> {
        self.nodes.iter().find_map(|n| n.op.device())
    }

    /// The node that produces value `v` (none for the input).
    pub fn producer(&self, v: usize) -> Option<&Node> {
        v.checked_sub(1).and_then(|i| self.nodes.get(i))
    }

    /// Replaces the op of the node producing `v` by `op`, which must give the same shape (fusing a
    /// following scale or batch norm into a convolution).
    pub fn replace(&mut self, v: usize, op: Op) -> Result<()> {
        let i = v
            .checked_sub(1)
            .filter(|&i| i < self.nodes.len())
            .ok_or_else(|| config("graph", format!("no node produces value {v}")))?;
        let mut trial = Graph {
            input: self.input.clone(),
            nodes: self.nodes[..i].to_vec(),
            shapes: self.shapes[..=i].to_vec(),
            notes: Vec::new(),
        };
        let node = &self.nodes[i];
        trial.push(node.name.clone(), op.clone(), node.inputs.clone())?;
        if trial.shapes[i + 1] != self.shapes[v] {
            return Err(config(
                "graph",
                format!("replacing node `{}` changes its shape", node.name),
            ));
        }
        self.nodes[i].op = op;
        Ok(())
    }

    /// Checks that the graph ends in a logits vector of at least two classes.
    pub fn finish(self) -> Result<Self> {
        let out = self.shapes.last().cloned().unwrap_or_default();
        if self.nodes.is_empty() || out.len() != 1 || out[0] < 2 {
            return Err(config(
                "graph",
                format!("the output must be a vector of at least 2 logits per sample, got shape {out:?}"),
            ));
        }
        Ok(self)
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.shapes.last().map(|s| s.iter().product()).unwrap_or(0)
    }

    /// The last node's layer when it is fully connected with nothing after it (Prop. 2 applies).
    pub fn last_linear(&self) -> Option<&LipLinear> {
        match self.nodes.last().map(|n| &n.op) {
            Some(Op::Linear(l)) => Some(l),
            _ => None,
        }
    }

    /// One line per node: name, op, inputs, output shape.
    pub fn describe(&self) -> String {
        let mut s = format!("input {:?}\n", self.input);
        for (i, n) in self.nodes.iter().enumerate() {
            s.push_str(&format!(
                "{:>3} {:<24} {:<14} {:?} -> {:?}\n",
                i + 1,
                n.name,
                n.op.kind(),
                n.inputs,
                self.shapes[i + 1]
            ));
        }
        s
    }

    fn run(&self, node: &Node, x: &[(Tensor, Lip)], ctx: &Ctx) -> Result<(Tensor, Lip)> {
        let (t, lip) = (&x[0].0, x[0].1.clone());
        let closed = |lip: Lip, b: CertifiedBound| {
            lip.through(|| Ok(Tensor::new(b.value() as f32, t.device())?), || Ok(b))
        };
        Ok(match &node.op {
            Op::Conv(c) => c.forward_lip(t, lip, ctx)?,
            Op::ConvBn(c) => c.forward_lip(t, lip, ctx)?,
            Op::BatchNorm(b) => b.forward_lip(t, lip, ctx)?,
            Op::Linear(l) => l.forward_lip(t, lip, ctx)?,
            Op::Pool(p) => p.forward_lip(t, lip, ctx)?,
            Op::Activation(Act::Relu) => Relu.forward_lip(t, lip, ctx)?,
            Op::Activation(a) => (a.apply(t)?, closed(lip, norms::activation(a.core())?)?),
            Op::Scale(c) => {
                let values: Vec<f64> = c.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
                let b = norms::elementwise_scale(&values)?;
                (t.broadcast_mul(c)?, closed(lip, b)?)
            }
            Op::Shift(c) => (t.broadcast_add(c)?, lip),
            Op::Pad(p) => {
                let mut y = t.clone();
                for (axis, &(a, b)) in p.iter().enumerate() {
                    if a + b > 0 {
                        y = y.pad_with_zeros(axis + 1, a, b)?;
                    }
                }
                (y, lip)
            }
            Op::Reshape(s) => {
                let mut dims = vec![t.dim(0)?];
                dims.extend_from_slice(s);
                (t.reshape(dims)?, lip)
            }
            Op::Transpose(p) => {
                let mut perm = vec![0];
                perm.extend(p.iter().map(|i| i + 1));
                (t.permute(perm)?.contiguous()?, lip)
            }
            Op::Add => ((t + &x[1].0)?, lip.plus(x[1].1.clone())?),
            Op::Sub => ((t - &x[1].0)?, lip.plus(x[1].1.clone())?),
            Op::Concat(axis) => {
                let ts: Vec<&Tensor> = x.iter().map(|v| &v.0).collect();
                let lip = x[1..]
                    .iter()
                    .try_fold(lip, |acc, v| acc.concat(v.1.clone()))?;
                (Tensor::cat(&ts, axis + 1)?, lip)
            }
        })
    }
}

impl Classifier for Graph {
    /// Runs the graph on a batch whose samples hold as many values as the input shape (NCHW images are
    /// reshaped to a flat input, and back); every value carries `lip` as its layers combine it.
    fn forward(&self, x: &Tensor, lip: Lip, ctx: &Ctx) -> Result<Output> {
        let b = x.dim(0)?;
        let mut dims = vec![b];
        dims.extend_from_slice(&self.input);
        if x.elem_count() != dims.iter().product::<usize>() {
            return Err(config(
                "graph",
                format!(
                    "a batch of shape {:?} does not fit the model's input {:?} per sample",
                    x.dims(),
                    self.input
                ),
            ));
        }
        let x = if x.dims() == dims.as_slice() {
            x.clone()
        } else {
            x.reshape(dims)?
        };
        // The last node that reads each value, so intermediate tensors are freed as soon as possible.
        let mut last_use = vec![0; self.shapes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for &v in &n.inputs {
                last_use[v] = i;
            }
        }
        let mut values: Vec<Option<(Tensor, Lip)>> = vec![None; self.shapes.len()];
        values[0] = Some((x, lip));
        let mut l_sub = None;
        for (i, node) in self.nodes.iter().enumerate() {
            let inputs = node
                .inputs
                .iter()
                .map(|&v| {
                    values[v]
                        .clone()
                        .ok_or_else(|| config("graph", "a value was freed early"))
                })
                .collect::<Result<Vec<_>>>()?;
            if i + 1 == self.nodes.len() {
                l_sub = Some(inputs[0].1.clone());
            }
            let out = self.run(node, &inputs, ctx)?;
            for &v in &node.inputs {
                if last_use[v] == i {
                    values[v] = None;
                }
            }
            values[i + 1] = Some(out);
        }
        let (logits, l) = values
            .pop()
            .flatten()
            .ok_or_else(|| config("graph", "a graph needs at least one node"))?;
        // Without a last linear layer, Prop. 2's L_sub is not defined; Prop. 1 uses L.
        let l_sub = match self.last_linear() {
            Some(_) => l_sub.unwrap_or(Lip::None),
            None => l.clone(),
        };
        Ok(Output { logits, l_sub, l })
    }

    fn last_weight(&self) -> Option<&Tensor> {
        self.last_linear().map(LipLinear::weight)
    }

    fn to_graph(&self) -> Result<Graph> {
        Ok(self.clone())
    }

    fn buffers(&self) -> Vec<(String, candle_core::Var)> {
        Vec::new()
    }
}
