#!/usr/bin/env bash
# Is PGD strong enough for Table 1? For every quick Table 1 model and every size of Table 1, attacks the
# first POINTS test points with PGD-L2 at twice the quick budget (100 steps, 2 restarts; quick: 50 x 1),
# then recomputes the strongest-attack accuracy with the doubled PGD added to every attack the table ran
# (C&W, clipped DeepFool, quick PGD) and writes how far it moved against the table's Wilson half-width
# (comparison.csv) with a manifest. Needs `make reproduce` (quick) first, with its checkpoints.
# Usage: scripts/pgd-doubling.sh [POINTS]
set -euo pipefail
cd "$(dirname "$0")/.."
points="${1:-500}"
runs="weight_decay parseval spectral_norm lmt_c001 avg_lmt_c01"
sizes="0.2 0.5 1.0"
out=results/checks/pgd_doubling
for r in $runs; do
  ckpt=results/quick/standin_fashion_svhn_$r/checkpoint.safetensors
  [ -f "$ckpt" ] || { echo "no $ckpt: run make reproduce (PROFILE=quick) first" >&2; exit 2; }
done
cargo build --release -q -p experiments
start=$(date +%s)
for r in $runs; do
  for eps in $sizes; do
    dir="$out/$r/s100r2_$eps"
    # Each finished attack is kept, so an interrupted run resumes where it stopped.
    [ -f "$dir/attack_pgd_$(python3 -c "print(f'{float($eps):g}')").csv" ] && continue
    target/release/experiments attack --checkpoint "results/quick/standin_fashion_svhn_$r/checkpoint.safetensors" \
      --svhn-stand-in --attack pgd --epsilon "$eps" --pgd-steps 100 --restarts 2 --test-subset "$points" \
      --certificates "results/quick/standin_fashion_svhn_$r/certificates.csv" --out "$dir"
  done
done
PYTHONPATH=scripts python3 - "$out" "$points" "$(( $(date +%s) - start ))" "$runs" "$sizes" \
  "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates experiments || echo -dirty)" <<'PY'
import csv, glob, json, math, sys
from checks import write_csv, write_index, write_manifest
out, points, wall, runs, sizes, rev = sys.argv[1:]
points, runs, sizes = int(points), runs.split(), [float(s) for s in sizes.split()]

def distances(path):
    """Per test index, the attack's distance (None: it found nothing)."""
    return {int(r["index"]): (float(r["distance"]) if r["success"] == "true" else None)
            for r in csv.DictReader(open(path))}

def worst(files):
    """Per test index in 0..points, the smallest distance over the attacks that ran on it."""
    w = {}
    for f in files:
        for i, d in distances(f).items():
            if i < points and d is not None:
                w[i] = min(w.get(i, math.inf), d)
    return w

def robust(w, eps):
    return sum(1 for i in range(points) if w.get(i, math.inf) > eps)

def wilson_half_width(k, n, z=1.959963984540054):
    p = k / n
    return z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)

table = {r["method"]: r for r in csv.DictReader(open("results/quick/table1_standin.csv"))}
method_of = {"weight_decay": "weight decay", "parseval": "Parseval", "spectral_norm": "spectral norm",
             "lmt_c001": "LMT (c 0.01)", "avg_lmt_c01": "LMT avg-pool (c 0.1)"}
rows, sources = [], []
for r in runs:
    run = f"results/quick/standin_fashion_svhn_{r}"
    attacks = [f for f in glob.glob(f"{run}/attack_*.csv") if not f.endswith("attack_deepfool.csv")]
    quick = worst(attacks)
    model = json.load(open(f"{run}/attack_pgd_0.5_manifest.json"))["provenance"]["model_sha256"]
    for eps in sizes:
        doubled_file = f"{out}/{r}/s100r2_{eps}/attack_pgd_{eps:g}.csv"
        m = json.load(open(doubled_file[:-4] + "_manifest.json"))
        if m["provenance"]["model_sha256"] != model:
            sys.exit(f"{doubled_file} attacked another model than {run}'s table: delete it and rerun")
        sources.append(doubled_file[:-4] + "_manifest.json")
        doubled = worst(attacks + [doubled_file])
        k_quick, k_doubled = robust(quick, eps), robust(doubled, eps)
        row = table[method_of[r]]
        if int(row["points"]) == points and abs(100 * k_quick / points - float(row[f"strongest_accuracy_{eps}"])) > 1e-6:
            sys.exit(f"{r} at {eps}: {k_quick} of {points} robust here, the table says "
                     f"{row[f'strongest_accuracy_{eps}']}%: the attacks in {run} are not the table's")
        half = 100 * wilson_half_width(k_quick, points)
        change = 100 * (k_quick - k_doubled) / points
        only_pgd = distances(doubled_file)
        rows.append([r, eps, points, round(100 * k_quick / points, 2), round(100 * k_doubled / points, 2),
                     k_quick - k_doubled, sum(1 for d in only_pgd.values() if d is not None),
                     round(change, 2), round(half, 2), change < half,
                     "empirical upper bounds on robust accuracy (attack successes; REDUCED quick-profile models)"])
        print(f"{r} at {eps}: strongest {100 * k_quick / points:.1f}% -> {100 * k_doubled / points:.1f}% "
              f"with PGD 100x2 ({k_quick - k_doubled} more broken; Wilson half-width {half:.1f} points)")
write_csv(f"{out}/comparison.csv",
          ["run", "epsilon", "points", "strongest_quick_pct", "strongest_with_pgd_100x2_pct", "more_broken",
           "pgd_100x2_broken", "change_pct_points", "wilson_half_width_pct_points", "change_below_half_width",
           "kind"], rows)
write_manifest(f"{out}/comparison.csv", experiment="pgd_doubling", profile="quick",
               config=f"PGD-L2 at 100 steps x 2 restarts (quick: 50 x 1) at L2 sizes {sizes} on the first {points} "
                      f"test points of every quick Table 1 model, added to the attacks of results/quick/table1_standin.csv",
               git_revision=rev, wall_seconds=wall, command="scripts/pgd-doubling.sh " + str(points),
               source_manifests=sources)
write_index("results/checks", git_revision=rev, command="scripts/pgd-doubling.sh " + str(points))
PY
