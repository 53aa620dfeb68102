//! ONNX image classifiers in and out of lmt-rs.
//!
//! [`load`] reads what `torch.onnx.export` writes for ordinary image classifiers (both exporters, opsets
//! 9 and up) into an [`lmt_models::Graph`]: every node becomes one of the Lipschitz-aware layers the
//! built-in networks use (convolutions with any stride, padding, dilation and groups; fully connected
//! layers; batch norm, fused into the convolution before it where it can be; pooling; activations;
//! constant shifts and scales such as input normalisation, which are part of the network and of its
//! bound; residual additions and concatenations), so each node's certified bound comes from lmt-core and
//! the graph combines them. Constants and shape arithmetic are folded. Anything that cannot be bounded
//! soundly is an error naming the node, what was found and what is supported; a final softmax is
//! dropped with a note, since certificates are on logits. [`export`] writes a graph (a built-in network's
//! [`lmt_models::Classifier::to_graph`]) as ONNX for onnxruntime and other verifiers.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use lmt_core::CertifiedBound;
//! use lmt_models::{Act, Classifier, CertifyMethod, Ctx, Graph, Lip, LipLinear, Op};
//! // A two-layer MLP on 4 inputs, written out and read back.
//! let dev = Device::Cpu;
//! let mut g = Graph::new(vec![4])?;
//! let w1 = Tensor::new(&[[1f32, 0., 0., 0.], [0., 2., 0., 0.], [0., 0., 0., 3.]], &dev)?;
//! let h = g.push("fc1", Op::Linear(LipLinear::new(w1, None, "fc1")?), vec![0])?;
//! let h = g.push("relu", Op::Activation(Act::Relu), vec![h])?;
//! let w2 = Tensor::new(&[[1f32, 1., 0.], [0., 0., 1.]], &dev)?;
//! g.push("fc2", Op::Linear(LipLinear::new(w2, None, "fc2")?), vec![h])?;
//! let bytes = lmt_onnx::export(&g.finish()?, "mlp")?;
//! let back = lmt_onnx::import(&bytes, "mlp.onnx", None)?.graph;
//! let x = Tensor::zeros((1, 4), candle_core::DType::F32, &dev)?;
//! let out = back.forward(&x, Lip::Certified(CertifiedBound::one()), &Ctx::eval(CertifyMethod::Dense))?;
//! // L_sub = ‖W1‖ = 3 (below the last layer), L = 3 ‖W2‖ = 3 sqrt(2).
//! assert!((out.l_sub.certified().unwrap().value() - 3.0).abs() < 1e-6);
//! assert!((out.l.certified().unwrap().value() - 3.0 * 2f64.sqrt()).abs() < 1e-6);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! **Invariant:** the protobuf schema is compiled in pure Rust at build time (protox + prost-build); no
//! system `protoc`.
#![deny(missing_docs)]

pub use error::{OnnxError, Result};
pub use export::{export, EXPORT_OPSET};
pub use import::{import, load, Imported, OPSETS, SUPPORTED_OPS};

mod error;
mod export;
mod import;
mod proto;
