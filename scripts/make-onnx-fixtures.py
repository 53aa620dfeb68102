#!/usr/bin/env python3
"""Writes the ONNX fixtures of lmt-onnx's tests (run once; the tests need no Python).

Five small image classifiers, built in PyTorch with random weights and random batch-norm statistics and
exported with torch.onnx.export, cover what exporters write for ordinary classifiers:

  cnn_bn_maxpool          Conv, BatchNormalization (kept: no constant folding), MaxPool, an asymmetric
                          ZeroPad2d, Flatten, Gemm; TorchScript exporter, opset 9, fixed batch 1
  resnet_avgpool          a residual block with a 1x1 stride-2 shortcut, AveragePool with
                          count_include_pad=False, global average pooling; torch.export (dynamo)
                          exporter, opset 18, batch norm folded into the convolutions
  mlp_normalised_sigmoid  (x - mean) / std as Sub and Div, Gemm, Sigmoid; flat (N, 784) input;
                          TorchScript exporter, opset 11, dynamic batch
  depthwise_concat        a depthwise dilated convolution, LeakyRelu, Tanh, Concat, overlapping padded
                          MaxPool, x.view(x.size(0), -1) (a Shape/Gather/Concat/Reshape chain) and a
                          final Softmax; TorchScript exporter, opset 13, dynamic batch
  mlp_unbatched           one sample per call: input (784,), output (10,), MatMul + Add instead of Gemm,
                          LeakyRelu(0.2); TorchScript exporter, opset 17

For each, crates/lmt-onnx/tests/fixtures/<name>.onnx and <name>_io.safetensors with
  inputs       8 images in [0, 1] (float32)
  logits       what PyTorch computes for them in eval mode (before the final softmax)
  bound_l      the exact L2 Lipschitz bound of the whole network by the layer rules (float64): every
               linear layer's exact operator norm (the largest singular value of its Jacobian, with
               batch norm folded into the convolution before it), 1 for ReLU, tanh, LeakyReLU(0.1) and
               padding, 1/4 for the sigmoid, sqrt(n) for max pooling (Thm. 3), composed by products,
               sums for residual additions and root sums of squares for concatenations
  bound_l_sub  the same for the network below its last linear layer
and two bad files made from cnn_bn_maxpool: bad_unknown_op.onnx (a ReLU turned into Erf, an op lmt-rs
does not bound) and bad_missing_initializer.onnx (conv2's weight removed).

Usage: bench/pytorch/.venv/bin/python scripts/make-onnx-fixtures.py  (needs torch, onnx, onnxscript,
safetensors; `make bench-compare` installs the first into bench/pytorch/.venv)
"""

import copy
import pathlib
import warnings

import onnx
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "lmt-onnx" / "tests" / "fixtures"


def op_norm(f, shape):
    """The exact norm of the linear part of f on inputs of `shape` (float64 Jacobian at zero)."""
    x = torch.zeros(shape, dtype=torch.float64)
    j = torch.autograd.functional.jacobian(f, x)
    j = j.reshape(-1, x.numel())
    return torch.linalg.matrix_norm(j, ord=2).item()


def randomise_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 4, stride=2), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 6 * 6, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.bn2(self.conv2(self.pad(x))))
        return self.fc(torch.flatten(x, 1))

    def bounds(self):
        a = op_norm(lambda x: self.bn1(self.conv1(x)), (1, 1, 28, 28))
        b = op_norm(lambda x: self.bn2(self.conv2(x)), (1, 8, 15, 15))
        l_sub = a * 1.0 * b  # max pool 2x2 stride 2: each pixel in one window (Thm. 3: 1)
        return l_sub * op_norm(self.fc, (1, 576)), l_sub


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c1, self.b1 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.short, self.bs = nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16)
        self.avg = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        a = F.relu(self.bn0(self.stem(x)))
        y = self.b2(self.c2(F.relu(self.b1(self.c1(a)))))
        h = F.relu(y + self.bs(self.short(a)))
        h = F.adaptive_avg_pool2d(self.avg(h), 1)
        return self.fc(torch.flatten(h, 1))

    def bounds(self):
        a = op_norm(lambda x: self.bn0(self.stem(x)), (1, 3, 16, 16))
        branch = op_norm(lambda x: self.b1(self.c1(x)), (1, 8, 16, 16)) * op_norm(
            lambda x: self.b2(self.c2(x)), (1, 16, 8, 8)
        )
        short = op_norm(lambda x: self.bs(self.short(x)), (1, 8, 16, 16))
        avg = op_norm(self.avg, (1, 1, 8, 8))  # every channel alike
        l_sub = a * (branch + short) * avg * (1.0 / 8.0)  # global mean of 64 pixels: 1/sqrt(64)
        return l_sub * op_norm(self.fc, (1, 16)), l_sub


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.1307]))
        self.register_buffer("std", torch.tensor([0.3081]))
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 64), nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x):
        x = (x - self.mean) / self.std
        return self.fc3(torch.sigmoid(self.fc2(torch.sigmoid(self.fc1(x)))))

    def bounds(self):
        l_sub = (1.0 / self.std.item()) * op_norm(self.fc1, (1, 784)) * 0.25 * op_norm(self.fc2, (1, 64)) * 0.25
        return l_sub * op_norm(self.fc3, (1, 32)), l_sub


class Unbatched(nn.Module):
    """One sample at a time, (784,) in and (10,) out: the exporter writes MatMul + Add, not Gemm."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 32), nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(F.leaky_relu(self.fc1(x), 0.2))

    def bounds(self):
        l_sub = op_norm(self.fc1, (784,)) * 1.0
        return l_sub * op_norm(self.fc2, (32,)), l_sub


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(16 * 14 * 14, 10)

    def logits(self, x):
        a = F.relu(self.c1(x))
        b = torch.tanh(self.pw(F.leaky_relu(self.dw(a), 0.1)))
        h = F.max_pool2d(torch.cat([b, a], 1), 3, stride=2, padding=1)
        return self.fc(h.view(h.size(0), -1))

    def forward(self, x):
        return F.softmax(self.logits(x), dim=1)

    def bounds(self):
        la = op_norm(self.c1, (1, 1, 28, 28))
        dw = max(
            op_norm(lambda x: F.conv2d(x, self.dw.weight[c : c + 1], padding=2, dilation=2), (1, 1, 28, 28))
            for c in range(8)
        )
        pw = torch.linalg.matrix_norm(self.pw.weight[:, :, 0, 0], ord=2).item()  # a 1x1 conv: W (x) I
        lb = la * dw * 1.0 * pw * 1.0
        # 3x3 windows at stride 2 on 28 + 2: a pixel lies in at most 2 x 2 windows (Thm. 3: sqrt(4)).
        l_sub = (la**2 + lb**2) ** 0.5 * 2.0
        return l_sub * op_norm(self.fc, (1, 3136)), l_sub


def export(name, model, shape, dynamo, opset, dynamic_batch, fold=True, unbatched=False):
    model.eval()
    randomise_bn(model)
    x = torch.rand(*shape)
    example = x[0] if unbatched else x[:1]
    path = OUT / f"{name}.onnx"
    kwargs = dict(input_names=["images"], output_names=["scores"], opset_version=opset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (example,), path, dynamo=True, external_data=False, **kwargs)
        else:
            axes = {"images": {0: "N"}, "scores": {0: "N"}} if dynamic_batch else None
            torch.onnx.export(
                model, (example,), path, dynamo=False, dynamic_axes=axes, do_constant_folding=fold, **kwargs
            )
    with torch.no_grad():
        logits = model.logits(x) if hasattr(model, "logits") else model(x)  # batched: the same per sample
    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        l, l_sub = m64.bounds()
    save_file(
        {
            "inputs": x.contiguous(),
            "logits": logits.contiguous(),
            "bound_l": torch.tensor([l], dtype=torch.float64),
            "bound_l_sub": torch.tensor([l_sub], dtype=torch.float64),
        },
        OUT / f"{name}_io.safetensors",
    )
    ops = sorted({n.op_type for n in onnx.load(path).graph.node})
    print(f"{name}: opset {opset}, {'dynamo' if dynamo else 'torchscript'}, L = {l:.6f}, L_sub = {l_sub:.6f}, ops {ops}")
    return path


def bad_files(path):
    m = onnx.load(path)
    m.graph.node[[n.op_type for n in m.graph.node].index("Relu")].op_type = "Erf"
    onnx.save(m, OUT / "bad_unknown_op.onnx")
    m = onnx.load(path)
    gone = [i for i in m.graph.initializer if i.name.endswith("conv2.weight")][0]
    m.graph.initializer.remove(gone)
    onnx.save(m, OUT / "bad_missing_initializer.onnx")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(2018)
    cnn = export("cnn_bn_maxpool", Cnn(), (8, 1, 28, 28), dynamo=False, opset=9, dynamic_batch=False, fold=False)
    export("resnet_avgpool", ResNet(), (8, 3, 16, 16), dynamo=True, opset=18, dynamic_batch=True)
    export("mlp_normalised_sigmoid", Mlp(), (8, 784), dynamo=False, opset=11, dynamic_batch=True)
    export("depthwise_concat", Depthwise(), (8, 1, 28, 28), dynamo=False, opset=13, dynamic_batch=True)
    export("mlp_unbatched", Unbatched(), (8, 784), dynamo=False, opset=17, dynamic_batch=False, unbatched=True)
    bad_files(cnn)
    print(f"torch {torch.__version__}, onnx {onnx.__version__}")


if __name__ == "__main__":
    main()
