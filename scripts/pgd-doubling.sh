#!/usr/bin/env bash
# Is PGD strong enough for Table 1? Attacks the quick weight-decay model at one L2 size with PGD at the
# quick budget (50 steps, 1 restart) and at twice it (100 steps, 2 restarts), then writes how many points
# only the doubled attack broke (comparison.csv) and a manifest. Needs `make reproduce` (quick) first.
# Usage: scripts/pgd-doubling.sh [EPSILON] [POINTS]
set -euo pipefail
cd "$(dirname "$0")/.."
eps="${1:-0.5}"
points="${2:-500}"
ckpt=results/quick/standin_fashion_svhn_weight_decay/checkpoint.safetensors
out=results/checks/pgd_doubling
[ -f "$ckpt" ] || { echo "no $ckpt: run make reproduce (PROFILE=quick) first" >&2; exit 2; }
cargo build --release -q -p experiments
start=$(date +%s)
for cfg in "50 1 s50r1" "100 2 s100r2"; do
  set -- $cfg
  target/release/experiments attack --checkpoint "$ckpt" --svhn-stand-in --attack pgd --epsilon "$eps" \
    --pgd-steps "$1" --restarts "$2" --test-subset "$points" --out "$out/$3"
done
PYTHONPATH=scripts python3 - "$out" "$eps" "$points" "$(( $(date +%s) - start ))" "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates experiments || echo -dirty)" <<'PY'
import csv, sys
from checks import write_csv, write_index, write_manifest
out, eps, points, wall, rev = sys.argv[1:]
name = f"attack_pgd_{float(eps):g}.csv"
runs = {k: {r["index"]: r["success"] == "true" for r in csv.DictReader(open(f"{out}/{k}/{name}"))}
        for k in ("s50r1", "s100r2")}
a, b = runs["s50r1"], runs["s100r2"]
only_doubled = sum(1 for i in a if not a[i] and b[i])
only_quick = sum(1 for i in a if a[i] and not b[i])
n = len(a)
write_csv(f"{out}/comparison.csv",
          ["epsilon", "points", "broken_50x1", "broken_100x2", "only_100x2", "only_50x1", "kind"],
          [[eps, n, sum(a.values()), sum(b.values()), only_doubled, only_quick,
            "empirical (attack successes; REDUCED quick-profile model)"]])
write_manifest(f"{out}/comparison.csv", experiment="pgd_doubling", profile="quick",
               config=f"PGD-L2 at epsilon {eps} on the first {points} test points of the quick weight-decay model: 50 steps x 1 restart against 100 steps x 2 restarts",
               git_revision=rev, wall_seconds=wall, command="scripts/pgd-doubling.sh " + " ".join([eps, points]),
               source_manifests=[f"{out}/{k}/{name[:-4]}_manifest.json" for k in ("s50r1", "s100r2")])
write_index("results/checks", git_revision=rev, command="scripts/pgd-doubling.sh " + " ".join([eps, points]))
print(f"PGD at {eps}: 100x2 broke {only_doubled} points that 50x1 did not (and missed {only_quick}) of {n}")
PY
