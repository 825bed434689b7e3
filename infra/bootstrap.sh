#!/usr/bin/env bash
# Set up a fresh machine for this project: virtual environment, locked install, offline data.
# Idempotent and quick when nothing changed (the install is skipped while requirements.lock,
# pyproject.toml and the venv match the stamp written after the last successful install).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
FMNIST_DIR=/usr/share/datasets/fashion-mnist

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating virtual environment .venv ($($PYTHON --version))"
  "$PYTHON" -m venv .venv
fi

# pip warns once per package about every configured find-links/index folder that lacks it
# (hundreds of lines on machines with partial local mirrors); the other warnings stay.
MISSING_INDEX_DIR="^WARNING: Location '.*' is ignored: it is neither a file nor a directory\.$"
pip_install() {
  .venv/bin/python -m pip install -q "$@" 2> >(grep -v "$MISSING_INDEX_DIR" >&2)
}

stamp=.venv/.simclr-install-stamp
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing the locked dependencies (requirements.lock; a few minutes the first time)"
  pip_install --upgrade pip
  pip_install -r requirements.lock
  .venv/bin/python -m pip install -q --no-deps -e . >.venv/editable-install.log 2>&1 \
    || { cat .venv/editable-install.log >&2; exit 1; }
  echo "$want" > "$stamp"
else
  echo "[setup] dependencies up to date"
fi

if ! ls "$FMNIST_DIR"/train-images-idx3-ubyte* >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Fashion-MNIST from Debian (dataset-fashion-mnist)"
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
  else
    echo "[setup] Fashion-MNIST is missing: put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz," >&2
    echo "        t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in $FMNIST_DIR" >&2
    echo "        (or set data.source.path in params.yaml), or run: sudo apt-get install dataset-fashion-mnist" >&2
    exit 1
  fi
fi
echo "[setup] ready: Fashion-MNIST at $FMNIST_DIR"
