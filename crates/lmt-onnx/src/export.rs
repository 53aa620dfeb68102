//! [`Graph`] -> ONNX (opset 13): one standard node per layer, weights as initializers, a symbolic batch
//! axis `N`, so onnxruntime and other verifiers read lmt-rs models and [`crate::import`] reads them back
//! into the same layers.

use candle_core::Tensor;
use lmt_models::{Act, Graph, Op, PoolKind};
use prost::Message;

use crate::error::{OnnxError, Result};
use crate::proto::{
    self, attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, NodeProto, TensorProto, ValueInfoProto,
};

/// The opset exported files declare.
pub const EXPORT_OPSET: i64 = 13;

struct Writer {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}
fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}
fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

fn value_info(name: &str, sample: &[usize]) -> ValueInfoProto {
    let mut dim = vec![tensor_shape_proto::Dimension {
        value: Some(tensor_shape_proto::dimension::Value::DimParam("N".into())),
        ..Default::default()
    }];
    dim.extend(sample.iter().map(|&d| tensor_shape_proto::Dimension {
        value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
        ..Default::default()
    }));
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(proto::TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(proto::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Writer {
    fn floats(&mut self, name: String, t: &Tensor) -> Result<String> {
        let v: Vec<f32> = t
            .flatten_all()
            .and_then(|t| t.to_dtype(candle_core::DType::F32))
            .and_then(|t| t.to_vec1())
            .map_err(|e| OnnxError::Layer {
                origin: "export".into(),
                source: e.into(),
            })?;
        self.inits.push(TensorProto {
            name: Some(name.clone()),
            dims: t.dims().iter().map(|&d| d as i64).collect(),
            data_type: Some(DataType::Float as i32),
            raw_data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            ..Default::default()
        });
        Ok(name)
    }

    fn scalar(&mut self, name: String, v: f32) -> String {
        self.inits.push(TensorProto {
            name: Some(name.clone()),
            dims: vec![],
            data_type: Some(DataType::Float as i32),
            raw_data: Some(v.to_le_bytes().to_vec()),
            ..Default::default()
        });
        name
    }

    fn int64s(&mut self, name: String, v: &[i64]) -> String {
        self.inits.push(TensorProto {
            name: Some(name.clone()),
            dims: vec![v.len() as i64],
            data_type: Some(DataType::Int64 as i32),
            raw_data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            ..Default::default()
        });
        name
    }

    fn node(
        &mut self,
        name: &str,
        op: &str,
        inputs: Vec<String>,
        output: &str,
        attribute: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            name: Some(name.into()),
            op_type: Some(op.into()),
            input: inputs,
            output: vec![output.into()],
            attribute,
            ..Default::default()
        });
    }
}

fn err(e: candle_core::Error) -> OnnxError {
    OnnxError::Layer {
        origin: "export".into(),
        source: e.into(),
    }
}

/// Writes `graph` as an ONNX model named `name`; the input is `input` (N, sample...), the output
/// `logits` (N, classes).
pub fn export(graph: &Graph, name: &str) -> Result<Vec<u8>> {
    let mut w = Writer {
        nodes: Vec::new(),
        inits: Vec::new(),
    };
    let last = graph.nodes().len();
    let value = |v: usize| -> String {
        match v {
            0 => "input".into(),
            v if v == last => "logits".into(),
            v => format!("v{v}"),
        }
    };
    for (i, node) in graph.nodes().iter().enumerate() {
        let out = value(i + 1);
        let x = value(node.inputs[0]);
        let p = format!("n{}_{}", i + 1, node.name);
        let conv_node =
            |w: &mut Writer, conv: &lmt_models::LipConv2d, x: String, out: &str| -> Result<()> {
                let cfg = conv.cfg();
                let (_, _, kh, kw) = conv.weight().dims4().map_err(err)?;
                let mut inputs = vec![x, w.floats(format!("{p}.weight"), conv.weight())?];
                if let Some(b) = conv.bias() {
                    inputs.push(w.floats(format!("{p}.bias"), b)?);
                }
                let attrs = vec![
                    attr_ints("kernel_shape", &[kh as i64, kw as i64]),
                    attr_ints("strides", &[cfg.stride.0 as i64, cfg.stride.1 as i64]),
                    attr_ints("pads", &cfg.pads.map(|p| p as i64)),
                    attr_ints("dilations", &[cfg.dilation.0 as i64, cfg.dilation.1 as i64]),
                    attr_int("group", cfg.groups as i64),
                ];
                if conv.output_scale() == 1.0 {
                    w.node(&node.name, "Conv", inputs, out, attrs);
                } else {
                    let mid = format!("{p}.unscaled");
                    w.node(&node.name, "Conv", inputs, &mid, attrs);
                    let s = w.scalar(format!("{p}.output_scale"), conv.output_scale() as f32);
                    w.node(
                        &format!("{}.scale", node.name),
                        "Mul",
                        vec![mid, s],
                        out,
                        vec![],
                    );
                }
                Ok(())
            };
        let bn_node =
            |w: &mut Writer, bn: &lmt_models::BatchNorm2d, x: String, out: &str| -> Result<()> {
                let inputs = vec![
                    x,
                    w.floats(format!("{p}.bn.weight"), bn.gamma())?,
                    w.floats(format!("{p}.bn.bias"), bn.beta())?,
                    w.floats(
                        format!("{p}.bn.running_mean"),
                        bn.running_mean().as_tensor(),
                    )?,
                    w.floats(format!("{p}.bn.running_var"), bn.running_var().as_tensor())?,
                ];
                w.node(
                    &format!("{}.bn", node.name),
                    "BatchNormalization",
                    inputs,
                    out,
                    vec![attr_float("epsilon", bn.eps() as f32)],
                );
                Ok(())
            };
        match &node.op {
            Op::Conv(c) => conv_node(&mut w, c, x, &out)?,
            Op::ConvBn(cb) => {
                let mid = format!("{p}.conv");
                conv_node(&mut w, cb.conv(), x, &mid)?;
                bn_node(&mut w, cb.bn(), mid, &out)?;
            }
            Op::BatchNorm(b) => bn_node(&mut w, b, x, &out)?,
            Op::Linear(l) => {
                let mut inputs = vec![x, w.floats(format!("{p}.weight"), l.weight())?];
                if let Some(b) = l.bias() {
                    inputs.push(w.floats(format!("{p}.bias"), b)?);
                }
                w.node(
                    &node.name,
                    "Gemm",
                    inputs,
                    &out,
                    vec![attr_int("transB", 1)],
                );
            }
            Op::Scale(c) | Op::Shift(c) => {
                let kind = if matches!(node.op, Op::Scale(_)) {
                    "Mul"
                } else {
                    "Add"
                };
                let c = w.floats(format!("{p}.constant"), c)?;
                w.node(&node.name, kind, vec![x, c], &out, vec![]);
            }
            Op::Activation(a) => match a {
                Act::Relu => w.node(&node.name, "Relu", vec![x], &out, vec![]),
                Act::Sigmoid => w.node(&node.name, "Sigmoid", vec![x], &out, vec![]),
                Act::Tanh => w.node(&node.name, "Tanh", vec![x], &out, vec![]),
                Act::LeakyRelu(alpha) => w.node(
                    &node.name,
                    "LeakyRelu",
                    vec![x],
                    &out,
                    vec![attr_float("alpha", *alpha)],
                ),
                Act::Clip(lo, hi) => {
                    let (lo, hi) = (
                        w.scalar(format!("{p}.min"), *lo),
                        w.scalar(format!("{p}.max"), *hi),
                    );
                    w.node(&node.name, "Clip", vec![x, lo, hi], &out, vec![]);
                }
                Act::MinMax => {
                    return Err(OnnxError::Unsupported {
                        origin: "export".into(),
                        node: node.name.clone(),
                        op: "MinMax".into(),
                        found: "MinMax has no single ONNX op, and lmt-rs does not yet read the Split/Max/Min pattern it would become".into(),
                        supported: "ReLU, LeakyReLU, sigmoid, tanh and clip activations".into(),
                    })
                }
            },
            Op::Pool(pool) => {
                let cfg = pool.cfg();
                let mut attrs = vec![
                    attr_ints("kernel_shape", &[cfg.kernel.0 as i64, cfg.kernel.1 as i64]),
                    attr_ints("strides", &[cfg.stride.0 as i64, cfg.stride.1 as i64]),
                    attr_ints("pads", &cfg.pads.map(|p| p as i64)),
                ];
                let kind = match pool.kind() {
                    PoolKind::Max => "MaxPool",
                    PoolKind::Avg => {
                        attrs.push(attr_int("count_include_pad", cfg.count_include_pad as i64));
                        "AveragePool"
                    }
                };
                w.node(&node.name, kind, vec![x], &out, attrs);
            }
            Op::Pad(pads) => {
                let mut v: Vec<i64> = vec![0];
                v.extend(pads.iter().map(|p| p.0 as i64));
                v.push(0);
                v.extend(pads.iter().map(|p| p.1 as i64));
                let pads = w.int64s(format!("{p}.pads"), &v);
                w.node(&node.name, "Pad", vec![x, pads], &out, vec![]);
            }
            Op::Reshape(s) => {
                let mut v = vec![-1i64];
                v.extend(s.iter().map(|&d| d as i64));
                let shape = w.int64s(format!("{p}.shape"), &v);
                w.node(&node.name, "Reshape", vec![x, shape], &out, vec![]);
            }
            Op::Transpose(perm) => {
                let mut v = vec![0i64];
                v.extend(perm.iter().map(|&d| d as i64 + 1));
                w.node(
                    &node.name,
                    "Transpose",
                    vec![x],
                    &out,
                    vec![attr_ints("perm", &v)],
                );
            }
            Op::Add | Op::Sub => {
                let kind = if matches!(node.op, Op::Add) {
                    "Add"
                } else {
                    "Sub"
                };
                w.node(
                    &node.name,
                    kind,
                    vec![x, value(node.inputs[1])],
                    &out,
                    vec![],
                );
            }
            Op::Concat(axis) => {
                let inputs = node.inputs.iter().map(|&v| value(v)).collect();
                w.node(
                    &node.name,
                    "Concat",
                    inputs,
                    &out,
                    vec![attr_int("axis", *axis as i64 + 1)],
                );
            }
        }
    }
    let model = proto::ModelProto {
        ir_version: Some(8),
        producer_name: Some("lmt-rs".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        opset_import: vec![proto::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(EXPORT_OPSET),
        }],
        graph: Some(proto::GraphProto {
            name: Some(name.into()),
            node: w.nodes,
            initializer: w.inits,
            input: vec![value_info("input", graph.input_shape())],
            output: vec![value_info("logits", &[graph.classes()])],
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}
