//! Checkpoints: one safetensors file holding everything a bit-identical resume needs.
//!
//! Keys: the model's parameters and buffers (BN running statistics) under their own names (`conv1.weight`, ..., as in a PyTorch
//! `state_dict`, so PyTorch can load them with `strict=False`), `optim.m.<name>` / `optim.v.<name>`,
//! `power.<layer>` (the persistent power-iteration vectors), and `meta.step` / `meta.epoch` /
//! `meta.batch` (f64 scalars). Batch order and c schedule are pure functions of (seed, step), so no other
//! random state exists. The file's metadata holds the resolved run (`lmt.plan`: the config after its
//! profile, as JSON), so the checkpoint alone says which network it is. Written to a temporary file and
//! renamed, so a crash never leaves half a file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use lmt_core::PowerVectors;

use crate::error::{Result, TrainError};
use crate::optim::Optimizer;

/// Where training stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// Global steps done.
    pub step: usize,
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Batches of that epoch already done.
    pub batch: usize,
}

/// The metadata key holding the resolved run.
pub const PLAN_KEY: &str = "lmt.plan";

/// Writes a checkpoint atomically.
/// `extra` holds further state under its own keys (e.g. `snreg.<name>` for the spectral-norm hook);
/// `metadata` goes into the file's header (the resolved run under [`PLAN_KEY`]).
pub fn save(
    path: &Path,
    opt: &Optimizer,
    vectors: &PowerVectors,
    buffers: &[(String, Var)],
    extra: &[(String, Tensor)],
    pos: Position,
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let mut map: HashMap<String, Tensor> = extra.iter().cloned().collect();
    for (name, b) in buffers {
        map.insert(name.clone(), b.as_tensor().clone());
    }
    for (i, (name, p)) in opt.params().iter().enumerate() {
        map.insert(name.clone(), p.as_tensor().clone());
        map.insert(format!("optim.m.{name}"), opt.m[i].clone());
        map.insert(format!("optim.v.{name}"), opt.v[i].clone());
    }
    for (name, v) in vectors.all() {
        map.insert(format!("power.{name}"), v.as_tensor().clone());
    }
    let dev = Device::Cpu;
    for (k, v) in [
        ("meta.step", pos.step),
        ("meta.epoch", pos.epoch),
        ("meta.batch", pos.batch),
        ("meta.t", opt.t as usize),
    ] {
        map.insert(k.to_string(), Tensor::new(v as f64, &dev)?);
    }
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(&map, Some(metadata.clone()), &tmp).map_err(|e| {
        TrainError::Checkpoint {
            path: tmp.clone(),
            detail: format!("cannot write: {e}"),
        }
    })?;
    std::fs::rename(&tmp, path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The metadata of a checkpoint's header (empty for files written before it existed).
pub fn metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        detail: format!("cannot read ({e})"),
    })?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| TrainError::Checkpoint {
            path: path.to_path_buf(),
            detail: format!("not a safetensors checkpoint ({e})"),
        })?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Reads only the position stored in a checkpoint.
pub fn position(path: &Path) -> Result<Position> {
    let err = |detail: String| TrainError::Checkpoint {
        path: PathBuf::from(path),
        detail,
    };
    let map = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| err(format!("cannot read ({e})")))?;
    let meta = |k: &str| -> Result<usize> {
        let t = map
            .get(k)
            .ok_or_else(|| err(format!("has no tensor `{k}`")))?;
        Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()? as usize)
    };
    Ok(Position {
        step: meta("meta.step")?,
        epoch: meta("meta.epoch")?,
        batch: meta("meta.batch")?,
    })
}

/// Restores parameters, optimiser state, buffers and power vectors from `path`; returns the position and
/// every tensor of the file (for callers' extra state).
pub fn load(
    path: &Path,
    opt: &mut Optimizer,
    vectors: &PowerVectors,
    buffers: &[(String, Var)],
) -> Result<(Position, HashMap<String, Tensor>)> {
    let err = |detail: String| TrainError::Checkpoint {
        path: PathBuf::from(path),
        detail,
    };
    if !path.is_file() {
        return Err(err(
            "not found; pass the checkpoint.safetensors written by `experiments train`".into(),
        ));
    }
    // Straight onto the device the parameters live on, optimiser state and power vectors too.
    let device = opt
        .params()
        .first()
        .map_or(Device::Cpu, |(_, p)| p.device().clone());
    let map = candle_core::safetensors::load(path, &device).map_err(|e| {
        err(format!(
            "cannot read ({e}); the file is corrupt or not a safetensors checkpoint"
        ))
    })?;
    let get = |k: &str| {
        map.get(k).ok_or_else(|| {
            err(format!(
                "has no tensor `{k}`; was it written for another model or config?"
            ))
        })
    };
    let names: Vec<String> = opt.params().iter().map(|(n, _)| n.clone()).collect();
    for (i, name) in names.iter().enumerate() {
        let p = &opt.params()[i].1;
        let saved = get(name)?;
        if saved.dims() != p.dims() {
            return Err(err(format!(
                "`{name}` has shape {:?}, the model needs {:?}",
                saved.dims(),
                p.dims()
            )));
        }
        p.set(saved)?;
        opt.m[i] = get(&format!("optim.m.{name}"))?.clone();
        opt.v[i] = get(&format!("optim.v.{name}"))?.clone();
    }
    for (name, b) in buffers {
        b.set(get(name)?)?;
    }
    for (k, v) in &map {
        if let Some(layer) = k.strip_prefix("power.") {
            vectors.insert(layer, v)?;
        }
    }
    let meta = |k: &str| -> Result<usize> {
        Ok(get(k)?.to_dtype(DType::F64)?.to_scalar::<f64>()? as usize)
    };
    opt.t = meta("meta.t")? as u64;
    let pos = Position {
        step: meta("meta.step")?,
        epoch: meta("meta.epoch")?,
        batch: meta("meta.batch")?,
    };
    Ok((pos, map))
}
