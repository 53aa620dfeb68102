//! The nodes that become layers: convolutions, batch norm, fully connected layers, activations,
//! constant shifts and scales, pooling, padding.

use candle_core::Var;
use lmt_models::{
    Act, BatchNorm2d, ConvBn, ConvCfg, LipConv2d, LipLinear, Op, Pool2d, PoolCfg, PoolKind,
};

use super::shapes::{broadcast, source_index};
use super::{attr_f, attr_i, attr_ints, attr_s, node_name, Importer, Sym, Val};
use crate::error::Result;
use crate::proto::NodeProto;

impl Importer<'_> {
    /// Kernel shape, strides, dilations and pads of a convolution or pooling node on an input of
    /// per-sample shape (C, H, W), with auto_pad resolved; `kernel` gives the window when the node has
    /// no kernel_shape.
    #[allow(clippy::type_complexity)]
    pub(super) fn window(
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

    pub(super) fn constant(&self, n: &NodeProto) -> Result<Val> {
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

    pub(super) fn conv(&mut self, n: &NodeProto) -> Result<Val> {
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

    pub(super) fn batch_norm(&mut self, n: &NodeProto) -> Result<Val> {
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

    pub(super) fn gemm(&mut self, n: &NodeProto) -> Result<Val> {
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

    pub(super) fn linear(
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

    pub(super) fn matmul(&mut self, n: &NodeProto) -> Result<Val> {
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

    pub(super) fn activation(&mut self, n: &NodeProto, a: Act) -> Result<Val> {
        let x = self.var(n, 0)?;
        self.push(n, Op::Activation(a), vec![x])
    }

    pub(super) fn binary(&mut self, n: &NodeProto) -> Result<Val> {
        let op = n.op_type();
        let (a, b) = (self.need(n, 0)?, self.need(n, 1)?);
        let (x, var_first) = match (&a, &b) {
            (Val::Var(x), Val::Var(y)) => {
                return match op {
                    "Add" => self.push(n, Op::Add, vec![*x, *y]),
                    "Sub" => self.push(n, Op::Sub, vec![*x, *y]),
                    _ => Err(self.unsupported(
                        n,
                        "a product or quotient of two values that depend on the image",
                        "multiplication and division by constants (no global Lipschitz bound exists otherwise)",
                    )),
                }
            }
            (Val::Var(x), _) => (*x, true),
            (_, Val::Var(x)) => (*x, false),
            _ => return self.fold_binary(n, a, b),
        };
        let (cd, c) = self.floats(n, if var_first { 1 } else { 0 })?;
        let input = n.input[if var_first { 0 } else { 1 }].clone();
        match op {
            "Mul" => self.scale(n, x, &input, cd, c),
            "Div" if var_first => {
                // x / c as x * (1 / c): the multiplier applied is what the bound sees.
                self.scale(n, x, &input, cd, c.iter().map(|v| 1.0 / v).collect())
            }
            "Div" => Err(self.unsupported(
                n,
                "a constant divided by a value of the network",
                "division by constants",
            )),
            "Add" => self.shift(n, x, &input, cd, c),
            "Sub" if var_first => self.shift(n, x, &input, cd, c.iter().map(|v| -v).collect()),
            _ => {
                // c - x = (-1) x + c
                let minus = self.sample_const(n, &[], vec![-1.0], x)?;
                let Val::Var(y) = self.push(n, Op::Scale(minus), vec![x])? else {
                    unreachable!("push gives a value")
                };
                let t = self.sample_const(n, &cd, c, y)?;
                self.push(n, Op::Shift(t), vec![y])
            }
        }
    }

    /// `x * c`. A scalar after a bias-free convolution that nothing else reads becomes its output scale
    /// (Parseval networks), so the bound sees one operator.
    fn scale(
        &mut self,
        n: &NodeProto,
        x: usize,
        input: &str,
        cd: Vec<usize>,
        c: Vec<f32>,
    ) -> Result<Val> {
        if let (Some(Op::Conv(conv)), true) =
            (self.producer_op(x), c.len() == 1 && self.single_use(input))
        {
            if conv.bias().is_none() && conv.output_scale() == 1.0 && c[0].is_finite() {
                let scaled = conv.with_output_scale(c[0] as f64);
                self.graph
                    .replace(x, Op::Conv(scaled))
                    .map_err(|e| self.layer(e))?;
                return Ok(Val::Var(x));
            }
        }
        let t = self.sample_const(n, &cd, c, x)?;
        self.push(n, Op::Scale(t), vec![x])
    }

    /// `x + c`. After a bias-free fully connected layer that nothing else reads, `c` of shape `[out]` is
    /// its bias (MatMul + Add), so Prop. 2 sees a last linear layer.
    fn shift(
        &mut self,
        n: &NodeProto,
        x: usize,
        input: &str,
        cd: Vec<usize>,
        c: Vec<f32>,
    ) -> Result<Val> {
        if let (Some(Op::Linear(l)), true) = (self.producer_op(x), self.single_use(input)) {
            let out = l.weight().dims()[0];
            if l.bias().is_none() && cd.iter().copied().filter(|&d| d != 1).eq([out]) {
                let name = self
                    .graph
                    .producer(x)
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                let bias = Some(self.tensor_of(&[out], c)?);
                let with_bias =
                    LipLinear::new(l.weight().clone(), bias, name).map_err(|e| self.layer(e))?;
                self.graph
                    .replace(x, Op::Linear(with_bias))
                    .map_err(|e| self.layer(e))?;
                return Ok(Val::Var(x));
            }
        }
        let t = self.sample_const(n, &cd, c, x)?;
        self.push(n, Op::Shift(t), vec![x])
    }

    fn producer_op(&self, v: usize) -> Option<Op> {
        self.graph.producer(v).map(|p| p.op.clone())
    }

    /// Add, Sub, Mul or Div of two constants (with broadcasting).
    pub(super) fn fold_binary(&self, n: &NodeProto, a: Val, b: Val) -> Result<Val> {
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

    pub(super) fn pool(&mut self, n: &NodeProto) -> Result<Val> {
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

    pub(super) fn reduce_mean(&mut self, n: &NodeProto) -> Result<Val> {
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

    pub(super) fn pad(&mut self, n: &NodeProto) -> Result<Val> {
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
}
