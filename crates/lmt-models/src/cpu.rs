//! What our CPU custom ops share: contiguous f32 access to their operands, and one parallel loop on
//! candle's own worker pool (`candle_core::utils::barrier_pool`).
//!
//! Why that pool: candle runs its elementwise ops on it, and its workers spin for a while after each op;
//! a second pool (rayon's) for our convolutions then competes with spinning threads for the same cores
//! (on 2 cores, 3 runnable threads). Running our loops on candle's pool keeps exactly one thread per
//! core busy, and the calling thread works too.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use candle_core::{CpuStorage, Layout, Result};

/// The contiguous f32 data of an operand, or an error naming the op.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: only f32 tensors are supported")
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

/// The two contiguous f32 operands of a custom op.
pub(crate) fn operands<'a>(
    op: &str,
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
) -> Result<(&'a [f32], &'a [f32])> {
    Ok((contiguous_f32(s1, l1, op)?, contiguous_f32(s2, l2, op)?))
}

/// Below this many multiply-adds in all, a loop runs on the calling thread: waking the pool costs more,
/// and a pool worker that another process keeps off the CPU makes the caller spin for a whole time slice
/// (a test suite of tiny convolutions next to a training run went from 8 s to 116 s without this).
const POOL_MIN_WORK: usize = 1 << 18;

/// Calls `f(i, &mut items[i], state)` for every item: on the calling thread where `work` (multiply-adds
/// in all) is below [`POOL_MIN_WORK`], else on candle's pool, items handed out one at a time so uneven
/// work balances. `state` makes each thread's scratch once, when it takes its first item. Each call
/// touches only its own item, so the result does not depend on the schedule.
fn on_pool<T: Send, S>(
    items: Vec<T>,
    work: usize,
    state: impl Fn() -> S + Sync,
    f: impl Fn(usize, &mut T, &mut S) + Sync,
) {
    if items.len() <= 1 || work < POOL_MIN_WORK {
        let mut s = state();
        for (i, mut item) in items.into_iter().enumerate() {
            f(i, &mut item, &mut s);
        }
        return;
    }
    let slots: Vec<Mutex<T>> = items.into_iter().map(Mutex::new).collect();
    let next = AtomicUsize::new(0);
    candle_core::utils::barrier_pool().execute(|_| {
        let mut s = None;
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(slot) = slots.get(i) else { break };
            let s = s.get_or_insert_with(&state);
            let mut item = slot.lock().unwrap_or_else(|e| e.into_inner());
            f(i, &mut item, s);
        }
    });
}

/// A new vector of `len` floats, written by `f(i, out_i, scratch)` for every chunk `out_i` (the i-th
/// `chunk` floats, zeroed just before by the thread that writes it), where `scratch` is a zeroed-once
/// buffer of `scratch_len` floats owned by that thread and `work` the cost of one chunk in multiply-adds,
/// to keep small loops on the calling thread. Zeroing each chunk where it is written keeps the fill
/// parallel and the chunk in that core's cache, instead of a serial pass over the whole output first.
pub(crate) fn new_chunked(
    len: usize,
    chunk: usize,
    scratch_len: usize,
    work: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    extend_chunked(&mut out, len, chunk, scratch_len, work, f);
    out
}

/// Appends `len` floats to `out` as [`new_chunked`] makes them (the i-th chunk of the new part zeroed,
/// then written by `f`), so an op can allocate room for a few values more once.
pub(crate) fn extend_chunked(
    out: &mut Vec<f32>,
    len: usize,
    chunk: usize,
    scratch_len: usize,
    work: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) {
    if chunk == 0 {
        out.resize(out.len() + len, 0.0);
        return;
    }
    out.reserve(len);
    let old = out.len();
    let items: Vec<&mut [MaybeUninit<f32>]> =
        out.spare_capacity_mut()[..len].chunks_mut(chunk).collect();
    let (count, total) = (items.len(), items.len().saturating_mul(work));
    let done = AtomicUsize::new(0);
    on_pool(
        items,
        total,
        || vec![0f32; scratch_len],
        |i, o, scratch| {
            f(i, zeroed(o), scratch);
            done.fetch_add(1, Ordering::Relaxed);
        },
    );
    assert_eq!(
        done.into_inner(),
        count,
        "a chunk of a new vector was not written"
    );
    // SAFETY: every chunk of `out[old..old + len]` was initialised by `zeroed` (counted above).
    unsafe { out.set_len(old + len) };
}

/// Zeroes a chunk of uninitialised floats and returns it as initialised.
fn zeroed(o: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    o.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was just written; `MaybeUninit<f32>` has the layout of `f32`.
    unsafe { &mut *(o as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// `count` new vectors of `len` floats each, written by `f(i, outs_i)` for every `i`, where `outs_i`
/// holds the i-th `chunk` of each vector, zeroed by the thread that writes it just before (see
/// [`new_chunked`]); on candle's pool where there is enough work (`work` multiply-adds per entry): an
/// elementwise pass that writes several arrays at once, such as an optimiser update.
pub fn new_chunks_of(
    count: usize,
    len: usize,
    chunk: usize,
    work: usize,
    f: impl Fn(usize, &mut [&mut [f32]]) + Sync,
) -> Vec<Vec<f32>> {
    let mut outs: Vec<Vec<f32>> = (0..count).map(|_| Vec::with_capacity(len)).collect();
    if chunk == 0 || len == 0 || count == 0 {
        outs.iter_mut().for_each(|o| o.resize(len, 0.0));
        return outs;
    }
    let items_n = len.div_ceil(chunk);
    {
        let mut iters: Vec<_> = outs
            .iter_mut()
            .map(|o| o.spare_capacity_mut()[..len].chunks_mut(chunk))
            .collect();
        let items: Vec<Vec<&mut [MaybeUninit<f32>]>> = (0..items_n)
            .map(|_| iters.iter_mut().filter_map(Iterator::next).collect())
            .collect();
        let done = AtomicUsize::new(0);
        on_pool(
            items,
            len.saturating_mul(work),
            || (),
            |i, o, _| {
                let mut chunks: Vec<&mut [f32]> = o.iter_mut().map(|c| zeroed(c)).collect();
                f(i, &mut chunks);
                done.fetch_add(1, Ordering::Relaxed);
            },
        );
        assert_eq!(
            done.into_inner(),
            items_n,
            "a chunk of a new vector was not written"
        );
    }
    for o in &mut outs {
        // SAFETY: every chunk of every vector was initialised by `zeroed` (counted above).
        unsafe { o.set_len(len) };
    }
    outs
}

/// The widest gemm kernels this build uses on this CPU (chosen by the gemm crate at run time):
/// `avx512f` (only with the `avx512` feature), `avx2+fma`, or `baseline`. For benchmark entries and
/// manifests: the same build gives other last bits on hosts of another kind.
pub fn gemm_path() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "avx2+fma";
        }
    }
    "baseline"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every chunk reaches its writer zeroed and in order (the last one short), on the calling thread
    /// and on the pool alike, and the result holds exactly what the writers wrote; `chunk == 0` gives
    /// zeros without calling the writer.
    #[test]
    fn new_chunked_hands_each_writer_a_zeroed_chunk() {
        for (len, chunk, work) in [(10, 4, 1), (1000, 7, POOL_MIN_WORK), (64, 64, 1), (0, 3, 1)] {
            // Dirty memory for the allocator to hand out again.
            drop(vec![f32::NAN; len.max(1) * 4]);
            let out = new_chunked(len, chunk, 3, work, |i, o, scratch| {
                assert!(o.iter().all(|v| v.to_bits() == 0), "chunk {i} not zeroed");
                assert_eq!(o.len(), chunk.min(len - i * chunk));
                assert!(scratch.len() == 3);
                o.iter_mut()
                    .enumerate()
                    .for_each(|(k, v)| *v = (i * chunk + k) as f32);
            });
            let want: Vec<f32> = (0..len).map(|k| k as f32).collect();
            assert_eq!(out, want, "len {len}, chunk {chunk}");
        }
        let zeros = new_chunked(5, 0, 0, 1, |_, _, _| panic!("no chunk to write"));
        assert_eq!(zeros, vec![0.0; 5]);
        let mut head = vec![7.0f32, 8.0];
        extend_chunked(&mut head, 3, 2, 0, 1, |i, o, _| o.fill(i as f32 + 1.0));
        assert_eq!(head, vec![7.0, 8.0, 1.0, 1.0, 2.0]);
    }

    /// Each of several new vectors gets its own zeroed chunk per item, written together.
    #[test]
    fn new_chunks_of_writes_every_vector() {
        let outs = new_chunks_of(3, 10, 4, POOL_MIN_WORK, |i, o| {
            assert_eq!(o.len(), 3);
            for (v, out) in o.iter_mut().enumerate() {
                assert!(out.iter().all(|x| x.to_bits() == 0));
                out.fill((10 * v + i) as f32);
            }
        });
        for (v, out) in outs.iter().enumerate() {
            let want: Vec<f32> = (0..10).map(|k| (10 * v + k / 4) as f32).collect();
            assert_eq!(out, &want);
        }
        assert_eq!(
            new_chunks_of(2, 0, 4, 1, |_, _| {}),
            vec![Vec::<f32>::new(); 2]
        );
    }
}
