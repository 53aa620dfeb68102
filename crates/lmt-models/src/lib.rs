//! Lipschitz-aware layers on candle for lmt-rs.
//!
//! Every layer implements [`LipModule`]: it maps `(x, lip)` to `(y, lip')`, carrying the Lipschitz
//! number beside the activation exactly as the paper computes it, layer by layer in forward order
//! (composition multiplies, residual addition adds, concatenation takes sqrt of the sum of squares). The
//! caller picks what travels: [`Lip::None`], a train-time [`Lip::Estimate`] (one power-iteration step per
//! layer, Alg. 2) or a [`Lip::Certified`] bound (by [`CertifyMethod`], once per trained model). So any
//! topology the forward pass can express gets its bound with no separate graph description.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use lmt_core::CertifiedBound;
//! use lmt_models::{CertifyMethod, Ctx, Lip, LipLinear, LipModule};
//! let w = Tensor::new(&[[3f32, 0.0], [0.0, 4.0]], &Device::Cpu)?;
//! let fc = LipLinear::new(w, None, "fc")?;
//! let x = Tensor::new(&[[1f32, 1.0]], &Device::Cpu)?;
//! let (_, lip) = fc.forward_lip(&x, Lip::Certified(CertifiedBound::one()), &Ctx::eval(CertifyMethod::Dense))?;
//! assert!((lip.certified().unwrap().value() - 4.0).abs() < 1e-6);
//! # Ok::<(), lmt_models::ModelError>(())
//! ```
//!
//! **Invariant:** depends on lmt-core only (of our crates); the certified numbers come from lmt-core.
#![deny(missing_docs)]

pub use batch_norm::BatchNorm2d;
pub use channel::{add_channel_bias, channel_sum, mul_channel};
pub use conv::{conv_certified, grouped_certified, ConvBn, ConvCfg, LipConv2d};
pub use cpu::{gemm_path, new_chunks_of};
pub(crate) use error::config;
pub use error::{ModelError, Result};
pub use four_c_three_f::FourCThreeF;
pub use graph::{Act, Graph, Node, Op};
pub use im2col::{conv2d, conv2d_bias};
pub use init::{param, Init};
pub use kolter_wong::{Classifier, KolterWong, Output};
pub use linear::LipLinear;
pub use lip::{CertifyMethod, Ctx, Lip, LipModule};
pub use numerics::{matmul, numerics, set_numerics, Numerics, PORTABLE_DEPTH_BLOCK};
pub use pool::{Pool2d, PoolCfg, PoolKind};
pub use residual::{concat, residual_add};
pub use simple::{Dropout, Flatten, MinMax, Relu};
pub use sound::{SoundLogits, SoundPass};
pub use wide_resnet::{WideResNet, WideResNetCfg};

mod batch_norm;
mod channel;
mod conv;
mod cpu;
mod error;
mod four_c_three_f;
mod graph;
mod im2col;
mod init;
mod kolter_wong;
mod linear;
mod lip;
mod numerics;
mod pool;
mod residual;
mod simple;
mod sound;
mod wide_resnet;

/// A tensor's values as f64, row-major (from any device), for the certified computations and for
/// comparisons against exact references.
pub fn tensor_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.flatten_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1()?)
}

use candle_core::Tensor;

/// Runs `x` through `layers` in order, carrying `lip`.
pub fn forward_seq(
    layers: &[&dyn LipModule],
    x: &Tensor,
    lip: Lip,
    ctx: &Ctx,
) -> Result<(Tensor, Lip)> {
    layers
        .iter()
        .try_fold((x.clone(), lip), |(x, lip), l| l.forward_lip(&x, lip, ctx))
}
