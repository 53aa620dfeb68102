"""PyTorch mirrors of lmt-rs's networks, with the same structure and the same state_dict names.

A state_dict of these modules saved with safetensors loads directly into lmt-rs (and the reverse): the
names are lmt-rs's checkpoint names, and tensors have PyTorch's layouts (conv weight (out, in, kh, kw),
linear weight (out, in), NCHW activations flattened in C, H, W order).
"""

import torch
from torch import nn
import torch.nn.functional as F


class KolterWong(nn.Module):
    """The Kolter-Wong MNIST CNN of the LMT paper's MNIST experiments."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 4, stride=2, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 100)
        self.fc2 = nn.Linear(100, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class MinMax(nn.Module):
    """MinMax (GroupSort with groups of two) on axis 1: channel i and i + C/2 become max and min."""

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


def _activation(name):
    return MinMax() if name == "minmax" else nn.ReLU()


class FourCThreeF(nn.Module):
    """The larger MNIST CNN of Wong et al. (2018), BCP, GloRo and BCOP ("4C3F")."""

    def __init__(self, activation="relu"):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, stride=1, padding=1)
        self.conv4 = nn.Conv2d(64, 64, 4, stride=2, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 512)
        self.fc2 = nn.Linear(512, 512)
        self.fc3 = nn.Linear(512, 10)
        self.act = _activation(activation)

    def forward(self, x):
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = self.act(conv(x))
        x = self.act(self.fc1(x.flatten(1)))
        x = self.act(self.fc2(x))
        return self.fc3(x)


def _bn(c):
    # The authors' batch norm: eps 2e-5, decay 0.9 (PyTorch momentum 0.1).
    return nn.BatchNorm2d(c, eps=2e-5, momentum=0.1)


class ConvBn(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = _bn(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class Block(nn.Module):
    """One pre-activation block as the authors build it (lmt-rs wide_resnet.rs): the branch is
    conv2(dropout(relu(bn1(conv1(a))))), the shortcut a strided 1x1 conv of the pre-activated `a` in a
    group's first block and the raw stream otherwise, and the block returns (x', relu(bn_out(x')))."""

    def __init__(self, cin, cout, stride, first, dropout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _bn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if first else None
        self.bn_out = _bn(cout)
        self.dropout = dropout

    def forward(self, a, raw):
        h = F.relu(self.bn1(self.conv1(a)))
        h = self.conv2(F.dropout(h, self.dropout, self.training))
        s = self.shortcut(a) if self.shortcut is not None else raw
        x = h + s
        return x, F.relu(self.bn_out(x))


class WideResNet(nn.Module):
    """WideResNet-(6n+4)-k, the authors' variant (strided 1x1 shortcuts)."""

    def __init__(self, depth=16, width=4, dropout=0.4, classes=10):
        super().__init__()
        n = (depth - 4) // 6
        self.stem = nn.Module()
        self.stem.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.stem.bn = _bn(16)
        cin = 16
        for g, (w, s) in enumerate([(16 * width, 1), (32 * width, 2), (64 * width, 2)], start=1):
            blocks = nn.ModuleList(
                [Block(cin if i == 0 else w, w, s if i == 0 else 1, i == 0, dropout) for i in range(n)]
            )
            setattr(self, f"group{g}", blocks)
            cin = w
        self.fc = nn.Linear(64 * width, classes)

    def forward(self, x):
        a = self.stem.bn(self.stem.conv(x))  # no ReLU after the stem, as the authors
        raw = None
        for g in (self.group1, self.group2, self.group3):
            for block in g:
                raw, a = block(a, raw)
        return self.fc(F.avg_pool2d(a, 8).flatten(1))


def state_dict_for_lmt(model):
    """The state_dict without PyTorch's `num_batches_tracked` counters (lmt-rs has none)."""
    return {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
