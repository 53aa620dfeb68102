#!/usr/bin/env bash
# Kill anywhere: runs `experiments reproduce --profile smoke` once uninterrupted, then KILLS more times,
# each from scratch, killed with SIGKILL at a random moment and rerun to completion (it resumes), and
# compares every result CSV of each with the uninterrupted run's (the `seconds` column of training logs
# aside). Prints the kills and the mismatches; exits non-zero on any mismatch.
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

mkdir -p "$T/a"
start=$(date +%s.%N)
reproduce "$T/a"
full=$(echo "$(date +%s.%N) - $start" | bc)
echo "uninterrupted run: ${full} s"

RANDOM=$SEED
kills=0
for k in $(seq 1 "$KILLS"); do
  # A fresh run killed at a moment uniform in (0, full), so every phase (training, certification,
  # attacks, figures) gets hit, then rerun to completion (it resumes) and compared below.
  delay=$(echo "scale=2; $full * $RANDOM / 32768" | bc)
  mkdir -p "$T/b$k"
  # The binary itself in the background, so the kill hits it (not a wrapping shell).
  "$E" reproduce --profile smoke --results "$T/b$k/results" --figures "$T/b$k/figures" > "$T/b$k/log" 2>&1 &
  pid=$!
  sleep "$delay"
  kill -KILL "$pid" 2>/dev/null && kills=$((kills + 1)) && echo "run $k: SIGKILL after ${delay} s"
  wait "$pid" 2>/dev/null || true
  reproduce "$T/b$k"
done

# Every CSV of the uninterrupted run, compared with the killed one's; training logs without their time.
strip() {
  case "$1" in
    */log.csv) cut -d, -f1-6 "$1" ;;
    *) cat "$1" ;;
  esac
}
mismatches=0
files=0
for k in $(seq 1 "$KILLS"); do
  while IFS= read -r f; do
    rel=${f#"$T/a/"}
    files=$((files + 1))
    if [ ! -f "$T/b$k/$rel" ] || ! cmp -s <(strip "$f") <(strip "$T/b$k/$rel"); then
      echo "MISMATCH after kill $k: $rel"
      mismatches=$((mismatches + 1))
    fi
  done < <(find "$T/a/results" -name '*.csv' | sort)
done
echo "kills: $kills, result CSVs compared: $files, mismatches: $mismatches"
[ "$mismatches" -eq 0 ]
