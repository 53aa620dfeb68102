#!/usr/bin/env python3
"""Writes the small SVHN-layout .mat fixtures used by crates/lmt-data/tests and, in svhn_dir/, the
official file names for experiments' Table 1 test (needs numpy and scipy).

The pixel pattern X[i, j, c, n] = (7 i + 3 j + 80 c + 11 n) mod 256 is asymmetric in rows and columns and
differs per channel, so a reader that transposes a plane or swaps channels fails the tests. The tests
check every pixel against this formula, so changing it means changing pattern() in tests/svhn.rs too.

Run from the repository root: python3 scripts/make-svhn-fixtures.py
"""
import os

import numpy as np
import scipy.io

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "lmt-data", "tests", "fixtures")
N = 8
i, j, c, n = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), np.arange(N), indexing="ij")
X = ((7 * i + 3 * j + 80 * c + 11 * n) % 256).astype(np.uint8)  # shape [32, 32, 3, N], as SVHN
LABELS = np.array([10, 1, 2, 3, 4, 5, 9, 10]).reshape(N, 1)  # 10 means digit 0

os.makedirs(OUT, exist_ok=True)
save = lambda name, compress, **v: scipy.io.savemat(
    os.path.join(OUT, name), v, format="5", do_compression=compress)
save("svhn_compressed.mat", True, X=X, y=LABELS.astype(np.uint8))
save("svhn_uncompressed.mat", False, X=X, y=LABELS.astype(np.float64))
bad = LABELS.astype(np.uint8).copy()
bad[3, 0] = 11
save("svhn_bad_label.mat", True, X=X, y=bad)
save("svhn_no_labels.mat", False, X=X)

# A directory laid out as the official release, for `table1 --svhn-dir` end to end (with and without
# --svhn-extra): the same pattern, labels cycling through 1..10 (10 is digit 0).
def split(n, offset):
    i, j, c, k = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), np.arange(n), indexing="ij")
    x = ((7 * i + 3 * j + 80 * c + 11 * (k + offset)) % 256).astype(np.uint8)
    y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)
    return x, y


DIR = os.path.join(OUT, "svhn_dir")
os.makedirs(DIR, exist_ok=True)
for name, n, offset in [("train", 64, 0), ("test", 32, 100), ("extra", 16, 200)]:
    x, y = split(n, offset)
    scipy.io.savemat(os.path.join(DIR, f"{name}_32x32.mat"), {"X": x, "y": y}, format="5", do_compression=True)
print("wrote fixtures to", os.path.normpath(OUT))
