#!/usr/bin/env bash
# Make sure Fashion-MNIST (gzip IDX files) is available: $PROGFLOW_DATA, else the Debian
# package dataset-fashion-mnist's folder, installing the package when we are root.
set -euo pipefail
files="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
has_all() { for f in $files; do [ -f "$1/$f" ] || return 1; done; }
if [ -n "${PROGFLOW_DATA:-}" ]; then
  has_all "$PROGFLOW_DATA" && { echo "Fashion-MNIST: $PROGFLOW_DATA"; exit 0; }
  echo "PROGFLOW_DATA=$PROGFLOW_DATA does not hold the Fashion-MNIST IDX files ($files)" >&2; exit 2
fi
dir=/usr/share/datasets/fashion-mnist
has_all "$dir" && { echo "Fashion-MNIST: $dir"; exit 0; }
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing the Debian package dataset-fashion-mnist ..."
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  has_all "$dir" && { echo "Fashion-MNIST: $dir"; exit 0; }
fi
echo "Fashion-MNIST is missing. Install it with: sudo apt-get install dataset-fashion-mnist" >&2
echo "or put the four IDX files in a folder and set PROGFLOW_DATA=/that/folder" >&2
exit 2
