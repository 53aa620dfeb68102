"""What the one-off checks under scripts/ share: atomic writes, and the manifest of a result file
(`<stem>_manifest.json` beside `<stem>.csv`, the convention of every other result) with the fields every
generated result carries: config, git revision, seed, data and its checksums, profile, machine, wall time."""

import csv
import json
import os
import platform


def write_csv(path, header, rows):
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def write_manifest(csv_path, *, experiment, profile, config, git_revision, wall_seconds, command,
                   source_manifests, reduced=True):
    """`source_manifests`: the attack manifests the result is computed from (seed, data and model digests
    are taken from them)."""
    sources = [json.load(open(p)) for p in source_manifests]
    first = sources[0]
    manifest = {
        "experiment": experiment,
        "profile": profile,
        "reduced": reduced,
        "config": config,
        "git_revision": git_revision,
        "seed": first["seed"],
        "dataset": first["dataset"],
        "data_checksums": first["data_checksums"],
        "model_sha256": sorted({s["provenance"]["model_sha256"] for s in sources if s.get("provenance")}),
        "machine": f"{platform.system().lower()} {platform.machine()}, {os.cpu_count()} logical cores",
        "wall_seconds": float(wall_seconds),
        "command": command,
    }
    path = csv_path[:-len(".csv")] + "_manifest.json"
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)
