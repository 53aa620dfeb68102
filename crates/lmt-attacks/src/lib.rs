//! Adversarial attacks for lmt-rs (C&W L2, DeepFool and PGD-L2 land here next), generic over
//! [`LogitsFn`]: a function from a batch of images to logits.
//!
//! Attacks never see a model type, only this trait, so any network (ours, or one loaded from PyTorch
//! weights) can be attacked, and the empirical distances they find can be checked against certified radii.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use lmt_attacks::LogitsFn;
//! // A closure is a logits function: here a linear classifier on 2-pixel images.
//! let w = Tensor::new(&[[1f32, -1.0], [-1.0, 1.0]], &Device::Cpu)?;
//! let f = |x: &Tensor| x.flatten_from(1)?.matmul(&w.t()?);
//! let z = f.logits(&Tensor::new(&[[[[1f32, 0.0]]]], &Device::Cpu)?)?;
//! assert_eq!(z.to_vec2::<f32>()?, [[1.0, -1.0]]);
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! **Invariant:** depends on no model crate; attacks receive a logits function.
#![deny(missing_docs)]

use candle_core::{Result, Tensor};

/// A differentiable function from images `(B, C, H, W)` to logits `(B, K)`.
pub trait LogitsFn {
    /// The logits of a batch; gradients must flow back to `images`.
    fn logits(&self, images: &Tensor) -> Result<Tensor>;
}

impl<F: Fn(&Tensor) -> Result<Tensor>> LogitsFn for F {
    fn logits(&self, images: &Tensor) -> Result<Tensor> {
        self(images)
    }
}
