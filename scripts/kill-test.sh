#!/usr/bin/env bash
# Kill anywhere: runs `experiments reproduce --profile smoke` once uninterrupted, then again with
# SIGKILL at KILLS random moments (each kill followed by a rerun, which resumes), and compares every
# result CSV of the two (the `seconds` column of training logs aside). Prints the kills and the
# mismatches; exits non-zero on any mismatch.
#
# Usage: scripts/kill-test.sh            (KILLS=8 by default; SEED=1 for the kill moments)
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS=${KILLS:-8}
SEED=${SEED:-1}
cargo build --release -q -p experiments
E=target/release/experiments
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
reproduce() { "$E" reproduce --profile smoke --results "$1/results" --figures "$1/figures" > "$1/log" 2>&1; }

mkdir -p "$T/a" "$T/b"
start=$(date +%s.%N)
reproduce "$T/a"
full=$(echo "$(date +%s.%N) - $start" | bc)
echo "uninterrupted run: ${full} s"

RANDOM=$SEED
for k in $(seq 1 "$KILLS"); do
  # A moment uniform in (0, full): every phase (training, certification, attacks, figures) gets hit.
  delay=$(echo "scale=2; $full * $RANDOM / 32768" | bc)
  reproduce "$T/b" & pid=$!
  sleep "$delay"
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "kill $k: SIGKILL after ${delay} s"
  else
    wait "$pid" || true
    echo "kill $k: the run had finished before ${delay} s"
  fi
done
reproduce "$T/b"
echo "final rerun: completed"

# Every CSV of the uninterrupted run, compared with the killed one's; training logs without their time.
strip() {
  case "$1" in
    */log.csv) cut -d, -f1-6 "$1" ;;
    *) cat "$1" ;;
  esac
}
mismatches=0
files=0
while IFS= read -r f; do
  rel=${f#"$T/a/"}
  files=$((files + 1))
  if [ ! -f "$T/b/$rel" ] || ! cmp -s <(strip "$f") <(strip "$T/b/$rel"); then
    echo "MISMATCH: $rel"
    mismatches=$((mismatches + 1))
  fi
done < <(find "$T/a/results" -name '*.csv' | sort)
echo "kills: $KILLS, result CSVs compared: $files, mismatches: $mismatches"
[ "$mismatches" -eq 0 ]
