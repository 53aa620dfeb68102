//! Deterministic parameter initialisation.
//!
//! candle's CPU random generator cannot be seeded, so every initial weight is drawn here from a ChaCha8
//! stream keyed by the model seed and the parameter's name: the same seed gives bit-identical weights,
//! independent of the order in which layers are built.

use candle_core::{Device, Shape, Tensor, Var};
use candle_nn::VarMap;
use rand_distr::{Distribution, StandardNormal};

use crate::Result;

/// How a parameter starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// N(0, 2 / fan_in) (He et al.), for layers followed by ReLU.
    HeNormal {
        /// Inputs per output unit.
        fan_in: usize,
    },
    /// N(0, 1 / fan_in) (LeCun), the authors' choice for fully connected layers.
    LecunNormal {
        /// Inputs per output unit.
        fan_in: usize,
    },
    /// A constant (zero biases, unit BN scales).
    Const(f32),
}

/// Creates parameter `name` in `varmap` with `init`, drawing from a stream keyed by `seed` and `name`.
pub fn param(
    varmap: &VarMap,
    name: &str,
    shape: impl Into<Shape>,
    init: Init,
    seed: u64,
    device: &Device,
) -> Result<Tensor> {
    let shape = shape.into();
    let n = shape.elem_count();
    let std = match init {
        Init::HeNormal { fan_in } => (2.0 / fan_in as f64).sqrt(),
        Init::LecunNormal { fan_in } => (1.0 / fan_in as f64).sqrt(),
        Init::Const(c) => {
            return insert(varmap, name, Tensor::full(c, shape, device)?);
        }
    };
    let mut rng = lmt_core::named_rng(seed, name);
    let data: Vec<f32> = (0..n)
        .map(|_| (std * Distribution::<f64>::sample(&StandardNormal, &mut rng)) as f32)
        .collect();
    insert(varmap, name, Tensor::from_vec(data, shape, device)?)
}

fn insert(varmap: &VarMap, name: &str, t: Tensor) -> Result<Tensor> {
    let var = Var::from_tensor(&t)?;
    let tensor = var.as_tensor().clone();
    varmap
        .data()
        .lock()
        .expect("varmap lock poisoned")
        .insert(name.to_string(), var);
    Ok(tensor)
}
