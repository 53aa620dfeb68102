#!/usr/bin/env bash
# Table 1's clean-accuracy reference on the stand-in (item 2 of the Table 1 issue): the plain WRN-16-1
# trained with svhn_weight_decay's `reference` profile into results/reference/, unless that run is already
# there; then the quick SUMMARY.md that sets each model beside it, and results/reference/index.csv with its
# manifest. About 50 min of training on 2 cores.
# Usage: scripts/reference.sh
set -euo pipefail
cd "$(dirname "$0")/.."
run=results/reference/standin_fashion_svhn_weight_decay
cargo build --release -q -p experiments
if [ -f "$run/manifest.json" ]; then
  echo "kept $run (its manifest says how it was made); delete it to train again"
else
  target/release/experiments train --config svhn_weight_decay --profile reference --svhn-stand-in --out "$run"
fi
target/release/experiments summary --profile quick
PYTHONPATH=scripts python3 - "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates experiments || echo -dirty)" <<'PY'
import sys
from checks import write_index
write_index("results/reference", git_revision=sys.argv[1], command="scripts/reference.sh", kind="run",
            entry_manifest="manifest.json", entry_result="log.csv")
PY
