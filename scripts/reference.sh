#!/usr/bin/env bash
# Table 1's clean-accuracy references on the stand-in (item 2 of the Table 1 issue): the plain WRN-16-1
# (svhn_weight_decay) and the LMT one (svhn_lmt_c001), each trained with its config's `reference` profile
# (10 epochs) into results/reference/, unless that run is already there; then the quick SUMMARY.md that
# sets each model beside them, and results/reference/index.csv with its manifest. About 50 min of training
# per run on 2 cores.
# Usage: scripts/reference.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p experiments
for config in svhn_weight_decay svhn_lmt_c001; do
  run=results/reference/standin_fashion_$config
  if [ -f "$run/manifest.json" ]; then
    echo "kept $run (its manifest says how it was made); delete it to train again"
  else
    target/release/experiments train --config "$config" --profile reference --svhn-stand-in --out "$run"
  fi
done
target/release/experiments summary --profile quick
PYTHONPATH=scripts python3 - "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates experiments || echo -dirty)" <<'PY'
import sys
from checks import write_index
write_index("results/reference", git_revision=sys.argv[1], command="scripts/reference.sh", kind="run",
            entry_manifest="manifest.json", entry_result="log.csv")
PY
