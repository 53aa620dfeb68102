"""PyTorch reference timings for `make bench-compare`: the same workloads as
experiments/benches/workloads.rs, on random inputs, printing one JSON line per workload.

Usage: bench/pytorch/.venv/bin/python bench/pytorch/bench.py [WORKLOAD ...]
"""

import json
import math
import resource
import sys
import time

import torch
import torch.nn.functional as F

from models import KolterWong, WideResNet

THREADS = 2
ALL = [
    "kw_plain_step_b50",
    "kw_lmt_step_b50",
    "kw_plain_step_b128",
    "kw_inference_b1000",
    "wrn_train_step_b32",
    "wrn_inference_b128",
]


def timed(warm, reps, f):
    for _ in range(warm):
        f()
    t = []
    for _ in range(reps):
        s = time.perf_counter()
        f()
        t.append((time.perf_counter() - s) * 1e3)
    t.sort()
    return t[len(t) // 2]


def batch(b, c, hw):
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, c, hw, hw, generator=g), torch.randint(0, 10, (b,), generator=g)


class PowerLmt:
    """The LMT part as lmt-rs computes it for the Kolter-Wong CNN: per layer a persistent vector u of the
    layer's input shape (batch 1), one power-iteration step per update, sigma = ||A u|| / ||u||,
    L_sub = product of the sigmas below the last layer, Prop. 2 margins c L_sub ||w_i - w_t||."""

    def __init__(self, model):
        self.model = model
        self.u = [torch.randn(1, 1, 28, 28), torch.randn(1, 16, 14, 14), torch.randn(1, 1568)]

    def l_sub(self):
        m = self.model
        ops = [lambda u: F.conv2d(u, m.conv1.weight, stride=2, padding=1),
               lambda u: F.conv2d(u, m.conv2.weight, stride=2, padding=1),
               lambda u: F.linear(u, m.fc1.weight)]
        sig = []
        for i, op in enumerate(ops):
            u = self.u[i].detach().requires_grad_(True)
            un = u / u.norm()
            s = op(un).norm()
            sig.append(s)
            g, = torch.autograd.grad(s * s, u, retain_graph=True)
            self.u[i] = g.detach()
        return sig[0] * sig[1] * sig[2]

    def logits(self, z, y, c=1.0):
        w = self.model.fc2.weight
        diff = (w.unsqueeze(0) - w[y].unsqueeze(1)).norm(dim=2)  # (B, K)
        return z + c * self.l_sub() * diff * (1 - F.one_hot(y, 10))


def train_step(model, b, c, hw, lmt=False):
    x, y = batch(b, c, hw)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    p = PowerLmt(model) if lmt else None
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        z = model(x)
        if p is not None:
            z = p.logits(z, y)
        F.cross_entropy(z, y).backward()
        opt.step()

    warm, reps = (1, 5) if hw > 28 else (5, 30)
    return timed(warm, reps, step)


def inference(model, b, c, hw):
    x, _ = batch(b, c, hw)
    model.eval()

    def f():
        with torch.no_grad():
            model(x)

    return timed(1, 3 if hw > 28 else 20, f)


def run(name):
    torch.manual_seed(0)
    if name == "kw_plain_step_b50":
        return train_step(KolterWong(), 50, 1, 28)
    if name == "kw_lmt_step_b50":
        return train_step(KolterWong(), 50, 1, 28, lmt=True)
    if name == "kw_plain_step_b128":
        return train_step(KolterWong(), 128, 1, 28)
    if name == "kw_inference_b1000":
        return inference(KolterWong(), 1000, 1, 28)
    if name == "wrn_train_step_b32":
        return train_step(WideResNet(), 32, 3, 32)
    if name == "wrn_inference_b128":
        return inference(WideResNet(), 128, 3, 32)
    raise SystemExit(f"unknown workload {name}; known: {ALL}")


def main():
    torch.set_num_threads(THREADS)
    names = [a for a in sys.argv[1:] if not a.startswith("--")] or ALL
    for name in names:
        ms = run(name)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        print(json.dumps({"workload": name, "impl": f"PyTorch {torch.__version__}", "ms": round(ms, 3),
                          "peak_rss_mb": round(rss, 1)}))


if __name__ == "__main__":
    main()
