//! Nodes that only re-index (flatten, reshape, squeeze, transpose, concatenation) and the folding of
//! constant shape arithmetic, with the batch size kept as a symbol.

use lmt_models::Op;

use super::{attr_i, attr_ints, Importer, Sym, Val};
use crate::error::Result;
use crate::proto::NodeProto;

/// Broadcast of two ONNX shapes (numpy rules).
pub(super) fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
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
pub(super) fn source_index(out: usize, shape: &[usize], dims: &[usize]) -> usize {
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
    pub(super) fn flatten(&mut self, n: &NodeProto) -> Result<Val> {
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

    pub(super) fn reshape(&mut self, n: &NodeProto) -> Result<Val> {
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

    pub(super) fn squeeze(&mut self, n: &NodeProto) -> Result<Val> {
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

    pub(super) fn transpose(&mut self, n: &NodeProto) -> Result<Val> {
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

    pub(super) fn concat(&mut self, n: &NodeProto) -> Result<Val> {
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

    pub(super) fn gather(&self, n: &NodeProto) -> Result<Val> {
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

    pub(super) fn slice(&self, n: &NodeProto) -> Result<Val> {
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
