//! 2-D convolution as im2col + one matrix product, with our own gather (`im2col`) and its adjoint
//! scatter (`col2im`) as candle custom ops.
//!
//! Why: candle 0.11.1's CPU convolution computes the input gradient with a scalar scatter loop
//! parallelised over output channels only, and the weight gradient as a poorly tiled convolution
//! (`shared/reference/candle-cpu-performance.md`, items 3-4). Written as `cols(x) · Wᵀ`, both gradients
//! become single large matrix products that candle's gemm handles well, and the input gradient is the
//! scatter `col2im`, which candle skips entirely when the input needs no gradient (the images of a
//! training batch). The two custom ops are each other's adjoint, so each one's backward is the other. Zero padding is part of the gather: reads outside the image give
//! zeros, which also sidesteps candle's missing output padding in strided backward passes.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// The geometry shared by the gather and the scatter: kernel, stride, padding and the input's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Patches {
    batch: usize,
    channels: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
}

impl Patches {
    fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }
    fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }
    /// Entries of one patch: channels x kh x kw, in the order of a flattened (c_in, kh, kw) kernel.
    fn patch_len(&self) -> usize {
        self.channels * self.kh * self.kw
    }
    fn cols_per_image(&self) -> usize {
        self.out_h() * self.out_w() * self.patch_len()
    }
    fn image_len(&self) -> usize {
        self.channels * self.h * self.w
    }

    /// Calls `f(col_offset, image_offset)` for every patch entry of one image that reads inside it; the
    /// entries reading the zero padding are skipped.
    #[inline]
    fn for_each_entry(&self, mut f: impl FnMut(usize, usize)) {
        let (oh, ow) = (self.out_h(), self.out_w());
        let k = self.patch_len();
        for y in 0..oh {
            for x in 0..ow {
                let row = (y * ow + x) * k;
                for c in 0..self.channels {
                    for i in 0..self.kh {
                        let ih = (y * self.stride + i) as isize - self.pad as isize;
                        if ih < 0 || ih >= self.h as isize {
                            continue;
                        }
                        let col = row + (c * self.kh + i) * self.kw;
                        let img = (c * self.h + ih as usize) * self.w;
                        for j in 0..self.kw {
                            let iw = (x * self.stride + j) as isize - self.pad as isize;
                            if iw >= 0 && iw < self.w as isize {
                                f(col + j, img + iw as usize);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: only f32 tensors are supported")
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

/// Gathers every kernel window of a (batch, c, h, w) tensor into the rows of a
/// (batch · out_h · out_w, c · kh · kw) matrix.
struct Im2Col(Patches);

/// The adjoint of [`Im2Col`]: adds every row of the patch matrix back onto the pixels it was read from.
struct Col2Im(Patches);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "lmt-im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let p = self.0;
        let x = contiguous_f32(storage, layout, self.name())?;
        let mut cols = vec![0f32; p.batch * p.cols_per_image()];
        cols.par_chunks_mut(p.cols_per_image().max(1))
            .zip(x.par_chunks(p.image_len().max(1)))
            .for_each(|(dst, img)| p.for_each_entry(|c, i| dst[c] = img[i]));
        let shape = Shape::from((p.batch * p.out_h() * p.out_w(), p.patch_len()));
        Ok((CpuStorage::F32(cols), shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1(Col2Im(self.0))?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "lmt-col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let p = self.0;
        let cols = contiguous_f32(storage, layout, self.name())?;
        let mut x = vec![0f32; p.batch * p.image_len()];
        x.par_chunks_mut(p.image_len().max(1))
            .zip(cols.par_chunks(p.cols_per_image().max(1)))
            .for_each(|(img, src)| p.for_each_entry(|c, i| img[i] += src[c]));
        let shape = Shape::from((p.batch, p.channels, p.h, p.w));
        Ok((CpuStorage::F32(x), shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1(Im2Col(self.0))?))
    }
}

/// The most patch-matrix entries one gather produces before the batch is split.
const COLS_CHUNK_FLOATS: usize = 1 << 22;

/// Whether the environment asks for candle's own convolution (`LMT_CONV=candle`) instead of ours: an
/// A/B switch for benchmarks, read once per process.
pub(crate) fn use_candle_conv() -> bool {
    static CANDLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CANDLE.get_or_init(|| std::env::var("LMT_CONV").is_ok_and(|v| v == "candle"))
}

/// Cross-correlation of `x` (batch, c_in, h, w) with `kernel` (c_out, c_in, kh, kw), equal stride and
/// zero padding on both axes; the same values as candle's `conv2d`, with gradients by im2col + gemm.
/// Falls back to candle's `conv2d` for anything but f32 on the CPU.
pub fn conv2d(x: &Tensor, kernel: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let (batch, channels, h, w) = x.dims4()?;
    let (c_out, c_in, kh, kw) = kernel.dims4()?;
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
        return x.conv2d(kernel, pad, stride, 1, 1);
    }
    if c_in != channels || stride == 0 || h + 2 * pad < kh || w + 2 * pad < kw {
        candle_core::bail!(
            "conv2d: input {:?} does not fit kernel {:?} with stride {stride}, padding {pad}",
            x.dims(),
            kernel.dims()
        );
    }
    // Large batches go through in chunks whose patch matrix stays under about 16 MB: one huge matrix
    // per call costs more in fresh pages than the gemm it feeds (WRN inference at batch 128).
    let per_image = Patches {
        batch: 1,
        channels,
        h,
        w,
        kh,
        kw,
        stride,
        pad,
    }
    .cols_per_image();
    let chunk = (COLS_CHUNK_FLOATS / per_image.max(1)).max(1);
    if batch > chunk {
        let parts = (0..batch)
            .step_by(chunk)
            .map(|start| {
                conv2d(
                    &x.narrow(0, start, chunk.min(batch - start))?,
                    kernel,
                    stride,
                    pad,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        return Tensor::cat(&parts, 0);
    }
    let p = Patches {
        batch,
        channels,
        h,
        w,
        kh,
        kw,
        stride,
        pad,
    };
    let cols = x.contiguous()?.apply_op1(Im2Col(p))?;
    let flat = kernel.reshape((c_out, p.patch_len()))?;
    let y = cols.matmul(&flat.t()?)?; // (batch · out_h · out_w, c_out)
    y.reshape((batch, p.out_h() * p.out_w(), c_out))?
        .transpose(1, 2)?
        .reshape((batch, c_out, p.out_h(), p.out_w()))
}
