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

from models import FourCThreeF, KolterWong, WideResNet

THREADS = 2
ALL = [
    "gemm_peak",
    "kw_plain_step_b50",
    "kw_lmt_step_b50",
    "kw_plain_step_b128",
    "c4f3_plain_step_b50",
    "c4f3_lmt_step_b50",
    "kw_inference_b1000",
    "wrn_train_step_b32",
    "wrn_inference_b128",
    "wrn1_train_step_b128",
    "wrn1_cw_iteration_b100",
    "kw_at_cw30_step_b50",
    "kw_deepfool_per_image",
    "kw_cw100_per_image",
]

SQUEEZE = 0.999999


def cw(model, x, y, iters, binary_steps, c0):
    """Untargeted C&W L2 as lmt-attacks runs it (tanh space, Adam 1e-2, x10 / bisection over the
    constant, best success kept); the model's parameters are frozen so only the input gradient is taken."""
    b = x.shape[0]
    w0 = torch.atanh((2 * x - 1) * SQUEEZE)
    const = torch.full((b,), c0)
    lo, hi = torch.zeros(b), torch.full((b,), float("inf"))
    best_d, best = torch.full((b,), float("inf")), x.clone()
    onehot = F.one_hot(y, 10).bool()
    for _ in range(binary_steps):
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=1e-2)
        found = torch.zeros(b, dtype=torch.bool)
        for _ in range(iters):
            xa = torch.tanh(w) / 2 + 0.5
            z = model(xa)
            zt = z.gather(1, y[:, None])[:, 0]
            zo = z.masked_fill(onehot, float("-inf")).max(1).values
            d = ((xa - x) ** 2).flatten(1).sum(1)
            loss = (d + const * torch.clamp(zt - zo, min=0)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                ok = zo > zt
                better = ok & (d < best_d)
                best_d = torch.where(better, d, best_d)
                best[better] = xa[better]
                found |= ok
        hi = torch.where(found, torch.minimum(hi, const), hi)
        lo = torch.where(found, lo, torch.maximum(lo, const))
        const = torch.where(torch.isinf(hi), const * 10, (lo + hi) / 2)
    return best


def deepfool(model, x, y, iters=50, overshoot=0.02, k=10):
    """DeepFool L2 over all classes; all class gradients of a batch in one backward (K replicas)."""
    b = x.shape[0]
    xa = x.clone()
    r = torch.zeros_like(x)
    active = torch.ones(b, dtype=torch.bool)
    for _ in range(iters):
        idx = active.nonzero()[:, 0]
        if len(idx) == 0:
            break
        xi = xa[idx].repeat_interleave(k, 0).requires_grad_(True)
        z = model(xi).view(len(idx), k, k)
        z.diagonal(dim1=1, dim2=2).sum().backward()
        g = xi.grad.view(len(idx), k, *x.shape[1:])
        zz = z.diagonal(dim1=1, dim2=2).detach()
        yt = y[idx]
        still = zz.argmax(1) == yt
        f = zz - zz.gather(1, yt[:, None])
        wk = g - g[torch.arange(len(idx)), yt][:, None]
        norm = wk.flatten(2).norm(dim=2)
        ratio = (f.abs() + 1e-4) / (norm + 1e-12)
        ratio[torch.arange(len(idx)), yt] = float("inf")
        l = ratio.argmin(1)
        step = ((f.abs()[torch.arange(len(idx)), l] + 1e-4) / norm[torch.arange(len(idx)), l] ** 2)
        rk = step.view(-1, *[1] * (x.dim() - 1)) * wk[torch.arange(len(idx)), l]
        rk = rk * still.view(-1, *[1] * (x.dim() - 1))
        r[idx] += rk
        xa[idx] = x[idx] + (1 + overshoot) * r[idx]
        active[idx] = still
    return xa


def attack_per_image(name):
    model = KolterWong().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, _ = batch(100, 1, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    s = time.perf_counter()
    if "deepfool" in name:
        deepfool(model, x, y)
    else:
        cw(model, x, y, 100, 9, 1e-3)
    return (time.perf_counter() - s) * 1e3 / 100


def wrn1_cw_iteration():
    """Table 1's quick attack: C&W iterations on WRN-16-1 (frozen, eval mode), a batch of 100, per
    iteration (10 iterations of one binary step)."""
    model = WideResNet(width=1).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, _ = batch(100, 3, 32)
    with torch.no_grad():
        y = model(x).argmax(1)
    return timed(0, 3, lambda: cw(model, x, y, 10, 1, 1e-3)) / 10


def at_step():
    """Adversarial training's step: C&W-30 (one binary step, c = 1) replaces the batch, then a plain step."""
    model = KolterWong()
    x, y = batch(50, 1, 28)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        adv = cw(model, x, y, 30, 1, 1.0)
        for p in model.parameters():
            p.requires_grad_(True)
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(adv), y).backward()
        opt.step()

    return timed(1, 5, step)


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


def _layers(model):
    """The linear maps below the last layer as LMT bounds them (biases left out; activations are
    1-Lipschitz), each with the shape of its input, and the last layer: what lmt-rs's estimate walks."""
    if isinstance(model, KolterWong):
        m = model
        return [(lambda u: F.conv2d(u, m.conv1.weight, stride=2, padding=1), (1, 1, 28, 28)),
                (lambda u: F.conv2d(u, m.conv2.weight, stride=2, padding=1), (1, 16, 14, 14)),
                (lambda u: F.linear(u, m.fc1.weight), (1, 1568))], m.fc2
    if isinstance(model, FourCThreeF):
        m = model
        return [(lambda u: F.conv2d(u, m.conv1.weight, stride=1, padding=1), (1, 1, 28, 28)),
                (lambda u: F.conv2d(u, m.conv2.weight, stride=2, padding=1), (1, 32, 28, 28)),
                (lambda u: F.conv2d(u, m.conv3.weight, stride=1, padding=1), (1, 32, 14, 14)),
                (lambda u: F.conv2d(u, m.conv4.weight, stride=2, padding=1), (1, 64, 14, 14)),
                (lambda u: F.linear(u, m.fc1.weight), (1, 3136)),
                (lambda u: F.linear(u, m.fc2.weight), (1, 512))], m.fc3
    raise SystemExit(f"no LMT layer list for {type(model).__name__}")


class PowerLmt:
    """The LMT part as lmt-rs computes it: per linear layer below the last a persistent vector u of the
    layer's input shape (batch 1), one power-iteration step per update, sigma = ||A u|| / ||u||,
    L_sub = product of the sigmas, Prop. 2 margins c L_sub ||w_i - w_t|| with the last layer's rows."""

    def __init__(self, model):
        self.ops, self.last = _layers(model)
        self.u = [torch.randn(*shape) for _, shape in self.ops]

    def l_sub(self):
        l_sub = 1.0
        for i, (op, _) in enumerate(self.ops):
            u = self.u[i].detach().requires_grad_(True)
            un = u / u.norm()
            s = op(un).norm()
            l_sub = l_sub * s
            g, = torch.autograd.grad(s * s, u, retain_graph=True)
            self.u[i] = g.detach()
        return l_sub

    def logits(self, z, y, c=1.0):
        w = self.last.weight
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


def gemm_peak(n=2048):
    """The host's sustained f32 gemm rate through PyTorch's BLAS (MKL on x86)."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    return timed(2, 7, lambda: torch.mm(a, b))


def run(name):
    torch.manual_seed(0)
    if name == "gemm_peak":
        return gemm_peak()
    if name == "kw_plain_step_b50":
        return train_step(KolterWong(), 50, 1, 28)
    if name == "kw_lmt_step_b50":
        return train_step(KolterWong(), 50, 1, 28, lmt=True)
    if name == "kw_plain_step_b128":
        return train_step(KolterWong(), 128, 1, 28)
    if name in ("c4f3_plain_step_b50", "c4f3_lmt_step_b50"):
        return train_step(FourCThreeF("minmax"), 50, 1, 28, lmt=name == "c4f3_lmt_step_b50")
    if name == "kw_inference_b1000":
        return inference(KolterWong(), 1000, 1, 28)
    if name == "wrn_train_step_b32":
        return train_step(WideResNet(), 32, 3, 32)
    if name == "wrn_inference_b128":
        return inference(WideResNet(), 128, 3, 32)
    if name == "wrn1_train_step_b128":
        return train_step(WideResNet(width=1), 128, 3, 32)
    if name == "wrn1_cw_iteration_b100":
        return wrn1_cw_iteration()
    if name == "kw_at_cw30_step_b50":
        return at_step()
    if name in ("kw_deepfool_per_image", "kw_cw100_per_image"):
        return attack_per_image(name)
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
