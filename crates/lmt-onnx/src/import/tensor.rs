//! Tensors of an ONNX file as constants: every data type exporters write, raw or typed fields, and
//! external data beside the file.

use std::path::Path;

use super::{Importer, Sym, Val};
use crate::error::{OnnxError, Result};
use crate::proto::{self, tensor_proto::DataType, TensorProto};

impl Importer<'_> {
    /// The decoded values of a tensor (external data read from `dir`).
    pub(super) fn tensor(&self, t: &TensorProto) -> Result<Val> {
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
    pub(super) fn external(&self, t: &TensorProto) -> std::result::Result<Vec<u8>, String> {
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
}
