//! How deep products are reduced, so that the same weights and data give the same bits on every host.
//!
//! Why: the gemm crate (our convolution's and candle's matmuls) splits a product deeper than its depth
//! block into blocks of near-equal depth and adds their partial sums afterwards, and it sizes that block
//! from the L1 cache it reads at run time (`gemm-common` 0.19 `kernel_params`: at least 512, 1024 on
//! a 48 KiB 12-way L1). So a matmul deeper than 512 rounds differently on hosts with different blocks.
//! Under [`Numerics::Portable`] we split every such product ourselves, exactly as gemm splits it on a
//! host whose block is 512 (the smallest it ever uses), so each piece is summed in one pass everywhere
//! and every host reduces like a 512-block host. Products that gemm blocks the same way on every host
//! (its matrix-vector, tiny-output and small-size paths; see `depth_ranges`) are left alone. Measured:
//! on a 1024-block host, portable smoke trainings give the 512-block host's checkpoints bit for bit.

use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{Result, Tensor};

/// The depth block every host's gemm reduces in under [`Numerics::Portable`]: the smallest one the gemm
/// crate chooses on any host.
pub const PORTABLE_DEPTH_BLOCK: usize = 512;

/// How deep f32 products are reduced on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Numerics {
    /// As the gemm crate chooses for this host's cache: the fastest, but the last bits of products
    /// deeper than 512 depend on the host.
    #[default]
    Host,
    /// In gemm's own blocks of a 512-block host, on every host: the same bits everywhere (given the same
    /// kernels, AVX2+FMA), at the cost of one more pass over the output per extra block.
    Portable,
}

impl Numerics {
    /// The mode's name on the command line (`--numerics`, `LMT_NUMERICS`).
    pub fn name(self) -> &'static str {
        match self {
            Numerics::Host => "host",
            Numerics::Portable => "portable",
        }
    }
}

static NUMERICS: AtomicU8 = AtomicU8::new(0);

/// Chooses how deep products are reduced for the rest of the process (every thread). Set it once, before
/// any training or evaluation: a run that switches midway mixes the two.
pub fn set_numerics(n: Numerics) {
    NUMERICS.store(matches!(n, Numerics::Portable) as u8, Ordering::Relaxed);
}

/// How deep products are currently reduced ([`Numerics::Host`] unless [`set_numerics`] said otherwise).
pub fn numerics() -> Numerics {
    match NUMERICS.load(Ordering::Relaxed) {
        0 => Numerics::Host,
        _ => Numerics::Portable,
    }
}

/// The depth ranges an `m x k` by `k x n` product is reduced in under `mode`, in order: one range
/// unless the mode is portable and gemm would block the product by its cache; then gemm's own balanced
/// split of a 512-block host, `ceil(k / ceil(k / 512))` deep, the last range shorter. gemm's paths that
/// block the same way on every host are left alone: matrix-vector products (an output side of 1), its
/// kernel for at most 256 outputs (1024-deep blocks) and its small-size path (both sides at most 64,
/// 512-deep blocks).
pub(crate) fn depth_ranges(mode: Numerics, m: usize, n: usize, k: usize) -> Vec<Range<usize>> {
    let own_blocks = m <= 1 || n <= 1 || m * n <= 256 || (m <= 64 && n <= 64);
    if mode == Numerics::Host || own_blocks || k <= PORTABLE_DEPTH_BLOCK {
        #[allow(clippy::single_range_in_vec_init)]
        return vec![0..k];
    }
    let block = k.div_ceil(k.div_ceil(PORTABLE_DEPTH_BLOCK));
    (0..k)
        .step_by(block)
        .map(|s| s..(s + block).min(k))
        .collect()
}

/// `a · b` over the last axis of `a` and the second-to-last of `b` (candle's `broadcast_matmul`),
/// reduced as [`numerics`] says: under portable numerics a CPU product that gemm would block by its
/// cache is computed per depth range and the pieces added in order, which is what gemm does with its
/// blocks. Differentiable like the plain product.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_with(numerics(), a, b)
}

/// [`matmul`] under the given mode.
fn matmul_with(mode: Numerics, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ra, rb) = (a.rank(), b.rank());
    if ra < 2 || rb < 2 || !a.device().is_cpu() {
        return a.broadcast_matmul(b);
    }
    let (m, k, n) = (a.dim(ra - 2)?, a.dim(ra - 1)?, b.dim(rb - 1)?);
    let ranges = depth_ranges(mode, m, n, k);
    if ranges.len() == 1 {
        return a.broadcast_matmul(b);
    }
    let mut sum: Option<Tensor> = None;
    for r in ranges {
        let piece = a
            .narrow(ra - 1, r.start, r.len())?
            .contiguous()?
            .broadcast_matmul(&b.narrow(rb - 2, r.start, r.len())?)?;
        sum = Some(match sum {
            None => piece,
            Some(s) => (s + piece)?,
        });
    }
    Ok(sum.expect("at least two ranges"))
}

/// A `k x n` right operand (row-major) on which a 512 and a 1024 depth block differ: 2^24 at depth 0
/// and ones from depth `k / 2` on; times a matrix of ones, one 1024-deep pass rounds every 1 away and
/// two 512-deep passes keep their sum (`2^24 + k / 2`).
#[cfg(test)]
pub(crate) fn depth_probe(k: usize, n: usize) -> Vec<f32> {
    let mut b = vec![0f32; k * n];
    for j in 0..n {
        b[j] = 16_777_216.0;
        for d in k / 2..k {
            b[d * n + j] = 1.0;
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn ranges_follow_gemms_balanced_split_of_a_512_block_host() {
        let lens = |m, n, k| -> Vec<usize> {
            depth_ranges(Numerics::Portable, m, n, k)
                .iter()
                .map(|r| r.len())
                .collect()
        };
        // The Kolter-Wong first dense layer: 1568 = 4 x 392.
        assert_eq!(lens(50, 100, 1568), vec![392; 4]);
        // The WRN's kernel gradient over a 32 x 32 image: 1024 = 2 x 512.
        assert_eq!(lens(16, 144, 1024), vec![512, 512]);
        // 1025 = 3 blocks of 342, the last 341.
        assert_eq!(lens(65, 65, 1025), vec![342, 342, 341]);
        // Not blocked by the cache: small outputs, shallow products, or host numerics.
        assert_eq!(lens(64, 64, 4096), vec![4096]);
        assert_eq!(lens(500, 500, 512), vec![512]);
        assert_eq!(lens(1, 100, 1568), vec![1568]);
        assert_eq!(lens(2, 100, 1568), vec![1568]);
        assert_eq!(depth_ranges(Numerics::Host, 500, 500, 4096).len(), 1);
        let r = depth_ranges(Numerics::Portable, 100, 100, 1537);
        assert_eq!((r[0].start, r.last().unwrap().end), (0, 1537));
        assert!(r.windows(2).all(|w| w[0].end == w[1].start));
    }

    /// A depth at which a 512 and a 1024 block differ: 2^24 at depth 0 and ones from depth 512 on, which
    /// one pass absorbs (round to even) and a block boundary at 512 adds up first and keeps. Under
    /// portable numerics every host gives the 512-block answer.
    #[test]
    fn portable_products_are_blocked_like_a_512_block_host() {
        let (m, n, k) = (65, 65, 1024);
        let a = Tensor::ones((m, k), candle_core::DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::from_vec(depth_probe(k, n), (k, n), &Device::Cpu).unwrap();
        let got = matmul_with(Numerics::Portable, &a, &b).unwrap();
        let v: Vec<Vec<f32>> = got.to_vec2().unwrap();
        assert!(v.iter().flatten().all(|&x| x == 16_777_216.0 + 512.0));
        // Host numerics on a host whose block is 1024 absorb every 1 (and agree on a 512-block host).
        let host: Vec<Vec<f32>> = matmul_with(Numerics::Host, &a, &b)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert!(host
            .iter()
            .flatten()
            .all(|&x| x == 16_777_216.0 || x == 16_777_216.0 + 512.0));
    }
}
