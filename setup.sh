#!/usr/bin/env bash
# Set up dslc on a fresh machine: the Graphviz `dot` program (OS package), a virtual environment
# in .venv, and dslc in it. Safe to run again: it only adds what is missing.
#
#   ./setup.sh          develop: dslc editable, with its test dependencies (pytest, ruff, and
#                       PyTorch 2.13.0 CPU as the reference the kernels are checked against)
#   ./setup.sh --use    use: `pip install .` only, what training and drawing need (no torch)
#
# Each step says what it installs and about how long it takes; pip shows its own progress.
set -euo pipefail
cd "$(dirname "$0")"

mode=develop
case "${1:-}" in
  "") ;;
  --use) mode=use ;;
  -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "setup: unknown option '$1' (use --use, or nothing for the development set-up)" >&2; exit 2 ;;
esac

start=$SECONDS
step() { echo "setup: [$(( SECONDS - start ))s] $*" >&2; }

if ! command -v dot >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    step "installing Graphviz for 'dslc viz' (apt-get install graphviz; about a minute)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q graphviz >&2
  else
    step "Graphviz's dot is missing; install it (apt-get install graphviz / brew install graphviz)."
    step "without it, 'dslc viz' writes .dot files only."
  fi
fi

if [ ! -x .venv/bin/python ]; then
  step "making the virtual environment .venv"
  python3 -m venv .venv
fi

pip=(.venv/bin/python -m pip install --disable-pip-version-check --progress-bar on)
if [ "$mode" = use ]; then
  step "installing dslc and what it runs on (numpy, numba, scikit-learn, lark, networkx, graphviz, tqdm,"
  step "  Pillow, safetensors; about 150 MB to download, 1-3 minutes on a first run, seconds afterwards)"
  "${pip[@]}" .
  check="import dslc, dslc.runtime, numba"
else
  step "installing dslc (editable) with its test dependencies: PyTorch 2.13.0 CPU, onnx, onnxruntime,"
  step "  mpi4py, matplotlib, pytest, ruff (about 1 GB on disk, 3-10 minutes on a first run, seconds afterwards)"
  "${pip[@]}" -e '.[test]'
  check="import dslc, dslc.runtime, numba, torch"
fi
.venv/bin/python -c "$check" || { echo "setup: install failed (the import check '$check' did not pass)" >&2; exit 1; }
step "ready: .venv/bin/dslc ($mode set-up; the first training run compiles kernels for a minute or so, later runs load them from the cache)"
