#!/usr/bin/env bash
# Installs Debian's dataset-fashion-mnist if its files are missing: the mini-VTAB tests and
# `heartlora demo --suite mini-vtab` read its test images (the digits demo does not need it).
# Without root or apt-get it says so and the tests that need it are skipped, with that reason.
set -euo pipefail
fmnist=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
[ -f "$fmnist" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian's dataset-fashion-mnist (Fashion-MNIST for the mini-VTAB)" >&2
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null
  fi
else
  echo "note: $fmnist is missing and this is not a root shell with apt-get;" \
       "the mini-VTAB tests will be skipped (apt-get install dataset-fashion-mnist)" >&2
fi
