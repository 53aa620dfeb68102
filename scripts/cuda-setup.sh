#!/usr/bin/env bash
# The CUDA toolchain of the GPU build (`make gpu`), from PyPI alone: NVIDIA's CUDA 13.0 wheels give nvcc,
# the headers, the runtime, cuBLAS, cuRAND and NVRTC. Installed into .cuda/ (ignored by git), laid out
# as a CUDA root that candle's build scripts understand, with a driver stub so that linking needs no GPU
# and no driver. Idempotent: a finished setup is left as it is. Prints the environment to build with.
#
# Why a generated stub: candle links cudarc with `-lcuda`, the driver library, which comes with the
# NVIDIA driver and not with any wheel. Like the stub CUDA's own toolkit ships for the same purpose, ours
# only defines the driver's function names (taken from cudarc's bindings) under the soname
# libcuda.so.1; at run time the real driver library of that soname is loaded instead.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=.cuda
venv=$dir/venv
# CUDA 13.0 throughout: the release the GPU machines here run (driver 580, nvcc 13.0) and one cudarc knows.
wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
  nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cccl==13.0.85
)
stamp=$dir/ready-$(printf '%s\n' "${wheels[@]}" | sha256sum | cut -c1-12)

if [ ! -e "$stamp" ]; then
  rm -rf "$dir"
  mkdir -p "$dir"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --no-deps "${wheels[@]}"
  root=$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)
  [ -x "$root/bin/nvcc" ] || { echo "cuda-setup: no nvcc under $root after the install" >&2; exit 1; }
  ln -sfn "$(realpath "$root")" "$dir/root"
  # The linker looks for lib<name>.so; the wheels ship only the versioned names.
  for lib in "$dir"/root/lib/lib*.so.*; do
    base=$(basename "$lib")
    ln -sfn "$base" "$dir/root/lib/${base%%.so.*}.so"
  done
  # The driver stub, with every driver function cudarc can call.
  bindings=$(find "${CARGO_HOME:-$HOME/.cargo}"/registry/src -path '*/cudarc-0.19.*/src/driver/sys/mod.rs' | head -1)
  if [ -z "$bindings" ]; then
    cargo fetch -q
    bindings=$(find "${CARGO_HOME:-$HOME/.cargo}"/registry/src -path '*/cudarc-0.19.*/src/driver/sys/mod.rs' | head -1)
  fi
  [ -n "$bindings" ] || { echo "cuda-setup: cudarc's driver bindings not found (cargo fetch failed?)" >&2; exit 1; }
  mkdir -p "$dir/root/lib/stubs"
  grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' "$bindings" | sed 's/^pub unsafe fn //' | sort -u |
    sed 's/.*/int &(void) { return 999; }/' >"$dir/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$dir/root/lib/stubs/libcuda.so" "$dir/stub.c"
  # Only to start a `cuda` binary on a machine without the driver (its CPU path): every call fails.
  ln -sfn libcuda.so "$dir/root/lib/stubs/libcuda.so.1"
  "$dir/root/bin/nvcc" --version | tail -2
  touch "$stamp"
fi

root=$(realpath "$dir/root")
cat <<ENV
export CUDA_ROOT=$root
export PATH=$root/bin:\$PATH
export LIBRARY_PATH=$root/lib:$root/lib/stubs
ENV
