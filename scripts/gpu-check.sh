#!/usr/bin/env bash
# The GPU path against the CPU path, on a machine with an NVIDIA GPU and its driver (at least 580, for
# CUDA 13.0). Runs binaries built elsewhere by `make gpu`, so the GPU machine needs no Rust toolchain:
# it needs the gpu-check binary (target/cuda/release/gpu-check, or .gpu/gpu-check.xz from
# `make gpu-pack`), MNIST's test files (data/mnist from `make data`, or .gpu/) and CUDA 13's runtime
# libraries (cuBLAS, cuRAND, NVRTC, cudart), found in $CUDA_LIBS, a Python environment's nvidia/cu13
# wheels (PyTorch's), .cuda/ (`make gpu`) or /usr/local/cuda. Prints one table (also written to
# $OUT/gpu-check.txt, or target/); about 3.5 minutes as a dry run on 2 CPU cores, so well inside 10
# minutes on one H200. Exits non-zero when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${GPU_CHECK_BIN:-target/cuda/release/gpu-check}
if [ ! -x "$bin" ] && [ -e .gpu/gpu-check.xz ]; then
  bin=$(mktemp -d)/gpu-check
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' .gpu/gpu-check.xz "$bin"
  chmod +x "$bin"
fi
[ -x "$bin" ] || { echo "gpu-check: $bin not found; build it with \`make gpu\` (or \`make gpu-pack\`) on any machine" >&2; exit 2; }
mnist=${MNIST_DIR:-data/mnist}
[ -e "$mnist/t10k-labels-idx1-ubyte" ] || [ -e "$mnist/t10k-labels-idx1-ubyte.gz" ] || mnist=.gpu
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

has_libs() { [ -e "$1/libcublas.so.13" ] && [ -e "$1/libcurand.so.10" ] && [ -e "$1/libnvrtc.so.13" ]; }
libs=${CUDA_LIBS:-}
if [ -z "$libs" ]; then
  for py in python3 /opt/torch/.venv/bin/python3; do
    d=$($py -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null || true)
    if [ -n "$d" ] && has_libs "$d"; then libs=$d; break; fi
  done
fi
for d in .cuda/root/lib /usr/local/cuda/lib64; do
  if [ -z "$libs" ] && has_libs "$d"; then libs=$(realpath "$d"); fi
done
[ -n "$libs" ] || { echo "gpu-check: CUDA 13 libraries (libcublas.so.13, libcurand.so.10, libnvrtc.so.13) not found; set CUDA_LIBS" >&2; exit 2; }
# Never the build's driver stub (.cuda/root/lib/stubs): the real libcuda.so.1 comes with the driver.
export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "CUDA libraries from $libs"
threads=$(nproc)
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-$threads}
log=${OUT:-target}/gpu-check.txt
mkdir -p "$(dirname "$log")"
set -o pipefail
timeout 570 "$bin" --mnist-dir "$mnist" "$@" 2>&1 | tee "$log"
