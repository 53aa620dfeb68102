#!/usr/bin/env python3
"""Writes the PyTorch interop fixtures of lmt-models' tests (run once; the tests need no Python).

For the Kolter-Wong CNN, a WideResNet-10-1 (the authors' variant) and the 4C3F network with MinMax (which
also pins MinMax's channel pairing: halves of axis 1), built in PyTorch
(bench/pytorch/models.py), with random weights and random batch-norm statistics, it saves
  crates/lmt-models/tests/fixtures/<name>.safetensors    the state_dict (lmt-rs names)
  crates/lmt-models/tests/fixtures/<name>_io.safetensors `inputs` and the `logits` PyTorch computed
                                                         for them in eval mode.
Usage: bench/pytorch/.venv/bin/python scripts/make-interop-fixture.py   (needs torch and safetensors)
"""

import pathlib
import sys

import torch
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench" / "pytorch"))
from models import FourCThreeF, KolterWong, WideResNet, state_dict_for_lmt  # noqa: E402

OUT = ROOT / "crates" / "lmt-models" / "tests" / "fixtures"


def write(name, model, inputs):
    model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
        logits = model(inputs)
    save_file(state_dict_for_lmt(model), OUT / f"{name}.safetensors")
    save_file({"inputs": inputs.contiguous(), "logits": logits.contiguous()}, OUT / f"{name}_io.safetensors")
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, logits[0] = {logits[0].tolist()}")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(2018)
    write("kolter_wong", KolterWong(), torch.rand(4, 1, 28, 28))
    write("wrn_10_1", WideResNet(depth=10, width=1), torch.rand(3, 3, 32, 32))
    torch.manual_seed(2019)
    write("four_c_three_f_minmax", FourCThreeF("minmax"), torch.rand(3, 1, 28, 28))
    print(f"torch {torch.__version__}")


if __name__ == "__main__":
    main()
