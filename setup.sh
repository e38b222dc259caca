#!/usr/bin/env bash
# Set up dslc on a fresh machine: the Graphviz `dot` program (OS package), a virtual
# environment in .venv, and dslc with its test dependencies (torch is the CPU build pinned
# to 2.13.0 as a test-only reference). Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v dot >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Graphviz (apt-get install graphviz)" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null
  else
    echo "setup: Graphviz's dot is missing; install it (apt-get install graphviz / brew install graphviz)." >&2
    echo "setup: without it, 'dslc viz' writes .dot files only." >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v -i "warning" >&2 || true
.venv/bin/python -c "import dslc, dslc.runtime, numba, torch" || { echo "setup: install failed" >&2; exit 1; }
echo "setup: ready (.venv/bin/dslc)" >&2
