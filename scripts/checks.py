"""What the one-off checks under scripts/ share: atomic writes, and the manifest of a result file
(`<stem>_manifest.json` beside `<stem>.csv`, the convention of every other result) with the fields every
generated result carries: config, git revision, seed, data and its checksums, profile, machine, wall time;
and a folder's index (`index.csv` with its manifest), rewritten by every check (and by
scripts/reference.sh for results/reference/)."""

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
        # The source runs' own wall times: a resumed check's wall_seconds leaves out the attacks it found
        # already done.
        "source_wall_seconds": round(sum(float(s.get("wall_seconds", 0.0)) for s in sources), 1),
        "command": command,
    }
    path = csv_path[:-len(".csv")] + "_manifest.json"
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)


def write_index(root, *, git_revision, command, kind="check", entry_manifest="comparison_manifest.json",
                entry_result="comparison.csv"):
    """`<root>/index.csv` and its manifest: one row per entry (`<root>/<entry>/<entry_result>`, described by
    `<root>/<entry>/<entry_manifest>`) with what its manifest records, so the folder says at its top what
    each entry is, from which revision and data. `kind` names the entries (checks; runs)."""
    entries = sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, entry_manifest)))
    manifests = [json.load(open(os.path.join(root, d, entry_manifest))) for d in entries]
    write_csv(os.path.join(root, "index.csv"),
              [kind, "result", "command", "git_revision", "profile", "reduced", "seed", "dataset", "wall_seconds"],
              [[d, f"{d}/{entry_result}", m["command"], m["git_revision"], m["profile"], m["reduced"], m["seed"],
                m["dataset"], m["wall_seconds"]] for d, m in zip(entries, manifests)])
    checksums = sorted({c for m in manifests for c in m["data_checksums"]})
    manifest = {
        "experiment": f"{kind}s index",
        "profile": " and ".join(sorted({m["profile"] for m in manifests})),
        "reduced": any(m["reduced"] for m in manifests),
        "config": f"one row per {kind} under this folder, each described in full by its {entry_manifest}",
        "git_revision": git_revision,
        "seed": sorted({m["seed"] for m in manifests}),
        "dataset": " and ".join(sorted({m["dataset"] for m in manifests})),
        "data_checksums": checksums,
        "machine": f"{platform.system().lower()} {platform.machine()}, {os.cpu_count()} logical cores",
        "wall_seconds": float(sum(m["wall_seconds"] for m in manifests)),
        "command": command,
    }
    path = os.path.join(root, "index_manifest.json")
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)
