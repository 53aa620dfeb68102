#!/usr/bin/env python3
"""A classifier trained elsewhere, to certify with lmt-rs: the Kolter-Wong MNIST CNN trained in PyTorch
(plain cross-entropy, Adam 1e-3, batch 50, two epochs on data/mnist, seed 0) and exported with
torch.onnx.export, exactly as the README's "Certify your own model" section describes.

Usage: bench/pytorch/.venv/bin/python scripts/pytorch-example.py [OUT.onnx]   (default pytorch_kw.onnx)
then:  experiments certify --onnx pytorch_kw.onnx --dataset mnist
"""

import pathlib
import sys

import numpy as np
import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench" / "pytorch"))
from models import KolterWong  # noqa: E402


def idx(path):
    data = path.read_bytes()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main():
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "pytorch_kw.onnx")
    d = ROOT / "data" / "mnist"
    x = torch.tensor(idx(d / "train-images-idx3-ubyte"), dtype=torch.float32).unsqueeze(1) / 255.0
    y = torch.tensor(idx(d / "train-labels-idx1-ubyte"), dtype=torch.long)
    xt = torch.tensor(idx(d / "t10k-images-idx3-ubyte"), dtype=torch.float32).unsqueeze(1) / 255.0
    yt = torch.tensor(idx(d / "t10k-labels-idx1-ubyte"), dtype=torch.long)
    torch.manual_seed(0)
    model = KolterWong()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(2):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 50):
            b = order[i : i + 50]
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
        with torch.no_grad():
            acc = (model(xt).argmax(1) == yt).float().mean().item()
        print(f"epoch {epoch + 1}: test accuracy {acc:.4f}")
    model.eval()
    # The export: any image classifier in eval mode, a dummy batch of the input shape, a dynamic batch axis.
    torch.onnx.export(
        model,
        (torch.rand(1, 1, 28, 28),),
        out,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "N"}, "logits": {0: "N"}},
        dynamo=False,
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
