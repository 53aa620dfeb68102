//! ONNX -> [`Graph`]: every node becomes a Lipschitz-aware layer, a constant, or an error that names it.
//!
//! Values are either part of the network (they depend on the input: graph values) or constants
//! (initializers, `Constant` nodes and everything computed from them alone, folded here). Shape
//! arithmetic such as PyTorch's `x.view(x.size(0), -1)` (`Shape -> Gather -> Unsqueeze -> Concat ->
//! Reshape`) is folded with the batch size kept as a symbol, so a reshape never mixes samples.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use lmt_models::{Act, Graph, Op, Pool2d, PoolCfg, PoolKind};
use prost::Message;

use crate::error::{OnnxError, Result};
use crate::proto::{self, tensor_proto::DataType, NodeProto};

mod layers;
mod shapes;
mod tensor;

/// The opsets of the default domain this importer accepts (tested on files of opsets 9 to 20).
pub const OPSETS: std::ops::RangeInclusive<i64> = 7..=25;

/// The ops the importer reads, for messages and the README.
pub const SUPPORTED_OPS: &str = "Conv, Gemm, MatMul, Add, Sub, Mul, Div, Relu, LeakyRelu, Sigmoid, Tanh, Clip, \
BatchNormalization, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, ReduceMean (over H and W), Pad, \
Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Concat, Dropout, Identity, Constant, Shape, Gather, Slice, \
Cast, ConstantOfShape, Sqrt, Reciprocal, Neg (on constants), Softmax and LogSoftmax as the last node";

/// An ONNX model read into lmt-rs.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The network.
    pub graph: Graph,
    /// The default domain's opset the file declares.
    pub opset: i64,
    /// Who wrote the file (`producer_name producer_version`).
    pub producer: String,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
    /// Whether the input has a batch dimension (`(N, ...)`) or is one sample.
    pub batched: bool,
}

/// An integer of a shape computation: known, or the batch size.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sym {
    N(i64),
    Batch,
}

/// A value during import.
#[derive(Debug, Clone)]
enum Val {
    /// A value of the network (depends on the input).
    Var(usize),
    /// A float constant: dims and data.
    F(Vec<usize>, Vec<f32>),
    /// An integer constant.
    I(Vec<usize>, Vec<Sym>),
}

/// Reads an ONNX file (external data next to it is read too).
pub fn load(path: &Path) -> Result<Imported> {
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    import(&bytes, &path.display().to_string(), path.parent())
}

/// Reads an ONNX model from bytes; `origin` names it in messages, `dir` is where external data lives.
pub fn import(bytes: &[u8], origin: &str, dir: Option<&Path>) -> Result<Imported> {
    let decode = |detail: String| OnnxError::Decode {
        origin: origin.to_string(),
        detail,
    };
    let model = proto::ModelProto::decode(bytes).map_err(|e| decode(e.to_string()))?;
    let graph = model
        .graph
        .as_ref()
        .filter(|g| !g.node.is_empty())
        .ok_or_else(|| decode("no graph with nodes".into()))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
        .map(|o| o.version())
        .ok_or_else(|| decode("no opset for the default ONNX domain".into()))?;
    let model_err = |detail: String| OnnxError::Model {
        origin: origin.to_string(),
        detail,
    };
    if !OPSETS.contains(&opset) {
        return Err(model_err(format!(
            "opset {opset}: supported are opsets {} to {}",
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    let mut im = Importer {
        origin: origin.to_string(),
        dir,
        opset,
        batched: true,
        declared_batch: None,
        graph: Graph::new(vec![1]).expect("a valid placeholder"),
        vals: HashMap::new(),
        consumers: HashMap::new(),
    };
    for t in &graph.initializer {
        let v = im.tensor(t)?;
        im.vals.insert(t.name().to_string(), v);
    }
    let inputs: Vec<&proto::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !im.vals.contains_key(i.name()))
        .collect();
    let [input] = inputs.as_slice() else {
        return Err(model_err(format!(
            "{} graph inputs besides the initializers ({:?}); a classifier has exactly one, the images",
            inputs.len(),
            inputs.iter().map(|i| i.name()).collect::<Vec<_>>()
        )));
    };
    let (batched, declared, sample) = input_shape(input).map_err(model_err)?;
    im.batched = batched;
    im.declared_batch = declared;
    im.graph = Graph::new(sample).map_err(|source| im.layer(source))?;
    im.vals.insert(input.name().to_string(), Val::Var(0));
    for n in &graph.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            *im.consumers.entry(i.clone()).or_default() += 1;
        }
    }
    let [output] = graph.output.as_slice() else {
        return Err(model_err(format!(
            "{} graph outputs; a classifier has exactly one, the logits",
            graph.output.len()
        )));
    };
    *im.consumers.entry(output.name().to_string()).or_default() += 1;
    for (i, n) in graph.node.iter().enumerate() {
        let last = i + 1 == graph.node.len();
        im.node(
            n,
            last && n.output.first().map(String::as_str) == Some(output.name()),
        )?;
    }
    let out = match im.vals.get(output.name()) {
        Some(Val::Var(v)) => *v,
        Some(_) => {
            return Err(model_err(format!(
                "the output `{}` does not depend on the input",
                output.name()
            )))
        }
        None => {
            return Err(model_err(format!(
                "no node computes the output `{}`",
                output.name()
            )))
        }
    };
    if out + 1 != im.graph.nodes().len() + 1 {
        return Err(model_err(format!(
            "the output `{}` is not computed by the last network node (nodes after it compute something else)",
            output.name()
        )));
    }
    // An output of shape (N, 1, K) or an unbatched (1, K): the logits, as a vector per sample.
    let shape = im.graph.shape(out).to_vec();
    if shape.len() > 1 && shape.iter().filter(|&&d| d != 1).count() <= 1 {
        let k = shape.iter().product();
        im.graph
            .push("logits-as-vector", Op::Reshape(vec![k]), vec![out])
            .map_err(|source| im.layer(source))?;
    }
    let graph = im.graph.finish().map_err(|source| OnnxError::Layer {
        origin: origin.to_string(),
        source,
    })?;
    use sha2::Digest;
    let sha256 = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Imported {
        graph,
        opset,
        producer: format!("{} {}", model.producer_name(), model.producer_version())
            .trim()
            .to_string(),
        sha256,
        batched,
    })
}

/// (batched, declared batch size, per-sample shape) of the graph input.
fn input_shape(
    input: &proto::ValueInfoProto,
) -> std::result::Result<(bool, Option<i64>, Vec<usize>), String> {
    use proto::tensor_shape_proto::dimension::Value as D;
    use proto::type_proto::Value as T;
    let name = input.name();
    let Some(T::TensorType(t)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(format!("input `{name}` is not a tensor"));
    };
    if t.elem_type() != DataType::Float as i32 {
        return Err(format!(
            "input `{name}` has element type {}; images are float32",
            t.elem_type()
        ));
    }
    let dims: Vec<Option<i64>> = t
        .shape
        .as_ref()
        .ok_or_else(|| format!("input `{name}` has no shape"))?
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(D::DimValue(v)) if *v > 0 => Some(*v),
            _ => None,
        })
        .collect();
    // Rank 4 (N, C, H, W) and rank 2 (N, features) carry a batch axis; rank 3 and 1 are one sample.
    let batched = matches!(dims.len(), 2 | 4);
    if !matches!(dims.len(), 1..=4) {
        return Err(format!(
            "input `{name}` has rank {}: supported are (N, C, H, W), (N, F), (C, H, W) and (F)",
            dims.len()
        ));
    }
    let sample = &dims[batched as usize..];
    let sample: Vec<usize> = sample
        .iter()
        .map(|d| d.map(|v| v as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            format!("input `{name}` has a dynamic size outside the batch axis ({dims:?}); export it with a fixed image size")
        })?;
    Ok((batched, if batched { dims[0] } else { None }, sample))
}

struct Importer<'a> {
    origin: String,
    dir: Option<&'a Path>,
    opset: i64,
    batched: bool,
    declared_batch: Option<i64>,
    graph: Graph,
    vals: HashMap<String, Val>,
    consumers: HashMap<String, usize>,
}

fn attr<'n>(n: &'n NodeProto, name: &str) -> Option<&'n proto::AttributeProto> {
    n.attribute.iter().find(|a| a.name() == name)
}
fn attr_i(n: &NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map(|a| a.i()).unwrap_or(default)
}
fn attr_f(n: &NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).map(|a| a.f()).unwrap_or(default)
}
fn attr_ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}
fn attr_s(n: &NodeProto, name: &str) -> Option<String> {
    attr(n, name).map(|a| String::from_utf8_lossy(a.s()).to_string())
}
fn node_name(n: &NodeProto) -> String {
    if n.name().is_empty() {
        n.output.first().cloned().unwrap_or_default()
    } else {
        n.name().to_string()
    }
}

impl Importer<'_> {
    pub(super) fn layer(&self, source: lmt_models::ModelError) -> OnnxError {
        OnnxError::Layer {
            origin: self.origin.clone(),
            source,
        }
    }

    pub(super) fn unsupported(
        &self,
        n: &NodeProto,
        found: impl Into<String>,
        supported: impl Into<String>,
    ) -> OnnxError {
        OnnxError::Unsupported {
            origin: self.origin.clone(),
            node: node_name(n),
            op: n.op_type().to_string(),
            found: found.into(),
            supported: supported.into(),
        }
    }

    pub(super) fn input<'v>(&'v self, n: &NodeProto, i: usize) -> Result<Option<&'v Val>> {
        match n.input.get(i).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(name) => self.vals.get(name).map(Some).ok_or_else(|| {
                self.unsupported(
                    n,
                    format!(
                        "input `{name}` is neither an initializer, the graph input nor the output of \
                         an earlier node (a missing initializer?)"
                    ),
                    "every input defined, nodes in topological order",
                )
            }),
        }
    }

    pub(super) fn need(&self, n: &NodeProto, i: usize) -> Result<Val> {
        self.input(n, i)?.cloned().ok_or_else(|| {
            self.unsupported(
                n,
                format!("input {i} is missing"),
                "the inputs the ONNX operator requires",
            )
        })
    }

    pub(super) fn var(&self, n: &NodeProto, i: usize) -> Result<usize> {
        match self.need(n, i)? {
            Val::Var(v) => Ok(v),
            _ => Err(self.unsupported(
                n,
                format!("input {i} is a constant"),
                "this input must depend on the image",
            )),
        }
    }

    pub(super) fn floats(&self, n: &NodeProto, i: usize) -> Result<(Vec<usize>, Vec<f32>)> {
        match self.need(n, i)? {
            Val::F(d, v) => Ok((d, v)),
            Val::I(d, v) => {
                let v = v.iter().map(|s| match s {
                    Sym::N(x) => Ok(*x as f32),
                    Sym::Batch => Err(self.unsupported(
                        n,
                        "a float computed from the batch size",
                        "constants",
                    )),
                });
                Ok((d, v.collect::<Result<_>>()?))
            }
            Val::Var(_) => Err(self.unsupported(
                n,
                format!("input {i} depends on the image"),
                "a constant (an initializer or a Constant node)",
            )),
        }
    }

    pub(super) fn ints(&self, n: &NodeProto, i: usize) -> Result<(Vec<usize>, Vec<Sym>)> {
        match self.need(n, i)? {
            Val::I(d, v) => Ok((d, v)),
            Val::F(d, v) => Ok((d, v.iter().map(|&x| Sym::N(x as i64)).collect())),
            Val::Var(_) => {
                Err(self.unsupported(n, format!("input {i} depends on the image"), "a constant"))
            }
        }
    }

    pub(super) fn known(&self, n: &NodeProto, v: &[Sym]) -> Result<Vec<i64>> {
        v.iter()
            .map(|s| match s {
                Sym::N(x) => Ok(*x),
                Sym::Batch => Err(self.unsupported(
                    n,
                    "a value computed from the batch size",
                    "known constants",
                )),
            })
            .collect()
    }

    /// The rank of a network value as ONNX sees it (with the batch axis when the model has one).
    pub(super) fn onnx_rank(&self, v: usize) -> usize {
        self.graph.shape(v).len() + self.batched as usize
    }

    /// An ONNX axis of a network value as a per-sample axis; the batch axis is an error.
    pub(super) fn sample_axis(&self, n: &NodeProto, axis: i64, rank: usize) -> Result<usize> {
        let a = if axis < 0 { axis + rank as i64 } else { axis };
        if a < 0 || a >= rank as i64 {
            return Err(self.unsupported(
                n,
                format!("axis {axis} for rank {rank}"),
                "an axis of the input",
            ));
        }
        let a = a as usize;
        if self.batched {
            if a == 0 {
                return Err(self.unsupported(
                    n,
                    "an operation along the batch axis",
                    "operations within each sample",
                ));
            }
            Ok(a - 1)
        } else {
            Ok(a)
        }
    }

    pub(super) fn push(&mut self, n: &NodeProto, op: Op, inputs: Vec<usize>) -> Result<Val> {
        let v = self
            .graph
            .push(node_name(n), op, inputs)
            .map_err(|source| self.layer(source))?;
        Ok(Val::Var(v))
    }

    /// True when the ONNX tensor `name` is read by exactly one node and is not an output.
    pub(super) fn single_use(&self, name: &str) -> bool {
        self.consumers.get(name) == Some(&1)
    }

    /// A float constant as a tensor that broadcasts over the per-sample shape of `v` (rank 1 + sample
    /// rank, first dimension 1).
    pub(super) fn sample_const(
        &self,
        n: &NodeProto,
        dims: &[usize],
        data: Vec<f32>,
        v: usize,
    ) -> Result<Tensor> {
        let r = self.onnx_rank(v);
        if dims.len() > r {
            return Err(self.unsupported(
                n,
                format!("a constant of shape {dims:?} for a value of rank {r}"),
                "constants that broadcast over the value",
            ));
        }
        let mut d = vec![1; r - dims.len()];
        d.extend_from_slice(dims);
        if self.batched {
            if d[0] != 1 {
                return Err(self.unsupported(
                    n,
                    format!("a constant of shape {dims:?} that varies along the batch axis"),
                    "constants that are the same for every sample",
                ));
            }
        } else {
            d.insert(0, 1);
        }
        Tensor::from_vec(data, d, &Device::Cpu).map_err(|e| self.layer(e.into()))
    }

    pub(super) fn tensor_of(&self, dims: &[usize], data: Vec<f32>) -> Result<Tensor> {
        Tensor::from_vec(data, dims, &Device::Cpu).map_err(|e| self.layer(e.into()))
    }

    pub(super) fn node(&mut self, n: &NodeProto, last: bool) -> Result<()> {
        if !(n.domain().is_empty() || n.domain() == "ai.onnx") {
            return Err(self.unsupported(
                n,
                format!("domain `{}`", n.domain()),
                "the default ONNX domain",
            ));
        }
        let op = n.op_type();
        // Outputs beyond the first that something reads (BN's running statistics in training mode,
        // MaxPool's indices, Dropout's mask) are not computed.
        for extra in n.output.iter().skip(1).filter(|o| !o.is_empty()) {
            if self.consumers.contains_key(extra) && !matches!(op, "Split") {
                return Err(self.unsupported(
                    n,
                    format!("output `{extra}` is used"),
                    "only the first output of this op",
                ));
            }
        }
        let out = self.compute(n, last)?;
        let name = n.output.first().cloned().unwrap_or_default();
        self.vals.insert(name, out);
        Ok(())
    }

    pub(super) fn compute(&mut self, n: &NodeProto, last: bool) -> Result<Val> {
        let op = n.op_type();
        let all_const = n
            .input
            .iter()
            .filter(|i| !i.is_empty())
            .all(|i| !matches!(self.vals.get(i), Some(Val::Var(_))));
        match op {
            "Constant" => self.constant(n),
            "Identity" => self.need(n, 0),
            "Dropout" => {
                if let Some(Val::I(_, v)) = self.input(n, 2)? {
                    if v.iter().any(|s| *s != Sym::N(0)) {
                        return Err(self.unsupported(n, "training_mode = true", "inference (training_mode false)"));
                    }
                }
                self.need(n, 0)
            }
            "Cast" => match self.need(n, 0)? {
                Val::Var(v) if attr_i(n, "to", 1) == DataType::Float as i64 => Ok(Val::Var(v)),
                Val::Var(_) => Err(self.unsupported(n, format!("a cast of the network's values to type {}", attr_i(n, "to", 0)), "float32")),
                Val::F(d, v) if matches!(attr_i(n, "to", 1), 6 | 7) => Ok(Val::I(d, v.iter().map(|&x| Sym::N(x as i64)).collect())),
                Val::I(d, v) if matches!(attr_i(n, "to", 1), 1 | 10 | 11) => {
                    let k = self.known(n, &v)?;
                    Ok(Val::F(d, k.iter().map(|&x| x as f32).collect()))
                }
                other => Ok(other),
            },
            "Conv" => self.conv(n),
            "BatchNormalization" => self.batch_norm(n),
            "Gemm" => self.gemm(n),
            "MatMul" => self.matmul(n),
            "Add" | "Sub" | "Mul" | "Div" => self.binary(n),
            "Sqrt" | "Reciprocal" | "Neg" if all_const => {
                let (d, v) = self.floats(n, 0)?;
                let f = |x: f32| match op {
                    "Sqrt" => x.sqrt(),
                    "Reciprocal" => 1.0 / x,
                    _ => -x,
                };
                Ok(Val::F(d, v.into_iter().map(f).collect()))
            }
            "Relu" => self.activation(n, Act::Relu),
            "LeakyRelu" => self.activation(n, Act::LeakyRelu(attr_f(n, "alpha", 0.01))),
            "Sigmoid" => self.activation(n, Act::Sigmoid),
            "Tanh" => self.activation(n, Act::Tanh),
            "Clip" => {
                let bound = |i: usize, name: &str, default: f32| -> Result<f32> {
                    if self.opset < 11 {
                        return Ok(attr_f(n, name, default));
                    }
                    match self.input(n, i)? {
                        None => Ok(default),
                        Some(_) => Ok(self.floats(n, i)?.1.first().copied().unwrap_or(default)),
                    }
                };
                let (lo, hi) = (bound(1, "min", f32::NEG_INFINITY)?, bound(2, "max", f32::INFINITY)?);
                if lo > hi || lo.is_nan() || hi.is_nan() {
                    return Err(self.unsupported(n, format!("min {lo} > max {hi}"), "min <= max"));
                }
                self.activation(n, Act::Clip(lo, hi))
            }
            "MaxPool" | "AveragePool" => self.pool(n),
            "GlobalAveragePool" | "GlobalMaxPool" => {
                let x = self.var(n, 0)?;
                let s = self.graph.shape(x).to_vec();
                if s.len() != 3 {
                    return Err(self.unsupported(n, format!("per-sample shape {s:?}"), "(C, H, W) images"));
                }
                let kind = if op == "GlobalMaxPool" { PoolKind::Max } else { PoolKind::Avg };
                let cfg = PoolCfg { kernel: (s[1], s[2]), stride: (1, 1), pads: [0; 4], count_include_pad: true };
                let p = Pool2d::general(kind, cfg).map_err(|e| self.layer(e))?;
                self.push(n, Op::Pool(p), vec![x])
            }
            "ReduceMean" => self.reduce_mean(n),
            "Pad" => self.pad(n),
            "Flatten" => self.flatten(n),
            "Reshape" => self.reshape(n),
            "Squeeze" | "Unsqueeze" => self.squeeze(n),
            "Transpose" => self.transpose(n),
            "Concat" => self.concat(n),
            "Shape" => {
                let x = self.need(n, 0)?;
                let mut dims: Vec<Sym> = match &x {
                    Val::Var(v) => {
                        let mut d: Vec<Sym> = if self.batched { vec![Sym::Batch] } else { vec![] };
                        d.extend(self.graph.shape(*v).iter().map(|&s| Sym::N(s as i64)));
                        d
                    }
                    Val::F(d, _) | Val::I(d, _) => d.iter().map(|&s| Sym::N(s as i64)).collect(),
                };
                let r = dims.len() as i64;
                let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let (start, end) = (clamp(attr_i(n, "start", 0)), clamp(attr_i(n, "end", r)));
                dims = dims[start..end.max(start)].to_vec();
                Ok(Val::I(vec![dims.len()], dims))
            }
            "Gather" if all_const => self.gather(n),
            "Slice" if all_const => self.slice(n),
            "ConstantOfShape" => {
                let (_, shape) = self.ints(n, 0)?;
                let shape = self.known(n, &shape)?;
                let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
                let count = dims.iter().product();
                match attr(n, "value").and_then(|a| a.t.as_ref()) {
                    None => Ok(Val::F(dims, vec![0.0; count])),
                    Some(t) => match self.tensor(t)? {
                        Val::F(_, v) => Ok(Val::F(dims, vec![v.first().copied().unwrap_or(0.0); count])),
                        Val::I(_, v) => Ok(Val::I(dims, vec![v.first().copied().unwrap_or(Sym::N(0)); count])),
                        Val::Var(_) => unreachable!("a tensor attribute is a constant"),
                    },
                }
            }
            "Softmax" | "LogSoftmax" if last => {
                let x = self.var(n, 0)?;
                self.graph.note(format!(
                    "{op} `{}` at the output was dropped: certificates are on the logits before it (it keeps their order, so the predicted class is the same)",
                    node_name(n)
                ));
                Ok(Val::Var(x))
            }
            "Softmax" | "LogSoftmax" => Err(self.unsupported(n, "a softmax that is not the last node", "Softmax or LogSoftmax only as the last node (it is dropped: certificates are on logits)")),
            _ => Err(self.unsupported(n, "an op lmt-rs cannot bound", SUPPORTED_OPS)),
        }
    }
}
