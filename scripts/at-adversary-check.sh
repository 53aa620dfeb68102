#!/usr/bin/env bash
# Why is our adversarially trained MNIST model barely more robust than the naive one? Runs the AT
# baseline's own adversary (C&W L2, 30 Adam steps, 1 binary step, c = 1, batches of 50) against the paper
# AT model (20 epochs), the quick AT model (1 epoch on 10,000 images: early in training) and the naive
# model, each with our batch-sum objective and with the authors' batch mean, on the first POINTS test
# images; writes how often it succeeds (comparison.csv) and a manifest. Needs the paper and quick MNIST
# checkpoints (make reproduce, PROFILE=quick and PROFILE=paper).
# Usage: scripts/at-adversary-check.sh [POINTS]
set -euo pipefail
cd "$(dirname "$0")/.."
points="${1:-1000}"
out=results/checks/at_adversary
models="paper/mnist_at_cw30 quick/mnist_at_cw30 paper/mnist_naive"
for m in $models; do
  [ -f "results/$m/checkpoint.safetensors" ] || { echo "no results/$m/checkpoint.safetensors: run make reproduce first" >&2; exit 2; }
done
cargo build --release -q -p experiments
start=$(date +%s)
for m in $models; do
  for objective in sum mean; do
    flag=""; [ "$objective" = mean ] && flag=--cw-batch-mean
    target/release/experiments attack --checkpoint "results/$m/checkpoint.safetensors" --attack cw \
      --cw-iterations 30 --cw-binary-steps 1 --cw-initial-const 1 --batch-size 50 $flag \
      --test-subset "$points" --out "$out/${m//\//_}_$objective" > /dev/null
  done
done
PYTHONPATH=scripts python3 - "$out" "$points" "$(( $(date +%s) - start ))" "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates experiments || echo -dirty)" $models <<'PY'
import csv, sys
from checks import write_csv, write_index, write_manifest
out, points, wall, rev, *models = sys.argv[1:]
rows, sources = [], []
for m in models:
    for objective in ("sum", "mean"):
        d = f"{out}/{m.replace('/', '_')}_{objective}"
        r = list(csv.DictReader(open(f"{d}/attack_cw.csv")))
        broken = sum(x["success"] == "true" for x in r)
        at_start = sum(x["success"] == "true" and float(x["distance"] or "nan") == 0.0 for x in r)
        rows.append([m, objective, len(r), broken, at_start, f"{broken / len(r):.4f}",
                     "empirical (attack successes of the AT adversary)"])
        sources.append(f"{d}/attack_cw_manifest.json")
write_csv(f"{out}/comparison.csv",
          ["model", "objective", "points", "broken", "misclassified_before_attack", "success_rate", "kind"], rows)
write_manifest(f"{out}/comparison.csv", experiment="at_adversary", profile="paper and quick",
               config=f"C&W L2 30 iterations x 1 binary step, c = 1, lr 0.01, batches of 50, on the first {points} MNIST test points of {', '.join(models)}; batch-sum against batch-mean objective",
               git_revision=rev, wall_seconds=wall, command="scripts/at-adversary-check.sh " + points,
               source_manifests=sources)
write_index("results/checks", git_revision=rev, command="scripts/at-adversary-check.sh " + points)
for r in rows:
    print(f"{r[0]} ({r[1]}): broke {r[3]} of {r[2]} (of them {r[4]} misclassified before the attack)")
PY
