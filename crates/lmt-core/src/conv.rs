//! A convolution as a linear operator on its real input size: geometry, f64 application and exact
//! adjoint, and the assembled dense matrix.
//!
//! Cross-correlation as in candle, PyTorch and ONNX: input `(c_in, H, W)`, kernel `(c_out, c_in, kh, kw)`,
//! zero padding `pad` before and `pad_end` after each axis, stride `(sh, sw)`, dilation `(dh, dw)`, output
//! `(c_out, Ho, Wo)` with `Ho = (H + pt + pb - ((kh - 1) dh + 1)) / sh + 1`. Output row `i` reads input row
//! `i sh + a dh - pt` at kernel row `a`. Biases are affine offsets and do not change a Lipschitz constant,
//! so they are ignored throughout. (Grouped convolutions are block diagonal; their bound is the largest
//! over the groups, each a `ConvGeometry` of its own.)

use crate::error::{invalid, Result};

/// Shape, stride and padding of a 2-D convolution applied to a fixed input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (rows, columns).
    pub stride: (usize, usize),
    /// Zero padding (rows, columns) before the input: top and left.
    pub pad: (usize, usize),
    /// Zero padding (rows, columns) after the input: bottom and right (equal to `pad` when symmetric).
    pub pad_end: (usize, usize),
    /// Dilation (rows, columns): the spacing between kernel taps, 1 for an ordinary convolution.
    pub dilation: (usize, usize),
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
}

impl ConvGeometry {
    /// A square-kernel geometry with equal stride and padding in both directions, validated.
    #[allow(clippy::too_many_arguments)]
    pub fn square(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        in_h: usize,
        in_w: usize,
    ) -> Result<Self> {
        let g = ConvGeometry {
            c_in,
            c_out,
            kh: k,
            kw: k,
            stride: (stride, stride),
            pad: (pad, pad),
            pad_end: (pad, pad),
            dilation: (1, 1),
            in_h,
            in_w,
        };
        g.validate()?;
        Ok(g)
    }

    /// The extent of the kernel on the input, `((kh - 1) dh + 1, (kw - 1) dw + 1)`.
    pub fn kernel_extent(&self) -> (usize, usize) {
        (
            (self.kh.max(1) - 1) * self.dilation.0 + 1,
            (self.kw.max(1) - 1) * self.dilation.1 + 1,
        )
    }

    /// The padded input size `(H + pt + pb, W + pl + pr)`.
    pub fn padded(&self) -> (usize, usize) {
        (
            self.in_h + self.pad.0 + self.pad_end.0,
            self.in_w + self.pad.1 + self.pad_end.1,
        )
    }

    /// Checks that every size is positive and that the kernel fits in the padded input.
    pub fn validate(&self) -> Result<()> {
        let pos = [
            self.c_in,
            self.c_out,
            self.kh,
            self.kw,
            self.stride.0,
            self.stride.1,
            self.dilation.0,
            self.dilation.1,
            self.in_h,
            self.in_w,
        ];
        if pos.contains(&0) {
            return Err(invalid(
                "convolution geometry",
                format!("{self:?}: sizes, strides and dilations must be positive"),
            ));
        }
        let ((eh, ew), (ph, pw)) = (self.kernel_extent(), self.padded());
        if ph < eh || pw < ew {
            return Err(invalid(
                "convolution geometry",
                format!("{self:?}: the kernel is larger than the padded input"),
            ));
        }
        Ok(())
    }

    /// Output height.
    pub fn out_h(&self) -> usize {
        (self.padded().0 - self.kernel_extent().0) / self.stride.0 + 1
    }

    /// Output width.
    pub fn out_w(&self) -> usize {
        (self.padded().1 - self.kernel_extent().1) / self.stride.1 + 1
    }

    /// Input dimension `c_in H W` (the `n` of Thm. 2).
    pub fn in_dim(&self) -> usize {
        self.c_in * self.in_h * self.in_w
    }

    /// Output dimension `c_out Ho Wo`.
    pub fn out_dim(&self) -> usize {
        self.c_out * self.out_h() * self.out_w()
    }

    /// Kernel length `c_out c_in kh kw`.
    pub fn kernel_len(&self) -> usize {
        self.c_out * self.c_in * self.kh * self.kw
    }

    /// Thm. 3's n: the largest number of windows containing one input element, counted exactly. Windows
    /// are products of one window per axis, so n is the product of the per-axis maxima. Without dilation
    /// this equals the authors' `ceil(min(kh, H + 2ph - kh + 1) / sh) * ceil(min(kw, ...) / sw)`.
    pub fn windows_per_element(&self) -> usize {
        let axis = |k: usize, d: usize, s: usize, p: usize, size: usize, outs: usize| {
            let mut count = vec![0usize; size];
            for o in 0..outs {
                for a in 0..k {
                    if let Some(i) = Self::source(o, a, s, d, p, size) {
                        count[i] += 1;
                    }
                }
            }
            count.into_iter().max().unwrap_or(0)
        };
        axis(
            self.kh,
            self.dilation.0,
            self.stride.0,
            self.pad.0,
            self.in_h,
            self.out_h(),
        ) * axis(
            self.kw,
            self.dilation.1,
            self.stride.1,
            self.pad.1,
            self.in_w,
            self.out_w(),
        )
    }

    /// True when some output window lies entirely inside the unpadded input. Cor. 1's lower half
    /// (‖W'‖ <= ‖Conv‖) needs this; "input at least as large as the kernel" is not enough once stride and
    /// padding are involved (e.g. 3x3, stride 2, pad 1 on a 3-pixel input never reads rows 0..2 together).
    pub fn has_interior_window(&self) -> bool {
        let (eh, ew) = self.kernel_extent();
        let axis = |k: usize, s: usize, p: usize, size: usize, outs: usize| {
            (0..outs).any(|o| o * s >= p && o * s - p + k <= size)
        };
        axis(eh, self.stride.0, self.pad.0, self.in_h, self.out_h())
            && axis(ew, self.stride.1, self.pad.1, self.in_w, self.out_w())
    }

    pub(crate) fn check_kernel(&self, kernel: &[f64]) -> Result<()> {
        self.validate()?;
        if kernel.len() != self.kernel_len() {
            return Err(invalid(
                "convolution kernel",
                format!(
                    "{} values for geometry {self:?}, which needs {}",
                    kernel.len(),
                    self.kernel_len()
                ),
            ));
        }
        if kernel.iter().any(|v| !v.is_finite()) {
            return Err(crate::CoreError::NonFinite("convolution kernel"));
        }
        Ok(())
    }

    /// Input coordinate read by output position `o` at kernel tap `a` along one axis, if inside.
    #[inline]
    fn source(
        o: usize,
        a: usize,
        stride: usize,
        dilation: usize,
        pad: usize,
        size: usize,
    ) -> Option<usize> {
        (o * stride + a * dilation)
            .checked_sub(pad)
            .filter(|&y| y < size)
    }

    /// [`Self::source`] along the rows.
    #[inline]
    fn row(&self, o: usize, a: usize) -> Option<usize> {
        Self::source(o, a, self.stride.0, self.dilation.0, self.pad.0, self.in_h)
    }

    /// [`Self::source`] along the columns.
    #[inline]
    fn col(&self, o: usize, b: usize) -> Option<usize> {
        Self::source(o, b, self.stride.1, self.dilation.1, self.pad.1, self.in_w)
    }

    /// im2col of one input: `(c_in kh kw) x (Ho Wo)`, row-major.
    fn im2col(&self, x: &[f64], cols: &mut [f64]) {
        let (oh, ow) = (self.out_h(), self.out_w());
        let p = oh * ow;
        for c in 0..self.c_in {
            for a in 0..self.kh {
                for b in 0..self.kw {
                    let row = &mut cols[((c * self.kh + a) * self.kw + b) * p..][..p];
                    for i in 0..oh {
                        let y = self.row(i, a);
                        for j in 0..ow {
                            let xx = self.col(j, b);
                            row[i * ow + j] = match (y, xx) {
                                (Some(y), Some(xx)) => x[(c * self.in_h + y) * self.in_w + xx],
                                _ => 0.0,
                            };
                        }
                    }
                }
            }
        }
    }

    /// col2im, the exact adjoint of `im2col`: scatter-adds `cols` back into `x` (which it overwrites).
    fn col2im(&self, cols: &[f64], x: &mut [f64]) {
        x.fill(0.0);
        let (oh, ow) = (self.out_h(), self.out_w());
        let p = oh * ow;
        for c in 0..self.c_in {
            for a in 0..self.kh {
                for b in 0..self.kw {
                    let row = &cols[((c * self.kh + a) * self.kw + b) * p..][..p];
                    for i in 0..oh {
                        let Some(y) = self.row(i, a) else {
                            continue;
                        };
                        for j in 0..ow {
                            if let Some(xx) = self.col(j, b) {
                                x[(c * self.in_h + y) * self.in_w + xx] += row[i * ow + j];
                            }
                        }
                    }
                }
            }
        }
    }

    /// Applies the convolution to `batch` inputs stored one after another; returns the outputs likewise.
    pub fn apply(&self, kernel: &[f64], x: &[f64], batch: usize) -> Vec<f64> {
        let (p, ckk) = (self.out_h() * self.out_w(), self.c_in * self.kh * self.kw);
        let mut cols = vec![0.0; ckk * p];
        let mut y = vec![0.0; batch * self.out_dim()];
        for n in 0..batch {
            self.im2col(&x[n * self.in_dim()..][..self.in_dim()], &mut cols);
            // y_n (c_out x p) = K (c_out x ckk) * cols (ckk x p)
            gemm(
                self.c_out,
                ckk,
                p,
                kernel,
                false,
                &cols,
                false,
                &mut y[n * self.out_dim()..][..self.out_dim()],
            );
        }
        y
    }

    /// Applies the exact adjoint (the transposed convolution that restores the full input size, i.e. with
    /// the output padding that strided layers need) to `batch` outputs.
    pub fn adjoint(&self, kernel: &[f64], y: &[f64], batch: usize) -> Vec<f64> {
        let (p, ckk) = (self.out_h() * self.out_w(), self.c_in * self.kh * self.kw);
        let mut cols = vec![0.0; ckk * p];
        let mut x = vec![0.0; batch * self.in_dim()];
        for n in 0..batch {
            // cols (ckk x p) = K^T (ckk x c_out) * y_n (c_out x p)
            gemm(
                ckk,
                self.c_out,
                p,
                kernel,
                true,
                &y[n * self.out_dim()..][..self.out_dim()],
                false,
                &mut cols,
            );
            self.col2im(&cols, &mut x[n * self.in_dim()..][..self.in_dim()]);
        }
        x
    }

    /// The dense `out_dim x in_dim` matrix of the operator, assembled entry by entry from the kernel
    /// (row-major). Row `(o, i, j)` holds `K[o, c, a, b]` in column `(c, i sh + a dh - pt, j sw + b dw - pl)`.
    pub fn dense_matrix(&self, kernel: &[f64]) -> Vec<f64> {
        let (oh, ow, n) = (self.out_h(), self.out_w(), self.in_dim());
        let mut m = vec![0.0; self.out_dim() * n];
        for o in 0..self.c_out {
            for i in 0..oh {
                for j in 0..ow {
                    let row = &mut m[((o * oh + i) * ow + j) * n..][..n];
                    for c in 0..self.c_in {
                        for a in 0..self.kh {
                            let Some(y) = self.row(i, a) else {
                                continue;
                            };
                            for b in 0..self.kw {
                                if let Some(x) = self.col(j, b) {
                                    row[(c * self.in_h + y) * self.in_w + x] +=
                                        kernel[((o * self.c_in + c) * self.kh + a) * self.kw + b];
                                }
                            }
                        }
                    }
                }
            }
        }
        m
    }
}

/// `c (m x n) = op(a) (m x k) * b (k x n)`, all row-major; `a_t` means `a` is stored as `k x m`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f64],
    a_t: bool,
    b: &[f64],
    b_t: bool,
    c: &mut [f64],
) {
    let (rsa, csa) = if a_t {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (rsb, csb) = if b_t {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    // SAFETY: the slices hold at least m*k, k*n and m*n elements with the strides given above.
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    unsafe {
        matrixmultiply::dgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, n: usize) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect()
    }

    #[test]
    fn apply_and_adjoint_agree_with_dense_matrix() {
        for &(k, s, p, h) in &[
            (3, 1, 1, 5),
            (4, 2, 1, 7),
            (2, 2, 0, 6),
            (5, 2, 2, 4),
            (1, 1, 0, 3),
        ] {
            let g = ConvGeometry::square(2, 3, k, s, p, h, h + 1).unwrap();
            let ker = lcg(1, g.kernel_len());
            let m = g.dense_matrix(&ker);
            let x = lcg(2, g.in_dim());
            let y = g.apply(&ker, &x, 1);
            for r in 0..g.out_dim() {
                let want: f64 = (0..g.in_dim()).map(|c| m[r * g.in_dim() + c] * x[c]).sum();
                assert!((y[r] - want).abs() < 1e-12);
            }
            let v = lcg(3, g.out_dim());
            let xt = g.adjoint(&ker, &v, 1);
            for c in 0..g.in_dim() {
                let want: f64 = (0..g.out_dim()).map(|r| m[r * g.in_dim() + c] * v[r]).sum();
                assert!((xt[c] - want).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn windows_per_element_matches_the_reference_examples() {
        let n = |k, s, p, h| {
            ConvGeometry::square(1, 1, k, s, p, h, h)
                .unwrap()
                .windows_per_element()
        };
        assert_eq!(n(4, 2, 1, 28), 4);
        assert_eq!(n(4, 2, 1, 14), 4);
        assert_eq!(n(3, 1, 1, 32), 9);
        assert_eq!(n(3, 2, 1, 32), 4);
        assert_eq!(n(1, 1, 0, 8), 1);
        assert_eq!(n(2, 2, 0, 28), 1);
        assert_eq!(n(2, 1, 0, 28), 4);
        assert_eq!(n(8, 1, 0, 8), 1);
    }

    #[test]
    fn bad_geometry_is_rejected() {
        assert!(ConvGeometry::square(1, 1, 5, 1, 0, 3, 3).is_err());
        assert!(ConvGeometry::square(1, 1, 3, 0, 0, 3, 3).is_err());
        let g = ConvGeometry::square(1, 1, 3, 1, 0, 3, 3).unwrap();
        assert!(g.check_kernel(&[0.0; 8]).is_err());
        assert!(g.check_kernel(&[f64::NAN; 9]).is_err());
    }
}
