#!/usr/bin/env python3
"""`make bench-compare`: each workload of experiments/benches/workloads.rs and bench/pytorch/bench.py,
one process per workload and implementation (so peak RSS is the workload's own), taken in one run on
this machine; prints one Markdown table: lmt-rs with candle's own convolution (`LMT_CONV=candle`, the
state before our im2col op), lmt-rs as it is, PyTorch, and the ratio. Each cell is the median of
BENCH_ROUNDS (default 3) interleaved runs.

The physical-limit columns: `gemm_peak` first measures this host's sustained f32 gemm rate on 2 threads
(a 2048^3 product through the gemm crate and through PyTorch's BLAS; the faster is the peak), then each
training and inference row shows the achieved GFLOP/s (the workload's counted multiply-adds, from
workloads.rs, over its time) and its fraction of that peak, for lmt-rs and for PyTorch."""

import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(ROOT, "bench", "pytorch", ".venv", "bin", "python")
WORKLOADS = [
    "gemm_peak",
    "kw_plain_step_b50",
    "kw_lmt_step_b50",
    "kw_at_cw30_step_b50",
    "kw_plain_step_b128",
    "c4f3_plain_step_b50",
    "c4f3_lmt_step_b50",
    "kw_inference_b1000",
    "wrn_train_step_b32",
    "wrn_inference_b128",
    "wrn1_train_step_b128",
    "wrn1_cw_iteration_b100",
    "kw_deepfool_per_image",
    "kw_cw100_per_image",
    "kw_certified_bound_dense",
    "wrn_certified_bound_auto",
    "kw_certify_10000",
    "kw_onnx_certify_10000",
]


def one(cmd, **env):
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "RAYON_NUM_THREADS": "2", **env})
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        return None
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    return json.loads(lines[-1]) if lines else None


# The machine is noisy (the same workload varies by 10-30% between processes), so each workload runs
# ROUNDS times per implementation, the implementations interleaved, and the table shows the median run.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def median_run(runs):
    runs = sorted((r for r in runs if r), key=lambda r: r["ms"])
    return runs[len(runs) // 2] if runs else None


def has_avx512():
    return any(l.startswith("flags") and " avx512f" in l for l in open("/proc/cpuinfo"))


def main():
    names = sys.argv[1:] or WORKLOADS
    cargo = ["cargo", "bench", "-q", "-p", "experiments", "--bench", "workloads"]
    # The AVX-512 build (feature `avx512`: the gemm crate's x86-v4 kernels) is measured where the CPU
    # has avx512f; its rows read "-" elsewhere.
    avx512 = has_avx512()
    if avx512:
        subprocess.run(cargo + ["--features", "avx512", "--no-run"], cwd=ROOT, check=True)
    rows = []
    for w in names:
        runs = ([], [], [], [])
        for _ in range(ROUNDS):
            runs[0].append(one(cargo + ["--", w], LMT_CONV="candle"))
            runs[1].append(one(cargo + ["--", w]))
            if avx512:
                runs[2].append(one(cargo + ["--features", "avx512", "--", w]))
            if "certif" not in w:
                runs[3].append(one([PY, os.path.join("bench", "pytorch", "bench.py"), w]))
        rows.append((w, *map(median_run, runs)))
        sys.stderr.write(f"{w}: done\n")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    vector = [f for f in flags if f in ("sse4_2", "avx", "avx2", "fma") or f.startswith(("avx512", "amx"))]
    print(f"machine: {platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical cores; 2 threads each")
    print(f"vector extensions: {' '.join(vector) or 'none listed'}")
    print(f"each cell: the median of {ROUNDS} interleaved runs, one process each")
    print(f"PyTorch: {torch_version(rows)}")
    print()
    # Counted operations come from the lmt-rs side (the same workload in both implementations).
    flop = {w: (t or {}).get("flop") for w, _, t, _, _ in rows}
    rate = lambda w, r: flop.get(w) / (r["ms"] * 1e6) if r and flop.get(w) else None
    gemm = next((row for row in rows if row[0] == "gemm_peak"), None)
    peaks = [rate("gemm_peak", r) for r in gemm[2:]] if gemm else []
    peak = max((x for x in peaks if x), default=None)
    if peak:
        names = ("gemm crate (AVX2)", "gemm crate (AVX-512)", "PyTorch")
        print("sustained f32 gemm, 2048^3 on 2 threads: " + ", ".join(
            f"{n} {x:.1f} GFLOP/s" for n, x in zip(names, peaks) if x) + f"; peak taken as {peak:.1f}")
    print()
    print("| workload | lmt-rs, candle conv (ms) | lmt-rs (ms) | lmt-rs AVX-512 (ms) | PyTorch (ms) | lmt-rs / PyTorch | AVX-512 / PyTorch "
          "| RSS lmt-rs / PyTorch (MB) | GFLOP/s lmt-rs (of peak) | GFLOP/s AVX-512 (of peak) | GFLOP/s PyTorch (of peak) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for w, u, t, v, p in rows:
        f = lambda r: f"{r['ms']:.2f}" if r else "-"
        ratio = lambda r: f"{r['ms'] / p['ms']:.2f}x" if r and p else "-"
        rss = f"{t['peak_rss_mb']:.0f} / {p['peak_rss_mb']:.0f}" if t and p else (f"{t['peak_rss_mb']:.0f} / -" if t else "-")
        g = lambda r: f"{rate(w, r):.1f} ({rate(w, r) / peak:.0%})" if peak and rate(w, r) else "-"
        print(f"| {w} | {f(u)} | {f(t)} | {f(v)} | {f(p)} | {ratio(t)} | {ratio(v)} | {rss} | {g(t)} | {g(v)} | {g(p)} |")
    d = {w: (t, p) for w, _, t, _, p in rows}
    print()
    for net in ("kw", "c4f3"):
        lmt, plain = f"{net}_lmt_step_b50", f"{net}_plain_step_b50"
        if lmt in d and plain in d:
            (tl, pl), (tp, pp) = d[lmt], d[plain]
            if tl and tp:
                extra = f", PyTorch {pl['ms'] / pp['ms']:.2f}" if pl and pp else ""
                print(f"LMT step / plain step ({net}, batch 50): lmt-rs {tl['ms'] / tp['ms']:.2f}{extra}")
    print("\n(per_image rows: milliseconds per image, batch of 100 random inputs, untrained model; the PyTorch attacks")
    print("are bench/pytorch/bench.py's mirrors of ours, with frozen parameters so only the input gradient is taken)")


def torch_version(rows):
    for _, _, _, _, p in rows:
        if p:
            return p["impl"]
    return "not run"


if __name__ == "__main__":
    main()
