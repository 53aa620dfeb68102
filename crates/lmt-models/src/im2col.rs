//! 2-D convolution by im2col + gemm, as candle custom ops: the forward pass (with a per-channel bias
//! added in the same pass, where the layer has one), the input gradient and the kernel gradient.
//!
//! Why: candle 0.11.1's CPU convolution computes the input gradient with a scalar scatter loop
//! parallelised over output channels only, the kernel gradient as a poorly tiled convolution, and always
//! both (`shared/reference/candle-cpu-performance.md`, items 3-4). Here each image's patch matrix
//! (c_in · kh · kw, out_h · out_w) is gathered into a per-thread buffer and multiplied by the flattened
//! kernel with the same gemm crate candle uses; images run in parallel on candle's worker pool, so no batch-sized patch matrix is
//! ever allocated. The input gradient is gemm + the adjoint scatter (col2im); the kernel gradient sums
//! gemms over fixed groups of images in a fixed order (bit-identical for any thread count). Each gradient
//! is computed only when its operand is tracked: the images of a training batch get none. Zero padding is
//! part of the gather, which also sidesteps candle's missing output padding in strided backward passes.
//! The gather copies long stride-1 rows straight from the image and everything else through a padded,
//! phase-split copy of it ([`Gather`]), where each row of the patch matrix is one contiguous read.
//! Second derivatives through the convolution are not supported (nothing in lmt-rs takes them).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use crate::conv::ConvCfg;
use crate::cpu::{contiguous_f32, new_chunked, operands};
use crate::numerics::{depth_ranges, numerics, Numerics};

/// The geometry shared by the gather and the scatter: kernel, stride, dilation, padding and the input's
/// size. Output row `y` at kernel row `i` reads input row `y sh + i dh - pt` (zero outside the input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Patches {
    batch: usize,
    channels: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    /// Stride (rows, columns).
    stride: (usize, usize),
    /// Dilation (rows, columns).
    dilation: (usize, usize),
    /// Padding before the input (top, left); the padding after it only changes the output size.
    pad: (usize, usize),
    out_h: usize,
    out_w: usize,
}

impl Patches {
    /// The patches of a `(batch, channels, h, w)` input under `cfg` with a `kh x kw` kernel, or `None`
    /// when the kernel does not fit the padded input.
    fn new(
        dims: (usize, usize, usize, usize),
        kh: usize,
        kw: usize,
        cfg: &ConvCfg,
    ) -> Option<Self> {
        let (batch, channels, h, w) = dims;
        let [pt, pl, pb, pr] = cfg.pads;
        let ((sh, sw), (dh, dw)) = (cfg.stride, cfg.dilation);
        if sh == 0 || sw == 0 || dh == 0 || dw == 0 || kh == 0 || kw == 0 {
            return None;
        }
        let (eh, ew) = ((kh - 1) * dh + 1, (kw - 1) * dw + 1);
        let (hp, wp) = (h + pt + pb, w + pl + pr);
        if hp < eh || wp < ew {
            return None;
        }
        Some(Patches {
            batch,
            channels,
            h,
            w,
            kh,
            kw,
            stride: cfg.stride,
            dilation: cfg.dilation,
            pad: (pt, pl),
            out_h: (hp - eh) / sh + 1,
            out_w: (wp - ew) / sw + 1,
        })
    }
    fn out_h(&self) -> usize {
        self.out_h
    }
    fn out_w(&self) -> usize {
        self.out_w
    }
    /// Entries of one patch: channels x kh x kw, in the order of a flattened (c_in, kh, kw) kernel.
    fn patch_len(&self) -> usize {
        self.channels * self.kh * self.kw
    }
    fn image_len(&self) -> usize {
        self.channels * self.h * self.w
    }

    /// Calls `f(col_offset, image_offset, len)` for every run of `len` patch-matrix entries that lie
    /// consecutively in one row of the (patch entry, output pixel) matrix and read the input at
    /// `image_offset + t * stride.1`, t < len; the entries reading the zero padding are skipped.
    #[inline]
    fn for_each_run(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (oh, ow, px) = (self.out_h(), self.out_w(), self.pixels());
        let ((sh, sw), (dh, dw), (pt, pl)) = (self.stride, self.dilation, self.pad);
        for j in 0..self.kw {
            // Output columns x with 0 <= x * sw + j * dw - pl < w.
            let off = j * dw;
            if self.w + pl < off + 1 {
                continue;
            }
            let x_lo = pl.saturating_sub(off).div_ceil(sw);
            let x_hi = ow.min((self.w + pl - off - 1) / sw + 1);
            if x_lo >= x_hi {
                continue;
            }
            let iw = x_lo * sw + off - pl;
            for c in 0..self.channels {
                for i in 0..self.kh {
                    let entry = (c * self.kh + i) * self.kw + j;
                    for y in 0..oh {
                        let ih = (y * sh + i * dh) as isize - pt as isize;
                        if ih < 0 || ih >= self.h as isize {
                            continue;
                        }
                        let col = entry * px + y * ow + x_lo;
                        let img = (c * self.h + ih as usize) * self.w + iw;
                        f(col, img, x_hi - x_lo);
                    }
                }
            }
        }
    }
}

/// A row-major matrix view for [`sgemm`]: a slice with its row and column strides.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major matrix whose rows are `row_len` long.
    fn rows(data: &'a [f32], row_len: usize) -> Self {
        Mat {
            data,
            rs: row_len,
            cs: 1,
        }
    }
    /// The transpose of a row-major matrix whose rows are `row_len` long.
    fn transposed(data: &'a [f32], row_len: usize) -> Self {
        Mat {
            data,
            rs: 1,
            cs: row_len,
        }
    }
}

/// `dst (m x n, row-major, row stride n) = [dst +] lhs (m x k) · rhs (k x n)`, single-threaded: the
/// callers parallelise over images. Reduced over the depth ranges [`numerics`] asks for, each range
/// added to `dst` in order, as gemm adds its own blocks.
fn sgemm(m: usize, n: usize, k: usize, dst: &mut [f32], accumulate: bool, lhs: Mat, rhs: Mat) {
    sgemm_in(numerics(), m, n, k, dst, accumulate, lhs, rhs)
}

/// [`sgemm`] under the given mode.
#[allow(clippy::too_many_arguments)]
fn sgemm_in(
    mode: Numerics,
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
) {
    for r in depth_ranges(mode, m, n, k) {
        let lhs = Mat {
            data: &lhs.data[(r.start * lhs.cs).min(lhs.data.len())..],
            ..lhs
        };
        let rhs = Mat {
            data: &rhs.data[(r.start * rhs.rs).min(rhs.data.len())..],
            ..rhs
        };
        sgemm_pass(m, n, r.len(), dst, accumulate || r.start > 0, lhs, rhs);
    }
}

/// One gemm call for [`sgemm`]. Bounds are checked before the unsafe call.
fn sgemm_pass(m: usize, n: usize, k: usize, dst: &mut [f32], accumulate: bool, lhs: Mat, rhs: Mat) {
    let last = |rows: usize, cols: usize, a: &Mat| (rows - 1) * a.rs + (cols - 1) * a.cs;
    if m == 0 || n == 0 || k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    assert!(dst.len() >= m * n, "sgemm: destination too small");
    assert!(
        last(m, k, &lhs) < lhs.data.len(),
        "sgemm: lhs out of bounds"
    );
    assert!(
        last(k, n, &rhs) < rhs.data.len(),
        "sgemm: rhs out of bounds"
    );
    // SAFETY: every index gemm touches, (i, j) -> i * rs + j * cs for i < rows and j < cols, lies inside
    // its slice (checked above); dst does not alias lhs or rhs (it is a distinct &mut borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// The batch is split into this many fixed groups for the kernel gradient, whose partial sums are then
/// added in group order: the result does not depend on the thread count or on the schedule.
const KERNEL_GRAD_GROUPS: usize = 8;

/// Forward: `(x, kernel) -> y`; per image, gather the patch matrix (c · kh · kw, out_h · out_w) into a
/// per-thread buffer and multiply the flattened kernel by it, writing NCHW output directly.
struct ConvFwd(Patches);

/// Forward with the bias: `(x, kernel, bias) -> y + bias` per output channel; the values and gradients of
/// [`ConvFwd`] followed by `add_channel_bias`, with the bias added to each image's output while it is in
/// cache instead of in a second pass over a second output.
struct ConvBiasFwd(Patches);

/// Input gradient: `(grad_y, kernel) -> grad_x`; per image, grad_cols = kernelᵀ · grad_y, then scatter.
struct ConvBwdInput(Patches);

/// Kernel gradient: `(x, grad_y) -> grad_kernel` = Σ over images of grad_y · cols.
struct ConvBwdKernel(Patches, usize);

impl Patches {
    fn pixels(&self) -> usize {
        self.out_h() * self.out_w()
    }
}

/// Entries a [`Gather`] may read or write past the end of a row: rows are copied 8 entries at a time.
const SLACK: usize = 8;

/// The zero-padded input of one image as a [`Gather`] reads it: per channel `hp` rows of `wp` entries
/// (only what the kernel reaches), each row stored as its column phases modulo the column stride
/// (columns p, p + s, p + 2s, ... side by side), so that every row of the patch matrix is one contiguous
/// read whatever the stride.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Padded {
    hp: usize,
    wp: usize,
    /// Where each column phase starts within a row.
    phase_start: Vec<usize>,
    /// Where each copied input column lands within its row.
    col_at: Vec<usize>,
    /// Input rows copied (those the kernel reaches).
    rows: usize,
}

impl Padded {
    fn new(p: &Patches) -> Self {
        let ((sh, sw), (dh, dw), (pt, pl)) = (p.stride, p.dilation, p.pad);
        let hp = (p.out_h - 1) * sh + (p.kh - 1) * dh + 1;
        let wp = (p.out_w - 1) * sw + (p.kw - 1) * dw + 1;
        let mut phase_start = vec![0; sw];
        for q in 1..sw {
            phase_start[q] = phase_start[q - 1] + wp.saturating_sub(q - 1).div_ceil(sw);
        }
        let col_at = (0..p.w.min(wp.saturating_sub(pl)))
            .map(|iw| phase_start[(iw + pl) % sw] + (iw + pl) / sw)
            .collect();
        Padded {
            hp,
            wp,
            phase_start,
            col_at,
            rows: p.h.min(hp.saturating_sub(pt)),
        }
    }

    fn len(&self, channels: usize) -> usize {
        channels * self.hp * self.wp + SLACK
    }

    /// Calls `f(image row, padded row)` for every input row the kernel reaches: where the row starts in
    /// one image and where its padded row starts in the padded buffer.
    fn for_each_row(&self, p: &Patches, mut f: impl FnMut(usize, usize)) {
        for c in 0..p.channels {
            for ih in 0..self.rows {
                f((c * p.h + ih) * p.w, (c * self.hp + ih + p.pad.0) * self.wp);
            }
        }
    }

    /// Where image columns 0 and 1 land in a row with column stride 2: image column 2t goes to
    /// `a + t` and 2t + 1 to `b + t` (two phases, each contiguous), so a row moves as column pairs,
    /// which vectorises, unlike a strided access per entry.
    fn pair_starts(&self, sw: usize) -> Option<(usize, usize)> {
        (sw == 2 && self.col_at.len() >= 2).then(|| (self.col_at[0], self.col_at[1]))
    }

    /// Copies the input rows and columns the kernel reaches into their places in `buf`.
    fn copy_in(&self, p: &Patches, img: &[f32], buf: &mut [f32]) {
        let (n, sw) = (self.col_at.len(), p.stride.1);
        if n == 0 {
            return;
        }
        self.for_each_row(p, |at, row| {
            let (src, row) = (&img[at..at + n], &mut buf[row..row + self.wp]);
            if sw == 1 {
                row[self.col_at[0]..self.col_at[0] + n].copy_from_slice(src);
            } else if let Some((a, b)) = self.pair_starts(sw) {
                let (first, second) = row.split_at_mut(a.max(b));
                let (x, y) = (&mut first[a.min(b)..], &mut second[..n / 2]);
                let (even, odd) = if a < b { (x, y) } else { (y, x) };
                for ((e, o), pair) in even.iter_mut().zip(odd).zip(src.chunks_exact(2)) {
                    *e = pair[0];
                    *o = pair[1];
                }
                if n % 2 == 1 {
                    row[self.col_at[n - 1]] = src[n - 1];
                }
            } else {
                for (v, &at) in src.iter().zip(&self.col_at) {
                    row[at] = *v;
                }
            }
        });
    }

    /// The inverse of [`Padded::copy_in`]: the input rows and columns the kernel reaches, from their
    /// places in `buf` into `img` (the others are left as they are).
    fn copy_out(&self, p: &Patches, buf: &[f32], img: &mut [f32]) {
        let (n, sw) = (self.col_at.len(), p.stride.1);
        if n == 0 {
            return;
        }
        self.for_each_row(p, |at, row| {
            let (dst, row) = (&mut img[at..at + n], &buf[row..row + self.wp]);
            if sw == 1 {
                dst.copy_from_slice(&row[self.col_at[0]..self.col_at[0] + n]);
            } else if let Some((a, b)) = self.pair_starts(sw) {
                let (even, odd) = (&row[a..a + n / 2], &row[b..b + n / 2]);
                for ((pair, e), o) in dst.chunks_exact_mut(2).zip(even).zip(odd) {
                    pair[0] = *e;
                    pair[1] = *o;
                }
                if n % 2 == 1 {
                    dst[n - 1] = row[self.col_at[n - 1]];
                }
            } else {
                for (d, &at) in dst.iter_mut().zip(&self.col_at) {
                    *d = row[at];
                }
            }
        });
    }

    /// col2im: adds every entry of the patch-matrix gradient `gcols` to the input pixel it read, and
    /// writes the sums of the pixels the kernel reaches into `img`. Each pixel's terms are added in the
    /// order of kernel column, then kernel row, to a +0 (so no sum is ever -0, and adding +0 changes
    /// nothing): rows are added 8 entries at a time into `buf`, a zero-padded, phase-split image like
    /// [`Gather`]'s, with the entries past a row's end masked to +0.
    fn scatter(&self, p: &Patches, gcols: &[f32], buf: &mut [f32], img: &mut [f32]) {
        let ((sh, sw), (dh, dw)) = (p.stride, p.dilation);
        let (oh, ow, px) = (p.out_h(), p.out_w(), p.pixels());
        let width = ow.div_ceil(SLACK) * SLACK;
        let keep: [u32; SLACK] =
            std::array::from_fn(|l| if width - SLACK + l < ow { u32::MAX } else { 0 });
        let used = p.channels * self.hp * self.wp;
        buf[..used].fill(0.0);
        for j in 0..p.kw {
            let phase = self.phase_start[(j * dw) % sw] + j * dw / sw;
            for c in 0..p.channels {
                for i in 0..p.kh {
                    let src = ((c * p.kh + i) * p.kw + j) * px;
                    let dst = (c * self.hp + i * dh) * self.wp + phase;
                    assert!(src + (oh - 1) * ow + width <= gcols.len());
                    assert!(dst + (oh - 1) * sh * self.wp + width <= buf.len());
                    // SAFETY: the asserts bound the last (farthest) row's reads and writes, `width`
                    // entries from its start; every earlier row starts before it. `gcols` and `buf`
                    // are distinct borrows; unaligned reads and writes of [f32; 8] need no alignment.
                    unsafe {
                        let (mut g, mut d) = (gcols.as_ptr().add(src), buf.as_mut_ptr().add(dst));
                        for _ in 0..oh {
                            for k in (0..width).step_by(SLACK) {
                                let last = k + SLACK == width;
                                let a = d.add(k).cast::<[f32; SLACK]>().read_unaligned();
                                let v = g.add(k).cast::<[f32; SLACK]>().read_unaligned();
                                let sum: [f32; SLACK] = std::array::from_fn(|l| {
                                    let m = if last { keep[l] } else { u32::MAX };
                                    a[l] + f32::from_bits(v[l].to_bits() & m)
                                });
                                d.add(k).cast::<[f32; SLACK]>().write_unaligned(sum);
                            }
                            g = g.add(ow);
                            d = d.add(sh * self.wp);
                        }
                    }
                }
            }
        }
        self.copy_out(p, buf, img);
    }
}

/// Writes the patch matrix (patch entry, output pixel) of one image into a per-thread scratch, by one
/// of two routes with the same result: copying runs straight from the image where rows are long and
/// contiguous (stride 1, more than 8 outputs per row), else through a [`Padded`] copy of the image, from
/// which each row of the matrix is one 8-at-a-time copy (strided or short rows: one scalar run per row
/// segment cost several times more there).
struct Gather {
    p: Patches,
    padded: Option<Padded>,
}

impl Gather {
    fn new(p: Patches) -> Self {
        let direct = p.stride.1 == 1 && p.out_w > SLACK;
        Self::with_route(p, !direct)
    }

    fn with_route(p: Patches, padded: bool) -> Self {
        Gather {
            padded: padded.then(|| Padded::new(&p)),
            p,
        }
    }

    fn cols_len(&self) -> usize {
        self.p.patch_len() * self.p.pixels()
    }

    /// Floats of scratch one thread needs, zeroed before its first image.
    fn scratch_len(&self) -> usize {
        self.cols_len()
            + match &self.padded {
                Some(pd) => SLACK + pd.len(self.p.channels),
                None => 0,
            }
    }

    /// The patch matrix of `img`, in the front of `scratch`. `scratch` must be zeroed before the first
    /// image and then hold only what earlier gathers of this geometry left there: the entries that read
    /// the zero padding (the matrix's on the direct route, the padded copy's otherwise) are written
    /// once, by the zeroing, not per image.
    fn run<'s>(&self, img: &[f32], scratch: &'s mut [f32]) -> &'s [f32] {
        let n = self.cols_len();
        match &self.padded {
            None => self.direct(img, &mut scratch[..n]),
            Some(pd) => {
                let (cols, padded) = scratch.split_at_mut(n + SLACK);
                pd.copy_in(&self.p, img, padded);
                self.rows_from_padded(pd, padded, cols);
            }
        }
        &scratch[..n]
    }

    fn direct(&self, img: &[f32], cols: &mut [f32]) {
        let s = self.p.stride.1;
        self.p.for_each_run(|c, i, n| {
            if s == 1 {
                cols[c..c + n].copy_from_slice(&img[i..i + n]);
            } else {
                let src = img[i..=i + (n - 1) * s].iter().step_by(s);
                cols[c..c + n]
                    .iter_mut()
                    .zip(src)
                    .for_each(|(d, v)| *d = *v);
            }
        });
    }

    /// Row y of patch entry (c, i, j) is `out_w` consecutive entries of `padded`'s row y sh + i dh,
    /// column phase (j dw) mod sw. Rows are written in order, 8 entries at a time: what a copy writes
    /// past a row's end lies in a later row, rewritten after, or in the slack after the matrix.
    fn rows_from_padded(&self, pd: &Padded, padded: &[f32], cols: &mut [f32]) {
        let p = &self.p;
        let ((sh, sw), (dh, dw)) = (p.stride, p.dilation);
        let (oh, ow, px) = (p.out_h(), p.out_w(), p.pixels());
        let width = ow.div_ceil(SLACK) * SLACK;
        let mut entry = 0;
        for c in 0..p.channels {
            for i in 0..p.kh {
                for j in 0..p.kw {
                    let src =
                        (c * pd.hp + i * dh) * pd.wp + pd.phase_start[(j * dw) % sw] + j * dw / sw;
                    let dst = entry * px;
                    assert!(src + (oh - 1) * sh * pd.wp + width <= padded.len());
                    assert!(dst + (oh - 1) * ow + width <= cols.len());
                    // SAFETY: the asserts bound the last (farthest) row's reads and writes, `width`
                    // entries from its start; every earlier row starts before it. `padded` and `cols`
                    // are distinct borrows.
                    unsafe {
                        let (mut s, mut d) = (padded.as_ptr().add(src), cols.as_mut_ptr().add(dst));
                        for _ in 0..oh {
                            for k in (0..width).step_by(SLACK) {
                                std::ptr::copy_nonoverlapping(s.add(k), d.add(k), SLACK);
                            }
                            s = s.add(sh * pd.wp);
                            d = d.add(ow);
                        }
                    }
                    entry += 1;
                }
            }
        }
    }
}

impl CustomOp2 for ConvFwd {
    fn name(&self) -> &'static str {
        "lmt-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, kernel) = operands(self.name(), (s1, l1), (s2, l2))?;
        conv_forward(self.0, x, kernel, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        conv_backward(self.0, x, kernel, grad_y)
    }
}

/// The forward pass of [`ConvFwd`] and [`ConvBiasFwd`]: per image, the gathered patch matrix times the
/// flattened kernel, then (with a bias) `y + b_c` on each output channel, as `add_channel_bias` rounds it.
fn conv_forward(
    p: Patches,
    x: &[f32],
    kernel: &[f32],
    bias: Option<&[f32]>,
) -> Result<(CpuStorage, Shape)> {
    let (k, px) = (p.patch_len(), p.pixels());
    let c_out = kernel.len() / k.max(1);
    if bias.is_some_and(|b| b.len() != c_out) {
        candle_core::bail!(
            "lmt-conv2d-bias: a bias of {} values for {c_out} channels",
            bias.map_or(0, <[f32]>::len)
        )
    }
    let n = p.image_len();
    let gather = Gather::new(p);
    let scratch = gather.scratch_len();
    let y = new_chunked(
        p.batch * c_out * px,
        c_out * px,
        scratch,
        c_out * px * k,
        |b, yb, scratch| {
            let cols = gather.run(&x[b * n..(b + 1) * n], scratch);
            let w = Mat::rows(kernel, k);
            sgemm(c_out, px, k, yb, false, w, Mat::rows(cols, px));
            if let Some(bias) = bias {
                for (row, &bc) in yb.chunks_mut(px.max(1)).zip(bias) {
                    row.iter_mut().for_each(|v| *v += bc);
                }
            }
        },
    );
    let shape = Shape::from((p.batch, c_out, p.out_h(), p.out_w()));
    Ok((CpuStorage::F32(y), shape))
}

/// The input and kernel gradients of the convolution for the output gradient `grad_y`, each only where
/// its operand is tracked (the images of a training batch need none; a detached kernel needs none).
fn conv_backward(
    p: Patches,
    x: &Tensor,
    kernel: &Tensor,
    grad_y: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let grad_y = grad_y.contiguous()?;
    let gx = if x.track_op() {
        Some(grad_y.apply_op2_no_bwd(kernel, &ConvBwdInput(p))?)
    } else {
        None
    };
    let gk = if kernel.track_op() {
        let c_out = kernel.dim(0)?;
        Some(
            x.apply_op2_no_bwd(&grad_y, &ConvBwdKernel(p, c_out))?
                .reshape(kernel.shape())?,
        )
    } else {
        None
    };
    Ok((gx, gk))
}

impl CustomOp3 for ConvBiasFwd {
    fn name(&self) -> &'static str {
        "lmt-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, kernel) = operands(self.name(), (s1, l1), (s2, l2))?;
        let bias = contiguous_f32(s3, l3, self.name())?;
        conv_forward(self.0, x, kernel, Some(bias))
    }

    /// The gradients of the convolution and of `add_channel_bias` after it: the output gradient passes
    /// through the bias unchanged, and the bias gets its per-channel sum.
    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gk) = conv_backward(self.0, x, kernel, grad_y)?;
        let gb = if bias.track_op() {
            Some(crate::channel::bias_grad(grad_y)?)
        } else {
            None
        };
        Ok((gx, gk, gb))
    }
}

impl CustomOp2 for ConvBwdInput {
    fn name(&self) -> &'static str {
        "lmt-conv2d-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let p = self.0;
        let (gy, kernel) = operands(self.name(), (s1, l1), (s2, l2))?;
        let (k, px) = (p.patch_len(), p.pixels());
        let c_out = kernel.len() / k.max(1);
        let n = c_out * px;
        let padded = Padded::new(&p);
        let cols = px * k + SLACK;
        let gx = new_chunked(
            p.batch * p.image_len(),
            p.image_len(),
            cols + padded.len(p.channels),
            c_out * px * k,
            |b, img, scratch| {
                let (gcols, buf) = scratch.split_at_mut(cols);
                let wt = Mat::transposed(kernel, k); // (k x c_out)
                sgemm(
                    k,
                    px,
                    c_out,
                    gcols,
                    false,
                    wt,
                    Mat::rows(&gy[b * n..(b + 1) * n], px),
                );
                padded.scatter(&p, gcols, buf, img);
            },
        );
        let shape = Shape::from((p.batch, p.channels, p.h, p.w));
        Ok((CpuStorage::F32(gx), shape))
    }
}

impl CustomOp2 for ConvBwdKernel {
    fn name(&self) -> &'static str {
        "lmt-conv2d-grad-kernel"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (p, c_out) = (self.0, self.1);
        let (x, gy) = operands(self.name(), (s1, l1), (s2, l2))?;
        let (k, px) = (p.patch_len(), p.pixels());
        let per_group = p.batch.div_ceil(KERNEL_GRAD_GROUPS).max(1);
        let groups = p.batch.div_ceil(per_group);
        let work = per_group * c_out * px * k;
        let gather = Gather::new(p);
        let scratch = gather.scratch_len();
        let partials = new_chunked(
            groups * c_out * k,
            c_out * k,
            scratch,
            work,
            |g, acc, scratch| {
                let start = g * per_group;
                for b in start..(start + per_group).min(p.batch) {
                    let cols = gather.run(&x[b * p.image_len()..(b + 1) * p.image_len()], scratch);
                    let gyb = &gy[b * c_out * px..(b + 1) * c_out * px];
                    let lhs = Mat::rows(gyb, px);
                    let rhs = Mat::transposed(cols, px); // (px x k)
                    sgemm(c_out, k, px, acc, b > start, lhs, rhs);
                }
            },
        );
        let mut total = vec![0f32; c_out * k];
        for part in partials.chunks(c_out * k) {
            for (t, v) in total.iter_mut().zip(part) {
                *t += v;
            }
        }
        Ok((CpuStorage::F32(total), Shape::from((c_out, k))))
    }
}

/// Whether the environment asks for candle's own convolution (`LMT_CONV=candle`) instead of ours: an
/// A/B switch for benchmarks, read once per process.
fn use_candle_conv() -> bool {
    static CANDLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CANDLE.get_or_init(|| std::env::var("LMT_CONV").is_ok_and(|v| v == "candle"))
}

/// Cross-correlation of `x` (batch, c_in, h, w) with `kernel` (c_out, c_in / groups, kh, kw) under
/// `cfg` (strides, zero padding on each side, dilation, groups); the same values as candle's and
/// PyTorch's `conv2d`, with gradients by im2col + gemm. A grouped convolution runs each group on its
/// channel slice and concatenates. Falls back to candle's `conv2d` (via [`candle_conv2d`]) for anything
/// but f32 on the CPU.
pub fn conv2d(x: &Tensor, kernel: &Tensor, cfg: &ConvCfg) -> Result<Tensor> {
    let Some(p) = own_patches(x, kernel, cfg)? else {
        return other_conv2d(x, kernel, cfg);
    };
    x.contiguous()?.apply_op2(&kernel.contiguous()?, ConvFwd(p))
}

/// [`conv2d`] followed by `add_channel_bias(y, bias)` (`bias` of shape (c_out)): the same values and
/// gradients, with the bias added inside the convolution's pass over each image's output.
pub fn conv2d_bias(x: &Tensor, kernel: &Tensor, bias: &Tensor, cfg: &ConvCfg) -> Result<Tensor> {
    match own_patches(x, kernel, cfg)? {
        Some(p) if bias.dtype() == x.dtype() && bias.device().is_cpu() => x
            .contiguous()?
            .apply_op3(&kernel.contiguous()?, &bias.contiguous()?, ConvBiasFwd(p)),
        _ => crate::channel::add_channel_bias(&conv2d(x, kernel, cfg)?, bias),
    }
}

/// The geometry for our own ops where they apply (f32 on the CPU, one group, not `LMT_CONV=candle`),
/// `None` where [`other_conv2d`] must run, or an error naming a kernel that does not fit the input.
fn own_patches(x: &Tensor, kernel: &Tensor, cfg: &ConvCfg) -> Result<Option<Patches>> {
    let (batch, channels, h, w) = x.dims4()?;
    let (c_out, c_in, kh, kw) = kernel.dims4()?;
    let g = cfg.groups;
    let p = Patches::new((batch, c_in, h, w), kh, kw, cfg);
    if g == 0 || c_in * g != channels || c_out % g != 0 || p.is_none() {
        candle_core::bail!(
            "conv2d: input {:?} does not fit kernel {:?} with {cfg:?}",
            x.dims(),
            kernel.dims()
        );
    }
    let native = x.device().is_cpu() && x.dtype() == candle_core::DType::F32;
    Ok(p.filter(|_| native && g == 1 && !use_candle_conv()))
}

/// The convolutions our ops do not take: candle's own where asked or off the CPU, and a grouped one as
/// each group on its channel slice, concatenated.
fn other_conv2d(x: &Tensor, kernel: &Tensor, cfg: &ConvCfg) -> Result<Tensor> {
    let (c_out, c_in, _, _) = kernel.dims4()?;
    let g = cfg.groups;
    if use_candle_conv() || !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
        return candle_conv2d(x, kernel, cfg);
    }
    let per = c_out / g;
    let single = ConvCfg { groups: 1, ..*cfg };
    let parts = (0..g)
        .map(|i| {
            conv2d(
                &x.narrow(1, i * c_in, c_in)?,
                &kernel.narrow(0, i * per, per)?,
                &single,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 1)
}

/// candle's own `conv2d`: the path for non-f32 or non-CPU tensors, and for `LMT_CONV=candle` (A/B
/// benchmarks). It needs equal strides and dilations on both axes.
/// The zero padding is applied explicitly, trimmed to exactly the rows and columns the windows read:
/// candle's conv2d backward omits the output padding a strided layer needs when the windows do not end
/// at the input's edge (e.g. 3x3, stride 2, pad 1 on an even size), and then returns an input gradient
/// of the wrong shape. Same values, correct gradients.
fn candle_conv2d(x: &Tensor, weight: &Tensor, cfg: &ConvCfg) -> Result<Tensor> {
    let ((s, sw), (d, dw)) = (cfg.stride, cfg.dilation);
    if s != sw || d != dw {
        candle_core::bail!("conv2d: candle's convolution needs equal strides and dilations on both axes, got {cfg:?}");
    }
    let [pt, pl, pb, pr] = cfg.pads;
    let (_, _, kh, kw) = weight.dims4()?;
    let mut x = x.clone();
    for (dim, k, before, after) in [(2, kh, pt, pb), (3, kw, pl, pr)] {
        let size = x.dim(dim)?;
        let extent = (k - 1) * d + 1;
        let out = (size + before + after - extent) / s + 1;
        let read = (out - 1) * s + extent; // padded extent the windows touch
        if read >= size + before {
            x = x.pad_with_zeros(dim, before, read - size - before)?;
        } else {
            x = x
                .narrow(dim, 0, read - before)?
                .pad_with_zeros(dim, before, 0)?;
        }
    }
    x.conv2d(weight, 0, s, d, cfg.groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every small geometry of a 2-channel image: sizes 1-6, kernels 1-3, strides 1, 2 and 3 in each
    /// direction, dilations, no, even and uneven pads (those whose kernel fits the padded input).
    fn small_geometries() -> Vec<Patches> {
        let mut all = Vec::new();
        for (h, w, kh, kw) in (1..7)
            .flat_map(|h| (1..7).map(move |w| (h, w)))
            .flat_map(|(h, w)| (1..4).flat_map(move |kh| (1..4).map(move |kw| (h, w, kh, kw))))
        {
            for (stride, dilation, pads) in [(1, 1), (1, 2), (2, 1), (2, 2), (3, 3)]
                .into_iter()
                .flat_map(|s| [(1, 1), (2, 1), (1, 2)].map(|d| (s, d)))
                .flat_map(|(s, d)| [[0, 0, 0, 0], [1, 1, 1, 1], [2, 1, 0, 2]].map(|p| (s, d, p)))
            {
                let cfg = ConvCfg {
                    stride,
                    pads,
                    dilation,
                    groups: 1,
                };
                all.extend(Patches::new((1, 2, h, w), kh, kw, &cfg));
            }
        }
        all
    }

    /// The patch matrix equals its definition bit for bit on every small geometry (strides, dilations,
    /// uneven pads): each entry is the input pixel it reads, or 0 in the padding.
    #[test]
    fn gather_writes_the_patch_matrix_of_its_definition() {
        let mut padded = 0;
        for p in small_geometries() {
            let (h, w, kh, kw) = (p.h, p.w, p.kh, p.kw);
            let img: Vec<f32> = (0..p.image_len()).map(|v| v as f32 + 1.0).collect();
            let (ow, px) = (p.out_w(), p.pixels());
            // Both routes, each on a scratch reused as the convolutions reuse theirs: zeroed,
            // then a first image (NaN, which must not survive where the padding is read).
            let ((sh, sw), (dh, dw), (pt, pl)) = (p.stride, p.dilation, p.pad);
            for route in [false, true] {
                let gather = Gather::with_route(p, route);
                let mut scratch = vec![0f32; gather.scratch_len()];
                gather.run(&vec![f32::NAN; p.image_len()], &mut scratch);
                let cols = gather.run(&img, &mut scratch);
                for (e, row) in cols.chunks(px).enumerate() {
                    let (c, i, j) = (e / (kh * kw), e / kw % kh, e % kw);
                    for (q, &got) in row.iter().enumerate() {
                        let ih = ((q / ow) * sh + i * dh) as isize - pt as isize;
                        let iw = ((q % ow) * sw + j * dw) as isize - pl as isize;
                        let inside = (0..h as isize).contains(&ih) && (0..w as isize).contains(&iw);
                        let want = if inside {
                            img[(c * h + ih as usize) * w + iw as usize]
                        } else {
                            0.0
                        };
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{p:?} route {route} entry {e} pixel {q}"
                        );
                    }
                }
            }
            padded += usize::from(pl > 0 && pt > 0);
        }
        assert!(padded > 100, "{padded} padded cases");
    }

    /// col2im adds every patch-matrix entry to the pixel it read, bit for bit as the definition in the
    /// order kernel column, channel, kernel row, output row (signed zeros, NaN and infinities among the
    /// terms), whatever the scratch held before, on every small geometry.
    #[test]
    fn scatter_adds_each_entry_to_the_pixel_it_read() {
        let special = [-0.0, 0.0, f32::INFINITY, f32::NAN, -1e-45, 3e38];
        let mut cases = 0;
        for p in small_geometries() {
            let (h, w, kh, kw) = (p.h, p.w, p.kh, p.kw);
            let (oh, ow, px) = (p.out_h(), p.out_w(), p.pixels());
            let n = p.patch_len() * px;
            // Terms of mixed sign and size, a few special values, then NaN in the slack.
            let mut gcols: Vec<f32> = (0..n)
                .map(|v| match v % 11 {
                    3 => special[v / 11 % special.len()],
                    r => (r as f32 - 5.0) * 0.1f32.powi((v % 7) as i32),
                })
                .collect();
            gcols.extend([f32::NAN; SLACK]);
            let mut want = vec![0f32; p.image_len()];
            let ((sh, sw), (dh, dw), (pt, pl)) = (p.stride, p.dilation, p.pad);
            for j in 0..kw {
                for c in 0..2 {
                    for i in 0..kh {
                        for y in 0..oh {
                            for x in 0..ow {
                                let ih = (y * sh + i * dh) as isize - pt as isize;
                                let iw = (x * sw + j * dw) as isize - pl as isize;
                                if (0..h as isize).contains(&ih) && (0..w as isize).contains(&iw) {
                                    let e = (c * kh + i) * kw + j;
                                    want[(c * h + ih as usize) * w + iw as usize] +=
                                        gcols[e * px + y * ow + x];
                                }
                            }
                        }
                    }
                }
            }
            let padded = Padded::new(&p);
            let mut buf = vec![f32::NAN; padded.len(2)];
            let mut got = vec![0f32; p.image_len()];
            padded.scatter(&p, &gcols, &mut buf, &mut got);
            for (q, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "{p:?} pixel {q}: {g} against {w}");
            }
            cases += 1;
        }
        assert!(cases > 1000, "{cases} cases");
    }

    /// The convolution's gemm under portable numerics sums a 1024-deep product in two 512-deep passes
    /// on every host: 2^24 at depth 0 and ones from depth 512 on keep their 512 (one pass would round
    /// each 1 away), also when accumulating into `dst` and with a transposed operand.
    #[test]
    fn portable_sgemm_reduces_in_512_deep_passes() {
        let (m, n, k) = (65, 65, 1024);
        let big = 16_777_216f32;
        let lhs = vec![1f32; m * k];
        let rhs = crate::numerics::depth_probe(k, n);
        let rhs_t: Vec<f32> = (0..n * k).map(|i| rhs[(i % k) * n + i / k]).collect();
        for (rhs, accumulate) in [
            (Mat::rows(&rhs, n), false),
            (Mat::transposed(&rhs_t, k), false),
            (Mat::rows(&rhs, n), true),
        ] {
            let mut dst = vec![if accumulate { 2.0 } else { f32::NAN }; m * n];
            let lhs = Mat::rows(&lhs, k);
            sgemm_in(Numerics::Portable, m, n, k, &mut dst, accumulate, lhs, rhs);
            let want = if accumulate {
                big + 512.0 + 2.0
            } else {
                big + 512.0
            };
            assert!(dst.iter().all(|&x| x == want), "{:?}", &dst[..3]);
        }
    }
}
