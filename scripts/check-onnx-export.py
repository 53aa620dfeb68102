#!/usr/bin/env python3
"""Checks ONNX files written by `experiments export` with onnxruntime and the onnx checker.

For each MODEL.onnx given, reads MODEL.check.safetensors (written beside it by `export`: test images and
the checkpoint's logits), runs the model in onnxruntime and prints the largest difference from lmt-rs's
logits. Exits non-zero when a file fails the checker or differs by more than 1e-4 relative.

Usage: bench/pytorch/.venv/bin/python scripts/check-onnx-export.py results/.../model.onnx ...
(needs onnx, onnxruntime, safetensors, numpy)
"""

import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file


def main():
    bad = 0
    for arg in sys.argv[1:]:
        path = pathlib.Path(arg)
        onnx.checker.check_model(onnx.load(path), full_check=True)
        io = load_file(path.with_suffix(".check.safetensors"))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        ours = io["logits"]
        theirs = sess.run(None, {name: io["inputs"].astype(np.float32)})[0]
        worst = float(np.max(np.abs(ours - theirs)))
        scale = float(max(1.0, np.max(np.abs(ours))))
        ok = worst <= 1e-4 * scale
        bad += not ok
        print(f"{path}: onnx checker ok; onnxruntime {ort.__version__} logits on {len(ours)} images within {worst:.2e} (scale {scale:.2f}): {'ok' if ok else 'MISMATCH'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
