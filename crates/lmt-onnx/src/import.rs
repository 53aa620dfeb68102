//! ONNX -> [`Graph`]: every node becomes a Lipschitz-aware layer, a constant, or an error that names it.
//!
//! Values are either part of the network (they depend on the input: graph values) or constants
//! (initializers, `Constant` nodes and everything computed from them alone, folded here). Shape
//! arithmetic such as PyTorch's `x.view(x.size(0), -1)` (`Shape -> Gather -> Unsqueeze -> Concat ->
//! Reshape`) is folded with the batch size kept as a symbol, so a reshape never mixes samples.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use lmt_models::{
    Act, BatchNorm2d, ConvBn, ConvCfg, Graph, LipConv2d, LipLinear, Op, Pool2d, PoolCfg, PoolKind,
};
use prost::Message;

use crate::error::{OnnxError, Result};
use crate::proto::{self, tensor_proto::DataType, NodeProto, TensorProto};

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

/// Broadcast of two ONNX shapes (numpy rules).
fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let x = if i + a.len() >= r {
                a[i + a.len() - r]
            } else {
                1
            };
            let y = if i + b.len() >= r {
                b[i + b.len() - r]
            } else {
                1
            };
            match (x, y) {
                (x, y) if x == y => Some(x),
                (1, y) => Some(y),
                (x, 1) => Some(x),
                _ => None,
            }
        })
        .collect()
}

/// The flat index into a tensor of `dims` of the element broadcast to position `out` of `shape`.
fn source_index(out: usize, shape: &[usize], dims: &[usize]) -> usize {
    let mut rem = out;
    let mut idx = 0;
    let mut stride = 1;
    let off = shape.len() - dims.len();
    for axis in (0..shape.len()).rev() {
        let coord = rem % shape[axis];
        rem /= shape[axis];
        if axis >= off {
            let d = dims[axis - off];
            if d != 1 {
                idx += coord * stride;
            }
            stride *= d;
        }
    }
    idx
}

impl Importer<'_> {
    fn layer(&self, source: lmt_models::ModelError) -> OnnxError {
        OnnxError::Layer {
            origin: self.origin.clone(),
            source,
        }
    }

    fn unsupported(
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

    /// The decoded values of a tensor (external data read from `dir`).
    fn tensor(&self, t: &TensorProto) -> Result<Val> {
        let name = t.name().to_string();
        let bad = |detail: String| OnnxError::Model {
            origin: self.origin.clone(),
            detail: format!("tensor `{name}`: {detail}"),
        };
        if t.dims.iter().any(|&d| d < 0) {
            return Err(bad(format!("negative dimension in {:?}", t.dims)));
        }
        let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        let count = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&c| c <= 1 << 31)
            .ok_or_else(|| bad(format!("dims {dims:?} are too large")))?;
        let external;
        let raw: Option<&[u8]> = if t.data_location() == proto::tensor_proto::DataLocation::External
        {
            external = self.external(t).map_err(bad)?;
            Some(&external)
        } else {
            t.raw_data.as_deref().filter(|r| !r.is_empty())
        };
        let dt = DataType::try_from(t.data_type()).unwrap_or(DataType::Undefined);
        let size = match dt {
            DataType::Float | DataType::Int32 | DataType::Uint32 => 4,
            DataType::Double | DataType::Int64 | DataType::Uint64 => 8,
            DataType::Float16 | DataType::Bfloat16 | DataType::Int16 | DataType::Uint16 => 2,
            DataType::Int8 | DataType::Uint8 | DataType::Bool => 1,
            other => return Err(bad(format!("data type {other:?} is not supported (float, double, float16, bfloat16 and integers are)"))),
        };
        let chunks = |r: &[u8]| -> Result<Vec<Vec<u8>>> {
            if r.len() != count * size {
                return Err(bad(format!(
                    "{} bytes of data for {count} values of {size} bytes",
                    r.len()
                )));
            }
            Ok(r.chunks(size).map(<[u8]>::to_vec).collect())
        };
        let check = |len: usize| -> Result<()> {
            if len != count {
                return Err(bad(format!("{len} values for dims {dims:?}")));
            }
            Ok(())
        };
        let le = |c: &[u8]| -> i64 {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            i64::from_le_bytes(b)
        };
        Ok(match dt {
            DataType::Float | DataType::Double | DataType::Float16 | DataType::Bfloat16 => {
                let data: Vec<f32> = match (raw, dt) {
                    (Some(r), DataType::Float) => chunks(r)?
                        .iter()
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                    (Some(r), DataType::Double) => chunks(r)?
                        .iter()
                        .map(|c| f64::from_le_bytes(c[..8].try_into().expect("8 bytes")) as f32)
                        .collect(),
                    (Some(r), DataType::Float16) => chunks(r)?
                        .iter()
                        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect(),
                    (Some(r), _) => chunks(r)?
                        .iter()
                        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect(),
                    (None, DataType::Float) => t.float_data.clone(),
                    (None, DataType::Double) => t.double_data.iter().map(|&v| v as f32).collect(),
                    (None, DataType::Float16) => t
                        .int32_data
                        .iter()
                        .map(|&v| half::f16::from_bits(v as u16).to_f32())
                        .collect(),
                    (None, _) => t
                        .int32_data
                        .iter()
                        .map(|&v| half::bf16::from_bits(v as u16).to_f32())
                        .collect(),
                };
                check(data.len())?;
                Val::F(dims, data)
            }
            _ => {
                let data: Vec<i64> = match raw {
                    Some(r) => {
                        let signed = matches!(
                            dt,
                            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64
                        );
                        chunks(r)?
                            .iter()
                            .map(|c| {
                                let v = le(c);
                                if signed && c.len() < 8 {
                                    let shift = 64 - 8 * c.len();
                                    (v << shift) >> shift
                                } else {
                                    v
                                }
                            })
                            .collect()
                    }
                    None if matches!(dt, DataType::Int64) => t.int64_data.clone(),
                    None if matches!(dt, DataType::Uint64) => {
                        t.uint64_data.iter().map(|&v| v as i64).collect()
                    }
                    None => t.int32_data.iter().map(|&v| v as i64).collect(),
                };
                check(data.len())?;
                Val::I(dims, data.into_iter().map(Sym::N).collect())
            }
        })
    }

    /// The bytes of a tensor stored in an external file (`location`, `offset`, `length`).
    fn external(&self, t: &TensorProto) -> std::result::Result<Vec<u8>, String> {
        let get = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key() == k)
                .map(|e| e.value().to_string())
        };
        let location = get("location").ok_or("external data without a location")?;
        let dir = self
            .dir
            .ok_or("external data, but the model was not read from a file")?;
        let path = dir.join(&location);
        if Path::new(&location).is_absolute() || location.split(['/', '\\']).any(|p| p == "..") {
            return Err(format!(
                "external data location `{location}` must be a file beside the model"
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| {
            format!(
                "external data file {}: {e} (it must sit beside the model)",
                path.display()
            )
        })?;
        let num = |k: &str| -> std::result::Result<Option<usize>, String> {
            get(k)
                .map(|v| {
                    v.parse::<usize>()
                        .map_err(|_| format!("external data {k} `{v}` is not a number"))
                })
                .transpose()
        };
        let offset = num("offset")?.unwrap_or(0);
        let length = num("length")?.unwrap_or(bytes.len().saturating_sub(offset));
        bytes
            .get(
                offset
                    ..offset
                        .checked_add(length)
                        .ok_or("external data range overflows")?,
            )
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                format!(
                    "external data file {} has {} bytes, the tensor needs {offset}..{}",
                    path.display(),
                    bytes.len(),
                    offset + length
                )
            })
    }

    fn input<'v>(&'v self, n: &NodeProto, i: usize) -> Result<Option<&'v Val>> {
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

    fn need(&self, n: &NodeProto, i: usize) -> Result<Val> {
        self.input(n, i)?.cloned().ok_or_else(|| {
            self.unsupported(
                n,
                format!("input {i} is missing"),
                "the inputs the ONNX operator requires",
            )
        })
    }

    fn var(&self, n: &NodeProto, i: usize) -> Result<usize> {
        match self.need(n, i)? {
            Val::Var(v) => Ok(v),
            _ => Err(self.unsupported(
                n,
                format!("input {i} is a constant"),
                "this input must depend on the image",
            )),
        }
    }

    fn floats(&self, n: &NodeProto, i: usize) -> Result<(Vec<usize>, Vec<f32>)> {
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

    fn ints(&self, n: &NodeProto, i: usize) -> Result<(Vec<usize>, Vec<Sym>)> {
        match self.need(n, i)? {
            Val::I(d, v) => Ok((d, v)),
            Val::F(d, v) => Ok((d, v.iter().map(|&x| Sym::N(x as i64)).collect())),
            Val::Var(_) => {
                Err(self.unsupported(n, format!("input {i} depends on the image"), "a constant"))
            }
        }
    }

    fn known(&self, n: &NodeProto, v: &[Sym]) -> Result<Vec<i64>> {
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
    fn onnx_rank(&self, v: usize) -> usize {
        self.graph.shape(v).len() + self.batched as usize
    }

    /// An ONNX axis of a network value as a per-sample axis; the batch axis is an error.
    fn sample_axis(&self, n: &NodeProto, axis: i64, rank: usize) -> Result<usize> {
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

    fn push(&mut self, n: &NodeProto, op: Op, inputs: Vec<usize>) -> Result<Val> {
        let v = self
            .graph
            .push(node_name(n), op, inputs)
            .map_err(|source| self.layer(source))?;
        Ok(Val::Var(v))
    }

    /// True when the ONNX tensor `name` is read by exactly one node and is not an output.
    fn single_use(&self, name: &str) -> bool {
        self.consumers.get(name) == Some(&1)
    }

    /// A float constant as a tensor that broadcasts over the per-sample shape of `v` (rank 1 + sample
    /// rank, first dimension 1).
    fn sample_const(
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

    fn tensor_of(&self, dims: &[usize], data: Vec<f32>) -> Result<Tensor> {
        Tensor::from_vec(data, dims, &Device::Cpu).map_err(|e| self.layer(e.into()))
    }

    /// Kernel shape, strides, dilations and pads of a convolution or pooling node on an input of
    /// per-sample shape (C, H, W), with auto_pad resolved; `kernel` gives the window when the node has
    /// no kernel_shape.
    #[allow(clippy::type_complexity)]
    fn window(
        &self,
        n: &NodeProto,
        shape: &[usize],
        kernel: Option<(usize, usize)>,
    ) -> Result<((usize, usize), (usize, usize), (usize, usize), [usize; 4])> {
        if shape.len() != 3 {
            return Err(self.unsupported(
                n,
                format!("an input of per-sample shape {shape:?}"),
                "2-D images (N, C, H, W)",
            ));
        }
        let pair = |name: &str, default: (usize, usize)| -> Result<(usize, usize)> {
            match attr_ints(n, name) {
                None => Ok(default),
                Some(v) if v.len() == 2 && v.iter().all(|&x| x > 0) => {
                    Ok((v[0] as usize, v[1] as usize))
                }
                Some(v) => Err(self.unsupported(
                    n,
                    format!("{name} = {v:?}"),
                    format!("two positive {name} (2-D)"),
                )),
            }
        };
        let k = match (attr_ints(n, "kernel_shape"), kernel) {
            (Some(v), _) if v.len() == 2 && v.iter().all(|&x| x > 0) => {
                (v[0] as usize, v[1] as usize)
            }
            (Some(v), _) => {
                return Err(self.unsupported(n, format!("kernel_shape = {v:?}"), "a 2-D kernel"))
            }
            (None, Some(k)) => k,
            (None, None) => return Err(self.unsupported(n, "no kernel_shape", "kernel_shape")),
        };
        if let (Some(w), Some(a)) = (kernel, attr_ints(n, "kernel_shape")) {
            if [w.0 as i64, w.1 as i64] != a[..] {
                return Err(self.unsupported(
                    n,
                    format!("kernel_shape {a:?} but a weight of {w:?}"),
                    "kernel_shape equal to the weight's",
                ));
            }
        }
        let s = pair("strides", (1, 1))?;
        let d = pair("dilations", (1, 1))?;
        let auto = attr_s(n, "auto_pad").unwrap_or_else(|| "NOTSET".into());
        let pads = match auto.as_str() {
            "NOTSET" => match attr_ints(n, "pads") {
                None => [0; 4],
                Some(p) if p.len() == 4 && p.iter().all(|&x| x >= 0) => {
                    [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize]
                }
                Some(p) => {
                    return Err(self.unsupported(
                        n,
                        format!("pads = {p:?}"),
                        "four non-negative pads [top, left, bottom, right]",
                    ))
                }
            },
            "VALID" => [0; 4],
            "SAME_UPPER" | "SAME_LOWER" => {
                let total = |size: usize, k: usize, s: usize, d: usize| {
                    let out = size.div_ceil(s);
                    ((out - 1) * s + (k - 1) * d + 1).saturating_sub(size)
                };
                let (th, tw) = (
                    total(shape[1], k.0, s.0, d.0),
                    total(shape[2], k.1, s.1, d.1),
                );
                let lower = auto == "SAME_LOWER";
                let split = |t: usize| {
                    if lower {
                        (t - t / 2, t / 2)
                    } else {
                        (t / 2, t - t / 2)
                    }
                };
                let ((pt, pb), (pl, pr)) = (split(th), split(tw));
                [pt, pl, pb, pr]
            }
            other => {
                return Err(self.unsupported(
                    n,
                    format!("auto_pad = {other}"),
                    "NOTSET, VALID, SAME_UPPER, SAME_LOWER",
                ))
            }
        };
        Ok((k, s, d, pads))
    }

    fn node(&mut self, n: &NodeProto, last: bool) -> Result<()> {
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

    fn compute(&mut self, n: &NodeProto, last: bool) -> Result<Val> {
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

    fn constant(&self, n: &NodeProto) -> Result<Val> {
        let a = n
            .attribute
            .first()
            .ok_or_else(|| self.unsupported(n, "no value", "a value attribute"))?;
        Ok(match a.name() {
            "value" => self.tensor(
                a.t.as_ref()
                    .ok_or_else(|| self.unsupported(n, "value without a tensor", "a tensor"))?,
            )?,
            "value_float" => Val::F(vec![], vec![a.f()]),
            "value_floats" => Val::F(vec![a.floats.len()], a.floats.clone()),
            "value_int" => Val::I(vec![], vec![Sym::N(a.i())]),
            "value_ints" => Val::I(
                vec![a.ints.len()],
                a.ints.iter().map(|&v| Sym::N(v)).collect(),
            ),
            other => {
                return Err(self.unsupported(
                    n,
                    format!("attribute {other}"),
                    "value, value_float(s), value_int(s)",
                ))
            }
        })
    }

    fn conv(&mut self, n: &NodeProto) -> Result<Val> {
        let x = self.var(n, 0)?;
        let (wd, w) = self.floats(n, 1)?;
        if wd.len() != 4 {
            return Err(self.unsupported(
                n,
                format!("a weight of shape {wd:?}"),
                "2-D convolutions (a 4-D weight)",
            ));
        }
        let shape = self.graph.shape(x).to_vec();
        let (_, stride, dilation, pads) = self.window(n, &shape, Some((wd[2], wd[3])))?;
        let groups = attr_i(n, "group", 1);
        if groups < 1 {
            return Err(self.unsupported(n, format!("group = {groups}"), "a positive group count"));
        }
        let bias = match self.input(n, 2)? {
            None => None,
            Some(_) => {
                let (bd, b) = self.floats(n, 2)?;
                if bd != [wd[0]] {
                    return Err(self.unsupported(
                        n,
                        format!("a bias of shape {bd:?}"),
                        format!("a bias of [{}]", wd[0]),
                    ));
                }
                Some(self.tensor_of(&bd, b)?)
            }
        };
        let cfg = ConvCfg {
            stride,
            pads,
            dilation,
            groups: groups as usize,
        };
        let conv = LipConv2d::new(self.tensor_of(&wd, w)?, bias, cfg, node_name(n))
            .map_err(|e| self.layer(e))?;
        self.push(n, Op::Conv(conv), vec![x])
    }

    fn batch_norm(&mut self, n: &NodeProto) -> Result<Val> {
        if attr_i(n, "training_mode", 0) != 0 || (self.opset < 7 && attr_i(n, "is_test", 0) == 0) {
            return Err(self.unsupported(n, "training mode", "inference (running statistics)"));
        }
        let x = self.var(n, 0)?;
        let eps = attr_f(n, "epsilon", 1e-5) as f64;
        let mut p = Vec::new();
        for i in 1..=4 {
            p.push(self.floats(n, i)?);
        }
        let c = p[0].1.len();
        if p.iter().any(|(d, v)| v.len() != c || d.len() != 1) {
            return Err(self.unsupported(
                n,
                "scale, bias, mean and variance of different lengths",
                "four vectors of the channel count",
            ));
        }
        let shape = self.graph.shape(x).to_vec();
        if shape.first() != Some(&c) {
            return Err(self.unsupported(
                n,
                format!("{c} channels for per-sample shape {shape:?}"),
                "one statistic per channel (axis 1)",
            ));
        }
        let [gamma, beta, mean, var] = [0, 1, 2, 3].map(|i| p[i].1.clone());
        if var.iter().any(|v| v.is_nan() || *v < 0.0) || eps.is_nan() || eps <= 0.0 {
            return Err(self.unsupported(
                n,
                "a negative or NaN variance, or epsilon <= 0",
                "non-negative variances and a positive epsilon",
            ));
        }
        let bn = |me: &Self, mean: Vec<f32>| -> Result<BatchNorm2d> {
            let t = |v: Vec<f32>| me.tensor_of(&[c], v);
            let var_ = |v: Vec<f32>| -> Result<Var> {
                Var::from_tensor(&t(v)?).map_err(|e| me.layer(e.into()))
            };
            BatchNorm2d::new(
                t(gamma.clone())?,
                t(beta.clone())?,
                var_(mean)?,
                var_(var.clone())?,
                eps,
                0.9,
            )
            .map_err(|e| me.layer(e))
        };
        if shape.len() == 3 {
            // After a convolution that nothing else reads: one operator for the bound. A conv bias b
            // moves into the mean: BN(Kx + b) uses mean - b.
            let input = n.input[0].clone();
            if let (Some(Op::Conv(conv)), true) = (
                self.graph.producer(x).map(|p| p.op.clone()),
                self.single_use(&input),
            ) {
                let mean = match conv.bias() {
                    None => mean.clone(),
                    Some(b) => {
                        let b: Vec<f32> = b.to_vec1().map_err(|e| self.layer(e.into()))?;
                        mean.iter().zip(b).map(|(m, b)| m - b).collect()
                    }
                };
                let name = self
                    .graph
                    .producer(x)
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                let bare = LipConv2d::new(conv.weight().clone(), None, *conv.cfg(), name)
                    .map_err(|e| self.layer(e))?
                    .with_output_scale(conv.output_scale());
                let fused = ConvBn::new(bare, bn(self, mean)?).map_err(|e| self.layer(e))?;
                self.graph
                    .replace(x, Op::ConvBn(fused))
                    .map_err(|e| self.layer(e))?;
                return Ok(Val::Var(x));
            }
            let b = bn(self, mean)?;
            return self.push(n, Op::BatchNorm(b), vec![x]);
        }
        // BN of a non-image activation: a per-channel scale and shift.
        let s: Vec<f64> = gamma
            .iter()
            .zip(&var)
            .map(|(g, v)| *g as f64 / (*v as f64 + eps).sqrt())
            .collect();
        let shift: Vec<f32> = beta
            .iter()
            .zip(&mean)
            .zip(&s)
            .map(|((b, m), s)| (*b as f64 - *m as f64 * s) as f32)
            .collect();
        let mut dims = vec![c];
        dims.extend(std::iter::repeat_n(1, shape.len() - 1));
        let scale = self.sample_const(n, &dims, s.iter().map(|&v| v as f32).collect(), x)?;
        let shift = self.sample_const(n, &dims, shift, x)?;
        let Val::Var(y) = self.push(n, Op::Scale(scale), vec![x])? else {
            unreachable!("push gives a value")
        };
        self.push(n, Op::Shift(shift), vec![y])
    }

    fn gemm(&mut self, n: &NodeProto) -> Result<Val> {
        let x = self.var(n, 0)?;
        if attr_i(n, "transA", 0) != 0 {
            return Err(self.unsupported(n, "transA = 1", "transA = 0 (samples as rows)"));
        }
        let (bd, b) = self.floats(n, 1)?;
        if bd.len() != 2 {
            return Err(self.unsupported(n, format!("B of shape {bd:?}"), "a 2-D B"));
        }
        let (alpha, beta) = (attr_f(n, "alpha", 1.0), attr_f(n, "beta", 1.0));
        let (out, inp) = if attr_i(n, "transB", 0) != 0 {
            (bd[0], bd[1])
        } else {
            (bd[1], bd[0])
        };
        let w: Vec<f32> = if attr_i(n, "transB", 0) != 0 {
            b.iter().map(|v| v * alpha).collect()
        } else {
            (0..out * inp)
                .map(|k| b[(k % inp) * out + k / inp] * alpha)
                .collect()
        };
        let bias = match self.input(n, 2)? {
            None => None,
            Some(_) => {
                let (cd, c) = self.floats(n, 2)?;
                if cd.iter().product::<usize>() == 1 {
                    Some(vec![c[0] * beta; out])
                } else if cd.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>() == [out] {
                    Some(c.iter().map(|v| v * beta).collect())
                } else {
                    return Err(self.unsupported(
                        n,
                        format!("C of shape {cd:?}"),
                        format!("a bias that broadcasts to [{out}]"),
                    ));
                }
            }
        };
        self.linear(n, x, out, inp, w, bias)
    }

    fn linear(
        &mut self,
        n: &NodeProto,
        x: usize,
        out: usize,
        inp: usize,
        w: Vec<f32>,
        bias: Option<Vec<f32>>,
    ) -> Result<Val> {
        let shape = self.graph.shape(x);
        if shape != [inp] {
            return Err(self.unsupported(
                n,
                format!("an input of per-sample shape {shape:?}"),
                format!("a vector of {inp} features (add a Flatten)"),
            ));
        }
        let bias = bias.map(|b| self.tensor_of(&[out], b)).transpose()?;
        let l = LipLinear::new(self.tensor_of(&[out, inp], w)?, bias, node_name(n))
            .map_err(|e| self.layer(e))?;
        self.push(n, Op::Linear(l), vec![x])
    }

    fn matmul(&mut self, n: &NodeProto) -> Result<Val> {
        let x = self.var(n, 0)?;
        let (bd, b) = self.floats(n, 1)?;
        if bd.len() != 2 {
            return Err(self.unsupported(
                n,
                format!("B of shape {bd:?}"),
                "x (N, in) times a constant (in, out)",
            ));
        }
        let (inp, out) = (bd[0], bd[1]);
        let w: Vec<f32> = (0..out * inp)
            .map(|k| b[(k % inp) * out + k / inp])
            .collect();
        self.linear(n, x, out, inp, w, None)
    }

    fn activation(&mut self, n: &NodeProto, a: Act) -> Result<Val> {
        let x = self.var(n, 0)?;
        self.push(n, Op::Activation(a), vec![x])
    }

    fn binary(&mut self, n: &NodeProto) -> Result<Val> {
        let op = n.op_type();
        let (a, b) = (self.need(n, 0)?, self.need(n, 1)?);
        match (&a, &b) {
            (Val::Var(x), Val::Var(y)) => match op {
                "Add" => self.push(n, Op::Add, vec![*x, *y]),
                "Sub" => self.push(n, Op::Sub, vec![*x, *y]),
                _ => Err(self.unsupported(n, "a product or quotient of two values that depend on the image", "multiplication and division by constants (no global Lipschitz bound exists otherwise)")),
            },
            (Val::Var(x), _) | (_, Val::Var(x)) => {
                let x = *x;
                let var_first = matches!(a, Val::Var(_));
                let (cd, c) = self.floats(n, if var_first { 1 } else { 0 })?;
                if !var_first && op == "Div" {
                    return Err(self.unsupported(n, "a constant divided by a value of the network", "division by constants"));
                }
                let input = n.input[if var_first { 0 } else { 1 }].clone();
                let producer = self.graph.producer(x).map(|p| p.op.clone());
                let scalar = c.len() == 1;
                match op {
                    "Mul" | "Div" => {
                        let c: Vec<f32> = if op == "Div" { c.iter().map(|v| 1.0 / v).collect() } else { c };
                        // A scalar after a bias-free convolution is its output scale (Parseval networks).
                        if let (Some(Op::Conv(conv)), true, true) = (&producer, scalar, self.single_use(&input)) {
                            if conv.bias().is_none() && conv.output_scale() == 1.0 && c[0].is_finite() {
                                let scaled = conv.clone().with_output_scale(c[0] as f64);
                                self.graph.replace(x, Op::Conv(scaled)).map_err(|e| self.layer(e))?;
                                return Ok(Val::Var(x));
                            }
                        }
                        let t = self.sample_const(n, &cd, c, x)?;
                        self.push(n, Op::Scale(t), vec![x])
                    }
                    "Add" | "Sub" => {
                        let c: Vec<f32> = if op == "Sub" && var_first { c.iter().map(|v| -v).collect() } else { c };
                        // MatMul + Add: the fully connected layer's bias (so Prop. 2 sees a last linear layer).
                        let plain_bias = |d: &[usize], out: usize| d.iter().copied().filter(|&d| d != 1).eq([out]);
                        if let (Some(Op::Linear(l)), true, true) = (&producer, self.single_use(&input), op == "Add" || var_first) {
                            let out = l.weight().dims()[0];
                            if l.bias().is_none() && plain_bias(&cd, out) {
                                let name = self.graph.producer(x).map(|p| p.name.clone()).unwrap_or_default();
                                let bias = Some(self.tensor_of(&[out], c.clone())?);
                                let with_bias = LipLinear::new(l.weight().clone(), bias, name).map_err(|e| self.layer(e))?;
                                self.graph.replace(x, Op::Linear(with_bias)).map_err(|e| self.layer(e))?;
                                return Ok(Val::Var(x));
                            }
                        }
                        let mut x = x;
                        if op == "Sub" && !var_first {
                            // c - x = (-1) x + c
                            let minus = self.sample_const(n, &[], vec![-1.0], x)?;
                            let Val::Var(y) = self.push(n, Op::Scale(minus), vec![x])? else { unreachable!("push gives a value") };
                            x = y;
                        }
                        let t = self.sample_const(n, &cd, c, x)?;
                        self.push(n, Op::Shift(t), vec![x])
                    }
                    _ => unreachable!("binary ops"),
                }
            }
            _ => self.fold_binary(n, a, b),
        }
    }

    /// Add, Sub, Mul or Div of two constants (with broadcasting).
    fn fold_binary(&self, n: &NodeProto, a: Val, b: Val) -> Result<Val> {
        let op = n.op_type();
        let dims = |v: &Val| match v {
            Val::F(d, _) | Val::I(d, _) => d.clone(),
            Val::Var(_) => vec![],
        };
        let (da, db) = (dims(&a), dims(&b));
        let shape = broadcast(&da, &db).ok_or_else(|| {
            self.unsupported(
                n,
                format!("shapes {da:?} and {db:?}"),
                "shapes that broadcast",
            )
        })?;
        let count: usize = shape.iter().product();
        match (&a, &b) {
            (Val::I(_, x), Val::I(_, y)) => {
                let (x, y) = (self.known(n, x)?, self.known(n, y)?);
                let v = (0..count).map(|i| {
                    let (p, q) = (
                        x[source_index(i, &shape, &da)],
                        y[source_index(i, &shape, &db)],
                    );
                    match op {
                        "Add" => Ok(p + q),
                        "Sub" => Ok(p - q),
                        "Mul" => Ok(p * q),
                        _ if q != 0 => Ok(p.div_euclid(q)),
                        _ => Err(self.unsupported(
                            n,
                            "an integer division by zero",
                            "non-zero divisors",
                        )),
                    }
                });
                let v = v.map(|r| r.map(Sym::N)).collect::<Result<_>>()?;
                Ok(Val::I(shape, v))
            }
            _ => {
                let (x, y) = (self.floats(n, 0)?.1, self.floats(n, 1)?.1);
                let v = (0..count).map(|i| {
                    let (p, q) = (
                        x[source_index(i, &shape, &da)],
                        y[source_index(i, &shape, &db)],
                    );
                    match op {
                        "Add" => p + q,
                        "Sub" => p - q,
                        "Mul" => p * q,
                        _ => p / q,
                    }
                });
                let v = v.collect();
                Ok(Val::F(shape, v))
            }
        }
    }

    fn pool(&mut self, n: &NodeProto) -> Result<Val> {
        let x = self.var(n, 0)?;
        let shape = self.graph.shape(x).to_vec();
        let (k, s, d, pads) = self.window(n, &shape, None)?;
        if d != (1, 1) {
            return Err(self.unsupported(
                n,
                format!("dilations {d:?}"),
                "pooling without dilation",
            ));
        }
        if attr_i(n, "storage_order", 0) != 0 {
            return Err(self.unsupported(n, "storage_order = 1", "storage_order = 0"));
        }
        if attr_i(n, "ceil_mode", 0) != 0 {
            let differs = |size: usize, k: usize, s: usize, p: usize| (size + p - k) % s != 0;
            if differs(shape[1], k.0, s.0, pads[0] + pads[2])
                || differs(shape[2], k.1, s.1, pads[1] + pads[3])
            {
                return Err(self.unsupported(
                    n,
                    "ceil_mode = 1 with a partial last window",
                    "ceil_mode = 0, or sizes where it makes no difference",
                ));
            }
        }
        let kind = if n.op_type() == "MaxPool" {
            PoolKind::Max
        } else {
            PoolKind::Avg
        };
        let cfg = PoolCfg {
            kernel: k,
            stride: s,
            pads,
            count_include_pad: attr_i(n, "count_include_pad", 0) != 0,
        };
        let p = Pool2d::general(kind, cfg).map_err(|e| self.layer(e))?;
        self.push(n, Op::Pool(p), vec![x])
    }

    fn reduce_mean(&mut self, n: &NodeProto) -> Result<Val> {
        let x = self.var(n, 0)?;
        let shape = self.graph.shape(x).to_vec();
        let axes = if self.opset >= 18 {
            match self.input(n, 1)? {
                None => None,
                Some(_) => Some(self.known(n, &self.ints(n, 1)?.1)?),
            }
        } else {
            attr_ints(n, "axes")
        };
        let r = self.onnx_rank(x);
        let mut axes: Vec<usize> = axes
            .ok_or_else(|| self.unsupported(n, "a mean over every axis", "a mean over H and W"))?
            .iter()
            .map(|&a| self.sample_axis(n, a, r))
            .collect::<Result<_>>()?;
        axes.sort_unstable();
        if shape.len() != 3 || axes != [1, 2] {
            return Err(self.unsupported(
                n,
                format!("a mean over sample axes {axes:?} of {shape:?}"),
                "a mean over H and W of (C, H, W) (global average pooling)",
            ));
        }
        let cfg = PoolCfg {
            kernel: (shape[1], shape[2]),
            stride: (1, 1),
            pads: [0; 4],
            count_include_pad: true,
        };
        let p = Pool2d::general(PoolKind::Avg, cfg).map_err(|e| self.layer(e))?;
        let y = self.push(n, Op::Pool(p), vec![x])?;
        if attr_i(n, "keepdims", 1) == 0 {
            let Val::Var(y) = y else {
                unreachable!("push gives a value")
            };
            return self.push(n, Op::Reshape(vec![shape[0]]), vec![y]);
        }
        Ok(y)
    }

    fn pad(&mut self, n: &NodeProto) -> Result<Val> {
        let x = self.var(n, 0)?;
        let mode = attr_s(n, "mode").unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(self.unsupported(n, format!("mode {mode}"), "constant (zero) padding"));
        }
        let r = self.onnx_rank(x);
        let (pads, value) = if self.opset < 11 {
            (
                attr_ints(n, "pads").unwrap_or_default(),
                attr_f(n, "value", 0.0),
            )
        } else {
            let p = self.known(n, &self.ints(n, 1)?.1)?;
            let v = match self.input(n, 2)? {
                None => 0.0,
                Some(_) => self.floats(n, 2)?.1.first().copied().unwrap_or(0.0),
            };
            (p, v)
        };
        if value != 0.0 {
            return Err(self.unsupported(n, format!("constant value {value}"), "zero padding"));
        }
        let axes: Vec<i64> = match self.input(n, 3)? {
            Some(_) => self.known(n, &self.ints(n, 3)?.1)?,
            None => (0..r as i64).collect(),
        };
        if pads.len() != 2 * axes.len() || pads.iter().any(|&p| p < 0) {
            return Err(self.unsupported(
                n,
                format!("pads {pads:?} for axes {axes:?}"),
                "non-negative pads [begin..., end...] for each axis",
            ));
        }
        let mut per = vec![(0usize, 0usize); self.graph.shape(x).len()];
        for (i, &axis) in axes.iter().enumerate() {
            let (b, e) = (pads[i] as usize, pads[i + axes.len()] as usize);
            if b + e == 0 {
                continue;
            }
            let a = self.sample_axis(n, axis, r)?;
            per[a] = (b, e);
        }
        self.push(n, Op::Pad(per), vec![x])
    }

    fn flatten(&mut self, n: &NodeProto) -> Result<Val> {
        let x = self.need(n, 0)?;
        let Val::Var(x) = x else {
            return Err(self.unsupported(n, "a constant", "a value of the network"));
        };
        let s = self.graph.shape(x).to_vec();
        let r = self.onnx_rank(x) as i64;
        let axis = attr_i(n, "axis", 1);
        let axis = if axis < 0 { axis + r } else { axis };
        let target = if self.batched {
            // (N, d1, ..., dk) -> (N d1 .. d_{axis-1}, ...): per sample only when nothing joins the batch.
            if axis < 1
                || s[..(axis as usize - 1).min(s.len())]
                    .iter()
                    .product::<usize>()
                    != 1
            {
                return Err(self.unsupported(
                    n,
                    format!("Flatten axis {axis} of a batch of {s:?}"),
                    "axis 1 (flattening within each sample)",
                ));
            }
            vec![s.iter().product()]
        } else {
            let a = axis.clamp(0, r) as usize;
            vec![s[..a].iter().product(), s[a..].iter().product()]
        };
        self.push(n, Op::Reshape(target), vec![x])
    }

    fn reshape(&mut self, n: &NodeProto) -> Result<Val> {
        let data = self.need(n, 0)?;
        let (_, target) = self.ints(n, 1)?;
        let allow_zero = attr_i(n, "allowzero", 0) != 0;
        match data {
            Val::Var(x) => {
                let s = self.graph.shape(x).to_vec();
                let mut t = target.clone();
                if self.batched {
                    let first = t.first().copied();
                    let batch_like = match first {
                        Some(Sym::Batch) | Some(Sym::N(-1)) => true,
                        Some(Sym::N(0)) => !allow_zero,
                        Some(Sym::N(v)) => Some(v) == self.declared_batch,
                        None => false,
                    };
                    if !batch_like {
                        return Err(self.unsupported(
                            n,
                            format!("a target shape {target:?} whose first entry is not the batch"),
                            "reshapes within each sample, e.g. x.view(x.size(0), -1)",
                        ));
                    }
                    t.remove(0);
                }
                let size: usize = s.iter().product();
                let mut dims = Vec::new();
                let mut infer = None;
                for (i, v) in t.iter().enumerate() {
                    match *v {
                        Sym::N(-1) if infer.is_none() => {
                            infer = Some(i);
                            dims.push(1);
                        }
                        Sym::N(0) if !allow_zero => dims.push(*s.get(i).ok_or_else(|| {
                            self.unsupported(
                                n,
                                format!("0 copies axis {i} of {s:?}"),
                                "an existing axis",
                            )
                        })?),
                        Sym::N(v) if v > 0 => dims.push(v as usize),
                        _ => {
                            return Err(self.unsupported(
                                n,
                                format!("target shape {target:?}"),
                                "positive sizes, one -1, 0 to copy",
                            ))
                        }
                    }
                }
                if let Some(i) = infer {
                    let rest: usize = dims.iter().product();
                    if rest == 0 || size % rest != 0 {
                        return Err(self.unsupported(
                            n,
                            format!("{s:?} into {target:?}"),
                            "a shape with the same number of values",
                        ));
                    }
                    dims[i] = size / rest;
                }
                self.push(n, Op::Reshape(dims), vec![x])
            }
            c => {
                let t = self.known(n, &target)?;
                let (dims_in, count) = match &c {
                    Val::F(d, _) | Val::I(d, _) => (d.clone(), d.iter().product::<usize>()),
                    Val::Var(_) => unreachable!("handled above"),
                };
                let mut dims: Vec<usize> = Vec::new();
                let mut infer = None;
                for (i, &v) in t.iter().enumerate() {
                    match v {
                        -1 => {
                            infer = Some(i);
                            dims.push(1)
                        }
                        0 if !allow_zero => dims.push(dims_in.get(i).copied().unwrap_or(1)),
                        v if v >= 0 => dims.push(v as usize),
                        _ => {
                            return Err(self.unsupported(
                                n,
                                format!("target {t:?}"),
                                "a valid shape",
                            ))
                        }
                    }
                }
                if let Some(i) = infer {
                    let rest: usize = dims.iter().product();
                    dims[i] = count / rest.max(1);
                }
                if dims.iter().product::<usize>() != count {
                    return Err(self.unsupported(
                        n,
                        format!("{dims_in:?} into {t:?}"),
                        "the same number of values",
                    ));
                }
                Ok(match c {
                    Val::F(_, v) => Val::F(dims, v),
                    Val::I(_, v) => Val::I(dims, v),
                    Val::Var(_) => unreachable!("handled above"),
                })
            }
        }
    }

    fn squeeze(&mut self, n: &NodeProto) -> Result<Val> {
        let unsqueeze = n.op_type() == "Unsqueeze";
        let data = self.need(n, 0)?;
        let axes: Option<Vec<i64>> = if self.opset >= 13 {
            match self.input(n, 1)? {
                None => None,
                Some(_) => Some(self.known(n, &self.ints(n, 1)?.1)?),
            }
        } else {
            attr_ints(n, "axes")
        };
        let (dims, rank) = match &data {
            Val::Var(v) => {
                let mut d: Vec<usize> = if self.batched { vec![0] } else { vec![] };
                d.extend_from_slice(self.graph.shape(*v));
                let r = d.len();
                (d, r)
            }
            Val::F(d, _) | Val::I(d, _) => (d.clone(), d.len()),
        };
        let out_rank = if unsqueeze {
            rank + axes.as_ref().map_or(0, Vec::len)
        } else {
            rank
        };
        let norm = |a: i64, r: usize| if a < 0 { a + r as i64 } else { a };
        let new_dims: Vec<usize> = if unsqueeze {
            let axes = axes.ok_or_else(|| self.unsupported(n, "no axes", "axes"))?;
            let mut axes: Vec<i64> = axes.iter().map(|&a| norm(a, out_rank)).collect();
            axes.sort_unstable();
            let mut out = dims.clone();
            for a in axes {
                if a < 0 || a as usize > out.len() {
                    return Err(self.unsupported(
                        n,
                        format!("axis {a}"),
                        "axes within the output rank",
                    ));
                }
                out.insert(a as usize, 1);
            }
            out
        } else {
            let drop: Vec<usize> = match axes {
                Some(axes) => axes.iter().map(|&a| norm(a, rank) as usize).collect(),
                None => (0..rank)
                    .filter(|&i| {
                        dims[i] == 1 && !(self.batched && i == 0 && matches!(data, Val::Var(_)))
                    })
                    .collect(),
            };
            if drop.iter().any(|&i| {
                i >= rank
                    || (dims[i] != 1 && !(matches!(data, Val::Var(_)) && self.batched && i == 0))
            }) {
                return Err(self.unsupported(
                    n,
                    format!("axes {drop:?} of {dims:?}"),
                    "axes of size 1",
                ));
            }
            (0..rank)
                .filter(|i| !drop.contains(i))
                .map(|i| dims[i])
                .collect()
        };
        match data {
            Val::Var(x) => {
                if self.batched && (new_dims.first() != Some(&0) || new_dims[1..].contains(&0)) {
                    return Err(self.unsupported(
                        n,
                        "a squeeze or unsqueeze of the batch axis",
                        "axes within each sample",
                    ));
                }
                let sample = new_dims[self.batched as usize..].to_vec();
                self.push(n, Op::Reshape(sample), vec![x])
            }
            Val::F(_, v) => Ok(Val::F(new_dims, v)),
            Val::I(_, v) => Ok(Val::I(new_dims, v)),
        }
    }

    fn transpose(&mut self, n: &NodeProto) -> Result<Val> {
        let x = self.var(n, 0)?;
        let r = self.onnx_rank(x);
        let perm = attr_ints(n, "perm").unwrap_or_else(|| (0..r as i64).rev().collect());
        if perm.len() != r {
            return Err(self.unsupported(
                n,
                format!("perm {perm:?} for rank {r}"),
                "a permutation of every axis",
            ));
        }
        let per: Vec<usize> = if self.batched {
            if perm[0] != 0 {
                return Err(self.unsupported(
                    n,
                    format!("perm {perm:?} moves the batch axis"),
                    "permutations within each sample",
                ));
            }
            perm[1..]
                .iter()
                .map(|&p| (p as usize).wrapping_sub(1))
                .collect()
        } else {
            perm.iter().map(|&p| p as usize).collect()
        };
        self.push(n, Op::Transpose(per), vec![x])
    }

    fn concat(&mut self, n: &NodeProto) -> Result<Val> {
        let vals: Vec<Val> = (0..n.input.len())
            .map(|i| self.need(n, i))
            .collect::<Result<_>>()?;
        let axis = attr_i(n, "axis", 0);
        if vals.iter().all(|v| matches!(v, Val::Var(_))) {
            let xs: Vec<usize> = vals
                .iter()
                .map(|v| if let Val::Var(x) = v { *x } else { 0 })
                .collect();
            let a = self.sample_axis(n, axis, self.onnx_rank(xs[0]))?;
            return self.push(n, Op::Concat(a), xs);
        }
        if vals.iter().any(|v| matches!(v, Val::Var(_))) {
            return Err(self.unsupported(
                n,
                "a concatenation of network values with constants",
                "all inputs from the network, or all constants",
            ));
        }
        let dims = |v: &Val| match v {
            Val::F(d, _) | Val::I(d, _) => d.clone(),
            Val::Var(_) => vec![],
        };
        let d0 = dims(&vals[0]);
        let r = d0.len() as i64;
        let a = (if axis < 0 { axis + r } else { axis }) as usize;
        if a >= d0.len().max(1) || vals.iter().any(|v| dims(v).len() != d0.len()) {
            return Err(self.unsupported(
                n,
                format!("axis {axis} for constants of rank {r}"),
                "constants of equal rank",
            ));
        }
        let outer: usize = d0[..a].iter().product();
        let mut out_dims = d0.clone();
        out_dims[a] = vals.iter().map(|v| dims(v)[a]).sum();
        let ints = vals.iter().all(|v| matches!(v, Val::I(..)));
        let block = |v: &Val| dims(v)[a..].iter().product::<usize>();
        if ints {
            let mut out = Vec::new();
            for o in 0..outer {
                for v in &vals {
                    if let Val::I(_, d) = v {
                        out.extend_from_slice(&d[o * block(v)..(o + 1) * block(v)]);
                    }
                }
            }
            Ok(Val::I(out_dims, out))
        } else {
            let fl: Vec<Vec<f32>> = (0..vals.len())
                .map(|i| self.floats(n, i).map(|f| f.1))
                .collect::<Result<_>>()?;
            let mut out = Vec::new();
            for o in 0..outer {
                for (v, f) in vals.iter().zip(&fl) {
                    out.extend_from_slice(&f[o * block(v)..(o + 1) * block(v)]);
                }
            }
            Ok(Val::F(out_dims, out))
        }
    }

    fn gather(&self, n: &NodeProto) -> Result<Val> {
        let data = self.need(n, 0)?;
        let (id, idx) = self.ints(n, 1)?;
        let idx = self.known(n, &idx)?;
        let (dd, r) = match &data {
            Val::F(d, _) | Val::I(d, _) => (d.clone(), d.len()),
            Val::Var(_) => unreachable!("constants only"),
        };
        let axis = attr_i(n, "axis", 0);
        let a = (if axis < 0 { axis + r as i64 } else { axis }) as usize;
        if a >= r {
            return Err(self.unsupported(
                n,
                format!("axis {axis} of rank {r}"),
                "an existing axis",
            ));
        }
        let (outer, len, inner) = (
            dd[..a].iter().product::<usize>(),
            dd[a],
            dd[a + 1..].iter().product::<usize>(),
        );
        let idx: Vec<usize> = idx
            .iter()
            .map(|&i| {
                let j = if i < 0 { i + len as i64 } else { i };
                (0..len as i64)
                    .contains(&j)
                    .then_some(j as usize)
                    .ok_or_else(|| {
                        self.unsupported(n, format!("index {i} of {len}"), "indices in range")
                    })
            })
            .collect::<Result<_>>()?;
        let mut out_dims = dd[..a].to_vec();
        out_dims.extend_from_slice(&id);
        out_dims.extend_from_slice(&dd[a + 1..]);
        let pick = |o: usize, i: usize, k: usize| (o * len + i) * inner + k;
        let order: Vec<usize> = (0..outer)
            .flat_map(|o| {
                idx.iter()
                    .flat_map(move |&i| (0..inner).map(move |k| pick(o, i, k)))
            })
            .collect();
        Ok(match data {
            Val::F(_, v) => Val::F(out_dims, order.iter().map(|&p| v[p]).collect()),
            Val::I(_, v) => Val::I(out_dims, order.iter().map(|&p| v[p]).collect()),
            Val::Var(_) => unreachable!("constants only"),
        })
    }

    fn slice(&self, n: &NodeProto) -> Result<Val> {
        let data = self.need(n, 0)?;
        let dd = match &data {
            Val::F(d, _) | Val::I(d, _) => d.clone(),
            Val::Var(_) => unreachable!("constants only"),
        };
        let list = |i: usize, name: &str| -> Result<Option<Vec<i64>>> {
            if self.opset < 10 {
                return Ok(attr_ints(n, name));
            }
            match self.input(n, i)? {
                None => Ok(None),
                Some(_) => Ok(Some(self.known(n, &self.ints(n, i)?.1)?)),
            }
        };
        let starts = list(1, "starts")?.unwrap_or_default();
        let ends = list(2, "ends")?.unwrap_or_default();
        let axes = list(3, "axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
        let steps = list(4, "steps")?.unwrap_or_else(|| vec![1; starts.len()]);
        if dd.len() != 1 || starts.len() != 1 || ends.len() != 1 || axes != [0] || steps != [1] {
            return Err(self.unsupported(
                n,
                "a slice of a constant of several axes or with steps",
                "one-axis slices of shape vectors",
            ));
        }
        let len = dd[0] as i64;
        let clamp = |v: i64| (if v < 0 { v + len } else { v }).clamp(0, len) as usize;
        let (s, e) = (clamp(starts[0]), clamp(ends[0]));
        let e = e.max(s);
        Ok(match data {
            Val::F(_, v) => Val::F(vec![e - s], v[s..e].to_vec()),
            Val::I(_, v) => Val::I(vec![e - s], v[s..e].to_vec()),
            Val::Var(_) => unreachable!("constants only"),
        })
    }
}
